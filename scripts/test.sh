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
ctest --test-dir build --output-on-failure --output-junit ctest-junit.xml
# ctest prints nothing of a skipped test: show the reasons the skipped suites gave.
grep -h '^SKIP:' build/Testing/Temporary/LastTest.log | sed 's/^SKIP:/ctest: skipped:/' || true
./mvnw -B verify

# One closing line over every suite, from ctest's and Maven's JUnit XML reports.
attr() { # attr NAME ELEMENT: the numeric attribute NAME of ELEMENT, or 0
  local v
  v="$(printf '%s' "$2" | grep -o " $1=\"[0-9]*\"" | head -n1 | tr -dc '0-9')"
  echo "${v:-0}"
}
passed=0 failed=0 skipped=0
for f in build/ctest-junit.xml bindings/target/surefire-reports/TEST-*.xml \
         java-api/target/surefire-reports/TEST-*.xml java-api/target/failsafe-reports/TEST-*.xml; do
  [ -f "$f" ] || continue
  suite="$(tr '\n\t' '  ' < "$f" | grep -o '<testsuite [^>]*>' | head -n1)"
  t=$(attr tests "$suite") e=$(attr errors "$suite") x=$(attr failures "$suite") s=$(attr skipped "$suite")
  failed=$((failed + e + x)) skipped=$((skipped + s)) passed=$((passed + t - e - x - s))
done
echo "mla4j: $passed passed, $failed failed, $skipped skipped"
