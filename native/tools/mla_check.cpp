// mla-check: runs mla-golden/1 vector files through libmla's CPU backend and reports, per file,
// sequence, cache dtype and schedule, the max relative error max|err| / max|ref| of the layer
// output against the file's reference. Exit status 0 when everything passes, 1 on any failure,
// 2 on bad usage.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "golden.h"
#include "golden_run.h"
#include "mla.h"

namespace {

void usage(FILE* f) {
    std::fprintf(f,
                 "usage: mla-check [options] FILE.safetensors...\n"
                 "Checks libmla's CPU layer against mla-golden/1 vector files.\n"
                 "For each file, sequence and cache dtype it runs three schedules:\n"
                 "  prefill+decode  the file's prefill_tokens as one prefill, then one token per step\n"
                 "  full-prefill    all tokens in one call\n"
                 "  token-by-token  one token per call\n"
                 "and prints max|out - ref| / max|ref| with PASS/FAIL.\n"
                 "options:\n"
                 "  --cache bf16|f32   cache dtype (default: both); tolerance 1e-2 (bf16), 1e-4 (f32)\n"
                 "  --block-size N     cache block size, a power of two (default 64)\n"
                 "  --threads N        CPU worker threads (default 0 = one per core)\n"
                 "  --help             this text\n");
}

bool parse_int(const char* s, int* out) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (!s[0] || *end || v < 0 || v > 1 << 20) return false;
    *out = int(v);
    return true;
}

struct ContextDel { void operator()(mla_context* c) const { mla_context_destroy(c); } };
struct LayerDel { void operator()(mla_layer* l) const { mla_layer_destroy(l); } };
struct CacheDel { void operator()(mla_cache* c) const { mla_cache_destroy(c); } };

void report_api(const char* what, mla_status st) {
    std::printf("  %s failed: %s: %s\n", what, mla_status_string(st), mla_last_error());
}

