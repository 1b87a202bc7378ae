// Streams, pointer checks and memory figures of a CUDA context (mla_stream_*, mla_buffer_wrap,
// mla_context_memory_info). RuntimeBackend forwards every kernel and memory call to the CUDA
// backend of backend.cu and adds these; mla_context_create makes CUDA contexts through it.
#include "common.cuh"

#include <cstdio>
#include <string>

namespace mla {
namespace cuda {
namespace {

// Makes device the current device for the scope and restores the previous one.
struct CurrentDevice {
    int prev = -1, dev;
    CurrentDevice(int d, const char* fn) : dev(d) {
        if (cudaGetDevice(&prev) != cudaSuccess) {
            cudaGetLastError();
            prev = -1;
        }
        if (prev != dev) check(cudaSetDevice(dev), fn);
    }
    ~CurrentDevice() {
        if (prev >= 0 && prev != dev) cudaSetDevice(prev);
    }
};

std::string with_call(const char* fn, const char* call) { return std::string(fn) + ": " + call; }

class RuntimeBackend final : public Backend {
public:
    RuntimeBackend(std::unique_ptr<Backend> inner, int device)
        : inner_(std::move(inner)), device_(device) {}

    mla_backend kind() const override { return inner_->kind(); }
    std::string describe() const override { return inner_->describe(); }

    void* alloc(size_t bytes) override { return inner_->alloc(bytes); }
    void dealloc(void* p) noexcept override { inner_->dealloc(p); }
    void copy_from_host(void* dst, const void* host_src, size_t bytes, void* stream) override {
        inner_->copy_from_host(dst, host_src, bytes, stream);
    }
    void copy_to_host(void* host_dst, const void* src, size_t bytes, void* stream) override {
        inner_->copy_to_host(host_dst, src, bytes, stream);
    }
    void copy(void* dst, const void* src, size_t bytes, void* stream) override {
        inner_->copy(dst, src, bytes, stream);
    }
    void compress(const CompressParams& p, void* stream) override { inner_->compress(p, stream); }
    size_t attention_metadata_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                    int32_t dc) const override {
        return inner_->attention_metadata_bytes(max_seqs, max_tokens, heads, dc);
    }
    size_t attention_workspace_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                     int32_t dc, int32_t dr) const override {
        return inner_->attention_workspace_bytes(max_seqs, max_tokens, heads, dc, dr);
    }
    void attention_plan(const AttentionParams& p, void* metadata, size_t metadata_bytes,
                        void* stream) override {
        inner_->attention_plan(p, metadata, metadata_bytes, stream);
    }
    void attention_run(const AttentionParams& p, const void* metadata, size_t metadata_bytes,
                       void* workspace, size_t workspace_bytes, void* stream) override {
        inner_->attention_run(p, metadata, metadata_bytes, workspace, workspace_bytes, stream);
    }
    std::unique_ptr<LayerImpl> create_layer(const LayerSpec& spec,
                                            const PreparedWeights& w) override {
        return inner_->create_layer(spec, w);
    }

    void* stream_create(const char* fn) override {
        CurrentDevice g(device_, fn);
        cudaStream_t s = nullptr;
        check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
              with_call(fn, "cudaStreamCreateWithFlags").c_str());
        return s;
    }

    void stream_destroy(void* stream) noexcept override {
        if (!stream) return;
        int prev = -1;
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
        if (prev != device_) cudaSetDevice(device_);
        cudaStreamDestroy(as_stream(stream));
        if (prev >= 0 && prev != device_) cudaSetDevice(prev);
        cudaGetLastError();
    }

    void stream_synchronize(const char* fn, void* stream) override {
        CurrentDevice g(device_, fn);
        check(cudaStreamSynchronize(as_stream(stream)),
              with_call(fn, "cudaStreamSynchronize").c_str());
    }

    void memory_info(const char* fn, size_t* free, size_t* total) override {
        CurrentDevice g(device_, fn);
        check(cudaMemGetInfo(free, total), with_call(fn, "cudaMemGetInfo").c_str());
    }

    // Device or managed memory of this context's device; host (registered or not) and other
    // devices' memory are refused.
    void check_backend_pointer(const char* fn, const char* arg, const void* p) override {
        char addr[32];
        std::snprintf(addr, sizeof addr, "%p", p);
        if (!p) throw Error(MLA_ERROR_INVALID_ARGUMENT, std::string(fn) + ": " + arg + " is NULL");
        cudaPointerAttributes attr{};
        const cudaError_t e = cudaPointerGetAttributes(&attr, p);
        if (e != cudaSuccess) {
            cudaGetLastError();
            throw Error(MLA_ERROR_INVALID_ARGUMENT,
                        std::string(fn) + ": " + arg + " = " + addr +
                            " is not a pointer the CUDA runtime knows (" + cudaGetErrorString(e) +
                            "); expected device memory of cuda:" + std::to_string(device_));
        }
        if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
            throw Error(MLA_ERROR_INVALID_ARGUMENT,
                        std::string(fn) + ": " + arg + " = " + addr +
                            " is host memory; a CUDA context needs device memory of cuda:" +
                            std::to_string(device_));
        if (attr.type == cudaMemoryTypeDevice && attr.device != device_)
            throw Error(MLA_ERROR_INVALID_ARGUMENT,
                        std::string(fn) + ": " + arg + " = " + addr + " is memory of cuda:" +
                            std::to_string(attr.device) + ", but the context uses cuda:" +
                            std::to_string(device_));
    }

private:
    std::unique_ptr<Backend> inner_;
    int device_;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_runtime_backend(int32_t device) {
    return std::make_unique<cuda::RuntimeBackend>(make_cuda_backend(device), device);
}

}  // namespace mla
