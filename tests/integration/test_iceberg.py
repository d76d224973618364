"""Iceberg sinks, read back by an independent reader (pyiceberg) through the
same catalog: Iceberg's SQL catalog tables in this database (the default) and
Apache Iceberg's own REST catalog server (scripts/iceberg_rest.sh). Each test
injects a fault (the worker killed mid-stream, or a step failing after the
commit at the catalog and before the sink's progress is recorded) and then
compares the Iceberg table with the rows the source produced, row by row,
counting duplicates."""
import collections
import datetime
import json
import os
import subprocess
import uuid

import pytest

from conftest import PORT, ROOT, connect, one, out_dir, sqlstate_of, wait_caught_up, wait_for, wait_started

REST_PORT = int(os.environ.get("PGSINK_TEST_ICEBERG_REST_PORT", "19500"))
REST_DATA = "/tmp/pg_sink_test_iceberg_rest"
COLUMNS = "id, name, price, day, at, u, doc, raw, flag, big, tags"


def rest_script(cmd):
    env = dict(os.environ, ICEBERG_REST_PORT=str(REST_PORT), ICEBERG_REST_DATA=REST_DATA)
    subprocess.run([os.path.join(ROOT, "scripts", "iceberg_rest.sh"), cmd], env=env, check=True)


@pytest.fixture(scope="module")
def rest(server):
    rest_script("start")
    yield f"http://127.0.0.1:{REST_PORT}"
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        rest_script("stop")


def sql_catalog(warehouse):
    from pyiceberg.catalog.sql import SqlCatalog
    return SqlCatalog("pg_sink", uri=f"postgresql+psycopg2://postgres@127.0.0.1:{PORT}/postgres", warehouse=warehouse)


def rest_catalog(uri):
    from pyiceberg.catalog.rest import RestCatalog
    return RestCatalog("rest", uri=uri)


def make_source(db, table):
    db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute(f"""CREATE TABLE {table} (id int PRIMARY KEY, name text, price numeric(10,2), day date, at timestamptz,
                   u uuid, doc jsonb, raw bytea, flag bool, big bigint, tags text[])""")


def insert(db, table, lo, hi):
    """Rows lo..hi; the new images as the source has them."""
    return db.execute(
        f"""INSERT INTO {table} SELECT g, 'n' || g, g * 1.25, DATE '2024-01-01' + g, TIMESTAMPTZ '2024-01-01 00:00:00.123456+00' + g * interval '1 hour',
                   md5(g::text)::uuid, jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g)), decode(lpad(to_hex(g), 8, '0'), 'hex'),
                   g %% 2 = 0, g::bigint * 1000000000, ARRAY['a', g::text, NULL, 'x"y']
              FROM generate_series(%s::int, %s::int) g RETURNING {COLUMNS}""", (lo, hi)).fetchall()


def norm(row):
    """A row as comparable values, from psycopg or from pyiceberg (pyarrow)."""
    out = []
    for v in row:
        if isinstance(v, datetime.datetime):
            v = v.astimezone(datetime.timezone.utc).isoformat()
        elif isinstance(v, uuid.UUID):
            v = str(v)
        elif isinstance(v, (bytes, memoryview)):
            v = bytes(v)
            v = str(uuid.UUID(bytes=v)) if len(v) == 16 else v.hex()
        elif isinstance(v, list):
            v = tuple(v)
        elif isinstance(v, dict):
            v = json.dumps(v, sort_keys=True)
        elif isinstance(v, str) and v.startswith("{"):
            v = json.dumps(json.loads(v), sort_keys=True)
        out.append(v)
    return tuple(out)


def iceberg_rows(catalog, ident, columns=COLUMNS):
    table = catalog.load_table(ident)
    arrow = table.scan(selected_fields=tuple(c.strip() for c in columns.split(","))).to_arrow()
    return table, [norm(r.values()) for r in arrow.to_pylist()]


def compare(got, expected):
    """Every expected row exactly once, nothing else."""
    seen = collections.Counter(got)
    dups = {r: n for r, n in seen.items() if n > 1}
    assert not dups, f"{len(dups)} duplicated rows, e.g. {list(dups)[:2]}"
    want = collections.Counter(norm(r) for r in expected)
    assert seen == want, f"missing {list((want - seen).elements())[:2]}, unexpected {list((seen - want).elements())[:2]} ({len(got)} rows, {sum(want.values())} expected)"


