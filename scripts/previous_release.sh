#!/usr/bin/env bash
# Builds a released version of pg_sink from its git tag into a package tree that
# mirrors Debian's PostgreSQL 15 layout (usr/lib/postgresql/15/lib/pg_sink.so,
# usr/share/postgresql/15/extension/...), for the upgrade test. Reused when the
# tree for that commit is already there.
#
#   scripts/previous_release.sh [tag]      (default v0.1.0) → prints the tree's path
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-v0.1.0}
# The tag, or (in a clone that did not copy tags) the commit it names.
declare -A commits=([v0.1.0]=bd40b64)
commit=$(git rev-parse -q --verify "$tag^{commit}" 2>/dev/null || git rev-parse -q --verify "${commits[$tag]:-none}^{commit}" 2>/dev/null) || {
  echo "previous_release: $tag is not in this clone's history (a shallow clone? git fetch --unshallow --tags)" >&2; exit 1; }
cache=${PGSINK_RELEASE_CACHE:-/var/cache/pg_sink}
out=$cache/pg_sink-$tag
if [ -f "$out/.commit" ] && [ "$(cat "$out/.commit")" = "$commit" ]; then echo "$out"; exit 0; fi
src=$cache/src-$tag
rm -rf "$src" "$out" && mkdir -p "$src"
git archive "$commit" | tar -x -C "$src"
echo "previous_release: building $tag ($commit) once, into $out (several minutes)" >&2
# Its own target directory: the two versions' libraries have the same file name.
(cd "$src" && CARGO_TARGET_DIR=$cache/target nice -n 10 cargo pgrx package --debug \
   --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir "$out" >&2)
echo "$commit" > "$out/.commit"
rm -rf "$src"
echo "$out"
