"""Object storage connectors: `file` (local directory), `s3` against a moto server
(scripts/moto.sh on 127.0.0.1:15011), `azblob`/`azure` against Azurite
(scripts/azurite.sh on 127.0.0.1:15020), and `gcs`. The emulators are started by
module fixtures and stopped (by the pid their scripts recorded) at the end.
Everything a sink writes is read back with independent readers (Python's csv
module and a strict RFC 4180 parser, pyarrow.parquet, boto3, azure-storage-blob)
and compared with the source rows.

Checked for every sink: data objects are named `<START>-<END>.<ext>` with the
first and last commit LSN of their records (16 upper-case hex digits, START <=
END, files not overlapping), each has a manifest under `_manifest/` whose record
count, size, LSNs, format and commit times match the file, and nothing else is left
in the sink's folder.

GCS runs against a fake (gcs_fake.py, a module fixture on 127.0.0.1:15030): no
GCS emulator that can be installed on this machine accepts the XML-API calls of
the client pg_sink uses (object_store), so the fake answers exactly those, keeps
objects in memory and checks every request's self-signed JWT against the test's
service-account key. What the fake cannot tell is whether real GCS would answer
the same. Configuration is also checked on its own (validate = false, schedule =
manual, never reaching any address but the loopback)."""
import collections
import csv
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

import gcs_fake
from conftest import ROOT, cluster, connect, one, out_dir, sqlstate_of, upsert_state, wait_caught_up, wait_for, wait_started, workers_restarted

S3_PORT = 15011
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
S3_ENV = dict(os.environ, MOTO_PORT=str(S3_PORT), MOTO_DATA="/tmp/pg_sink_moto_s3")
S3_SECRET = "os_s3_secret_key"

AZ_PORT = 15020
AZ_ENDPOINT = f"http://127.0.0.1:{AZ_PORT}/devstoreaccount1"
AZ_ENV = dict(os.environ, AZURITE_PORT=str(AZ_PORT), AZURITE_DATA="/tmp/pg_sink_azurite")
AZ_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (public, documented by Microsoft).
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZ_SECRET = "os_az_account_key"

GCS_PORT = 15030
GCS_ENDPOINT = f"http://127.0.0.1:{GCS_PORT}"
GCS_SECRET = "os_gcs_sa_key"

META = ["_pg_sink_op", "_pg_sink_lsn", "_pg_sink_commit_time"]
MIB5 = 5 * 1024 * 1024


# ---------------------------------------------------------------- servers


def script(name, action, env):
    subprocess.run([os.path.join(ROOT, "scripts", name), action], env=env, check=True)


@pytest.fixture(scope="module")
def s3(server):
    script("moto.sh", "start", S3_ENV)
    conn = connect()
    conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (S3_SECRET,))
    conn.execute("SELECT sink.create_secret(%s, 'testing')", (S3_SECRET,))
    conn.close()
    yield s3_client()
    conn = connect()
    conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (S3_SECRET,))
    conn.close()
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        script("moto.sh", "stop", S3_ENV)


@pytest.fixture(scope="module")
def azurite(server):
    script("azurite.sh", "start", AZ_ENV)
    conn = connect()
    conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (AZ_SECRET,))
    conn.execute("SELECT sink.create_secret(%s, %s)", (AZ_SECRET, AZ_KEY))
    conn.close()
    yield BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={AZ_ACCOUNT};AccountKey={AZ_KEY};BlobEndpoint={AZ_ENDPOINT};"
    )
    conn = connect()
    conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (AZ_SECRET,))
    conn.close()
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        script("azurite.sh", "stop", AZ_ENV)


@pytest.fixture(scope="module")
def gcs(server):
    """The fake GCS server (gcs_fake.py; no installable emulator accepts the
    client's XML-API calls), trusting the service-account key kept in GCS_SECRET.
    Listings come in pages of three objects, so that a sink's listing of its
    folder follows continuation tokens."""
    fake = gcs_fake.start(GCS_PORT, page_size=3)
    key = service_account_json(GCS_ENDPOINT)
    fake.add_service_account(key)
    conn = connect()
    conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (GCS_SECRET,))
    conn.execute("SELECT sink.create_secret(%s, %s)", (GCS_SECRET, key))
    conn.close()
    yield fake
    conn = connect()
    conn.execute("SELECT sink.drop_secret(%s, if_exists => true)", (GCS_SECRET,))
    conn.close()
    fake.stop()


@pytest.fixture
def sinks(db):
    """Names of the sinks a test creates; dropped at the end even when it fails."""
    names = []
    yield names
    try:
        conn = connect()
    except Exception:
        return
    for n in names:
        conn.execute("SELECT sink.drop_sink(%s, if_exists => true)", (n,))
    conn.close()


def create_sink(db, sinks, name, source, connector, options, envelope="upsert"):
    sinks.append(name)
    if envelope == "upsert":
        # Truncates too (skipped by default, as Debezium's skipped.operations = t):
        # the replayed state must follow them.
        options = {"skipped.operations": "none", **options}
    db.execute("SELECT sink.create_sink(%s, %s, %s, %s::jsonb, envelope => %s)", (name, source, connector, json.dumps(options), envelope))


def s3_client():
    return boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


def s3_options(bucket, prefix, **extra):
    return {
        "location": f"s3://{bucket}/{prefix}",
        "s3_region": "us-east-1",
        "endpoint": S3_ENDPOINT,
        "aws.credentials.access_key_id": "testing",
        "aws.credentials.secret_access_key": {"secret": S3_SECRET},
        **extra,
    }


def make_bucket(client, bucket):
    """An empty bucket (emptied when a kept server still has it)."""
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=bucket)
        return
    for key in s3_listing(client, bucket, ""):
        client.delete_object(Bucket=bucket, Key=key)


def s3_listing(client, bucket, prefix):
    """key -> object summary (Size, ETag, ...) under prefix."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out


def s3_objects(client, bucket, prefix):
    """Objects under `prefix` as {key relative to prefix: bytes}."""
    return {k[len(prefix):]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in s3_listing(client, bucket, prefix)}


def az_options(container, prefix, **extra):
    return {
        "location": f"azure://{container}/{prefix}",
        "azure_storage_account_name": AZ_ACCOUNT,
        "azure_storage_account_key": {"secret": AZ_SECRET},
        "endpoint": AZ_ENDPOINT,
        **extra,
    }


def gcs_options(bucket, prefix, **extra):
    return {
        "location": f"gcs://{bucket}/{prefix}",
        "gcs_service_account_keys": {"secret": GCS_SECRET},
        "gcs_project_id": "pg-sink-test",
        "endpoint": GCS_ENDPOINT,
        **extra,
    }


def gcs_requests(fake, bucket, op=None):
    """(operation, bucket, object, status, query) of the fake's requests to a bucket."""
    return [r for r in list(fake.requests) if r[1] == bucket and (op is None or r[0] == op)]


