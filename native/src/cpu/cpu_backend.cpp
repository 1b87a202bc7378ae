// CPU backend: memory, ISA selection, compression (RMSNorm + RoPE + cache write).
#include "cpu/cpu_backend.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

#include "core.h"

namespace mla::cpu {
namespace {

bool cpu_has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512() {
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
}

}  // namespace

CpuBackend::CpuBackend(int32_t num_threads, const Kernels& k) : k_(k), pool_(num_threads) {}

std::string CpuBackend::describe() const {
    return std::string("cpu ") + k_.name + " threads=" + std::to_string(pool_.size());
}

void* CpuBackend::alloc(size_t bytes) {
    if (bytes == 0) bytes = 1;
    const size_t align = 64;
    size_t rounded = (bytes + align - 1) / align * align;
    if (rounded < bytes) throw Error(MLA_ERROR_OUT_OF_MEMORY, "allocation size overflows");
    void* p = std::aligned_alloc(align, rounded);
    if (!p)
        throw Error(MLA_ERROR_OUT_OF_MEMORY,
                    "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    std::memset(p, 0, rounded);
    return p;
}

void CpuBackend::dealloc(void* p) noexcept { std::free(p); }

void CpuBackend::copy_from_host(void* dst, const void* src, size_t bytes, void*) {
    if (bytes) std::memmove(dst, src, bytes);
}
void CpuBackend::copy_to_host(void* dst, const void* src, size_t bytes, void*) {
    if (bytes) std::memmove(dst, src, bytes);
}
void CpuBackend::copy(void* dst, const void* src, size_t bytes, void*) {
    if (bytes && dst != src) std::memmove(dst, src, bytes);
}

// One token per task: RMSNorm(latent) * weight (f64 sum of squares), RoPE(k_rope), write the slot.
void CpuBackend::compress(const CompressParams& p, void*) {
    const int64_t dc = p.cache.dc, dr = p.cache.dr;
    std::vector<float> weight(static_cast<size_t>(dc));
    if (p.norm_dtype == DType::BF16)
        k_.bf16_to_f32(static_cast<const uint16_t*>(p.norm_weight), weight.data(), dc);
    else
        std::memcpy(weight.data(), p.norm_weight, size_t(dc) * 4);
    // Scratch per worker, allocated before anything is written (tasks must not throw).
    std::vector<float> scratch(size_t(compress_scratch_floats(dc, dr)));
    compress_rows(p, weight.data(), scratch.data());
}

void CpuBackend::compress_rows(const CompressParams& p, const float* weight, float* scratch) {
    const int64_t dc = p.cache.dc, dr = p.cache.dr, E = p.cache.entry_elems();
    const RopeParams& rope = *p.rope;
    const int64_t T = p.num_tokens;
    const int64_t per_task = std::max<int64_t>(1, T / (4 * threads()) + 1);
    const int64_t n_tasks = (T + per_task - 1) / per_task;
    const int64_t per_worker = 2 * E + 2 * dr;
    pool_.run(n_tasks, [&](int64_t task, int worker) {
        float* row = scratch + worker * per_worker;
        float* entry = row + E;
        float* cs = entry + E;
        for (int64_t t = task * per_task; t < std::min(T, (task + 1) * per_task); ++t) {
            const int64_t slot = p.slots[t];
            if (slot < 0) continue;
            if (p.kv_a_dtype == DType::BF16)
                k_.bf16_to_f32(static_cast<const uint16_t*>(p.kv_a) + t * p.kv_a_stride, row, E);
            else
                std::memcpy(row, static_cast<const float*>(p.kv_a) + t * p.kv_a_stride,
                            size_t(E) * 4);
            double ss = 0.0;
            for (int64_t i = 0; i < dc; ++i) ss += double(row[i]) * double(row[i]);
            const float inv = float(1.0 / std::sqrt(ss / double(dc) + double(p.eps)));
            // As transformers' RMSNorm: the normalized value is cast back to the input dtype
            // before the weight multiplies it (as the CUDA backend does).
            if (p.kv_a_dtype == DType::BF16)
                for (int64_t i = 0; i < dc; ++i)
                    entry[i] = weight[i] * bf16_to_f32(f32_to_bf16(row[i] * inv));
            else
                for (int64_t i = 0; i < dc; ++i) entry[i] = weight[i] * (row[i] * inv);
            rope_cos_sin(rope, p.positions[t], cs, cs + dr);
            rope_rotate(rope, cs, cs + dr, row + dc, entry + dc);
            const int64_t block = slot / p.cache.block_size, off = slot % p.cache.block_size;
            const int64_t at = (block * p.cache.block_size + off) * E;
            if (p.cache.dtype == DType::BF16)
                k_.f32_to_bf16(entry, static_cast<uint16_t*>(p.cache.data) + at, E);
            else
                std::memcpy(static_cast<float*>(p.cache.data) + at, entry, size_t(E) * 4);
        }
    });
}

void* CpuBackend::stream_create(const char* /*fn*/) {
    std::unique_ptr<char> token(new char(0));
    std::lock_guard<std::mutex> lock(streams_mutex_);
    streams_.insert(token.get());
    return token.release();
}

void CpuBackend::stream_destroy(void* stream) noexcept {
    if (!stream) return;
    std::lock_guard<std::mutex> lock(streams_mutex_);
    if (streams_.erase(stream)) delete static_cast<char*>(stream);
}

void CpuBackend::stream_synchronize(const char* /*fn*/, void* /*stream*/) {}

void CpuBackend::memory_info(const char* fn, size_t* free, size_t* total) {
    const long page = sysconf(_SC_PAGESIZE);
    const long avail = sysconf(_SC_AVPHYS_PAGES);
    const long phys = sysconf(_SC_PHYS_PAGES);
    if (page <= 0 || avail < 0 || phys <= 0)
        throw Error(MLA_ERROR_INTERNAL, std::string(fn) + ": sysconf cannot report the host's memory");
    *free = size_t(avail) * size_t(page);
    *total = size_t(phys) * size_t(page);
}

void CpuBackend::check_backend_pointer(const char* fn, const char* arg, const void* p) {
    if (!p) throw Error(MLA_ERROR_INVALID_ARGUMENT, std::string(fn) + ": " + arg + " is NULL");
}

}  // namespace mla::cpu

namespace mla {

std::unique_ptr<Backend> make_cpu_backend(int32_t num_threads, int32_t simd) {
    using namespace cpu;
    const Kernels* k = nullptr;
    switch (simd) {
        case MLA_SIMD_AUTO:
            k = cpu_has_avx512() ? &kernels_avx512() : cpu_has_avx2() ? &kernels_avx2() : &kernels_scalar();
            break;
        case MLA_SIMD_SCALAR: k = &kernels_scalar(); break;
        case MLA_SIMD_AVX2:
            if (!cpu_has_avx2())
                throw Error(MLA_ERROR_UNSUPPORTED,
                            "mla_context_create: options.simd = MLA_SIMD_AVX2 (2), but this CPU lacks AVX2/FMA");
            k = &kernels_avx2();
            break;
        case MLA_SIMD_AVX512:
            if (!cpu_has_avx512())
                throw Error(MLA_ERROR_UNSUPPORTED,
                            "mla_context_create: options.simd = MLA_SIMD_AVX512 (3), but this CPU lacks "
                            "AVX-512 F/BW/VL/DQ");
            k = &kernels_avx512();
            break;
        default:
            throw Error(MLA_ERROR_INVALID_ARGUMENT,
                        "mla_context_create: options.simd = " + std::to_string(simd) + ", not a mla_simd");
    }
    int n = num_threads;
    if (n <= 0) {
        unsigned hc = std::thread::hardware_concurrency();
        n = hc == 0 ? 1 : int(hc);
    }
    try {
        return std::make_unique<CpuBackend>(n, *k);
    } catch (const std::system_error& e) {  // a worker thread could not be started
        throw Error(MLA_ERROR_OUT_OF_MEMORY, "mla_context_create: cannot start " + std::to_string(n - 1) +
                                                 " worker threads (options.num_threads = " +
                                                 std::to_string(num_threads) + "): " + e.what());
    }
}

}  // namespace mla
