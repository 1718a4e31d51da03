#!/usr/bin/env bash
# Figures for docs/benchmarks.md ("Proxy switch"), side by side in one run:
# the release stand-in behind nginx (a reload per switch) and behind HAProxy
# (its runtime API, no reload), each through a deploy, a rollback and a
# release switched back by its undo (its ingestion service cannot start),
# under 32 kept-alive connections (each reused request after request) and a
# client opening a new connection per request (curl).
# Needs what the release tests need (Docker, docker-registry; `cargo xtask
# test --yes` installs them). Usage, from the workspace root:
#   bash docs/bench/proxy-switch.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo test -q -p xtask --test releases bench_proxy_switch -- --ignored --nocapture 2>&1 |
  grep -E '^(nginx|haproxy) '
