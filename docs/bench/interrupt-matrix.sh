#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Interruptions"): against the deployed
# development stack (`cargo xtask deploy development`, with backups), for
# SIGINT, SIGTERM and SIGKILL, at each step of `restore` and of `deploy`:
# start the command, send the signal once it announces step K, then run the
# next command (`recover` after a kill -9 of a restore, `deploy` after any
# interrupted deploy) and check that every health check passes, no staged
# database is left and the lock is free. Then TRIALS pairs of concurrent
# restores and of concurrent deploys: exactly one may succeed, the other must
# be refused naming the holder (no false success).
# Usage: bash docs/bench/interrupt-matrix.sh [TRIALS]   (from the workspace root)
set -uo pipefail
TRIALS=${1:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build -q -p xtask
X=${CARGO_TARGET_DIR:-$ROOT/target}/debug/xtask
E=development
"$X" -q deploy $E >/dev/null || { echo "deploy development first"; exit 1; }
"$X" -q backup create $E >/dev/null
LOG=$(mktemp)

healthy() {
  "$X" -q health $E --wait 90 >/dev/null 2>&1 || return 1
  local left
  left=$("$X" --json backup list $E 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for l in d.get("leftover_databases",[]) if l["kind"]!="replaced"))')
  [ "$left" = 0 ] || return 2
  "$X" lock status $E 2>/dev/null | grep -q "is not locked" || return 3
  return 0
}

trial() { # command steps signal step
  local cmd=$1 steps=$2 sig=$3 k=$4
  "$X" $cmd >"$LOG" 2>&1 &
  local pid=$!
  local t=0
  until grep -q "\[$k/$steps\]" "$LOG" || ! kill -0 $pid 2>/dev/null; do sleep 0.02; t=$((t+1)); [ $t -gt 6000 ] && break; done
  local at; at=$(grep -o "\[[0-9]*/$steps\]" "$LOG" | tail -1)
  kill -"$sig" $pid 2>/dev/null; wait $pid; local code=$?
  case "$cmd" in
    restore*) [ "$sig" = KILL ] && "$X" -q recover $E >/dev/null 2>&1 ;;
    deploy*) "$X" -q deploy $E >/dev/null 2>&1 ;;
  esac
  if healthy; then r=ok; else r="FAIL($?)"; fi
  printf '%-8s %-5s signalled at %-7s exit %-4s next command, then: %s\n' "${cmd%% *}" "$sig" "${at:-start}" "$code" "$r"
  [ "$r" = ok ]
}

pass=0; total=0
for sig in INT TERM KILL; do
  for k in 1 2 3 4 5 6; do
    total=$((total+1)); trial "restore $E latest --yes --wait 60" 6 $sig $k && pass=$((pass+1))
  done
  for k in 1 2 3 4 5 6 7; do
    total=$((total+1)); trial "deploy $E" 7 $sig $k && pass=$((pass+1))
  done
done
echo "signals: $pass of $total trials left the stack serving, nothing staged, the lock free"

cpass=0
for i in $(seq "$TRIALS"); do
  for cmd in "restore $E latest --yes --wait 60" "deploy $E"; do
    "$X" $cmd >"$LOG.a" 2>&1 & a=$!
    sleep 0.3
    "$X" $cmd >"$LOG.b" 2>&1; b=$?
    wait $a; a=$?
    if { [ $a = 0 ] && [ $b != 0 ] && grep -q "is locked" "$LOG.b"; } || { [ $b = 0 ] && [ $a != 0 ] && grep -q "is locked" "$LOG.a"; }; then
      cpass=$((cpass+1)); echo "concurrent ${cmd%% *}: one ran, the other was refused naming the holder"
    else
      echo "concurrent ${cmd%% *}: exits $a and $b"; tail -2 "$LOG.a" "$LOG.b"
    fi
    healthy >/dev/null || echo "  (not healthy afterwards)"
  done
done
echo "concurrency: $cpass of $((TRIALS*2)) pairs: one ran, one refused"
rm -f "$LOG" "$LOG.a" "$LOG.b"
