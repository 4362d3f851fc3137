# Shared by scripts/test, scripts/demo and scripts/bench: throwaway PostgreSQL and Tansu on free
# loopback ports under $OUTBOX_RUN_DIR. Source it, call start_services, and trap stop_services.
#
# PostgreSQL runs with fsync, synchronous_commit and full_page_writes off by default: scripts/test
# and scripts/demo want speed, not crash safety. OUTBOX_PG_DURABLE=1 turns all three on (the
# settings a production database runs with); scripts/bench sets it unless given --unsafe-db.
# start_postgres exports OUTBOX_TEST_PG_DURABILITY=durable|unsafe for the record.
# shellcheck shell=bash

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
TANSU="${TANSU:-$ROOT/.tools/bin/tansu}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {  # host port seconds
  local deadline=$((SECONDS + $3))
  until python3 -c "import socket,sys; s=socket.create_connection(('$1',$2),0.5); s.close()" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $1:$2" >&2; return 1; }
    sleep 0.1
  done
}

# Runs PostgreSQL as the invoking user, or as 'postgres' when invoked as root (initdb refuses root).
as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  PG_DATA="$OUTBOX_RUN_DIR/pgdata"
  PG_PORT="$(free_port)"
  mkdir -p "$OUTBOX_RUN_DIR"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$OUTBOX_RUN_DIR"; chmod 755 "$OUTBOX_RUN_DIR"; fi
  as_pg_user "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >"$OUTBOX_RUN_DIR/initdb.log" 2>&1
  local durable=off
  OUTBOX_TEST_PG_DURABILITY=unsafe
  if [ "${OUTBOX_PG_DURABLE:-0}" = 1 ]; then durable=on; OUTBOX_TEST_PG_DURABILITY=durable; fi
  cat >>"$PG_DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$OUTBOX_RUN_DIR'
fsync = $durable
synchronous_commit = $durable
full_page_writes = $durable
max_connections = 200
shared_buffers = 256MB
shared_preload_libraries = 'pg_stat_statements'
CONF
  as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$OUTBOX_RUN_DIR/postgres.log" -w -t 30 start >/dev/null
  export OUTBOX_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
  export OUTBOX_TEST_PG_DATA="$PG_DATA" OUTBOX_TEST_PG_BIN="$PG_BIN" OUTBOX_TEST_PG_DURABILITY
}

start_tansu() {
  TANSU_PORT="$(free_port)"
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --storage-engine "memory://tansu/" >"$OUTBOX_RUN_DIR/tansu.log" 2>&1 &
  TANSU_PID=$!
  echo "$TANSU_PID" >"$OUTBOX_RUN_DIR/tansu.pid"
  wait_for_port 127.0.0.1 "$TANSU_PORT" 30
  export OUTBOX_TEST_BROKERS="127.0.0.1:$TANSU_PORT" OUTBOX_TEST_BROKER_PID="$TANSU_PID"
}

start_services() {
  export OUTBOX_RUN_DIR="${OUTBOX_RUN_DIR:-$(mktemp -d /tmp/outbox-relay.XXXXXX)}"
  mkdir -p "$OUTBOX_RUN_DIR"; chmod 755 "$OUTBOX_RUN_DIR"
  start_postgres
  start_tansu
}

stop_services() {
  if [ -n "${TANSU_PID:-}" ]; then kill -CONT "$TANSU_PID" 2>/dev/null || true; kill "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true; fi
  if [ -n "${PG_DATA:-}" ] && [ -d "$PG_DATA" ]; then
    as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -n "${OUTBOX_RUN_DIR:-}" ] && [ -z "${OUTBOX_KEEP_RUN_DIR:-}" ]; then rm -rf "$OUTBOX_RUN_DIR"; fi
}
