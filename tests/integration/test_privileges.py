"""Privileges of connections, secrets, credentials and sinks, through sink.execute()
(Materialize, RisingWave and Kinetica statements) and the function API alike
(README: "Privileges").

Two non-superuser roles, pv_alice and pv_bob (LOGIN, USAGE on schema sink), are
created and dropped by each test. pv_alice owns the source table pv_src. Connections
use the file connector into a directory the postgres OS user can write
(conftest.out_dir), so no other server is needed. Every object is named pv_... and
dropped at the end (by the test, and by the fixture as a backstop)."""
import json
import os

import psycopg
import pytest

from conftest import execute as run, execute_fails as fails
from conftest import connect, file_records, one, out_dir, sqlstate_of, wait_caught_up, wait_started

ROLES = ("pv_alice", "pv_bob")
KIND_ORDER = {"sink": 0, "connection": 1, "secret": 2, "credential": 3}
DROP_FN = {
    "sink": "SELECT sink.drop_sink(%s, if_exists => true)",
    "connection": "SELECT sink.drop_connection(%s, if_exists => true)",
    "secret": "SELECT sink.drop_secret(%s, if_exists => true)",
    "credential": "SELECT sink.drop_credential(%s, true)",
}
STREAM = "CREATE STREAM {} ON TABLE pv_src WITH OPTIONS (DATASINK_NAME = 'pv_files')"


def ident(name):
    return '"' + name.replace('"', '""') + '"'


def pv_objects(db):
    return set(db.execute("SELECT kind, name FROM sink.objects WHERE name LIKE 'pv%%' OR owner::text = ANY(%s)", (list(ROLES),)).fetchall())


def sinks_of(db, role):
    return [r[0] for r in db.execute("SELECT name FROM sink.sinks WHERE owner::text = %s ORDER BY name", (role,)).fetchall()]


def cleanup(db):
    for kind, name in sorted(pv_objects(db), key=lambda o: KIND_ORDER.get(o[0], 9)):
        db.execute(DROP_FN[kind], (name,))


def drop_roles(db):
    for r in ROLES:
        if one(db, "SELECT count(*) FROM pg_roles WHERE rolname = %s", r):
            db.execute(f"DROP OWNED BY {r}")
            db.execute(f"DROP ROLE {r}")


def delivered_ids(directory, sink):
    """Ids in a file sink's Debezium records (the default envelope of a stream)."""
    return {r["value"]["after"]["id"] for r in file_records(directory, sink) if r["value"] and r["value"].get("after")}


def ids_under(directory):
    """Debezium ids in every .jsonl file below `directory` (the per-sink folder's
    spelling of an unusual sink name is the connector's business)."""
    ids = set()
    for root, _, files in os.walk(directory):
        for f in sorted(files):
            if f.endswith(".jsonl") and "_manifest" not in root:
                with open(os.path.join(root, f)) as fh:
                    for line in fh:
                        r = json.loads(line) if line.strip() else None
                        if r and r["value"] and r["value"].get("after"):
                            ids.add(r["value"]["after"]["id"])
    return ids


def privilege_row(rows, command, kind, name, role):
    assert [(r["command"], r["kind"], r["name"]) for r in rows] == [(command, kind, name)], rows
    assert rows[0]["details"].get("privilege") == "USAGE", rows
    assert rows[0]["details"].get("roles") == [role], rows


@pytest.fixture
def roles(db):
    d = out_dir("pv_files")
    cleanup(db)
    drop_roles(db)
    for r in ROLES:
        db.execute(f"CREATE ROLE {r} LOGIN")
        db.execute(f"GRANT USAGE ON SCHEMA sink TO {r}")
        db.execute(f"GRANT sink_creator TO {r}")
    db.execute("DROP TABLE IF EXISTS pv_src, pv_canary CASCADE")
    db.execute("CREATE TABLE pv_src (id int PRIMARY KEY, v text)")
    db.execute("ALTER TABLE pv_src OWNER TO pv_alice")
    alice, bob = connect("pv_alice"), connect("pv_bob")
    yield alice, bob, d
    alice.close()
    bob.close()
    cleanup(db)
    db.execute("DROP TABLE IF EXISTS pv_src, pv_canary CASCADE")
    drop_roles(db)


