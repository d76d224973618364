#!/usr/bin/env bash
# pg_sink's Kafka benchmark against its peers (pg_recvlogical, pg_recvlogical |
# kcat, Debezium) on one backlog and one Apache Kafka broker, then latency. The
# benchmark is scripts/bench/kafka_peers.py; its docstring describes what it
# measures, its environment variables and its output.
#
#   scripts/bench_kafka.sh [N]    N = number of changes (default $BENCH_N or 1000000)
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/bench/kafka_peers.py" "$@"
