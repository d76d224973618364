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

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
PATTERN=moto.server

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
  svc_pip 'moto.server, boto3' 'moto[server]==5.*' 'boto3'
  if pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  svc_launch "$PIDFILE" "$LOG" "moto server" "$PORT" answers "$PATTERN" python3 -m moto.server -H 127.0.0.1 -p "$PORT"
}

case "${1:-}" in
  start) start ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" ;;
  status) if pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then log "running (pid $pid) on 127.0.0.1:$PORT"; else log "not running"; exit 1; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