def kill_worker(db, sink):
    """Terminate the sink's worker (the launcher starts it again); its pid."""
    pid = one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", f"pg_sink sink {sink}")
    assert pid, f"no worker for {sink}"
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (f"pg_sink sink {sink}",))
    return pid


def make_container(service, name):
    c = service.get_container_client(name)
    try:
        c.delete_container()
        # Azurite deletes at once; a real account would need a pause here.
    except ResourceNotFoundError:
        pass
    c.create_container()
    return c


def az_objects(container_client, prefix):
    return {
        b.name[len(prefix):]: container_client.download_blob(b.name).readall()
        for b in container_client.list_blobs(name_starts_with=prefix)
    }


def file_objects(directory, sink):
    """Files under <directory>/<sink>/ as {relative path: bytes}."""
    root = os.path.join(directory, sink)
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, root)] = fh.read()
    return out


# ---------------------------------------------------------------- readers


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def parse_csv(data):
    """Strict RFC 4180: rows of fields, None for an empty unquoted field (NULL) and
    '' for a quoted empty one (an empty string). Records end with CRLF or LF."""
    text = data.decode("utf-8")
    n = len(text)

    def field(i):
        if i < n and text[i] == '"':
            i += 1
            buf = []
            while True:
                assert i < n, "unterminated quoted field"
                c = text[i]
                if c == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    return "".join(buf), i + 1
                buf.append(c)
                i += 1
        j = i
        while j < n and text[j] not in ',\r\n':
            assert text[j] != '"', f"quote inside an unquoted field at {j}: {text[i:j + 10]!r}"
            j += 1
        return (text[i:j] if j > i else None), j

    rows, i = [], 0
    while i < n:
        row = []
        while True:
            value, i = field(i)
            row.append(value)
            if i >= n:
                break
            if text[i] == ",":
                i += 1
                continue
            if text.startswith("\r\n", i):
                i += 2
                break
            assert text[i] == "\n", f"unexpected {text[i]!r} after a field at {i}"
            i += 1
            break
        rows.append(row)
    # The standard library agrees on every value (it cannot tell NULL from '').
    std = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert std == [[v if v is not None else "" for v in r] for r in rows]
    return rows


def read_csv(data, columns=None):
    rows = parse_csv(data)
    assert rows, "a csv file has at least its header"
    header = rows[0]
    assert header[:3] == META and all(h is not None for h in header), header
    if columns is not None:
        assert header[3:] == columns, header
    out = []
    for r in rows[1:]:
        assert len(r) == len(header), r
        rec = dict(zip(header, r))
        assert rec["_pg_sink_op"] in ("read", "insert", "update", "delete", "truncate"), rec
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", rec["_pg_sink_lsn"]), rec
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", rec["_pg_sink_commit_time"]), rec
        out.append(rec)
    return out


def read_parquet(data, columns=None):
    table = pq.read_table(io.BytesIO(data))
    names = table.schema.names
    assert names[:3] == META, names
    if columns is not None:
        assert names[3:] == columns, names
    for f in table.schema:
        assert f.nullable, f"parquet column {f.name} should be nullable"
    for name in META[:2]:
        t = table.schema.field(name).type
        assert pa.types.is_string(t) or pa.types.is_large_string(t), (name, t)
    t = table.schema.field("_pg_sink_commit_time").type
    assert pa.types.is_timestamp(t) and t.unit == "us" and t.tz in ("UTC", "+00:00", "Etc/UTC"), t
    return table.schema, table.to_pylist()


def read_jsonl(data):
    text = data.decode("utf-8")
    assert text.endswith("\n"), "every line ends with a newline"
    out = [json.loads(line) for line in text.split("\n")[:-1]]
    for r in out:
        assert set(r) == {"key", "value", "headers"}, r
        assert r["headers"]["pg_sink-op"] in ("read", "insert", "update", "delete", "truncate"), r
    return out


def read_records(fmt, data, columns=None):
    if fmt == "csv":
        return read_csv(data, columns)
    if fmt == "parquet":
        return read_parquet(data, columns)[1]
    return read_jsonl(data)


