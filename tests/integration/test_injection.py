"""Injection matrix: the unprivileged role lp_eve (test_least_privilege.py) puts
hostile text into every option of every connector (from sink.options(), so a new
connector is covered without an edit here), into every identifier that SQL
functions take, and into other systems' DDL through sink.execute(). Each attempt
must either be refused with a clear SQLSTATE (never an internal error or a crash)
or be accepted as plain data; afterwards the role is still not a superuser, no
shell command ran, the sentinel table is still there and the server still
answers. The count of attempts is printed."""
import json

import psycopg
import pytest

from conftest import one, out_dir
from test_least_privilege import CANARY, ROLE, _unchanged, eve  # noqa: F401 (fixture)

PAYLOADS = [
    "x'); ALTER ROLE lp_eve SUPERUSER; --",
    'x"; ALTER ROLE lp_eve SUPERUSER; --',
    "$$; ALTER ROLE lp_eve SUPERUSER; $$",
    f"'; COPY (SELECT 1) TO PROGRAM 'touch {CANARY}'; --",
    "x */; DROP TABLE public.lp_sentinel; /*",
    "lp_eve_s.evil()",
    "../../../../etc/passwd",
    "x\\'; SET ROLE postgres; --",
]

BASES = {
    "file": lambda: {"path": out_dir("lp_inj")},
    "table": lambda: {"table": "lp_eve_s.inj_dst"},
    "jdbc": lambda: {"jdbc.url": "jdbc:postgresql://127.0.0.1:9/x", "table.name": "t"},
    "webhook": lambda: {"url": "http://127.0.0.1:9/hook", "validate": "false"},
    "nats": lambda: {"server_url": "127.0.0.1:9", "subject": "inj", "validate": "false"},
    "kafka": lambda: {"brokers": "127.0.0.1:9", "topic": "inj", "validate": "false"},
    "kinesis": lambda: {"stream": "s", "aws.region": "us-east-1", "endpoint": "http://127.0.0.1:9", "validate": "false"},
    "s3": lambda: {"location": "s3://b/p", "s3_region": "us-east-1", "endpoint": "http://127.0.0.1:9", "validate": "false"},
    "gcs": lambda: {"location": "gs://b/p", "validate": "false"},
    "azblob": lambda: {"location": "azblob://c/p", "azure_storage_account_name": "a", "validate": "false"},
    "hdfs": lambda: {"location": "hdfs://127.0.0.1:9/p", "validate": "false"},
    "iceberg": lambda: {"type": "append-only", "warehouse.path": out_dir("lp_inj"), "validate": "false"},
}

# Identifier positions of the SQL functions, with {} where the payload goes.
CALLS = [
    ("SELECT sink.create_sink(%s, 'lp_src', 'file', %s::jsonb)", lambda p: (p, json.dumps({"path": out_dir("lp_inj")}))),
    ("SELECT sink.create_sink('lp_i', %s, 'file', %s::jsonb)", lambda p: (p, json.dumps({"path": out_dir("lp_inj")}))),
    ("SELECT sink.create_sink('lp_i', %s, 'file', %s::jsonb)", lambda p: (f"SELECT id, v FROM lp_src WHERE v = '{p}'", json.dumps({"path": out_dir("lp_inj")}))),
    ("SELECT sink.create_sink('lp_i', 'lp_src', %s, '{}'::jsonb)", lambda p: (p,)),
    ("SELECT sink.create_sink('lp_i', 'lp_src', 'file', %s::jsonb, key => %s, envelope => 'upsert')", lambda p: (json.dumps({"path": out_dir("lp_inj")}), p)),
    ("SELECT sink.create_sink('lp_i', 'lp_src', 'file', %s::jsonb, envelope => %s)", lambda p: (json.dumps({"path": out_dir("lp_inj")}), p)),
    ("SELECT sink.create_sink('lp_i', 'lp_src', 'file', %s::jsonb, format => %s)", lambda p: (json.dumps({"path": out_dir("lp_inj")}), p)),
    ("SELECT sink.create_sink('lp_i', 'lp_src', connection => %s)", lambda p: (p,)),
    ("SELECT sink.create_sink('lp_i', 'lp_src', 'file', %s::jsonb)", lambda p: (json.dumps({"path": out_dir("lp_inj"), "password": {"secret": p}}),)),
    ("SELECT sink.alter_sink(%s, '{}'::jsonb)", lambda p: (p,)),
    ("SELECT sink.pause_sink(%s)", lambda p: (p,)),
    ("SELECT sink.resume_sink(%s)", lambda p: (p,)),
    ("SELECT sink.resync(%s)", lambda p: (p,)),
    ("SELECT sink.drop_sink(%s)", lambda p: (p,)),
    ("SELECT sink.sync(%s)", lambda p: (p,)),
    ("SELECT sink.uid(%s)", lambda p: (p,)),
    ("SELECT * FROM sink.preview(%s)", lambda p: (p,)),
    ("SELECT sink.create_secret(%s, 'v')", lambda p: (p,)),
    ("SELECT sink.alter_secret(%s, 'v')", lambda p: (p,)),
    ("SELECT sink.drop_secret(%s)", lambda p: (p,)),
    ("SELECT sink.create_connection(%s, 'webhook', '{\"url\": \"http://127.0.0.1:9/\", \"validate\": false}')", lambda p: (p,)),
    ("SELECT sink.create_connection('lp_c', %s, '{}')", lambda p: (p,)),
    ("SELECT sink.drop_connection(%s)", lambda p: (p,)),
    ("SELECT sink.grant_usage(%s, 'x', 'lp_eve')", lambda p: (p,)),
    ("SELECT sink.grant_usage('secret', %s, 'lp_eve')", lambda p: (p,)),
    ("SELECT sink.grant_usage('secret', 'x', %s)", lambda p: (p,)),
    ("SELECT sink.revoke_usage('connection', %s, 'public')", lambda p: (p,)),
    ("SELECT * FROM sink.execute(%s)", lambda p: (f"CREATE SINK \"{p}\" FROM lp_src INTO KAFKA CONNECTION kc (TOPIC 't') FORMAT JSON ENVELOPE DEBEZIUM",)),
    ("SELECT * FROM sink.execute(%s)", lambda p: (f"CREATE SINK s1 FROM lp_src WITH (connector = 'kafka', topic = '{p}', properties.bootstrap.server = '127.0.0.1:9') FORMAT PLAIN ENCODE JSON",)),
    ("SELECT * FROM sink.execute(%s)", lambda p: (f"CREATE SECRET \"{p}\" AS 'v'",)),
    ("SELECT * FROM sink.execute(%s)", lambda p: (f"DROP SINK \"{p}\"",)),
    ("SELECT * FROM sink.execute(%s)", lambda p: (f"SHOW SINKS LIKE '{p}'",)),
    ("SELECT * FROM sink.execute(%s)", lambda p: (p,)),
]


