#!/usr/bin/env python3
"""A fast webhook receiver and its ceiling client, for scripts/bench.sh
(BENCH_SINK=webhook). Standard library only.

    python3 scripts/bench_webhook.py serve [--port P] [--port-file F] [--pid-file F]
    python3 scripts/bench_webhook.py ceiling --url http://127.0.0.1:P/ceiling \\
            --plan-from http://127.0.0.1:P/stats --plan-path /sink [--conns 1]
    python3 scripts/bench_webhook.py selftest [--requests 200 --records 1000 --size 330000]

serve: a ThreadingHTTPServer on 127.0.0.1 (port 0 picks a free one; the port is
written to --port-file once the server listens). Every POST body is read whole
(by Content-Length, as the sink sends them) and answered 204 on the same keep-alive connection.
Records are counted without parsing JSON: an application/x-ndjson body has one
record per line; any other body is a JSON array of pg_sink records, each with one
`"pg_sink-op":` header (the receiver counts those; a JSON value of the source
that itself holds that key would be counted too). Per request path it keeps the
number of requests, records and body bytes, and each request's (body size,
records): GET /stats returns them as JSON. Nothing else is kept.

ceiling: POSTs, over keep-alive connections (one by default, as the sink sends one
request at a time), bodies of exactly the sizes and record counts of another path's
requests (the plan), built before the clock starts as records of the sink's
layout. Prints one JSON object: seconds, requests, bytes, records.

selftest: starts a receiver in this process, posts a synthetic plan to it, runs the
ceiling against it and checks the counts (a quick check of this file)."""
import argparse
import http.client
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request

OP_MARK = b'"pg_sink-op":'


def count_records(content_type, body):
    if "ndjson" in (content_type or "").lower():
        n = body.count(b"\n")
        return n + 1 if body and not body.endswith(b"\n") else n
    return body.count(OP_MARK)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.paths = {}

    def add(self, path, size, records):
        now = time.monotonic()
        with self.lock:
            s = self.paths.get(path)
            if s is None:
                s = self.paths[path] = {"requests": 0, "records": 0, "bytes": 0, "first": now, "last": now, "plan": []}
            s["requests"] += 1
            s["records"] += records
            s["bytes"] += size
            s["last"] = now
            s["plan"].append((size, records))

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps(self.paths))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 600

    def log_message(self, *args):
        pass

    def _body(self):
        # The sink sends every body with a Content-Length (never chunked).
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_POST(self):
        body = self._body()
        if body is None:
            self.close_connection = True
            return
        self.server.stats.add(self.path, len(body), count_records(self.headers.get("Content-Type"), body))
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path != "/stats":
            self.send_error(404)
            return
        out = json.dumps(self.server.stats.snapshot()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, port):
        self.stats = Stats()
        super().__init__(("127.0.0.1", port), Handler)

    def handle_error(self, request, client_address):
        pass  # a client that went away is not an error here


# ------------------------------------------------------------------ the client

HEAD = b'{"key":{"id":%d},"value":"'
TAIL = b'","headers":{"pg_sink-lsn":"0/0","pg_sink-timestamp":"0.000","pg_sink-op":"insert"}}'


def make_body(size, records, fmt):
    """A body of `records` records in the sink's layout, padded to `size` bytes
    (larger only if that many records cannot fit in `size`)."""
    if records <= 0:
        return b" " * size
    heads = [HEAD % i for i in range(records)]
    framing = 2 + (records - 1) if fmt == "json" else records
    fixed = framing + sum(map(len, heads)) + len(TAIL) * records
    q, r = divmod(max(0, size - fixed), records)
    recs = [h + b"x" * (q + (i < r)) + TAIL for i, h in enumerate(heads)]
    if fmt == "json":
        return b"[" + b",".join(recs) + b"]"
    return b"\n".join(recs) + b"\n"


def content_type(fmt):
    return "application/json" if fmt == "json" else "application/x-ndjson"


