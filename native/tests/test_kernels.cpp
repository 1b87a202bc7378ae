// Kernel-level tests: mla_compress and mla_attention_* against plain double-precision references
// written here, on caller-owned paged cache memory (poisoned where no sequence lives).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "mla_test.h"
#include "test_util.h"

using namespace mla_test;

namespace {

// Named tolerances. The reference reads the same (bf16-rounded) q and cache values the library
// reads, so bf16 inputs alone leave only f32 accumulation error; a bf16 output adds one rounding
// (half an ulp is 2^-8 of the value).
constexpr double kTolOut = 2e-5;      // out: max|err| / max|ref|, f32 out
constexpr double kTolOutBf16 = 8e-3;  // out: max|err| / max|ref|, bf16 out
constexpr double kTolLse = 5e-5;      // lse: max abs err (scores up to ~40 in the large-scale test)
constexpr double kTolCacheF32 = 1e-5; // compress, f32 cache: max|err| / max|ref|
constexpr double kTolCacheBf16 = 8e-3;// compress, bf16 cache: one rounding of each entry

// Caller-owned paged cache memory: [num_blocks, block_size, dc + dr] in f32 or bf16.
struct HostCache {
    int32_t dtype, num_blocks, block_size, dc, dr;
    std::vector<float> f32;
    std::vector<uint16_t> bf16;

