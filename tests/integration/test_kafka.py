"""Kafka connector against Apache Kafka 4 (KRaft, started by scripts/kafka.sh and
stopped at the end), read back by an independent consumer (confluent-kafka,
isolation.level=read_committed). Authentication and TLS are in test_kafka_security.py."""
import collections
import json
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import ROOT, cluster, connect, fresh_one, one, sqlstate_of, wait_caught_up, wait_for, wait_started

PORT = int(os.environ.get("PGSINK_TEST_KAFKA_PORT", "19093"))
BROKERS = f"127.0.0.1:{PORT}"
KENV = dict(os.environ, KAFKA_PORT=str(PORT), KAFKA_DATA="/tmp/pg_sink_test_kafka")


def kafka(*args):
    subprocess.run([os.path.join(ROOT, "scripts", "kafka.sh"), *args], env=KENV, check=True)


@pytest.fixture(scope="module")
def broker(server):
    kafka("start")
    yield BROKERS
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        kafka("stop")


def read_topic(topic, timeout=30):
    """Every committed message of every partition: (partition, key, value, headers)."""
    admin = AdminClient({"bootstrap.servers": BROKERS})
    md = admin.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"test-{time.time()}", "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": True})
    out = []
    try:
        ends = {}
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done = {p for p in parts if ends[p] == 0}
        deadline = time.time() + timeout
        while len(done) < len(parts) and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # partition EOF
                    done.add(m.partition())
                continue
            hdrs = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
            out.append((m.partition(), m.key(), m.value(), hdrs))
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
        assert len(done) == len(parts), f"read of {topic} timed out after {timeout}s with {len(out)} messages"
    finally:
        c.close()
    return out


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def test_upsert_json_with_keys_tombstones_headers_and_partitioning(db, broker):
    db.execute("DROP TABLE IF EXISTS k_orders")
    db.execute("CREATE TABLE k_orders (id int PRIMARY KEY, customer text, amount numeric(10,2))")
    db.execute("INSERT INTO k_orders VALUES (1, 'ann', 10.00), (2, 'bob', 20.00)")
    db.execute(
        "SELECT sink.create_sink('k_upsert', 'k_orders', 'kafka', %s::jsonb, envelope => 'upsert')",
        (json.dumps({"brokers": broker, "topic": "k-orders", "topic_partition_count": 3, "topic_config": {"cleanup.policy": "compact"}}),),
    )
    wait_started(db, "k_upsert")
    db.execute("INSERT INTO k_orders VALUES (3, 'cy', 30.00)")
    db.execute("UPDATE k_orders SET amount = 11 WHERE id = 1")
    db.execute("UPDATE k_orders SET id = 4 WHERE id = 2")
    db.execute("DELETE FROM k_orders WHERE id = 3")
    wait_caught_up(db, "k_upsert")
    msgs = read_topic("k-orders")
    admin = AdminClient({"bootstrap.servers": broker})
    assert len(admin.list_topics("k-orders", timeout=10).topics["k-orders"].partitions) == 3
    # TOPIC CONFIG applied to the created topic; the progress topic is compacted with no retention.
    from confluent_kafka.admin import ConfigResource
    def config(topic):
        res = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        return {k: v.value for k, v in list(res.values())[0].result(10).items()}
    assert config("k-orders")["cleanup.policy"] == "compact"
    progress = config("_pg_sink-progress-postgres")
    assert progress["cleanup.policy"] == "compact" and progress["retention.ms"] == "-1" and progress["retention.bytes"] == "-1"
    assert len(admin.list_topics("_pg_sink-progress-postgres", timeout=10).topics["_pg_sink-progress-postgres"].partitions) == 1
    state = {}
    for part, key, value, headers in msgs:
        k = json.loads(key)
        # Default partitioning: seahash of the encoded key modulo the partition count.
        assert part == int(one(db, "SELECT sink.seahash(%s::text) %% 3", key.decode()))
        assert set(headers) >= {"pg_sink-lsn", "pg_sink-timestamp", "pg_sink-op"}
        if value is None:
            state.pop(k["id"], None)
        else:
            state[k["id"]] = json.loads(value)
    src = {r[0]: {"id": r[0], "customer": r[1], "amount": str(r[2])} for r in db.execute("SELECT id, customer, amount::text FROM k_orders").fetchall()}
    assert state == src
    ops = collections.Counter(h["pg_sink-op"] for _, _, _, h in msgs)
    assert ops == {"read": 2, "insert": 1, "update": 2, "delete": 2}, ops
    tombstones = [json.loads(k)["id"] for _, k, v, _ in msgs if v is None]
    assert sorted(tombstones) == [2, 3]
    db.execute("SELECT sink.drop_sink('k_upsert')")
    assert "k-orders" in admin.list_topics(timeout=10).topics, "drop leaves the topic alone"


