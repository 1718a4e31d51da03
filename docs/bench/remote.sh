#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Remote environments"), side by side in
# one run, alternating:
#   A. a >= 1 GB database's backup over SSH:
#      `ssh HOST docker exec DB pg_dump -Fc > file`  vs  `cargo xtask backup create`
#      of an `ssh` environment (pg_dump in the same container, streamed back
#      through mre-ops's SSH connection, checksummed, manifest written);
#   B. a deploy (the development path, nothing to change: compose up, wait
#      for the database, migrations, every health check) of one stack
#      through `ssh` vs the same stack as a local environment.
# The "server" is this machine behind a throwaway sshd on loopback (its own
# keys, a pinned host key), so both sides of each pair use the same engine
# and the difference is what going through SSH costs.
# Usage (as root, from the workspace root): [BLOB_MB=1024] docs/bench/remote.sh [SCALE]
# Needs openssh-server, the demo images (`cargo xtask demo prepare`).
# Leaves nothing behind (trap).
set -euo pipefail
SCALE=${1:-70}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mre-ops-bench-remote.XXXXXX)
SPORT=${SPORT:-45997}
DB=mre-bench-remote-$$
PROJECT=mre-bench-remote-$$
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_APP=$(free_port); P_ING=$(free_port); P_PG=$(free_port)
export PW=bench-$RANDOM$RANDOM
cleanup() {
  [ -f "$WORK/sshd.pid" ] && kill "$(cat "$WORK/sshd.pid")" 2>/dev/null || true
  docker rm -f "$DB" >/dev/null 2>&1 || true
  [ -f "$WORK/ops.toml" ] && "$WORK/xtask" --config "$WORK/ops.toml" -q down local --yes >/dev/null 2>&1 || true
  # (`down --volumes` wants a verified backup first; this stack's data is throwaway.)
  docker volume rm "${PROJECT}_pgdata" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
t() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The server: sshd on loopback, root by key only, a pinned host key.
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
cat > "$WORK/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SPORT
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile $WORK/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
EOF
/usr/sbin/sshd -f "$WORK/sshd_config" -E "$WORK/sshd.log"
echo "[127.0.0.1]:$SPORT $(cut -d' ' -f1-2 "$WORK/host_key.pub")" > "$WORK/known_hosts"
cat > "$WORK/ssh_config" <<EOF
Host bench
  HostName 127.0.0.1
Host *
  Port $SPORT
  User root
  IdentityFile $WORK/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $WORK/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
EOF

# A. The database: the demo's PostgreSQL image, >= 1 GB of pgbench tables.
docker run -d --name "$DB" -e POSTGRES_USER=pacetracer -e POSTGRES_DB=pacetracer \
  -e POSTGRES_PASSWORD="$PW" -p 127.0.0.1::5432 mre-demo-postgres:15 >/dev/null
until docker exec "$DB" pg_isready -q -U pacetracer -d pacetracer 2>/dev/null; do sleep 0.5; done
sleep 2
until docker exec "$DB" pg_isready -q -U pacetracer -d pacetracer 2>/dev/null; do sleep 0.5; done
PGPORT=$(docker port "$DB" 5432/tcp | head -1 | sed 's/.*://')
echo "generating pgbench data, scale $SCALE..." >&2
docker exec "$DB" pgbench -q -i -s "$SCALE" -I dtGvp -U pacetracer pacetracer >/dev/null 2>&1
# pgbench's tables compress ~60x in a dump: add BLOB_MB of random bytes
# (1 KiB rows), which do not, so that the dump itself has that size.
if [ "${BLOB_MB:-0}" -gt 0 ]; then
  echo "generating $BLOB_MB MB of random rows..." >&2
  docker exec "$DB" psql -q -U pacetracer -d pacetracer -c "CREATE TABLE blob (b bytea)" \
    -c "INSERT INTO blob SELECT (SELECT decode(string_agg(md5(random()::text || g::text || i::text), ''), 'hex') FROM generate_series(1, 64) i) FROM generate_series(1, $BLOB_MB * 1024) g" >/dev/null
fi
size=$(docker exec "$DB" psql -tA -U pacetracer -d pacetracer -c "SELECT pg_size_pretty(pg_database_size('pacetracer'))")

cat > "$WORK/ops.toml" <<TOML
[environments.db]
ssh = "root@127.0.0.1:$SPORT"
ssh_config = "ssh_config"
docker_host = "unix:///var/run/docker.sock"
[environments.db.database]
container = "$DB"
host = "127.0.0.1"
port = $PGPORT
user = "pacetracer"
name = "pacetracer"
password_env = "PW"
[environments.db.backups]
method = "container"
dir = "backups"
TOML
for e in local remote; do
  if [ $e = remote ]; then
    extra="ssh = \"root@127.0.0.1:$SPORT\"
ssh_config = \"ssh_config\"
docker_host = \"unix:///var/run/docker.sock\""
  else extra=""; fi
  cat >> "$WORK/ops.toml" <<TOML
[environments.$e]
$extra
env_file = ".env.stack"
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.$e.compose]
files = ["$ROOT/demo/docker-compose.yml"]
project = "$PROJECT"
env = { MRE_CONTAINER_PREFIX = "$PROJECT", MRE_APP_PORT = "127.0.0.1:$P_APP", MRE_INGESTION_PORT = "127.0.0.1:$P_ING", MRE_POSTGRES_PORT = "127.0.0.1:$P_PG" }
[environments.$e.services.mre-app]
container = "$PROJECT-app"
health = { url = "http://127.0.0.1:$P_APP/api/health", expect = "runbook-json" }
[environments.$e.services.mre-liverc-ingestion-service]
container = "$PROJECT-liverc-ingestion-service"
health = { url = "http://127.0.0.1:$P_ING/health" }
[environments.$e.database]
container = "$PROJECT-postgres"
host = "127.0.0.1"
port = $P_PG
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.$e.migrations]
dir = "$ROOT/prisma/migrations"
TOML
done
# The binary `cargo xtask` runs, copied so that the timing holds no build.
cd "$ROOT"; cargo build -q -p xtask; cp "${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask" "$WORK/xtask"
X="$WORK/xtask --config $WORK/ops.toml -q"
$X demo prepare
SSH="ssh -F $WORK/ssh_config bench"