def commit_time(value):
    """A commit time as an aware datetime: a datetime, ISO 8601 text, or epoch
    milliseconds (with a fraction) as text."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        us = int((Decimal(value) * 1000).to_integral_value())
        return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def rec_lsn(fmt, r):
    return lsn_int(r["headers"]["pg_sink-lsn"] if fmt == "jsonl" else r["_pg_sink_lsn"])


def rec_op(fmt, r):
    return r["headers"]["pg_sink-op"] if fmt == "jsonl" else r["_pg_sink_op"]


def rec_time(fmt, r):
    return commit_time(r["headers"]["pg_sink-timestamp"] if fmt == "jsonl" else r["_pg_sink_commit_time"])


# ---------------------------------------------------------------- layout

DATA_RE = re.compile(r"(?:dt=(\d{4}-\d{2}-\d{2})/(?:hour=(\d{2})/)?)?([0-9A-F]{16})-([0-9A-F]{16})\.(jsonl|csv|parquet)")
SNAP_RE = re.compile(r"snapshot/(\d{8})\.(jsonl|csv|parquet)")

DataFile = collections.namedtuple("DataFile", "key start end records size dt hour")


def check_layout(objects, fmt, partitioning="none", columns=None):
    """Checks a sink's objects ({key relative to <prefix>/<sink>/: bytes}) against
    the naming, manifest and partitioning rules. Returns (records in delivery
    order: snapshot chunks then data files by LSN, data files)."""
    manifests, snapshots, files = {}, [], []
    for key, body in objects.items():
        if key.startswith("_manifest/"):
            assert key.endswith(".json") and ".pg_sink_check" not in key, f"unexpected object {key}"
            manifests[key] = json.loads(body)
            continue
        m = SNAP_RE.fullmatch(key)
        if m:
            assert m.group(2) == fmt, key
            snapshots.append((int(m.group(1)), key, read_records(fmt, body, columns)))
            continue
        m = DATA_RE.fullmatch(key)
        assert m, f"unexpected object {key!r} in the sink's folder"
        dt, hour, start, end, ext = m.groups()
        assert ext == fmt, key
        if partitioning == "none":
            assert dt is None, key
        elif partitioning == "date":
            assert dt is not None and hour is None, key
        else:
            assert dt is not None and hour is not None, key
        recs = read_records(fmt, body, columns)
        files.append(DataFile(key, int(start, 16), int(end, 16), recs, len(body), dt, hour))

    files.sort(key=lambda f: (f.start, f.end, f.key))
    for i, f in enumerate(files):
        assert f.start <= f.end, f.key
        assert f.records, f"empty data file {f.key}"
        lsns = [rec_lsn(fmt, r) for r in f.records]
        assert lsns == sorted(lsns), f"records of {f.key} are not in commit order"
        assert lsns[0] == f.start and lsns[-1] == f.end, (f.key, hex(lsns[0]), hex(lsns[-1]))
        if i:
            assert f.start >= files[i - 1].end, f"{files[i - 1].key} and {f.key} overlap"
        times = {}
        for r in f.records:
            t = rec_time(fmt, r)
            assert times.setdefault(rec_lsn(fmt, r), t) == t, "one transaction, one commit time"
            if f.dt is not None:
                utc = t.astimezone(timezone.utc)
                assert utc.strftime("%Y-%m-%d") == f.dt, (f.key, t)
                if f.hour is not None:
                    assert utc.strftime("%H") == f.hour, (f.key, t)

    by_file = {}
    for mkey, m in manifests.items():
        assert set(m) >= {"file", "records", "bytes", "start_lsn", "end_lsn", "format", "min_commit_time", "max_commit_time"}, (mkey, m)
        assert m["file"] not in by_file, f"two manifests for {m['file']}"
        by_file[m["file"]] = (mkey, m)
    data_keys = {f.key for f in files}
    snap_keys = {k for _, k, _ in snapshots}
    for name in by_file:
        assert name in data_keys or name in snap_keys, f"manifest {by_file[name][0]} for a missing file {name}"
    for f in files:
        assert f.key in by_file, f"no manifest for {f.key}"
        mkey, m = by_file[f.key]
        stem = f.key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        base = mkey.rsplit("/", 1)[-1]
        assert base.startswith(stem + ".") and base.endswith(".json"), (mkey, f.key)
        assert int(m["records"]) == len(f.records), (m, len(f.records))
        assert int(m["bytes"]) == f.size, (m, f.size)
        assert lsn_int(m["start_lsn"]) == f.start and lsn_int(m["end_lsn"]) == f.end, (m, f.key)
        assert m["format"] == fmt, m
        times = [rec_time(fmt, r) for r in f.records]
        assert commit_time(m["min_commit_time"]) == min(times), (m, min(times))
        assert commit_time(m["max_commit_time"]) == max(times), (m, max(times))
    for _, key, recs in snapshots:
        if key in by_file:
            assert int(by_file[key][1]["records"]) == len(recs)

    snapshots.sort()
    records = [r for _, _, recs in snapshots for r in recs] + [r for f in files for r in f.records]
    return records, files


# ---------------------------------------------------------------- a table of types

# (column, kind); kinds decide how a delivered value is compared.
TYPE_COLS = [("id", "int4"), ("i", "int4"), ("b", "int8"), ("t", "text"), ("flag", "bool"), ("n", "numeric"), ("ts", "timestamptz"), ("j", "jsonb"), ("f", "float8")]
COLUMNS = [c for c, _ in TYPE_COLS]
PARQUET_TYPES = {"int4": pa.int32(), "int8": pa.int64(), "bool": pa.bool_(), "float8": pa.float64()}

ROWS = [
    (1, 42, 9007199254740993, "plain", True, "12345678901234567890.123456789", "2024-07-03 18:43:05.312345+00", '{"a": [1, "two", null], "b": {"c": "d"}}', 0.1),
    (2, -2147483648, -9223372036854775808, 'comma, "quotes" and\nnewline', False, "-0.5", "1999-12-31 23:59:59.999999-08", '"just a string"', -1.5e300),
    (3, 2147483647, 9223372036854775807, "", None, "0", "2000-02-29 00:00:00+05:30", "[]", float("nan")),
    (4, None, None, None, None, None, None, None, None),
    (5, 0, 0, "NULL", True, "0.00000000000000000001", "1970-01-01 00:00:00+00", "null", float("inf")),
    (6, 7, 7, "crlf\r\nand a lone \r here\r\n", True, "3.14159", "2038-01-19 03:14:08.5+00", '{"quote": "\\"q\\"", "comma": ",", "nl": "a\\nb"}', -0.0),
    (7, 8, 8, " leading, trailing ", False, "NaN", "1900-01-01 00:00:00+00", "{}", float("-inf")),
    (8, 9, 9, 'héllo ☃ "x",\ty \\ back', False, "-123.4500", "2024-02-29 23:59:59.999999+00", '[1, 2.5, "x"]', -1e-300),
    (9, 10, 10, '""', True, "1e5", "2024-01-01 12:00:00+00", '"\\""', 1.7976931348623157e308),
    (10, 11, 11, ",", None, "42", "2024-01-01 12:00:00.000001+00", '{"": ""}', 2.2250738585072014e-308),
]
INSERT = "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s::numeric, %s::timestamptz, %s::jsonb, %s)"


@pytest.fixture
def types_table(db):
    db.execute("DROP TABLE IF EXISTS os_types")
    db.execute("CREATE TABLE os_types (id int PRIMARY KEY, i int, b bigint, t text, flag boolean, n numeric, ts timestamptz, j jsonb, f float8)")
    yield "os_types"
    db.execute("DROP TABLE IF EXISTS os_types")


def insert_rows(db, rows, id_offset=0, table="os_types"):
    with db.transaction():
        for r in rows:
            db.execute(INSERT.format(table), (r[0] + id_offset, *r[1:]))


def fl(x):
    return "NaN" if isinstance(x, float) and math.isnan(x) else x


def norm(kind, v, fmt):
    """A delivered value (csv text, or a parquet value) in comparable form."""
    if v is None:
        return None
    if fmt == "csv":
        assert isinstance(v, str), v
        if kind in ("int4", "int8"):
            assert re.fullmatch(r"-?\d+", v), v
            return int(v)
        if kind == "bool":
            assert v in ("t", "f"), f"bool as Postgres text: {v!r}"
            return v == "t"
        if kind == "float8":
            return fl(float(v))
    else:
        if kind in ("int4", "int8"):
            assert isinstance(v, int) and not isinstance(v, bool), v
            return v
        if kind == "bool":
            assert isinstance(v, bool), v
            return v
        if kind == "float8":
            assert isinstance(v, float), v
            return fl(v)
        assert isinstance(v, str), (kind, v)
    if kind == "timestamptz":
        return datetime.fromisoformat(v)
    return v  # text, numeric and jsonb: the Postgres text form


def norm_record(fmt, r):
    return tuple(norm(kind, r[c], fmt) for c, kind in TYPE_COLS)


def source_rows(db, table="os_types"):
    rows = db.execute(f"SELECT id, i, b, t, flag, n::text, ts, j::text, f FROM {table} ORDER BY id").fetchall()
    return [tuple(fl(v) for v in r) for r in rows]


def replay_typed(fmt, records):
    """Upsert records (csv/parquet) replayed by key (id): id -> row."""
    state = {}
    for r in records:
        op = rec_op(fmt, r)
        row = norm_record(fmt, r)
        if op == "truncate":
            state.clear()
        elif op == "delete":
            assert row[0] is not None and all(v is None for v in row[1:]), f"delete: key filled, the rest NULL: {r}"
            state.pop(row[0], None)
        else:
            state[row[0]] = row
    return state


def check_parquet_schema(objects):
    for key, body in objects.items():
        if key.endswith(".parquet"):
            schema, _ = read_parquet(body, COLUMNS)
            for c, kind in TYPE_COLS:
                t = schema.field(c).type
                want = PARQUET_TYPES.get(kind)
                if want is None:
                    assert pa.types.is_string(t) or pa.types.is_large_string(t), (c, t)
                else:
                    assert t == want, (c, t)


def typed_changes(db):
    """Inserts, updates, deletes and a truncate on os_types (seeded with ROWS[:3])."""
    insert_rows(db, ROWS[3:])
    db.execute("UPDATE os_types SET t = t || ' (u)', i = i + 1 WHERE id IN (1, 5)")
    db.execute("UPDATE os_types SET t = '' WHERE id = 2")
    db.execute("UPDATE os_types SET t = NULL, j = NULL WHERE id = 6")
    db.execute("DELETE FROM os_types WHERE id IN (3, 7)")
    db.execute("TRUNCATE os_types")
    insert_rows(db, ROWS)
    db.execute("UPDATE os_types SET flag = NOT flag, n = n * 2 WHERE id % 2 = 0")
    db.execute("DELETE FROM os_types WHERE id = 4")
    db.execute(INSERT.format("os_types"), (11, 1, 1, "after the truncate", True, "1.5", "2024-05-05 05:05:05+02", '{"k": 11}', 1.25))


# ---------------------------------------------------------------- file


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_file_upsert_round_trip(db, types_table, sinks, fmt):
    d = out_dir(f"os_up_{fmt}")
    name = f"os_up_{fmt}"
    insert_rows(db, ROWS[:3])  # delivered by the snapshot
    create_sink(db, sinks, name, "os_types", "file", {"location": f"file://{d}", "file_format": fmt})
    wait_started(db, name)
    typed_changes(db)
    wait_caught_up(db, name)

    objects = file_objects(d, name)
    records, files = check_layout(objects, fmt, columns=COLUMNS)
    assert files
    ops = {rec_op(fmt, r) for r in records}
    assert ops == {"read", "insert", "update", "delete", "truncate"}, ops
    state = replay_typed(fmt, records)
    assert sorted(state.values(), key=lambda r: r[0]) == source_rows(db)
    if fmt == "parquet":
        check_parquet_schema(objects)
    else:
        # NULL is an empty unquoted field and '' is "": row 3 of the seed has both.
        snap = next(v for k, v in objects.items() if k.startswith("snapshot/"))
        assert b',"",,' in snap


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_file_append_only_keeps_every_row(db, types_table, sinks, fmt):
    d = out_dir(f"os_app_{fmt}")
    name = f"os_app_{fmt}"
    insert_rows(db, ROWS[:3])
    create_sink(db, sinks, name, "os_types", "file", {"path": d, "file_format": fmt}, envelope="append-only")
    wait_started(db, name)
    insert_rows(db, ROWS[3:])
    insert_rows(db, ROWS, id_offset=100)
    for r in ROWS[:4]:
        insert_rows(db, [r], id_offset=200)  # one transaction each
    wait_caught_up(db, name)
    records, files = check_layout(file_objects(d, name), fmt, columns=COLUMNS)
    assert files
    assert [rec_op(fmt, r) for r in records] == ["read"] * 3 + ["insert"] * (len(records) - 3)
    assert sorted((norm_record(fmt, r) for r in records), key=lambda r: r[0]) == source_rows(db)
    # Every record of one transaction carries its commit time; they are recent.
    lo = datetime.now(timezone.utc) - timedelta(minutes=10)
    hi = datetime.now(timezone.utc) + timedelta(minutes=1)
    for r in records[3:]:
        assert lo <= rec_time(fmt, r) <= hi, r


@pytest.mark.parametrize("partitioning", ["date", "hour"])
def test_file_partitioning_by_commit_time(db, types_table, sinks, partitioning):
    d = out_dir(f"os_part_{partitioning}")
    name = f"os_part_{partitioning}"
    create_sink(db, sinks, name, "os_types", "file", {"location": f"file://{d}", "file_format": "csv", "partitioning": partitioning})
    wait_started(db, name)
    insert_rows(db, ROWS[:5])
    insert_rows(db, ROWS[5:])
    db.execute("UPDATE os_types SET i = 0 WHERE id = 1")
    wait_caught_up(db, name)
    objects = file_objects(d, name)
    # check_layout compares each file's dt=/hour= folders with its records' commit times (UTC).
    records, files = check_layout(objects, "csv", partitioning=partitioning, columns=COLUMNS)
    assert files and all(f.key.startswith("dt=") for f in files)
    assert all(f.key.count("/") == (1 if partitioning == "date" else 2) for f in files)
    assert sorted(replay_typed("csv", records).values(), key=lambda r: r[0]) == source_rows(db)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_small_max_file_size_splits_a_batch(db, sinks, fmt):
    db.execute("DROP TABLE IF EXISTS os_split")
    db.execute("CREATE TABLE os_split (id int PRIMARY KEY, v text)")
    d = out_dir(f"os_split_{fmt}")
    name = f"os_split_{fmt}"
    opts = {"location": f"file://{d}", "max_file_size": 4096}
    if fmt != "jsonl":
        opts["file_format"] = fmt  # jsonl is the default
    create_sink(db, sinks, name, "os_split", "file", opts, envelope="append-only")
    wait_started(db, name)
    # A backlog of small transactions, delivered together once the sink resumes.
    db.execute("SELECT sink.pause_sink(%s)", (name,))
    batches_before = one(db, "SELECT batches FROM sink.status WHERE name = %s", name)
    for t in range(100):
        db.execute("INSERT INTO os_split SELECT g, repeat('x', 100) || g FROM generate_series(%s::int, %s::int) g", (t * 5, t * 5 + 4))
    db.execute("SELECT sink.resume_sink(%s)", (name,))
    wait_caught_up(db, name)
    batches = one(db, "SELECT batches FROM sink.status WHERE name = %s", name) - batches_before

    records, files = check_layout(file_objects(d, name), fmt)
    assert len(files) >= 5 and len(files) > batches, (len(files), batches)
    for f in files:
        assert f.size <= 2 * 4096, (f.key, f.size)
    ids = [r["value"]["id"] for r in records] if fmt == "jsonl" else [int(r["id"]) for r in records]
    assert sorted(ids) == list(range(500)), "every row exactly once"
    db.execute("DROP TABLE os_split")


def test_rollover_seconds_starts_a_new_file(db, sinks):
    db.execute("DROP TABLE IF EXISTS os_roll")
    db.execute("CREATE TABLE os_roll (id int PRIMARY KEY, v text)")
    d = out_dir("os_roll")
    create_sink(db, sinks, "os_roll", "os_roll", "file", {"location": f"file://{d}", "rollover_seconds": 1}, envelope="append-only")
    wait_started(db, "os_roll")
    db.execute("SELECT sink.pause_sink('os_roll')")
    db.execute("INSERT INTO os_roll VALUES (1, 'a')")
    db.execute("INSERT INTO os_roll VALUES (2, 'b')")
    time.sleep(1.5)  # the point of the test: commit times 1.5 s apart
    db.execute("INSERT INTO os_roll VALUES (3, 'c')")
    db.execute("SELECT sink.resume_sink('os_roll')")
    wait_caught_up(db, "os_roll")
    records, files = check_layout(file_objects(d, "os_roll"), "jsonl")
    assert len(files) >= 2
    for f in files:
        times = [rec_time("jsonl", r) for r in f.records]
        assert max(times) - min(times) < timedelta(seconds=1), f.key
    assert sorted(r["value"]["id"] for r in records) == [1, 2, 3]
    db.execute("DROP TABLE os_roll")


# ---------------------------------------------------------------- s3


@pytest.fixture
def items(db):
    db.execute("DROP TABLE IF EXISTS os_items")
    db.execute("CREATE TABLE os_items (id int PRIMARY KEY, v text, n bigint)")
    db.execute("INSERT INTO os_items SELECT g, 'seed ' || g, g::bigint * 1000000007 FROM generate_series(1, 40) g")
    yield "os_items"
    db.execute("DROP TABLE IF EXISTS os_items")


def item_changes(db):
    db.execute("INSERT INTO os_items SELECT g, 'new, \"quoted\"\n' || g, -g FROM generate_series(41, 200) g")
    db.execute("UPDATE os_items SET v = v || ' (u)', n = NULL WHERE id % 3 = 0")
    db.execute("DELETE FROM os_items WHERE id % 7 = 0")
    db.execute("UPDATE os_items SET v = '' WHERE id = 1")


def item_state(db):
    return {json.dumps({"id": i}, sort_keys=True): {"id": i, "v": v, "n": n} for i, v, n in db.execute("SELECT id, v, n FROM os_items").fetchall()}


def test_s3_jsonl_upsert_round_trip(db, items, sinks, s3):
    make_bucket(s3, "pgsink-jsonl")
    create_sink(db, sinks, "os_s3_jsonl", "os_items", "s3", s3_options("pgsink-jsonl", "cdc/v1"))
    wait_started(db, "os_s3_jsonl")
    item_changes(db)
    db.execute("TRUNCATE os_items")
    db.execute("INSERT INTO os_items VALUES (7, 'back', 7)")
    wait_caught_up(db, "os_s3_jsonl")

    prefix = "cdc/v1/os_s3_jsonl/"
    listing = s3_listing(s3, "pgsink-jsonl", "")
    assert all(k.startswith(prefix) for k in listing), sorted(listing)[:5]
    records, files = check_layout(s3_objects(s3, "pgsink-jsonl", prefix), "jsonl")
    assert {r["headers"]["pg_sink-op"] for r in records} == {"read", "insert", "update", "delete", "truncate"}
    assert upsert_state(records) == item_state(db)
    # Small objects are single PUTs (a multipart ETag ends with -<parts>).
    assert all("-" not in listing[prefix + f.key]["ETag"] for f in files)


def test_s3_parquet_round_trip_kinetica_style(db, types_table, sinks, s3):
    make_bucket(s3, "pgsink-parquet")
    insert_rows(db, ROWS[:3])
    opts = s3_options("pgsink-parquet", "", location="s3", s3_bucket_name="pgsink-parquet", file_format="parquet")
    del opts["s3_region"]
    opts["aws.region"] = "us-east-1"
    create_sink(db, sinks, "os_s3_pq", "os_types", "s3", opts)
    wait_started(db, "os_s3_pq")
    typed_changes(db)
    wait_caught_up(db, "os_s3_pq")
    # No prefix: objects go under <sink>/.
    assert all(k.startswith("os_s3_pq/") for k in s3_listing(s3, "pgsink-parquet", ""))
    objects = s3_objects(s3, "pgsink-parquet", "os_s3_pq/")
    records, _ = check_layout(objects, "parquet", columns=COLUMNS)
    check_parquet_schema(objects)
    assert sorted(replay_typed("parquet", records).values(), key=lambda r: r[0]) == source_rows(db)


def test_s3_multipart_upload_of_a_large_file(db, sinks, s3):
    db.execute("DROP TABLE IF EXISTS os_big")
    db.execute("CREATE TABLE os_big (id int PRIMARY KEY, v text)")
    make_bucket(s3, "pgsink-big")
    create_sink(db, sinks, "os_big", "os_big", "s3", s3_options("pgsink-big", "big", multipart_threshold=MIB5), envelope="append-only")
    wait_started(db, "os_big")
    rows = 4000  # ~2.1 kB per line: one ~8.5 MiB file from one transaction
    db.execute("INSERT INTO os_big SELECT g, repeat(md5(g::text), 64) FROM generate_series(1, %s::int) g", (rows,))
    wait_caught_up(db, "os_big", timeout=300)

    prefix = "big/os_big/"
    listing = s3_listing(s3, "pgsink-big", prefix)
    records, files = check_layout(s3_objects(s3, "pgsink-big", prefix), "jsonl")
    assert len(files) == 1 and files[0].start == files[0].end
    f = files[0]
    assert f.size > MIB5
    assert listing[prefix + f.key]["Size"] == f.size
    parts = math.ceil(f.size / MIB5)
    etag = listing[prefix + f.key]["ETag"].strip('"')
    assert etag.endswith(f"-{parts}"), f"expected a {parts}-part upload, ETag {etag}"
    assert len(records) == rows
    for r in records:
        i = r["value"]["id"]
        assert r["value"]["v"] == hashlib.md5(str(i).encode()).hexdigest() * 64
    assert sorted(r["value"]["id"] for r in records) == list(range(1, rows + 1))
    assert not s3.list_multipart_uploads(Bucket="pgsink-big").get("Uploads"), "no upload left incomplete"
    db.execute("DROP TABLE os_big")


def test_s3_postgres_crashes_lose_and_duplicate_nothing(db, sinks, s3):
    db.execute("DROP TABLE IF EXISTS os_crash")
    db.execute("CREATE TABLE os_crash (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO os_crash SELECT g, 'seed' FROM generate_series(1, 50) g")
    make_bucket(s3, "pgsink-crash")
    # Small batches, so the crashes land between many of them.
    db.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = 300")
    db.execute("SELECT pg_reload_conf()")
    try:
        create_sink(db, sinks, "os_crash", "os_crash", "s3", s3_options("pgsink-crash", "crash"))
        wait_started(db, "os_crash")
        expected = 50  # snapshot reads
        delivered = 0
        for i in range(32):
            lo = 1000 + i * 100
            db.execute("INSERT INTO os_crash SELECT g, %s FROM generate_series(%s::int, %s::int) g", (f"b{i}", lo, lo + 99))
            db.execute("UPDATE os_crash SET v = %s WHERE id <= 50", (f"u{i}",))
            expected += 150
            if i % 5 == 2:
                db.execute("DELETE FROM os_crash WHERE id BETWEEN %s AND %s", (lo, lo + 9))
                expected += 10
            if i == 4:
                # A killed worker makes the postmaster reinitialize every process.
                pid = one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_sink sink os_crash'")
                assert pid, "worker not running"
                os.kill(pid, signal.SIGKILL)
                db.close()
                workers_restarted("pg_sink sink os_crash", [pid], 1)
                db = connect()
            if i in (10, 18, 26):
                # pg_ctl stop -m immediate, then start: a crash and recovery.
                # Only once the sink has delivered more since the last crash.
                wait_for(lambda: one(db, "SELECT rows_delivered FROM sink.status WHERE name = 'os_crash'") > delivered, what="delivery")
                delivered = one(db, "SELECT rows_delivered FROM sink.status WHERE name = 'os_crash'")
                db.close()
                cluster("kill")
                cluster("start")
                db = connect()
        wait_caught_up(db, "os_crash", timeout=300)

        records, files = check_layout(s3_objects(s3, "pgsink-crash", "crash/os_crash/"), "jsonl")
        assert len(files) > 3
        seen = collections.Counter((r["headers"]["pg_sink-lsn"], json.dumps(r["key"], sort_keys=True), r["headers"]["pg_sink-op"]) for r in records)
        dups = [k for k, n in seen.items() if n > 1]
        assert not dups, f"{len(dups)} duplicated records, e.g. {dups[:3]}"
        assert len(records) == expected, (len(records), expected)
        state = upsert_state(records)
        assert state == {json.dumps({"id": i}): {"id": i, "v": v} for i, v in db.execute("SELECT id, v FROM os_crash").fetchall()}
        assert one(db, "SELECT state FROM sink.status WHERE name = 'os_crash'") == "running"
    finally:
        db = connect()
        db.execute("ALTER SYSTEM RESET pg_sink.max_batch_changes")
        db.execute("SELECT pg_reload_conf()")
        db.execute("SELECT sink.drop_sink('os_crash', if_exists => true)")
        db.execute("DROP TABLE IF EXISTS os_crash")
        db.close()


# ---------------------------------------------------------------- azure


def test_azblob_jsonl_upsert_round_trip(db, items, sinks, azurite):
    container = make_container(azurite, "pgsink-jsonl")
    create_sink(db, sinks, "os_az_jsonl", "os_items", "azblob", az_options("pgsink-jsonl", "cdc"))
    wait_started(db, "os_az_jsonl")
    item_changes(db)
    wait_caught_up(db, "os_az_jsonl")
    assert all(b.name.startswith("cdc/os_az_jsonl/") for b in container.list_blobs())
    records, files = check_layout(az_objects(container, "cdc/os_az_jsonl/"), "jsonl")
    assert files
    assert upsert_state(records) == item_state(db)


def test_azure_csv_append_only_kinetica_style(db, types_table, sinks, azurite):
    container = make_container(azurite, "pgsink-csv")
    insert_rows(db, ROWS[:3])
    opts = az_options("", "", location="azure", azure_container_name="pgsink-csv", file_format="csv")
    create_sink(db, sinks, "os_az_csv", "os_types", "azure", opts, envelope="append-only")
    wait_started(db, "os_az_csv")
    insert_rows(db, ROWS[3:])
    insert_rows(db, ROWS, id_offset=100)
    wait_caught_up(db, "os_az_csv")
    assert all(b.name.startswith("os_az_csv/") for b in container.list_blobs())
    records, _ = check_layout(az_objects(container, "os_az_csv/"), "csv", columns=COLUMNS)
    assert sorted((norm_record("csv", r) for r in records), key=lambda r: r[0]) == source_rows(db)


# ---------------------------------------------------------------- gcs


def service_account_json(base="http://127.0.0.1:1"):
    """A syntactically valid service-account key with a fresh RSA key. Its URIs
    point at `base` on the loopback so that nothing could ever leave the machine."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account",
        "project_id": "pg-sink-test",
        "private_key_id": hashlib.sha1(pem.encode()).hexdigest(),
        "private_key": pem,
        "client_email": "pg-sink@pg-sink-test.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "auth_uri": f"{base}/o/oauth2/auth",
        "token_uri": f"{base}/token",
        "auth_provider_x509_cert_url": f"{base}/certs",
        "client_x509_cert_url": f"{base}/x509",
    })


