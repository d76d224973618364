"""The `jdbc` connector mirrors a table into another database: a MariaDB
server started by scripts/mariadb.sh (127.0.0.1:13306, database pg_sink_it created here and dropped at the end) and a
second PostgreSQL database (jdbc_target, in the test cluster). Targets are read back
with their own clients (PyMySQL, psycopg) and compared with the source row by row,
after normal delivery, after worker kills and immediate restarts, and for every
creation error the connector checks against the target."""
import datetime
import json
import os
import random
import signal
import threading
import time
from decimal import Decimal

import psycopg
import pymysql
import pytest

from conftest import MARIADB_PORT, PORT, cluster, connect, one, reconnect, sqlstate_of, wait_caught_up, wait_for, wait_started

MYSQL_HOST, MYSQL_PORT = "127.0.0.1", MARIADB_PORT
MYSQL_DB = "pg_sink_it"
MYSQL_USER, MYSQL_PASSWORD = "pgsink", "pgsink-Secret-42"  # created for these tests
PG_DB = "jdbc_target"
TARGETS = ["mysql", "postgres"]

# Logical column types and their spelling in each target (MariaDB, PostgreSQL).
TYPES = {
    "int": ("INT", "integer"),
    "bigint": ("BIGINT", "bigint"),
    "varchar": ("VARCHAR(40)", "varchar(40)"),
    "text": ("TEXT", "text"),
    "numeric": ("DECIMAL(10,2)", "numeric(10,2)"),
    "bool": ("BOOLEAN", "boolean"),
    "timestamptz": ("DATETIME(6)", "timestamptz"),
    "timestamp": ("DATETIME(6)", "timestamp"),
    "date": ("DATE", "date"),
    "double": ("DOUBLE", "double precision"),
    "json": ("JSON", "jsonb"),
}


def mysql_connect(database=MYSQL_DB, user="root", password=""):
    return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=user, password=password, database=database,
                           charset="utf8mb4", autocommit=True, connect_timeout=10)


def mysql_run(*stmts, database=MYSQL_DB):
    conn = mysql_connect(database=database)
    try:
        with conn.cursor() as cur:
            for s in stmts:
                cur.execute(s)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mariadb(mariadb_server):
    try:
        mysql_run("SELECT 1", database=None)
    except pymysql.err.OperationalError as e:
        pytest.fail(f"MariaDB is not reachable as root on {MYSQL_HOST}:{MYSQL_PORT}: {e}")
    mysql_run(f"DROP DATABASE IF EXISTS {MYSQL_DB}",
              f"CREATE DATABASE {MYSQL_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
              f"DROP USER IF EXISTS '{MYSQL_USER}'@'%'",
              f"CREATE USER '{MYSQL_USER}'@'%' IDENTIFIED BY '{MYSQL_PASSWORD}'",
              f"GRANT ALL PRIVILEGES ON {MYSQL_DB}.* TO '{MYSQL_USER}'@'%'",
              database=None)
    yield
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        mysql_run(f"DROP DATABASE IF EXISTS {MYSQL_DB}", f"DROP USER IF EXISTS '{MYSQL_USER}'@'%'", database=None)


@pytest.fixture(scope="module")
def pg_target(server):
    conn = connect()
    conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    conn.execute(f"CREATE DATABASE {PG_DB}")
    conn.close()
    yield
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        conn = reconnect()
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.close()


class Target:
    """One target database: DDL, reads (each over a new connection, so they work
    across crashes), and the sink options that point at it."""

    def __init__(self, kind):
        self.kind = kind
        self.mysql = kind == "mysql"

    def __repr__(self):
        return self.kind

    def url(self):
        if self.mysql:
            return f"jdbc:mysql://{MYSQL_HOST}:{MYSQL_PORT}/{MYSQL_DB}"
        return f"jdbc:postgresql://127.0.0.1:{PORT}/{PG_DB}?user=postgres"

    def options(self, table, **extra):
        opts = {"jdbc.url": self.url(), "table.name": table}
        if self.mysql:
            opts["user"] = "root"
        opts.update(extra)
        return opts

    def _conn(self):
        return mysql_connect() if self.mysql else connect(dbname=PG_DB)

    def execute(self, *stmts):
        conn = self._conn()
        try:
            for s in stmts:
                if self.mysql:
                    with conn.cursor() as cur:
                        cur.execute(s)
                else:
                    conn.execute(s)
        finally:
            conn.close()

    def rows(self, sql):
        conn = self._conn()
        try:
            if self.mysql:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return [tuple(r) for r in cur.fetchall()]
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    def try_rows(self, sql):
        """rows(), or None while the target cannot be reached (the PostgreSQL target
        is down while the test cluster restarts)."""
        try:
            return self.rows(sql)
        except (psycopg.OperationalError, pymysql.err.OperationalError):
            return None

    def create_table(self, name, cols, pk=()):
        """cols: [(name, logical type from TYPES)]; the table is dropped first."""
        i = 0 if self.mysql else 1
        parts = [f"{c} {TYPES[t][i]}" for c, t in cols]
        if pk:
            parts.append(f"PRIMARY KEY ({', '.join(pk)})")
        self.execute(f"DROP TABLE IF EXISTS {name}", f"CREATE TABLE {name} ({', '.join(parts)})")

    def drop_table(self, *names):
        self.execute(*(f"DROP TABLE IF EXISTS {n}" for n in names))


