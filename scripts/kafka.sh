#!/usr/bin/env bash
# A throwaway single-node Kafka-protocol broker for pg_sink's tests: noida-db
# 0.2.3 (Kafka service only), bound to 127.0.0.1. `start` installs it with cargo
# when missing (about a minute, once), wipes the data directory and waits until
# the broker answers a Metadata request.
#
#   scripts/kafka.sh start|restart|stop|status|pause|resume
#   (restart keeps the data; pause/resume freeze and thaw the broker process)
#
# KAFKA_PORT (default 19092), KAFKA_DATA (default /tmp/pg_sink_kafka). The pid is
# in $KAFKA_DATA/broker.pid, the log in $KAFKA_DATA/broker.log.
set -euo pipefail
PORT=${KAFKA_PORT:-19092}
DATA=${KAFKA_DATA:-/tmp/pg_sink_kafka}
PIDFILE=$DATA/broker.pid
LOG=$DATA/broker.log
MARKER=$DATA/.pg_sink_kafka
NOIDA_VERSION=0.2.3
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin

log() { printf '\033[1m[kafka]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[kafka]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "KAFKA_PORT must be a number, not '$PORT'" ;; esac
case "$DATA" in /*) ;; *) die "KAFKA_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "KAFKA_DATA must not be /"

# rustup's cargo and what `cargo install` puts there, also from a non-login shell.
case ":$PATH:" in *":$CARGO_BIN:"*) ;; *) PATH=$PATH:$CARGO_BIN ;; esac

# The noida-db binary: reused when present, else built with cargo (into $CARGO_BIN).
install_noida() {
  command -v noida-db >/dev/null 2>&1 && return 0
  command -v cargo >/dev/null 2>&1 || die "noida-db is not installed and cargo is not on PATH"
  log "installing noida-db $NOIDA_VERSION with cargo (about a minute, once)"
  cargo install "noida-db@$NOIDA_VERSION" --locked --no-default-features --features kafka >&2
  hash -r
  command -v noida-db >/dev/null 2>&1 || die "cargo install finished but noida-db is not on PATH"
}

# The pid in the pid file, if that process is alive and is noida-db.
running_pid() {
  local pid state
  [ -f "$PIDFILE" ] || return 1
  pid=$(head -1 "$PIDFILE" 2>/dev/null) || return 1
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [ "$state" != Z ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = noida-db ] || return 1
  echo "$pid"
}

# Succeeds when 127.0.0.1:$PORT answers a Metadata (v0) request naming itself
# as the broker at 127.0.0.1:$PORT. Plain sockets: no client library needed.
metadata_ok() {
  python3 - "$PORT" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
client = b"pg_sink-kafka.sh"
# Metadata v0 (api key 3), correlation id 7, no topics = all topics.
body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(2)
        s.sendall(struct.pack(">i", len(body)) + body)
        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf
        (size,) = struct.unpack(">i", read(4))
        resp = read(size)
except (OSError, EOFError):
    sys.exit(1)
corr, nbrokers = struct.unpack(">ii", resp[:8])
if corr != 7 or nbrokers < 1:
    sys.exit(1)
_node, hlen = struct.unpack(">ih", resp[8:14])
host = resp[14:14 + hlen].decode()
(bport,) = struct.unpack(">i", resp[14 + hlen:18 + hlen])
sys.exit(0 if (host, bport) == ("127.0.0.1", port) else 1)
PY
}

port_busy() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$PORT"
}

stop_broker() {
  local pid i
  pid=$(running_pid) || { rm -f "$PIDFILE"; return 0; }
  kill -CONT "$pid" 2>/dev/null || true  # in case it was paused
  kill -TERM "$pid" 2>/dev/null || true
  # noida-db saves its whole state on SIGTERM; a large state takes a while, and
  # killing it earlier would lose acknowledged writes.
  for i in $(seq 1200); do running_pid >/dev/null || break; sleep 0.1; done
  if running_pid >/dev/null; then
    log "broker pid $pid ignored SIGTERM for 120s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do running_pid >/dev/null || break; sleep 0.1; done
    running_pid >/dev/null && die "broker pid $pid did not exit"
  fi
  rm -f "$PIDFILE"
}

start_broker() {
  local bin pid i keep=${1:-}
  install_noida
  bin=$(command -v noida-db)
  stop_broker
  if [ "$keep" = keep ] && [ -e "$MARKER" ]; then
    : # restart: keep the broker's data
  elif [ -e "$DATA" ]; then
    # Only wipe a directory this script made (or an empty one).
    if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
      die "$DATA exists, is not empty and was not made by this script; refusing to wipe it"
    fi
    rm -rf "$DATA"
  fi
  mkdir -p "$DATA/noida"
  touch "$MARKER"
  port_busy && die "127.0.0.1:$PORT is already in use by another process"

  # setsid: the broker outlives this shell and is not hit by its terminal's
  # Ctrl-C. In a non-interactive script setsid execs in place, so $! is the
  # broker's own pid.
  setsid "$bin" start --only kafka --host 127.0.0.1 --kafka-port "$PORT" \
    --data-dir "$DATA/noida" </dev/null >"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"

  for i in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$LOG" >&2 || true
      rm -f "$PIDFILE"
      die "broker exited during startup (log: $LOG)"
    fi
    if metadata_ok; then
      running_pid >/dev/null || die "pid $pid is not noida-db (log: $LOG)"
      log "noida-db $NOIDA_VERSION Kafka broker on 127.0.0.1:$PORT (pid $pid, data $DATA)"
      return 0
    fi
    sleep 0.1
  done
  tail -20 "$LOG" >&2 || true
  stop_broker
  die "broker did not answer Metadata on 127.0.0.1:$PORT within 30s (log: $LOG)"
}

case "${1:-}" in
  start) start_broker ;;
  restart) start_broker keep ;;  # stop, then start on the same data
  pause)  # freeze the broker (SIGSTOP): clients see it down until resume
    pid=$(running_pid) || die "broker is not running"
    kill -STOP "$pid" ;;
  resume)
    pid=$(running_pid) || die "broker is not running"
    kill -CONT "$pid" ;;
  stop) stop_broker ;;
  status)
    if pid=$(running_pid) && metadata_ok; then
      echo "kafka (noida-db) running on 127.0.0.1:$PORT, pid $pid, data $DATA"
    elif pid=$(running_pid); then
      echo "kafka (noida-db) pid $pid is alive but 127.0.0.1:$PORT does not answer Metadata"
      exit 1
    else
      echo "kafka (noida-db) not running (data $DATA)"
      exit 3
    fi
    ;;
  *)
    echo "usage: $0 start|restart|stop|status|pause|resume   (env: KAFKA_PORT=$PORT KAFKA_DATA=$DATA)" >&2
    exit 2
    ;;
esac