    HostCache(int32_t dt, int32_t nb, int32_t bs, int32_t dc_, int32_t dr_)
        : dtype(dt), num_blocks(nb), block_size(bs), dc(dc_), dr(dr_) {
        size_t n = size_t(nb) * size_t(bs) * size_t(dc + dr);
        if (dt == MLA_DTYPE_F32) f32.assign(n, std::numeric_limits<float>::quiet_NaN());
        else bf16.assign(n, 0x7fc0);  // NaN
    }
    size_t entry() const { return size_t(dc + dr); }
    mla_cache_view view() {
        mla_cache_view v;
        std::memset(&v, 0, sizeof v);
        v.data = dtype == MLA_DTYPE_F32 ? static_cast<void*>(f32.data()) : static_cast<void*>(bf16.data());
        v.dtype = dtype;
        v.num_blocks = num_blocks;
        v.block_size = block_size;
        v.kv_lora_rank = dc;
        v.rope_dim = dr;
        return v;
    }
    float get(int64_t slot, int32_t i) const {
        size_t k = size_t(slot) * entry() + size_t(i);
        return dtype == MLA_DTYPE_F32 ? f32[k] : bf16_to_f32(bf16[k]);
    }
    void set(int64_t slot, int32_t i, float v) {
        size_t k = size_t(slot) * entry() + size_t(i);
        if (dtype == MLA_DTYPE_F32) f32[k] = v;
        else bf16[k] = f32_to_bf16(v);
    }
    std::vector<uint8_t> bytes() const {
        const uint8_t* p = dtype == MLA_DTYPE_F32 ? reinterpret_cast<const uint8_t*>(f32.data())
                                                  : reinterpret_cast<const uint8_t*>(bf16.data());
        size_t n = dtype == MLA_DTYPE_F32 ? f32.size() * 4 : bf16.size() * 2;
        return std::vector<uint8_t>(p, p + n);
    }
};

mla_config small_config(int32_t dc, int32_t dr, int32_t interleave, int32_t scaling) {
    mla_config c;
    mla_config_init(&c);
    c.hidden_size = 64;
    c.num_heads = 2;
    c.q_lora_rank = 0;
    c.kv_lora_rank = dc;
    c.qk_nope_head_dim = 16;
    c.qk_rope_head_dim = dr;
    c.v_head_dim = 16;
    c.rope_interleave = interleave;
    c.rope_scaling = scaling;
    c.rms_norm_eps = 1e-6;
    return c;
}

// ---- attention reference ----
struct AttnCase {
    int32_t heads = 4, dc = 64, dr = 16, block_size = 16;
    int32_t q_dtype = MLA_DTYPE_F32, out_dtype = MLA_DTYPE_F32, cache_dtype = MLA_DTYPE_F32;
    int32_t causal = 1;
    float scale = 0.1f;
    std::vector<int32_t> n;  // query tokens per sequence
    std::vector<int32_t> L;  // keys per sequence
};

struct AttnData {
    AttnCase c;
    int32_t B = 0, T = 0, stride = 0;
    std::vector<int32_t> qo, lens, table;
    HostCache cache;
    std::vector<float> q;        // [T, H, dc + dr] values (bf16-exact when q is bf16)
    std::vector<uint16_t> q16;
    AttnData(const AttnCase& cs, HostCache hc) : c(cs), cache(std::move(hc)) {}
};

// Builds a batch: blocks for all sequences drawn from a shuffled pool with spare blocks that no
// sequence uses (left NaN); used slots hold random values.
AttnData make_attn(const AttnCase& c, std::mt19937_64& rng) {
    const int32_t B = int32_t(c.n.size());
    int32_t stride = 1, need = 0;
    for (int32_t b = 0; b < B; ++b) {
        int32_t nb = (c.L[size_t(b)] + c.block_size - 1) / c.block_size;
        stride = std::max(stride, nb);
        need += nb;
    }
    const int32_t pool = need + 3;
    AttnData d(c, HostCache(c.cache_dtype, pool, c.block_size, c.dc, c.dr));
    d.B = B;
    d.stride = stride;
    std::vector<int32_t> ids(static_cast<size_t>(pool));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    d.table.assign(size_t(B) * size_t(stride), -1);  // entries past a sequence's blocks are unused
    size_t next = 0;
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    d.qo.assign(size_t(B) + 1, 0);
    for (int32_t b = 0; b < B; ++b) {
        int32_t nb = (c.L[size_t(b)] + c.block_size - 1) / c.block_size;
        for (int32_t k = 0; k < nb; ++k) d.table[size_t(b * stride + k)] = ids[next++];
        for (int32_t t = 0; t < c.L[size_t(b)]; ++t) {
            int64_t slot = int64_t(d.table[size_t(b * stride + t / c.block_size)]) * c.block_size + t % c.block_size;
            for (int32_t i = 0; i < c.dc + c.dr; ++i) d.cache.set(slot, i, u(rng));
        }
        d.qo[size_t(b) + 1] = d.qo[size_t(b)] + c.n[size_t(b)];
    }
    // Unused table entries point at a poisoned spare block (they must never be read).
    for (int32_t& e : d.table)
        if (e < 0) e = ids[size_t(pool - 1)];
    d.lens = c.L;
    d.T = d.qo[size_t(B)];
    d.q = random_floats(rng, size_t(d.T) * size_t(c.heads) * size_t(c.dc + c.dr));
    if (c.q_dtype == MLA_DTYPE_BF16) {
        d.q16 = to_bf16(d.q);
        d.q = from_bf16(d.q16);
    }
    return d;
}

void reference_attention(const AttnData& d, std::vector<double>* out, std::vector<double>* lse) {
    const AttnCase& c = d.c;
    const int32_t H = c.heads, E = c.dc + c.dr;
    out->assign(size_t(d.T) * size_t(H) * size_t(c.dc), 0.0);
    lse->assign(size_t(d.T) * size_t(H), 0.0);
    for (int32_t b = 0; b < d.B; ++b) {
        const int32_t nb = c.n[size_t(b)], Lb = c.L[size_t(b)];
        for (int32_t j = 0; j < nb; ++j) {
            const int32_t t = d.qo[size_t(b)] + j;
            const int32_t visible = c.causal ? std::max(0, Lb - nb + j + 1) : Lb;
            for (int32_t h = 0; h < H; ++h) {
                const float* q = &d.q[(size_t(t) * H + size_t(h)) * size_t(E)];
                double* o = &(*out)[(size_t(t) * H + size_t(h)) * size_t(c.dc)];
                if (visible == 0) {
                    (*lse)[size_t(t) * H + size_t(h)] = INFINITY;
                    continue;
                }
                std::vector<double> s(static_cast<size_t>(visible));
                double m = -INFINITY;
                for (int32_t k = 0; k < visible; ++k) {
                    int64_t slot = int64_t(d.table[size_t(b * d.stride + k / c.block_size)]) * c.block_size + k % c.block_size;
                    double acc = 0;
                    for (int32_t i = 0; i < E; ++i) acc += double(q[i]) * double(d.cache.get(slot, i));
                    s[size_t(k)] = acc * double(c.scale);
                    m = std::max(m, s[size_t(k)]);
                }
                double sum = 0;
                for (int32_t k = 0; k < visible; ++k) {
                    double p = std::exp(s[size_t(k)] - m);
                    sum += p;
                    int64_t slot = int64_t(d.table[size_t(b * d.stride + k / c.block_size)]) * c.block_size + k % c.block_size;
                    for (int32_t i = 0; i < c.dc; ++i) o[i] += p * double(d.cache.get(slot, i));
                }
                for (int32_t i = 0; i < c.dc; ++i) o[i] /= sum;
                (*lse)[size_t(t) * H + size_t(h)] = m + std::log(sum);
            }
        }
    }
}

mla_attention_params attn_params(AttnData& d, void* out, float* lse) {
    mla_attention_params p;
    mla_attention_params_init(&p);
    p.num_seqs = d.B;
    p.num_tokens = d.T;
    p.num_heads = d.c.heads;
    p.causal = d.c.causal;
    p.block_table_stride = d.stride;
    p.q_dtype = d.c.q_dtype;
    p.out_dtype = d.c.out_dtype;
    p.softmax_scale = d.c.scale;
    p.q = d.c.q_dtype == MLA_DTYPE_BF16 ? static_cast<const void*>(d.q16.data()) : static_cast<const void*>(d.q.data());
    p.qo_indptr = d.qo.data();
    p.seq_lens = d.lens.data();
    p.block_table = d.table.data();
    p.cache = d.cache.view();
    p.out = out;
    p.lse = lse;
    return p;
}

struct Workspace {
    std::vector<uint8_t> meta, ws;
};

Workspace workspace_for(mla_context* ctx, int32_t seqs, int32_t tokens, int32_t heads, int32_t dc,
                        int32_t dr) {
    size_t mb = 0, wb = 0;
    REQUIRE_OK(mla_attention_workspace_size(ctx, seqs, tokens, heads, dc, dr, &mb, &wb));
    Workspace w;
    w.meta.assign(std::max<size_t>(mb, 1), 0xA5);
    w.ws.assign(std::max<size_t>(wb, 1), 0xA5);
    return w;
}

// Runs the library on d and compares with the reference; returns false when a check failed.
void run_and_compare(mla_context* ctx, AttnData& d, const std::string& what, int reuse_runs = 1) {
    const AttnCase& c = d.c;
    const size_t n_out = size_t(d.T) * size_t(c.heads) * size_t(c.dc);
    std::vector<float> out32(n_out, NAN);
    std::vector<uint16_t> out16(n_out, 0x7fc0);
    std::vector<float> lse(size_t(d.T) * size_t(c.heads), NAN);
    void* out = c.out_dtype == MLA_DTYPE_F32 ? static_cast<void*>(out32.data()) : static_cast<void*>(out16.data());
    mla_attention_params p = attn_params(d, out, lse.data());
    Workspace w = workspace_for(ctx, d.B, std::max(d.T, 1), c.heads, c.dc, c.dr);
    REQUIRE_OK(mla_attention_plan(ctx, &p, w.meta.data(), w.meta.size(), nullptr));
    std::mt19937_64 rng(12345);
    for (int run = 0; run < reuse_runs; ++run) {
        if (run > 0) {  // same lengths, new values: the plan must still apply
            std::uniform_real_distribution<float> u(-1.f, 1.f);
            for (int32_t b = 0; b < d.B; ++b)
                for (int32_t t = 0; t < c.L[size_t(b)]; ++t) {
                    int64_t slot = int64_t(d.table[size_t(b * d.stride + t / c.block_size)]) * c.block_size + t % c.block_size;
                    for (int32_t i = 0; i < c.dc + c.dr; ++i) d.cache.set(slot, i, u(rng));
                }
            for (float& x : d.q) x = c.q_dtype == MLA_DTYPE_BF16 ? round_bf16(u(rng)) : u(rng);
            if (c.q_dtype == MLA_DTYPE_BF16) d.q16 = to_bf16(d.q);
            p = attn_params(d, out, lse.data());
            std::fill(out32.begin(), out32.end(), NAN);
            std::fill(out16.begin(), out16.end(), 0x7fc0);
            std::fill(lse.begin(), lse.end(), NAN);
        }
        REQUIRE_OK(mla_attention_run(ctx, &p, w.meta.data(), w.meta.size(), w.ws.data(), w.ws.size(), nullptr));
        std::vector<double> ro, rl;
        reference_attention(d, &ro, &rl);
        std::vector<float> got = c.out_dtype == MLA_DTYPE_F32 ? out32 : from_bf16(out16);
        double num = 0, den = 0, lse_err = 0;
        bool bad_inf = false;
        for (size_t i = 0; i < n_out; ++i) {
            double e = std::fabs(double(got[i]) - ro[i]);
            num = std::max(num, std::isnan(e) ? INFINITY : e);
            den = std::max(den, std::fabs(ro[i]));
        }
        for (size_t i = 0; i < rl.size(); ++i) {
            if (std::isinf(rl[i])) {
                bad_inf |= !(std::isinf(lse[i]) && lse[i] > 0);
                continue;
            }
            double e = std::fabs(double(lse[i]) - rl[i]);
            lse_err = std::max(lse_err, std::isnan(e) ? INFINITY : e);
        }
        double rel = den > 0 ? num / den : num;
        const double tol = c.out_dtype == MLA_DTYPE_BF16 ? kTolOutBf16 : kTolOut;
        std::string w2 = what + (reuse_runs > 1 ? " run " + std::to_string(run) : "");
        std::printf("    %-48s out rel %.2e lse abs %.2e\n", w2.c_str(), rel, lse_err);
        CHECK_LE_TOL(w2 + " out", rel, tol);
        CHECK_LE_TOL(w2 + " lse", lse_err, kTolLse);
        CHECK_MSG(!bad_inf, w2 + ": a query with no key must give lse = +inf");
    }
}

std::string case_name(const AttnCase& c) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "H%d dc%d dr%d bs%d B%zu %s q%s c%s o%s", c.heads, c.dc, c.dr, c.block_size,
                  c.n.size(), c.causal ? "causal" : "noncausal", c.q_dtype == MLA_DTYPE_F32 ? "32" : "16",
                  c.cache_dtype == MLA_DTYPE_F32 ? "32" : "16", c.out_dtype == MLA_DTYPE_F32 ? "32" : "16");
    return buf;
}

}  // namespace

