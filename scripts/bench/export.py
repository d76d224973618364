#!/usr/bin/env python3
"""sink.export() against COPY (a benchmark, not a test).

    python3 scripts/bench/export.py [N]     (or: bash scripts/bench_export.sh [N])

N = rows (default $BENCH_N, else 1000000). A throwaway cluster
(scripts/cluster.sh, data /tmp/pg_sink_benche/data, port $BENCH_PG_PORT or 5493),
stopped at the end. Table bench(id bigint primary key, payload text, amount
numeric(12,2), at timestamptz, tags text[]) with N rows (~100-byte payload). One
query, `SELECT * FROM bench`, is then timed (wall, monotonic, best of
$BENCH_REPEAT runs, default 3, after one warm-up read of the table):

  copy      COPY (SELECT * FROM bench) TO '/dev/null': reading the rows and writing
            their text, no delivery (the baseline).
  copy-csv  COPY (SELECT * FROM bench) TO '<dir>/bench.csv' (CSV): the same rows
            written to a file, what an export to CSV files competes with.
  export    sink.export('SELECT * FROM bench', 'file', ..) as JSON lines files
            (append-only records with headers), CSV and Parquet, each into a fresh
            directory (files written and fsynced).

Each line shows seconds, rows/s and the ratio to `copy` and to `copy-csv`
(ratio = rows/s of the export ÷ rows/s of the baseline; 1.0 = as fast as COPY).
Check: every export delivered N rows (its own count), and the JSON-lines files hold
N lines.
"""
import glob
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Pg, Services, env_int, load_bench_table, log, on_signals_exit, pg_sink_build  # noqa: E402

PORT = env_int("BENCH_PG_PORT", 5493)
ROOT = "/tmp/pg_sink_benche"
OUT = os.path.join(ROOT, "out")
REPEAT = env_int("BENCH_REPEAT", 3)


def best(fn):
    times = []
    for _ in range(REPEAT):
        t = time.monotonic()
        fn()
        times.append(time.monotonic() - t)
    return min(times)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else env_int("BENCH_N", 1_000_000)
    on_signals_exit()
    services = Services()
    env = {"PGSINK_DATA": os.path.join(ROOT, "data"), "PGSINK_PORT": str(PORT)}
    try:
        services.start("cluster.sh", env, fresh_cmd="destroy")
        db = Pg(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres")
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_sink")
        load_bench_table(db, n)
        shutil.rmtree(OUT, ignore_errors=True)
        os.makedirs(OUT)
        shutil.chown(OUT, "postgres")
        results = {}
        results["copy"] = best(lambda: db.execute("COPY (SELECT * FROM bench) TO '/dev/null'"))
        results["copy-csv"] = best(lambda: db.execute(f"COPY (SELECT * FROM bench) TO '{OUT}/bench.csv' (FORMAT csv, HEADER)"))
        for fmt in ("jsonl", "csv", "parquet"):
            run = [0]

            def export(fmt=fmt, run=run):
                run[0] += 1
                d = os.path.join(OUT, f"{fmt}{run[0]}")
                os.makedirs(d)
                shutil.chown(d, "postgres")
                rows = db.one("SELECT rows FROM sink.export('SELECT * FROM bench', 'file', %s::jsonb, name => 'x')",
                              ('{"path": "%s", "file_format": "%s"}' % (d, fmt),))
                if rows != n:
                    raise SystemExit(f"export {fmt}: {rows} rows, expected {n}")
                if fmt == "jsonl" and run[0] == 1:
                    lines = sum(sum(1 for _ in open(f)) for f in glob.glob(f"{d}/x/**/*.jsonl", recursive=True))
                    if lines != n:
                        raise SystemExit(f"export jsonl: {lines} lines, expected {n}")
                shutil.rmtree(d, ignore_errors=True)
            results[f"export-{fmt}"] = best(export)
        print(f"sink.export vs COPY, {n} rows, pg_sink build {pg_sink_build()}, best of {REPEAT}")
        print(f"{'what':<16}{'seconds':>9}{'rows/s':>12}{'vs copy':>9}{'vs copy-csv':>13}")
        for what, s in results.items():
            print(f"{what:<16}{s:>9.2f}{n / s:>12,.0f}{results['copy'] / s:>9.2f}{results['copy-csv'] / s:>13.2f}")
    finally:
        services.close()


if __name__ == "__main__":
    main()
