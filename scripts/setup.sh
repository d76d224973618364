#!/usr/bin/env bash
# Installs what pg_sink needs on a fresh Debian 12 machine, then builds and installs
# the extension into Debian's PostgreSQL 15. Idempotent: what is present is reused
# (cargo-pgrx takes ~10 minutes to build the first time).
#
#   scripts/setup.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PROFILE=()
[ "${1:-}" = "--release" ] && PROFILE=(--release)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# The build, PostgreSQL, and the servers and tools the tests start themselves
# (MariaDB, nats-server, kcat, wal2json for the benchmark's pipe, postgres_exporter
# for the metrics queries).
pkgs=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config cmake libssl-dev zlib1g-dev openssl
      mariadb-server mariadb-client nats-server kcat postgresql-15-wal2json prometheus-postgres-exporter)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Java 17 and Maven run Apache Kafka and the schema registry (from Maven Central).
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# Node.js and npm run Azurite (the Azure Storage emulator of the tests); a Node.js
# installed otherwise (with its own npm) is reused.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' own services (MariaDB's, PostgreSQL's) are not started: the
  # scripts start their own servers on their own ports and data directories.
  policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1; fi
  apt-get install -y -qq "${missing[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  [ "$made_policy" = 0 ] || rm -f "$policy"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q '0\.18\.0'; then
  log "building cargo-pgrx 0.18.0 (about 10 minutes, once)"
  cargo install cargo-pgrx --version =0.18.0 --locked
fi
if ! grep -q '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
  log "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

if ! python3 -c 'import psycopg, pytest, confluent_kafka, nats, nkeys, boto3, moto.server, pymysql, pyarrow.parquet, azure.storage.blob, cryptography, fastavro, pyiceberg.catalog.sql, psycopg2' 2>/dev/null; then
  log "installing Python test dependencies (psycopg, pytest, confluent-kafka, nats-py, nkeys, moto, boto3, PyMySQL, pyarrow, azure-storage-blob, fastavro, pyiceberg)"
  python3 -m pip install --quiet --disable-pip-version-check 'psycopg[binary]==3.3.*' 'pytest==8.*' 'confluent-kafka==2.*' 'nats-py==2.*' 'nkeys' 'moto[server]==5.*' 'boto3' 'PyMySQL==1.*' \
    'pyarrow' 'azure-storage-blob==12.*' 'cryptography' 'fastavro' 'pyiceberg[sql-postgres,pyarrow]==0.12.*' 2>&1 | grep -v 'Running pip as the' || true
fi
bash scripts/azurite.sh install

log "building and installing the pg_sink extension ${PROFILE[*]:-(debug)}"
cargo pgrx install "${PROFILE[@]}" --pg-config "$PG_CONFIG" 2>&1 | grep -E '^(error|warning: unused)|Finished' || true
test -f /usr/lib/postgresql/15/lib/pg_sink.so
