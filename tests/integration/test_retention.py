"""The WAL-retention guard: a sink whose slot holds back more WAL than its
`max_retained_wal` follows its `wal_retention_policy`, so one stuck target can
never fill pg_wal. Each policy is driven past its limit here and the target is
then compared with the source row by row:

* `pause`: a running sink whose target rejects every row (it retries for ever)
  is paused with the reason in its status; its slot is kept, and once the target
  takes rows again and the sink is resumed nothing is missing;
* `fail`: a paused sink's slot is dropped (the WAL is freed) and the sink fails
  with a hint; `sink.resync` brings the target back to the source;
* `resnapshot`: the slot is dropped and the source delivered again from a new
  snapshot, with no one acting;
* a sink that keeps up is never blamed for WAL that a transaction still open
  elsewhere holds back (decoding must start at that transaction), nor a sink
  that is catching up after a resume.

Before: nothing watched the slots; a paused or stuck sink kept its WAL for ever.
"""
import json
import time

from conftest import connect, one, reconnect, wait_caught_up, wait_for, wait_started

LIMIT = "2MB"


def _sink(db, name, policy, extra=None):
    db.execute(f"DROP TABLE IF EXISTS {name}_copy")
    opts = {"table": f"{name}_copy", "max_retained_wal": LIMIT, "wal_retention_policy": policy, **(extra or {})}
    db.execute("SELECT sink.create_sink(%s, 'ret_src', 'table', %s::jsonb, envelope => 'upsert')", (name, json.dumps(opts)))
    wait_started(db, name)


def _status(db, name):
    return db.execute("SELECT state, last_error, last_error_hint, wal_limit_bytes, wal_retention_policy FROM sink.status WHERE name = %s",
                      (name,)).fetchone()


def _slot_exists(db, name):
    return one(db, "SELECT count(*) FROM pg_replication_slots r JOIN sink.sinks s ON s.slot_name = r.slot_name WHERE s.name = %s", name) == 1


def _same_rows(db, name):
    diff = one(db, f"SELECT count(*) FROM ((TABLE ret_src EXCEPT TABLE {name}_copy) UNION ALL (TABLE {name}_copy EXCEPT TABLE ret_src)) d")
    assert diff == 0, f"{diff} rows differ between ret_src and {name}_copy"


def _write_wal(db, lo, n=6000):
    """About 8 MB of WAL: well past the 2 MB limit."""
    db.execute(f"INSERT INTO ret_src SELECT g, repeat(md5(g::text), 40) FROM generate_series({lo}, {lo + n - 1}) g")


def test_a_slot_past_max_retained_wal_follows_its_policy(db):
    db.execute("DROP TABLE IF EXISTS ret_src CASCADE")
    db.execute("CREATE TABLE ret_src (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO ret_src SELECT g, 'seed' FROM generate_series(1, 100) g")
    _sink(db, "ret_pause", "pause")
    _sink(db, "ret_fail", "fail")
    _sink(db, "ret_resnap", "resnapshot")
    for name in ("ret_pause", "ret_fail", "ret_resnap"):
        wait_caught_up(db, name)
        wait_for(lambda: _status(db, name)[3] == 2 * 1024 * 1024, timeout=30, what=f"{name}'s limit in its status")
    assert [_status(db, n)[4] for n in ("ret_pause", "ret_fail", "ret_resnap")] == ["pause", "fail", "resnapshot"]
    # ret_pause's target now rejects every row: the sink retries for ever.
    db.execute("""CREATE FUNCTION ret_reject() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN RAISE EXCEPTION 'the target is down'; END $$""")
    db.execute("CREATE TRIGGER reject BEFORE INSERT OR UPDATE ON ret_pause_copy FOR EACH ROW EXECUTE FUNCTION ret_reject()")
    db.execute("SELECT sink.pause_sink('ret_fail')")
    db.execute("SELECT sink.pause_sink('ret_resnap')")
    _write_wal(db, 1000)
    db.execute("CHECKPOINT")

    # pause: paused with the reason, the slot kept.
    wait_for(lambda: _status(db, "ret_pause")[0] == "paused", timeout=60, what="ret_pause to be paused by the guard")
    state, error, hint, _, _ = _status(db, "ret_pause")
    assert "max_retained_wal" in error and "paused" in error, error
    assert "resume_sink" in hint, hint
    assert _slot_exists(db, "ret_pause"), "the pause policy keeps the slot"

    # fail: the slot dropped, the sink failed with a hint that works.
    wait_for(lambda: _status(db, "ret_fail")[0] == "failed", timeout=60, what="ret_fail to be failed by the guard")
    state, error, hint, _, _ = _status(db, "ret_fail")
    assert "max_retained_wal" in error and "dropped" in error, error
    assert "resync" in hint, hint
    assert not _slot_exists(db, "ret_fail"), "the fail policy drops the slot"

    # resnapshot: the slot dropped and the source delivered again, unattended.
    wait_for(lambda: not _slot_exists(db, "ret_resnap") or one(db, "SELECT NOT snapshot_done FROM sink.status WHERE name = 'ret_resnap'"),
             timeout=60, what="ret_resnap's slot to be dropped")
    wait_for(lambda: _status(db, "ret_resnap")[0] == "running" and "snapshot" in (_status(db, "ret_resnap")[1] or ""), timeout=60,
             what="ret_resnap to run again from a new snapshot")

    # The way back, and nothing missing.
    db.execute("DROP TRIGGER reject ON ret_pause_copy")
    db.execute("SELECT sink.resume_sink('ret_pause')")
    db.execute("SELECT sink.resync('ret_fail')")
    db.execute("UPDATE ret_src SET v = 'after' WHERE id <= 10")
    for name in ("ret_pause", "ret_fail", "ret_resnap"):
        wait_started(db, name, timeout=120)
        wait_caught_up(db, name, timeout=120)
        _same_rows(db, name)
        assert _status(db, name)[0] == "running"
    db = reconnect()
    for name in ("ret_pause", "ret_fail", "ret_resnap"):
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    db.execute("DROP TABLE ret_src, ret_pause_copy, ret_fail_copy, ret_resnap_copy")
    db.execute("DROP FUNCTION ret_reject()")


