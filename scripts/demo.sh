#!/usr/bin/env bash
# The pg_sink demo: sets everything up, starts a PostgreSQL 15 cluster configured
# for logical decoding with pg_sink preloaded, creates two sinks over a table (JSON
# lines files and a copy table, the embedded targets that need no server), writes
# to the table and shows what arrived and the sinks' status.
#
#   scripts/demo.sh          # the cluster is stopped at the end
#   DEMO_KEEP=1 scripts/demo.sh   # leave it running: scripts/cluster.sh psql
set -euo pipefail
cd "$(dirname "$0")/.."
export PGSINK_DATA=${PGSINK_DATA:-/tmp/pg_sink_demo/data} PGSINK_PORT=${PGSINK_PORT:-5498}
OUT=/tmp/pg_sink_demo/out

bash scripts/setup.sh --release
scripts/cluster.sh destroy
scripts/cluster.sh start
[ "${DEMO_KEEP:-0}" = 1 ] || trap 'scripts/cluster.sh stop' EXIT
rm -rf "$OUT" && mkdir -p "$OUT" && chown postgres "$OUT"
psql_() { scripts/cluster.sh psql -q "$@"; }

echo; echo "== a table and two sinks"
psql_ <<SQL
CREATE EXTENSION pg_sink;
CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2), placed_at timestamptz DEFAULT now());
INSERT INTO orders (id, customer, amount) VALUES (1, 'ada', 12.50), (2, 'grace', 99.00);
-- JSON lines files (upsert envelope: key + row, tombstone on delete)
SELECT sink.create_sink('orders_files', 'orders', 'file', '{"path": "$OUT"}', envelope => 'upsert');
-- a copy table in the same database, kept in sync
SELECT sink.create_sink('orders_copy', 'orders', 'table', '{"table": "public.orders_copy"}', envelope => 'upsert');
SQL

# The worker picks the sinks up, creates their slots and delivers the snapshot.
for _ in $(seq 1 100); do
  [ "$(psql_ -At -c "SELECT count(*) FROM sink.progress WHERE snapshot_done")" = 2 ] && break
  sleep 0.2
done

echo "== changes"
psql_ <<'SQL'
INSERT INTO orders (id, customer, amount) VALUES (3, 'edsger', 7.25);
UPDATE orders SET amount = 15.00 WHERE id = 1;
DELETE FROM orders WHERE id = 2;
SQL

# Wait until both sinks have confirmed everything written so far.
target=$(psql_ -At -c "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 100); do
  done_=$(psql_ -At -c "SELECT count(*) FROM sink.progress WHERE confirmed_lsn >= '$target'")
  [ "$done_" = 2 ] && break
  sleep 0.2
done

echo; echo "== delivered JSON lines ($OUT/orders_files)"
find "$OUT/orders_files" -name '*.jsonl' | sort | xargs cat
echo; echo "== orders_copy"
psql_ -c "SELECT * FROM orders_copy ORDER BY id"
echo "== sink.status"
psql_ -x -c "SELECT name, state, connector, envelope, confirmed_lsn, lag_bytes, round(lag_seconds::numeric, 2) AS lag_seconds, retained_wal_bytes, rows_delivered, bytes_delivered, last_error FROM sink.status ORDER BY name"
