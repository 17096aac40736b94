#!/usr/bin/env bash
# `make run`: the embedded control plane on one machine — a local PostgreSQL and Redis (data in var/), a Celery worker
# and beat, the web server, and local mosquitto brokers started by the worker for each deployment. Ctrl-C stops what
# this script started; brokers are left running on purpose (a cloud's brokers outlive its control plane, and the next
# run adopts them).
#
# Environment, or the checkout's .env (the environment wins): PORT (8000), DATABASE_URL (else a PostgreSQL is started
# here), REDIS_URL (else a Redis is started here), CONTROLPLANE_VAR_DIR (var/). The first run writes .env with the
# values it used, so `.venv/bin/python manage.py …` in this checkout reaches the same database; it is never rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- .env: read first, so a URL a developer wrote there is honoured like one in the environment ----------------------
if [ -f .env ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
    [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]] && value=${BASH_REMATCH[1]}
    [ -n "${!key+set}" ] || export "$key=$value"
  done < .env
fi

export CONTROLPLANE_ENV="${CONTROLPLANE_ENV:-development}"
export CONTROLPLANE_VAR_DIR="${CONTROLPLANE_VAR_DIR:-$PWD/var}"
VAR=$CONTROLPLANE_VAR_DIR
PORT="${PORT:-8000}"
export PUBLIC_URL="${PUBLIC_URL:-http://127.0.0.1:$PORT}"
mkdir -p "$VAR/log"
chmod 755 "$VAR"

local_database_url() {
  [ -s "$VAR/pg.port" ] && [ -s "$VAR/pg.password" ] || return 0
  echo "postgres://postgres:$(cat "$VAR/pg.password")@127.0.0.1:$(cat "$VAR/pg.port")/controlplane"
}
local_redis_url() { [ -s "$VAR/redis.port" ] && echo "redis://127.0.0.1:$(cat "$VAR/redis.port")/0" || true; }
# A URL this checkout's earlier run wrote into .env still means "start it here"; any other URL is someone's server.
local_postgres=; { [ -z "${DATABASE_URL:-}" ] || [ "$DATABASE_URL" = "$(local_database_url)" ]; } && local_postgres=1
local_redis=; { [ -z "${REDIS_URL:-}" ] || [ "$REDIS_URL" = "$(local_redis_url)" ]; } && local_redis=1

NEED_POSTGRESQL=$local_postgres scripts/bootstrap.sh run
# Brokers run as the `mosquitto` user when started as root: their directory must be reachable by that user.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && ! runuser -u mosquitto -- test -x "$VAR"; then
  export LOCAL_BROKERS_DIR="${LOCAL_BROKERS_DIR:-/var/lib/controlplane-brokers}"
  mkdir -p "$LOCAL_BROKERS_DIR" && chmod 755 "$LOCAL_BROKERS_DIR"
fi

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A port chosen once and kept in var/, so the URLs written into .env stay true on every later run.
remembered_port() {
  local file="$VAR/$1.port" preferred=$2
  if [ ! -s "$file" ]; then
    if [ -n "$preferred" ] && ! port_busy "$preferred"; then echo "$preferred" >"$file"; else free_port >"$file"; fi
  fi
  cat "$file"
}

