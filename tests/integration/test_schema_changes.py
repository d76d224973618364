"""Schema changes in WAL order: the extension's event trigger reports each ALTER
TABLE of a captured table as a sealed logical message, and `table` and `jdbc`
(PostgreSQL, MariaDB) targets follow it at its place in the stream: columns added,
dropped, renamed and retyped, also when no row changes after the DDL. Each test
compares the target with the source, columns and rows, with the worker killed in
the middle."""
import decimal
import json

from conftest import one, out_dir, wait_caught_up, wait_for, wait_started
from test_dead_letters import kill_worker
from test_jdbc import Target, mariadb, pg_target  # noqa: F401  (the target fixtures)
from test_object_store import file_objects, read_jsonl, read_parquet


def columns(db, table):
    return db.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname", (table,)).fetchall()


def rows(db, table, cols):
    return db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1").fetchall()


def alter_in_the_middle_of_traffic(db, src, sink):
    """DML, then every kind of ALTER with DML between, the worker killed once, and
    a last ALTER with no DML after it."""
    db.execute(f"INSERT INTO {src} SELECT g, g, 'b' || g, 'c' || g FROM generate_series(1, 50) g")
    db.execute(f"ALTER TABLE {src} ADD COLUMN d numeric(8,2)")
    db.execute(f"INSERT INTO {src} (id, a, b, c, d) SELECT g, g, 'b' || g, 'c' || g, g / 4.0 FROM generate_series(51, 80) g")
    kill_worker(db, sink)
    with db.transaction():
        db.execute(f"UPDATE {src} SET b = 'before rename' WHERE id = 3")
        db.execute(f"ALTER TABLE {src} RENAME COLUMN b TO b2")
        db.execute(f"UPDATE {src} SET b2 = 'after rename' WHERE id = 4")
    db.execute(f"ALTER TABLE {src} ALTER COLUMN a TYPE bigint")
    db.execute(f"UPDATE {src} SET a = 5000000000 WHERE id = 5")
    db.execute(f"ALTER TABLE {src} DROP COLUMN c")
    db.execute(f"DELETE FROM {src} WHERE id = 6")
    db.execute(f"INSERT INTO {src} (id, a, b2, d) VALUES (81, 81, 'last', 1.5)")
    # No row changes after this one: the target still follows it.
    db.execute(f"ALTER TABLE {src} ADD COLUMN e text, ALTER COLUMN b2 TYPE varchar(40)")


def test_a_table_target_follows_add_rename_retype_and_drop_in_wal_order(db):
    db.execute("DROP TABLE IF EXISTS sc_src, sc_copy CASCADE")
    db.execute("CREATE TABLE sc_src (id int PRIMARY KEY, a int, b text, c text)")
    db.execute("SELECT sink.create_sink('sc_tab', 'sc_src', 'table', '{\"table\": \"sc_copy\"}', envelope => 'upsert')")
    wait_started(db, "sc_tab")
    alter_in_the_middle_of_traffic(db, "sc_src", "sc_tab")
    wait_caught_up(db, "sc_tab")
    assert columns(db, "sc_copy") == columns(db, "sc_src"), "the target's columns are the source's"
    cols = ["id", "a", "b2", "d", "e"]
    assert rows(db, "sc_copy", cols) == rows(db, "sc_src", cols)
    assert one(db, "SELECT b2 FROM sc_copy WHERE id = 3") == "before rename", "the value set before the rename moved with it"
    assert one(db, "SELECT state FROM sink.status WHERE name = 'sc_tab'") == "running"
    db.execute("SELECT sink.drop_sink('sc_tab')")
    assert one(db, "SELECT count(*) FROM sink.source_shapes WHERE relid = 'sc_src'::regclass") == 0, "no sink captures it any more"


