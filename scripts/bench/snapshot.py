#!/usr/bin/env python3
"""The initial snapshot against COPY, with a writer on the table (a benchmark,
not a test).

    python3 scripts/bench/snapshot.py [N]     (or: bash scripts/bench_snapshot.sh [N])

N = rows (default $BENCH_N, else 1000000; the capture-core goal is stated for
10000000, about 1.3 GB). A throwaway cluster (scripts/cluster.sh, data
/tmp/pg_sink_benchs/data, port $BENCH_PG_PORT or 5492), stopped at the end.
Table bench(id bigint primary key, payload text, amount numeric(12,2), at
timestamptz, tags text[]) with N rows (~100-byte payload). Measured, one after
the other, on the same table:

  copy         COPY (SELECT * FROM bench) TO '/dev/null' (best of 3 after a warm-up
               read): reading the rows and writing their text, no delivery.
  consistent   a `file` sink (JSON lines, debezium envelope) created with the
               default snapshot.mode: one pass under the slot's exported snapshot.
  incremental  the same sink with snapshot.mode = 'incremental': chunks of
               pg_sink.backfill_chunk_rows rows by key, interleaved with the stream.
  resumed      incremental again, its worker SIGKILLed once half of the rows
               are read (the postmaster restarts every process); the time counts
               the restart.

  backfill     sink.backfill() of a `table` sink (upsert, created without a
               snapshot) while a second writer changes $BENCH_CHANGE_RATE rows
               per second (default 2000: updates, inserts and deletes across the
               keys, 20 per transaction); once it is done and caught up, the
               target must equal the table (EXCEPT both ways), or the run fails.

For each sink: seconds from create_sink() to snapshot_done, rows/s and the ratio to
`copy` (1.0 = as fast as COPY); meanwhile a writer inserts one row at a time into
the table, $BENCH_WRITER_RATE per second (default 100), and its worst and 99th
percentile INSERT latency are shown. Checks: every sink's files hold each of the N
rows as a read at least once; `reads` counts the read events (N, plus the rows
the writers inserted before the read reached them), `read twice` the reads of a
key already read (for `resumed`, at most the one chunk in flight at the crash).
"""
import glob
import json
import os
import re
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Pg, Services, env_int, fail, load_bench_table, log, on_signals_exit, pg_sink_build, wait_for  # noqa: E402

PORT = env_int("BENCH_PG_PORT", 5492)
ROOT = "/tmp/pg_sink_benchs"
OUT = os.path.join(ROOT, "out")
RATE = env_int("BENCH_WRITER_RATE", 100)
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"


CHANGE_RATE = env_int("BENCH_CHANGE_RATE", 2000)


