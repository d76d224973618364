#!/usr/bin/env bash
# sink.export() against COPY (a benchmark, not a test). The benchmark is
# scripts/bench/export.py; its docstring says what it measures.
#
#   scripts/bench_export.sh [N]    N = rows (default $BENCH_N or 1000000)
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/bench/export.py" "$@"
