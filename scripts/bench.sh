#!/usr/bin/env bash
# pg_sink throughput benchmark (a benchmark, not a test).
#
#   scripts/bench.sh [N]          N = number of changes (default $BENCH_ROWS, else
#                                 $BENCH_N, else 1000000, for every BENCH_SINK)
#
# What it measures: how fast a pg_sink sink (upsert envelope; by default the `file`
# connector writing JSON lines) drains a backlog of N inserts from its replication
# slot, compared with the cheapest possible consumer of the same backlog:
# pg_recvlogical reading the same table through pgoutput into /dev/null (the
# decode limit). Sinks whose target is an emulator or another server are also
# compared with that target's own ceiling, measured in the same run (see
# BENCH_SINK below).
#
# How: a throwaway cluster (scripts/cluster.sh, data /tmp/pg_sink_bench/data, port
# 5497). Both the baseline slot (`bench_recv`, pgoutput, publication `bench_pub`)
# and the sink's slot exist before the workload; the sink is paused while N rows
# are inserted in 50000-row transactions (generate_series, ~100-byte payload,
# numeric, timestamptz, 3-element text[]). Then a CHECKPOINT, END =
# pg_current_wal_lsn(), and:
#   baseline  pg_recvlogical --start --endpos=END -f /dev/null, wall time (monotonic)
#   sink      sink.resume_sink('bench') until sink.progress.confirmed_lsn >= END,
#             polled every 50 ms. This includes starting the worker (the launcher
#             looks every 500 ms, shown as "worker up after"), decoding, encoding,
#             delivering (files written and fsynced, objects PUT, requests
#             answered, target transactions committed), and the catalog updates.
#   ceiling   (s3, webhook, jdbc-*, kinesis) after the sink: a plain client puts
#             the same amount of data into the same kind of target, timed.
# The worker's peak RSS is VmHWM from /proc/<pid>/status (max over samples; it
# counts shared memory the worker touched, e.g. shared_buffers pages, so the
# anonymous (private) peak RssAnon is shown next to it).
# Correctness check (cheap, after timing): the records at the target must be N
# (lines, Parquet rows, stream records, received records or target rows; for nats,
# rows_delivered).
#
# Reading the ratio: ratio = sink rows/s ÷ baseline rows/s. 1.000 means the sink
# keeps up with a bare pgoutput stream that does no encoding and no I/O; 0.5 means
# it takes twice as long as the baseline to drain the same backlog. Values above 1
# are possible (the sink decodes through the SQL slot interface in batches, with
# no network hop). The ceiling ratio = sink rows/s ÷ ceiling rows/s, where the
# ceiling's rows/s is N ÷ the plain client's time: near 1 means the target (not
# pg_sink) is the limit. Small N is dominated by fixed costs (worker start,
# polling), so compare ratios only at the same N.
#
# BENCH_SINK:
#   file      (default) the `file` connector, JSON lines, into /tmp/pg_sink_bench/out.
#   parquet   the `file` connector with file_format parquet (BENCH_FILE_FORMAT=csv
#             for CSV), same directory; rows counted with pyarrow (CSV: lines less
#             one header per file).
#   iceberg   the `iceberg` connector, append-only envelope (the one it writes),
#             Iceberg's SQL catalog in the bench database, local warehouse
#             /tmp/pg_sink_bench/out/warehouse; one Iceberg commit per batch. Rows
#             counted from the table's current snapshot (total-records, checked
#             against the sum of its data files' Parquet row counts); the number of
#             commits and their mean gap are shown. Compare with BENCH_SINK=parquet
#             (scripts/bench_iceberg.sh runs both).
#   nats      core NATS on BENCH_NATS (default 127.0.0.1:4222); nothing subscribes.
#   kinesis   a 4-shard stream on a moto server started here (scripts/moto.sh, port
#             15032, data /tmp/pg_sink_bench_moto, stopped by pid at exit); ceiling:
#             boto3 PutRecords of N records of the same size, 500 per request, into
#             a fresh 4-shard stream.
#   s3        the `s3` connector (BENCH_FILE_FORMAT, default jsonl) into bucket
#             `bench`, prefix `cdc`, on a moto server started here (port 15033,
#             data /tmp/pg_sink_bench_moto_s3, stopped by pid at exit); ceiling:
#             boto3 PUTs, one at a time, as many objects of the same sizes as the
#             sink wrote (data files and manifests; sizes read back from moto) into
#             another bucket (scripts/bench_ceilings.py).
#   webhook   the `webhook` connector (batch_format BENCH_WEBHOOK_FORMAT, json or
#             ndjson, default json; 1000 records per request) posting to
#             scripts/bench_webhook.py, a ThreadingHTTPServer on a free port that
#             reads each body, counts its records and answers 204 (stopped by pid
#             at exit); ceiling: a Python client POSTing bodies of the same sizes
#             and record counts over BENCH_WEBHOOK_CONNS (default 1: the sink sends
#             one request at a time) keep-alive connections.
#   jdbc-mysql     the `jdbc` connector into table bench of database pg_sink_bench
#             on a MariaDB started here (scripts/mariadb.sh, port
#             BENCH_MARIADB_PORT, default 13406, data /tmp/pg_sink_bench_mariadb,
#             user root, empty password; stopped by pid at exit).
#   jdbc-postgres  the `jdbc` connector into table bench of database bench_target
#             of the bench cluster itself.
#             jdbc ceiling: the source's rows written into a second table of the
#             same target database by PyMySQL / psycopg, as multi-row upserts of
#             1000 rows (INSERT .. ON DUPLICATE KEY UPDATE / ON CONFLICT DO
#             UPDATE, executemany), in transactions as large as the sink's
#             batches (each one target transaction of whole 50000-row source
#             transactions, closed at pg_sink.max_batch_changes changes); only the
#             writes and commits are timed, not reading the rows from the source.
# Other env: BENCH_FORMAT (json, the default, or avro: plain Avro datums, no
# registry; the key/value format, which CSV, Parquet and jdbc rows do not use),
# BENCH_DEBEZIUM (file and nats sinks: `plain` for the debezium envelope, `compat`
# for it with debezium.compat, Debezium's own forms; the key/value format is
# BENCH_FORMAT's), BENCH_ROWS / BENCH_N (changes), BENCH_TXN_ROWS (rows per source
# transaction, default 50000; N for one transaction of every row), PGSINK_BATCH (if set: ALTER SYSTEM SET
# pg_sink.max_batch_changes + reload before resuming), BENCH_TIMEOUT (seconds per
# timed phase, default 3600).
# The last line of output is one JSON object with all the numbers. The cluster is
# stopped on exit (also on failure); its data dir and server.log stay in
# /tmp/pg_sink_bench until the next run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=/tmp/pg_sink_bench
export PGSINK_DATA=$ROOT/data PGSINK_PORT=5497
export BENCH_SINK=${BENCH_SINK:-file}
case "$BENCH_SINK" in
  file | parquet | iceberg | nats | kinesis | s3 | webhook | jdbc-mysql | jdbc-postgres) ;;
  *) echo "bench.sh: BENCH_SINK must be file, parquet, iceberg, nats, kinesis, s3, webhook, jdbc-mysql or jdbc-postgres, not '$BENCH_SINK'" >&2; exit 2 ;;