def commits_then_postgres_fails(db, sink, write):
    """Pause the sink, make every step fail after delivery (after the commit at
    the catalog, before the sink's progress is recorded), `write`, resume, let it
    fail twice or more, then let it go on and catch up. What `write` returned."""
    db.execute("SELECT sink.pause_sink(%s)", (sink,))
    db.execute("ALTER SYSTEM SET pg_sink.fail_after_deliver = on")
    db.execute("SELECT pg_reload_conf()")
    written = write()
    db.execute("SELECT sink.resume_sink(%s)", (sink,))
    wait_for(lambda: one(db, "SELECT errors FROM sink.status WHERE name = %s", sink) >= 2, what="failed attempts")
    db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
    db.execute("SELECT pg_reload_conf()")
    wait_caught_up(db, sink)
    return written


def kill_worker(db, sink):
    pid = one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", f"pg_sink sink {sink}")
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return pid


def summaries(table, sink):
    """The pg_sink properties of the sink's snapshots, oldest first."""
    out = []
    for s in sorted(table.metadata.snapshots, key=lambda s: (s.sequence_number, s.timestamp_ms)):
        props = s.summary.additional_properties if hasattr(s.summary, "additional_properties") else dict(s.summary)
        if props.get("pg-sink.sink") == sink:
            out.append(props)
    return out


def test_sql_catalog_in_this_database_snapshot_stream_schema_change_across_a_killed_worker(db):
    """The embedded default: the catalog's tables are made in this database and
    the commit moves the table's pointer in the sink's own transaction. The
    snapshot, six transactions with the worker killed after the third, updates
    as new rows (force_append_only), deletes dropped, a column added mid-stream:
    pyiceberg reads every row once."""
    wh = out_dir("ice_sql")
    make_source(db, "ice_src")
    expected = insert(db, "ice_src", 1, 300)
    db.execute("SELECT sink.create_sink('ice_sql', 'ice_src', 'iceberg', %s::jsonb, envelope => 'append-only')",
               (json.dumps({"warehouse.path": f"file://{wh}", "database.name": "lake", "table.name": "orders", "force_append_only": True}),))
    try:
        wait_started(db, "ice_sql")
        wait_caught_up(db, "ice_sql")
        killed = None
        for t in range(6):
            expected += insert(db, "ice_src", 1000 + t * 25, 1024 + t * 25)
            expected += db.execute(f"UPDATE ice_src SET name = name || '+', price = price + 0.01 WHERE id BETWEEN %s AND %s RETURNING {COLUMNS}",
                                   (1 + t * 5, 5 + t * 5)).fetchall()
            if t == 2:
                killed = kill_worker(db, "ice_sql")
        db.execute("DELETE FROM ice_src WHERE id BETWEEN 1000 AND 1009")  # dropped: the table is a log of rows
        wait_caught_up(db, "ice_sql")
        assert one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_sink sink ice_sql'") not in (None, killed), "a new worker"
        # The catalog is Iceberg's JDBC layout, in this database.
        assert one(db, "SELECT metadata_location FROM public.iceberg_tables WHERE catalog_name = 'pg_sink' AND table_namespace = 'lake' AND table_name = 'orders'").startswith(f"file://{wh}/lake/orders/metadata/")
        table, got = iceberg_rows(sql_catalog(f"file://{wh}"), "lake.orders")
        compare(got, expected)
        types = {f.name: str(f.field_type) for f in table.schema().fields}
        assert types == {"id": "int", "name": "string", "price": "decimal(10, 2)", "day": "date", "at": "timestamptz", "u": "uuid",
                         "doc": "string", "raw": "binary", "flag": "boolean", "big": "long", "tags": "list<string>"}, types
        props = summaries(table, "ice_sql")
        assert props and all(p["pg-sink.sink-uid"] == props[0]["pg-sink.sink-uid"] for p in props)
        # The last commit ends at or before what the sink confirmed, and after the first.
        assert one(db, "SELECT %s::pg_lsn <= confirmed_lsn AND %s::pg_lsn > %s::pg_lsn FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id WHERE s.name = 'ice_sql'",
                   props[-1]["pg-sink.end-lsn"], props[-1]["pg-sink.end-lsn"], props[0]["pg-sink.end-lsn"])
        # A column added at the source becomes an Iceberg field; earlier rows read NULL.
        db.execute("ALTER TABLE ice_src ADD COLUMN note text")
        extra = db.execute("INSERT INTO ice_src (id, name, note) VALUES (5000, 'late', 'added') RETURNING id, name, note").fetchall()
        wait_caught_up(db, "ice_sql")
        table, got = iceberg_rows(sql_catalog(f"file://{wh}"), "lake.orders", "id, name, note")
        assert [r for r in got if r[2] is not None] == [norm(r) for r in extra]
        assert len(got) == len(expected) + 1
    finally:
        db.execute("SELECT sink.drop_sink('ice_sql', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS ice_src")
        db.execute("DROP TABLE IF EXISTS public.iceberg_tables, public.iceberg_namespace_properties")


