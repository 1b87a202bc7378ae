// The whole attention layer on CUDA, absorbed form (same steps as the CPU layer):
//   q path (q_a -> RMSNorm -> q_b, or q_proj) | kv_a -> compress into the cache
//   q_lat[t, h] = W_UK_T[h] . q_nope[t, h], RoPE(q_rope) -> absorbed queries
//   attention over the cache (plan + run) -> o_lat;  o[t, h] = W_UV[h] . o_lat[t, h] -> o_proj
// Weights live on the device as bf16; activations are f32. The batch arrives as host arrays
// and is staged to the device on the stream; scratch is stream-ordered (cudaMallocAsync).
#include "attention.cuh"
#include "common.cuh"
#include "compress.cuh"
#include "layer.cuh"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace mla {
namespace cuda {

namespace {

// ------------------------------------------------------------------------------------------
// C[z][M, N] = A[z][M, K] . B[z][N, K]^T: A f32 or bf16, B bf16, C f32 or bf16, f32 accumulation
// on mma.sync bf16 tensor cores. Tiles 64 x 64 x 32, 4 warps of 32 x 32.
// ------------------------------------------------------------------------------------------
struct GemmArgs {
    const void* A;
    int a_f32;
    int64_t lda, sa;
    const uint16_t* B;
    int64_t ldb, sb;
    void* C;
    int c_f32;
    int64_t ldc, sc;
    int M, N, K;
};

constexpr int kGm = 64, kGn = 64, kGk = 32, kGpad = 40;  // smem row: 40 bf16 = 80 bytes

__global__ void __launch_bounds__(128) gemm_nt_kernel(GemmArgs g) {
    __shared__ __align__(16) uint16_t As[kGm * kGpad];
    __shared__ __align__(16) uint16_t Bs[kGn * kGpad];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int m0 = blockIdx.y * kGm, n0 = blockIdx.x * kGn;
    const int64_t z = blockIdx.z;
    const uint16_t* B = g.B + z * g.sb;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
    const int lr = tid >> 1, lc = (tid & 1) * 16;  // this thread loads row lr, cols lc..lc+15
    for (int k0 = 0; k0 < g.K; k0 += kGk) {
        {
            const int m = m0 + lr;
            uint16_t v[16];
            if (g.a_f32) {
                const float* a = static_cast<const float*>(g.A) + z * g.sa + int64_t(m) * g.lda;
#pragma unroll
                for (int i = 0; i < 16; ++i) {
                    const int k = k0 + lc + i;
                    v[i] = (m < g.M && k < g.K) ? f32_to_bf16(a[k]) : uint16_t(0);
                }
            } else {
                const uint16_t* a =
                    static_cast<const uint16_t*>(g.A) + z * g.sa + int64_t(m) * g.lda;
#pragma unroll
                for (int i = 0; i < 16; ++i) {
                    const int k = k0 + lc + i;
                    v[i] = (m < g.M && k < g.K) ? a[k] : uint16_t(0);
                }
            }
#pragma unroll
            for (int i = 0; i < 16; ++i) As[lr * kGpad + lc + i] = v[i];
            const int n = n0 + lr;
            const uint16_t* b = B + int64_t(n) * g.ldb;
#pragma unroll
            for (int i = 0; i < 16; ++i) {
                const int k = k0 + lc + i;
                Bs[lr * kGpad + lc + i] = (n < g.N && k < g.K) ? b[k] : uint16_t(0);
            }
        }
        __syncthreads();
        const uint32_t as = smem_addr(As), bs = smem_addr(Bs);
#pragma unroll
        for (int ks = 0; ks < kGk / 16; ++ks) {
            uint32_t af[2][4];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = wm * 32 + i * 16 + (lane & 15);
                const int c = ks * 16 + (lane >> 4) * 8;
                ldmatrix_x4(as + (r * kGpad + c) * 2, af[i][0], af[i][1], af[i][2], af[i][3]);
            }
#pragma unroll
            for (int jp = 0; jp < 2; ++jp) {
                const int n = wn * 32 + jp * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int c = ks * 16 + ((lane >> 3) & 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(bs + (n * kGpad + c) * 2, b0, b1, b2, b3);
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    mma_bf16_16816(acc[i][jp * 2], af[i], b0, b1);
                    mma_bf16_16816(acc[i][jp * 2 + 1], af[i], b2, b3);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + wm * 32 + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
                const int n = n0 + wn * 32 + j * 8 + (lane & 3) * 2 + (e & 1);
                if (m >= g.M || n >= g.N) continue;
                const int64_t off = z * g.sc + int64_t(m) * g.ldc + n;
                if (g.c_f32) static_cast<float*>(g.C)[off] = acc[i][j][e];
                else static_cast<uint16_t*>(g.C)[off] = f32_to_bf16(acc[i][j][e]);
            }
}

void gemm_nt(const void* A, bool a_f32, int64_t lda, int64_t sa, const uint16_t* B, int64_t ldb,
             int64_t sb, void* C, bool c_f32, int64_t ldc, int64_t sc, int M, int N, int K,
             int batch, cudaStream_t st) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    GemmArgs g{A, a_f32, lda, sa, B, ldb, sb, C, c_f32, ldc, sc, M, N, K};
    dim3 grid(unsigned((N + kGn - 1) / kGn), unsigned((M + kGm - 1) / kGm), unsigned(batch));
    gemm_nt_kernel<<<grid, 128, 0, st>>>(g);
    check_launch("layer gemm kernel");
}

// x[r, :] = w * (x[r, :] / rms(x[r, :])), one CTA per row.
__global__ void __launch_bounds__(256) rmsnorm_rows_kernel(float* x, int64_t ld, int n,
                                                           const float* w, float eps) {
    float* r = x + int64_t(blockIdx.x) * ld;
    __shared__ float red[8];
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += 256) ss += r[i] * r[i];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    for (int i = 0; i < 8; ++i) tot += red[i];
    const float inv = rsqrtf(tot / float(n) + eps);
    for (int i = threadIdx.x; i < n; i += 256) r[i] = w[i] * (r[i] * inv);
}

constexpr int kMaxHalf = 1024;
struct InvFreqL {
    float f[kMaxHalf];
};

// qabs[t, h, dc + i] = RoPE(q[t, h, dn + .]) (half-split output), one thread per (t, h, i < half).
__global__ void rope_q_kernel(const float* q, int qk, int dn, float* qabs, int E, int dc,
                              const int32_t* positions, int T, int H, int half, int interleave,
                              float attn, const __grid_constant__ InvFreqL inv) {
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= int64_t(T) * H * half) return;
    const int i = int(idx % half);
    const int64_t th = idx / half;
    const int t = int(th / H);
    const float* x = q + th * qk + dn;
    const float a = interleave ? x[2 * i] : x[i];
    const float b = interleave ? x[2 * i + 1] : x[i + half];
    const float f = inv.f[i] * float(positions[t]);
    double sd, cd;
    sincos(double(f), &sd, &cd);
    const float c = float(cd) * attn, s = float(sd) * attn;
    float* o = qabs + th * E + dc;
    o[i] = a * c - b * s;
    o[i + half] = b * c + a * s;
}

// Device memory owned by the layer.
struct DevMem {
    void* p = nullptr;
    DevMem() = default;
    DevMem(const DevMem&) = delete;
    DevMem& operator=(const DevMem&) = delete;
    ~DevMem() {
        if (p) cudaFree(p);
    }
    template <class T>
    T* as() const { return static_cast<T*>(p); }
};

uint16_t host_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

void upload_bf16(DevMem& m, const std::vector<float>& src, const char* what) {
    std::vector<uint16_t> h(src.size());
    for (size_t i = 0; i < src.size(); ++i) h[i] = host_bf16(src[i]);
    check(cudaMalloc(&m.p, std::max<size_t>(2, h.size() * 2)), what);
    check(cudaMemcpy(m.p, h.data(), h.size() * 2, cudaMemcpyHostToDevice), what);
}
void upload_f32(DevMem& m, const std::vector<float>& src, const char* what) {
    check(cudaMalloc(&m.p, std::max<size_t>(4, src.size() * 4)), what);
    check(cudaMemcpy(m.p, src.data(), src.size() * 4, cudaMemcpyHostToDevice), what);
}

class CudaLayer final : public LayerImpl {
public:
    CudaLayer(const DeviceInfo& dev, const LayerSpec& spec, const PreparedWeights& w)
        : dev_(dev), s_(spec) {
        if (s_.rope.dim / 2 > kMaxHalf)
            throw Error(MLA_ERROR_UNSUPPORTED, "mla_layer_create: qk_rope_head_dim = " +
                                                   std::to_string(s_.rope.dim) +
                                                   " exceeds the CUDA layer's limit");
        if (s_.q_lora > 0) {
            upload_bf16(q_a_, w.q_a, "mla_layer_create: q_a_proj upload");
            upload_f32(q_a_norm_, w.q_a_norm, "mla_layer_create: q_a_layernorm upload");
            upload_bf16(q_b_, w.q_b, "mla_layer_create: q_b_proj upload");
        } else {
            upload_bf16(q_, w.q, "mla_layer_create: q_proj upload");
        }
        upload_bf16(kv_a_, w.kv_a, "mla_layer_create: kv_a_proj upload");
        upload_f32(kv_a_norm_, w.kv_a_norm, "mla_layer_create: kv_a_layernorm upload");
        upload_bf16(w_uk_t_, w.w_uk_t, "mla_layer_create: W_UK upload");
        upload_bf16(w_uv_, w.w_uv, "mla_layer_create: W_UV upload");
        upload_bf16(o_, w.o, "mla_layer_create: o_proj upload");
        for (int i = 0; i < s_.rope.dim / 2; ++i) inv_.f[i] = s_.rope.inv_freq[size_t(i)];
    }

