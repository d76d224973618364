"""Chaos: a mixed workload (inserts, updates, deletes, key changes, TOAST values
changed and left unchanged) streams into every exactly-once connector at once
while faults land at random points: worker SIGKILL, Postgres immediate restart,
an ERROR raised by the target, pause/resume (SIGTERM mid-step), Kafka broker
restart, NATS server restart. Afterwards every target is compared with the
source row by row, and records are counted for duplicates.

The test suite runs a short form; `scripts/chaos.sh` runs the long one
(PGSINK_CHAOS_CHANGES, PGSINK_CHAOS_FAULTS, PGSINK_CHAOS_SEED) and prints the
table. The jdbc target is a database of the same cluster, so its outages are
the Postgres restarts."""
import collections
import json
import os
import random
import signal
import subprocess
import threading
import time

import psycopg

from conftest import NATS_DATA, NATS_PORT, ROOT, cluster, connect, file_records, out_dir, reconnect, wait_caught_up, wait_started
from test_kafka import BROKERS, broker, kafka, read_topic  # noqa: F401  (broker is a fixture)
from test_nats import SYSTEM, _stream, _stream_messages, run

CHANGES = int(os.environ.get("PGSINK_CHAOS_CHANGES", "20000"))
FAULTS = int(os.environ.get("PGSINK_CHAOS_FAULTS", "8"))
SEED = int(os.environ.get("PGSINK_CHAOS_SEED", str(int(time.time()))))
KEYS = 3000  # ids live in 1..KEYS
TOPIC = f"chaos-k-{SEED}"
SINKS = ("c_table", "c_file_up", "c_file_dbz", "c_jdbc", "c_kafka", "c_js")
KINDS = ("worker_kill", "postgres_crash", "target_error", "pause_resume", "broker_restart", "nats_restart")


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


def _inject(kind, rng):
    """One fault; returns once the system is back (the sinks recover by themselves)."""
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


def _setup(db, d):
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
    run(_stream("PGSINK_CHAOS", ["pgs.chaos.>"]))
    port = db.info.port
    opts = {
        "c_table": ("table", {"table": "chaos_copy"}, "upsert"),
        "c_file_up": ("file", {"path": d}, "upsert"),
        "c_file_dbz": ("file", {"path": d}, "debezium"),
        "c_jdbc": ("jdbc", {"jdbc.url": f"jdbc:postgresql://127.0.0.1:{port}/chaos_tgt?user=postgres", "table.name": "chaos_t"}, "upsert"),
        "c_kafka": ("kafka", {"properties.bootstrap.server": BROKERS, "topic": TOPIC}, "upsert"),
        "c_js": ("nats", {"server_url": SYSTEM, "subject": "pgs.chaos.items", "jetstream": True}, "debezium"),
    }
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


def _results(db, d):
    source = {r[0]: tuple(r) for r in db.execute("SELECT id, v, big FROM chaos").fetchall()}
    out = {}
    table = {r[0]: tuple(r) for r in db.execute("SELECT id, v, big FROM chaos_copy").fetchall()}
    out["table"] = _compare(source, table, 0)
    tgt = connect(dbname="chaos_tgt")
    jdbc = {r[0]: tuple(r) for r in tgt.execute("SELECT id, v, big FROM chaos_t").fetchall()}
    tgt.close()
    out["jdbc (postgres)"] = _compare(source, jdbc, 0)

    state, seen = {}, collections.Counter()
    for r in file_records(d, "c_file_up"):
        k = r["key"]["id"]
        seen[(r["headers"]["pg_sink-lsn"], k, r["headers"]["pg_sink-op"])] += 1
        if r["value"] is None:
            state.pop(k, None)
        else:
            state[k] = _row(r["value"])
    out["file (upsert)"] = _compare(source, state, sum(n - 1 for n in seen.values()))

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


def test_chaos_every_target_equals_the_source(db, broker, nats_servers):  # noqa: F811
    d = out_dir("chaos")
    _setup(db, d)
    db.close()
    rng = random.Random(SEED)
    writer = Writer(SEED)
    writer.start()
    faults = collections.Counter()
    started = time.time()
    for i in range(FAULTS):
        # Spread the faults over the workload: wait for the next share of it.
        target = CHANGES * (i + 1) / (FAULTS + 1)
        while writer.committed < target and writer.is_alive():
            time.sleep(0.1)
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
        _inject(kind, rng)
        faults[kind] += 1
    writer.join(timeout=3600)
    assert writer.error is None, writer.error
    assert not writer.is_alive(), "the writer did not finish"
    db = reconnect()
    for name in SINKS:
        wait_caught_up(db, name, timeout=600)
    results = _results(db, d)
    states = dict(db.execute("SELECT name, state FROM sink.status WHERE name LIKE 'c\\_%%'").fetchall())
    table = [f"chaos: {writer.committed} changes, {sum(faults.values())} faults in {time.time() - started:.0f} s (seed {SEED}): "
             + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())),
             f"{'connector':24} {'lost':>6} {'stale/extra':>12} {'duplicates':>11}"]
    for name, (lost, extra, dup) in results.items():
        table.append(f"{name:24} {lost:>6} {extra:>12} {dup:>11}")
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
    db.execute("DROP TABLE chaos, chaos_copy CASCADE")
    db.execute("DROP DATABASE IF EXISTS chaos_tgt WITH (FORCE)")
