#!/usr/bin/env bash
# The chaos suite in its long form: ≥ 1M changes into nine sinks (table, file
# upsert and debezium, jdbc PostgreSQL and MySQL, Kafka, JetStream, S3, webhook)
# with ≥ 50 faults at random points (see tests/integration/test_chaos.py), then
# every target compared with the source row by row and its records counted for
# duplicates; prints the table.
#
#   bash scripts/chaos.sh [changes] [faults] [seed]
#
# Needs what the tests need (bash scripts/setup.sh). The short form runs with the
# tests (tests/integration/test_chaos.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PGSINK_CHAOS_CHANGES=${1:-1000000}
export PGSINK_CHAOS_FAULTS=${2:-50}
export PGSINK_CHAOS_SEED=${3:-$(date +%s)}
export PGSINK_CHAOS_REPORT=${PGSINK_CHAOS_REPORT:-/tmp/pg_sink_chaos.txt}
bash scripts/setup.sh >/dev/null
python3 -m pytest -q -s tests/integration/test_chaos.py
cat "$PGSINK_CHAOS_REPORT"