def test_gcs_configuration_is_checked_at_creation(db, items, sinks):
    """Configuration on its own (delivery is tested against the fake GCS server
    below). The sinks are manual (the worker never delivers), validate = false
    skips the write probe, and the endpoint and the key's token URI are the
    loopback's port 1, where nothing listens."""
    db.execute("SELECT sink.drop_secret('os_gcs_key', if_exists => true)")
    db.execute("SELECT sink.drop_secret('os_gcs_bad', if_exists => true)")
    db.execute("SELECT sink.create_secret('os_gcs_key', %s)", (service_account_json(),))
    db.execute("SELECT sink.create_secret('os_gcs_bad', %s)", ('{"type": "service_account", "private_key": "-----BEGIN PRIVATE',))
    sinks.append("os_gcs_bad")
    base = {"gcs_service_account_keys": {"secret": "os_gcs_key"}, "gcs_project_id": "pg-sink-test",
            "endpoint": "http://127.0.0.1:1", "validate": "false", "schedule": "manual"}
    try:
        create_sink(db, sinks, "os_gcs", "os_items", "gcs", {**base, "location": "gcs://pgsink-gcs/cdc", "file_format": "parquet"})
        create_sink(db, sinks, "os_gcs_k", "os_items", "gcs", {**base, "location": "gcs", "gcs_bucket_name": "pgsink-gcs"})
        rows = db.execute("SELECT name, connector, options::text FROM sink.sinks WHERE name IN ('os_gcs', 'os_gcs_k') ORDER BY name").fetchall()
        assert [(n, c) for n, c, _ in rows] == [("os_gcs", "gcs"), ("os_gcs_k", "gcs")]
        assert all("PRIVATE KEY" not in o for _, _, o in rows), "the key stays in the secret"
        before = one(db, "SELECT count(*) FROM sink.sinks")
        cases = [
            ({**base, "location": "gcs"}, ["bucket"]),
            ({**base, "location": "gcs://"}, ["bucket"]),
            ({**base, "location": "gcs://pgsink-gcs/cdc", "gcs_service_account_keys": {"secret": "os_gcs_bad"}}, ["gcs_service_account_keys", "json", "service account"]),
            ({**base, "location": "gcs://pgsink-gcs/cdc", "gcs_service_account_keys": "not json at all"}, ["gcs_service_account_keys", "json", "service account"]),
        ]
        for opts, needles in cases:
            st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('os_gcs_bad', 'os_items', 'gcs', %s::jsonb, envelope => 'upsert')", json.dumps(opts))
            said = " ".join(x for x in (m, detail, hint) if x)
            assert st == "22023", (opts, st, said)
            assert any(n.lower() in said.lower() for n in needles), (opts, said)
            assert detail or hint, m
            assert one(db, "SELECT count(*) FROM sink.sinks") == before
    finally:
        for s in ("os_gcs", "os_gcs_k"):
            db.execute("SELECT sink.drop_sink(%s, if_exists => true)", (s,))
        db.execute("SELECT sink.drop_secret('os_gcs_key', if_exists => true)")
        db.execute("SELECT sink.drop_secret('os_gcs_bad', if_exists => true)")


