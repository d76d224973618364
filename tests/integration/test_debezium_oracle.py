"""Debezium as a conformance oracle for pg_sink's debezium envelope.

The same changes to one table (every common column type, inserts, updates, a
primary-key change, deletes, a TOASTed value left unchanged by an update) go through
Debezium's own Postgres connector (scripts/debezium.sh: the embedded engine, pgoutput,
snapshot.mode=no_data, started before the changes) and through a pg_sink `file` sink
with envelope => 'debezium' (snapshot => false). The events are paired transaction by
transaction (source.txId) and compared field by field.

The test asserts what already agrees: the transactions and their order, each
transaction's op sequence (apart from the known divergences below), and the ids of
the rows in before/after. Value differences are reported, not failed on: every
distinct kind goes into a Markdown report, always written to REPORT_TMP and copied
to docs/debezium-differences.md when PGSINK_WRITE_REPORT=1:

    PGSINK_WRITE_REPORT=1 PGSINK_TEST_DATA=/tmp/pg_sink_dbz/data PGSINK_TEST_PORT=5486 \\
      python3 -m pytest -q -s tests/integration/test_debezium_oracle.py

Known divergences, which the assertions allow and the report lists: a primary-key
change is a delete and a create in Debezium and one update in pg_sink. Under
REPLICA IDENTITY DEFAULT an update that leaves a TOASTed value unchanged gets
Debezium's placeholder in both (the sink runs with unchanged_toast => 'placeholder';
PGSINK_DBZ_TOAST=fetch or fail tries the other modes, where `fail` stops the sink).
After that change the test drops the sink, sets REPLICA IDENTITY FULL and goes on
with a new sink of the same name (Debezium keeps running). Needs java (17+) and mvn (scripts/setup.sh installs them).
PGSINK_DBZ_OPTS adds Debezium options (`--key=value ...`) to the oracle's run.
"""
import base64
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import fastavro
import pytest

from conftest import PORT, ROOT, file_records, one, out_dir, wait_caught_up, wait_for, wait_started
from test_avro import BROKERS as KAFKA_BROKERS, csr, decode as avro_decode, registry, servers  # noqa: F401  (fixtures)
from test_kafka import read_topic

ORACLE = os.path.join(ROOT, "scripts", "debezium.sh")
DOC = os.path.join(ROOT, "docs", "debezium-differences.md")
REPORT_TMP = os.environ.get("PGSINK_DBZ_REPORT", f"/tmp/pg_sink_dbz_report_{PORT}/debezium-differences.md")
WORK = f"/tmp/pg_sink_dbz_oracle_{PORT}"
TABLE = "dbz_types"
SINK = "dbz_oracle"  # also Debezium's topic.prefix, so source.name can agree
SLOT = "pg_sink_dbz_oracle_test"
REGENERATE = ("PGSINK_WRITE_REPORT=1 PGSINK_TEST_DATA=/tmp/pg_sink_dbz/data PGSINK_TEST_PORT=5486 "
              "python3 -m pytest -q -s tests/integration/test_debezium_oracle.py")
PLACEHOLDER = "__debezium_unavailable_value"

# 25,600 characters of hex, the same on every run; stored out of line (TOAST).
BIG = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(400))

