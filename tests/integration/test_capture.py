"""Capture: how a sink reads its source.

* The initial snapshot locks no writer out. The slot is created over a
  replication connection whose transaction reads the snapshot (Postgres' own
  table synchronisation does the same), so the rows copied are exactly those
  committed before the slot's consistent point, and writers go on meanwhile.
  Before: the source was locked in SHARE mode for the whole snapshot (a 3M-row
  table blocked a single-row INSERT for 13.4 s).
"""
import time

from conftest import connect, one, wait_caught_up, wait_for, wait_started

ROWS = 300_000


def _snapshot_running(db, name):
    return one(db, "SELECT NOT coalesce(snapshot_done, false) FROM sink.status WHERE name = %s", name)


def test_the_initial_snapshot_does_not_block_writers_and_misses_or_doubles_nothing(db):
    db.execute("DROP TABLE IF EXISTS cap_src, cap_up, cap_log CASCADE")
    db.execute("CREATE TABLE cap_src (id int PRIMARY KEY, v text NOT NULL)")
    db.execute(f"INSERT INTO cap_src SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g")
    db.execute("SELECT sink.create_sink('cap_up', 'cap_src', 'table', '{\"table\": \"cap_up\"}', envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('cap_log', 'cap_src', 'table', '{\"table\": \"cap_log\", \"force_append_only\": true}', envelope => 'append-only')")
    slots = [one(db, "SELECT slot_name FROM sink.sinks WHERE name = %s", n) for n in ("cap_up", "cap_log")]
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY(%s)", slots) == 2,
             what="both snapshots to start")
    writer = connect()
    writer.autocommit = True
    waits, during, locks, deleted, updated = [], 0, 0, set(), set()
    next_id = ROWS + 1
    while _snapshot_running(db, "cap_up") or _snapshot_running(db, "cap_log"):
        locks += one(db, "SELECT count(*) FROM pg_locks WHERE relation = 'cap_src'::regclass AND mode NOT IN ('AccessShareLock', 'RowExclusiveLock')")
        for sql, args in (("INSERT INTO cap_src VALUES (%s, 'new')", (next_id,)),
                          ("UPDATE cap_src SET v = 'changed' WHERE id = %s", (next_id * 7 % ROWS + 1,)),
                          ("DELETE FROM cap_src WHERE id = %s", (next_id % ROWS + 2,))):
            started = time.time()
            writer.execute(sql, args)
            waits.append(time.time() - started)
        deleted.add(next_id % ROWS + 2)
        updated.add(next_id * 7 % ROWS + 1)
        next_id += 1
        during += 1
        if during > 2000:
            break
    writer.close()
    print(f"\n{during} rounds of writes during the snapshots; the longest write waited {max(waits):.3f} s")
    # Before: the first write waited for the whole snapshot (9.6 s here).
    assert max(waits) < 1.0, f"a write waited {max(waits):.1f} s for the snapshot"
    assert locks == 0, "a lock beyond ACCESS SHARE was held on the source during the snapshot"
    assert during >= 5, "the snapshots ended before the writes could test them"
    for name in ("cap_up", "cap_log"):
        wait_started(db, name, timeout=300)
        wait_caught_up(db, name, timeout=300)
    # Every row once, with its latest value: what the snapshot held and what the
    # stream added after its consistent point meet without a gap or an overlap.
    diff = one(db, "SELECT count(*) FROM ((TABLE cap_src EXCEPT TABLE cap_up) UNION ALL (TABLE cap_up EXCEPT TABLE cap_src)) d")
    assert diff == 0, f"{diff} rows differ between the source and the upsert target"
    # The append-only target (updates as rows, deletes dropped) holds each inserted
    # row once, snapshot rows and new rows alike; a row deleted before the
    # snapshot's consistent point may be absent, and a row updated before it
    # arrives only with its new value (the writes start while the slot is still
    # waiting for its consistent point).
    inserted = one(db, "SELECT count(*) FROM (SELECT id FROM cap_log WHERE v <> 'changed' GROUP BY id, v HAVING count(*) > 1) d")
    assert inserted == 0, f"{inserted} rows were delivered twice"
    missing = one(db, f"SELECT count(*) FROM generate_series(1, {next_id - 1}) g WHERE g <> ALL(%s) "
                      "AND NOT EXISTS (SELECT 1 FROM cap_log l WHERE l.id = g AND (l.v <> 'changed' OR g = ANY(%s)))",
                  sorted(deleted), sorted(updated - deleted))
    assert missing == 0, f"{missing} inserted rows are missing from the append-only target"
    for name in ("cap_up", "cap_log"):
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    db.execute("DROP TABLE cap_src, cap_up, cap_log")


def test_a_partitioned_table_is_captured_through_its_root(db):
    """A partitioned source: the snapshot reads every partition, and the changes
    of every partition (a row moved between partitions included) are delivered
    under the root's name (publish_via_partition_root), into a table target and
    a Debezium file target compared with the source row by row."""
    import json
    import os

    from conftest import file_records, out_dir

    db.execute("DROP TABLE IF EXISTS cap_parts, cap_parts_copy CASCADE")
    db.execute("CREATE TABLE cap_parts (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)")
    db.execute("CREATE TABLE cap_parts_a PARTITION OF cap_parts FOR VALUES FROM (0) TO (1000)")
    db.execute("CREATE TABLE cap_parts_b PARTITION OF cap_parts FOR VALUES FROM (1000) TO (2000)")
    db.execute("CREATE TABLE cap_parts_c PARTITION OF cap_parts FOR VALUES FROM (2000) TO (3000)")
    db.execute("INSERT INTO cap_parts SELECT g, 'seed' FROM generate_series(1, 1998, 7) g")
    d = out_dir("cap_parts")
    db.execute("SELECT sink.create_sink('cap_pt', 'cap_parts', 'table', '{\"table\": \"cap_parts_copy\"}', envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('cap_pd', 'cap_parts', 'file', %s::jsonb, envelope => 'debezium')", (json.dumps({"path": d}),))
    wait_started(db, "cap_pt")
    wait_started(db, "cap_pd")
    db.execute("INSERT INTO cap_parts SELECT g, 'new' FROM generate_series(2, 1999, 11) g ON CONFLICT (id) DO NOTHING")
    db.execute("UPDATE cap_parts SET v = 'moved', id = id + 2000 WHERE id BETWEEN 1 AND 50")  # across partitions
    db.execute("UPDATE cap_parts SET v = 'updated' WHERE id % 5 = 0")
    db.execute("DELETE FROM cap_parts WHERE id % 13 = 0")
    wait_caught_up(db, "cap_pt")
    wait_caught_up(db, "cap_pd")
    source = dict(db.execute("SELECT id, v FROM cap_parts").fetchall())
    assert dict(db.execute("SELECT id, v FROM cap_parts_copy").fetchall()) == source
    events = [r["value"] for r in file_records(d, "cap_pd") if r["value"] is not None]
    assert {e["source"]["table"] for e in events} == {"cap_parts"}, "every change is the root's"
    state = {}
    for e in events:
        if e["op"] in ("c", "r", "u"):
            if e["before"] is not None:
                state.pop(e["before"]["id"], None)
            state[e["after"]["id"]] = e["after"]["v"]
        elif e["op"] == "d":
            state.pop(e["before"]["id"], None)
    assert state == source
    for name in ("cap_pt", "cap_pd"):
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    assert os.path.isdir(d)