def test_usage_on_a_connection_is_granted_revoked_and_checked(db, roles):
    alice, bob, d = roles
    rows = run(alice, f"CREATE DATA SINK pv_files LOCATION = 'file://{d}'")
    assert [(r["kind"], r["name"], r["owner"], r["connector"]) for r in rows] == [("connection", "pv_files", "pv_alice", "file")]
    run(alice, STREAM.format("pv_alice_stream"))
    alice.execute("INSERT INTO pv_src VALUES (1, 'one')")
    wait_caught_up(db, "pv_alice_stream", timeout=60)
    assert delivered_ids(d, "pv_alice_stream") == {1}

    # No SELECT on the source: refused.
    st, msg, _, _ = fails(bob, STREAM.format("pv_bob_stream"))
    assert st == "42501" and "pv_src" in msg, (st, msg)
    alice.execute("GRANT SELECT ON pv_src TO pv_bob")
    # SELECT but no USAGE on alice's connection: refused, naming the connection, in both APIs.
    st, msg, detail, hint = fails(bob, STREAM.format("pv_bob_stream"))
    assert st == "42501" and 'permission denied for connection "pv_files"' in msg, (st, msg)
    assert (detail or "").strip() or (hint or "").strip()
    st, msg, _, _ = sqlstate_of(bob, "SELECT sink.create_sink('pv_bob_fn', 'pv_src', connection => 'pv_files')")
    assert st == "42501" and "pv_files" in msg, (st, msg)
    assert sinks_of(db, "pv_bob") == []

    # 1. GRANT USAGE ON CONNECTION through sink.execute.
    privilege_row(run(alice, "GRANT USAGE ON CONNECTION pv_files TO pv_bob"), "GRANT", "connection", "pv_files", "pv_bob")
    rows = run(bob, STREAM.format("pv_bob_stream"))
    assert [(r["kind"], r["name"], r["owner"]) for r in rows] == [("sink", "pv_bob_stream", "pv_bob")]
    assert one(db, "SELECT connection FROM sink.sinks WHERE name = 'pv_bob_stream'") == "pv_files"
    wait_started(db, "pv_bob_stream")
    privilege_row(run(alice, "REVOKE USAGE ON CONNECTION pv_files FROM pv_bob"), "REVOKE", "connection", "pv_files", "pv_bob")
    st, msg, _, _ = fails(bob, STREAM.format("pv_bob_stream2"))
    assert st == "42501" and "pv_files" in msg, (st, msg)
    # ... but the sink bob already has keeps delivering.
    alice.execute("INSERT INTO pv_src VALUES (2, 'two')")
    wait_caught_up(db, "pv_bob_stream", timeout=60)
    assert delivered_ids(d, "pv_bob_stream") == {1, 2}
    assert one(db, "SELECT state FROM sink.sinks WHERE name = 'pv_bob_stream'") == "running"

    # 2. The function API.
    alice.execute("SELECT sink.grant_usage('connection', 'pv_files', 'pv_bob')")
    bob.execute("SELECT sink.create_sink('pv_bob_fn', 'pv_src', connection => 'pv_files')")
    alice.execute("SELECT sink.revoke_usage('connection', 'pv_files', 'pv_bob')")
    st, msg, _, _ = sqlstate_of(bob, "SELECT sink.create_sink('pv_bob_fn2', 'pv_src', connection => 'pv_files')")
    assert st == "42501" and "pv_files" in msg, (st, msg)

    # 3. Kinetica's GRANT CONNECT ON DATA SINK.
    rows = run(alice, "GRANT CONNECT ON DATA SINK pv_files TO pv_bob")
    assert [(r["command"], r["kind"], r["name"]) for r in rows] == [("GRANT", "connection", "pv_files")]
    assert rows[0]["details"].get("roles") == ["pv_bob"]
    run(bob, STREAM.format("pv_bob_stream3"))
    rows = run(alice, "REVOKE CONNECT ON DATA SINK pv_files FROM pv_bob")
    assert [(r["command"], r["kind"], r["name"]) for r in rows] == [("REVOKE", "connection", "pv_files")]
    st, _, _, _ = fails(bob, STREAM.format("pv_bob_stream4"))
    assert st == "42501"

    # Only the owner grants: bob cannot give himself USAGE back, in any spelling.
    for sql in ("GRANT USAGE ON CONNECTION pv_files TO pv_bob", "GRANT CONNECT ON DATA SINK pv_files TO pv_bob",
                "REVOKE USAGE ON CONNECTION pv_files FROM pv_alice"):
        st, msg, _, _ = fails(bob, sql)
        assert st == "42501" and "must be owner" in msg and "pv_files" in msg, (sql, st, msg)
    st, msg, _, _ = sqlstate_of(bob, "SELECT sink.grant_usage('connection', 'pv_files', 'pv_bob')")
    assert st == "42501" and "must be owner" in msg, (st, msg)
    st, _, _, _ = fails(bob, STREAM.format("pv_bob_stream5"))
    assert st == "42501"
    assert sinks_of(db, "pv_bob") == ["pv_bob_fn", "pv_bob_stream", "pv_bob_stream3"]

    # Every sink bob made while he had USAGE still runs after all the revokes.
    alice.execute("INSERT INTO pv_src VALUES (3, 'three')")
    for s in ("pv_bob_fn", "pv_bob_stream", "pv_bob_stream3"):
        wait_caught_up(db, s, timeout=60)
        assert 3 in delivered_ids(d, s), s
    # Bob drops his own sinks; alice's stays.
    rows = run(bob, "DROP SINK pv_bob_stream; DROP STREAM pv_bob_stream3")
    assert [r["details"].get("dropped") for r in rows] == [True, True]
    bob.execute("SELECT sink.drop_sink('pv_bob_fn')")
    assert sinks_of(db, "pv_bob") == [] and sinks_of(db, "pv_alice") == ["pv_alice_stream"]