COLUMNS = [
    ("c_int2", "int2"),
    ("c_int4", "int4"),
    ("c_int8", "int8"),
    ("c_numeric", "numeric"),
    ("c_numeric_scaled", "numeric(12,3)"),
    ("c_float4", "float4"),
    ("c_float8", "float8"),
    ("c_bool", "bool"),
    ("c_text", "text"),
    ("c_varchar", "varchar(20)"),
    ("c_char", "char(5)"),
    ("c_bytea", "bytea"),
    ("c_uuid", "uuid"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_timetz", "timetz"),
    ("c_timestamp", "timestamp"),
    ("c_timestamptz", "timestamptz"),
    ("c_interval", "interval"),
    ("c_int_array", "int[]"),
    ("c_text_array", "text[]"),
    ("c_enum", "dbz_mood"),
    ("c_inet", "inet"),
    ("c_big", "text"),  # TOASTed (STORAGE EXTERNAL)
]

# SQL expressions per column; %(big)s is the TOAST value.
ROW_1 = {
    "c_int2": "-32768", "c_int4": "2147483647", "c_int8": "-9223372036854775808",
    "c_numeric": "12345678901234567890.123456789", "c_numeric_scaled": "123456789.125",
    "c_float4": "3.14159", "c_float8": "-2.718281828459045", "c_bool": "true",
    "c_text": "'h\u00e9llo \"world\"' || chr(10) || 'tab' || chr(9)", "c_varchar": "'varchar \u2603'",
    "c_char": "'ab'", "c_bytea": "'\\x00ff10'::bytea", "c_uuid": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "c_json": "'{\"a\": [1, 2.50, null], \"b\": \"x\"}'", "c_jsonb": "'{\"a\": [1, 2.50, null], \"b\": \"x\"}'",
    "c_date": "'2024-02-29'", "c_time": "'13:14:15.123456'", "c_timetz": "'13:14:15.5+02'",
    "c_timestamp": "'2024-07-03 18:43:05.312345'", "c_timestamptz": "'2024-07-03 18:43:05.312345+02'",
    "c_interval": "'1 year 2 months 3 days 04:05:06.789'", "c_int_array": "'{1,NULL,3}'",
    "c_text_array": "'{a,\"b c\",NULL,\"\",\"NULL\"}'", "c_enum": "'happy'", "c_inet": "'192.168.1.10/24'",
    "c_big": "%(big)s",
}
ROW_3 = {
    "c_int2": "0", "c_int4": "-1", "c_int8": "9007199254740993",
    "c_numeric": "-0.000001", "c_numeric_scaled": "0", "c_float4": "'NaN'", "c_float8": "'-Infinity'",
    "c_bool": "false", "c_text": "''", "c_varchar": "' '", "c_char": "'abcde'", "c_bytea": "''::bytea",
    "c_uuid": "'00000000-0000-0000-0000-000000000000'", "c_json": "'[]'", "c_jsonb": "'{\"k\": {\"n\": 1e3}}'",
    "c_date": "'1969-07-20'", "c_time": "'00:00:00'", "c_timetz": "'23:59:59.999999-05:30'",
    "c_timestamp": "'1900-01-01 00:00:00'", "c_timestamptz": "'1969-12-31 23:59:59.999999+00'",
    "c_interval": "'-1 days +02:03:00.5'", "c_int_array": "'{}'", "c_text_array": "'{}'",
    "c_enum": "'sad'", "c_inet": "'::1'", "c_big": "'small'",
}
ROW_3_UPDATE = {
    "c_int4": "42", "c_numeric": "0.00000000000000000001", "c_numeric_scaled": "-99999.999",
    "c_float4": "1.5", "c_float8": "1e300", "c_bool": "true", "c_text": "'updated'",
    "c_json": "'null'", "c_jsonb": "'[1, \"two\", {\"three\": 3}]'", "c_date": "'2000-01-01'",
    "c_time": "'23:59:59.999999'", "c_timestamp": "'2038-01-19 03:14:08'",
    "c_timestamptz": "'2100-01-01 00:00:00+00'", "c_interval": "'3 months'",
    "c_text_array": "'{\"with,comma\",\"with \\\"quote\\\"\"}'", "c_enum": "'ok'", "c_inet": "'10.0.0.1'",
}


def insert(id_, row):
    cols = ", ".join(["id", *row])
    return f"INSERT INTO {TABLE} ({cols}) VALUES ({id_}, {', '.join(row.values())})"


# (label, statements run in one transaction, Debezium's ops, pg_sink's ops when they
# are known to differ). Phase "default" runs under REPLICA IDENTITY DEFAULT, "full"
# under FULL with a new sink.
STEPS = [
    ("default", "insert, every column set, TOASTed c_big", [insert(1, ROW_1)], ["c"], None),
    ("default", "insert, every column NULL", [f"INSERT INTO {TABLE} (id) VALUES (2)"], ["c"], None),
    ("default", "insert, edge values", [insert(3, ROW_3)], ["c"], None),
    ("default", "update, most columns", [f"UPDATE {TABLE} SET " + ", ".join(f"{c} = {v}" for c, v in ROW_3_UPDATE.items()) + " WHERE id = 3"], ["u"], None),
    ("default", "update of the primary key 3 -> 30", [f"UPDATE {TABLE} SET id = 30 WHERE id = 3"], ["d", "c"], ["u"]),
    ("default", "delete", [f"DELETE FROM {TABLE} WHERE id = 2"], ["d"], None),
    ("default", "two inserts in one transaction", [f"INSERT INTO {TABLE} (id, c_int4, c_text) VALUES (4, 4, 'four')",
                                                   f"INSERT INTO {TABLE} (id, c_int4, c_text) VALUES (5, 5, 'five')"], ["c", "c"], None),
    ("default", "update leaving the TOASTed c_big unchanged", [f"UPDATE {TABLE} SET c_int4 = c_int4 - 1 WHERE id = 1"], ["u"], "stops"),
    ("full", "update leaving the TOASTed c_big unchanged", [f"UPDATE {TABLE} SET c_text = 'toast under full' WHERE id = 1"], ["u"], None),
    ("full", "update", [f"UPDATE {TABLE} SET c_float8 = 0.1 WHERE id = 30"], ["u"], None),
    ("full", "delete of the TOASTed row", [f"DELETE FROM {TABLE} WHERE id = 1"], ["d"], None),
    ("full", "two deletes in one transaction", [f"DELETE FROM {TABLE} WHERE id = 4", f"DELETE FROM {TABLE} WHERE id = 5"], ["d", "d"], None),
]
# A TRUNCATE, last, for the runs that pass it on (skipped.operations = none;
# Debezium and pg_sink skip it by default).
TRUNCATE_STEP = ("full", "truncate", [f"TRUNCATE {TABLE}"], ["t"], None)
EXPECTED_EVENTS = sum(len(s[3]) for s in STEPS)
# The first step the second sink (under REPLICA IDENTITY FULL) delivers.
NEW_SINK_STEP = next(i for i, s in enumerate(STEPS, 1) if s[0] == "full")


def tools_available():
    return shutil.which("java") and shutil.which("mvn")


@pytest.fixture
def dbz_table(db):
    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    db.execute("DROP TYPE IF EXISTS dbz_mood")
    db.execute("CREATE TYPE dbz_mood AS ENUM ('sad', 'ok', 'happy')")
    db.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, " + ", ".join(f"{c} {t}" for c, t in COLUMNS) + ")")
    db.execute(f"ALTER TABLE {TABLE} ALTER c_big SET STORAGE EXTERNAL")  # out of line, uncompressed
    yield
    if one(db, "SELECT count(*) FROM sink.sinks WHERE name = %s", SINK):
        db.execute("SELECT sink.drop_sink(%s)", (SINK,))
    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    db.execute("DROP TYPE IF EXISTS dbz_mood")


