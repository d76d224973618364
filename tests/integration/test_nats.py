"""NATS connector against real nats-server processes: the machine's server on
127.0.0.1:4222 (JetStream enabled) and, for authentication, servers started by
scripts/nats.sh. Messages are read back with the independent nats-py client."""
import asyncio
import json
import os
import signal
import subprocess
import time

import nats
import pytest

from conftest import ROOT, fresh_one, one, sqlstate_of, wait_caught_up, wait_for, wait_started

SYSTEM = "127.0.0.1:4222"


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


async def _stream(name, subjects):
    nc = await nats.connect(f"nats://{SYSTEM}")
    js = nc.jetstream()
    try:
        await js.delete_stream(name)
    except Exception:
        pass
    await js.add_stream(name=name, subjects=subjects, duplicate_window=120)
    await nc.close()


async def _stream_messages(name, subject):
    nc = await nats.connect(f"nats://{SYSTEM}")
    js = nc.jetstream()
    info = await js.stream_info(name)
    n = info.state.messages
    out = []
    if n:
        sub = await js.pull_subscribe(subject, durable=None, stream=name)
        while len(out) < n:
            msgs = await sub.fetch(min(1000, n - len(out)), timeout=10)
            for m in msgs:
                out.append((m.subject, m.data, dict(m.headers or {})))
                await m.ack()
    await nc.close()
    return out


@pytest.fixture
def table(db):
    db.execute("DROP TABLE IF EXISTS n_items")
    db.execute("CREATE TABLE n_items (id int PRIMARY KEY, v text)")
    yield


def test_core_nats_at_least_once_with_subject_templates(db, table):
    received = []

    async def listen():
        nc = await nats.connect(f"nats://{SYSTEM}")

        async def cb(msg):
            received.append((msg.subject, json.loads(msg.data), dict(msg.headers or {})))

        await nc.subscribe("pgs.core.>", cb=cb)
        await nc.flush()
        return nc

    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(listen())
    db.execute("SELECT sink.create_sink('n_core', 'n_items', 'nats', %s::jsonb, envelope => 'debezium', snapshot => false)",
               (json.dumps({"server_url": SYSTEM, "subject": "pgs.core.{schema}.{table}", "connect_mode": "plain"}),))
    wait_started(db, "n_core")
    db.execute("INSERT INTO n_items SELECT g, 'v' || g FROM generate_series(1, 200) g")
    db.execute("UPDATE n_items SET v = 'x' WHERE id = 1")
    wait_caught_up(db, "n_core")
    deadline = time.time() + 10
    while len(received) < 201 and time.time() < deadline:
        loop.run_until_complete(asyncio.sleep(0.1))
    loop.run_until_complete(nc.close())
    assert len(received) == 201
    assert {s for s, _, _ in received} == {"pgs.core.public.n_items"}
    assert received[-1][1]["op"] == "u" and received[-1][1]["after"] == {"id": 1, "v": "x"}
    assert set(received[0][2]) >= {"pg_sink-lsn", "pg_sink-timestamp", "pg_sink-op"}
    db.execute("SELECT sink.drop_sink('n_core')")


def test_jetstream_suppresses_redeliveries_after_failures_and_a_kill(db, table):
    run(_stream("PGSINK", ["pgs.js.>"]))
    db.execute("SELECT sink.create_sink('n_js', 'n_items', 'nats', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"server_url": SYSTEM, "subject": "pgs.js.items", "jetstream": True}),))
    wait_started(db, "n_js")
    # Deliver, then fail before recording progress: the retries publish the same
    # Nats-Msg-Ids, which the stream drops.
    db.execute("ALTER SYSTEM SET pg_sink.fail_after_deliver = on")
    db.execute("SELECT pg_reload_conf()")
    db.execute("INSERT INTO n_items SELECT g, 'a' FROM generate_series(1, 500) g")
    wait_for(lambda: one(db, "SELECT errors FROM sink.status WHERE name = 'n_js'") >= 2, what="failed attempts")
    db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
    db.execute("SELECT pg_reload_conf()")
    wait_caught_up(db, "n_js")
    # Then a SIGKILL of the worker while changes stream.
    for i in range(20):
        db.execute("UPDATE n_items SET v = %s WHERE id %% 20 = %s", (f"b{i}", i))
        if i == 10:
            pid = one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_sink sink n_js'")
            if pid:
                os.kill(pid, signal.SIGKILL)
                db.close()
                wait_for(lambda: fresh_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_sink sink n_js'") == 1, timeout=60, what="worker back")
                from conftest import connect
                db = connect()
    wait_caught_up(db, "n_js")
    msgs = run(_stream_messages("PGSINK", "pgs.js.items"))
    ids = [m[2].get("Nats-Msg-Id") for m in msgs]
    assert len(ids) == len(set(ids)), "a duplicate reached the stream"
    assert len(msgs) == 500 + 20 * 25, len(msgs)
    state = {}
    for _, data, _ in msgs:
        v = json.loads(data)
        state[v["id"]] = v["v"]
    assert state == dict(db.execute("SELECT id, v FROM n_items").fetchall())
    db.execute("SELECT sink.drop_sink('n_js')")


def test_bad_nats_options(db, table):
    cases = [
        ({"subject": "x"}, "22023", "requires option \"server_url\""),
        ({"server_url": SYSTEM}, "22023", "requires option \"subject\""),
        ({"server_url": SYSTEM, "subject": "a b"}, "22023", "invalid NATS subject"),
        ({"server_url": "u:p@" + SYSTEM, "subject": "x"}, "22023", "contains credentials"),
        ({"server_url": SYSTEM, "subject": "x", "connect_mode": "user_and_password", "username": "u"}, "22023", "requires username and password"),
        ({"server_url": SYSTEM, "subject": "x", "connect_mode": "credential", "jwt": "j"}, "22023", "requires jwt and nkey"),
        ({"server_url": "127.0.0.1:1", "subject": "x", "timeout_ms": 2000}, "08000", "NATS connect failed"),
    ]
    for opts, state, msg in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('n_bad', 'n_items', 'nats', %s::jsonb)", json.dumps(opts))
        assert st == state and msg in m, (opts, st, m)
        assert detail or hint, m
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'n_bad'") == 0
    # JetStream without a stream for the subject stops the sink with a clear error.
    db.execute("SELECT sink.create_sink('n_bad', 'n_items', 'nats', %s::jsonb, snapshot => false)",
               (json.dumps({"server_url": SYSTEM, "subject": "nostream.here", "jetstream": True}),))
    db.execute("INSERT INTO n_items VALUES (1, 'a')")
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'n_bad' AND state = 'failed'").fetchone(), timeout=60, what="failure")
    assert "no JetStream stream" in row[1]
    db.execute("SELECT sink.drop_sink('n_bad')")
