// The CPU backend: host memory, a persistent thread pool and per-ISA kernels.
#pragma once

#include <memory>
#include <mutex>
#include <unordered_set>

#include "backend.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace mla::cpu {

class CpuBackend final : public Backend {
public:
    CpuBackend(int32_t num_threads, const Kernels& k);
    ~CpuBackend() override {
        for (void* t : streams_) delete static_cast<char*>(t);  // streams the caller did not destroy
    }

    mla_backend kind() const override { return MLA_BACKEND_CPU; }
    std::string describe() const override;

    void* alloc(size_t bytes) override;
    void dealloc(void* p) noexcept override;
    void copy_from_host(void* dst, const void* host_src, size_t bytes, void* stream) override;
    void copy_to_host(void* host_dst, const void* src, size_t bytes, void* stream) override;
    void copy(void* dst, const void* src, size_t bytes, void* stream) override;

    void compress(const CompressParams& p, void* stream) override;
    // compress without allocating: weight is the f32 norm weight [dc], scratch holds
    // compress_scratch_floats() floats. Cannot fail.
    void compress_rows(const CompressParams& p, const float* weight, float* scratch);
    int64_t compress_scratch_floats(int64_t dc, int64_t dr) const { return (2 * (dc + dr) + 2 * dr) * threads(); }

    size_t attention_metadata_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                    int32_t dc) const override;
    size_t attention_workspace_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                     int32_t dc, int32_t dr) const override;
    void attention_plan(const AttentionParams& p, void* metadata, size_t metadata_bytes,
                        void* stream) override;
    void attention_run(const AttentionParams& p, const void* metadata, size_t metadata_bytes,
                       void* workspace, size_t workspace_bytes, void* stream) override;

    std::unique_ptr<LayerImpl> create_layer(const LayerSpec& spec, const PreparedWeights& w) override;

    // Every CPU call is synchronous, so a stream is a token: a distinct non-NULL pointer that
    // this backend records (so destroy frees only its own tokens) and otherwise ignores.
    void* stream_create(const char* fn) override;
    void stream_destroy(void* stream) noexcept override;
    void stream_synchronize(const char* fn, void* stream) override;
    // Available and total physical memory of the host.
    void memory_info(const char* fn, size_t* free, size_t* total) override;
    // Any non-NULL pointer may be host memory; the range cannot be checked.
    void check_backend_pointer(const char* fn, const char* arg, const void* p) override;

    const Kernels& kernels() const { return k_; }
    ThreadPool& pool() { return pool_; }
    int threads() const { return pool_.size(); }

    // fn(i) for i in [0, n), over the pool.
    template <class F>
    void parallel_for(int64_t n, const F& fn) {
        pool_.run(n, [&](int64_t i, int) { fn(i); });
    }

private:
    const Kernels& k_;
    ThreadPool pool_;
    std::mutex streams_mutex_;
    std::unordered_set<void*> streams_;  // owned tokens (new char), freed by stream_destroy
};

}  // namespace mla::cpu