esac
case "$BENCH_SINK:${BENCH_FILE_FORMAT:-}" in
  *: | parquet:parquet | parquet:csv | s3:jsonl | s3:csv | s3:parquet) ;;
  parquet:* | s3:*) echo "bench.sh: BENCH_FILE_FORMAT '$BENCH_FILE_FORMAT' is not one BENCH_SINK=$BENCH_SINK writes" >&2; exit 2 ;;
  *) echo "bench.sh: BENCH_FILE_FORMAT is for BENCH_SINK=parquet or s3" >&2; exit 2 ;;
esac
case "${BENCH_WEBHOOK_FORMAT:-json}" in json | ndjson) ;; *) echo "bench.sh: BENCH_WEBHOOK_FORMAT must be json or ndjson" >&2; exit 2 ;; esac
export BENCH_N=${1:-${BENCH_ROWS:-${BENCH_N:-1000000}}}
export BENCH_OUT=$ROOT/out
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
export PGSINK_BATCH=${PGSINK_BATCH:-}
export BENCH_HERE=$HERE BENCH_ROOT=$ROOT
# Emulators this script starts (ports apart from the integration tests' servers).
export BENCH_KINESIS_MOTO_PORT=15032 BENCH_KINESIS_MOTO_DATA=/tmp/pg_sink_bench_moto
export BENCH_S3_MOTO_PORT=15033 BENCH_S3_MOTO_DATA=/tmp/pg_sink_bench_moto_s3
export BENCH_MARIADB_PORT=${BENCH_MARIADB_PORT:-13406} BENCH_MARIADB_DATA=/tmp/pg_sink_bench_mariadb
export BENCH_MYSQL=127.0.0.1:$BENCH_MARIADB_PORT

case "$BENCH_N" in ''|*[!0-9]*) echo "bench.sh: N must be a positive integer, got '$BENCH_N'" >&2; exit 2 ;; esac
[ "$BENCH_N" -gt 0 ] || { echo "bench.sh: N must be > 0" >&2; exit 2; }