MLA_TEST(attention_decode_deepseek_dims) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(1);
    for (int32_t cache_dt : {MLA_DTYPE_F32, MLA_DTYPE_BF16}) {
        AttnCase c;
        c.heads = 16;
        c.dc = 512;
        c.dr = 64;
        c.block_size = 64;
        c.cache_dtype = cache_dt;
        c.scale = 0.1147f;
        c.n = {1, 1, 1};
        c.L = {1, 200, 77};
        AttnData d = make_attn(c, rng);
        run_and_compare(ctx.get(), d, case_name(c));
    }
}

MLA_TEST(attention_random_ragged_causal) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(2);
    const int32_t dims[][2] = {{512, 64}, {64, 16}, {128, 32}, {256, 64}, {96, 8}};
    const int32_t bss[] = {1, 16, 64, 128};
    for (int it = 0; it < 10; ++it) {
        AttnCase c;
        c.heads = 1 + int32_t(rng() % 20);
        c.dc = dims[it % 5][0];
        c.dr = dims[it % 5][1];
        c.block_size = bss[rng() % 4];
        c.cache_dtype = it % 2 ? MLA_DTYPE_BF16 : MLA_DTYPE_F32;
        c.scale = 0.05f + float(rng() % 100) / 400.f;
        int32_t B = 1 + int32_t(rng() % 4);
        for (int32_t b = 0; b < B; ++b) {
            int32_t L = 1 + int32_t(rng() % 150);
            int32_t n = 1 + int32_t(rng() % std::min(L, 6));  // several query tokens per sequence
            c.n.push_back(n);
            c.L.push_back(L);
        }
        AttnData d = make_attn(c, rng);
        run_and_compare(ctx.get(), d, case_name(c));
    }
}