class Oracle:
    """scripts/debezium.sh run in the background; always stopped by stop()."""

    def __init__(self, extra, expected=EXPECTED_EVENTS):
        shutil.rmtree(WORK, ignore_errors=True)
        os.makedirs(WORK)
        self.out = os.path.join(WORK, "debezium.jsonl")
        self.ready = os.path.join(WORK, "ready")
        self.log_path = os.path.join(WORK, "debezium.log")
        args = [
            f"--database.port={PORT}", f"--table.include.list=public.{TABLE}", "--snapshot.mode=no_data",
            f"--slot.name={SLOT}", f"--publication.name={SLOT}", "--publication.autocreate.mode=filtered",
            "--slot.drop.on.stop=true", f"--topic.prefix={SINK}",
            # pg_sink emits no tombstones; Debezium's would only add null lines.
            "--tombstones.on.delete=false",
            f"--offset.storage.file.filename={os.path.join(WORK, 'offsets.dat')}",
            f"--out={self.out}", f"--ready-file={self.ready}", "--with-keys",
            f"--max-events={expected}", "--idle-ms=180000",
            *extra,
        ]
        self.cmd = [ORACLE, "run", *args]
        self.expected = expected
        self.log = open(self.log_path, "w")
        self.started = time.time()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=WORK)

    def tail(self, n=40):
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def alive(self):
        return self.proc.poll() is None

    def wait_streaming(self, db, timeout=120):
        def streaming():
            assert self.alive(), f"the Debezium oracle exited early:\n{self.tail()}"
            return os.path.exists(self.ready) and one(db, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", SLOT)
        wait_for(streaming, timeout, "Debezium to stream")

    def wait_exit(self, timeout=180):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"Debezium did not see {self.expected} events in {timeout}s:\n{self.tail()}")

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def events(self):
        with open(self.out) as f:
            return [json.loads(line) for line in f if line.strip()]


def sink_state(db):
    return db.execute("SELECT state, last_error FROM sink.status WHERE name = %s", (SINK,)).fetchone()


def run_step(db, sqls):
    with db.transaction():
        for sql in sqls:
            db.execute(sql, {"big": BIG} if "%(big)s" in sql else None)


def create_sink(db, directory, compat, schemas=False, metadata=False, handling=None):
    opts = {"path": directory, "unchanged_toast": os.environ.get("PGSINK_DBZ_TOAST", "placeholder"), **(handling or {})}
    if compat:
        opts["debezium.compat"] = True
    if schemas:
        opts["schemas.enable"] = True
    if metadata:
        opts["provide.transaction.metadata"] = True
    db.execute("SELECT sink.create_sink(%s, %s, 'file', %s::jsonb, envelope => 'debezium', snapshot => false)",
               (SINK, TABLE, json.dumps(opts)))
    wait_started(db, SINK)


# What the compatible mode cannot match: the version string. Besides, the first
# event of a new sink has no transaction before it (`source.sequence` starts with
# null), where Debezium, running on, names the last one it saw: see
# first_of_a_new_sink below.
COMPAT_LEFT = {"source.version"}


def split_transactions(records, dbz):
    """(data events, BEGIN/END events) of one side."""
    def boundary(r):
        return r.get("destination", "").endswith(".transaction") if dbz else isinstance(r["value"], dict) and "status" in r["value"]
    return [r for r in records if not boundary(r)], [r for r in records if boundary(r)]


def split_tombstones(records):
    """(events, tombstones after deletes); fails on a tombstone that does not
    follow a delete of its key, or a delete without one."""
    events = []
    for i, r in enumerate(records):
        if r["value"] is None:
            prev = records[i - 1] if i else None
            assert prev and prev["value"] and prev["value"]["op"] == "d" and prev["key"] == r["key"], f"a tombstone not after its delete: {r}"
            continue
        if r["value"]["op"] == "d":
            nxt = records[i + 1] if i + 1 < len(records) else None
            assert nxt and nxt["value"] is None and nxt["key"] == r["key"], f"a delete without its tombstone: {r}"
        events.append(r)
    return events, len(records) - len(events)


def unwrap_schemas(records, what):
    """Kafka Connect's {"schema", "payload"} keys and values: the payloads, and the
    distinct schemas (key schemas, value schemas) as sorted JSON texts."""
    keys, values = set(), set()
    out = []
    for r in records:
        r = dict(r)
        for part, seen in (("key", keys), ("value", values)):
            v = r.get(part)
            if v is None:
                continue
            assert set(v) == {"schema", "payload"}, f"{what} {part} is not Connect's JSON with schemas: {v}"
            seen.add(json.dumps(v["schema"], sort_keys=True))
            r[part] = v["payload"]
        out.append(r)
    return out, keys, values


# Debezium's other handling modes, the same options on both sides (with schemas,
# so their Connect schemas are compared too).
HANDLING = {
    "handling": {"decimal.handling.mode": "string", "time.precision.mode": "connect", "binary.handling.mode": "hex",
                 "interval.handling.mode": "string", "tombstones.on.delete": "false", "skipped.operations": "none"},
    "handling-alt": {"decimal.handling.mode": "double", "time.precision.mode": "adaptive_time_microseconds",
                     "binary.handling.mode": "base64-url-safe"},
}


