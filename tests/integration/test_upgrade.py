"""Upgrades (README, "Operating pg_sink"): a cluster whose sinks run on the
previous release is given this release's binaries and `ALTER EXTENSION pg_sink
UPDATE`, with writes going on throughout; the sinks continue with nothing lost
or repeated, and the upgraded catalog is the one a fresh install makes.

The previous release is built from its git tag (scripts/previous_release.sh,
cached under /var/cache/pg_sink) and run from a private copy of PostgreSQL's
installation, so this test's cluster can hold either release's files without
touching the ones the other tests' cluster runs.
"""
import json
import os
import shutil
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import ROOT, file_records, one, sqlstate_of, upsert_state, wait_for

PORT = 5497
BASE = "/tmp/pg_sink_upgrade"
TREE = f"{BASE}/root"
DATA = f"{BASE}/data"
OUT = f"{BASE}/out"
PGLIB = "usr/lib/postgresql/15"
PGSHARE = "usr/share/postgresql/15"
PREVIOUS, CURRENT = "0.1.0", "0.2.0"
ENV = dict(os.environ, PGSINK_DATA=DATA, PGSINK_PORT=str(PORT), PGBIN=f"{TREE}/{PGLIB}/bin")


def _cluster(*args):
    subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), *args], env=ENV, check=True)


def _connect(dbname="postgres"):
    return psycopg.connect(host="127.0.0.1", port=PORT, user="postgres", dbname=dbname, autocommit=True)


def _put_extension(src_root):
    """Replace pg_sink's files in the private tree by those under src_root (a
    package tree, or / for the release the other tests installed)."""
    ext = f"{TREE}/{PGSHARE}/extension"
    for f in os.listdir(ext):
        if f.startswith("pg_sink"):
            os.remove(os.path.join(ext, f))
    lib = f"{TREE}/{PGLIB}/lib/pg_sink.so"
    if os.path.lexists(lib):
        os.remove(lib)
    shutil.copy2(f"{src_root}/{PGLIB}/lib/pg_sink.so", lib)
    src_ext = f"{src_root}/{PGSHARE}/extension"
    for f in os.listdir(src_ext):
        if f.startswith("pg_sink"):
            shutil.copy2(os.path.join(src_ext, f), ext)


def _private_tree():
    """A copy of Debian's PostgreSQL 15 that finds its share and lib directories
    next to its binaries (PostgreSQL locates them relative to its executable)."""
    shutil.rmtree(TREE, ignore_errors=True)
    shutil.copytree(f"/{PGLIB}/bin", f"{TREE}/{PGLIB}/bin", symlinks=False)
    os.makedirs(f"{TREE}/{PGLIB}/lib")
    for f in os.listdir(f"/{PGLIB}/lib"):
        if not f.startswith("pg_sink"):
            os.symlink(f"/{PGLIB}/lib/{f}", f"{TREE}/{PGLIB}/lib/{f}")
    shutil.copytree(f"/{PGSHARE}", f"{TREE}/{PGSHARE}", symlinks=True)