MLA_TEST(attention_rope_wider_than_latent) {
    // The workspace size takes the rope width: a RoPE part wider than the latent (and than 64)
    // must run with exactly the size mla_attention_workspace_size reports.
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    std::mt19937_64 rng(11);
    AttnCase c;
    c.heads = 3;
    c.dc = 16;
    c.dr = 256;
    c.n = {1, 2};
    c.L = {40, 9};
    AttnData d = make_attn(c, rng);
    run_and_compare(ctx.get(), d, case_name(c));
}

MLA_TEST(attention_non_causal) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(3);
    AttnCase c;
    c.heads = 5;
    c.causal = 0;
    c.n = {3, 1, 4};
    c.L = {10, 33, 4};
    AttnData d = make_attn(c, rng);
    run_and_compare(ctx.get(), d, case_name(c));
}

MLA_TEST(attention_prefill_triangle) {
    // Every key of the sequence is new (n_b = L_b): the full causal triangle, and the same batch
    // without the mask.
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(31);
    for (int32_t causal : {1, 0}) {
        AttnCase c;
        c.heads = 3;
        c.causal = causal;
        c.n = {37, 5, 1};
        c.L = {37, 5, 1};
        AttnData d = make_attn(c, rng);
        run_and_compare(ctx.get(), d, case_name(c) + " n=L");
    }
}

MLA_TEST(attention_zero_length_sequences) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(4);
    AttnCase c;
    c.heads = 3;
    c.n = {1, 0, 2, 1, 0};
    c.L = {0, 0, 5, 9, 3};  // seq 0: one query, no key; seq 1: nothing; seq 4: keys but no query
    AttnData d = make_attn(c, rng);
    run_and_compare(ctx.get(), d, "zero-length mix");
    // Explicit: the key-less query's out row is exactly 0 and its lse +inf.
    std::vector<float> out(size_t(d.T) * size_t(c.heads) * size_t(c.dc), NAN), lse(size_t(d.T) * size_t(c.heads), NAN);
    mla_attention_params p = attn_params(d, out.data(), lse.data());
    Workspace w = workspace_for(ctx.get(), d.B, d.T, c.heads, c.dc, c.dr);
    REQUIRE_OK(mla_attention_plan(ctx.get(), &p, w.meta.data(), w.meta.size(), nullptr));
    REQUIRE_OK(mla_attention_run(ctx.get(), &p, w.meta.data(), w.meta.size(), w.ws.data(), w.ws.size(), nullptr));
    for (int32_t h = 0; h < c.heads; ++h) {
        CHECK(std::isinf(lse[size_t(h)]) && lse[size_t(h)] > 0);
        for (int32_t i = 0; i < c.dc; ++i) CHECK_EQ(out[size_t(h) * size_t(c.dc) + size_t(i)], 0.0f);
    }
    // A batch with a single key-less query.
    AttnCase c1;
    c1.n = {1};
    c1.L = {0};
    AttnData d1 = make_attn(c1, rng);
    run_and_compare(ctx.get(), d1, "single empty sequence");
}

