"""TLS to the targets that speak their own protocol: the jdbc connector's
PostgreSQL client (the test cluster itself, with ssl switched on for the test),
its MySQL client (scripts/mariadb.sh's MariaDB, which speaks TLS with the test
CA's certificate) and NATS (a nats-server started here with --tls). Each
verification mode is shown to encrypt (the server reports the session's TLS) and to
refuse what it must: an unknown authority, a certificate for another host, a
server without TLS. Certificates: scripts/lib/tls.sh."""
import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import time

import nats
import psycopg
import pymysql
import pytest

from conftest import MARIADB_PORT, NATS_PORT, PORT, ROOT, connect, one, reconnect, wait_caught_up, wait_for, wait_started

TLS = "/tmp/pg_sink_test/tls"
PG_DB = "tls_target"
MYSQL_DATA = "/tmp/pg_sink_mariadb"
MYSQL_DB = "pg_sink_tls"
NATS_TLS_PORT = NATS_PORT + 20


def pem(name, directory=TLS):
    with open(os.path.join(directory, f"{name}.pem")) as f:
        return f.read()


def mysql_ca():
    """scripts/mariadb.sh makes its own CA at each start."""
    return pem("ca", os.path.join(MYSQL_DATA, "tls"))


@pytest.fixture(scope="module")
def certs(server):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "lib", "tls.sh"), TLS], check=True)
    shutil.chown(TLS, "postgres")
    for f in os.listdir(TLS):
        shutil.chown(os.path.join(TLS, f), "postgres")
    return TLS


def set_server_tls(db, cert):
    """Switch the test cluster's TLS (new connections see it after the reload)."""
    if cert is None:
        db.execute("ALTER SYSTEM SET ssl = off")
    else:
        db.execute(f"ALTER SYSTEM SET ssl_cert_file = '{TLS}/{cert}.pem'")
        db.execute(f"ALTER SYSTEM SET ssl_key_file = '{TLS}/{cert}.key'")
        db.execute("ALTER SYSTEM SET ssl = on")
    db.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)


@pytest.fixture
def pg_tls(db, certs):
    db.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    db.execute(f"CREATE DATABASE {PG_DB}")
    db.execute("DROP TABLE IF EXISTS tls_src")
    db.execute("CREATE TABLE tls_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO tls_src SELECT g, 'v' || g FROM generate_series(1, 100) g")
    target = psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=PG_DB, autocommit=True)
    target.execute("CREATE TABLE tls_dst (id int PRIMARY KEY, v text)")
    target.close()
    set_server_tls(db, "server")
    yield
    for (name,) in db.execute("SELECT name FROM sink.sinks WHERE starts_with(name, 'tls_')").fetchall():
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    for k in ("ssl", "ssl_cert_file", "ssl_key_file"):
        db.execute(f"ALTER SYSTEM RESET {k}")
    db.execute("SELECT pg_reload_conf()")
    db.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    db.execute("DROP TABLE IF EXISTS tls_src")


def jdbc_sink(db, name, url, ca=None, table="tls_dst"):
    opts = {"jdbc.url": url, "table.name": table}
    if ca:
        opts["ssl_ca"] = ca if ca.startswith("-----") else pem(ca)
    db.execute("SELECT sink.create_sink(%s, 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')", (name, json.dumps(opts)))


def refused(db, sql, params=()):
    """The SQLSTATE and message of a statement that must fail; nothing may remain."""
    slots = "SELECT array_agg(slot_name ORDER BY slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'pg_sink_%%'"
    before, slots_before = one(db, "SELECT count(*) FROM sink.sinks"), one(db, slots)
    with pytest.raises(psycopg.Error) as e:
        db.execute(sql, params)
    assert one(db, "SELECT count(*) FROM sink.sinks") == before
    # Slots of other tests' sinks may exist; this statement must not add one.
    assert one(db, slots) == slots_before
    return e.value.sqlstate, e.value.diag.message_primary, e.value.diag.message_hint or ""


def target_sessions_ssl(db):
    """(ssl, count) of the sink's sessions in the target database."""
    return db.execute(
        "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = %s AND a.application_name = 'pg_sink'", (PG_DB,)).fetchone()