# One description of everything the extension owns, for comparing an upgraded
# catalog with a fresh one (column order aside: ALTER TABLE adds at the end).
CATALOG = """
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'pg_sink'),
     members AS (SELECT d.classid, d.objid FROM pg_depend d, ext WHERE d.refobjid = ext.oid AND d.deptype = 'e')
SELECT 'relation ' || c.relname, c.relkind::text || ' rls=' || c.relrowsecurity || ' options=' || coalesce(c.reloptions::text, '')
       || ' acl=' || coalesce(c.relacl::text, '')
  FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
       || ' acl=' || coalesce(a.attacl::text, '')
  FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
UNION ALL
SELECT 'constraint ' || c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
UNION ALL
SELECT 'index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = i.indrelid
UNION ALL
SELECT 'view ' || c.relname, pg_get_viewdef(c.oid)
  FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid WHERE c.relkind = 'v'
UNION ALL
SELECT 'trigger ' || t.tgrelid::regclass::text || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || p.polrelid::regclass::text || '.' || p.polname,
       p.polcmd::text || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' roles=' || p.polroles::text
  FROM pg_policy p JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = p.polrelid
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text,
       pg_get_function_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid) || ' lang=' || l.lanname
       || ' src=' || CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END
       || ' ' || p.provolatile::text || p.proparallel::text || ' strict=' || p.proisstrict || ' definer=' || p.prosecdef
       || ' config=' || coalesce(p.proconfig::text, '') || ' acl=' || coalesce(p.proacl::text, '')
  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid JOIN pg_language l ON l.oid = p.prolang
UNION ALL
SELECT 'dumped configuration', (SELECT string_agg(x::regclass::text, ',' ORDER BY x::regclass::text) FROM unnest(e.extconfig) x)
  FROM pg_extension e WHERE e.extname = 'pg_sink'
ORDER BY 1, 2
"""


def _catalog(conn):
    return [f"{k}: {v}" for k, v in conn.execute(CATALOG).fetchall()]


class _Writer(threading.Thread):
    """Inserts a row and gives an earlier one a new value, over and over, each
    value unique, until stopped; remembers every (id, value) it committed."""

    def __init__(self, first_id):
        super().__init__(daemon=True)
        self.next_id, self.versions, self.stop, self.errors = first_id, [], threading.Event(), 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                conn = conn or _connect()
                n = self.next_id
                with conn.transaction():
                    conn.execute("INSERT INTO up_src VALUES (%s, %s)", (n, f"i{n}"))
                    conn.execute("UPDATE up_src SET v = %s WHERE id = %s", (f"u{n}", n - 50))
                self.versions += [(n, f"i{n}"), (n - 50, f"u{n}")]
                self.next_id += 1
                time.sleep(0.005)
            except psycopg.OperationalError:
                # The server is being restarted with the new binaries.
                self.errors += 1
                conn = None
                time.sleep(0.2)


@pytest.fixture
def previous_release():
    try:
        out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "previous_release.sh")],
                             check=True, capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError as e:
        raise AssertionError(f"the previous release could not be built:\n{e.stderr[-3000:]}") from e
    subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "destroy"], env=ENV, check=False)
    shutil.rmtree(BASE, ignore_errors=True)
    _private_tree()
    _put_extension(out)
    os.makedirs(OUT)
    shutil.chown(OUT, "postgres")
    _cluster("start")
    yield out
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        _cluster("destroy")


