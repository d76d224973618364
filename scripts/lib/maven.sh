# shellcheck shell=bash
# Building and caching the small Maven projects under tools/ that the test
# servers and clients run from (minidfs.sh, debezium.sh, iceberg_rest.sh). Each
# such project has a pom.xml and src/, builds one jar (artifactId-version.jar) into
# a build directory given by a Maven property, and runs on that jar plus its
# runtime dependencies from ~/.m2. Source it after defining log() and die().
#
#   mvn_key_dir TOOL CACHE        the cache directory of TOOL's current pom.xml and
#                                 src/: CACHE/<16 hex digits of their sha256>
#   mvn_complete CPFILE           CPFILE is there and every entry of the class path
#                                 in it still exists (~/.m2 may have been pruned)
#   mvn_build TOOL CACHE JAR BUILD_PROPERTY WHAT
#                                 unless already done: mvn package
#                                 dependency:build-classpath with -DBUILD_PROPERTY
#                                 pointing into the cache directory, one build at a
#                                 time per CACHE (flock), then records JAR's path
#                                 followed by the runtime class path in
#                                 DIR/classpath; WHAT names the build in the log
#                                 line. Prints the cache directory DIR (mvn's output
#                                 is in DIR/mvn.log)
#   java_find MIN MAX WHAT CANDIDATE...
#                                 the first CANDIDATE (a java binary; empty ones are
#                                 skipped), then $JAVA_HOME/bin/java, java on PATH
#                                 and /usr/lib/jvm/*/bin/java, whose major version
#                                 is MIN to MAX (MAX empty: no upper bound); dies
#                                 naming WHAT (the variable to set) if none is

mvn_key_dir() {
  local tool=$1 cache=$2 key
  key=$(cd "$tool" && find pom.xml src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  echo "$cache/$key"
}

mvn_complete() {
  local cpfile=$1 entry
  [ -s "$cpfile" ] || return 1
  while IFS= read -r entry; do
    [ -e "$entry" ] || return 1
  done < <(tr ':' '\n' <"$cpfile")
}

mvn_build() {
  local tool=$1 cache=$2 jar=$3 prop=$4 what=$5 dir
  dir=$(mvn_key_dir "$tool" "$cache")
  if mvn_complete "$dir/classpath"; then
    echo "$dir"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (bash scripts/setup.sh installs it)"
  mkdir -p "$cache"
  (
    # One build at a time per cache; a second caller waits and reuses it.
    flock 9
    if mvn_complete "$dir/classpath"; then exit 0; fi
    rm -rf "$dir" && mkdir -p "$dir"
    log "building $what with Maven into $dir" >&2
    if ! mvn -q -B -f "$tool/pom.xml" -D"$prop"="$dir/build" \
      package dependency:build-classpath -Dmdep.outputFile="$dir/deps.txt" -Dmdep.includeScope=runtime \
      >"$dir/mvn.log" 2>&1; then
      tail -40 "$dir/mvn.log" >&2
      die "mvn package failed (log: $dir/mvn.log)"
    fi
    [ -f "$dir/build/$jar" ] || die "Maven built no $jar (log: $dir/mvn.log)"
    [ -s "$dir/deps.txt" ] || die "Maven wrote no class path (log: $dir/mvn.log)"
    printf '%s:%s\n' "$dir/build/$jar" "$(cat "$dir/deps.txt")" >"$dir/classpath.tmp"
    mv "$dir/classpath.tmp" "$dir/classpath"
  ) 9>"$cache/.lock"
  mvn_complete "$dir/classpath" || die "the build left no usable class path in $dir"
  echo "$dir"
}

java_find() {
  local min=$1 max=$2 what=$3 j major
  shift 3
  for j in "$@" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    major=$("$j" -version 2>&1 | sed -n '1s/.* version "\([0-9][0-9]*\).*/\1/p')
    if [ -n "$major" ] && [ "$major" -ge "$min" ] && { [ -z "$max" ] || [ "$major" -le "$max" ]; }; then
      echo "$j"
      return 0
    fi
  done
  if [ -n "$max" ]; then
    die "no Java $min to $max found (set $what, or install openjdk-17-jdk-headless)"
  fi
  die "no Java $min or newer found (set $what, or install openjdk-17-jdk-headless)"
}
