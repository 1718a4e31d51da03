#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Continuous archiving: its cost on the
# write path"): pgbench TPS on a database container of the demo's image
# without archiving and with it (`backup continuous start`: pg_receivewal
# --synchronous on a slot), alternated A B A B in one run so that both see
# the same machine; the ratio is B/A.
# Usage (as root, from the workspace root): docs/bench/archiving-cost.sh
#   [SCALE (default 10)] [SECONDS per round (default 20)]
# Leaves nothing behind (trap).
set -euo pipefail
SCALE=${1:-10}
SECS=${2:-20}
BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mre-ops-archcost.XXXXXX)
NAME=mre-bench-archcost-$$
PORT=${PORT:-45998}
export PW=bench-$RANDOM$RANDOM PGPASSWORD
PGPASSWORD=$PW
cleanup() {
  for c in $(docker ps -aq --filter "name=$NAME"); do docker rm -f -v "$c" >/dev/null; done
  for v in $(docker volume ls -q --filter "name=$NAME"); do docker volume rm "$v" >/dev/null; done
  docker network rm "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$ROOT"; cargo build -q -p xtask; cp "${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask" "$WORK/xtask"
docker image inspect mre-demo-postgres:15 >/dev/null 2>&1 || "$WORK/xtask" -q demo prepare
docker network create "$NAME" >/dev/null
docker run -d --name "$NAME" --network "$NAME" -e POSTGRES_USER=pacetracer -e POSTGRES_DB=pacetracer \
  -e POSTGRES_PASSWORD="$PW" -v "$NAME:/var/lib/postgresql/data" -p "127.0.0.1:$PORT:5432" \
  mre-demo-postgres:15 >/dev/null
PSQL="$BIN/psql -X -q -tA -h 127.0.0.1 -p $PORT -U pacetracer -d pacetracer"
until $PSQL -c "SELECT 1" >/dev/null 2>&1; do sleep 0.2; done
cat > "$WORK/ops.toml" <<TOML
[environments.bench]
[environments.bench.compose]
files = ["none.yml"]
project = "bench"
[environments.bench.database]
container = "$NAME"
host = "127.0.0.1"
port = $PORT
user = "pacetracer"
name = "pacetracer"
password_env = "PW"
[environments.bench.backups]
dir = "$WORK/backups"
continuous = true
TOML
X="$WORK/xtask --config $WORK/ops.toml"
$BIN/pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U pacetracer pacetracer >/dev/null 2>&1
tps() {
  $BIN/pgbench -n -c 4 -j 2 -T "$SECS" -h 127.0.0.1 -p "$PORT" -U pacetracer pacetracer 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
echo "rustc $(rustc --version | cut -d' ' -f2), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), pgbench scale $SCALE, $SECS s rounds, 4 clients"
a1=$(tps); echo "1 without archiving  $a1 tps"
$X -q backup continuous start bench >/dev/null
b1=$(tps); echo "1 with archiving     $b1 tps"
$X -q backup continuous stop bench >/dev/null
a2=$(tps); echo "2 without archiving  $a2 tps"
$X -q backup continuous start bench >/dev/null
b2=$(tps); echo "2 with archiving     $b2 tps"
echo "ratio (with / without, means): $(echo "scale=3; ($b1 + $b2) / ($a1 + $a2)" | bc)"
