#!/usr/bin/env python3
"""pg_sink's Kafka benchmark against its peers (a benchmark, not a test).

    python3 scripts/bench/kafka_peers.py [N]     (or: bash scripts/bench_kafka.sh [N])

N = number of changes (default $BENCH_N, else 1000000). Everything runs on this
machine: a throwaway Postgres cluster (scripts/cluster.sh, data
/tmp/pg_sink_benchk/data, port 5494), a fresh Apache Kafka broker
(scripts/kafka.sh, KAFKA_PORT 19192, so ports 19192..19197, data
/tmp/pg_sink_benchk/kafka) and a fresh Apicurio registry (scripts/apicurio.sh,
APICURIO_PORT 18184..18186, data /tmp/pg_sink_benchk/apicurio). All of them, and
every process this starts, are stopped at the end by pid, also on failure or a
signal. The ports can be moved with BENCH_PG_PORT, BENCH_KAFKA_PORT and
BENCH_APICURIO_PORT.

1. Throughput: five consumers of one backlog. Table bench(id bigint primary key,
   payload text, amount numeric(12,2), at timestamptz, tags text[]) with
   autovacuum off. Every consumer's slot (and publication) is made first, the two
   pg_sink sinks are paused, then N rows are inserted in 50000-row transactions,
   CHECKPOINT, END = pg_current_wal_lsn(). Then, one after the other:
   a. decode limit: pg_recvlogical (pgoutput, publication bench_pub) -> /dev/null
      with --endpos=END; timed until it exits.
   b. the pipe: pg_recvlogical with wal2json (format-version=2, one JSON line per
      change, add-tables=public.bench, include-transaction=false) piped into
      `kcat -P -t bench-pipe` (librdkafka's defaults: acks=all, linger 5 ms, no
      transactions); timed until both have exited (kcat waits for every delivery
      report). Check: bench-pipe holds >= N messages.
   c. Debezium 3.6.1: its Postgres connector (pgoutput, own slot bench_dbz and
      publication bench_dbz_pub, snapshot.mode=no_data, max.batch.size 8192,
      max.queue.size 32768; $BENCH_DBZ_BATCH / $BENCH_DBZ_QUEUE) in the embedded
      engine (tools/debezium, DebeziumOracle --kafka-bootstrap), JSON converter
      without schemas, producing every event to topic bench-dbz with a
      KafkaProducer (acks=all, idempotent, linger.ms 5, batch.size 1 MiB, no
      compression: pg_sink's producer settings); each engine batch is sent, then
      awaited before it is marked processed (Debezium Server's Kafka sink does
      the same). Timed from launching the JVM until bench-dbz's high watermark
      (no transactions: offsets = messages) reaches N, polled every 50 ms; JVM
      start and engine start (shown separately) are included. Check: >= N.
   d. pg_sink's kafka sink, upsert, JSON, exactly-once (the default: one Kafka
      transaction per batch plus a progress record), topic bench-json. Timed from
      sink.resume_sink until sink.progress.confirmed_lsn >= END (polled every
      50 ms): worker start (the launcher looks every 500 ms), init_transactions,
      the progress-topic read, decoding, encoding, producing, committing, catalog
      updates. Check: sink.status.rows_delivered = N.
   e. the same with FORMAT AVRO and the schema registry (option
      "schema.registry": Apicurio's Confluent API), topic bench-avro.
   The topics are pre-created with 1 partition (pg_sink creates its own, also with
   the broker's default of 1), so no topic creation is timed.
   With BENCH_READBACK=1 (the default) every topic is then read back with a
   read_committed consumer: its messages and distinct keys must be >= N.
   Ratios: each rate / the decode limit's, / the pipe's, / Debezium's.
   CPU seconds per process, for the timed window:
   * pg_recvlogical, kcat: rusage of the exited process (os.wait4);
   * the walsenders of (a) and (b): they end with their client, so their CPU is
     the increase of the postmaster's cutime+cstime over the phase (the kernel adds
     a child's CPU to it when the postmaster reaps it); their last /proc sample
     (every 20 ms while alive) is kept as a cross-check;
   * Debezium's JVM, its walsender and its other backends (application_name
     Debezium*), pg_sink's worker and its walsender (pg_replication_slots.
     active_pid): utime+stime from /proc/<pid>/stat when the timer stops (they are
     still running; all were started within the phase);
   * the broker ($KAFKA_DATA/broker.pid) and the registry ($APICURIO_DATA/
     apicurio.pid): the increase of utime+stime over the phase;
   * the machine: busy cores from /proc/stat.
2. Latency: commit -> visible to a read_committed consumer
   (scripts/bench/latency_consumer.py, its own process), at a steady
   BENCH_RATE rows/s (default 10000) for BENCH_SECONDS (default 20): a writer
   commits one transaction every 10 ms (100 rows at 10000 rows/s), paced by the
   wall clock (it catches up when late, never sleeps to make up).
   * pg_sink (JSON, like d) on table lat, topic bench-lat: latency = receive time
     - the pg_sink-timestamp header (the commit time). It includes the sink's
     wait for data, decoding, producing and the Kafka transaction commit.
   * Debezium (like c, BENCH_DBZ_LATENCY=0 skips it) on table lat_dbz, topic
     bench-lat-dbz, with poll.interval.ms $BENCH_DBZ_POLL_MS (default 10; its
     default of 500 would make every batch wait half a second at this rate):
     latency = receive time - the event's source.ts_us (the commit time Debezium
     takes from pgoutput's BEGIN). No Kafka transactions: read_committed sees a
     record once it is acknowledged.
   Warm-up, not counted: 10 rows first (the first delivery starts the producer;
   its time is shown), then BENCH_LAT_WARMUP seconds (default 5) at the same
   steady rate, so Debezium's JVM has compiled its hot code; the consumer starts
   at the topic's end once both are delivered. Warm-up rows have ids <= 0.
Goals (pg_sink JSON): >= 0.95 x the decode limit, >= 2 x the pipe, >= 3 x
Debezium, p99 latency < 50 ms; shown as met / not met. The exit status is 0 when
every output check passed (goals do not change it). A warning is printed when the
installed pg_sink.so is a debug build (benchmarks are meant for release builds).

Env: BENCH_N, BENCH_RATE, BENCH_SECONDS, BENCH_TIMEOUT (seconds per timed phase,
default 3600), BENCH_READBACK, PGSINK_BATCH (ALTER SYSTEM SET
pg_sink.max_batch_changes), BENCH_SINK_OPTIONS (JSON merged into every pg_sink
sink's options, e.g. '{"exactly_once": false}'), BENCH_DBZ_BATCH, BENCH_DBZ_QUEUE,
BENCH_DBZ_POLL_MS, BENCH_DBZ_LATENCY, BENCH_LAT_WARMUP, DEBEZIUM_JAVA_OPTS. Installs
postgresql-15-wal2json and kcat with apt-get when missing, and adds wal2json to
output_plugin_libraries where the server has that setting. Output: progress on
stderr; on stdout the report with its Markdown tables, then one JSON line with all
the numbers. Data dirs and logs (data/server.log, kafka/broker.log,
apicurio/apicurio.log, dbz/*.log, pipe.stderr) stay in /tmp/pg_sink_benchk until
the next run.
"""
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PGLIB, SCRIPTS, BenchError, Child, Pg, Services, env_int, fail, log, machine_busy_s,  # noqa: E402
                    on_signals_exit, pg_sink_build, pid_from_file, proc_children_cpu_s, proc_cpu_s, proc_mem_kib,
                    wait_for)

