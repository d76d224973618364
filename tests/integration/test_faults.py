"""Delivery defects, one fault-injection test each: the fault is injected, then
the target is compared with the source row by row, counting duplicates.

* a snapshot of more than one chunk (10,000 rows) to Kafka and to JetStream:
  every chunk shares the snapshot's LSN, and later chunks were taken for already
  delivered (Kafka) or for duplicates of chunk 0 (JetStream message ids);
* an ERROR raised at the target in the middle of a step (a trigger that rejects
  a row once): the step unwinds, and the next step must start again from the
  catalog's position, not after what the failed step had read from the stream.
"""
import collections
import json
import os
import shutil
import subprocess
import time

import psycopg
import pytest

from conftest import DATA, PORT, ROOT, cluster, connect, one, sqlstate_of, wait_caught_up, wait_for, wait_started
from test_kafka import BROKERS, broker, read_topic  # noqa: F401  (broker is a fixture)
from test_nats import SYSTEM, _stream, _stream_messages, run

SNAPSHOT_ROWS = 25_000  # two and a half snapshot chunks


def _snapshot_source(db, table):
    db.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    db.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, {SNAPSHOT_ROWS}) g")


def test_kafka_snapshot_of_several_chunks_delivers_every_row_once(db, broker):  # noqa: F811
    _snapshot_source(db, "f_snap_k")
    db.execute("SELECT sink.create_sink('f_snap_k', 'f_snap_k', 'kafka', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"properties.bootstrap.server": BROKERS, "topic": "f-snap-k"}),))
    wait_started(db, "f_snap_k")
    db.execute("INSERT INTO f_snap_k VALUES (0, 'after the snapshot')")
    wait_caught_up(db, "f_snap_k")
    keys = collections.Counter(json.loads(k)["id"] for _, k, v, _ in read_topic("f-snap-k", timeout=60) if k is not None)
    assert len(keys) == SNAPSHOT_ROWS + 1, f"{SNAPSHOT_ROWS + 1 - len(keys)} rows lost"
    assert max(keys.values()) == 1, "a row was delivered twice"
    assert one(db, "SELECT rows_delivered FROM sink.status WHERE name = 'f_snap_k'") == SNAPSHOT_ROWS + 1
    db.execute("SELECT sink.drop_sink('f_snap_k')")


def test_jetstream_snapshot_of_several_chunks_delivers_every_row_once(db, nats_servers):
    _snapshot_source(db, "f_snap_n")
    run(_stream("PGSINK_SNAP", ["pgs.snap.>"]))
    db.execute("SELECT sink.create_sink('f_snap_n', 'f_snap_n', 'nats', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"server_url": SYSTEM, "subject": "pgs.snap.items", "jetstream": True}),))
    wait_started(db, "f_snap_n")
    wait_caught_up(db, "f_snap_n")
    msgs = run(_stream_messages("PGSINK_SNAP", "pgs.snap.items"))
    ids = collections.Counter(json.loads(data)["id"] for _, data, _ in msgs)
    assert len(ids) == SNAPSHOT_ROWS, f"{SNAPSHOT_ROWS - len(ids)} rows lost"
    assert max(ids.values()) == 1, "a row was delivered twice"
    db.execute("SELECT sink.drop_sink('f_snap_n')")


def test_an_error_at_the_target_mid_step_loses_nothing(db):
    db.execute("DROP TABLE IF EXISTS f_err, f_err_copy CASCADE")
    db.execute("DROP SEQUENCE IF EXISTS f_err_attempts")
    db.execute("CREATE TABLE f_err (id int PRIMARY KEY, v text)")
    db.execute("SELECT sink.create_sink('f_err', 'f_err', 'table', '{\"table\": \"f_err_copy\"}', envelope => 'upsert')")
    wait_started(db, "f_err")
    wait_caught_up(db, "f_err")
    # The target rejects row 5 the first time it sees it (a sequence counts the
    # attempts outside the failing transaction): the worker's step raises an
    # ERROR in the middle of applying the batch.
    db.execute("CREATE SEQUENCE f_err_attempts")
    db.execute("""CREATE FUNCTION f_err_reject_once() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                    IF NEW.id = 5 AND nextval('f_err_attempts') = 1 THEN
                      RAISE EXCEPTION 'target rejects row 5 once';
                    END IF;
                    RETURN NEW;
                  END $$""")
    db.execute("CREATE TRIGGER reject_once BEFORE INSERT OR UPDATE ON f_err_copy FOR EACH ROW EXECUTE FUNCTION f_err_reject_once()")
    db.execute("INSERT INTO f_err SELECT g, 'a' || g FROM generate_series(1, 10) g")
    for i in range(11, 31):
        db.execute("INSERT INTO f_err VALUES (%s, %s)", (i, f"b{i}"))
    wait_for(lambda: one(db, "SELECT last_value FROM f_err_attempts") >= 2, what="a retry after the rejected row")
    wait_caught_up(db, "f_err")
    source = db.execute("SELECT id, v FROM f_err ORDER BY id").fetchall()
    target = db.execute("SELECT id, v FROM f_err_copy ORDER BY id").fetchall()
    assert target == source, f"lost: {sorted(set(source) - set(target))[:10]}"
    assert one(db, "SELECT errors FROM sink.status WHERE name = 'f_err'") >= 1, "the failure is counted"
    assert one(db, "SELECT state FROM sink.status WHERE name = 'f_err'") == "running"
    db.execute("SELECT sink.drop_sink('f_err')")
    db.execute("DROP TABLE f_err_copy")
    db.execute("DROP FUNCTION f_err_reject_once()")


def _table_sink(db, name, options=None, **kw):
    db.execute(f"DROP TABLE IF EXISTS {name}, {name}_copy CASCADE")
    db.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    extra = "".join(f", {k} => {v}" for k, v in kw.items())
    opts = json.dumps({"table": f"{name}_copy", **(options or {})})
    db.execute(f"SELECT sink.create_sink('{name}', '{name}', 'table', %s::jsonb, envelope => 'upsert'{extra})", (opts,))


def _state(db, name):
    return db.execute("SELECT state, last_error FROM sink.status WHERE name = %s", (name,)).fetchone()


def _same_rows(db, name):
    source = db.execute(f"SELECT id, v FROM {name} ORDER BY id").fetchall()
    target = db.execute(f"SELECT id, v FROM {name}_copy ORDER BY id").fetchall()
    assert target == source, f"lost: {sorted(set(source) - set(target))[:10]}, extra: {sorted(set(target) - set(source))[:10]}"


def _slot(db, name):
    return one(db, "SELECT slot_name FROM sink.sinks WHERE name = %s", name)


def test_a_dropped_slot_fails_the_sink_loudly_and_resync_recovers(db):
    _table_sink(db, "f_slot")
    wait_started(db, "f_slot")
    db.execute("INSERT INTO f_slot SELECT g, 'a' FROM generate_series(1, 10) g")
    wait_caught_up(db, "f_slot")
    # A DBA frees disk (or a failover loses the slot) while the sink is paused.
    db.execute("SELECT sink.pause_sink('f_slot')")
    slot = _slot(db, "f_slot")
    wait_for(lambda: one(db, "SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s", slot), what="the slot to be released")
    db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    db.execute("INSERT INTO f_slot SELECT g, 'b' FROM generate_series(11, 110) g")
    db.execute("SELECT sink.resume_sink('f_slot')")
    # Before: the slot was created again at the current WAL, the 100 rows were
    # never delivered, and the state stayed 'running'.
    wait_for(lambda: _state(db, "f_slot")[0] == "failed", what="the sink to fail")
    state, error = _state(db, "f_slot")
    assert "does not exist" in error and slot in error, error
    assert one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot) == 0, "no new slot was made"
    db.execute("SELECT sink.resync('f_slot')")
    wait_started(db, "f_slot")
    db.execute("UPDATE f_slot SET v = 'c' WHERE id > 100")
    wait_caught_up(db, "f_slot")
    _same_rows(db, "f_slot")
    assert _state(db, "f_slot")[0] == "running"
    db.execute("SELECT sink.drop_sink('f_slot')")


def test_an_invalidated_slot_fails_the_sink(db):
    _table_sink(db, "f_inval")
    wait_started(db, "f_inval")
    db.execute("SELECT sink.pause_sink('f_inval')")
    slot = _slot(db, "f_inval")
    wait_for(lambda: one(db, "SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s", slot), what="the slot to be released")
    db.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    db.execute("SELECT pg_reload_conf()")
    try:
        # Write WAL past the limit, then let checkpoints remove it.
        for _ in range(6):
            db.execute("INSERT INTO f_inval SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v || '.'")
            db.execute("SELECT pg_switch_wal()")
            db.execute("CHECKPOINT")
        wait_for(lambda: one(db, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", slot) == "lost", what="the slot to be invalidated")
    finally:
        db.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        db.execute("SELECT pg_reload_conf()")
    db.execute("SELECT sink.resume_sink('f_inval')")
    # Before: every step failed and was retried for ever, state 'running'.
    wait_for(lambda: _state(db, "f_inval")[0] == "failed", what="the sink to fail")
    assert "invalidated" in _state(db, "f_inval")[1]
    db.execute("SELECT sink.resync('f_inval')")
    wait_started(db, "f_inval")
    wait_caught_up(db, "f_inval")
    _same_rows(db, "f_inval")
    db.execute("SELECT sink.drop_sink('f_inval')")


def test_a_failed_first_step_without_snapshot_keeps_its_slot_and_loses_nothing(db):
    db.execute("ALTER SYSTEM SET pg_sink.fail_after_deliver = on")
    db.execute("SELECT pg_reload_conf()")
    try:
        _table_sink(db, "f_first", snapshot="false")
        # The first step creates the slot, then fails before recording progress.
        wait_for(lambda: one(db, "SELECT errors FROM sink.status WHERE name = 'f_first'") >= 2, what="failed first steps")
        db.execute("INSERT INTO f_first SELECT g, 'a' FROM generate_series(1, 50) g")
    finally:
        db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
        db.execute("SELECT pg_reload_conf()")
    # Before: every retry failed with "replication slot ... already exists".
    wait_started(db, "f_first")
    wait_caught_up(db, "f_first")
    assert "already exists" not in (_state(db, "f_first")[1] or "")
    _same_rows(db, "f_first")
    db.execute("SELECT sink.drop_sink('f_first')")


def test_a_dropped_target_table_fails_the_sink_instead_of_retrying_for_ever(db):
    _table_sink(db, "f_gone")
    wait_started(db, "f_gone")
    db.execute("DROP TABLE f_gone_copy")
    db.execute("INSERT INTO f_gone VALUES (1, 'a')")
    # Before: 'relation does not exist' was retried for ever with state 'running'.
    wait_for(lambda: _state(db, "f_gone")[0] == "failed", what="the sink to fail")
    assert "does not exist" in _state(db, "f_gone")[1]
    db.execute("SELECT sink.drop_sink('f_gone')")


def test_a_rolled_back_sync_leaves_the_slot_where_the_committed_progress_is(db):
    _table_sink(db, "f_sync", {"schedule": "manual"})
    db.execute("SELECT sink.sync('f_sync')")
    db.execute("SET pg_sink.max_step_changes = 10")
    for i in range(10):
        db.execute("INSERT INTO f_sync SELECT g, 'a' FROM generate_series(%s::int, %s::int) g", (i * 10 + 1, i * 10 + 10))
    # sync() in a transaction that is rolled back, twice, once more inside a
    # savepoint. sync() used to run steps of max_step_changes, each moving the
    # slot (which no rollback undoes) to the progress the step before had written:
    # after the rollback those rows were skipped for ever.
    with db.transaction():
        db.execute("SELECT sink.sync('f_sync')")
        db.execute("INSERT INTO f_sync VALUES (101, 'rolled back')")
        db.execute("SELECT sink.sync('f_sync')")
        db.execute("SAVEPOINT s")
        db.execute("SELECT sink.sync('f_sync')")
        db.execute("ROLLBACK TO SAVEPOINT s")
        db.execute("SELECT sink.sync('f_sync')")
        raise psycopg.Rollback()
    assert one(db, "SELECT count(*) FROM f_sync_copy") == 0, "the rollback undid the table target too"
    db.execute("INSERT INTO f_sync VALUES (102, 'b')")
    out = one(db, "SELECT sink.sync('f_sync')")
    assert out["changes"] == 101, out
    _same_rows(db, "f_sync")
    db.execute("RESET pg_sink.max_step_changes")
    db.execute("SELECT sink.drop_sink('f_sync')")


def test_kafka_progress_is_read_past_another_sinks_open_transaction(db, broker):  # noqa: F811
    from confluent_kafka import Producer

    db.execute("DROP TABLE IF EXISTS f_prog CASCADE")
    db.execute("CREATE TABLE f_prog (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO f_prog SELECT g, 'a' FROM generate_series(1, 10) g")
    db.execute("SELECT sink.create_sink('f_prog', 'f_prog', 'kafka', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"properties.bootstrap.server": BROKERS, "topic": "f-prog", "timeout_ms": 5000}),))
    wait_started(db, "f_prog")
    wait_caught_up(db, "f_prog")
    # Another sink (here: a producer of our own) has a transaction open on the
    # shared progress topic: a read_committed reader's end is where it began.
    blocker = Producer({"bootstrap.servers": BROKERS, "transactional.id": f"f-prog-blocker-{time.time()}"})
    blocker.init_transactions()
    blocker.begin_transaction()
    blocker.produce(f"_pg_sink-progress-{one(db, 'SELECT current_database()')}", key=b"another sink", value=b"{}")
    blocker.flush()
    try:
        # Our sink commits a batch to Kafka (its progress lands after the open
        # transaction), then fails before the catalog records it; every retry
        # reads the progress topic again to learn what Kafka has.
        db.execute("SELECT sink.pause_sink('f_prog')")
        db.execute("ALTER SYSTEM SET pg_sink.fail_after_deliver = on")
        db.execute("SELECT pg_reload_conf()")
        errors = one(db, "SELECT errors FROM sink.status WHERE name = 'f_prog'")
        db.execute("INSERT INTO f_prog SELECT g, 'b' FROM generate_series(11, 20) g")
        db.execute("SELECT sink.resume_sink('f_prog')")
        wait_for(lambda: one(db, "SELECT errors FROM sink.status WHERE name = 'f_prog'") >= errors + 3, what="failed attempts")
    finally:
        blocker.abort_transaction()
        db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
        db.execute("SELECT pg_reload_conf()")
    wait_caught_up(db, "f_prog")
    keys = collections.Counter(json.loads(k)["id"] for _, k, v, _ in read_topic("f-prog") if k is not None)
    assert set(keys) == set(range(1, 21)), "rows lost"
    # Before: the retries stopped reading at the open transaction, missed the
    # batch's progress record and produced the batch again.
    assert max(keys.values()) == 1, f"duplicates: {[k for k, n in keys.items() if n > 1]}"
    db.execute("SELECT sink.drop_sink('f_prog')")


def test_truncate_does_not_stop_an_upsert_sink_on_a_compacted_topic(db, broker):  # noqa: F811
    db.execute("DROP TABLE IF EXISTS f_trunc CASCADE")
    db.execute("CREATE TABLE f_trunc (id int PRIMARY KEY, v text)")
    db.execute("SELECT sink.create_sink('f_trunc', 'f_trunc', 'kafka', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"brokers": BROKERS, "topic": "f-trunc", "topic_config": {"cleanup.policy": "compact"}}),))
    wait_started(db, "f_trunc")
    db.execute("INSERT INTO f_trunc SELECT g, 'a' FROM generate_series(1, 5) g")
    db.execute("TRUNCATE f_trunc")
    db.execute("INSERT INTO f_trunc VALUES (6, 'after the truncate')")
    # Before: the TRUNCATE became a record without a key, which the compacted
    # topic refused, and the sink failed for good.
    wait_caught_up(db, "f_trunc")
    assert one(db, "SELECT state FROM sink.status WHERE name = 'f_trunc'") == "running"
    msgs = read_topic("f-trunc")
    assert all(k is not None for _, k, _, _ in msgs), "a keyless record reached the topic"
    assert [json.loads(k)["id"] for _, k, _, _ in msgs] == [1, 2, 3, 4, 5, 6]
    db.execute("SELECT sink.drop_sink('f_trunc')")


def test_a_truncate_reaches_a_topic_only_when_skipped_operations_lets_it(db, broker):  # noqa: F811
    db.execute("DROP TABLE IF EXISTS f_trunc2 CASCADE")
    db.execute("CREATE TABLE f_trunc2 (id int PRIMARY KEY, v text)")
    for name, skipped in (("f_trunc_all", "none"), ("f_trunc_cd", "c,d")):
        db.execute("SELECT sink.create_sink(%s, 'f_trunc2', 'kafka', %s::jsonb, envelope => 'debezium')",
                   (name, json.dumps({"brokers": BROKERS, "topic": name.replace("_", "-"), "skipped.operations": skipped})))
        wait_started(db, name)
    db.execute("INSERT INTO f_trunc2 SELECT g, 'a' FROM generate_series(1, 3) g")
    db.execute("UPDATE f_trunc2 SET v = 'b' WHERE id = 1")
    db.execute("DELETE FROM f_trunc2 WHERE id = 2")
    db.execute("TRUNCATE f_trunc2")
    db.execute("INSERT INTO f_trunc2 VALUES (4, 'after')")
    for name in ("f_trunc_all", "f_trunc_cd"):
        wait_caught_up(db, name)
    every = read_topic("f-trunc-all")
    assert [json.loads(v)["op"] for _, _, v, _ in every] == ["c", "c", "c", "u", "d", "t", "c"]
    t = [(p, k, json.loads(v)) for p, k, v, _ in every if json.loads(v)["op"] == "t"][0]
    assert t[0] == 0 and t[1] is None and t[2]["source"]["table"] == "f_trunc2", "Debezium's keyless truncate event"
    assert [json.loads(v)["op"] for _, _, v, _ in read_topic("f-trunc-cd")] == ["u", "t"]
    code, message, detail, hint = sqlstate_of(
        db, "SELECT sink.create_sink('f_trunc_bad', 'f_trunc2', 'kafka', %s::jsonb)",
        json.dumps({"brokers": BROKERS, "topic": "x", "skipped.operations": "r"}))
    assert code == "22023" and "skipped.operations" in message and hint, (code, message, hint)
    for name in ("f_trunc_all", "f_trunc_cd"):
        db.execute("SELECT sink.drop_sink(%s)", (name,))


def test_a_target_slower_than_wal_sender_timeout_still_makes_progress(db):
    _table_sink(db, "f_slow")
    wait_started(db, "f_slow")
    # Each row takes 0.6 s at the target: a batch of 5 rows takes 3 s, longer
    # than the walsender waits for a reply.
    db.execute("""CREATE OR REPLACE FUNCTION f_slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END $$""")
    db.execute("CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON f_slow_copy FOR EACH ROW EXECUTE FUNCTION f_slow_row()")
    db.execute("SELECT sink.pause_sink('f_slow')")
    db.execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
    db.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = 5")
    db.execute("SELECT pg_reload_conf()")
    try:
        for i in range(1, 21):
            db.execute("INSERT INTO f_slow VALUES (%s, 'x')", (i,))
        db.execute("SELECT sink.resume_sink('f_slow')")
        # Before: nothing fed the walsender while a batch was delivered, so it
        # closed the stream mid-step; the step failed and was retried for ever.
        wait_for(lambda: one(db, "SELECT count(*) FROM f_slow_copy") == 20, timeout=90, what="every row at the slow target")
    finally:
        db.execute("ALTER SYSTEM RESET wal_sender_timeout")
        db.execute("ALTER SYSTEM RESET pg_sink.max_batch_changes")
        db.execute("SELECT pg_reload_conf()")
    wait_caught_up(db, "f_slow")
    _same_rows(db, "f_slow")
    db.execute("SELECT sink.drop_sink('f_slow')")
    db.execute("DROP FUNCTION f_slow_row() CASCADE")


def test_pause_during_a_long_snapshot_returns_at_once(db):
    db.execute("DROP TABLE IF EXISTS f_long, f_long_copy CASCADE")
    db.execute("CREATE TABLE f_long (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO f_long SELECT g, repeat('x', 100) FROM generate_series(1, 300000) g")
    db.execute("SELECT sink.create_sink('f_long', 'f_long', 'table', '{\"table\": \"f_long_copy\"}', envelope => 'upsert')")
    slot = _slot(db, "f_long")
    # The first step creates the slot, then delivers the snapshot.
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot) > 0, what="the snapshot to start")
    time.sleep(1)
    started = time.time()
    # Before: pause_sink waited for the sink's lock, held by the worker until its
    # whole snapshot (30 chunks) was delivered.
    db.execute("SELECT sink.pause_sink('f_long')")
    paused_in = time.time() - started
    assert one(db, "SELECT snapshot_done FROM sink.status WHERE name = 'f_long'") is False
    db.execute("SELECT sink.resume_sink('f_long')")
    started = time.time()
    wait_started(db, "f_long", timeout=300)
    snapshot_took = time.time() - started
    assert paused_in < max(3.0, snapshot_took / 3), f"pause took {paused_in:.1f} s, the snapshot {snapshot_took:.1f} s"
    assert one(db, "SELECT count(*) FROM f_long_copy") == 300000
    assert one(db, "SELECT errors FROM sink.status WHERE name = 'f_long'") == 0, "a stop is not an error"
    db.execute("SELECT sink.drop_sink('f_long')")


CLONE_DATA = "/tmp/pg_sink_test/clone"
CLONE_PORT = PORT + 1


def _clone_cluster(*args):
    subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), *args], check=True,
                   env=dict(os.environ, PGSINK_DATA=CLONE_DATA, PGSINK_PORT=str(CLONE_PORT)))