@pytest.fixture(params=TARGETS)
def target(request, server):
    request.getfixturevalue("mariadb" if request.param == "mysql" else "pg_target")
    return Target(request.param)


@pytest.fixture(autouse=True)
def drop_leftover_sinks(server):
    """Sinks of a failed test must not outlive it (their names are reused)."""
    yield
    conn = reconnect()
    for (name,) in conn.execute("SELECT name FROM sink.sinks WHERE starts_with(name, 'j_')").fetchall():
        conn.execute("SELECT sink.drop_sink(%s)", (name,))
    conn.close()


def create_sink(db, name, source, opts, envelope, **kw):
    extra = "".join(f", {k} => %({k})s" for k in kw)
    db.execute(f"SELECT sink.create_sink(%(name)s, %(source)s, 'jdbc', %(opts)s::jsonb, envelope => %(envelope)s{extra})",
               {"name": name, "source": source, "opts": json.dumps(opts), "envelope": envelope, **kw})


# --- normalising values read from either side ------------------------------------

def utc_naive(v):
    if isinstance(v, datetime.datetime) and v.tzinfo is not None:
        return v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return v


def as_json(v):
    if isinstance(v, (bytes, bytearray)):
        v = v.decode()
    return json.loads(v) if isinstance(v, str) else v


NORMALISE = {
    "flag": lambda v: bool(v),            # MariaDB BOOLEAN is TINYINT(1): 0/1
    "ts": utc_naive,                      # timestamptz: compared as UTC wall time
    "amount": Decimal,
    "ratio": float,
    "doc": as_json,                       # MariaDB JSON reads back as text
}


def normalise(cols, rows):
    out = []
    for r in rows:
        out.append(tuple(None if v is None else NORMALISE.get(c, lambda x: x)(v) for c, v in zip(cols, r)))
    return out


def assert_same_rows(db, target, source, table, cols, order="id"):
    sel = ", ".join(cols)
    src = normalise(cols, db.execute(f"SELECT {sel} FROM {source} ORDER BY {order}").fetchall())
    got = normalise(cols, target.rows(f"SELECT {sel} FROM {table} ORDER BY {order}"))
    if src != got:
        src_set, got_set = set(map(repr, src)), set(map(repr, got))
        missing = [r for r in src if repr(r) not in got_set][:5]
        extra = [r for r in got if repr(r) not in src_set][:5]
        raise AssertionError(f"{target}: {len(src)} source rows, {len(got)} target rows; "
                             f"missing in target: {missing}; unexpected in target: {extra}")


# --- upsert ----------------------------------------------------------------------

UP_COLS = [("id", "int"), ("big", "bigint"), ("name", "varchar"), ("body", "text"), ("amount", "numeric"),
           ("flag", "bool"), ("ts", "timestamptz"), ("lts", "timestamp"), ("day", "date"), ("ratio", "double"),
           ("doc", "json")]
UP_NAMES = [c for c, _ in UP_COLS]
SRC_TYPES = {"int": "int", "bigint": "bigint", "varchar": "varchar(40)", "text": "text", "numeric": "numeric(10,2)",
             "bool": "boolean", "timestamptz": "timestamptz", "timestamp": "timestamp", "date": "date",
             "double": "double precision", "json": "jsonb"}
# Values from g; every non-key column is NULL when g % 7 = 0.
UP_EXPRS = {
    "big": "g::bigint * 1000000007 + 9007199254740993",  # beyond 2^53
    "name": "CASE WHEN g % 5 = 0 THEN '' ELSE 'n' || g || $$ O'Brien \\ \"q\" ü 😀$$ END",
    "body": "repeat('body ', g % 50) || 'é' || g",
    "amount": "(g * 12.345 - 500)::numeric(10,2)",
    "flag": "g % 2 = 0",
    "ts": "timestamptz '2024-03-10 12:34:56.123456+05:30' + g * interval '1 hour 7 minutes 3.5 seconds'",
    "lts": "timestamp '1999-12-31 23:59:59.999999' + g * interval '1 day 1 microsecond'",
    "day": "date '2000-02-28' + g",
    "ratio": "g / 7.0",
    "doc": "jsonb_build_object('g', g, 's', 'ü' || g, 'a', jsonb_build_array(1, 2.5, 'x', null, true), 'o', jsonb_build_object('k', 'v'))",
}


