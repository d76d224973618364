#!/usr/bin/env bash
# Throwaway NATS servers for pg_sink's tests, both on 127.0.0.1 with JetStream:
#
#   * the main server on $NATS_PORT, with these users (all may publish and
#     subscribe to everything, JetStream included):
#       - no credentials at all: accepted as user `anon` (no_auth_user);
#       - user `sinkuser`, password `sinkpass`;
#       - an NKEY user, generated at each start: seed in $NATS_DATA/user.nk,
#         public key in $NATS_DATA/user.pub.
#   * an operator-mode (decentralized JWT) server on $NATS_PORT+1: operator,
#     system account and account `SINK` (JetStream unlimited) generated at each
#     start, accounts preloaded into a MEMORY resolver. Its user: JWT in
#     $NATS_DATA/user.jwt, seed in $NATS_DATA/user_jwt.nk, and both together as
#     a creds file in $NATS_DATA/user.creds. This is what `jwt` + `nkey`
#     (RisingWave's connect_mode=credential) authenticate against.
#
#   scripts/nats.sh start|stop|restart|status   (restart keeps the data: an outage)
#
# NATS_PORT (default 14222; the JWT server uses NATS_PORT+1), NATS_DATA (default
# /tmp/pg_sink_nats; wiped at each start). Pids in $NATS_DATA/nats.pid and
# nats_jwt.pid, logs in nats.log and nats_jwt.log, configs in nats.conf and
# nats_jwt.conf. Needs /usr/sbin/nats-server (NATS_SERVER overrides) and
# python3 with the `nkeys` package (pip-installed when missing).
set -euo pipefail
PORT=${NATS_PORT:-14222}
DATA=${NATS_DATA:-/tmp/pg_sink_nats}
BIN=${NATS_SERVER:-/usr/sbin/nats-server}
PY=${PYTHON:-python3}
MARKER=$DATA/.pg_sink_nats