@pytest.fixture
def matrix(db, eve):  # noqa: F811
    db.execute("DROP TABLE IF EXISTS public.lp_sentinel")
    db.execute("CREATE TABLE public.lp_sentinel (x int)")
    eve.execute("INSERT INTO lp_src VALUES (1, 'one')")
    yield eve
    db.execute("SELECT sink.drop_sink(name) FROM sink.sinks WHERE owner::text = %s", (ROLE,))
    db.execute("SELECT sink.drop_connection(name, cascade => true) FROM sink.connections WHERE owner::text = %s", (ROLE,))
    db.execute("DROP TABLE IF EXISTS public.lp_sentinel")


class Tally:
    def __init__(self, db, conn):
        self.db, self.conn = db, conn
        self.refused, self.accepted, self.codes = 0, 0, {}

    def attempt(self, sql, params):
        try:
            self.conn.execute(sql, params)
        except psycopg.Error as e:
            st = e.sqlstate
            assert st and st[:2] not in ("XX", "57", "58"), (sql, params, st, e.diag.message_primary)
            assert e.diag.message_primary, (sql, params)
            self.refused += 1
            self.codes[st] = self.codes.get(st, 0) + 1
            return
        self.accepted += 1
        # Whatever was made from hostile text is data: drop it again.
        self.db.execute("SELECT sink.drop_sink(name) FROM sink.sinks WHERE owner::text = %s", (ROLE,))
        self.db.execute("SELECT sink.drop_secret(name) FROM sink.secrets WHERE owner::text = %s AND created_by <> 'inline'", (ROLE,))

    def check(self):
        _unchanged(self.db)
        assert one(self.db, "SELECT to_regclass('public.lp_sentinel') IS NOT NULL"), "the sentinel table was dropped"
        assert one(self.db, "SELECT current_user") == "postgres"


def test_every_option_of_every_connector(db, matrix):
    options = db.execute("SELECT connector, option FROM sink.options() ORDER BY 1 NULLS FIRST, 2").fetchall()
    connectors = sorted({c for c, _ in options if c})
    assert set(connectors) == set(BASES), "a connector without a base: add it to BASES"
    t = Tally(db, matrix)
    for connector, option in options:
        for target in ([connector] if connector else ["file"]):
            name = option.replace("*", "x")
            for payload in PAYLOADS:
                opts = dict(BASES[target](), **{name: payload})
                t.attempt("SELECT sink.create_sink('lp_i', 'lp_src', %s, %s::jsonb)", (target, json.dumps(opts)))
    t.check()
    print(f"\noptions: {t.refused + t.accepted} attempts ({len(options)} options x {len(PAYLOADS)} payloads), "
          f"{t.refused} refused, {t.accepted} accepted as data; SQLSTATEs {t.codes}")
    assert t.refused > 0


def test_every_identifier_of_every_function(db, matrix):
    t = Tally(db, matrix)
    for sql, params in CALLS:
        for payload in PAYLOADS:
            t.attempt(sql, params(payload))
    t.check()
    print(f"\nidentifiers: {t.refused + t.accepted} attempts, {t.refused} refused, {t.accepted} accepted as data; SQLSTATEs {t.codes}")
