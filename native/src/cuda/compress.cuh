// mla_compress on CUDA.
#pragma once

#include <cuda_runtime.h>

#include "backend.h"

namespace mla {
namespace cuda {

// Fused RMSNorm + RoPE + paged write; asynchronous on stream. Slots < 0 are skipped.
void compress(const CompressParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace mla
