#!/usr/bin/env bash
# Builds libmla and the Java API (skipping tests) and runs the demo job, dev.mla4j.Main.
# Arguments pass through, e.g.:
#   scripts/demo.sh                                       DeepSeek-V3-shaped layer, random weights
#   scripts/demo.sh --config config.json --weights /path/to/checkpoint --layer 3
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

java_major() {
  local v
  v="$("$1/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}
if [ -z "${JAVA_HOME:-}" ] || [ ! -x "$JAVA_HOME/bin/javac" ] || [ "$(java_major "$JAVA_HOME")" -lt 25 ]; then
  best=""; best_v=0
  for jdk in /usr/lib/jvm/*; do
    [ -x "$jdk/bin/javac" ] || continue
    v="$(java_major "$jdk")"
    if [ "$v" -gt "$best_v" ]; then best="$jdk"; best_v="$v"; fi
  done
  if [ "$best_v" -lt 25 ]; then
    echo "demo.sh: no JDK 25 or newer found; install one and set JAVA_HOME" >&2
    exit 1
  fi
  export JAVA_HOME="$best"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "demo.sh: building libmla and the Java API (./mvnw -DskipTests package)..." >&2
if ! ./mvnw -B -DskipTests package >"$log" 2>&1; then
  cat "$log" >&2
  echo "demo.sh: build failed" >&2
  exit 1
fi
jar="$(ls java-api/target/mla4j-*.jar | grep -v -- '-sources\|-javadoc' | head -n1)"
"$JAVA_HOME/bin/java" -jar "$jar" "$@"
