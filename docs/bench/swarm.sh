#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Swarm"), side by side in one run, wrk on
# the proxy during:
#   A. `cargo xtask deploy staging` of a new version (Compose, blue-green);
#   B. `cargo xtask deploy swarm` of a new version (the engine's start-first
#      rolling update of 2 app replicas, dnsrr behind nginx);
#   C. `cargo xtask deploy swarm` of a version whose health fails (the
#      engine rolls it back, mre-ops keeps the stack on one release).
# Needs: a registry on 127.0.0.1:5000 (README: Releases), wrk, the engine a
# swarm manager (`docker swarm init --advertise-addr 127.0.0.1`), both
# staging and swarm deployable.
# Usage: bash docs/bench/swarm.sh [SECONDS]   (from the workspace root)
set -euo pipefail
SECS=${1:-30}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build -q -p xtask
X=${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask
export MRE_SMOKE_EMAIL=${MRE_SMOKE_EMAIL:-bench-smoke@example.com}
export MRE_SMOKE_PASSWORD=${MRE_SMOKE_PASSWORD:-bench-smoke-password}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
curl -sf http://127.0.0.1:5000/v2/ >/dev/null || { echo "no registry on 127.0.0.1:5000 (README: Releases)"; exit 1; }
[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ] || { echo "not a swarm: docker swarm init --advertise-addr 127.0.0.1"; exit 1; }

load() { # url seconds -> "requests non2xx socket_errors"
  wrk -t2 -c8 -d"$2"s "$1" 2>&1 | awk '
    /requests in/ {r=$1}
    /Non-2xx/ {n=$5}
    /Socket errors/ {gsub(",","");s=$4+$6+$8+$10}
    END {printf "%s %s %s", r, (n==""?0:n), (s==""?0:s)}'
}
during() { # url cmd... -> "requests non2xx socket_errors wall_s exit"
  local url=$1; shift
  load "$url" "$SECS" > /tmp/mre-bench-load & local l=$!
  sleep 2
  local t0=$(date +%s.%N) rc=0
  "$@" >/tmp/mre-bench-cmd.log 2>&1 || rc=$?
  local t1=$(date +%s.%N)
  wait $l
  printf "%s %.1f exit=%s" "$(cat /tmp/mre-bench-load)" "$(echo "$t1 - $t0" | bc)" "$rc"
}
# A config whose image is the base one plus one line (a new digest).
variant() { # name line -> path of an ops.toml beside the real one
  local ctx; ctx=$(mktemp -d); printf 'FROM 127.0.0.1:5000/mre-demo-app:bench-base-%s\n%s\n' "$$" "$2" > "$ctx/Dockerfile"
  python3 - "$ctx" "$1" <<'PY'
import sys
s=open('ops.toml').read()
i=s.index('[environments.swarm.release]')
s=s[:i]+s[i:].replace('context = "demo/docker/app"', f'context = "{sys.argv[1]}"', 1)
open(f'ops-bench-{sys.argv[2]}.toml','w').write(s)
PY
  echo "ops-bench-$1.toml"
}
trap 'rm -f ops-bench-*.toml' EXIT

"$X" -q deploy staging --tag "bench-base-$$" >/dev/null
"$X" -q deploy swarm --tag "bench-base-$$" >/dev/null
new=$(variant new "ENV MRE_BENCH=$$")
bad=$(variant bad "ENV MRE_DEMO_HEALTH_FAULT=500")
echo "wrk -t2 -c8 -d${SECS}s on the proxy; columns: requests non2xx socket_errors wall_s exit"
echo "A staging (Compose, blue-green):   $(during http://127.0.0.1:13001/api/health "$X" -q deploy staging --tag "bench-a-$$")"
echo "B swarm (start-first update):      $(during http://127.0.0.1:33001/api/health "$X" -q --config "$new" deploy swarm --tag "bench-b-$$")"
echo "C swarm (failing health, rollback): $(during http://127.0.0.1:33001/api/health "$X" -q --config "$bad" deploy swarm --tag "bench-c-$$")"
