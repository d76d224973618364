"""Webhook connector against a local receiver (webhook_receiver.py: a threaded
HTTP/HTTPS server in this process on a port in 18100-18199, stopped after each
test). The receiver keeps what it accepted deduplicated by Idempotency-Key, as the
connector asks of receivers; the tests then check the requests (headers, keys,
LSN ranges, signatures, credentials) and replay the records against the source.

Secrets (signing_secret, password) are given through connections, whose options
resolve {"secret": name}."""
import collections
import json
import math
import os
import re
import signal
import time

import pytest

from conftest import cluster, fresh_one, one, reconnect, sqlstate_of, upsert_state, wait_caught_up, wait_for, wait_started, workers_restarted
from webhook_receiver import Receiver, free_port, lsn_int, make_tls_files, signature

_PORTS_USED = set()


def next_port():
    """A free port in 18100-18199 not used before in this run, so that a sink left
    over from a failed test never posts into a later test's receiver."""
    port = free_port(18100, 18199, taken=_PORTS_USED)
    _PORTS_USED.add(port)
    return port


@pytest.fixture
def receivers():
    """Start receivers with make(**kwargs); all are stopped at the end."""
    started = []

    def make(**kwargs):
        r = Receiver(next_port(), **kwargs).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture(autouse=True)
def cleanup(server):
    """Drop what the test created, even when it failed half-way."""
    yield
    conn = reconnect()
    try:
        for (name,) in conn.execute("SELECT name FROM sink.sinks WHERE name LIKE 'wh\\_%'").fetchall():
            conn.execute("SELECT sink.drop_sink(%s, if_exists => true)", (name,))
        for (name,) in conn.execute("SELECT name FROM sink.connections WHERE name LIKE 'wh\\_%'").fetchall():
            conn.execute("SELECT sink.drop_connection(%s)", (name,))
        for (name,) in conn.execute("SELECT name FROM sink.secrets WHERE name LIKE 'wh\\_%'").fetchall():
            conn.execute("SELECT sink.drop_secret(%s)", (name,))
    finally:
        conn.close()


@pytest.fixture
def table(db):
    db.execute("DROP TABLE IF EXISTS wh_items")
    db.execute("CREATE TABLE wh_items (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO wh_items SELECT g, 'seed' || g FROM generate_series(1, 50) g")
    yield


def changes(db):
    db.execute("INSERT INTO wh_items SELECT g, 'v' || g FROM generate_series(51, 300) g")
    db.execute("UPDATE wh_items SET v = v || '-u' WHERE id % 3 = 0")
    db.execute("DELETE FROM wh_items WHERE id % 7 = 0")
    db.execute("UPDATE wh_items SET v = 'last' WHERE id = 1")


N_UPDATED = len([i for i in range(1, 301) if i % 3 == 0]) + 1
N_DELETED = len([i for i in range(1, 301) if i % 7 == 0])


def create(db, name, options, envelope="upsert", source="wh_items", **kw):
    """sink.create_sink(name, source, 'webhook', options, envelope => .., kw => ..);
    envelope None leaves it to the options (RisingWave's `type`)."""
    if envelope is not None:
        kw = {"envelope": envelope, **kw}
    extra = "".join(f", {k} => %s" for k in kw)
    db.execute(f"SELECT sink.create_sink(%s, %s, 'webhook', %s::jsonb{extra})",
               (name, source, json.dumps(options), *kw.values()))


def sink_uid(db, name):
    """The sink's uid as the worker uses it."""
    return one(db, "SELECT sink.uid(%s)", name)


def status(db, name):
    return db.execute("SELECT state, last_error, errors FROM sink.status WHERE name = %s", (name,)).fetchone()


def wait_failed(db, name, timeout=90):
    return wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = %s AND state = 'failed'", (name,)).fetchone(),
                    timeout=timeout, what=f"sink {name} to fail")


def wait_worker_gone(db, name):
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", f"pg_sink sink {name}") == 0,
             what=f"worker of {name} to stop")


