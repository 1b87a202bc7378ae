// Absorbed MLA attention on CUDA: split-KV schedule (plan), decode kernels, combine.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend.h"

namespace mla {
namespace cuda {

// What the attention code needs to know about the device (read once at backend creation).
struct DeviceInfo {
    int device = 0;
    int sm_count = 0;
    int cc_major = 0, cc_minor = 0;
    size_t smem_optin = 0;   // max dynamic shared memory per block (bytes)
    bool wgmma = false;      // the sm_90a kernels are in this binary and run on this device
    bool ws = false;         // use the warp-specialized sm_90a kernel for 64-row tiles
    bool ws_qreg = false;    // ... with part of Q held in registers by the score warpgroup
    int ws_fx = 0;           // ... cheaper softmax (1, the default; MLA_CUDA_WS_FX=0: off)
    bool ws_lean = false;    // ... division-free Q copy and output rows (default; MLA_CUDA_WS_LEAN=0: off)
    bool pdl = false;        // programmatic dependent launch of the sm_90a kernel + combine
    bool ss = false;         // seesaw sm_90a kernel for 64-row tiles (MLA_CUDA_DECODE=seesaw)
    bool ss_early = false;   // ... warpgroup 1 loads the next odd tile first (MLA_CUDA_SS_EARLY=1)
    float cut_penalty = 8.f; // plan: cost of a cut piece in 64-key units (MLA_CUDA_CUT_PENALTY;
                             // <= 0: equal ranges)
};

// Call once per device before any launch: raises the kernels' dynamic shared-memory limits and
// sets dev.wgmma when allow_wgmma and the sm_90a kernels run on this device.
void attention_init(DeviceInfo& dev, bool allow_wgmma);

size_t attention_metadata_bytes(const DeviceInfo& dev, int32_t max_seqs, int32_t max_tokens,
                                int32_t heads, int32_t dc);
size_t attention_workspace_bytes(const DeviceInfo& dev, int32_t max_seqs, int32_t max_tokens,
                                 int32_t heads, int32_t dc);
void attention_plan(const DeviceInfo& dev, const AttentionParams& p, void* metadata,
                    size_t metadata_bytes, cudaStream_t stream);
void attention_run(const DeviceInfo& dev, const AttentionParams& p, const void* metadata,
                   size_t metadata_bytes, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream);

// Which kernel attention_run uses for these params ("mma-bf16 M=64 BN=64", "generic").
const char* attention_path(const DeviceInfo& dev, const AttentionParams& p);

}  // namespace cuda
}  // namespace mla
