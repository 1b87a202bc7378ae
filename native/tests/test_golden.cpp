// Layer-level tests against the mla-golden/1 vectors in testdata/golden (transformers'
// DeepseekV3Attention in float64), through the C ABI only.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "golden.h"
#include "golden_run.h"
#include "mla_test.h"
#include "test_util.h"

#ifndef MLA_GOLDEN_DIR
#error "MLA_GOLDEN_DIR must name the directory of the golden vectors"
#endif

using namespace mla_test;
using mla_golden::Golden;

namespace {

// Named tolerances (max|err| / max|ref|).
constexpr double kTolGoldenF32Cache = 1e-4;   // vs transformers, f32 cache
constexpr double kTolGoldenBf16Cache = 1e-2;  // vs transformers, bf16 cache
constexpr double kTolSame = 1e-5;             // two runs of the library that should agree
constexpr double kTolSameBf16Cache = 2e-3;    // the same with a bf16 cache: an entry may round
                                              // the other way when f32 sums run in another order
constexpr double kTolRopeTable = 2e-5;        // absolute, cos/sin tables vs transformers (f32)
constexpr double kTolBf16Out = 8e-3;          // one bf16 rounding of the output (2^-8 rel)

double tol_for(int32_t cache_dtype) { return cache_dtype == MLA_DTYPE_F32 ? kTolGoldenF32Cache : kTolGoldenBf16Cache; }
const char* dname(int32_t dt) { return dt == MLA_DTYPE_F32 ? "f32" : "bf16"; }

const std::vector<Golden>& goldens() {
    static const std::vector<Golden> all = [] {
        std::vector<std::string> paths;
        for (const auto& e : std::filesystem::directory_iterator(MLA_GOLDEN_DIR))
            if (e.path().extension() == ".safetensors") paths.push_back(e.path().string());
        std::sort(paths.begin(), paths.end());
        std::vector<Golden> g;
        for (const auto& p : paths) g.push_back(Golden::load(p));
        return g;
    }();
    REQUIRE(!all.empty());
    return all;
}

std::string base(const Golden& g) { return std::filesystem::path(g.path()).filename().string(); }
std::string where(const Golden& g, int seq, const std::string& what) {
    return base(g) + " seq" + std::to_string(seq) + " " + what;
}

std::vector<int32_t> iota_table(int32_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    std::iota(t.begin(), t.end(), 0);
    return t;
}

struct RunOpts {
    int32_t cache_dtype = MLA_DTYPE_F32;
    int32_t block_size = 64;
    bool permuted = false;  // block table a shuffled subset of a larger pool
};

// Runs one sequence of g through `layer` with the given chunk schedule; returns [T, hidden].
// When latent/rope are given, also reads the cache back into them.
std::vector<float> run_seq(mla_context* ctx, mla_layer* layer, const Golden& g, const mla_golden::Sequence& s,
                           const std::vector<int32_t>& chunks, const RunOpts& o, std::vector<float>* latent = nullptr,
                           std::vector<float>* rope = nullptr) {
    const mla_config& c = g.config();
    int32_t need = (s.tokens + o.block_size - 1) / o.block_size;
    int32_t pool = o.permuted ? 3 * need + 2 : need;
    std::vector<int32_t> table = iota_table(pool);
    if (o.permuted) {
        std::mt19937_64 rng(uint64_t(s.tokens) * 7919u + uint64_t(o.block_size));
        std::shuffle(table.begin(), table.end(), rng);
        table.resize(static_cast<size_t>(need));
    }
    CachePtr cache = make_cache(ctx, o.cache_dtype, o.block_size, pool, c.kv_lora_rank, c.qk_rope_head_dim);
    std::vector<float> hidden = g.seq_f32(s.index, "hidden");
    std::vector<float> out(size_t(s.tokens) * size_t(c.hidden_size), NAN);
    REQUIRE_OK(mla_golden::run_sequence(layer, cache.get(), table.data(), need, hidden.data(), c.hidden_size, chunks,
                                        out.data()));
    if (latent || rope) {
        std::vector<float> l(size_t(s.tokens) * size_t(c.kv_lora_rank), NAN);
        std::vector<float> r(size_t(s.tokens) * size_t(c.qk_rope_head_dim), NAN);
        REQUIRE_OK(mla_cache_read(cache.get(), table.data(), 0, s.tokens, l.data(), r.data()));
        if (latent) *latent = std::move(l);
        if (rope) *rope = std::move(r);
    }
    return out;
}

LayerPtr golden_layer(mla_context* ctx, const Golden& g, int32_t h0 = 0, int32_t h1 = 0) {
    mla_layer_weights w = g.layer_weights();
    return make_layer(ctx, g.config(), w, h0, h1);
}

enum class Schedule { PrefillDecode, Full, Tokenwise };

std::vector<int32_t> chunks_for(Schedule k, const mla_golden::Sequence& s) {
    switch (k) {
        case Schedule::PrefillDecode: return mla_golden::schedule_prefill_decode(s.tokens, s.prefill_tokens);
        case Schedule::Full: return mla_golden::schedule_full(s.tokens);
        case Schedule::Tokenwise: return mla_golden::schedule_tokenwise(s.tokens);
    }
    return {};
}

// Output rows and cache contents against the golden file, for every file and sequence.
void check_schedule(Schedule k, int32_t cache_dtype, const char* name) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        LayerPtr layer = golden_layer(ctx.get(), g);
        for (const auto& s : g.sequences()) {
            RunOpts o;
            o.cache_dtype = cache_dtype;
            std::vector<float> latent, rope;
            std::vector<float> out = run_seq(ctx.get(), layer.get(), g, s, chunks_for(k, s), o, &latent, &rope);
            double e = max_rel(out, g.seq_f32(s.index, "output"));
            double el = max_rel(latent, g.seq_f32(s.index, "latent"));
            double er = max_rel(rope, g.seq_f32(s.index, "k_rope"));
            std::printf("    %-26s seq%d T=%-4d %s cache %-5s out %.2e latent %.2e k_rope %.2e\n", base(g).c_str(),
                        s.index, s.tokens, name, dname(cache_dtype), e, el, er);
            CHECK_LE_TOL(where(g, s.index, std::string(name) + " output"), e, tol_for(cache_dtype));
            CHECK_LE_TOL(where(g, s.index, std::string(name) + " cached latent"), el, tol_for(cache_dtype));
            CHECK_LE_TOL(where(g, s.index, std::string(name) + " cached k_rope"), er, tol_for(cache_dtype));
        }
    }
}

}  // namespace