def source_rows(db, tbl="wh_items"):
    return dict(db.execute(f"SELECT id, v FROM {tbl}").fetchall())


def upsert_rows(records):
    return {v["id"]: v["v"] for v in upsert_state(records).values()}


def key_of(record):
    """The changed row's id, whatever the envelope."""
    if record["key"] is not None:
        return record["key"]["id"]
    v = record["value"]
    if "before" in v or "after" in v:
        return (v.get("after") or v.get("before"))["id"]
    return v["id"]


def change_counts(records):
    """(commit LSN, row id, op) -> how many times the receiver kept it."""
    return collections.Counter((r["headers"]["pg_sink-lsn"], key_of(r), r["headers"]["pg_sink-op"]) for r in records)


def assert_key_order(records):
    """Per key, records arrive in commit order."""
    last = {}
    for r in records:
        k = key_of(r)
        lsn = lsn_int(r["headers"]["pg_sink-lsn"])
        assert lsn >= last.get(k, 0), f"key {k} out of commit order at {r}"
        last[k] = lsn


KEY_RE = re.compile(r"(?P<uid>[^:]+):(?:snapshot-(?P<snap>[0-9A-Fa-f]{16})-(?P<chunk>\d+)"
                    r"|(?P<start>[0-9A-Fa-f]{16})-(?P<end>[0-9A-Fa-f]{16}))(?::(?P<offset>\d+))?")


def check_requests(db, rcv, sink, path, batch_format="json", max_records=1000, extra_headers=None):
    """Every accepted request of `sink` (sent to `path`): method, content type,
    Pg-Sink-Name, Pg-Sink-Start-Lsn / Pg-Sink-End-Lsn = the first / last commit LSN
    of its records, every record in the {"key", "value", "headers"} layout, records
    in commit order, and Idempotency-Key = <sink uid>:<START>-<END> (16 hex digits
    of the same LSNs). The key may end in :<n>, the number of records of its first
    transaction sent in earlier requests (a transaction split over requests), and
    snapshot chunks may be keyed <sink uid>:snapshot-<LSN>-<chunk>[:<n>]. Keys are
    unique. Returns the records in arrival order."""
    uid = sink_uid(db, sink)
    reqs = rcv.accepted_for(path)
    assert reqs, f"nothing accepted for {sink}"
    ctype = "application/json" if batch_format == "json" else "application/x-ndjson"
    keys = set()
    per_lsn = collections.Counter()  # records sent so far per commit LSN
    for req in reqs:
        assert req.method == "POST", req.method
        assert (req.header("Content-Type") or "").split(";")[0].strip().lower() == ctype, req.header("Content-Type")
        assert req.header("Pg-Sink-Name") == sink, req.headers
        for name, value in (extra_headers or {}).items():
            assert req.header(name) == value, (name, req.headers)
        recs = req.records
        assert 1 <= len(recs) <= max_records, len(recs)
        lsns = []
        for r in recs:
            assert set(r) == {"key", "value", "headers"}, r
            h = r["headers"]
            assert re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", h["pg_sink-lsn"]), h
            assert float(h["pg_sink-timestamp"]) > 1.5e12, h
            assert h["pg_sink-op"] in ("read", "insert", "update", "delete", "truncate"), h
            lsns.append(lsn_int(h["pg_sink-lsn"]))
        assert lsns == sorted(lsns), "records of a request out of commit order"
        assert lsn_int(req.header("Pg-Sink-Start-Lsn")) == lsns[0], req.headers
        assert lsn_int(req.header("Pg-Sink-End-Lsn")) == lsns[-1], req.headers
        key = req.key
        m = KEY_RE.fullmatch(key or "")
        assert m, f"Idempotency-Key {key!r}"
        assert m["uid"] == uid, (key, uid)
        if m["snap"]:
            assert {r["headers"]["pg_sink-op"] for r in recs} == {"read"}, key
            assert int(m["snap"], 16) == lsns[0] == lsns[-1], (key, recs[0]["headers"])
        else:
            assert int(m["start"], 16) == lsns[0] and int(m["end"], 16) == lsns[-1], (key, recs[0]["headers"], recs[-1]["headers"])
            if m["offset"] is not None:
                assert int(m["offset"]) == per_lsn[lsns[0]], (key, per_lsn[lsns[0]])
        per_lsn.update(lsns)
        assert key not in keys, f"two accepted requests with key {key}"
        keys.add(key)
    return [r for req in reqs for r in req.records]


