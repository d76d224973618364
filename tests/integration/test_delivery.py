"""End to end: the worker delivers inserts, updates, deletes, truncates, NULLs,
TOASTed values, 50+ types and a 100k-row transaction to the `table` and `file`
connectors; the output is compared with the source row by row."""
import json
from decimal import Decimal

import pytest

from conftest import connect, file_records, one, out_dir, upsert_state, wait_caught_up, wait_started, wait_for

# (column type, SQL expression producing a value from g = 1..n); NULL every 7th row.
TYPES = [
    ("smallint", "(g % 30000)::smallint"),
    ("integer", "g * 7"),
    ("bigint", "g::bigint * 1000000007"),
    ("numeric", "(g * 1.5)::numeric"),
    ("numeric(12,3)", "g / 7.0"),
    ("real", "g / 3.0"),
    ("double precision", "g / 7.0"),
    ("boolean", "g % 2 = 0"),
    ("text", "'t' || g"),
    ("varchar(20)", "'v' || g"),
    ("char(5)", "'c' || (g % 100)"),
    ("name", "('n' || g)::name"),
    ('"char"', "chr(65 + g % 26)::\"char\""),
    ("bytea", "decode(md5(g::text), 'hex')"),
    ("date", "date '2000-01-01' + g"),
    ("time", "time '00:00' + g * interval '1 second'"),
    ("timetz", "(time '10:00' + g * interval '1 minute')::timetz"),
    ("timestamp", "timestamp '2024-07-03 18:43:05.312345' + g * interval '1 hour'"),
    ("timestamptz", "timestamptz '1969-12-31 23:59:59.5+00' + g * interval '1 day'"),
    ("timestamp(0)", "timestamp '2020-02-29 12:00:00' + g * interval '1 second'"),
    ("interval", "g * interval '1 day 2 hours'"),
    ("uuid", "md5(g::text)::uuid"),
    ("json", "json_build_object('g', g, 's', 'x' || g)"),
    ("jsonb", "jsonb_build_object('g', g, 'a', jsonb_build_array(1, 'two', null))"),
    ("inet", "('10.0.' || (g % 255) || '.1')::inet"),
    ("cidr", "('10.' || (g % 255) || '.0.0/16')::cidr"),
    ("macaddr", "'08:00:2b:01:02:03'::macaddr"),
    ("macaddr8", "'08:00:2b:01:02:03:04:05'::macaddr8"),
    ("money", "(g * 1.25)::money"),
    ("bit(8)", "(g % 256)::bit(8)"),
    ("varbit", "(g % 16)::bit(4)::varbit"),
    ("point", "point(g, -g)"),
    ("line", "line(point(0, 0), point(g, g + 1))"),
    ("lseg", "lseg(point(0, 0), point(g, g))"),
    ("box", "box(point(0, 0), point(g, g))"),
    ("path", "path(polygon(box(point(0, 0), point(g, g))))"),
    ("polygon", "polygon(box(point(0, 0), point(g, g)))"),
    ("circle", "circle(point(g, g), g)"),
    ("tsvector", "to_tsvector('simple', 'word' || g || ' other')"),
    ("tsquery", "('w' || g)::tsquery"),
    ("xml", "('<a>' || g || '</a>')::xml"),
    ("int4range", "int4range(g, g + 10)"),
    ("numrange", "numrange(g, g + 0.5)"),
    ("tstzrange", "tstzrange('2024-01-01+00', '2024-01-01+00'::timestamptz + g * interval '1 day')"),
    ("daterange", "daterange('2024-01-01', '2024-01-01'::date + g)"),
    ("int8range", "int8range(g, null)"),
    ("oid", "g::oid"),
    ("int[]", "ARRAY[g, g + 1, NULL]"),
    ("text[]", "ARRAY['a' || g, 'b \"q\"', NULL, 'NULL', '']"),
    ("int[][]", "ARRAY[[g, 2], [3, 4]]"),
    ("numeric[]", "ARRAY[1.5, g]::numeric[]"),
    ("timestamptz[]", "ARRAY[timestamptz '2024-01-01 00:00:00.123+00' + g * interval '1 second']"),
    ("jsonb[]", "ARRAY[jsonb_build_object('k', g)]"),
    ("bool[]", "ARRAY[true, false]"),
    ("uuid[]", "ARRAY[md5(g::text)::uuid]"),
    ("mood", "(ARRAY['sad', 'ok', 'happy']::mood[])[1 + g % 3]"),
    ("posint", "g::posint"),
    ("pair", "ROW(g, 'p' || g)::pair"),
    ("pair[]", "ARRAY[ROW(g, 'x')::pair, ROW(2, 'y, \"z\"')::pair]"),
    ("mood[]", "ARRAY['ok', 'sad']::mood[]"),
]


