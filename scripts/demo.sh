#!/usr/bin/env bash
# Builds libmla and the Java API (skipping tests) and runs the demo job, dev.mla4j.Main.
# Arguments pass through, e.g.:
#   scripts/demo.sh                                       DeepSeek-V3-shaped layer, random weights
#   scripts/demo.sh --config config.json --weights /path/to/checkpoint --layer 3
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

. scripts/lib/java-home.sh
find_java_home demo.sh || exit 1

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
