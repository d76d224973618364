"""Crash tests: SIGKILL the sink workers (which makes the postmaster reinitialize
every process) and restart Postgres with an immediate shutdown, both while changes
stream; afterwards source and targets are compared row by row: nothing lost, and the
exactly-once connectors (table, file) hold no duplicate."""
import collections
import os
import signal
import threading
import time

import psycopg

from conftest import cluster, connect, file_records, fresh_one, one, out_dir, upsert_state, wait_caught_up, wait_for, wait_started, workers_restarted

ROWS_PER_TXN = 200
TXNS = 300


def writer(stop_after, done):
    """Idempotent transactions (retried after a crash until they commit)."""
    i = 0
    conn = None
    while i < stop_after:
        try:
            if conn is None or conn.closed:
                conn = connect()
            with conn.transaction():
                lo = (i % 100) * ROWS_PER_TXN
                conn.execute(
                    "INSERT INTO crash SELECT g, %s::int FROM generate_series(%s::int, %s::int) g ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                    (i, lo, lo + ROWS_PER_TXN - 1),
                )
                if i % 10 == 9:
                    conn.execute("DELETE FROM crash WHERE id %% 50 = %s::int", (i % 50,))
            i += 1
        except psycopg.OperationalError:
            conn = None
            time.sleep(0.2)
    done.set()


def worker_pids(conn):
    return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink crash%%'").fetchall()]


def reconnect():
    return wait_for(lambda: _try_connect(), timeout=60, what="the server to come back")


def _try_connect():
    try:
        return connect()
    except psycopg.OperationalError:
        return None


def test_kill_workers_and_crash_postgres_mid_stream(db):
    db.execute("DROP TABLE IF EXISTS crash, crash_copy")
    db.execute("CREATE TABLE crash (id int PRIMARY KEY, v int)")
    d = out_dir("crash")
    # Small batches, so the crashes land between many batches.
    db.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = 1000")
    db.execute("SELECT pg_reload_conf()")
    db.execute("SELECT sink.create_sink('crash_tab', 'crash', 'table', '{\"table\": \"crash_copy\"}', envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('crash_file', 'crash', 'file', %s::jsonb, envelope => 'upsert')", (f'{{"path": "{d}"}}',))
    db.execute("SELECT sink.create_sink('crash_dbz', 'crash', 'file', %s::jsonb)", (f'{{"path": "{d}"}}',))
    for s in ("crash_tab", "crash_file", "crash_dbz"):
        wait_started(db, s)
    done = threading.Event()
    t = threading.Thread(target=writer, args=(TXNS, done), daemon=True)
    t.start()

    # 1. SIGKILL the workers while they deliver.
    wait_for(lambda: one(db, "SELECT min(rows_delivered) FROM sink.status WHERE name LIKE 'crash%%'") > 2000, what="delivery to start")
    pids = worker_pids(db)
    assert len(pids) == 3
    for p in pids:
        os.kill(p, signal.SIGKILL)
    db.close()

    # 2. Immediate shutdown (a crash: no checkpoint) and restart, mid-stream.
    workers_restarted("pg_sink sink crash%", pids, 3)
    wait_for(lambda: (fresh_one("SELECT min(rows_delivered) FROM sink.status WHERE name LIKE 'crash%%'") or 0) > 20000, timeout=120, what="more delivery")
    cluster("kill")
    cluster("start")
    db = reconnect()

    t.join(timeout=300)
    assert done.is_set(), "writer did not finish"
    for s in ("crash_tab", "crash_file", "crash_dbz"):
        wait_caught_up(db, s, timeout=300)

    # table connector: identical rows.
    diff = one(db, "SELECT count(*) FROM ((SELECT * FROM crash EXCEPT SELECT * FROM crash_copy) UNION ALL (SELECT * FROM crash_copy EXCEPT SELECT * FROM crash)) d")
    assert diff == 0
    src = dict(db.execute("SELECT id, v FROM crash").fetchall())
    # file connector, upsert: replaying the records gives the source.
    state = upsert_state(file_records(d, "crash_file"))
    assert {v["id"]: v["v"] for v in state.values()} == src
    # file connector, debezium: every change once (no record repeats for an LSN and key).
    recs = file_records(d, "crash_dbz")
    seen = collections.Counter(
        (r["headers"]["pg_sink-lsn"], (r["value"]["after"] or r["value"]["before"])["id"], r["value"]["op"]) for r in recs if r["value"]["op"] != "r"
    )
    dups = [k for k, n in seen.items() if n > 1]
    assert dups == [], f"{len(dups)} duplicated records"
    assert one(db, "SELECT count(*) FROM sink.status WHERE name LIKE 'crash%%' AND state = 'running'") == 3
    for s in ("crash_tab", "crash_file", "crash_dbz"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))
    db.execute("ALTER SYSTEM RESET pg_sink.max_batch_changes")
    db.execute("SELECT pg_reload_conf()")
    db.close()