@pytest.fixture
def types_table(db):
    db.execute("DROP TABLE IF EXISTS typed, typed_copy CASCADE")
    db.execute("DROP TYPE IF EXISTS mood, pair CASCADE")
    db.execute("DROP DOMAIN IF EXISTS posint CASCADE")
    db.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    db.execute("CREATE TYPE pair AS (a int, b text)")
    db.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    cols = ", ".join(f"c{i} {t}" for i, (t, _) in enumerate(TYPES))
    db.execute(f"CREATE TABLE typed (id int PRIMARY KEY, {cols})")
    yield
    db.execute("DROP TABLE IF EXISTS typed, typed_copy CASCADE")


def insert_typed(db, lo, hi):
    exprs = ", ".join(f"CASE WHEN g % 7 = 0 THEN NULL ELSE {e} END" for _, e in TYPES)
    db.execute(f"INSERT INTO typed SELECT g, {exprs} FROM generate_series({lo}, {hi}) g")


def test_more_than_fifty_types_round_trip_through_the_table_connector(db, types_table):
    assert len(TYPES) >= 50
    insert_typed(db, 1, 50)  # delivered by the snapshot
    db.execute("SELECT sink.create_sink('typed_tab', 'typed', 'table', '{\"table\": \"typed_copy\"}', envelope => 'upsert')")
    wait_started(db, "typed_tab")
    insert_typed(db, 51, 120)  # delivered by the stream
    db.execute("UPDATE typed SET c8 = 'updated' WHERE id % 5 = 0")
    db.execute("DELETE FROM typed WHERE id % 11 = 0")
    wait_caught_up(db, "typed_tab")
    # Row-by-row comparison on the text form (some of these types have no equality).
    diff = one(db, "SELECT count(*) FROM ((SELECT t::text FROM typed t EXCEPT ALL SELECT c::text FROM typed_copy c) UNION ALL (SELECT c::text FROM typed_copy c EXCEPT ALL SELECT t::text FROM typed t)) d")
    assert diff == 0
    assert one(db, "SELECT count(*) FROM typed_copy") == one(db, "SELECT count(*) FROM typed") == 120 - 10
    db.execute("SELECT sink.drop_sink('typed_tab')")


def test_types_through_the_file_connector_as_json(db, types_table):
    d = out_dir("typed_file")
    db.execute("SELECT sink.create_sink('typed_file', 'typed', 'file', %s::jsonb, envelope => 'upsert')", (f'{{"path": "{d}"}}',))
    wait_started(db, "typed_file")
    insert_typed(db, 1, 30)
    wait_caught_up(db, "typed_file")
    state = upsert_state(file_records(d, "typed_file"))
    assert len(state) == 30
    db.execute("SET TimeZone = 'UTC'")
    idx = {t: i for i, (t, _) in enumerate(TYPES)}
    rows = db.execute(
        f"SELECT id, c{idx['integer']}, c{idx['bigint']}, c{idx['numeric(12,3)']}::text, c{idx['boolean']}, c{idx['text']}, "
        f"(extract(epoch FROM c{idx['timestamptz']}) * 1000)::numeric(20,3)::text, c{idx['jsonb']}::text, c{idx['int[]']}::text, "
        f"c{idx['double precision']}, c{idx['pair']}::text, c{idx['uuid']}::text, c{idx['bytea']}::text FROM typed ORDER BY id"
    ).fetchall()
    for r in rows:
        v = state[json.dumps({"id": r[0]})]
        if r[0] % 7 == 0:
            assert all(v[f"c{i}"] is None for i in range(len(TYPES)))
            continue
        assert v[f"c{idx['integer']}"] == r[1]
        assert v[f"c{idx['bigint']}"] == r[2]
        assert v[f"c{idx['numeric(12,3)']}"] == r[3], "numeric is a string with its exact digits"
        assert v[f"c{idx['boolean']}"] is r[4]
        assert v[f"c{idx['text']}"] == r[5]
        assert Decimal(v[f"c{idx['timestamptz']}"]) == Decimal(r[6]), "timestamps are epoch millis"
        assert v[f"c{idx['jsonb']}"] == json.loads(r[7]), "jsonb is embedded"
        assert v[f"c{idx['int[]']}"] == [r[0], r[0] + 1, None]
        assert v[f"c{idx['double precision']}"] == pytest.approx(r[9], rel=1e-15)
        assert v[f"c{idx['pair']}"] == {"a": r[0], "b": f"p{r[0]}"}
        assert v[f"c{idx['uuid']}"] == r[11]
        assert v[f"c{idx['bytea']}"] == r[12]
        assert v[f"c{idx['mood']}"] in ("sad", "ok", "happy")
        assert v[f"c{idx['text[]']}"] == [f"a{r[0]}", 'b "q"', None, "NULL", ""]
        assert v[f"c{idx['int[][]']}"] == [[r[0], 2], [3, 4]]
        assert v[f"c{idx['pair[]']}"] == [{"a": r[0], "b": "x"}, {"a": 2, "b": 'y, "z"'}]
    db.execute("SELECT sink.drop_sink('typed_file')")