// Returns the number of failures in this file (a file that cannot be run counts as one).
int check_file(mla_context* ctx, const std::string& path, const std::vector<int32_t>& cache_dtypes, int block_size) {
    mla_golden::Golden g;
    try {
        g = mla_golden::Golden::load(path);
    } catch (const std::exception& e) {
        std::printf("%s: cannot read: %s\nFAIL\n", path.c_str(), e.what());
        return 1;
    }
    const mla_config& cfg = g.config();
    std::printf("%s: hidden %d, heads %d, q_lora %d, latent %d, nope %d, rope %d, v %d, rope %s%s\n", path.c_str(),
                cfg.hidden_size, cfg.num_heads, cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_nope_head_dim,
                cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.rope_scaling == MLA_ROPE_SCALING_YARN ? "yarn" : "plain",
                cfg.rope_interleave ? " interleaved" : "");
    mla_layer_weights w = g.layer_weights();
    mla_layer* raw_layer = nullptr;
    mla_status st = mla_layer_create(ctx, &cfg, &w, nullptr, &raw_layer);
    if (st != MLA_OK) {
        report_api("mla_layer_create", st);
        std::printf("FAIL\n");
        return 1;
    }
    std::unique_ptr<mla_layer, LayerDel> layer(raw_layer);
    int failures = 0;
    std::printf("  %-4s %5s %5s  %-5s %-15s %12s %8s  %s\n", "seq", "T", "P", "cache", "schedule", "max_rel_err", "tol",
                "result");
    for (const mla_golden::Sequence& s : g.sequences()) {
        std::vector<float> hidden = g.seq_f32(s.index, "hidden");
        std::vector<float> ref = g.seq_f32(s.index, "output");
        int32_t nblocks = (s.tokens + block_size - 1) / block_size;
        std::vector<int32_t> table(static_cast<size_t>(nblocks));
        for (int32_t i = 0; i < nblocks; ++i) table[size_t(i)] = i;
        for (int32_t dt : cache_dtypes) {
            const double tol = dt == MLA_DTYPE_F32 ? 1e-4 : 1e-2;
            const char* dname = dt == MLA_DTYPE_F32 ? "f32" : "bf16";
            struct Mode { const char* name; std::vector<int32_t> chunks; };
            const Mode modes[] = {{"prefill+decode", mla_golden::schedule_prefill_decode(s.tokens, s.prefill_tokens)},
                                  {"full-prefill", mla_golden::schedule_full(s.tokens)},
                                  {"token-by-token", mla_golden::schedule_tokenwise(s.tokens)}};
            for (const Mode& m : modes) {
                mla_cache_options co;
                mla_cache_options_init(&co);
                co.dtype = dt;
                co.block_size = block_size;
                co.num_blocks = nblocks;
                co.kv_lora_rank = cfg.kv_lora_rank;
                co.rope_dim = cfg.qk_rope_head_dim;
                mla_cache* raw_cache = nullptr;
                st = mla_cache_create(ctx, &co, &raw_cache);
                if (st != MLA_OK) {
                    report_api("mla_cache_create", st);
                    ++failures;
                    continue;
                }
                std::unique_ptr<mla_cache, CacheDel> cache(raw_cache);
                std::vector<float> out(ref.size(), NAN);
                st = mla_golden::run_sequence(layer.get(), cache.get(), table.data(), nblocks, hidden.data(),
                                              cfg.hidden_size, m.chunks, out.data());
                if (st != MLA_OK) {
                    report_api("mla_layer_forward", st);
                    ++failures;
                    continue;
                }
                double err = mla_golden::max_rel_err(out.data(), ref.data(), ref.size());
                bool pass = err <= tol;
                failures += pass ? 0 : 1;
                std::printf("  %-4d %5d %5d  %-5s %-15s %12.3e %8.0e  %s\n", s.index, s.tokens, s.prefill_tokens, dname,
                            m.name, err, tol, pass ? "PASS" : "FAIL");
            }
        }
    }
    return failures;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<int32_t> cache_dtypes = {MLA_DTYPE_F32, MLA_DTYPE_BF16};
    int block_size = 64, threads = 0;
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            usage(stdout);
            return 0;
        } else if (a == "--cache" && i + 1 < argc) {
            std::string v = argv[++i];
            if (v == "bf16") cache_dtypes = {MLA_DTYPE_BF16};
            else if (v == "f32") cache_dtypes = {MLA_DTYPE_F32};
            else { std::fprintf(stderr, "mla-check: --cache must be bf16 or f32, got '%s'\n", v.c_str()); return 2; }
        } else if (a == "--block-size" && i + 1 < argc) {
            if (!parse_int(argv[++i], &block_size) || block_size < 1 || (block_size & (block_size - 1)) != 0) {
                std::fprintf(stderr, "mla-check: --block-size must be a power of two, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (a == "--threads" && i + 1 < argc) {
            if (!parse_int(argv[++i], &threads)) {
                std::fprintf(stderr, "mla-check: bad --threads '%s'\n", argv[i]);
                return 2;
            }
        } else if (!a.empty() && a[0] == '-') {
            std::fprintf(stderr, "mla-check: unknown or incomplete option '%s'\n", a.c_str());
            usage(stderr);
            return 2;
        } else {
            files.push_back(a);
        }
    }
    if (files.empty()) {
        usage(stderr);
        return 2;
    }
    mla_context_options opt;
    mla_context_options_init(&opt);
    opt.backend = MLA_BACKEND_CPU;
    opt.num_threads = threads;
    mla_context* raw_ctx = nullptr;
    mla_status st = mla_context_create(&opt, &raw_ctx);
    if (st != MLA_OK) {
        std::fprintf(stderr, "mla-check: mla_context_create: %s: %s\n", mla_status_string(st), mla_last_error());
        return 1;
    }
    std::unique_ptr<mla_context, ContextDel> ctx(raw_ctx);
    char desc[128];
    if (mla_context_describe(ctx.get(), desc, sizeof desc) == MLA_OK) std::printf("context: %s\n", desc);
    int failures = 0;
    for (const std::string& f : files) failures += check_file(ctx.get(), f, cache_dtypes, block_size);
    std::printf("%s: %zu file(s), %d failure(s)\n", failures ? "FAIL" : "PASS", files.size(), failures);
    return failures ? 1 : 0;
}
