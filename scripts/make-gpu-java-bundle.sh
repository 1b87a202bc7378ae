#!/usr/bin/env bash
# Makes .gpu-java/ (ignored by git): what a GPU machine without Java needs to run the Java tests.
#   .gpu-java/jre/                                jlink'ed runtime of this JDK 25: java.base,
#                                                 jdk.unsupported, java.logging (JUnit's logging),
#                                                 java.xml (its XML reports); ~45 MB, 30 of them libjvm.so
#   .gpu-java/junit-platform-console-standalone.jar  JUnit's console launcher (from Maven Central)
#   .gpu-java/classes/, test-classes/             mla4j (with the libmla built here bundled) and its tests
#   .gpu-java/lib/*.jar                           runtime dependencies (Jackson)
# Used by scripts/gpu-java-test.sh (on the GPU machine; the bundled CUDA build of libmla is loaded there) and by
# GpuContainerIT (docker/Dockerfile.cuda copies it into the image). Run it on a machine with a
# JDK 25 and the repository's build prerequisites; with nvcc there, the bundled libmla has the
# CUDA backend. MLA4J_BUILD_DIR picks the CMake build directory (default build/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. scripts/lib/java-home.sh
find_java_home make-gpu-java-bundle.sh || exit 1
out="$root/.gpu-java"
build="${MLA4J_BUILD_DIR:-$root/build}"

junit="$(sed -n 's:.*<junit.version>\(.*\)</junit.version>.*:\1:p' pom.xml)"
platform="1.${junit#5.}"  # JUnit Jupiter 5.x.y ships with Platform 1.x.y

rm -rf "$out"
mkdir -p "$out/lib" "$out/classes"
./mvnw -B -q -pl java-api -am -Dmla4j.cmakeBuildDir="$build" test-compile \
  dependency:copy-dependencies -DincludeScope=runtime -DexcludeGroupIds=dev.mla4j \
  -DoutputDirectory="$out/lib"
./mvnw -B -q dependency:copy -Dartifact="org.junit.platform:junit-platform-console-standalone:$platform" \
  -DoutputDirectory="$out" -Dmdep.stripVersion=true -N
cp -r bindings/target/classes/. "$out/classes/"
cp -r java-api/target/classes/. "$out/classes/"
cp -r java-api/target/test-classes "$out/test-classes"
rm -f "$out/lib/"*bindings*.jar

"$JAVA_HOME/bin/jlink" --add-modules java.base,jdk.unsupported,java.logging,java.xml \
  --strip-debug --no-man-pages --no-header-files --compress=zip-9 --output "$out/jre"

# The device tool carries at most 64 MiB with the tree: the packed bundle fits, the folder does not.
tar -C "$root" -czf "$root/.gpu-java.tgz" .gpu-java
echo "make-gpu-java-bundle: $(du -sh "$out" | cut -f1) in ${out#$root/}, $(du -sh "$root/.gpu-java.tgz" | cut -f1) packed in .gpu-java.tgz (JUnit Platform $platform, $("$out/jre/bin/java" -version 2>&1 | head -1))"
