#!/usr/bin/env bash
# `make bench` or scripts/bench.sh [bench/NAME.py ...]: runs benchmarks against a throwaway PostgreSQL and Redis.
# Benchmarks print their figures beside a floor measured in the same run; they never fail on a number.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
source scripts/services.sh
services_start
export CONTROLPLANE_ENV=test CONTROLPLANE_VAR_DIR="$SERVICES_DIR/var"
mkdir -p "$CONTROLPLANE_VAR_DIR" && chmod 755 "$CONTROLPLANE_VAR_DIR"
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(bench/api_list.py bench/provision.py bench/billing.py bench/alerts.py)
for script in "${scripts[@]}"; do
  [ -f "$script" ] || { echo "skip $script (missing)"; continue; }
  echo "== $script"
  .venv/bin/python "$script"
done