def test_the_servers_limit_applies_to_sinks_without_their_own_and_bad_values_are_refused(db):
    db.execute("DROP TABLE IF EXISTS ret_src2, ret_dflt_copy CASCADE")
    db.execute("CREATE TABLE ret_src2 (id int PRIMARY KEY, v text)")
    db.execute("ALTER SYSTEM SET pg_sink.max_retained_wal = '1TB'")
    db.execute("SELECT pg_reload_conf()")
    try:
        db.execute("SELECT sink.create_sink('ret_dflt', 'ret_src2', 'table', '{\"table\": \"ret_dflt_copy\"}', envelope => 'upsert')")
        wait_started(db, "ret_dflt")
        wait_for(lambda: _status(db, "ret_dflt")[3] == 1 << 40, timeout=30, what="the server's limit in the sink's status")
        assert _status(db, "ret_dflt")[4] == "pause"
    finally:
        db.execute("ALTER SYSTEM RESET pg_sink.max_retained_wal")
        db.execute("SELECT pg_reload_conf()")
    wait_for(lambda: _status(db, "ret_dflt")[3] is None, timeout=30, what="no limit once the setting is reset")
    db.execute("SELECT sink.drop_sink('ret_dflt')")
    for opts, word in (({"max_retained_wal": "lots"}, "max_retained_wal"), ({"max_retained_wal": "0"}, "max_retained_wal"),
                       ({"wal_retention_policy": "delete"}, "wal_retention_policy")):
        opts = {"table": "ret_dflt_copy", **opts}
        try:
            db.execute("SELECT sink.create_sink('ret_bad', 'ret_src2', 'table', %s::jsonb)", (json.dumps(opts),))
            raise AssertionError(f"{opts} was accepted")
        except Exception as e:  # noqa: BLE001
            diag = getattr(e, "diag", None)
            assert diag is not None and diag.sqlstate == "22023" and word in diag.message_primary and diag.message_hint, (opts, e)
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'ret_bad'") == 0
    db.execute("DROP TABLE ret_src2, ret_dflt_copy")


def test_a_sink_that_keeps_up_is_not_blamed_for_wal_an_open_transaction_holds(db):
    """Before: every slot's restart_lsn stays at the start of the oldest open
    transaction, so a sink that kept up was taken for stuck past its limit: its
    slot was dropped and snapshotted again, in a loop for as long as the
    transaction stayed open (and with it, its new slot's creation waited)."""
    db.execute("DROP TABLE IF EXISTS ret_src3, ret_busy, ret_keep_copy CASCADE")
    db.execute("CREATE TABLE ret_src3 (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE ret_busy (id int, v text)")
    opts = {"table": "ret_keep_copy", "max_retained_wal": LIMIT, "wal_retention_policy": "resnapshot"}
    db.execute("SELECT sink.create_sink('ret_keep', 'ret_src3', 'table', %s::jsonb, envelope => 'upsert')", (json.dumps(opts),))
    wait_started(db, "ret_keep")
    slot_created = one(db, "SELECT s.slot_name FROM sink.sinks s WHERE s.name = 'ret_keep'")
    open_txn = connect()
    open_txn.execute("BEGIN")
    open_txn.execute("INSERT INTO ret_busy VALUES (0, 'a transaction left open')")
    try:
        # Small transactions (about 0.7 MB of WAL each, a third of the limit) that
        # the sink keeps up with, 8 MB in all behind the open transaction.
        for round_ in range(12):
            db.execute(f"INSERT INTO ret_src3 SELECT g, repeat(md5(g::text), 40) FROM generate_series({round_ * 500 + 1}, {round_ * 500 + 500}) g")
            wait_caught_up(db, "ret_keep")
            time.sleep(0.3)
        held = one(db, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn)::bigint FROM pg_replication_slots r WHERE slot_name = %s",
                   slot_created)
        assert held > 4 * 1024 * 1024, f"the open transaction should hold the slot back (it holds {held} bytes)"
        time.sleep(5)  # two or more rounds of the guard
        state, error, _, _, _ = _status(db, "ret_keep")
        assert (state, error) == ("running", None), (state, error)
        assert one(db, "SELECT snapshot_done FROM sink.status WHERE name = 'ret_keep'"), "no new snapshot was taken"
    finally:
        open_txn.execute("COMMIT")
        open_txn.close()
    db.execute("UPDATE ret_src3 SET v = 'after' WHERE id <= 10")
    wait_caught_up(db, "ret_keep")
    _same_rows_of(db, "ret_src3", "ret_keep_copy")
    db.execute("SELECT sink.drop_sink('ret_keep')")
    db.execute("DROP TABLE ret_src3, ret_busy, ret_keep_copy")


def _same_rows_of(db, source, target):
    diff = one(db, f"SELECT count(*) FROM ((TABLE {source} EXCEPT TABLE {target}) UNION ALL (TABLE {target} EXCEPT TABLE {source})) d")
    assert diff == 0, f"{diff} rows differ between {source} and {target}"
