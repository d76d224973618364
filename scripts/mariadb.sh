#!/usr/bin/env bash
# A throwaway MariaDB server for pg_sink's jdbc tests and benchmark: Debian's
# mariadb-server binaries (not the system service), its own data directory, bound
# to 127.0.0.1. `start` installs the package when missing, initialises a fresh
# data directory at every start (`restart` keeps it) and waits until the server
# answers. The server's `root` user has no password, from 127.0.0.1 and from the
# socket. It speaks TLS (optional for clients) with a certificate for
# 127.0.0.1/localhost signed by the test CA in $MARIADB_DATA/tls/ca.pem
# (scripts/lib/tls.sh).
#
#   scripts/mariadb.sh start|restart|stop|status|sql [mariadb client args]
#
# MARIADB_PORT (default 13306), MARIADB_DATA (default /tmp/pg_sink_mariadb). The pid
# is in $MARIADB_DATA/mariadb.pid, the log in $MARIADB_DATA/mariadb.log, the socket
# is $MARIADB_DATA/mariadb.sock.
set -euo pipefail
PORT=${MARIADB_PORT:-13306}
DATA=${MARIADB_DATA:-/tmp/pg_sink_mariadb}
PIDFILE=$DATA/mariadb.pid
LOG=$DATA/mariadb.log
SOCK=$DATA/mariadb.sock
MARKER=$DATA/.pg_sink_mariadb
OSUSER=mysql

log() { printf '\033[1m[mariadb]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[mariadb]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "MARIADB_PORT must be a number, not '$PORT'" ;; esac
case "$DATA" in /*) ;; *) die "MARIADB_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "MARIADB_DATA must not be /"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
# shellcheck source=scripts/lib/tls.sh
. "$HERE/lib/tls.sh"
PATTERN="mariadbd.*--datadir=$DATA/db"

client() { mariadb --no-defaults --protocol=socket --socket="$SOCK" -uroot "$@"; }
answers() { client -N -e 'SELECT 1' >/dev/null 2>&1; }

install() {
  [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null && return 0
  log "installing Debian's mariadb-server (the system service is not started)"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the package's service from starting on install.
  local policy=/usr/sbin/policy-rc.d made=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made=1; fi
  apt-get install -y -qq mariadb-server mariadb-client >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq mariadb-server mariadb-client >/dev/null; }
  [ "$made" = 0 ] || rm -f "$policy"
}

start() {
  install
  svc_stop "$PIDFILE" "$PATTERN" >/dev/null
  if [ -e "$DATA" ]; then
    # Only wipe a directory this script made (or an empty one).
    if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
      die "$DATA exists, is not empty and was not made by this script; refusing to wipe it"
    fi
    rm -rf "$DATA"
  fi
  mkdir -p "$DATA/db"
  touch "$MARKER"
  tls_make_set "$DATA/tls"
  chown -R "$OSUSER" "$DATA"
  mariadb-install-db --no-defaults --user="$OSUSER" --datadir="$DATA/db" \
    --auth-root-authentication-method=normal --skip-test-db >"$DATA/install.log" 2>&1 ||
    { tail -20 "$DATA/install.log" >&2; die "mariadb-install-db failed"; }
  launch
  # root without a password over TCP from 127.0.0.1 too (skip-name-resolve: the
  # host is the address, not "localhost").
  client -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
}

# The server on the data directory as it is.
launch() {
  svc_launch "$PIDFILE" "$LOG" "MariaDB $(/usr/sbin/mariadbd --version | awk '{print $3}')" "$PORT" answers "$PATTERN" \
    setsid /usr/sbin/mariadbd --no-defaults --user="$OSUSER" --datadir="$DATA/db" \
    --port="$PORT" --bind-address=127.0.0.1 --socket="$SOCK" --pid-file="$DATA/db/mariadbd.pid" \
    --skip-name-resolve --character-set-server=utf8mb4 --collation-server=utf8mb4_bin \
    --innodb-buffer-pool-size=256M --max-connections=300 --log-error="$LOG.err" \
    --ssl-ca="$DATA/tls/ca.pem" --ssl-cert="$DATA/tls/server.pem" --ssl-key="$DATA/tls/server.key"
}

# Stop and start again on the same data (a target outage that loses nothing).
restart() {
  [ -e "$MARKER" ] || die "no server data in $DATA: use start"
  svc_stop "$PIDFILE" "$PATTERN" >/dev/null
  launch
}

case "${1:-}" in
  start) start ;;
  restart) restart ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" ;;
  status) if pid=$(svc_running_pid "$PIDFILE" "$PATTERN") && answers; then log "running (pid $pid) on 127.0.0.1:$PORT"; else log "not running"; exit 1; fi ;;
  sql) shift; client "$@" ;;
  *) die "usage: $0 start|restart|stop|status|sql [args]" ;;
esac