def test_membership_in_the_owner_role_counts_as_ownership(db, roles):
    alice, bob, d = roles
    run(alice, f"CREATE DATA SINK pv_files LOCATION = 'file://{d}'; CREATE SECRET pv_team_secret AS 'pv-team-secret-5577'")
    alice.execute("GRANT SELECT ON pv_src TO pv_bob")
    db.execute("GRANT pv_alice TO pv_bob")
    rows = run(bob, STREAM.format("pv_bob_member"))
    assert [(r["name"], r["owner"]) for r in rows] == [("pv_bob_member", "pv_bob")]
    rows = run(bob, "ALTER SECRET pv_team_secret AS 'pv-team-secret-6688'")
    assert rows[0]["details"].get("altered") is True
    assert one(db, "SELECT value FROM sink.secrets WHERE name = 'pv_team_secret'") == "pv-team-secret-6688"
    db.execute("REVOKE pv_alice FROM pv_bob")
    st, msg, _, _ = fails(bob, STREAM.format("pv_bob_member2"))
    assert st == "42501" and "pv_files" in msg, (st, msg)
    st, msg, _, _ = fails(bob, "ALTER SECRET pv_team_secret AS 'pv-team-secret-7799'")
    assert st == "42501" and "must be owner" in msg, (st, msg)
    assert one(db, "SELECT value FROM sink.secrets WHERE name = 'pv_team_secret'") == "pv-team-secret-6688"
    assert sinks_of(db, "pv_bob") == ["pv_bob_member"]


def state_of(db):
    """What an unauthorised statement must leave alone (grants aside)."""
    return (
        db.execute("SELECT kind, name, owner::text FROM sink.objects WHERE name LIKE 'pv%%' ORDER BY 1, 2").fetchall(),
        db.execute("SELECT name, options::text FROM sink.connections WHERE name LIKE 'pv%%' ORDER BY 1").fetchall(),
        db.execute("SELECT name, value FROM sink.secrets WHERE name LIKE 'pv%%' ORDER BY 1").fetchall(),
        db.execute("SELECT name, state, options::text FROM sink.sinks WHERE name LIKE 'pv%%' ORDER BY 1").fetchall(),
        json.dumps(run(db, "SHOW CREDENTIAL pv_alice_cred"), default=str),
    )


