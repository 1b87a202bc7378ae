#!/usr/bin/env bash
# Runs mla4j's Java tests from a .gpu-java bundle (scripts/make-gpu-java-bundle.sh) with the
# bundle's jlink'ed runtime and the JUnit Platform console launcher; no Maven, no JDK needed.
#
#   run-java-tests.sh BUNDLE TESTDATA REPORTS [LIBMLA]
#
# BUNDLE: the bundle directory; TESTDATA: the repository's testdata/; REPORTS: where the JUnit XML
# reports go (created); LIBMLA: a libmla.so to load instead of the one bundled in the classes.
# MLA4J_JAVA_TESTS=gpu (default) runs the classes tagged "gpu", =all every test class.
# MLA4J_REQUIRE_CUDA=1 turns "no CUDA device" skips into failures (for runners that have a GPU).
# Exit status: the launcher's (0 when nothing failed).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
bundle="$(cd "$1" && pwd)"
testdata="$(cd "$2" && pwd)"
reports="$3"
lib="${4:-}"
mkdir -p "$reports"

java="$bundle/jre/bin/java"
launcher="$bundle/junit-platform-console-standalone.jar"
for f in "$java" "$launcher" "$bundle/classes" "$bundle/test-classes"; do
  if [ ! -e "$f" ]; then
    echo "run-java-tests: $f is missing; make the bundle with scripts/make-gpu-java-bundle.sh" >&2
    exit 2
  fi
done
cp="$bundle/test-classes:$bundle/classes"
for j in "$bundle"/lib/*.jar; do cp="$cp:$j"; done

props=(-Dmla4j.testdata="$testdata" -Djava.io.tmpdir="${TMPDIR:-/tmp}")
[ -n "$lib" ] && props+=(-Dmla4j.library.path="$lib")
[ "${MLA4J_REQUIRE_CUDA:-0}" = 1 ] && props+=(-Dmla4j.test.requireCuda=true)

select=(--scan-class-path "$bundle/test-classes" --exclude-classname '.*IT$')
case "${MLA4J_JAVA_TESTS:-gpu}" in
  gpu) select+=(--include-tag gpu) ;;
  all) ;;
  *) echo "run-java-tests: MLA4J_JAVA_TESTS=${MLA4J_JAVA_TESTS} (expected gpu or all)" >&2; exit 2 ;;
esac

"$java" -version 2>&1 | head -1
# The class path goes to the JVM itself (not the launcher's --class-path), so tests that start
# child JVMs with java.class.path find the classes.
exec "$java" --enable-native-access=ALL-UNNAMED -Xss4m "${props[@]}" -cp "$cp:$launcher" \
  org.junit.platform.console.ConsoleLauncher execute "${select[@]}" \
  --details=tree --disable-banner --disable-ansi-colors --fail-if-no-tests --reports-dir "$reports"