def drive(db, steps, start, collect):
    """Run the steps through a sink: start(phase) creates it, collect() takes its
    events before it is dropped. A change of phase drops the sink, sets REPLICA
    IDENTITY FULL and starts a new one (Debezium keeps running). Returns the error
    a sink stopped with at an unchanged TOAST value, if it did."""
    start("default")
    stop_error = None
    phase = "default"
    for step_phase, _label, sqls, _ops, pg_ops in steps:
        if step_phase != phase:
            collect()
            db.execute("SELECT sink.drop_sink(%s)", (SINK,))
            db.execute(f"ALTER TABLE {TABLE} REPLICA IDENTITY FULL")
            start(step_phase)
            phase = step_phase
        if pg_ops == "stops":
            # Everything before must be delivered first: a failing change fails
            # its whole batch.
            wait_caught_up(db, SINK)
        run_step(db, sqls)
        if pg_ops == "stops":
            target = one(db, "SELECT pg_current_wal_lsn()::text")

            def settled():
                st = sink_state(db)
                if st[0] == "failed":
                    return st
                done = one(db, "SELECT p.confirmed_lsn >= %s::pg_lsn FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id WHERE s.name = %s", target, SINK)
                return st if done else None
            st = wait_for(settled, 120, "the sink to deliver or stop on the unchanged TOAST value")
            stop_error = st[1] if st[0] == "failed" else None
    wait_caught_up(db, SINK)
    collect()
    return stop_error


@pytest.mark.parametrize("mode", ["default", "compat", "schemas", "metadata", "metadata-schemas", "handling", "handling-alt"])
def test_debezium_oracle(db, dbz_table, mode):
    compat, metadata = mode != "default", mode.startswith("metadata")
    schemas = mode.endswith("schemas") or mode in HANDLING
    handling = HANDLING.get(mode, {})
    tombstones = handling.get("tombstones.on.delete", "true") == "true"
    steps = STEPS + ([TRUNCATE_STEP] if handling.get("skipped.operations") == "none" else [])
    events = sum(len(st[3]) for st in steps)
    # With provide.transaction.metadata: a BEGIN and an END around each step's events.
    expected = events + 2 * len(steps) if metadata else events
    if not tools_available():
        pytest.fail("java and mvn are needed to run Debezium (scripts/setup.sh installs them)")
    t0 = time.time()
    subprocess.run([ORACLE, "build"], check=True, timeout=1800, stdout=subprocess.DEVNULL)
    build_s = time.time() - t0
    types = dict(db.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (TABLE,)).fetchall())

    oracle = Oracle(shlex.split(os.environ.get("PGSINK_DBZ_OPTS", "")) + (["--schemas"] if schemas else [])
                    + (["--provide.transaction.metadata=true"] if metadata else [])
                    + [f"--{k}={v}" for k, v in handling.items()],
                    expected)
    try:
        t1 = time.time()
        oracle.wait_streaming(db)
        startup_s = time.time() - t1

        dirs, pg_runs = [], []

        def start(_phase):
            dirs.append(out_dir(f"dbz_oracle_{'ab'[len(dirs)]}"))
            create_sink(db, dirs[-1], compat, schemas, metadata, handling)

        stop_error = drive(db, steps, start, lambda: pg_runs.append(file_records(dirs[-1], SINK)))
        t2 = time.time()
        rc = oracle.wait_exit()
        drain_s = time.time() - t2
        oracle_s = time.time() - oracle.started
        assert rc == 0, f"the Debezium oracle exited with {rc}:\n{oracle.tail()}"
    finally:
        oracle.stop()
        db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active", (SLOT,))
        db.execute(f"DROP PUBLICATION IF EXISTS {SLOT}")

    dbz = oracle.events()
    pg = [r for run in pg_runs for r in run]
    if schemas:
        # Kafka Connect's schemas: the same key and value schemas as Debezium's,
        # then the payloads are compared as in the compatible mode.
        dbz, dbz_keys, dbz_values = unwrap_schemas(dbz, "Debezium's")
        pg, pg_keys, pg_values = unwrap_schemas(pg, "pg_sink's")
        assert pg_keys == dbz_keys, f"key schemas differ:\n{sorted(pg_keys)}\n{sorted(dbz_keys)}"
        assert pg_values == dbz_values, f"value schemas differ:\npg_sink: {sorted(pg_values - dbz_values)}\nDebezium: {sorted(dbz_values - pg_values)}"
    dbz, dbz_tx = split_transactions(dbz, True)
    pg, pg_tx = split_transactions(pg, False)
    seen_tombstones = 0
    if compat and tombstones:
        pg, seen_tombstones = split_tombstones(pg)
    result = compare(dbz, pg, types, stop_error)
    result["extra_options"] = os.environ.get("PGSINK_DBZ_OPTS", "").strip()
    report = render(result, types)
    os.makedirs(os.path.dirname(REPORT_TMP), exist_ok=True)
    with open(REPORT_TMP, "w") as f:
        f.write(report)
    if os.environ.get("PGSINK_WRITE_REPORT") == "1" and not compat:
        shutil.copyfile(REPORT_TMP, DOC)
    print(f"\nDebezium oracle: build/cache check {build_s:.1f}s, streaming after {startup_s:.1f}s, "
          f"exited {drain_s:.1f}s after pg_sink caught up ({oracle_s:.1f}s in all)")
    print(summary(result))
    print(f"report: {REPORT_TMP}" + (f" (copied to {DOC})" if os.environ.get("PGSINK_WRITE_REPORT") == "1" else ""))

    # What must already agree.
    assert [e["value"]["op"] for e in dbz] == [op for st in steps for op in st[3]], "the oracle saw the expected changes"
    assert result["unpaired_pg"] == [], "pg_sink emitted events for transactions Debezium did not"
    assert len(result["txns"]) == len(steps)
    for step, got in zip(steps, result["txns"]):
        _phase, label, _sqls, dbz_ops, pg_ops = step
        assert got["dbz_ops"] == dbz_ops, label
        if pg_ops == "stops":
            assert got["pg_ops"] in (dbz_ops, None), label
            if got["pg_ops"] is None:
                assert stop_error and "unchanged TOASTed value" in stop_error, f"{label}: {stop_error}"
        elif pg_ops is not None:
            assert got["pg_ops"] in (dbz_ops, pg_ops), label
        else:
            assert got["pg_ops"] == dbz_ops, label
    assert result["id_mismatches"] == [], "pg_sink's events concern the same rows as Debezium's"
    if compat:
        # Debezium's events, keys, values and fields, but for what COMPAT_LEFT says.
        def first_of_a_new_sink(d):
            return d["field"] == "source.sequence" and d["step"] == NEW_SINK_STEP and str(d["pg"]).startswith("[null,")
        left = {d["field"] for d in result["diffs"] if not first_of_a_new_sink(d)}
        assert left <= COMPAT_LEFT, f"differences in compatible mode: {summary(result)}"
        assert [d for d in result["diffs"] if d["field"] == "source.sequence"] == [d for d in result["diffs"] if first_of_a_new_sink(d)]
        if tombstones:
            assert seen_tombstones == sum(op == "d" for st in steps for op in st[3]), "a tombstone after every delete"
        else:
            assert all(r["value"] is not None for r in pg), "no tombstones with tombstones.on.delete = false"
    if metadata:
        # BEGIN and END, key and value, field for field, around every transaction
        # pg_sink delivered (not the one the dropped sink's successor never saw).
        delivered = {e["value"]["source"]["txId"] for e in pg}
        want = [r for r in dbz_tx if int(r["value"]["id"].split(":")[0]) in delivered]
        assert len(want) == 2 * len(delivered) and len(dbz_tx) == 2 * len(steps), "Debezium bracketed each transaction"
        strip = [{"key": r["key"], "value": r["value"]} for r in want]
        got = [{"key": r["key"], "value": r["value"]} for r in pg_tx]
        assert got == strip, f"transaction events differ:\npg_sink:  {got[:4]}\nDebezium: {strip[:4]}"
        assert all(e["value"]["transaction"] is not None for e in pg), "every event names its transaction"
    else:
        assert pg_tx == [] and dbz_tx == []