@pytest.fixture
def docs(db):
    db.execute("DROP TABLE IF EXISTS docs, docs_copy, docs_full, docs_full_copy CASCADE")
    for t in ("docs", "docs_full"):
        db.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, title text, body text, n int)")
        # Out-of-line storage without compression: every large body is TOASTed.
        db.execute(f"ALTER TABLE {t} ALTER body SET STORAGE EXTERNAL")
    db.execute("ALTER TABLE docs_full REPLICA IDENTITY FULL")
    yield
    db.execute("DROP TABLE IF EXISTS docs, docs_copy, docs_full, docs_full_copy CASCADE")


BIG = "repeat(md5(g::text), 1000)"  # 32 kB, stored out of line (TOAST)


def toast_sink(db, name, table, connector, options, **named):
    args = "".join(f", {k} => %s" for k in named)
    db.execute(f"SELECT sink.create_sink(%s, %s, %s, %s::jsonb{args})", (name, table, connector, json.dumps(options), *named.values()))


def test_unchanged_toast_values_are_never_nulled(db, docs):
    """An UPDATE that leaves a TOASTed column alone does not log its value unless the
    replica identity is FULL. Every connector still gets the value: from the old
    image under FULL, else read from the source row (unchanged_toast => 'fetch', the
    default); `fail` stops the sink with a hint that does not pretend FULL repairs WAL
    already written."""
    d = out_dir("toast")
    db.execute("DROP TABLE IF EXISTS docs_new")
    # Rows that exist before a sink without snapshot: its first sight of them is an update.
    db.execute(f"INSERT INTO docs SELECT g, 'old' || g, {BIG}, 0 FROM generate_series(101, 110) g")
    toast_sink(db, "toast_tab", "docs", "table", {"table": "docs_copy"}, envelope="upsert")
    toast_sink(db, "toast_new", "docs", "table", {"table": "docs_new"}, envelope="upsert", snapshot=False)
    toast_sink(db, "toast_full_file", "docs_full", "file", {"path": d}, envelope="upsert")
    toast_sink(db, "toast_file", "docs", "file", {"path": d}, envelope="upsert")
    toast_sink(db, "toast_hist", "docs", "file", {"path": d, "force_append_only": "true"}, envelope="append-only")
    toast_sink(db, "toast_dbz", "docs", "file", {"path": d}, envelope="debezium")
    toast_sink(db, "toast_fail", "docs", "file", {"path": d, "unchanged_toast": "fail"}, envelope="upsert")
    sinks = ("toast_tab", "toast_new", "toast_full_file", "toast_file", "toast_hist", "toast_dbz", "toast_fail")
    for s in sinks:
        wait_started(db, s)
    for t in ("docs", "docs_full"):
        db.execute(f"INSERT INTO {t} SELECT g, 't' || g, {BIG}, 0 FROM generate_series(1, 20) g")
        db.execute(f"UPDATE {t} SET n = n + 1, title = 'changed' WHERE id <= 10 OR id > 100")  # body unchanged → not logged
    for s in sinks[:-1]:
        wait_caught_up(db, s)
    bodies = dict(db.execute("SELECT id, body FROM docs").fetchall())
    assert all(b is not None and len(b) == 32000 for b in bodies.values())
    # The table connector leaves unchanged columns alone; a row it first sees in an
    # update gets the body read from the source (it was NULL before).
    assert one(db, "SELECT count(*) FROM docs d JOIN docs_copy c USING (id) WHERE d.body = c.body AND d.n = c.n AND d.title = c.title") == 30
    assert one(db, "SELECT count(*) FROM docs d JOIN docs_new c USING (id) WHERE d.body = c.body AND d.n = c.n AND d.title = c.title") == 30
    assert one(db, "SELECT count(*) FROM docs_new") == 30
    # Under REPLICA IDENTITY FULL the file sink takes the value from the old image.
    state = upsert_state(file_records(d, "toast_full_file"))
    full_bodies = dict(db.execute("SELECT id, body FROM docs_full").fetchall())
    assert len(state) == 20
    for v in state.values():
        assert v["body"] == full_bodies[v["id"]]
    # Without FULL the body is read from the source: every record carries it.
    state = upsert_state(file_records(d, "toast_file"))
    assert len(state) == 30 and all(v["body"] == bodies[v["id"]] for v in state.values())
    hist = [r["value"] for r in file_records(d, "toast_hist")]
    assert len(hist) == 30 + 20  # snapshot of 10, 20 inserts, 20 updates
    assert all(v["body"] == bodies[v["id"]] for v in hist)
    dbz = [r["value"] for r in file_records(d, "toast_dbz")]
    updates = [v for v in dbz if v["op"] == "u"]
    assert len(updates) == 20 and all(v["after"]["body"] == bodies[v["after"]["id"]] for v in updates)
    # fail: the sink stops, naming the column and the ways out.
    st = wait_for(lambda: (lambda r: r if r[0] == "failed" else None)(
        db.execute("SELECT state, last_error, last_error_hint FROM sink.status WHERE name = 'toast_fail'").fetchone()),
        what="the unchanged_toast => fail sink to stop")
    assert "unchanged TOASTed value" in st[1] and "body" in st[1]
    assert "resync" in st[2] and "unchanged_toast" in st[2]

    # A row updated and then deleted before the sink reads the update: the upsert
    # drops the superseded update, the changelog keeps it with Debezium's placeholder.
    for s in ("toast_file", "toast_dbz"):
        db.execute("SELECT sink.pause_sink(%s)", (s,))
    db.execute("UPDATE docs SET n = 99 WHERE id = 1")
    db.execute("DELETE FROM docs WHERE id = 1")
    for s in ("toast_file", "toast_dbz"):
        db.execute("SELECT sink.resume_sink(%s)", (s,))
        wait_caught_up(db, s)
    state = upsert_state(file_records(d, "toast_file"))
    assert len(state) == 29 and all(v["body"] == bodies[v["id"]] for v in state.values())
    assert not [r for r in file_records(d, "toast_file") if r["value"] and r["value"]["n"] == 99]
    last = [r["value"] for r in file_records(d, "toast_dbz")][-2:]
    assert [v["op"] for v in last] == ["u", "d"]
    assert last[0]["after"]["n"] == 99 and last[0]["after"]["body"] == "__debezium_unavailable_value"
    for s in sinks:
        db.execute("SELECT sink.drop_sink(%s)", (s,))
    db.execute("DROP TABLE IF EXISTS docs_new")


