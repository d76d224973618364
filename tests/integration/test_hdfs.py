"""The `hdfs` connector (hdfs-native: Rust's own HDFS client, no JVM at run time)
against a real HDFS: Hadoop's MiniDFSCluster from Maven Central (scripts/minidfs.sh,
one NameNode and one DataNode). The files are read back independently over
WebHDFS and checked like every object-store sink's: naming, manifests, each record
once, the replayed state equal to the table, with the worker killed in the
middle."""
import json
import os
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT, one, sqlstate_of, wait_caught_up, wait_started
from test_object_store import (  # noqa: F401  (fixtures)
    ROWS, changes_across_a_killed_worker, check_layout, check_parquet_schema, check_round_trip, create_sink, insert_rows,
    items, replay_typed, sinks, source_rows, typed_changes, types_table,
)

PORT = int(os.environ.get("PGSINK_TEST_MINIDFS_PORT", "19400"))
ENV = dict(os.environ, MINIDFS_PORT=str(PORT), MINIDFS_DATA="/tmp/pg_sink_test_hdfs")
NAMENODE = f"hdfs://127.0.0.1:{PORT}"
WEBHDFS = f"http://127.0.0.1:{PORT + 1}/webhdfs/v1"


def minidfs(*args):
    subprocess.run([os.path.join(ROOT, "scripts", "minidfs.sh"), *args], env=ENV, check=True)


@pytest.fixture(scope="module")
def hdfs(server):
    minidfs("start")
    yield NAMENODE
    if not os.environ.get("PGSINK_KEEP_SERVERS"):
        minidfs("stop")


def webhdfs(path, op, **params):
    q = urllib.parse.urlencode({"op": op, "user.name": "root", **params})
    with urllib.request.urlopen(f"{WEBHDFS}{urllib.parse.quote(path)}?{q}", timeout=30) as r:
        return r.read()


def hdfs_files(root):
    """{path relative to root: bytes} of every file under root (WebHDFS)."""
    out = {}

    def walk(path):
        listing = json.loads(webhdfs(path, "LISTSTATUS"))["FileStatuses"]["FileStatus"]
        for st in listing:
            child = f"{path}/{st['pathSuffix']}"
            if st["type"] == "DIRECTORY":
                walk(child)
            else:
                out[child[len(root) + 1:]] = webhdfs(child, "OPEN")
    walk(root)
    return out


def test_hdfs_jsonl_upsert_round_trip_across_a_killed_worker(db, items, sinks, hdfs):
    create_sink(db, sinks, "os_hdfs", "os_items", "hdfs", {"location": f"{hdfs}/cdc/v1", "hdfs_user": "root"})
    expected = changes_across_a_killed_worker(db, "os_hdfs")
    records, files = check_layout(hdfs_files("/cdc/v1/os_hdfs"), "jsonl")
    assert files
    check_round_trip(db, records, expected)


def test_hdfs_parquet_through_a_kinetica_data_sink_and_stream(db, types_table, sinks, hdfs):
    insert_rows(db, ROWS[:3])
    db.execute("SELECT sink.execute(%s)", (f"CREATE OR REPLACE DATA SINK os_hdfs_ds LOCATION = '{hdfs}' WITH OPTIONS (HDFS_USER = 'root')",))
    sinks.append("os_hdfs_pq")
    db.execute("SELECT sink.execute(%s)", ("CREATE STREAM os_hdfs_pq ON TABLE os_types WITH OPTIONS "
                                           "(DATASINK_NAME = 'os_hdfs_ds', TYPE = 'upsert', FILE_FORMAT = 'parquet', 'skipped.operations' = 'none')",))
    wait_started(db, "os_hdfs_pq")
    typed_changes(db)
    wait_caught_up(db, "os_hdfs_pq")
    objects = hdfs_files("/os_hdfs_pq")
    records, files = check_layout(objects, "parquet", columns=None)
    assert files
    check_parquet_schema(objects)
    assert sorted(replay_typed("parquet", records).values(), key=lambda r: r[0]) == source_rows(db)
    db.execute("SELECT sink.execute('DROP STREAM os_hdfs_pq')")
    sinks.remove("os_hdfs_pq")
    db.execute("SELECT sink.execute('DROP DATA SINK os_hdfs_ds')")


def test_hdfs_refuses_kerberos_and_an_unreachable_namenode(db, items, hdfs):
    before = one(db, "SELECT count(*) FROM sink.sinks")
    code, message, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('os_hdfs_bad', 'os_items', 'hdfs', %s::jsonb)",
                                              json.dumps({"location": f"{hdfs}/x", "hdfs_use_kerberos": "true"}))
    assert code == "22023" and "Kerberos" in message and hint, (code, message)
    code, message, detail, hint = sqlstate_of(db, "SELECT sink.create_sink('os_hdfs_bad', 'os_items', 'hdfs', %s::jsonb)",
                                              json.dumps({"location": "hdfs://127.0.0.1:1/x"}))
    assert code and code != "XX000" and (detail or hint), (code, message)
    assert one(db, "SELECT count(*) FROM sink.sinks") == before
