"""Logical decoding messages (pg_logical_emit_message) delivered by a sink: the
outbox pattern without an outbox table. A message with one of the sink's prefixes
(`messages`, Debezium's `message.prefix.include.list`) is delivered in commit order
with the rows of its transaction, exactly once across a killed worker; messages of
rolled-back transactions, with other prefixes, or not transactional are not."""
import json

from conftest import file_records, one, out_dir, sqlstate_of, wait_caught_up, wait_started
from test_dead_letters import kill_worker
from test_kafka import broker, read_topic  # noqa: F401  (the broker fixture)


def test_outbox_messages_reach_kafka_once_in_commit_order_across_a_killed_worker(db, broker):
    db.execute("DROP TABLE IF EXISTS m_orders")
    db.execute("CREATE TABLE m_orders (id int PRIMARY KEY, total int)")
    db.execute("SELECT sink.create_sink('m_kafka', 'm_orders', 'kafka', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"brokers": broker, "topic": "m-orders", "messages": "outbox"}),))
    wait_started(db, "m_kafka")
    for i in range(1, 301):
        with db.transaction():
            db.execute("INSERT INTO m_orders VALUES (%s, %s)", (i, i * 10))
            db.execute("SELECT pg_logical_emit_message(true, 'outbox', %s)", (json.dumps({"order": i, "event": "placed"}),))
            db.execute("SELECT pg_logical_emit_message(true, 'other', 'not for this sink')")
            db.execute("SELECT pg_logical_emit_message(false, 'outbox', 'not transactional')")
        if i % 50 == 0:
            # A transaction that is only a message; one that rolls back.
            db.execute("SELECT pg_logical_emit_message(true, 'outbox', %s)", (json.dumps({"checkpoint": i}),))
            with db.transaction(force_rollback=True):
                db.execute("SELECT pg_logical_emit_message(true, 'outbox', 'rolled back')")
        if i == 120:
            kill_worker(db, "m_kafka")
    wait_caught_up(db, "m_kafka")
    got = read_topic("m-orders")
    rows = [json.loads(k)["id"] for _, k, v, h in got if h["pg_sink-op"] == "insert"]
    msgs = [(json.loads(k), json.loads(v), h) for _, k, v, h in got if h["pg_sink-op"] == "message"]
    assert sorted(rows) == list(range(1, 301)) and len(rows) == 300, "each row once"
    assert all(k == {"prefix": "outbox"} for k, _, _ in msgs)
    values = [v for _, v, _ in msgs]
    placed = [v["order"] for v in values if "order" in v]
    checkpoints = [v["checkpoint"] for v in values if "checkpoint" in v]
    # One partition holds every message (one key): its order is commit order.
    assert placed == list(range(1, 301)), "each message once, in commit order"
    assert checkpoints == [50, 100, 150, 200, 250, 300]
    assert len(values) == 306, "nothing rolled back, of another prefix, or not transactional"
    # Each message's LSN header is its transaction's commit LSN, the same as its row's.
    lsn_of_row = {json.loads(k)["id"]: h["pg_sink-lsn"] for _, k, v, h in got if h["pg_sink-op"] == "insert"}
    for _, v, h in msgs:
        if "order" in v:
            assert h["pg_sink-lsn"] == lsn_of_row[v["order"]]
    status = db.execute("SELECT state, rows_delivered FROM sink.status WHERE name = 'm_kafka'").fetchone()
    assert status[0] == "running" and status[1] >= 606, status
    db.execute("SELECT sink.drop_sink('m_kafka')")


def test_messages_as_debezium_events_in_files(db):
    out = out_dir("messages")
    db.execute("DROP TABLE IF EXISTS m_src")
    db.execute("CREATE TABLE m_src (id int PRIMARY KEY)")
    db.execute("SELECT sink.create_sink('m_dbz', 'm_src', 'file', %s::jsonb, envelope => 'debezium', snapshot => false)",
               (json.dumps({"path": out, "message.prefix.include.list": "audit,outbox"}),))
    wait_started(db, "m_dbz")
    with db.transaction():
        db.execute("INSERT INTO m_src VALUES (1)")
        db.execute("SELECT pg_logical_emit_message(true, 'audit', '\\x00ff'::bytea)")
    db.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hello')")
    wait_caught_up(db, "m_dbz")
    records = file_records(out, "m_dbz")
    assert [r["value"]["op"] for r in records] == ["c", "m", "m"], records
    audit, hello = records[1], records[2]
    assert audit["key"] == {"prefix": "audit"}
    assert audit["value"]["message"] == {"prefix": "audit", "content": "AP8="}
    assert hello["value"]["message"] == {"prefix": "outbox", "content": "aGVsbG8="}
    src = hello["value"]["source"]
    assert (src["db"], src["schema"], src["table"], src["name"]) == ("postgres", "", "", "m_dbz")
    assert audit["value"]["source"]["lsn"] == records[0]["value"]["source"]["lsn"], "same transaction, same commit LSN"
    db.execute("SELECT sink.drop_sink('m_dbz')")


def test_messages_are_refused_where_a_record_must_be_a_row(db):
    db.execute("DROP TABLE IF EXISTS m_bad")
    db.execute("CREATE TABLE m_bad (id int PRIMARY KEY)")
    cases = [
        ("table", {"table": "m_bad_copy", "messages": "outbox"}, "applies rows"),
        ("file", {"path": "/tmp/pg_sink_m_bad", "messages": "outbox", "file_format": "parquet"}, "CSV and Parquet"),
        ("file", {"path": "/tmp/pg_sink_m_bad", "messages": "pg_sink.retry"}, None),
    ]
    for connector, opts, detail in cases:
        code, message, det, hint = sqlstate_of(db, "SELECT sink.create_sink('m_bad', 'm_bad', %s, %s::jsonb)", connector, json.dumps(opts))
        assert code == "22023" and hint, (code, message, det, hint)
        if detail:
            assert message == "this sink cannot deliver logical messages" and detail in det, det
        else:
            assert "pg_sink's own" in message
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'm_bad'") == 0
