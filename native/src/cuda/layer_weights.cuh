// Staging a layer's prepared weights into device memory through a bounded pinned host buffer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend.h"

namespace mla {
namespace cuda {

// One prepared tensor and where it goes: dst is device memory of
// w.rows(tensor) * w.cols(tensor) * dtype_size(as) bytes, as F32 or BF16.
struct WeightUpload {
    PreparedWeights::Tensor tensor;
    DType as;
    void* dst;
};

// Bytes the uploads write to the device (the progress total).
uint64_t upload_bytes(const PreparedWeights& w, const WeightUpload* uploads, size_t n);

// Converts the tensors in row chunks of at most 16 MiB into two pinned host buffers in turn
// (cudaHostAlloc; pageable memory if pinning fails) and copies each chunk to its device tensor
// on a private stream while the next chunk is converted. Reports progress through w.report
// after each chunk has reached the device. Returns when every copy is complete; the staging
// buffers are freed on return and on every failure (after the copies in flight have finished).
// Throws Error: MLA_ERROR_CANCELLED (progress), MLA_ERROR_OUT_OF_MEMORY, MLA_ERROR_DEVICE.
// The caller has made the layer's device current.
void upload_weights(const PreparedWeights& w, const WeightUpload* uploads, size_t n);

// Host bytes of each staging buffer for these uploads: 16 MiB, less when the largest tensor is
// smaller, more when one row is larger.
size_t staging_buffer_bytes(const PreparedWeights& w, const WeightUpload* uploads, size_t n);

}  // namespace cuda
}  // namespace mla