def test_debezium_and_append_only_envelopes(db, broker):
    db.execute("DROP TABLE IF EXISTS k_events")
    db.execute("CREATE TABLE k_events (id int PRIMARY KEY, body text)")
    opts = lambda t: json.dumps({"brokers": broker, "topic": t})
    db.execute("SELECT sink.create_sink('k_dbz', 'k_events', 'kafka', %s::jsonb, envelope => 'debezium', snapshot => false)", (opts("k-dbz"),))
    db.execute("SELECT sink.create_sink('k_app', 'k_events', 'kafka', %s::jsonb, envelope => 'append-only', snapshot => false)", (opts("k-app"),))
    # At-least-once mode: an idempotent producer, no transactions.
    alo = json.dumps({"brokers": broker, "topic": "k-alo", "exactly_once": False})
    db.execute("SELECT sink.create_sink('k_alo', 'k_events', 'kafka', %s::jsonb, envelope => 'upsert', snapshot => false)", (alo,))
    wait_started(db, "k_alo")
    wait_started(db, "k_dbz")
    wait_started(db, "k_app")
    db.execute("INSERT INTO k_events SELECT g, 'b' || g FROM generate_series(1, 50) g")
    wait_caught_up(db, "k_dbz")
    wait_caught_up(db, "k_app")
    wait_caught_up(db, "k_alo")
    assert sorted(json.loads(k)["id"] for _, k, _, _ in read_topic("k-alo")) == list(range(1, 51))
    db.execute("SELECT sink.drop_sink('k_alo')")
    app = read_topic("k-app")
    assert sorted(json.loads(v)["id"] for _, _, v, _ in app) == list(range(1, 51))
    assert all(k is None for _, k, _, _ in app) and all(p == 0 for p, _, _, _ in app), "keyless records go to partition 0"
    db.execute("UPDATE k_events SET body = 'x' WHERE id = 1")
    db.execute("DELETE FROM k_events WHERE id = 2")
    wait_caught_up(db, "k_dbz")
    dbz = [json.loads(v) for _, _, v, _ in read_topic("k-dbz")]
    assert [e["op"] for e in dbz].count("c") == 50
    upd = [e for e in dbz if e["op"] == "u"][0]
    assert upd["after"] == {"id": 1, "body": "x"} and upd["source"]["table"] == "k_events"
    dele = [e for e in dbz if e["op"] == "d"][0]
    assert dele["before"]["id"] == 2 and dele["after"] is None
    # The append-only sink stops on the update, with the reason in its status.
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'k_app' AND state = 'failed'").fetchone(), what="append-only sink to fail")
    assert "append-only sink received an UPDATE" in row[1]
    db.execute("SELECT sink.drop_sink('k_dbz')")
    db.execute("SELECT sink.drop_sink('k_app')")