# ---------------------------------------------------------------------------
# Pairing and comparison


def by_txn(events, txid):
    """[(txId, [events])] in order, consecutive events of one transaction grouped."""
    out = []
    for e in events:
        t = txid(e)
        if out and out[-1][0] == t:
            out[-1][1].append(e)
        else:
            out.append((t, [e]))
    return out


def row_id(image):
    return None if image is None else image.get("id")


def compare(dbz_records, pg_records, types, stop_error):
    """Pairs the events transaction by transaction and collects every difference."""
    dbz_txns = by_txn(dbz_records, lambda r: r["value"]["source"]["txId"])
    pg_txns = dict(by_txn(pg_records, lambda r: r["value"]["source"]["txId"]))
    diffs = []  # dicts: kind, field, column, dbz, pg, where, step
    txns, id_mismatches = [], []
    seen_pg = set()

    def add(kind, field, column, d, p, where, step):
        diffs.append({"kind": kind, "field": field, "column": column, "dbz": d, "pg": p, "where": where, "step": step})

    for i, (txid, devents) in enumerate(dbz_txns):
        label = i + 1  # the change's number in STEPS
        pevents = pg_txns.get(txid)
        dops = [e["value"]["op"] for e in devents]
        txns.append({"step": label, "dbz_ops": dops, "pg_ops": None if pevents is None else [e["value"]["op"] for e in pevents]})
        if pevents is None:
            for e in devents:
                for side in ("before", "after"):
                    for col, v in (e["value"][side] or {}).items():
                        if v == PLACEHOLDER:
                            add("missing", f"{side}.{col}", col, v, "no event: the sink stops" + (" (error above)" if stop_error else ""), side, label)
            if not any(d["step"] == label for d in diffs):
                add("missing", "event", None, "/".join(dops), "no event" + (" (the sink stops: error above)" if stop_error else ""), "event", label)
            continue
        seen_pg.add(txid)
        pops = [e["value"]["op"] for e in pevents]
        if dops == pops:
            pairs = [(d, p, None) for d, p in zip(devents, pevents)]
        elif dops == ["d", "c"] and pops == ["u"]:
            add("structure", "op", None, "d then c (delete of the old key, create of the new)",
                "one u (before: old key, after: new row)", "event", label)
            pairs = [(devents[0], pevents[0], "before"), (devents[1], pevents[0], "after")]
        else:
            add("structure", "op", None, "/".join(dops), "/".join(pops), "event", label)
            pairs = list(zip(devents, pevents))
        for d, p, only in pairs:
            compare_event(d, p, only, label, add, id_mismatches)
    unpaired_pg = [t for t in pg_txns if t not in seen_pg]
    # What the LSNs are: Debezium's per change, pg_sink's the commit LSN (its header).
    per_change = any(len({e["value"]["source"]["lsn"] for e in evs}) == len(evs) > 1 for _, evs in dbz_txns)
    commit_lsn = all(r["value"]["source"]["lsn"] == lsn_int(r["headers"]["pg_sink-lsn"]) for r in pg_records)
    return {"diffs": diffs, "lsn_per_change": per_change, "lsn_commit": commit_lsn, "txns": txns, "id_mismatches": id_mismatches, "unpaired_pg": unpaired_pg,
            "dbz_count": len(dbz_records), "pg_count": len(pg_records), "stop_error": stop_error,
            "dbz_version": dbz_records[0]["value"]["source"].get("version") if dbz_records else None,
            "pg_version": pg_records[0]["value"]["source"].get("version") if pg_records else None}


