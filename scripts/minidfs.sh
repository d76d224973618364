#!/usr/bin/env bash
# A throwaway HDFS for pg_sink's tests: Hadoop's MiniDFSCluster (one NameNode and
# one DataNode in one JVM, tools/minidfs: MiniDfs) bound to 127.0.0.1, simple
# authentication (no Kerberos), permission checks off (the superuser is the user
# running it, root here). Every start is a fresh, empty file system. It runs from
# the Maven Central jars named in tools/minidfs/pom.xml (Hadoop 3.4.1): the first
# start builds MiniDfs with Maven (about 80 MB of jars into ~/.m2, once; 12-19 s
# in all) and caches the jar and its class path under
# ${XDG_CACHE_HOME:-~/.cache}/pg_sink/minidfs/, keyed by the hash of
# tools/minidfs's pom and sources; later starts only boot the JVM (3-6 s). Needs
# Java 17 to 21 (Hadoop 3.4 fails on 23+; the first of $MINIDFS_JAVA, $JAVA_HOME,
# java on PATH and /usr/lib/jvm/* in that range), mvn, python3.
#
#   scripts/minidfs.sh start      stop the previous instance (by its pid file, if
#                                 any), wipe the file system, start, wait until
#                                 the ready file is there
#   scripts/minidfs.sh stop       SIGTERM, SIGKILL after 20 s
#   scripts/minidfs.sh status     exit 0 if running and WebHDFS answers
#   scripts/minidfs.sh dfs ARGS...  Hadoop's FsShell (`hdfs dfs ARGS`) over RPC, e.g.
#                                 dfs -ls -R /, dfs -cat /f, dfs -put LOCAL /f
#   scripts/minidfs.sh build      build if needed, print the cache directory
#   scripts/minidfs.sh classpath  build if needed, print the class path
#
# MINIDFS_PORT=P (default 19000), MINIDFS_DATA (default /tmp/pg_sink_test_minidfs),
# MINIDFS_JAVA_OPTS (extra JVM options, appended). Ports, on 127.0.0.1:
#   P    NameNode RPC: hdfs://127.0.0.1:P
#   P+1  NameNode HTTP, with WebHDFS at http://127.0.0.1:P+1/webhdfs/v1 (CREATE,
#        APPEND and OPEN redirect to the DataNode's HTTP port on 127.0.0.1, an
#        ephemeral one, as are its data transfer and IPC ports)
# Files in $MINIDFS_DATA: minidfs.pid, minidfs.log (warnings only; the previous
# run's in minidfs.log.1), ready (two lines, written once the cluster is up and out
# of safe mode, removed when it stops: hdfs://127.0.0.1:P and http://127.0.0.1:P+1),
# log4j.properties, logging.properties, conf/ (a client's HADOOP_CONF_DIR:
# core-site.xml with fs.defaultFS, hdfs-site.xml with dfs.replication 1), dfs/
# (the NameNode's and DataNode's storage).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PORT=${MINIDFS_PORT:-19000}
DATA=${MINIDFS_DATA:-/tmp/pg_sink_test_minidfs}
PIDFILE=$DATA/minidfs.pid
LOG=$DATA/minidfs.log
READY=$DATA/ready
MARKER=$DATA/.pg_sink_minidfs
TOOL=$ROOT/tools/minidfs
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pg_sink/minidfs
MAIN=pgsink.tools.MiniDfs