MLA_TEST(golden_files_read) {
    for (const Golden& g : goldens()) {
        const mla_config& c = g.config();
        CHECK_STATUS(mla_config_validate(&c), MLA_OK);
        CHECK(!g.sequences().empty());
        CHECK(g.softmax_scale() > 0);
    }
}

MLA_TEST(golden_softmax_scale) {
    for (const Golden& g : goldens()) {
        double s = 0;
        REQUIRE_OK(mla_config_softmax_scale(&g.config(), &s));
        double rel = std::fabs(s - g.softmax_scale()) / g.softmax_scale();
        std::printf("    %s: %.17g vs %.17g\n", base(g).c_str(), s, g.softmax_scale());
        CHECK_LE_TOL(base(g) + " softmax scale rel err", rel, 1e-12);
    }
}

MLA_TEST(golden_rope_tables) {
    for (const Golden& g : goldens()) {
        const int32_t dr = g.config().qk_rope_head_dim;
        for (const auto& s : g.sequences()) {
            std::vector<int32_t> pos = g.seq_positions(s.index);
            std::vector<float> cs(pos.size() * size_t(dr), NAN), sn(pos.size() * size_t(dr), NAN);
            REQUIRE_OK(mla_config_rope_tables(&g.config(), pos.data(), int32_t(pos.size()), cs.data(), sn.data()));
            std::vector<float> rc = g.seq_f32(s.index, "rope_cos"), rs = g.seq_f32(s.index, "rope_sin");
            double ec = 0, es = 0;
            for (size_t i = 0; i < cs.size(); ++i) {
                ec = std::max(ec, std::isnan(cs[i]) ? INFINITY : std::fabs(double(cs[i]) - rc[i]));
                es = std::max(es, std::isnan(sn[i]) ? INFINITY : std::fabs(double(sn[i]) - rs[i]));
            }
            std::printf("    %s seq%d: cos %.2e sin %.2e\n", base(g).c_str(), s.index, ec, es);
            CHECK_LE_TOL(where(g, s.index, "rope cos abs err"), ec, kTolRopeTable);
            CHECK_LE_TOL(where(g, s.index, "rope sin abs err"), es, kTolRopeTable);
        }
    }
}

MLA_TEST(golden_prefill_then_decode_f32_cache) { check_schedule(Schedule::PrefillDecode, MLA_DTYPE_F32, "prefill+decode"); }
MLA_TEST(golden_prefill_then_decode_bf16_cache) { check_schedule(Schedule::PrefillDecode, MLA_DTYPE_BF16, "prefill+decode"); }
MLA_TEST(golden_full_prefill_f32_cache) { check_schedule(Schedule::Full, MLA_DTYPE_F32, "full-prefill"); }
MLA_TEST(golden_full_prefill_bf16_cache) { check_schedule(Schedule::Full, MLA_DTYPE_BF16, "full-prefill"); }
MLA_TEST(golden_token_by_token_f32_cache) { check_schedule(Schedule::Tokenwise, MLA_DTYPE_F32, "token-by-token"); }
MLA_TEST(golden_token_by_token_bf16_cache) { check_schedule(Schedule::Tokenwise, MLA_DTYPE_BF16, "token-by-token"); }