MLA_TEST(attention_bf16_q_and_out) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(5);
    for (int32_t qd : {MLA_DTYPE_F32, MLA_DTYPE_BF16})
        for (int32_t od : {MLA_DTYPE_F32, MLA_DTYPE_BF16})
            for (int32_t cd : {MLA_DTYPE_F32, MLA_DTYPE_BF16}) {
                AttnCase c;
                c.heads = 8;
                c.dc = 512;
                c.dr = 64;
                c.q_dtype = qd;
                c.out_dtype = od;
                c.cache_dtype = cd;
                c.n = {1, 3};
                c.L = {40, 70};
                AttnData d = make_attn(c, rng);
                run_and_compare(ctx.get(), d, case_name(c));
            }
}

MLA_TEST(attention_lse_with_large_scores) {
    // Scores in the tens: the softmax must stay finite (max subtraction) and lse exact.
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(6);
    AttnCase c;
    c.heads = 2;
    c.scale = 4.0f;
    c.n = {2};
    c.L = {50};
    AttnData d = make_attn(c, rng);
    run_and_compare(ctx.get(), d, "scale 4");
}

MLA_TEST(attention_plan_reused_across_runs) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(7);
    AttnCase c;
    c.heads = 16;
    c.dc = 512;
    c.dr = 64;
    c.n = {1, 1, 4};
    c.L = {300, 2, 64};
    AttnData d = make_attn(c, rng);
    run_and_compare(ctx.get(), d, "plan reuse", 2);
}

MLA_TEST(attention_does_not_write_past_batch_or_read_poison) {
    // out / lse have guard rows after T; lse NULL is accepted.
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(8);
    AttnCase c;
    c.heads = 4;
    c.n = {2, 1};
    c.L = {20, 31};
    AttnData d = make_attn(c, rng);
    const size_t n_out = size_t(d.T) * size_t(c.heads) * size_t(c.dc);
    std::vector<float> out(n_out + 64, -7.0f);
    mla_attention_params p = attn_params(d, out.data(), nullptr);
    Workspace w = workspace_for(ctx.get(), d.B + 3, d.T + 5, c.heads, c.dc, c.dr);  // larger than needed is fine
    REQUIRE_OK(mla_attention_plan(ctx.get(), &p, w.meta.data(), w.meta.size(), nullptr));
    REQUIRE_OK(mla_attention_run(ctx.get(), &p, w.meta.data(), w.meta.size(), w.ws.data(), w.ws.size(), nullptr));
    std::vector<double> ro, rl;
    reference_attention(d, &ro, &rl);
    std::vector<float> got(out.begin(), out.begin() + ptrdiff_t(n_out));
    std::vector<float> ref(ro.begin(), ro.end());
    CHECK_LE_TOL("out rel (lse NULL)", max_rel(got, ref), kTolOut);
    for (size_t i = n_out; i < out.size(); ++i) CHECK_EQ(out[i], -7.0f);
}

// ---- compress ----
namespace {

struct CompressCase {
    int32_t dc = 64, dr = 16, interleave = 1, scaling = MLA_ROPE_SCALING_NONE;
    int32_t kv_dtype = MLA_DTYPE_F32, norm_dtype = MLA_DTYPE_F32, cache_dtype = MLA_DTYPE_F32;
    int32_t block_size = 16, tokens = 20;
};

void compress_case(mla_context* ctx, const CompressCase& k, std::mt19937_64& rng) {
    const int32_t T = k.tokens, E = k.dc + k.dr;
    const int64_t stride = E + 7;  // padding columns hold NaN and must not be read
    mla_config cfg = small_config(k.dc, k.dr, k.interleave, k.scaling);
    REQUIRE_OK(mla_config_validate(&cfg));
    std::vector<float> kv(size_t(T) * size_t(stride), NAN);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    for (int32_t t = 0; t < T; ++t)
        for (int32_t i = 0; i < E; ++i) {
            float v = u(rng);
            kv[size_t(t) * size_t(stride) + size_t(i)] = k.kv_dtype == MLA_DTYPE_BF16 ? round_bf16(v) : v;
        }
    std::vector<uint16_t> kv16 = to_bf16(kv);
    std::vector<float> w = random_floats(rng, size_t(k.dc), 0.5f, 1.5f);
    if (k.norm_dtype == MLA_DTYPE_BF16)
        for (float& x : w) x = round_bf16(x);
    std::vector<uint16_t> w16 = to_bf16(w);
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int32_t& p : pos) p = int32_t(rng() % 5000);
    const int32_t nb = (T + k.block_size - 1) / k.block_size + 2;
    HostCache cache(k.cache_dtype, nb, k.block_size, k.dc, k.dr);
    std::vector<int64_t> slots(size_t(nb) * size_t(k.block_size));
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(static_cast<size_t>(T));
    for (int32_t t = 0; t < T; t += 5) slots[size_t(t)] = -1;  // skipped tokens
    const std::vector<uint8_t> before = cache.bytes();