def test_only_the_owner_drops_alters_or_grants(db, roles):
    alice, bob, d = roles
    run(alice, f"""CREATE DATA SINK pv_spare LOCATION = 'file://{d}/spare';
CREATE DATA SINK pv_files LOCATION = 'file://{d}';
CREATE SECRET pv_alice_secret AS 'pv-alice-secret-value-7f3c';
CREATE CREDENTIAL pv_alice_cred TYPE = 'password', IDENTITY = 'pv_ident', SECRET = 'pv-alice-credential-secret-91d2';""")
    run(alice, STREAM.format("pv_alice_stream"))
    before = state_of(db)
    statements = [
        ("DROP CONNECTION pv_spare", "pv_spare"),
        ("DROP DATA SINK pv_spare", "pv_spare"),
        (f"ALTER DATA SINK pv_spare SET PROPERTY LOCATION = 'file://{d}/bob'", "pv_spare"),
        ("GRANT USAGE ON CONNECTION pv_spare TO pv_bob", "pv_spare"),
        ("REVOKE USAGE ON CONNECTION pv_spare FROM pv_alice", "pv_spare"),
        ("GRANT CONNECT ON DATA SINK pv_spare TO pv_bob", "pv_spare"),
        ("DROP SECRET pv_alice_secret", "pv_alice_secret"),
        ("ALTER SECRET pv_alice_secret AS 'bob-was-here'", "pv_alice_secret"),
        ("GRANT USAGE ON SECRET pv_alice_secret TO pv_bob", "pv_alice_secret"),
        ("REVOKE USAGE ON SECRET pv_alice_secret FROM pv_alice", "pv_alice_secret"),
        ("DROP CREDENTIAL pv_alice_cred", "pv_alice_cred"),
        ("ALTER CREDENTIAL pv_alice_cred SET PROPERTY IDENTITY = 'bob'", "pv_alice_cred"),
        ("DROP SINK pv_alice_stream", "pv_alice_stream"),
        ("DROP STREAM pv_alice_stream", "pv_alice_stream"),
    ]
    for sql, name in statements:
        st, msg, _, _ = fails(bob, sql)
        assert st == "42501" and "must be owner" in msg and name in msg, (sql, st, msg)
    functions = [
        "SELECT sink.drop_connection('pv_spare')",
        "SELECT sink.alter_connection('pv_spare', '{\"location\": \"file:///tmp\"}')",
        "SELECT sink.grant_usage('connection', 'pv_spare', 'pv_bob')",
        "SELECT sink.revoke_usage('connection', 'pv_spare', 'pv_alice')",
        "SELECT sink.drop_secret('pv_alice_secret')",
        "SELECT sink.alter_secret('pv_alice_secret', 'bob-was-here')",
        "SELECT sink.grant_usage('secret', 'pv_alice_secret', 'pv_bob')",
        "SELECT sink.drop_credential('pv_alice_cred', false)",
        "SELECT sink.alter_credential('pv_alice_cred', '{\"identity\": \"bob\"}')",
        "SELECT sink.grant_usage('credential', 'pv_alice_cred', 'pv_bob')",
        "SELECT sink.drop_sink('pv_alice_stream')",
        "SELECT sink.pause_sink('pv_alice_stream')",
        "SELECT sink.alter_sink('pv_alice_stream', '{\"max_file_size\": 1048576}')",
    ]
    for sql in functions:
        st, msg, _, _ = sqlstate_of(bob, sql)
        assert st == "42501" and "must be owner" in msg, (sql, st, msg)
    # USAGE is not ownership.
    run(alice, "GRANT USAGE ON CONNECTION pv_spare TO pv_bob; GRANT USAGE ON SECRET pv_alice_secret TO pv_bob")
    for sql in ("DROP DATA SINK pv_spare", "ALTER SECRET pv_alice_secret AS 'bob-was-here'", "GRANT USAGE ON SECRET pv_alice_secret TO pv_bob"):
        st, msg, _, _ = fails(bob, sql)
        assert st == "42501" and "must be owner" in msg, (sql, st, msg)
    assert state_of(db) == before, "refused statements changed nothing"
    # The owner can do all of it.
    rows = run(alice, f"""ALTER SECRET pv_alice_secret AS 'pv-alice-secret-value-8a4d';
ALTER CREDENTIAL pv_alice_cred SET PROPERTY IDENTITY = 'pv_ident2';
ALTER DATA SINK pv_spare SET PROPERTY LOCATION = 'file://{d}/spare2'""")
    assert [r["details"].get("altered") for r in rows] == [True, True, True]
    assert f"{d}/spare2" in json.dumps(one(db, "SELECT options FROM sink.connections WHERE name = 'pv_spare'"))
    assert run(alice, "SHOW CREDENTIAL pv_alice_cred")[0]["details"]["identity"] == "pv_ident2"
    rows = run(alice, "DROP STREAM pv_alice_stream; DROP DATA SINK pv_spare; DROP DATA SINK pv_files; DROP SECRET pv_alice_secret; DROP CREDENTIAL pv_alice_cred")
    assert [r["details"].get("dropped") for r in rows] == [True] * 5
    assert pv_objects(db) == set()


