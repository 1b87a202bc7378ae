#!/usr/bin/env bash
# On a machine with an NVIDIA Hopper GPU: checks and measures the seesaw decode kernel
# (MLA_CUDA_DECODE=seesaw, native/bench/cuda/NOTES.md v15) against the default kernel, in one
# call: build (scripts/gpu-build.sh), test_cuda_backend with the seesaw kernel, the small cases
# under compute-sanitizer racecheck / synccheck / memcheck, then (only if those passed) the
# PyTorch baseline and bench_decode with the default and the seesaw kernel, alternating, two runs
# each. Every GPU step runs under a timeout (a broken hand-off hangs rather than fails). Logs and
# CSVs in $OUT (or ./gpu-out); the last lines are a per-shape table: default ms, seesaw ms,
# seesaw / default. MLA_SS_ONLY=SHAPE[,SHAPE...] limits the benchmark to those decode rows.
# Exit status: non-zero if a test, a sanitizer run or a benchmark run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
dir=${MLA_GPU_BUILD:-build-gpu}
if [ ! -x "$dir/bench_decode" ]; then
  scripts/gpu-build.sh 2>&1 | tail -20 || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
  > "$out/gpu.txt" 2>&1 || true
status=0
echo "== test_cuda_backend (MLA_CUDA_DECODE=seesaw)"
MLA_CUDA_DECODE=seesaw timeout 300 "$dir/tests_cuda/test_cuda_backend" > "$out/ss-test.log" 2>&1 \
  || { echo "test_cuda_backend failed or timed out (rc $?)"; status=1; }
grep -E "FAIL|checks,|seesaw" "$out/ss-test.log" | tail -n 20
if [ $status = 0 ]; then
  for tool in racecheck synccheck memcheck; do
    echo "== compute-sanitizer $tool (seesaw, MLA_TEST_SMALL=1)"
    MLA_CUDA_DECODE=seesaw MLA_TEST_SMALL=1 timeout 300 compute-sanitizer --tool "$tool" \
      --error-exitcode 9 "$dir/tests_cuda/test_cuda_backend" > "$out/ss-sanitizer-$tool.log" 2>&1 \
      || { echo "$tool failed or timed out"; status=1; }
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|checks,|FAIL" "$out/ss-sanitizer-$tool.log" | tail -5
  done
fi
[ $status = 0 ] || exit $status

only=()
[ -n "${MLA_SS_ONLY:-}" ] && only=(--only "$MLA_SS_ONLY")
PYTHONUNBUFFERED=1 timeout 240 python3 native/bench/cuda/torch_baseline.py "$out/torch.csv" \
  > "$out/torch.log" 2>&1 || echo "torch baseline failed (see torch.log)"
torch=()
[ -s "$out/torch.csv" ] && torch=(--torch "$out/torch.csv")
for run in 1 2; do
  for k in default seesaw; do
    echo "== bench_decode $k, run $run"
    env_k=()
    [ $k = seesaw ] && env_k=(MLA_CUDA_DECODE=seesaw)
    env "${env_k[@]}" timeout 300 "$dir/bench_decode" --no-layer "${torch[@]}" "${only[@]}" \
      --csv "$out/ss-bench-$k-$run.csv" > "$out/ss-bench-$k-$run.log" 2>&1 \
      || { echo "bench_decode $k failed or timed out"; status=1; }
  done
done
python3 - "$out" <<'PY'
import csv, sys, os
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return {r["shape"]: r for r in csv.DictReader(f)}
d = [load(f"ss-bench-default-{i}.csv") for i in (1, 2)]
s = [load(f"ss-bench-seesaw-{i}.csv") for i in (1, 2)]
print(f"{'shape':22} {'default ms':>17} {'seesaw ms':>17} {'ss/def':>7} {'x FlashMLA':>10} {'x torch':>8}  path")
for shape in d[0]:
    if not all(shape in t for t in d + s):
        continue
    dm = [float(t[shape]["ms"]) for t in d]
    sm = [float(t[shape]["ms"]) for t in s]
    fm = float(s[0][shape]["flashmla_ms"])
    tm = float(s[0][shape]["torch_ms"])
    best = min(sm)
    print(f"{shape:22} {dm[0]:8.4f} {dm[1]:8.4f} {sm[0]:8.4f} {sm[1]:8.4f} {min(sm) / min(dm):7.3f} "
          f"{(fm / best if fm > 0 else 0):10.2f} {(tm / best if tm > 0 else 0):8.2f}  {s[0][shape]['path']}")
PY
exit $status