// Layers for heads [0,1), [1,3), [3,H) sum to the full layer.
MLA_TEST(golden_head_slices_sum_to_full_layer) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        const int32_t H = g.config().num_heads;
        REQUIRE(H >= 4);
        LayerPtr full = golden_layer(ctx.get(), g);
        const int32_t cuts[][2] = {{0, 1}, {1, 3}, {3, H}};
        std::vector<LayerPtr> parts;
        for (const auto& c : cuts) parts.push_back(golden_layer(ctx.get(), g, c[0], c[1]));
        for (size_t i = 0; i < parts.size(); ++i) {
            mla_config cfg;
            int32_t h0 = -1, h1 = -1;
            REQUIRE_OK(mla_layer_get_config(parts[i].get(), &cfg, &h0, &h1));
            CHECK_EQ(h0, cuts[i][0]);
            CHECK_EQ(h1, cuts[i][1]);
            CHECK_EQ(cfg.num_heads, H);
        }
        for (const auto& s : g.sequences()) {
            auto chunks = chunks_for(Schedule::PrefillDecode, s);
            RunOpts o;
            std::vector<float> ref = run_seq(ctx.get(), full.get(), g, s, chunks, o);
            std::vector<float> sum(ref.size(), 0.0f);
            std::vector<std::vector<float>> part_out;
            for (const auto& p : parts) {
                std::vector<float> y = run_seq(ctx.get(), p.get(), g, s, chunks, o);
                for (size_t i = 0; i < y.size(); ++i) sum[i] += y[i];
                part_out.push_back(std::move(y));
            }
            double e = max_rel(sum, ref);
            std::printf("    %s seq%d: sum of slices vs full %.2e\n", base(g).c_str(), s.index, e);
            CHECK_LE_TOL(where(g, s.index, "slices vs full"), e, kTolSame);
            CHECK_LE_TOL(where(g, s.index, "slices vs golden"), max_rel(sum, g.seq_f32(s.index, "output")),
                         kTolGoldenF32Cache);
            // Each slice contributes: no slice is all zeros.
            for (size_t i = 0; i < part_out.size(); ++i) {
                double mx = 0;
                for (float v : part_out[i]) mx = std::max(mx, double(std::fabs(v)));
                CHECK_MSG(mx > 0, where(g, s.index, "slice " + std::to_string(i) + " output is all zeros"));
            }
        }
    }
}