def up_insert(db, lo, hi, table="j_up"):
    vals = ", ".join(f"CASE WHEN g % 7 = 0 THEN NULL ELSE {UP_EXPRS[c]} END" for c in UP_NAMES[1:])
    db.execute(f"INSERT INTO {table} SELECT g, {vals} FROM generate_series({lo}, {hi}) g")


def make_up_source(db, table="j_up"):
    db.execute(f"DROP TABLE IF EXISTS {table}")
    cols = ", ".join(f"{c} {SRC_TYPES[t]}" for c, t in UP_COLS[1:])
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, {cols})")


@pytest.fixture
def server_timezone_not_utc(db):
    """New sessions in the served database (the sink's worker) render timestamptz
    at +05:30; targets must still get UTC."""
    db.execute("ALTER DATABASE postgres SET timezone = 'Asia/Kolkata'")
    yield
    conn = reconnect()
    conn.execute("ALTER DATABASE postgres RESET timezone")
    conn.close()


def test_upsert_mirrors_inserts_updates_key_changes_deletes_and_truncates(db, target, server_timezone_not_utc):
    make_up_source(db)
    up_insert(db, 1, 30)  # delivered by the snapshot
    target.create_table("up_t", UP_COLS, pk=["id"])
    name = f"j_up_{target}"
    create_sink(db, name, "j_up", target.options("up_t"), "upsert")
    wait_started(db, name)
    assert_same_rows(db, target, "j_up", "up_t", UP_NAMES)

    up_insert(db, 31, 120)
    db.execute("UPDATE j_up SET name = NULL, amount = amount + 1, flag = NOT flag WHERE id % 4 = 1")
    db.execute("UPDATE j_up SET doc = jsonb_build_object('upd', id), ts = now(), body = 'was null' WHERE id % 7 = 0")
    db.execute("UPDATE j_up SET id = id + 100000 WHERE id % 10 = 3")  # key change
    db.execute("DELETE FROM j_up WHERE id % 9 = 0")
    # Several changes to the same keys in one transaction (one target batch).
    with db.transaction():
        db.execute("UPDATE j_up SET body = 'first' WHERE id = 2")
        db.execute("UPDATE j_up SET body = 'second', big = -9223372036854775808 WHERE id = 2")
        db.execute("INSERT INTO j_up (id, body) VALUES (500000, 'short-lived')")
        db.execute("DELETE FROM j_up WHERE id = 500000")
        db.execute("DELETE FROM j_up WHERE id = 4")
        db.execute("INSERT INTO j_up (id, body) VALUES (4, 'reborn')")
        db.execute("UPDATE j_up SET id = 6000 WHERE id = 5")
        db.execute("UPDATE j_up SET id = 5 WHERE id = 6000")
    up_insert(db, 1000, 10999)  # one 10,000-row transaction
    wait_caught_up(db, name)
    assert_same_rows(db, target, "j_up", "up_t", UP_NAMES)
    assert one(db, "SELECT count(*) FROM j_up WHERE id > 100000") > 0

    db.execute("TRUNCATE j_up")
    up_insert(db, 200, 204)
    db.execute("UPDATE j_up SET body = 'after truncate' WHERE id = 202")
    wait_caught_up(db, name)
    assert_same_rows(db, target, "j_up", "up_t", UP_NAMES)
    assert target.rows("SELECT count(*) FROM up_t")[0][0] == 5
    assert one(db, "SELECT state FROM sink.sinks WHERE name = %s", name) == "running"
    db.execute("SELECT sink.drop_sink(%s)", (name,))
    target.drop_table("up_t")


# --- append-only -----------------------------------------------------------------

