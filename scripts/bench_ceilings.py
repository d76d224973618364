#!/usr/bin/env python3
"""Targets' own ceilings for scripts/bench.sh: how fast a plain client gets the
benchmark's data into the same target, to compare a sink with.

* s3_ceiling: boto3 PUTs objects of given sizes (the sizes of the objects a sink
  wrote, read back from the emulator) into another bucket, one at a time, in order;
  objects of the sink's multipart threshold or more go up as multipart uploads in
  parts of that size, as the sink sends them. No request checksums (the sink sends
  none).
* mysql_ceiling / pg_ceiling: the source table's rows, read with psycopg, written
  into a target table by PyMySQL / psycopg in multi-row upserts of 1000 rows
  (PyMySQL executemany of INSERT .. ON DUPLICATE KEY UPDATE, which it sends as one
  multi-row statement; psycopg executemany of a 1000-row INSERT .. ON CONFLICT DO
  UPDATE, pipelined), one transaction per `txn_rows` rows (the sink's batch size).
  Only the writes and commits are timed, not the reads from the source.

Each returns (seconds, rows or objects written). bench.sh imports this file.

    python3 scripts/bench_ceilings.py selftest --pg-dsn DSN [--rows 20000]
        [--s3-endpoint http://127.0.0.1:PORT] [--mysql [HOST:]PORT] [--start-mariadb]

selftest creates a source table like the benchmark's in the database of --pg-dsn
(table bench_ceiling_src, dropped at the end), then runs each ceiling and checks
what arrived; MariaDB gets a database pg_sink_bench_selftest, created and dropped.
--mysql names a MariaDB with a passwordless root (default port 13406, the one
scripts/bench.sh starts: MARIADB_PORT=13406 scripts/mariadb.sh start);
--start-mariadb starts one there for the selftest with scripts/mariadb.sh (data
/tmp/pg_sink_bench_mariadb_selftest) and stops it at the end."""
import argparse
import os
import subprocess
import sys
import time

MIB = 1 << 20
STMT_ROWS = 1000
# scripts/bench.sh's MariaDB (scripts/mariadb.sh with MARIADB_PORT=13406).
MYSQL_PORT = 13406
COLUMNS = ("id", "payload", "amount", "at", "tags")
# The benchmark table in each target (bench.sh creates the sink's and the ceiling's).
MYSQL_DDL = "CREATE TABLE {t} (id BIGINT PRIMARY KEY, payload TEXT, amount DECIMAL(12,2), at DATETIME(6), tags TEXT)"
PG_DDL = "CREATE TABLE {t} (id bigint PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[])"
# The benchmark's rows, generated server-side (bench.sh loads them the same way).
INSERT_ROWS = (
    "INSERT INTO {t} "
    "SELECT g, left(repeat(md5(g::text), 4), 100), (g %% 10000000) / 100.0, "
    "       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
    "       ARRAY['a' || g %% 10, 'b' || g %% 100, 'c' || g %% 1000] "
    "FROM generate_series(%s::bigint, %s::bigint) g"
)


def s3_ceiling(s3, bucket, sizes, multipart_threshold=16 * MIB, prefix="ceiling/"):
    """PUT len(sizes) objects of those sizes into `bucket` (created here)."""
    s3.create_bucket(Bucket=bucket)
    biggest = max(sizes, default=0)
    blob = b"x" * biggest
    bodies = [blob[:n] for n in sizes]  # copies made before the clock starts
    t = time.monotonic()
    for i, body in enumerate(bodies):
        key = f"{prefix}{i:08d}"
        if len(body) >= multipart_threshold:
            up = s3.create_multipart_upload(Bucket=bucket, Key=key)
            parts = []
            for n, off in enumerate(range(0, len(body), multipart_threshold), start=1):
                r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n,
                                   Body=body[off:off + multipart_threshold])
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    return time.monotonic() - t, len(bodies)


def s3_client(endpoint, key="testing", secret="testing", region="us-east-1"):
    import boto3
    from botocore.config import Config
    try:
        cfg = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                     retries={"max_attempts": 2})
    except TypeError:  # botocore before flexible checksums
        cfg = Config(retries={"max_attempts": 2})
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret, config=cfg)