plain=(); viassh=(); dsize=0
for i in $(seq "$RUNS"); do
  plain+=("$(t sh -c "$SSH docker exec $DB pg_dump -Fc -U pacetracer pacetracer > $WORK/plain.dump")")
  viassh+=("$(t $X backup create db)")
done
dsize=$(stat -c %s "$WORK/plain.dump")

# B. First deploy outside the timing (build, volumes), then alternate.
$X deploy local >/dev/null
locals=(); remotes=()
for i in $(seq "$RUNS"); do
  locals+=("$(t $X deploy local)")
  remotes+=("$(t $X deploy remote)")
done

pm=$(med "${plain[@]}"); vm=$(med "${viassh[@]}")
lm=$(med "${locals[@]}"); rm_=$(med "${remotes[@]}")
echo "database $size, dump $((dsize / 1048576)) MiB, $RUNS runs each, medians (s), $(nproc) cores"
printf '%-62s %8s\n' "ssh HOST docker exec DB pg_dump -Fc > file" "$pm"
printf '%-62s %8s  (%.2fx)\n' "cargo xtask backup create (ssh environment)" "$vm" "$(echo "$vm / $pm" | bc -l)"
printf '%-62s %8s\n' "cargo xtask deploy (local environment, nothing to change)" "$lm"
printf '%-62s %8s  (%.2fx)\n' "cargo xtask deploy (ssh environment, the same stack)" "$rm_" "$(echo "$rm_ / $lm" | bc -l)"