def test_secret_and_credential_values_are_never_readable(db, roles):
    alice, bob, d = roles
    secret, cred_secret, rotated = "pv-alice-secret-value-7f3c", "pv-alice-credential-secret-91d2", "pv-alice-rotated-secret-c4e9"
    run(alice, f"""CREATE SECRET pv_alice_secret AS '{secret}';
CREATE CREDENTIAL pv_alice_cred TYPE = 'kafka', IDENTITY = 'pv_ident', SECRET = '{cred_secret}';
CREATE CONNECTION pv_alice_kafka TO KAFKA (
    BROKER '127.0.0.1:1',
    SASL USERNAME = 'pv',
    SASL PASSWORD = SECRET pv_alice_secret
) WITH (VALIDATE = false);
CREATE DATA SINK pv_alice_kds LOCATION = 'kafka://127.0.0.1:1'
WITH OPTIONS (CREDENTIAL = 'pv_alice_cred', KAFKA_TOPIC_NAME = 'pv-topic', SKIP_VALIDATION = 'true')""")
    # Not even the owner reads a value back through SQL.
    for conn in (alice, bob):
        for sql in ("SELECT value FROM sink.secrets", "SELECT * FROM sink.secrets", "SELECT value FROM sink.secrets WHERE name = 'pv_alice_secret'"):
            st, _, _, _ = sqlstate_of(conn, sql)
            assert st == "42501", (sql, st)
    assert one(db, "SELECT value FROM sink.secrets WHERE name = 'pv_alice_secret'") == secret, "superusers can"
    assert one(db, "SELECT options FROM sink.connections WHERE name = 'pv_alice_kafka'")["sasl_password"] == {"secret": "pv_alice_secret"}
    shown = run(alice, "SHOW SECRETS")
    assert "pv_alice_secret" in {r["name"] for r in shown}
    cred = run(alice, "SHOW CREDENTIAL pv_alice_cred")
    assert len(cred) == 1 and cred[0]["details"]["type"] == "kafka" and cred[0]["details"]["identity"] == "pv_ident"
    run(alice, f"ALTER SECRET pv_alice_secret AS '{rotated}'")

    def everything(conn):
        return [run(conn, "SHOW SECRETS"), run(conn, "SHOW CREDENTIAL *"), run(conn, "SHOW CONNECTIONS"), run(conn, "SHOW DATA SINK *"),
                run(conn, "SHOW SINKS"), conn.execute("SELECT * FROM sink.objects").fetchall(),
                conn.execute("SELECT * FROM sink.connections").fetchall(), conn.execute("SELECT * FROM sink.sinks").fetchall()]

    for who, conn in (("pv_alice", alice), ("pv_bob", bob), ("postgres", db)):
        text = json.dumps(everything(conn), default=str)
        for value in (secret, cred_secret, rotated):
            assert value not in text, f"{value} visible to {who}"
        if who != "pv_bob":
            assert "pv_alice_cred" in json.dumps(run(conn, "SHOW CREDENTIAL pv_alice_cred"))


