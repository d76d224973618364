"""Chaos: a mixed workload (inserts, updates, deletes, key changes, TOAST values
changed and left unchanged) streams into nine sinks at once (table, file upsert
and debezium, jdbc PostgreSQL and MySQL, Kafka, JetStream, S3, webhook) while
faults land at random points: worker SIGKILL, Postgres immediate restart, an
ERROR raised by the target, pause/resume (SIGTERM mid-step), Kafka broker
restart, NATS server restart, MariaDB restart, S3 outage (the moto server
frozen with SIGSTOP), webhook receiver down, and a replication slot dropped
under a jdbc sink (which must fail loudly; it is then resynced, and paused at
once, so that its new snapshot is interrupted by SIGTERM). Afterwards every
target is compared with the source row by row, and records are counted for
duplicates.

The webhook is at-least-once: a request sent again keeps its Idempotency-Key,
and the receiver keeps each key once (as a careful receiver does); the
duplicates counted are records repeated after that, and the repeated requests
are reported beside them.

The test suite runs a short form; `scripts/chaos.sh` runs the long one
(PGSINK_CHAOS_CHANGES, PGSINK_CHAOS_FAULTS, PGSINK_CHAOS_SEED) and prints the
table. The jdbc PostgreSQL target is a database of the same cluster, so its
outages are the Postgres restarts."""
import collections
import json
import os
import random
import signal
import subprocess
import threading
import time

import psycopg
import pymysql

from conftest import MARIADB_PORT, NATS_DATA, NATS_PORT, ROOT, cluster, connect, file_records, one, out_dir, reconnect, wait_caught_up, wait_for, wait_started
from test_kafka import BROKERS, broker, kafka, read_topic  # noqa: F401  (broker is a fixture)
from test_nats import SYSTEM, _stream, _stream_messages, run
from test_object_store import S3_ENV, make_bucket, s3, s3_listing, s3_options  # noqa: F401  (s3 is a fixture)
from webhook_receiver import Receiver, free_port

CHANGES = int(os.environ.get("PGSINK_CHAOS_CHANGES", "20000"))
FAULTS = int(os.environ.get("PGSINK_CHAOS_FAULTS", "10"))  # each kind once
SEED = int(os.environ.get("PGSINK_CHAOS_SEED", str(int(time.time()))))
KEYS = 3000  # ids live in 1..KEYS
TOPIC = f"chaos-k-{SEED}"
SINKS = ("c_table", "c_file_up", "c_file_dbz", "c_jdbc", "c_mysql", "c_kafka", "c_js", "c_s3", "c_webhook")
KINDS = ("worker_kill", "postgres_crash", "target_error", "pause_resume", "broker_restart", "nats_restart",
         "mariadb_restart", "s3_outage", "webhook_outage", "slot_drop")
RESYNCED = ("c_jdbc", "c_mysql")  # a resync's snapshot replaces what a jdbc target holds
BUCKET = "chaos"
MYSQL_DB = "chaos_tgt"


def _mysql(database=MYSQL_DB):
    return pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", database=database,
                           charset="utf8mb4", autocommit=True, connect_timeout=10)


def _big(rng):
    """About 3 KB of incompressible text: stored out of line (TOAST)."""
    return "".join(rng.choice("0123456789abcdef") for _ in range(3000))


