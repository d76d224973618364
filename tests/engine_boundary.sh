#!/usr/bin/env bash
# The engine must never touch Postgres internals: fail if anything under
# src/engine mentions pgrx.
set -euo pipefail
cd "$(dirname "$0")/.."
if grep -rnE '\bpgrx\b|pg_sys' src/engine; then
  echo "engine boundary violated: src/engine must not use pgrx" >&2
  exit 1
fi
echo "engine boundary ok"
