// mla-bench-cpu: decode throughput of libmla's CPU backend at DeepSeek-V2-Lite head dims
// (16 heads, latent 512, rope 64, bf16 cache), at cache lengths 1024 and 8192, batch 1 and 8:
//   - kernel level: mla_attention_run (absorbed queries x paged latent cache), bf16 q/out
//   - layer level: one mla_layer_forward decode step (hidden 2048, no q_lora, nope 128, v 128)
// Each is run with MLA_SIMD_AUTO and with MLA_SIMD_SCALAR (the naive baseline) in the same
// process. The machine's peak f32 FMA rate (register-resident AVX-512 / AVX2 microkernels on all
// threads) and its read bandwidth are measured first, so every row also reports its fraction of
// peak.
//
// usage: mla-bench-cpu [--quick] [--threads N] [--csv FILE]
//        mla-bench-cpu --call-overhead   (ns per C call at the JMH benchmark's shape)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MLA_BENCH_X86 1
#endif

#include "mla.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

[[noreturn]] void die(const char* what, mla_status st) {
    std::fprintf(stderr, "mla-bench-cpu: %s: %s: %s\n", what, mla_status_string(st), mla_last_error());
    std::exit(1);
}
#define CALL(expr)                              \
    do {                                        \
        mla_status st_ = (expr);                \
        if (st_ != MLA_OK) die(#expr, st_);     \
    } while (0)

// Runs fn on n threads at once and returns the wall time of the slowest.
double run_threads(int n, const std::function<void(int)>& fn) {
    std::vector<std::thread> ts;
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    Clock::time_point t0;
    for (int i = 0; i < n; ++i)
        ts.emplace_back([&, i] {
            ready.fetch_add(1);
            while (!go.load()) std::this_thread::yield();
            fn(i);
        });
    while (ready.load() < n) std::this_thread::yield();
    t0 = Clock::now();
    go.store(true);
    for (auto& t : ts) t.join();
    return seconds_since(t0);
}

// ---- machine peak: register-resident FMA chains (12 independent accumulators) ----
#if MLA_BENCH_X86
__attribute__((target("avx512f"))) float fma_avx512(int64_t iters) {
    __m512 a[12];
    for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_ps(float(k) * 1e-3f);
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    for (int64_t i = 0; i < iters; ++i)
        for (int k = 0; k < 12; ++k) a[k] = _mm512_fmadd_ps(a[k], b, c);
    __m512 s = a[0];
    for (int k = 1; k < 12; ++k) s = _mm512_add_ps(s, a[k]);
    float v[16];
    _mm512_storeu_ps(v, s);
    float r = 0;
    for (float x : v) r += x;
    return r;
}
__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) {
    __m256 a[12];
    for (int k = 0; k < 12; ++k) a[k] = _mm256_set1_ps(float(k) * 1e-3f);
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    for (int64_t i = 0; i < iters; ++i)
        for (int k = 0; k < 12; ++k) a[k] = _mm256_fmadd_ps(a[k], b, c);
    __m256 s = a[0];
    for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, a[k]);
    float v[8];
    _mm256_storeu_ps(v, s);
    return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}
__attribute__((target("avx2"))) double sum_avx2(const float* p, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + i + 24));
    }
    float v[8];
    _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    double s = 0;
    for (float x : v) s += x;
    for (; i < n; ++i) s += p[i];
    return s;
}
#endif

