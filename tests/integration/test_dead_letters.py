"""errors.policy: records a target refuses for good (a CHECK constraint on a
target table, a Kafka record over the topic's size limit, a webhook's 422) are
set aside as dead letters (or skipped) instead of stopping the sink; everything
else is delivered once; sink.retry_dead_letters() delivers the kept ones again
once the target takes them. Each test compares the target with the source row by
row and counts duplicates, with the worker killed in the middle."""
import collections
import json
import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import one, sqlstate_of, wait_caught_up, wait_for, wait_started
from test_kafka import broker, read_topic  # noqa: F401  (the broker fixture)
from test_nats import SYSTEM, _stream_messages, run
from test_webhook import next_port
from webhook_receiver import Receiver


def letters(db, sink):
    """(op, key id, kept, error) of the sink's dead letters, in stream order."""
    return db.execute(
        "SELECT d.op, (d.key->>'id')::int, d.change IS NOT NULL, d.error FROM sink.dead_letters d "
        "JOIN sink.sinks s ON s.id = d.sink_id WHERE s.name = %s ORDER BY d.lsn, d.chunk, d.ordinal", (sink,)).fetchall()


def counts(db, sink):
    return db.execute("SELECT state, dead_letters, records_skipped FROM sink.status WHERE name = %s", (sink,)).fetchone()


def kill_worker(db, sink):
    """Terminate the sink's worker (the launcher starts it again)."""
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (f"pg_sink sink {sink}",))


def test_errors_policy_is_checked(db):
    db.execute("DROP TABLE IF EXISTS dl_bad")
    db.execute("CREATE TABLE dl_bad (id int PRIMARY KEY)")
    state = sqlstate_of(db, "SELECT sink.create_sink('dl_bad', 'dl_bad', 'file', %s::jsonb)",
                        json.dumps({"path": "/tmp/pg_sink_dl_bad", "errors.policy": "ignore"}))
    assert state[0] == "22023" and "errors.policy" in state[1] and state[2] and "dead_letter" in state[3], state
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'dl_bad'") == 0
    msg = one(db, "SELECT description FROM sink.options() WHERE option = 'errors.policy'")
    assert "dead_letter" in msg


