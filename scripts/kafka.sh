#!/usr/bin/env bash
# A throwaway single-node Apache Kafka broker (KRaft, combined broker and
# controller, node id 1) for pg_sink's tests, bound to 127.0.0.1. It runs from the
# Maven Central jars named in tools/kafka/pom.xml (Kafka 4.1.1): the first start
# asks Maven for their class path (downloading about 70 MB into ~/.m2 once) and
# caches it under ${XDG_CACHE_HOME:-~/.cache}/pg_sink/kafka/, keyed by the pom's
# hash; later starts only launch JVMs (one to format the storage, then the
# broker; about 10 CPU-seconds in all): 12-17 s measured on a 2-core machine busy
# compiling at the same time.
# Needs java (17+), mvn, openssl, python3.
#
#   scripts/kafka.sh start      fresh broker: wipes $KAFKA_DATA, makes new TLS
#                               material, formats the storage, waits until it answers
#   scripts/kafka.sh restart    stop (if running), then start on the same data and
#                               TLS material (after `kill` too: a crash recovery)
#   scripts/kafka.sh stop       SIGTERM, SIGKILL after 60 s
#   scripts/kafka.sh kill       SIGKILL at once (a crash); the data stays
#   scripts/kafka.sh pause|resume   SIGSTOP / SIGCONT the broker process
#   scripts/kafka.sh status
#   scripts/kafka.sh topics ARGS...     TopicCommand --bootstrap-server 127.0.0.1:P ARGS
#   scripts/kafka.sh acls ARGS...       AclCommand --bootstrap-server 127.0.0.1:P ARGS
#   scripts/kafka.sh configs ARGS...    ConfigCommand --bootstrap-server 127.0.0.1:P ARGS
#   scripts/kafka.sh acl-deny-topic TOPIC [USER]
#                               DENY every operation on TOPIC to User:USER (default
#                               denied); the ACL is in force when this returns
#   scripts/kafka.sh tool CLASS ARGS... any class on the broker's class path, e.g.
#                               org.apache.kafka.tools.TopicCommand,
#                               org.apache.kafka.tools.AclCommand,
#                               kafka.admin.ConfigCommand,
#                               org.apache.kafka.tools.TransactionsCommand,
#                               org.apache.kafka.tools.consumer.group.ConsumerGroupCommand,
#                               org.apache.kafka.tools.ConsoleProducer / .consumer.ConsoleConsumer
#                               ($KAFKA_DATA/client.properties is a PLAINTEXT client
#                               config for --command-config)
#   scripts/kafka.sh classpath  print the class path
#
# KAFKA_PORT=P (default 19092), KAFKA_DATA (default /tmp/pg_sink_kafka). Listeners,
# all on 127.0.0.1:
#   P    PLAINTEXT       no authentication (principal User:ANONYMOUS)
#   P+1  SASL_PLAINTEXT  SASL PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
#   P+2  SSL             server authentication only
#   P+3  SASL_SSL        the same SASL users over TLS
#   P+4  SSL             ssl.client.auth=required (mutual TLS)
#   P+5  CONTROLLER      KRaft controller (PLAINTEXT; not for clients)
# SASL users:
#   PLAIN          sink / sink-secret, denied / denied-secret
#   SCRAM-SHA-256  sink256 / sink256-secret
#   SCRAM-SHA-512  sink512 / sink512-secret
# TLS files in $KAFKA_DATA/tls (new on every start, kept by restart; keys are
# unencrypted PKCS#8 PEM):
#   ca.pem                  the CA that signed the server certificate (CN
#                           localhost, SAN IP:127.0.0.1 and DNS:localhost) and
#                           client.pem
#   client.pem, client.key  client certificate (CN pg_sink-client, principal
#                           User:pg_sink-client) for the mutual-TLS listener
#   other-ca.pem            an unrelated CA: a client trusting only it must fail
#   other-client.pem, other-client.key
#                           a client certificate signed by other-ca: rejected by P+4
#   server.pem, server.key, server.p12 (password pg_sink-tls)  the broker's own
# Authorization: StandardAuthorizer with allow.everyone.if.no.acl.found=true.
# Super users (never subject to ACLs): User:ANONYMOUS (PLAINTEXT, SSL without a
# client certificate, the controller), User:pg_sink-client, User:sink,
# User:sink256, User:sink512. User:denied is the one user ACLs apply to: it may do
# anything on a resource that has no ACL at all, and once any ACL names a
# resource (acl-deny-topic), only principals it ALLOWs (and super users) may use
# it. Idempotent and transactional producers work for every user on every
# listener.
# Replication factors and min ISR are 1, __consumer_offsets and
# __transaction_state have 1 partition and are created before `start` returns, so
# groups and transactions are usable at once. auto.create.topics.enable=true,
# num.partitions=1, group.initial.rebalance.delay.ms=0.
# After a `kill`, `restart` takes a few seconds more (log recovery, and the dead
# incarnation's registration must time out first: 4 s here, 9 s by default).
# Files: $KAFKA_DATA/broker.pid, broker.log (the one before a restart in
# broker.log.1), server.properties, log4j2.properties, client.properties,
# cluster.id, format.log, logs/ (the log and metadata directory).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PORT=${KAFKA_PORT:-19092}
DATA=${KAFKA_DATA:-/tmp/pg_sink_kafka}
PIDFILE=$DATA/broker.pid
LOG=$DATA/broker.log
MARKER=$DATA/.pg_sink_kafka
TLS=$DATA/tls
POM=$ROOT/tools/kafka/pom.xml
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pg_sink/kafka
KEYSTORE_PASSWORD=pg_sink-tls

