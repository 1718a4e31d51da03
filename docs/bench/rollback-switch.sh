#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Rollback to traffic"), side by side in
# one run: `rollback` of the release stand-in behind HAProxy with the
# previous colour stopped (kept; the default) and kept running
# (release.keep_previous_running), under 16 kept-alive connections: when
# HAProxy has the previous colour ready again (polled through its runtime
# socket, about 0.1 s apart) and when the command ends.
# Needs what the release tests need (`cargo xtask test --yes`). Usage, from
# the workspace root:
#   bash docs/bench/rollback-switch.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo test -q -p xtask --test releases bench_rollback_to_traffic -- --ignored --nocapture 2>&1 |
  grep -E '^rollback '
