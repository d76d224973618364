#!/usr/bin/env bash
# A throwaway Azurite (npm `azurite`, Microsoft's Azure Storage emulator), blob
# service only, for pg_sink's Azure Blob Storage tests, bound to 127.0.0.1.
# `install` (also done by `start`) installs Azurite 3.35.0 with npm into
# $AZURITE_HOME when it is not there (3.35 is the last release that runs on
# Node 20). `start` waits until the server answers HTTP; every start is a fresh,
# empty server (in-memory persistence). The account is Azurite's well-known
# devstoreaccount1; its endpoint is http://127.0.0.1:$AZURITE_PORT/devstoreaccount1.
#
#   scripts/azurite.sh install|start|stop|status
#
# AZURITE_PORT (default 15020), AZURITE_DATA (default /tmp/pg_sink_azurite),
# AZURITE_HOME (default /opt/pg_sink/azurite). The pid is in
# $AZURITE_DATA/azurite.pid, the log in $AZURITE_DATA/azurite.log.
set -euo pipefail
PORT=${AZURITE_PORT:-15020}
DATA=${AZURITE_DATA:-/tmp/pg_sink_azurite}
PREFIX=${AZURITE_HOME:-/opt/pg_sink/azurite}
VERSION=3.35.0
PIDFILE=$DATA/azurite.pid
LOG=$DATA/azurite.log
BIN=$PREFIX/node_modules/.bin/azurite-blob

log() { printf '\033[1m[azurite]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[azurite]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "AZURITE_PORT must be a number, not '$PORT'" ;; esac
case "$DATA" in /*) ;; *) die "AZURITE_DATA must be an absolute path, not '$DATA'" ;; esac
case "$PREFIX" in /*) ;; *) die "AZURITE_HOME must be an absolute path, not '$PREFIX'" ;; esac
[ "$DATA" != / ] || die "AZURITE_DATA must not be /"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
PATTERN=azurite-blob

installed_version() {
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$PREFIX/node_modules/azurite/package.json" 2>/dev/null
}

install() {
  command -v node >/dev/null 2>&1 || die "node is not on PATH (Azurite $VERSION needs Node.js 18 or 20)"
  if [ -x "$BIN" ] && [ "$(installed_version)" = "$VERSION" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || die "npm is not on PATH"
  log "installing azurite@$VERSION with npm into $PREFIX (about 30 s, once)"
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
  [ -x "$BIN" ] && [ "$(installed_version)" = "$VERSION" ] || die "npm finished but $BIN ($VERSION) is missing"
}

# Any HTTP answer counts (Azurite answers 400 to a bare GET /).
answers() {
  python3 - "$PORT" <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/devstoreaccount1?comp=list", timeout=2).read()
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
PY
}

start() {
  install
  if pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi
  # In-memory persistence keeps no workspace (and refuses --location); run in
  # $DATA so nothing else Azurite might write lands in the caller's directory.
  mkdir -p "$DATA"
  svc_launch "$PIDFILE" "$LOG" "azurite (blob)" "$PORT" answers "$PATTERN" \
    env -C "$DATA" "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" \
    --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --loose
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" ;;
  status) if pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then log "running (pid $pid) on 127.0.0.1:$PORT"; else log "not running"; exit 1; fi ;;
  *) die "usage: $0 install|start|stop|status" ;;
esac