class Changer(threading.Thread):
    """Updates, inserts and deletes across the table's keys, CHANGE_RATE rows a
    second in transactions of 20."""

    def __init__(self, n):
        super().__init__(daemon=True)
        self.n, self.stop, self.changes = n, threading.Event(), 0

    def run(self):
        import random
        rnd = random.Random(11)
        db = Pg(DSN)
        period = 20.0 / CHANGE_RATE
        due = time.monotonic()
        while not self.stop.is_set():
            keys = [rnd.randint(1, self.n + self.n // 10) for _ in range(20)]
            db.execute("BEGIN")
            for k in keys:
                r = rnd.random()
                if r < 0.7:
                    db.execute("INSERT INTO bench VALUES (%s, 'changed', 2, now(), '{c}') ON CONFLICT (id) DO UPDATE SET payload = 'changed' || bench.amount, amount = bench.amount + 1", (k,))
                else:
                    db.execute("DELETE FROM bench WHERE id = %s", (k,))
            db.execute("COMMIT")
            self.changes += 20
            due += period
            time.sleep(max(0.0, due - time.monotonic()))


def run_backfill(db, n):
    db.execute("SELECT sink.create_sink('bf', 'bench', 'table', '{\"table\": \"bench_copy\"}', envelope => 'upsert', snapshot => false)")
    wait_for("the backfill sink to start", lambda: db.one("SELECT snapshot_done FROM sink.status WHERE name = 'bf'"), timeout=120)
    changer = Changer(n)
    changer.start()
    try:
        t = time.monotonic()
        db.execute("SELECT sink.backfill('bf')")
        wait_for("the backfill", lambda: db.one("SELECT backfill FROM sink.status WHERE name = 'bf'") == "done", timeout=7200)
        seconds = time.monotonic() - t
    finally:
        changer.stop.set()
        changer.join(30)
    end = db.one("SELECT pg_current_wal_lsn()::text")
    wait_for("the sink to catch up", lambda: db.one("SELECT confirmed_lsn >= %s::pg_lsn FROM sink.status WHERE name = 'bf'", (end,)), timeout=600)
    diff = db.one("SELECT (SELECT count(*) FROM (SELECT * FROM bench EXCEPT SELECT * FROM bench_copy) a) + (SELECT count(*) FROM (SELECT * FROM bench_copy EXCEPT SELECT * FROM bench) b)")
    if diff:
        fail(f"backfill: the target differs from the table in {diff} rows")
    rows = db.one("SELECT rows_read FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name = 'bf'")
    db.execute("SELECT sink.drop_sink('bf')")
    return {"seconds": seconds, "rows": rows, "changes_per_s": changer.changes / seconds}


class Writer(threading.Thread):
    """Single-row INSERTs at RATE per second; keeps each one's latency."""

    def __init__(self, first_id):
        super().__init__(daemon=True)
        self.next_id, self.stop, self.latencies, self.failed = first_id, threading.Event(), [], 0

    def run(self):
        db = None
        period = 1.0 / RATE
        due = time.monotonic()
        while not self.stop.is_set():
            try:
                if db is None:
                    db = Pg(DSN)
                t = time.monotonic()
                db.execute("INSERT INTO bench VALUES (%s, 'writer', 1, now(), '{w}')", (self.next_id,))
                self.latencies.append(time.monotonic() - t)
                self.next_id += 1
            except Exception:  # noqa: BLE001  (the crash of `resumed` cuts it)
                self.failed += 1
                db = None
                time.sleep(0.2)
            due += period
            time.sleep(max(0.0, due - time.monotonic()))

    def summary(self):
        lat = sorted(self.latencies) or [0.0]
        return lat[-1] * 1000, lat[int(len(lat) * 0.99)] * 1000


def reads(d):
    """Read events in a file sink's JSON lines, and the distinct keys read."""
    n, keys = 0, set()
    after_id = re.compile(r'"after":\{"id":(\d+)')
    for f in glob.glob(f"{d}/**/*.jsonl", recursive=True):
        with open(f) as fh:
            for line in fh:
                if '"op":"r"' in line:
                    n += 1
                    m = after_id.search(line)
                    if m is None:
                        fail(f"a read without its row's id in {f}: {line[:200]}")
                    keys.add(int(m.group(1)))
    return n, keys


def run_sink(db, n, name, mode, crash=False):
    d = os.path.join(OUT, name)
    os.makedirs(d)
    shutil.chown(d, "postgres")
    writer = Writer(10**12 + hash(name) % 10**6 * 10**5)
    writer.start()
    opts = {"path": d, "snapshot.mode": mode}
    t = time.monotonic()
    db.execute("SELECT sink.create_sink(%s, 'bench', 'file', %s::jsonb, envelope => 'debezium')", (name, json.dumps(opts)))
    try:
        if crash:
            wait_for("half of the rows", lambda: (db.one("SELECT b.rows_read FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name = %s", (name,)) or 0) >= n // 2, timeout=3600)
            pid = db.one("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"pg_sink sink {name}",))
            os.kill(pid, signal.SIGKILL)
            log(f"{name}: worker SIGKILLed at half")
            time.sleep(1)
            db = None

            def reconnected():
                nonlocal db
                try:
                    db = Pg(DSN)
                    return True
                except Exception:  # noqa: BLE001
                    return False
            wait_for("the server after the crash", reconnected, timeout=120, interval=0.2)

        def done():
            try:
                return db.one("SELECT snapshot_done FROM sink.status WHERE name = %s", (name,))
            except Exception:  # noqa: BLE001
                return False
        wait_for(f"{name}'s snapshot", done, timeout=7200, interval=0.05)
        seconds = time.monotonic() - t
    finally:
        writer.stop.set()
        writer.join(10)
    read, keys = reads(d)
    missing = n - len([k for k in keys if k <= n])
    if missing:
        fail(f"{name}: {missing} of the table's rows were not read")
    db.execute("SELECT sink.drop_sink(%s)", (name,))
    shutil.rmtree(d, ignore_errors=True)
    worst, p99 = writer.summary()
    return db, {"seconds": seconds, "reads": read, "twice": read - len(keys), "worst_ms": worst, "p99_ms": p99, "writes": len(writer.latencies)}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else env_int("BENCH_N", 1_000_000)
    on_signals_exit()
    services = Services()
    env = {"PGSINK_DATA": os.path.join(ROOT, "data"), "PGSINK_PORT": str(PORT)}
    try:
        services.start("cluster.sh", env, fresh_cmd="destroy")
        db = Pg(DSN)
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_sink")
        db.execute(f"ALTER SYSTEM SET pg_sink.file_root = '{OUT}'")
        db.execute("SELECT pg_reload_conf()")
        load_bench_table(db, n)
        size = db.one("SELECT pg_size_pretty(pg_table_size('bench'))")
        shutil.rmtree(OUT, ignore_errors=True)
        os.makedirs(OUT)
        shutil.chown(OUT, "postgres")
        times = []
        for _ in range(3):
            t = time.monotonic()
            db.execute("COPY (SELECT * FROM bench) TO '/dev/null'")
            times.append(time.monotonic() - t)
        copy = min(times)
        print(f"initial snapshot vs COPY, {n} rows ({size}), pg_sink build {pg_sink_build()}, writer {RATE} inserts/s", flush=True)
        print(f"{'what':<13}{'seconds':>9}{'rows/s':>12}{'vs copy':>9}{'reads':>11}{'read twice':>11}{'writer worst ms':>17}{'p99 ms':>8}")
        print(f"{'copy':<13}{copy:>9.2f}{n / copy:>12,.0f}{1.0:>9.2f}", flush=True)
        for name, mode, crash in (("consistent", "consistent", False), ("incremental", "incremental", False), ("resumed", "incremental", True)):
            log(f"{name}: snapshot of {n} rows")
            db, r = run_sink(db, n, name, mode, crash)
            s = r["seconds"]
            print(f"{name:<13}{s:>9.2f}{n / s:>12,.0f}{copy / s:>9.2f}{r['reads']:>11,}{r['twice']:>11,}{r['worst_ms']:>17.1f}{r['p99_ms']:>8.1f}", flush=True)
        log("backfill under changes")
        bf = run_backfill(db, n)
        print(f"backfill: {bf['rows']:,} rows read in {bf['seconds']:.2f} s ({bf['rows'] / bf['seconds']:,.0f} rows/s, "
              f"{copy / bf['seconds']:.2f} of copy's rate) while {bf['changes_per_s']:,.0f} changes/s flowed; target equals the table")
    finally:
        services.close()


if __name__ == "__main__":
    main()