log() { printf '\033[1m[kafka]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[kafka]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "KAFKA_PORT must be a number, not '$PORT'" ;; esac
[ "$PORT" -ge 1024 ] && [ "$PORT" -le 65530 ] || die "KAFKA_PORT must be within 1024..65530, not $PORT"
case "$DATA" in /*) ;; *) die "KAFKA_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "KAFKA_DATA must not be /"

# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
# shellcheck source=scripts/lib/tls.sh
. "$HERE/lib/tls.sh"
# This data directory's broker, and no other: the command line names its config.
PATTERN="kafka\\.Kafka $(printf '%s' "$DATA" | sed 's/[][\.*^$]/\\&/g')/server\\.properties"

P_PLAIN=$PORT
P_SASL=$((PORT + 1))
P_SSL=$((PORT + 2))
P_SASL_SSL=$((PORT + 3))
P_MTLS=$((PORT + 4))
P_CONTROLLER=$((PORT + 5))
PORTS="$P_PLAIN $P_SASL $P_SSL $P_SASL_SSL $P_MTLS $P_CONTROLLER"

# The jars' class path, resolved by Maven once per version of the pom and cached.
classpath() {
  local dir
  command -v java >/dev/null 2>&1 || die "java is not on PATH (bash scripts/setup.sh installs it)"
  dir=$CACHE/$(sha256sum "$POM" | cut -c1-16)
  # Still valid while every jar is there (~/.m2 may have been cleaned).
  if [ -s "$dir/classpath.txt" ] && tr ':' '\n' <"$dir/classpath.txt" | while read -r jar; do
    [ -f "$jar" ] || exit 1
  done; then
    cat "$dir/classpath.txt"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (bash scripts/setup.sh installs it)"
  mkdir -p "$dir"
  log "resolving the Kafka jars with Maven (downloads them once)" >&2
  if ! mvn -q -B -f "$POM" dependency:build-classpath -Dmdep.outputFile="$dir/classpath.txt.tmp" \
    >"$dir/mvn.log" 2>&1; then
    tail -30 "$dir/mvn.log" >&2
    die "mvn dependency:build-classpath failed (log: $dir/mvn.log)"
  fi
  mv "$dir/classpath.txt.tmp" "$dir/classpath.txt"
  cat "$dir/classpath.txt"
}

# Probes over the PLAINTEXT listener with plain sockets (no client library):
#   meta   a Metadata (v4) request names the broker as 127.0.0.1:$PORT
#   ready  meta, and FindCoordinator (v1) finds a group and a transaction
#          coordinator: that creates __consumer_offsets and __transaction_state
#   acl TOPIC PRINCIPAL   DescribeAcls (v1): the broker's authorizer has an ACL
#          on the topic for the principal
probe() {
  python3 - "$PORT" "$@" <<'PY'
import socket, struct, sys
port, mode, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
client = b"pg_sink-kafka.sh"

def string(b):
    return struct.pack(">h", len(b)) + b

def call(s, api, version, corr, body):
    req = struct.pack(">hhi", api, version, corr) + string(client) + body
    s.sendall(struct.pack(">i", len(req)) + req)
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
    if struct.unpack(">i", resp[:4])[0] != corr:
        raise EOFError
    return resp[4:]

def node(resp, at):
    _id, hlen = struct.unpack(">ih", resp[at:at + 6])
    host = resp[at + 6:at + 6 + hlen].decode()
    (bport,) = struct.unpack(">i", resp[at + 6 + hlen:at + 10 + hlen])
    return host, bport

try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.settimeout(3)
        # Metadata v4: topics = null (all), allow_auto_topic_creation = false.
        resp = call(s, 3, 4, 7, struct.pack(">ib", -1, 0))
        (nbrokers,) = struct.unpack(">i", resp[4:8])
        if nbrokers < 1 or node(resp, 8) != ("127.0.0.1", port):
            sys.exit(1)
        if mode == "acl":
            # resource TOPIC (2) named args[0], pattern LITERAL (3), principal
            # args[1], any host, operation ANY (1), permission ANY (1).
            body = (struct.pack(">b", 2) + string(args[0].encode()) + struct.pack(">b", 3)
                    + string(args[1].encode()) + struct.pack(">hbb", -1, 1, 1))
            resp = call(s, 29, 1, 10, body)
            (err, mlen) = struct.unpack(">hh", resp[4:8])
            at = 8 + max(mlen, 0)
            (nres,) = struct.unpack(">i", resp[at:at + 4])
            sys.exit(0 if err == 0 and nres > 0 else 1)
        if mode == "ready":
            # FindCoordinator v1, key type 0 (group) and 1 (transaction).
            for corr, key_type in ((8, 0), (9, 1)):
                resp = call(s, 10, 1, corr, string(b"pg_sink-kafka-sh") + struct.pack(">b", key_type))
                (err,) = struct.unpack(">h", resp[4:6])
                if err != 0:
                    sys.exit(1)
except (OSError, EOFError, struct.error, UnicodeDecodeError):
    sys.exit(1)
PY
}
ready() { probe ready; }

port_busy() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

make_tls() {
  local leaf='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature'
  mkdir -p "$TLS"
  mkcert ca "pg_sink test CA"
  mkcert other-ca "pg_sink unrelated test CA"
  mkcert server localhost ca "$leaf\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
  mkcert client pg_sink-client ca "$leaf\nextendedKeyUsage=clientAuth"
  mkcert other-client pg_sink-client other-ca "$leaf\nextendedKeyUsage=clientAuth"
  openssl pkcs12 -export -in "$TLS/server.pem" -inkey "$TLS/server.key" -certfile "$TLS/ca.pem" \
    -name server -out "$TLS/server.p12" -passout "pass:$KEYSTORE_PASSWORD"
  chmod 600 "$TLS"/*.key
}

write_config() {
  local sasl_jaas
  sasl_jaas='org.apache.kafka.common.security.plain.PlainLoginModule required user_sink="sink-secret" user_denied="denied-secret";'
  cat >"$DATA/server.properties" <<EOF
# Written by scripts/kafka.sh on every start; edits are lost.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$P_CONTROLLER
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$P_PLAIN,SASL_PLAINTEXT://127.0.0.1:$P_SASL,SSL://127.0.0.1:$P_SSL,SASL_SSL://127.0.0.1:$P_SASL_SSL,MTLS://127.0.0.1:$P_MTLS,CONTROLLER://127.0.0.1:$P_CONTROLLER
advertised.listeners=PLAINTEXT://127.0.0.1:$P_PLAIN,SASL_PLAINTEXT://127.0.0.1:$P_SASL,SSL://127.0.0.1:$P_SSL,SASL_SSL://127.0.0.1:$P_SASL_SSL,MTLS://127.0.0.1:$P_MTLS,CONTROLLER://127.0.0.1:$P_CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA/logs

num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# After a crash (kill) the new broker incarnation may register only once the dead
# one has missed heartbeats for this long: keep it short (defaults 9 s and 2 s).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=true
super.users=User:ANONYMOUS;User:pg_sink-client;User:sink;User:sink256;User:sink512

sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
# SASL clients re-authenticate every 5 s (KIP-368), so a password changed on the
# broker takes effect on open connections soon.
connections.max.reauth.ms=5000
listener.name.sasl_plaintext.plain.sasl.jaas.config=$sasl_jaas
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=$sasl_jaas
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;

ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS/server.p12
ssl.keystore.password=$KEYSTORE_PASSWORD
ssl.key.password=$KEYSTORE_PASSWORD
ssl.client.auth=none
listener.name.mtls.ssl.client.auth=required
listener.name.mtls.ssl.truststore.type=PEM
listener.name.mtls.ssl.truststore.location=$TLS/ca.pem
# CN=pg_sink-client,O=pg_sink tests -> User:pg_sink-client
ssl.principal.mapping.rules=RULE:^.*CN=([^,]+).*$/\$1/,DEFAULT
EOF
  cat >"$DATA/log4j2.properties" <<'EOF'
# Written by scripts/kafka.sh on every start; edits are lost.
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.statechange.name=state.change.logger
logger.statechange.level=WARN
EOF
  cat >"$DATA/log4j2-tools.properties" <<'EOF'
# Written by scripts/kafka.sh: the CLI tools log warnings only, to stderr.
appender.stderr.type=Console
appender.stderr.name=STDERR
appender.stderr.target=SYSTEM_ERR
appender.stderr.layout.type=PatternLayout
appender.stderr.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.stderr.ref=STDERR
EOF
  printf 'security.protocol=PLAINTEXT\n' >"$DATA/client.properties"
}

# A fresh Kafka cluster id: 16 random bytes, URL-safe base64 without padding.
new_cluster_id() {
  python3 -c 'import base64, os
while True:
    u = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    if not u.startswith("-"):
        print(u); break'
}

# The broker's JVM flags (as Kafka's own scripts set them, with a 512 MB heap).
JVM_FLAGS=(-Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true)
# The short-lived tools' (format, CLI): the C1 compiler alone and the serial GC
# start them about a second sooner.
TOOL_FLAGS=(-Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true)

# java_run LOG4J2_CONFIG MAIN_CLASS ARGS...: a tool's JVM on the jars (in $CP).
java_run() {
  local conf=$1
  shift
  CLASSPATH=$CP java "${TOOL_FLAGS[@]}" -Dlog4j2.configurationFile="$conf" "$@"
}

start_broker() {
  local keep=${1:-} pid p
  CP=$(classpath)
  svc_stop "$PIDFILE" "$PATTERN" 60
  for p in $PORTS; do
    port_busy "$p" && die "127.0.0.1:$p is already in use by another process (KAFKA_PORT=$PORT uses $PORTS)"
  done
  if [ "$keep" = keep ] && [ -e "$MARKER" ] && [ -f "$DATA/logs/meta.properties" ] && [ -f "$TLS/server.p12" ]; then
    : # restart: keep the broker's data and TLS material
  else
    keep=
    if [ -e "$DATA" ]; then
      # Only wipe a directory this script made (or an empty one).
      if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
        die "$DATA exists, is not empty and was not made by this script; refusing to wipe it"
      fi
      rm -rf "$DATA"
    fi
  fi
  mkdir -p "$DATA/logs"
  touch "$MARKER"
  write_config
  if [ -z "$keep" ]; then
    make_tls
    new_cluster_id >"$DATA/cluster.id"
    if ! java_run "$DATA/log4j2-tools.properties" kafka.tools.StorageTool format \
      --config "$DATA/server.properties" --cluster-id "$(cat "$DATA/cluster.id")" --standalone \
      --add-scram 'SCRAM-SHA-256=[name=sink256,password=sink256-secret]' \
      --add-scram 'SCRAM-SHA-512=[name=sink512,password=sink512-secret]' >"$DATA/format.log" 2>&1; then
      cat "$DATA/format.log" >&2
      die "kafka-storage format failed"
    fi
  fi
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
  # setsid: the broker outlives this shell and is not hit by its terminal's
  # Ctrl-C. In a non-interactive script setsid execs in place, so the pid that
  # svc_launch records is the JVM's own.
  SVC_WAIT=120 svc_launch "$PIDFILE" "$LOG" "Kafka $(kafka_version) broker (data $DATA)" \
    "$P_PLAIN..$P_CONTROLLER" ready "$PATTERN" \
    setsid env CLASSPATH="$CP" java "${JVM_FLAGS[@]}" -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    kafka.Kafka "$DATA/server.properties"
}

kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM"
}

tool() {
  [ $# -ge 1 ] || die "usage: $0 tool CLASS ARGS..."
  CP=$(classpath)
  [ -f "$DATA/log4j2-tools.properties" ] || die "no broker config in $DATA: run '$0 start' first"
  java_run "$DATA/log4j2-tools.properties" "$@"
}

case "${1:-}" in
  start) start_broker ;;
  restart) start_broker keep ;;  # stop, then start on the same data
  stop) svc_stop "$PIDFILE" "$PATTERN" 60 ;;
  kill) svc_kill "$PIDFILE" "$PATTERN" ;;  # a crash: the data stays for restart
  pause)  # freeze the broker (SIGSTOP): clients see it down until resume
    pid=$(svc_running_pid "$PIDFILE" "$PATTERN") || die "broker is not running"
    kill -STOP "$pid" ;;
  resume)
    pid=$(svc_running_pid "$PIDFILE" "$PATTERN") || die "broker is not running"
    kill -CONT "$pid" ;;
  status)
    if pid=$(svc_running_pid "$PIDFILE" "$PATTERN") && probe meta; then
      echo "kafka $(kafka_version) running on 127.0.0.1:$PORT..$P_CONTROLLER, pid $pid, data $DATA"
    elif pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
      echo "kafka pid $pid is alive but 127.0.0.1:$PORT does not answer Metadata"
      exit 1
    else
      echo "kafka not running (data $DATA)"
      exit 3
    fi
    ;;
  topics) shift; tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$PORT" "$@" ;;
  acls) shift; tool org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$PORT" "$@" ;;
  configs) shift; tool kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$PORT" "$@" ;;
  acl-deny-topic)
    [ $# -ge 2 ] || die "usage: $0 acl-deny-topic TOPIC [USER]"
    tool org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$PORT" \
      --command-config "$DATA/client.properties" --add --deny-principal "User:${3:-denied}" \
      --operation All --topic "$2" >/dev/null
    # In force once the broker's authorizer lists it (a few ms after the add).
    for _ in $(seq 1 50); do probe acl "$2" "User:${3:-denied}" && break; sleep 0.1; done
    probe acl "$2" "User:${3:-denied}" || die "the ACL on topic $2 did not show up within 5 s"
    log "denied All on topic $2 to User:${3:-denied}"
    ;;
  tool) shift; tool "$@" ;;
  classpath) classpath; echo ;;
  *)
    echo "usage: $0 start|restart|stop|kill|status|pause|resume|topics|acls|configs|acl-deny-topic|tool|classpath" \
      "  (env: KAFKA_PORT=$PORT KAFKA_DATA=$DATA)" >&2
    exit 2
    ;;
esac