def test_append_only_into_a_target_without_key_gets_every_insert_once(db, target):
    db.execute("DROP TABLE IF EXISTS j_app")
    db.execute("CREATE TABLE j_app (id int PRIMARY KEY, v text, n bigint)")
    db.execute("INSERT INTO j_app SELECT g, 'snap' || g, g * 3 FROM generate_series(1, 50) g")
    target.create_table("app_t", [("id", "int"), ("v", "text"), ("n", "bigint")])
    name = f"j_app_{target}"
    create_sink(db, name, "j_app", target.options("app_t"), "append-only")
    wait_started(db, name)
    for i in range(10):
        db.execute("INSERT INTO j_app SELECT g, 'v' || g, NULL FROM generate_series(%s::int, %s::int) g", (51 + i * 25, 75 + i * 25))
    db.execute("INSERT INTO j_app SELECT g, repeat('x', g % 30), -g FROM generate_series(1000, 10999) g")
    wait_caught_up(db, name)
    assert target.rows("SELECT id FROM app_t GROUP BY id HAVING count(*) <> 1") == []
    assert_same_rows(db, target, "j_app", "app_t", ["id", "v", "n"])
    assert target.rows("SELECT count(*) FROM app_t")[0][0] == 50 + 250 + 10000
    db.execute("SELECT sink.drop_sink(%s)", (name,))
    target.drop_table("app_t")


def test_force_append_only_turns_updates_into_rows_and_drops_deletes(db, target):
    db.execute("DROP TABLE IF EXISTS j_fao")
    db.execute("CREATE TABLE j_fao (id int PRIMARY KEY, v text)")
    target.create_table("fao_t", [("id", "int"), ("v", "text")])
    name = f"j_fao_{target}"
    create_sink(db, name, "j_fao", target.options("fao_t", force_append_only="true"), "append-only")
    wait_started(db, name)
    db.execute("INSERT INTO j_fao SELECT g, 'a' FROM generate_series(1, 10) g")
    db.execute("UPDATE j_fao SET v = 'b' WHERE id <= 5")
    db.execute("DELETE FROM j_fao WHERE id = 6")
    db.execute("TRUNCATE j_fao")
    db.execute("INSERT INTO j_fao VALUES (11, 'c')")
    wait_caught_up(db, name)
    got = sorted(target.rows("SELECT id, v FROM fao_t"))
    assert got == sorted([(i, "a") for i in range(1, 11)] + [(i, "b") for i in range(1, 6)] + [(11, "c")])
    db.execute("SELECT sink.drop_sink(%s)", (name,))
    target.drop_table("fao_t")


def test_postgres_target_in_another_schema(db, pg_target):
    target = Target("postgres")
    db.execute("DROP TABLE IF EXISTS j_sch")
    db.execute("CREATE TABLE j_sch (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO j_sch VALUES (1, 'one')")
    # A same-named table in public that does not fit: only mirror.sch_t may be used.
    target.execute("DROP SCHEMA IF EXISTS mirror CASCADE", "CREATE SCHEMA mirror",
                   "DROP TABLE IF EXISTS public.sch_t", "CREATE TABLE public.sch_t (other int)",
                   "CREATE TABLE mirror.sch_t (id int PRIMARY KEY, v text)")
    create_sink(db, "j_sch", "j_sch", target.options("sch_t", **{"schema.name": "mirror"}), "upsert")
    wait_started(db, "j_sch")
    db.execute("INSERT INTO j_sch VALUES (2, 'two')")
    db.execute("UPDATE j_sch SET v = 'uno' WHERE id = 1")
    wait_caught_up(db, "j_sch")
    assert target.rows("SELECT id, v FROM mirror.sch_t ORDER BY id") == [(1, "uno"), (2, "two")]
    assert target.rows("SELECT count(*) FROM public.sch_t") == [(0,)]
    db.execute("SELECT sink.drop_sink('j_sch')")
    target.execute("DROP SCHEMA mirror CASCADE", "DROP TABLE public.sch_t")


# --- progress in the target --------------------------------------------------------

def sink_ids(db, name):
    """The ways a progress row may name a sink: its uid (sink.uid(), as the other
    connectors' progress records), its name or its id."""
    sid = one(db, "SELECT id FROM sink.sinks WHERE name = %s", name)
    return {one(db, "SELECT sink.uid(%s)", name), name, str(sid)}


def progress_lsn(target, table, ids):
    rows = [r for r in target.rows(f"SELECT sink_id, lsn FROM {table}") if r[0] in ids]
    assert len(rows) == 1, f"{target}: progress rows for {ids} in {table}: {rows}"
    return int(rows[0][1])


def lsn_int(db, sql):
    return int(one(db, f"SELECT ({sql}) - '0/0'::pg_lsn"))