class Writer(threading.Thread):
    """Random transactions, each touching an id at most once, until CHANGES
    statements have committed. A transaction cut by a crash is not retried (the
    comparison is with what the source holds, not with a script)."""

    def __init__(self, seed):
        super().__init__(daemon=True)
        self.rng = random.Random(seed)
        self.bigs = [_big(self.rng) for _ in range(50)]
        self.committed = 0
        self.error = None

    def run(self):
        conn = None
        try:
            while self.committed < CHANGES:
                try:
                    if conn is None or conn.closed:
                        conn = connect()
                    n = self.rng.randint(1, 40)
                    ids = self.rng.sample(range(1, KEYS + 1), 2 * n)
                    with conn.transaction():
                        for i in range(n):
                            self._op(conn, ids[2 * i], ids[2 * i + 1])
                    self.committed += n
                except psycopg.OperationalError:
                    conn = None
                    time.sleep(0.3)
        except Exception as e:  # noqa: BLE001
            self.error = e

    def _op(self, conn, a, b):
        r = self.rng.random()
        if r < 0.35:
            big = self.rng.choice(self.bigs) if self.rng.random() < 0.15 else None
            conn.execute("INSERT INTO chaos VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET v = chaos.v + 1",
                         (a, self.rng.randint(0, 1000), big))
        elif r < 0.6:  # the TOAST value stays unchanged
            conn.execute("UPDATE chaos SET v = v + 1 WHERE id = %s", (a,))
        elif r < 0.75:
            conn.execute("UPDATE chaos SET big = %s WHERE id = %s", (self.rng.choice(self.bigs), a))
        elif r < 0.87:  # a key change
            conn.execute("UPDATE chaos SET id = %s WHERE id = %s AND NOT EXISTS (SELECT 1 FROM chaos WHERE id = %s)", (b, a, b))
        else:
            conn.execute("DELETE FROM chaos WHERE id = %s", (a,))


def _nats(cmd):
    env = dict(os.environ, NATS_PORT=str(NATS_PORT), NATS_DATA=NATS_DATA)
    subprocess.run([os.path.join(ROOT, "scripts", "nats.sh"), cmd], env=env, check=True)


class Faults:
    """What the faults did, for the report."""

    def __init__(self):
        self.count = collections.Counter()
        self.failed_after = []  # seconds from a slot drop to the sink's `failed`
        self.snapshot_cut = 0   # resync snapshots that a pause interrupted