// All sequences of a file in one ragged batch per step, sequence b starting b steps late, so steps
// mix prefill chunks, decode tokens and idle (zero-token) sequences; blocks interleaved in one cache.
void batched_check(int32_t cache_dtype) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        const mla_config& c = g.config();
        LayerPtr layer = golden_layer(ctx.get(), g);
        const auto& seqs = g.sequences();
        const int32_t B = int32_t(seqs.size());
        const int32_t bs = 16;
        std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(B));
        int32_t max_blocks = 0, steps = 0;
        for (int32_t b = 0; b < B; ++b) {
            chunks[size_t(b)] = chunks_for(Schedule::PrefillDecode, seqs[size_t(b)]);
            max_blocks = std::max(max_blocks, (seqs[size_t(b)].tokens + bs - 1) / bs);
            steps = std::max(steps, b + int32_t(chunks[size_t(b)].size()));
        }
        // Sequence b owns blocks b, b + B, b + 2B, ...
        std::vector<int32_t> table(size_t(B) * size_t(max_blocks));
        for (int32_t b = 0; b < B; ++b)
            for (int32_t k = 0; k < max_blocks; ++k) table[size_t(b * max_blocks + k)] = b + k * B;
        CachePtr cache = make_cache(ctx.get(), cache_dtype, bs, B * max_blocks, c.kv_lora_rank, c.qk_rope_head_dim);
        std::vector<std::vector<float>> hidden(static_cast<size_t>(B)), out(static_cast<size_t>(B));
        for (int32_t b = 0; b < B; ++b) {
            hidden[size_t(b)] = g.seq_f32(seqs[size_t(b)].index, "hidden");
            out[size_t(b)].assign(hidden[size_t(b)].size(), NAN);
        }
        std::vector<int32_t> done(size_t(B), 0);
        int32_t mixed_steps = 0;
        for (int32_t step = 0; step < steps; ++step) {
            std::vector<int32_t> qo(size_t(B) + 1, 0), lens(static_cast<size_t>(B)), pos;
            std::vector<float> h;
            bool has_prefill = false, has_decode = false;
            for (int32_t b = 0; b < B; ++b) {
                int32_t k = step - b;
                int32_t n = (k >= 0 && k < int32_t(chunks[size_t(b)].size())) ? chunks[size_t(b)][size_t(k)] : 0;
                lens[size_t(b)] = done[size_t(b)];
                qo[size_t(b) + 1] = qo[size_t(b)] + n;
                h.insert(h.end(), hidden[size_t(b)].begin() + ptrdiff_t(done[size_t(b)]) * c.hidden_size,
                         hidden[size_t(b)].begin() + ptrdiff_t(done[size_t(b)] + n) * c.hidden_size);
                for (int32_t j = 0; j < n; ++j) pos.push_back(done[size_t(b)] + j);  // explicit positions
                has_prefill |= n > 1;
                has_decode |= n == 1 && done[size_t(b)] > 0;
            }
            mixed_steps += has_prefill && has_decode;
            const int32_t T = qo[size_t(B)];
            std::vector<float> y(size_t(T) * size_t(c.hidden_size), NAN);
            mla_batch batch;
            REQUIRE_OK(mla_batch_init(&batch));
            batch.num_seqs = B;
            batch.num_tokens = T;
            batch.block_table_stride = max_blocks;
            batch.qo_indptr = qo.data();
            batch.cache_lens = lens.data();
            batch.positions = pos.data();
            batch.block_table = table.data();
            REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &batch, h.data(), MLA_DTYPE_F32, y.data(),
                                         MLA_DTYPE_F32, nullptr));
            for (int32_t b = 0; b < B; ++b) {
                int32_t n = qo[size_t(b) + 1] - qo[size_t(b)];
                std::copy(y.begin() + ptrdiff_t(qo[size_t(b)]) * c.hidden_size,
                          y.begin() + ptrdiff_t(qo[size_t(b) + 1]) * c.hidden_size,
                          out[size_t(b)].begin() + ptrdiff_t(done[size_t(b)]) * c.hidden_size);
                done[size_t(b)] += n;
            }
        }
        CHECK_MSG(B < 2 || mixed_steps > 0, base(g) + ": no step mixed prefill and decode");
        for (int32_t b = 0; b < B; ++b) {
            const auto& s = seqs[size_t(b)];
            RunOpts o;
            o.cache_dtype = cache_dtype;
            std::vector<float> alone = run_seq(ctx.get(), layer.get(), g, s, chunks[size_t(b)], o);
            double ea = max_rel(out[size_t(b)], alone);
            double eg = max_rel(out[size_t(b)], g.seq_f32(s.index, "output"));
            std::printf("    %s seq%d %s cache: batched vs alone %.2e, vs golden %.2e (%d mixed steps)\n",
                        base(g).c_str(), s.index, dname(cache_dtype), ea, eg, mixed_steps);
            CHECK_LE_TOL(where(g, s.index, "batched vs alone"), ea,
                         cache_dtype == MLA_DTYPE_F32 ? kTolSame : kTolSameBf16Cache);
            CHECK_LE_TOL(where(g, s.index, "batched vs golden"), eg, tol_for(cache_dtype));
        }
    }
}

MLA_TEST(golden_batched_mixed_f32_cache) { batched_check(MLA_DTYPE_F32); }
MLA_TEST(golden_batched_mixed_bf16_cache) { batched_check(MLA_DTYPE_BF16); }

MLA_TEST(golden_block_sizes_and_permuted_tables) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        LayerPtr layer = golden_layer(ctx.get(), g);
        for (const auto& s : g.sequences()) {
            auto chunks = chunks_for(Schedule::PrefillDecode, s);
            RunOpts base_opts;
            std::vector<float> ref = run_seq(ctx.get(), layer.get(), g, s, chunks, base_opts);
            for (int32_t bs : {1, 16, 64, 128}) {
                for (bool perm : {false, true}) {
                    RunOpts o;
                    o.block_size = bs;
                    o.permuted = perm;
                    std::vector<float> latent;
                    std::vector<float> y = run_seq(ctx.get(), layer.get(), g, s, chunks, o, &latent);
                    std::string what = "block_size " + std::to_string(bs) + (perm ? " permuted" : "");
                    CHECK_LE_TOL(where(g, s.index, what + " vs block 64"), max_rel(y, ref), kTolSame);
                    CHECK_LE_TOL(where(g, s.index, what + " cached latent"), max_rel(latent, g.seq_f32(s.index, "latent")),
                                 kTolGoldenF32Cache);
                }
            }
        }
    }
}