def test_rest_catalog_commit_then_postgres_failure_is_not_repeated(db, rest):
    """Apache Iceberg's REST catalog server: a step that commits at the catalog
    and then fails before the sink's progress is recorded (pg_sink.fail_after_deliver,
    several times over) is read again from the slot; the batches the table's
    snapshot summaries show as committed are skipped. Then the worker is killed
    mid-stream. pyiceberg, through the same REST catalog, reads each row once."""
    make_source(db, "ice_rest_src")
    expected = insert(db, "ice_rest_src", 1, 100)
    db.execute("SELECT sink.create_sink('ice_rest', 'ice_rest_src', 'iceberg', %s::jsonb)",
               (json.dumps({"type": "append-only", "catalog.type": "rest", "catalog.uri": rest, "database.name": "lake", "table.name": "rest_orders",
                            "partition_by": "bucket(2, id)"}),))
    try:
        wait_started(db, "ice_rest")
        wait_caught_up(db, "ice_rest")
        expected += commits_then_postgres_fails(db, "ice_rest", lambda: insert(db, "ice_rest_src", 101, 400))
        table, got = iceberg_rows(rest_catalog(rest), "lake.rest_orders")
        compare(got, expected)
        for t in range(4):
            expected += insert(db, "ice_rest_src", 1000 + t * 50, 1049 + t * 50)
            if t == 1:
                kill_worker(db, "ice_rest")
        wait_caught_up(db, "ice_rest")
        table, got = iceberg_rows(rest_catalog(rest), "lake.rest_orders")
        compare(got, expected)
        assert [(f.name, str(f.transform)) for f in table.spec().fields] == [("id_bucket", "bucket[2]")]
        positions = [p["pg-sink.position"] for p in summaries(table, "ice_rest")]
        assert len(positions) == len(set(positions)), "a batch was committed twice"
    finally:
        db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
        db.execute("SELECT pg_reload_conf()")
        db.execute("SELECT sink.drop_sink('ice_rest', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS ice_rest_src")


MOTO_PORT = int(os.environ.get("PGSINK_TEST_ICEBERG_S3_PORT", "15021"))
MOTO_ENV = dict(os.environ, MOTO_PORT=str(MOTO_PORT), MOTO_DATA="/tmp/pg_sink_moto_iceberg")
S3 = {"s3.endpoint": f"http://127.0.0.1:{MOTO_PORT}", "s3.region": "us-east-1", "s3.access.key": "testing", "s3.secret.key": "testing"}


@pytest.fixture(scope="module")
def moto(server):
    import boto3
    subprocess.run([os.path.join(ROOT, "scripts", "moto.sh"), "start"], env=MOTO_ENV, check=True)
    client = boto3.client("s3", endpoint_url=S3["s3.endpoint"], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="lake")
    yield client
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        subprocess.run([os.path.join(ROOT, "scripts", "moto.sh"), "stop"], env=MOTO_ENV, check=True)


