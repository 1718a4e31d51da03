#!/usr/bin/env bash
# Figure for docs/benchmarks.md ("Migrations: real-world histories").
# Usage: bash docs/bench/migrate_histories.sh XTASK_BINARY [project...]
#
# The histories are other projects' files and are not in this repository:
# put each one's Prisma migrations folder at $HISTORIES/<project>/migrations
# (default HISTORIES=/tmp/prisma-histories). The figures in
# docs/benchmarks.md used, at these commits:
#   documenso     documenso/documenso @75330166c
#   formbricks    formbricks/formbricks @b66c1dd978   packages/database/migration
#                 (its migration.ts-only folders left out; pgvector is not on
#                 this machine: CREATE EXTENSION vector commented out and
#                 vector(512) made real[] in 20241017124431, in both runs)
#   inbox-zero    elie222/inbox-zero @4f70dcefc       apps/web/prisma/migrations
#   papermark     mfts/papermark @7ff2e657
#   umami         umami-software/umami @c0ea3aefb
#
# For each project under $HISTORIES/<project>/migrations: apply the
# whole Prisma history with psql (one session) to one fresh database and with
# `XTASK migrate deploy development` to another, then compare their schemas
# (pg_dump --schema-only, without _prisma_migrations), run `migrate status`
# and a second `migrate deploy` (must be a no-op).
# One throwaway PostgreSQL 15 cluster for the whole run, removed on exit.
set -uo pipefail

ROOT=${HISTORIES:-/tmp/prisma-histories}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TOOL_TIMEOUT=${TOOL_TIMEOUT:-1800}

