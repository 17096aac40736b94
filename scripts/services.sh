# Sourced by scripts/test.sh and bench scripts: starts a throwaway PostgreSQL and Redis on free loopback ports in a
# temporary directory, exports DATABASE_URL and REDIS_URL, and stops both (removing the directory) on exit.
# PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.

_free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

services_start() {
  SERVICES_DIR=$(mktemp -d /tmp/controlplane-services.XXXXXX)
  chmod 755 "$SERVICES_DIR"
  local pgbin; pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  local pgport; pgport=$(_free_port)
  local redisport; redisport=$(_free_port)
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$SERVICES_DIR" 2>/dev/null || { echo "no postgres user: install postgresql" >&2; return 1; }
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$pgbin/initdb" -D "$SERVICES_DIR/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$SERVICES_DIR/initdb.log" 2>&1 \
    || { cat "$SERVICES_DIR/initdb.log" >&2; return 1; }
  "${as[@]}" "$pgbin/pg_ctl" -D "$SERVICES_DIR/pg" -l "$SERVICES_DIR/pg.log" -w -t 60 \
    -o "-p $pgport -k $SERVICES_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$SERVICES_DIR/pg.log" >&2; return 1; }
  "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres controlplane
  redis-server --port "$redisport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$SERVICES_DIR" --logfile "$SERVICES_DIR/redis.log" --pidfile "$SERVICES_DIR/redis.pid" >/dev/null
  for _ in $(seq 50); do redis-cli -p "$redisport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export DATABASE_URL="postgres://postgres@127.0.0.1:$pgport/controlplane"
  export REDIS_URL="redis://127.0.0.1:$redisport/0"
  export SERVICES_DIR PGBIN="$pgbin" SERVICES_PGPORT="$pgport" SERVICES_AS="${as[*]}"
  trap services_stop EXIT
}

services_stop() {
  [ -n "${SERVICES_DIR:-}" ] || return 0
  # A broker that a test started and never stopped outlives its directory (removed below) and holds its ports: name
  # it, so the test is found, and stop it, so a run leaves nothing behind.
  local left=""
  if command -v pgrep >/dev/null; then left=$(pgrep -f "mosquitto -c $SERVICES_DIR/" || true); fi
  if [ -n "$left" ]; then
    echo "stopping mosquitto brokers left running by the tests:" >&2
    for pid in $left; do echo "  $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" >&2; done
    kill $left 2>/dev/null || true
  fi
  [ -f "$SERVICES_DIR/redis.pid" ] && kill "$(cat "$SERVICES_DIR/redis.pid")" 2>/dev/null || true
  $SERVICES_AS "$PGBIN/pg_ctl" -D "$SERVICES_DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$SERVICES_DIR"
  SERVICES_DIR=
}
