// The attention layer on CUDA, and the GEMM its projections run on.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "attention.cuh"
#include "backend.h"

namespace mla {
namespace cuda {

// Uploads the prepared weights (as bf16) to the current device; the layer owns them.
std::unique_ptr<LayerImpl> make_layer(const DeviceInfo& dev, const LayerSpec& spec,
                                      const PreparedWeights& w);

// ------------------------------------------------------------------------------------------
// C[z][M, N] = A[z][M, K] . B[z][N, K]^T for z < batch (B in the PyTorch [out, in] layout).
// A is f32 or bf16 (rounded to bf16 before the product), B bf16, C f32 or bf16 (rounded to
// nearest even); products accumulate in f32 on the tensor cores. All pointers are device
// memory; lda/ldb/ldc are row strides and sa/sb/sc the strides between the z slices, in
// elements. C must not overlap A or B.
// ------------------------------------------------------------------------------------------
struct GemmDesc {
    const void* A = nullptr;
    bool a_f32 = true;
    int64_t lda = 0, sa = 0;
    const uint16_t* B = nullptr;
    int64_t ldb = 0, sb = 0;
    void* C = nullptr;
    bool c_f32 = true;
    int64_t ldc = 0, sc = 0;
    int M = 0, N = 0, K = 0, batch = 1;
};

enum class GemmPath {
    Auto,    // pipelined tensor-core kernel where the operands allow it, else the simple one
    Simple,  // the unpipelined 64 x 64 reference kernel (any shape and alignment)
};

// How a GEMM will run. kernel: -1 simple, 0..2 the pipelined tile shapes (16 x 64, 64 x 64,
// 128 x 128). splits > 1 divides K among that many CTAs per output tile; their f32 partial
// sums are added in a fixed order by the last of them (the result does not depend on timing).
struct GemmPlan {
    int kernel = -1;
    int splits = 1;
    size_t counter_bytes = 0;    // leading part of the workspace: zero on entry, zero on exit
    size_t workspace_bytes = 0;  // total workspace (counters + partial sums); 0 without split
};

// Chooses the kernel and split count for g on a device of sm_count SMs. force_kernel >= 0
// picks the tile shape (when the operands allow the pipelined kernels), force_splits > 0 the
// split count (clamped to [1, number of K tiles]); both are for tests and benchmarks.
GemmPlan gemm_plan(const GemmDesc& g, int sm_count, GemmPath path, int force_kernel = -1,
                   int force_splits = 0);

// Makes plans that run one after another share one workspace: every plan that splits gets
// the largest counter region of them all (its partial sums move behind it), so no plan writes
// partial sums over counters that a later plan expects to find at zero. Returns the workspace
// bytes they need (the largest workspace_bytes afterwards); zero the first counter_bytes once.
size_t gemm_share_workspace(GemmPlan* plans, int n);

// Launches the plan on stream st. workspace: device memory of plan.workspace_bytes (NULL when
// that is 0) whose first plan.counter_bytes are zero; the call leaves them zero again (in
// stream order). pdl: launch as a programmatic dependent of the preceding kernel in st (the
// GEMM then prefetches weight tiles before that kernel has finished; it reads A and writes C
// and the workspace only after); only where the preceding stream work is a kernel launch.
// release: let the next kernel in st, if launched as a programmatic dependent, start once
// every CTA of this GEMM has started (that kernel must griddepcontrol.wait before it touches
// anything this GEMM reads or writes). Throws Error(MLA_ERROR_DEVICE) on launch failure.
void gemm_run(const GemmDesc& g, const GemmPlan& plan, void* workspace, cudaStream_t st,
              bool pdl = false, bool release = false);

// The GEMM path named by the environment: MLA_CUDA_GEMM=simple selects GemmPath::Simple.
GemmPath gemm_path_from_env();

}  // namespace cuda
}  // namespace mla