def test_jdbc_postgres_and_mariadb_targets_follow_also_after_a_crash_between_ddl_and_progress(db, pg_target, mariadb):  # noqa: F811
    """PostgreSQL applies each change in the batch's target transaction. MariaDB
    commits DDL implicitly: the rows before a change commit first with the
    sink's progress at the change, then each alteration runs unless the table
    already shows it. The MariaDB sink is paused through the traffic and its
    first ALTER is applied to the target by hand first, as a crash after the DDL
    and before the progress would leave it; its worker is killed while it
    catches up."""
    pg, my = Target("postgres"), Target("mysql")
    db.execute("DROP TABLE IF EXISTS sc_j CASCADE")
    db.execute("CREATE TABLE sc_j (id int PRIMARY KEY, a int, b text, c text)")
    pg.create_table("sc_j", [("id", "int"), ("a", "int"), ("b", "text"), ("c", "text")], pk=("id",))
    my.create_table("sc_j", [("id", "int"), ("a", "int"), ("b", "text"), ("c", "text")], pk=("id",))
    for name, target in (("sc_jpg", pg), ("sc_jmy", my)):
        db.execute("SELECT sink.create_sink(%s, 'sc_j', 'jdbc', %s::jsonb, envelope => 'upsert')",
                   (name, json.dumps(target.options("sc_j"))))
        wait_started(db, name)
    db.execute("SELECT sink.pause_sink('sc_jmy')")
    alter_in_the_middle_of_traffic(db, "sc_j", "sc_jpg")
    wait_caught_up(db, "sc_jpg")
    got = pg.rows("SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                  "WHERE attrelid = 'sc_j'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname")
    assert got == columns(db, "sc_j")
    cols = ["id", "a", "b2", "d", "e"]
    assert pg.rows(f"SELECT {', '.join(cols)} FROM sc_j ORDER BY 1") == rows(db, "sc_j", cols)

    my.execute("ALTER TABLE sc_j ADD COLUMN d DECIMAL(8,2)")
    db.execute("SELECT sink.resume_sink('sc_jmy')")
    wait_for(lambda: one(db, "SELECT rows_delivered FROM sink.status WHERE name = 'sc_jmy'") > 0, what="the MariaDB sink to deliver")
    kill_worker(db, "sc_jmy")
    wait_caught_up(db, "sc_jmy")
    assert one(db, "SELECT state FROM sink.status WHERE name = 'sc_jmy'") == "running"
    mine = my.rows("SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR) FROM information_schema.columns "
                   "WHERE table_schema = DATABASE() AND table_name = 'sc_j' ORDER BY column_name")
    assert [(c.lower(), t.split("(")[0] if t.startswith(("int", "bigint")) else t) for c, t in mine] == [
        ("a", "bigint"), ("b2", "varchar(40)"), ("d", "decimal(8,2)"), ("e", "longtext"), ("id", "int")], mine
    assert my.rows(f"SELECT {', '.join(cols)} FROM sc_j ORDER BY 1") == rows(db, "sc_j", cols)
    assert my.rows("SELECT b2 FROM sc_j WHERE id = 3") == [("before rename",)], "the value set before the rename moved with it"
    for name in ("sc_jpg", "sc_jmy"):
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    pg.drop_table("sc_j")
    my.drop_table("sc_j")


def test_record_targets_follow_in_json_lines_and_parquet_files(db):
    """JSON lines and Parquet files carry each row in its shape at the time: new
    fields appear, a Parquet file starts with the new schema. Replayed by key,
    with a renamed column's old name read as its new one, the files equal the
    source (the column added last, with no row after it, is NULL everywhere)."""
    db.execute("DROP TABLE IF EXISTS sc_rec CASCADE")
    db.execute("CREATE TABLE sc_rec (id int PRIMARY KEY, a int, b text, c text)")
    d = out_dir("sc_rec")
    for name, fmt in (("sc_json", "jsonl"), ("sc_parquet", "parquet")):
        opts = {"location": f"file://{d}", "file_format": fmt}
        db.execute("SELECT sink.create_sink(%s, 'sc_rec', 'file', %s::jsonb, envelope => 'upsert', snapshot => false)", (name, json.dumps(opts)))
        wait_started(db, name)
    alter_in_the_middle_of_traffic(db, "sc_rec", "sc_json")
    wait_caught_up(db, "sc_json")
    wait_caught_up(db, "sc_parquet")
    source = {r[0]: dict(zip(["id", "a", "b2", "d", "e"], r)) for r in rows(db, "sc_rec", ["id", "a", "b2", "d", "e"])}

    def replay(records, fields_of, op_of):
        state = {}
        for r in records:
            f = fields_of(r)
            if op_of(r) == "delete":
                state.pop(f["id"], None)
                continue
            if "b" in f:
                f["b2"] = f.pop("b")  # written before the rename
            state[f["id"]] = {k: f.get(k) for k in ["id", "a", "b2", "d", "e"]}
        return state

    def numeric(state):
        # JSON and Parquet carry numeric as its exact text.
        return {k: {**v, "d": None if v["d"] is None else decimal.Decimal(v["d"])} for k, v in state.items()}

    objects = sorted((k, v) for k, v in file_objects(d, "sc_json").items() if k.endswith(".jsonl"))
    json_records = [r for _, body in objects for r in read_jsonl(body)]
    got = replay(json_records, lambda r: dict(r["value"] or r["key"]), lambda r: r["headers"]["pg_sink-op"])
    assert numeric(got) == source
    assert any("d" in (r["value"] or {}) for r in json_records) and any("b2" in (r["value"] or {}) for r in json_records)

    files = sorted((k, v) for k, v in file_objects(d, "sc_parquet").items() if k.endswith(".parquet"))
    schemas = [read_parquet(body)[0] for _, body in files]
    names = [s.names[3:] for s in schemas]
    assert names[0] == ["id", "a", "b", "c"] and names[-1] == ["id", "a", "b2", "d"], names
    assert ["id", "a", "b", "c", "d"] in names, "a file starts with the added column"
    assert str(schemas[-1].field("a").type) == "int64", "the retyped column is a bigint in the files after it"
    parquet_records = [r for _, body in files for r in read_parquet(body)[1]]
    got = replay(parquet_records, lambda r: {k: v for k, v in r.items() if not k.startswith("_pg_sink")}, lambda r: r["_pg_sink_op"])
    assert numeric(got) == source
    for name in ("sc_json", "sc_parquet"):
        db.execute("SELECT sink.drop_sink(%s)", (name,))


def test_stop_a_key_change_and_forged_reports(db):
    db.execute("DROP TABLE IF EXISTS sc_k, sc_k_copy, sc_s, sc_s_copy, sc_free CASCADE")
    db.execute("CREATE TABLE sc_k (id int PRIMARY KEY, other int NOT NULL UNIQUE, v text)")
    db.execute("CREATE TABLE sc_s (id int PRIMARY KEY, v text)")
    db.execute("SELECT sink.create_sink('sc_k', 'sc_k', 'table', '{\"table\": \"sc_k_copy\"}', envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('sc_s', 'sc_s', 'table', '{\"table\": \"sc_s_copy\", \"schema.changes\": \"stop\"}', envelope => 'upsert')")
    wait_started(db, "sc_k")
    wait_started(db, "sc_s")
    # A report anyone can write is not acted on: it has no valid seal.
    relid = one(db, "SELECT 'sc_k'::regclass::oid::bigint")
    forged = {"relid": relid, "before": {"schema": "public", "table": "sc_k", "key": ["id"],
                                         "columns": [{"attnum": 1, "name": "id", "type": "integer"}, {"attnum": 3, "name": "v", "type": "text"}]},
              "after": {"schema": "public", "table": "sc_k", "key": ["id"], "columns": [{"attnum": 1, "name": "id", "type": "integer"}]}}
    db.execute("SELECT pg_logical_emit_message(true, 'pg_sink.ddl', %s)", (json.dumps(forged),))
    db.execute("SELECT pg_logical_emit_message(true, 'pg_sink.ddl', %s)", ("0" * 64 + ":" + json.dumps(forged),))
    db.execute("INSERT INTO sc_k VALUES (1, 1, 'one')")
    wait_caught_up(db, "sc_k")
    assert [c for c, _ in columns(db, "sc_k_copy")] == ["id", "other", "v"], "a forged report dropped a column"
    # The key the target is keyed by changes: the sink stops, naming it.
    db.execute("ALTER TABLE sc_k DROP CONSTRAINT sc_k_pkey, ADD PRIMARY KEY (other)")
    st = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'sc_k' AND state = 'failed'").fetchone(),
                  what="the key change to stop the sink")
    assert "key (id) became (other)" in st[1], st
    # schema.changes = stop: the sink stops at the change, the rows before it delivered.
    db.execute("INSERT INTO sc_s VALUES (1, 'before')")
    db.execute("ALTER TABLE sc_s ADD COLUMN w int")
    db.execute("INSERT INTO sc_s VALUES (2, 'after', 2)")
    st = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'sc_s' AND state = 'failed'").fetchone(),
                  what="schema.changes = stop to stop the sink")
    assert "column \"w\" integer added" in st[1] and "schema.changes" in st[1], st
    assert db.execute("SELECT id, v FROM sc_s_copy").fetchall() == [(1, "before")]
    # A table no sink captures costs nothing and is not remembered.
    db.execute("CREATE TABLE sc_free (id int)")
    db.execute("ALTER TABLE sc_free ADD COLUMN x int")
    assert one(db, "SELECT count(*) FROM sink.source_shapes WHERE relid = 'sc_free'::regclass") == 0
    for s in ("sc_k", "sc_s"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))