def test_progress_row_in_the_target(db, target):
    db.execute("DROP TABLE IF EXISTS j_prog")
    db.execute("CREATE TABLE j_prog (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO j_prog VALUES (1, 'a')")
    target.create_table("prog_t", [("id", "int"), ("v", "text")], pk=["id"])
    target.create_table("prog_log", [("id", "int"), ("v", "text")])
    target.drop_table("pg_sink_progress_custom")
    up, app = f"j_prog_{target}", f"j_prog_log_{target}"
    create_sink(db, up, "j_prog", target.options("prog_t"), "upsert")
    create_sink(db, app, "j_prog", target.options("prog_log", progress_table="pg_sink_progress_custom"), "append-only")
    wait_started(db, up)
    wait_started(db, app)
    db.execute("INSERT INTO j_prog VALUES (2, 'b')")
    wait_caught_up(db, up)
    wait_caught_up(db, app)
    first = progress_lsn(target, "pg_sink_progress", sink_ids(db, up))
    assert 0 < first <= lsn_int(db, "pg_current_wal_lsn()")
    custom = progress_lsn(target, "pg_sink_progress_custom", sink_ids(db, app))
    assert 0 < custom <= lsn_int(db, "pg_current_wal_lsn()")
    # The default table does not hold the other sink's row.
    assert not [r for r in target.rows("SELECT sink_id FROM pg_sink_progress") if r[0] in sink_ids(db, app)]
    # Each batch moves it forward, in the same transaction as its rows.
    db.execute("INSERT INTO j_prog VALUES (3, 'c')")
    wait_caught_up(db, up)
    wait_caught_up(db, app)
    assert progress_lsn(target, "pg_sink_progress", sink_ids(db, up)) > first
    assert progress_lsn(target, "pg_sink_progress_custom", sink_ids(db, app)) > custom
    assert sorted(target.rows("SELECT id, v FROM prog_t")) == [(1, "a"), (2, "b"), (3, "c")]
    assert sorted(target.rows("SELECT id, v FROM prog_log")) == [(1, "a"), (2, "b"), (3, "c")]
    db.execute("SELECT sink.drop_sink(%s)", (up,))
    db.execute("SELECT sink.drop_sink(%s)", (app,))
    target.drop_table("prog_t", "prog_log", "pg_sink_progress_custom")


# --- secrets ---------------------------------------------------------------------

def test_mysql_password_from_a_secret_overrides_the_url(db, mariadb):
    # The URL names the user and a wrong password; the `password` option (a secret)
    # takes precedence. Also the jdbc:mariadb:// scheme and the `url` alias.
    target = Target("mysql")
    db.execute("DROP TABLE IF EXISTS j_sec")
    db.execute("CREATE TABLE j_sec (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO j_sec VALUES (1, 'a'), (2, 'b')")
    target.create_table("sec_t", [("id", "int"), ("v", "text")], pk=["id"])
    db.execute("SELECT sink.drop_secret('mysql_pw') WHERE EXISTS (SELECT FROM sink.secrets WHERE name = 'mysql_pw')")
    db.execute("SELECT sink.create_secret('mysql_pw', %s)", (MYSQL_PASSWORD,))
    opts = {"url": f"jdbc:mariadb://{MYSQL_HOST}:{MYSQL_PORT}/{MYSQL_DB}?user={MYSQL_USER}&password=wrong",
            "password": {"secret": "mysql_pw"}, "table.name": "sec_t"}
    create_sink(db, "j_sec", "j_sec", opts, "upsert")
    wait_started(db, "j_sec")
    db.execute("UPDATE j_sec SET v = 'b2' WHERE id = 2")
    db.execute("INSERT INTO j_sec VALUES (3, 'c')")
    wait_caught_up(db, "j_sec")
    assert sorted(target.rows("SELECT id, v FROM sec_t")) == [(1, "a"), (2, "b2"), (3, "c")]
    assert MYSQL_PASSWORD not in json.dumps(one(db, "SELECT options FROM sink.sinks WHERE name = 'j_sec'"))
    db.execute("SELECT sink.drop_sink('j_sec')")
    db.execute("SELECT sink.drop_secret('mysql_pw')")
    target.drop_table("sec_t")


# --- creation errors ---------------------------------------------------------------

ERR_COLS = [("id", "int"), ("code", "int"), ("label", "text"), ("note_text", "text"), ("n", "int")]


def replace(cols, name, typ):
    return [(c, typ if c == name else t) for c, t in cols]


