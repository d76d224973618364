#!/usr/bin/env bash
# Debezium as a conformance oracle for pg_sink's debezium envelope: Debezium's own
# Postgres connector (pgoutput), run through its embedded engine by
# tools/debezium (DebeziumOracle), writing each change event's value as a JSON line.
# tests/integration/test_debezium_oracle.py compares pg_sink's events with them.
# With --kafka-bootstrap it produces the events to a Kafka topic instead (the
# Kafka benchmark, scripts/bench/kafka_peers.py, runs it as pg_sink's peer).
#
#   scripts/debezium.sh build          build once: Maven downloads Debezium into ~/.m2
#                                      (about 40 MB the first time), compiles the
#                                      oracle and records its class path under
#                                      ${XDG_CACHE_HOME:-~/.cache}/pg_sink/debezium/,
#                                      keyed by the hash of tools/debezium's pom and
#                                      sources; prints the cache directory
#   scripts/debezium.sh classpath      build if needed, print the class path
#   scripts/debezium.sh avro IN OUT    the events of a `run --with-keys --schemas`
#                                      output under Kafka Connect's Avro mapping:
#                                      Avro schemas and binary datums per line
#   scripts/debezium.sh run ARGS...    build if needed, then run the oracle in the
#                                      foreground (exec: the pid is the JVM's; SIGTERM
#                                      stops it cleanly, exit status 143)
#
# ARGS are the oracle's (see tools/debezium/src/main/java/pgsink/tools/
# DebeziumOracle.java): --out=FILE, --max-events=N, --idle-ms=MS,
# --ready-file=FILE, --with-keys, --schemas, --kafka-bootstrap=HOST:PORT,
# --kafka-topic=T, --kafka.PRODUCER_PROPERTY=value, and any --debezium.option=value,
# e.g.
#
#   scripts/debezium.sh run --database.port=5496 --table.include.list=public.t \
#     --snapshot.mode=no_data --out=/tmp/t.jsonl --max-events=10 --idle-ms=30000
#
# Needs Java 17 or newer (DEBEZIUM_JAVA, else $JAVA_HOME/bin/java, else java on PATH,
# else /usr/lib/jvm/*) and mvn. DEBEZIUM_JAVA_OPTS: extra JVM options (after -Xmx512m).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOOL=$ROOT/tools/debezium
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pg_sink/debezium
MAIN=pgsink.tools.DebeziumOracle

log() { printf '\033[1m[debezium]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1m[debezium]\033[0m %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/lib/maven.sh
. "$HERE/lib/maven.sh"

find_java() { java_find 17 '' DEBEZIUM_JAVA "${DEBEZIUM_JAVA:-}"; }

build() {
  mvn_build "$TOOL" "$CACHE" debezium-oracle-1.jar oracle.build.directory \
    "the Debezium oracle (Debezium is downloaded into ~/.m2 unless it is there)"
}

case "${1:-}" in
  build) build ;;
  classpath) cat "$(build)/classpath" ;;
  avro)
    # What the events of a `run --with-keys --schemas` output become under Kafka
    # Connect's Avro mapping (tools/debezium/.../AvroOfConnect.java).
    shift
    [ $# -eq 2 ] || die "usage: debezium.sh avro IN.jsonl OUT.jsonl"
    java=$(find_java)
    cp=$(cat "$(build)/classpath")
    exec "$java" -Xmx512m -cp "$cp" pgsink.tools.AvroOfConnect "$@"
    ;;
  run)
    shift
    java=$(find_java)
    cp=$(cat "$(build)/classpath")
    # shellcheck disable=SC2086 # DEBEZIUM_JAVA_OPTS is a list of options
    exec "$java" -Xmx512m -XX:+ExitOnOutOfMemoryError ${DEBEZIUM_JAVA_OPTS:-} -cp "$cp" "$MAIN" "$@"
    ;;
  *) die "usage: $0 build|classpath|run [ARGS...]" ;;
esac