MLA_TEST(golden_simd_levels_agree) {
    ContextPtr auto_ctx = make_context();
    for (int32_t simd : {MLA_SIMD_SCALAR, MLA_SIMD_AVX2, MLA_SIMD_AVX512}) {
        mla_context_options o;
        REQUIRE_OK(mla_context_options_init(&o));
        o.num_threads = 2;
        o.simd = simd;
        mla_context* raw = nullptr;
        if (!cpu_has_simd(simd)) {
            CHECK_STATUS(mla_context_create(&o, &raw), MLA_ERROR_UNSUPPORTED);
            CHECK(raw == nullptr);
            std::printf("    %s: not on this CPU, creation refused as expected\n", simd_name(simd));
            continue;
        }
        REQUIRE_OK(mla_context_create(&o, &raw));
        ContextPtr ctx(raw);
        char desc[128] = {0};
        REQUIRE_OK(mla_context_describe(ctx.get(), desc, sizeof desc));
        for (const Golden& g : goldens()) {
            LayerPtr la = golden_layer(auto_ctx.get(), g);
            LayerPtr ls = golden_layer(ctx.get(), g);
            for (const auto& s : g.sequences()) {
                for (int32_t dt : {MLA_DTYPE_F32, MLA_DTYPE_BF16}) {
                    auto chunks = chunks_for(Schedule::PrefillDecode, s);
                    RunOpts ro;
                    ro.cache_dtype = dt;
                    std::vector<float> ya = run_seq(auto_ctx.get(), la.get(), g, s, chunks, ro);
                    std::vector<float> ys = run_seq(ctx.get(), ls.get(), g, s, chunks, ro);
                    double e = max_rel(ys, ya);
                    std::printf("    [%s] %s seq%d %s cache: vs auto %.2e\n", desc, base(g).c_str(), s.index, dname(dt), e);
                    CHECK_LE_TOL(where(g, s.index, std::string(simd_name(simd)) + " " + dname(dt) + " cache vs auto"), e,
                                 dt == MLA_DTYPE_F32 ? kTolSame : kTolSameBf16Cache);
                    CHECK_LE_TOL(where(g, s.index, std::string(simd_name(simd)) + " vs golden"),
                                 max_rel(ys, g.seq_f32(s.index, "output")), tol_for(dt));
                }
            }
        }
    }
}

// Explicit positions: a uniform shift moves the cached k_rope (positions are used) but leaves the
// output unchanged (RoPE scores depend on position differences only).
MLA_TEST(golden_shifted_positions) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        const mla_config& c = g.config();
        LayerPtr layer = golden_layer(ctx.get(), g);
        const auto& s = g.sequences().back();
        const int32_t T = s.tokens, nb = (T + 63) / 64;
        std::vector<int32_t> table = iota_table(nb);
        CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 64, nb, c.kv_lora_rank, c.qk_rope_head_dim);
        std::vector<int32_t> pos(static_cast<size_t>(T));
        for (int32_t t = 0; t < T; ++t) pos[size_t(t)] = t + 1000;
        int32_t qo[2] = {0, T}, lens[1] = {0};
        mla_batch b;
        REQUIRE_OK(mla_batch_init(&b));
        b.num_seqs = 1;
        b.num_tokens = T;
        b.block_table_stride = nb;
        b.qo_indptr = qo;
        b.cache_lens = lens;
        b.positions = pos.data();
        b.block_table = table.data();
        std::vector<float> hidden = g.seq_f32(s.index, "hidden"), out(hidden.size(), NAN);
        REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &b, hidden.data(), MLA_DTYPE_F32, out.data(), MLA_DTYPE_F32,
                                     nullptr));
        std::vector<float> rope(size_t(T) * size_t(c.qk_rope_head_dim), NAN);
        REQUIRE_OK(mla_cache_read(cache.get(), table.data(), 0, T, nullptr, rope.data()));
        double eo = max_rel(out, g.seq_f32(s.index, "output")), er = max_rel(rope, g.seq_f32(s.index, "k_rope"));
        std::printf("    %s seq%d, positions + 1000: output vs golden %.2e, k_rope vs golden %.2e\n", base(g).c_str(),
                    s.index, eo, er);
        CHECK_LE_TOL(where(g, s.index, "shifted positions output"), eo, kTolGoldenF32Cache);
        CHECK_MSG(er > 1e-2, where(g, s.index, "k_rope did not change with the positions"));
    }
}