def _source_chunks(src, table, n, txn_rows, select):
    """Rows id 1..n of the source, txn_rows at a time (ordered by id)."""
    for lo in range(1, n + 1, txn_rows):
        hi = min(lo + txn_rows - 1, n)
        yield src.execute(f"SELECT {select} FROM {table} WHERE id BETWEEN %s AND %s ORDER BY id", (lo, hi)).fetchall()


def mysql_ceiling(src, source_table, n, txn_rows, my, target_table):
    """src: a psycopg connection to the source; my: a PyMySQL connection to the
    target database (autocommit off here)."""
    src.execute("SET TimeZone = 'UTC'")  # DATETIME takes UTC wall time, as the sink writes it
    my.autocommit(False)
    cols = ", ".join(COLUMNS)
    sets = ", ".join(f"{c} = VALUES({c})" for c in COLUMNS[1:])
    sql = f"INSERT INTO {target_table} ({cols}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON DUPLICATE KEY UPDATE {sets}"
    spent, written = 0.0, 0
    with my.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        for rows in _source_chunks(src, source_table, n, txn_rows, "id, payload, amount, at, tags::text"):
            t = time.monotonic()
            for i in range(0, len(rows), STMT_ROWS):
                cur.executemany(sql, rows[i:i + STMT_ROWS])
            my.commit()
            spent += time.monotonic() - t
            written += len(rows)
    return spent, written


