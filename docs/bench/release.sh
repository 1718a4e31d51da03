#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Releases"), side by side in one run:
#   A. wrk on the staging proxy during `cargo xtask deploy staging` of a new version;
#   B. wrk on the staging proxy during `cargo xtask rollback staging`;
#   C. wrk on the development app during a plain `compose up -d --force-recreate mre-app`
#      (the runbook's development path: the container is replaced in place);
#   D. rollback wall time: to the kept colour vs the runbook's
#      "git checkout + rebuild" path (`rollback staging --rebuild REV`).
# Needs: a registry on 127.0.0.1:5000 (README: Releases), wrk, both stacks
# deployable (`cargo xtask deploy development`, `cargo xtask deploy staging`).
# Usage: bash docs/bench/release.sh [SECONDS]   (from the workspace root)
set -euo pipefail
SECS=${1:-30}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build -q -p xtask
X=${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask
# The smoke user a release's smoke tests log in as (registered on first use).
export MRE_SMOKE_EMAIL=${MRE_SMOKE_EMAIL:-bench-smoke@example.com}
export MRE_SMOKE_PASSWORD=${MRE_SMOKE_PASSWORD:-bench-smoke-password}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
curl -sf http://127.0.0.1:5000/v2/ >/dev/null || { echo "no registry on 127.0.0.1:5000 (README: Releases)"; exit 1; }

load() { # url seconds -> prints "requests non2xx socket_errors"
  wrk -t2 -c8 -d"$2"s "$1" 2>&1 | awk '
    /requests in/ {r=$1}
    /Non-2xx/ {n=$5}
    /Socket errors/ {gsub(",","");s=$4+$6+$8+$10}
    END {printf "%s %d %d\n", r, n, s}'
}
during() { # url command... : runs the load for SECS around the command
  local url=$1; shift
  local f; f=$(mktemp)
  load "$url" "$SECS" >"$f" &
  local w=$!
  sleep 1
  local t0; t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  local t1; t1=$(date +%s.%N)
  wait $w
  printf '%s took=%.1fs\n' "$(cat "$f")" "$(echo "$t1 - $t0" | bc)"
  rm -f "$f"
}

"$X" -q deploy development >/dev/null
"$X" -q deploy staging --tag "bench-base-$$" >/dev/null
echo "A deploy   (staging, new version):  $(during http://127.0.0.1:13001/api/health "$X" -q deploy staging --tag "bench-$$")"
echo "B rollback (staging, kept colour):  $(during http://127.0.0.1:13001/api/health "$X" -q rollback staging)"
P=(docker-compose -p my-race-engineer -f demo/docker-compose.yml)
docker compose version >/dev/null 2>&1 && P=(docker compose -p my-race-engineer -f demo/docker-compose.yml)
echo "C compose up -d --force-recreate:   $(during http://127.0.0.1:3001/api/health env $(grep -h POSTGRES_PASSWORD .env.development) "${P[@]}" up -d --force-recreate --no-deps mre-app)"

# D: time to serving. The kept colour: the journal's step times up to the switch.
"$X" -q deploy staging --tag "bench-d-$$" >/dev/null
t0=$(date +%s.%N); "$X" -q rollback staging >/dev/null; t1=$(date +%s.%N)
serve=$("$X" --json releases staging 2>/dev/null | python3 -c '
import json,sys
e=json.load(sys.stdin)["entries"][-1]; t=0
for s in e["steps"]:
    t+=s["seconds"]
    if s["title"].startswith("Switch the proxy"): break
print(round(t,1))')
printf 'D rollback to the kept colour: serving after %ss (whole command %.1fs)\n' "$serve" "$(echo "$t1 - $t0" | bc)"
REV=$(git rev-parse --short=12 HEAD)
t0=$(date +%s.%N); "$X" -q rollback staging --rebuild "$REV" >/dev/null; t1=$(date +%s.%N)
serve=$("$X" --json releases staging 2>/dev/null | python3 -c '
import json,sys
e=json.load(sys.stdin)["entries"][-1]; t=0
for s in e["steps"]:
    t+=s["seconds"]
    if s["title"].startswith("Switch the proxy"): break
print(round(t,1))')
printf 'D rollback --rebuild %s (git checkout + build + push): serving after %ss (whole command %.1fs)\n' "$REV" "$serve" "$(echo "$t1 - $t0" | bc)"
