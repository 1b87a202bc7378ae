#!/usr/bin/env bash
# On a machine with an NVIDIA Hopper GPU: checks and measures the seesaw decode kernel
# (MLA_CUDA_DECODE=seesaw, native/bench/cuda/NOTES.md v15) and its EARLY load order
# (MLA_CUDA_SS_EARLY=1) against the default kernel.
# Usage: scripts/gpu-seesaw.sh [test|sanitize|bench|all]
#   test      build (scripts/gpu-build.sh), a one-minute smoke run of each seesaw variant (a hang
#             stops the script there), then test_cuda_backend with each
#   sanitize  the small cases under compute-sanitizer racecheck, synccheck and memcheck (seesaw),
#             racecheck and synccheck (EARLY)
#   bench     the PyTorch baseline, then bench_decode (decode rows) with the default kernel,
#             seesaw and seesaw EARLY, alternating, two runs each; a per-shape table of the three
#   all       (default) test, sanitize, bench, each only if the one before passed
# The phases fit separate device calls when one call would pass 10 minutes (the build stays).
# Every GPU step runs under a timeout (a broken hand-off hangs rather than fails). Logs and CSVs
# in $OUT (or ./gpu-out). MLA_SS_ONLY=SHAPE[,SHAPE...] limits the benchmark to those rows.
# Exit status: non-zero if a test, a sanitizer run or a benchmark run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:-all}
out=${OUT:-gpu-out}
mkdir -p "$out"
dir=${MLA_GPU_BUILD:-build-gpu}
if [ ! -x "$dir/bench_decode" ]; then
  scripts/gpu-build.sh 2>&1 | tail -20 || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
  > "$out/gpu.txt" 2>&1 || true
status=0
variants=("MLA_CUDA_DECODE=seesaw" "MLA_CUDA_DECODE=seesaw MLA_CUDA_SS_EARLY=1")

if [ "$phase" = test ] || [ "$phase" = all ]; then
  # a hang (a broken hand-off) should cost a minute, not the test suite's timeout
  for i in 0 1; do
    v=${variants[$i]}
    echo "== smoke: bench_decode, three shapes, 2 iterations ($v)"
    env $v timeout 60 "$dir/bench_decode" --no-layer --iters 2 \
      --only B1_L1024_H128,B128_L4096_H128_n2,B128_uneven_H128 --csv "$out/ss-smoke-$i.csv" \
      > "$out/ss-smoke-$i.log" 2>&1 || { echo "smoke run failed or hung (rc $?)"; exit 1; }
  done
  for i in 0 1; do
    v=${variants[$i]}
    echo "== test_cuda_backend ($v)"
    env $v timeout 240 "$dir/tests_cuda/test_cuda_backend" > "$out/ss-test-$i.log" 2>&1 \
      || { echo "test_cuda_backend failed or timed out (rc $?)"; status=1; }
    grep -E "^backend:|FAIL|checks," "$out/ss-test-$i.log" | tail -n 20
  done
  [ $status = 0 ] || exit $status
fi

if [ "$phase" = sanitize ] || [ "$phase" = all ]; then
  for run in "0 racecheck" "0 synccheck" "0 memcheck" "1 racecheck" "1 synccheck"; do
    set -- $run
    v=${variants[$1]}
    echo "== compute-sanitizer $2 ($v, MLA_TEST_SMALL=1)"
    env $v MLA_TEST_SMALL=1 timeout 300 compute-sanitizer --tool "$2" --error-exitcode 9 \
      "$dir/tests_cuda/test_cuda_backend" > "$out/ss-sanitizer-$2-$1.log" 2>&1 \
      || { echo "$2 failed or timed out"; status=1; }
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|checks,|FAIL" "$out/ss-sanitizer-$2-$1.log" | tail -5
  done
  [ $status = 0 ] || exit $status
fi

if [ "$phase" = bench ] || [ "$phase" = all ]; then
  only=()
  [ -n "${MLA_SS_ONLY:-}" ] && only=(--only "$MLA_SS_ONLY")
  PYTHONUNBUFFERED=1 timeout 240 python3 native/bench/cuda/torch_baseline.py "$out/torch.csv" \
    > "$out/torch.log" 2>&1 || echo "torch baseline failed (see torch.log)"
  torch=()
  [ -s "$out/torch.csv" ] && torch=(--torch "$out/torch.csv")
  for run in 1 2; do
    for k in default seesaw early; do
      case $k in
        default) v="" ;;
        seesaw) v=${variants[0]} ;;
        early) v=${variants[1]} ;;
      esac
      echo "== bench_decode $k, run $run"
      env $v timeout 240 "$dir/bench_decode" --no-layer "${torch[@]}" "${only[@]}" \
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
runs = {k: [load(f"ss-bench-{k}-{i}.csv") for i in (1, 2)] for k in ("default", "seesaw", "early")}
print("ms: both runs of each kernel; ratios: the better run of each against the better default run")
print(f"{'shape':22} {'default':>15} {'seesaw':>15} {'early':>15} {'ss/def':>7} {'ea/def':>7} "
      f"{'x FlashMLA':>10} {'x torch':>8}")
for shape in runs["default"][0]:
    if not all(shape in t for ts in runs.values() for t in ts):
        continue
    ms = {k: [float(t[shape]["ms"]) for t in ts] for k, ts in runs.items()}
    best = {k: min(v) for k, v in ms.items()}
    fastest = min(best.values())
    row = runs["seesaw"][0][shape]
    fm, tm = float(row["flashmla_ms"]), float(row["torch_ms"])
    cells = " ".join(f"{v[0]:7.4f} {v[1]:7.4f}" for v in ms.values())
    print(f"{shape:22} {cells} {best['seesaw'] / best['default']:7.3f} "
          f"{best['early'] / best['default']:7.3f} {(fm / fastest if fm > 0 else 0):10.2f} "
          f"{(tm / fastest if tm > 0 else 0):8.2f}")
PY
fi
exit $status