def test_transaction_metadata_goes_to_the_transaction_topic_exactly_once(db, broker):
    """Debezium's provide.transaction.metadata: each transaction's BEGIN and END on
    <topic>.transaction (one partition), in the same Kafka transaction as its
    events, so a batch Kafka already has is not sent again after a failure on the
    Postgres side: no BEGIN or END twice, and each END counts its events."""
    db.execute("DROP TABLE IF EXISTS k_txm")
    db.execute("CREATE TABLE k_txm (id int PRIMARY KEY, v int)")
    opts = {"brokers": broker, "topic": "k-txm", "debezium.compat": True, "provide.transaction.metadata": True}
    db.execute("SELECT sink.create_sink('k_txm', 'k_txm', 'kafka', %s::jsonb, envelope => 'debezium', snapshot => false)", (json.dumps(opts),))
    wait_started(db, "k_txm")
    db.execute("SELECT sink.pause_sink('k_txm')")
    db.execute("ALTER SYSTEM SET pg_sink.fail_after_deliver = on")
    db.execute("SELECT pg_reload_conf()")
    db.execute("INSERT INTO k_txm SELECT g, 0 FROM generate_series(1, 5) g")
    db.execute("UPDATE k_txm SET v = 1 WHERE id = 1")
    with db.transaction():
        db.execute("DELETE FROM k_txm WHERE id IN (2, 3)")
        db.execute("INSERT INTO k_txm VALUES (6, 6)")
    db.execute("SELECT sink.resume_sink('k_txm')")
    wait_for(lambda: one(db, "SELECT errors FROM sink.status WHERE name = 'k_txm'") >= 2, what="failed attempts")
    db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
    db.execute("SELECT pg_reload_conf()")
    wait_caught_up(db, "k_txm")
    events = [(json.loads(k), json.loads(v)) for _, k, v, _ in read_topic("k-txm") if v is not None]
    tx = [(p, json.loads(k), json.loads(v)) for p, k, v, _ in read_topic("k-txm.transaction")]
    assert {p for p, _, _ in tx} == {0}
    assert [v["status"] for _, _, v in tx] == ["BEGIN", "END"] * 3, "one BEGIN and one END per transaction, none twice"
    assert all(k == {"id": v["id"]} for _, k, v in tx)
    by_xid = collections.defaultdict(list)
    for _, e in events:
        by_xid[e["source"]["txId"]].append(e)
    for (_, _, begin), (_, _, end) in zip(tx[::2], tx[1::2]):
        xid = int(begin["id"].split(":")[0])
        mine = by_xid.pop(xid)
        assert end["id"].startswith(f"{xid}:") and end["event_count"] == len(mine)
        assert end["data_collections"] == [{"data_collection": "public.k_txm", "event_count": len(mine)}]
        assert [e["transaction"]["total_order"] for e in mine] == list(range(1, len(mine) + 1))
        assert all(e["transaction"]["id"] == f"{xid}:{e['source']['lsn']}" for e in mine)
        assert begin["ts_ms"] == end["ts_ms"] == mine[0]["source"]["ts_ms"]
    assert by_xid == {}, "every event's transaction was bracketed"
    assert len(events) == 5 + 1 + 3, "5 creates, 1 update, 2 deletes and a create (tombstones aside)"
    db.execute("SELECT sink.drop_sink('k_txm')")


