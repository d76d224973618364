"""sink.backfill(): a started sink's source read again by key, in chunks, while
its changes stream on (DBLog watermarks; src/engine/backfill.rs).

* Rows backfilled while a writer updates, deletes and inserts across the same
  keys: a table target (upsert) equals the source row by row; a file target in
  the debezium envelope, replayed by key, equals it too, with no key read twice.
* A worker SIGKILLed in the middle (the postmaster restarts every process): the
  backfill goes on from the last chunk recorded, the target equals the source, and
  at most the one chunk in flight is read twice.
* A filter, a manual sink driven by sync(), cancel_backfill(), status, and every
  bad input refused with its SQLSTATE and nothing changed.
* The initial snapshot as a backfill (`snapshot.mode = 'incremental'`), to a
  table, a file (debezium) and Kafka (debezium, exactly-once) while a writer
  runs, every worker SIGKILLed at about half: it resumes at its last chunk (no
  chunk delivered before the crash is read again but the one in flight), and
  each target equals the source.
"""
import collections
import contextlib
import json
import os
import random
import signal
import threading
import time

import pytest

from test_kafka import BROKERS, broker, read_topic  # noqa: F401  (broker is a fixture)
from conftest import connect, file_records, fresh_one, one, out_dir, reconnect, sqlstate_of, wait_caught_up, wait_for, wait_started, workers_restarted

ROWS = 20_000
CHUNK = 1_000


def _chunk_rows(conn, n):
    if n is None:
        conn.execute("ALTER SYSTEM RESET pg_sink.backfill_chunk_rows")
    else:
        conn.execute(f"ALTER SYSTEM SET pg_sink.backfill_chunk_rows = {int(n)}")
    conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def small_chunks(db):
    _chunk_rows(db, CHUNK)
    yield CHUNK
    _chunk_rows(reconnect(), None)


def _source(db, table, rows=ROWS):
    db.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text, n bigint)")
    db.execute(f"INSERT INTO {table} SELECT g, 'v' || g, g FROM generate_series(1, {rows}) g")
    db.execute(f"ANALYZE {table}")


class Writer(threading.Thread):
    """Updates, deletes and inserts across the source's keys until stopped."""

    def __init__(self, table, keys):
        super().__init__(daemon=True)
        self.table, self.keys, self.stop, self.count = table, keys, threading.Event(), 0
        self.error = None

    def run(self):
        rnd = random.Random(7)
        conn = None
        try:
            while not self.stop.is_set():
                if conn is None:
                    conn = fresh_conn()
                    if conn is None:
                        time.sleep(0.2)
                        continue
                try:
                    with conn.transaction():
                        for _ in range(5):
                            k = rnd.randint(1, self.keys + 2000)
                            op = rnd.random()
                            if op < 0.6:
                                conn.execute(f"INSERT INTO {self.table} VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, n = {self.table}.n + 1", (k, f"w{self.count}", k))
                            elif op < 0.85:
                                conn.execute(f"DELETE FROM {self.table} WHERE id = %s", (k,))
                            else:
                                conn.execute(f"UPDATE {self.table} SET id = id + 100000 WHERE id = %s AND id < 100000", (k,))
                    self.count += 1
                except Exception:  # a server restart cuts the connection
                    conn = None
                    time.sleep(0.2)
        except Exception as e:  # noqa: BLE001
            self.error = e


def fresh_conn():
    try:
        return connect()
    except Exception:  # noqa: BLE001
        return None


def _rows(conn, table):
    return {r[0]: (r[1], r[2]) for r in conn.execute(f"SELECT id, v, n FROM {table}")}


def _wait_backfilled(db, sink, timeout=240):
    def done():
        row = db.execute("SELECT backfill, state, last_error FROM sink.status WHERE name = %s", (sink,)).fetchone()
        assert row[1] != "failed", f"sink {sink} failed: {row[2]}"
        return row[0] == "done"
    wait_for(done, timeout, f"sink {sink} to finish its backfill")


def _debezium_state(records):
    """Replay debezium events by key: (state, reads per key)."""
    state, reads = {}, collections.Counter()
    for r in records:
        v = r["value"]
        if v is None:
            continue
        op = v["op"]
        if op == "r":
            reads[v["after"]["id"]] += 1
        if op in ("r", "c", "u"):
            if op == "u" and v["before"] and v["before"]["id"] != v["after"]["id"]:
                state.pop(v["before"]["id"], None)
            state[v["after"]["id"]] = (v["after"]["v"], v["after"]["n"])
        elif op == "d":
            state.pop(v["before"]["id"], None)
    return state, reads


