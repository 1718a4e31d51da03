#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Disaster recovery"): on a throwaway
# PostgreSQL 15 holding >= 1 GB of pgbench tables, time side by side in one
# run:
#   pg_dump -Fc to a file            vs  cargo xtask backup create
#   pg_restore into an empty db      vs  the safety backup + restore step, and the
#                                        whole guarded cargo xtask restore
# and the whole `restore`, `backup verify` and `drill`.
# Usage (as root, from the workspace root): docs/bench/backup-1gb.sh [SCALE]
# Needs /usr/lib/postgresql/15/bin. Leaves nothing behind (trap).
set -euo pipefail
SCALE=${1:-70}
BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mre-ops-bench.XXXXXX)
PORT=${PORT:-45998}
export PGPASSWORD=bench-$RANDOM$RANDOM PW
PW=$PGPASSWORD
chown postgres "$WORK"
echo "$PGPASSWORD" > "$WORK/pw"; chown postgres "$WORK/pw"
cleanup() { runuser -u postgres -- $BIN/pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
runuser -u postgres -- $BIN/initdb -D "$WORK/data" -U pacetracer --auth-local=trust --auth-host=scram-sha-256 --pwfile="$WORK/pw" >/dev/null
runuser -u postgres -- $BIN/pg_ctl -D "$WORK/data" -l "$WORK/log" -w start \
  -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_wal_size=4GB -c checkpoint_timeout=30min" >/dev/null
PSQL="$BIN/psql -X -q -tA -h 127.0.0.1 -p $PORT -U pacetracer"
$PSQL -d postgres -c "CREATE DATABASE pacetracer"
t() { local s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
echo "generating pgbench data, scale $SCALE..." >&2
gen=$(t $BIN/pgbench -q -i -s "$SCALE" -I dtGvp -h 127.0.0.1 -p $PORT -U pacetracer pacetracer 2>/dev/null)
size=$($PSQL -d pacetracer -c "SELECT pg_size_pretty(pg_database_size('pacetracer'))")
bytes=$($PSQL -d pacetracer -c "SELECT pg_database_size('pacetracer')")
cat > "$WORK/ops.toml" <<TOML
[environments.bench]
[environments.bench.compose]
files = ["none.yml"]
project = "bench"
[environments.bench.database]
host = "127.0.0.1"
port = $PORT
user = "pacetracer"
name = "pacetracer"
password_env = "PW"
[environments.bench.backups]
method = "host"
TOML
# The binary `cargo xtask` runs, copied so that the timing holds no build.
cd "$ROOT"; cargo build -q -p xtask; cp "${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask" "$WORK/xtask"
X="$WORK/xtask --config $WORK/ops.toml"
# Warm the cache the same way for both.
$PSQL -d pacetracer -c "SELECT count(*) FROM pgbench_accounts" >/dev/null
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
RUNS=${RUNS:-3}
dumps=(); creates=()
for i in $(seq "$RUNS"); do   # alternate, so that both see the same machine
  dumps+=("$(t $BIN/pg_dump -Fc -h 127.0.0.1 -p $PORT -U pacetracer -d pacetracer -f "$WORK/plain.dump")")
  creates+=("$(t $X -q backup create bench)")
done
alone=(); steps=(); wholes=()
for i in $(seq "$RUNS"); do
  $PSQL -d postgres -c "CREATE DATABASE plain_restore"
  alone+=("$(t $BIN/pg_restore --exit-on-error -h 127.0.0.1 -p $PORT -U pacetracer -d plain_restore "$WORK/plain.dump")")
  $PSQL -d postgres -c "DROP DATABASE plain_restore"
  wholes+=("$(t $X -v restore bench latest --yes --wait 30 2>"$WORK/restore.log")")
  steps+=("$(grep -o 'Take a safety backup while restoring into a new database took [0-9.]*s' "$WORK/restore.log" | tail -1 | grep -o '[0-9.]*s$' | tr -d s)")
done
# What create adds on top of pg_dump: exact counts of every table, alone.
counts=$(t $PSQL -d pacetracer -c "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_history) + (SELECT count(*) FROM pgbench_tellers) + (SELECT count(*) FROM pgbench_branches)")
verify=$(t $X -q backup verify bench latest)
drill=$(t $X -q drill bench)
dump=$(med "${dumps[@]}"); create=$(med "${creates[@]}")
restore_alone=$(med "${alone[@]}"); restore_step=$(med "${steps[@]}"); restore_whole=$(med "${wholes[@]}")
r() { echo "scale=3; $1 / $2" | bc; }
f() { printf '%.1f' "$1"; }
cat <<OUT
database: pgbench scale $SCALE, $size ($bytes bytes), $(nproc) cores; archive $(stat -c %s "$WORK/plain.dump") bytes
runs: pg_dump ${dumps[*]} | backup create ${creates[*]}
runs: pg_restore ${alone[*]} | restore step ${steps[*]} | whole restore ${wholes[*]}
| measured (median of $RUNS, alternating) | mre-ops (s) | plain tool (s) | ratio |
|---|---:|---:|---:|
| \`backup create\` vs \`pg_dump -Fc -f FILE\` | $(f $create) | $(f $dump) | $(r $create $dump) |
| safety backup + restore step of \`restore\` (overlapped) vs \`pg_restore -d EMPTYDB FILE\` | $(f $restore_step) | $(f $restore_alone) | $(r $restore_step $restore_alone) |
| whole guarded \`restore\` (checks, lock, stop, safety backup ∥ restore, counts, swap, start, health) vs \`pg_restore\` | $(f $restore_whole) | $(f $restore_alone) | $(r $restore_whole $restore_alone) |
| exact \`count(*)\` of every table, alone (what \`create\` adds, run alongside pg_dump) | $(f $counts) | | |
| \`backup verify\` (checksum, restore into scratch, counts, drop) | $(f $verify) | | |
| \`drill\` | $(f $drill) | | |
OUT
