#!/usr/bin/env bash
# The engine must never touch Postgres internals: fail if code (not comments) under
# src/engine uses pgrx or pg_sys; and the module graph of src/ has no circles
# (scripts/import_graph.py).
set -euo pipefail
cd "$(dirname "$0")/.."
hits=$(grep -rnE '\bpgrx\b|\bpg_sys\b' src/engine | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
if [ -n "$hits" ]; then
  echo "$hits"
  echo "engine boundary violated: src/engine must not use pgrx" >&2
  exit 1
fi
echo "engine boundary ok"
# No import circles in src/, no arrow from the engine to the glue.
python3 scripts/import_graph.py
