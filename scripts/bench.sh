#!/usr/bin/env bash
# pg_sink throughput benchmark (a benchmark, not a test).
#
#   scripts/bench.sh [N]          N = number of changes (default $BENCH_N or 1000000)
#
# What it measures: how fast a pg_sink `file` sink (upsert envelope, JSON lines)
# drains a backlog of N inserts from its replication slot, compared with the
# cheapest possible consumer of the same backlog: pg_recvlogical reading the same
# table through pgoutput into /dev/null.
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
#             looks every 500 ms, shown as "worker up after"), decoding, JSON
#             encoding, writing and fsyncing the files, and the catalog updates.
# The worker's peak RSS is VmHWM from /proc/<pid>/status (max over samples; it
# counts shared memory the worker touched, e.g. shared_buffers pages, so the
# anonymous (private) peak RssAnon is shown next to it).
# Correctness check (cheap): lines in <out>/bench/*.jsonl must equal N.
#
# Reading the ratio: ratio = sink rows/s ÷ baseline rows/s. 1.000 means the sink
# keeps up with a bare pgoutput stream that does no encoding and no I/O; 0.5 means
# it takes twice as long as the baseline to drain the same backlog. Values above 1
# are possible (the sink decodes through the SQL slot interface in batches, with
# no network hop). Small N is dominated by fixed costs (worker start, polling),
# so compare ratios only at the same N.
#
# Env: BENCH_SINK (file, the default; nats: core NATS on BENCH_NATS, default
# 127.0.0.1:4222; kinesis: a 4-shard stream on a moto server this script starts),
# BENCH_FORMAT (json, the default, or avro: plain Avro datums, no registry), BENCH_N (changes), PGSINK_BATCH (if set: ALTER SYSTEM SET
# pg_sink.max_batch_changes + reload before resuming), BENCH_TIMEOUT (seconds per
# timed phase, default 3600).
# The last line of output is one JSON object with all the numbers. The cluster is
# stopped on exit (also on failure); its data dir and server.log stay in
# /tmp/pg_sink_bench until the next run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=/tmp/pg_sink_bench
export PGSINK_DATA=$ROOT/data PGSINK_PORT=5497
export BENCH_N=${1:-${BENCH_N:-1000000}}
export BENCH_OUT=$ROOT/out
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
export PGSINK_BATCH=${PGSINK_BATCH:-}
export BENCH_HERE=$HERE

case "$BENCH_N" in ''|*[!0-9]*) echo "bench.sh: N must be a positive integer, got '$BENCH_N'" >&2; exit 2 ;; esac
[ "$BENCH_N" -gt 0 ] || { echo "bench.sh: N must be > 0" >&2; exit 2; }