def test_s3_warehouse_with_the_sql_catalog_across_a_killed_worker(db, moto):
    """Data and metadata files in S3 (moto), the catalog's pointer in this
    database; the secret key is kept as a secret, not in the sink's options.
    pyiceberg reads the table from S3 through the same catalog."""
    make_source(db, "ice_s3_src")
    expected = insert(db, "ice_s3_src", 1, 200)
    db.execute("SELECT sink.create_sink('ice_s3', 'ice_s3_src', 'iceberg', %s::jsonb, envelope => 'append-only')",
               (json.dumps({"warehouse.path": "s3://lake/wh", "database.name": "lake", "table.name": "s3_orders", **S3}),))
    try:
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'ice_s3' AND options::text LIKE '%%s3.secret.key\": \"testing%%'") == 0
        wait_started(db, "ice_s3")
        for t in range(4):
            expected += insert(db, "ice_s3_src", 1000 + t * 50, 1049 + t * 50)
            if t == 1:
                kill_worker(db, "ice_s3")
        wait_caught_up(db, "ice_s3")
        keys = [o["Key"] for o in moto.list_objects_v2(Bucket="lake", Prefix="wh/lake/s3_orders/").get("Contents", [])]
        assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys), keys
        catalog = sql_catalog("s3://lake/wh")
        catalog.properties.update({"s3.endpoint": S3["s3.endpoint"], "s3.access-key-id": "testing", "s3.secret-access-key": "testing", "s3.region": "us-east-1"})
        _, got = iceberg_rows(catalog, "lake.s3_orders")
        compare(got, expected)
    finally:
        db.execute("SELECT sink.drop_sink('ice_s3', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS ice_s3_src")
        db.execute("DROP TABLE IF EXISTS public.iceberg_tables, public.iceberg_namespace_properties")


@pytest.mark.parametrize("options,envelope,state,words", [
    ({"warehouse.path": "/tmp/pg_sink_ice_bad"}, "upsert", "22023", ["append-only"]),
    ({}, "append-only", "22023", ["warehouse.path"]),
    ({"warehouse.path": "gs://bucket/lake"}, "append-only", "22023", ["warehouse.path", "gs"]),
    ({"warehouse.path": "/tmp/x", "s3.region": "eu-west-1"}, "append-only", "22023", ["s3.region"]),
    ({"warehouse.path": "s3://nope/lake", "s3.endpoint": "http://127.0.0.1:9", "s3.access.key": "a", "s3.secret.key": "b"}, "append-only", None, ["warehouse"]),
    ({"catalog.type": "rest"}, "append-only", "22023", ["catalog.uri"]),
    ({"catalog.type": "hive", "warehouse.path": "/tmp/x"}, "append-only", "22023", ["catalog.type"]),
    ({"warehouse.path": "/tmp/x", "commit_checkpoint_interval": "10"}, "append-only", "22023", ["commit_checkpoint_interval"]),
    ({"warehouse.path": "/tmp/x", "partition_by": "day(nope)"}, "append-only", "22023", ["partition_by", "nope"]),
    ({"warehouse.path": "/tmp/x", "partition_by": "bucket(0, id)"}, "append-only", "22023", ["partition_by"]),
    ({"catalog.type": "rest", "catalog.uri": "http://127.0.0.1:9"}, "append-only", None, ["REST catalog"]),
])
def test_bad_options_are_refused_and_change_nothing(db, options, envelope, state, words):
    make_source(db, "ice_bad_src")
    try:
        st, msg, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('ice_bad', 'ice_bad_src', 'iceberg', %s::jsonb, envelope => %s)",
                                            json.dumps(options), envelope)
        assert st is not None and (state is None or st == state), (st, msg)
        assert all(w.lower() in (msg + " " + (detail or "")).lower() for w in words), (msg, detail)
        assert hint, msg
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'ice_bad'") == 0
        assert one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pg_sink_%%' AND NOT active AND slot_name NOT IN (SELECT slot_name FROM sink.sinks)") == 0
    finally:
        db.execute("DROP TABLE ice_bad_src")


