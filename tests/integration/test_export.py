"""One-shot exports (Kinetica's export of records into a data sink):
sink.export(query, ..) runs a query once, as the caller, and delivers its rows
through a connector. Compared row by row with the query's own result, counting
duplicates."""
import collections
import glob
import json

import psycopg

from conftest import connect, file_records, one, out_dir, sqlstate_of
from test_jdbc import mariadb, pg_target, target  # noqa: F401  (the target fixtures)
from test_kafka import broker, read_topic  # noqa: F401  (the broker fixture)

QUERY = ("SELECT o.id, o.customer, o.amount, o.amount * 2 AS doubled, o.placed "
         "FROM x_orders o WHERE o.id % 7 <> 0")


def setup_orders(db, n=25_000):
    db.execute("DROP TABLE IF EXISTS x_orders")
    db.execute("CREATE TABLE x_orders (id int PRIMARY KEY, customer text, amount numeric(10,2), placed timestamptz)")
    db.execute("INSERT INTO x_orders SELECT g, 'c' || (g %% 97), g / 100.0, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' "
               "FROM generate_series(1, %s) g", (n,))


def expected(db):
    rows = db.execute("SELECT id, customer, amount::text, (amount * 2)::text, placed FROM x_orders WHERE id % 7 <> 0").fetchall()
    return {r[0]: r for r in rows}


def test_a_query_is_exported_to_files_in_chunks_once(db):
    setup_orders(db)
    d = out_dir("export_files")
    rows, nbytes, chunks, seconds = db.execute(
        "SELECT * FROM sink.export(%s, 'file', %s::jsonb, name => 'x_files')", (QUERY, json.dumps({"path": d}))).fetchone()
    want = expected(db)
    assert rows == len(want) and chunks == 3 and nbytes > 0 and seconds >= 0, (rows, chunks)
    records = file_records(d, "x_files")
    ids = collections.Counter(r["value"]["id"] for r in records)
    assert set(ids) == set(want) and max(ids.values()) == 1, "every row once"
    for r in records:
        v = r["value"]
        w = want[v["id"]]
        assert (v["customer"], v["amount"], v["doubled"]) == (w[1], w[2], w[3]), (v, w)
        assert r["headers"]["pg_sink-op"] == "read" and r["key"] is None
    # No sink, slot or catalog row is left behind.
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'x_files'") == 0


def test_an_export_to_kafka_is_keyed_and_exactly_once(db, broker):
    setup_orders(db, 12_000)
    rows, _, chunks, _ = db.execute(
        "SELECT * FROM sink.export('SELECT id, customer FROM x_orders', 'kafka', %s::jsonb, envelope => 'upsert', key => ARRAY['id'])",
        (json.dumps({"brokers": broker, "topic": "x-export"}),)).fetchone()
    assert (rows, chunks) == (12_000, 2)
    got = read_topic("x-export")
    keys = collections.Counter(json.loads(k)["id"] for _, k, _, _ in got)
    assert set(keys) == set(range(1, 12_001)) and max(keys.values()) == 1
    assert all(json.loads(v)["customer"] == f"c{json.loads(k)['id'] % 97}" for _, k, v, _ in got)


def test_bad_exports_are_refused_and_deliver_nothing(db):
    setup_orders(db, 100)
    d = out_dir("export_bad")
    opts = json.dumps({"path": d})
    cases = [
        ("SELECT 1 AS a, 2 AS a", {}, "22023", "appears more than once"),
        ("SELECT id FROM x_orders", {"key": ["nope"], "envelope": "upsert"}, "22023", "key column \"nope\""),
        ("SELECT id FROM x_orders; SELECT 1", {}, "42P11", "multi-query"),
        ("SELEC id", {}, "42601", None),
        ("SELECT id FROM x_nowhere", {}, "42P01", None),
    ]
    for query, named, code, text in cases:
        args = ", ".join(f"{k} => %s" for k in named)
        sql = f"SELECT * FROM sink.export(%s, 'file', %s::jsonb{', ' + args if args else ''})"
        state = sqlstate_of(db, sql, query, opts, *named.values())
        assert state[0] == code, (query, state)
        if text:
            assert text in state[1], state
        if code == "22023":
            assert state[3], state
    state = sqlstate_of(db, "SELECT * FROM sink.export('SELECT 1', 'table', '{\"table\": \"x_copy\"}')")
    assert state[0] == "0A000" and state[2] and state[3], state
    # A query that fails half-way raises its own error.
    state = sqlstate_of(db, "SELECT * FROM sink.export('SELECT id, 1 / (id - 50) FROM x_orders ORDER BY id', 'file', %s::jsonb)", opts)
    assert state[0] == "22012", state
    assert not glob.glob(f"{d}/**/*.jsonl", recursive=True), "a refused or failed export wrote nothing"