// Forking a sequence after its prefill: the shared full blocks stay, the partly filled last block
// is copied with mla_cache_copy_blocks, and both branches decode the rest to the golden output.
MLA_TEST(golden_fork_with_copied_block) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        const mla_config& c = g.config();
        LayerPtr layer = golden_layer(ctx.get(), g);
        const auto& s = g.sequences().back();
        const int32_t T = s.tokens, bs = 16, nb = (T + bs - 1) / bs;
        const int32_t P = s.prefill_tokens % bs ? s.prefill_tokens : s.prefill_tokens - 1;  // end mid-block
        REQUIRE(P > 0 && P < T);
        CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, bs, 2 * nb + 1, c.kv_lora_rank, c.qk_rope_head_dim);
        std::vector<int32_t> a = iota_table(nb), b(static_cast<size_t>(nb));
        const int32_t shared = P / bs;  // full blocks both branches keep
        for (int32_t k = 0; k < nb; ++k) b[size_t(k)] = k < shared ? k : nb + k;
        std::vector<float> hidden = g.seq_f32(s.index, "hidden"), ref = g.seq_f32(s.index, "output");
        std::vector<float> out_a(ref.size(), NAN), out_b(ref.size(), NAN);
        REQUIRE_OK(mla_golden::run_sequence(layer.get(), cache.get(), a.data(), nb, hidden.data(), c.hidden_size, {P},
                                            out_a.data()));
        int32_t src[1] = {a[size_t(shared)]}, dst[1] = {b[size_t(shared)]};
        REQUIRE_OK(mla_cache_copy_blocks(cache.get(), src, dst, 1, nullptr));
        std::copy(out_a.begin(), out_a.begin() + ptrdiff_t(P) * c.hidden_size, out_b.begin());
        for (int32_t t = P; t < T; ++t) {  // the branches alternate decode steps
            for (int branch = 0; branch < 2; ++branch) {
                int32_t qo[2] = {0, 1}, lens[1] = {t};
                mla_batch batch;
                REQUIRE_OK(mla_batch_init(&batch));
                batch.num_seqs = 1;
                batch.num_tokens = 1;
                batch.block_table_stride = nb;
                batch.qo_indptr = qo;
                batch.cache_lens = lens;
                batch.block_table = branch ? b.data() : a.data();
                float* o = (branch ? out_b : out_a).data() + size_t(t) * size_t(c.hidden_size);
                REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &batch, hidden.data() + size_t(t) * size_t(c.hidden_size),
                                             MLA_DTYPE_F32, o, MLA_DTYPE_F32, nullptr));
            }
        }
        double ea = max_rel(out_a, ref), eb = max_rel(out_b, ref);
        std::printf("    %s seq%d fork after %d tokens: original %.2e, fork %.2e\n", base(g).c_str(), s.index, P, ea, eb);
        CHECK_LE_TOL(where(g, s.index, "original branch"), ea, kTolGoldenF32Cache);
        CHECK_LE_TOL(where(g, s.index, "forked branch"), eb, kTolGoldenF32Cache);
    }
}

MLA_TEST(golden_thread_counts_agree) {
    ContextPtr two = make_context(MLA_SIMD_AUTO, 2);
    for (int32_t threads : {1, 3}) {
        ContextPtr ctx = make_context(MLA_SIMD_AUTO, threads);
        for (const Golden& g : goldens()) {
            LayerPtr a = golden_layer(two.get(), g), b = golden_layer(ctx.get(), g);
            for (const auto& s : g.sequences()) {
                auto chunks = chunks_for(Schedule::PrefillDecode, s);
                RunOpts o;
                double e = max_rel(run_seq(ctx.get(), b.get(), g, s, chunks, o), run_seq(two.get(), a.get(), g, s, chunks, o));
                CHECK_LE_TOL(where(g, s.index, std::to_string(threads) + " threads vs 2"), e, kTolSame);
            }
        }
    }
}

