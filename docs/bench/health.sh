#!/usr/bin/env bash
# `cargo xtask health` on the running demo (warm) against each of its checks
# alone, side by side in one hyperfine run. Needs `cargo xtask deploy
# development` first. Usage: docs/bench/health.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build -q -p xtask
x=$root/target/debug/xtask
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head='[environments.development]
env_file = "'$root'/.env.development"
[environments.development.compose]
files = ["'$root'/demo/docker-compose.yml"]
project = "my-race-engineer"'
cat > "$tmp/app.toml" <<EOT
$head
[environments.development.services.mre-app]
health = { url = "http://localhost:3001/api/health", expect = "runbook-json" }
EOT
cat > "$tmp/ingestion.toml" <<EOT
$head
[environments.development.services.mre-liverc-ingestion-service]
health = { url = "http://localhost:8000/health" }
EOT
cat > "$tmp/containers.toml" <<EOT
$head
[environments.development.services.a]
container = "mre-app"
[environments.development.services.b]
container = "mre-liverc-ingestion-service"
[environments.development.services.c]
container = "mre-postgres"
EOT
cat > "$tmp/database.toml" <<EOT
$head
[environments.development.database]
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
EOT
hyperfine -N --warmup 3 --runs 30 --export-markdown "$tmp/out.md" \
  -n "health (all 6 checks)" "$x -q health" \
  -n "app /api/health only" "$x -q --config $tmp/app.toml health" \
  -n "ingestion /health only" "$x -q --config $tmp/ingestion.toml health" \
  -n "3 containers only" "$x -q --config $tmp/containers.toml health" \
  -n "database SELECT 1 only" "$x -q --config $tmp/database.toml health"
cat "$tmp/out.md"

# In the same runs: the whole health command's own time against its slowest
# check's time (both from --json), i.e. how much concurrency leaves on top of
# the slowest check.
python3 - "$x" <<'PY'
import json, statistics, subprocess, sys
ratios, totals, slowest = [], [], []
for _ in range(50):
    d = json.loads(subprocess.run([sys.argv[1], "--json", "health"], capture_output=True, text=True).stdout)
    m = max(c["millis"] for c in d["checks"])
    totals.append(d["millis"]); slowest.append(m); ratios.append(d["millis"] / m)
ratios.sort()
print(f"in-process, 50 runs: total {statistics.median(totals)} ms, slowest check {statistics.median(slowest)} ms, "
      f"ratio median {statistics.median(ratios):.2f}, p90 {ratios[44]:.2f}")
PY