def debezium_state(recs):
    """Replay Debezium events into id -> v."""
    state = {}
    for r in recs:
        v = r["value"]
        if v["op"] == "d":
            state.pop(v["before"]["id"])
        else:
            state[v["after"]["id"]] = v["after"]["v"]
    return state


def test_envelopes_formats_and_request_headers(db, table, receivers):
    rcv = receivers()
    create(db, "wh_up", {"url": rcv.url("/up"), "header.X-Team": "data-eng"}, "upsert")
    create(db, "wh_dbz", {"url": rcv.url("/dbz"), "batch_format": "ndjson"}, "debezium")
    # `location` is an alias of url; RisingWave's type / force_append_only spelling.
    create(db, "wh_app", {"location": rcv.url("/app"), "batch_format": "json", "type": "append-only",
                          "force_append_only": "true", "primary_key": "id"}, envelope=None)
    for s in ("wh_up", "wh_dbz", "wh_app"):
        wait_started(db, s)
    changes(db)
    for s in ("wh_up", "wh_dbz", "wh_app"):
        wait_caught_up(db, s)
    src = source_rows(db)
    assert rcv.violations == []
    assert {r.status for r in rcv.requests} == {200}

    # Upsert, JSON arrays: replaying gives the table; deletes are tombstones; the
    # extra header arrives (header names are case-insensitive in HTTP).
    recs = check_requests(db, rcv, "wh_up", "/up", "json", extra_headers={"X-Team": "data-eng"})
    assert upsert_rows(recs) == src
    assert_key_order(recs)
    assert set(change_counts(recs).values()) == {1}
    ops = collections.Counter(r["headers"]["pg_sink-op"] for r in recs)
    assert ops["read"] == 50 and ops["insert"] == 250 and ops["update"] == N_UPDATED and ops["delete"] == N_DELETED, ops
    assert all(r["value"] is None for r in recs if r["headers"]["pg_sink-op"] == "delete")
    assert all(r["key"] == {"id": r["value"]["id"]} for r in recs if r["value"] is not None)

    # Debezium, NDJSON: every change once, the last image of id 1 is the table's.
    recs = check_requests(db, rcv, "wh_dbz", "/dbz", "ndjson")
    assert not any(req.header("X-Team") for req in rcv.accepted_for("/dbz"))
    dops = collections.Counter(r["value"]["op"] for r in recs)
    assert dops == {"r": 50, "c": 250, "u": N_UPDATED, "d": N_DELETED}, dops
    assert set(change_counts(recs).values()) == {1}
    assert_key_order(recs)
    assert debezium_state(recs) == src

    # Append-only (forced): updates become inserts, deletes are dropped.
    recs = check_requests(db, rcv, "wh_app", "/app", "json")
    assert len(recs) == 50 + 250 + N_UPDATED
    assert {r["headers"]["pg_sink-op"] for r in recs} == {"read", "insert"}
    assert {r["value"]["id"] for r in recs} == set(range(1, 301))
    assert_key_order(recs)
    # Three sinks, three uids.
    uids = {req.key.split(":", 1)[0] for req in rcv.accepted}
    assert len(uids) == 3