def test_postgres_target_sslmodes(db, pg_tls):
    base = f"jdbc:postgresql://127.0.0.1:{PORT}/{PG_DB}?user=postgres"
    # verify-full: the chain and the name (IP 127.0.0.1) are checked; the session is TLS.
    jdbc_sink(db, "tls_full", base + "&sslmode=verify-full", ca="ca")
    wait_caught_up(db, "tls_full")
    t = psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=PG_DB)
    assert t.execute("SELECT count(*) FROM tls_dst").fetchone()[0] == 100
    t.close()
    db.execute("INSERT INTO tls_src VALUES (101, 'after')")
    wait_caught_up(db, "tls_full")
    ssl_on, n = target_sessions_ssl(db)
    assert n >= 1 and ssl_on is True
    db.execute("SELECT sink.drop_sink('tls_full')")

    # An unknown authority, or no ssl_ca (the public roots do not know the test CA).
    for ca in ("other-ca", None):
        code, msg, hint = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                                  (json.dumps({"jdbc.url": base + "&sslmode=verify-full", "table.name": "tls_dst",
                                               **({"ssl_ca": pem(ca)} if ca else {})}),))
        assert code == "22000" and "TLS" in msg and "UnknownIssuer" in msg, (code, msg)
        assert "ssl_ca" in hint
    code, msg, hint = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                              (json.dumps({"jdbc.url": base + "&sslrootcert=/etc/ssl/private/x", "table.name": "tls_dst"}),))
    assert code == "22023" and "ssl_ca" in hint

    # A certificate for another host: verify-full refuses, verify-ca and require accept.
    set_server_tls(db, "elsewhere")
    code, msg, _ = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                           (json.dumps({"jdbc.url": base + "&sslmode=verify-full", "table.name": "tls_dst", "ssl_ca": pem("ca")}),))
    assert "not valid for name" in msg, msg
    jdbc_sink(db, "tls_ca", base + "&sslmode=verify-ca", ca="ca")
    wait_caught_up(db, "tls_ca")
    assert target_sessions_ssl(db)[0] is True
    db.execute("SELECT sink.drop_sink('tls_ca')")
    # verify-ca still checks the chain.
    code, msg, _ = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                           (json.dumps({"jdbc.url": base + "&sslmode=verify-ca", "table.name": "tls_dst", "ssl_ca": pem("other-ca")}),))
    assert "UnknownIssuer" in msg, msg

    # A server without TLS: require refuses, the default (prefer) speaks plain TCP.
    set_server_tls(db, None)
    code, msg, _ = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                           (json.dumps({"jdbc.url": base + "&sslmode=require", "table.name": "tls_dst"}),))
    assert "TLS" in msg, msg
    jdbc_sink(db, "tls_prefer", base)
    wait_caught_up(db, "tls_prefer")
    assert target_sessions_ssl(db)[0] is False


# --- MariaDB -----------------------------------------------------------------------

def mysql(*stmts, **kw):
    conn = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", autocommit=True, **kw)
    try:
        with conn.cursor() as cur:
            out = None
            for s in stmts:
                cur.execute(s)
                out = cur.fetchall()
            return out
    finally:
        conn.close()


@pytest.fixture
def mysql_tls(db, mariadb_server, certs):
    mysql(f"DROP DATABASE IF EXISTS {MYSQL_DB}", f"CREATE DATABASE {MYSQL_DB}",
          f"CREATE TABLE {MYSQL_DB}.tls_dst (id INT PRIMARY KEY, v TEXT)",
          "DROP USER IF EXISTS 'tls_only'@'%'", "CREATE USER 'tls_only'@'%' IDENTIFIED BY 'tls-Secret-1' REQUIRE SSL",
          f"GRANT ALL PRIVILEGES ON {MYSQL_DB}.* TO 'tls_only'@'%'")
    db.execute("DROP TABLE IF EXISTS tls_src")
    db.execute("CREATE TABLE tls_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO tls_src SELECT g, 'v' || g FROM generate_series(1, 100) g")
    yield
    for (name,) in db.execute("SELECT name FROM sink.sinks WHERE starts_with(name, 'tls_')").fetchall():
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    mysql(f"DROP DATABASE IF EXISTS {MYSQL_DB}", "DROP USER IF EXISTS 'tls_only'@'%'")
    db.execute("DROP TABLE IF EXISTS tls_src")