def test_using_another_roles_secret_or_credential_needs_usage(db, roles):
    alice, bob, d = roles
    via = f"{d}/via_secret"
    run(alice, f"""CREATE SECRET pv_dir_secret AS '{via}';
CREATE SECRET pv_alice_pw AS 'pv-alice-pw-5e1a';
CREATE CREDENTIAL pv_alice_cred TYPE = 'password', IDENTITY = 'hookuser', SECRET = 'pv-hook-secret-0b7d'""")
    alice.execute("GRANT SELECT ON pv_src TO pv_bob")
    file_conn = "SELECT sink.create_connection('pv_bob_conn', 'file', %s::jsonb)"
    direct = "SELECT sink.create_sink('pv_bob_direct', 'pv_src', 'file', %s::jsonb)"
    via_secret = json.dumps({"path": {"secret": "pv_dir_secret"}})
    kafka = "CREATE CONNECTION pv_bob_kafka TO KAFKA (BROKER '127.0.0.1:1', SASL USERNAME = 'bob', SASL PASSWORD = SECRET pv_alice_pw) WITH (VALIDATE = false)"
    hook = "CREATE DATA SINK pv_bob_hook LOCATION = 'http://127.0.0.1:1/hook' WITH OPTIONS (CREDENTIAL = 'pv_alice_cred', SKIP_VALIDATION = 'true')"

    def refused():
        for what, (st, msg, _, _), name in (
            ("function API connection", sqlstate_of(bob, file_conn, via_secret), "pv_dir_secret"),
            ("function API sink option", sqlstate_of(bob, direct, via_secret), "pv_dir_secret"),
            ("SECRET name in CREATE CONNECTION", fails(bob, kafka), "pv_alice_pw"),
            ("CREDENTIAL in CREATE DATA SINK", fails(bob, hook), "pv_alice_cred"),
        ):
            assert st == "42501" and name in msg, (what, st, msg)

    refused()
    assert {o for o in pv_objects(db) if o[1].startswith("pv_bob")} == set()
    privilege_row(run(alice, "GRANT USAGE ON SECRET pv_dir_secret TO pv_bob"), "GRANT", "secret", "pv_dir_secret", "pv_bob")
    privilege_row(run(alice, "GRANT USAGE ON SECRET pv_alice_pw TO pv_bob"), "GRANT", "secret", "pv_alice_pw", "pv_bob")
    alice.execute("SELECT sink.grant_usage('credential', 'pv_alice_cred', 'pv_bob')")
    bob.execute(file_conn, (via_secret,))
    bob.execute(direct, (via_secret,))
    assert [r["name"] for r in run(bob, kafka)] == ["pv_bob_kafka"]
    assert [r["name"] for r in run(bob, hook)] == ["pv_bob_hook"]
    opts = dict(db.execute("SELECT name, options FROM sink.connections WHERE name LIKE 'pv\\_bob%%'").fetchall())
    assert opts["pv_bob_conn"]["path"] == {"secret": "pv_dir_secret"}
    assert opts["pv_bob_kafka"]["sasl_password"] == {"secret": "pv_alice_pw"}
    text = json.dumps(opts)
    assert via not in text and "pv-alice-pw-5e1a" not in text and "pv-hook-secret-0b7d" not in text
    st, _, _, _ = sqlstate_of(bob, "SELECT value FROM sink.secrets")
    assert st == "42501", "USAGE lets bob use a secret, not read it"
    # Bob's sink writes where the secret says.
    bob.execute("SELECT sink.create_sink('pv_bob_sec_sink', 'pv_src', connection => 'pv_bob_conn')")
    alice.execute("INSERT INTO pv_src VALUES (1, 'one')")
    wait_caught_up(db, "pv_bob_sec_sink", timeout=60)
    wait_caught_up(db, "pv_bob_direct", timeout=60)
    assert delivered_ids(via, "pv_bob_sec_sink") == {1}
    assert delivered_ids(via, "pv_bob_direct") == {1}
    # Revoking stops new uses, not the sinks that exist.
    privilege_row(run(alice, "REVOKE USAGE ON SECRET pv_alice_pw FROM pv_bob"), "REVOKE", "secret", "pv_alice_pw", "pv_bob")
    run(alice, "REVOKE USAGE ON SECRET pv_dir_secret FROM pv_bob")
    alice.execute("SELECT sink.revoke_usage('credential', 'pv_alice_cred', 'pv_bob')")
    st, msg, _, _ = fails(bob, kafka.replace("pv_bob_kafka", "pv_bob_kafka2"))
    assert st == "42501" and "pv_alice_pw" in msg, (st, msg)
    st, msg, _, _ = fails(bob, hook.replace("pv_bob_hook", "pv_bob_hook2"))
    assert st == "42501" and "pv_alice_cred" in msg, (st, msg)
    st, msg, _, _ = sqlstate_of(bob, "SELECT sink.create_connection('pv_bob_conn2', 'file', %s::jsonb)", via_secret)
    assert st == "42501" and "pv_dir_secret" in msg, (st, msg)
    alice.execute("INSERT INTO pv_src VALUES (2, 'two')")
    wait_caught_up(db, "pv_bob_sec_sink", timeout=60)
    assert delivered_ids(via, "pv_bob_sec_sink") == {1, 2}