def test_unchanged_toast_is_read_as_committed_after_the_change_not_as_the_step_began(db, docs):
    """The fetch of an unchanged TOAST value must see the transaction whose change it
    completes. A step's transaction can hold an older snapshot: a worker takes it as
    the step begins, before it reads the WAL flushed by then; a REPEATABLE READ
    caller of sync() holds it from its first statement. Here the caller's snapshot
    predates both the INSERT and the UPDATE it then syncs: the row was read as gone,
    so the upsert dropped the update (and the file target lost it)."""
    d = out_dir("toast_rr")
    db.execute("DROP TABLE IF EXISTS docs_copy")
    toast_sink(db, "toast_rr_tab", "docs", "table", {"table": "docs_copy", "schedule": "manual"}, envelope="upsert")
    toast_sink(db, "toast_rr_file", "docs", "file", {"path": d, "schedule": "manual"}, envelope="upsert")
    for s in ("toast_rr_tab", "toast_rr_file"):
        db.execute("SELECT sink.sync(%s)", (s,))
    # The launcher writes a new sink's WAL-retention settings into its progress
    # row once (within 2 s); a REPEATABLE READ caller whose snapshot predates that
    # write gets 40001 when its sync() then updates the row, as any RR writer would.
    wait_for(lambda: one(db, "SELECT count(*) FROM sink.status WHERE name LIKE 'toast_rr_%%' AND wal_retention_policy IS NOT NULL") == 2,
             what="the launcher to write the new sinks' retention settings")
    with connect() as caller:
        caller.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert one(caller, "SELECT count(*) FROM docs") == 0  # the snapshot is taken here
        db.execute(f"INSERT INTO docs SELECT g, 't' || g, {BIG}, 0 FROM generate_series(1, 5) g")
        db.execute("UPDATE docs SET title = 'changed', n = 1")  # body unchanged: not logged
        for s in ("toast_rr_tab", "toast_rr_file"):
            assert one(caller, "SELECT (sink.sync(%s))->>'changes'", s) == "10"
        caller.execute("COMMIT")
    same = "SELECT count(*) FROM docs d JOIN docs_copy c USING (id) WHERE (d.title, d.body, d.n) = (c.title, c.body, c.n)"
    assert one(db, same) == 5
    bodies = dict(db.execute("SELECT id, body FROM docs").fetchall())
    state = upsert_state(file_records(d, "toast_rr_file"))
    assert len(state) == 5
    assert all(v["title"] == "changed" and v["n"] == 1 and v["body"] == bodies[v["id"]] for v in state.values())
    for s in ("toast_rr_tab", "toast_rr_file"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))