// bf16 hidden states in and/or bf16 outputs: against the f32 path fed the same (rounded) input.
MLA_TEST(golden_bf16_hidden_and_output) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        const mla_config& c = g.config();
        LayerPtr layer = golden_layer(ctx.get(), g);
        for (const auto& s : g.sequences()) {
            const int32_t T = s.tokens, D = c.hidden_size;
            std::vector<float> hid = g.seq_f32(s.index, "hidden");
            std::vector<uint16_t> hid16 = to_bf16(hid);
            std::vector<float> hid_r = from_bf16(hid16);
            auto run = [&](const void* in, int32_t in_dt, void* out, int32_t out_dt) {
                int32_t nb = (T + 63) / 64;
                std::vector<int32_t> table = iota_table(nb);
                CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 64, nb, c.kv_lora_rank, c.qk_rope_head_dim);
                int32_t qo[2] = {0, T}, lens[1] = {0};
                mla_batch b;
                REQUIRE_OK(mla_batch_init(&b));
                b.num_seqs = 1;
                b.num_tokens = T;
                b.block_table_stride = nb;
                b.qo_indptr = qo;
                b.cache_lens = lens;
                b.block_table = table.data();
                REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &b, in, in_dt, out, out_dt, nullptr));
            };
            std::vector<float> ref(size_t(T) * D, NAN), y32(size_t(T) * D, NAN);
            std::vector<uint16_t> y16(size_t(T) * D, 0xffff), z16(size_t(T) * D, 0xffff);
            run(hid_r.data(), MLA_DTYPE_F32, ref.data(), MLA_DTYPE_F32);   // f32 in (bf16-exact), f32 out
            run(hid16.data(), MLA_DTYPE_BF16, y32.data(), MLA_DTYPE_F32);  // bf16 in, f32 out
            run(hid16.data(), MLA_DTYPE_BF16, y16.data(), MLA_DTYPE_BF16); // bf16 in, bf16 out
            run(hid.data(), MLA_DTYPE_F32, z16.data(), MLA_DTYPE_BF16);    // f32 in, bf16 out
            std::vector<float> golden_ref = g.seq_f32(s.index, "output");
            std::vector<float> f32_run(size_t(T) * D, NAN);
            run(hid.data(), MLA_DTYPE_F32, f32_run.data(), MLA_DTYPE_F32);
            double e1 = max_rel(y32, ref), e2 = max_rel(from_bf16(y16), ref), e3 = max_rel(from_bf16(z16), f32_run);
            double e4 = max_rel(from_bf16(y16), golden_ref);
            std::printf("    %s seq%d: bf16->f32 %.2e  bf16->bf16 %.2e  f32->bf16 %.2e  bf16->bf16 vs golden %.2e\n",
                        base(g).c_str(), s.index, e1, e2, e3, e4);
            CHECK_LE_TOL(where(g, s.index, "bf16 in, f32 out vs f32 path"), e1, kTolSame);
            CHECK_LE_TOL(where(g, s.index, "bf16 in, bf16 out vs f32 path"), e2, kTolBf16Out);
            CHECK_LE_TOL(where(g, s.index, "f32 in, bf16 out vs f32 path"), e3, kTolBf16Out);
            CHECK_LE_TOL(where(g, s.index, "bf16 in, bf16 out vs golden"), e4, kTolGoldenBf16Cache);
        }
    }
}