    mla_compress_params p;
    REQUIRE_OK(mla_compress_params_init(&p));
    p.num_tokens = T;
    p.kv_a = k.kv_dtype == MLA_DTYPE_F32 ? static_cast<const void*>(kv.data()) : static_cast<const void*>(kv16.data());
    p.kv_a_dtype = k.kv_dtype;
    p.kv_a_stride = stride;
    p.norm_weight = k.norm_dtype == MLA_DTYPE_F32 ? static_cast<const void*>(w.data()) : static_cast<const void*>(w16.data());
    p.norm_weight_dtype = k.norm_dtype;
    p.positions = pos.data();
    p.slot_mapping = slots.data();
    p.cache = cache.view();
    REQUIRE_OK(mla_compress(ctx, &cfg, &p, nullptr));

    std::vector<float> cs(size_t(T) * size_t(k.dr)), sn(size_t(T) * size_t(k.dr));
    REQUIRE_OK(mla_config_rope_tables(&cfg, pos.data(), T, cs.data(), sn.data()));
    double err_lat = 0, max_lat = 0, err_rope = 0, max_rope = 0;
    std::vector<bool> written(size_t(nb) * size_t(k.block_size), false);
    for (int32_t t = 0; t < T; ++t) {
        if (slots[size_t(t)] < 0) continue;
        written[size_t(slots[size_t(t)])] = true;
        const float* x = &kv[size_t(t) * size_t(stride)];
        double ss = 0;
        for (int32_t i = 0; i < k.dc; ++i) ss += double(x[i]) * x[i];
        double r = 1.0 / std::sqrt(ss / k.dc + cfg.rms_norm_eps);
        for (int32_t i = 0; i < k.dc; ++i) {
            // transformers' RMSNorm casts the normalized value to the input dtype before the weight
            const double xn = k.kv_dtype == MLA_DTYPE_BF16 ? double(round_bf16(float(double(x[i]) * r)))
                                                           : double(x[i]) * r;
            double ref = xn * w[size_t(i)];
            double got = cache.get(slots[size_t(t)], i);
            err_lat = std::max(err_lat, std::isnan(got) ? INFINITY : std::fabs(got - ref));
            max_lat = std::max(max_lat, std::fabs(ref));
        }
        const int32_t half = k.dr / 2;
        std::vector<double> y(static_cast<size_t>(k.dr));
        for (int32_t i = 0; i < k.dr; ++i)
            y[size_t(i)] = k.interleave ? (i < half ? x[k.dc + 2 * i] : x[k.dc + 2 * (i - half) + 1]) : x[k.dc + i];
        for (int32_t i = 0; i < k.dr; ++i) {
            double rot = i < half ? -y[size_t(i + half)] : y[size_t(i - half)];
            double ref = y[size_t(i)] * cs[size_t(t * k.dr + i)] + rot * sn[size_t(t * k.dr + i)];
            double got = cache.get(slots[size_t(t)], k.dc + i);
            err_rope = std::max(err_rope, std::isnan(got) ? INFINITY : std::fabs(got - ref));
            max_rope = std::max(max_rope, std::fabs(ref));
        }
    }
    const double tol = k.cache_dtype == MLA_DTYPE_BF16 ? kTolCacheBf16 : kTolCacheF32;
    char name[160];
    std::snprintf(name, sizeof name, "dc%d dr%d il%d %s kv%s norm%s cache%s bs%d", k.dc, k.dr, k.interleave,
                  k.scaling == MLA_ROPE_SCALING_YARN ? "yarn" : "plain", k.kv_dtype == MLA_DTYPE_F32 ? "32" : "16",
                  k.norm_dtype == MLA_DTYPE_F32 ? "32" : "16", k.cache_dtype == MLA_DTYPE_F32 ? "32" : "16", k.block_size);
    std::printf("    %-52s latent rel %.2e rope rel %.2e\n", name, err_lat / max_lat, err_rope / max_rope);
    CHECK_LE_TOL(std::string(name) + " latent", err_lat / max_lat, tol);
    CHECK_LE_TOL(std::string(name) + " k_rope", err_rope / max_rope, tol);
    // Slots no token maps to (including skipped tokens' would-be slots) keep their bytes.
    const std::vector<uint8_t> after = cache.bytes();
    const size_t eb = (k.cache_dtype == MLA_DTYPE_F32 ? 4 : 2) * size_t(E);
    size_t touched = 0;
    for (size_t s = 0; s < written.size(); ++s)
        if (!written[s] && std::memcmp(&before[s * eb], &after[s * eb], eb) != 0) ++touched;
    CHECK_MSG(touched == 0, std::string(name) + ": " + std::to_string(touched) + " unmapped slots were written");
}

}  // namespace

