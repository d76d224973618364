"""Transactions too large to hold in memory: a worker holds at most
`pg_sink.transaction_part_changes` changes of one transaction and delivers the
rest in parts, each target keeping the transaction whole where it can.

* The worker's peak memory is measured over one 400,000-row transaction (it
  grew with the transaction before: about 1 KiB per row).
* A transaction delivered in parts to a table, a file, a jdbc PostgreSQL
  target, Kafka and JetStream, with the server crashed (a worker SIGKILLed) in
  the middle of the parts: every target is compared with the source row by row
  and every key counted for duplicates.
"""
import collections
import glob
import json
import os
import signal

import pytest

from conftest import connect, file_records, fresh_one, one, out_dir, reconnect, upsert_state, wait_caught_up, wait_for, wait_started, workers_restarted
from test_kafka import BROKERS, broker, read_topic  # noqa: F401  (broker is a fixture)
from test_nats import SYSTEM, _stream, _stream_messages, run

TARGET_DB = "lt_tgt"


def _set_part_size(conn, n):
    if n is None:
        conn.execute("ALTER SYSTEM RESET pg_sink.transaction_part_changes")
    else:
        conn.execute(f"ALTER SYSTEM SET pg_sink.transaction_part_changes = {int(n)}")
    conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def part_size(db):
    """Set the part size for a test, and put the default back after it."""
    yield lambda n: _set_part_size(db, n)
    _set_part_size(reconnect(), None)


