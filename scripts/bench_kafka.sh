#!/usr/bin/env bash
# pg_sink Kafka benchmark (a benchmark, not a test).
#
#   scripts/bench_kafka.sh [N]    N = number of changes (default $BENCH_N or 1000000)
#
# Two parts, one run, on a throwaway cluster (scripts/cluster.sh, data
# /tmp/pg_sink_benchk/data, port 5494) and a throwaway Kafka-protocol broker
# (scripts/kafka.sh: noida-db, 127.0.0.1:19094, data /tmp/pg_sink_benchk/kafka,
# wiped at the start). Both are stopped on exit (also on failure) by their pids.
#
# 1. Throughput. Three consumers of the same backlog of N inserts into
#    bench(id bigint primary key, payload text, amount numeric(12,2), at timestamptz,
#    tags text[]), loaded in 50000-row transactions while all three are idle (their
#    slots exist before the load; the sink is paused), then CHECKPOINT and
#    END = pg_current_wal_lsn(). Timed one after the other:
#    a. decode limit: pg_recvlogical, pgoutput (publication bench_pub) -> /dev/null,
#       --endpos=END; wall time (monotonic).
#    b. the pipe: pg_recvlogical with wal2json (-o format-version=2, one JSON line
#       per change; add-tables=public.bench so it sees what the publication sees;
#       include-transaction=false so there are no begin/commit lines) piped into
#       `kcat -P -b 127.0.0.1:19094 -t bench-pipe` (librdkafka defaults: acks=all,
#       not idempotent, linger 5 ms, no transactions). Timed from the start until
#       both processes have exited (kcat waits for every delivery report).
#       Check: the high watermarks of bench-pipe (no transactions, so offsets =
#       messages) add up to >= N. The topic is then deleted, so the broker's state
#       is small again for (c) (see noida-db below).
#    c. the sink: sink.create_sink('bench', 'bench', 'kafka',
#       '{"brokers": "127.0.0.1:19094", "topic": "bench-sink"}', envelope => 'upsert',
#       snapshot => false): exactly-once (the default: one Kafka transaction per batch
#       plus a progress record). Resumed after the load; timed until
#       sink.progress.confirmed_lsn >= END (polled every 50 ms), which includes the
#       worker's start (the launcher looks every 500 ms; shown as "worker up after"),
#       the producer's init_transactions and progress-topic read, decoding, JSON
#       encoding, producing and committing each batch's transaction, and the catalog
#       updates. The worker's peak RSS is sampled as in scripts/bench.sh.
#       Check (cheap, reliable): rows_delivered in sink.status = N. Also shown: the
#       topic's high watermark, which should be N + one commit marker per batch per
#       partition. BENCH_READBACK=1 also counts the topic with a read_committed
#       consumer (slow for large N on noida-db).
#    Ratios: c/b (goal >= 2: the sink is at least twice the shell pipe people would
#    otherwise write) and c/a (goal >= 0.8 of the bare decode rate).
# 2. Latency at a steady BENCH_RATE rows/s (default 10000) for BENCH_SECONDS (default
#    20): table lat(id bigint primary key, t timestamptz), a sink on it like (c) with
#    topic bench-lat. A writer commits rows in one transaction every 10 ms
#    (100 rows at 10000 rows/s), paced by the wall clock (it catches up when late,
#    never sleeps to make up). A separate process runs a confluent-kafka consumer
#    (isolation.level=read_committed) on bench-lat; per message, latency = receive
#    time - the commit time in the header pg_sink-timestamp. That is commit ->
#    visible to a read_committed consumer: it includes the sink's idle poll
#    (pg_sink.poll_interval), decoding, producing, and the Kafka transaction commit
#    (the ack) before the consumer may see the batch. Before the writer starts, 10
#    warm-up rows are delivered (the first delivery starts the producer: shown, not
#    counted). All processes (Postgres, the worker, the broker, writer, consumer)
#    share the machine's cores. Also shown: the worst latency per second of commit
#    time, to tell a steady cost from a stall.
#
# noida-db (the broker here, scripts/kafka.sh) rewrites its whole state to disk about
# every second while anything changes, so it slows down as topics grow; this is why
# the broker starts empty and (b)'s and (c)'s topics are deleted when done with.
# Its fetch ignores byte limits: consumers set receive.message.max.bytes=1000000000.
# Idle consumers spin: they are closed as soon as they are done.
#
# The report warns when the installed pg_sink.so is a debug build (its sink figures
# are then several times worse than a release build's).
#
# Also reported: CPU per phase (the whole machine's busy cores, the broker's and the
# sink worker's CPU seconds, pg_recvlogical + kcat's), so a slow phase shows whether
# the broker or the worker was the busy one. Decoding for (a) and (b) runs in a
# walsender, counted only in the machine figure.
#
# Env: BENCH_N, BENCH_RATE, BENCH_SECONDS, BENCH_READBACK, PGSINK_BATCH (if set:
# ALTER SYSTEM SET pg_sink.max_batch_changes), BENCH_SINK_OPTIONS (JSON merged into
# both sinks' options, e.g. '{"exactly_once": false}'), BENCH_TIMEOUT (seconds per
# timed phase, default 3600). Installs postgresql-15-wal2json and kcat with apt-get
# when missing, and adds wal2json to output_plugin_libraries where the server has
# that setting (this machine's Postgres build allows only listed output plugins).
# The last line of output is one JSON object with all the numbers. Data dirs and
# logs (server.log, kafka/broker.log, pipe.stderr) stay in /tmp/pg_sink_benchk until
# the next run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=/tmp/pg_sink_benchk
export PGSINK_DATA=$ROOT/data PGSINK_PORT=5494
export KAFKA_PORT=19094 KAFKA_DATA=$ROOT/kafka
export BENCH_ROOT=$ROOT
export BENCH_N=${1:-${BENCH_N:-1000000}}
export BENCH_RATE=${BENCH_RATE:-10000}
export BENCH_SECONDS=${BENCH_SECONDS:-20}
export BENCH_READBACK=${BENCH_READBACK:-0}
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
export PGSINK_BATCH=${PGSINK_BATCH:-}
PGLIB=/usr/lib/postgresql/15/lib

