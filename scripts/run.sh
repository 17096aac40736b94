#!/usr/bin/env bash
# `make run`: the embedded control plane on one machine — SQLite, a local Redis, a Celery worker and beat, the web
# server, and local mosquitto brokers started by the worker for each deployment. Ctrl-C stops everything.
# Environment: PORT (8000), REDIS_URL (else a Redis is started here), DATABASE_URL (else SQLite in var/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh run

export CONTROLPLANE_ENV="${CONTROLPLANE_ENV:-development}"
export CONTROLPLANE_VAR_DIR="${CONTROLPLANE_VAR_DIR:-$PWD/var}"
PORT="${PORT:-8000}"
export PUBLIC_URL="${PUBLIC_URL:-http://127.0.0.1:$PORT}"
mkdir -p "$CONTROLPLANE_VAR_DIR/log"
chmod 755 "$CONTROLPLANE_VAR_DIR"
# Brokers run as the `mosquitto` user when started as root: their directory must be reachable by that user.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && ! runuser -u mosquitto -- test -x "$CONTROLPLANE_VAR_DIR"; then
  export LOCAL_BROKERS_DIR="${LOCAL_BROKERS_DIR:-/var/lib/controlplane-brokers}"
  mkdir -p "$LOCAL_BROKERS_DIR" && chmod 755 "$LOCAL_BROKERS_DIR"
fi

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo; echo "Stopping…" >&2
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

if [ -z "${REDIS_URL:-}" ]; then
  redis_port=6379
  if (exec 3<>/dev/tcp/127.0.0.1/$redis_port) 2>/dev/null; then
    redis_port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  redis-server --port "$redis_port" --bind 127.0.0.1 --save 60 1 --dir "$CONTROLPLANE_VAR_DIR" \
    --logfile "$CONTROLPLANE_VAR_DIR/log/redis.log" >/dev/null &
  pids+=($!)
  export REDIS_URL="redis://127.0.0.1:$redis_port/0"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

.venv/bin/python manage.py migrate --noinput >/dev/null
.venv/bin/python manage.py seed_demo

.venv/bin/celery -A controlplane worker -Q provisioning,billing,monitoring,notifications,default \
  --concurrency 2 --loglevel INFO >"$CONTROLPLANE_VAR_DIR/log/worker.log" 2>&1 &
pids+=($!)
.venv/bin/celery -A controlplane beat --loglevel INFO \
  --schedule "$CONTROLPLANE_VAR_DIR/celerybeat-schedule" >"$CONTROLPLANE_VAR_DIR/log/beat.log" 2>&1 &
pids+=($!)
# The platform agent: Premium deployments' device shadows, online state and disconnects (docs/iot.md).
.venv/bin/python manage.py platform_agent >"$CONTROLPLANE_VAR_DIR/log/agent.log" 2>&1 &
pids+=($!)
echo "  Worker, beat and agent logs: $CONTROLPLANE_VAR_DIR/log/  (Ctrl-C stops everything)"
echo
.venv/bin/python manage.py runserver "127.0.0.1:$PORT" --noreload &
pids+=($!)
wait -n "${pids[@]}"