ROOT = "/tmp/pg_sink_benchk"
TXN_ROWS = 50000
TICK = 0.01  # the latency writer commits every 10 ms
GOAL_DECODE, GOAL_PIPE, GOAL_DBZ, GOAL_P99_MS = 0.95, 2.0, 3.0, 50.0


class Bench:
    def __init__(self, n):
        self.N = n
        self.RATE = env_int("BENCH_RATE", 10000)
        self.SECONDS = env_int("BENCH_SECONDS", 20)
        self.TIMEOUT = float(env_int("BENCH_TIMEOUT", 3600))
        self.READBACK = os.environ.get("BENCH_READBACK", "1") not in ("", "0")
        self.DBZ_LATENCY = os.environ.get("BENCH_DBZ_LATENCY", "1") not in ("", "0")
        self.DBZ_BATCH = env_int("BENCH_DBZ_BATCH", 8192)
        self.DBZ_QUEUE = env_int("BENCH_DBZ_QUEUE", 32768)
        self.DBZ_POLL_MS = env_int("BENCH_DBZ_POLL_MS", 10)
        self.LAT_WARMUP = env_int("BENCH_LAT_WARMUP", 5, minimum=0)
        self.BATCH = os.environ.get("PGSINK_BATCH") or None
        try:
            self.SINK_EXTRA = json.loads(os.environ.get("BENCH_SINK_OPTIONS") or "{}")
        except ValueError as e:
            fail(f"BENCH_SINK_OPTIONS is not JSON: {e}")
        eo = str(self.SINK_EXTRA.get("exactly_once", True)).lower() not in ("false", "0", "off", "no")
        self.MODE = "exactly-once" if eo else "at-least-once"
        self.PG_PORT = env_int("BENCH_PG_PORT", 5494)
        self.KAFKA_PORT = env_int("BENCH_KAFKA_PORT", 19192)
        self.REG_PORT = env_int("BENCH_APICURIO_PORT", 18184)
        self.BROKERS = f"127.0.0.1:{self.KAFKA_PORT}"
        self.REGISTRY = f"http://127.0.0.1:{self.REG_PORT}/apis/ccompat/v7"
        self.DSN = f"host=127.0.0.1 port={self.PG_PORT} user=postgres dbname=postgres"
        self.env_pg = {"PGSINK_DATA": f"{ROOT}/data", "PGSINK_PORT": str(self.PG_PORT)}
        self.env_kafka = {"KAFKA_PORT": str(self.KAFKA_PORT), "KAFKA_DATA": f"{ROOT}/kafka"}
        self.env_reg = {"APICURIO_PORT": str(self.REG_PORT), "APICURIO_DATA": f"{ROOT}/apicurio",
                        "APICURIO_USER": "", "APICURIO_PASSWORD": ""}
        self.R = {}  # results
        self.checks = {}  # name -> (ok, text)

    # ------------------------------------------------------------ preparation

    def prepare(self):
        missing = []
        if not os.path.exists(os.path.join(PGLIB, "wal2json.so")):
            missing.append("postgresql-15-wal2json")
        if not shutil.which("kcat"):
            missing.append("kcat")
        if missing:
            log(f"installing {' '.join(missing)} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
                subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL, check=True)
        try:
            import confluent_kafka  # noqa: F401
            import psycopg  # noqa: F401
        except ImportError:
            fail("needs the Python packages psycopg and confluent-kafka (bash scripts/setup.sh installs them)")
        self.build = pg_sink_build()
        if self.build is None:
            fail(f"pg_sink is not installed ({PGLIB}/pg_sink.so is missing)")
        if self.build == "debug":
            log("WARNING: the installed pg_sink.so is a debug build; benchmarks are meant for release builds "
                "(bash scripts/setup.sh --release)")
        # Built (by Maven) before any server runs, so it competes with nothing timed.
        r = subprocess.run([os.path.join(SCRIPTS, "debezium.sh"), "classpath"], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"scripts/debezium.sh classpath failed: {r.stderr.strip()[-2000:]}")
        self.dbz_cp = r.stdout.strip()
        self.java = shutil.which("java") or fail("java is not on PATH")

    def start_services(self, services):
        # Whatever an earlier run left behind goes first, then its data.
        for script, env, cmd in (("cluster.sh", self.env_pg, "destroy"), ("kafka.sh", self.env_kafka, "stop"),
                                 ("apicurio.sh", self.env_reg, "stop")):
            subprocess.run([os.path.join(SCRIPTS, script), cmd], env=dict(os.environ, **env),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(ROOT, ignore_errors=True)
        os.makedirs(ROOT)
        services.start("cluster.sh", self.env_pg)
        services.start("kafka.sh", self.env_kafka)
        services.start("apicurio.sh", self.env_reg)
        self.pm_pid = pid_from_file(f"{ROOT}/data/postmaster.pid")
        self.broker_pid = pid_from_file(f"{ROOT}/kafka/broker.pid")
        self.reg_pid = pid_from_file(f"{ROOT}/apicurio/apicurio.pid")
        if not (self.pm_pid and self.broker_pid and self.reg_pid):
            fail(f"missing pids: postmaster {self.pm_pid}, broker {self.broker_pid}, registry {self.reg_pid}")

    # ------------------------------------------------------------ Kafka helpers

    wm = admin = None

    def kafka_setup(self):
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient
        self.admin = AdminClient({"bootstrap.servers": self.BROKERS})
        # One consumer for watermark queries (polled every 50 ms in phase c).
        self.wm = Consumer({"bootstrap.servers": self.BROKERS, "group.id": "bench-watermarks", "enable.auto.commit": False})

    def create_topics(self, names):
        from confluent_kafka.admin import NewTopic
        for t, f in self.admin.create_topics([NewTopic(n, 1, 1) for n in names], operation_timeout=30).items():
            f.result()

    def partitions(self, topic):
        md = self.admin.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return []
        return sorted(t.partitions)

    def high_watermark(self, topic, parts=None):
        from confluent_kafka import TopicPartition
        parts = self.partitions(topic) if parts is None else parts
        return sum(self.wm.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in parts)

    def read_back(self, topic, timeout):
        """(messages, distinct keys, one value) a read_committed consumer sees in the
        whole topic; keys None are not counted as distinct keys."""
        from confluent_kafka import Consumer, TopicPartition
        parts = self.partitions(topic)
        c = Consumer({"bootstrap.servers": self.BROKERS, "group.id": f"bench-rb-{time.time()}", "enable.auto.commit": False,
                      "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        n, keys, sample = 0, set(), None
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
                    if m.key() is not None:
                        keys.add(m.key())
                    if sample is None:
                        sample = m.value()
                    if m.offset() + 1 >= ends[m.partition()]:
                        done.add(m.partition())
        finally:
            c.close()
        return n, len(keys), sample

    # ------------------------------------------------------------ Postgres helpers

    def confirmed_at_least(self, name, lsn):
        return self.pg.one("SELECT p.confirmed_lsn >= %s::pg_lsn FROM sink.progress p JOIN sink.sinks s ON s.id = p.sink_id "
                           "WHERE s.name = %s", (lsn, name))

    def sink_error(self, name):
        return self.pg.one("SELECT last_error FROM sink.status WHERE name = %s", (name,))

    def worker_pids(self):
        return self.pg.backend_pids("backend_type = 'pg_sink worker'")

    def create_sink(self, name, table, topic, fmt="json", extra=None):
        opts = dict({"brokers": self.BROKERS, "topic": topic}, **(extra or {}), **self.SINK_EXTRA)
        self.pg.execute("SELECT sink.create_sink(%s, %s, 'kafka', %s::jsonb, envelope => 'upsert', format => %s, snapshot => false)",
                        (name, table, json.dumps(opts), fmt))
        wait_for(f"sink {name}'s slot (sink.status.confirmed_lsn)",
                 lambda: self.pg.one("SELECT confirmed_lsn IS NOT NULL FROM sink.status WHERE name = %s", (name,))
                 or bool(self.sink_error(name)))
        if self.sink_error(name):
            fail(f"sink {name} error before the workload: {self.sink_error(name)}")

    def allow_wal2json(self):
        # This server only lets listed libraries be output plugins (where it has
        # output_plugin_libraries, a list setting): add wal2json for the pipe.
        import psycopg
        import psycopg.sql
        plugins = self.pg.one("SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'")
        if plugins is None or "wal2json" in [p.strip() for p in plugins.split(",")]:
            return
        libs = [p.strip() for p in plugins.split(",") if p.strip()] + ["wal2json"]
        self.pg.execute("ALTER SYSTEM SET output_plugin_libraries = " + ", ".join(psycopg.sql.quote(p) for p in libs))
        self.pg.execute("SELECT pg_reload_conf()")

        def reloaded():
            with psycopg.connect(self.DSN, autocommit=True) as c:
                return "wal2json" in c.execute("SHOW output_plugin_libraries").fetchone()[0]
        wait_for("the reload of output_plugin_libraries", reloaded, timeout=10, interval=0.1)

    def recvlogical(self, slot, *opts, endpos, out):
        cmd = ["pg_recvlogical", "-h", "127.0.0.1", "-p", str(self.PG_PORT), "-U", "postgres", "-d", "postgres",
               "--slot", slot, "--start", f"--endpos={endpos}", "--no-loop", "-f", out]
        for o in opts:
            cmd += ["-o", o]
        return cmd

    def debezium_cmd(self, slot, publication, table, topic, ready, offsets, extra=()):
        return [self.java, "-Xmx512m", "-XX:+ExitOnOutOfMemoryError", *os.environ.get("DEBEZIUM_JAVA_OPTS", "").split(),
                "-cp", self.dbz_cp, "pgsink.tools.DebeziumOracle",
                "--database.hostname=127.0.0.1", f"--database.port={self.PG_PORT}", "--database.user=postgres",
                "--database.dbname=postgres", f"--table.include.list=public.{table}", "--snapshot.mode=no_data",
                f"--slot.name={slot}", f"--publication.name={publication}", "--publication.autocreate.mode=disabled",
                "--topic.prefix=bench", f"--offset.storage.file.filename={offsets}",
                f"--max.batch.size={self.DBZ_BATCH}", f"--max.queue.size={self.DBZ_QUEUE}",
                f"--kafka-bootstrap={self.BROKERS}", f"--kafka-topic={topic}", f"--ready-file={ready}", *extra]

    # ------------------------------------------------------------ CPU over a phase

    class Phase:
        """Wall time and CPU of the long-running processes over a timed phase."""

        def __init__(self, bench):
            self.b = bench
            self.t0 = time.monotonic()
            self.m0 = machine_busy_s()
            self.broker0 = proc_cpu_s(bench.broker_pid) or 0.0
            self.reg0 = proc_cpu_s(bench.reg_pid) or 0.0
            self.pm0 = proc_children_cpu_s(bench.pm_pid) or 0.0

        def stop(self, t_end=None):
            t_end = time.monotonic() if t_end is None else t_end
            self.wall = t_end - self.t0
            self.cores = (machine_busy_s() - self.m0) / max(time.monotonic() - self.t0, 1e-9)
            self.broker_s = (proc_cpu_s(self.b.broker_pid) or 0.0) - self.broker0
            self.reg_s = (proc_cpu_s(self.b.reg_pid) or 0.0) - self.reg0
            return self

        def reaped_s(self):
            """CPU of the postmaster's children reaped since the start."""
            return (proc_children_cpu_s(self.b.pm_pid) or 0.0) - self.pm0

    def watch_exiting(self, children, slot):
        """Wait until the children have exited; meanwhile sample the CPU of the
        process holding `slot` every 20 ms. Returns its last sample."""
        deadline = time.monotonic() + self.TIMEOUT
        pid, last = None, 0.0
        while any(c.alive() for c in children):
            if time.monotonic() > deadline:
                fail(f"{' | '.join(c.name for c in children)} did not finish within {self.TIMEOUT:g} s")
            if pid is None:
                pid = self.pg.slot_pid(slot)
            if pid is not None:
                v = proc_cpu_s(pid)
                if v is not None:
                    last = v
            time.sleep(0.02)
        return last

    def walsender_gone(self, slot):
        wait_for(f"slot {slot}'s walsender to end", lambda: self.pg.slot_pid(slot) is None, timeout=30, interval=0.02)

    # ------------------------------------------------------------ 1. throughput

    def setup_throughput(self):
        pg = self.pg
        pg.execute("CREATE TABLE bench (id bigint PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[]) "
                   "WITH (autovacuum_enabled = false)")
        pg.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
        pg.execute("CREATE PUBLICATION bench_dbz_pub FOR TABLE bench")
        pg.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        pg.execute("SELECT pg_create_logical_replication_slot('bench_pipe', 'wal2json')")
        pg.execute("SELECT pg_create_logical_replication_slot('bench_dbz', 'pgoutput')")
        self.create_topics(["bench-pipe", "bench-dbz"])
        self.create_sink("bench_json", "bench", "bench-json")
        self.create_sink("bench_avro", "bench", "bench-avro", fmt="avro", extra={"schema.registry": self.REGISTRY})
        pg.execute("SELECT sink.pause_sink('bench_json')")
        pg.execute("SELECT sink.pause_sink('bench_avro')")
        wait_for("the paused sinks' worker to exit", lambda: not self.worker_pids(), timeout=30)

    def load(self):
        pg = self.pg
        start_lsn = pg.one("SELECT pg_current_wal_lsn()::text")
        t = time.monotonic()
        for lo in range(1, self.N + 1, TXN_ROWS):
            hi = min(lo + TXN_ROWS - 1, self.N)
            pg.execute(
                "INSERT INTO bench "
                "SELECT g, left(repeat(md5(g::text), 4), 100), (g %% 10000000) / 100.0, "
                "       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
                "       ARRAY['a' || g %% 10, 'b' || g %% 100, 'c' || g %% 1000] "
                "FROM generate_series(%s::bigint, %s::bigint) g",
                (lo, hi))
        self.R["load_s"] = time.monotonic() - t
        pg.execute("CHECKPOINT")  # so a checkpoint does not land in a timed phase
        self.END = pg.one("SELECT pg_current_wal_lsn()::text")
        self.R["wal_bytes"] = int(pg.one("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (self.END, start_lsn)))
        log(f"loaded {self.N} rows in {self.R['load_s']:.2f} s, {self.R['wal_bytes'] / 2**20:.1f} MiB of WAL, END = {self.END}")

    def phase_decode(self):
        err = open(f"{ROOT}/decode.stderr", "w")
        ph = self.Phase(self)
        c = Child("pg_recvlogical (pgoutput)",
                  self.recvlogical("bench_recv", "proto_version=1", "publication_names=bench_pub", endpos=self.END, out="/dev/null"),
                  stdout=subprocess.DEVNULL, stderr=err)
        sampled = self.watch_exiting([c], "bench_recv")
        ph.stop(c.end)
        err.close()
        if c.returncode != 0:
            fail(f"pg_recvlogical (pgoutput) exited {c.returncode}: {open(f'{ROOT}/decode.stderr').read().strip()[-2000:]}")
        self.walsender_gone("bench_recv")
        ws = self.walsender_cpu(ph, sampled, "a")
        self.R["a"] = {"name": "decode limit: pg_recvlogical (pgoutput) -> /dev/null", "wall_s": ph.wall,
                       "cpu": {"pg_recvlogical": c.cpu_s(), "walsender": ws}, "broker_cpu_s": ph.broker_s,
                       "cores": ph.cores, "walsender_sampled_cpu_s": sampled, "output": "n/a (/dev/null)", "ok": True}
        log(f"a. decode limit: {ph.wall:.3f} s")

    def walsender_cpu(self, ph, sampled, label):
        reaped = ph.reaped_s()
        if reaped + 0.02 < sampled or reaped > sampled + 0.3:
            log(f"note ({label}): the postmaster reaped {reaped:.2f} CPU s of children, the walsender's last sample "
                f"was {sampled:.2f} s (another backend may have ended in the phase)")
        return reaped

    def phase_pipe(self):
        err = open(f"{ROOT}/pipe.stderr", "w")
        ph = self.Phase(self)
        p1 = Child("pg_recvlogical (wal2json)",
                   self.recvlogical("bench_pipe", "format-version=2", "add-tables=public.bench", "include-transaction=false",
                                    endpos=self.END, out="-"),
                   stdout=subprocess.PIPE, stderr=err)
        p2 = Child("kcat", ["kcat", "-P", "-b", self.BROKERS, "-t", "bench-pipe"], stdin=p1.proc.stdout, stderr=err)
        p1.proc.stdout.close()  # kcat holds the read end; it sees EOF when pg_recvlogical exits
        sampled = self.watch_exiting([p1, p2], "bench_pipe")
        ph.stop(max(p1.end, p2.end))
        err.close()
        if p1.returncode != 0 or p2.returncode != 0:
            fail(f"the pipe failed: pg_recvlogical exited {p1.returncode}, kcat exited {p2.returncode}: "
                 f"{open(f'{ROOT}/pipe.stderr').read().strip()[-2000:]}")
        self.walsender_gone("bench_pipe")
        ws = self.walsender_cpu(ph, sampled, "b")
        hw = self.high_watermark("bench-pipe")
        self.R["b"] = {"name": "pipe: pg_recvlogical (wal2json) | kcat -P", "wall_s": ph.wall,
                       "cpu": {"pg_recvlogical": p1.cpu_s(), "kcat": p2.cpu_s(), "walsender": ws}, "broker_cpu_s": ph.broker_s,
                       "cores": ph.cores, "walsender_sampled_cpu_s": sampled, "high_watermark": hw, "topic": "bench-pipe"}
        self.check("b", hw >= self.N, f"bench-pipe high watermark {hw}")
        log(f"b. pipe: {ph.wall:.3f} s, bench-pipe holds {hw} messages")

    def phase_debezium(self):
        d = f"{ROOT}/dbz"
        os.makedirs(d, exist_ok=True)
        ready = f"{d}/bench.ready"
        out = open(f"{d}/bench.log", "w")
        parts = self.partitions("bench-dbz")
        ph = self.Phase(self)
        c = Child("Debezium", self.debezium_cmd("bench_dbz", "bench_dbz_pub", "bench", "bench-dbz", ready, f"{d}/bench.offsets"),
                  stdout=out, stderr=subprocess.STDOUT)
        ready_t = first_t = None
        try:
            while True:
                now = time.monotonic()
                hw = self.high_watermark("bench-dbz", parts)
                if hw >= self.N:
                    t_end = now
                    break
                if ready_t is None and os.path.exists(ready):
                    ready_t = now
                if first_t is None and hw > 0:
                    first_t = now
                if not c.alive():
                    fail(f"Debezium exited {c.returncode} after {hw} events (log: {d}/bench.log): "
                         + tail(f"{d}/bench.log"))
                if now - ph.t0 > self.TIMEOUT:
                    fail(f"Debezium did not produce {self.N} events within {self.TIMEOUT:g} s (log: {d}/bench.log)")
                time.sleep(0.05)
            jvm_s = proc_cpu_s(c.pid)
            ws_pid = self.pg.slot_pid("bench_dbz")
            ws = proc_cpu_s(ws_pid) if ws_pid else None
            others = [p for p in self.pg.backend_pids("application_name LIKE 'Debezium%' AND backend_type = 'client backend'")
                      if p != ws_pid]
            others_s = sum(proc_cpu_s(p) or 0.0 for p in others)
            ph.stop(t_end)
        finally:
            rc = c.stop(60)
            out.close()
        if rc not in (0, 143):
            log(f"note: Debezium exited {rc} when stopped (log: {d}/bench.log)")
        self.walsender_gone("bench_dbz")
        hw = self.high_watermark("bench-dbz", parts)
        cpu = {"java": jvm_s, "walsender": ws}
        if others:
            cpu["backends"] = others_s
        self.R["c"] = {"name": "Debezium 3.6.1 (embedded, pgoutput, JSON) -> Kafka", "wall_s": ph.wall, "cpu": cpu,
                       "broker_cpu_s": ph.broker_s, "cores": ph.cores, "high_watermark": hw, "topic": "bench-dbz",
                       "startup_s": None if ready_t is None else ready_t - ph.t0,
                       "first_event_s": None if first_t is None else first_t - ph.t0,
                       "java_cpu_s_at_exit": c.cpu_s(), "exit_status": rc}
        self.check("c", hw >= self.N, f"bench-dbz high watermark {hw}")
        log(f"c. Debezium: {ph.wall:.3f} s (task started after {self.R['c']['startup_s']}, first event after "
            f"{self.R['c']['first_event_s']}), bench-dbz holds {hw} messages")

    def phase_pg_sink(self, key, name, topic, desc):
        pg = self.pg
        slot = pg.one("SELECT slot_name FROM sink.sinks WHERE name = %s", (name,))
        peak_hwm, peak_anon, worker_cpu = {}, {}, {}
        first_worker = None

        def sample():
            for pid in self.worker_pids():
                m = proc_mem_kib(pid)
                if m:
                    peak_hwm[pid] = max(peak_hwm.get(pid, 0), m[0])
                    peak_anon[pid] = max(peak_anon.get(pid, 0), m[1])
                v = proc_cpu_s(pid)
                if v is not None:
                    worker_cpu[pid] = v

        ph = self.Phase(self)
        pg.execute("SELECT sink.resume_sink(%s)", (name,))
        while True:
            now = time.monotonic()
            if self.confirmed_at_least(name, self.END):
                t_end = now
                break
            sample()
            if first_worker is None and peak_hwm:
                first_worker = time.monotonic() - ph.t0
            if now - ph.t0 > self.TIMEOUT:
                fail(f"sink {name} did not reach {self.END} within {self.TIMEOUT:g} s; last_error: {self.sink_error(name)}")
            time.sleep(0.05)
        sample()
        ws_pid = pg.slot_pid(slot)
        ws = proc_cpu_s(ws_pid) if ws_pid and ws_pid not in worker_cpu else 0.0
        ph.stop(t_end)
        rows, nbytes, batches, errors, last_error = pg.execute(
            "SELECT rows_delivered, bytes_delivered, batches, errors, last_error FROM sink.status WHERE name = %s", (name,)).fetchone()
        if errors:
            log(f"note: sink {name} recorded {errors} error(s); last: {last_error}")
        if len(peak_hwm) > 1:
            log(f"note: more than one worker process was seen for {name} ({sorted(peak_hwm)}): it restarted")
        pg.execute("SELECT sink.pause_sink(%s)", (name,))
        wait_for(f"sink {name}'s worker to exit", lambda: not self.worker_pids(), timeout=60)
        hw = self.high_watermark(topic)
        cpu = {"worker": sum(worker_cpu.values()), "walsender": ws}
        if key == "e":
            cpu["registry"] = ph.reg_s
        self.R[key] = {"name": desc, "wall_s": ph.wall, "cpu": cpu, "broker_cpu_s": ph.broker_s, "cores": ph.cores,
                       "rows_delivered": rows, "bytes_delivered": nbytes, "batches": batches, "errors": errors,
                       "high_watermark": hw, "topic": topic, "worker_up_s": first_worker,
                       "worker_peak_rss_mib": max(peak_hwm.values()) / 1024 if peak_hwm else None,
                       "worker_peak_anon_mib": max(peak_anon.values()) / 1024 if peak_anon else None}
        self.check(key, rows == self.N, f"rows_delivered {rows}")
        log(f"{key}. {name}: {ph.wall:.3f} s, rows_delivered {rows}, {topic} high watermark {hw} "
            f"(= rows + {hw - rows} commit markers and progress records)")

    def readback(self):
        for key in ("b", "c", "d", "e"):
            r = self.R[key]
            t = time.monotonic()
            n, distinct, sample = self.read_back(r["topic"], self.TIMEOUT)
            r["readback"], r["readback_distinct_keys"] = n, distinct
            keyed = key != "b"  # kcat's messages have no key
            ok = n >= self.N and (distinct >= self.N if keyed else True)
            if key == "e" and (not sample or sample[0] != 0):
                ok = False
                log("note: bench-avro's first message is not in the Confluent wire format (magic byte 0)")
            self.check(key + "-readback", ok, f"{r['topic']}: read_committed read-back {n} messages"
                       + (f", {distinct} distinct keys" if keyed else ""))
            log(f"read back {r['topic']}: {n} messages, {distinct} distinct keys in {time.monotonic() - t:.1f} s")

    # ------------------------------------------------------------ 2. latency

    def steady_writer(self, table, seconds, first_id=1):
        """BENCH_RATE rows/s for `seconds`, one commit per 10 ms, ids from first_id."""
        from psycopg import connect
        rows_per_tick = max(1, round(self.RATE * TICK))
        ticks = int(round(seconds / TICK))
        late = rows = 0
        with connect(self.DSN, autocommit=True) as w:
            t0 = time.monotonic()
            for k in range(ticks):
                d = t0 + k * TICK - time.monotonic()
                if d > 0:
                    time.sleep(d)
                elif d < -TICK:
                    late += 1
                w.execute(f"INSERT INTO {table} SELECT g, clock_timestamp() FROM generate_series(%s::bigint, %s::bigint) g",
                          (first_id + rows, first_id + rows + rows_per_tick - 1))
                rows += rows_per_tick
            write_s = time.monotonic() - t0
        return {"rows": rows, "ticks": ticks, "late": late, "write_s": write_s, "rows_per_s": rows / max(write_s, 1e-9),
                "rows_per_commit": rows_per_tick}

    def steady_warmup(self, table, delivered):
        """BENCH_LAT_WARMUP seconds at the steady rate (ids <= 0, not counted), then
        wait until the predicate that delivered(rows) returns holds (delivered is called
        once, after the writes)."""
        if not self.LAT_WARMUP:
            return 0
        rows = self.RATE * self.LAT_WARMUP + 1000
        W = self.steady_writer(table, self.LAT_WARMUP, first_id=-10 - rows)
        wait_for(f"the steady warm-up rows in {table} to be delivered", delivered(W["rows"]), timeout=300, interval=0.1)
        log(f"steady warm-up on {table}: {W['rows']} rows in {W['write_s']:.1f} s, {W['late']} commits late")
        return W["rows"]

    def start_consumer(self, topic, mode):
        c = Child(f"latency consumer ({topic})",
                  [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "latency_consumer.py"),
                   self.BROKERS, topic, mode, "--from-end"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = c.proc.stdout.readline().strip()
        if line != "ready":
            fail(f"the latency consumer did not start (said {line!r})")
        return c

    def finish_consumer(self, c, rows):
        c.proc.stdin.write(f"{rows}\n")
        c.proc.stdin.flush()
        out = c.proc.stdout.read()
        if c.wait(120) is None:
            fail("the latency consumer did not finish")
        if c.returncode != 0 or not out.strip():
            fail(f"the latency consumer exited {c.returncode}")
        return json.loads(out.strip().splitlines()[-1])

    def latency_pg_sink(self):
        pg = self.pg
        pg.execute("CREATE TABLE lat (id bigint PRIMARY KEY, t timestamptz) WITH (autovacuum_enabled = false)")
        self.create_sink("lat", "lat", "bench-lat")
        wait_for("topic bench-lat", lambda: bool(self.partitions("bench-lat")), timeout=60, interval=0.2)
        wait_for("sink lat's worker", lambda: bool(self.worker_pids()), timeout=30)
        t = time.monotonic()
        pg.execute("INSERT INTO lat SELECT g, clock_timestamp() FROM generate_series(-9, 0) g")
        warm_lsn = pg.one("SELECT pg_current_wal_lsn()::text")
        wait_for("the warm-up rows to be delivered", lambda: self.confirmed_at_least("lat", warm_lsn), timeout=120)
        warmup_s = time.monotonic() - t
        log(f"pg_sink latency: warm-up (first delivery) {warmup_s:.2f} s")

        def delivered(_rows):
            lsn = pg.one("SELECT pg_current_wal_lsn()::text")
            return lambda: self.confirmed_at_least("lat", lsn)
        self.steady_warmup("lat", delivered)
        cons = self.start_consumer("bench-lat", "header")
        slot = pg.one("SELECT slot_name FROM sink.sinks WHERE name = 'lat'")
        procs = {"worker": self.worker_pids(), "walsender": [p for p in [pg.slot_pid(slot)] if p]}
        ph = self.Phase(self)
        cpu0 = {k: sum(proc_cpu_s(p) or 0.0 for p in v) for k, v in procs.items()}
        W = self.steady_writer("lat", self.SECONDS)
        cpu = {k: (sum(proc_cpu_s(p) or 0.0 for p in v) - cpu0[k]) / W["write_s"] for k, v in procs.items()}
        ph.stop()
        end = pg.one("SELECT pg_current_wal_lsn()::text")
        log(f"pg_sink latency writer: {W['rows']} rows in {W['ticks']} commits, {W['rows_per_s']:,.0f} rows/s, {W['late']} late")
        wait_for("sink lat to catch up", lambda: self.confirmed_at_least("lat", end), timeout=min(self.TIMEOUT, 300))
        L = self.finish_consumer(cons, W["rows"])
        errors, batches = pg.execute("SELECT errors, batches FROM sink.status WHERE name = 'lat'").fetchone()
        pg.execute("SELECT sink.drop_sink('lat')")
        self.R["lat_pg_sink"] = {"name": "pg_sink (JSON, " + self.MODE + ")", "warmup_s": warmup_s, **W, **L,
                                 "cores": ph.cores, "broker_cores": ph.broker_s / W["write_s"], "client_cores": cpu,
                                 "sink_batches": batches, "sink_errors": errors,
                                 "measures": "receive time - pg_sink-timestamp header (commit time); includes the Kafka transaction commit"
                                 if self.MODE == "exactly-once" else "receive time - pg_sink-timestamp header (commit time)"}
        self.check("lat_pg_sink", L["distinct"] == W["rows"] and L["duplicates"] == 0 and L["unparsed"] == 0,
                   f"pg_sink latency consumer: {L['distinct']} distinct of {W['rows']}, {L['duplicates']} duplicates")

    def latency_debezium(self):
        pg = self.pg
        d = f"{ROOT}/dbz"
        os.makedirs(d, exist_ok=True)
        pg.execute("CREATE TABLE lat_dbz (id bigint PRIMARY KEY, t timestamptz) WITH (autovacuum_enabled = false)")
        pg.execute("CREATE PUBLICATION lat_dbz_pub FOR TABLE lat_dbz")
        pg.execute("SELECT pg_create_logical_replication_slot('lat_dbz', 'pgoutput')")
        self.create_topics(["bench-lat-dbz"])
        parts = self.partitions("bench-lat-dbz")
        ready = f"{d}/lat.ready"
        out = open(f"{d}/lat.log", "w")
        c = Child("Debezium (latency)", self.debezium_cmd("lat_dbz", "lat_dbz_pub", "lat_dbz", "bench-lat-dbz", ready,
                                                          f"{d}/lat.offsets", [f"--poll.interval.ms={self.DBZ_POLL_MS}"]),
                  stdout=out, stderr=subprocess.STDOUT)
        cons = None
        try:
            def started():
                if not c.alive():
                    fail(f"Debezium exited {c.returncode} (log: {d}/lat.log): " + tail(f"{d}/lat.log"))
                return os.path.exists(ready) and pg.slot_pid("lat_dbz") is not None
            wait_for("Debezium's task to stream from slot lat_dbz", started, timeout=180, interval=0.1)
            t = time.monotonic()
            pg.execute("INSERT INTO lat_dbz SELECT g, clock_timestamp() FROM generate_series(-9, 0) g")
            wait_for("Debezium's warm-up events", lambda: self.high_watermark("bench-lat-dbz", parts) >= 10, timeout=120)
            warmup_s = time.monotonic() - t
            log(f"Debezium latency: warm-up (first delivery) {warmup_s:.2f} s")
            total = 10 + self.steady_warmup("lat_dbz", lambda rows: lambda: self.high_watermark("bench-lat-dbz", parts) >= 10 + rows)
            cons = self.start_consumer("bench-lat-dbz", "debezium")
            ws_pid = pg.slot_pid("lat_dbz")
            procs = {"java": [c.pid], "walsender": [ws_pid]}
            ph = self.Phase(self)
            cpu0 = {k: sum(proc_cpu_s(p) or 0.0 for p in v) for k, v in procs.items()}
            W = self.steady_writer("lat_dbz", self.SECONDS)
            cpu = {k: (sum(proc_cpu_s(p) or 0.0 for p in v) - cpu0[k]) / W["write_s"] for k, v in procs.items()}
            ph.stop()
            log(f"Debezium latency writer: {W['rows']} rows in {W['ticks']} commits, {W['rows_per_s']:,.0f} rows/s, {W['late']} late")
            wait_for("Debezium to catch up", lambda: self.high_watermark("bench-lat-dbz", parts) >= total + W["rows"],
                     timeout=min(self.TIMEOUT, 300))
            L = self.finish_consumer(cons, W["rows"])
        finally:
            if cons is not None:
                cons.stop()
            c.stop(60)
            out.close()
        self.R["lat_debezium"] = {"name": f"Debezium (JSON, poll.interval.ms {self.DBZ_POLL_MS})", "warmup_s": warmup_s, **W, **L,
                                  "cores": ph.cores, "broker_cores": ph.broker_s / W["write_s"], "client_cores": cpu,
                                  "measures": "receive time - source.ts_us (commit time); no Kafka transactions"}
        self.check("lat_debezium", L["distinct"] == W["rows"] and L["unparsed"] == 0,
                   f"Debezium latency consumer: {L['distinct']} distinct of {W['rows']}, {L['duplicates']} duplicates")

    # ------------------------------------------------------------ run

    def check(self, name, ok, text):
        self.checks[name] = (bool(ok), text)
        if not ok:
            log(f"CHECK FAILED ({name}): {text}")

    def run(self):
        self.prepare()
        services = Services()
        try:
            self.start_services(services)
            self.pg = Pg(self.DSN)
            self.kafka_setup()
            pg = self.pg
            pg.execute("CREATE EXTENSION pg_sink")
            if self.BATCH:
                pg.set_setting("pg_sink.max_batch_changes", int(self.BATCH))
            self.allow_wal2json()
            self.R["max_batch_changes"] = pg.one("SHOW pg_sink.max_batch_changes")
            self.R["poll_interval"] = pg.one("SHOW pg_sink.poll_interval")
            self.R["transport"] = pg.one("SELECT current_setting('pg_sink.transport', true)")
            self.R["kafka_version"] = pom_version("kafka", "kafka.version")
            self.R["apicurio_version"] = pom_version("apicurio", "apicurio.version")

            self.setup_throughput()
            self.load()
            self.phase_decode()
            self.phase_pipe()
            self.phase_debezium()
            self.phase_pg_sink("d", "bench_json", "bench-json", f"pg_sink kafka sink (upsert, JSON, {self.MODE})")
            self.phase_pg_sink("e", "bench_avro", "bench-avro", f"pg_sink kafka sink (upsert, Avro + registry, {self.MODE})")
            if self.READBACK:
                self.readback()
            # Free the WAL and the worker before the latency part.
            pg.execute("SELECT sink.drop_sink('bench_json')")
            pg.execute("SELECT sink.drop_sink('bench_avro')")
            for s in ("bench_recv", "bench_pipe", "bench_dbz"):
                pg.execute("SELECT pg_drop_replication_slot(%s)", (s,))
            pg.execute("CHECKPOINT")
            time.sleep(1)

            self.latency_pg_sink()
            if self.DBZ_LATENCY:
                self.latency_debezium()
            self.R["server_log_problems"] = grep_lines(f"{ROOT}/data/server.log", r"\b(ERROR|WARNING|FATAL|PANIC)\b")
            self.R["broker_log_problems"] = grep_lines(f"{ROOT}/kafka/broker.log", r"\] (ERROR|WARN) ")
        finally:
            Child.stop_all()
            if getattr(self, "wm", None) is not None:
                self.wm.close()
            self.wm = self.admin = None  # before the broker stops: no reconnect noise
            gc.collect()
            if getattr(self, "pg", None) is not None:
                self.pg.close()
            services.close()
        return self.report()

    # ------------------------------------------------------------ report

    def report(self):
        R, N = self.R, self.N
        for k in "abcde":
            R[k]["rate"] = N / R[k]["wall_s"]
        dec, pipe, dbz = R["a"]["rate"], R["b"]["rate"], R["c"]["rate"]
        fmt = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        out = []
        p = out.append
        p(f"# pg_sink Kafka benchmark: N = {N:,} inserts in {TXN_ROWS:,}-row transactions, {R['wal_bytes'] / 2**20:.1f} MiB of WAL")
        p("")
        p(f"Apache Kafka {R['kafka_version']} (single broker, 127.0.0.1:{self.KAFKA_PORT}, fresh), Apicurio Registry "
          f"{R['apicurio_version']} (127.0.0.1:{self.REG_PORT}), PostgreSQL 15 (127.0.0.1:{self.PG_PORT}); pg_sink.max_batch_changes = "
          f"{R['max_batch_changes']}, pg_sink.poll_interval = {R['poll_interval']}, pg_sink.transport = {R['transport']}; "
          f"{os.cpu_count()} cores shared by everything. pg_sink.so: {self.build} build.")
        if self.build == "debug":
            p("")
            p("**WARNING: the installed pg_sink.so is a DEBUG build (debug assertions on); pg_sink's figures are not "
              "representative. Install a release build (bash scripts/setup.sh --release) and run again.**")
        p("")
        p("## Throughput (the same backlog, one pipeline after the other)")
        p("")
        p("| | pipeline | wall s | changes/s | × decode | × pipe | × Debezium | CPU s per process | broker CPU s | CPU s total | output check |")
        p("|---|---|---|---|---|---|---|---|---|---|---|")
        for k in "abcde":
            r = R[k]
            cpu = ", ".join(f"{n} {fmt(v)}" for n, v in r["cpu"].items())
            total = sum(v or 0.0 for v in r["cpu"].values()) + r["broker_cpu_s"]
            chk = [self.checks[c][1] + (" OK" if self.checks[c][0] else " FAILED") for c in (k, k + "-readback") if c in self.checks]
            p(f"| {k} | {md(r['name'])} | {r['wall_s']:.3f} | {r['rate']:,.0f} | {r['rate'] / dec:.3f} | {r['rate'] / pipe:.3f} | "
              f"{r['rate'] / dbz:.3f} | {cpu} | {r['broker_cpu_s']:.2f} | {total:.2f} | {'; '.join(chk) or r.get('output', '')} |")
        p("")
        c = R["c"]
        p(f"* Debezium: JVM launch → connector task started {fmt(c['startup_s'])} s, → first event in the topic "
          f"{fmt(c['first_event_s'])} s (both inside its wall time); from the task's start its rate is "
          + (f"{N / (c['wall_s'] - c['startup_s']):,.0f} changes/s" if c["startup_s"] else "n/a")
          + f". max.batch.size {self.DBZ_BATCH}, max.queue.size {self.DBZ_QUEUE}.")
        for k in "de":
            r = R[k]
            p(f"* {k}: worker up after {fmt(r['worker_up_s'])} s; {r['batches']} batches; topic high watermark "
              f"{r['high_watermark']} (rows + commit markers + progress records); worker peak RSS "
              f"{fmt(r['worker_peak_rss_mib'], 1)} MiB (private {fmt(r['worker_peak_anon_mib'], 1)} MiB)")
        p("* machine busy cores during a / b / c / d / e: " + " / ".join(f"{R[k]['cores']:.2f}" for k in "abcde"))
        p("* CPU: pg_recvlogical and kcat from their rusage (os.wait4); the walsenders of a and b from the postmaster's "
          "reaped-children CPU over the phase; the others from /proc/<pid>/stat when the timer stopped; the broker "
          "(and the registry for e) as the increase over the phase.")
        p("")
        p(f"## Latency: commit → visible to a read_committed consumer, {R['lat_pg_sink']['rows_per_commit']} rows per "
          f"commit every {TICK * 1000:.0f} ms for {self.SECONDS} s")
        p("")
        p("| pipeline | measured as | rows/s achieved | p50 ms | p99 ms | max ms | events (distinct / expected) | cores: client processes | cores: broker |")
        p("|---|---|---|---|---|---|---|---|---|")
        for k in ("lat_pg_sink", "lat_debezium"):
            if k not in R:
                continue
            L = R[k]
            cc = ", ".join(f"{n} {v:.2f}" for n, v in L["client_cores"].items())
            p(f"| {md(L['name'])} | {md(L['measures'])} | {L['rows_per_s']:,.0f} | {fmt(L['p50'], 1)} | {fmt(L['p99'], 1)} | "
              f"{fmt(L['max'], 1)} | {L['distinct']} / {L['rows']} ({L['duplicates']} dup.) | {cc} | {L['broker_cores']:.2f} |")
        p("")
        for k in ("lat_pg_sink", "lat_debezium"):
            if k in R:
                L = R[k]
                p(f"* {L['name']}: first delivery {L['warmup_s']:.2f} s, then {self.LAT_WARMUP} s of steady warm-up (not counted); {L['late']} of {L['ticks']} commits > 10 ms late; "
                  f"worst latency per second of commit time (ms): {' '.join(str(v) for v in L['max_by_second'])}")
        p("")
        d, lat = R["d"], R["lat_pg_sink"]
        goals = [
            (f"pg_sink (JSON) ≥ {GOAL_DECODE} × decode limit", d["rate"] / dec, d["rate"] / dec >= GOAL_DECODE),
            (f"pg_sink (JSON) ≥ {GOAL_PIPE:g} × the pipe", d["rate"] / pipe, d["rate"] / pipe >= GOAL_PIPE),
            (f"pg_sink (JSON) ≥ {GOAL_DBZ:g} × Debezium", d["rate"] / dbz, d["rate"] / dbz >= GOAL_DBZ),
            (f"pg_sink p99 latency < {GOAL_P99_MS:g} ms", lat["p99"], lat["p99"] is not None and lat["p99"] < GOAL_P99_MS),
        ]
        p("## Goals")
        p("")
        for text, v, ok in goals:
            p(f"* {text}: {fmt(v, 3 if 'latency' not in text else 1)}{' ms' if 'latency' in text else ''} — "
              f"{'met' if ok else 'NOT MET'}")
        p("")
        ok = all(v[0] for v in self.checks.values())
        p(f"Output checks: {'all passed' if ok else 'FAILED: ' + '; '.join(t for o, t in self.checks.values() if not o)}. "
          f"Logs: server.log {len(R['server_log_problems'])} ERROR/WARNING/FATAL/PANIC lines, broker.log "
          f"{len(R['broker_log_problems'])} ERROR/WARN lines.")
        for line in (R["server_log_problems"][:5] + R["broker_log_problems"][:5]):
            p(f"    {line[:200]}")
        print("\n".join(out), flush=True)
        summary = {"n": N, "txn_rows": TXN_ROWS, "build": self.build, "sink_mode": self.MODE, "sink_options_extra": self.SINK_EXTRA,
                   "goals": {t: {"value": v, "met": g} for t, v, g in goals}, "checks": {k: {"ok": o, "text": t} for k, (o, t) in self.checks.items()},
                   "ok": ok}
        for k, v in R.items():
            summary[k] = len(v) if k.endswith("_log_problems") else v
        print(json.dumps(rounded(summary), default=str), flush=True)
        return 0 if ok else 1


def md(text):
    """Text for a Markdown table cell."""
    return str(text).replace("|", "\\|")


def rounded(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [rounded(x) for x in v]
    return v


def tail(path, n=2000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return ""


def grep_lines(path, pattern):
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip() for line in f if re.search(pattern, line)]
    except OSError:
        return []


def pom_version(tool, prop):
    try:
        with open(os.path.join(os.path.dirname(SCRIPTS), "tools", tool, "pom.xml")) as f:
            m = re.search(rf"<{re.escape(prop)}>(.*?)</{re.escape(prop)}>", f.read())
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def main():
    on_signals_exit()
    arg = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BENCH_N") or "1000000"
    if arg in ("-h", "--help"):
        print(__doc__)
        return 0
    if not arg.isdigit() or int(arg) <= 0:
        print(f"kafka_peers.py: N must be a positive integer, got {arg!r}", file=sys.stderr)
        return 2
    try:
        return Bench(int(arg)).run()
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