MLA_TEST(compress_matches_reference) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(9);
    const int32_t dims[][2] = {{512, 64}, {64, 16}, {256, 32}};
    int n = 0;
    for (const auto& dd : dims)
        for (int32_t il : {0, 1})
            for (int32_t sc : {MLA_ROPE_SCALING_NONE, MLA_ROPE_SCALING_YARN}) {
                CompressCase k;
                k.dc = dd[0];
                k.dr = dd[1];
                k.interleave = il;
                k.scaling = sc;
                k.kv_dtype = (n & 1) ? MLA_DTYPE_BF16 : MLA_DTYPE_F32;
                k.norm_dtype = (n & 2) ? MLA_DTYPE_BF16 : MLA_DTYPE_F32;
                k.cache_dtype = (n % 3 == 0) ? MLA_DTYPE_BF16 : MLA_DTYPE_F32;
                k.block_size = (n & 4) ? 1 : 16;
                k.tokens = 1 + int32_t(rng() % 40);
                compress_case(ctx.get(), k, rng);
                ++n;
            }
}

MLA_TEST(compress_zero_tokens_is_a_no_op) {
    ContextPtr ctx = make_context();
    mla_config cfg = small_config(64, 16, 1, MLA_ROPE_SCALING_NONE);
    HostCache cache(MLA_DTYPE_F32, 2, 16, 64, 16);
    const std::vector<uint8_t> before = cache.bytes();
    std::vector<float> w(64, 1.0f);
    mla_compress_params p;
    REQUIRE_OK(mla_compress_params_init(&p));
    p.num_tokens = 0;
    float dummy_kv = 0;
    int32_t dummy_pos = 0;
    int64_t dummy_slot = 0;
    p.kv_a = &dummy_kv;
    p.kv_a_dtype = MLA_DTYPE_F32;
    p.kv_a_stride = 80;
    p.norm_weight = w.data();
    p.norm_weight_dtype = MLA_DTYPE_F32;
    p.positions = &dummy_pos;
    p.slot_mapping = &dummy_slot;
    p.cache = cache.view();
    CHECK_STATUS(mla_compress(ctx.get(), &cfg, &p, nullptr), MLA_OK);
    CHECK(cache.bytes() == before);
}

// Compress into a library-owned cache (through its view), read back with mla_cache_read.
MLA_TEST(compress_into_owned_cache_and_read_back) {
    ContextPtr ctx = make_context();
    std::mt19937_64 rng(33);
    const int32_t dc = 512, dr = 64, T = 10, bs = 4;
    mla_config cfg = small_config(dc, dr, 1, MLA_ROPE_SCALING_YARN);
    for (int32_t dt : {MLA_DTYPE_F32, MLA_DTYPE_BF16}) {
        CachePtr cache = make_cache(ctx.get(), dt, bs, 5, dc, dr);
        mla_cache_view view;
        REQUIRE_OK(mla_cache_get_view(cache.get(), &view));
        std::vector<float> kv = random_floats(rng, size_t(T) * size_t(dc + dr)), w(size_t(dc), 1.0f);
        std::vector<int32_t> pos(static_cast<size_t>(T)), table = {3, 0, 4};  // the sequence's blocks
        std::vector<int64_t> slots(static_cast<size_t>(T));
        for (int32_t t = 0; t < T; ++t) {
            pos[size_t(t)] = 100 + t;
            slots[size_t(t)] = int64_t(table[size_t(t / bs)]) * bs + t % bs;
        }
        mla_compress_params p;
        REQUIRE_OK(mla_compress_params_init(&p));
        p.num_tokens = T;
        p.kv_a = kv.data();
        p.kv_a_dtype = MLA_DTYPE_F32;
        p.kv_a_stride = dc + dr;
        p.norm_weight = w.data();
        p.norm_weight_dtype = MLA_DTYPE_F32;
        p.positions = pos.data();
        p.slot_mapping = slots.data();
        p.cache = view;
        REQUIRE_OK(mla_compress(ctx.get(), &cfg, &p, nullptr));
        std::vector<float> lat(size_t(T) * dc, NAN), rope(size_t(T) * dr, NAN);
        REQUIRE_OK(mla_cache_read(cache.get(), table.data(), 0, T, lat.data(), rope.data()));
        std::vector<float> cs(size_t(T) * dr), sn(size_t(T) * dr);
        REQUIRE_OK(mla_config_rope_tables(&cfg, pos.data(), T, cs.data(), sn.data()));
        std::vector<float> ref_lat(lat.size()), ref_rope(rope.size());
        for (int32_t t = 0; t < T; ++t) {
            const float* x = &kv[size_t(t) * size_t(dc + dr)];
            double ss = 0;
            for (int32_t i = 0; i < dc; ++i) ss += double(x[i]) * x[i];
            const double r = 1.0 / std::sqrt(ss / dc + cfg.rms_norm_eps);
            for (int32_t i = 0; i < dc; ++i) ref_lat[size_t(t) * dc + size_t(i)] = float(x[i] * r);
            for (int32_t i = 0; i < dr; ++i) {
                const int32_t h = dr / 2;
                auto y = [&](int32_t k) { return double(k < h ? x[dc + 2 * k] : x[dc + 2 * (k - h) + 1]); };
                const double rot = i < h ? -y(i + h) : y(i - h);
                ref_rope[size_t(t) * dr + size_t(i)] = float(y(i) * cs[size_t(t) * dr + size_t(i)] + rot * sn[size_t(t) * dr + size_t(i)]);
            }
        }
        const double tol = dt == MLA_DTYPE_BF16 ? kTolCacheBf16 : kTolCacheF32;
        CHECK_LE_TOL(std::string(dt == MLA_DTYPE_F32 ? "f32" : "bf16") + " latent read back", max_rel(lat, ref_lat), tol);
        CHECK_LE_TOL(std::string(dt == MLA_DTYPE_F32 ? "f32" : "bf16") + " k_rope read back", max_rel(rope, ref_rope), tol);
        // A partial read from the middle of the sequence matches the full one.
        std::vector<float> mid(size_t(3) * dc, NAN);
        REQUIRE_OK(mla_cache_read(cache.get(), table.data(), 5, 3, mid.data(), nullptr));
        CHECK(std::equal(mid.begin(), mid.end(), lat.begin() + 5 * dc));
    }
}