def test_max_records_per_request_splits_batches_and_transactions(db, table, receivers):
    rcv = receivers()
    create(db, "wh_split", {"url": rcv.url("/split"), "max_records_per_request": 7, "batch_format": "ndjson"}, "upsert")
    wait_started(db, "wh_split")  # 50 snapshot rows: 8 requests
    # A backlog of 40 one-record transactions and one of 25 records, delivered as
    # one batch after resume.
    db.execute("SELECT sink.pause_sink('wh_split')")
    wait_worker_gone(db, "wh_split")
    expected = []
    for i in range(40):
        if i % 4 == 3:
            db.execute("DELETE FROM wh_items WHERE id = %s", (i,))
            expected.append(("delete", i))
        elif i % 4 == 2:
            db.execute("UPDATE wh_items SET v = %s WHERE id = %s", (f"u{i}", i))
            expected.append(("update", i))
        else:
            db.execute("INSERT INTO wh_items VALUES (%s, %s)", (1000 + i, f"n{i}"))
            expected.append(("insert", 1000 + i))
    db.execute("INSERT INTO wh_items SELECT g, 'big' || g FROM generate_series(5001, 5025) g")
    expected += [("insert", g) for g in range(5001, 5026)]
    db.execute("SELECT sink.resume_sink('wh_split')")
    wait_caught_up(db, "wh_split")
    assert rcv.violations == []
    recs = check_requests(db, rcv, "wh_split", "/split", "ndjson", max_records=7)
    sizes = [len(r.records) for r in rcv.accepted_for("/split")]
    assert len(sizes) >= math.ceil(50 / 7) + math.ceil(65 / 7) and max(sizes) == 7, sizes
    # The snapshot, then exactly the changes in commit order across requests.
    snap = [r for r in recs if r["headers"]["pg_sink-op"] == "read"]
    assert recs[:50] == snap and {key_of(r) for r in snap} == set(range(1, 51))
    assert [(r["headers"]["pg_sink-op"], key_of(r)) for r in recs[50:]] == expected
    lsns = [lsn_int(r["headers"]["pg_sink-lsn"]) for r in recs[50:]]
    assert lsns == sorted(lsns) and len(set(lsns)) == 41
    # The 25-record transaction went out in several requests with distinct keys.
    big = [req for req in rcv.accepted_for("/split") if any(r["value"] and r["value"]["v"].startswith("big") for r in req.records)]
    assert len(big) >= math.ceil(25 / 7) and len({req.key for req in big}) == len(big)
    assert upsert_rows(recs) == source_rows(db)


def test_signature_bearer_and_basic_auth_with_secrets(db, table, receivers):
    signed = receivers(signing_secret="whsec-42", bearer_token="tok-123")
    basic = receivers(basic=("pg_sink", "p@ss word:1"))
    db.execute("SELECT sink.create_secret('wh_sign', 'whsec-42')")
    db.execute("SELECT sink.create_secret('wh_pw', 'p@ss word:1')")
    db.execute("SELECT sink.create_connection('wh_signed', 'webhook', %s::jsonb)", (json.dumps({
        "url": signed.url("/signed"), "signing_secret": {"secret": "wh_sign"}, "bearer_token": "tok-123"}),))
    db.execute("SELECT sink.create_connection('wh_basic', 'webhook', %s::jsonb)", (json.dumps({
        "url": basic.url("/basic"), "username": "pg_sink", "password": {"secret": "wh_pw"}}),))
    db.execute("SELECT sink.create_sink('wh_signed', 'wh_items', connection => 'wh_signed', options => '{}'::jsonb, envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('wh_basic', 'wh_items', connection => 'wh_basic', options => '{\"batch_format\": \"ndjson\"}'::jsonb, envelope => 'upsert')")
    for s in ("wh_signed", "wh_basic"):
        wait_started(db, s)
    changes(db)
    for s in ("wh_signed", "wh_basic"):
        wait_caught_up(db, s)
    src = source_rows(db)

    # HMAC-SHA256 over the raw body with the secret's value; bearer token.
    assert signed.requests and all(r.status == 200 for r in signed.requests)
    for req in signed.requests:
        assert req.signature_ok, (req.header("Pg-Sink-Signature"), signature("whsec-42", req.body))
        assert req.header("Pg-Sink-Signature") != signature("wrong", req.body)
        assert req.header("Authorization") == "Bearer tok-123"
    assert upsert_rows(check_requests(db, signed, "wh_signed", "/signed", "json")) == src
    assert signed.violations == []

    # Basic auth with the password from a secret; no signature without a secret.
    assert basic.requests and all(r.status == 200 for r in basic.requests)
    assert all(r.header("Pg-Sink-Signature") is None for r in basic.requests)
    assert upsert_rows(check_requests(db, basic, "wh_basic", "/basic", "ndjson")) == src
    assert basic.violations == []

    # The secrets' values are not in the catalog.
    catalog = json.dumps([one(db, "SELECT json_agg(options) FROM sink.connections WHERE name LIKE 'wh\\_%%'"),
                          one(db, "SELECT json_agg(options) FROM sink.sinks WHERE name LIKE 'wh\\_%%'")])
    assert "whsec-42" not in catalog and "p@ss word:1" not in catalog