def test_bad_kafka_options_are_refused(db, broker):
    db.execute("DROP TABLE IF EXISTS k_bad")
    db.execute("CREATE TABLE k_bad (id int PRIMARY KEY)")
    cases = [
        ({"brokers": broker}, "22023", "requires option \"topic\""),
        ({"topic": "t"}, "22023", "requires option \"brokers\""),
        ({"brokers": broker, "topic": "bad topic"}, "22023", "invalid Kafka topic name"),
        ({"brokers": broker, "topic": "t", "compression_type": "brotli"}, "22023", "COMPRESSION TYPE"),
        ({"brokers": broker, "topic": "t", "topic_partition_count": 0}, "22023", "topic_partition_count"),
        ({"brokers": broker, "topic": "t", "sasl_mechanisms": "GSSAPI"}, "22023", "SASL mechanism"),
        ({"brokers": "127.0.0.1:1", "topic": "t"}, "08000", "could not reach Kafka brokers"),
    ]
    for opts, state, msg in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('k_bad', 'k_bad', 'kafka', %s::jsonb)", json.dumps(opts))
        assert st == state and msg in m, (opts, st, m)
        assert detail or hint
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'k_bad'") == 0
    # An existing progress topic must follow the guidance (1 partition, no retention).
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic("bad-progress", 3, 1)])["bad-progress"].result(10)
    st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('k_bad', 'k_bad', 'kafka', %s::jsonb)", json.dumps({"brokers": broker, "topic": "t", "progress_topic": "bad-progress"}))
    assert st == "22000" and "has 3 partitions" in m and "1 partition" in detail, (st, m)
    # Connections are validated too, and reusable with secrets.
    st, m, _, hint = sqlstate_of(db, "SELECT sink.create_connection('kc_bad', 'kafka', %s::jsonb)", json.dumps({"brokers": "127.0.0.1:1"}))
    assert st == "08000" and "could not reach Kafka brokers" in m and hint
    db.execute("SELECT sink.create_connection('kc', 'kafka', %s::jsonb)", (json.dumps({"brokers": broker}),))
    db.execute("SELECT sink.create_sink('k_conn', 'k_bad', connection => 'kc', options => '{\"topic\": \"k-conn\"}', envelope => 'upsert')")
    db.execute("INSERT INTO k_bad VALUES (7)")
    wait_caught_up(db, "k_conn")
    assert [json.loads(k) for _, k, _, _ in read_topic("k-conn")] == [{"id": 7}]
    db.execute("SELECT sink.drop_sink('k_conn')")
    db.execute("SELECT sink.drop_connection('kc')")
    db.execute("DELETE FROM k_bad")
    # validate => false creates the sink anyway; the worker then retries with the error in status.
    db.execute("SELECT sink.create_sink('k_bad', 'k_bad', 'kafka', %s::jsonb)", (json.dumps({"brokers": "127.0.0.1:1", "topic": "t", "validate": False, "timeout_ms": 2000}),))
    db.execute("INSERT INTO k_bad VALUES (1)")
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'k_bad' AND last_error IS NOT NULL").fetchone(), timeout=60, what="a transient error in status")
    assert row[0] == "running" and "Kafka" in row[1]
    db.execute("SELECT sink.drop_sink('k_bad')")


def test_exactly_once_across_kafka_commit_then_catalog_failure_and_crashes(db, broker):
    db.execute("DROP TABLE IF EXISTS k_eo")
    db.execute("CREATE TABLE k_eo (id int PRIMARY KEY, v int)")
    db.execute("SELECT sink.create_sink('k_eo', 'k_eo', 'kafka', %s::jsonb, envelope => 'debezium', snapshot => false)", (json.dumps({"brokers": broker, "topic": "k-eo"}),))
    wait_started(db, "k_eo")
    # 1. Kafka commits, then the Postgres side fails before recording progress: the
    #    retried batch must be skipped thanks to the progress topic.
    # Paused while the setting changes, so the worker that delivers is a new one
    # that starts with it (a running worker could stream the rows first).
    db.execute("SELECT sink.pause_sink('k_eo')")
    db.execute("ALTER SYSTEM SET pg_sink.fail_after_deliver = on")
    db.execute("SELECT pg_reload_conf()")
    db.execute("INSERT INTO k_eo SELECT g, 0 FROM generate_series(1, 100) g")
    db.execute("SELECT sink.resume_sink('k_eo')")
    wait_for(lambda: one(db, "SELECT errors FROM sink.status WHERE name = 'k_eo'") >= 2, what="failed attempts")
    db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
    db.execute("SELECT pg_reload_conf()")
    wait_caught_up(db, "k_eo")
    first = read_topic("k-eo")
    assert len(first) == 100, f"{len(first)} records after retries of a batch Kafka already had"
    # 2. Crashes mid-stream: SIGKILL the worker, then an immediate Postgres restart.
    stop = threading.Event()

    def writer():
        conn = None
        i = 0
        while i < 200:
            try:
                conn = conn or connect()
                conn.execute("UPDATE k_eo SET v = %s::int WHERE id = %s::int", (i, 1 + i % 100))
                i += 1
            except Exception:
                conn = None
                time.sleep(0.2)
        stop.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_for(lambda: one(db, "SELECT rows_delivered FROM sink.status WHERE name = 'k_eo'") > 120, what="streaming")
    pid = one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_sink sink k_eo'")
    os.kill(pid, signal.SIGKILL)
    db.close()
    wait_for(lambda: (fresh_one("SELECT rows_delivered FROM sink.status WHERE name = 'k_eo'") or 0) > 200, timeout=60, what="more streaming")
    cluster("kill")
    cluster("start")
    db = wait_for(lambda: _try(connect), timeout=60, what="server back")
    t.join(timeout=120)
    assert stop.is_set()
    wait_caught_up(db, "k_eo", timeout=120)
    events = [json.loads(v) for _, _, v, _ in read_topic("k-eo")]
    seen = collections.Counter((e["source"]["lsn"], (e["after"] or e["before"])["id"], e["op"]) for e in events)
    assert [k for k, n in seen.items() if n > 1] == [], "duplicates in a read_committed read"
    assert len(events) == 100 + 200, len(events)
    final = {e["after"]["id"]: e["after"]["v"] for e in events}
    assert final == dict(db.execute("SELECT id, v FROM k_eo").fetchall())
    db.execute("SELECT sink.drop_sink('k_eo')")
    db.close()