mariadb_sh() { MARIADB_PORT=$BENCH_MARIADB_PORT MARIADB_DATA=$BENCH_MARIADB_DATA "$HERE/mariadb.sh" "$@"; }

cleanup() {
  # The Python part stops what it started; this is for when it could not (killed).
  local pid
  if [ -f "$ROOT/webhook.pid" ] && pid=$(head -1 "$ROOT/webhook.pid") && [ -n "$pid" ] \
    && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'bench_webhook.py serve'; then
    kill "$pid" 2>/dev/null || true
  fi
  case "$BENCH_SINK" in
    kinesis) MOTO_PORT=$BENCH_KINESIS_MOTO_PORT MOTO_DATA=$BENCH_KINESIS_MOTO_DATA "$HERE/moto.sh" stop >/dev/null 2>&1 || true ;;
    s3) MOTO_PORT=$BENCH_S3_MOTO_PORT MOTO_DATA=$BENCH_S3_MOTO_DATA "$HERE/moto.sh" stop >/dev/null 2>&1 || true ;;
    jdbc-mysql) mariadb_sh stop >/dev/null 2>&1 || true ;;
  esac
  "$HERE/cluster.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$HERE/cluster.sh" destroy >/dev/null 2>&1 || true
rm -rf "$ROOT"
mkdir -p "$ROOT" "$BENCH_OUT"
id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
chown postgres "$BENCH_OUT"
"$HERE/cluster.sh" start >&2
# The jdbc-mysql target: a fresh MariaDB of its own (stopped in cleanup).
[ "$BENCH_SINK" != jdbc-mysql ] || mariadb_sh start >&2

python3 - <<'PY'
import atexit, glob, json, os, subprocess, sys, time
import psycopg

sys.path.insert(0, os.environ["BENCH_HERE"])

N = int(os.environ["BENCH_N"])
PORT = os.environ["PGSINK_PORT"]
OUT = os.environ["BENCH_OUT"]
ROOT = os.environ["BENCH_ROOT"]
HERE = os.environ["BENCH_HERE"]
TIMEOUT = float(os.environ["BENCH_TIMEOUT"])
BATCH = os.environ.get("PGSINK_BATCH") or None
SINK = os.environ["BENCH_SINK"]
TXN_ROWS = int(os.environ.get("BENCH_TXN_ROWS") or 50000)
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"
MIB = 1 << 20


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(f"FAILED: {msg}")
    sys.exit(1)


conn = psycopg.connect(DSN, autocommit=True)


