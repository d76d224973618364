"""How workers read their slots (README "Transport", pg_sink.transport): through
a walsender of the same server by default; sync(), preview() and drop_sink() take
the slot from that walsender; 'sql' and a walsender connection that fails (with
'auto') read through pg_logical_slot_peek_binary_changes; 'walsender' reports the
failure in the status; a walsender killed mid-stream loses and repeats nothing."""
import time

import pytest

from conftest import connect, file_records, one, out_dir, upsert_state, wait_caught_up, wait_for, wait_started


def reload_with(db, **settings):
    """ALTER SYSTEM SET (or RESET, for None) pg_sink.<name>, then reload and wait
    until a new session sees every value."""
    for name, value in settings.items():
        if value is None:
            db.execute(f"ALTER SYSTEM RESET pg_sink.{name}")
        else:
            db.execute(f"ALTER SYSTEM SET pg_sink.{name} = '{value}'")
    db.execute("SELECT pg_reload_conf()")

    def seen():
        with connect() as c:
            for name, value in settings.items():
                shown = c.execute(f"SHOW pg_sink.{name}").fetchone()[0]
                if shown != (value if value is not None else {"transport": "auto", "replication_conninfo": ""}[name]):
                    return False
        return True
    wait_for(seen, 10, "the configuration reload")


def slot_of(db, sink):
    return one(db, "SELECT slot_name FROM sink.sinks WHERE name = %s", sink)


def walsender(db, sink):
    """(pid, state) of the walsender streaming the sink's slot, or None."""
    return db.execute(
        "SELECT r.pid, r.state FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid "
        "WHERE s.slot_name = %s AND r.application_name = 'pg_sink stream ' || s.slot_name",
        (slot_of(db, sink),),
    ).fetchone()


@pytest.fixture
def tt(db):
    db.execute("DROP TABLE IF EXISTS tt CASCADE")
    db.execute("CREATE TABLE tt (id int PRIMARY KEY, v text)")
    yield
    for (name,) in db.execute("SELECT name FROM sink.sinks WHERE name LIKE 'tr\\_%'").fetchall():
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    reload_with(db, transport=None, replication_conninfo=None)
    db.execute("DROP TABLE IF EXISTS tt CASCADE")


def file_sink(db, name, d):
    db.execute("SELECT sink.create_sink(%s, 'tt', 'file', %s::jsonb, envelope => 'upsert')", (name, f'{{"path": "{d}"}}'))
    wait_started(db, name)


def test_worker_streams_and_sync_preview_drop_take_the_slot(db, tt):
    d = out_dir("tr_stream")
    file_sink(db, "tr_stream", d)
    db.execute("INSERT INTO tt SELECT g, 'a' || g FROM generate_series(1, 100) g")
    wait_caught_up(db, "tr_stream")
    first = wait_for(lambda: walsender(db, "tr_stream"), 10, "the sink's walsender")
    assert first[1] == "streaming"

    # sync() takes the slot from the walsender (which it ends) and delivers itself;
    # the worker then streams again through a new walsender.
    db.execute("INSERT INTO tt SELECT g, 'b' || g FROM generate_series(101, 200) g")
    out = one(db, "SELECT sink.sync('tr_stream')")
    assert out["confirmed_lsn"] is not None
    second = wait_for(lambda: (w := walsender(db, "tr_stream")) and w[0] != first[0] and w, 10, "a new walsender after sync()")
    assert one(db, "SELECT last_error FROM sink.status WHERE name = 'tr_stream'") is None

    # preview() reads the slot through SQL while the worker streams it.
    db.execute("INSERT INTO tt SELECT g, 'c' || g FROM generate_series(201, 300) g")
    wait_caught_up(db, "tr_stream")
    assert db.execute("SELECT * FROM sink.preview('tr_stream', 5)").fetchall() == [], "caught up: nothing to preview"
    wait_for(lambda: (w := walsender(db, "tr_stream")) and w[0] != second[0], 10, "a new walsender after preview()")
    db.execute("UPDATE tt SET v = 'u' || id WHERE id % 10 = 0")
    db.execute("DELETE FROM tt WHERE id % 7 = 0")
    wait_caught_up(db, "tr_stream")
    state = upsert_state(file_records(d, "tr_stream"))
    src = dict(db.execute("SELECT id, v FROM tt").fetchall())
    assert {v["id"]: v["v"] for v in state.values()} == src
    assert one(db, "SELECT last_error FROM sink.status WHERE name = 'tr_stream'") is None

    # drop_sink() drops the slot although a walsender streams it.
    slot = slot_of(db, "tr_stream")
    db.execute("SELECT sink.drop_sink('tr_stream')")
    assert one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot) == 0
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s", f"pg_sink stream {slot}") == 0,
             10, "the walsender to end")


