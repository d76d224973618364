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
# Needs Java 17 or newer (DEBEZIUM_JAVA, else $JAVA_HOME/bin/java, else java on PATH)
# and mvn. DEBEZIUM_JAVA_OPTS: extra JVM options (after -Xmx512m).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOOL=$ROOT/tools/debezium
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pg_sink/debezium
MAIN=pgsink.tools.DebeziumOracle

log() { printf '\033[1m[debezium]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1m[debezium]\033[0m %s\n' "$*" >&2; exit 1; }

find_java() {
  local j major
  for j in "${DEBEZIUM_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null || true)"; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    major=$("$j" -version 2>&1 | sed -n '1s/.* version "\([0-9][0-9]*\).*/\1/p')
    if [ -n "$major" ] && [ "$major" -ge 17 ]; then
      echo "$j"
      return 0
    fi
  done
  die "no Java 17 or newer found (set DEBEZIUM_JAVA, or install openjdk-17-jdk-headless)"
}

# The cache directory of the current pom and sources.
key_dir() {
  local key
  key=$(cd "$TOOL" && find pom.xml src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  echo "$CACHE/$key"
}

# Every entry of the recorded class path still exists (~/.m2 may have been pruned).
complete() {
  local cpfile=$1 entry
  [ -s "$cpfile" ] || return 1
  while IFS= read -r entry; do
    [ -e "$entry" ] || return 1
  done < <(tr ':' '\n' <"$cpfile")
}

build() {
  local dir cp
  dir=$(key_dir)
  if complete "$dir/classpath"; then
    echo "$dir"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (apt-get install maven)"
  mkdir -p "$CACHE"
  (
    # One build at a time per cache; a second caller waits and reuses it.
    flock 9
    if complete "$dir/classpath"; then exit 0; fi
    rm -rf "$dir" && mkdir -p "$dir"
    log "building the Debezium oracle with Maven into $dir (Debezium is downloaded into ~/.m2 unless it is there)"
    if ! mvn -q -B -f "$TOOL/pom.xml" -Doracle.build.directory="$dir/build" \
      package dependency:build-classpath -Dmdep.outputFile="$dir/deps.txt" -Dmdep.includeScope=runtime \
      >"$dir/mvn.log" 2>&1; then
      tail -40 "$dir/mvn.log" >&2
      die "mvn package failed (log: $dir/mvn.log)"
    fi
    [ -f "$dir/build/debezium-oracle-1.jar" ] || die "Maven built no debezium-oracle-1.jar (log: $dir/mvn.log)"
    [ -s "$dir/deps.txt" ] || die "Maven wrote no class path (log: $dir/mvn.log)"
    printf '%s:%s\n' "$dir/build/debezium-oracle-1.jar" "$(cat "$dir/deps.txt")" >"$dir/classpath.tmp"
    mv "$dir/classpath.tmp" "$dir/classpath"
  ) 9>"$CACHE/.lock"
  complete "$dir/classpath" || die "the build left no usable class path in $dir"
  echo "$dir"
}

case "${1:-}" in
  build) build ;;
  classpath) cat "$(build)/classpath" ;;
  run)
    shift
    java=$(find_java)
    cp=$(cat "$(build)/classpath")
    # shellcheck disable=SC2086 # DEBEZIUM_JAVA_OPTS is a list of options
    exec "$java" -Xmx512m -XX:+ExitOnOutOfMemoryError ${DEBEZIUM_JAVA_OPTS:-} -cp "$cp" "$MAIN" "$@"
    ;;
  *) die "usage: $0 build|classpath|run [ARGS...]" ;;
esac
