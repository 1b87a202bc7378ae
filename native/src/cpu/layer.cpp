// The whole attention layer on the CPU, absorbed form:
//   q path -> q_nope . W_UK (per head) | RoPE(q_rope);  kv_a -> compress into the cache;
//   attention over the cache (attention.cpp);  o_lat . W_UV^T (per head) -> o_proj.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core.h"
#include "cpu/cpu_backend.h"

namespace mla::cpu {
namespace {

// A weight matrix [rows, cols] kept as bf16 (when the source was exactly bf16) or f32.
struct Mat {
    int64_t rows = 0, cols = 0;
    std::vector<float> f;
    std::vector<uint16_t> b;

    bool is_bf16() const { return !b.empty(); }
    uint64_t bytes() const { return uint64_t(f.size()) * 4 + uint64_t(b.size()) * 2; }
};

// Bytes of tensor t as this layer keeps it: bf16 matrices when the weights are exactly bf16,
// else f32; norm vectors always f32.
uint64_t kept_bytes(const PreparedWeights& w, PreparedWeights::Tensor t) {
    const bool bf = w.exactly_bf16 && !PreparedWeights::is_vector(t);
    return uint64_t(w.rows(t) * w.cols(t)) * (bf ? 2 : 4);
}

class CpuLayer final : public LayerImpl {
public:
    // Converts each tensor straight into the layer's own copy (rows split over the pool) and
    // reports progress after each one.
    CpuLayer(CpuBackend& be, const LayerSpec& spec, const PreparedWeights& w) : be_(be), s_(spec) {
        using T = PreparedWeights;
        uint64_t total = 0, done = 0;
        for (int t = 0; t < T::kCount; ++t) total += kept_bytes(w, T::Tensor(t));
        auto mat = [&](Mat& m, T::Tensor t) {
            m.rows = w.rows(t);
            m.cols = w.cols(t);
            const size_t n = size_t(m.rows * m.cols);
            if (w.exactly_bf16) {
                m.b.resize(n);
                read(w, t, DType::BF16, m.b.data());
            } else {
                m.f.resize(n);
                read(w, t, DType::F32, m.f.data());
            }
            done += m.bytes();
            w.report(t, done, total);
        };
        auto vec = [&](std::vector<float>& v, T::Tensor t) {
            v.resize(size_t(w.rows(t)));
            read(w, t, DType::F32, v.data());
            done += uint64_t(v.size()) * 4;
            w.report(t, done, total);
        };
        if (s_.q_lora > 0) {
            mat(q_a_, T::kQA);
            vec(q_a_norm_, T::kQANorm);
            mat(q_b_, T::kQB);
        } else {
            mat(q_, T::kQ);
        }
        mat(kv_a_, T::kKvA);
        vec(kv_a_norm_, T::kKvANorm);
        mat(w_uk_t_, T::kWUkT);
        mat(w_uv_, T::kWUv);
        mat(o_, T::kO);
    }

    void forward(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                 DType hidden_dtype, void* out, DType out_dtype, void* stream) override;

private:
    struct Buffers;
    void run_chunk(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                   DType hidden_dtype, void* out, DType out_dtype, Buffers& bf, void* stream);

    // y[m, n] = x[m, :] . W[row0 + n, :] for n < N, over the pool (rows split into tasks).
    void gemm(const float* x, int64_t ldx, int64_t M, const Mat& W, int64_t row0, int64_t N,
              float* y, int64_t ldy) {
        const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>((N + 7) / 8, 4 * be_.threads()));
        const int64_t per = (N + tasks - 1) / tasks;
        be_.parallel_for(tasks, [&](int64_t t) {
            const int64_t n0 = t * per, n1 = std::min(N, n0 + per);
            if (n0 >= n1) return;
            rows_gemm(x, ldx, M, W, row0 + n0, n1 - n0, y + n0, ldy);
        });
    }