def test_a_table_target_s_refusals_become_dead_letters_and_retry_delivers_them(db):
    db.execute("DROP TABLE IF EXISTS dl_src, dl_copy CASCADE")
    db.execute("CREATE TABLE dl_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO dl_src SELECT g, 'seed' || g FROM generate_series(1, 100) g")
    db.execute("INSERT INTO dl_src VALUES (101, 'poison-in-snapshot')")
    db.execute("CREATE TABLE dl_copy (id int PRIMARY KEY, v text CONSTRAINT no_poison CHECK (v NOT LIKE 'poison%%'))")
    db.execute("SELECT sink.create_sink('dl_t', 'dl_src', 'table', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"table": "dl_copy", "errors.policy": "dead_letter"}),))
    wait_started(db, "dl_t")
    # Several transactions, refused rows among good ones; the worker is killed in
    # the middle.
    for t in range(10):
        with db.transaction():
            for i in range(20):
                k = 102 + t * 20 + i
                db.execute("INSERT INTO dl_src VALUES (%s, %s)", (k, "poison" if k in (150, 233) else f"v{k}"))
        if t == 4:
            kill_worker(db, "dl_t")
    db.execute("UPDATE dl_src SET v = 'poison-update' WHERE id = 7")
    db.execute("UPDATE dl_src SET v = 'fine' WHERE id = 8")
    db.execute("DELETE FROM dl_src WHERE id = 9")
    wait_caught_up(db, "dl_t")
    source = dict(db.execute("SELECT id, v FROM dl_src").fetchall())
    target = dict(db.execute("SELECT id, v FROM dl_copy").fetchall())
    refused = {k for k, v in source.items() if v.startswith("poison")}
    assert refused == {7, 101, 150, 233}
    want = {k: v for k, v in source.items() if k not in refused}
    want[7] = "seed7"  # its refused update did not reach the target
    assert target == want
    got = letters(db, "dl_t")
    assert [(op, k) for op, k, _, _ in got] == [("read", 101), ("insert", 150), ("insert", 233), ("update", 7)], got
    assert all(kept and "no_poison" in err for _, _, kept, err in got), got
    assert counts(db, "dl_t") == ("running", 3 + 1, 0)

    # The target takes them now: retried, they arrive, each once.
    db.execute("ALTER TABLE dl_copy DROP CONSTRAINT no_poison")
    assert one(db, "SELECT sink.retry_dead_letters('dl_t')") == 4
    wait_caught_up(db, "dl_t")
    assert dict(db.execute("SELECT id, v FROM dl_copy").fetchall()) == source
    assert counts(db, "dl_t") == ("running", 0, 0)
    # Another role sees neither the rows nor may retry them.
    db.execute("DROP OWNED BY dl_other") if one(db, "SELECT count(*) FROM pg_roles WHERE rolname = 'dl_other'") else None
    db.execute("DROP ROLE IF EXISTS dl_other")
    db.execute("CREATE ROLE dl_other IN ROLE sink_creator")
    db.execute("GRANT USAGE ON SCHEMA sink TO dl_other")
    db.execute("SET ROLE dl_other")
    try:
        assert one(db, "SELECT count(*) FROM sink.dead_letters") == 0
        assert sqlstate_of(db, "SELECT sink.retry_dead_letters('dl_t')")[0] == "42501"
    finally:
        db.execute("RESET ROLE")
    db.execute("SELECT sink.drop_sink('dl_t')")


def test_skip_sets_a_webhook_s_refused_records_aside_without_keeping_them(db):
    db.execute("DROP TABLE IF EXISTS dl_wh")
    db.execute("CREATE TABLE dl_wh (id int PRIMARY KEY, v text)")
    rcv = Receiver(next_port()).start()
    try:
        rcv.refuse_containing(b"poison", 422)
        db.execute("SELECT sink.create_sink('dl_w', 'dl_wh', 'webhook', %s::jsonb, envelope => 'upsert')",
                   (json.dumps({"url": f"http://127.0.0.1:{rcv.port}/in", "max_records_per_request": 1, "errors.policy": "skip"}),))
        wait_started(db, "dl_w")
        for t in range(6):
            with db.transaction():
                db.execute("INSERT INTO dl_wh SELECT g, CASE WHEN g %% 17 = 0 THEN 'poison' ELSE 'v' || g END "
                           "FROM generate_series(%s::int, %s::int) g", (t * 30 + 1, t * 30 + 30))
            if t == 2:
                kill_worker(db, "dl_w")
        wait_caught_up(db, "dl_w")
        records = rcv.records(path="/in")
        ids = collections.Counter(r["key"]["id"] for r in records)
        assert [k for k, n in ids.items() if n > 1] == [], "a record arrived twice"
        source = dict(db.execute("SELECT id, v FROM dl_wh").fetchall())
        assert set(ids) == {k for k, v in source.items() if v != "poison"}
        got = letters(db, "dl_w")
        assert sorted(k for _, k, _, _ in got) == [k for k in range(17, 181, 17)]
        assert not any(kept for _, _, kept, _ in got), "skip keeps no change"
        assert all("422" in err for _, _, _, err in got)
        assert counts(db, "dl_w") == ("running", 0, len(got))
        # Nothing kept, nothing to retry.
        assert one(db, "SELECT sink.retry_dead_letters('dl_w')") == 0
        assert one(db, "SELECT sink.discard_dead_letters('dl_w')") == len(got)
        db.execute("SELECT sink.drop_sink('dl_w')")
    finally:
        rcv.stop()


def test_a_kafka_record_over_the_size_limit_is_a_dead_letter_and_the_rest_arrives_exactly_once(db, broker):  # noqa: F811
    db.execute("DROP TABLE IF EXISTS dl_k")
    db.execute("CREATE TABLE dl_k (id int PRIMARY KEY, body text)")
    db.execute("INSERT INTO dl_k SELECT g, 'small' || g FROM generate_series(1, 50) g")
    db.execute("UPDATE dl_k SET body = repeat('x', 20000) WHERE id = 25")
    opts = {"brokers": broker, "topic": "k-dl", "topic_config": {"max.message.bytes": "5000"},
            "properties.message.max.bytes": "5000", "errors.policy": "dead_letter"}
    db.execute("SELECT sink.create_sink('k_dl', 'dl_k', 'kafka', %s::jsonb, envelope => 'upsert')", (json.dumps(opts),))
    wait_started(db, "k_dl")
    for t in range(5):
        with db.transaction():
            db.execute("INSERT INTO dl_k SELECT g, CASE WHEN g IN (100, 230) THEN repeat('y', 20000) ELSE 'v' || g END "
                       "FROM generate_series(%s::int, %s::int) g", (51 + t * 50, 100 + t * 50))
        if t == 1:
            kill_worker(db, "k_dl")
    wait_caught_up(db, "k_dl", timeout=180)
    big = {25, 100, 230}
    msgs = read_topic("k-dl")
    ids = collections.Counter(json.loads(k)["id"] for _, k, _, _ in msgs)
    assert [k for k, n in ids.items() if n > 1] == [], "a record arrived twice"
    assert set(ids) == set(range(1, 301)) - big
    got = letters(db, "k_dl")
    assert sorted(k for _, k, _, _ in got) == sorted(big)
    assert all(kept and "MessageSizeTooLarge" in err.replace(" ", "") or "too large" in err.lower() for _, _, kept, err in got), got
    assert counts(db, "k_dl") == ("running", 3, 0)

    # Raised limits: the retried records arrive, once.
    admin = AdminClient({"bootstrap.servers": broker})
    res = ConfigResource("topic", "k-dl", set_config={"max.message.bytes": "100000"})
    for f in admin.alter_configs([res]).values():
        f.result(timeout=30)
    db.execute("SELECT sink.alter_sink('k_dl', '{\"properties.message.max.bytes\": \"100000\"}')")
    time.sleep(1)
    assert one(db, "SELECT sink.retry_dead_letters('k_dl')") == 3
    wait_caught_up(db, "k_dl", timeout=180)
    msgs = read_topic("k-dl")
    ids = collections.Counter(json.loads(k)["id"] for _, k, _, _ in msgs)
    assert [k for k, n in ids.items() if n > 1] == []
    assert set(ids) == set(range(1, 301))
    values = {json.loads(k)["id"]: json.loads(v)["body"] for _, k, v, _ in msgs}
    assert values == dict(db.execute("SELECT id, body FROM dl_k").fetchall())
    assert counts(db, "k_dl") == ("running", 0, 0)
    db.execute("SELECT sink.drop_sink('k_dl')")


async def _sized_stream(name, subjects, max_msg_size):
    import nats
    nc = await nats.connect(f"nats://{SYSTEM}")
    js = nc.jetstream()
    try:
        await js.stream_info(name)
        await js.update_stream(name=name, subjects=subjects, duplicate_window=120, max_msg_size=max_msg_size)
    except Exception:
        await js.add_stream(name=name, subjects=subjects, duplicate_window=120, max_msg_size=max_msg_size)
    await nc.close()


@pytest.mark.usefixtures("nats_servers")
def test_a_jetstream_message_over_the_stream_s_size_limit_is_a_dead_letter(db):
    import nats
    run(_sized_stream("DL", ["pgs.dl"], -1))
    # Start from an empty stream.
    async def purge():
        nc = await nats.connect(f"nats://{SYSTEM}")
        await nc.jetstream().purge_stream("DL")
        await nc.close()
    run(purge())
    run(_sized_stream("DL", ["pgs.dl"], 2000))
    db.execute("DROP TABLE IF EXISTS dl_n")
    db.execute("CREATE TABLE dl_n (id int PRIMARY KEY, v text)")
    db.execute("SELECT sink.create_sink('dl_js', 'dl_n', 'nats', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"server_url": SYSTEM, "subject": "pgs.dl", "jetstream": True, "errors.policy": "dead_letter"}),))
    wait_started(db, "dl_js")
    for t in range(4):
        with db.transaction():
            db.execute("INSERT INTO dl_n SELECT g, CASE WHEN g IN (13, 77) THEN repeat('z', 5000) ELSE 'v' || g END "
                       "FROM generate_series(%s::int, %s::int) g", (t * 25 + 1, t * 25 + 25))
        if t == 1:
            kill_worker(db, "dl_js")
    wait_caught_up(db, "dl_js")
    msgs = run(_stream_messages("DL", "pgs.dl"))
    ids = collections.Counter(json.loads(d)["id"] for _, d, _ in msgs)
    assert [k for k, n in ids.items() if n > 1] == [], "a message was stored twice"
    assert set(ids) == set(range(1, 101)) - {13, 77}
    got = letters(db, "dl_js")
    assert sorted(k for _, k, _, _ in got) == [13, 77] and all(kept for _, _, kept, _ in got), got
    # A larger limit: retried, they are stored once.
    run(_sized_stream("DL", ["pgs.dl"], -1))
    assert one(db, "SELECT sink.retry_dead_letters('dl_js')") == 2
    wait_caught_up(db, "dl_js")
    msgs = run(_stream_messages("DL", "pgs.dl"))
    ids = collections.Counter(json.loads(d)["id"] for _, d, _ in msgs)
    assert [k for k, n in ids.items() if n > 1] == [] and set(ids) == set(range(1, 101))
    assert counts(db, "dl_js") == ("running", 0, 0)
    db.execute("SELECT sink.drop_sink('dl_js')")


@pytest.fixture(autouse=True)
def _drop_leftovers(server):
    yield
    from conftest import reconnect
    conn = reconnect()
    try:
        for (name,) in conn.execute("SELECT name FROM sink.sinks WHERE name IN ('dl_t', 'dl_w', 'k_dl', 'dl_bad', 'dl_js')").fetchall():
            conn.execute("SELECT sink.drop_sink(%s, if_exists => true)", (name,))
    finally:
        conn.close()