def test_sinks_running_on_the_previous_release_continue_after_the_upgrade_with_nothing_lost_or_repeated(previous_release):
    db = _connect()
    db.execute("CREATE EXTENSION pg_sink")
    assert one(db, "SELECT extversion FROM pg_extension WHERE extname = 'pg_sink'") == PREVIOUS
    db.execute("CREATE TABLE up_src (id int PRIMARY KEY, v text NOT NULL)")
    db.execute("INSERT INTO up_src SELECT g, 's' || g FROM generate_series(1, 2000) g")
    db.execute("SELECT sink.create_sink('up_tab', 'up_src', 'table', '{\"table\": \"up_tab\"}', envelope => 'upsert')")
    db.execute("SELECT sink.create_sink('up_log', 'up_src', 'table', '{\"table\": \"up_log\", \"force_append_only\": true}', envelope => 'append-only')")
    db.execute("SELECT sink.create_sink('up_file', 'up_src', 'file', %s::jsonb, envelope => 'upsert')", (f'{{"path": "{OUT}"}}',))
    sinks = ("up_tab", "up_log", "up_file")
    wait_for(lambda: one(db, "SELECT count(*) FROM sink.progress WHERE snapshot_done") == 3, 120, "the snapshots on the previous release")

    writer = _Writer(2001)
    writer.start()
    try:
        # Delivering on the previous release while the writes go on.
        wait_for(lambda: one(db, "SELECT count(*) FROM up_log WHERE v LIKE 'i%%'") >= 200, 120, "delivery on the previous release")
        db.close()
        # New binaries, then a restart: the library finds the old catalog and waits.
        _cluster("stop")
        _put_extension("/")
        _cluster("start")
        db = wait_for(lambda: _try_connect(), 60, "the restarted server")
        assert one(db, "SELECT extversion FROM pg_extension WHERE extname = 'pg_sink'") == PREVIOUS
        code, msg, detail, hint = sqlstate_of(db, "SELECT sink.pause_sink('up_tab')")
        assert code == "55000", (code, msg)
        assert f"version {PREVIOUS}" in msg and f"version {CURRENT}" in msg, msg
        assert "ALTER EXTENSION pg_sink UPDATE" in hint, hint
        assert detail, "the refusal says why"
        before = one(db, "SELECT count(*) FROM up_log")
        time.sleep(3)  # the writer goes on; the sinks must not run on the old catalog
        assert one(db, "SELECT count(*) FROM up_log") == before, "a sink ran against the previous release's catalog"
        with open(f"{DATA}/server.log") as log:
            assert f"pg_sink's catalog in this database is version {PREVIOUS}, but its library is version {CURRENT}: its sinks wait" in log.read()

        db.execute("ALTER EXTENSION pg_sink UPDATE")
        assert one(db, "SELECT extversion FROM pg_extension WHERE extname = 'pg_sink'") == CURRENT
        time.sleep(2)  # more writes on the new release
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.errors > 0, "the writer did not see the restart (it wrote throughout)"
    for name in sinks:
        one(db, "SELECT sink.await_delivered(%s, pg_current_wal_lsn(), '3 minutes')", name)
    for name, state, err in db.execute("SELECT name, state, last_error FROM sink.status ORDER BY name").fetchall():
        assert state == "running" and err is None, (name, state, err)

    # The upsert targets hold the source; the append-only one every version once.
    diff = one(db, "SELECT count(*) FROM ((TABLE up_src EXCEPT TABLE up_tab) UNION ALL (TABLE up_tab EXCEPT TABLE up_src)) d")
    assert diff == 0, f"{diff} rows differ between the source and the upsert table"
    expected = {(i, f"s{i}") for i in range(1, 2001)} | set(writer.versions)
    got = db.execute("SELECT id, v FROM up_log").fetchall()
    dups = len(got) - len(set(got))
    assert dups == 0, f"{dups} versions delivered twice to the append-only table"
    assert set(got) == expected, f"{len(expected - set(got))} versions lost, {len(set(got) - expected)} unexpected"
    source = {str(i): v for i, v in db.execute("SELECT id, v FROM up_src").fetchall()}
    records = file_records(OUT, "up_file")
    state = {json_key(k): v["v"] for k, v in upsert_state(records).items()}
    assert state == source, "the file target differs from the source"
    inserts = [r["key"]["id"] for r in records if r["value"] is not None and r["value"]["v"].startswith(("s", "i"))]
    assert len(inserts) == len(set(inserts)) == len(source), "inserts lost or repeated in the file target"
    print(f"\n{len(writer.versions)} versions written across the upgrade; {writer.errors} writes waited for the restart")

    # The upgraded catalog is a fresh install's.
    db.execute("DROP DATABASE IF EXISTS fresh WITH (FORCE)")
    db.execute("CREATE DATABASE fresh")
    with _connect("fresh") as fresh:
        fresh.execute("CREATE EXTENSION pg_sink")
        want, have = _catalog(fresh), _catalog(db)
    assert have == want, "upgraded catalog differs from a fresh install:\n" + "\n".join(
        [f"- {x}" for x in want if x not in have] + [f"+ {x}" for x in have if x not in want])
    for name in sinks:
        db.execute("SELECT sink.drop_sink(%s)", (name,))
    db.close()


def json_key(k):
    return str(json.loads(k)["id"])


def _try_connect():
    try:
        return _connect()
    except psycopg.OperationalError:
        return None