# (case id, target columns or None for no table, target primary key, option changes,
#  envelope, explicit key, SQLSTATE, fragments of message/detail/hint)
ERRORS = [
    ("no-target-table", None, (), {"table.name": "e_missing"}, "upsert", None, "22023", ["does not exist", "e_missing"]),
    ("upsert-target-without-pk", ERR_COLS, (), {}, "upsert", None, "22023", ["no primary key"]),
    ("explicit-key-not-target-pk", ERR_COLS, ("id",), {}, "upsert", ["code"], "22023", ["primary key", "code"]),
    ("default-key-not-target-pk", ERR_COLS, ("n",), {}, "upsert", None, "22023", ["primary key"]),
    ("column-missing", [c for c in ERR_COLS if c[0] != "note_text"], ("id",), {}, "upsert", None, "22023", ["note_text"]),
    ("text-into-int", replace(ERR_COLS, "label", "int"), ("id",), {}, "upsert", None, "22023", ["label"]),
    ("append-only-column-missing", [c for c in ERR_COLS if c[0] != "label"], (), {}, "append-only", None, "22023", ["label"]),
    ("debezium", ERR_COLS, ("id",), {}, "debezium", None, "22023", ["debezium"]),
    ("no-table-name", ERR_COLS, ("id",), {"table.name": None}, "upsert", None, "22023", ["table.name"]),
    ("oracle-url", ERR_COLS, ("id",), {"jdbc.url": "jdbc:oracle:thin:@127.0.0.1:1521/xe"}, "upsert", None, "22023", ["oracle"]),
    ("unreachable", ERR_COLS, ("id",), {"jdbc.url": "UNREACHABLE"}, "upsert", None, "08000", []),
    # Refused credentials are not worth retrying: 22000, as for the other connectors.
    ("wrong-login", ERR_COLS, ("id",), "BAD_LOGIN", "upsert", None, "22000", []),
]


def err_options(target, changes):
    opts = target.options("e_t")
    if changes == "BAD_LOGIN":
        if target.mysql:
            opts.update(user=MYSQL_USER, password="not-the-password")
        else:
            opts["jdbc.url"] = f"jdbc:postgresql://127.0.0.1:{PORT}/{PG_DB}?user=no_such_role"
        return opts
    for k, v in changes.items():
        if v is None:
            opts.pop(k, None)
        elif v == "UNREACHABLE":
            opts[k] = f"jdbc:mysql://127.0.0.1:1/{MYSQL_DB}" if target.mysql else f"jdbc:postgresql://127.0.0.1:1/{PG_DB}?user=postgres"
        else:
            opts[k] = v
    return opts


def pg_objects(db):
    return (one(db, "SELECT count(*) FROM sink.sinks"),
            one(db, "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pg_sink_%%'"),
            one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pg_sink_%%'"))


@pytest.fixture
def err_source(db):
    db.execute("DROP TABLE IF EXISTS j_err")
    db.execute("CREATE TABLE j_err (id int PRIMARY KEY, code int NOT NULL UNIQUE, label text, note_text text, n int)")
    # FULL, so that `code` may serve as the upsert key on the source side.
    db.execute("ALTER TABLE j_err REPLICA IDENTITY FULL")
    db.execute("INSERT INTO j_err VALUES (1, 10, 'a', 'x', 1)")


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_creation_errors(db, target, err_source, case):
    _, cols, pk, changes, envelope, key, state, fragments = case
    if cols is None:
        target.drop_table("e_t", "e_missing")
    else:
        target.create_table("e_t", cols, pk=pk)
    opts = err_options(target, changes)
    before = pg_objects(db)
    st, msg, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('j_bad', 'j_err', 'jdbc', %s::jsonb, envelope => %s, key => %s)",
                                        json.dumps(opts), envelope, key)
    text = " ".join(x for x in (msg, detail, hint) if x)
    assert st == state, (st, text)
    for f in fragments:
        assert f.lower() in text.lower(), (f, text)
    if changes == "BAD_LOGIN":
        # A clear error names the user it could not log in as.
        assert (MYSQL_USER if target.mysql else "no_such_role") in text, text
    assert detail or hint, f"no detail or hint for: {msg}"
    assert pg_objects(db) == before
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'j_bad'") == 0
    target.drop_table("e_t")


def test_schema_name_is_for_postgres_targets(db, mariadb, err_source):
    target = Target("mysql")
    target.create_table("e_t", ERR_COLS, pk=["id"])
    before = pg_objects(db)
    st, msg, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('j_bad', 'j_err', 'jdbc', %s::jsonb, envelope => 'upsert')",
                                        json.dumps(target.options("e_t", **{"schema.name": "public"})))
    assert st == "22023" and "schema.name" in msg, (st, msg)
    assert detail or hint
    assert pg_objects(db) == before
    target.drop_table("e_t")


def test_creation_errors_cases_differ_from_a_valid_sink_by_one_thing(db, target, err_source):
    # The base configuration of the error cases is valid.
    target.create_table("e_t", ERR_COLS, pk=["id"])
    create_sink(db, "j_good", "j_err", target.options("e_t"), "upsert")
    wait_started(db, "j_good")
    assert target.rows("SELECT id, code, label, note_text, n FROM e_t") == [(1, 10, "a", "x", 1)]
    db.execute("SELECT sink.drop_sink('j_good')")
    target.drop_table("e_t")


