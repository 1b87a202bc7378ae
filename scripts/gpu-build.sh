#!/usr/bin/env bash
# Builds the CUDA backend, its tests and the decode benchmark on their own (no JVM, no CPU
# backend needed) into ${MLA_GPU_BUILD:-build-gpu}. Usage: scripts/gpu-build.sh [arch list]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${MLA_GPU_BUILD:-build-gpu}
archs=${1:-90a}
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S native/bench/cuda -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" >/dev/null
cmake --build "$dir" -j"$(nproc)"
