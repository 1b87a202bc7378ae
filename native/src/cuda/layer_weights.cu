// A layer's prepared weights to the device in chunks: rows are converted (from the caller's
// tensors, via PreparedWeights::read) into one of two pinned staging buffers while the other
// buffer's chunk is copied, so host memory stays at the two buffers whatever the layer's size.
#include "common.cuh"
#include "layer_weights.cuh"

#include <algorithm>
#include <string>
#include <vector>

namespace mla {
namespace cuda {

namespace {

constexpr size_t kStagingBytes = size_t(16) << 20;

uint64_t tensor_bytes(const PreparedWeights& w, const WeightUpload& u) {
    return uint64_t(w.rows(u.tensor) * w.cols(u.tensor)) * dtype_size(u.as);
}

// The staging resources of one upload. The destructor waits for the copies in flight before it
// frees the buffers they read, so every exit path (failure, cancellation) is safe.
struct Staging {
    cudaStream_t stream = nullptr;
    cudaEvent_t copied[2] = {nullptr, nullptr};
    void* buf[2] = {nullptr, nullptr};
    bool pinned[2] = {false, false};
    std::vector<unsigned char> pageable[2];

    Staging() = default;
    Staging(const Staging&) = delete;
    Staging& operator=(const Staging&) = delete;
    ~Staging() {
        if (stream) cudaStreamSynchronize(stream);
        for (int i = 0; i < 2; ++i) {
            if (copied[i]) cudaEventDestroy(copied[i]);
            if (pinned[i]) cudaFreeHost(buf[i]);
        }
        if (stream) cudaStreamDestroy(stream);
        cudaGetLastError();  // nothing of a failed teardown may stick to the next call
    }
};

}  // namespace

uint64_t upload_bytes(const PreparedWeights& w, const WeightUpload* uploads, size_t n) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; ++i) total += tensor_bytes(w, uploads[i]);
    return total;
}

size_t staging_buffer_bytes(const PreparedWeights& w, const WeightUpload* uploads, size_t n) {
    uint64_t largest = 0, row = 0;
    for (size_t i = 0; i < n; ++i) {
        largest = std::max(largest, tensor_bytes(w, uploads[i]));
        row = std::max(row, uint64_t(w.cols(uploads[i].tensor)) * dtype_size(uploads[i].as));
    }
    return size_t(std::max<uint64_t>(std::min<uint64_t>(kStagingBytes, largest), row));
}

void upload_weights(const PreparedWeights& w, const WeightUpload* uploads, size_t n) {
    const uint64_t total = upload_bytes(w, uploads, n);
    const size_t cap = staging_buffer_bytes(w, uploads, n);
    if (total == 0) return;
    Staging s;
    check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking),
          "mla_layer_create: cudaStreamCreateWithFlags (weight staging)");
    for (int i = 0; i < 2; ++i) {
        check(cudaEventCreateWithFlags(&s.copied[i], cudaEventDisableTiming),
              "mla_layer_create: cudaEventCreateWithFlags (weight staging)");
        if (cudaHostAlloc(&s.buf[i], cap, cudaHostAllocDefault) == cudaSuccess) {
            s.pinned[i] = true;
        } else {  // pinned memory exhausted or limited: pageable copies are slower, not wrong
            cudaGetLastError();
            s.pageable[i].resize(cap);
            s.buf[i] = s.pageable[i].data();
        }
    }

    // A queued chunk: its tensor and the bytes done once it has reached the device.
    struct Queued {
        PreparedWeights::Tensor tensor;
        uint64_t done_after;
        bool pending;
    } queued[2] = {{PreparedWeights::kQA, 0, false}, {PreparedWeights::kQA, 0, false}};
    auto finish = [&](int slot) {  // waits for the chunk in slot, then reports it
        if (!queued[slot].pending) return;
        check(cudaEventSynchronize(s.copied[slot]), "mla_layer_create: weight upload");
        queued[slot].pending = false;
        w.report(queued[slot].tensor, queued[slot].done_after, total);
    };

    uint64_t sent = 0;
    int slot = 0;
    for (size_t k = 0; k < n; ++k) {
        const WeightUpload& u = uploads[k];
        const int64_t rows = w.rows(u.tensor);
        const size_t row_bytes = size_t(w.cols(u.tensor)) * dtype_size(u.as);
        const int64_t per = std::max<int64_t>(1, int64_t(cap / row_bytes));
        for (int64_t r0 = 0; r0 < rows; r0 += per) {
            const int64_t r1 = std::min(rows, r0 + per);
            const size_t bytes = size_t(r1 - r0) * row_bytes;
            // This slot's previous chunk was waited for at the end of the previous step.
            w.read(u.tensor, r0, r1, u.as, s.buf[slot]);
            check(cudaMemcpyAsync(static_cast<char*>(u.dst) + size_t(r0) * row_bytes, s.buf[slot],
                                  bytes, cudaMemcpyHostToDevice, s.stream),
                  "mla_layer_create: weight upload (cudaMemcpyAsync)");
            check(cudaEventRecord(s.copied[slot], s.stream), "mla_layer_create: cudaEventRecord");
            sent += bytes;
            queued[slot] = {u.tensor, sent, true};
            // The other buffer's chunk went first: once it is done, that buffer takes the next
            // chunk while this one copies.
            slot ^= 1;
            finish(slot);
        }
    }
    finish(slot ^ 1);
    check(cudaStreamSynchronize(s.stream), "mla_layer_create: weight upload");
}

}  // namespace cuda
}  // namespace mla
