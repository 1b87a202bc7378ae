// mla_compress on CUDA: RMSNorm(latent) * weight and RoPE(k_rope) into the paged cache, one
// warp per token.
#include "common.cuh"
#include "compress.cuh"

#include <string>

namespace mla {
namespace cuda {

namespace {

constexpr int kMaxRopeHalf = 1024;  // inv_freq entries passed by value (dr <= 2048)

struct InvFreq {
    float f[kMaxRopeHalf];
};

struct CompressArgs {
    const void* kv_a;
    int kv_a_f32;
    int64_t kv_a_stride;
    const void* norm;
    int norm_f32;
    const int32_t* positions;
    const int64_t* slots;
    float eps;
    float attn_factor;
    int interleave;
    void* cache;
    int cache_f32;
    int dc, dr, T;
};

__device__ __forceinline__ float ld(const void* p, int64_t i, int f32) {
    return f32 ? static_cast<const float*>(p)[i] : bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
__device__ __forceinline__ void st(void* p, int64_t i, float v, int f32) {
    if (f32) static_cast<float*>(p)[i] = v;
    else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}
__device__ __forceinline__ float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

__global__ void __launch_bounds__(256) compress_kernel(CompressArgs a, const __grid_constant__ InvFreq inv) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * 8 + warp;
    if (t >= a.T) return;
    const int64_t slot = a.slots[t];
    if (slot < 0) return;
    const int64_t src = int64_t(t) * a.kv_a_stride;
    const int64_t dst = slot * int64_t(a.dc + a.dr);
    // RMSNorm as transformers: f32 statistics, the normalized value cast to the input dtype,
    // then multiplied by the weight.
    float ss = 0.f;
    for (int i = lane; i < a.dc; i += 32) {
        const float x = ld(a.kv_a, src + i, a.kv_a_f32);
        ss += x * x;
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float r = rsqrtf(ss / float(a.dc) + a.eps);
    for (int i = lane; i < a.dc; i += 32) {
        float y = ld(a.kv_a, src + i, a.kv_a_f32) * r;
        if (!a.kv_a_f32) y = round_bf16(y);
        st(a.cache, dst + i, y * ld(a.norm, i, a.norm_f32), a.cache_f32);
    }
    // RoPE: pairs (x_i, x_{i + half}) of the half-split layout (interleaved input is
    // de-interleaved first: x_i = in[2i], x_{i + half} = in[2i + 1]).
    const int half = a.dr / 2;
    const float pos = float(a.positions[t]);
    const int64_t rsrc = src + a.dc;
    for (int i = lane; i < half; i += 32) {
        const float x1 = ld(a.kv_a, rsrc + (a.interleave ? 2 * i : i), a.kv_a_f32);
        const float x2 = ld(a.kv_a, rsrc + (a.interleave ? 2 * i + 1 : i + half), a.kv_a_f32);
        const float ang = pos * inv.f[i];
        float sn, cs;
        sincosf(ang, &sn, &cs);
        cs *= a.attn_factor;
        sn *= a.attn_factor;
        st(a.cache, dst + a.dc + i, x1 * cs - x2 * sn, a.cache_f32);
        st(a.cache, dst + a.dc + half + i, x2 * cs + x1 * sn, a.cache_f32);
    }
}

}  // namespace

void compress(const CompressParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) return;
    const RopeParams& rope = *p.rope;
    if (rope.dim / 2 > kMaxRopeHalf)
        throw Error(MLA_ERROR_UNSUPPORTED, "mla_compress: qk_rope_head_dim = " +
                                               std::to_string(rope.dim) +
                                               " exceeds the CUDA kernel's limit of " +
                                               std::to_string(2 * kMaxRopeHalf));
    if (int64_t(rope.inv_freq.size()) < rope.dim / 2)
        throw Error(MLA_ERROR_INTERNAL, "mla_compress: RoPE table shorter than dim / 2");
    require_device_pointer(p.kv_a, "params.kv_a");
    require_device_pointer(p.norm_weight, "params.norm_weight");
    require_device_pointer(p.positions, "params.positions");
    require_device_pointer(p.slots, "params.slot_mapping");
    require_device_pointer(p.cache.data, "params.cache.data");
    InvFreq inv{};
    for (int i = 0; i < rope.dim / 2; ++i) inv.f[i] = rope.inv_freq[i];
    CompressArgs a;
    a.kv_a = p.kv_a;
    a.kv_a_f32 = p.kv_a_dtype == DType::F32;
    a.kv_a_stride = p.kv_a_stride;
    a.norm = p.norm_weight;
    a.norm_f32 = p.norm_dtype == DType::F32;
    a.positions = p.positions;
    a.slots = p.slots;
    a.eps = p.eps;
    a.attn_factor = rope.attention_factor;
    a.interleave = rope.interleave;
    a.cache = p.cache.data;
    a.cache_f32 = p.cache.dtype == DType::F32;
    a.dc = p.cache.dc;
    a.dr = p.cache.dr;
    a.T = p.num_tokens;
    compress_kernel<<<(p.num_tokens + 7) / 8, 256, 0, stream>>>(a, inv);
    check_launch("compress kernel");
}

}  // namespace cuda
}  // namespace mla