if [ $# -lt 1 ]; then
    echo "usage: $0 XTASK_BINARY [project...]" >&2
    exit 2
fi
XTASK=$(readlink -f "$1"); shift
if [ ! -x "$XTASK" ]; then echo "no executable at $XTASK" >&2; exit 2; fi
if [ $# -gt 0 ]; then
    PROJECTS=("$@")
else
    PROJECTS=()
    for d in "$ROOT"/*/migrations; do [ -d "$d" ] && PROJECTS+=("$(basename "$(dirname "$d")")"); done
fi

# ---- throwaway cluster ------------------------------------------------------
W=$(mktemp -d /tmp/prisma-cmp.XXXXXX)
chmod 755 "$W"
LOGDIR="$ROOT/logs"
mkdir -p "$LOGDIR"
PW=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
printf '%s\n' "$PW" > "$W/pwfile"
chown -R postgres: "$W"
chmod 600 "$W/pwfile"

cleanup() {
    if [ -f "$W/data/postmaster.pid" ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m immediate -w stop >/dev/null 2>&1
    fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

runuser -u postgres -- "$PGBIN/initdb" -D "$W/data" -U bench --pwfile="$W/pwfile" \
    -A scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync >"$W/initdb.log" 2>&1 \
    || { echo "initdb failed:"; cat "$W/initdb.log"; exit 1; }
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -l "$W/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $W -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50" \
    start >/dev/null || { echo "postgres did not start:"; cat "$W/postgres.log"; exit 1; }

export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=bench PGPASSWORD=$PW
export BENCH_PW=$PW
SQL() { PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "${2:-postgres}" -c "$1"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

dump() {
    # pg_dump 15.14+ prints \restrict/\unrestrict with a random key: drop them.
    "$PGBIN/pg_dump" --schema-only --no-owner -T _prisma_migrations -d "$1" \
        | grep -Ev '^\\(un)?restrict ' | grep -Ev '^-- Dumped (from|by) '
}

# first 20 lines of a failed run, from its first error line (or, without one,
# the output less the lint findings and the per-migration progress)
failure_head() {
    local n
    n=$(grep -nm1 -iE '^(error|fatal)' "$1" | cut -d: -f1)
    if [ -n "$n" ]; then
        tail -n +"$n" "$1"
    else
        grep -vE '^  [^ ]+:[0-9]+: [a-z0-9-]+: |^      safer: |^==> \[|^  applied |^Lint findings' "$1"
    fi | sed 's/^/    | /' | head -20
}

echo "xtask: $XTASK ($(stat -c '%y' "$XTASK" | cut -d. -f1))"
echo "cluster: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT ($W)"
echo

SUMMARY=()
for P in "${PROJECTS[@]}"; do
    MIG="$ROOT/$P/migrations"
    if [ ! -d "$MIG" ]; then echo "== $P: no $MIG, skipped"; continue; fi
    mapfile -t FILES < <(cd "$MIG" && LC_ALL=C ls -d */ | sed 's|/$||' | while read -r m; do
        [ -f "$m/migration.sql" ] && echo "$MIG/$m/migration.sql"; done)
    N=${#FILES[@]}
    DBN=$(echo "$P" | tr -c 'a-zA-Z0-9\n' '_')
    DB_PSQL="cmp_${DBN}_psql"
    DB_TOOL="cmp_${DBN}_tool"
    echo "== $P: $N migrations ($MIG)"
    for db in "$DB_PSQL" "$DB_TOOL"; do
        SQL "DROP DATABASE IF EXISTS \"$db\"" && SQL "CREATE DATABASE \"$db\""
    done

    # -- psql, one session
    args=(); for f in "${FILES[@]}"; do args+=(-f "$f"); done
    t0=$(now)
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DB_PSQL" "${args[@]}" >"$LOGDIR/$P.psql.log" 2>&1
    psql_rc=$?
    t1=$(now); t_psql=$(elapsed "$t0" "$t1")
    if [ $psql_rc -eq 0 ]; then psql_res=ok; else psql_res="failed (rc $psql_rc)"; fi
    echo "psql:    $psql_res in ${t_psql}s"
    if [ $psql_rc -ne 0 ]; then sed 's/^/    | /' "$LOGDIR/$P.psql.log" | head -20; fi

    # -- the tool
    CFGDIR="$W/cfg-$DBN"; mkdir -p "$CFGDIR"
    CFG="$CFGDIR/ops.toml"
    cat >"$CFG" <<EOF
[environments.development]
[environments.development.database]
host = "127.0.0.1"
port = $PORT
user = "bench"
name = "$DB_TOOL"
password_env = "BENCH_PW"
[environments.development.migrations]
dir = "$MIG"
EOF
    t0=$(now)
    (cd "$CFGDIR" && timeout "$TOOL_TIMEOUT" "$XTASK" --config "$CFG" migrate deploy development) \
        >"$LOGDIR/$P.deploy.log" 2>&1
    tool_rc=$?
    t1=$(now); t_tool=$(elapsed "$t0" "$t1")
    ratio=$(awk -v a="$t_tool" -v b="$t_psql" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }')
    # lint findings are printed as "  <migration>:<line>: <rule>: <message>"
    lint=$(grep -cE '^  [^ ]+:[0-9]+: [a-z0-9-]+: ' "$LOGDIR/$P.deploy.log")
    echo "tool:    exit $tool_rc in ${t_tool}s (tool/psql = ${ratio}x); output $(wc -l <"$LOGDIR/$P.deploy.log") lines, lint findings: $lint"
    if [ $tool_rc -ne 0 ]; then failure_head "$LOGDIR/$P.deploy.log"; fi
    rows=$(SQL "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL) || ' finished / ' || count(*) || ' rows' FROM _prisma_migrations" "$DB_TOOL" 2>/dev/null || echo "no table")
    echo "         _prisma_migrations: $rows (expected $N finished)"

    # -- schema comparison
    dump "$DB_PSQL" >"$LOGDIR/$P.schema.psql.sql" 2>&1
    dump "$DB_TOOL" >"$LOGDIR/$P.schema.tool.sql" 2>&1
    if diff -q "$LOGDIR/$P.schema.psql.sql" "$LOGDIR/$P.schema.tool.sql" >/dev/null; then
        same=yes
    else
        same=no
    fi
    echo "schema identical: $same ($(wc -l <"$LOGDIR/$P.schema.psql.sql") dump lines)"
    if [ $same = no ]; then
        diff -u "$LOGDIR/$P.schema.psql.sql" "$LOGDIR/$P.schema.tool.sql" >"$LOGDIR/$P.schema.diff"
        sed 's/^/    | /' "$LOGDIR/$P.schema.diff" | head -30
    fi

    # -- status, then a second deploy (must be a no-op)
    (cd "$CFGDIR" && timeout 600 "$XTASK" --config "$CFG" migrate status development) >"$LOGDIR/$P.status.log" 2>&1
    status_rc=$?
    echo "status:  exit $status_rc"
    if [ $status_rc -ne 0 ]; then grep -vE '^  applied ' "$LOGDIR/$P.status.log" | sed 's/^/    | /' | head -20; fi
    before=$(SQL "SELECT count(*) FROM _prisma_migrations" "$DB_TOOL" 2>/dev/null || echo "?")
    (cd "$CFGDIR" && timeout 600 "$XTASK" --config "$CFG" migrate deploy development) >"$LOGDIR/$P.deploy2.log" 2>&1
    deploy2_rc=$?
    after=$(SQL "SELECT count(*) FROM _prisma_migrations" "$DB_TOOL" 2>/dev/null || echo "?")
    echo "deploy again: exit $deploy2_rc (_prisma_migrations rows $before -> $after)"
    if [ $deploy2_rc -ne 0 ] || [ "$before" != "$after" ]; then failure_head "$LOGDIR/$P.deploy2.log"; fi
    echo

    SUMMARY+=("$(printf '%-12s %4s  %-8s %5s  %-4s %8s %8s %7s  %4s  %6s  %7s' \
        "$P" "$N" "${psql_res%% *}" "$tool_rc" "$same" "$t_psql" "$t_tool" "${ratio}x" "$lint" "$status_rc" "$deploy2_rc")")
done

echo "== summary"
printf '%-12s %4s  %-8s %5s  %-4s %8s %8s %7s  %4s  %6s  %7s\n' \
    project migs psql tool same psql_s tool_s ratio lint status deploy2
for l in "${SUMMARY[@]}"; do echo "$l"; done
echo "(logs and dumps in $LOGDIR)"
