"""Least privilege: a role that is not a superuser tries to get more through
pg_sink than Postgres would give it. Each attempt must be refused with a clear
SQLSTATE error and change nothing: the role stays unprivileged, no sink or
table appears, no command runs on the server's shell.

The role lp_eve (LOGIN, USAGE on schema sink) owns lp_src and may create in
schema lp_eve_s, nothing else."""
import json
import os

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