def test_a_point_in_time_clone_does_not_take_over_the_sinks_progress(db):
    """A copy of the data directory (a disk snapshot, slots included) recovered to
    a new timeline runs the same sink against the same target. Before: both used
    the uid <database>-<id>-<created>, so the clone's progress row in the target
    moved past the production sink's next changes, which were then skipped."""
    db.execute("DROP DATABASE IF EXISTS f_clone_tgt WITH (FORCE)")
    db.execute("CREATE DATABASE f_clone_tgt")
    tgt = connect(dbname="f_clone_tgt")
    tgt.execute("CREATE TABLE f_cl_t (id int PRIMARY KEY, v text)")
    db.execute("DROP TABLE IF EXISTS f_cl")
    db.execute("CREATE TABLE f_cl (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO f_cl SELECT g, 'prod' FROM generate_series(1, 10) g")
    url = f"jdbc:postgresql://127.0.0.1:{PORT}/f_clone_tgt?user=postgres"
    db.execute("SELECT sink.create_sink('f_clone', 'f_cl', 'jdbc', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"jdbc.url": url, "table.name": "f_cl_t"}),))
    wait_started(db, "f_clone")
    wait_caught_up(db, "f_clone")
    db.execute("SELECT sink.pause_sink('f_clone')")
    prod_uid = one(db, "SELECT sink.uid('f_clone')")
    tgt.close()
    db.close()
    clone = None
    try:
        cluster("stop")
        shutil.rmtree(CLONE_DATA, ignore_errors=True)
        shutil.copytree(DATA, CLONE_DATA, symlinks=True)
        with open(os.path.join(CLONE_DATA, "postgresql.auto.conf"), "a") as f:
            f.write(f"port = {CLONE_PORT}\nunix_socket_directories = '{CLONE_DATA}'\nrestore_command = 'false'\n")
        open(os.path.join(CLONE_DATA, "recovery.signal"), "w").close()
        subprocess.run(["chown", "-R", "postgres", CLONE_DATA], check=True)
        cluster("start")
        _clone_cluster("start")
        clone = psycopg.connect(host="127.0.0.1", port=CLONE_PORT, user="postgres", dbname="postgres", autocommit=True)
        wait_for(lambda: one(clone, "SELECT NOT pg_is_in_recovery()"), 60, "the clone to finish recovery")
        clone_uid = one(clone, "SELECT sink.uid('f_clone')")
        assert clone_uid != prod_uid, (clone_uid, prod_uid)
        # The clone keeps the sinks it copied paused, and says why.
        wait_for(lambda: "restored or cloned" in (one(clone, "SELECT last_error FROM sink.status WHERE name = 'f_clone'") or ""), 30,
                 "the clone to pause the sink it copied")
        assert one(clone, "SELECT state FROM sink.status WHERE name = 'f_clone'") == "paused"
        # The clone's owner resumes it anyway, against the same target, far ahead in
        # WAL: it gets a slot of its own and delivers again from a new snapshot.
        clone.execute("SELECT sink.resume_sink('f_clone')")
        assert one(clone, "SELECT slot_name <> 'pg_sink_' || id FROM sink.sinks WHERE name = 'f_clone'")
        clone.execute("INSERT INTO f_cl SELECT g, 'clone' FROM generate_series(1000, 4000) g")
        wait_caught_up(clone, "f_clone")
        clone.close()
        clone = None
        _clone_cluster("stop")
        # Production goes on: nothing it writes may be taken for already delivered.
        db = connect()
        db.execute("SELECT sink.resume_sink('f_clone')")
        db.execute("INSERT INTO f_cl SELECT g, 'prod' FROM generate_series(11, 30) g")
        db.execute("UPDATE f_cl SET v = 'prod2' WHERE id <= 5")
        wait_caught_up(db, "f_clone")
        tgt = connect(dbname="f_clone_tgt")
        got = dict(tgt.execute("SELECT id, v FROM f_cl_t WHERE id < 1000").fetchall())
        want = dict(db.execute("SELECT id, v FROM f_cl").fetchall())
        assert got == want, f"lost or stale: {sorted(set(want.items()) ^ set(got.items()))[:10]}"
        ids = sorted(r[0] for r in tgt.execute("SELECT sink_id FROM pg_sink_progress").fetchall())
        assert ids == sorted([prod_uid, clone_uid]), ids
        tgt.close()
    finally:
        if clone is not None:
            clone.close()
        _clone_cluster("stop")
        shutil.rmtree(CLONE_DATA, ignore_errors=True)
        db = connect()
        db.execute("SELECT sink.drop_sink('f_clone', if_exists => true)")
        db.execute("DROP DATABASE IF EXISTS f_clone_tgt WITH (FORCE)")
        db.close()


def test_a_database_not_in_utf8_is_refused_instead_of_mangling_text(db):
    # Before: the sink was created, and text in LATIN1 reached the target as invalid UTF-8.
    db.execute("DROP DATABASE IF EXISTS f_latin1")
    db.execute("CREATE DATABASE f_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        lat = connect(dbname="f_latin1")
        lat.execute("CREATE EXTENSION pg_sink")
        lat.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        lat.execute("INSERT INTO t VALUES (1, 'café')")
        st, msg, detail, hint = sqlstate_of(lat, "SELECT sink.create_sink('f_lat', 't', 'table', '{\"table\": \"t_copy\"}', envelope => 'upsert')")
        assert st == "0A000" and "LATIN1" in msg and detail and hint, (st, msg)
        assert one(lat, "SELECT count(*) FROM sink.sinks") == 0
        assert one(lat, "SELECT count(*) FROM pg_replication_slots WHERE database = 'f_latin1'") == 0
        lat.close()
    finally:
        db.execute("DROP DATABASE IF EXISTS f_latin1 WITH (FORCE)")


@pytest.mark.parametrize("looked_first", [False, True], ids=["fresh", "activity-read-earlier"])
def test_dropping_a_sink_whose_worker_waits_for_the_caller_does_not_deadlock(db, looked_first):
    """A worker creating its slot waits, holding the sink's lock, for every
    transaction that has written. A drop_sink in such a transaction (after a
    write, or after dropping another sink in the same statement) waited for that
    lock: a deadlock, which Postgres broke by failing one side
    (pg_stat_database.deadlocks counts it). Now the drop cancels the slot creation.

    `activity-read-earlier`: the transaction read pg_stat_activity before the
    worker started (as dropping another sink in the same statement does).
    Postgres keeps that view's snapshot until the transaction ends, so the drop
    did not see the walsender creating the slot: it never ended it, and waited
    (about 8 minutes of retries) before failing with "slot is active"."""
    d = os.path.join("/tmp/pg_sink_test/out", "dd")
    db.execute("DROP TABLE IF EXISTS dd_src")
    db.execute("CREATE TABLE dd_src (id int PRIMARY KEY)")
    deadlocks = one(db, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    writer = connect()
    writer.autocommit = False
    writer.execute("INSERT INTO dd_src VALUES (1)")  # an xid the slot creation must wait for
    xid = one(writer, "SELECT pg_current_xact_id()::text")
    if looked_first:
        assert one(writer, "SELECT count(*) FROM pg_stat_activity") > 0
        writer.execute("SET statement_timeout = '60s'")
    db.execute("SELECT sink.create_sink('dd_x', 'dd_src', 'file', %s::jsonb)", (json.dumps({"path": d}),))
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted AND transactionid::text = %s",
                         str(int(xid) % 2**32)) > 0, what="the worker's slot creation to wait for the writer")
    slot = _slot(db, "dd_x")
    t0 = time.time()
    writer.execute("SELECT sink.drop_sink('dd_x')")
    writer.commit()
    writer.close()
    took = time.time() - t0
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'dd_x'") == 0
    time.sleep(1.5)  # statistics are flushed by the backends a moment later
    assert one(db, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") == deadlocks, "a deadlock was broken"
    assert took < 5, took
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot) == 0, what="no slot left behind")
    db.execute("DROP TABLE dd_src")