// GFLOP/s of the FMA microkernel on `threads` threads; 0 when the ISA is missing.
double peak_gflops(bool avx512, int threads, double min_seconds) {
#if MLA_BENCH_X86
    __builtin_cpu_init();
    if (avx512 ? !__builtin_cpu_supports("avx512f") : !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0.0;
    const int lanes = avx512 ? 16 : 8;
    std::vector<float> sink(static_cast<size_t>(threads));
    int64_t iters = 1 << 16;
    double best = 0;
    auto round = [&] {
        double t = run_threads(threads, [&](int i) { sink[size_t(i)] = avx512 ? fma_avx512(iters) : fma_avx2(iters); });
        best = std::max(best, double(iters) * 12 * lanes * 2 * threads / t / 1e9);
        return t;
    };
    while (round() < min_seconds) iters *= 2;  // calibrate, then the best of 5 full rounds
    for (int r = 0; r < 5; ++r) round();
    volatile float keep = sink[0];
    (void)keep;
    return best;
#else
    (void)avx512; (void)threads; (void)min_seconds;
    return 0.0;
#endif
}

// Read bandwidth (GB/s) summing a buffer much larger than the caches, on `threads` threads.
double read_bandwidth(int threads, size_t bytes) {
    std::vector<float> buf(bytes / 4);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = float(i & 1023) * 1e-3f;
    std::vector<double> sink(static_cast<size_t>(threads));
    const size_t per = buf.size() / size_t(threads);
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        double t = run_threads(threads, [&](int i) {
            const float* p = buf.data() + size_t(i) * per;
#if MLA_BENCH_X86
            sink[size_t(i)] = __builtin_cpu_supports("avx2") ? sum_avx2(p, per) : std::accumulate(p, p + per, 0.0);
#else
            double s = 0;
            for (size_t k = 0; k < per; ++k) s += p[k];
            sink[size_t(i)] = s;
#endif
        });
        best = std::max(best, double(per) * 4 * threads / t / 1e9);
    }
    volatile double keep = sink[0];
    (void)keep;
    return best;
}

// Times fn: warm-up, then the best average over 3 rounds of `iters` calls, `iters` grown until a
// round takes min_seconds (capped at max_iters). Returns seconds per call.
double time_call(const std::function<void()>& fn, double min_seconds, int max_iters) {
    fn();
    int iters = 1;
    for (;;) {
        Clock::time_point t0 = Clock::now();
        for (int i = 0; i < iters; ++i) fn();
        double t = seconds_since(t0);
        if (t >= min_seconds || iters >= max_iters) break;
        iters = std::min(max_iters, std::max(iters * 2, int(iters * min_seconds / std::max(t, 1e-6))));
    }
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
        Clock::time_point t0 = Clock::now();
        for (int i = 0; i < iters; ++i) fn();
        best = std::min(best, seconds_since(t0) / iters);
    }
    return best;
}

