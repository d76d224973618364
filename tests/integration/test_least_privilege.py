"""Least privilege: a role that is not a superuser tries to get more through
pg_sink than Postgres would give it. Each attempt must be refused with a clear
SQLSTATE error and change nothing: the role stays unprivileged, no sink or
table appears, no command runs on the server's shell.

The role lp_eve (LOGIN, USAGE on schema sink) owns lp_src and may create in
schema lp_eve_s, nothing else."""
import json
import os
import shutil
import time

import pytest

from conftest import connect, one, out_dir, sqlstate_of

ROLE = "lp_eve"
CANARY = "/tmp/pg_sink_lp_canary"


def _drop(db):
    db.execute("SELECT sink.drop_sink(name) FROM sink.sinks WHERE name LIKE 'lp%%'")
    if one(db, "SELECT count(*) FROM pg_roles WHERE rolname = %s", ROLE):
        db.execute(f"DROP OWNED BY {ROLE}")
        db.execute(f"DROP ROLE {ROLE}")
    db.execute("DROP SCHEMA IF EXISTS lp_eve_s, lp_locked CASCADE")
    db.execute("DROP TABLE IF EXISTS lp_src CASCADE")


@pytest.fixture
def eve(db):
    _drop(db)
    if os.path.exists(CANARY):
        os.remove(CANARY)
    db.execute(f"CREATE ROLE {ROLE} LOGIN")
    db.execute(f"GRANT USAGE ON SCHEMA sink TO {ROLE}")
    db.execute(f"GRANT sink_creator TO {ROLE}")
    db.execute(f"CREATE SCHEMA lp_eve_s AUTHORIZATION {ROLE}")
    db.execute("CREATE SCHEMA lp_locked")
    db.execute(f"GRANT USAGE ON SCHEMA lp_locked TO {ROLE}")
    db.execute("CREATE TABLE lp_src (id int PRIMARY KEY, v text)")
    db.execute(f"ALTER TABLE lp_src OWNER TO {ROLE}")
    conn = connect(ROLE)
    # Does nothing for its caller, escalates when a superuser runs it.
    conn.execute(f"""CREATE FUNCTION lp_eve_s.evil() RETURNS int LANGUAGE plpgsql AS $f$
                     BEGIN
                       IF current_setting('is_superuser') = 'on' THEN
                         EXECUTE 'ALTER ROLE lp_eve SUPERUSER';
                         EXECUTE $c$COPY (SELECT 1) TO PROGRAM 'touch {CANARY}'$c$;
                       END IF;
                       RETURN 1;
                     END $f$""")
    yield conn
    conn.close()
    _drop(db)