def test_sql_transport_fallback_and_walsender_only(db, tt):
    # 'sql': no walsender, same records.
    reload_with(db, transport="sql")
    d = out_dir("tr_sql")
    file_sink(db, "tr_sql", d)
    db.execute("INSERT INTO tt SELECT g, 's' || g FROM generate_series(1, 50) g")
    wait_caught_up(db, "tr_sql")
    assert walsender(db, "tr_sql") is None
    assert len(upsert_state(file_records(d, "tr_sql"))) == 50

    # 'auto' with a walsender that cannot be reached: the sink reads through SQL.
    reload_with(db, transport="auto", replication_conninfo="host=127.0.0.1 port=1")
    d2 = out_dir("tr_auto")
    file_sink(db, "tr_auto", d2)
    db.execute("INSERT INTO tt SELECT g, 's' || g FROM generate_series(51, 100) g")
    wait_caught_up(db, "tr_auto")
    assert walsender(db, "tr_auto") is None
    assert len(upsert_state(file_records(d2, "tr_auto"))) == 100
    assert one(db, "SELECT last_error FROM sink.status WHERE name = 'tr_auto'") is None

    # 'walsender' only: the sink cannot even take its snapshot (the walsender
    # creates its slot); the failure is in the status and nothing is skipped; once
    # the setting is fixed (a reload), the sink starts and catches up through a
    # walsender.
    reload_with(db, transport="walsender")
    d3 = out_dir("tr_ws")
    db.execute("SELECT sink.create_sink('tr_ws', 'tt', 'file', %s::jsonb, envelope => 'upsert')", (f'{{"path": "{d3}"}}',))
    db.execute("INSERT INTO tt SELECT g, 's' || g FROM generate_series(101, 150) g")
    err = wait_for(lambda: one(db, "SELECT last_error FROM sink.status WHERE name = 'tr_ws'"), 30, "the connection error in the status")
    assert "could not connect to the walsender at 127.0.0.1:1" in err, err
    assert one(db, "SELECT state FROM sink.status WHERE name = 'tr_ws'") == "running", "a transient error"
    reload_with(db, replication_conninfo=None)
    wait_started(db, "tr_ws")
    wait_caught_up(db, "tr_ws")
    assert wait_for(lambda: walsender(db, "tr_ws"), 10, "the walsender")
    assert len(upsert_state(file_records(d3, "tr_ws"))) == 150
    # The fallen-back sink moves to a walsender after the reload too.
    wait_for(lambda: walsender(db, "tr_auto"), 10, "tr_auto's walsender after the reload")

    # A bad conninfo is refused by the connection attempt, with the key named.
    reload_with(db, replication_conninfo="sslmode=require")
    db.execute("INSERT INTO tt VALUES (151, 'x')")
    err = wait_for(lambda: one(db, "SELECT last_error FROM sink.status WHERE name = 'tr_ws'"), 30, "the conninfo error")
    assert 'unsupported key "sslmode"' in err, err


def test_walsender_killed_mid_stream_loses_and_repeats_nothing(db, tt):
    # The table connector applies rows in the step's own transaction, so the
    # target must equal the source exactly, whatever was in flight.
    db.execute("DROP TABLE IF EXISTS tt_copy")
    db.execute("SELECT sink.create_sink('tr_kill', 'tt', 'table', '{\"table\": \"tt_copy\"}', envelope => 'upsert')")
    d = out_dir("tr_kill_file")
    db.execute("SELECT sink.create_sink('tr_kill_file', 'tt', 'file', %s::jsonb)", (f'{{"path": "{d}"}}',))
    wait_started(db, "tr_kill")
    wait_started(db, "tr_kill_file")
    killed = 0
    for i in range(20):
        db.execute("INSERT INTO tt SELECT g, 'k' || g FROM generate_series(%s::int, %s::int) g", (i * 5000 + 1, i * 5000 + 5000))
        if i % 4 == 3:
            db.execute("UPDATE tt SET v = v || '!' WHERE id %% 100 = %s::int", (i,))
        time.sleep(0.05)
        for sink in ("tr_kill", "tr_kill_file"):
            w = walsender(db, sink)
            if w:
                db.execute("SELECT pg_terminate_backend(%s)", (w[0],))
                killed += 1
    assert killed >= 5, "walsenders were ended mid-stream"
    wait_caught_up(db, "tr_kill", timeout=180)
    wait_caught_up(db, "tr_kill_file", timeout=180)
    diff = one(db, "SELECT count(*) FROM ((TABLE tt EXCEPT ALL TABLE tt_copy) UNION ALL (TABLE tt_copy EXCEPT ALL TABLE tt)) d")
    assert diff == 0
    # The file sink (debezium envelope: every change is one record) has each change once.
    recs = file_records(d, "tr_kill_file")
    creates = [r["value"]["after"]["id"] for r in recs if r["value"]["op"] == "c"]
    assert len(creates) == 100000 and len(set(creates)) == 100000
    updates = [r for r in recs if r["value"]["op"] == "u"]
    assert len(updates) == one(db, "SELECT count(*) FROM tt WHERE v LIKE '%%!'")
    db.execute("DROP TABLE IF EXISTS tt_copy")