namespace {

// Owned copies of converted weights, and the mla_layer_weights pointing at them.
struct ConvertedWeights {
    std::vector<std::vector<uint8_t>> data;
    std::vector<std::vector<float>> scales;
    mla_layer_weights w{};
};

mla_weight* slot(mla_layer_weights& w, int i) {
    mla_weight* s[8] = {&w.q_a_proj, &w.q_a_layernorm, &w.q_b_proj, &w.q_proj,
                        &w.kv_a_proj_with_mqa, &w.kv_a_layernorm, &w.kv_b_proj, &w.o_proj};
    return s[i];
}

// Converts every matrix of g to `dtype` (norm vectors stay bf16). FP8 uses 128x128 block scales
// (amax / 448). When dequant_out is given, it receives the f32 weights the converted ones
// represent (as a second ConvertedWeights with f32 matrices).
void convert_weights(const Golden& g, int32_t dtype, ConvertedWeights* cw, ConvertedWeights* represented) {
    cw->w = g.layer_weights();
    if (represented) represented->w = g.layer_weights();
    cw->data.reserve(16);
    cw->scales.reserve(16);
    if (represented) represented->data.reserve(16);
    for (int i = 0; i < 8; ++i) {
        const char* name = mla_golden::kWeightNames[i];
        mla_weight* ws = slot(cw->w, i);
        if (!ws->data || ws->cols == 1) continue;  // absent, or a norm vector
        const int64_t rows = ws->rows, cols = ws->cols;
        std::vector<float> v = from_bf16(g.weight_bf16(name));
        std::vector<float> rep(v.size());
        std::vector<uint8_t> bytes;
        if (dtype == MLA_DTYPE_F32) {
            bytes.resize(v.size() * 4);
            std::memcpy(bytes.data(), v.data(), bytes.size());
            rep = v;
        } else if (dtype == MLA_DTYPE_F16) {
            bytes.resize(v.size() * 2);
            for (size_t k = 0; k < v.size(); ++k) {
                uint16_t h = f32_to_f16(v[k]);
                std::memcpy(bytes.data() + 2 * k, &h, 2);
                rep[k] = f16_to_f32(h);
            }
        } else {  // FP8 e4m3, 128x128 blocks
            const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
            std::vector<float> sc(static_cast<size_t>(br * bc));
            bytes.resize(v.size());
            for (int64_t bi = 0; bi < br; ++bi)
                for (int64_t bj = 0; bj < bc; ++bj) {
                    float amax = 0;
                    for (int64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r)
                        for (int64_t cc = bj * 128; cc < std::min(cols, bj * 128 + 128); ++cc)
                            amax = std::max(amax, std::fabs(v[size_t(r * cols + cc)]));
                    float scale = amax > 0 ? amax / 448.0f : 1.0f;
                    sc[size_t(bi * bc + bj)] = scale;
                    for (int64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r)
                        for (int64_t cc = bj * 128; cc < std::min(cols, bj * 128 + 128); ++cc) {
                            size_t k = size_t(r * cols + cc);
                            uint8_t q = f32_to_fp8e4m3(v[k] / scale);
                            bytes[k] = q;
                            rep[k] = fp8e4m3_to_f32(q) * scale;
                        }
                }
            cw->scales.push_back(std::move(sc));
            ws->scale_inv = cw->scales.back().data();
        }
        cw->data.push_back(std::move(bytes));
        ws->data = cw->data.back().data();
        ws->dtype = dtype;
        if (represented) {
            std::vector<uint8_t> rb(rep.size() * 4);
            std::memcpy(rb.data(), rep.data(), rb.size());
            represented->data.push_back(std::move(rb));
            mla_weight* rs = slot(represented->w, i);
            rs->data = represented->data.back().data();
            rs->dtype = MLA_DTYPE_F32;
            rs->scale_inv = nullptr;
        }
    }
}

void weight_dtype_check(int32_t dtype, const char* name, bool compare_golden) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        ConvertedWeights cw, rep;
        convert_weights(g, dtype, &cw, &rep);
        LayerPtr lq = make_layer(ctx.get(), g.config(), cw.w);
        LayerPtr lr = make_layer(ctx.get(), g.config(), rep.w);
        for (const auto& s : g.sequences()) {
            auto chunks = chunks_for(Schedule::PrefillDecode, s);
            RunOpts o;
            std::vector<float> yq = run_seq(ctx.get(), lq.get(), g, s, chunks, o);
            std::vector<float> yr = run_seq(ctx.get(), lr.get(), g, s, chunks, o);
            double e = max_rel(yq, yr), eg = max_rel(yq, g.seq_f32(s.index, "output"));
            std::printf("    %s seq%d: %s weights vs f32 weights of the same values %.2e, vs golden %.2e\n",
                        base(g).c_str(), s.index, name, e, eg);
            CHECK_LE_TOL(where(g, s.index, std::string(name) + " weights vs represented f32"), e, kTolSame);
            if (compare_golden) CHECK_LE_TOL(where(g, s.index, std::string(name) + " weights vs golden"), eg, kTolGoldenF32Cache);
        }
    }
}

}  // namespace

MLA_TEST(golden_weights_f32) { weight_dtype_check(MLA_DTYPE_F32, "f32", true); }
MLA_TEST(golden_weights_f16) { weight_dtype_check(MLA_DTYPE_F16, "f16", true); }
// FP8 is compared with a layer built from the dequantized weights, not with transformers.
MLA_TEST(golden_weights_fp8_block_scaled) { weight_dtype_check(MLA_DTYPE_FP8_E4M3, "fp8-e4m3", false); }

// One layer and context used from several threads at once (each thread its own cache) gives the
// same rows as serial runs.
MLA_TEST(golden_concurrent_use_of_one_layer) {
    ContextPtr ctx = make_context();
    for (const Golden& g : goldens()) {
        LayerPtr layer = golden_layer(ctx.get(), g);
        const auto& seqs = g.sequences();
        std::vector<std::vector<float>> serial, parallel(seqs.size());
        RunOpts o;
        for (const auto& s : seqs) serial.push_back(run_seq(ctx.get(), layer.get(), g, s, chunks_for(Schedule::PrefillDecode, s), o));
        std::vector<std::thread> threads;
        std::vector<int> failed(seqs.size(), 0);
        for (size_t i = 0; i < seqs.size(); ++i)
            threads.emplace_back([&, i] {
                try {
                    parallel[i] = run_seq(ctx.get(), layer.get(), g, seqs[i], chunks_for(Schedule::PrefillDecode, seqs[i]), o);
                } catch (...) {
                    failed[i] = 1;
                }
            });
        for (auto& t : threads) t.join();
        for (size_t i = 0; i < seqs.size(); ++i) {
            CHECK_MSG(!failed[i], where(g, seqs[i].index, "concurrent run failed"));
            CHECK_LE_TOL(where(g, seqs[i].index, "concurrent vs serial"), max_rel(parallel[i], serial[i]), kTolSame);
        }
    }
}

int main(int argc, char** argv) { return mla_test::run_all(argc, argv); }