# --- crashes -----------------------------------------------------------------------

CRASH_TXNS = 250   # x 100 rows into each source: 25,000 appended rows, 25,000 upserts
CRASH_ROWS = 100


class Writer(threading.Thread):
    """Idempotent transactions, retried after a crash until they commit: appends (ON
    CONFLICT DO NOTHING, so a retry adds no change), upserts and some deletes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.done = 0

    def run(self):
        conn = None
        while self.done < CRASH_TXNS:
            i = self.done
            try:
                if conn is None or conn.closed:
                    conn = connect()
                with conn.transaction():
                    conn.execute("INSERT INTO j_ca SELECT g, %s FROM generate_series(%s::int, %s::int) g ON CONFLICT (id) DO NOTHING",
                                 (f"t{i}", i * CRASH_ROWS, i * CRASH_ROWS + CRASH_ROWS - 1))
                    lo = (i % 50) * CRASH_ROWS
                    conn.execute("INSERT INTO j_cu SELECT g, %s FROM generate_series(%s::int, %s::int) g ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                                 (f"t{i}", lo, lo + CRASH_ROWS - 1))
                    if i % 10 == 9:
                        conn.execute("DELETE FROM j_cu WHERE id %% 50 = %s::int", (i % 50,))
                self.done = i + 1
                time.sleep(0.02)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()


def worker_pids(names):
    """The sinks' worker pids, or None while the server is down or restarting."""
    try:
        conn = connect()
    except psycopg.OperationalError:
        return None
    try:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)",
                            ([f"pg_sink sink {n}" for n in names],)).fetchall()
        return {r[0] for r in rows}
    except psycopg.OperationalError:
        return None
    finally:
        conn.close()


def restarted(names, old):
    """All workers running again, none of them a process from before the crash."""
    now = worker_pids(names)
    return now is not None and len(now) == len(names) and not (now & old)


