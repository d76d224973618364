#!/usr/bin/env bash
# A throwaway Apache Iceberg REST catalog for pg_sink's tests: Iceberg's own REST
# catalog test server (RESTCatalogServer, from iceberg-open-api's test fixtures;
# tools/iceberg_rest: IcebergRest runs it on 127.0.0.1 only), backed by Iceberg's
# JdbcCatalog on a SQLite file, writing table metadata through HadoopFileIO to a
# local warehouse directory. No authentication. Every start is a fresh, empty
# catalog and warehouse. It runs from the Maven Central jars named in
# tools/iceberg_rest/pom.xml (Iceberg 1.10.1, Jetty 11, Hadoop 3.4.1's
# hadoop-common): the first start builds IcebergRest with Maven (about 65 MB of
# jars into ~/.m2, 99 MB with Maven's plugins into an empty one, once; 7-12 s in
# all) and caches the jar and its class path under
# ${XDG_CACHE_HOME:-~/.cache}/pg_sink/iceberg_rest/, keyed by the hash of
# tools/iceberg_rest's pom and sources; later starts only boot the JVM (1-1.5 s).
# Needs Java 17 to 21 (Hadoop 3.4's local file system fails on 23+; the first of
# $ICEBERG_REST_JAVA, $JAVA_HOME, java on PATH and /usr/lib/jvm/* in that range),
# mvn, python3.
#
#   scripts/iceberg_rest.sh start      stop the previous instance (by its pid file,
#                                      if any), wipe the catalog and warehouse,
#                                      start, wait until GET /v1/config answers 200
#   scripts/iceberg_rest.sh stop       SIGTERM, SIGKILL after 10 s
#   scripts/iceberg_rest.sh status     exit 0 if running and /v1/config answers
#   scripts/iceberg_rest.sh build      build if needed, print the cache directory
#   scripts/iceberg_rest.sh classpath  build if needed, print the class path
#
# ICEBERG_REST_PORT=P (default 19500), ICEBERG_REST_DATA (default
# /tmp/pg_sink_test_iceberg_rest), ICEBERG_REST_JAVA_OPTS (extra JVM options,
# appended). The REST API is at http://127.0.0.1:P/v1/... (no prefix: /v1/config,
# /v1/namespaces, /v1/namespaces/NS/tables/T, ...). The catalog's warehouse is
# file://$ICEBERG_REST_DATA/warehouse: a new namespace's location is
# file://$ICEBERG_REST_DATA/warehouse/NS, a new table's .../NS/T (file:/// URLs,
# and so are the files clients write under it), but the metadata files that the
# server writes (metadata-location, the metadata log) are named in Hadoop's form,
# file:/DATA/warehouse/NS/T/metadata/00001-UUID.metadata.json (one slash). Error
# responses (404, 409, ...) carry a Java stack trace in the body ("stack") and are
# logged at ERROR even when the status is 409. CATALOG_* variables in
# the environment set further catalog properties (RESTCatalogServer's convention;
# see tools/iceberg_rest/src/main/java/pgsink/tools/IcebergRest.java), except those
# the script sets. Files in $ICEBERG_REST_DATA: iceberg_rest.pid, iceberg_rest.log
# (the previous run's in iceberg_rest.log.1), catalog.db (the JdbcCatalog's SQLite
# database: tables iceberg_tables, iceberg_namespace_properties), warehouse/,
# tmp/ (the JVM's temporary directory: sqlite-jdbc's native library).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PORT=${ICEBERG_REST_PORT:-19500}
DATA=${ICEBERG_REST_DATA:-/tmp/pg_sink_test_iceberg_rest}
PIDFILE=$DATA/iceberg_rest.pid
LOG=$DATA/iceberg_rest.log
MARKER=$DATA/.pg_sink_iceberg_rest
TOOL=$ROOT/tools/iceberg_rest
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pg_sink/iceberg_rest
MAIN=pgsink.tools.IcebergRest

