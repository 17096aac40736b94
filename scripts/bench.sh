#!/usr/bin/env bash
# `make bench` or scripts/bench.sh [bench/NAME.py ...]: runs benchmarks against a throwaway PostgreSQL and Redis.
# Benchmarks print their figures beside a floor measured in the same run; they never fail on a number.
# Each benchmark gets a database of its own and an empty Redis, so none sees (or collides with) another's data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
source scripts/services.sh
services_start
export CONTROLPLANE_ENV=test CONTROLPLANE_ENV_FILE= CONTROLPLANE_VAR_DIR="$SERVICES_DIR/var"
mkdir -p "$CONTROLPLANE_VAR_DIR" && chmod 755 "$CONTROLPLANE_VAR_DIR"
scripts=("$@")
# Every benchmark by default: each bench/*.py that runs as a script (common.py is their shared setup).
if [ ${#scripts[@]} -eq 0 ]; then
  for script in bench/*.py; do
    if grep -q '^if __name__ == "__main__":' "$script" && [ "$(basename "$script")" != mosquitto_floor.py ]; then
      scripts+=("$script")
    fi
  done
fi
cluster_url=$DATABASE_URL
n=0
for script in "${scripts[@]}"; do
  [ -f "$script" ] || { echo "skip $script (missing)"; continue; }
  n=$((n + 1))
  database="bench_${n}_$(basename "$script" .py)"
  "$PGBIN/createdb" --maintenance-db="$cluster_url" "$database"
  redis-cli -u "$REDIS_URL" flushall >/dev/null
  echo "== $script"
  DATABASE_URL="${cluster_url%/*}/$database" .venv/bin/python "$script"
  "$PGBIN/dropdb" --maintenance-db="$cluster_url" "$database"
done