def _unchanged(db):
    assert one(db, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", ROLE) is False, "the role became superuser"
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name LIKE 'lp%%'") == 0, "a sink was created"
    assert not os.path.exists(CANARY), "a shell command ran"


# A DO block that does nothing for the caller and escalates when run as a superuser.
ESCALATE = ("DO $x$ BEGIN IF current_setting('is_superuser') = 'on' THEN EXECUTE 'ALTER ROLE lp_eve SUPERUSER'; "
            f"EXECUTE $c$COPY (SELECT 1) TO PROGRAM 'touch {CANARY}'$c$; END IF; END $x$")

FILTERS = [
    "true); SELECT lp_eve_s.evil()::text; SELECT 'x'::text WHERE (true",
    "id > 0) ; SELECT lp_eve_s.evil()::text; SELECT 'x'::text --",
    f"true); {ESCALATE}; SELECT (1",
    "true) OR (lp_eve_s.evil() = 1",
]


@pytest.mark.parametrize("filt", FILTERS)
def test_a_row_filter_cannot_carry_a_second_statement(db, eve, filt):
    d = out_dir("lp_files")
    st, msg, _, _ = sqlstate_of(eve, "SELECT sink.create_sink('lp_f', %s, 'file', %s::jsonb)",
                                f"SELECT * FROM lp_src WHERE {filt}", json.dumps({"path": d}))
    assert st is not None and st[:2] in ("42", "0A"), (st, msg)
    _unchanged(db)


TARGETS = [
    "lp_eve_s.x (a int); SELECT lp_eve_s.evil(); CREATE TABLE lp_eve_s.y",
    f"lp_eve_s.x (a int); {ESCALATE}; CREATE TABLE lp_eve_s.y",
    f'lp_eve_s."x" (a int); {ESCALATE}; --',
    f"lp_eve_s.t AS SELECT 1; {ESCALATE}; CREATE TABLE lp_eve_s.z",
]


@pytest.mark.parametrize("target", TARGETS)
def test_a_table_target_name_is_a_name_not_sql(db, eve, target):
    st, msg, _, _ = sqlstate_of(eve, "SELECT sink.create_sink('lp_t', 'lp_src', 'table', %s::jsonb, envelope => 'upsert')",
                                json.dumps({"table": target}))
    assert st is not None and st[:2] in ("42", "22"), (st, msg)
    _unchanged(db)


def test_a_quoted_target_name_is_created_as_that_name(db, eve):
    eve.execute("SELECT sink.create_sink('lp_q', 'lp_src', 'table', %s::jsonb, envelope => 'upsert')",
                (json.dumps({"table": 'lp_eve_s."we;ird"'}),))
    assert one(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'lp_eve_s' AND tablename = 'we;ird'") == 1
    assert one(db, "SELECT tableowner FROM pg_tables WHERE schemaname = 'lp_eve_s' AND tablename = 'we;ird'") == ROLE
    db.execute("SELECT sink.drop_sink('lp_q')")
    _unchanged(db)


def test_a_table_target_needs_create_on_its_schema(db, eve):
    # Before: the superuser created the target in any schema the caller named.
    st, msg, detail, hint = sqlstate_of(eve, "SELECT sink.create_sink('lp_s', 'lp_src', 'table', %s::jsonb, envelope => 'upsert')",
                                        json.dumps({"table": "lp_locked.copy"}))
    assert st == "42501" and "lp_locked" in msg, (st, msg)
    assert hint
    assert one(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'lp_locked'") == 0
    _unchanged(db)


def test_a_function_shadowing_a_builtin_in_the_search_path_does_not_pass_a_check(db, eve):
    db.execute("SELECT sink.drop_secret('lp_admin_secret', if_exists => true)")
    db.execute("SELECT sink.create_secret('lp_admin_secret', 'the admin token')")
    try:
        for args in ("name, regrole, text", "name, oid, text", "text, regrole, text", "text, oid, text", "text, text, text"):
            eve.execute(f"CREATE FUNCTION lp_eve_s.pg_has_role({args}) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
        eve.execute("SET search_path = lp_eve_s, pg_catalog, public")
        # Before: the USAGE check called lp_eve_s.pg_has_role, which said yes.
        st, msg, _, _ = sqlstate_of(eve, "SELECT sink.create_sink('lp_w', 'public.lp_src', 'webhook', %s::jsonb)",
                                    json.dumps({"url": "http://127.0.0.1:9/", "bearer_token": {"secret": "lp_admin_secret"}, "validate": False}))
        assert st == "42501" and "lp_admin_secret" in msg, (st, msg)
        _unchanged(db)
    finally:
        db.execute("SELECT sink.drop_secret('lp_admin_secret', if_exists => true)")


# ---------------------------------------------------------------- who may create, and how many

def _reload(db, setting, value):
    if value is None:
        db.execute(f"ALTER SYSTEM RESET {setting}")
    else:
        db.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
    db.execute("SELECT pg_reload_conf()")
    time.sleep(1)


def test_only_granted_roles_create_sinks_and_each_role_has_a_quota(db, eve):
    d = out_dir("lp_quota")
    db.execute("DROP ROLE IF EXISTS lp_mallory")
    db.execute("CREATE ROLE lp_mallory LOGIN")
    try:
        db.execute("GRANT USAGE ON SCHEMA sink TO lp_mallory")
        db.execute("GRANT SELECT ON lp_src TO lp_mallory")
        mallory = connect("lp_mallory")
        # Before: any role with SELECT could create sinks, and with them replication slots.
        st, msg, detail, hint = sqlstate_of(mallory, "SELECT sink.create_sink('lp_m', 'lp_src', 'file', %s::jsonb)", json.dumps({"path": d}))
        assert st == "42501" and "create sink" in msg and "sink_creator" in hint, (st, msg, hint)
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE owner = 'lp_mallory'::regrole") == 0
        mallory.close()
    finally:
        db.execute("DROP OWNED BY lp_mallory")
        db.execute("DROP ROLE lp_mallory")
    _reload(db, "pg_sink.max_sinks_per_role", 2)
    try:
        eve2 = connect(ROLE)
        for n in ("lp_q1", "lp_q2"):
            eve2.execute("SELECT sink.create_sink(%s, 'lp_src', 'file', %s::jsonb)", (n, json.dumps({"path": d})))
        slots = one(db, "SELECT count(*) FROM pg_replication_slots")
        st, msg, detail, hint = sqlstate_of(eve2, "SELECT sink.create_sink('lp_q3', 'lp_src', 'file', %s::jsonb)", json.dumps({"path": d}))
        assert st == "53400" and "2 sinks" in msg and detail and hint, (st, msg)
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE owner = %s::regrole", ROLE) == 2
        assert one(db, "SELECT count(*) FROM pg_replication_slots") == slots
        # A superuser is not held to it.
        db.execute("SELECT sink.create_sink('lp_q_admin', 'lp_src', 'file', %s::jsonb)", (json.dumps({"path": d}),))
        eve2.close()
    finally:
        _reload(db, "pg_sink.max_sinks_per_role", None)
        db.execute("SELECT sink.drop_sink(name) FROM sink.sinks WHERE name LIKE 'lp_q%%'")
    _unchanged(db)


# ---------------------------------------------------------------- row-level security

def test_a_source_under_row_level_security_is_refused_unless_the_role_bypasses_it(db, eve):
    d = out_dir("lp_rls")
    db.execute("DROP TABLE IF EXISTS lp_rls")
    db.execute("CREATE TABLE lp_rls (id int PRIMARY KEY, secret text)")
    db.execute("INSERT INTO lp_rls SELECT g, 'row ' || g FROM generate_series(1, 20) g")
    db.execute("ALTER TABLE lp_rls ENABLE ROW LEVEL SECURITY")
    db.execute(f"CREATE POLICY only_small ON lp_rls FOR SELECT TO {ROLE} USING (id <= 5)")
    db.execute(f"GRANT SELECT ON lp_rls TO {ROLE}")
    try:
        assert one(eve, "SELECT count(*) FROM lp_rls") == 5
        # Before: the sink streamed all 20 rows past the policy.
        st, msg, detail, hint = sqlstate_of(eve, "SELECT sink.create_sink('lp_r', 'public.lp_rls', 'file', %s::jsonb)", json.dumps({"path": d}))
        assert st == "42501" and "row-level security" in msg and detail and hint, (st, msg)
        assert os.listdir(d) == []
        # Its owner bypasses the policies, unless FORCE ROW LEVEL SECURITY.
        eve.execute("ALTER TABLE lp_src ENABLE ROW LEVEL SECURITY")
        eve.execute("ALTER TABLE lp_src FORCE ROW LEVEL SECURITY")
        st, msg, _, _ = sqlstate_of(eve, "SELECT sink.create_sink('lp_r', 'lp_src', 'file', %s::jsonb)", json.dumps({"path": d}))
        assert st == "42501" and "row-level security" in msg, (st, msg)
        eve.execute("ALTER TABLE lp_src NO FORCE ROW LEVEL SECURITY")
        eve.execute("SELECT sink.create_sink('lp_r', 'lp_src', 'file', %s::jsonb)", (json.dumps({"path": d}),))
        eve.execute("SELECT sink.drop_sink('lp_r')")
    finally:
        db.execute("DROP TABLE IF EXISTS lp_rls")
    _unchanged(db)


# ---------------------------------------------------------------- what the catalog shows

def test_the_catalog_shows_a_role_only_its_own_objects_and_no_secret_values(db, eve):
    d = out_dir("lp_cat")
    db.execute("SELECT sink.drop_connection('adm_conn', if_exists => true, cascade => true)")
    db.execute("SELECT sink.create_connection('adm_conn', 'webhook', %s::jsonb)",
               (json.dumps({"url": "http://127.0.0.1:9/", "bearer_token": "adm-token-1", "validate": False}),))
    db.execute("SELECT sink.create_sink('adm_sink', 'lp_src', connection => 'adm_conn', options => '{\"validate\": false}')")
    db.execute("SELECT sink.pause_sink('adm_sink')")
    eve.execute("SELECT sink.create_sink('lp_mine', 'lp_src', 'file', %s::jsonb)", (json.dumps({"path": d}),))
    try:
        # Before: every role read every sink, connection and progress row (inline tokens included).
        assert [r[0] for r in eve.execute("SELECT name FROM sink.sinks").fetchall()] == ["lp_mine"]
        assert [r[0] for r in eve.execute("SELECT name FROM sink.status").fetchall()] == ["lp_mine"]
        assert [r[0] for r in eve.execute("SELECT kind || ' ' || name FROM sink.objects ORDER BY 1").fetchall()] == ["sink lp_mine"]
        assert one(eve, "SELECT count(*) FROM sink.progress") == 1
        assert one(eve, "SELECT count(*) FROM sink.connections") == 0
        db.execute(f"SELECT sink.grant_usage('connection', 'adm_conn', '{ROLE}')")
        assert [r[0] for r in eve.execute("SELECT name FROM sink.connections").fetchall()] == ["adm_conn"]
        # Nothing anyone can read holds the token; the value column is closed to all but superusers.
        for table in ("sinks", "connections", "progress", "status", "objects", "usage_grants"):
            assert one(db, f"SELECT count(*) FROM sink.{table} t WHERE t::text LIKE '%%adm-token-1%%'") == 0, table
        assert one(db, "SELECT owner::text FROM sink.secrets WHERE name = 'connection:adm_conn:bearer_token'") == "postgres"
        assert one(eve, "SELECT count(*) FROM sink.secrets") == 0
        st, _, _, _ = sqlstate_of(eve, "SELECT value FROM sink.secrets")
        assert st == "42501"
        # Someone else's sink exists, whether or not the role can see it.
        st, msg, _, _ = sqlstate_of(eve, "SELECT sink.drop_sink('adm_sink')")
        assert st == "42501" and "must be owner" in msg, (st, msg)
        st, msg, _, _ = sqlstate_of(eve, "SELECT sink.create_sink('adm_sink', 'lp_src', 'file', %s::jsonb)", json.dumps({"path": d}))
        assert st == "42710" and "already exists" in msg, (st, msg)
    finally:
        db.execute("SELECT sink.drop_sink(name) FROM sink.sinks WHERE name IN ('lp_mine', 'adm_sink')")
        db.execute("SELECT sink.drop_connection('adm_conn', if_exists => true)")
    assert one(db, "SELECT count(*) FROM sink.secrets WHERE name LIKE 'connection:adm_conn:%%'") == 0, "the inline secret outlived its connection"
    _unchanged(db)


def test_inline_secrets_are_kept_as_secrets_and_still_used(db, eve):
    from conftest import PORT, wait_caught_up
    db.execute("DROP TABLE IF EXISTS lp_jsrc, lp_jdst")
    db.execute("CREATE TABLE lp_jsrc (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE lp_jdst (id int PRIMARY KEY, v text)")
    url = f"jdbc:postgresql://127.0.0.1:{PORT}/postgres?user=postgres&password=pw-inline-7"
    try:
        db.execute("SELECT sink.create_sink('adm_jdbc', 'lp_jsrc', 'jdbc', %s::jsonb, envelope => 'upsert')",
                   (json.dumps({"jdbc.url": url, "table.name": "lp_jdst"}),))
        assert json.loads(one(db, "SELECT options->>'jdbc.url' FROM sink.sinks WHERE name = 'adm_jdbc'")) == {"secret": "sink:adm_jdbc:jdbc.url"}
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE options::text LIKE '%%pw-inline-7%%'") == 0
        db.execute("INSERT INTO lp_jsrc SELECT g, 'v' || g FROM generate_series(1, 50) g")
        wait_caught_up(db, "adm_jdbc")
        assert one(db, "SELECT count(*) FROM lp_jdst") == 50
        assert one(db, "SELECT last_error FROM sink.status WHERE name = 'adm_jdbc'") is None
    finally:
        db.execute("SELECT sink.drop_sink('adm_jdbc', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS lp_jsrc, lp_jdst")
    assert one(db, "SELECT count(*) FROM sink.secrets WHERE name LIKE 'sink:adm_jdbc:%%'") == 0
    _unchanged(db)


# ---------------------------------------------------------------- a connection's grantee

OVERRIDES = [
    {"url": "http://169.254.169.254/latest/"},
    {"bearer_token": "mine"},
    {"signing_secret": "mine"},
    {"endpoint": "http://attacker.example/"},
]


def test_a_grantee_cannot_point_a_connections_credentials_elsewhere(db, eve):
    db.execute("SELECT sink.drop_connection('adm_hook', if_exists => true, cascade => true)")
    db.execute("SELECT sink.create_connection('adm_hook', 'webhook', %s::jsonb)",
               (json.dumps({"url": "http://127.0.0.1:9/hook", "bearer_token": "adm-hook-token", "validate": False}),))
    db.execute(f"SELECT sink.grant_usage('connection', 'adm_hook', '{ROLE}')")
    try:
        for extra in OVERRIDES:
            # Before: the sink's url won over the connection's, and the token went with it.
            st, msg, detail, hint = sqlstate_of(eve, "SELECT sink.create_sink('lp_g', 'lp_src', connection => 'adm_hook', options => %s::jsonb)",
                                                json.dumps(dict(extra, validate=False)))
            key = next(iter(extra))
            assert st == "42501" and key in msg and "adm_hook" in msg and detail and hint, (extra, st, msg)
        # Options that do not redirect are the grantee's to choose; so is altering its own sink,
        # within the same rule.
        eve.execute("SELECT sink.create_sink('lp_g', 'lp_src', connection => 'adm_hook', options => '{\"validate\": false, \"timeout_ms\": 500}')")
        eve.execute("SELECT sink.pause_sink('lp_g')")
        st, msg, _, _ = sqlstate_of(eve, "SELECT sink.alter_sink('lp_g', %s::jsonb)", json.dumps({"url": "http://169.254.169.254/"}))
        assert st == "42501" and "url" in msg, (st, msg)
        assert one(db, "SELECT options ? 'url' FROM sink.sinks WHERE name = 'lp_g'") is False
        eve.execute("SELECT sink.drop_sink('lp_g')")
        # The owner may override its own connection.
        db.execute("SELECT sink.create_sink('adm_g', 'lp_src', connection => 'adm_hook', options => '{\"validate\": false, \"url\": \"http://127.0.0.1:9/other\"}')")
        db.execute("SELECT sink.drop_sink('adm_g')")
    finally:
        db.execute("SELECT sink.drop_connection('adm_hook', if_exists => true, cascade => true)")
    _unchanged(db)


# ---------------------------------------------------------------- file paths and hosts

def test_file_sinks_write_only_where_postgres_would_let_the_role_write(db, eve):
    from conftest import DATA, OUT
    inside = out_dir("lp_inside")
    outside = "/tmp/pg_sink_lp_outside"
    os.makedirs(outside, exist_ok=True)
    shutil.chown(outside, "postgres")
    link = os.path.join(inside, "to_data")
    os.symlink(DATA, link)
    try:
        for path in (DATA, os.path.join(DATA, "global"), f"{OUT}/../data", link, os.path.join(link, "base"), outside, "relative/dir"):
            # Before: any role wrote into PGDATA (or anywhere the postgres user could).
            st, msg, detail, hint = sqlstate_of(eve, "SELECT sink.create_sink('lp_file', 'lp_src', 'file', %s::jsonb)", json.dumps({"path": path}))
            assert st == "42501" and detail and hint, (path, st, msg)
        st, _, _, _ = sqlstate_of(eve, "SELECT sink.create_connection('lp_fconn', 'file', %s::jsonb)", json.dumps({"path": DATA}))
        assert st == "42501"
        assert not [f for f in os.listdir(DATA) if "lp_" in f]
        eve.execute("SELECT sink.create_sink('lp_file', 'lp_src', 'file', %s::jsonb)", (json.dumps({"path": inside + "/sub"}),))
        eve.execute("SELECT sink.drop_sink('lp_file')")
        # Postgres' own role for writing server files lifts the rule.
        db.execute(f"GRANT pg_write_server_files TO {ROLE}")
        eve.execute("SELECT sink.create_sink('lp_file', 'lp_src', 'file', %s::jsonb)", (json.dumps({"path": outside}),))
        eve.execute("SELECT sink.drop_sink('lp_file')")
        db.execute(f"REVOKE pg_write_server_files FROM {ROLE}")
    finally:
        os.remove(link)
        shutil.rmtree(outside, ignore_errors=True)
    _unchanged(db)


def test_outbound_hosts_are_held_to_the_allow_list(db, eve):
    _reload(db, "pg_sink.allowed_hosts", "*.example.com, 10.0.0.0/8")
    try:
        eve2 = connect(ROLE)
        cases = [
            ("webhook", {"url": "http://127.0.0.1:9/"}, "127.0.0.1"),
            ("webhook", {"url": "http://169.254.169.254/latest/meta-data"}, "169.254.169.254"),
            ("kafka", {"brokers": "10.1.1.1:9092,broker.internal:9092", "topic": "t"}, "broker.internal"),
            ("nats", {"server_url": "nats://localhost:4222", "subject": "s"}, "localhost"),
            ("jdbc", {"jdbc.url": "jdbc:postgresql://db.internal:5432/x", "table.name": "t"}, "db.internal"),
            ("s3", {"location": "s3://bucket/p", "endpoint": "http://127.0.0.1:5000"}, "127.0.0.1"),
            ("kinesis", {"stream": "s", "aws.region": "us-east-1"}, "kinesis.us-east-1.amazonaws.com"),
        ]
        for connector, opts, host in cases:
            # Before: every role could make the server connect anywhere (validation probes included).
            st, msg, detail, hint = sqlstate_of(eve2, "SELECT sink.create_sink('lp_h', 'lp_src', %s, %s::jsonb, envelope => 'upsert')",
                                                connector, json.dumps(dict(opts, validate=False)))
            assert st == "42501" and host in msg and detail and hint, (connector, st, msg)
            st, msg, _, _ = sqlstate_of(eve2, "SELECT sink.create_connection('lp_hc', %s, %s::jsonb)", connector, json.dumps(dict(opts, validate=False)))
            assert st == "42501" and host in msg, (connector, st, msg)
        eve2.execute("SELECT sink.create_sink('lp_h', 'lp_src', 'webhook', %s::jsonb)", (json.dumps({"url": "https://hooks.example.com/x", "validate": False}),))
        eve2.execute("SELECT sink.drop_sink('lp_h')")
        # Superusers are not held to it.
        db.execute("SELECT sink.create_connection('adm_hc', 'webhook', %s::jsonb)", (json.dumps({"url": "http://127.0.0.1:9/", "validate": False}),))
        db.execute("SELECT sink.drop_connection('adm_hc')")
        eve2.close()
    finally:
        _reload(db, "pg_sink.allowed_hosts", None)
    _unchanged(db)


# ---------------------------------------------------------------- the server's own trust

def _hba(db, line=None):
    """Put `line` first in pg_hba.conf (None: take it out again) and reload."""
    path = one(db, "SHOW hba_file")
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if "# lp test" not in l]
    if line:
        lines.insert(0, f"{line}  # lp test")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    db.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)


def test_a_jdbc_sink_cannot_borrow_this_servers_trust(db, eve):
    """postgres_fdw's rule: a role that is not a superuser must not reach this
    server (or any) as another role through trust or peer authentication. Before,
    eve's jdbc sink connected to 127.0.0.1 as postgres and wrote into a table eve may
    not touch."""
    from conftest import PORT, wait_caught_up
    db.execute("DROP TABLE IF EXISTS public.lp_locked_dst")
    db.execute("CREATE TABLE public.lp_locked_dst (id int PRIMARY KEY, v text)")
    eve.execute("INSERT INTO lp_src SELECT g, 'v' || g FROM generate_series(1, 10) g")
    url = f"jdbc:postgresql://127.0.0.1:{PORT}/postgres?user=postgres"
    opts = json.dumps({"jdbc.url": url, "table.name": "lp_locked_dst"})
    st, msg, detail, hint = sqlstate_of(eve, "SELECT sink.create_sink('lp_j', 'lp_src', 'jdbc', %s::jsonb, envelope => 'upsert')", opts)
    assert st == "42501" and "without a password" in msg and "postgres_fdw" in detail and "password" in hint, (st, msg)
    # A wrong password does not help: trust ignores it.
    opts_pw = json.dumps({"jdbc.url": url + "&password=anything", "table.name": "lp_locked_dst"})
    st, msg, _, _ = sqlstate_of(eve, "SELECT sink.create_sink('lp_j', 'lp_src', 'jdbc', %s::jsonb, envelope => 'upsert')", opts_pw)
    assert st == "42501", (st, msg)
    assert one(db, "SELECT count(*) FROM public.lp_locked_dst") == 0
    _unchanged(db)
    # A target user that must give its password is fine.
    db.execute("DROP ROLE IF EXISTS lp_pw")
    db.execute("CREATE ROLE lp_pw LOGIN PASSWORD 'lp-pw-Secret-9'")
    db.execute("CREATE TABLE lp_eve_s.lp_open_dst (id int PRIMARY KEY, v text)")
    db.execute("GRANT USAGE, CREATE ON SCHEMA lp_eve_s TO lp_pw")  # and its progress table
    db.execute("GRANT ALL ON lp_eve_s.lp_open_dst TO lp_pw")
    _hba(db, "host all lp_pw 127.0.0.1/32 scram-sha-256")
    try:
        good = json.dumps({"jdbc.url": f"jdbc:postgresql://127.0.0.1:{PORT}/postgres", "user": "lp_pw", "password": "lp-pw-Secret-9",
                           "schema.name": "lp_eve_s", "table.name": "lp_open_dst"})
        eve.execute("SELECT sink.create_sink('lp_j', 'lp_src', 'jdbc', %s::jsonb, envelope => 'upsert')", (good,))
        wait_caught_up(db, "lp_j")
        assert one(db, "SELECT count(*) FROM lp_eve_s.lp_open_dst") == 10
        eve.execute("SELECT sink.drop_sink('lp_j')")
    finally:
        _hba(db, None)
        db.execute("DROP TABLE IF EXISTS public.lp_locked_dst")
        db.execute("DROP TABLE IF EXISTS lp_eve_s.lp_open_dst")
        db.execute("DROP OWNED BY lp_pw")
        db.execute("DROP ROLE lp_pw")
    _unchanged(db)