def test_a_role_may_not_put_a_warehouse_where_it_may_not_write_server_files(db):
    make_source(db, "ice_priv_src")
    db.execute("DROP ROLE IF EXISTS ice_user")
    db.execute("CREATE ROLE ice_user LOGIN")
    db.execute("GRANT USAGE ON SCHEMA sink TO ice_user")
    db.execute("GRANT sink_creator TO ice_user")
    db.execute("ALTER TABLE ice_priv_src OWNER TO ice_user")
    try:
        user = connect(user="ice_user")
        user.autocommit = True
        st, msg, detail, hint = sqlstate_of(user, "SELECT sink.create_sink('ice_priv', 'ice_priv_src', 'iceberg', %s::jsonb, envelope => 'append-only')",
                                            json.dumps({"warehouse.path": "file:///var/lib/postgresql/lake"}))
        assert st == "42501" and "/var/lib/postgresql/lake" in msg and hint, (st, msg)
        user.close()
    finally:
        db.execute("DROP TABLE ice_priv_src")
        db.execute("REVOKE ALL ON SCHEMA sink FROM ice_user")
        db.execute("DROP ROLE ice_user")


def test_risingwave_create_sink_with_connector_iceberg(db):
    """RisingWave's spelling (CREATE SINK .. WITH (connector = 'iceberg', type =
    'append-only', force_append_only, warehouse.path, database.name, table.name))
    through sink.execute(); an update arrives as a new row, a delete is dropped."""
    wh = out_dir("ice_rw")
    make_source(db, "ice_rw_src")
    expected = insert(db, "ice_rw_src", 1, 20)
    rows = db.execute("SELECT * FROM sink.execute(%s)", (f"""CREATE SINK ice_rw FROM ice_rw_src WITH (
        connector = 'iceberg',
        type = 'append-only',
        force_append_only = 'true',
        warehouse.path = 'file://{wh}',
        database.name = 'rw',
        table.name = 'orders',
        create_table_if_not_exists = 'true',
        partition_by = 'day(at), bucket(4, id)'
    )""",)).fetchall()
    try:
        assert len(rows) == 1 and "ice_rw" in [str(v) for v in rows[0]], rows
        wait_started(db, "ice_rw")
        expected += db.execute(f"UPDATE ice_rw_src SET name = 'renamed' WHERE id = 3 RETURNING {COLUMNS}").fetchall()
        db.execute("DELETE FROM ice_rw_src WHERE id = 4")
        wait_caught_up(db, "ice_rw")
        table, got = iceberg_rows(sql_catalog(f"file://{wh}"), "rw.orders")
        compare(got, expected)
        spec = [(f.name, str(f.transform)) for f in table.spec().fields]
        assert spec == [("at_day", "day"), ("id_bucket", "bucket[4]")], spec
        paths = [t.file.file_path for t in table.scan().plan_files()]
        assert paths and all("/data/at_day=" in p and "/id_bucket=" in p for p in paths), paths[:2]
        # One day's rows only, read through partition pruning.
        day = table.scan(row_filter="at >= '2024-01-01T05:00:00+00:00' and at < '2024-01-01T06:00:00+00:00'").to_arrow()
        assert day.column("id").to_pylist() == [5]
    finally:
        db.execute("SELECT sink.drop_sink('ice_rw', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS ice_rw_src")
        db.execute("DROP TABLE IF EXISTS public.iceberg_tables, public.iceberg_namespace_properties")


