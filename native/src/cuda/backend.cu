// The CUDA backend: device memory, copies, and dispatch to the kernels.
#include "attention.cuh"
#include "common.cuh"
#include "compress.cuh"
#include "layer.cuh"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace mla {

namespace cuda {

[[noreturn]] void throw_cuda(cudaError_t e, const char* what) {
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    const mla_status st =
        e == cudaErrorMemoryAllocation ? MLA_ERROR_OUT_OF_MEMORY : MLA_ERROR_DEVICE;
    throw Error(st, std::string(what) + ": " + cudaGetErrorName(e) + " (" +
                        cudaGetErrorString(e) + ")");
}

void require_device_pointer(const void* p, const char* arg) {
    if (!p) return;
    cudaPointerAttributes attr{};
    const cudaError_t e = cudaPointerGetAttributes(&attr, p);
    if (e != cudaSuccess) {
        cudaGetLastError();
        throw Error(MLA_ERROR_INVALID_ARGUMENT,
                    std::string(arg) + " is not a pointer the CUDA runtime knows (" +
                        cudaGetErrorString(e) + "); expected device memory");
    }
    if (attr.type == cudaMemoryTypeUnregistered) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%p", p);
        throw Error(MLA_ERROR_INVALID_ARGUMENT, std::string(arg) + " = " + buf +
                                                    " is host memory; a CUDA context needs "
                                                    "device memory");
    }
}

namespace {

struct DeviceGuard {
    int prev = -1, dev;
    explicit DeviceGuard(int d) : dev(d) {
        if (cudaGetDevice(&prev) != cudaSuccess) {
            cudaGetLastError();
            prev = -1;
        }
        if (prev != dev) check(cudaSetDevice(dev), "cudaSetDevice");
    }
    ~DeviceGuard() {
        if (prev >= 0 && prev != dev) cudaSetDevice(prev);
    }
};

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(int device) {
        int count = 0;
        cudaError_t e = cudaGetDeviceCount(&count);
        if (e != cudaSuccess) {
            cudaGetLastError();
            throw Error(MLA_ERROR_DEVICE, std::string("no usable CUDA device: ") +
                                              cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                                              ")");
        }
        if (device < 0 || device >= count)
            throw Error(MLA_ERROR_DEVICE, "options.device = " + std::to_string(device) +
                                              ", but " + std::to_string(count) +
                                              " CUDA device(s) are present");
        dev_.device = device;
        DeviceGuard g(device);
        cudaDeviceProp prop{};
        check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        dev_.sm_count = prop.multiProcessorCount;
        dev_.cc_major = prop.major;
        dev_.cc_minor = prop.minor;
        dev_.smem_optin = prop.sharedMemPerBlockOptin;
        name_ = prop.name;
        // MLA_CUDA_NO_WGMMA=1 forces the mma.sync kernels on sm_90 (tests and benchmarks of
        // both paths on one GPU).
        const char* no_wg = std::getenv("MLA_CUDA_NO_WGMMA");
        attention_init(dev_, !(no_wg && no_wg[0] == '1'));
    }

    mla_backend kind() const override { return MLA_BACKEND_CUDA; }

    std::string describe() const override {
        // the decode kernel for 64-row head tiles (bf16 q, positive scale): see attention.cu
        const char* decode = dev_.ss ? (dev_.ss_early ? "seesaw-early" : "seesaw")
                             : dev_.ws ? "warp-specialized"
                             : dev_.wgmma ? "wgmma"
                                          : "mma.sync";
        return "cuda:" + std::to_string(dev_.device) + " " + name_ + " sm_" +
               std::to_string(dev_.cc_major) + std::to_string(dev_.cc_minor) + ", decode kernel " +
               decode;
    }

    void* alloc(size_t bytes) override {
        DeviceGuard g(dev_.device);
        void* p = nullptr;
        if (bytes == 0) bytes = 1;
        cudaError_t e = cudaMalloc(&p, bytes);
        if (e != cudaSuccess) {
            cudaGetLastError();
            throw Error(e == cudaErrorMemoryAllocation ? MLA_ERROR_OUT_OF_MEMORY
                                                       : MLA_ERROR_DEVICE,
                        "cudaMalloc(" + std::to_string(bytes) + " bytes): " +
                            cudaGetErrorString(e));
        }
        e = cudaMemset(p, 0, bytes);
        if (e != cudaSuccess) {
            cudaFree(p);
            throw_cuda(e, "cudaMemset");
        }
        return p;
    }

    void dealloc(void* p) noexcept override {
        if (!p) return;
        int prev = -1;
        cudaGetDevice(&prev);
        if (prev != dev_.device) cudaSetDevice(dev_.device);
        cudaFree(p);
        if (prev >= 0 && prev != dev_.device) cudaSetDevice(prev);
        cudaGetLastError();
    }