def test_mysql_target_ssl_modes(db, mysql_tls):
    """The user `tls_only` is REQUIRE SSL: the server refuses it over plain TCP, so a
    delivered row proves the session was TLS."""
    ca = mysql_ca()
    base = f"jdbc:mysql://127.0.0.1:{MARIADB_PORT}/{MYSQL_DB}?user=tls_only&password=tls-Secret-1"
    for mode in ("VERIFY_IDENTITY", "VERIFY_CA", "REQUIRED"):
        name = f"tls_my_{mode.lower()}"
        mysql(f"DELETE FROM {MYSQL_DB}.tls_dst")
        jdbc_sink(db, name, f"{base}&sslMode={mode}", ca=ca if mode.startswith("VERIFY") else None)
        wait_caught_up(db, name)
        assert mysql(f"SELECT count(*) FROM {MYSQL_DB}.tls_dst")[0][0] == 100, mode
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    # The default (PREFERRED) also encrypts when the server offers TLS.
    mysql(f"DELETE FROM {MYSQL_DB}.tls_dst")
    jdbc_sink(db, "tls_my_default", base)
    wait_caught_up(db, "tls_my_default")
    assert mysql(f"SELECT count(*) FROM {MYSQL_DB}.tls_dst")[0][0] == 100
    db.execute("SELECT sink.drop_sink('tls_my_default')")
    # useSSL=false: plain TCP, which the server refuses for this user.
    code, msg, _ = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                           (json.dumps({"jdbc.url": base + "&useSSL=false", "table.name": "tls_dst"}),))
    assert "Access denied" in msg, msg
    # An unknown authority.
    code, msg, hint = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'jdbc', %s::jsonb, envelope => 'upsert')",
                              (json.dumps({"jdbc.url": base + "&sslMode=VERIFY_IDENTITY", "table.name": "tls_dst", "ssl_ca": pem("other-ca")}),))
    assert "TLS" in msg and "ssl_ca" in hint, msg
    # (A certificate for another host is refused by the same rustls check the
    # PostgreSQL test shows; MariaDB's certificate is fixed at its start.)


# --- NATS --------------------------------------------------------------------------

@pytest.fixture
def nats_tls(db, certs):
    work = "/tmp/pg_sink_nats_tls"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    binary = os.environ.get("NATS_SERVER", "/usr/sbin/nats-server")
    if not os.path.exists(binary):
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "nats.sh"), "status"], check=False)
    log = open(os.path.join(work, "nats.log"), "w")
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(NATS_TLS_PORT), "-js", "-sd", work,
                             "--tls", "--tlscert", f"{TLS}/server.pem", "--tlskey", f"{TLS}/server.key"],
                            stdout=log, stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=f"{TLS}/ca.pem")

    async def up():
        nc = await nats.connect(f"tls://127.0.0.1:{NATS_TLS_PORT}", tls=ctx, connect_timeout=2)
        js = nc.jetstream()
        await js.add_stream(name="TLS", subjects=["tls.>"])
        await nc.close()
    deadline = time.time() + 20
    while True:
        try:
            asyncio.new_event_loop().run_until_complete(up())
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.3)
    db.execute("DROP TABLE IF EXISTS tls_src")
    db.execute("CREATE TABLE tls_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO tls_src SELECT g, 'v' || g FROM generate_series(1, 100) g")
    yield ctx
    for (name,) in db.execute("SELECT name FROM sink.sinks WHERE starts_with(name, 'tls_')").fetchall():
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    db.execute("DROP TABLE IF EXISTS tls_src")


def stream_count(ctx):
    async def count():
        nc = await nats.connect(f"tls://127.0.0.1:{NATS_TLS_PORT}", tls=ctx)
        n = (await nc.jetstream().stream_info("TLS")).state.messages
        await nc.close()
        return n
    return asyncio.new_event_loop().run_until_complete(count())


def test_nats_verifies_the_server_certificate(db, nats_tls, nats_servers):
    def nats_opts(**kw):
        return json.dumps({"server_url": f"127.0.0.1:{NATS_TLS_PORT}", "subject": "tls.items", "jetstream": "true", **kw})
    db.execute("SELECT sink.create_sink('tls_nats', 'tls_src', 'nats', %s::jsonb)", (nats_opts(ssl_ca=pem("ca"), tls_required="true"),))
    wait_caught_up(db, "tls_nats")
    assert stream_count(nats_tls) == 100
    db.execute("SELECT sink.drop_sink('tls_nats')")
    # The server asks for TLS; without the authority the certificate does not verify.
    for opts in ({}, {"ssl_ca": pem("other-ca")}):
        code, msg, hint = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'nats', %s::jsonb)", (nats_opts(**opts),))
        assert "TLS" in msg or "certificate" in msg.lower(), msg
    # tls_required against a server without TLS (scripts/nats.sh's plain server).
    plain = json.dumps({"server_url": f"127.0.0.1:{NATS_PORT}", "subject": "tls.items", "tls_required": "true"})
    code, msg, hint = refused(db, "SELECT sink.create_sink('tls_bad', 'tls_src', 'nats', %s::jsonb)", (plain,))
    assert "TLS" in msg and "tls_required" in hint, msg