def test_rows_that_do_not_fit_an_existing_table_become_dead_letters(db):
    """A table made by pyiceberg (its own catalog tables, in this database) with a
    narrower decimal than the source's: under errors.policy = 'dead_letter' the
    rows that do not fit are set aside in sink.dead_letters, the others are
    appended once each, across a killed worker."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import DecimalType, IntegerType, NestedField, StringType
    wh = out_dir("ice_dl")
    db.execute("DROP TABLE IF EXISTS public.iceberg_tables, public.iceberg_namespace_properties")
    db.execute("DROP TABLE IF EXISTS ice_dl_src")
    db.execute("CREATE TABLE ice_dl_src (id int PRIMARY KEY, name text, price numeric(10,2))")
    catalog = sql_catalog(f"file://{wh}")
    catalog.create_namespace("dl")
    catalog.create_table("dl.narrow", schema=Schema(
        NestedField(1, "id", IntegerType(), required=False), NestedField(2, "name", StringType(), required=False),
        NestedField(3, "price", DecimalType(4, 1), required=False)))
    subprocess.run(["chown", "-R", "postgres", wh], check=True)  # pyiceberg ran as this test's OS user
    db.execute("SELECT sink.create_sink('ice_dl', 'ice_dl_src', 'iceberg', %s::jsonb, envelope => 'append-only')",
               (json.dumps({"warehouse.path": f"file://{wh}", "database.name": "dl", "table.name": "narrow",
                            "create_table_if_not_exists": False, "errors.policy": "dead_letter"}),))
    try:
        wait_started(db, "ice_dl")
        good, refused = [], []
        for t in range(4):
            for i in range(t * 10 + 1, t * 10 + 11):
                price = "12345.67" if i % 7 == 0 else f"{i}.5"
                db.execute("INSERT INTO ice_dl_src VALUES (%s, %s, %s)", (i, f"n{i}", price))
                (refused if i % 7 == 0 else good).append(i)
            if t == 1:
                kill_worker(db, "ice_dl")
        wait_caught_up(db, "ice_dl")
        wait_for(lambda: one(db, "SELECT count(*) FROM sink.dead_letters d JOIN sink.sinks s ON s.id = d.sink_id WHERE s.name = 'ice_dl'") == len(refused),
                 what="the dead letters")
        _, got = iceberg_rows(sql_catalog(f"file://{wh}"), "dl.narrow", "id, name, price")
        assert sorted(r[0] for r in got) == good, "each fitting row once"
        errors = [r[0] for r in db.execute("SELECT d.error FROM sink.dead_letters d JOIN sink.sinks s ON s.id = d.sink_id WHERE s.name = 'ice_dl'").fetchall()]
        assert all("12345.67" in e and "price" in e for e in errors), errors[:2]
        assert one(db, "SELECT state FROM sink.status WHERE name = 'ice_dl'") == "running"
    finally:
        db.execute("SELECT sink.drop_sink('ice_dl', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS ice_dl_src")
        db.execute("DROP TABLE IF EXISTS public.iceberg_tables, public.iceberg_namespace_properties")


def test_sql_catalog_in_another_database_commit_then_postgres_failure_is_not_repeated(db):
    """catalog.uri names another PostgreSQL database (RisingWave's jdbc catalog
    spelling): its catalog tables are made there and the pointer moves there, so
    a step failing after that commit (pg_sink.fail_after_deliver) is read again;
    the snapshot summaries say which batches the table has, and they are skipped.
    pyiceberg reads the table through that database's catalog."""
    wh = out_dir("ice_remote")
    db.execute("DROP DATABASE IF EXISTS ice_catalog WITH (FORCE)")
    db.execute("CREATE DATABASE ice_catalog")
    make_source(db, "ice_remote_src")
    expected = insert(db, "ice_remote_src", 1, 50)
    db.execute("SELECT sink.create_sink('ice_remote', 'ice_remote_src', 'iceberg', %s::jsonb, envelope => 'append-only')",
               (json.dumps({"catalog.type": "jdbc", "catalog.uri": f"jdbc:postgresql://127.0.0.1:{PORT}/ice_catalog?sslmode=disable",
                            "catalog.jdbc.user": "postgres", "warehouse.path": f"file://{wh}", "database.name": "lake", "table.name": "remote"}),))
    try:
        wait_started(db, "ice_remote")
        wait_caught_up(db, "ice_remote")
        expected += commits_then_postgres_fails(db, "ice_remote", lambda: insert(db, "ice_remote_src", 51, 300))
        assert one(db, "SELECT to_regclass('public.iceberg_tables') IS NULL"), "nothing in this database"
        from pyiceberg.catalog.sql import SqlCatalog
        catalog = SqlCatalog("pg_sink", uri=f"postgresql+psycopg2://postgres@127.0.0.1:{PORT}/ice_catalog", warehouse=f"file://{wh}")
        _, got = iceberg_rows(catalog, "lake.remote")
        compare(got, expected)
    finally:
        db.execute("ALTER SYSTEM RESET pg_sink.fail_after_deliver")
        db.execute("SELECT pg_reload_conf()")
        db.execute("SELECT sink.drop_sink('ice_remote', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS ice_remote_src")
        db.execute("DROP DATABASE IF EXISTS ice_catalog WITH (FORCE)")