log() { printf '\033[1m[nats]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[nats]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "NATS_PORT must be a number, not '$PORT'" ;; esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65534 ] || die "NATS_PORT must be in 1..65534"
JWT_PORT=$((PORT + 1))
case "$DATA" in /*) ;; *) die "NATS_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "NATS_DATA must not be /"

# name -> port, pid file, log, config, server_name
srv_port() { if [ "$1" = jwt ]; then echo "$JWT_PORT"; else echo "$PORT"; fi; }
srv_file() { if [ "$1" = jwt ]; then echo "$DATA/nats_jwt.$2"; else echo "$DATA/nats.$2"; fi; }
srv_name() { if [ "$1" = jwt ]; then echo pg_sink_nats_jwt; else echo pg_sink_nats; fi; }

# The pid in the server's pid file, if that process is alive and is nats-server.
running_pid() {
  local pidfile pid state
  pidfile=$(srv_file "$1" pid)
  [ -f "$pidfile" ] || return 1
  pid=$(head -1 "$pidfile" 2>/dev/null) || return 1
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [ "$state" != Z ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nats-server ] || return 1
  echo "$pid"
}

# Succeeds when 127.0.0.1:PORT sends a NATS INFO line naming server NAME with
# JetStream on. Plain sockets: no client library needed.
info_ok() {
  "$PY" - "$1" "$2" <<'PY'
import json, socket, sys
port, name = int(sys.argv[1]), sys.argv[2]
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(2)
        buf = b""
        while b"\r\n" not in buf and len(buf) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
except OSError:
    sys.exit(1)
line = buf.split(b"\r\n", 1)[0]
if not line.startswith(b"INFO "):
    sys.exit(1)
info = json.loads(line[5:])
sys.exit(0 if info.get("server_name") == name and info.get("port") == port
         and info.get("jetstream") else 1)
PY
}

port_busy() {
  "$PY" -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

ensure_nkeys() {
  "$PY" -c 'import nkeys, nacl.signing' 2>/dev/null && return 0
  log "installing the nkeys Python package (pip)"
  "$PY" -m pip install --quiet nkeys >&2 ||
    "$PY" -m pip install --quiet --break-system-packages nkeys >&2 ||
    die "could not pip install nkeys"
  "$PY" -c 'import nkeys, nacl.signing' || die "nkeys installed but does not import"
}

# Generates the keys, JWTs and both server configs into $DATA.
generate() {
  "$PY" - "$DATA" "$PORT" "$JWT_PORT" <<'PY'
import base64, hashlib, json, os, secrets, sys, time
import nkeys

data, port, jwt_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def write(name, text, mode=0o600):
    path = os.path.join(data, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path

def keypair(prefix):
    """A new (seed, public key) pair of the given kind, as strings."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return seed.decode(), kp.public_key.decode(), kp

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def jwt(signer_kp, sub, name, nats):
    """A NATS JWT v2: header {typ: JWT, alg: ed25519-nkey}, claims with jti =
    base32(SHA-512/256 of the claims without jti), signed by the issuer's nkey."""
    claims = {"iat": int(time.time()), "iss": signer_kp.public_key.decode(),
              "name": name, "sub": sub, "nats": nats}
    digest = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims = {"jti": base64.b32encode(digest).decode().rstrip("="), **claims}
    head = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = signer_kp.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url(sig)}"

# Key, seed and JWT files hold the bare string, no trailing newline: some
# clients (nats-py's user_credentials=(jwt_file, seed_file)) read them raw.

# ---- main server: anon (no_auth_user), sinkuser/sinkpass, one nkey user -----
user_seed, user_pub, _ = keypair(nkeys.PREFIX_BYTE_USER)
write("user.nk", user_seed)
write("user.pub", user_pub, 0o644)
anon_pass = secrets.token_hex(16)
write("anon.pass", anon_pass)
allow_all = 'permissions: { publish: ">", subscribe: ">" }'
write("nats.conf", f"""# generated by scripts/nats.sh: pg_sink test server
server_name: pg_sink_nats
host: 127.0.0.1
port: {port}
jetstream {{
  store_dir: "{data}/jetstream"
  max_memory_store: 256MB
  max_file_store: 8GB
}}
authorization {{
  users: [
    {{ user: anon, password: "{anon_pass}", {allow_all} }}
    {{ user: sinkuser, password: sinkpass, {allow_all} }}
    {{ nkey: {user_pub}, {allow_all} }}
  ]
}}
# a client that sends no credentials is logged in as this user
no_auth_user: anon
""", 0o644)

# ---- operator-mode server: operator, system account, account SINK, one user ----
op_seed, op_pub, op_kp = keypair(nkeys.PREFIX_BYTE_OPERATOR)
sys_seed, sys_pub, sys_kp = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
acc_seed, acc_pub, acc_kp = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
ju_seed, ju_pub, _ = keypair(nkeys.PREFIX_BYTE_USER)

unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
             "wildcards": True, "conn": -1, "leaf": -1}
op_jwt = jwt(op_kp, op_pub, "pg_sink_operator",
             {"system_account": sys_pub, "type": "operator", "version": 2})
sys_jwt = jwt(op_kp, sys_pub, "SYS",
              {"limits": dict(unlimited), "default_permissions": {"pub": {}, "sub": {}},
               "type": "account", "version": 2})
acc_jwt = jwt(op_kp, acc_pub, "SINK",
              {"limits": {**unlimited, "mem_storage": -1, "disk_storage": -1,
                          "streams": -1, "consumer": -1},
               "default_permissions": {"pub": {}, "sub": {}},
               "type": "account", "version": 2})
user_jwt = jwt(acc_kp, ju_pub, "sinkjwt",
               {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2})

write("operator.jwt", op_jwt, 0o644)
write("operator.nk", op_seed)
write("account.nk", acc_seed)
write("account.pub", acc_pub, 0o644)
write("user.jwt", user_jwt, 0o644)
write("user_jwt.nk", ju_seed)
write("user.creds", f"""-----BEGIN NATS USER JWT-----
{user_jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{ju_seed}
------END USER NKEY SEED------

*************************************************************
""")
write("nats_jwt.conf", f"""# generated by scripts/nats.sh: pg_sink operator-mode (JWT) test server
server_name: pg_sink_nats_jwt
host: 127.0.0.1
port: {jwt_port}
jetstream {{
  store_dir: "{data}/jetstream_jwt"
  max_memory_store: 256MB
  max_file_store: 1GB
}}
operator: "{data}/operator.jwt"
system_account: {sys_pub}
resolver: MEMORY
resolver_preload: {{
  # SYS
  {sys_pub}: "{sys_jwt}"
  # SINK (JetStream enabled: mem_storage/disk_storage -1 = unlimited)
  {acc_pub}: "{acc_jwt}"
}}
""", 0o644)
PY
}

stop_one() {
  local pid i pidfile
  pidfile=$(srv_file "$1" pid)
  pid=$(running_pid "$1") || { rm -f "$pidfile"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do running_pid "$1" >/dev/null || break; sleep 0.1; done
  if running_pid "$1" >/dev/null; then
    log "nats-server pid $pid ignored SIGTERM for 5s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do running_pid "$1" >/dev/null || break; sleep 0.1; done
    running_pid "$1" >/dev/null && die "nats-server pid $pid did not exit"
  fi
  rm -f "$pidfile"
}

stop_all() { stop_one main; stop_one jwt; }

start_one() {
  local which=$1 port conf logf pidfile name pid i
  port=$(srv_port "$which"); conf=$(srv_file "$which" conf)
  logf=$(srv_file "$which" log); pidfile=$(srv_file "$which" pid)
  name=$(srv_name "$which")
  # setsid: the server outlives this shell and is not hit by its terminal's
  # Ctrl-C. In a non-interactive script setsid execs in place, so $! is the
  # server's own pid.
  setsid "$BIN" -c "$conf" </dev/null >"$logf" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"
  for i in $(seq 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$logf" >&2 || true
      rm -f "$pidfile"
      stop_all
      die "nats-server ($which) exited during startup (log: $logf)"
    fi
    if info_ok "$port" "$name"; then
      running_pid "$which" >/dev/null || die "pid $pid is not nats-server (log: $logf)"
      log "nats-server ($which) on 127.0.0.1:$port (pid $pid, config $conf)"
      return 0
    fi
    sleep 0.1
  done
  tail -20 "$logf" >&2 || true
  stop_all
  die "nats-server ($which) did not answer on 127.0.0.1:$port within 20s (log: $logf)"
}

start_all() {
  [ -x "$BIN" ] || die "$BIN not found (Debian: apt-get install nats-server)"
  ensure_nkeys
  stop_all
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use by another process"
  port_busy "$JWT_PORT" && die "127.0.0.1:$JWT_PORT is already in use by another process"
  if [ -e "$DATA" ]; then
    # Only wipe a directory this script made (or an empty one).
    if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
      die "$DATA exists, is not empty and was not made by this script; refusing to wipe it"
    fi
    rm -rf "$DATA"
  fi
  mkdir -p "$DATA"
  touch "$MARKER"
  generate
  start_one main
  start_one jwt
  log "users: anonymous, sinkuser/sinkpass, nkey seed $DATA/user.nk;" \
    "JWT server: $DATA/user.jwt + $DATA/user_jwt.nk ($DATA/user.creds)"
}

status_one() {
  local which=$1 port pid
  port=$(srv_port "$which")
  if pid=$(running_pid "$which") && info_ok "$port" "$(srv_name "$which")"; then
    echo "nats ($which) running on 127.0.0.1:$port, pid $pid, data $DATA"
  elif pid=$(running_pid "$which"); then
    echo "nats ($which) pid $pid is alive but 127.0.0.1:$port does not answer"
    return 1
  else
    echo "nats ($which) not running (data $DATA)"
    return 3
  fi
}

case "${1:-}" in
  start) start_all ;;
  stop) stop_all ;;
  restart)
    # Stop and start again keeping the data (streams, their messages): a server outage.
    [ -e "$MARKER" ] || die "$DATA was not made by this script; run start first"
    stop_all
    start_one main
    start_one jwt
    ;;
  status)
    rc=0
    status_one main || rc=$?
    status_one jwt || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
    exit "$rc"
    ;;
  *)
    echo "usage: $0 start|stop|status   (env: NATS_PORT=$PORT NATS_DATA=$DATA)" >&2
    exit 2
    ;;
esac