def test_worker_kills_and_immediate_restarts_neither_lose_nor_repeat(db, target):
    seed = int(os.environ.get("PGSINK_CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    db.execute("DROP TABLE IF EXISTS j_ca, j_cu")
    db.execute("CREATE TABLE j_ca (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE j_cu (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO j_ca SELECT g, 'seed' FROM generate_series(-2000, -1) g")
    db.execute("INSERT INTO j_cu SELECT g, 'seed' FROM generate_series(0, 4999) g")
    target.create_table("ca_t", [("id", "int"), ("v", "text")])          # no key: a repeat would show
    target.create_table("cu_t", [("id", "int"), ("v", "text")], pk=["id"])
    app, up = f"j_ca_{target}", f"j_cu_{target}"
    names = [app, up]
    # Small batches, so the crashes land between many target transactions.
    db.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = 1000")
    db.execute("ALTER SYSTEM SET pg_sink.max_step_changes = 5000")  # progress recorded often
    db.execute("SELECT pg_reload_conf()")
    try:
        create_sink(db, app, "j_ca", target.options("ca_t"), "append-only")
        create_sink(db, up, "j_cu", target.options("cu_t"), "upsert")
        wait_started(db, app)
        wait_started(db, up)
        db.close()
        writer = Writer()
        writer.start()
        points = sorted(rnd.sample(range(10, CRASH_TXNS - 10), 4))
        kinds = ["worker", "postgres", "worker", "postgres"]
        rnd.shuffle(kinds)
        seen = []
        for point, kind in zip(points, kinds):
            wait_for(lambda: writer.done >= point, timeout=300, what=f"the writer to reach {point} (seed {seed})")
            time.sleep(rnd.uniform(0, 0.3))
            delivered = target.try_rows("SELECT count(*) FROM ca_t")
            seen.append((kind, writer.done, delivered and delivered[0][0]))
            old = wait_for(lambda: (lambda p: p if p and len(p) == 2 else None)(worker_pids(names)),
                           timeout=120, what=f"both workers running (seed {seed})")
            if kind == "worker":
                # The postmaster then reinitializes every process.
                os.kill(rnd.choice(sorted(old)), signal.SIGKILL)
            else:
                cluster("kill")
                time.sleep(rnd.uniform(0, 1))
                cluster("start")
            wait_for(lambda: restarted(names, old), timeout=120, what=f"workers back after a {kind} crash (seed {seed})")
        writer.join(timeout=600)
        assert writer.done == CRASH_TXNS, f"writer did not finish (seed {seed})"
        db = reconnect()
        wait_caught_up(db, app, timeout=300)
        wait_caught_up(db, up, timeout=300)

        info = f"seed {seed}, crashes (kind, writer txns, appended rows in target): {seen}"
        # Append-only: every source row exactly once.
        dups = target.rows("SELECT id, count(*) FROM ca_t GROUP BY id HAVING count(*) <> 1 ORDER BY id LIMIT 10")
        assert dups == [], f"{target}: repeated rows {dups}; {info}"
        src = dict(db.execute("SELECT id, v FROM j_ca").fetchall())
        got = dict(target.rows("SELECT id, v FROM ca_t"))
        assert len(src) == 2000 + CRASH_TXNS * CRASH_ROWS
        missing = sorted(set(src) - set(got))[:10]
        assert got == src, f"{target}: {len(src)} source rows, {len(got)} in target, missing e.g. {missing}; {info}"
        # Upsert: the target equals the source.
        src = dict(db.execute("SELECT id, v FROM j_cu").fetchall())
        got = dict(target.rows("SELECT id, v FROM cu_t"))
        diff = sorted(k for k in set(src) | set(got) if src.get(k) != got.get(k))[:10]
        assert got == src, f"{target}: upsert target differs at ids {diff}; {info}"
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = ANY(%s) AND state = 'running'", names) == 2
        for n in names:
            db.execute("SELECT sink.drop_sink(%s)", (n,))
    finally:
        conn = reconnect()
        conn.execute("ALTER SYSTEM RESET pg_sink.max_batch_changes")
        conn.execute("ALTER SYSTEM RESET pg_sink.max_step_changes")
        conn.execute("SELECT pg_reload_conf()")
        conn.close()
    target.drop_table("ca_t", "cu_t")


def test_rows_the_target_refuses_become_dead_letters_and_retry_delivers_them(db, target):
    """errors.policy => 'dead_letter': a batch the target refuses on a row is
    tried again row by row (savepoints, rolled back) to name the refused rows;
    they become dead letters and the rest arrives once, the worker killed in the
    middle; after the target's CHECK is dropped a retry delivers them."""
    db.execute("DROP TABLE IF EXISTS j_dl")
    db.execute("CREATE TABLE j_dl (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO j_dl SELECT g, 'seed' || g FROM generate_series(1, 20) g")
    target.execute("DROP TABLE IF EXISTS j_dl",
                   "CREATE TABLE j_dl (id INT PRIMARY KEY, v VARCHAR(40), CONSTRAINT no_poison CHECK (v NOT LIKE 'poison%'))")
    create_sink(db, "j_dl", "j_dl", target.options("j_dl", **{"errors.policy": "dead_letter"}), "upsert")
    wait_started(db, "j_dl")
    for t in range(6):
        with db.transaction():
            db.execute("INSERT INTO j_dl SELECT g, CASE WHEN g %% 13 = 0 THEN 'poison' ELSE 'v' || g END "
                       "FROM generate_series(%s::int, %s::int) g", (21 + t * 20, 40 + t * 20))
        if t == 2:
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg_sink sink j_dl'")
    db.execute("UPDATE j_dl SET v = 'poison-update' WHERE id = 2")
    db.execute("UPDATE j_dl SET v = 'fine' WHERE id = 3")
    wait_caught_up(db, "j_dl")
    source = dict(db.execute("SELECT id, v FROM j_dl").fetchall())
    refused = {k for k, v in source.items() if v.startswith("poison")}
    assert len(refused) == 10
    want = {k: v for k, v in source.items() if k not in refused}
    want[2] = "seed2"
    assert dict(target.rows("SELECT id, v FROM j_dl")) == want
    got = db.execute("SELECT (d.key->>'id')::int, d.change IS NOT NULL FROM sink.dead_letters d JOIN sink.sinks s ON s.id = d.sink_id "
                     "WHERE s.name = 'j_dl'").fetchall()
    assert sorted(k for k, _ in got) == sorted(refused) and all(kept for _, kept in got)
    assert one(db, "SELECT state FROM sink.status WHERE name = 'j_dl'") == "running"
    target.execute("ALTER TABLE j_dl DROP CONSTRAINT no_poison")
    assert one(db, "SELECT sink.retry_dead_letters('j_dl')") == len(refused)
    wait_caught_up(db, "j_dl")
    assert dict(target.rows("SELECT id, v FROM j_dl")) == source
    assert one(db, "SELECT dead_letters FROM sink.status WHERE name = 'j_dl'") == 0
    db.execute("SELECT sink.drop_sink('j_dl')")
    target.drop_table("j_dl")
