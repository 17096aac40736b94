#!/usr/bin/env bash
# Prepares a machine to run or test the control plane: system packages (as root, with apt-get) and .venv.
# Idempotent and quiet when nothing is missing. Usage: scripts/bootstrap.sh [run|test]
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-run}"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null || [ -x /usr/bin/mosquitto_passwd ] || need+=(mosquitto)
# Tests always start a throwaway cluster; `make run` starts one unless it was given a DATABASE_URL (NEED_POSTGRESQL).
if [ "$purpose" = test ] || [ "${NEED_POSTGRESQL-1}" = 1 ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
fi
if [ "$purpose" = test ]; then
  # The console's browser tests: Playwright drives Debian's Chromium build in its headless shell (tests/console/browser.py).
  [ -x /usr/bin/chromium-headless-shell ] || need+=(chromium-headless-shell)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing system packages: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts the packaged services; we run our own instances on our own ports.
    for svc in redis-server mosquitto postgresql; do
      (systemctl stop "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
    done
  else
    echo "Missing system packages: ${need[*]}" >&2
    echo "Install them first, e.g.: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv" >&2
  "$python" -m venv .venv
fi
# Every machine installs the same pinned, hashed set (the dev lock holds the runtime lock's pins plus the tools), so a
# tampered or substituted download fails the install instead of running. `make lock` updates the locks.
lock=requirements-dev.lock
stamp=.venv/.requirements.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing $lock into .venv" >&2
  if ! .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r "$lock" >.venv/pip.log 2>&1; then
    grep -v "^WARNING: Location" .venv/pip.log >&2
    exit 1
  fi
  .venv/bin/python -c "import django, rest_framework, celery, psycopg, paho.mqtt" # fail loudly if the install did
  echo "$want" > "$stamp"
fi
