#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Continuous archiving"): on a database
# container of the demo's image (mre-demo-postgres:15, `cargo xtask demo
# prepare`) holding pgbench tables, archived continuously:
#   RPO: a writer inserts a numbered row every 100 ms; after 3 s the
#        container and its volume are destroyed; `restore --to-latest`;
#        the acknowledged rows lost
#   RTO: `restore ENV --to-latest --yes` against the guarded dump restore
#        `restore ENV latest --yes` of the same data, side by side (ratio)
# Usage (as root, from the workspace root): docs/bench/pitr.sh [SCALE]
# (scale 70 is about 1 GB). Leaves nothing behind (trap).
set -euo pipefail
SCALE=${1:-70}
BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mre-ops-pitr.XXXXXX)
NAME=mre-bench-pitr-$$
PORT=${PORT:-45997}
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
# The demo's image as it is (another checkout may have built it): the
# restore runs the database container's exact image, whatever its tag.
docker image inspect mre-demo-postgres:15 >/dev/null 2>&1 || "$WORK/xtask" -q demo prepare
docker network create "$NAME" >/dev/null
docker run -d --name "$NAME" --network "$NAME" -e POSTGRES_USER=pacetracer -e POSTGRES_DB=pacetracer \
  -e POSTGRES_PASSWORD="$PW" -v "$NAME:/var/lib/postgresql/data" -p "127.0.0.1:$PORT:5432" \
  mre-demo-postgres:15 postgres -c max_wal_size=4GB >/dev/null
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
continuous = true
TOML
X="$WORK/xtask --config $WORK/ops.toml"
t() { local s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
echo "generating pgbench data, scale $SCALE..." >&2
$BIN/pgbench -q -i -s "$SCALE" -I dtGvp -h 127.0.0.1 -p "$PORT" -U pacetracer pacetracer >/dev/null 2>&1
size=$($PSQL -c "SELECT pg_size_pretty(pg_database_size('pacetracer'))")
$PSQL -c "CREATE TABLE laps (n bigint PRIMARY KEY)"
start=$(t $X -q backup continuous start bench)
dump=$(t $X -q backup create bench --method container)

# RPO: one psql session, a numbered row every 100 ms, acknowledged rows counted.
( for i in $(seq 1 100000); do echo "INSERT INTO laps VALUES ($i) RETURNING n;"; sleep 0.1; done ) \
  | $PSQL -v ON_ERROR_STOP=1 > "$WORK/acked" 2>/dev/null &
writer=$!
sleep 3
vol=$(docker inspect -f '{{range .Mounts}}{{.Name}}{{end}}' "$NAME")
docker rm -f "$NAME" >/dev/null; docker volume rm "$vol" >/dev/null
# psql stops at its first failed INSERT, its output flushed: every
# acknowledged number is in the file.
wait $writer 2>/dev/null || true
acked=$(grep -c . "$WORK/acked" || true)
latest_lost=$(t $X -q restore bench --to-latest --yes)
present=$($PSQL -c "SELECT count(*) FROM laps WHERE n <= $acked")
lost=$((acked - present))

# RTO side by side, alternating, on the restored database (same data).
# The point-in-time restore's time to serving leaves out its last step
# (archiving the new timeline: a new base backup, the database serving).
serving() { python3 -c 'import json,sys; s=json.load(sys.stdin)["steps"]; print(sum(x["seconds"] for x in s if not x["title"].startswith("Archive")))'; }
pitrs=(); dumps=(); servings=()
for i in 1 2; do
  dumps+=("$(t $X -q restore bench latest --yes)")
  s0=$(date +%s.%N)
  $X -q --json restore bench --to-latest --yes > "$WORK/pitr.json"
  pitrs+=("$(echo "$(date +%s.%N) - $s0" | bc)")
  servings+=("$(serving < "$WORK/pitr.json")")
done
best() { printf '%s\n' "$@" | sort -n | head -1; }
p=$(best "${pitrs[@]}"); d=$(best "${dumps[@]}"); sv=$(best "${servings[@]}")
printf 'database: %s (pgbench scale %s)\n' "$size" "$SCALE"
printf 'backup continuous start (slot, archiver, base backup): %.1f s; backup create: %.1f s\n' "$start" "$dump"
printf 'RPO: %s of %s acknowledged rows lost (%s ms of writes); restore --to-latest after the volume was lost: %.1f s\n' \
  "$lost" "$acked" "$((lost * 100))" "$latest_lost"
printf 'RTO (best of 2): restore --to-latest %.1f s (runs: %s; serving after %.1f s), guarded dump restore %.1f s (runs: %s)\n' \
  "$p" "${pitrs[*]}" "$sv" "$d" "${dumps[*]}"
printf 'ratio to the dump restore: whole command %.2f, until serving %.2f\n' "$(echo "$p / $d" | bc -l)" "$(echo "$sv / $d" | bc -l)"