def test_truncate_nulls_and_a_100k_row_transaction(db, docs):
    d = out_dir("bulk")
    db.execute("SELECT sink.create_sink('bulk_tab', 'docs', 'table', '{\"table\": \"docs_copy\"}', envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('bulk_file', 'docs', 'file', %s::jsonb, envelope => 'upsert')", (f'{{"path": "{d}"}}',))
    # A truncate is skipped by default (as Debezium's skipped.operations = t), but
    # not by the table sink that mirrors the source, and not when asked for.
    db.execute("SELECT sink.create_sink('bulk_dbz', 'docs', 'file', %s::jsonb)", (json.dumps({"path": d, "skipped.operations": "none"}),))
    for s in ("bulk_tab", "bulk_file", "bulk_dbz"):
        wait_started(db, s)
    db.execute("INSERT INTO docs VALUES (1, NULL, NULL, NULL), (2, 'two', '', 0)")
    db.execute("TRUNCATE docs")
    db.execute("INSERT INTO docs SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'r' || g END, 'b', g FROM generate_series(1, 100000) g")
    db.execute("UPDATE docs SET n = -n WHERE id % 1000 = 0")
    db.execute("DELETE FROM docs WHERE id % 997 = 0")
    for s in ("bulk_tab", "bulk_file", "bulk_dbz"):
        wait_caught_up(db, s, timeout=300)
    diff = one(db, "SELECT count(*) FROM ((SELECT * FROM docs EXCEPT ALL SELECT * FROM docs_copy) UNION ALL (SELECT * FROM docs_copy EXCEPT ALL SELECT * FROM docs)) d")
    assert diff == 0
    src = {r[0]: r for r in db.execute("SELECT id, title, body, n FROM docs").fetchall()}
    state = upsert_state(file_records(d, "bulk_file"))
    assert "truncate" not in {r["headers"]["pg_sink-op"] for r in file_records(d, "bulk_file")}
    assert len(state) == len(src)
    for v in state.values():
        assert (v["id"], v["title"], v["body"], v["n"]) == src[v["id"]]
    dbz = file_records(d, "bulk_dbz")
    ops = [r["value"]["op"] for r in dbz]
    assert ops[:4] == ["c", "c", "t", "c"]
    assert ops.count("c") == 100002 and ops.count("u") == 100 and ops.count("d") == 100000 // 997
    # Commit order: LSN headers never go backwards.
    lsns = [int(r["headers"]["pg_sink-lsn"].split("/")[0], 16) << 32 | int(r["headers"]["pg_sink-lsn"].split("/")[1], 16) for r in dbz]
    assert lsns == sorted(lsns)
    for s in ("bulk_tab", "bulk_file", "bulk_dbz"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))