def test_wrong_token_fails_the_sink_until_fixed(db, table, receivers):
    rcv = receivers(bearer_token="right-token")
    create(db, "wh_token", {"url": rcv.url("/t"), "bearer_token": "wrong-token"}, "upsert")
    state, err = wait_failed(db, "wh_token")
    assert "webhook answered HTTP 401" in err and "missing or wrong credentials" in err, err
    assert one(db, "SELECT state FROM sink.sinks WHERE name = 'wh_token'") == "failed"
    assert rcv.accepted == [] and {r.status for r in rcv.requests} == {401}
    n = len(rcv.requests)
    time.sleep(3)
    assert len(rcv.requests) == n, "a failed sink keeps sending"
    # Fix the token and resume: nothing was lost.
    db.execute("SELECT sink.alter_sink('wh_token', '{\"bearer_token\": \"right-token\"}'::jsonb)")
    db.execute("SELECT sink.resume_sink('wh_token')")
    changes(db)
    wait_caught_up(db, "wh_token")
    assert upsert_rows(check_requests(db, rcv, "wh_token", "/t")) == source_rows(db)
    assert rcv.violations == []


def test_server_errors_and_throttling_are_retried_with_the_same_keys(db, table, receivers):
    rcv = receivers()
    create(db, "wh_retry", {"url": rcv.url("/r"), "max_records_per_request": 100}, "upsert")
    wait_started(db, "wh_retry")
    # The backlog is complete before delivery starts, so every retry sends the
    # same requests again.
    db.execute("SELECT sink.pause_sink('wh_retry')")
    wait_worker_gone(db, "wh_retry")
    for i in range(30):
        db.execute("UPDATE wh_items SET v = %s WHERE id %% 10 = %s", (f"r{i}", i % 10))
    errors0 = status(db, "wh_retry")[2]
    first = len(rcv.requests)
    rcv.fail_next(500, 500, 500, 429)
    db.execute("SELECT sink.resume_sink('wh_retry')")
    wait_caught_up(db, "wh_retry", timeout=180)
    changes(db)  # and normal delivery afterwards
    wait_caught_up(db, "wh_retry")

    statuses = [r.status for r in rcv.requests[first:]]
    assert statuses[:4] == [500, 500, 500, 429] and statuses[4] == 200, statuses[:6]
    assert status(db, "wh_retry")[2] >= errors0 + 1
    failed = rcv.requests[first:first + 4]
    assert len({(r.key, r.body) for r in failed}) == 1, "a retry changed the request"
    assert any(a.key == failed[0].key and a.body == failed[0].body for a in rcv.accepted), "the retried request was not delivered"
    assert rcv.violations == []
    recs = check_requests(db, rcv, "wh_retry", "/r", max_records=100)
    assert set(change_counts(recs).values()) == {1}, "a change was kept twice"
    assert len(recs) == 50 + 30 * 5 + 250 + N_UPDATED + N_DELETED
    assert_key_order(recs)
    assert upsert_rows(recs) == source_rows(db)


