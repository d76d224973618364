"""Integration tests: a real PostgreSQL 15 cluster (started by scripts/cluster.sh,
stopped at the end) with pg_sink preloaded; tests drive it through SQL like a user."""
import contextlib
import glob
import json
import os
import shutil
import subprocess
import time

import psycopg
import psycopg.rows
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("PGSINK_TEST_DATA", "/tmp/pg_sink_test/data")
PORT = int(os.environ.get("PGSINK_TEST_PORT", "5496"))
OUT = "/tmp/pg_sink_test/out"
ENV = dict(os.environ, PGSINK_DATA=DATA, PGSINK_PORT=str(PORT))


def cluster(*args):
    subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), *args], env=ENV, check=True)


@pytest.fixture(scope="session")
def server():
    cluster("destroy")
    cluster("start")
    os.makedirs(OUT, exist_ok=True)
    shutil.chown(OUT, "postgres")
    conn = connect()
    conn.execute("CREATE EXTENSION pg_sink")
    # Roles without pg_write_server_files may write file sinks here (README, privileges).
    conn.execute(f"ALTER SYSTEM SET pg_sink.file_root = '{OUT}'")
    conn.execute("SELECT pg_reload_conf()")
    conn.close()
    time.sleep(0.5)
    yield
    if not os.environ.get("PGSINK_KEEP_SERVERS"):  # debugging aid
        cluster("stop")


@contextlib.contextmanager
def services(*scripts):
    """Run test servers for a block: each (script, env) is stopped (in case a
    previous run left it) and started in order, and stopped in reverse order at
    the end unless PGSINK_KEEP_SERVERS is set (a debugging aid)."""
    def sh(script, env, cmd, check=True):
        subprocess.run([os.path.join(ROOT, "scripts", script), cmd], env=env, check=check)
    for script, env in scripts:
        sh(script, env, "stop", check=False)
        sh(script, env, "start")
    yield
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        for script, env in reversed(scripts):
            sh(script, env, "stop")


MARIADB_PORT = int(os.environ.get("PGSINK_TEST_MARIADB_PORT", "13306"))
NATS_PORT = int(os.environ.get("PGSINK_TEST_NATS_PORT", "14222"))
NATS_DATA = "/tmp/pg_sink_nats"


@pytest.fixture(scope="session")
def mariadb_server():
    """MariaDB on 127.0.0.1:MARIADB_PORT (scripts/mariadb.sh), root without a password."""
    with services(("mariadb.sh", dict(os.environ, MARIADB_PORT=str(MARIADB_PORT)))):
        yield MARIADB_PORT


@pytest.fixture(scope="session")
def nats_servers():
    """The NATS servers of scripts/nats.sh, JetStream on: NATS_PORT accepts clients
    without credentials, users and an NKEY; NATS_PORT+1 is the JWT (operator-mode)
    server. Yields the directory holding their keys and credentials."""
    with services(("nats.sh", dict(os.environ, NATS_PORT=str(NATS_PORT), NATS_DATA=NATS_DATA))):
        yield NATS_DATA


def execute(conn, sql):
    """sink.execute(sql) as a list of dicts (command, kind, name, owner, connector, details)."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM sink.execute(%s)", (sql,))
        return cur.fetchall()


def execute_fails(conn, sql):
    """(sqlstate, message, detail, hint) of a sink.execute(sql) that must fail."""
    return sqlstate_of(conn, "SELECT * FROM sink.execute(%s)", sql)


def connect(user="postgres", dbname="postgres"):
    return psycopg.connect(host="127.0.0.1", port=PORT, user=user, dbname=dbname, autocommit=True)


def reconnect(timeout=120):
    """A new connection once the server accepts connections again (after a crash)."""
    def attempt():
        try:
            return connect()
        except psycopg.OperationalError:
            return None
    return wait_for(attempt, timeout=timeout, what="the server to accept connections")


@pytest.fixture
def db(server):
    conn = connect()
    yield conn
    conn.close()


def out_dir(name):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.chown(d, "postgres")
    return d


def one(conn, sql, *params):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def wait_for(pred, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_caught_up(conn, sink, timeout=120):
    """Wait until the sink has confirmed everything written so far."""
    target = one(conn, "SELECT pg_current_wal_lsn()::text")

    def done():
        row = conn.execute(
            "SELECT p.confirmed_lsn >= %s::pg_lsn, p.last_error, s.state FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id WHERE s.name = %s",
            (target, sink),
        ).fetchone()
        assert row is not None, f"sink {sink} missing"
        assert row[2] != "failed", f"sink {sink} failed: {row[1]}"
        return row[0]

    wait_for(done, timeout, f"sink {sink} to catch up")


def file_records(directory, sink):
    """All records of a file sink in delivery order: snapshot chunks, then batches."""
    files = sorted(glob.glob(os.path.join(directory, sink, "snapshot", "*.jsonl")))
    files += sorted(glob.glob(os.path.join(directory, sink, "*.jsonl")))
    out = []
    for f in files:
        with open(f) as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def upsert_state(records):
    """Replay upsert records into key -> value (tombstones delete; truncate clears)."""
    state = {}
    for r in records:
        if r["headers"].get("pg_sink-op") == "truncate":
            state.clear()
            continue
        k = json.dumps(r["key"], sort_keys=True)
        if r["value"] is None:
            state.pop(k, None)
        else:
            state[k] = r["value"]
    return state


def sqlstate_of(conn, sql, *params):
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        return e.sqlstate, e.diag.message_primary, e.diag.message_detail, e.diag.message_hint
    raise AssertionError(f"expected an error from: {sql}")


def wait_started(conn, sink, timeout=60):
    """Wait until the worker has created the sink's slot (and delivered its snapshot)."""
    wait_for(
        lambda: one(conn, "SELECT p.snapshot_done FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id WHERE s.name = %s", sink),
        timeout,
        f"sink {sink} to start",
    )


def workers_restarted(app_like, killed, n, timeout=90):
    """After SIGKILLing the worker pids `killed`, wait until `n` workers whose
    application_name is LIKE `app_like` run and none is a killed one. A SIGKILL makes
    the postmaster reinitialise every process a moment later, so counting workers
    right away can still see the old ones, and a connection made then can be cut."""
    killed = [int(p) for p in killed]
    wait_for(
        lambda: fresh_one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s AND NOT (pid = ANY(%s))", app_like, killed) == n,
        timeout,
        f"{n} new workers like {app_like!r}",
    )


def fresh_one(sql, *params):
    """One value over a new connection; None while the server is down or restarting
    (after a crash the postmaster kills every backend, including fresh ones)."""
    try:
        conn = connect()
    except psycopg.OperationalError:
        return None
    try:
        return one(conn, sql, *params)
    except psycopg.OperationalError:
        return None
    finally:
        conn.close()
