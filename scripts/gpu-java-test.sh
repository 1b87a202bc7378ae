#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and no Java: runs the Java GPU tests (the classes tagged "gpu":
# every golden file and mode on CUDA, 8 threads on one GPU, FP8/bf16/f32 weights, device
# buffers, the leak check) with the .gpu-java bundle carried in the working tree (make it with
# scripts/make-gpu-java-bundle.sh on a machine with a JDK 25). A missing GPU fails the tests here
# instead of skipping them. JUnit XML reports and the log go to $OUT (or ./gpu-out/java).
# MLA4J_JAVA_TESTS=all runs every Java test class instead. Exit status: the launcher's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out/java}
mkdir -p "$out"
dir=${MLA_GPU_JAVA_BUILD_DIR:-build-gpu-java}
if [ ! -x .gpu-java/jre/bin/java ] && [ -f .gpu-java.tgz ]; then
  tar -xzf .gpu-java.tgz
fi
if [ ! -x .gpu-java/jre/bin/java ]; then
  echo "gpu-java-test: .gpu-java/ is missing; run scripts/make-gpu-java-bundle.sh where a JDK 25 is" >&2
  exit 2
fi
# By default the bundle's own libmla builds are used: on a machine with an NVIDIA driver the jar's
# CUDA build is the one NativeLibrary picks (what a user's JVM gets). MLA_GPU_JAVA_BUILD=1 builds
# libmla here instead (CMake, CUDA on) and loads that file.
lib=()
if [ "${MLA_GPU_JAVA_BUILD:-0}" = 1 ]; then
  gen=()
  [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  { cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMLA_CUDA=ON -DMLA_BUILD_TESTS=OFF &&
    cmake --build "$dir" --target mla -j"$(nproc)"; } > "$out/build.log" 2>&1 || {
    tail -30 "$out/build.log"
    exit 1
  }
  lib=("$dir/native/libmla.so")
fi
nvidia-smi --query-gpu=name,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
MLA4J_REQUIRE_CUDA=${MLA4J_REQUIRE_CUDA:-1} scripts/lib/run-java-tests.sh .gpu-java testdata "$out/junit" \
  "${lib[@]}" > "$out/java-tests.log" 2>&1
status=$?
tail -n 40 "$out/java-tests.log"
exit $status
