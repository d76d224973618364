#!/usr/bin/env bash
# Iceberg against the Parquet file sink, in one run (a benchmark, not a test).
#
#   scripts/bench_iceberg.sh [N]   N inserts (default 1000000)
#
# Runs scripts/bench.sh twice on the same backlog size: BENCH_SINK=parquet (the
# `file` connector writing Parquet files, upsert envelope) and BENCH_SINK=iceberg
# (the `iceberg` connector: Parquet data files with field ids, one Iceberg commit
# per batch through the SQL catalog in the database, append-only), each against
# its own pg_recvlogical baseline, and prints both and the ratio
# iceberg rows/s ÷ parquet rows/s. Each run's full report goes to stderr.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=${1:-1000000}
run() {
  BENCH_SINK=$1 bash "$HERE/bench.sh" "$N" | tee /dev/stderr | tail -1
}
parquet=$(run parquet)
iceberg=$(run iceberg)
python3 - "$parquet" "$iceberg" <<'PY'
import json, sys
p, i = (json.loads(a) for a in sys.argv[1:3])
print(f"iceberg vs parquet, N = {p['n']}:")
for name, r in (("parquet (file sink)", p), ("iceberg (SQL catalog, local)", i)):
    print(f"  {name:<32}{r['sink_s']:9.3f} s {r['sink_rows_per_s']:12,.0f} rows/s   ratio to its baseline {r['ratio']:.3f}   peak RSS {r['worker_peak_rss_mib']} MiB   records OK: {r['output_ok']}")
print(f"  {'iceberg rows/s / parquet rows/s:':<32}{i['sink_rows_per_s'] / p['sink_rows_per_s']:9.3f}")
print(json.dumps({"n": p["n"], "parquet": p, "iceberg": i, "ratio_iceberg_to_parquet": round(i["sink_rows_per_s"] / p["sink_rows_per_s"], 3)}))
PY
