#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and PyTorch: measures the PyTorch bmm+softmax baseline and the
# ceilings (torch_baseline.py), then the CUDA backend's decode attention (bench_decode), in the
# same run, then the compression kernel and whole-layer decode steps. Table on stdout; torch.csv,
# bench.csv and logs in $OUT (or ./gpu-out). MLA_BENCH_VARIANTS=0 skips the runs of the older
# kernel families (decode rows only) that precede the default one.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
dir=${MLA_GPU_BUILD:-build-gpu}
if [ ! -x "$dir/bench_decode" ]; then
  scripts/gpu-build.sh 2>&1 | tail -20 || exit 1
fi
PYTHONUNBUFFERED=1 python3 native/bench/cuda/torch_baseline.py "$out/torch.csv" \
  > "$out/torch.log" 2>&1 || echo "torch baseline failed (see torch.log)"
if [ "${MLA_BENCH_VARIANTS:-1}" != 0 ]; then
  echo "== warp-specialized kernel with the previous softmax (MLA_CUDA_WS_FX=0)"
  MLA_CUDA_WS_FX=0 "$dir/bench_decode" --no-layer --torch "$out/torch.csv" \
    --csv "$out/bench-fx0.csv" > "$out/bench-fx0.log" 2>&1
  tail -n 28 "$out/bench-fx0.log"
  echo "== seesaw kernel (MLA_CUDA_DECODE=seesaw)"
  MLA_CUDA_DECODE=seesaw timeout 300 "$dir/bench_decode" --no-layer --torch "$out/torch.csv" \
    --csv "$out/bench-seesaw.csv" > "$out/bench-seesaw.log" 2>&1
  tail -n 28 "$out/bench-seesaw.log"
  echo "== two-warpgroup wgmma kernel (MLA_CUDA_WS=0)"
  MLA_CUDA_WS=0 "$dir/bench_decode" --no-layer --torch "$out/torch.csv" \
    --csv "$out/bench-wg.csv" > "$out/bench-wg.log" 2>&1
  tail -n 28 "$out/bench-wg.log"
  echo "== mma.sync kernels (MLA_CUDA_NO_WGMMA=1)"
  MLA_CUDA_NO_WGMMA=1 "$dir/bench_decode" --no-layer --torch "$out/torch.csv" \
    --csv "$out/bench-mma.csv" > "$out/bench-mma.log" 2>&1
  tail -n 28 "$out/bench-mma.log"
fi
echo "== default kernels"
"$dir/bench_decode" --torch "$out/torch.csv" --csv "$out/bench.csv" 2>&1 | tee "$out/bench.log"