pids=()
pg_stop=()
stop_all() {
  trap - INT TERM EXIT
  echo; echo "Stopping…" >&2
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # A child still running 20 s later is killed: one that hangs in its shutdown must not keep this script, and with it
  # PostgreSQL and Redis, running until a second Ctrl-C leaves them all behind.
  local tenths=0
  while [ $tenths -lt 200 ] && [ -n "$(jobs -pr)" ]; do sleep 0.1; tenths=$((tenths + 1)); done
  for pid in $(jobs -pr); do echo "$(ps -o args= -p "$pid" 2>/dev/null || echo "process $pid") did not stop: killed" >&2; kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ ${#pg_stop[@]} -eq 0 ] || "${pg_stop[@]}" >/dev/null 2>&1 || true
}
trap stop_all INT TERM EXIT

# --- PostgreSQL: var/pg, owned by the `postgres` user when run as root (PostgreSQL refuses to run as root) -------------
start_postgres() {
  local as=() pgdata="$VAR/pg" pglog="$VAR/log/postgres.log"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "no postgres user: install postgresql" >&2; exit 1; }
    as=(runuser -u postgres --)
    # A checkout the `postgres` user cannot reach (under /root, say) keeps its cluster beside the brokers' directory.
    if ! runuser -u postgres -- test -x "$VAR"; then
      pgdata="/var/lib/controlplane-postgres/$(echo -n "$VAR" | sha256sum | cut -c1-12)"
      pglog="$pgdata.log"
      mkdir -p "$(dirname "$pgdata")" && chmod 755 "$(dirname "$pgdata")"
    fi
  fi
  local port; port=$(remembered_port pg "")
  if [ ! -s "$VAR/pg.password" ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_hex(16))' >"$VAR/pg.password")
  fi
  local pgbin
  if [ -f "$pgdata/PG_VERSION" ] && [ -d "/usr/lib/postgresql/$(cat "$pgdata/PG_VERSION")/bin" ]; then
    pgbin="/usr/lib/postgresql/$(cat "$pgdata/PG_VERSION")/bin"  # the cluster's own major version
  else
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    echo "Creating a PostgreSQL cluster in $pgdata (port $port)" >&2
    mkdir -p "$pgdata" && chmod 700 "$pgdata"
    local pwfile; pwfile=$(mktemp)
    cat "$VAR/pg.password" >"$pwfile"
    if [ ${#as[@]} -gt 0 ]; then chown postgres "$pgdata" "$pwfile"; fi
    "${as[@]}" "$pgbin/initdb" -D "$pgdata" -U postgres --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 \
      --locale=C.UTF-8 >"$VAR/log/initdb.log" 2>&1 || { rm -f "$pwfile"; cat "$VAR/log/initdb.log" >&2; exit 1; }
    rm -f "$pwfile"
  fi
  touch "$pglog"
  if [ ${#as[@]} -gt 0 ]; then chown postgres "$pglog"; fi
  pg_stop=("${as[@]}" "$pgbin/pg_ctl" -D "$pgdata" -m fast -w stop)
  if "${as[@]}" "$pgbin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    echo "PostgreSQL in $pgdata is already running (an earlier run was killed): using it" >&2
  else
    if port_busy "$port"; then
      echo "Port $port, remembered for this checkout's PostgreSQL in $VAR/pg.port, is taken by another program." >&2
      echo "Stop that program, or delete $VAR/pg.port and .env to choose another port." >&2
      exit 1
    fi
    # No Unix socket: TCP on loopback only, with the password in var/pg.password (0600).
    "${as[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pglog" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null \
      || { tail -n 20 "$pglog" >&2; exit 1; }
  fi
  export PGPASSWORD; PGPASSWORD=$(cat "$VAR/pg.password")
  if [ -z "$("$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'controlplane'")" ]; then
    "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U postgres controlplane
  fi
  unset PGPASSWORD
  export DATABASE_URL; DATABASE_URL=$(local_database_url)
}

if [ -n "$local_postgres" ]; then
  start_postgres
else
  echo "Using DATABASE_URL from the environment or .env; no PostgreSQL started here." >&2
fi

# --- Redis ---------------------------------------------------------------------------------------------------------
if [ -n "$local_redis" ]; then
  redis_port=$(remembered_port redis 6379)
  if port_busy "$redis_port"; then
    if [ "$(redis-cli -p "$redis_port" config get dir 2>/dev/null | tail -n1)" = "$VAR" ]; then
      echo "Redis on port $redis_port is this checkout's (an earlier run was killed): using it" >&2
    else
      echo "Port $redis_port, remembered for this checkout's Redis in $VAR/redis.port, is taken by another program." >&2
      echo "Stop that program, or delete $VAR/redis.port and .env to choose another port." >&2
      exit 1
    fi
  else
    redis-server --port "$redis_port" --bind 127.0.0.1 --save 60 1 --dir "$VAR" \
      --logfile "$VAR/log/redis.log" >/dev/null &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  export REDIS_URL; REDIS_URL=$(local_redis_url)
else
  echo "Using REDIS_URL from the environment or .env; no Redis started here." >&2
fi

# --- .env: written once, never over a developer's edits ------------------------------------------------------------
if [ ! -e .env ]; then
  (
    umask 077
    cat >.env <<EOF
# Written by \`make run\` for this checkout (git ignores it); edit freely, it is never rewritten. Values already in
# the environment win over these. Delete the file to have the next \`make run\` write a fresh one.
CONTROLPLANE_ENV=development
DATABASE_URL=$DATABASE_URL
REDIS_URL=$REDIS_URL
CONTROLPLANE_VAR_DIR=$VAR
SECRET_KEY=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))')
EOF
  )
  echo "Wrote .env: .venv/bin/python manage.py … in this checkout now uses this database and Redis." >&2
fi

if ! .venv/bin/python manage.py migrate --noinput >"$VAR/log/migrate.log" 2>&1; then
  tail -n 20 "$VAR/log/migrate.log" >&2
  echo "migrate failed: is the database in DATABASE_URL reachable? (A .env left from a removed var/ names a" >&2
  echo "cluster that no longer exists: delete .env and run again.)" >&2
  exit 1
fi
.venv/bin/python manage.py seed_demo

.venv/bin/celery -A controlplane worker -Q provisioning,billing,monitoring,notifications,default \
  --concurrency 2 --loglevel INFO >"$VAR/log/worker.log" 2>&1 &
pids+=($!)
.venv/bin/celery -A controlplane beat --loglevel INFO \
  --schedule "$VAR/celerybeat-schedule" >"$VAR/log/beat.log" 2>&1 &
pids+=($!)
# The platform agent: Premium deployments' device shadows, online state and disconnects (docs/iot.md).
.venv/bin/python manage.py platform_agent >"$VAR/log/agent.log" 2>&1 &
pids+=($!)
echo "  Worker, beat and agent logs: $VAR/log/  (Ctrl-C stops everything but the brokers)"
echo
.venv/bin/python manage.py runserver "127.0.0.1:$PORT" --noreload &
pids+=($!)
wait -n "${pids[@]}"