uint16_t to_bf16(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

// V2-Lite attention dims.
constexpr int32_t kHeads = 16, kDc = 512, kDr = 64, kHidden = 2048, kDn = 128, kDv = 128;
constexpr int32_t kBlock = 64;

struct ContextDel { void operator()(mla_context* p) const { mla_context_destroy(p); } };
struct CacheDel { void operator()(mla_cache* p) const { mla_cache_destroy(p); } };
struct LayerDel { void operator()(mla_layer* p) const { mla_layer_destroy(p); } };
using ContextPtr = std::unique_ptr<mla_context, ContextDel>;

ContextPtr make_context(int32_t simd, int threads) {
    mla_context_options o;
    CALL(mla_context_options_init(&o));
    o.simd = simd;
    o.num_threads = threads;
    mla_context* c = nullptr;
    CALL(mla_context_create(&o, &c));
    return ContextPtr(c);
}

struct Row {
    std::string level, simd;
    int32_t batch, len;
    double sec, flops, bytes;
};

// Kernel level: one decode step (1 query token per sequence) of B sequences of L cached tokens.
Row bench_attention(mla_context* ctx, const char* simd_name, int32_t B, int32_t L, double min_s, int max_iters) {
    const int32_t nb = (L + kBlock - 1) / kBlock;
    const size_t entry = kDc + kDr;
    std::vector<uint16_t> cache(size_t(B) * size_t(nb) * kBlock * entry);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto& x : cache) x = to_bf16(u(rng));
    std::vector<uint16_t> q(size_t(B) * kHeads * entry), out(size_t(B) * kHeads * kDc);
    for (auto& x : q) x = to_bf16(u(rng));
    std::vector<float> lse(size_t(B) * kHeads);
    std::vector<int32_t> qo(size_t(B) + 1), lens(size_t(B), L), table(size_t(B) * size_t(nb));
    for (int32_t b = 0; b <= B; ++b) qo[size_t(b)] = b;
    for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
    mla_attention_params p;
    CALL(mla_attention_params_init(&p));
    p.num_seqs = B;
    p.num_tokens = B;
    p.num_heads = kHeads;
    p.block_table_stride = nb;
    p.q_dtype = MLA_DTYPE_BF16;
    p.out_dtype = MLA_DTYPE_BF16;
    p.softmax_scale = 0.1147f;
    p.q = q.data();
    p.qo_indptr = qo.data();
    p.seq_lens = lens.data();
    p.block_table = table.data();
    p.cache.data = cache.data();
    p.cache.dtype = MLA_DTYPE_BF16;
    p.cache.num_blocks = B * nb;
    p.cache.block_size = kBlock;
    p.cache.kv_lora_rank = kDc;
    p.cache.rope_dim = kDr;
    p.out = out.data();
    p.lse = lse.data();
    size_t mb = 0, wb = 0;
    CALL(mla_attention_workspace_size(ctx, B, B, kHeads, kDc, kDr, &mb, &wb));
    std::vector<uint8_t> meta(std::max<size_t>(mb, 1)), ws(std::max<size_t>(wb, 1));
    CALL(mla_attention_plan(ctx, &p, meta.data(), mb, nullptr));
    double sec = time_call([&] { CALL(mla_attention_run(ctx, &p, meta.data(), mb, ws.data(), wb, nullptr)); }, min_s,
                           max_iters);
    Row r;
    r.level = "attention";
    r.simd = simd_name;
    r.batch = B;
    r.len = L;
    r.sec = sec;
    r.flops = double(B) * kHeads * L * (2.0 * (kDc + kDr) + 2.0 * kDc);
    r.bytes = double(B) * L * entry * 2;  // the cache is read once per step
    return r;
}