def _try(fn):
    try:
        return fn()
    except Exception:
        return None


def test_headers_partition_by_compression_and_hash_functions(db, broker):
    # murmur2 equals the Java client's for Kafka's published reference vectors.
    for text, java in [("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
                       ("a-little-bit-longer-string", -1486304829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), ("abc", 479470107)]:
        assert one(db, "SELECT sink.kafka_murmur2(%s::text)", text) == java & 0x7FFFFFFF
        assert one(db, "SELECT sink.kafka_murmur2(convert_to(%s, 'UTF8'))", text) == java & 0x7FFFFFFF
    assert one(db, "SELECT sink.crc32('123456789'::text)") == 0xCBF43926
    assert one(db, "SELECT sink.seahash('to be or not to be'::text)") == 1988685042348123509

    db.execute("DROP TABLE IF EXISTS k_cust")
    db.execute("CREATE TABLE k_cust (customer_id int, order_id int, note text, hdrs jsonb, PRIMARY KEY (customer_id, order_id))")
    opts = {"brokers": broker, "topic": "k-cust", "topic_partition_count": 4, "compression_type": "gzip",
            "partition_by": "sink.seahash(customer_id::text)", "headers": "hdrs"}
    db.execute("SELECT sink.create_sink('k_cust', 'k_cust', 'kafka', %s::jsonb, envelope => 'upsert', snapshot => false)", (json.dumps(opts),))
    wait_started(db, "k_cust")
    db.execute("""INSERT INTO k_cust SELECT c, o, 'n', jsonb_build_object('trace', 't' || o, 'pg_sink-lsn', 'spoofed', 'n', o)
                  FROM generate_series(1, 10) c, generate_series(1, 5) o""")
    db.execute("UPDATE k_cust SET hdrs = NULL WHERE customer_id = 1 AND order_id = 1")
    wait_caught_up(db, "k_cust")
    msgs = read_topic("k-cust")
    assert len(msgs) == 51
    for part, key, value, headers in msgs:
        k = json.loads(key)
        # PARTITION BY: every order of a customer lands where seahash(customer_id) says.
        assert part == int(one(db, "SELECT sink.seahash(%s::text) %% 4", str(k["customer_id"])))
        v = json.loads(value)
        if v["hdrs"] is None:
            assert set(headers) == {"pg_sink-lsn", "pg_sink-timestamp", "pg_sink-op"}
        else:
            assert headers["trace"] == f"t{k['order_id']}" and headers["n"] == str(k["order_id"])
            assert headers["pg_sink-lsn"] != "spoofed", "reserved header keys are ignored"
    bad = [
        ({"brokers": broker, "topic": "x", "headers": "note"}, "42804", "has type text"),
        ({"brokers": broker, "topic": "x", "headers": "nope"}, "42703", "does not exist"),
        ({"brokers": broker, "topic": "x", "partition_by": "nope + 1"}, "42703", "does not exist"),
        ({"brokers": broker, "topic": "x", "partition_by": "point(customer_id, 1)"}, "42846", "cannot cast"),
    ]
    for o, state, msg in bad:
        st, m, _, _ = sqlstate_of(db, "SELECT sink.create_sink('k_bad2', 'k_cust', 'kafka', %s::jsonb, envelope => 'upsert')", json.dumps(o))
        assert st == state and msg in m, (o, st, m)
    st, m, _, hint = sqlstate_of(db, "SELECT sink.create_sink('k_bad2', 'k_cust', 'kafka', %s::jsonb, envelope => 'debezium')", json.dumps({"brokers": broker, "topic": "x", "headers": "hdrs"}))
    assert st == "22023" and "HEADERS requires the upsert envelope" in m
    db.execute("SELECT sink.drop_sink('k_cust')")


def test_message_too_large_stops_the_sink_naming_the_key(db, broker):
    db.execute("DROP TABLE IF EXISTS k_big")
    db.execute("CREATE TABLE k_big (id int PRIMARY KEY, body text)")
    db.execute("SELECT sink.create_sink('k_big', 'k_big', 'kafka', %s::jsonb, envelope => 'upsert', snapshot => false)",
               (json.dumps({"brokers": broker, "topic": "k-big", "topic_config": {"max.message.bytes": "5000"}}),))
    wait_started(db, "k_big")
    db.execute("INSERT INTO k_big VALUES (1, 'small')")
    wait_caught_up(db, "k_big")
    db.execute("INSERT INTO k_big VALUES (42, repeat('x', 20000))")
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'k_big' AND state = 'failed'").fetchone(), timeout=90, what="the sink to stop")
    assert "MessageSizeTooLarge" in row[1] or "too large" in row[1].lower(), row[1]
    assert '{"id":42}' in row[1]
    assert len(read_topic("k-big")) == 1, "nothing of the failed batch is visible"
    db.execute("SELECT sink.drop_sink('k_big')")


# Set when a ledger test ends: a writer of a test that failed stops instead of
# writing into the next test's ledger.
_LEDGER_CLOSED = threading.Event()


def _ledger_writer(total_changes, done, progress, pause=0.0, until=None):
    """Writes ledger rows (each id once, even when a commit's ack is lost) and bumps
    per-key counters (each bump a new change), reconnecting through crashes, until
    it has written total_changes and (if given) the event `until` is set."""
    conn = None
    i = 0
    changes = 0
    while (changes < total_changes or (until is not None and not until.is_set())) and not _LEDGER_CLOSED.is_set():
        try:
            conn = conn or connect()
            with conn.transaction():
                conn.execute("INSERT INTO k_ledger SELECT g, %s::int FROM generate_series(%s::int, %s::int) g ON CONFLICT (id) DO NOTHING", (i, i * 100, i * 100 + 99))
                conn.execute("UPDATE k_counter SET seq = seq + 1 WHERE k %% 20 = %s::int %% 20", (i,))
            i += 1
            changes += 100 + 5
            progress[0] = changes
            time.sleep(pause)
        except Exception:
            conn = None
            time.sleep(0.3)
    done.set()


def _check_ledger(db, topic):
    events = [json.loads(v) for _, _, v, _ in read_topic(topic, timeout=600)]
    ledger = [e for e in events if e["source"]["table"] == "k_ledger"]
    ids = collections.Counter(e["after"]["id"] for e in ledger if e["op"] in ("c", "r"))
    assert [i for i, n in ids.items() if n > 1] == [], "a ledger row arrived twice"
    assert set(ids) == {r[0] for r in db.execute("SELECT id FROM k_ledger").fetchall()}, "ledger rows missing"
    per_key = collections.defaultdict(list)
    for e in events:
        if e["source"]["table"] == "k_counter" and e["op"] in ("u", "c", "r"):
            per_key[e["after"]["k"]].append(e["after"]["seq"])
    final = dict(db.execute("SELECT k, seq FROM k_counter").fetchall())
    for k, seqs in per_key.items():
        # Per-key commit order, every bump exactly once: 0 (snapshot), 1, 2, 3, ...
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"key {k}: {seqs[:10]}..."
        assert seqs[-1] == final[k]
    return len(events)


@pytest.fixture
def ledger(db):
    _LEDGER_CLOSED.clear()
    db.execute("DROP TABLE IF EXISTS k_ledger, k_counter")
    db.execute("CREATE TABLE k_ledger (id int PRIMARY KEY, txn int)")
    db.execute("CREATE TABLE k_counter (k int PRIMARY KEY, seq int NOT NULL)")
    db.execute("INSERT INTO k_counter SELECT g, 0 FROM generate_series(0, 99) g")
    yield
    _LEDGER_CLOSED.set()
    # A failed test leaves its sinks behind: drop them, so they do not write into
    # the next test's broker.
    try:
        conn = connect()
        for (name,) in conn.execute("SELECT name FROM sink.sinks WHERE name LIKE 'k\\_%%'").fetchall():
            conn.execute("SELECT sink.drop_sink(%s)", (name,))
        conn.close()
    except psycopg.Error:
        pass


FAULTS = ("worker", "postgres", "broker-kill", "broker-stop", "zombie")


def _zombie(sink):
    """A zombie of the sink's producer: a producer with the sink's transactional id
    opens a transaction with junk in it; then the sink's worker is SIGKILLed. The new
    worker's producer must fence the zombie (aborting its transaction) and carry on;
    the zombie's own commit, tried at the end, must fail."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": BROKERS, "transactional.id": f"pg_sink-postgres-{sink}", "transaction.timeout.ms": 600000})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce("k-chaos", key=b"zombie", value=b'{"zombie": true}')
    try:
        p.flush(30)
    except Exception as e:  # noqa: BLE001
        # The sink's producer may fence the zombie before its flush is done (the
        # zombie's own init fenced the sink's, which starts again at once): the
        # outcome this fault is about, reached early.
        assert "FENCED" in str(e).upper(), e
    pid = fresh_one("SELECT pid FROM pg_stat_activity WHERE application_name = %s", f"pg_sink sink {sink}")
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return p


def test_exactly_once_through_twenty_faults(db, broker, ledger):
    """200k changes through 20 faults (4 of each kind, in a seeded random order): the
    worker SIGKILLed, Postgres crashed and restarted at once, the broker SIGKILLed and
    restarted, the broker stopped and restarted, a zombie producer with the sink's
    transactional id. The read_committed read must have every change exactly once."""
    import random
    kafka("start")  # a fresh broker: the read at the end covers only this test
    rnd = random.Random(7)
    faults = list(FAULTS) * 4
    rnd.shuffle(faults)
    db.execute("SELECT sink.create_sink('k_chaos', 'SELECT * FROM k_ledger', 'kafka', %s::jsonb, envelope => 'debezium')", (json.dumps({"brokers": broker, "topic": "k-chaos"}),))
    db.execute("SELECT sink.create_sink('k_chaos2', 'k_counter', 'kafka', %s::jsonb, envelope => 'debezium')", (json.dumps({"brokers": broker, "topic": "k-chaos"}),))
    wait_started(db, "k_chaos")
    wait_started(db, "k_chaos2")
    db.close()
    done, progress, faults_done = threading.Event(), [0], threading.Event()
    # Paced, and writing until the last fault, so every fault hits a stream in flight.
    t = threading.Thread(target=_ledger_writer, args=(200_000, done, progress, 0.05, faults_done), daemon=True)
    t.start()
    zombies, log = [], []
    for i, fault in enumerate(faults):
        time.sleep(rnd.uniform(0.5, 2.5))
        log.append((round(time.time()), fault, progress[0]))
        if fault == "worker":
            p = fresh_one("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink k_chaos%%' ORDER BY random() LIMIT 1")
            if p:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        elif fault == "postgres":
            cluster("kill")
            cluster("start")
        elif fault == "broker-kill":
            kafka("kill")
            time.sleep(rnd.uniform(0, 3))
            kafka("restart")
        elif fault == "broker-stop":
            kafka("stop")
            time.sleep(rnd.uniform(0, 3))
            kafka("restart")
        else:
            zombies.append(_zombie(rnd.choice(["k_chaos", "k_chaos2"])))
    faults_done.set()
    print("faults (time, kind, changes written):", log)
    t.join(timeout=900)
    assert done.is_set() and progress[0] >= 200_000
    # Back after the last fault: both workers running again. A worker SIGKILLed
    # just before the writer finished makes the postmaster reinitialise a moment
    # later, which can cut a connection opened in between: reconnect and wait again.
    deadline = time.time() + 600
    while True:
        try:
            wait_for(lambda: fresh_one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink k_chaos%%'") == 2, timeout=60, what="workers back")
            db = wait_for(lambda: _try(connect), timeout=60, what="server back")
            wait_caught_up(db, "k_chaos", timeout=300)
            wait_caught_up(db, "k_chaos2", timeout=300)
            break
        except psycopg.OperationalError:
            assert time.time() < deadline, "the server kept restarting"
            time.sleep(1)
    for z in zombies:
        with pytest.raises(Exception):
            z.commit_transaction(30)  # fenced: its epoch is older than the sink's
    msgs = read_topic("k-chaos", timeout=600)
    assert [m for m in msgs if m[1] == b"zombie"] == [], "a fenced zombie's transaction became visible"
    n = _check_ledger(db, "k-chaos")
    assert n >= 200_000
    db.execute("SELECT sink.drop_sink('k_chaos')")
    db.execute("SELECT sink.drop_sink('k_chaos2')")


def test_broker_down_for_30_seconds_loses_and_duplicates_nothing(db, broker, ledger):
    kafka("start")  # a fresh broker: the read at the end covers only this test
    db.execute("SELECT sink.create_sink('k_down', 'k_ledger', 'kafka', %s::jsonb, envelope => 'debezium')", (json.dumps({"brokers": broker, "topic": "k-down", "timeout_ms": 5000}),))
    db.execute("SELECT sink.create_sink('k_down2', 'k_counter', 'kafka', %s::jsonb, envelope => 'debezium')", (json.dumps({"brokers": broker, "topic": "k-down", "timeout_ms": 5000}),))
    wait_started(db, "k_down")
    wait_started(db, "k_down2")
    done, progress = threading.Event(), [0]
    # About 60 s of writes, so they go on while the broker is down.
    t = threading.Thread(target=_ledger_writer, args=(60_000, done, progress, 0.1), daemon=True)
    t.start()
    wait_for(lambda: progress[0] > 5_000, what="writes")
    # Stopped (SIGTERM, a clean shutdown) for 30 s, then started on the same data.
    kafka("stop")
    time.sleep(30)
    assert not done.is_set(), "the writer should still be writing"
    row = db.execute("SELECT state, last_error FROM sink.status WHERE name = 'k_down'").fetchone()
    assert row[0] == "running" and row[1] and "Kafka" in row[1], row
    kafka("restart")
    t.join(timeout=300)
    assert done.is_set()
    wait_caught_up(db, "k_down", timeout=300)
    wait_caught_up(db, "k_down2", timeout=300)
    _check_ledger(db, "k-down")
    assert one(db, "SELECT last_error FROM sink.status WHERE name = 'k_down'") is None
    db.execute("SELECT sink.drop_sink('k_down')")
    db.execute("SELECT sink.drop_sink('k_down2')")
