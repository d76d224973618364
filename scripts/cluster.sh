#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for pg_sink: logical decoding on, pg_sink
# preloaded, owned by an unprivileged user (Postgres refuses to run as root).
#
#   scripts/cluster.sh start|stop|restart|kill|status|psql [args]
#
# PGSINK_DATA (default /tmp/pg_sink_cluster), PGSINK_PORT (default 5499),
# PGSINK_USER (default postgres). The server listens on 127.0.0.1 and a socket in
# the data directory.
set -euo pipefail
DATA=${PGSINK_DATA:-/tmp/pg_sink_cluster}
PORT=${PGSINK_PORT:-5499}
OSUSER=${PGSINK_USER:-postgres}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SOCK=$DATA

as_user() {
  # No Rust backtraces in error details the server sends to clients.
  if [ "$(id -un)" = "$OSUSER" ]; then env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
  else runuser -u "$OSUSER" -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"; fi
}

init() {
  id "$OSUSER" >/dev/null 2>&1 || useradd --system --create-home "$OSUSER"
  mkdir -p "$DATA"
  chown "$OSUSER" "$DATA"
  chmod 700 "$DATA"
  as_user "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >> "$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
wal_level = logical
max_replication_slots = 32
max_wal_senders = 40
max_worker_processes = 40
shared_preload_libraries = 'pg_sink'
pg_sink.database = 'postgres'
pg_sink.poll_interval = 100
fsync = on
logging_collector = off
log_min_messages = warning
CONF
  echo "local replication all trust" >> "$DATA/pg_hba.conf"
  echo "host replication all 127.0.0.1/32 trust" >> "$DATA/pg_hba.conf"
}

case "${1:-}" in
  start)
    [ -f "$DATA/PG_VERSION" ] || init
    if ! as_user "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      as_user "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null
    fi
    echo "postgres running on 127.0.0.1:$PORT (data $DATA, pid $(head -1 "$DATA/postmaster.pid"))"
    ;;
  stop)
    if [ -f "$DATA/postmaster.pid" ]; then as_user "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true; fi
    ;;
  restart)
    as_user "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -m "${2:-fast}" -w -t 60 restart >/dev/null
    ;;
  kill)
    # Crash the postmaster (immediate shutdown: no checkpoint, recovery on start).
    as_user "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null || true
    ;;
  destroy)
    "$0" stop
    rm -rf "$DATA"
    ;;
  status)
    as_user "$PGBIN/pg_ctl" -D "$DATA" status
    ;;
  psql)
    shift
    exec psql -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"
    ;;
  *)
    echo "usage: $0 start|stop|restart [mode]|kill|destroy|status|psql [args]" >&2
    exit 2
    ;;
esac
