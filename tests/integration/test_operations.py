"""Operating a sink for a long time: what the server log says about it, and
dump and restore."""
import json
import os
import subprocess

import psycopg

from conftest import DATA, PORT, connect, file_records, one, out_dir, sqlstate_of, upsert_state, wait_caught_up, wait_for, wait_started

PGBIN = "/usr/lib/postgresql/15/bin"

LOG = os.path.join(DATA, "server.log")


def _log_from(offset):
    with open(LOG, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        return f.read()


def _lines(offset, sink):
    return [line for line in _log_from(offset).splitlines() if f'pg_sink sink "{sink}"' in line]


def test_state_changes_are_logged_once_each_when_committed_without_row_values(db):
    """One line per state change (created, worker started, snapshot done, paused,
    resumed, altered, failed with its reason, resynced, dropped), naming the sink;
    a change rolled back logs nothing; no line carries a row's values."""
    start = os.path.getsize(LOG)
    d = out_dir("events")
    db.execute("DROP TABLE IF EXISTS ev_src, ev_copy CASCADE")
    db.execute("CREATE TABLE ev_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO ev_src VALUES (1, 'secret-row-value-1')")
    db.execute("SELECT sink.create_sink('ev', 'ev_src', 'file', %s::jsonb, envelope => 'upsert')", (json.dumps({"path": d}),))
    wait_started(db, "ev")
    with db.transaction():
        db.execute("SELECT sink.pause_sink('ev')")
        raise psycopg.Rollback()
    db.execute("SELECT sink.pause_sink('ev')")
    db.execute("SELECT sink.pause_sink('ev')")  # already paused: no change, no line
    db.execute("SELECT sink.alter_sink('ev', %s::jsonb)", (json.dumps({"path": d + "/moved"}),))
    db.execute("SELECT sink.resume_sink('ev')")
    db.execute("INSERT INTO ev_src VALUES (2, 'secret-row-value-2')")
    wait_caught_up(db, "ev")
    db.execute("SELECT sink.resync('ev')")
    wait_started(db, "ev")
    db.execute("SELECT sink.drop_sink('ev')")
    wait_for(lambda: any(l.endswith('"ev": dropped') for l in _lines(start, "ev")), what="the drop to be logged")
    changes = [l.split('pg_sink sink "ev": ', 1)[1] for l in _lines(start, "ev")]
    # Workers start again after pause and resync; the other changes appear once, in order.
    others = [c for c in changes if c != "worker started"]
    assert len(others) == 8, changes
    assert others[0] == "created (file connector, upsert envelope, with a snapshot)"
    assert others[1].startswith("snapshot done (1 records), streaming from ")
    assert others[2:6] == ["paused", "altered (options path)", "resumed (was paused)", "resynced (its slot and progress start over)"]
    assert others[6].startswith("snapshot done (2 records), streaming from ")
    assert others[7] == "dropped"
    assert changes.count("worker started") >= 2

    # A sink that fails: the reason is logged, the refused row's values are not
    # (the target's error detail quotes the row; it stays in sink.status).
    db.execute("SELECT sink.create_sink('ev_t', 'ev_src', 'table', '{\"table\": \"ev_copy\"}', envelope => 'upsert')")
    wait_started(db, "ev_t")
    db.execute("DROP TABLE ev_copy")
    db.execute("INSERT INTO ev_src VALUES (3, 'secret-row-value-3')")
    wait_for(lambda: one(db, "SELECT state FROM sink.status WHERE name = 'ev_t'") == "failed", what="the sink to fail")
    wait_for(lambda: any("failed:" in l for l in _lines(start, "ev_t")), what="the failure to be logged")
    failed = [l for l in _lines(start, "ev_t") if "failed:" in l]
    assert len(failed) == 1 and "does not exist" in failed[0], failed
    db.execute("SELECT sink.drop_sink('ev_t')")
    # A target that refuses a row (check constraint): retried, each retry logged
    # with the message only.
    db.execute("DELETE FROM ev_src")
    db.execute("SELECT sink.create_sink('ev_c', 'ev_src', 'table', '{\"table\": \"ev_copy\"}', envelope => 'upsert')")
    wait_started(db, "ev_c")
    db.execute("ALTER TABLE ev_copy ADD CHECK (v <> 'secret-row-value-4')")
    db.execute("INSERT INTO ev_src VALUES (4, 'secret-row-value-4')")
    wait_for(lambda: one(db, "SELECT last_error FROM sink.status WHERE name = 'ev_c'"), what="the refusal to be recorded")
    wait_for(lambda: any("check constraint" in l for l in _lines(start, "ev_c")), what="the refusal to be logged")
    db.execute("SELECT sink.drop_sink('ev_c')")
    assert "secret-row-value" not in _log_from(start)
    db.execute("DROP TABLE IF EXISTS ev_src, ev_copy CASCADE")


def test_a_restored_database_keeps_its_sinks_paused_until_resumed(db):
    """pg_dump keeps sinks, connections and grants (not progress, not secret
    values). The restored database is another home: its sinks do not run (sync()
    refuses) until resumed, which gives them a slot of their own and a new
    snapshot; the original's slot and delivery are untouched throughout."""
    src, dst = "op_dump_src", "op_dump_dst"
    for n in (src, dst):
        db.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
    db.execute(f"CREATE DATABASE {src}")
    d = out_dir("dump")
    dump = "/tmp/pg_sink_test/op_dump.custom"
    s = connect(dbname=src)
    r = None
    try:
        s.execute("CREATE EXTENSION pg_sink")
        s.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        s.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 3) g")
        s.execute("SELECT sink.create_secret('op_pw', 'hunter2')")
        s.execute("SELECT sink.create_connection('op_files', 'file', %s::jsonb)", (json.dumps({"path": d}),))
        s.execute("SELECT sink.create_sink('op_s', 't', connection => 'op_files', options => '{\"schedule\": \"manual\"}', envelope => 'upsert')")
        s.execute("SELECT sink.sync('op_s')")
        assert len(file_records(d, "op_s")) == 3
        slot, sid = s.execute("SELECT slot_name, id FROM sink.sinks WHERE name = 'op_s'").fetchone()
        subprocess.run([f"{PGBIN}/pg_dump", "-Fc", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", src, "-f", dump], check=True)
        db.execute(f"CREATE DATABASE {dst}")
        subprocess.run([f"{PGBIN}/pg_restore", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", dst, "--exit-on-error", dump], check=True)
        r = connect(dbname=dst)
        # (Its database's launcher may have paused it already: it was made elsewhere.)
        (got,) = r.execute("SELECT name, id, slot_name, state FROM sink.sinks").fetchall()
        assert got[:3] == ("op_s", sid, slot) and got[3] in ("running", "paused"), got
        assert one(r, "SELECT count(*) FROM sink.connections") == 1
        assert one(r, "SELECT count(*) FROM sink.secrets") == 0, "secret values are not dumped"
        # It would write into the original's targets: refused until resumed.
        st, msg, _, hint = sqlstate_of(r, "SELECT sink.sync('op_s')")
        assert st == "55000" and "restored or cloned" in msg and "resume_sink('op_s')" in hint, (st, msg, hint)
        assert len(file_records(d, "op_s")) == 3
        # New sinks get new ids (the id sequence came along).
        sid2 = one(r, "SELECT sink.create_sink('op_s2', 't', 'file', %s::jsonb)", json.dumps({"path": d, "schedule": "manual"}))
        assert sid2 > sid
        # The original goes on, its slot untouched.
        s.execute("INSERT INTO t VALUES (4, 'original')")
        s.execute("SELECT sink.sync('op_s')")
        assert len(file_records(d, "op_s")) == 4
        # Resumed: adopted, with its own slot and a new snapshot.
        r.execute("SELECT sink.resume_sink('op_s')")
        new_slot = one(r, "SELECT slot_name FROM sink.sinks WHERE name = 'op_s'")
        assert new_slot != slot
        out = one(r, "SELECT sink.sync('op_s')")
        assert out["initialized"] and out["records"] == 3, out
        assert one(r, "SELECT database FROM pg_replication_slots WHERE slot_name = %s", new_slot) == dst
        assert one(db, "SELECT database FROM pg_replication_slots WHERE slot_name = %s", slot) == src
        # Dropping the copy leaves the original's slot alone.
        r.execute("SELECT sink.drop_sink('op_s')")
        assert one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot) == 1
        assert one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", new_slot) == 0
        s.execute("INSERT INTO t VALUES (5, 'original')")
        s.execute("SELECT sink.sync('op_s')")
        assert sorted(rec["key"]["id"] for rec in file_records(d, "op_s"))[-2:] == [4, 5]
        # Secret values travel only when asked, by a superuser.
        script = one(s, "SELECT sink.secrets_script()")
        assert "hunter2" in script
        r.execute(script)
        assert one(r, "SELECT count(*) FROM sink.secrets WHERE name = 'op_pw'") == 1
        s.execute("DROP ROLE IF EXISTS op_plain")
        s.execute("CREATE ROLE op_plain LOGIN")
        with connect(user="op_plain", dbname=src) as plain:
            assert sqlstate_of(plain, "SELECT sink.secrets_script()")[0] == "42501"
        r.execute("SELECT sink.drop_sink('op_s2')")
        s.execute("SELECT sink.drop_sink('op_s')")
    finally:
        s.close()
        if r is not None:
            r.close()
        for n in (src, dst):
            db.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
        db.execute("DROP ROLE IF EXISTS op_plain")
        if os.path.exists(dump):
            os.remove(dump)


EXPORTER = "/usr/bin/prometheus-postgres-exporter"
EXPORTER_PORT = PORT + 13691  # 19187 with the default test port
EXPORTER_LOG = "/tmp/pg_sink_test/postgres_exporter.log"


def _scrape():
    """The exporter's page; empty while it is not listening yet."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{EXPORTER_PORT}/metrics", timeout=10) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return ""


def _metric(text, name, sink):
    for line in text.splitlines():
        if line.startswith(name + "{") and f'name="{sink}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_status_metrics_and_the_postgres_exporter_queries(db):
    """sink.status carries a snapshot's progress while it runs, rates over about a
    minute, batch delivery times (p50/p99 of the last 100) and retries; the queries
    file in monitoring/ serves them through the real postgres_exporter."""
    import time
    db.execute("DROP TABLE IF EXISTS m_src, m_copy CASCADE")
    db.execute("CREATE TABLE m_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO m_src SELECT g, 'v' || g FROM generate_series(1, 30000) g")
    db.execute("ANALYZE m_src")
    # A target that takes its time, so the snapshot can be watched.
    db.execute("CREATE TABLE m_copy (id int PRIMARY KEY, v text)")
    # (0.3 s once in every 10,000 rows: once in each snapshot chunk)
    db.execute("DROP FUNCTION IF EXISTS m_slow() CASCADE")
    db.execute("CREATE FUNCTION m_slow() RETURNS trigger LANGUAGE plpgsql AS $$ "
               "BEGIN IF NEW.id % 10000 = 5000 THEN PERFORM pg_sleep(0.3); END IF; RETURN NULL; END $$")
    db.execute("CREATE TRIGGER m_slow AFTER INSERT ON m_copy FOR EACH ROW EXECUTE FUNCTION m_slow()")
    db.execute("SELECT sink.create_sink('m_sink', 'm_src', 'table', '{\"table\": \"m_copy\"}', envelope => 'upsert')")
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not one(db, "SELECT snapshot_done FROM sink.status WHERE name = 'm_sink'"):
        a = one(db, "SELECT activity FROM sink.status WHERE name = 'm_sink'")
        if a and a.startswith("snapshot:"):
            seen.add(a)
        time.sleep(0.05)
    assert any(a.endswith("rows read of about 30000") and not a.startswith("snapshot: 0 ") for a in seen), seen
    wait_started(db, "m_sink")
    wait_for(lambda: one(db, "SELECT activity FROM sink.status WHERE name = 'm_sink'") == "streaming", what="the worker to report streaming")
    db.execute("DROP TRIGGER m_slow ON m_copy")
    db.execute("INSERT INTO m_src SELECT g, 'v' FROM generate_series(30001, 31000) g")
    wait_caught_up(db, "m_sink")
    rate, p50, p99, batches, retries = db.execute(
        "SELECT rows_per_second, batch_p50_ms, batch_p99_ms, batches, retries FROM sink.status WHERE name = 'm_sink'").fetchone()
    # 31,000 rows within the last minute: the weighted rate is within (31000/60) × (e^(-Δt/60) .. 1).
    assert 300 < rate <= 31000 / 60 + 1, rate
    assert batches >= 4 and retries == 0, (batches, retries)
    assert 0 < p50 <= p99, (p50, p99)
    assert p99 >= 300, "the slow snapshot chunks are among the last 100 batches"
    # A refused row is retried: counted, then delivered once the target takes it.
    db.execute("ALTER TABLE m_copy ADD CONSTRAINT m_no CHECK (v <> 'refused')")
    db.execute("INSERT INTO m_src VALUES (0, 'refused')")
    wait_for(lambda: one(db, "SELECT retries FROM sink.status WHERE name = 'm_sink'") >= 2, what="retries")
    db.execute("ALTER TABLE m_copy DROP CONSTRAINT m_no")
    wait_caught_up(db, "m_sink")
    assert one(db, "SELECT count(*) FROM m_copy") == 31001
    assert one(db, "SELECT state FROM sink.status WHERE name = 'm_sink'") == "running"
    # The real postgres_exporter with the queries file.
    queries = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "monitoring", "postgres_exporter.yaml")
    env = dict(os.environ, DATA_SOURCE_NAME=f"postgresql://postgres@127.0.0.1:{PORT}/postgres?sslmode=disable")
    exporter = subprocess.Popen([EXPORTER, f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}", f"--extend.query-path={queries}",
                                 "--disable-default-metrics", "--disable-settings-metrics"],
                                env=env, stdout=subprocess.DEVNULL, stderr=open(EXPORTER_LOG, "wb"))
    try:
        def serving():
            assert exporter.poll() is None, f"the exporter exited: {open(EXPORTER_LOG, errors='replace').read()[-2000:]}"
            return _metric(_scrape(), "pg_sink_rows_delivered", "m_sink") is not None
        wait_for(serving, 30, "the exporter to serve pg_sink metrics")
        text = _scrape()
        status = db.execute("SELECT rows_delivered, batches, retries, errors FROM sink.status WHERE name = 'm_sink'").fetchone()
        assert _metric(text, "pg_sink_rows_delivered", "m_sink") == status[0]
        assert _metric(text, "pg_sink_batches", "m_sink") == status[1]
        assert _metric(text, "pg_sink_retries", "m_sink") == status[2] >= 2
        assert _metric(text, "pg_sink_errors", "m_sink") == status[3]
        assert _metric(text, "pg_sink_running", "m_sink") == 1 and _metric(text, "pg_sink_failed", "m_sink") == 0
        assert _metric(text, "pg_sink_rows_per_second", "m_sink") > 0
        assert _metric(text, "pg_sink_batch_p99_ms", "m_sink") >= 300
        assert 'connector="table"' in next(l for l in text.splitlines() if l.startswith("pg_sink_running{") and 'name="m_sink"' in l)
        assert "# TYPE pg_sink_rows_delivered counter" in text and "# TYPE pg_sink_lag_bytes gauge" in text
    finally:
        exporter.terminate()
        exporter.wait(10)
    db.execute("SELECT sink.drop_sink('m_sink')")
    db.execute("DROP TABLE IF EXISTS m_src, m_copy CASCADE")
    db.execute("DROP FUNCTION IF EXISTS m_slow()")


def _launchers(db):
    """Databases with a pg_sink database launcher, from pg_stat_activity."""
    return {r[0] for r in db.execute("SELECT datname FROM pg_stat_activity WHERE backend_type = 'pg_sink launcher' AND datname IS NOT NULL").fetchall()}


def test_sinks_run_in_every_database_that_has_the_extension(db):
    """A continuous sink runs in any database where the extension is installed
    (pg_sink.databases = '*'), with no restart and no sync(); a database without
    the extension holds no pg_sink process (DROP DATABASE without FORCE works),
    and dropping the extension stops its sinks and lets the database go."""
    for n in ("op_multi", "op_plain_db"):
        db.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
        db.execute(f"CREATE DATABASE {n}")
    d = out_dir("multi")
    m = connect(dbname="op_multi")
    try:
        m.execute("CREATE EXTENSION pg_sink")
        wait_for(lambda: "op_multi" in _launchers(db), what="the launcher of op_multi")
        m.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        m.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
        m.execute("SELECT sink.create_sink('op_m', 't', 'file', %s::jsonb, envelope => 'upsert')", (json.dumps({"path": d}),))
        m.execute("INSERT INTO t SELECT g, 'w' || g FROM generate_series(101, 200) g")
        m.execute("UPDATE t SET v = 'u' WHERE id <= 10")
        wait_caught_up(m, "op_m")
        state = {k: v["v"] for k, v in upsert_state(file_records(d, "op_m")).items()}
        assert state == {json.dumps({"id": i}, sort_keys=True): v for i, v in m.execute("SELECT id, v FROM t").fetchall()}
        assert one(m, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_sink sink op_m' AND datname = 'op_multi'") == 1
        # A database without the extension: nothing of pg_sink stays connected.
        assert "op_plain_db" not in _launchers(db)
        db.execute("DROP DATABASE op_plain_db")
        # Dropping the extension stops the launcher and its workers.
        m.execute("DROP EXTENSION pg_sink CASCADE")
        wait_for(lambda: one(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'op_multi' AND backend_type LIKE 'pg_sink%%'") == 0,
                 what="pg_sink's processes in op_multi to stop")
        # What the extension made outside its catalog (the slot) is the user's now.
        wait_for(lambda: one(db, "SELECT count(*) FROM pg_replication_slots WHERE database = 'op_multi' AND active") == 0,
                 what="the slot to be released")
        for (slot,) in db.execute("SELECT slot_name FROM pg_replication_slots WHERE database = 'op_multi'").fetchall():
            db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    finally:
        m.close()
    db.execute("DROP DATABASE op_multi")