def _worker_pid(conn, sink):
    return one(conn, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", f"pg_sink sink {sink}%")


def _peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _file_sink(db, name, d):
    db.execute("SELECT sink.create_sink(%s, 'lt_mem', 'file', %s::jsonb, envelope => 'append-only')", (name, json.dumps({"path": d})))
    wait_started(db, name)
    wait_caught_up(db, name)
    return _worker_pid(db, name)


def test_a_worker_holds_a_bounded_part_of_a_large_transaction(db, part_size):
    """The same 400,000-row transaction, first held whole (the part size set past
    it: how every transaction was delivered before), then in parts of 50,000,
    each measured as the growth of its own worker's peak RSS."""
    rows = 400_000
    d = out_dir("lt_mem")
    db.execute("DROP TABLE IF EXISTS lt_mem")
    db.execute("CREATE TABLE lt_mem (id int PRIMARY KEY, v text)")
    insert = f"INSERT INTO lt_mem SELECT g + %s, repeat('x', 200) || g FROM generate_series(1, {rows}) g"

    part_size(100_000_000)
    whole_pid = _file_sink(db, "lt_whole", d)
    before = _peak_rss_mib(whole_pid)
    db.execute(insert, (0,))
    wait_caught_up(db, "lt_whole", timeout=300)
    whole = _peak_rss_mib(whole_pid) - before
    db.execute("SELECT sink.drop_sink('lt_whole')")

    part_size(50_000)
    pid = _file_sink(db, "lt_mem", d)
    before = _peak_rss_mib(pid)
    db.execute(insert, (rows,))
    wait_caught_up(db, "lt_mem", timeout=300)
    assert _worker_pid(db, "lt_mem") == pid, "the same worker delivered it"
    parted = _peak_rss_mib(pid) - before
    print(f"\nworker peak RSS growth over a {rows}-row transaction: {whole:.1f} MiB held whole, {parted:.1f} MiB in parts of 50,000")
    assert parted < 150, f"the worker grew by {parted:.0f} MiB"
    assert parted < whole / 2, f"parts {parted:.0f} MiB, whole {whole:.0f} MiB"

    # The sink's snapshot held the first transaction's rows; the second came in parts.
    recs = file_records(d, "lt_mem")
    ids = collections.Counter(r["value"]["id"] for r in recs)
    assert len(ids) == 2 * rows and max(ids.values()) == 1
    parts = sorted(os.path.basename(f) for f in glob.glob(os.path.join(d, "lt_mem", "*.p*.jsonl")))
    assert len(parts) == rows // 50_000, parts
    # The manifest lists every part once the transaction is complete.
    assert len(glob.glob(os.path.join(d, "lt_mem", "_manifest", "*.p*.json"))) == len(parts)
    assert one(db, "SELECT rows_delivered FROM sink.status WHERE name = 'lt_mem'") == 2 * rows
    db.execute("SELECT sink.drop_sink('lt_mem')")


@pytest.fixture
def target_db(server):
    conn = connect()
    conn.execute(f"DROP DATABASE IF EXISTS {TARGET_DB} WITH (FORCE)")
    conn.execute(f"CREATE DATABASE {TARGET_DB}")
    conn.close()
    tgt = connect(dbname=TARGET_DB)
    tgt.execute("CREATE TABLE lt_t (id int PRIMARY KEY, v text)")
    tgt.close()
    yield
    conn = reconnect()
    # Sinks first: a slot being created waits for DROP DATABASE's transaction,
    # which waits for every backend (that walsender too) to absorb its barrier.
    for (name,) in conn.execute("SELECT name FROM sink.sinks WHERE name LIKE 'lt\\_%'").fetchall():
        conn.execute("SELECT sink.drop_sink(%s)", (name,))
    conn.execute(f"DROP DATABASE IF EXISTS {TARGET_DB} WITH (FORCE)")
    conn.close()


SINKS = ("lt_table", "lt_file", "lt_jdbc", "lt_kafka", "lt_js")


def _target_rows():
    conn = connect(dbname=TARGET_DB)
    try:
        return conn.execute("SELECT id, v FROM lt_t ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_transaction_in_parts_survives_a_crash_in_the_middle(db, part_size, target_db, broker, nats_servers):  # noqa: F811
    part_size(2_000)
    d = out_dir("lt_crash")
    db.execute("DROP TABLE IF EXISTS lt, lt_copy CASCADE")
    db.execute("CREATE TABLE lt (id int PRIMARY KEY, v text)")
    run(_stream("PGSINK_LT", ["pgs.lt.>"]))
    port = db.info.port
    opts = {
        "lt_table": ("table", {"table": "lt_copy"}),
        "lt_file": ("file", {"path": d}),
        "lt_jdbc": ("jdbc", {"jdbc.url": f"jdbc:postgresql://127.0.0.1:{port}/{TARGET_DB}?user=postgres", "table.name": "lt_t"}),
        "lt_kafka": ("kafka", {"properties.bootstrap.server": BROKERS, "topic": "lt-crash"}),
        "lt_js": ("nats", {"server_url": SYSTEM, "subject": "pgs.lt.items", "jetstream": True}),
    }
    for name, (connector, o) in opts.items():
        db.execute("SELECT sink.create_sink(%s, 'lt', %s, %s::jsonb, envelope => 'upsert')", (name, connector, json.dumps(o)))
    for name in SINKS:
        wait_started(db, name)
    # The table target takes its rows slowly, so the crash surely lands inside
    # its transaction (the others are caught wherever they are).
    db.execute("CREATE OR REPLACE FUNCTION lt_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.0002); RETURN NEW; END $$")
    db.execute("CREATE TRIGGER slow BEFORE INSERT ON lt_copy FOR EACH ROW EXECUTE FUNCTION lt_slow()")
    rows = 60_000  # 30 parts
    db.execute(f"INSERT INTO lt SELECT g, 'v' || g FROM generate_series(1, {rows}) g")
    # Crash the server once parts have gone out (a part file is on disk), before
    # the transaction is complete everywhere.
    wait_for(lambda: glob.glob(os.path.join(d, "lt_file", "*.p000001.jsonl")), timeout=120, what="a part to be written")
    pids = [r[0] for r in db.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink lt\\_%%'").fetchall()]
    assert len(pids) == len(SINKS)
    unfinished = [r[0] for r in db.execute("SELECT s.name FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id "
                                           "WHERE s.name LIKE 'lt\\_%%' AND p.confirmed_lsn < pg_current_wal_lsn() ORDER BY 1").fetchall()]
    assert "lt_table" in unfinished
    os.kill(pids[0], signal.SIGKILL)
    workers_restarted("pg_sink sink lt\\_%", pids, len(SINKS))
    db = reconnect()
    db.execute("UPDATE lt SET v = v || '!' WHERE id % 1000 = 0")  # one more, small transaction
    for name in SINKS:
        wait_caught_up(db, name, timeout=300)
    source = db.execute("SELECT id, v FROM lt ORDER BY id").fetchall()
    want = {i: v for i, v in source}
    print(f"\nnot confirmed when the server crashed: {', '.join(unfinished)}")

    assert db.execute("SELECT id, v FROM lt_copy ORDER BY id").fetchall() == source, "table"
    assert _target_rows() == source, "jdbc"
    recs = file_records(d, "lt_file")
    assert {json.loads(k)["id"]: v["v"] for k, v in upsert_state(recs).items()} == want, "file"
    inserts = collections.Counter(r["key"]["id"] for r in recs if r["headers"].get("pg_sink-op") == "insert")
    assert len(inserts) == rows and max(inserts.values()) == 1, "file: an insert was written twice"
    assert len(glob.glob(os.path.join(d, "lt_file", "*.p*.jsonl"))) == rows // 2_000, "file: the transaction went out in parts"

    msgs = read_topic("lt-crash", timeout=120)
    kafka_inserts = collections.Counter(json.loads(k)["id"] for _, k, _, h in msgs if h.get("pg_sink-op") == "insert")
    assert len(kafka_inserts) == rows and max(kafka_inserts.values()) == 1, "kafka: an insert lost or produced twice"
    latest = {}
    for _, k, v, _ in msgs:
        latest[json.loads(k)["id"]] = json.loads(v)["v"] if v is not None else None
    assert latest == want, "kafka"

    js = run(_stream_messages("PGSINK_LT", "pgs.lt.items"))
    js_ids = collections.Counter(json.loads(data)["id"] for _, data, _ in js)
    assert len(js_ids) == rows and sum(js_ids.values()) == rows + rows // 1000, "jetstream: lost or doubled"
    for name in SINKS:
        assert one(db, "SELECT state FROM sink.status WHERE name = %s", name) == "running"
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    db.execute("DROP FUNCTION lt_slow() CASCADE")
