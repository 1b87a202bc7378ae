#!/usr/bin/env bash
# Runs every test: builds libmla with CMake into build/, runs the native suites with ctest, then
# the Java build and its JUnit tests with the Maven Wrapper (which packages the same libmla).
# Needs cmake, a C++17 compiler, and a JDK 25 (JAVA_HOME, or one found under /usr/lib/jvm).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

java_major() { # prints the feature version of the JDK at $1, or 0
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
    echo "test.sh: no JDK 25 or newer found (JAVA_HOME='${JAVA_HOME:-}', /usr/lib/jvm has none)." >&2
    echo "  Install one (e.g. Temurin 25) and set JAVA_HOME." >&2
    exit 1
  fi
  export JAVA_HOME="$best"
fi
echo "test.sh: JAVA_HOME=$JAVA_HOME"

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
ctest --test-dir build --output-on-failure
./mvnw -B verify
