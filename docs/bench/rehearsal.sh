#!/usr/bin/env bash
# Figure for docs/benchmarks.md ("Releases: the rehearsal"), side by side in
# one run: a production-like release (protected: a verified backup first) of
# the demo's release stack with about 1 GB of data and one pending
# migration,
#   A. `deploy --skip-rehearsal` (the backup, its verification by a full
#      restore into a scratch database, the migration, the cutover), against
#   B. `deploy` with the rehearsal (the same, keeping the verified copy: the
#      migration on it, the new and the live release started on it with the
#      health check and the smoke tests).
# Then A again, so that a drift in the machine's load shows.
# Usage (as root, from the workspace root): bash docs/bench/rehearsal.sh [MB]
# Needs: Docker, Debian's docker-registry, the demo images
# (`cargo xtask demo prepare`). Leaves nothing behind (trap).
set -euo pipefail
MB=${1:-1024}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build -q -p xtask
X=${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask
WORK=$(mktemp -d /tmp/mre-ops-bench-rehearsal.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REG=$(free_port); APP=$(free_port); ING=$(free_port); PG=$(free_port)
P=bench-rh-$$
cleanup() {
  (cd "$WORK" && "$X" --config "$WORK/ops.toml" down bench --volumes --yes >/dev/null 2>&1) || true
  docker ps -aq --filter "name=$P-" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker volume ls -q | grep "^$P" | xargs -r docker volume rm >/dev/null 2>&1 || true
  docker images --format '{{.Repository}}:{{.Tag}}' | grep -F ":$P-" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  [ -n "${REGPID:-}" ] && kill "$REGPID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/registry" "$WORK/migrations"
cp -r prisma/migrations/. "$WORK/migrations/"
cat > "$WORK/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$REG
YML
docker-registry serve "$WORK/registry.yml" >/dev/null 2>&1 & REGPID=$!
cat > "$WORK/ops.toml" <<TOML
[environments.bench]
env_file = ".env.bench"
protected = true
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.bench.compose]
files = ["$ROOT/demo/docker-compose.release.yml"]
project = "$P"
pre_build = [["$X", "-q", "demo", "prepare"]]
env = { MRE_CONTAINER_PREFIX = "$P", MRE_APP_PORT = "$APP", MRE_INGESTION_PORT = "$ING", MRE_POSTGRES_PORT = "$PG" }
[environments.bench.services.mre-app]
container = "$P-proxy"
health = { url = "http://127.0.0.1:$APP/api/health", expect = "runbook-json" }
[environments.bench.database]
container = "$P-postgres"
host = "127.0.0.1"
port = $PG
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.bench.migrations]
dir = "migrations"
[environments.bench.backups]
method = "container"
dir = "backups"
[environments.bench.release]
registry = "127.0.0.1:$REG"
health_timeout_secs = 60
drain_secs = 1
proxy = { service = "mre-proxy" }
images = { mre-demo-app = { context = "$ROOT/demo/docker/app" } }
[environments.bench.release.services.mre-app]
image = "mre-demo-app"
strategy = "blue-green"
port = 3001
health_path = "/api/health"
[environments.bench.release.services.mre-liverc-ingestion-service]
image = "mre-demo-app"
strategy = "stop-first"
TOML
export MRE_SMOKE_EMAIL=bench-smoke@example.com MRE_SMOKE_PASSWORD=bench-smoke-password
x() { "$X" --config "$WORK/ops.toml" "$@"; }
timed() { local s; s=$(date +%s.%N); "$@" >"$WORK/last.log" 2>&1 || { cat "$WORK/last.log"; exit 1; }; echo "$(date +%s.%N) - $s" | bc; }
x -q deploy bench --tag "$P-v0" --yes --skip-preflight "benchmark" >/dev/null 2>&1 || { x deploy bench --tag "$P-v0" --yes --skip-preflight benchmark; exit 1; }
echo "filling about $MB MB..." >&2
docker exec "$P-postgres" psql -q -U pacetracer -d pacetracer -c \
  "CREATE TABLE bulk AS SELECT g AS id, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) AS payload
   FROM generate_series(1, ($MB::bigint * 1024 * 1024) / 180) g; ALTER TABLE bulk ADD PRIMARY KEY (id);"
size=$(docker exec "$P-postgres" psql -tA -U pacetracer -d pacetracer -c "SELECT pg_size_pretty(pg_database_size('pacetracer'))")
release() { # N extra args...: one pending migration (a nullable column), then a deploy
  local n=$1; shift
  mkdir -p "$WORK/migrations/2099123100000${n}_bench_$n"
  printf "SET lock_timeout = '5s';\nALTER TABLE \"events\" ADD COLUMN \"bench_$n\" TEXT;\n" \
    > "$WORK/migrations/2099123100000${n}_bench_$n/migration.sql"
  timed x deploy bench --tag "$P-v$n" --yes --skip-preflight benchmark "$@"
}
a1=$(release 1 --skip-rehearsal benchmark)
b=$(release 2)
grep -q "Rehearsal passed" "$WORK/last.log" || { echo "the rehearsal did not run:"; cat "$WORK/last.log"; exit 1; }
rehearsal=$(grep -o "Rehearsal passed in [0-9.]* s" "$WORK/last.log")
a2=$(release 3 --skip-rehearsal benchmark)
echo "database: $size"
echo "A  deploy --skip-rehearsal: ${a1} s"
echo "B  deploy (rehearsed):      ${b} s   ($rehearsal)"
echo "A' deploy --skip-rehearsal: ${a2} s"
echo "B / mean(A, A') = $(echo "scale=3; 2 * $b / ($a1 + $a2)" | bc)"