    // Per-head products: for h < Hs, y_h = x_h . W[h * per_head + n, :], split over (head, rows).
    void head_gemm(const float* x, int64_t x_head_stride, int64_t ldx, int64_t M, const Mat& W,
                   int64_t per_head, float* y, int64_t y_head_stride, int64_t ldy) {
        const int64_t Hs = s_.heads;
        const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(
                                   (per_head + 15) / 16, (4 * be_.threads() + Hs - 1) / Hs));
        const int64_t per = (per_head + chunks - 1) / chunks;
        be_.parallel_for(Hs * chunks, [&](int64_t t) {
            const int64_t h = t / chunks, c = t % chunks;
            const int64_t n0 = c * per, n1 = std::min(per_head, n0 + per);
            if (n0 >= n1) return;
            rows_gemm(x + h * x_head_stride, ldx, M, W, h * per_head + n0, n1 - n0,
                      y + h * y_head_stride + n0, ldy);
        });
    }

    void rows_gemm(const float* x, int64_t ldx, int64_t M, const Mat& W, int64_t row0, int64_t N,
                   float* y, int64_t ldy) {
        const Kernels& k = be_.kernels();
        if (W.is_bf16())
            k.gemm_nt_bf16(x, ldx, M, W.b.data() + row0 * W.cols, W.cols, N, W.cols, y, ldy);
        else
            k.gemm_nt_f32(x, ldx, M, W.f.data() + row0 * W.cols, W.cols, N, W.cols, y, ldy);
    }

    // All rows of tensor t into dst (as), in row blocks over the pool.
    void read(const PreparedWeights& w, PreparedWeights::Tensor t, DType as, void* dst) {
        const int64_t rows = w.rows(t), cols = w.cols(t);
        const int64_t per = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, cols));
        const size_t row_bytes = size_t(cols) * dtype_size(as);
        be_.parallel_for((rows + per - 1) / per, [&](int64_t i) {
            const int64_t r0 = i * per, r1 = std::min(rows, r0 + per);
            w.read(t, r0, r1, as, static_cast<char*>(dst) + size_t(r0) * row_bytes);
        });
    }

    CpuBackend& be_;
    LayerSpec s_;
    Mat q_a_, q_b_, q_, kv_a_, w_uk_t_, w_uv_, o_;
    std::vector<float> q_a_norm_, kv_a_norm_;
};

// Scratch for one chunk of at most `rows` tokens, allocated once per forward call.
struct CpuLayer::Buffers {
    std::vector<float> x, qa, q, kv, qabs, olat, ov, y, cs;
    std::vector<int64_t> slots;
    std::vector<int32_t> seq_lens, qo, cache_lens;
    std::vector<unsigned char> meta;
    std::vector<float> ws, compress_scratch;
};

