#!/usr/bin/env bash
# `make test`: everything the suite needs (system packages, .venv), lint and type checking, then a throwaway PostgreSQL
# and Redis and pytest. Extra arguments go to pytest: scripts/test.sh tests/organizations -k invitation
#
# The whole suite (no arguments) runs in two passes: the tests not marked `serial` on TEST_WORKERS pytest-xdist
# workers (4 unless set; each worker has its own test database and Redis database), then the `serial` ones alone.
# Chosen tests (arguments given) run in one pytest process, on several workers only if the arguments say -n.
set -euo pipefail
cd "$(dirname "$0")/.."
# Python may keep compiled modules (__pycache__/, ignored by git; pytest's rewritten test modules among them). A machine
# that sets PYTHONDONTWRITEBYTECODE made every process compile the control plane again, and every pytest worker
# rewrite every test module: each Celery worker, agent and manage.py the suite starts paid about 0.9 s of CPU for it.
unset PYTHONDONTWRITEBYTECODE
scripts/bootstrap.sh test
source scripts/services.sh
services_start
# Temporary files of the run (pytest's tmp_path, the multiprocessing directories of a killed worker, what a test leaves)
# go under the run's own directory, removed with it at exit: a run leaves nothing in /tmp. A failed test's tmp_path goes
# too; its screenshots stay under var/screenshots/.
export TMPDIR="$SERVICES_DIR/tmp"
mkdir -m 1777 "$TMPDIR"
export CONTROLPLANE_ENV=test
export CONTROLPLANE_ENV_FILE=  # a developer's .env (from make run) must not leak into the suite
export CONTROLPLANE_VAR_DIR="$SERVICES_DIR/var"
mkdir -p "$CONTROLPLANE_VAR_DIR" && chmod 755 "$CONTROLPLANE_VAR_DIR"
# The whole suite starts with lint and type checking; a run of chosen tests (arguments given) skips both. Meanwhile the
# whole suite migrates once, into a template database every worker's test database is copied from (tests/conftest.py).
if [ $# -eq 0 ]; then
  template=controlplane_template
  (
    "$PGBIN/createdb" -h 127.0.0.1 -p "$SERVICES_PGPORT" -U postgres "$template"
    DATABASE_URL="${DATABASE_URL%/*}/$template" .venv/bin/python manage.py migrate --no-input -v 0
  ) >"$SERVICES_DIR/template.log" 2>&1 &
  template_pid=$!
  scripts/lint.sh
  scripts/typecheck.sh
  wait $template_pid || { echo "migrating the template database failed:" >&2; cat "$SERVICES_DIR/template.log" >&2; exit 1; }
  export CONTROLPLANE_TEST_DB_TEMPLATE=$template
fi
set +e
if [ $# -gt 0 ]; then
  .venv/bin/python -m pytest "$@"
  status=$?
else
  # One random seed for both passes (tests/conftest.py prints it), so CONTROLPLANE_TEST_SEED=<seed> replays either.
  export CONTROLPLANE_TEST_SEED="${CONTROLPLANE_TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
  .venv/bin/python -m pytest -n "${TEST_WORKERS:-4}" -m "not serial"
  parallel=$?
  .venv/bin/python -m pytest -m serial
  serial=$?
  # pytest's 5 means "no tests ran": one pass without tests is fine when the other ran some, never both.
  if [ $parallel -eq 5 ] && [ $serial -eq 5 ]; then status=5
  elif [ $parallel -ne 0 ] && [ $parallel -ne 5 ]; then status=$parallel
  elif [ $serial -ne 0 ] && [ $serial -ne 5 ]; then status=$serial
  else status=0
  fi
fi
set -e
# pytest's 5 means "no tests ran": that is a failure of the suite, never a pass.
exit $status