// Layer level: one decode step through mla_layer_forward (projections + compress + attention +
// o_proj) with B sequences of L - 1 cached tokens; the cache is filled with mla_compress.
Row bench_layer(mla_context* ctx, const char* simd_name, int32_t B, int32_t L, double min_s, int max_iters) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto rand_bf16 = [&](size_t n, float scale, float mean) {
        std::vector<uint16_t> v(n);
        for (auto& x : v) x = to_bf16(mean + scale * u(rng));
        return v;
    };
    mla_config cfg;
    CALL(mla_config_init(&cfg));
    cfg.hidden_size = kHidden;
    cfg.num_heads = kHeads;
    cfg.q_lora_rank = 0;
    cfg.kv_lora_rank = kDc;
    cfg.qk_nope_head_dim = kDn;
    cfg.qk_rope_head_dim = kDr;
    cfg.v_head_dim = kDv;
    cfg.rope_mscale = 0.707;
    cfg.rope_mscale_all_dim = 0.707;
    const float ws = 1.0f / std::sqrt(float(kHidden));
    std::vector<uint16_t> wq = rand_bf16(size_t(kHeads) * (kDn + kDr) * kHidden, ws, 0),
                          wkva = rand_bf16(size_t(kDc + kDr) * kHidden, ws, 0), wn = rand_bf16(kDc, 0.1f, 1.0f),
                          wkvb = rand_bf16(size_t(kHeads) * (kDn + kDv) * kDc, 0.05f, 0),
                          wo = rand_bf16(size_t(kHidden) * kHeads * kDv, 0.03f, 0);
    mla_layer_weights w;
    CALL(mla_layer_weights_init(&w));
    auto set = [](mla_weight& m, const std::vector<uint16_t>& v, int64_t r, int64_t c) {
        m.data = v.data();
        m.dtype = MLA_DTYPE_BF16;
        m.rows = r;
        m.cols = c;
    };
    set(w.q_proj, wq, int64_t(kHeads) * (kDn + kDr), kHidden);
    set(w.kv_a_proj_with_mqa, wkva, kDc + kDr, kHidden);
    set(w.kv_a_layernorm, wn, kDc, 1);
    set(w.kv_b_proj, wkvb, int64_t(kHeads) * (kDn + kDv), kDc);
    set(w.o_proj, wo, kHidden, int64_t(kHeads) * kDv);
    mla_layer* lraw = nullptr;
    CALL(mla_layer_create(ctx, &cfg, &w, nullptr, &lraw));
    std::unique_ptr<mla_layer, LayerDel> layer(lraw);

    const int32_t nb = (L + kBlock - 1) / kBlock;
    mla_cache_options co;
    CALL(mla_cache_options_init(&co));
    co.dtype = MLA_DTYPE_BF16;
    co.block_size = kBlock;
    co.num_blocks = B * nb;
    mla_cache* craw = nullptr;
    CALL(mla_cache_create(ctx, &co, &craw));
    std::unique_ptr<mla_cache, CacheDel> cache(craw);
    std::vector<int32_t> table(size_t(B) * size_t(nb));
    for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
    {   // Fill the first L - 1 slots of every sequence (random kv_a rows through mla_compress).
        const int32_t T = L - 1;
        std::vector<float> kva(size_t(T) * (kDc + kDr)), norm(kDc, 1.0f);
        for (auto& x : kva) x = u(rng);
        std::vector<int32_t> pos(static_cast<size_t>(T));
        std::vector<int64_t> slots(static_cast<size_t>(T));
        mla_cache_view view;
        CALL(mla_cache_get_view(cache.get(), &view));
        for (int32_t b = 0; b < B; ++b) {
            for (int32_t t = 0; t < T; ++t) {
                pos[size_t(t)] = t;
                slots[size_t(t)] = int64_t(table[size_t(b * nb + t / kBlock)]) * kBlock + t % kBlock;
            }
            mla_compress_params cp;
            CALL(mla_compress_params_init(&cp));
            cp.num_tokens = T;
            cp.kv_a = kva.data();
            cp.kv_a_dtype = MLA_DTYPE_F32;
            cp.kv_a_stride = kDc + kDr;
            cp.norm_weight = norm.data();
            cp.norm_weight_dtype = MLA_DTYPE_F32;
            cp.positions = pos.data();
            cp.slot_mapping = slots.data();
            cp.cache = view;
            CALL(mla_compress(ctx, &cfg, &cp, nullptr));
        }
    }
    std::vector<uint16_t> hidden = rand_bf16(size_t(B) * kHidden, 1.0f, 0), out(size_t(B) * kHidden);
    std::vector<int32_t> qo(size_t(B) + 1), lens(size_t(B), L - 1);
    for (int32_t b = 0; b <= B; ++b) qo[size_t(b)] = b;
    mla_batch batch;
    CALL(mla_batch_init(&batch));
    batch.num_seqs = B;
    batch.num_tokens = B;
    batch.block_table_stride = nb;
    batch.qo_indptr = qo.data();
    batch.cache_lens = lens.data();
    batch.block_table = table.data();
    // Every call rewrites slot L - 1 of each sequence: the same decode step, repeated.
    double sec = time_call([&] {
        CALL(mla_layer_forward(layer.get(), cache.get(), &batch, hidden.data(), MLA_DTYPE_BF16, out.data(),
                               MLA_DTYPE_BF16, nullptr));
    }, min_s, max_iters);
    const double weight_params = double(kHeads) * (kDn + kDr) * kHidden + double(kDc + kDr) * kHidden +
                                 double(kHeads) * (kDn + kDv) * kDc + double(kHidden) * kHeads * kDv;
    Row r;
    r.level = "layer";
    r.simd = simd_name;
    r.batch = B;
    r.len = L;
    r.sec = sec;
    r.flops = double(B) * (2.0 * weight_params + kHeads * double(L) * (2.0 * (kDc + kDr) + 2.0 * kDc));
    r.bytes = double(B) * L * (kDc + kDr) * 2 + weight_params * 2;  // cache + bf16-sized weights
    return r;
}

}  // namespace