def _sinks_without_snapshot(db, prefix, rows):
    """A source of `rows` rows and two sinks created without a snapshot (their
    targets start empty): `<prefix>_tab` into table `<prefix>_copy` (upsert) and
    `<prefix>_dbz` into files (debezium); then a writer on the source, started.
    Returns the file sink's directory and the writer."""
    _source(db, f"{prefix}_src", rows)
    db.execute(f"DROP TABLE IF EXISTS {prefix}_copy")
    db.execute(f"CREATE TABLE {prefix}_copy (id int PRIMARY KEY, v text, n bigint)")
    d = out_dir(f"{prefix}_file")
    db.execute(f"SELECT sink.create_sink('{prefix}_tab', '{prefix}_src', 'table', '{{\"table\": \"{prefix}_copy\"}}', envelope => 'upsert', snapshot => false)")
    db.execute(f"SELECT sink.create_sink('{prefix}_dbz', '{prefix}_src', 'file', %s::jsonb, envelope => 'debezium', snapshot => false)", (json.dumps({"path": d}),))
    for s in (f"{prefix}_tab", f"{prefix}_dbz"):
        wait_started(db, s)
    w = Writer(f"{prefix}_src", rows)
    w.start()
    return d, w


def test_rows_backfilled_while_a_writer_changes_them_end_as_the_source_has_them(db, small_chunks):
    # No initial snapshot: the targets start empty, the backfill fills them.
    d, w = _sinks_without_snapshot(db, "bf", ROWS)
    try:
        time.sleep(1)
        out = one(db, "SELECT sink.backfill('bf_tab')")
        assert out["key"] == ["id"] and out["backfill"] == 1 and out["rows_estimate"] == ROWS
        db.execute("SELECT sink.backfill('bf_dbz')")
        # Status while it runs: rows so far, a percent of the estimate.
        wait_for(lambda: (one(db, "SELECT backfill_rows FROM sink.status WHERE name = 'bf_tab'") or 0) > 0, 60, "the first chunk")
        row = db.execute("SELECT backfill, backfill_rows, backfill_percent FROM sink.status WHERE name = 'bf_tab'").fetchone()
        assert row[0] in ("running", "done") and row[1] >= CHUNK - 200 and 0 < row[2] <= 100
        for s in ("bf_tab", "bf_dbz"):
            _wait_backfilled(db, s)
        time.sleep(1)
    finally:
        w.stop.set()
        w.join(30)
    assert w.error is None and w.count > 50, (w.error, w.count)
    for s in ("bf_tab", "bf_dbz"):
        wait_caught_up(db, s)
    source = _rows(db, "bf_src")
    assert _rows(db, "bf_copy") == source
    state, reads = _debezium_state(file_records(d, "bf_dbz"))
    assert state == source
    assert max(reads.values()) == 1, "no key read twice"
    # The keys of rows the writer never touched are all there, as reads.
    assert sum(reads.values()) >= ROWS // 2
    b = db.execute("SELECT chunks, rows_read, rows_delivered, finished_at IS NOT NULL FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name = 'bf_tab'").fetchone()
    assert b[3] and b[0] >= ROWS // CHUNK and b[1] >= b[2] >= ROWS // 2, b
    assert db.execute("SELECT backfill, backfill_percent, backfill_eta_seconds FROM sink.status WHERE name = 'bf_tab'").fetchone() == ("done", 100.0, None)
    for s in ("bf_tab", "bf_dbz"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))


def test_a_backfill_goes_on_after_its_worker_is_killed(db, small_chunks):
    d, w = _sinks_without_snapshot(db, "bfk", 40_000)
    try:
        db.execute("SELECT sink.backfill('bfk_tab')")
        db.execute("SELECT sink.backfill('bfk_dbz')")
        wait_for(lambda: (one(db, "SELECT min(rows_read) FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name LIKE 'bfk%%'") or 0) >= 5 * CHUNK, 120, "five chunks")
        before = {r[0]: r[1] for r in db.execute("SELECT s.name, b.chunks FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name LIKE 'bfk%'")}
        pids = [r[0] for r in db.execute("SELECT pid FROM pg_stat_activity WHERE application_name IN ('pg_sink sink bfk_tab', 'pg_sink sink bfk_dbz')")]
        assert len(pids) == 2
        for p in pids:
            os.kill(p, signal.SIGKILL)
        workers_restarted("pg_sink sink bfk_%", pids, 2)
        conn = reconnect()
        after = {r[0]: r[1] for r in conn.execute("SELECT s.name, b.chunks FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name LIKE 'bfk%'")}
        assert all(after[s] >= before[s] for s in before), (before, after)
        assert all(after[s] < 40 for s in after), "the crash came before the end"
        for s in ("bfk_tab", "bfk_dbz"):
            _wait_backfilled(conn, s)
    finally:
        w.stop.set()
        w.join(30)
    conn = reconnect()
    for s in ("bfk_tab", "bfk_dbz"):
        wait_caught_up(conn, s)
    source = _rows(conn, "bfk_src")
    assert _rows(conn, "bfk_copy") == source
    state, reads = _debezium_state(file_records(d, "bfk_dbz"))
    assert state == source
    twice = sum(1 for n in reads.values() if n > 1)
    assert twice <= CHUNK, f"{twice} keys read twice: more than the one chunk in flight"
    assert max(reads.values()) <= 2
    for s in ("bfk_tab", "bfk_dbz"):
        conn.execute("SELECT sink.drop_sink(%s)", (s,))