cleanup() {
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

python3 - <<'PY'
import glob, json, os, subprocess, sys, time
import psycopg

N = int(os.environ["BENCH_N"])
PORT = os.environ["PGSINK_PORT"]
OUT = os.environ["BENCH_OUT"]
TIMEOUT = float(os.environ["BENCH_TIMEOUT"])
BATCH = os.environ.get("PGSINK_BATCH") or None
TXN_ROWS = 50000
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"


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


# 1-2. extension and table
conn.execute("CREATE EXTENSION pg_sink")
conn.execute("CREATE TABLE bench (id bigint PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[])")

# 3. baseline publication and slot, before the workload
conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
conn.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")

# 4. the sink: wait for its slot, then pause it and wait for its worker to leave
SINK = os.environ.get("BENCH_SINK", "file")
if SINK == "file":
    connector, sink_opts = "file", {"path": OUT}
elif SINK == "nats":
    # Core NATS on the machine's server; nothing subscribes, so this measures the
    # sink up to a flushed publish.
    connector, sink_opts = "nats", {"server_url": os.environ.get("BENCH_NATS", "127.0.0.1:4222"), "subject": "pgsink.bench"}
elif SINK == "kinesis":
    # Kinesis on a moto server started here (scripts/moto.sh, port 15020, stopped at
    # exit): a Python emulator, so this measures the sink against moto's speed.
    import atexit
    import boto3
    menv = dict(os.environ, MOTO_PORT="15020", MOTO_DATA="/tmp/pg_sink_bench_moto")
    moto_sh = os.path.join(os.environ["BENCH_HERE"], "moto.sh")
    subprocess.run([moto_sh, "start"], env=menv, check=True, stdout=sys.stderr)
    atexit.register(lambda: subprocess.run([moto_sh, "stop"], env=menv, stdout=sys.stderr))
    kin = boto3.client("kinesis", endpoint_url="http://127.0.0.1:15020", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    kin.create_stream(StreamName="bench", ShardCount=4)
    connector, sink_opts = "kinesis", {"stream": "bench", "aws.region": "us-east-1", "endpoint": "http://127.0.0.1:15020",
                                       "aws.credentials.access_key_id": "a", "aws.credentials.secret_access_key": "b"}
else:
    fail(f"BENCH_SINK must be file, nats or kinesis, not {SINK!r}")
FORMAT = os.environ.get("BENCH_FORMAT", "json")
if FORMAT not in ("json", "avro"):
    fail(f"BENCH_FORMAT must be json or avro, not {FORMAT!r}")
conn.execute(
    "SELECT sink.create_sink('bench', 'bench', %s, %s::jsonb, envelope => 'upsert', format => %s, snapshot => false)",
    (connector, json.dumps(sink_opts), FORMAT),
)
wait_for("the sink's slot (sink.status.confirmed_lsn)",
         lambda: one("SELECT confirmed_lsn IS NOT NULL FROM sink.status WHERE name = 'bench'") or bool(sink_error()))
if sink_error():
    fail(f"sink error before the workload: {sink_error()}")
conn.execute("SELECT sink.pause_sink('bench')")
wait_for("the paused sink's worker to exit", lambda: not worker_pids(), timeout=30)

# 5. workload: N inserts in 50000-row transactions, generated server-side
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

# 8. correctness: lines in the sink's output files
files = sorted(glob.glob(os.path.join(OUT, "bench", "*.jsonl")))
lines = 0
for path in files:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
out_bytes = sum(os.path.getsize(p) for p in files)
if SINK == "kinesis":
    # Every record in the stream, read back shard by shard (after timing).
    lines = kinesis_bytes = 0
    for shard in kin.list_shards(StreamName="bench")["Shards"]:
        it = kin.get_shard_iterator(StreamName="bench", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            resp = kin.get_records(ShardIterator=it, Limit=10000)
            if not resp["Records"]:
                break
            lines += len(resp["Records"])
            kinesis_bytes += sum(len(r["Data"]) + len(r["PartitionKey"]) for r in resp["Records"])
            it = resp.get("NextShardIterator")
    log(f"records in the Kinesis stream: {lines}")
    # The emulator's own ceiling: boto3 PutRecords of N records of the same size
    # (500 per request, in order) into a fresh stream with as many shards. moto slows
    # down as a stream grows, so compare the sink with this, not with decoding.
    kin.create_stream(StreamName="bench_ceiling", ShardCount=4)
    avg = max(1, kinesis_bytes // max(1, lines))
    t = time.monotonic()
    for lo in range(0, N, 500):
        recs = [{"Data": b"x" * avg, "PartitionKey": '{"id":%d}' % i} for i in range(lo, min(lo + 500, N))]
        kin.put_records(StreamName="bench_ceiling", Records=recs)
    ceiling_s = time.monotonic() - t

# 9. report
base_rps = N / base_s
sink_rps = N / sink_s
ratio = sink_rps / base_rps
hwm_mib = max(peak_hwm.values()) / 1024 if peak_hwm else None
anon_mib = max(peak_anon.values()) / 1024 if peak_anon else None
ok = lines == N if SINK in ("file", "kinesis") else rows_delivered == N
fmt_mib = lambda v: "n/a (worker never seen)" if v is None else f"{v:.1f} MiB"
print(f"pg_sink benchmark: N = {N} inserts in {TXN_ROWS}-row transactions, "
      f"{wal_bytes / 2**20:.1f} MiB WAL, pg_sink.max_batch_changes = {batch_setting}")
print(f"  baseline (pg_recvlogical, pgoutput -> /dev/null): {base_s:9.3f} s {base_rps:12,.0f} rows/s")
print(f"  {'sink     (' + SINK + ', upsert, ' + FORMAT.upper() + ')':<50}{sink_s:9.3f} s {sink_rps:12,.0f} rows/s"
      + (f"   (worker up after {first_worker_s:.2f} s; {batches} batches)" if first_worker_s is not None else f"   ({batches} batches)"))
print(f"  ratio (sink rows/s / baseline rows/s):           {ratio:9.3f}")
if SINK == "kinesis":
    print(f"  emulator ceiling (boto3 PutRecords, 500/request): {ceiling_s:9.3f} s {N / ceiling_s:12,.0f} rows/s")
    print(f"  ratio (sink rows/s / emulator ceiling rows/s):    {(N / sink_s) / (N / ceiling_s):9.3f}")
print(f"  worker peak RSS (VmHWM):                          {fmt_mib(hwm_mib)}   (private RssAnon peak {fmt_mib(anon_mib)})")
if SINK == "file":
    print(f"  output lines:                                     {lines} in {len(files)} files, {out_bytes / 2**20:.1f} MiB"
          + ("  OK" if ok else f"  MISMATCH: expected {N}"))
else:
    print(f"  rows delivered (sink.status):                     {rows_delivered}" + ("  OK" if ok else f"  MISMATCH: expected {N}"))
print(json.dumps({
    "n": N,
    "sink": SINK,
    "txn_rows": TXN_ROWS,
    "max_batch_changes": int(batch_setting),
    "wal_bytes": wal_bytes,
    "load_s": round(load_s, 3),
    "baseline_s": round(base_s, 3),
    "baseline_rows_per_s": round(base_rps, 1),
    "sink_s": round(sink_s, 3),
    "sink_rows_per_s": round(sink_rps, 1),
    "ratio": round(ratio, 3),
    "worker_start_s": None if first_worker_s is None else round(first_worker_s, 3),
    "worker_peak_rss_mib": None if hwm_mib is None else round(hwm_mib, 1),
    "worker_peak_anon_mib": None if anon_mib is None else round(anon_mib, 1),
    "batches": batches,
    "rows_delivered": rows_delivered,
    "sink_errors": errors,
    "output_files": len(files),
    "output_bytes": out_bytes,
    "output_lines": lines,
    "format": FORMAT,
    "output_ok": ok,
}), flush=True)
sys.exit(0 if ok else 1)
PY
