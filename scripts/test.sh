#!/usr/bin/env bash
# Runs every pg_sink test: engine boundary check, engine unit tests (plain cargo
# test, no server), the pgrx #[pg_test]s, and the integration tests against a real
# PostgreSQL cluster that the tests start and stop themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== engine boundary"
bash tests/engine_boundary.sh
echo "== engine unit tests"
cargo test --lib --quiet engine:: 2>&1 | tail -3
echo "== pg_tests"
PGTEST_DATA=/tmp/pg_sink_pgtest
rm -rf "$PGTEST_DATA" && mkdir -p "$PGTEST_DATA" && chown postgres "$PGTEST_DATA"
env -u RUST_BACKTRACE cargo pgrx test pg15 --runas postgres --pgdata "$PGTEST_DATA" 2>&1 | grep -E '^test |test result|error|panicked' | tail -40
test "${PIPESTATUS[0]}" -eq 0
echo "== integration tests"
# pg_tests install a build with test functions; put the plain build back.
cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config 2>&1 | grep -E '^error' || true
python3 -m pytest -q tests/integration "$@"
