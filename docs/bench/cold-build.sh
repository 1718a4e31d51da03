#!/usr/bin/env bash
# Cold `cargo build -p xtask` (debug) with this workspace's profile against
# Cargo's default dev profile (full debug info, incremental), alternating,
# each into an empty target folder. Crates must already be downloaded
# (`cargo fetch`). Usage: docs/bench/cold-build.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
cargo fetch -q
echo "rustc $(rustc --version | cut -d' ' -f2), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-22s %10s %10s\n' round profile "wall (s)" "cpu (s)"
for r in $(seq 1 "$rounds"); do
  for which in tuned default; do
    dir=$(mktemp -d)
    if [ "$which" = default ]; then
      extra=(env CARGO_PROFILE_DEV_DEBUG=2 CARGO_PROFILE_DEV_INCREMENTAL=true)
    else
      extra=(env)
    fi
    /usr/bin/time -f "%e %U %S" -o "$dir.time" "${extra[@]}" CARGO_TARGET_DIR="$dir" cargo build -q -p xtask
    read -r wall user sys < "$dir.time"
    printf '%-6s %-22s %10s %10.1f\n' "$r" "$which" "$wall" "$(echo "$user + $sys" | bc)"
    rm -rf "$dir" "$dir.time"
  done
done
