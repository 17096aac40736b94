#!/usr/bin/env bash
# `make test`: everything the suite needs (system packages, .venv), lint and type checking, then a throwaway PostgreSQL
# and Redis and pytest. Extra arguments go to pytest: scripts/test.sh tests/organizations -k invitation
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
# The whole suite starts with lint and type checking; a run of chosen tests (arguments given) skips both.
if [ $# -eq 0 ]; then
  scripts/lint.sh
  scripts/typecheck.sh
fi
source scripts/services.sh
services_start
export CONTROLPLANE_ENV=test
export CONTROLPLANE_ENV_FILE=  # a developer's .env (from make run) must not leak into the suite
export CONTROLPLANE_VAR_DIR="$SERVICES_DIR/var"
mkdir -p "$CONTROLPLANE_VAR_DIR" && chmod 755 "$CONTROLPLANE_VAR_DIR"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest's 5 means "no tests ran": that is a failure of the suite, never a pass.
exit $status