// The C side of the Java API's per-call overhead (java-api's JMH DecodeOverheadBench uses the same
// shape): one mla_attention_run on a 1-thread context for 1 sequence, 1 query token, `keys`
// cached keys, latent 512 + rope 64, bf16 cache, f32 q/out. Returns ns per call.
double call_ns(int32_t heads, int32_t keys) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    const size_t entry = kDc + kDr;
    std::vector<uint16_t> cache(size_t(kBlock) * entry);
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto& x : cache) x = to_bf16(u(rng));
    std::vector<float> q(size_t(heads) * entry), out(size_t(heads) * kDc);
    for (auto& x : q) x = u(rng);
    int32_t qo[2] = {0, 1}, len = keys, table = 0;
    mla_attention_params p;
    CALL(mla_attention_params_init(&p));
    p.num_seqs = 1;
    p.num_tokens = 1;
    p.num_heads = heads;
    p.block_table_stride = 1;
    p.softmax_scale = 0.1352f;
    p.q = q.data();
    p.qo_indptr = qo;
    p.seq_lens = &len;
    p.block_table = &table;
    p.cache.data = cache.data();
    p.cache.dtype = MLA_DTYPE_BF16;
    p.cache.num_blocks = 1;
    p.cache.block_size = kBlock;
    p.cache.kv_lora_rank = kDc;
    p.cache.rope_dim = kDr;
    p.out = out.data();
    size_t mb = 0, wb = 0;
    CALL(mla_attention_workspace_size(ctx.get(), 1, 1, heads, kDc, kDr, &mb, &wb));
    std::vector<uint8_t> meta(std::max<size_t>(mb, 1)), ws(std::max<size_t>(wb, 1));
    CALL(mla_attention_plan(ctx.get(), &p, meta.data(), mb, nullptr));
    return 1e9 * time_call([&] { CALL(mla_attention_run(ctx.get(), &p, meta.data(), mb, ws.data(), wb, nullptr)); },
                           0.3, 100000000);
}