log() { printf '\033[1m[iceberg_rest]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[iceberg_rest]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "ICEBERG_REST_PORT must be a number, not '$PORT'" ;; esac
[ "$PORT" -ge 1024 ] && [ "$PORT" -le 65535 ] || die "ICEBERG_REST_PORT must be within 1024..65535, not $PORT"
case "$DATA" in /*) ;; *) die "ICEBERG_REST_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "ICEBERG_REST_DATA must not be /"

# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
# shellcheck source=scripts/lib/maven.sh
. "$HERE/lib/maven.sh"
# This data directory's server, and no other: its command line names DATA.
PATTERN="pgsink\\.tools\\.IcebergRest --uri=jdbc:sqlite:$(printf '%s' "$DATA" | sed 's/[][\.*^$]/\\&/g')/catalog\\.db "

version() {
  sed -n 's:.*<iceberg.version>\(.*\)</iceberg.version>.*:\1:p' "$TOOL/pom.xml"
}

# A java binary of version 17 to 21.
find_java() { java_find 17 21 ICEBERG_REST_JAVA "${ICEBERG_REST_JAVA:-}"; }

build() {
  mvn_build "$TOOL" "$CACHE" iceberg-rest-1.jar iceberg_rest.build.directory \
    "IcebergRest (Iceberg $(version) is downloaded into ~/.m2 unless it is there)"
}

port_busy() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# GET /v1/config answers 200.
ready() {
  python3 - "$PORT" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/config", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start() {
  local java cp
  java=$(find_java)
  cp=$(cat "$(build)/classpath")
  svc_stop "$PIDFILE" "$PATTERN" 10
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use by another process (ICEBERG_REST_PORT=$PORT)"
  # Only wipe a directory this script made (or an empty one).
  if [ -e "$DATA" ] && [ ! -e "$MARKER" ] && [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
    die "$DATA exists, is not empty and was not made by this script; refusing to wipe it"
  fi
  rm -rf "$DATA/warehouse" "$DATA/tmp" "$DATA/catalog.db" "$DATA"/catalog.db-*
  mkdir -p "$DATA/warehouse" "$DATA/tmp"
  touch "$MARKER"
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
  # A throwaway catalog whose table directories another OS user (PostgreSQL's)
  # writes data files into: everything it makes is open to all.
  umask 000
  # setsid: the server outlives this shell and is not hit by its terminal's
  # Ctrl-C; it execs in place, as does env, so the recorded pid is the JVM's.
  # The options name every catalog property that the script relies on, over any
  # CATALOG_* variable of the environment. Hadoop's "no native library" warning
  # (the pure-Java code is used) is dropped.
  # shellcheck disable=SC2086 # ICEBERG_REST_JAVA_OPTS is a list of options
  SVC_WAIT=60 svc_launch "$PIDFILE" "$LOG" "Iceberg REST catalog (Iceberg $(version))" "$PORT" ready "$PATTERN" \
    setsid env CLASSPATH="$cp" "$java" -Xmx512m -XX:+ExitOnOutOfMemoryError -XX:TieredStopAtLevel=1 \
    -XX:+UseSerialGC -Djava.awt.headless=true -Djava.io.tmpdir="$DATA/tmp" \
    -Dorg.slf4j.simpleLogger.log.org.apache.hadoop.util.NativeCodeLoader=error ${ICEBERG_REST_JAVA_OPTS:-} \
    "$MAIN" --uri="jdbc:sqlite:$DATA/catalog.db" --warehouse="file://$DATA/warehouse" --host=127.0.0.1 \
    --rest.port="$PORT" --catalog-impl=org.apache.iceberg.jdbc.JdbcCatalog \
    --io-impl=org.apache.iceberg.hadoop.HadoopFileIO
}

case "${1:-}" in
  start) start ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" 10 ;;
  status)
    if pid=$(svc_running_pid "$PIDFILE" "$PATTERN") && ready; then
      log "Iceberg REST catalog (Iceberg $(version)) running (pid $pid) at http://127.0.0.1:$PORT, warehouse file://$DATA/warehouse"
    elif pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
      log "pid $pid is alive but http://127.0.0.1:$PORT/v1/config does not answer 200"
      exit 1
    else
      log "not running (data $DATA)"
      exit 3
    fi
    ;;
  build) build ;;
  classpath) cat "$(build)/classpath" ;;
  *)
    echo "usage: $0 start|stop|status|build|classpath  (env: ICEBERG_REST_PORT=$PORT ICEBERG_REST_DATA=$DATA)" >&2
    exit 2
    ;;
esac