def fetch_plan(stats_url, path):
    with urllib.request.urlopen(stats_url, timeout=60) as r:
        stats = json.load(r)
    s = stats.get(path)
    if not s:
        raise SystemExit(f"no requests to {path} at {stats_url}")
    return [tuple(p) for p in s["plan"]]


def run_ceiling(url, plan, fmt="json", conns=1):
    """POST the plan's bodies to url over `conns` keep-alive connections (request i
    on connection i % conns, in order); returns a dict with the wall time."""
    u = urllib.parse.urlsplit(url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    bodies = [make_body(size, records, fmt) for size, records in plan]
    ctype = content_type(fmt)
    lanes = [bodies[i::conns] for i in range(conns)]
    errors = []

    def lane(items):
        c = http.client.HTTPConnection(host, port, timeout=600)
        try:
            for body in items:
                c.request("POST", path, body=body, headers={"Content-Type": ctype})
                resp = c.getresponse()
                resp.read()
                if resp.status // 100 != 2:
                    raise RuntimeError(f"HTTP {resp.status}")
        except Exception as e:  # reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=lane, args=(items,)) for items in lanes if items]
    t = time.monotonic()
    if len(threads) == 1:
        lane(lanes[0])
    else:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    seconds = time.monotonic() - t
    if errors:
        raise RuntimeError(f"ceiling client failed: {errors[0]!r}")
    return {"seconds": seconds, "requests": len(bodies), "bytes": sum(map(len, bodies)),
            "records": sum(r for _, r in plan), "conns": len(threads)}


# ------------------------------------------------------------------ commands

def serve(args):
    server = Server(args.port)
    port = server.server_address[1]
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"bench webhook receiver on 127.0.0.1:{port} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def selftest(args):
    server = Server(0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    ok = True
    for fmt in ("json", "ndjson"):
        plan = [(args.size + (i % 7) * 13, max(1, args.records - (i % 3))) for i in range(args.requests)]
        plan = [(len(make_body(size, records, fmt)), records) for size, records in plan]  # as built
        # "the sink": one keep-alive connection, as the ceiling posts them
        run_ceiling(f"{base}/sink-{fmt}", plan, fmt)
        # the sizes and counts as the receiver saw them, replayed
        got_plan = fetch_plan(f"{base}/stats", f"/sink-{fmt}")
        res = run_ceiling(f"{base}/ceiling-{fmt}", got_plan, fmt)
        stats = json.load(urllib.request.urlopen(f"{base}/stats"))
        want_records = sum(r for _, r in plan)
        sink, ceil = stats[f"/sink-{fmt}"], stats[f"/ceiling-{fmt}"]
        good = (got_plan == plan and sink["records"] == want_records and ceil["records"] == want_records
                and ceil["bytes"] == sink["bytes"] == sum(s for s, _ in plan))
        ok &= good
        print(f"{fmt:6}: {res['requests']} requests, {res['bytes'] / 2**20:.1f} MiB, {res['records']} records in "
              f"{res['seconds']:.3f} s = {res['records'] / res['seconds']:,.0f} records/s, "
              f"{res['bytes'] / 2**20 / res['seconds']:.0f} MiB/s  {'OK' if good else 'MISMATCH'}")
    server.shutdown()
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--port-file")
    s.add_argument("--pid-file")
    c = sub.add_parser("ceiling")
    c.add_argument("--url", required=True)
    c.add_argument("--plan-from", required=True, help="the receiver's /stats URL")
    c.add_argument("--plan-path", required=True, help="the path whose requests to replay")
    c.add_argument("--format", choices=("json", "ndjson"), default="json")
    c.add_argument("--conns", type=int, default=1)
    t = sub.add_parser("selftest")
    t.add_argument("--requests", type=int, default=200)
    t.add_argument("--records", type=int, default=1000)
    t.add_argument("--size", type=int, default=330_000)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "ceiling":
        plan = fetch_plan(args.plan_from, args.plan_path)
        print(json.dumps(run_ceiling(args.url, plan, args.format, max(1, args.conns))))
    else:
        selftest(args)


if __name__ == "__main__":
    main()
