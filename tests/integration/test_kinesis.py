"""Kinesis connector against a real AWS emulator: moto server (started by
scripts/moto.sh on 127.0.0.1:15010, stopped at the end), read back shard by shard
with the independent boto3 client.

No emulator here answers PutRecords with per-record failures, so one test puts a
small in-process proxy between the sink and moto that fails chosen records (and
whole requests) the way Kinesis does, and forwards the rest to moto. That proxy is
a fake; everything the sink finally delivers still lands in the real emulator."""
import http.server
import json
import os
import signal
import threading
import urllib.request

import boto3
import pytest

from conftest import cluster, connect, one, sqlstate_of, wait_caught_up, wait_for, wait_started, workers_restarted, services

PORT = 15010
ENDPOINT = f"http://127.0.0.1:{PORT}"
MENV = dict(os.environ, MOTO_PORT=str(PORT), MOTO_DATA="/tmp/pg_sink_moto")
KEYS = {"aws.credentials.access_key_id": "AKIDPGSINK", "aws.credentials.secret_access_key": "pgsink-secret"}


@pytest.fixture(scope="module")
def moto(server):
    with services(("moto.sh", MENV)):
        yield


def kinesis():
    return boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def make_stream(name, shards=2):
    k = kinesis()
    try:
        k.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    except k.exceptions.ResourceNotFoundException:
        pass
    k.create_stream(StreamName=name, ShardCount=shards)
    wait_for(lambda: k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE",
             what=f"stream {name} active")