def test_a_filtered_backfill_of_a_manual_sink_runs_in_sync_and_can_be_cancelled(db, small_chunks):
    _source(db, "bff_src", 5_000)
    d = out_dir("bff_file")
    db.execute("SELECT sink.create_sink('bff', 'bff_src', 'file', %s::jsonb, envelope => 'upsert', snapshot => false)", (json.dumps({"path": d, "schedule": "manual"}),))
    db.execute("SELECT sink.sync('bff')")
    # A filter that is one expression only around its own parentheses (an OR of
    # two parenthesised terms) must not loosen the chunks' key condition.
    db.execute("SELECT sink.backfill('bff', 'id = 4001) OR (id % 2 = 0 AND id <= 3000')")
    db.execute("UPDATE bff_src SET v = 'changed' WHERE id IN (2, 3)")
    out = one(db, "SELECT sink.sync('bff')")
    assert out["records"] >= 1500
    assert one(db, "SELECT backfill FROM sink.status WHERE name = 'bff'") == "done"
    recs = file_records(d, "bff")
    keys = collections.Counter(r["key"]["id"] for r in recs)
    assert set(keys) == set(range(2, 3001, 2)) | {3, 4001}
    assert keys[4001] == 1 and keys[4] == 1
    last = {}
    for r in recs:
        last[r["key"]["id"]] = r["value"]
    assert last[2]["v"] == "changed" and last[3]["v"] == "changed" and last[4]["v"] == "v4"
    # A second backfill, cancelled before any sync reads it.
    db.execute("SELECT sink.backfill('bff')")
    assert one(db, "SELECT backfill FROM sink.status WHERE name = 'bff'") == "running"
    assert one(db, "SELECT sink.cancel_backfill('bff')") is True
    assert one(db, "SELECT sink.cancel_backfill('bff')") is False
    assert db.execute("SELECT backfill, backfill_percent FROM sink.status WHERE name = 'bff'").fetchone() == ("cancelled", 0.0), "how far it got"
    n = len(file_records(d, "bff"))
    db.execute("SELECT sink.sync('bff')")
    assert len(file_records(d, "bff")) == n, "a cancelled backfill reads nothing more"
    db.execute("SELECT sink.drop_sink('bff')")


def test_bad_backfills_are_refused_and_change_nothing(db):
    db.execute("DROP TABLE IF EXISTS bfe_src, bfe_nokey CASCADE")
    db.execute("CREATE TABLE bfe_src (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE bfe_nokey (v text)")
    db.execute("ALTER TABLE bfe_nokey REPLICA IDENTITY FULL")
    d = out_dir("bfe")
    db.execute("SELECT sink.create_sink('bfe', 'bfe_src', 'file', %s::jsonb, envelope => 'upsert')", (json.dumps({"path": d}),))
    db.execute("SELECT sink.create_sink('bfe_nk', 'bfe_nokey', 'file', %s::jsonb, envelope => 'append-only')", (json.dumps({"path": d}),))
    db.execute("SELECT sink.create_sink('bfe_manual', 'bfe_src', 'file', %s::jsonb, envelope => 'upsert')", (json.dumps({"path": d, "schedule": "manual"}),))
    for s in ("bfe", "bfe_nk"):
        wait_started(db, s)
    db.execute("DROP OWNED BY bfe_other") if one(db, "SELECT count(*) FROM pg_roles WHERE rolname = 'bfe_other'") else None
    db.execute("DROP ROLE IF EXISTS bfe_other")
    db.execute("CREATE ROLE bfe_other LOGIN")
    db.execute("GRANT USAGE ON SCHEMA sink TO bfe_other")
    count = lambda: one(db, "SELECT count(*) FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name LIKE 'bfe%%'")
    cases = [
        ("SELECT sink.backfill('bfe_missing')", "42704"),
        ("SELECT sink.backfill('bfe_nk')", "55000"),
        ("SELECT sink.backfill('bfe_manual')", "55000"),
        ("SELECT sink.backfill('bfe', 'no_such_column > 1')", "42703"),
        ("SELECT sink.backfill('bfe', 'true); DROP TABLE bfe_src; SELECT (1')", "42601"),
        ("SELECT sink.backfill('bfe', 'true) UNION (SELECT 1')", "42601"),
        ("SELECT sink.backfill('bfe', 'true)) OR ((true')", "42601"),
        ("SELECT sink.backfill('bfe', 'true LIMIT 1 --')", "42601"),
        ("SELECT sink.cancel_backfill('bfe_missing')", "42704"),
    ]
    for sql, code in cases:
        e = sqlstate_of(db, sql)
        assert e[0] == code, (sql, e)
        assert e[1] and (e[2] or e[3]), (sql, e)
    assert count() == 0
    assert one(db, "SELECT to_regclass('bfe_src') IS NOT NULL")
    other = connect(user="bfe_other")
    e = sqlstate_of(other, "SELECT sink.backfill('bfe')")
    assert e[0] == "42501", e
    other.close()
    db.execute("SELECT sink.backfill('bfe')")
    e = sqlstate_of(db, "SELECT sink.backfill('bfe')")
    assert e[0] == "55006" and "cancel_backfill" in e[3], e
    assert count() == 1
    for s in ("bfe", "bfe_nk", "bfe_manual"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))
    db.execute("DROP OWNED BY bfe_other")
    db.execute("DROP ROLE bfe_other")