int main(int argc, char** argv) {
    bool quick = false;
    int threads = 0;
    const char* csv = nullptr;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--quick") quick = true;
        else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--csv" && i + 1 < argc) csv = argv[++i];
        else if (a == "--call-overhead") {
            // ns per mla_attention_run at the shape of java-api's JMH DecodeOverheadBench
            for (int32_t h : {1, 16})
                std::printf("mla_attention_run, 1-thread context, heads %d, 16 keys: %.1f ns/call\n", h, call_ns(h, 16));
            return 0;
        } else {
            std::fprintf(stderr, "usage: mla-bench-cpu [--quick] [--threads N] [--csv FILE] | --call-overhead\n");
            return a == "--help" ? 0 : 2;
        }
    }
    if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
    const double min_s = quick ? 0.02 : 0.3;

    std::printf("mla-bench-cpu%s: libmla %u, %d threads\n", quick ? " (quick)" : "", mla_version(), threads);
    const double peak512 = peak_gflops(true, threads, quick ? 0.02 : 0.3);
    const double peak256 = peak_gflops(false, threads, quick ? 0.02 : 0.3);
    const double peak = std::max(peak512, peak256);
    const double bw = read_bandwidth(threads, quick ? (size_t(32) << 20) : (size_t(512) << 20));
    std::printf("peak f32 FMA: avx512 %.1f GFLOP/s, avx2 %.1f GFLOP/s; read bandwidth %.1f GB/s\n", peak512, peak256, bw);

    ContextPtr fast = make_context(MLA_SIMD_AUTO, threads);
    ContextPtr naive = make_context(MLA_SIMD_SCALAR, threads);
    char desc[128], naive_desc[128];
    CALL(mla_context_describe(fast.get(), desc, sizeof desc));
    CALL(mla_context_describe(naive.get(), naive_desc, sizeof naive_desc));
    std::printf("context: %s (baseline: the same with MLA_SIMD_SCALAR)\n", desc);
    std::printf("shapes: %d heads, latent %d, rope %d, bf16 cache (block %d); attention q/out bf16; "
                "layer hidden %d, no q_lora, nope %d, v %d, bf16 weights; 1 new token per sequence\n\n",
                kHeads, kDc, kDr, kBlock, kHidden, kDn, kDv);

    std::vector<int32_t> lens = quick ? std::vector<int32_t>{1024} : std::vector<int32_t>{1024, 8192};
    std::vector<int32_t> batches = quick ? std::vector<int32_t>{1} : std::vector<int32_t>{1, 8};
    std::vector<Row> rows;
    std::vector<double> ratios;
    for (const char* level : {"attention", "layer"}) {
        for (int32_t L : lens)
            for (int32_t B : batches) {
                auto bench = [&](mla_context* c, const char* name, int max_iters) {
                    return std::string(level) == "attention" ? bench_attention(c, name, B, L, min_s, max_iters)
                                                             : bench_layer(c, name, B, L, min_s, max_iters);
                };
                Row f = bench(fast.get(), "auto", 100000);
                Row s = bench(naive.get(), "scalar", quick ? 2 : 8);
                rows.push_back(f);
                rows.push_back(s);
                ratios.push_back(s.sec / f.sec);
            }
    }
    std::printf("%-9s %-6s %5s %6s %10s %12s %10s %9s %8s %8s %9s\n", "level", "simd", "batch", "len", "ms/step",
                "tokens/s", "GFLOP/s", "%FMApeak", "GB/s", "%bw", "vs scalar");
    for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        char ratio[32] = "";
        if (i % 2 == 0) std::snprintf(ratio, sizeof ratio, "%.1fx", ratios[i / 2]);
        std::printf("%-9s %-6s %5d %6d %10.3f %12.1f %10.2f %8.1f%% %8.2f %7.1f%% %9s\n", r.level.c_str(), r.simd.c_str(),
                    r.batch, r.len, r.sec * 1e3, r.batch / r.sec, r.flops / r.sec / 1e9,
                    peak > 0 ? 100.0 * r.flops / r.sec / 1e9 / peak : 0.0, r.bytes / r.sec / 1e9,
                    100.0 * r.bytes / r.sec / 1e9 / bw, ratio);
    }
    std::printf("\nGFLOP/s counts 2 flops per multiply-add (scores over dc+dr, values over dc; layer adds the "
                "projections); GB/s counts the bf16 cache read once per step (layer: plus bf16-sized weights).\n");
    if (csv) {
        FILE* f = std::fopen(csv, "w");
        if (!f) {
            std::fprintf(stderr, "mla-bench-cpu: cannot write %s\n", csv);
            return 1;
        }
        std::fprintf(f, "level,simd,context,batch,len,ms_per_step,tokens_per_s,gflops,fma_peak_gflops,gbps,read_bw_gbps,"
                        "speedup_vs_scalar\n");
        for (size_t i = 0; i < rows.size(); ++i) {
            const Row& r = rows[i];
            std::fprintf(f, "%s,%s,%s,%d,%d,%.6f,%.3f,%.4f,%.3f,%.4f,%.3f,%.4f\n", r.level.c_str(), r.simd.c_str(),
                         i % 2 == 0 ? desc : naive_desc, r.batch, r.len, r.sec * 1e3, r.batch / r.sec, r.flops / r.sec / 1e9, peak,
                         r.bytes / r.sec / 1e9, bw, i % 2 == 0 ? ratios[i / 2] : 1.0);
        }
        std::fclose(f);
    }
    return 0;
}