def test_column_list_row_filter_and_schema_changes(db, docs):
    d = out_dir("shape")
    # Column list and row filter (RisingWave's AS select_query); the filter may only
    # use replica identity columns, which pg_sink checks at creation.
    db.execute("SELECT sink.create_sink('shape', 'SELECT id, title, n FROM docs WHERE id <> 2', 'file', %s::jsonb, envelope => 'upsert')", (f'{{"path": "{d}"}}',))
    db.execute("SELECT sink.create_sink('shape_tab', 'docs_full', 'table', '{\"table\": \"docs_full_copy\"}', envelope => 'upsert')")
    wait_started(db, "shape")
    wait_started(db, "shape_tab")
    for t in ("docs", "docs_full"):
        db.execute(f"INSERT INTO {t} VALUES (1, 'a', 'secret body', 1), (2, 'b', 'x', 0)")
        db.execute(f"ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'e'")
        db.execute(f"INSERT INTO {t} VALUES (3, 'c', 'y', 5, 'new')")
        db.execute(f"ALTER TABLE {t} DROP COLUMN body")
        db.execute(f"INSERT INTO {t} VALUES (4, 'd', 6, 'z')")
        db.execute(f"UPDATE {t} SET title = 'b2' WHERE id = 2")
    wait_caught_up(db, "shape")
    wait_caught_up(db, "shape_tab")
    vals = [r["value"] for r in file_records(d, "shape")]
    assert vals == [{"id": 1, "title": "a", "n": 1}, {"id": 3, "title": "c", "n": 5}, {"id": 4, "title": "d", "n": 6}]
    copy = db.execute("SELECT id, title, n, extra FROM docs_full_copy ORDER BY id").fetchall()
    assert copy == [(1, "a", 1, None), (2, "b2", 0, "e"), (3, "c", 5, "new"), (4, "d", 6, "z")]
    db.execute("SELECT sink.drop_sink('shape')")
    db.execute("SELECT sink.drop_sink('shape_tab')")


def test_sink_start_does_not_deadlock_with_a_writer_holding_an_xid(db):
    # Creating the slot waits for every transaction that has an xid. A transaction
    # that wrote elsewhere and then writes the source must not deadlock with the
    # sink's start (it did while the source was locked before the slot existed).
    from conftest import connect
    db.execute("DROP TABLE IF EXISTS dl_src, dl_other")
    db.execute("CREATE TABLE dl_src (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE dl_other (id int)")
    db.execute("INSERT INTO dl_src SELECT g, 'a' FROM generate_series(1, 100) g")
    d = out_dir("dl")
    writer = connect()
    writer.autocommit = False
    writer.execute("INSERT INTO dl_other VALUES (1)")  # takes an xid
    db.execute("SELECT sink.create_sink('dl', 'dl_src', 'file', %s::jsonb, envelope => 'upsert')", (json.dumps({"path": d}),))
    # The sink's slot creation (in the walsender that takes its snapshot) now
    # waits for the writer to finish before the slot exists ...
    sink_procs = "(SELECT 'pg_sink sink dl' UNION ALL SELECT 'pg_sink snapshot ' || slot_name FROM sink.sinks WHERE name = 'dl')"
    wait_for(lambda: one(db, f"SELECT count(*) FROM pg_stat_activity WHERE application_name IN {sink_procs} AND wait_event_type = 'Lock'") == 1,
             what="the sink to wait for the writer")
    # ... and holds no lock on the source while it waits.
    assert one(db, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                   f"WHERE a.application_name IN {sink_procs} AND l.relation = 'dl_src'::regclass") == 0
    writer.execute("INSERT INTO dl_src VALUES (101, 'from the writer')")
    writer.execute("UPDATE dl_src SET v = 'b' WHERE id = 1")
    writer.commit()
    writer.close()
    wait_started(db, "dl")
    db.execute("INSERT INTO dl_src VALUES (102, 'after')")
    wait_caught_up(db, "dl")
    recs = file_records(d, "dl")
    keys = [json.dumps(r["key"], sort_keys=True) for r in recs]
    assert len(keys) == len(set(keys)) == 102, "every row exactly once"
    assert one(db, "SELECT errors FROM sink.status WHERE name = 'dl'") == 0
    assert upsert_state(recs) == {json.dumps({"id": i}): {"id": i, "v": v} for i, v in db.execute("SELECT id, v FROM dl_src").fetchall()}
    db.execute("SELECT sink.drop_sink('dl')")