def test_an_incremental_snapshot_resumes_after_a_crash_where_it_stopped(db, small_chunks, broker):  # noqa: F811
    rows = 40_000
    _source(db, "bfi_src", rows)
    db.execute("DROP TABLE IF EXISTS bfi_copy")
    db.execute("CREATE TABLE bfi_copy (id int PRIMARY KEY, v text, n bigint)")
    d = out_dir("bfi_file")
    opts = {"snapshot.mode": "incremental"}
    db.execute("SELECT sink.create_sink('bfi_tab', 'bfi_src', 'table', %s::jsonb, envelope => 'upsert')", (json.dumps({**opts, "table": "bfi_copy"}),))
    db.execute("SELECT sink.create_sink('bfi_dbz', 'bfi_src', 'file', %s::jsonb, envelope => 'debezium')", (json.dumps({**opts, "path": d}),))
    db.execute("SELECT sink.create_sink('bfi_kafka', 'bfi_src', 'kafka', %s::jsonb, envelope => 'debezium')",
               (json.dumps({**opts, "properties.bootstrap.server": BROKERS, "topic": "bfi"}),))
    sinks = ("bfi_tab", "bfi_dbz", "bfi_kafka")
    # The sinks stream at once; their snapshots are still to come.
    wait_for(lambda: one(db, "SELECT count(*) FROM sink.status WHERE name LIKE 'bfi%%' AND confirmed_lsn IS NOT NULL") == 3, 60, "the slots")
    assert one(db, "SELECT count(*) FROM sink.status WHERE name LIKE 'bfi%%' AND NOT snapshot_done") >= 2
    w = Writer("bfi_src", rows)
    w.start()
    try:
        # The sinks run at different speeds (the file fastest; Kafka commits a
        # transaction per chunk and starts later): each is crashed half way
        # through its snapshot, fastest first (each crash restarts every process).
        chunks = "SELECT s.name, b.chunks FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name LIKE 'bfi%'"
        conn, crashes = db, []
        for group in (("bfi_dbz",), ("bfi_tab",), ("bfi_kafka",)):
            half = "SELECT min(b.rows_read) >= %s FROM sink.backfills b JOIN sink.sinks s ON s.id = b.sink_id WHERE s.name = ANY(%s)"
            wait_for(lambda: one(conn, half, rows // 2, list(group)), 180, f"{group} half way")
            before = dict(conn.execute(chunks).fetchall())
            pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink bfi%'")]
            assert len(pids) == 3
            for p in pids:
                with contextlib.suppress(ProcessLookupError):  # the crash of the first may end the others first
                    os.kill(p, signal.SIGKILL)
            workers_restarted("pg_sink sink bfi%", pids, 3)
            conn = reconnect()
            after = dict(conn.execute(chunks).fetchall())
            # Each of the group was cut part way, and kept what it had recorded.
            assert all(rows // CHUNK // 2 <= before[s] < rows // CHUNK and before[s] <= after[s] for s in group), (group, before, after)
            crashes.append(before)
        wait_for(lambda: one(conn, "SELECT bool_and(snapshot_done) FROM sink.status WHERE name LIKE 'bfi%%'"), 240, "the snapshots")
    finally:
        w.stop.set()
        w.join(30)
    assert w.error is None and w.count > 50, (w.error, w.count)
    conn = reconnect()
    for s in sinks:
        wait_caught_up(conn, s)
    assert conn.execute("SELECT count(*) FILTER (WHERE backfill = 'done'), min(backfill_percent) FROM sink.status WHERE name LIKE 'bfi%'").fetchone() == (3, 100.0)
    source = _rows(conn, "bfi_src")
    assert _rows(conn, "bfi_copy") == source
    state, reads = _debezium_state(file_records(d, "bfi_dbz"))
    assert state == source
    twice = sum(1 for n in reads.values() if n > 1)
    assert twice <= CHUNK and max(reads.values()) <= 2, f"file: {twice} keys read twice"
    msgs = read_topic("bfi", timeout=60)
    kstate, kreads = _debezium_state({"value": json.loads(v) if v else None} for _, _, v, _ in msgs)
    assert kstate == source
    ktwice = sum(1 for n in kreads.values() if n > 1)
    assert ktwice <= CHUNK and max(kreads.values()) <= 2, f"kafka: {ktwice} keys read twice"
    print(f"chunks at the crashes {crashes}; keys read twice: file {twice}, kafka {ktwice}; writer transactions {w.count}")
    for s in sinks:
        conn.execute("SELECT sink.drop_sink(%s)", (s,))


def test_an_incremental_snapshot_needs_a_key(db):
    db.execute("DROP TABLE IF EXISTS bfn_src")
    db.execute("CREATE TABLE bfn_src (v text)")
    db.execute("ALTER TABLE bfn_src REPLICA IDENTITY FULL")
    d = out_dir("bfn")
    e = sqlstate_of(db, "SELECT sink.create_sink('bfn', 'bfn_src', 'file', %s::jsonb, envelope => 'append-only')", json.dumps({"path": d, "snapshot.mode": "incremental"}))
    assert e[0] == "55000" and "primary key" in e[1] and e[2] and "consistent" in e[3], e
    e = sqlstate_of(db, "SELECT sink.create_sink('bfn', 'bfn_src', 'file', %s::jsonb, envelope => 'append-only')", json.dumps({"path": d, "snapshot.mode": "sometimes"}))
    assert e[0] == "22023" and "snapshot.mode" in e[1], e
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'bfn'") == 0


def test_a_backfill_of_a_partitioned_source_goes_on_past_an_alter_table(db, small_chunks):
    """Read through the partitioned table's root; an ALTER TABLE in the middle
    (and no write after it, so the stream sends no new relation description):
    the chunks read after it have the new column, and the backfill finishes."""
    db.execute("DROP TABLE IF EXISTS bfp_src, bfp_copy CASCADE")
    db.execute("CREATE TABLE bfp_src (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    db.execute("CREATE TABLE bfp_src_a PARTITION OF bfp_src FOR VALUES FROM (0) TO (5000)")
    db.execute("CREATE TABLE bfp_src_b PARTITION OF bfp_src FOR VALUES FROM (5000) TO (20000)")
    db.execute("INSERT INTO bfp_src SELECT g, 'v' || g FROM generate_series(1, 12000) g")
    db.execute("ANALYZE bfp_src")
    db.execute("SELECT sink.create_sink('bfp', 'bfp_src', 'table', '{\"table\": \"bfp_copy\"}', envelope => 'upsert', snapshot => false)")
    wait_started(db, "bfp")
    db.execute("UPDATE bfp_src SET v = 'streamed' WHERE id IN (1, 6000)")
    wait_caught_up(db, "bfp")
    db.execute("SELECT sink.backfill('bfp')")
    wait_for(lambda: (one(db, "SELECT backfill_rows FROM sink.status WHERE name = 'bfp'") or 0) >= CHUNK, 60, "a chunk")
    db.execute("ALTER TABLE bfp_src ADD COLUMN w int")
    _wait_backfilled(db, "bfp", timeout=60)
    db.execute("UPDATE bfp_src SET w = id WHERE id > 11000")
    wait_caught_up(db, "bfp")
    cols = [r[0] for r in db.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'bfp_copy'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
    assert cols == ["id", "v", "w"]
    src = db.execute("SELECT id, v, w FROM bfp_src ORDER BY id").fetchall()
    assert db.execute("SELECT id, v, w FROM bfp_copy ORDER BY id").fetchall() == src
    assert len(src) == 12000 and src[0][1] == "streamed"
    db.execute("SELECT sink.drop_sink('bfp')")
