"""Helpers shared by pg_sink's benchmarks (scripts/bench/*.py).

* log / BenchError / fail: messages on stderr; a failure is an exception, so the
  benchmark's `finally` blocks stop what it started.
* on_signals_exit(): SIGTERM and SIGHUP raise SystemExit (SIGINT raises
  KeyboardInterrupt as usual), so they unwind through those `finally` blocks too.
* Services: throwaway servers run by the scripts in scripts/ (cluster.sh, kafka.sh,
  apicurio.sh, mariadb.sh, ...): `start` runs `SCRIPT start` with its own
  environment, and `close` runs `SCRIPT stop` for each, in reverse order. These
  scripts stop their server by the pid they recorded when they started it.
* Child: a process this benchmark launches. A thread reaps it with os.wait4, so
  its exit time (monotonic) and its rusage (CPU seconds of the process and of the
  children it waited for) are exact; `stop` ends it by its pid.
* Pg: a psycopg connection (autocommit) with one/all/execute, a setting changer
  that waits for the reload, and the pids of the backends serving a client.
* proc_cpu_s / proc_children_cpu_s / machine_busy_s: CPU seconds from /proc.
* wait_for: poll a predicate until it holds or a timeout passes.
* pg_sink_build: "debug" or "release", from the installed pg_sink.so.
"""
import mmap
import os
import signal
import subprocess
import sys
import threading
import time

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(SCRIPTS)
PGLIB = "/usr/lib/postgresql/15/lib"
CLK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on (the message says why)."""


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    raise BenchError(msg)


def on_signals_exit():
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def env_int(name, default, minimum=1):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < minimum:
        fail(f"{name} must be an integer >= {minimum}, not {raw!r}")
    return int(raw)


def wait_for(what, pred, timeout=60.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- /proc

def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu_s(pid):
    """utime + stime of a live process in seconds; None if it is gone."""
    try:
        v = _stat_fields(pid)
        return (int(v[11]) + int(v[12])) / CLK
    except (OSError, IndexError, ValueError):
        return None


def proc_children_cpu_s(pid):
    """cutime + cstime: the CPU seconds of the process's children that have ended
    and that it has reaped (the kernel adds them when the parent waits)."""
    try:
        v = _stat_fields(pid)
        return (int(v[13]) + int(v[14])) / CLK
    except (OSError, IndexError, ValueError):
        return None


def proc_mem_kib(pid):
    """(VmHWM, RssAnon) in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmHWM"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def machine_busy_s():
    """CPU seconds the whole machine spent not idle (all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK


def pid_from_file(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pg_sink_build(lib=os.path.join(PGLIB, "pg_sink.so")):
    """"debug" when the library has debug assertions compiled in (std's precondition
    checks), "release" otherwise, None when it is not installed."""
    try:
        with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return "debug" if m.find(b"precondition_check") >= 0 else "release"
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- services

class Services:
    """Servers started by scripts/<script> start, stopped by scripts/<script> stop."""

    def __init__(self):
        self.started = []

    def start(self, script, env, *, fresh_cmd=None):
        """fresh_cmd: run first (e.g. cluster.sh destroy); else `stop` is run first,
        in case an earlier run left the server behind."""
        path = os.path.join(SCRIPTS, script)
        full_env = dict(os.environ, **env)
        subprocess.run([path, fresh_cmd or "stop"], env=full_env, stdout=sys.stderr, stderr=sys.stderr, check=False)
        # Registered before it starts: a half-started server is stopped too.
        self.started.append((path, full_env))
        r = subprocess.run([path, "start"], env=full_env, stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode != 0:
            fail(f"{script} start failed (exit {r.returncode})")

    def close(self):
        while self.started:
            path, env = self.started.pop()
            try:
                subprocess.run([path, "stop"], env=env, stdout=sys.stderr, stderr=sys.stderr, timeout=120)
            except (OSError, subprocess.SubprocessError) as e:
                log(f"note: {os.path.basename(path)} stop: {e}")


# ---------------------------------------------------------------- children

class Child:
    """A launched process, reaped by its own thread with os.wait4."""

    registry = []

    def __init__(self, name, cmd, **popen_kw):
        self.name = name
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, **popen_kw)
        self.pid = self.proc.pid
        self.end = None
        self.returncode = None
        self.rusage = None
        self._done = threading.Event()
        threading.Thread(target=self._reap, daemon=True, name=f"reap-{name}").start()
        Child.registry.append(self)

    def _reap(self):
        while True:
            try:
                _, status, ru = os.wait4(self.pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                status, ru = 0, None
                break
        self.end = time.monotonic()
        self.rusage = ru
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode  # Popen must not wait for it again
        self._done.set()

    def alive(self):
        return not self._done.is_set()

    def wait(self, timeout=None):
        """The exit code, or None if it is still running after timeout seconds."""
        self._done.wait(timeout)
        return self.returncode

    def cpu_s(self):
        """Its CPU seconds: from rusage once it has exited, else from /proc."""
        if self._done.is_set():
            return None if self.rusage is None else self.rusage.ru_utime + self.rusage.ru_stime
        return proc_cpu_s(self.pid)

    def signal(self, sig):
        # Only while unreaped: until then the pid cannot belong to anyone else.
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace=10.0):
        if not self.alive():
            return self.returncode
        self.signal(signal.SIGTERM)
        if self.wait(grace) is None:
            log(f"{self.name} (pid {self.pid}) ignored SIGTERM for {grace:g} s; SIGKILL")
            self.signal(signal.SIGKILL)
            self.wait(10)
        return self.returncode

    @classmethod
    def stop_all(cls):
        for c in reversed(cls.registry):
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001 - best effort while unwinding
                log(f"note: could not stop {c.name} (pid {c.pid}): {e}")


# ---------------------------------------------------------------- Postgres

class Pg:
    def __init__(self, dsn):
        import psycopg
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    def execute(self, sql, params=None):
        return self.conn.execute(sql, params)

    def one(self, sql, params=None):
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def all(self, sql, params=None):
        return self.conn.execute(sql, params).fetchall()

    def set_setting(self, name, value):
        """ALTER SYSTEM SET name = value, reload, wait until new sessions see it.
        name is a (possibly qualified) setting name, e.g. pg_sink.max_batch_changes."""
        import psycopg
        import psycopg.sql
        if not all(part.isidentifier() for part in name.split(".")):
            fail(f"not a setting name: {name!r}")
        self.execute(psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(psycopg.sql.SQL(name), psycopg.sql.Literal(str(value))))
        self.execute("SELECT pg_reload_conf()")

        def reloaded():
            with psycopg.connect(self.dsn, autocommit=True) as c:
                return c.execute(psycopg.sql.SQL("SHOW {}").format(psycopg.sql.SQL(name))).fetchone()[0] == str(value)
        wait_for(f"the reload of {name}", reloaded, timeout=10, interval=0.1)

    def slot_pid(self, slot):
        """The pid of the process holding a replication slot (its walsender, or the
        backend reading it through SQL), or None."""
        return self.one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))

    def backend_pids(self, where, params=None):
        return [r[0] for r in self.all(f"SELECT pid FROM pg_stat_activity WHERE {where}", params)]

    def close(self):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def load_bench_table(db, n):
    """bench(id bigint primary key, payload text, amount numeric(12,2), at
    timestamptz, tags text[]) with n rows (~100-byte payload), vacuumed and
    analysed, its pages read once."""
    db.execute("CREATE TABLE bench (id bigint PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[]) WITH (autovacuum_enabled = off)")
    log(f"loading {n} rows")
    db.execute("INSERT INTO bench SELECT g, repeat(md5(g::text), 3), g / 100.0, now() - g * interval '1 second', "
               "ARRAY['a' || g %% 10, 'b', 'c'] FROM generate_series(1, %s) g", (n,))
    db.execute("VACUUM ANALYZE bench")
    db.execute("SELECT count(*) FROM bench")