def test_receiver_down_for_30_seconds_mid_stream(db, table, receivers):
    rcv = receivers()
    create(db, "wh_down", {"url": rcv.url("/d"), "timeout_ms": 5000}, "upsert")
    wait_started(db, "wh_down")
    changes(db)
    wait_caught_up(db, "wh_down")
    errors0 = status(db, "wh_down")[2]
    rcv.stop()
    t0 = time.time()
    seen_error = None
    i = 0
    while time.time() - t0 < 30:
        db.execute("INSERT INTO wh_items VALUES (%s, %s)", (2000 + i, f"down{i}"))
        db.execute("UPDATE wh_items SET v = %s WHERE id = 1", (f"d{i}",))
        i += 1
        state, err, errors = status(db, "wh_down")
        assert state == "running", (state, err)
        if err and errors > errors0:
            seen_error = err
        time.sleep(0.5)
    assert seen_error, "no delivery error shown while the receiver was down"
    low = seen_error.lower()
    assert any(w in low for w in ("refused", "connect", str(rcv.port))), seen_error
    assert one(db, "SELECT state FROM sink.sinks WHERE name = 'wh_down'") == "running"
    rcv.start()
    wait_caught_up(db, "wh_down", timeout=180)
    assert rcv.violations == []
    recs = check_requests(db, rcv, "wh_down", "/d")
    assert set(change_counts(recs).values()) == {1}
    assert len(recs) == 50 + 250 + N_UPDATED + N_DELETED + 2 * i
    inserted = {key_of(r) for r in recs if r["headers"]["pg_sink-op"] == "insert"}
    assert set(range(2000, 2000 + i)) <= inserted
    assert_key_order(recs)
    assert upsert_rows(recs) == source_rows(db)


def test_http_400_fails_the_sink_with_the_body(db, table, receivers):
    rcv = receivers()
    create(db, "wh_400", {"url": rcv.url("/x")}, "upsert")
    wait_started(db, "wh_400")
    rcv.answer_always(400, "schema mismatch: field v is not allowed " + "y" * 600 + " TAILMARK")
    db.execute("INSERT INTO wh_items VALUES (400, 'rejected')")
    _, err = wait_failed(db, "wh_400")
    assert "webhook answered HTTP 400" in err and "schema mismatch: field v is not allowed" in err, err
    assert "TAILMARK" not in err, "the body should be cut to its first 500 bytes"
    assert one(db, "SELECT state FROM sink.sinks WHERE name = 'wh_400'") == "failed"
    # The receiver accepts again: resume delivers what was refused, once.
    rcv.answer_always(None)
    db.execute("SELECT sink.resume_sink('wh_400')")
    wait_caught_up(db, "wh_400")
    recs = check_requests(db, rcv, "wh_400", "/x")
    assert [key_of(r) for r in recs if r["headers"]["pg_sink-op"] == "insert"] == [400]
    assert upsert_rows(recs) == source_rows(db)


def test_https_with_a_private_ca(db, table, receivers, tmp_path):
    files = make_tls_files(str(tmp_path / "tls"))
    rcv = receivers(tls=files)
    # Without ssl_ca the self-signed chain is not trusted: a transient error.
    create(db, "wh_noca", {"url": rcv.url("/noca")}, "upsert")
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'wh_noca' AND last_error IS NOT NULL").fetchone(),
                   timeout=60, what="a TLS error")
    assert row[0] == "running", row
    assert any(w in row[1].lower() for w in ("certificate", "tls", "ssl", "issuer", "handshake")), row[1]
    # With the CA: delivered.
    create(db, "wh_tls", {"url": rcv.url("/tls"), "ssl_ca": files.ca_pem, "batch_format": "ndjson"}, "upsert")
    wait_started(db, "wh_tls")
    changes(db)
    wait_caught_up(db, "wh_tls")
    assert upsert_rows(check_requests(db, rcv, "wh_tls", "/tls", "ndjson")) == source_rows(db)
    # The untrusting sink sent nothing; the receiver saw its handshakes fail.
    assert rcv.accepted_for("/noca") == [] and rcv.requests_for("/noca") == []
    # (rustls may close the connection with or without an alert.)
    assert rcv.tls_errors and all("ssl" in e.lower() for e in rcv.tls_errors), rcv.tls_errors
    assert one(db, "SELECT state FROM sink.sinks WHERE name = 'wh_noca'") == "running"
    # Giving it the CA lets it deliver everything.
    db.execute("SELECT sink.alter_sink('wh_noca', %s::jsonb)", (json.dumps({"ssl_ca": files.ca_pem}),))
    wait_caught_up(db, "wh_noca", timeout=120)
    assert upsert_rows(check_requests(db, rcv, "wh_noca", "/noca")) == source_rows(db)
    assert rcv.violations == []