    // The host buffer may be reused by the caller as soon as this returns. A pageable source is
    // staged by the driver before cudaMemcpyAsync returns, so that needs no wait (and the decode
    // loop no host round trip); a page-locked source is read by the DMA later, so wait for it.
    void copy_from_host(void* dst, const void* host_src, size_t bytes, void* stream) override {
        if (bytes == 0) return;
        DeviceGuard g(dev_.device);
        require_device_pointer(dst, "destination");
        cudaPointerAttributes attr{};
        bool pinned = false;
        if (cudaPointerGetAttributes(&attr, host_src) == cudaSuccess)
            pinned = attr.type == cudaMemoryTypeHost;
        cudaGetLastError();
        check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, as_stream(stream)),
              "cudaMemcpyAsync(host to device)");
        if (pinned) check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
    }

    void copy_to_host(void* host_dst, const void* src, size_t bytes, void* stream) override {
        if (bytes == 0) return;
        DeviceGuard g(dev_.device);
        require_device_pointer(src, "source");
        check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)),
              "cudaMemcpyAsync(device to host)");
        check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
    }

    void copy(void* dst, const void* src, size_t bytes, void* stream) override {
        if (bytes == 0) return;
        DeviceGuard g(dev_.device);
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(stream)),
              "cudaMemcpyAsync(device to device)");
    }

    void compress(const CompressParams& p, void* stream) override {
        DeviceGuard g(dev_.device);
        cuda::compress(p, as_stream(stream));
    }

    size_t attention_metadata_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                    int32_t dc) const override {
        return cuda::attention_metadata_bytes(dev_, max_seqs, max_tokens, heads, dc);
    }
    size_t attention_workspace_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                     int32_t dc, int32_t /*dr: partials hold latents only*/) const override {
        return cuda::attention_workspace_bytes(dev_, max_seqs, max_tokens, heads, dc);
    }
    void attention_plan(const AttentionParams& p, void* metadata, size_t metadata_bytes,
                        void* stream) override {
        DeviceGuard g(dev_.device);
        cuda::attention_plan(dev_, p, metadata, metadata_bytes, as_stream(stream));
    }
    void attention_run(const AttentionParams& p, const void* metadata, size_t metadata_bytes,
                       void* workspace, size_t workspace_bytes, void* stream) override {
        DeviceGuard g(dev_.device);
        cuda::attention_run(dev_, p, metadata, metadata_bytes, workspace, workspace_bytes,
                            as_stream(stream));
    }

    std::unique_ptr<LayerImpl> create_layer(const LayerSpec& spec,
                                            const PreparedWeights& w) override {
        DeviceGuard g(dev_.device);
        return make_layer(dev_, spec, w);
    }

    // Streams, pointer checks and memory figures (mla_stream_*, mla_buffer_wrap,
    // mla_context_memory_info).
    void* stream_create(const char* fn) override {
        DeviceGuard g(dev_.device);
        cudaStream_t s = nullptr;
        check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
              (std::string(fn) + ": cudaStreamCreateWithFlags").c_str());
        return s;
    }

    void stream_destroy(void* stream) noexcept override {
        if (!stream) return;
        int prev = -1;
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
        if (prev != dev_.device) cudaSetDevice(dev_.device);
        cudaStreamDestroy(as_stream(stream));
        if (prev >= 0 && prev != dev_.device) cudaSetDevice(prev);
        cudaGetLastError();
    }

    void stream_synchronize(const char* fn, void* stream) override {
        DeviceGuard g(dev_.device);
        check(cudaStreamSynchronize(as_stream(stream)),
              (std::string(fn) + ": cudaStreamSynchronize").c_str());
    }

    void memory_info(const char* fn, size_t* free, size_t* total) override {
        DeviceGuard g(dev_.device);
        check(cudaMemGetInfo(free, total), (std::string(fn) + ": cudaMemGetInfo").c_str());
    }

    // Device or managed memory of this context's device; host (registered or not) and other
    // devices' memory are refused.
    void check_backend_pointer(const char* fn, const char* arg, const void* p) override {
        if (!p) throw Error(MLA_ERROR_INVALID_ARGUMENT, std::string(fn) + ": " + arg + " is NULL");
        char addr[32];
        std::snprintf(addr, sizeof addr, "%p", p);
        const std::string what = std::string(fn) + ": " + arg + " = " + addr;
        const std::string want = "device memory of cuda:" + std::to_string(dev_.device);
        cudaPointerAttributes attr{};
        const cudaError_t e = cudaPointerGetAttributes(&attr, p);
        if (e != cudaSuccess) {
            cudaGetLastError();
            throw Error(MLA_ERROR_INVALID_ARGUMENT, what + " is not a pointer the CUDA runtime knows (" +
                                                        cudaGetErrorString(e) + "); expected " + want);
        }
        if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
            throw Error(MLA_ERROR_INVALID_ARGUMENT, what + " is host memory; a CUDA context needs " + want);
        if (attr.type == cudaMemoryTypeDevice && attr.device != dev_.device)
            throw Error(MLA_ERROR_INVALID_ARGUMENT, what + " is memory of cuda:" +
                                                        std::to_string(attr.device) + ", expected " + want);
    }

private:
    DeviceInfo dev_;
    std::string name_;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int32_t device) {
    return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace mla
