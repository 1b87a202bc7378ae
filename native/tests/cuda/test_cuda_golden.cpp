// The golden vectors (transformers' DeepseekV3Attention, float64) through the public C ABI on a
// CUDA context: every sequence of every file in MLA_GOLDEN_DIR, prefilled then decoded token by
// token, with bf16 and f32 caches on a permuted block table. Exits 77 (ctest SKIP_RETURN_CODE)
// when no CUDA device can be opened. usage: test_cuda_golden [golden directory]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "golden.h"
#include "golden_run.h"
#include "mla.h"

#ifndef MLA_GOLDEN_DIR
#error "MLA_GOLDEN_DIR must name the directory of the golden vectors"
#endif

namespace {

int g_fail = 0, g_checks = 0;

constexpr double kTolBf16Cache = 2e-2;  // max|err| / max|ref|, bf16 cache and bf16 GEMM operands
constexpr double kTolF32Cache = 2e-2;   // the GEMMs still round activations to bf16

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_fail;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

bool ok_status(mla_status st, const char* call) {
    if (st == MLA_OK) return true;
    std::printf("FAIL: %s: %s: %s\n", call, mla_status_string(st), mla_last_error());
    ++g_fail;
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : MLA_GOLDEN_DIR;
    mla_context_options opt;
    mla_context_options_init(&opt);
    opt.backend = MLA_BACKEND_CUDA;
    mla_context* ctx = nullptr;
    mla_status st = mla_context_create(&opt, &ctx);
    if (st == MLA_ERROR_DEVICE || st == MLA_ERROR_UNSUPPORTED) {
        std::printf("SKIP: no CUDA context (%s: %s)\n", mla_status_string(st), mla_last_error());
        return 77;
    }
    if (!ok_status(st, "mla_context_create")) return 1;
    char desc[128];
    mla_context_describe(ctx, desc, sizeof desc);
    std::printf("context: %s\n", desc);

    std::vector<std::string> paths;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") paths.push_back(e.path().string());
    std::sort(paths.begin(), paths.end());
    check(!paths.empty(), "golden files present in " + dir);

    for (const auto& path : paths) {
        const mla_golden::Golden g = mla_golden::Golden::load(path);
        const std::string base = std::filesystem::path(path).filename().string();
        const mla_config& c = g.config();
        mla_layer_weights w = g.layer_weights();
        mla_layer* layer = nullptr;
        if (!ok_status(mla_layer_create(ctx, &c, &w, nullptr, &layer), "mla_layer_create")) continue;
        for (int32_t cache_dt : {MLA_DTYPE_BF16, MLA_DTYPE_F32}) {
            for (const auto& s : g.sequences()) {
                const int32_t bs = 16;
                const int32_t need = (s.tokens + bs - 1) / bs, pool = 3 * need + 2;
                std::vector<int32_t> table(static_cast<size_t>(pool));
                std::iota(table.begin(), table.end(), 0);
                std::mt19937_64 rng(uint64_t(s.tokens) * 31u + uint64_t(cache_dt));
                std::shuffle(table.begin(), table.end(), rng);
                mla_cache_options co;
                mla_cache_options_init(&co);
                co.dtype = cache_dt;
                co.block_size = bs;
                co.num_blocks = pool;
                co.kv_lora_rank = c.kv_lora_rank;
                co.rope_dim = c.qk_rope_head_dim;
                mla_cache* cache = nullptr;
                if (!ok_status(mla_cache_create(ctx, &co, &cache), "mla_cache_create")) continue;
                const std::vector<float> hidden = g.seq_f32(s.index, "hidden");
                const std::vector<float> ref = g.seq_f32(s.index, "output");
                const size_t n = size_t(s.tokens) * size_t(c.hidden_size);
                float *d_hidden = nullptr, *d_out = nullptr;
                cudaMalloc(&d_hidden, n * 4);
                cudaMalloc(&d_out, n * 4);
                cudaMemcpy(d_hidden, hidden.data(), n * 4, cudaMemcpyHostToDevice);
                cudaMemset(d_out, 0xff, n * 4);  // NaN: every row must be written
                const std::vector<int32_t> chunks =
                    mla_golden::schedule_prefill_decode(s.tokens, s.prefill_tokens);
                st = mla_golden::run_sequence(layer, cache, table.data(), need, d_hidden,
                                              c.hidden_size, chunks, d_out);
                std::vector<float> got(n);
                cudaMemcpy(got.data(), d_out, n * 4, cudaMemcpyDeviceToHost);
                cudaFree(d_hidden);
                cudaFree(d_out);
                mla_cache_destroy(cache);
                if (!ok_status(st, "mla_layer_forward")) continue;
                const double err = mla_golden::max_rel_err(got.data(), ref.data(), n);
                const double tol = cache_dt == MLA_DTYPE_BF16 ? kTolBf16Cache : kTolF32Cache;
                std::printf("  %-28s seq%d T=%-4d P=%-4d cache=%s max rel err %.2e\n", base.c_str(),
                            s.index, s.tokens, s.prefill_tokens,
                            cache_dt == MLA_DTYPE_BF16 ? "bf16" : "f32", err);
                check(err <= tol, base + " seq" + std::to_string(s.index) + ": max rel err " +
                                      std::to_string(err) + " > " + std::to_string(tol));
            }
        }
        mla_layer_destroy(layer);
    }
    mla_context_destroy(ctx);
    std::printf("%d checks, %d failures\n", g_checks, g_fail);
    return g_fail == 0 ? 0 : 1;
}