def compare_event(d, p, only, label, add, id_mismatches):
    dv, pv = d["value"], p["value"]
    # The record key.
    if only != "before" and d.get("key") != p.get("key"):
        add("key", "record key", None, d.get("key"), p.get("key"), "key", label)
    # Row images, column by column.
    for side in ("before", "after"):
        if only and side != only:
            continue
        di, pi = dv.get(side), pv.get(side)
        if row_id(di) != row_id(pi) and not (di is None or pi is None):
            id_mismatches.append((label, side, row_id(di), row_id(pi)))
        if di is None or pi is None:
            if (di is None) != (pi is None):
                add("image", side, None, summarize_image(di), summarize_image(pi), side, label)
            continue
        for col in list(di) + [c for c in pi if c not in di]:
            if col not in pi:
                add("column", f"{side}.{col}", col, di[col], "(absent)", side, label)
            elif col not in di:
                add("column", f"{side}.{col}", col, "(absent)", pi[col], side, label)
            elif di[col] != pi[col] or type(di[col]) is not type(pi[col]) and not numbers(di[col], pi[col]):
                add("value", f"{side}.{col}", col, di[col], pi[col], side, label)
    # The envelope's own fields.
    for f in sorted(set(dv) | set(pv), key=lambda k: (list(dv) + list(pv)).index(k)):
        if f in ("before", "after", "source", "op"):
            continue
        if f not in pv:
            add("envelope", f, None, dv[f], "(absent)", "envelope", label)
        elif f not in dv:
            add("envelope", f, None, "(absent)", pv[f], "envelope", label)
        elif f.startswith("ts_"):
            continue  # presence only
        elif dv[f] != pv[f]:
            add("envelope", f, None, dv[f], pv[f], "envelope", label)
    ds, ps = dv["source"], pv["source"]
    for f in list(ds) + [k for k in ps if k not in ds]:
        if f not in ps:
            add("source", f"source.{f}", None, ds[f], "(absent)", "source", label)
        elif f not in ds:
            add("source", f"source.{f}", None, "(absent)", ps[f], "source", label)
        elif f.startswith("ts_"):
            continue  # presence only
        elif ds[f] != ps[f]:
            add("source", f"source.{f}", None, ds[f], ps[f], "source", label)


def lsn_int(text):
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def numbers(a, b):
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool)


def summarize_image(image):
    return "null" if image is None else "{" + ", ".join(f"{k}: {'null' if v is None else '…'}" for k, v in list(image.items())[:3]) + ", …}"


def first_line(s):
    return (s or "").splitlines()[0] if s else "no error"


# ---------------------------------------------------------------------------
# The report

VOLATILE = {"source.lsn", "source.txId", "source.sequence", "source.ts_ms", "source.ts_us", "source.ts_ns",
            "ts_ms", "ts_us", "ts_ns", "source.xmin"}
NOTES = {
    "source.version": "Debezium's release vs pg_sink's",
    "source.sequence": "Debezium: a JSON string of two LSNs (its lastCommitLsn and the change's LSN); pg_sink: null",
    "source.origin": "Debezium 3 adds the replication origin",
    "source.origin_lsn": "Debezium 3 adds the replication origin",
    "ts_us": "Debezium 3 adds microsecond and nanosecond times beside ts_ms",
    "ts_ns": "Debezium 3 adds microsecond and nanosecond times beside ts_ms",
    "source.ts_us": "Debezium 3 adds microsecond and nanosecond times beside ts_ms",
    "source.ts_ns": "Debezium 3 adds microsecond and nanosecond times beside ts_ms",
    "record key": "pg_sink's debezium envelope has no key unless key => is given; Debezium keys by the primary key",
    "op": "Debezium turns a primary-key update into a delete and a create (with __debezium.oldkey/newkey headers)",
}


COLUMN_NOTES = {
    "c_numeric": "Debezium (decimal.handling.mode=precise): a VariableScaleDecimal {scale, value: base64 of the unscaled two's-complement bytes}; pg_sink: the exact digits as a string",
    "c_numeric_scaled": "Debezium (precise): base64 of the unscaled two's-complement bytes, the scale only in the schema; pg_sink: the digits as a string",
    "c_bytea": "Debezium (binary.handling.mode=bytes): base64; pg_sink: Postgres's hex text",
    "c_json": "Debezium: the text as a JSON string (io.debezium.data.Json); pg_sink: embedded JSON, re-serialised (2.50 becomes 2.5)",
    "c_jsonb": "Debezium: the text as a JSON string (io.debezium.data.Json); pg_sink: embedded JSON, re-serialised (2.50 becomes 2.5)",
    "c_date": "Debezium: days since the epoch (io.debezium.time.Date); pg_sink: Postgres's text",
    "c_time": "Debezium (time.precision.mode=adaptive): microseconds since midnight (MicroTime); pg_sink: Postgres's text",
    "c_timetz": "Debezium: the time in UTC with Z (ZonedTime); pg_sink: Postgres's text with its offset",
    "c_timestamp": "Debezium: microseconds since the epoch, a number (MicroTimestamp); pg_sink: milliseconds with a microsecond fraction, a string",
    "c_timestamptz": "Debezium: ISO 8601 in UTC (ZonedTimestamp); pg_sink: milliseconds with a microsecond fraction, a string",
    "c_interval": "Debezium (interval.handling.mode=numeric): microseconds, a month counted as 30.4375 days (MicroDuration); pg_sink: Postgres's text",
}


def shown(v, field):
    if isinstance(v, str) and v.startswith(("(absent)", "no event")) or field == "op":
        return v
    text = json.dumps(v, ensure_ascii=False)
    if field in VOLATILE:
        text = re.sub(r"\d{6,}", "<n>", text)
    if len(text) > 70:
        text = f"{text[:40]}… ({len(text)} chars)"
    return text