def test_an_export_reads_with_the_caller_s_privileges(db):
    setup_orders(db, 10)
    d = out_dir("export_priv")
    db.execute("DROP ROLE IF EXISTS x_reader")
    db.execute("CREATE ROLE x_reader LOGIN")
    db.execute("GRANT USAGE ON SCHEMA sink TO x_reader")
    db.execute("GRANT sink_creator TO x_reader")
    db.execute("DROP TABLE IF EXISTS x_secret")
    db.execute("CREATE TABLE x_secret (v text)")
    db.execute("INSERT INTO x_secret VALUES ('hidden')")
    db.execute("GRANT SELECT ON x_orders TO x_reader")
    with connect(user="x_reader") as c:
        c.autocommit = True
        try:
            c.execute("SELECT * FROM sink.export('SELECT v FROM x_secret', 'file', %s::jsonb)", (json.dumps({"path": d}),))
            raise AssertionError("a table the caller cannot read was exported")
        except psycopg.Error as e:
            assert e.sqlstate == "42501", e
        rows = c.execute("SELECT rows FROM sink.export('SELECT id FROM x_orders', 'file', %s::jsonb, name => 'x_mine')",
                         (json.dumps({"path": d}),)).fetchone()[0]
        assert rows == 10
    db.execute("REVOKE ALL ON x_orders FROM x_reader")
    db.execute("DROP TABLE x_secret")
    db.execute("DROP OWNED BY x_reader")
    db.execute("DROP ROLE x_reader")


def test_kinetica_export_into_a_remote_table_and_a_file_path(db, target):  # noqa: F811
    setup_orders(db, 15_000)
    target.create_table("x_copy", [("id", "int"), ("customer", "varchar"), ("amount", "numeric")], pk=("id",))
    opts = "USER = 'root'" if target.mysql else "SKIP_VALIDATION = 'false'"
    db.execute("SELECT sink.execute(%s)", (f"CREATE OR REPLACE DATA SINK x_db LOCATION = '{target.url()}' WITH OPTIONS ({opts})",))
    out = db.execute("SELECT command, kind, details FROM sink.execute(%s)", (
        "EXPORT QUERY (SELECT id, customer, amount FROM x_orders WHERE (id % 3) = 0) INTO REMOTE TABLE 'x_copy' "
        "WITH OPTIONS (DATA SINK NAME = 'x_db')",)).fetchall()
    assert out[0][0] == "EXPORT" and out[0][1] == "export" and out[0][2]["rows"] == 5_000 and out[0][2]["chunks"] == 1, out
    got = target.rows("SELECT id, customer, amount FROM x_copy ORDER BY id")
    want = [(i, f"c{i % 97}", round(i / 100, 2)) for i in range(3, 15_001, 3)]
    assert [(r[0], r[1], float(r[2])) for r in got] == [(i, c, float(a)) for i, c, a in want], "every row once, as in the source"
    # A file data sink: the export's files go to <location>/<FILE PATH>.
    d = out_dir("export_kinetica")
    db.execute("SELECT sink.execute(%s)", (f"CREATE OR REPLACE DATA SINK x_files LOCATION = 'file://{d}'",))
    db.execute("SELECT sink.execute(%s)", ("EXPORT TABLE x_orders INTO FILE PATH 'orders_all' FORMAT DELIMITED TEXT "
                                           "WITH OPTIONS (DATA SINK NAME = 'x_files')",))
    files = glob.glob(f"{d}/orders_all/**/*.csv", recursive=True)
    lines = [l for f in files for l in open(f).read().splitlines()[1:] if l.strip()]
    assert len(lines) == 15_000, (files, len(lines))
    for ds in ("x_db", "x_files"):
        db.execute("SELECT sink.execute(%s)", (f"DROP DATA SINK {ds}",))
    target.drop_table("x_copy")
