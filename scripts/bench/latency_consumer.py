#!/usr/bin/env python3
"""Commit -> visible latency of change events in a Kafka topic, for the Kafka
benchmark (scripts/bench/kafka_peers.py runs it as its own process).

    latency_consumer.py BROKERS TOPIC MODE [--from-end]

A confluent-kafka consumer (isolation.level=read_committed, every partition from
offset 0, or with --from-end from its high watermark when it starts: whatever
was delivered before is not read) reads TOPIC. For each message, latency = the wall clock when the
consumer received it minus the source transaction's commit time, taken from:

* MODE header: the pg_sink-timestamp header (ms since the epoch, pg_sink's Kafka
  sink sets it to the commit time);
* MODE debezium: the value's source.ts_us (else source.ts_ms), which Debezium's
  Postgres connector sets to the commit time of the transaction that made the
  change (from pgoutput's BEGIN message).

The key is JSON {"id": N} for both (the benchmark's table has key id); rows with
id <= 0 are warm-up rows and are not counted. It prints "ready" once assigned,
then reads until a line on stdin gives the number of rows to expect and that many
distinct ids have arrived (or 60 s more have passed), then prints one JSON object:
received, distinct, duplicates, unparsed, p50/p90/p99/max/min/mean (ms) and
max_by_second (the worst latency per second of commit time, to tell a steady
cost from a stall).
"""
import json
import re
import sys
import threading
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient


SOURCE_TS = re.compile(rb'"source":\{[^{}]*?"ts_us":(\d+)')


def main():
    brokers, topic, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    from_end = sys.argv[4:] == ["--from-end"]
    if mode not in ("header", "debezium") or sys.argv[4:] not in ([], ["--from-end"]):
        sys.exit("usage: latency_consumer.py BROKERS TOPIC header|debezium [--from-end]")
    parts = sorted(AdminClient({"bootstrap.servers": brokers}).list_topics(topic, timeout=10).topics[topic].partitions)
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"bench-lat-{time.time()}", "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    start = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] if from_end else 0
             for p in parts}
    c.assign([TopicPartition(topic, p, start[p]) for p in parts])
    for _ in range(5):
        c.poll(0.1)
    target = []
    threading.Thread(target=lambda: target.append(int(sys.stdin.readline() or -1)), daemon=True).start()
    print("ready", flush=True)
    lat, seen, dups, bad = [], set(), 0, 0
    by_sec = {}
    deadline = None
    try:
        while True:
            m = c.poll(0.05)
            if m is not None and not m.error():
                now_ms = time.time() * 1000.0
                try:
                    key = json.loads(m.key())["id"]
                except (TypeError, ValueError, KeyError):
                    key = None
                if key is not None and key <= 0:
                    continue  # warm-up rows
                ts = None
                try:
                    if mode == "header":
                        h = dict(m.headers() or [])
                        ts = float(h["pg_sink-timestamp"])
                    else:
                        # source is a flat object: a regex is much cheaper than parsing
                        # the whole event (this process shares the machine's cores).
                        g = SOURCE_TS.search(m.value())
                        if g:
                            ts = int(g.group(1)) / 1000.0
                        else:
                            src = json.loads(m.value())["source"]
                            ts = src["ts_us"] / 1000.0 if src.get("ts_us") is not None else float(src["ts_ms"])
                except (TypeError, ValueError, KeyError):
                    ts = None
                if ts is None or key is None:
                    bad += 1
                else:
                    v = now_ms - ts
                    lat.append(v)
                    sec = int(ts // 1000)
                    by_sec[sec] = max(by_sec.get(sec, 0.0), v)
                    if key in seen:
                        dups += 1
                    seen.add(key)
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
    print(json.dumps({"received": len(lat) + bad, "distinct": len(seen), "duplicates": dups, "unparsed": bad,
                      "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": lat[-1] if lat else None,
                      "min": lat[0] if lat else None, "mean": sum(lat) / len(lat) if lat else None,
                      "max_by_second": [round(by_sec[k]) for k in sorted(by_sec)]}), flush=True)


if __name__ == "__main__":
    main()
