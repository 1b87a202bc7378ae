#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds (scripts/gpu-build.sh), runs the CUDA backend tests
# with each kernel family and variant, then the small cases under compute-sanitizer memcheck,
# racecheck and synccheck. Logs go to $OUT (or
# ./gpu-out). Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
dir=${MLA_GPU_BUILD:-build-gpu}
status=0
if [ ! -x "$dir/tests_cuda/test_cuda_backend" ]; then
  scripts/gpu-build.sh 2>&1 | tail -20 || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
  > "$out/gpu.txt" 2>&1 || true
echo "== tests (default kernels: warp-specialized wgmma on sm_90a, cheaper softmax, division-free Q copy)"
"$dir/tests_cuda/test_cuda_backend" > "$out/test.log" 2>&1 || status=1
tail -n 40 "$out/test.log"
# the other variants of the warp-specialized kernel, and the seesaw kernel (see attention_init)
for v in MLA_CUDA_WS_LEAN=0 MLA_CUDA_WS_FX=0 \
         MLA_CUDA_PDL=1 MLA_CUDA_DECODE=seesaw; do
  echo "== tests ($v)"
  log="$out/test-$(echo "${v#MLA_CUDA_}" | tr -d =).log"
  env "$v" timeout 300 "$dir/tests_cuda/test_cuda_backend" > "$log" 2>&1 || status=1
  grep -E "FAIL|checks," "$log" | tail -n 10
done
echo "== tests (MLA_CUDA_WS_QREG=0: warp-specialized kernel, Q from shared memory only)"
MLA_CUDA_WS_QREG=0 "$dir/tests_cuda/test_cuda_backend" > "$out/test-noqreg.log" 2>&1 || status=1
grep -E "FAIL|checks," "$out/test-noqreg.log" | tail -n 10
echo "== tests (MLA_CUDA_WS=0: two-warpgroup wgmma kernel)"
MLA_CUDA_WS=0 "$dir/tests_cuda/test_cuda_backend" > "$out/test-wg.log" 2>&1 || status=1
grep -E "FAIL|checks," "$out/test-wg.log" | tail -n 10
echo "== tests (MLA_CUDA_NO_WGMMA=1: mma.sync kernels)"
MLA_CUDA_NO_WGMMA=1 "$dir/tests_cuda/test_cuda_backend" > "$out/test-mma.log" 2>&1 || status=1
grep -E "FAIL|checks," "$out/test-mma.log" | tail -n 10
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer $tool (MLA_TEST_SMALL=1)"
    MLA_TEST_SMALL=1 timeout 400 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$dir/tests_cuda/test_cuda_backend" > "$out/sanitizer-$tool.log" 2>&1 || status=1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|checks,|FAIL" "$out/sanitizer-$tool.log" | tail -5
  done
else
  echo "compute-sanitizer not found"
  status=1
fi
# The golden vectors through the public ABI need the whole library (MLA_GPU_GOLDEN=0 skips).
if [ "${MLA_GPU_GOLDEN:-1}" != 0 ]; then
  echo "== golden vectors on a CUDA context (whole library)"
  full=${MLA_GPU_FULL_BUILD:-build-gpu-full}
  gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  if cmake -S . -B "$full" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMLA_CUDA=ON \
       -DCMAKE_CUDA_ARCHITECTURES=90a > "$out/golden-build.log" 2>&1 &&
     cmake --build "$full" -j"$(nproc)" --target test_cuda_golden >> "$out/golden-build.log" 2>&1; then
    golden=$(find "$full" -name test_cuda_golden -type f | head -n 1)
    "$golden" > "$out/golden.log" 2>&1 || status=1
    tail -n 5 "$out/golden.log"
  else
    echo "golden build failed (see golden-build.log)"
    status=1
  fi
fi
exit $status