// The RoPE tables without scaling against the textbook formula (f32 inverse frequencies, as
// transformers keeps them), in the half-split layout.
MLA_TEST(rope_tables_plain_formula) {
    for (int32_t dr : {16, 64}) {
        mla_config cfg = small_config(64, dr, 1, MLA_ROPE_SCALING_NONE);
        std::vector<int32_t> pos = {0, 1, 2, 7, 31, 100};
        std::vector<float> cs(pos.size() * size_t(dr)), sn(pos.size() * size_t(dr));
        REQUIRE_OK(mla_config_rope_tables(&cfg, pos.data(), int32_t(pos.size()), cs.data(), sn.data()));
        double err = 0;
        for (size_t t = 0; t < pos.size(); ++t)
            for (int32_t i = 0; i < dr; ++i) {
                int32_t j = i % (dr / 2);
                float inv = 1.0f / std::pow(float(cfg.rope_theta), float(2 * j) / float(dr));
                double a = double(float(pos[t]) * inv);
                err = std::max(err, std::fabs(cs[t * size_t(dr) + size_t(i)] - std::cos(a)));
                err = std::max(err, std::fabs(sn[t * size_t(dr) + size_t(i)] - std::sin(a)));
            }
        CHECK_LE_TOL("rope dr " + std::to_string(dr) + " abs err", err, 1e-5);
    }
}

// YaRN's attention factor and softmax scale for the mscale combinations transformers
// distinguishes (_compute_yarn_parameters, DeepseekV3Attention.__init__): the factor is
// get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) only when both are set, else
// get_mscale(factor) (or attention_factor when given); the softmax scale is multiplied by
// get_mscale(factor, mscale_all_dim)^2 only when mscale_all_dim is set. cos at position 0 is the
// attention factor itself.
MLA_TEST(yarn_mscale_combinations) {
    auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    struct Case { double factor, mscale, mscale_all_dim, attention_factor; };
    const Case cases[] = {
        {40, 0.707, 0.707, 0}, {40, 0.707, 0, 0}, {40, 0, 0.707, 0}, {40, 1.0, 0.707, 0},
        {40, 0, 0, 0}, {40, 1.0, 1.0, 2.5}, {1, 1.0, 0.5, 0}, {8, 0.5, 1.0, 0}};
    for (const Case& k : cases) {
        mla_config cfg = small_config(64, 16, 0, MLA_ROPE_SCALING_YARN);
        cfg.rope_factor = k.factor;
        cfg.rope_mscale = k.mscale;
        cfg.rope_mscale_all_dim = k.mscale_all_dim;
        cfg.rope_attention_factor = k.attention_factor;
        cfg.softmax_scale = 0;
        double af = k.attention_factor;
        if (af == 0)
            af = (k.mscale != 0 && k.mscale_all_dim != 0)
                     ? get_mscale(k.factor, k.mscale) / get_mscale(k.factor, k.mscale_all_dim)
                     : get_mscale(k.factor, 1.0);
        double scale = std::pow(double(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim), -0.5);
        if (k.mscale_all_dim != 0) scale *= get_mscale(k.factor, k.mscale_all_dim) * get_mscale(k.factor, k.mscale_all_dim);
        const int32_t pos = 0;
        std::vector<float> cs(16), sn(16);
        REQUIRE_OK(mla_config_rope_tables(&cfg, &pos, 1, cs.data(), sn.data()));
        double got_scale = 0;
        REQUIRE_OK(mla_config_softmax_scale(&cfg, &got_scale));
        char what[128];
        std::snprintf(what, sizeof what, "factor %g mscale %g mscale_all_dim %g attention_factor %g", k.factor,
                      k.mscale, k.mscale_all_dim, k.attention_factor);
        CHECK_LE_TOL(std::string(what) + ": attention factor rel err", std::fabs(cs[0] - af) / af, 1e-6);
        CHECK_LE_TOL(std::string(what) + ": softmax scale rel err", std::fabs(got_scale - scale) / scale, 1e-12);
        CHECK_EQ(sn[3], 0.0f);
    }
}

int main(int argc, char** argv) { return mla_test::run_all(argc, argv); }