def read_stream(name):
    """Every record of every shard: {shard id: [(partition key, data bytes)]}."""
    k = kinesis()
    out = {}
    for shard in k.list_shards(StreamName=name)["Shards"]:
        sid = shard["ShardId"]
        it = k.get_shard_iterator(StreamName=name, ShardId=sid, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        recs = []
        while it:
            resp = k.get_records(ShardIterator=it, Limit=10000)
            recs += [(r["PartitionKey"], r["Data"]) for r in resp["Records"]]
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
        out[sid] = recs
    return out


def wrapped_docs(name):
    """Records as (shard, partition key, document) in shard order."""
    return [(sid, pk, json.loads(data)) for sid, recs in read_stream(name).items() for pk, data in recs]


def replay(docs):
    """Upsert documents replayed per shard in order: key id -> value (None deleted).
    A key lives on one shard, so per-shard order is the key's order."""
    state = {}
    for _, _, d in docs:
        if d["value"] is None:
            state.pop(d["key"]["id"], None)
        else:
            state[d["key"]["id"]] = d["value"]["v"]
    return state


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@pytest.fixture
def table(db):
    db.execute("DROP TABLE IF EXISTS k_items")
    db.execute("CREATE TABLE k_items (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO k_items SELECT g, 'seed' || g FROM generate_series(1, 50) g")
    yield


def changes(db):
    db.execute("INSERT INTO k_items SELECT g, 'v' || g FROM generate_series(51, 300) g")
    db.execute("UPDATE k_items SET v = v || '-u' WHERE id % 3 = 0")
    db.execute("DELETE FROM k_items WHERE id % 7 = 0")
    db.execute("UPDATE k_items SET v = 'last' WHERE id = 1")


def test_every_envelope_reaches_every_shard_with_keys_in_order(db, table, moto):
    for s in ("k_up", "k_dbz", "k_app"):
        make_stream(s, shards=3)
    base = {"aws.region": "us-east-1", "endpoint": ENDPOINT, **KEYS}
    db.execute("SELECT sink.create_sink('k_up', 'k_items', 'kinesis', %s::jsonb, envelope => 'upsert')",
               (json.dumps({**base, "stream": "k_up"}),))
    db.execute("SELECT sink.create_sink('k_dbz', 'k_items', 'kinesis', %s::jsonb, envelope => 'debezium')",
               (json.dumps({**base, "stream": "k_dbz", "payload": "value"}),))
    # RisingWave's spelling: type / force_append_only / primary_key.
    db.execute("SELECT sink.create_sink('k_app', 'k_items', 'kinesis', %s::jsonb)",
               (json.dumps({**base, "stream": "k_app", "type": "append-only", "force_append_only": "true", "primary_key": "id"}),))
    for s in ("k_up", "k_dbz", "k_app"):
        wait_started(db, s)
    changes(db)
    for s in ("k_up", "k_dbz", "k_app"):
        wait_caught_up(db, s)
    table_now = dict(db.execute("SELECT id, v FROM k_items").fetchall())

    # Upsert: wrapped documents; replaying them gives the table; a key stays on one
    # shard and its records come in commit order.
    docs = wrapped_docs("k_up")
    assert len({sid for sid, _, _ in docs}) == 3, "records should spread over all shards"
    assert replay(docs) == table_now
    shard_of, last_lsn = {}, {}
    for sid, pk, d in docs:
        assert pk == json.dumps(d["key"], separators=(",", ":"))
        assert shard_of.setdefault(pk, sid) == sid
        lsn = lsn_int(d["headers"]["pg_sink-lsn"])
        assert lsn >= last_lsn.get(pk, 0), f"key {pk} out of order"
        last_lsn[pk] = lsn
        assert d["headers"]["pg_sink-op"] in ("read", "insert", "update", "delete")
    deletes = [d for _, _, d in docs if d["value"] is None]
    assert len(deletes) == len([i for i in range(1, 301) if i % 7 == 0])

    # Debezium with payload = value: the bare Debezium documents. Without a key they
    # all share one partition key (the sink's name), so one shard holds them in order.
    shards = {sid: recs for sid, recs in read_stream("k_dbz").items() if recs}
    assert len(shards) == 1
    recs = [(pk, json.loads(data)) for recs in shards.values() for pk, data in recs]
    assert {pk for pk, _ in recs} == {"k_dbz"}
    ops = sorted(v["op"] for _, v in recs)
    n_upd = len([i for i in range(1, 301) if i % 3 == 0]) + 1
    assert ops.count("r") == 50 and ops.count("c") == 250 and ops.count("u") == n_upd
    assert ops.count("d") == len([i for i in range(1, 301) if i % 7 == 0])
    one_rec = [v for _, v in recs if (v["after"] or v["before"])["id"] == 1]
    assert one_rec[-1]["after"] == {"id": 1, "v": "last"}

    # Append-only (forced): updates become inserts, deletes are dropped.
    docs = wrapped_docs("k_app")
    assert len(docs) == 50 + 250 + n_upd
    assert {d["headers"]["pg_sink-op"] for _, _, d in docs} == {"read", "insert"}
    assert {d["value"]["id"] for _, _, d in docs} == set(range(1, 301))
    for s in ("k_up", "k_dbz", "k_app"):
        db.execute("SELECT sink.drop_sink(%s)", (s,))


def test_assume_role_with_secrets_through_a_connection(db, table, moto):
    # moto serves STS on the same endpoint. A recording proxy (no failures) in front
    # of it shows the sink assuming the role with the external id, then signing its
    # writes with the temporary key it got back instead of the long-term one.
    make_stream("k_role", shards=1)
    proxy = FlakyKinesis(partial_calls=0, throttle_first=False)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        db.execute("SELECT sink.create_secret('aws_sk', 'pgsink-secret')")
        db.execute("SELECT sink.create_connection('aws', 'kinesis', %s::jsonb)", (json.dumps({
            "aws.region": "us-east-1", "endpoint": f"http://127.0.0.1:{proxy.server_address[1]}",
            "aws.credentials.access_key_id": "AKIDPGSINK",
            "aws.credentials.secret_access_key": {"secret": "aws_sk"},
            "aws.credentials.role.arn": "arn:aws:iam::123456789012:role/pg-sink",
            "aws.credentials.role.external_id": "ext-42"}),))
        db.execute("SELECT sink.create_sink('k_role', 'k_items', connection => 'aws', options => '{\"stream\": \"k_role\"}'::jsonb, envelope => 'upsert')")
        wait_started(db, "k_role")
        changes(db)
        wait_caught_up(db, "k_role")
    finally:
        proxy.shutdown()
    assert replay(wrapped_docs("k_role")) == dict(db.execute("SELECT id, v FROM k_items").fetchall())
    assume = [(what, auth) for what, auth in proxy.seen if "Action=AssumeRole" in what]
    assert assume and "ExternalId=ext-42" in assume[0][0] and "pg-sink" in assume[0][0], proxy.seen[:3]
    assert "Credential=AKIDPGSINK/" in assume[0][1]
    puts = [auth for what, auth in proxy.seen if what.endswith(".PutRecords")]
    assert puts and all("Credential=AKIDPGSINK/" not in a for a in puts), puts[:1]
    # The secret's value is not visible in the catalog.
    assert "pgsink-secret" not in json.dumps(one(db, "SELECT options FROM sink.connections WHERE name = 'aws'"))
    db.execute("SELECT sink.drop_sink('k_role')")
    db.execute("SELECT sink.drop_connection('aws')")
    db.execute("SELECT sink.drop_secret('aws_sk')")


class FlakyKinesis(http.server.ThreadingHTTPServer):
    """Forwards Kinesis JSON requests to moto. PutRecords calls fail in the ways the
    service can: the first call is throttled as a whole, and in the next
    `partial_calls` calls every third record gets a per-record error code (the rest
    go through to moto)."""

    def __init__(self, partial_calls, throttle_first=True):
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.lock = threading.Lock()
        self.calls = 0
        self.partial_calls = partial_calls
        self.throttle_first = throttle_first
        self.seen = []  # (X-Amz-Target or form body, Authorization header)
        self.failed_records = 0
        self.throttled = 0


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/x-amz-json-1.1"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def forward(self, body, target):
        req = urllib.request.Request(ENDPOINT + self.path, data=body, method="POST")
        for h in ("Content-Type", "Authorization", "X-Amz-Date", "X-Amz-Target"):
            if self.headers.get(h):
                req.add_header(h, self.headers[h])
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        target = self.headers.get("X-Amz-Target", "")
        srv = self.server
        with srv.lock:
            srv.seen.append((target or body.decode(errors="replace"), self.headers.get("Authorization", "")))
        if not target.endswith(".PutRecords"):
            status, data = self.forward(body, target)
            return self.reply(status, data)
        with srv.lock:
            srv.calls += 1
            call = srv.calls
        if call == 1 and srv.throttle_first:
            srv.throttled += 1
            return self.reply(400, {"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded for stream"})
        req = json.loads(body)
        records = req["Records"]
        fail = set()
        if 1 < call <= 1 + srv.partial_calls:
            fail = {i for i in range(len(records)) if i % 3 == 1}
        passed = [r for i, r in enumerate(records) if i not in fail]
        results = []
        if passed:
            status, data = self.forward(json.dumps({**req, "Records": passed}).encode(), target)
            if status != 200:
                return self.reply(status, data)
            ok = iter(json.loads(data)["Records"])
        for i in range(len(records)):
            if i in fail:
                code = "ProvisionedThroughputExceededException" if i % 2 else "InternalFailure"
                results.append({"ErrorCode": code, "ErrorMessage": "injected by the test proxy"})
            else:
                results.append(next(ok))
        with srv.lock:
            srv.failed_records += len(fail)
        self.reply(200, {"FailedRecordCount": len(fail), "Records": results})


def test_partial_failures_and_throttling_are_retried_in_key_order(db, table, moto):
    make_stream("k_flaky", shards=2)
    proxy = FlakyKinesis(partial_calls=6)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        db.execute("SELECT sink.create_sink('k_flaky', 'k_items', 'kinesis', %s::jsonb, envelope => 'upsert')",
                   (json.dumps({"stream": "k_flaky", "aws.region": "us-east-1", "endpoint": f"http://127.0.0.1:{proxy.server_address[1]}", **KEYS}),))
        wait_started(db, "k_flaky")
        # Many small transactions touching the same keys, so failed records have
        # later records of the same key in the same request.
        for i in range(40):
            db.execute("UPDATE k_items SET v = %s WHERE id %% 10 = %s", (f"r{i}", i % 10))
        changes(db)
        wait_caught_up(db, "k_flaky")
    finally:
        proxy.shutdown()
    assert proxy.throttled == 1 and proxy.failed_records > 0, (proxy.throttled, proxy.failed_records)
    docs = wrapped_docs("k_flaky")
    assert replay(docs) == dict(db.execute("SELECT id, v FROM k_items").fetchall())
    # Nothing lost: every (lsn, key, op) the source produced is in the stream.
    seen = {(d["headers"]["pg_sink-lsn"], json.dumps(d["key"]), d["headers"]["pg_sink-op"]) for _, _, d in docs}
    assert len(seen) == 50 + 40 * 5 + 250 + 100 + len([i for i in range(1, 301) if i % 7 == 0]) + 1
    db.execute("SELECT sink.drop_sink('k_flaky')")


def test_oversized_record_stops_the_sink_naming_its_key(db, table, moto):
    make_stream("k_big", shards=1)
    db.execute("SELECT sink.create_sink('k_big', 'k_items', 'kinesis', %s::jsonb, envelope => 'upsert', snapshot => false)",
               (json.dumps({"stream": "k_big", "aws.region": "us-east-1", "endpoint": ENDPOINT, **KEYS}),))
    wait_started(db, "k_big")
    db.execute("INSERT INTO k_items VALUES (9001, repeat(md5(random()::text), 40000))")  # 1.28 MB
    row = wait_for(lambda: db.execute("SELECT state, last_error FROM sink.status WHERE name = 'k_big' AND state = 'failed'").fetchone(),
                   timeout=60, what="failure")
    assert "exceeds Kinesis' limit" in row[1] and '{"id":9001}' in row[1], row
    db.execute("SELECT sink.drop_sink('k_big')")


def test_worker_kill_and_postgres_crash_lose_nothing(db, table, moto):
    make_stream("k_crash", shards=2)
    db.execute("SELECT sink.create_sink('k_crash', 'k_items', 'kinesis', %s::jsonb, envelope => 'upsert')",
               (json.dumps({"stream": "k_crash", "aws.region": "us-east-1", "endpoint": ENDPOINT, **KEYS}),))
    wait_started(db, "k_crash")
    expected = 50
    for i in range(30):
        db.execute("INSERT INTO k_items SELECT g, %s FROM generate_series(%s::int, %s::int) g", (f"b{i}", 1000 + i * 100, 1000 + i * 100 + 99))
        db.execute("UPDATE k_items SET v = %s WHERE id <= 50", (f"u{i}",))
        expected += 150
        if i == 10:
            pid = one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_sink sink k_crash'")
            assert pid, "worker not running"
            os.kill(pid, signal.SIGKILL)
            # The postmaster reinitializes every process: reconnect once it is back.
            db.close()
            workers_restarted("pg_sink sink k_crash", [pid], 1)
            db = connect()
        if i == 20:
            db.close()
            cluster("kill")
            cluster("start")
            db = connect()
    wait_caught_up(db, "k_crash", timeout=300)
    docs = wrapped_docs("k_crash")
    seen = {(d["headers"]["pg_sink-lsn"], json.dumps(d["key"]), d["headers"]["pg_sink-op"]) for _, _, d in docs}
    assert len(seen) == expected, (len(seen), expected)
    assert len(docs) >= expected
    assert replay(docs) == dict(db.execute("SELECT id, v FROM k_items").fetchall())
    db.execute("SELECT sink.drop_sink('k_crash')")


def test_bad_kinesis_options(db, table, moto):
    ok = {"stream": "k_bad", "aws.region": "us-east-1", "endpoint": ENDPOINT, **KEYS}
    def without(*keys):
        return {k: v for k, v in ok.items() if k not in keys}
    cases = [
        (without("stream"), "22023", 'requires option "stream"'),
        (without("aws.region"), "22023", 'requires option "aws.region"'),
        ({**ok, "stream": "bad name"}, "22023", "invalid Kinesis stream name"),
        ({**ok, "aws.region": "US East (N. Virginia)"}, "22023", 'option "aws.region"'),
        ({**ok, "endpoint": "127.0.0.1:15010"}, "22023", 'option "endpoint"'),
        (without("aws.credentials.secret_access_key"), "22023", 'requires option "aws.credentials.secret_access_key"'),
        (without("aws.credentials.access_key_id"), "22023", 'requires option "aws.credentials.access_key_id"'),
        ({**without("aws.credentials.access_key_id", "aws.credentials.secret_access_key"), "aws.credentials.session_token": "t"}, "22023", "requires an access key pair"),
        ({**ok, "aws.credentials.role.external_id": "x"}, "22023", 'requires option "aws.credentials.role.arn"'),
        ({**ok, "aws.credentials.role.arn": "pg-sink"}, "22023", "aws.credentials.role.arn"),
        ({**ok, "payload": "avro"}, "22023", 'option "payload"'),
        ({**ok, "shards": 2}, "22023", 'unknown option "shards"'),
        ({**ok, "stream": "k_missing"}, "22000", 'Kinesis stream "k_missing" does not exist'),
        ({**ok, "endpoint": "http://127.0.0.1:1", "timeout_ms": 2000}, "08000", "Kinesis DescribeStreamSummary request failed"),
    ]
    for opts, state, msg in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('k_bad', 'k_items', 'kinesis', %s::jsonb)", json.dumps(opts))
        assert st == state and msg in m, (opts, st, m)
        assert detail or hint, m
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'k_bad'") == 0
    # Upsert needs a key: the table has none to default to.
    db.execute("DROP TABLE IF EXISTS k_nokey")
    db.execute("CREATE TABLE k_nokey (a int, b text)")
    st, m, _, _ = sqlstate_of(db, "SELECT sink.create_sink('k_bad', 'k_nokey', 'kinesis', %s::jsonb, envelope => 'upsert')", json.dumps(ok))
    assert st is not None and "requires a key" in m, (st, m)
    assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'k_bad'") == 0