def kind_of(v):
    if isinstance(v, str) and v in (PLACEHOLDER, "(absent)"):
        return v
    return type(v).__name__


def distinct(diffs):
    """One row per field and kind of difference (the JSON types on both sides)."""
    rows = {}
    for d in diffs:
        field = d["field"].split(".", 1)[1] if d["kind"] in ("value", "column", "missing") and "." in d["field"] else d["field"]
        key = (d["kind"], field, kind_of(d["dbz"]), kind_of(d["pg"]))
        r = rows.setdefault(key, {**d, "field": field, "where": {}, "steps": []})
        r["where"][d["where"]] = r["where"].get(d["where"], 0) + 1
        if d["step"] not in r["steps"]:
            r["steps"].append(d["step"])
    return list(rows.values())


def md(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def code(s):
    s = md(s)
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def render(result, types):
    rows = distinct(result["diffs"])
    order = {"structure": 0, "missing": 1, "key": 2, "image": 3, "value": 4, "column": 5, "envelope": 6, "source": 7}
    col_order = {c: i for i, (c, _) in enumerate(COLUMNS)}
    rows.sort(key=lambda r: (order[r["kind"]], col_order.get(r["column"], -1), r["field"]))
    lines = [
        "# pg_sink's debezium envelope against Debezium",
        "",
        f"Debezium {result['dbz_version']} (its Postgres connector with pgoutput, in the embedded engine:",
        "`scripts/debezium.sh`, `tools/debezium`) and pg_sink "
        f"({result['pg_version']}, a `file` sink with `envelope => 'debezium'`, `snapshot => false`) saw the",
        f"same changes to one table (`{TABLE}`, every common column type). Written by",
        "`tests/integration/test_debezium_oracle.py`; regenerate with:",
        "",
        "```sh",
        REGENERATE,
        "```",
        "",
        "Debezium runs with the JSON converter without schemas and its defaults",
        "(`decimal.handling.mode=precise`, `time.precision.mode=adaptive`, `binary.handling.mode=bytes`,",
        "`interval.handling.mode=numeric`, ...), `snapshot.mode=no_data` and `tombstones.on.delete=false`",
        "(pg_sink emits no tombstones). `ts_ms`/`ts_us`/`ts_ns` values are not compared, only their presence;",
        "volatile numbers (LSNs, transaction ids, times) are shown as `<n>`.",
        "",
        *([f"Extra Debezium options for this run (PGSINK_DBZ_OPTS): `{md(result['extra_options'])}`.", ""]
          if result.get("extra_options") else []),
        "## The changes",
        "",
        "| # | table identity | change | Debezium | pg_sink |",
        "|---|---|---|---|---|",
    ]
    for i, (step, t) in enumerate(zip(STEPS, result["txns"]), 1):
        pg_ops = "no event (the sink stops)" if t["pg_ops"] is None else " ".join(t["pg_ops"])
        lines.append(f"| {i} | {step[0].upper()} | {md(step[1])} | {' '.join(t['dbz_ops'])} | {pg_ops} |")
    lines += [
        "",
        f"Events: Debezium {result['dbz_count']}, pg_sink {result['pg_count']}.",
        "",
        *([
            "Under REPLICA IDENTITY DEFAULT, pg_sink's file sink stopped at change 8 with",
            "",
            f"> {md(first_line(result['stop_error']))}",
            "",
        ] if result["stop_error"] else ["pg_sink's first sink did not stop at change 8.", ""]),
        "Before change 9 the test dropped the sink, set REPLICA IDENTITY FULL and went on with a new",
        "sink of the same name; Debezium ran on.",
        "",
        "## Differences",
        "",
        "One row per field and kind of difference, with the first example; *where* counts the",
        "occurrences (row images, record key, envelope or source block), *changes* lists the changes.",
        "",
        "| field | column type | Debezium | pg_sink | where | changes | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ctype = types.get(r["column"], "") if r["column"] else ""
        where = ", ".join(f"{k} ×{n}" for k, n in r["where"].items())
        nums = sorted(r["steps"])
        changes = ", ".join(str(n) for n in nums)
        # The column notes describe Debezium's defaults; extra options change them.
        note = NOTES.get(r["field"], "") or ("" if result.get("extra_options") else COLUMN_NOTES.get(r["column"], ""))
        if r["column"] in ("c_json", "c_jsonb") and r["pg"] is None:
            note = "pg_sink embeds json: the JSON literal null becomes null, the same as SQL NULL"
        if r["field"] == "source.lsn":
            note = ("Debezium: " + ("the change's own LSN (it differs between the changes of one transaction)" if result["lsn_per_change"] else "?")
                    + "; pg_sink: " + ("the transaction's commit LSN (its pg_sink-lsn header)" if result["lsn_commit"] else "?"))
        if r["dbz"] == PLACEHOLDER:
            note = "Debezium's unavailable.value.placeholder"
        lines.append(f"| {code(r['field'])} | {md(ctype)} | {code(shown(r['dbz'], r['field']))} | "
                     f"{code(shown(r['pg'], r['field']))} | {where} | {changes} | {md(note)} |")
    agreeing = [c for c, _ in COLUMNS if not any(r["column"] == c for r in rows)]
    lines += [
        "",
        "Columns whose values agreed in every event: " + (", ".join(f"`{c}` ({types.get(c, '')})" for c in agreeing) or "none") + ".",
        "",
        "Not covered here: snapshot (`r`) events, truncates (Debezium skips them by default,",
        "`skipped.operations=t`), numeric NaN, infinite dates and timestamps, multi-dimensional",
        "arrays, and other connector options.",
        "",
    ]
    return "\n".join(lines)


def summary(result):
    rows = distinct(result["diffs"])
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["field"])
    parts = [f"Debezium {result['dbz_count']} events, pg_sink {result['pg_count']}; {len(rows)} distinct differences:"]
    for k, fields in by_kind.items():
        parts.append(f"  {k}: {', '.join(dict.fromkeys(fields))}")
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# Avro: Kafka Connect's Avro mapping of Debezium's events


def avro_records(records):
    """(key, value) of Kafka messages in the registry's wire format, decoded with
    the registered schemas: [(key schema, key, value schema, value)]."""
    out = []
    for _, k, v, _ in records:
        row = []
        for data in (k, v):
            if data is None:
                row += [None, None]
                continue
            sid, datum = avro_decode(data)
            row += [json.loads(registry("GET", f"/schemas/ids/{sid}")[1]["schema"]), datum]
        out.append(tuple(row))
    return out


def dbz_avro_records(path):
    """The same for AvroOfConnect's lines (schemas given, datums in base64)."""
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            row = [r["destination"]]
            for part in ("key", "value"):
                if r[part] is None:
                    row += [None, None]
                    continue
                schema = json.loads(r[f"{part}_schema"])
                datum = fastavro.schemaless_reader(io.BytesIO(base64.b64decode(r[part])), fastavro.parse_schema(schema))
                row += [schema, datum]
            out.append(tuple(row))
    return out


def test_debezium_avro_oracle(db, dbz_table, csr):
    """pg_sink's debezium envelope in debezium.compat with format avro, to Kafka
    with Apicurio Registry, against Debezium's own events under Kafka Connect's
    Avro mapping (tools/debezium AvroOfConnect: Apicurio's AvroData, a port of
    Confluent's): the same registered key and value schemas (names, namespaces,
    connect.* properties, logical types), and the same decoded records, transaction
    BEGIN/END included, apart from the version string, the wall-clock times of the
    events, and the first event of the second sink's sequence (see COMPAT_LEFT)."""
    if not tools_available():
        pytest.fail("java and mvn are needed to run Debezium (scripts/setup.sh installs them)")
    subprocess.run([ORACLE, "build"], check=True, timeout=1800, stdout=subprocess.DEVNULL)
    topic = f"dbz-avro-{int(time.time())}"
    steps = STEPS
    oracle = Oracle(["--schemas", "--provide.transaction.metadata=true"], EXPECTED_EVENTS + 2 * len(steps))
    try:
        oracle.wait_streaming(db)

        def start(_phase):
            opts = {"brokers": KAFKA_BROKERS, "topic": topic, "csr_connection": csr, "debezium.compat": True,
                    "provide.transaction.metadata": True, "unchanged_toast": "placeholder"}
            db.execute("SELECT sink.create_sink(%s, %s, 'kafka', %s::jsonb, envelope => 'debezium', format => 'avro', snapshot => false)",
                       (SINK, TABLE, json.dumps(opts)))
            wait_started(db, SINK)

        stop_error = drive(db, steps, start, lambda: None)
        assert stop_error is None
        assert oracle.wait_exit() == 0, oracle.tail()
    finally:
        oracle.stop()
        db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active", (SLOT,))
        db.execute(f"DROP PUBLICATION IF EXISTS {SLOT}")
    converted = os.path.join(WORK, "debezium-avro.jsonl")
    subprocess.run([ORACLE, "avro", oracle.out, converted], check=True, timeout=300)
    dbz = dbz_avro_records(converted)
    dbz_data = [r[1:] for r in dbz if not r[0].endswith(".transaction")]
    dbz_tx = [r[1:] for r in dbz if r[0].endswith(".transaction")]
    pg_data = [r for r in avro_records(read_topic(topic)) if r[3] is not None]  # tombstones aside
    pg_tx = avro_records(read_topic(f"{topic}.transaction"))

    def schemas(records, i):
        return sorted({json.dumps(r[i], sort_keys=True) for r in records if r[i] is not None})
    for what, d, p in (("data", dbz_data, pg_data), ("transaction", dbz_tx, pg_tx)):
        for i, part in ((0, "key"), (2, "value")):
            assert schemas(p, i) == schemas(d, i), f"{what} {part} schemas differ:\npg_sink:  {schemas(p, i)}\nDebezium: {schemas(d, i)}"

    def nan_free(x):
        # NaN is not equal to itself: compared as its name.
        if isinstance(x, float) and x != x:
            return "NaN"
        if isinstance(x, dict):
            return {k: nan_free(v) for k, v in x.items()}
        if isinstance(x, list):
            return [nan_free(v) for v in x]
        return x

    def comparable(value, first_of_sink):
        v = {k: nan_free(x) for k, x in value.items() if k not in ("ts_ms", "ts_us", "ts_ns")}
        if "source" in v:
            v["source"] = {k: x for k, x in v["source"].items() if k != "version" and not (first_of_sink and k == "sequence")}
        return v
    assert len(pg_data) == len(dbz_data) == EXPECTED_EVENTS
    first_of_second = sum(len(s[3]) for s in steps[:NEW_SINK_STEP - 1])
    for i, (d, p) in enumerate(zip(dbz_data, pg_data)):
        assert p[1] == d[1], f"event {i}: keys differ"
        assert comparable(p[3], i == first_of_second) == comparable(d[3], i == first_of_second), f"event {i} differs:\npg_sink:  {p[3]}\nDebezium: {d[3]}"
    assert [(p[1], p[3]) for p in pg_tx] == [(d[1], d[3]) for d in dbz_tx], "transaction events differ"
    db.execute("SELECT sink.drop_sink(%s)", (SINK,))