def changes_across_a_killed_worker(db, sink):
    """On os_items (40 seeded rows, the sink just created): item_changes, six more
    transactions with the sink's worker killed after the third, a delete, a
    truncate and a re-insert, all delivered by a new worker. The count of each
    op the sink must deliver, the snapshot's 40 reads included."""
    wait_started(db, sink)
    item_changes(db)
    # What item_changes does to the 40 seeded rows.
    expected = collections.Counter(read=40, insert=160, update=66 + 1, delete=28)
    wait_caught_up(db, sink)  # files at the target before the kill
    killed = None
    for t in range(6):
        lo = 1000 + t * 25
        expected["insert"] += db.execute("INSERT INTO os_items SELECT g, 'k' || g, g FROM generate_series(%s::int, %s::int) g", (lo, lo + 24)).rowcount
        expected["update"] += db.execute("UPDATE os_items SET n = coalesce(n, 0) + 1, v = v || '+' WHERE id BETWEEN %s AND %s", (1 + t * 5, 5 + t * 5)).rowcount
        if t == 2:
            killed = kill_worker(db, sink)
    expected["delete"] += db.execute("DELETE FROM os_items WHERE id BETWEEN 1000 AND 1009").rowcount
    db.execute("TRUNCATE os_items")
    expected["truncate"] += 1
    db.execute("INSERT INTO os_items VALUES (7, 'back', 7)")
    expected["insert"] += 1
    wait_caught_up(db, sink)
    assert one(db, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", f"pg_sink sink {sink}") not in (None, killed), "a new worker"
    return expected


def check_round_trip(db, records, expected):
    """Each record once, each op as often as expected, the replayed state the table's."""
    seen = collections.Counter((r["headers"]["pg_sink-lsn"], json.dumps(r["key"], sort_keys=True), r["headers"]["pg_sink-op"]) for r in records)
    dups = [k for k, n in seen.items() if n > 1]
    assert not dups, f"{len(dups)} duplicated records, e.g. {dups[:3]}"
    assert collections.Counter(r["headers"]["pg_sink-op"] for r in records) == expected
    assert upsert_state(records) == item_state(db)


def test_gcs_jsonl_upsert_round_trip_across_a_killed_worker(db, items, sinks, gcs):
    """JSON lines to the fake GCS server (gcs_fake.py: no installable emulator
    accepts the client's GCS XML-API calls): the snapshot, inserts, updates,
    deletes and a truncate, the worker killed between transactions. Every record
    arrives once and the replayed state is the table's, row by row."""
    bucket = "pgsink-jsonl"
    gcs.make_bucket(bucket)
    create_sink(db, sinks, "os_gcs_jsonl", "os_items", "gcs", gcs_options(bucket, "cdc/v1"))
    expected = changes_across_a_killed_worker(db, "os_gcs_jsonl")
    prefix = "cdc/v1/os_gcs_jsonl/"
    stored = gcs.objects(bucket)
    assert stored and all(k.startswith(prefix) for k in stored), sorted(stored)[:5]
    records, files = check_layout(gcs.objects(bucket, prefix), "jsonl")
    check_round_trip(db, records, expected)
    # Small objects are single PUTs; nothing is left half uploaded.
    assert all(gcs.object(bucket, prefix + f.key).parts == 0 for f in files)
    assert not gcs.uploads(bucket), "no upload left incomplete"
    # Every request carried a JWT the fake accepted; the restarted worker listed
    # its folder over several pages (the fake's pages hold three objects).
    assert [r for r in gcs_requests(gcs, bucket) if r[3] == 401] == [], "a request was refused"
    assert {"put", "delete", "list"} <= set(gcs.ops(bucket)), gcs.ops(bucket)
    assert any("continuation-token" in r[4] for r in gcs_requests(gcs, bucket, "list")), "no listing followed a continuation token"


def test_gcs_parquet_round_trip_kinetica_style(db, types_table, sinks, gcs):
    """Parquet to the fake GCS server (gcs_fake.py: no installable emulator accepts
    the client's GCS XML-API calls), Kinetica's bare 'gcs' location with
    gcs_bucket_name; the typed rows read back with pyarrow equal the table's."""
    gcs.make_bucket("pgsink-parquet")
    insert_rows(db, ROWS[:3])
    opts = gcs_options("", "", location="gcs", gcs_bucket_name="pgsink-parquet", file_format="parquet")
    create_sink(db, sinks, "os_gcs_pq", "os_types", "gcs", opts)
    wait_started(db, "os_gcs_pq")
    typed_changes(db)
    wait_caught_up(db, "os_gcs_pq")
    # No prefix: objects go under <sink>/.
    assert all(k.startswith("os_gcs_pq/") for k in gcs.objects("pgsink-parquet"))
    objects = gcs.objects("pgsink-parquet", "os_gcs_pq/")
    records, files = check_layout(objects, "parquet", columns=COLUMNS)
    assert files
    check_parquet_schema(objects)
    assert {rec_op("parquet", r) for r in records} == {"read", "insert", "update", "delete", "truncate"}
    assert sorted(replay_typed("parquet", records).values(), key=lambda r: r[0]) == source_rows(db)


def test_gcs_multipart_upload_of_a_large_file(db, sinks, gcs):
    """A file above multipart_threshold goes to the fake GCS server (gcs_fake.py:
    no installable emulator accepts the client's GCS XML-API calls, multipart
    uploads least of all) as an XML multipart upload in 5 MiB parts."""
    db.execute("DROP TABLE IF EXISTS os_gcs_big")
    db.execute("CREATE TABLE os_gcs_big (id int PRIMARY KEY, v text)")
    gcs.make_bucket("pgsink-big")
    create_sink(db, sinks, "os_gcs_big", "os_gcs_big", "gcs", gcs_options("pgsink-big", "big", multipart_threshold=MIB5), envelope="append-only")
    wait_started(db, "os_gcs_big")
    rows = 4000  # ~2.1 kB per line: one ~8.5 MiB file from one transaction
    db.execute("INSERT INTO os_gcs_big SELECT g, repeat(md5(g::text), 64) FROM generate_series(1, %s::int) g", (rows,))
    wait_caught_up(db, "os_gcs_big", timeout=300)

    prefix = "big/os_gcs_big/"
    records, files = check_layout(gcs.objects("pgsink-big", prefix), "jsonl")
    assert len(files) == 1 and files[0].start == files[0].end
    f = files[0]
    assert f.size > MIB5
    parts = math.ceil(f.size / MIB5)
    obj = gcs.object("pgsink-big", prefix + f.key)
    assert obj.parts == parts and obj.etag.strip('"').endswith(f"-{parts}"), f"expected a {parts}-part upload, got {obj.parts} ({obj.etag})"
    ops = gcs.ops("pgsink-big")
    assert (ops["upload_start"], ops["upload_part"], ops["upload_complete"]) == (1, parts, 1), ops
    assert len(records) == rows
    for r in records:
        i = r["value"]["id"]
        assert r["value"]["v"] == hashlib.md5(str(i).encode()).hexdigest() * 64
    assert sorted(r["value"]["id"] for r in records) == list(range(1, rows + 1))
    assert not gcs.uploads("pgsink-big"), "no upload left incomplete"
    db.execute("DROP TABLE os_gcs_big")


def test_gcs_key_the_server_does_not_know_is_refused_at_creation(db, items, sinks, gcs):
    """The fake GCS server (gcs_fake.py: no installable emulator accepts the
    client's GCS XML-API calls) answers 401 to a JWT signed by a key it was not
    given: the write probe at creation fails and no sink is made."""
    sinks.append("os_gcs_stranger")
    db.execute("SELECT sink.drop_secret('os_gcs_stranger', if_exists => true)")
    db.execute("SELECT sink.create_secret('os_gcs_stranger', %s)", (service_account_json(GCS_ENDPOINT),))
    gcs.make_bucket("pgsink-stranger")
    try:
        opts = {**gcs_options("pgsink-stranger", "x"), "gcs_service_account_keys": {"secret": "os_gcs_stranger"}}
        before = one(db, "SELECT count(*) FROM sink.sinks")
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('os_gcs_stranger', 'os_items', 'gcs', %s::jsonb, envelope => 'upsert')", json.dumps(opts))
        said = " ".join(x for x in (m, detail, hint) if x)
        assert st == "08000" and "gcs" in said.lower(), (st, said)
        assert any(w in said.lower() for w in ("401", "unauthenticated", "credentials")), said
        assert one(db, "SELECT count(*) FROM sink.sinks") == before
        statuses = [r[3] for r in gcs_requests(gcs, "pgsink-stranger")]
        assert statuses and set(statuses) == {401}, statuses
        assert not gcs.objects("pgsink-stranger")
    finally:
        db.execute("SELECT sink.drop_secret('os_gcs_stranger', if_exists => true)")


# ---------------------------------------------------------------- bad options


def test_bad_object_store_options(db, items, sinks, s3):
    sinks.append("os_bad")  # dropped at the end should a case be accepted
    d = out_dir("os_bad")
    fs = {"location": f"file://{d}"}
    # The bucket exists: only the option named in each case is wrong.
    make_bucket(s3, "pgsink-bad")
    good_s3 = s3_options("pgsink-bad", "bad")
    az = {"azure_storage_account_name": AZ_ACCOUNT, "azure_storage_account_key": AZ_KEY, "endpoint": AZ_ENDPOINT}

    def without(opts, *keys):
        return {k: v for k, v in opts.items() if k not in keys}

    # (connector, options, envelope, SQLSTATE, words one of which the error names)
    cases = [
        ("file", {**fs, "file_format": "xml"}, "append-only", "22023", ["file_format", "xml"]),
        ("file", {**fs, "file_format": "csv"}, "debezium", "22023", ["debezium", "envelope"]),
        ("s3", {**good_s3, "file_format": "parquet"}, "debezium", "22023", ["debezium", "envelope"]),
        ("file", {**fs, "max_file_size": "abc"}, "append-only", "22023", ["max_file_size"]),
        ("file", {**fs, "max_file_size": 512}, "upsert", "22023", ["max_file_size"]),
        ("s3", {**good_s3, "multipart_threshold": 1048576}, "upsert", "22023", ["multipart_threshold"]),
        ("file", {**fs, "partitioning": "weekly"}, "upsert", "22023", ["partitioning", "weekly"]),
        ("s3", without(good_s3, "aws.credentials.secret_access_key"), "upsert", "22023", ["secret_access_key", "pair"]),
        ("s3", without(good_s3, "aws.credentials.access_key_id"), "upsert", "22023", ["access_key_id", "pair"]),
        ("file", {"location": "ftp://x"}, "upsert", "22023", ["ftp://x", "location"]),
        ("s3", {**good_s3, "location": "ftp://x"}, "upsert", "22023", ["ftp://x", "location"]),
        ("file", {"path": "out/dir"}, "upsert", "22023", ["out/dir", "absolute"]),
        ("s3", {**good_s3, "location": "s3"}, "upsert", "22023", ["bucket"]),
        ("azblob", {**az, "location": "azure"}, "upsert", "22023", ["container"]),
        ("s3", {**good_s3, "endpoint": "http://127.0.0.1:1"}, "upsert", "08000", ["127.0.0.1:1", "endpoint", "reach", "connect"]),
    ]
    assert len(cases) >= 10
    before = one(db, "SELECT count(*) FROM sink.sinks")
    for connector, opts, envelope, state, needles in cases:
        st, m, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('os_bad', 'os_items', %s, %s::jsonb, envelope => %s)",
                                          connector, json.dumps(opts), envelope)
        said = " ".join(x for x in (m, detail, hint) if x)
        assert st == state, (connector, opts, envelope, st, said)
        assert m and any(n.lower() in said.lower() for n in needles), (connector, opts, said)
        assert detail or hint, (opts, m)
        assert one(db, "SELECT count(*) FROM sink.sinks") == before
        assert one(db, "SELECT count(*) FROM sink.sinks WHERE name = 'os_bad'") == 0
    assert not s3_listing(s3, "pgsink-bad", ""), "refused sinks leave no object behind"