CRASH_TXNS = 400
CRASH_ROWS = 200


def _crash_txn(conn, i, model, expected):
    lo = (i % 100) * CRASH_ROWS
    with conn.transaction():
        conn.execute("INSERT INTO wh_crash SELECT g, %s::int FROM generate_series(%s::int, %s::int) g "
                     "ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v", (i, lo, lo + CRASH_ROWS - 1))
        if i % 10 == 9:
            conn.execute("DELETE FROM wh_crash WHERE id %% 50 = %s::int", (i % 50,))
    for g in range(lo, lo + CRASH_ROWS):
        expected["u" if g in model else "c"] += 1
        model[g] = i
    if i % 10 == 9:
        for g in [g for g in model if g % 50 == i % 50]:
            del model[g]
            expected["d"] += 1


def test_worker_kill_and_postgres_crash_lose_nothing(db, receivers):
    sinks = ("wh_crash_up", "wh_crash_dbz")
    db.execute("DROP TABLE IF EXISTS wh_crash")
    db.execute("CREATE TABLE wh_crash (id int PRIMARY KEY, v int)")
    db.execute("INSERT INTO wh_crash SELECT g, -1 FROM generate_series(0, 99) g")
    model = {g: -1 for g in range(100)}
    expected = collections.Counter()
    db.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = 1000")  # many batches
    db.execute("ALTER SYSTEM SET pg_sink.max_step_changes = 5000")  # progress recorded often
    db.execute("SELECT pg_reload_conf()")
    rcv = receivers()
    try:
        create(db, "wh_crash_up", {"url": rcv.url("/up")}, "upsert", source="wh_crash")
        create(db, "wh_crash_dbz", {"url": rcv.url("/dbz"), "batch_format": "ndjson"}, "debezium", source="wh_crash")
        for s in sinks:
            wait_started(db, s)
        # A backlog written while the sinks are paused: every batch (and request)
        # after a crash is formed from the same WAL as before it, so redeliveries
        # repeat earlier requests exactly and the receiver drops them by key.
        for s in sinks:
            db.execute("SELECT sink.pause_sink(%s)", (s,))
        for s in sinks:
            wait_worker_gone(db, s)
        for i in range(CRASH_TXNS):
            _crash_txn(db, i, model, expected)
        backlog = sum(expected.values())
        for s in sinks:
            db.execute("SELECT sink.resume_sink(%s)", (s,))

        # 1. SIGKILL the workers mid-stream (the postmaster reinitializes everything).
        delivered = "SELECT min(rows_delivered) FROM sink.status WHERE name LIKE 'wh\\_crash\\_%%'"
        wait_for(lambda: one(db, delivered) > 100 + 3000, timeout=120, what="delivery to start")
        pids = [r[0] for r in db.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pg_sink sink wh\\_crash\\_%'").fetchall()]
        assert len(pids) == 2
        for p in pids:
            os.kill(p, signal.SIGKILL)
        db.close()
        workers_restarted("pg_sink sink wh\\_crash\\_%", pids, 2)
        after_kill = wait_for(lambda: fresh_one(delivered), timeout=60, what="progress readable")
        assert after_kill < 100 + backlog, "the kill should land mid-stream"

        # 2. Immediate shutdown (a crash: no checkpoint) and restart, mid-stream.
        wait_for(lambda: (fresh_one(delivered) or 0) > after_kill + 3000, timeout=120, what="more delivery")
        cluster("kill")
        cluster("start")
        db = reconnect()

        # 3. Live changes after recovery.
        for j in range(20):
            db.execute("UPDATE wh_crash SET v = %s WHERE id %% 20 = %s", (10000 + j, j))
            for g in model:
                if g % 20 == j:
                    model[g] = 10000 + j
                    expected["u"] += 1
        for s in sinks:
            wait_caught_up(db, s, timeout=300)

        src = source_rows(db, "wh_crash")
        assert src == model
        assert rcv.violations == [], rcv.violations[:5]
        up = check_requests(db, rcv, "wh_crash_up", "/up")
        assert upsert_rows(up) == src
        assert_key_order(up)
        assert set(change_counts(up).values()) == {1}, "a change kept twice after dedupe by Idempotency-Key"
        dbz = check_requests(db, rcv, "wh_crash_dbz", "/dbz", "ndjson")
        counts = change_counts(dbz)
        dups = [k for k, n in counts.items() if n > 1]
        assert dups == [], f"{len(dups)} changes kept twice after dedupe by Idempotency-Key"
        ops = collections.Counter(r["value"]["op"] for r in dbz)
        assert ops == {"r": 100, **expected}, (ops, expected)
        assert_key_order(dbz)
        assert debezium_state(dbz) == src
        assert one(db, "SELECT count(*) FROM sink.status WHERE name LIKE 'wh\\_crash\\_%%' AND state = 'running'") == 2
    finally:
        conn = reconnect()
        conn.execute("ALTER SYSTEM RESET pg_sink.max_batch_changes")
        conn.execute("ALTER SYSTEM RESET pg_sink.max_step_changes")
        conn.execute("SELECT pg_reload_conf()")
        conn.close()


def test_bad_webhook_options(db, table, receivers):
    rcv = receivers()
    dead = next_port()  # nothing listens there
    ok = {"url": rcv.url("/bad")}
    cases = [
        ({"batch_format": "json"}, "22023", 'requires option "url"'),
        ({"url": f"ftp://127.0.0.1:{rcv.port}/x"}, "22023", "url"),
        ({"url": f"127.0.0.1:{rcv.port}/x"}, "22023", "url"),
        ({"url": "http://127.0.0.1:0/x"}, "22023", "url"),
        ({**ok, "username": "u"}, "22023", '"password"'),
        ({**ok, "password": "p"}, "22023", '"username"'),
        ({**ok, "max_records_per_request": 0}, "22023", '"max_records_per_request"'),
        ({**ok, "max_records_per_request": "lots"}, "22023", '"max_records_per_request"'),
        ({**ok, "batch_format": "xml"}, "22023", '"batch_format"'),
        ({**ok, "timeout_ms": 5}, "22023", '"timeout_ms"'),
        ({**ok, "validate": "maybe"}, "22023", '"validate"'),
        ({**ok, "ssl_ca": "not a certificate"}, "22023", "ssl_ca"),
        ({**ok, "header.X/Team": "v"}, "22023", "header"),
        ({**ok, "bearer_token": "t", "username": "u", "password": "p"}, "22023", "bearer_token"),
        ({**ok, "retries": 3}, "22023", 'unknown option "retries"'),
        ({"url": f"http://127.0.0.1:{dead}/x"}, "08000", None),
    ]
    before = one(db, "SELECT count(*) FROM sink.sinks")
    for opts, state, msg in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('wh_bad', 'wh_items', 'webhook', %s::jsonb)", json.dumps(opts))
        if msg is None:  # unreachable: the message or detail names the address
            assert st == state and str(dead) in m + (detail or ""), (opts, st, m, detail)
        else:
            assert st == state and msg in m, (opts, st, m)
        assert detail or hint, (opts, m)
        assert one(db, "SELECT count(*) FROM sink.sinks") == before
    assert rcv.requests == [], "a refused sink sent something"
    # validate => false skips the reachability check: the sink is created and its
    # deliveries fail transiently.
    create(db, "wh_bad", {"url": f"http://127.0.0.1:{dead}/x", "validate": False}, "upsert")
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'wh_bad' AND last_error IS NOT NULL").fetchone(),
                   timeout=60, what="a delivery error")
    assert row[0] == "running", row