def test_a_gated_sink_refuses_an_alter_table_it_could_not_follow(db):
    """schema.gate: the ALTER TABLE itself fails (SQLSTATE 55000, naming the sink
    and the reason) when a gated sink could not follow it: a narrowing retype or a
    key change for a keyed table target, any change under schema.changes = 'stop'.
    The table stays as it was, the sink keeps running, and a change it can follow
    goes through and is applied. Without the gate the same narrowing commits and
    the sink fails at it later (what the gate prevents)."""
    from conftest import sqlstate_of
    db.execute("DROP TABLE IF EXISTS sg_src, sg_copy, sg_copy2 CASCADE")
    db.execute("CREATE TABLE sg_src (id int PRIMARY KEY, v bigint, w text)")
    db.execute("INSERT INTO sg_src SELECT g, g * 10, 'w' || g FROM generate_series(1, 20) g")
    db.execute("SELECT sink.create_sink('sg_tab', 'sg_src', 'table', '{\"table\": \"sg_copy\", \"schema.gate\": true}', envelope => 'upsert')")
    wait_started(db, "sg_tab")
    wait_caught_up(db, "sg_tab")
    before = columns(db, "sg_src")
    for ddl, words in [
        ("ALTER TABLE sg_src ALTER COLUMN v TYPE integer", ["not a widening", "bigint", "integer"]),
        ("ALTER TABLE sg_src ALTER COLUMN w TYPE varchar(3)", ["not a widening"]),
        ("ALTER TABLE sg_src DROP CONSTRAINT sg_src_pkey, ADD PRIMARY KEY (id, v)", ["key"]),
    ]:
        st, msg, detail, hint = sqlstate_of(db, ddl)
        assert st == "55000" and "sg_tab" in msg, (ddl, st, msg)
        assert all(w in detail for w in words) and "schema.gate" in hint, (ddl, detail, hint)
        assert columns(db, "sg_src") == before, "the ALTER TABLE did not happen"
    assert one(db, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'sg_src_pkey'") == "PRIMARY KEY (id)"
    # A widening and an added column go through, and the target follows them.
    db.execute("ALTER TABLE sg_src ALTER COLUMN v TYPE numeric(30,0), ADD COLUMN x text")
    db.execute("UPDATE sg_src SET x = 'x' || id, v = v * 1000000000000 WHERE id <= 5")
    wait_caught_up(db, "sg_tab")
    assert columns(db, "sg_copy") == columns(db, "sg_src")
    assert rows(db, "sg_copy", ["id", "v", "w", "x"]) == rows(db, "sg_src", ["id", "v", "w", "x"])
    assert one(db, "SELECT state FROM sink.status WHERE name = 'sg_tab'") == "running"
    # Under schema.changes = 'stop', every change is refused while the gate is on.
    db.execute("SELECT sink.alter_sink('sg_tab', '{\"schema.changes\": \"stop\"}')")
    st, msg, detail, _ = sqlstate_of(db, "ALTER TABLE sg_src ADD COLUMN y int")
    assert st == "55000" and "stop" in detail, (st, msg, detail)
    # With the gate off, the narrowing commits, and the stop-mode sink fails on it later.
    db.execute("SELECT sink.alter_sink('sg_tab', '{\"schema.gate\": false}')")
    db.execute("ALTER TABLE sg_src ADD COLUMN y int")
    db.execute("UPDATE sg_src SET y = 1 WHERE id = 1")
    wait_for(lambda: one(db, "SELECT state FROM sink.status WHERE name = 'sg_tab'") == "failed", what="the ungated sink to stop")
    db.execute("SELECT sink.drop_sink('sg_tab')")
    db.execute("DROP TABLE sg_src, sg_copy")
