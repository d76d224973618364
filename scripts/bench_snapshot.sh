#!/usr/bin/env bash
# The initial snapshot (consistent, incremental, incremental cut by a crash)
# against COPY, with a writer on the table (a benchmark, not a test). The
# benchmark is scripts/bench/snapshot.py; its docstring says what it measures.
#
#   scripts/bench_snapshot.sh [N]    N = rows (default $BENCH_N or 1000000)
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/bench/snapshot.py" "$@"