def test_names_and_values_travel_as_data(db, roles):
    alice, bob, d = roles
    db.execute("CREATE TABLE pv_canary (id int)")
    db.execute("INSERT INTO pv_canary VALUES (42)")
    tables = lambda: set(db.execute("SELECT oid::regclass::text FROM pg_class WHERE relkind IN ('r', 'p')").fetchall())
    tables_before, objects_before = tables(), set(db.execute("SELECT kind, name FROM sink.objects").fetchall())
    secret_name = "pv_s'); DROP TABLE pv_canary; --"
    sink_dir = f"{d}/it's; DROP TABLE pv_canary; --"
    cases = [
        # (who, statement, kind, exact name it must get if it succeeds)
        (alice, "CREATE SECRET \"pv_s'); DROP TABLE pv_canary; --\" AS 'x''); DROP TABLE pv_canary; --'", "secret", secret_name),
        (alice, f"CREATE DATA SINK \"pv conn \"\"quoted\"\" ; -- x\" LOCATION = 'file://{d}/inj'", "connection", 'pv conn "quoted" ; -- x'),
        (alice, f"CREATE SINK \"pv sink; DROP TABLE pv_canary\" FROM pv_src WITH (connector = 'file', path = '{d}/it''s; DROP TABLE pv_canary; --')",
         "sink", "pv sink; DROP TABLE pv_canary"),
        (alice, "CREATE CONNECTION pv_inj_kafka TO KAFKA (BROKER '127.0.0.1:1', SASL USERNAME = 'a\"b''c; DROP TABLE pv_canary; --', "
                "SASL PASSWORD = SECRET \"pv_s'); DROP TABLE pv_canary; --\") WITH (VALIDATE = false)", "connection", "pv_inj_kafka"),
        (alice, "CREATE CREDENTIAL \"pv cred '' ; DROP TABLE pv_canary\" TYPE = 'password', IDENTITY = 'pv''; DROP TABLE pv_canary; --', SECRET = 'x'",
         "credential", "pv cred '' ; DROP TABLE pv_canary"),
        (db, "CREATE DATA SINK pv_inj_hook LOCATION = 'http://127.0.0.1:1/x?q='');DROP TABLE pv_canary;--' WITH OPTIONS (SKIP_VALIDATION = 'true')",
         "connection", "pv_inj_hook"),
        (db, "CREATE SECRET \"pv_su'; DROP TABLE pv_canary; --\" AS '$$; DROP TABLE pv_canary; $$'", "secret", "pv_su'; DROP TABLE pv_canary; --"),
        (alice, "CREATE SECRET pv_comment AS 'a' -- '; DROP TABLE pv_canary", "secret", "pv_comment"),
        (alice, "CREATE SECRET pv_block /* '; DROP TABLE pv_canary; */ AS 'b'", "secret", "pv_block"),
        (alice, "CREATE SECRET \"pv_" + "x" * 70 + "\" AS 'long'", "secret", "pv_" + "x" * 70),
        # These must fail: a Postgres statement after a sink one, an E'' string, a role that does not exist.
        (alice, "CREATE SECRET pv_ok AS 'ok'; DROP TABLE pv_canary", None, None),
        (db, "CREATE SECRET pv_ok2 AS 'ok'; DROP TABLE pv_canary", None, None),
        (alice, "CREATE SECRET pv_e AS E'\\x27; DROP TABLE pv_canary; --'", None, None),
        (alice, "GRANT USAGE ON CONNECTION pv_inj_kafka TO \"pv_bob; DROP TABLE pv_canary\"", None, None),
    ]
    made = set()
    for who, sql, kind, name in cases:
        try:
            rows = run(who, sql)
        except psycopg.Error as e:
            assert e.sqlstate in ("42601", "42602", "42622", "22023", "42704", "0A000"), (sql, e.sqlstate, str(e))
            assert (e.diag.message_primary or "").strip(), sql
            continue
        assert kind is not None, f"must fail: {sql}"
        assert [(r["kind"], r["name"]) for r in rows] == [(kind, name)], (sql, rows)
        made.add((kind, name))
    assert one(db, "SELECT count(*) FROM pv_canary") == 1, "the canary survives"
    assert one(db, "SELECT to_regclass('pv_src') IS NOT NULL")
    assert not {("secret", "pv_ok"), ("secret", "pv_ok2"), ("secret", "pv_e")} & set(db.execute("SELECT kind, name FROM sink.objects").fetchall())
    # Function API with the same kind of names and values, as parameters.
    fn_secret, fn_conn, fn_sink = "pv_fn'); DROP TABLE pv_canary; --", 'pv fn "conn"; --', "pv fn sink'); DROP TABLE pv_canary; --"
    fn_dir = f"{d}/fn'; DROP TABLE pv_canary; --"
    alice.execute("SELECT sink.create_secret(%s, %s)", (fn_secret, "v'; DROP TABLE pv_canary; --"))
    alice.execute("SELECT sink.create_connection(%s, 'file', %s::jsonb)", (fn_conn, json.dumps({"path": fn_dir})))
    alice.execute("SELECT sink.create_sink(%s, 'pv_src', connection => %s)", (fn_sink, fn_conn))
    made |= {("secret", fn_secret), ("connection", fn_conn), ("sink", fn_sink)}
    # Exactly what was asked for exists, stored as given.
    objects_after = set(db.execute("SELECT kind, name FROM sink.objects").fetchall())
    assert objects_after - objects_before == made
    assert tables() == tables_before
    if ("secret", secret_name) in made:
        assert one(db, "SELECT value FROM sink.secrets WHERE name = %s", secret_name) == "x'); DROP TABLE pv_canary; --"
    if ("secret", "pv_su'; DROP TABLE pv_canary; --") in made:
        assert one(db, "SELECT value FROM sink.secrets WHERE name = %s", "pv_su'; DROP TABLE pv_canary; --") == "$$; DROP TABLE pv_canary; $$"
    if ("secret", "pv_comment") in made:
        assert one(db, "SELECT value FROM sink.secrets WHERE name = 'pv_comment'") == "a"
    if ("secret", "pv_block") in made:
        assert one(db, "SELECT value FROM sink.secrets WHERE name = 'pv_block'") == "b"
    assert one(db, "SELECT value FROM sink.secrets WHERE name = %s", fn_secret) == "v'; DROP TABLE pv_canary; --"
    if ("connection", "pv_inj_kafka") in made:
        o = one(db, "SELECT options FROM sink.connections WHERE name = 'pv_inj_kafka'")
        assert o["sasl_username"] == "a\"b'c; DROP TABLE pv_canary; --"
        assert o["sasl_password"] == {"secret": secret_name}
    if ("connection", "pv_inj_hook") in made:
        assert "http://127.0.0.1:1/x?q=');DROP TABLE pv_canary;--" in json.dumps(one(db, "SELECT options FROM sink.connections WHERE name = 'pv_inj_hook'"))
    if ("credential", "pv cred '' ; DROP TABLE pv_canary") in made:
        shown = run(alice, "SHOW CREDENTIAL " + ident("pv cred '' ; DROP TABLE pv_canary"))
        assert shown[0]["details"]["identity"] == "pv'; DROP TABLE pv_canary; --"
    # The sinks with such names run and deliver.
    alice.execute("INSERT INTO pv_src VALUES (1, 'one')")
    wait_caught_up(db, fn_sink, timeout=60)
    assert ids_under(fn_dir) == {1}
    if ("sink", "pv sink; DROP TABLE pv_canary") in made:
        s = one(db, "SELECT options FROM sink.sinks WHERE name = 'pv sink; DROP TABLE pv_canary'")
        assert s["path"] == sink_dir
        wait_caught_up(db, "pv sink; DROP TABLE pv_canary", timeout=60)
        assert ids_under(sink_dir) == {1}
    # Dropped again by their quoted names, through the dialect surface.
    drops = "; ".join(f"DROP {kind.upper()} {ident(name)}" for kind, name in sorted(made, key=lambda o: KIND_ORDER[o[0]]))
    rows = run(db, drops)
    assert sorted((r["kind"], r["name"]) for r in rows) == sorted(made)
    assert all(r["details"].get("dropped") is True for r in rows)
    assert set(db.execute("SELECT kind, name FROM sink.objects").fetchall()) == objects_before
    assert one(db, "SELECT count(*) FROM pv_canary") == 1
    assert tables() == tables_before
