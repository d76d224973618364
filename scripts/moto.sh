#!/usr/bin/env bash
# A throwaway moto server (PyPI `moto[server]`): an AWS emulator for pg_sink's
# Kinesis (and STS, for assume-role) tests, bound to 127.0.0.1. `start` installs
# moto with pip when missing and waits until the server answers; every start is a
# fresh, empty server (moto keeps its state in memory).
#
#   scripts/moto.sh start|stop|status
#
# MOTO_PORT (default 15000), MOTO_DATA (default /tmp/pg_sink_moto). The pid is in
# $MOTO_DATA/moto.pid, the log in $MOTO_DATA/moto.log.
set -euo pipefail
PORT=${MOTO_PORT:-15000}
DATA=${MOTO_DATA:-/tmp/pg_sink_moto}
PIDFILE=$DATA/moto.pid
LOG=$DATA/moto.log

log() { printf '\033[1m[moto]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[moto]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "MOTO_PORT must be a number, not '$PORT'" ;; esac
case "$DATA" in /*) ;; *) die "MOTO_DATA must be an absolute path, not '$DATA'" ;; esac

install_moto() {
  python3 -c 'import moto.server, boto3' 2>/dev/null && return 0
  log "installing moto[server] and boto3 with pip (once)"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.*' 'boto3' 2>&1 | grep -v 'Running pip as the' >&2 || true
  python3 -c 'import moto.server, boto3' 2>/dev/null || die "pip finished but moto cannot be imported"
}

# The pid in the pid file, if that process is alive and is our moto server.
running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(head -1 "$PIDFILE" 2>/dev/null) || return 1
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'moto.server' || return 1
  echo "$pid"
}

answers() {
  python3 - "$PORT" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/data.json", timeout=2).read()
except Exception:
    sys.exit(1)
PY
}

start() {
  install_moto
  if pid=$(running_pid); then
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  mkdir -p "$DATA"
  : >"$LOG"
  python3 -m moto.server -H 127.0.0.1 -p "$PORT" >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 150); do
    if answers; then
      log "moto server on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
      return 0
    fi
    running_pid >/dev/null || { tail -20 "$LOG" >&2; die "moto server exited"; }
    sleep 0.2
  done
  tail -20 "$LOG" >&2
  die "moto server did not answer on 127.0.0.1:$PORT"
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if pid=$(running_pid); then log "running (pid $pid) on 127.0.0.1:$PORT"; else log "not running"; exit 1; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