// Tokens are processed in chunks of rows (in batch order) so that the per-token intermediates
// stay bounded for long prefills: a chunk only attends to cache entries written by itself or by
// earlier chunks, which is exactly the causal order.
void CpuLayer::forward(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                       DType hidden_dtype, void* out, DType out_dtype, void* stream) {
    const int64_t T = batch.num_tokens, B = batch.num_seqs;
    if (T == 0) return;
    const int64_t D = s_.hidden, Hs = s_.heads, ql = s_.q_lora, dc = s_.dc, dr = s_.dr,
                  dv = s_.dv, qk = s_.dn + dr, E = dc + dr;
    const int64_t per_token = D * 2 + ql + Hs * (qk + E + dc + dv) + E + 2 * dr;
    const int64_t budget = int64_t(16) << 20;  // floats of intermediates per chunk (64 MiB)
    const int64_t C = std::max<int64_t>(1, std::min<int64_t>(T, budget / per_token));

    // Every buffer first: nothing is written to the cache or out before allocation succeeded.
    Buffers bf;
    bf.x.resize(hidden_dtype == DType::BF16 ? size_t(C * D) : 0);
    bf.qa.resize(size_t(C * ql));
    bf.q.resize(size_t(C * Hs * qk));
    bf.kv.resize(size_t(C * E));
    bf.qabs.resize(size_t(C * Hs * E));
    bf.olat.resize(size_t(C * Hs * dc));
    bf.ov.resize(size_t(C * Hs * dv));
    bf.y.resize(out_dtype == DType::BF16 ? size_t(C * D) : 0);
    bf.cs.resize(size_t(C * 2 * dr));
    bf.slots.resize(size_t(C));
    bf.seq_lens.resize(size_t(B));
    bf.qo.resize(size_t(B + 1));
    bf.cache_lens.resize(size_t(B));
    bf.meta.resize(be_.attention_metadata_bytes(int32_t(B), int32_t(C), int32_t(Hs), int32_t(dc)));
    bf.compress_scratch.resize(size_t(be_.compress_scratch_floats(dc, dr)));
    bf.ws.resize((be_.attention_workspace_bytes(int32_t(B), int32_t(C), int32_t(Hs), int32_t(dc),
                                                    int32_t(dr)) + 3) / 4);

    const size_t hsz = hidden_dtype == DType::BF16 ? 2 : 4, osz = out_dtype == DType::BF16 ? 2 : 4;
    int64_t b0 = 0;
    for (int64_t c0 = 0; c0 < T; c0 += C) {
        const int64_t c1 = std::min(T, c0 + C);
        while (batch.qo_indptr[b0 + 1] <= c0) ++b0;  // first sequence with a row in [c0, c1)
        int64_t nb = 0;
        bf.qo[0] = 0;
        for (int64_t b = b0; b < B && batch.qo_indptr[b] < c1; ++b, ++nb) {
            const int64_t r0 = std::max<int64_t>(c0, batch.qo_indptr[b]);
            const int64_t r1 = std::min<int64_t>(c1, batch.qo_indptr[b + 1]);
            bf.cache_lens[size_t(nb)] = int32_t(batch.cache_lens[b] + (r0 - batch.qo_indptr[b]));
            bf.qo[size_t(nb + 1)] = int32_t(bf.qo[size_t(nb)] + std::max<int64_t>(0, r1 - r0));
        }
        BatchDesc sub;
        sub.num_seqs = int32_t(nb);
        sub.num_tokens = int32_t(c1 - c0);
        sub.block_table_stride = batch.block_table_stride;
        sub.qo_indptr = bf.qo.data();
        sub.cache_lens = bf.cache_lens.data();
        sub.positions = batch.positions + c0;
        sub.block_table = batch.block_table + b0 * int64_t(batch.block_table_stride);
        run_chunk(sub, cache, static_cast<const char*>(hidden) + size_t(c0 * D) * hsz, hidden_dtype,
                  static_cast<char*>(out) + size_t(c0 * D) * osz, out_dtype, bf, stream);
    }
}