    void forward(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                 DType hidden_dtype, void* out, DType out_dtype, void* stream) override;

private:
    void run_chunk(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                   DType hidden_dtype, void* out, DType out_dtype, cudaStream_t st, int64_t C);

    DeviceInfo dev_;
    LayerSpec s_;
    DevMem q_a_, q_a_norm_, q_b_, q_, kv_a_, kv_a_norm_, w_uk_t_, w_uv_, o_;
    InvFreqL inv_{};
};

// Tokens are processed in chunks (in batch order) so that per-token intermediates stay bounded
// for long prefills; a chunk attends only to entries written by itself or earlier chunks.
void CudaLayer::forward(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                        DType hidden_dtype, void* out, DType out_dtype, void* stream) {
    const int64_t T = batch.num_tokens, B = batch.num_seqs;
    if (T == 0) return;
    require_device_pointer(hidden, "hidden");
    require_device_pointer(out, "out");
    require_device_pointer(cache.data, "cache");
    const int64_t Hs = s_.heads, E = int64_t(s_.dc) + s_.dr;
    const int64_t per_token = int64_t(s_.q_lora) + Hs * (s_.dn + s_.dr + E + s_.dc + s_.dv) + E;
    const int64_t budget = int64_t(64) << 20;  // floats of intermediates per chunk (256 MiB)
    const int64_t C = std::max<int64_t>(1, std::min<int64_t>(T, budget / per_token));
    const cudaStream_t st = as_stream(stream);
    const size_t hsz = hidden_dtype == DType::BF16 ? 2 : 4, osz = out_dtype == DType::BF16 ? 2 : 4;
    const int64_t D = s_.hidden;
    std::vector<int32_t> qo(static_cast<size_t>(B) + 1), cl(static_cast<size_t>(B));
    int64_t b0 = 0;
    for (int64_t c0 = 0; c0 < T; c0 += C) {
        const int64_t c1 = std::min(T, c0 + C);
        while (batch.qo_indptr[b0 + 1] <= c0) ++b0;
        int64_t nb = 0;
        qo[0] = 0;
        for (int64_t b = b0; b < B && batch.qo_indptr[b] < c1; ++b, ++nb) {
            const int64_t r0 = std::max<int64_t>(c0, batch.qo_indptr[b]);
            const int64_t r1 = std::min<int64_t>(c1, batch.qo_indptr[b + 1]);
            cl[size_t(nb)] = int32_t(batch.cache_lens[b] + (r0 - batch.qo_indptr[b]));
            qo[size_t(nb + 1)] = int32_t(qo[size_t(nb)] + std::max<int64_t>(0, r1 - r0));
        }
        BatchDesc sub;
        sub.num_seqs = int32_t(nb);
        sub.num_tokens = int32_t(c1 - c0);
        sub.block_table_stride = batch.block_table_stride;
        sub.qo_indptr = qo.data();
        sub.cache_lens = cl.data();
        sub.positions = batch.positions + c0;
        sub.block_table = batch.block_table + b0 * int64_t(batch.block_table_stride);
        run_chunk(sub, cache, static_cast<const char*>(hidden) + size_t(c0 * D) * hsz, hidden_dtype,
                  static_cast<char*>(out) + size_t(c0 * D) * osz, out_dtype, st, C);
    }
}

void CudaLayer::run_chunk(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                          DType hidden_dtype, void* out, DType out_dtype, cudaStream_t st,
                          int64_t) {
    const int T = batch.num_tokens, B = batch.num_seqs;
    const int D = s_.hidden, Hs = s_.heads, ql = s_.q_lora, dc = s_.dc, dn = s_.dn, dr = s_.dr,
              dv = s_.dv, qk = dn + dr, E = dc + dr;
    const int stride = batch.block_table_stride;

    // Host-side metadata for this chunk: slots, seq lens (cache + new), block table rows.
    std::vector<int64_t> slots(static_cast<size_t>(T));
    std::vector<int32_t> seq_lens(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) {
        const int t0 = batch.qo_indptr[b], t1 = batch.qo_indptr[b + 1];
        seq_lens[size_t(b)] = batch.cache_lens[b] + (t1 - t0);
        for (int t = t0; t < t1; ++t) {
            const int64_t pos = int64_t(batch.cache_lens[b]) + (t - t0);
            const int64_t blk = batch.block_table[int64_t(b) * stride + pos / cache.block_size];
            slots[size_t(t)] = blk * cache.block_size + pos % cache.block_size;
        }
    }
    const size_t md_bytes = attention_metadata_bytes(dev_, B, T, Hs, dc);
    const size_t ws_bytes = attention_workspace_bytes(dev_, B, T, Hs, dc);

    // One stream-ordered scratch allocation, carved into aligned pieces.
    size_t off = 0;
    auto take = [&](size_t bytes) {
        const size_t o = off;
        off += (bytes + 255) & ~size_t(255);
        return o;
    };
    const size_t o_slots = take(size_t(T) * 8), o_pos = take(size_t(T) * 4),
                 o_qo = take(size_t(B + 1) * 4), o_len = take(size_t(B) * 4),
                 o_bt = take(size_t(B) * stride * 4), o_qa = take(size_t(T) * ql * 4),
                 o_q = take(size_t(T) * Hs * qk * 4), o_kv = take(size_t(T) * E * 4),
                 o_qabs = take(size_t(T) * Hs * E * 4), o_olat = take(size_t(T) * Hs * dc * 4),
                 o_ov = take(size_t(T) * Hs * dv * 4), o_md = take(md_bytes),
                 o_ws = take(ws_bytes);
    char* base = nullptr;
    check(cudaMallocAsync(reinterpret_cast<void**>(&base), off, st),
          "mla_layer_forward: scratch allocation");
    struct Free {
        char* p;
        cudaStream_t st;
        ~Free() { cudaFreeAsync(p, st); }
    } guard{base, st};

    auto up = [&](size_t o, const void* src, size_t bytes) {
        if (bytes)
            check(cudaMemcpyAsync(base + o, src, bytes, cudaMemcpyHostToDevice, st),
                  "mla_layer_forward: staging batch metadata");
    };
    up(o_slots, slots.data(), size_t(T) * 8);
    up(o_pos, batch.positions, size_t(T) * 4);
    up(o_qo, batch.qo_indptr, size_t(B + 1) * 4);
    up(o_len, seq_lens.data(), size_t(B) * 4);
    up(o_bt, batch.block_table, size_t(B) * stride * 4);

    float* qa = reinterpret_cast<float*>(base + o_qa);
    float* q = reinterpret_cast<float*>(base + o_q);
    float* kv = reinterpret_cast<float*>(base + o_kv);
    float* qabs = reinterpret_cast<float*>(base + o_qabs);
    float* olat = reinterpret_cast<float*>(base + o_olat);
    float* ov = reinterpret_cast<float*>(base + o_ov);
    const bool hf32 = hidden_dtype == DType::F32;

    // Query path.
    if (ql > 0) {
        gemm_nt(hidden, hf32, D, 0, q_a_.as<uint16_t>(), D, 0, qa, true, ql, 0, T, ql, D, 1, st);
        rmsnorm_rows_kernel<<<T, 256, 0, st>>>(qa, ql, ql, q_a_norm_.as<float>(), s_.eps);
        check_launch("layer rmsnorm kernel");
        gemm_nt(qa, true, ql, 0, q_b_.as<uint16_t>(), ql, 0, q, true, int64_t(Hs) * qk, 0, T,
                Hs * qk, ql, 1, st);
    } else {
        gemm_nt(hidden, hf32, D, 0, q_.as<uint16_t>(), D, 0, q, true, int64_t(Hs) * qk, 0, T,
                Hs * qk, D, 1, st);
    }
    // Latent path: kv_a, then RMSNorm + RoPE + cache write.
    gemm_nt(hidden, hf32, D, 0, kv_a_.as<uint16_t>(), D, 0, kv, true, E, 0, T, E, D, 1, st);
    CompressParams cp;
    cp.num_tokens = T;
    cp.kv_a = kv;
    cp.kv_a_dtype = DType::F32;
    cp.kv_a_stride = E;
    cp.norm_weight = kv_a_norm_.p;
    cp.norm_dtype = DType::F32;
    cp.positions = reinterpret_cast<const int32_t*>(base + o_pos);
    cp.slots = reinterpret_cast<const int64_t*>(base + o_slots);
    cp.eps = s_.eps;
    cp.rope = &s_.rope;
    cp.cache = cache;
    compress(cp, st);
    // Absorption per head: qabs[t, h, :dc] = q_nope[t, h] . W_UK_T[h]^T; RoPE into qabs[.., dc:].
    gemm_nt(q, true, int64_t(Hs) * qk, qk, w_uk_t_.as<uint16_t>(), dn, int64_t(dc) * dn, qabs,
            true, int64_t(Hs) * E, E, T, dc, dn, Hs, st);
    const int half = dr / 2;
    const int64_t nrope = int64_t(T) * Hs * half;
    if (nrope > 0) {
        rope_q_kernel<<<unsigned((nrope + 255) / 256), 256, 0, st>>>(
            q, qk, dn, qabs, E, dc, reinterpret_cast<const int32_t*>(base + o_pos), T, Hs, half,
            s_.rope.interleave, s_.rope.attention_factor, inv_);
        check_launch("layer rope kernel");
    }
    // Attention over the cache.
    AttentionParams ap;
    ap.num_seqs = B;
    ap.num_tokens = T;
    ap.num_heads = Hs;
    ap.causal = 1;
    ap.block_table_stride = stride;
    ap.q_dtype = DType::F32;
    ap.out_dtype = DType::F32;
    ap.scale = s_.scale;
    ap.q = qabs;
    ap.qo_indptr = reinterpret_cast<const int32_t*>(base + o_qo);
    ap.seq_lens = reinterpret_cast<const int32_t*>(base + o_len);
    ap.block_table = reinterpret_cast<const int32_t*>(base + o_bt);
    ap.cache = cache;
    ap.out = olat;
    ap.lse = nullptr;
    attention_plan(dev_, ap, base + o_md, md_bytes, st);
    attention_run(dev_, ap, base + o_md, md_bytes, base + o_ws, ws_bytes, st);
    // o[t, h] = W_UV[h] . o_lat[t, h], then o_proj over the slice's columns.
    gemm_nt(olat, true, int64_t(Hs) * dc, dc, w_uv_.as<uint16_t>(), dc, int64_t(dv) * dc, ov, true,
            int64_t(Hs) * dv, dv, T, dv, dc, Hs, st);
    gemm_nt(ov, true, int64_t(Hs) * dv, 0, o_.as<uint16_t>(), int64_t(Hs) * dv, 0, out,
            out_dtype == DType::F32, D, 0, T, D, Hs * dv, 1, st);
}

}  // namespace

std::unique_ptr<LayerImpl> make_layer(const DeviceInfo& dev, const LayerSpec& spec,
                                      const PreparedWeights& w) {
    return std::make_unique<CudaLayer>(dev, spec, w);
}

}  // namespace cuda
}  // namespace mla
