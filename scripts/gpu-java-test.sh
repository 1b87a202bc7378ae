#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and no Java: builds libmla with the CUDA backend into
# ${MLA_GPU_JAVA_BUILD:-build-gpu-java} and runs the Java GPU tests (the classes tagged "gpu":
# every golden file and mode on CUDA, 8 threads on one GPU, FP8/bf16/f32 weights, device
# buffers, the leak check) with the .gpu-java bundle carried in the working tree (make it with
# scripts/make-gpu-java-bundle.sh on a machine with a JDK 25). A missing GPU fails the tests here
# instead of skipping them. JUnit XML reports and the log go to $OUT (or ./gpu-out/java).
# MLA4J_JAVA_TESTS=all runs every Java test class instead. Exit status: the launcher's.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out/java}
mkdir -p "$out"
dir=${MLA_GPU_JAVA_BUILD:-build-gpu-java}
if [ ! -x .gpu-java/jre/bin/java ] && [ -f .gpu-java.tgz ]; then
  tar -xzf .gpu-java.tgz
fi
if [ ! -x .gpu-java/jre/bin/java ]; then
  echo "gpu-java-test: .gpu-java/ is missing; run scripts/make-gpu-java-bundle.sh where a JDK 25 is" >&2
  exit 2
fi
gen=()
[ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
{ cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMLA_CUDA=ON -DMLA_BUILD_TESTS=OFF &&
  cmake --build "$dir" --target mla -j"$(nproc)"; } > "$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"
  exit 1
}
nvidia-smi --query-gpu=name,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
MLA4J_REQUIRE_CUDA=${MLA4J_REQUIRE_CUDA:-1} scripts/lib/run-java-tests.sh .gpu-java testdata "$out/junit" \
  "$dir/native/libmla.so" > "$out/java-tests.log" 2>&1
status=$?
tail -n 40 "$out/java-tests.log"
exit $status