def one(sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def wait_for(what, pred, timeout=60.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    fail(f"timed out waiting for {what}")


def sink_error():
    return one("SELECT last_error FROM sink.status WHERE name = 'bench'")


def worker_pids():
    return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_sink worker'")]


def proc_mem_kib(pid):
    """(VmHWM, RssAnon) in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmHWM"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def count_records(ext, data):
    """Records in one file's bytes: Parquet rows, CSV lines less the header, lines."""
    if ext == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    n = data.count(b"\n")
    return n - 1 if ext == "csv" and n else n


def start_moto(port, data):
    """A moto server (scripts/moto.sh), stopped by its pid at exit."""
    menv = dict(os.environ, MOTO_PORT=str(port), MOTO_DATA=data)
    moto_sh = os.path.join(HERE, "moto.sh")
    subprocess.run([moto_sh, "start"], env=menv, check=True, stdout=sys.stderr)
    atexit.register(lambda: subprocess.run([moto_sh, "stop"], env=menv, stdout=sys.stderr))
    return f"http://127.0.0.1:{port}"


# 1-2. extension and table
conn.execute("CREATE EXTENSION pg_sink")
conn.execute("CREATE TABLE bench (id bigint PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[])")

# 3. baseline publication and slot, before the workload
conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
conn.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")

# 4. the sink's target, then the sink: wait for its slot, then pause it and wait
# for its worker to leave
FORMAT = os.environ.get("BENCH_FORMAT", "json")
if FORMAT not in ("json", "avro"):
    fail(f"BENCH_FORMAT must be json or avro, not {FORMAT!r}")
FILE_FORMAT = None
if SINK in ("parquet", "s3"):
    FILE_FORMAT = os.environ.get("BENCH_FILE_FORMAT") or ("parquet" if SINK == "parquet" else "jsonl")
    allowed = ("parquet", "csv") if SINK == "parquet" else ("jsonl", "csv", "parquet")
    if FILE_FORMAT not in allowed:
        fail(f"BENCH_FILE_FORMAT must be {' or '.join(allowed)} for BENCH_SINK={SINK}, not {FILE_FORMAT!r}")
sink_desc = f"{SINK}, upsert, {FORMAT.upper()}"
ENVELOPE = "upsert"

if SINK == "file":
    connector, sink_opts = "file", {"path": OUT}
elif SINK == "parquet":
    # The file connector writing Parquet (or CSV) instead of JSON lines.
    connector, sink_opts = "file", {"path": OUT, "file_format": FILE_FORMAT}
    sink_desc = f"file, {FILE_FORMAT}, upsert"
elif SINK == "iceberg":
    connector, sink_opts = "iceberg", {"warehouse.path": f"file://{OUT}/warehouse", "database.name": "bench", "table.name": "bench"}
    ENVELOPE = "append-only"
    sink_desc = "iceberg, SQL catalog here, local files, append-only"
elif SINK == "nats":
    # Core NATS on the machine's server; nothing subscribes, so this measures the
    # sink up to a flushed publish.
    connector, sink_opts = "nats", {"server_url": os.environ.get("BENCH_NATS", "127.0.0.1:4222"), "subject": "pgsink.bench"}
elif SINK == "kinesis":
    # Kinesis on a moto server: a Python emulator, so this measures the sink
    # against moto's speed.
    import boto3
    endpoint = start_moto(os.environ["BENCH_KINESIS_MOTO_PORT"], os.environ["BENCH_KINESIS_MOTO_DATA"])
    kin = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    kin.create_stream(StreamName="bench", ShardCount=4)
    connector, sink_opts = "kinesis", {"stream": "bench", "aws.region": "us-east-1", "endpoint": endpoint,
                                       "aws.credentials.access_key_id": "a", "aws.credentials.secret_access_key": "b"}
elif SINK == "s3":
    # S3 on a moto server: bucket `bench`, objects under cdc/bench/.
    import bench_ceilings
    endpoint = start_moto(os.environ["BENCH_S3_MOTO_PORT"], os.environ["BENCH_S3_MOTO_DATA"])
    s3 = bench_ceilings.s3_client(endpoint)
    s3.create_bucket(Bucket="bench")
    connector, sink_opts = "s3", {"location": "s3://bench/cdc", "endpoint": endpoint, "aws.region": "us-east-1",
                                  "aws.credentials.access_key_id": "testing", "aws.credentials.secret_access_key": "testing",
                                  "file_format": FILE_FORMAT}
    sink_desc = f"s3, {FILE_FORMAT}, upsert, {FORMAT.upper()}"
elif SINK == "webhook":
    # A local receiver in its own process (scripts/bench_webhook.py), stopped by pid.
    import urllib.request
    import bench_webhook
    WH_FORMAT = os.environ.get("BENCH_WEBHOOK_FORMAT") or "json"
    if WH_FORMAT not in ("json", "ndjson"):
        fail(f"BENCH_WEBHOOK_FORMAT must be json or ndjson, not {WH_FORMAT!r}")
    WH_CONNS = int(os.environ.get("BENCH_WEBHOOK_CONNS") or 1)
    port_file, pid_file = os.path.join(ROOT, "webhook.port"), os.path.join(ROOT, "webhook.pid")
    receiver = subprocess.Popen([sys.executable, os.path.join(HERE, "bench_webhook.py"), "serve",
                                 "--port-file", port_file, "--pid-file", pid_file], stdout=sys.stderr)

    def stop_receiver():
        if receiver.poll() is None:
            receiver.terminate()
            try:
                receiver.wait(5)
            except subprocess.TimeoutExpired:
                receiver.kill()
                receiver.wait()
    atexit.register(stop_receiver)
    wait_for("the webhook receiver", lambda: os.path.exists(port_file) or receiver.poll() is not None, timeout=30)
    if receiver.poll() is not None:
        fail(f"the webhook receiver exited with {receiver.returncode}")
    with open(port_file) as f:
        WH_BASE = f"http://127.0.0.1:{int(f.read())}"
    connector, sink_opts = "webhook", {"url": f"{WH_BASE}/sink", "batch_format": WH_FORMAT}
    sink_desc = f"webhook, {WH_FORMAT} bodies, upsert, {FORMAT.upper()}"
elif SINK == "jdbc-mysql":
    import pymysql
    import bench_ceilings
    # The MariaDB the bash part started (scripts/mariadb.sh).
    MY_HOST, _, MY_PORT = os.environ["BENCH_MYSQL"].partition(":")
    MY_PORT = int(MY_PORT)
    MY_DB = "pg_sink_bench"

    def my_connect(database=None, autocommit=True):
        return pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="", database=database,
                               charset="utf8mb4", autocommit=autocommit, connect_timeout=10)

    def my_run(*stmts):
        c = my_connect()
        try:
            with c.cursor() as cur:
                for st in stmts:
                    cur.execute(st)
        finally:
            c.close()
    try:
        my_run(f"DROP DATABASE IF EXISTS {MY_DB}", f"CREATE DATABASE {MY_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    except pymysql.err.OperationalError as e:
        fail(f"MariaDB is not reachable as root on {MY_HOST}:{MY_PORT}: {e}")
    def drop_my_db():
        try:
            my_run("SET SESSION lock_wait_timeout = 30", f"DROP DATABASE IF EXISTS {MY_DB}")
        except pymysql.err.MySQLError as e:
            log(f"note: could not drop MariaDB database {MY_DB}: {e}")
    atexit.register(drop_my_db)
    my_run(bench_ceilings.MYSQL_DDL.format(t=f"{MY_DB}.bench"), bench_ceilings.MYSQL_DDL.format(t=f"{MY_DB}.bench_ceiling"))
    connector, sink_opts = "jdbc", {"jdbc.url": f"jdbc:mysql://{MY_HOST}:{MY_PORT}/{MY_DB}", "user": "root", "table.name": "bench"}
    sink_desc = f"jdbc, MariaDB {MY_HOST}:{MY_PORT}, upsert"
elif SINK == "jdbc-postgres":
    import bench_ceilings
    PG_DB = "bench_target"
    conn.execute(f"CREATE DATABASE {PG_DB}")
    TDSN = f"host=127.0.0.1 port={PORT} user=postgres dbname={PG_DB}"
    with psycopg.connect(TDSN, autocommit=True) as t:
        t.execute(bench_ceilings.PG_DDL.format(t="bench"))
        t.execute(bench_ceilings.PG_DDL.format(t="bench_ceiling"))
    connector, sink_opts = "jdbc", {"jdbc.url": f"jdbc:postgresql://127.0.0.1:{PORT}/{PG_DB}?user=postgres", "table.name": "bench"}
    sink_desc = f"jdbc, PostgreSQL {PG_DB}, upsert"
DEBEZIUM = os.environ.get("BENCH_DEBEZIUM", "")
if DEBEZIUM:
    if DEBEZIUM not in ("plain", "compat") or SINK not in ("file", "nats"):
        fail(f"BENCH_DEBEZIUM must be plain or compat, with BENCH_SINK=file or nats, not {DEBEZIUM!r} with {SINK}")
    ENVELOPE = "debezium"
    if DEBEZIUM == "compat":
        sink_opts["debezium.compat"] = True
    sink_desc = f"{SINK}, debezium{' compat' if DEBEZIUM == 'compat' else ''}, {FORMAT.upper()}"
conn.execute(
    "SELECT sink.create_sink('bench', 'bench', %s, %s::jsonb, envelope => %s, format => %s, snapshot => false)",
    (connector, json.dumps(sink_opts), ENVELOPE, FORMAT),
)
wait_for("the sink's slot (sink.status.confirmed_lsn)",
         lambda: one("SELECT confirmed_lsn IS NOT NULL FROM sink.status WHERE name = 'bench'") or bool(sink_error()))
if sink_error():
    fail(f"sink error before the workload: {sink_error()}")
conn.execute("SELECT sink.pause_sink('bench')")
wait_for("the paused sink's worker to exit", lambda: not worker_pids(), timeout=30)

# 5. workload: N inserts in TXN_ROWS-row transactions, generated server-side
start_lsn = one("SELECT pg_current_wal_lsn()::text")
t = time.monotonic()
for lo in range(1, N + 1, TXN_ROWS):
    hi = min(lo + TXN_ROWS - 1, N)
    conn.execute(
        "INSERT INTO bench "
        "SELECT g, left(repeat(md5(g::text), 4), 100), (g %% 10000000) / 100.0, "
        "       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
        "       ARRAY['a' || g %% 10, 'b' || g %% 100, 'c' || g %% 1000] "
        "FROM generate_series(%s::bigint, %s::bigint) g",
        (lo, hi),
    )
load_s = time.monotonic() - t
# Flush dirty buffers now so a checkpoint does not land in a timed phase.
conn.execute("CHECKPOINT")
END = one("SELECT pg_current_wal_lsn()::text")
wal_bytes = int(one("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (END, start_lsn)))
log(f"loaded {N} rows in {load_s:.2f} s, {wal_bytes / 2**20:.1f} MiB of WAL, END = {END}")

# 6. baseline: pg_recvlogical to END
cmd = ["pg_recvlogical", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", "postgres",
       "--slot", "bench_recv", "--start", "-o", "proto_version=1", "-o", "publication_names=bench_pub",
       f"--endpos={END}", "--no-loop", "-f", "/dev/null"]
t = time.monotonic()
try:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
except subprocess.TimeoutExpired:
    fail(f"pg_recvlogical did not reach {END} within {TIMEOUT:g} s")
base_s = time.monotonic() - t
if r.returncode != 0:
    fail(f"pg_recvlogical exited {r.returncode}: {r.stderr.strip()}")
base_confirmed = one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bench_recv'")
log(f"baseline: {base_s:.3f} s (slot bench_recv confirmed {base_confirmed})")

# 7. the sink: resume, poll progress every 50 ms, sample the worker's memory
if BATCH:
    conn.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = %s" % int(BATCH))
    conn.execute("SELECT pg_reload_conf()")

    def reloaded():
        with psycopg.connect(DSN, autocommit=True) as c:
            return c.execute("SHOW pg_sink.max_batch_changes").fetchone()[0] == str(int(BATCH))
    wait_for("the reload of pg_sink.max_batch_changes", reloaded, timeout=10, interval=0.1)
batch_setting = one("SHOW pg_sink.max_batch_changes")

peak_hwm = {}   # pid -> max VmHWM KiB
peak_anon = {}  # pid -> max RssAnon KiB


def sample():
    for pid in worker_pids():
        m = proc_mem_kib(pid)
        if m:
            peak_hwm[pid] = max(peak_hwm.get(pid, 0), m[0])
            peak_anon[pid] = max(peak_anon.get(pid, 0), m[1])


first_worker_s = None
t = time.monotonic()
conn.execute("SELECT sink.resume_sink('bench')")
while True:
    now = time.monotonic()
    done = one("SELECT confirmed_lsn >= %s::pg_lsn FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id WHERE s.name = 'bench'", (END,))
    if done:
        sink_s = now - t  # the time of the poll that first saw it
        break
    sample()
    if first_worker_s is None and peak_hwm:
        first_worker_s = time.monotonic() - t
    if now - t > TIMEOUT:
        fail(f"the sink did not reach {END} within {TIMEOUT:g} s; last_error: {sink_error()}")
    time.sleep(0.05)
sample()  # the worker stays up (idle); VmHWM now holds its lifetime peak
status = conn.execute(
    "SELECT confirmed_lsn::text, rows_delivered, bytes_delivered, transactions_delivered, batches, errors, last_error "
    "FROM sink.status WHERE name = 'bench'").fetchone()
confirmed, rows_delivered, bytes_delivered, txns, batches, errors, last_error = status
if errors:
    log(f"note: the sink recorded {errors} error(s); last: {last_error}")
if len(peak_hwm) > 1:
    log(f"note: more than one worker process was seen ({sorted(peak_hwm)}): it restarted")

# 8. correctness (records at the target, counted after timing) and the target's
# own ceiling
records = None      # records found at the target (None for nats: not readable)
where = ""          # what was counted, for the report
files, out_bytes = [], 0
ceiling = None      # (label, seconds, what it is the ceiling of)
ceiling_ok = True
if SINK in ("file", "parquet"):
    ext = FILE_FORMAT or "jsonl"
    files = sorted(glob.glob(os.path.join(OUT, "bench", f"*.{ext}")))
    records = 0
    for path in files:
        if ext == "parquet":
            with open(path, "rb") as f:
                records += count_records(ext, f.read())
            continue
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                records += chunk.count(b"\n")
        if ext == "csv":
            records -= 1  # the header
    out_bytes = sum(os.path.getsize(p) for p in files)
    where = f"{ext} records in {len(files)} files, {out_bytes / MIB:.1f} MiB"
elif SINK == "iceberg":
    # The table's current snapshot, through pyiceberg and the same SQL catalog.
    from pyiceberg.catalog.sql import SqlCatalog
    table = SqlCatalog("pg_sink", uri=f"postgresql+psycopg2://postgres@127.0.0.1:{PORT}/postgres",
                       warehouse=f"file://{OUT}/warehouse").load_table("bench.bench")
    snap = table.current_snapshot()
    records = int(snap.summary["total-records"]) if snap else 0
    files = [t.file.file_path for t in table.scan().plan_files()]
    file_rows = sum(t.file.record_count for t in table.scan().plan_files())
    if file_rows != records:
        log(f"note: the data files hold {file_rows} rows, the snapshot says {records}")
        records = file_rows
    out_bytes = sum(t.file.file_size_in_bytes for t in table.scan().plan_files())
    times = sorted(s.timestamp_ms for s in table.metadata.snapshots)
    gap = (times[-1] - times[0]) / (len(times) - 1) / 1000 if len(times) > 1 else 0.0
    where = f"rows in {len(files)} data files, {out_bytes / MIB:.1f} MiB, {len(times)} Iceberg commits, {gap:.3f} s apart on average"
elif SINK == "kinesis":
    # Every record in the stream, read back shard by shard.
    records = kinesis_bytes = 0
    for shard in kin.list_shards(StreamName="bench")["Shards"]:
        it = kin.get_shard_iterator(StreamName="bench", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            resp = kin.get_records(ShardIterator=it, Limit=10000)
            if not resp["Records"]:
                break
            records += len(resp["Records"])
            kinesis_bytes += sum(len(r["Data"]) + len(r["PartitionKey"]) for r in resp["Records"])
            it = resp.get("NextShardIterator")
    where = f"records in the Kinesis stream, {kinesis_bytes / MIB:.1f} MiB"
    # The emulator's own ceiling: boto3 PutRecords of N records of the same size
    # (500 per request, in order) into a fresh stream with as many shards. moto slows
    # down as a stream grows, so compare the sink with this, not with decoding.
    kin.create_stream(StreamName="bench_ceiling", ShardCount=4)
    avg = max(1, kinesis_bytes // max(1, records))
    t = time.monotonic()
    for lo in range(0, N, 500):
        recs = [{"Data": b"x" * avg, "PartitionKey": '{"id":%d}' % i} for i in range(lo, min(lo + 500, N))]
        kin.put_records(StreamName="bench_ceiling", Records=recs)
    ceiling = ("emulator ceiling (boto3 PutRecords, 500/request)", time.monotonic() - t, "emulator ceiling")
elif SINK == "s3":
    # The sink's objects (data files and manifests), their sizes, and the records
    # in the data files.
    listed = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="cdc/bench/")
              for o in page.get("Contents", [])]
    listed.sort(key=lambda o: (o["LastModified"], o["Key"]))
    data = [o for o in listed if o["Key"].endswith(f".{FILE_FORMAT}") and "/_manifest/" not in o["Key"]]
    records = sum(count_records(FILE_FORMAT, s3.get_object(Bucket="bench", Key=o["Key"])["Body"].read()) for o in data)
    files = [o["Key"] for o in data]
    out_bytes = sum(o["Size"] for o in data)
    sizes = [o["Size"] for o in listed]
    where = (f"{FILE_FORMAT} records in {len(data)} objects, {out_bytes / MIB:.1f} MiB "
             f"(+ {len(listed) - len(data)} other objects, {(sum(sizes) - out_bytes) / MIB:.2f} MiB)")
    # The emulator's ceiling: boto3 PUTs the same number of objects of the same
    # sizes, one at a time, into another bucket.
    ceil_s, n_obj = bench_ceilings.s3_ceiling(s3, "bench-ceiling", sizes)
    ceiling = (f"emulator ceiling (boto3 PUT x {n_obj}, {sum(sizes) / MIB:.1f} MiB)", ceil_s, "emulator ceiling")
elif SINK == "webhook":
    def wh_stats():
        with urllib.request.urlopen(f"{WH_BASE}/stats", timeout=60) as resp:
            return json.load(resp)
    got = wh_stats().get("/sink") or {"requests": 0, "records": 0, "bytes": 0, "plan": []}
    records, out_bytes = got["records"], got["bytes"]
    where = f"records received in {got['requests']} requests, {out_bytes / MIB:.1f} MiB"
    # The receiver's ceiling: bodies of the same sizes and record counts, POSTed
    # by a Python client over keep-alive connections.
    res = bench_webhook.run_ceiling(f"{WH_BASE}/ceiling", [tuple(p) for p in got["plan"]], WH_FORMAT, WH_CONNS)
    back = wh_stats().get("/ceiling") or {"records": 0, "bytes": 0}
    ceiling_ok = back["records"] == records and back["bytes"] == out_bytes
    if not ceiling_ok:
        log(f"note: the ceiling client's requests arrived as {back['records']} records, {back['bytes']} bytes "
            f"(the sink's: {records}, {out_bytes})")
    ceiling = (f"receiver ceiling (Python client, {res['conns']} conn, {res['requests']} POSTs)", res["seconds"], "receiver ceiling")
elif SINK in ("jdbc-mysql", "jdbc-postgres"):
    # The ceiling commits as many rows per transaction as the sink's batches hold:
    # a batch is one target transaction of whole source transactions, closed once
    # it has pg_sink.max_batch_changes changes (so at least one 50000-row one).
    ceil_txn = min(N, -(-int(batch_setting) // TXN_ROWS) * TXN_ROWS)
    src = psycopg.connect(DSN, autocommit=True)
    if SINK == "jdbc-mysql":
        my = my_connect(MY_DB, autocommit=False)
        with my.cursor() as cur:
            cur.execute("SELECT count(*) FROM bench")
            records = cur.fetchone()[0]
        my.commit()
        ceil_s, written = bench_ceilings.mysql_ceiling(src, "bench", N, ceil_txn, my, "bench_ceiling")
        with my.cursor() as cur:
            cur.execute("SELECT count(*) FROM bench_ceiling")
            ceiling_rows = cur.fetchone()[0]
        my.close()
        ceiling = (f"target ceiling (PyMySQL, {ceil_txn}-row transactions)", ceil_s, "target ceiling")
    else:
        dst = psycopg.connect(TDSN)
        records = dst.execute("SELECT count(*) FROM bench").fetchone()[0]
        dst.commit()
        ceil_s, written = bench_ceilings.pg_ceiling(src, "bench", N, ceil_txn, dst, "bench_ceiling")
        ceiling_rows = dst.execute("SELECT count(*) FROM bench_ceiling").fetchone()[0]
        dst.close()
        ceiling = (f"target ceiling (psycopg, {ceil_txn}-row transactions)", ceil_s, "target ceiling")
    src.close()
    ceiling_ok = written == N and ceiling_rows == N
    if not ceiling_ok:
        log(f"note: the ceiling client wrote {written} rows, its table has {ceiling_rows} (expected {N})")
    where = "rows in table bench of the target"

# 9. report
base_rps = N / base_s
sink_rps = N / sink_s
ratio = sink_rps / base_rps
ceil_rps = N / max(ceiling[1], 1e-9) if ceiling else None
ratio_ceiling = sink_rps / ceil_rps if ceiling else None
hwm_mib = max(peak_hwm.values()) / 1024 if peak_hwm else None
anon_mib = max(peak_anon.values()) / 1024 if peak_anon else None
ok = (records == N if records is not None else rows_delivered == N) and ceiling_ok
fmt_mib = lambda v: "n/a (worker never seen)" if v is None else f"{v:.1f} MiB"
print(f"pg_sink benchmark: N = {N} inserts in {TXN_ROWS}-row transactions, "
      f"{wal_bytes / 2**20:.1f} MiB WAL, pg_sink.max_batch_changes = {batch_setting}")
print(f"  {'baseline (pg_recvlogical, pgoutput -> /dev/null)':<50}{base_s:9.3f} s {base_rps:12,.0f} rows/s")
print(f"  {'sink     (' + sink_desc + ')':<50}{sink_s:9.3f} s {sink_rps:12,.0f} rows/s"
      + (f"   (worker up after {first_worker_s:.2f} s; {batches} batches)" if first_worker_s is not None else f"   ({batches} batches)"))
if ceiling:
    print(f"  {ceiling[0]:<50}{ceiling[1]:9.3f} s {ceil_rps:12,.0f} rows/s")
print(f"  {'ratio (sink rows/s / baseline rows/s):':<50}{ratio:9.3f}")
if ceiling:
    print(f"  {'ratio (sink rows/s / ' + ceiling[2] + ' rows/s):':<50}{ratio_ceiling:9.3f}")
print(f"  {'worker peak RSS (VmHWM):':<50}{fmt_mib(hwm_mib)}   (private RssAnon peak {fmt_mib(anon_mib)})")
if records is not None:
    print(f"  {'records at the target:':<50}{records}" + ("  OK" if records == N else f"  MISMATCH: expected {N}") + f"   ({where})")
else:
    print(f"  {'rows delivered (sink.status):':<50}{rows_delivered}" + ("  OK" if rows_delivered == N else f"  MISMATCH: expected {N}"))
print(json.dumps({
    "n": N,
    "sink": SINK,
    "file_format": FILE_FORMAT,
    "txn_rows": TXN_ROWS,
    "max_batch_changes": int(batch_setting),
    "wal_bytes": wal_bytes,
    "load_s": round(load_s, 3),
    "baseline_s": round(base_s, 3),
    "baseline_rows_per_s": round(base_rps, 1),
    "sink_s": round(sink_s, 3),
    "sink_rows_per_s": round(sink_rps, 1),
    "ratio": round(ratio, 3),
    "ceiling": ceiling[0] if ceiling else None,
    "ceiling_s": round(ceiling[1], 3) if ceiling else None,
    "ceiling_rows_per_s": round(ceil_rps, 1) if ceiling else None,
    "ratio_vs_ceiling": round(ratio_ceiling, 3) if ceiling else None,
    "worker_start_s": None if first_worker_s is None else round(first_worker_s, 3),
    "worker_peak_rss_mib": None if hwm_mib is None else round(hwm_mib, 1),
    "worker_peak_anon_mib": None if anon_mib is None else round(anon_mib, 1),
    "batches": batches,
    "rows_delivered": rows_delivered,
    "sink_errors": errors,
    "output_files": len(files),
    "output_bytes": out_bytes,
    "output_lines": records,
    "format": FORMAT,
    "output_ok": ok,
}), flush=True)
sys.exit(0 if ok else 1)
PY