log() { printf '\033[1m[minidfs]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[minidfs]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "MINIDFS_PORT must be a number, not '$PORT'" ;; esac
[ "$PORT" -ge 1024 ] && [ "$PORT" -le 65534 ] || die "MINIDFS_PORT must be within 1024..65534, not $PORT"
case "$DATA" in /*) ;; *) die "MINIDFS_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "MINIDFS_DATA must not be /"

# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
# shellcheck source=scripts/lib/maven.sh
. "$HERE/lib/maven.sh"
# This data directory's cluster, and no other: its command line names DATA.
PATTERN="pgsink\\.tools\\.MiniDfs --data=$(printf '%s' "$DATA" | sed 's/[][\.*^$]/\\&/g')/dfs "
HTTP_PORT=$((PORT + 1))

# Hadoop 3.4 reaches into JDK internals (WebHDFS's JAXB defines classes through
# ClassLoader.defineClass: without java.lang opened every WebHDFS call fails with
# a 500). The usual set for Hadoop on Java 17.
ADD_OPENS=(--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED)

version() {
  sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$TOOL/pom.xml"
}

# A java binary of version 17 to 21.
find_java() { java_find 17 21 MINIDFS_JAVA "${MINIDFS_JAVA:-}"; }

build() {
  mvn_build "$TOOL" "$CACHE" minidfs-1.jar minidfs.build.directory \
    "MiniDfs (Hadoop $(version) is downloaded into ~/.m2 unless it is there)"
}

port_busy() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

ready() { [ -s "$READY" ]; }

# WebHDFS answers GETFILESTATUS on /.
answers() {
  python3 - "$HTTP_PORT" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/webhdfs/v1/?op=GETFILESTATUS", timeout=2).read()
except Exception:
    sys.exit(1)
PY
}

start() {
  local java cp p
  java=$(find_java)
  cp=$(cat "$(build)/classpath")
  svc_stop "$PIDFILE" "$PATTERN" 20
  for p in $PORT $HTTP_PORT; do
    port_busy "$p" && die "127.0.0.1:$p is already in use by another process (MINIDFS_PORT=$PORT uses $PORT and $HTTP_PORT)"
  done
  # Only wipe a directory this script made (or an empty one).
  if [ -e "$DATA" ] && [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
    die "$DATA exists, is not empty and was not made by this script; refusing to wipe it"
  fi
  rm -rf "$DATA/dfs" "$READY"
  mkdir -p "$DATA"
  touch "$MARKER"
  cat >"$DATA/log4j.properties" <<'EOF'
# Written by scripts/minidfs.sh on every start; edits are lost. Warnings only.
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
# Harmless at every start: no native library (the pure-Java code is used), no
# metrics config, no HTTP signature secret file (a random secret is used).
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
log4j.logger.org.apache.hadoop.metrics2.impl.MetricsConfig=ERROR
log4j.logger.org.apache.hadoop.security.authentication.server.AuthenticationFilter=ERROR
EOF
  # WebHDFS's Jersey logs through java.util.logging: a page of warnings per start.
  printf '%s\n' '# Written by scripts/minidfs.sh on every start: java.util.logging (Jersey), errors only.' \
    'handlers=java.util.logging.ConsoleHandler' '.level=SEVERE' >"$DATA/logging.properties"
  # A client configuration (HADOOP_CONF_DIR) naming this cluster; `dfs` uses it.
  mkdir -p "$DATA/conf"
  cat >"$DATA/conf/core-site.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by scripts/minidfs.sh on every start; edits are lost. -->
<configuration>
  <property><name>fs.defaultFS</name><value>hdfs://127.0.0.1:$PORT</value></property>
</configuration>
EOF
  # One DataNode: files a client asks to have three replicas of are written all
  # the same, but stay under-replicated.
  cat >"$DATA/conf/hdfs-site.xml" <<'EOF'
<?xml version="1.0"?>
<!-- Written by scripts/minidfs.sh on every start; edits are lost. -->
<configuration>
  <property><name>dfs.replication</name><value>1</value></property>
</configuration>
EOF
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
  # setsid: the cluster outlives this shell and is not hit by its terminal's
  # Ctrl-C; it execs in place, as does env, so the recorded pid is the JVM's.
  # shellcheck disable=SC2086 # MINIDFS_JAVA_OPTS is a list of options
  SVC_WAIT=90 svc_launch "$PIDFILE" "$LOG" \
    "HDFS (MiniDFSCluster, Hadoop $(version))" "$PORT, WebHDFS on 127.0.0.1:$HTTP_PORT" ready "$PATTERN" \
    setsid env CLASSPATH="$cp" "$java" -Xmx512m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "${ADD_OPENS[@]}" \
    -Dlog4j.configuration="file:$DATA/log4j.properties" \
    -Djava.util.logging.config.file="$DATA/logging.properties" ${MINIDFS_JAVA_OPTS:-} \
    "$MAIN" --data="$DATA/dfs" --port="$PORT" --http-port="$HTTP_PORT" --ready-file="$READY"
}

case "${1:-}" in
  start) start ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" 20 ;;
  status)
    if pid=$(svc_running_pid "$PIDFILE" "$PATTERN") && ready && answers; then
      log "HDFS (Hadoop $(version)) running (pid $pid) at hdfs://127.0.0.1:$PORT, WebHDFS http://127.0.0.1:$HTTP_PORT, data $DATA"
    elif pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
      log "pid $pid is alive but not ready, or WebHDFS on 127.0.0.1:$HTTP_PORT does not answer"
      exit 1
    else
      log "not running (data $DATA)"
      exit 3
    fi
    ;;
  dfs)  # Hadoop's `hdfs dfs` shell (FsShell) on this cluster, e.g. dfs -ls -R /
    shift
    java=$(find_java)
    cp=$(cat "$(build)/classpath")
    [ -f "$DATA/conf/core-site.xml" ] || die "no client config in $DATA/conf: run '$0 start' first"
    exec "$java" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${ADD_OPENS[@]}" \
      -Dlog4j.configuration="file:$DATA/log4j.properties" -cp "$DATA/conf:$cp" org.apache.hadoop.fs.FsShell "$@"
    ;;
  build) build ;;
  classpath) cat "$(build)/classpath" ;;
  *)
    echo "usage: $0 start|stop|status|dfs|build|classpath  (env: MINIDFS_PORT=$PORT MINIDFS_DATA=$DATA)" >&2
    exit 2
    ;;
esac