def _inject(kind, rng, rcv, faults):
    """One fault; returns once the system is back (the sinks recover by
    themselves, except after a slot drop, which needs a resync)."""
    if kind == "worker_kill":
        db = reconnect()
        pids = [r[0] for r in db.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink c\\_%%'").fetchall()]
        db.close()
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
        time.sleep(1)
    elif kind == "postgres_crash":
        cluster("kill")
        cluster("start")
    elif kind == "target_error":
        db = reconnect()
        db.execute("SELECT setval('chaos_err_armed', 1)")
        db.close()
    elif kind == "pause_resume":
        db = reconnect()
        name = rng.choice(SINKS)
        db.execute("SELECT sink.pause_sink(%s)", (name,))
        time.sleep(rng.uniform(0.2, 2))
        db.execute("SELECT sink.resume_sink(%s)", (name,))
        db.close()
    elif kind == "broker_restart":
        kafka("stop")
        time.sleep(rng.uniform(1, 5))
        kafka("restart")  # on the same data
    elif kind == "nats_restart":
        _nats("restart")
    elif kind == "mariadb_restart":
        env = dict(os.environ, MARIADB_PORT=str(MARIADB_PORT))
        subprocess.run([os.path.join(ROOT, "scripts", "mariadb.sh"), "restart"], env=env, check=True, stdout=subprocess.DEVNULL)
    elif kind == "s3_outage":
        with open(os.path.join(S3_ENV["MOTO_DATA"], "moto.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(rng.uniform(1, 5))
        finally:
            os.kill(pid, signal.SIGCONT)
    elif kind == "webhook_outage":
        rcv.stop()
        time.sleep(rng.uniform(1, 5))
        rcv.start()
    elif kind == "slot_drop":
        _drop_slot(rng.choice(RESYNCED), rng, faults)


def _drop_slot(name, rng, faults):
    """A DBA drops the slot of a paused sink: the sink must fail (not start again
    at the current WAL); it is resynced, and paused while the new snapshot runs."""
    db = reconnect()
    db.execute("SELECT sink.pause_sink(%s)", (name,))
    slot = one(db, "SELECT slot_name FROM sink.sinks WHERE name = %s", name)
    wait_for(lambda: not one(db, "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = %s", slot),
             what="the slot to be released")
    db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    time.sleep(rng.uniform(0.5, 2))  # changes in the gap
    db.execute("SELECT sink.resume_sink(%s)", (name,))
    dropped = time.time()
    wait_for(lambda: one(db, "SELECT state FROM sink.sinks WHERE name = %s", name) == "failed", timeout=120,
             what=f"{name} to fail after its slot was dropped")
    faults.failed_after.append(time.time() - dropped)
    db.execute("SELECT sink.resync(%s)", (name,))
    time.sleep(rng.uniform(0, 0.5))
    db.execute("SELECT sink.pause_sink(%s)", (name,))
    if not one(db, "SELECT snapshot_done FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id WHERE s.name = %s", name):
        faults.snapshot_cut += 1
    time.sleep(rng.uniform(0.2, 1))
    db.execute("SELECT sink.resume_sink(%s)", (name,))
    db.close()


def _setup(db, d, s3_client, rcv):
    db.execute("DROP TABLE IF EXISTS chaos, chaos_copy CASCADE")
    db.execute("DROP SEQUENCE IF EXISTS chaos_err_armed")
    db.execute("CREATE TABLE chaos (id int PRIMARY KEY, v int NOT NULL, big text)")
    db.execute("ALTER TABLE chaos REPLICA IDENTITY FULL")
    rng = random.Random(SEED + 1)
    db.execute("INSERT INTO chaos SELECT g, g, NULL FROM generate_series(1, %s) g", (KEYS // 2,))
    for i in range(1, KEYS // 2, 10):  # one row in ten holds a TOAST value
        db.execute("UPDATE chaos SET big = %s WHERE id = %s", (_big(rng), i))
    # The table target's trigger rejects one row each time the fault arms it
    # (setval is not rolled back with the step).
    db.execute("CREATE SEQUENCE chaos_err_armed MINVALUE 0")
    db.execute("CREATE TABLE chaos_copy (id int PRIMARY KEY, v int NOT NULL, big text)")
    db.execute("""CREATE FUNCTION chaos_reject() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                    IF (SELECT last_value FROM chaos_err_armed) = 1 THEN
                      PERFORM setval('chaos_err_armed', 2);
                      RAISE EXCEPTION 'chaos: the target rejects row %', NEW.id;
                    END IF;
                    RETURN NEW;
                  END $$""")
    db.execute("CREATE TRIGGER reject BEFORE INSERT OR UPDATE ON chaos_copy FOR EACH ROW EXECUTE FUNCTION chaos_reject()")
    db.execute("DROP DATABASE IF EXISTS chaos_tgt WITH (FORCE)")
    db.execute("CREATE DATABASE chaos_tgt")
    tgt = connect(dbname="chaos_tgt")
    tgt.execute("CREATE TABLE chaos_t (id int PRIMARY KEY, v int NOT NULL, big text)")
    tgt.close()
    my = _mysql(database=None)
    with my.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
        cur.execute(f"CREATE DATABASE {MYSQL_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        cur.execute(f"CREATE TABLE {MYSQL_DB}.chaos_t (id int PRIMARY KEY, v int NOT NULL, big text)")
    my.close()
    run(_stream("PGSINK_CHAOS", ["pgs.chaos.>"]))
    port = db.info.port
    opts = {
        "c_table": ("table", {"table": "chaos_copy"}, "upsert"),
        "c_file_up": ("file", {"path": d}, "upsert"),
        "c_file_dbz": ("file", {"path": d}, "debezium"),
        "c_jdbc": ("jdbc", {"jdbc.url": f"jdbc:postgresql://127.0.0.1:{port}/chaos_tgt?user=postgres", "table.name": "chaos_t"}, "upsert"),
        "c_kafka": ("kafka", {"properties.bootstrap.server": BROKERS, "topic": TOPIC}, "upsert"),
        "c_js": ("nats", {"server_url": SYSTEM, "subject": "pgs.chaos.items", "jetstream": True}, "debezium"),
        "c_mysql": ("jdbc", {"jdbc.url": f"jdbc:mysql://127.0.0.1:{MARIADB_PORT}/{MYSQL_DB}?user=root", "table.name": "chaos_t"}, "upsert"),
        "c_s3": ("s3", s3_options(BUCKET, f"run-{SEED}"), "upsert"),
        "c_webhook": ("webhook", {"url": f"http://127.0.0.1:{rcv.port}/chaos", "batch_format": "ndjson"}, "upsert"),
    }
    make_bucket(s3_client, BUCKET)
    for name, (connector, o, envelope) in opts.items():
        db.execute("SELECT sink.create_sink(%s, 'chaos', %s, %s::jsonb, envelope => %s)", (name, connector, json.dumps(o), envelope))
    for name in SINKS:
        wait_started(db, name, timeout=180)


def _row(v):
    return (v["id"], v["v"], v["big"])


def _compare(source, state, dup):
    """(lost, extra-or-stale, duplicates) of a target state against the source."""
    lost = sum(1 for k, row in source.items() if state.get(k) != row)
    extra = sum(1 for k in state if k not in source)
    return lost, extra, dup


def _upsert_replay(records):
    """(state, duplicates) of upsert records in delivery order."""
    state, seen = {}, collections.Counter()
    for r in records:
        k = r["key"]["id"]
        seen[(r["headers"]["pg_sink-lsn"], k, r["headers"]["pg_sink-op"])] += 1
        if r["value"] is None:
            state.pop(k, None)
        else:
            state[k] = _row(r["value"])
    return state, sum(n - 1 for n in seen.values())


def _s3_records(client):
    """The S3 sink's records: snapshot objects, then data objects by name (the
    first commit LSN)."""
    keys = [k for k in s3_listing(client, BUCKET, f"run-{SEED}/") if k.endswith(".jsonl") and "/_manifest/" not in k]
    keys = sorted(k for k in keys if "/snapshot/" in k) + sorted(k for k in keys if "/snapshot/" not in k)
    out = []
    for k in keys:
        body = client.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode()
        out.extend(json.loads(line) for line in body.splitlines() if line.strip())
    return out


def _results(db, d, s3_client, rcv):
    source = {r[0]: tuple(r) for r in db.execute("SELECT id, v, big FROM chaos").fetchall()}
    out = {}
    table = {r[0]: tuple(r) for r in db.execute("SELECT id, v, big FROM chaos_copy").fetchall()}
    out["table"] = _compare(source, table, 0)
    tgt = connect(dbname="chaos_tgt")
    jdbc = {r[0]: tuple(r) for r in tgt.execute("SELECT id, v, big FROM chaos_t").fetchall()}
    tgt.close()
    out["jdbc (postgres)"] = _compare(source, jdbc, 0)
    my = _mysql()
    with my.cursor() as cur:
        cur.execute("SELECT id, v, big FROM chaos_t")
        mysql = {r[0]: tuple(r) for r in cur.fetchall()}
    my.close()
    out["jdbc (mysql)"] = _compare(source, mysql, 0)

    out["file (upsert)"] = _compare(source, *_upsert_replay(file_records(d, "c_file_up")))
    out["s3 (upsert)"] = _compare(source, *_upsert_replay(_s3_records(s3_client)))
    out["webhook (upsert)"] = _compare(source, *_upsert_replay(rcv.records(path="/chaos")))

    state, seen = {}, collections.Counter()
    for r in file_records(d, "c_file_dbz"):
        v = r["value"]
        _apply_debezium(state, seen, r["headers"]["pg_sink-lsn"], v)
    out["file (debezium)"] = _compare(source, state, sum(n - 1 for n in seen.values()))

    state, seen = {}, collections.Counter()
    for _, key, value, headers in read_topic(TOPIC, timeout=120):
        k = json.loads(key)["id"]
        seen[(headers.get("pg_sink-lsn"), k, headers.get("pg_sink-op"))] += 1
        if value is None:
            state.pop(k, None)
        else:
            state[k] = _row(json.loads(value))
    out["kafka (upsert)"] = _compare(source, state, sum(n - 1 for n in seen.values()))

    state, seen = {}, collections.Counter()
    for _, data, headers in run(_stream_messages("PGSINK_CHAOS", "pgs.chaos.items")):
        if not data:
            continue
        _apply_debezium(state, seen, (headers or {}).get("pg_sink-lsn"), json.loads(data))
    out["jetstream (debezium)"] = _compare(source, state, sum(n - 1 for n in seen.values()))
    return out


def _apply_debezium(state, seen, lsn, v):
    if v is None:
        return
    row = v.get("after") or v.get("before")
    seen[(lsn, row["id"], v["op"])] += 1
    if v["op"] == "d":
        state.pop(row["id"], None)
        return
    before = v.get("before")
    if before and before["id"] != v["after"]["id"]:  # a key change
        state.pop(before["id"], None)
    state[v["after"]["id"]] = _row(v["after"])


def test_chaos_every_target_equals_the_source(db, broker, nats_servers, mariadb_server, s3):  # noqa: F811
    d = out_dir("chaos")
    rcv = Receiver(free_port(18200, 18299)).start()
    _setup(db, d, s3, rcv)
    db.close()
    rng = random.Random(SEED)
    writer = Writer(SEED)
    writer.start()
    faults = Faults()
    started = time.time()
    for i in range(FAULTS):
        # Spread the faults over the workload: wait for the next share of it.
        target = CHANGES * (i + 1) / (FAULTS + 1)
        while writer.committed < target and writer.is_alive():
            time.sleep(0.1)
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
        _inject(kind, rng, rcv, faults)
        faults.count[kind] += 1
    writer.join(timeout=3600)
    assert writer.error is None, writer.error
    assert not writer.is_alive(), "the writer did not finish"
    db = reconnect()
    for name in SINKS:
        wait_caught_up(db, name, timeout=600)
    results = _results(db, d, s3, rcv)
    states = dict(db.execute("SELECT name, state FROM sink.status WHERE name LIKE 'c\\_%%'").fetchall())
    table = [f"chaos: {writer.committed} changes, {sum(faults.count.values())} faults in {time.time() - started:.0f} s (seed {SEED}): "
             + ", ".join(f"{k} {n}" for k, n in sorted(faults.count.items())),
             f"{'connector':24} {'lost':>6} {'stale/extra':>12} {'duplicates':>11}"]
    for name, (lost, extra, dup) in results.items():
        table.append(f"{name:24} {lost:>6} {extra:>12} {dup:>11}")
    if faults.failed_after:
        table.append(f"slot drops: {len(faults.failed_after)}, each failed the sink (after {min(faults.failed_after):.1f}-"
                     f"{max(faults.failed_after):.1f} s), resynced; {faults.snapshot_cut} resync snapshots cut by a pause")
    table.append(f"webhook requests sent again (kept once by Idempotency-Key): {rcv.duplicates}")
    print("\n" + "\n".join(table))
    report = os.environ.get("PGSINK_CHAOS_REPORT")
    if report:
        with open(report, "w") as f:
            f.write("\n".join(table) + "\n")
    assert set(states.values()) == {"running"}, states
    bad = {k: v for k, v in results.items() if v != (0, 0, 0)}
    assert not bad, "\n".join(table)
    for name in SINKS:
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    rcv.stop()
    db.execute("DROP TABLE chaos, chaos_copy CASCADE")
    db.execute("DROP DATABASE IF EXISTS chaos_tgt WITH (FORCE)")
