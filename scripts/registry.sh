#!/usr/bin/env bash
# A throwaway Confluent-compatible schema registry for pg_sink's Avro tests, bound
# to 127.0.0.1. It is scripts/registry.py, a stand-in speaking the subset of the
# Confluent Schema Registry REST API that pg_sink uses, because no real registry can
# be installed on this machine. `start` installs fastavro with pip when missing and
# waits until the server answers; every start is a fresh, empty registry (state is
# kept in memory).
#
#   scripts/registry.sh start|stop|status
#
# REGISTRY_PORT (default 18081), REGISTRY_DATA (default /tmp/pg_sink_registry),
# REGISTRY_USER / REGISTRY_PASSWORD (optional: then every request needs HTTP Basic
# auth with them). The pid is in $REGISTRY_DATA/registry.pid, the log in
# $REGISTRY_DATA/registry.log.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT=${REGISTRY_PORT:-18081}
DATA=${REGISTRY_DATA:-/tmp/pg_sink_registry}
REG_USER=${REGISTRY_USER:-}
REG_PASSWORD=${REGISTRY_PASSWORD:-}
PIDFILE=$DATA/registry.pid
LOG=$DATA/registry.log

log() { printf '\033[1m[registry]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[registry]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "REGISTRY_PORT must be a number, not '$PORT'" ;; esac
case "$DATA" in /*) ;; *) die "REGISTRY_DATA must be an absolute path, not '$DATA'" ;; esac
if { [ -n "$REG_USER" ] && [ -z "$REG_PASSWORD" ]; } || { [ -z "$REG_USER" ] && [ -n "$REG_PASSWORD" ]; }; then
  die "set both REGISTRY_USER and REGISTRY_PASSWORD, or neither"
fi

# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
PATTERN='registry\.py'

answers() {
  REGISTRY_USER="$REG_USER" REGISTRY_PASSWORD="$REG_PASSWORD" python3 - "$PORT" <<'PY'
import base64, os, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/subjects")
user, password = os.environ.get("REGISTRY_USER"), os.environ.get("REGISTRY_PASSWORD")
if user:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
try:
    urllib.request.urlopen(req, timeout=2).read()
except Exception:
    sys.exit(1)
PY
}

start() {
  svc_pip fastavro fastavro
  if pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  local auth=()
  [ -n "$REG_USER" ] && auth=(--user "$REG_USER" --password "$REG_PASSWORD")
  svc_launch "$PIDFILE" "$LOG" "schema registry (stand-in)" "$PORT" answers "$PATTERN" \
    python3 "$HERE/registry.py" --host 127.0.0.1 --port "$PORT" "${auth[@]}"
}

case "${1:-}" in
  start) start ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" ;;
  status) if pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then log "running (pid $pid) on 127.0.0.1:$PORT"; else log "not running"; exit 1; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