void CpuLayer::run_chunk(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                         DType hidden_dtype, void* out, DType out_dtype, Buffers& bf, void* stream) {
    const int64_t T = batch.num_tokens, B = batch.num_seqs;
    const int64_t D = s_.hidden, Hs = s_.heads, ql = s_.q_lora, dc = s_.dc, dn = s_.dn,
                  dr = s_.dr, dv = s_.dv, qk = dn + dr, E = dc + dr;
    const Kernels& k = be_.kernels();

    for (int64_t b = 0; b < B; ++b) {
        const int64_t t0 = batch.qo_indptr[b], t1 = batch.qo_indptr[b + 1];
        bf.seq_lens[size_t(b)] = int32_t(batch.cache_lens[b] + (t1 - t0));
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t pos = batch.cache_lens[b] + (t - t0);
            const int64_t blk = batch.block_table[b * batch.block_table_stride + pos / cache.block_size];
            bf.slots[size_t(t)] = blk * cache.block_size + pos % cache.block_size;
        }
    }
    AttentionParams ap;
    ap.num_seqs = batch.num_seqs;
    ap.num_tokens = batch.num_tokens;
    ap.num_heads = int32_t(Hs);
    ap.causal = 1;
    ap.block_table_stride = batch.block_table_stride;
    ap.q_dtype = DType::F32;
    ap.out_dtype = DType::F32;
    ap.scale = s_.scale;
    ap.q = bf.qabs.data();
    ap.qo_indptr = batch.qo_indptr;
    ap.seq_lens = bf.seq_lens.data();
    ap.block_table = batch.block_table;
    ap.cache = cache;
    ap.out = bf.olat.data();
    ap.lse = nullptr;
    be_.attention_plan(ap, bf.meta.data(), bf.meta.size(), stream);

    const float* xin = static_cast<const float*>(hidden);
    if (hidden_dtype == DType::BF16) {
        k.bf16_to_f32(static_cast<const uint16_t*>(hidden), bf.x.data(), T * D);
        xin = bf.x.data();
    }

    // Query path.
    float* q = bf.q.data();
    if (ql > 0) {
        float* qa = bf.qa.data();
        gemm(xin, D, T, q_a_, 0, ql, qa, ql);
        for (int64_t t = 0; t < T; ++t) {
            float* r = qa + t * ql;
            double ss = 0.0;
            for (int64_t i = 0; i < ql; ++i) ss += double(r[i]) * double(r[i]);
            const float inv = float(1.0 / std::sqrt(ss / double(ql) + double(s_.eps)));
            for (int64_t i = 0; i < ql; ++i) r[i] = q_a_norm_[size_t(i)] * (r[i] * inv);
        }
        gemm(qa, ql, T, q_b_, 0, Hs * qk, q, Hs * qk);
    } else {
        gemm(xin, D, T, q_, 0, Hs * qk, q, Hs * qk);
    }

    // Latent path: kv_a, then RMSNorm + RoPE + cache write.
    gemm(xin, D, T, kv_a_, 0, E, bf.kv.data(), E);
    CompressParams cp;
    cp.num_tokens = int32_t(T);
    cp.kv_a = bf.kv.data();
    cp.kv_a_dtype = DType::F32;
    cp.kv_a_stride = E;
    cp.norm_weight = kv_a_norm_.data();
    cp.norm_dtype = DType::F32;
    cp.positions = batch.positions;
    cp.slots = bf.slots.data();
    cp.eps = s_.eps;
    cp.rope = &s_.rope;
    cp.cache = cache;
    be_.compress_rows(cp, kv_a_norm_.data(), bf.compress_scratch.data());

    // Absorption: q_lat[t, h] = W_UK_T[h] . q_nope[t, h]; RoPE on q_rope.
    float* qabs = bf.qabs.data();
    head_gemm(q, qk, Hs * qk, T, w_uk_t_, dc, qabs, E, Hs * E);
    for (int64_t t = 0; t < T; ++t) {
        float* c = bf.cs.data() + t * 2 * dr;
        rope_cos_sin(s_.rope, batch.positions[t], c, c + dr);
        for (int64_t h = 0; h < Hs; ++h)
            rope_rotate(s_.rope, c, c + dr, q + (t * Hs + h) * qk + dn, qabs + (t * Hs + h) * E + dc);
    }

    be_.attention_run(ap, bf.meta.data(), bf.meta.size(), bf.ws.data(), bf.ws.size() * 4, stream);

    // o_h = W_UV[h] . o_lat[t, h], then o_proj over the slice's columns.
    head_gemm(bf.olat.data(), dc, Hs * dc, T, w_uv_, dv, bf.ov.data(), dv, Hs * dv);
    float* yout = out_dtype == DType::BF16 ? bf.y.data() : static_cast<float*>(out);
    gemm(bf.ov.data(), Hs * dv, T, o_, 0, D, yout, D);
    if (out_dtype == DType::BF16) k.f32_to_bf16(bf.y.data(), static_cast<uint16_t*>(out), T * D);
}

}  // namespace

std::unique_ptr<LayerImpl> CpuBackend::create_layer(const LayerSpec& spec, const PreparedWeights& w) {
    return std::make_unique<CpuLayer>(*this, spec, w);
}

}  // namespace mla::cpu
