# Process handling shared by the scripts that start throwaway test servers
# (moto.sh, azurite.sh, kafka.sh, apicurio.sh, mariadb.sh, minidfs.sh,
# iceberg_rest.sh). Source it after defining log() and die().
#
#   svc_running_pid PIDFILE PATTERN     pid if alive and its command line matches
#   svc_launch PIDFILE LOG WHAT PORT CHECK PATTERN CMD...
#                                       start CMD in the background, wait until the
#                                       function CHECK succeeds ($SVC_WAIT seconds,
#                                       default 30)
#   svc_stop PIDFILE PATTERN [SECONDS]  TERM (after CONT, in case it was paused),
#                                       then KILL after SECONDS (default 5); removes
#                                       PIDFILE
#   svc_kill PIDFILE PATTERN            KILL at once (a crash) and wait until it is
#                                       gone; removes PIDFILE
#   svc_pip IMPORTS PACKAGES...         pip install PACKAGES unless IMPORTS import

svc_running_pid() {
  local pidfile=$1 pattern=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(head -1 "$pidfile" 2>/dev/null) || return 1
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$pattern" || return 1
  echo "$pid"
}

svc_launch() {
  local pidfile=$1 logfile=$2 what=$3 port=$4 check=$5 pattern=$6
  shift 6
  mkdir -p "$(dirname "$pidfile")"
  : >"$logfile"
  "$@" >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 $((${SVC_WAIT:-30} * 5))); do
    if "$check"; then
      log "$what on 127.0.0.1:$port (pid $(cat "$pidfile"))"
      return 0
    fi
    svc_running_pid "$pidfile" "$pattern" >/dev/null || { tail -20 "$logfile" >&2; die "$what exited"; }
    sleep 0.2
  done
  tail -20 "$logfile" >&2
  die "$what did not answer on 127.0.0.1:$port"
}

svc_stop() {
  local pidfile=$1 pattern=$2 wait=${3:-5} pid
  if pid=$(svc_running_pid "$pidfile" "$pattern"); then
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((wait * 10))); do svc_running_pid "$pidfile" "$pattern" >/dev/null || break; sleep 0.1; done
    if svc_running_pid "$pidfile" "$pattern" >/dev/null; then
      [ "$wait" -le 5 ] || log "pid $pid ignored SIGTERM for ${wait}s; sending SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do svc_running_pid "$pidfile" "$pattern" >/dev/null || break; sleep 0.1; done
    fi
    log "stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

svc_kill() {
  local pidfile=$1 pattern=$2 pid
  if pid=$(svc_running_pid "$pidfile" "$pattern"); then
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do svc_running_pid "$pidfile" "$pattern" >/dev/null || break; sleep 0.1; done
    log "killed (pid $pid)"
  fi
  rm -f "$pidfile"
}

svc_pip() {
  local imports=$1
  shift
  python3 -c "import $imports" 2>/dev/null && return 0
  log "installing $* with pip (once)"
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v 'Running pip as the' >&2 || true
  python3 -c "import $imports" 2>/dev/null || die "pip finished but $imports cannot be imported"
}