def pg_ceiling(src, source_table, n, txn_rows, dst, target_table):
    """src, dst: psycopg connections (source and target database)."""
    cols = ", ".join(COLUMNS)
    tuple_ = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])

    def stmt(k):
        return f"INSERT INTO {target_table} ({cols}) VALUES {', '.join([tuple_] * k)} ON CONFLICT (id) DO UPDATE SET {sets}"

    full = stmt(STMT_ROWS)
    spent, written = 0.0, 0
    for rows in _source_chunks(src, source_table, n, txn_rows, cols):
        params = [[v for row in rows[i:i + STMT_ROWS] for v in row] for i in range(0, len(rows), STMT_ROWS)]
        t = time.monotonic()
        with dst.transaction(), dst.cursor() as cur:
            whole = [p for p in params if len(p) == STMT_ROWS * len(COLUMNS)]
            if whole:
                cur.executemany(full, whole)
            for p in params[len(whole):]:
                cur.execute(stmt(len(p) // len(COLUMNS)), p)
        spent += time.monotonic() - t
        written += len(rows)
    return spent, written


def selftest(args):
    import psycopg
    ok = True
    src = psycopg.connect(args.pg_dsn, autocommit=True)
    src.execute("DROP TABLE IF EXISTS bench_ceiling_src, bench_ceiling_pg")
    src.execute(PG_DDL.format(t="bench_ceiling_src"))
    src.execute(PG_DDL.format(t="bench_ceiling_pg"))
    src.execute(INSERT_ROWS.format(t="bench_ceiling_src"), (1, args.rows))
    want = src.execute("SELECT md5(string_agg(concat_ws('|', id, payload, amount, "
                       "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), tags::text), ',' ORDER BY id)) "
                       "FROM bench_ceiling_src").fetchone()[0]
    try:
        dst = psycopg.connect(args.pg_dsn)
        s, w = pg_ceiling(src, "bench_ceiling_src", args.rows, args.txn_rows, dst, "bench_ceiling_pg")
        got = src.execute("SELECT md5(string_agg(concat_ws('|', id, payload, amount, "
                          "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), tags::text), ',' ORDER BY id)) "
                          "FROM bench_ceiling_pg").fetchone()[0]
        good = w == args.rows and got == want
        ok &= good
        print(f"postgres: {w} rows in {s:.3f} s = {w / s:,.0f} rows/s  {'OK' if good else 'MISMATCH'}")
        # again over existing rows: every row conflicts and is updated
        s, w = pg_ceiling(src, "bench_ceiling_src", args.rows, args.txn_rows, dst, "bench_ceiling_pg")
        print(f"postgres (all conflicts): {w} rows in {s:.3f} s = {w / s:,.0f} rows/s")
        dst.close()

        if args.mysql:
            import pymysql
            host, port = mysql_address(args.mysql)
            db = "pg_sink_bench_selftest"
            admin = pymysql.connect(host=host, port=port, user="root", password="", autocommit=True)
            with admin.cursor() as c:
                c.execute(f"DROP DATABASE IF EXISTS {db}")
                c.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                c.execute(MYSQL_DDL.format(t=f"{db}.bench_ceiling"))
            try:
                my = pymysql.connect(host=host, port=port, user="root", password="", database=db, charset="utf8mb4")
                with my.cursor() as c:
                    c.execute("FLUSH STATUS")
                s, w = mysql_ceiling(src, "bench_ceiling_src", args.rows, args.txn_rows, my, "bench_ceiling")
                with my.cursor() as c:
                    c.execute("SHOW SESSION STATUS LIKE 'Com_insert'")
                    stmts = int(c.fetchone()[1])
                    c.execute("SET SESSION group_concat_max_len = 1073741824")
                    c.execute("SELECT md5(group_concat(concat_ws('|', id, payload, amount, "
                              "date_format(at, '%Y-%m-%d %H:%i:%s.%f'), tags) ORDER BY id SEPARATOR ',')) "
                              "FROM bench_ceiling")
                    got = c.fetchone()[0]
                want_stmts = sum(-(-min(args.txn_rows, args.rows - lo) // STMT_ROWS) for lo in range(0, args.rows, args.txn_rows))
                good = w == args.rows and got == want and stmts == want_stmts
                ok &= good
                print(f"mysql: {w} rows in {s:.3f} s = {w / s:,.0f} rows/s, {stmts} INSERT statements "
                      f"(expected {want_stmts})  {'OK' if good else 'MISMATCH'}")
                my.close()
            finally:
                with admin.cursor() as c:
                    c.execute(f"DROP DATABASE IF EXISTS {db}")
                admin.close()
    finally:
        src.execute("DROP TABLE IF EXISTS bench_ceiling_src, bench_ceiling_pg")

    if args.s3_endpoint:
        s3 = s3_client(args.s3_endpoint)
        s3.create_bucket(Bucket="bench-selftest-src")
        sizes = [7 * MIB + i for i in range(3)] + [300, 17 * MIB]
        s, k = s3_ceiling(s3, "bench-selftest", sizes)
        listed = s3.list_objects_v2(Bucket="bench-selftest")["Contents"]
        got = sorted((o["Key"], o["Size"]) for o in listed)
        good = got == [(f"ceiling/{i:08d}", n) for i, n in enumerate(sizes)]
        ok &= good
        print(f"s3: {k} objects, {sum(sizes) / MIB:.1f} MiB in {s:.3f} s  {'OK' if good else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("selftest")
    t.add_argument("--pg-dsn", required=True)
    t.add_argument("--rows", type=int, default=20000)
    t.add_argument("--txn-rows", type=int, default=20000)
    t.add_argument("--mysql", nargs="?", const=str(MYSQL_PORT),
                   help=f"[host:]port of a MariaDB/MySQL with a passwordless root (default 127.0.0.1:{MYSQL_PORT})")
    t.add_argument("--start-mariadb", action="store_true",
                   help="start a MariaDB on --mysql's port with scripts/mariadb.sh for the selftest, stop it at the end")
    t.add_argument("--s3-endpoint")
    args = ap.parse_args()
    if args.start_mariadb and not args.mysql:
        args.mysql = str(MYSQL_PORT)
    if not args.start_mariadb:
        selftest(args)
        return
    host, port = mysql_address(args.mysql)
    if host not in ("127.0.0.1", "localhost"):
        ap.error("--start-mariadb starts a local server: --mysql must be 127.0.0.1:PORT")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mariadb.sh")
    env = dict(os.environ, MARIADB_PORT=str(port), MARIADB_DATA="/tmp/pg_sink_bench_mariadb_selftest")
    try:
        subprocess.run([script, "start"], env=env, check=True, stdout=sys.stderr)
        selftest(args)
    finally:
        subprocess.run([script, "stop"], env=env, stdout=sys.stderr)


def mysql_address(text):
    """--mysql's value: (host, port), host 127.0.0.1 and port MYSQL_PORT by default."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    return host or "127.0.0.1", int(port or MYSQL_PORT)


if __name__ == "__main__":
    main()
