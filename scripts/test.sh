#!/usr/bin/env bash
# Runs every test: builds libmla with CMake into build/, runs the native suites with ctest, then
# the Java build and its JUnit tests with the Maven Wrapper (which packages the same libmla).
# Needs cmake, a C++17 compiler, and a JDK 25 (JAVA_HOME, or one found under /usr/lib/jvm).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

. scripts/lib/java-home.sh
find_java_home test.sh || exit 1
echo "test.sh: JAVA_HOME=$JAVA_HOME"

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
ctest --test-dir build --output-on-failure
# ctest prints nothing of a skipped test: show the reasons the skipped suites gave.
grep -h '^SKIP:' build/Testing/Temporary/LastTest.log | sed 's/^SKIP:/ctest: skipped:/' || true
./mvnw -B verify