for v in BENCH_N BENCH_RATE BENCH_SECONDS; do
  case "${!v}" in ''|*[!0-9]*) echo "bench_kafka.sh: $v must be a positive integer, got '${!v}'" >&2; exit 2 ;; esac
  [ "${!v}" -gt 0 ] || { echo "bench_kafka.sh: $v must be > 0" >&2; exit 2; }
done

# Tools for the pipe (b).
missing=()
[ -f "$PGLIB/wal2json.so" ] || missing+=(postgresql-15-wal2json)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bench] installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
  [ -f "$PGLIB/wal2json.so" ] && command -v kcat >/dev/null 2>&1 || { echo "bench_kafka.sh: could not install ${missing[*]}" >&2; exit 1; }
fi
# A debug build (debug assertions: std's precondition checks are compiled in) is
# several times slower than a release build: say so in the report.
if grep -qa precondition_check "$PGLIB/pg_sink.so" 2>/dev/null; then export BENCH_BUILD=debug; else export BENCH_BUILD=release; fi
python3 -c 'import psycopg, confluent_kafka' 2>/dev/null \
  || { echo "bench_kafka.sh: needs the Python packages psycopg and confluent-kafka (bash scripts/setup.sh installs them)" >&2; exit 1; }

# Processes the Python part starts (pg_recvlogical, kcat, the latency consumer) are
# listed in this file as "pid comm", so they can be ended by pid if it dies.
CHILDREN=$ROOT/children.pids
# kafka.sh stop returns once noida-db's main thread has exited (state Z), but its
# other threads may still hold the port for a few seconds: wait for the port too.
port_free() { ! ss -Hltn "sport = :$KAFKA_PORT" 2>/dev/null | grep -q .; }
wait_port_free() {
  local i
  for i in $(seq 300); do port_free && return 0; sleep 0.1; done
  echo "[bench] note: 127.0.0.1:$KAFKA_PORT is still in use after 30 s" >&2
}
PYPID=
cleanup() {
  if [ -n "$PYPID" ] && kill -0 "$PYPID" 2>/dev/null; then
    kill -TERM "$PYPID" 2>/dev/null || true
    wait "$PYPID" 2>/dev/null || true
  fi
  if [ -f "$CHILDREN" ]; then
    while read -r pid comm; do
      [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && kill -TERM "$pid" 2>/dev/null || true
    done <"$CHILDREN"
  fi
  "$HERE/cluster.sh" stop >/dev/null 2>&1 || true
  "$HERE/kafka.sh" stop >/dev/null 2>&1 || true
  wait_port_free
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$HERE/cluster.sh" destroy >/dev/null 2>&1 || true
"$HERE/kafka.sh" stop >/dev/null 2>&1 || true
wait_port_free
rm -rf "$ROOT"
mkdir -p "$ROOT"
id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
"$HERE/cluster.sh" start >&2
"$HERE/kafka.sh" start >&2

# In the background, so a signal to this script ends the run at once (a foreground
# child would delay the traps until it finished).
python3 - <<'PY' &
import json, os, re, resource, subprocess, sys, time
import psycopg
import psycopg.sql
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

N = int(os.environ["BENCH_N"])
RATE = int(os.environ["BENCH_RATE"])
SECONDS = int(os.environ["BENCH_SECONDS"])
READBACK = os.environ.get("BENCH_READBACK", "0") not in ("", "0")
BUILD = os.environ.get("BENCH_BUILD", "release")
PORT = os.environ["PGSINK_PORT"]
ROOT = os.environ["BENCH_ROOT"]
BROKERS = f"127.0.0.1:{os.environ['KAFKA_PORT']}"
TIMEOUT = float(os.environ["BENCH_TIMEOUT"])
BATCH = os.environ.get("PGSINK_BATCH") or None
SINK_EXTRA = json.loads(os.environ.get("BENCH_SINK_OPTIONS") or "{}")
EXACTLY_ONCE = str(SINK_EXTRA.get("exactly_once", True)).lower() not in ("false", "0", "off", "no")
MODE = "exactly-once" if EXACTLY_ONCE else "at-least-once"
CHILDREN = os.path.join(ROOT, "children.pids")
TXN_ROWS = 50000
TICK = 0.01  # the latency writer commits every 10 ms
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"
# noida-db ignores fetch byte limits: allow large fetch responses.
CONSUMER_BASE = {"bootstrap.servers": BROKERS, "receive.message.max.bytes": 1000000000,
                 "enable.auto.commit": False, "auto.offset.reset": "earliest"}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(f"FAILED: {msg}")
    sys.exit(1)


children = []


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    children.append(p)
    try:
        with open(f"/proc/{p.pid}/comm") as f:
            comm = f.read().strip()
        with open(CHILDREN, "a") as f:
            f.write(f"{p.pid} {comm}\n")
    except OSError:
        pass
    return p


def end_children():
    for p in children:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


conn = psycopg.connect(DSN, autocommit=True)
admin = AdminClient({"bootstrap.servers": BROKERS})


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


def sink_error(name):
    return one("SELECT last_error FROM sink.status WHERE name = %s", (name,))


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


CLK = os.sysconf("SC_CLK_TCK")
with open(os.path.join(ROOT, "kafka", "broker.pid")) as f:
    BROKER_PID = int(f.read().split()[0])


def proc_cpu_s(pid):
    """utime + stime of a process in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_s():
    """CPU seconds the whole machine spent not idle (all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK


class Cpu:
    """CPU use over a timed phase: the machine (in cores) and the broker (in seconds)."""

    def __init__(self):
        self.m0, self.b0, self.t0 = machine_busy_s(), proc_cpu_s(BROKER_PID), time.monotonic()

    def stop(self):
        wall = time.monotonic() - self.t0
        self.cores = (machine_busy_s() - self.m0) / wall
        self.broker_s = proc_cpu_s(BROKER_PID) - self.b0
        return self


def confirmed_at_least(name, lsn):
    return one("SELECT p.confirmed_lsn >= %s::pg_lsn FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id "
               "WHERE s.name = %s", (lsn, name))


def topic_partitions(topic):
    md = admin.list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return []
    return sorted(t.partitions)


def high_watermarks(topic):
    """Sum of the partitions' high watermarks, and the partition count."""
    parts = topic_partitions(topic)
    c = Consumer(dict(CONSUMER_BASE, **{"group.id": f"bench-wm-{time.time()}"}))
    try:
        total = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()
    return total, len(parts)


def count_committed(topic, timeout):
    """Messages a read_committed consumer sees in the whole topic."""
    parts = topic_partitions(topic)
    c = Consumer(dict(CONSUMER_BASE, **{"group.id": f"bench-rb-{time.time()}", "isolation.level": "read_committed",
                                        "enable.partition.eof": True}))
    n = 0
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done = {p for p in parts if ends[p] == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(10000, 0.5):
                if m.error():
                    if m.error().code() == -191:  # partition EOF
                        done.add(m.partition())
                    continue
                n += 1
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
    finally:
        c.close()
    return n


def delete_topics(topics):
    for t, f in admin.delete_topics(topics, operation_timeout=30).items():
        try:
            f.result()
        except Exception as e:  # noqa: BLE001 - a leftover topic only costs the broker time
            log(f"note: could not delete topic {t}: {e}")


def recvlogical(slot, *opts, endpos, out):
    cmd = ["pg_recvlogical", "-h", "127.0.0.1", "-p", PORT, "-U", "postgres", "-d", "postgres",
           "--slot", slot, "--start", f"--endpos={endpos}", "--no-loop", "-f", out]
    for o in opts:
        cmd += ["-o", o]
    return cmd


def create_kafka_sink(name, table, topic):
    conn.execute(
        "SELECT sink.create_sink(%s, %s, 'kafka', %s::jsonb, envelope => 'upsert', snapshot => false)",
        (name, table, json.dumps(dict({"brokers": BROKERS, "topic": topic}, **SINK_EXTRA))),
    )
    wait_for(f"sink {name}'s slot (sink.status.confirmed_lsn)",
             lambda: one("SELECT confirmed_lsn IS NOT NULL FROM sink.status WHERE name = %s", (name,)) or bool(sink_error(name)))
    if sink_error(name):
        fail(f"sink {name} error before the workload: {sink_error(name)}")


try:
    conn.execute("CREATE EXTENSION pg_sink")
    if BATCH:
        conn.execute("ALTER SYSTEM SET pg_sink.max_batch_changes = %s" % int(BATCH))
        conn.execute("SELECT pg_reload_conf()")

        def reloaded():
            with psycopg.connect(DSN, autocommit=True) as c:
                return c.execute("SHOW pg_sink.max_batch_changes").fetchone()[0] == str(int(BATCH))
        wait_for("the reload of pg_sink.max_batch_changes", reloaded, timeout=10, interval=0.1)
    batch_setting = one("SHOW pg_sink.max_batch_changes")
    # This server only lets listed libraries be output plugins (output_plugin_libraries,
    # where it exists): add wal2json for the pipe.
    plugins = one("SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'")
    if plugins is not None and "wal2json" not in [p.strip() for p in plugins.split(",")]:
        libs = [p.strip() for p in plugins.split(",") if p.strip()] + ["wal2json"]
        conn.execute("ALTER SYSTEM SET output_plugin_libraries = " + ", ".join(psycopg.sql.quote(p) for p in libs))
        conn.execute("SELECT pg_reload_conf()")

        def plugins_reloaded():
            with psycopg.connect(DSN, autocommit=True) as c:
                return "wal2json" in c.execute("SHOW output_plugin_libraries").fetchone()[0]
        wait_for("the reload of output_plugin_libraries", plugins_reloaded, timeout=10, interval=0.1)
    poll_setting = one("SHOW pg_sink.poll_interval")

    # ---------------------------------------------------------------- 1. throughput
    conn.execute("CREATE TABLE bench (id bigint PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[])")
    conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
    conn.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
    conn.execute("SELECT pg_create_logical_replication_slot('bench_pipe', 'wal2json')")
    create_kafka_sink("bench", "bench", "bench-sink")
    conn.execute("SELECT sink.pause_sink('bench')")
    wait_for("the paused sink's worker to exit", lambda: not worker_pids(), timeout=30)

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
    conn.execute("CHECKPOINT")  # so a checkpoint does not land in a timed phase
    END = one("SELECT pg_current_wal_lsn()::text")
    wal_bytes = int(one("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (END, start_lsn)))
    log(f"loaded {N} rows in {load_s:.2f} s, {wal_bytes / 2**20:.1f} MiB of WAL, END = {END}")

    # a. decode limit
    cpu_a = Cpu()
    t = time.monotonic()
    try:
        r = subprocess.run(recvlogical("bench_recv", "proto_version=1", "publication_names=bench_pub", endpos=END, out="/dev/null"),
                           capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        fail(f"pg_recvlogical (pgoutput) did not reach {END} within {TIMEOUT:g} s")
    decode_s = time.monotonic() - t
    cpu_a.stop()
    if r.returncode != 0:
        fail(f"pg_recvlogical (pgoutput) exited {r.returncode}: {r.stderr.strip()}")
    log(f"a. decode limit: {decode_s:.3f} s")

    # b. the pipe: pg_recvlogical | kcat
    pipe_err = open(os.path.join(ROOT, "pipe.stderr"), "w")
    cpu_b = Cpu()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    p1 = spawn(recvlogical("bench_pipe", "format-version=2", "add-tables=public.bench", "include-transaction=false",
                           endpos=END, out="-"), stdout=subprocess.PIPE, stderr=pipe_err)
    p2 = spawn(["kcat", "-P", "-b", BROKERS, "-t", "bench-pipe"], stdin=p1.stdout, stderr=pipe_err)
    p1.stdout.close()  # kcat holds the read end; it sees EOF when pg_recvlogical exits
    try:
        rc1 = p1.wait(TIMEOUT)
        rc2 = p2.wait(max(1.0, TIMEOUT - (time.monotonic() - t)))
    except subprocess.TimeoutExpired:
        fail(f"the pipe did not finish within {TIMEOUT:g} s")
    pipe_s = time.monotonic() - t
    cpu_b.stop()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pipe_tools_cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    pipe_err.close()
    if rc1 != 0 or rc2 != 0:
        with open(os.path.join(ROOT, "pipe.stderr")) as f:
            err = f.read().strip()[-2000:]
        fail(f"the pipe failed: pg_recvlogical exited {rc1}, kcat exited {rc2}: {err}")
    pipe_msgs, pipe_parts = high_watermarks("bench-pipe")
    pipe_ok = pipe_msgs >= N
    log(f"b. pipe: {pipe_s:.3f} s, bench-pipe holds {pipe_msgs} messages in {pipe_parts} partition(s)")
    delete_topics(["bench-pipe"])
    time.sleep(2)  # let noida-db write out its smaller state before (c)

    # c. the sink
    peak_hwm, peak_anon = {}, {}

    first_worker_s = None
    worker_cpu = {}

    def sample():
        for pid in worker_pids():
            m = proc_mem_kib(pid)
            if m:
                peak_hwm[pid] = max(peak_hwm.get(pid, 0), m[0])
                peak_anon[pid] = max(peak_anon.get(pid, 0), m[1])
            c = proc_cpu_s(pid)
            if c:
                worker_cpu[pid] = c

    cpu_c = Cpu()
    t = time.monotonic()
    conn.execute("SELECT sink.resume_sink('bench')")
    while True:
        now = time.monotonic()
        if confirmed_at_least("bench", END):
            sink_s = now - t
            cpu_c.stop()
            break
        sample()
        if first_worker_s is None and peak_hwm:
            first_worker_s = time.monotonic() - t
        if now - t > TIMEOUT:
            fail(f"the sink did not reach {END} within {TIMEOUT:g} s; last_error: {sink_error('bench')}")
        time.sleep(0.05)
    sample()
    sink_worker_cpu_s = sum(worker_cpu.values())
    rows_delivered, bytes_delivered, batches, errors, last_error = conn.execute(
        "SELECT rows_delivered, bytes_delivered, batches, errors, last_error FROM sink.status WHERE name = 'bench'").fetchone()
    if errors:
        log(f"note: sink bench recorded {errors} error(s); last: {last_error}")
    if len(peak_hwm) > 1:
        log(f"note: more than one worker process was seen ({sorted(peak_hwm)}): it restarted")
    sink_hw, sink_parts = high_watermarks("bench-sink")
    markers = sink_hw - rows_delivered
    sink_ok = rows_delivered == N
    readback = None
    if READBACK:
        t = time.monotonic()
        readback = count_committed("bench-sink", TIMEOUT)
        log(f"read back {readback} committed messages from bench-sink in {time.monotonic() - t:.1f} s")
        sink_ok = sink_ok and readback == N
    log(f"c. sink: {sink_s:.3f} s, rows_delivered {rows_delivered}, bench-sink high watermark {sink_hw}")

    # Free the broker and the WAL before the latency part.
    conn.execute("SELECT sink.drop_sink('bench')")
    conn.execute("SELECT pg_drop_replication_slot('bench_recv')")
    conn.execute("SELECT pg_drop_replication_slot('bench_pipe')")
    delete_topics(["bench-sink"])
    conn.execute("CHECKPOINT")
    time.sleep(2)

    # ---------------------------------------------------------------- 2. latency
    rows_per_tick = max(1, round(RATE * TICK))
    conn.execute("CREATE TABLE lat (id bigint PRIMARY KEY, t timestamptz)")
    create_kafka_sink("lat", "lat", "bench-lat")
    wait_for("topic bench-lat", lambda: bool(topic_partitions("bench-lat")), timeout=60, interval=0.2)
    wait_for("sink lat's worker", lambda: bool(worker_pids()), timeout=30)
    # Warm-up: the first delivery starts the producer (init_transactions, reading the
    # progress topic). Its rows (ids <= 0) are not counted in the latencies.
    t = time.monotonic()
    conn.execute("INSERT INTO lat SELECT g, clock_timestamp() FROM generate_series(-9, 0) g")
    warm_lsn = one("SELECT pg_current_wal_lsn()::text")
    wait_for("the warm-up rows to be delivered", lambda: confirmed_at_least("lat", warm_lsn), timeout=120)
    warmup_s = time.monotonic() - t
    log(f"latency sink warm-up (first delivery): {warmup_s:.2f} s")
    consumer_code = r'''
import json, os, sys, threading, time
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
brokers, topic = sys.argv[1], sys.argv[2]
parts = sorted(AdminClient({"bootstrap.servers": brokers}).list_topics(topic, timeout=10).topics[topic].partitions)
c = Consumer({"bootstrap.servers": brokers, "group.id": f"bench-lat-{time.time()}", "isolation.level": "read_committed",
              "enable.auto.commit": False, "auto.offset.reset": "earliest", "receive.message.max.bytes": 1000000000})
c.assign([TopicPartition(topic, p, 0) for p in parts])
for _ in range(5):
    c.poll(0.1)
target = []
threading.Thread(target=lambda: target.append(int(sys.stdin.readline() or -1)), daemon=True).start()
print("ready", flush=True)
lat, seen, dups, bad = [], set(), 0, 0
by_sec = {}  # whole second of the commit time -> max latency
deadline = None
try:
    while True:
        m = c.poll(0.05)
        if m is not None:
            now_ms = time.time() * 1000.0
            if m.error():
                continue
            k = m.key()
            if k.startswith(b'{"id":-') or k == b'{"id":0}':
                continue  # warm-up rows
            h = dict(m.headers() or [])
            ts = h.get("pg_sink-timestamp")
            if ts is None:
                bad += 1
            else:
                l = now_ms - float(ts)
                lat.append(l)
                sec = int(float(ts) // 1000)
                by_sec[sec] = max(by_sec.get(sec, 0.0), l)
            if k in seen:
                dups += 1
            seen.add(k)
        if target:
            if deadline is None:
                deadline = time.monotonic() + 60
            if target[0] < 0 or len(seen) >= target[0] or time.monotonic() > deadline:
                break
finally:
    c.close()
lat.sort()
def pct(q):
    return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
print(json.dumps({"received": len(lat) + bad, "distinct": len(seen), "duplicates": dups, "no_header": bad,
                  "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": lat[-1] if lat else None,
                  "min": lat[0] if lat else None, "mean": sum(lat) / len(lat) if lat else None,
                  "max_by_second": [round(by_sec[k]) for k in sorted(by_sec)]}), flush=True)
'''
    cons = spawn([sys.executable, "-c", consumer_code, BROKERS, "bench-lat"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = cons.stdout.readline().strip()
    if line != "ready":
        fail(f"the latency consumer did not start (said {line!r})")

    wconn = psycopg.connect(DSN, autocommit=True)
    ticks = int(round(SECONDS / TICK))
    late = 0
    rows = 0
    lat_worker = worker_pids()
    lat_worker_cpu0 = sum(proc_cpu_s(p) for p in lat_worker)
    cpu_l = Cpu()
    t0 = time.monotonic()
    for k in range(ticks):
        due = t0 + k * TICK
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        elif d < -TICK:
            late += 1
        wconn.execute("INSERT INTO lat SELECT g, clock_timestamp() FROM generate_series(%s::bigint, %s::bigint) g",
                      (rows + 1, rows + rows_per_tick))
        rows += rows_per_tick
    write_s = time.monotonic() - t0
    cpu_l.stop()
    lat_worker_cpu_s = sum(proc_cpu_s(p) for p in lat_worker) - lat_worker_cpu0
    wconn.close()
    achieved = rows / write_s
    END2 = one("SELECT pg_current_wal_lsn()::text")
    log(f"latency writer: {rows} rows in {ticks} commits in {write_s:.2f} s ({achieved:,.0f} rows/s, {late} commits > 10 ms late)")
    wait_for("sink lat to catch up", lambda: confirmed_at_least("lat", END2), timeout=min(TIMEOUT, 300))
    cons.stdin.write(f"{rows}\n")
    cons.stdin.flush()
    try:
        out, _ = cons.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        fail("the latency consumer did not finish")
    if cons.returncode != 0 or not out.strip():
        fail(f"the latency consumer exited {cons.returncode}")
    L = json.loads(out.strip().splitlines()[-1])
    lat_errors, lat_batches = conn.execute("SELECT errors, batches FROM sink.status WHERE name = 'lat'").fetchone()
    lat_ok = L["distinct"] == rows and L["duplicates"] == 0 and L["no_header"] == 0
    p99_ok = L["p99"] is not None and L["p99"] < 100

    # ---------------------------------------------------------------- logs
    with open(os.path.join(ROOT, "data", "server.log"), errors="replace") as f:
        srv = [l.rstrip() for l in f if re.search(r"\b(ERROR|WARNING|FATAL|PANIC)\b", l)]
    with open(os.path.join(ROOT, "kafka", "broker.log"), errors="replace") as f:
        brk = [l.rstrip() for l in f if re.search(r"(?i)\b(error|warn|panic)", l)]
finally:
    end_children()

# ---------------------------------------------------------------- 3. report
decode_rps, pipe_rps, sink_rps = N / decode_s, N / pipe_s, N / sink_s
cb, ca = sink_rps / pipe_rps, sink_rps / decode_rps
hwm_mib = max(peak_hwm.values()) / 1024 if peak_hwm else None
anon_mib = max(peak_anon.values()) / 1024 if peak_anon else None
fmt_mib = lambda v: "n/a (worker never seen)" if v is None else f"{v:.1f} MiB"
goal = lambda ok: "goal met" if ok else "GOAL MISSED"
ok = pipe_ok and sink_ok and lat_ok
print(f"pg_sink Kafka benchmark: broker noida-db 0.2.3 on 127.0.0.1:{os.environ['KAFKA_PORT']} (fresh data dir), "
      f"pg_sink.max_batch_changes = {batch_setting}, pg_sink.poll_interval = {poll_setting}")
if BUILD == "debug":
    print("  WARNING: the installed pg_sink.so is a DEBUG build (debug assertions on); the sink's figures are not "
          "representative. Install a release build (cargo pgrx install --release) and run again.")
print(f"1. throughput: N = {N} inserts in {TXN_ROWS}-row transactions, {wal_bytes / 2**20:.1f} MiB WAL")
print(f"  a. decode limit (pg_recvlogical, pgoutput -> /dev/null): {decode_s:9.3f} s {decode_rps:12,.0f} rows/s")
print(f"  b. pipe (pg_recvlogical wal2json | kcat -P):             {pipe_s:9.3f} s {pipe_rps:12,.0f} rows/s"
      f"   bench-pipe: {pipe_msgs} messages" + ("  OK" if pipe_ok else f"  SHORT: expected >= {N}"))
print(f"  c. sink (kafka, upsert, {MODE + '):':<33}{sink_s:9.3f} s {sink_rps:12,.0f} rows/s"
      + (f"   (worker up after {first_worker_s:.2f} s; " if first_worker_s is not None else "   (")
      + f"sink.status.batches {batches})")
print(f"  CPU during a / b / c (cores busy, whole machine, of {os.cpu_count()}): "
      f"{cpu_a.cores:.2f} / {cpu_b.cores:.2f} / {cpu_c.cores:.2f}; broker CPU s: "
      f"{cpu_a.broker_s:.1f} / {cpu_b.broker_s:.1f} / {cpu_c.broker_s:.1f}; "
      f"pg_recvlogical + kcat {pipe_tools_cpu_s:.1f} s; sink worker {sink_worker_cpu_s:.1f} s")
print(f"  ratio c/b (sink / pipe):                                 {cb:9.3f}   (goal >= 2: {goal(cb >= 2)})")
print(f"  ratio c/a (sink / decode limit):                         {ca:9.3f}   (goal >= 0.8: {goal(ca >= 0.8)})")
print(f"  worker peak RSS (VmHWM):                                 {fmt_mib(hwm_mib)}   (private RssAnon peak {fmt_mib(anon_mib)})")
print(f"  sink delivered:                                          {rows_delivered} rows, {bytes_delivered / 2**20:.1f} MiB"
      + ("  OK" if rows_delivered == N else f"  MISMATCH: expected {N}")
      + f"; bench-sink high watermark {sink_hw} in {sink_parts} partition(s) = rows + {markers}"
      + (" commit markers" if EXACTLY_ONCE else "")
      + ("" if readback is None else f"; read_committed read-back {readback}" + ("  OK" if readback == N else "  MISMATCH")))
print(f"2. latency: commit -> visible to a read_committed consumer (includes the sink's idle poll and "
      + ("the Kafka transaction commit, i.e. the ack" if EXACTLY_ONCE else "the producer's flush (at-least-once)")
      + f"), {rows_per_tick} rows per commit every {TICK * 1000:.0f} ms for {SECONDS} s")
print(f"  sink warm-up (first delivery after creation, not counted): {warmup_s:.2f} s")
print(f"  write rate achieved:  {achieved:12,.0f} rows/s (target {RATE:,}; {rows} rows, {late} of {ticks} commits > 10 ms late)")
fmt_ms = lambda v: "n/a" if v is None else f"{v:8.1f} ms"
print(f"  latency p50 / p99 / max: {fmt_ms(L['p50'])} / {fmt_ms(L['p99'])} / {fmt_ms(L['max'])}   (goal p99 < 100 ms: {goal(p99_ok)})")
print(f"  max latency per second of commit time (ms): {' '.join(str(v) for v in L['max_by_second'])}")
print(f"  CPU while writing:    {cpu_l.cores:.2f} cores busy (whole machine), broker {cpu_l.broker_s / write_s:.2f} cores, "
      f"sink worker {lat_worker_cpu_s / write_s:.2f} cores")
print(f"  consumer received:    {L['received']} messages, {L['distinct']} distinct keys, {L['duplicates']} duplicates"
      + ("  OK" if lat_ok else f"  MISMATCH: expected {rows} distinct, no duplicates")
      + f"; sink: {lat_batches} batches, {lat_errors} errors")
print(f"3. logs: server.log {len(srv)} ERROR/WARNING/FATAL/PANIC lines, broker.log {len(brk)} error/warn lines")
for l in (srv[:5] + brk[:5]):
    print(f"     {l[:200]}")
print(json.dumps({
    "n": N,
    "txn_rows": TXN_ROWS,
    "broker": "noida-db 0.2.3",
    "build": BUILD,
    "max_batch_changes": int(batch_setting),
    "poll_interval": poll_setting,
    "wal_bytes": wal_bytes,
    "load_s": round(load_s, 3),
    "decode_s": round(decode_s, 3),
    "decode_rows_per_s": round(decode_rps, 1),
    "pipe_s": round(pipe_s, 3),
    "pipe_rows_per_s": round(pipe_rps, 1),
    "pipe_messages": pipe_msgs,
    "sink_s": round(sink_s, 3),
    "sink_rows_per_s": round(sink_rps, 1),
    "ratio_sink_pipe": round(cb, 3),
    "ratio_sink_decode": round(ca, 3),
    "worker_start_s": None if first_worker_s is None else round(first_worker_s, 3),
    "worker_peak_rss_mib": None if hwm_mib is None else round(hwm_mib, 1),
    "worker_peak_anon_mib": None if anon_mib is None else round(anon_mib, 1),
    "cpu_cores_decode": round(cpu_a.cores, 2),
    "cpu_cores_pipe": round(cpu_b.cores, 2),
    "cpu_cores_sink": round(cpu_c.cores, 2),
    "broker_cpu_s_pipe": round(cpu_b.broker_s, 2),
    "broker_cpu_s_sink": round(cpu_c.broker_s, 2),
    "pipe_tools_cpu_s": round(pipe_tools_cpu_s, 2),
    "sink_worker_cpu_s": round(sink_worker_cpu_s, 2),
    "sink_options_extra": SINK_EXTRA,
    "sink_mode": MODE,
    "batches": batches,
    "rows_delivered": rows_delivered,
    "bytes_delivered": bytes_delivered,
    "sink_errors": errors,
    "sink_topic_high_watermark": sink_hw,
    "sink_topic_partitions": sink_parts,
    "readback": readback,
    "lat_rate_target": RATE,
    "lat_seconds": SECONDS,
    "lat_warmup_s": round(warmup_s, 3),
    "lat_rows": rows,
    "lat_rows_per_s": round(achieved, 1),
    "lat_late_commits": late,
    "lat_p50_ms": None if L["p50"] is None else round(L["p50"], 2),
    "lat_p90_ms": None if L["p90"] is None else round(L["p90"], 2),
    "lat_p99_ms": None if L["p99"] is None else round(L["p99"], 2),
    "lat_max_ms": None if L["max"] is None else round(L["max"], 2),
    "lat_max_by_second_ms": L["max_by_second"],
    "lat_received": L["received"],
    "lat_distinct": L["distinct"],
    "lat_duplicates": L["duplicates"],
    "lat_sink_batches": lat_batches,
    "lat_cpu_cores": round(cpu_l.cores, 2),
    "lat_broker_cores": round(cpu_l.broker_s / write_s, 2),
    "lat_worker_cores": round(lat_worker_cpu_s / write_s, 2),
    "lat_sink_errors": lat_errors,
    "server_log_problems": len(srv),
    "broker_log_problems": len(brk),
    "ok": ok,
}), flush=True)
sys.exit(0 if ok else 1)
PY
PYPID=$!
wait "$PYPID"
