// mla_layer_create's progress callback (mla_layer_options.progress): the calls are monotone, end
// at the total, and the total is the layer's prepared weight bytes; a non-zero return cancels with
// MLA_ERROR_CANCELLED, writes nothing and leaks nothing (run the suite under AddressSanitizer to
// check the host side); options of the older, smaller struct still work.
//
// Two suites in one executable: "cpu_" tests (the default), and with --cuda the "cuda_" tests,
// which stage layers of several 16 MiB chunks per tensor to the GPU and compare them with the CPU
// layer; without a CUDA device --cuda exits 77 (ctest: skipped).
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "mla_test.h"
#include "test_util.h"

using namespace mla_test;

namespace {

struct Dims {
    int32_t hidden, heads, dc, dn, dr, dv;
};

// A small layer: dc > 128, so FP8 scale blocks split the rows and columns.
constexpr Dims kSmall{160, 3, 136, 16, 8, 24};

// A layer's weights in one dtype (norm vectors in f32 unless the dtype is bf16), owned.
// q_lora 0 uses q_proj; otherwise q_a_proj / q_a_layernorm / q_b_proj.
struct Weights {
    mla_config cfg{};
    std::vector<std::vector<uint8_t>> store;
    std::vector<std::vector<float>> scales;
    mla_layer_weights w{};

    Weights(int32_t q_lora, int32_t dtype, Dims dims = kSmall) {
        mla_config_init(&cfg);
        cfg.hidden_size = dims.hidden;
        cfg.num_heads = dims.heads;
        cfg.q_lora_rank = q_lora;
        cfg.kv_lora_rank = dims.dc;
        cfg.qk_nope_head_dim = dims.dn;
        cfg.qk_rope_head_dim = dims.dr;
        cfg.v_head_dim = dims.dv;
        cfg.rope_scaling = MLA_ROPE_SCALING_NONE;
        const int64_t H = cfg.num_heads, D = cfg.hidden_size, dc = cfg.kv_lora_rank,
                      dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
        mla_layer_weights_init(&w);
        std::mt19937_64 rng(uint64_t(31 + q_lora * 7 + dtype));
        store.reserve(8);
        scales.reserve(8);
        auto set = [&](mla_weight& m, int64_t r, int64_t c, bool norm) {
            const float a = norm ? 0.1f : 1.0f / std::sqrt(float(c));
            std::vector<float> v = random_floats(rng, size_t(r * c), -a, a);
            if (norm)
                for (float& x : v) x += 1.0f;
            const int32_t dt = norm && dtype != MLA_DTYPE_BF16 ? MLA_DTYPE_F32 : dtype;
            std::vector<uint8_t> bytes;
            if (dt == MLA_DTYPE_F32) {
                bytes.resize(v.size() * 4);
                std::memcpy(bytes.data(), v.data(), bytes.size());
            } else if (dt == MLA_DTYPE_BF16 || dt == MLA_DTYPE_F16) {
                bytes.resize(v.size() * 2);
                for (size_t i = 0; i < v.size(); ++i) {
                    const uint16_t h = dt == MLA_DTYPE_BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
                    std::memcpy(bytes.data() + i * 2, &h, 2);
                }
            } else {  // FP8 with one scale per 128 x 128 block (each block's max maps near 448)
                const int64_t br = (r + 127) / 128, bc = (c + 127) / 128;
                scales.emplace_back(size_t(br * bc), 0.0f);
                std::vector<float>& sc = scales.back();
                for (int64_t i = 0; i < r; ++i)
                    for (int64_t j = 0; j < c; ++j) {
                        float& s = sc[size_t((i / 128) * bc + j / 128)];
                        s = std::max(s, std::fabs(v[size_t(i * c + j)]) / 448.0f);
                    }
                bytes.resize(v.size());
                for (int64_t i = 0; i < r; ++i)
                    for (int64_t j = 0; j < c; ++j) {
                        const float s = sc[size_t((i / 128) * bc + j / 128)];
                        bytes[size_t(i * c + j)] = f32_to_fp8e4m3(s > 0 ? v[size_t(i * c + j)] / s : 0.0f);
                    }
                m.scale_inv = sc.data();
            }
            store.push_back(std::move(bytes));
            m.data = store.back().data();
            m.dtype = dt;
            m.rows = r;
            m.cols = c;
        };
        if (q_lora > 0) {
            set(w.q_a_proj, q_lora, D, false);
            set(w.q_a_layernorm, q_lora, 1, true);
            set(w.q_b_proj, H * (dn + dr), q_lora, false);
        } else {
            set(w.q_proj, H * (dn + dr), D, false);
        }
        set(w.kv_a_proj_with_mqa, dc + dr, D, false);
        set(w.kv_a_layernorm, dc, 1, true);
        set(w.kv_b_proj, H * (dn + dv), dc, false);
        set(w.o_proj, D, H * dv, false);
    }

    // Bytes of the prepared weights for heads [h0, h1) with matrices of matrix_bytes per element
    // (norm vectors always f32).
    uint64_t prepared_bytes(int32_t h0, int32_t h1, uint64_t matrix_bytes) const {
        const uint64_t Hs = uint64_t(h1 - h0), D = uint64_t(cfg.hidden_size), ql = uint64_t(cfg.q_lora_rank),
                       dc = uint64_t(cfg.kv_lora_rank), dn = uint64_t(cfg.qk_nope_head_dim),
                       dr = uint64_t(cfg.qk_rope_head_dim), dv = uint64_t(cfg.v_head_dim);
        uint64_t matrices = (dc + dr) * D + Hs * dc * dn + Hs * dv * dc + D * Hs * dv;
        matrices += ql > 0 ? ql * D + Hs * (dn + dr) * ql : Hs * (dn + dr) * D;
        const uint64_t norms = dc + ql;
        return matrices * matrix_bytes + norms * 4;
    }

    // The CPU layer keeps matrices in bf16 when every source is bf16, else in f32.
    uint64_t cpu_prepared_bytes(int32_t h0, int32_t h1) const {
        return prepared_bytes(h0, h1, w.kv_b_proj.dtype == MLA_DTYPE_BF16 ? 2 : 4);
    }
};

// Records every call; returns non-zero at call number cancel_at (1-based; 0 = never).
struct Recorder {
    struct Call {
        uint64_t done, total;
        std::thread::id thread;
    };
    std::vector<Call> calls;
    size_t cancel_at = 0;

    static int32_t callback(void* user, uint64_t done, uint64_t total) {
        Recorder* r = static_cast<Recorder*>(user);
        r->calls.push_back({done, total, std::this_thread::get_id()});
        return r->calls.size() == r->cancel_at ? 1 : 0;
    }
};

mla_layer_options options_with(Recorder& rec, int32_t h0 = 0, int32_t h1 = 0) {
    mla_layer_options o;
    mla_layer_options_init(&o);
    o.head_begin = h0;
    o.head_end = h1;
    o.progress = &Recorder::callback;
    o.progress_user_data = &rec;
    return o;
}

// The layer's output for a fixed 5-token prefill (f32 cache), to compare layers. hidden and out
// go through buffers of the context (device memory on CUDA).
std::vector<float> forward_once(mla_context* ctx, const mla_config& cfg, mla_layer* layer) {
    const int32_t T = 5, D = cfg.hidden_size;
    CachePtr cache = make_cache(ctx, MLA_DTYPE_F32, 8, 1, cfg.kv_lora_rank, cfg.qk_rope_head_dim);
    std::mt19937_64 rng(77);
    std::vector<float> hidden = random_floats(rng, size_t(T) * D), out(size_t(T) * D, -1.0f);
    const int32_t qo[2] = {0, T}, lens[1] = {0}, table[1] = {0};
    mla_batch b;
    mla_batch_init(&b);
    b.num_seqs = 1;
    b.num_tokens = T;
    b.block_table_stride = 1;
    b.qo_indptr = qo;
    b.cache_lens = lens;
    b.block_table = table;
    const size_t bytes = hidden.size() * 4;
    mla_buffer *din = nullptr, *dout = nullptr;
    REQUIRE_OK(mla_buffer_create(ctx, bytes, &din));
    REQUIRE_OK(mla_buffer_create(ctx, bytes, &dout));
    void *pin = nullptr, *pout = nullptr;
    REQUIRE_OK(mla_buffer_data(din, &pin, nullptr));
    REQUIRE_OK(mla_buffer_data(dout, &pout, nullptr));
    REQUIRE_OK(mla_buffer_upload(din, 0, hidden.data(), bytes, nullptr));
    REQUIRE_OK(mla_layer_forward(layer, cache.get(), &b, pin, MLA_DTYPE_F32, pout, MLA_DTYPE_F32, nullptr));
    REQUIRE_OK(mla_buffer_download(dout, 0, out.data(), bytes, nullptr));
    mla_buffer_destroy(din);
    mla_buffer_destroy(dout);
    return out;
}

// The calls of one successful create: on the creating thread, bytes_done strictly increasing,
// every bytes_total = total, the last bytes_done = total.
void check_calls(const Recorder& rec, uint64_t total) {
    REQUIRE(!rec.calls.empty());
    uint64_t prev = 0;
    for (const Recorder::Call& c : rec.calls) {
        CHECK_EQ(c.total, total);
        CHECK(c.done > prev);
        CHECK(c.thread == std::this_thread::get_id());
        prev = c.done;
    }
    CHECK_EQ(rec.calls.back().done, total);
}

// Prepared tensors: q path (q_proj, or q_a_proj, its norm and q_b_proj), kv_a, its norm, W_UK,
// W_UV, o_proj.
size_t tensor_count(const mla_config& c) { return c.q_lora_rank > 0 ? 8 : 6; }

void check_progress(int32_t q_lora, int32_t dtype, int32_t h0, int32_t h1) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    Weights wt(q_lora, dtype);
    Recorder rec;
    mla_layer_options o = options_with(rec, h0, h1);
    mla_layer* layer = nullptr;
    REQUIRE_OK(mla_layer_create(ctx.get(), &wt.cfg, &wt.w, &o, &layer));
    LayerPtr owned(layer);
    const int32_t end = h1 == 0 ? wt.cfg.num_heads : h1;
    const uint64_t want = wt.cpu_prepared_bytes(h0, end);
    CHECK_EQ(rec.calls.size(), tensor_count(wt.cfg));  // the CPU reports once per tensor
    check_calls(rec, want);
    std::printf("    q_lora=%d dtype=%d heads [%d, %d): %zu calls, %llu bytes\n", q_lora, dtype, h0, end,
                rec.calls.size(), static_cast<unsigned long long>(want));

    // The callback does not change the layer: the same output as a layer made without one.
    LayerPtr plain = make_layer(ctx.get(), wt.cfg, wt.w, h0, h1);
    const std::vector<float> a = forward_once(ctx.get(), wt.cfg, owned.get());
    const std::vector<float> b = forward_once(ctx.get(), wt.cfg, plain.get());
    CHECK(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

}  // namespace

MLA_TEST(cpu_progress_is_monotone_and_ends_at_the_prepared_bytes) {
    check_progress(0, MLA_DTYPE_F32, 0, 0);
    check_progress(0, MLA_DTYPE_BF16, 0, 0);
    check_progress(48, MLA_DTYPE_BF16, 0, 0);
    check_progress(48, MLA_DTYPE_F16, 1, 3);
    check_progress(48, MLA_DTYPE_FP8_E4M3, 0, 2);
}

MLA_TEST(cpu_progress_cancel_first_middle_last) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    for (int32_t q_lora : {0, 48}) {
        Weights wt(q_lora, MLA_DTYPE_BF16);
        const size_t n = q_lora > 0 ? 8 : 6;
        // The tensor each call reports (CPU order: q path, kv_a, its norm, W_UK, W_UV, o_proj).
        const std::vector<std::string> names =
            q_lora > 0 ? std::vector<std::string>{"q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa",
                                                  "kv_a_layernorm", "kv_b_proj (W_UK)", "kv_b_proj (W_UV)", "o_proj"}
                       : std::vector<std::string>{"q_proj", "kv_a_proj_with_mqa", "kv_a_layernorm",
                                                  "kv_b_proj (W_UK)", "kv_b_proj (W_UV)", "o_proj"};
        for (size_t at : {size_t(1), n / 2, n}) {
            Recorder rec;
            rec.cancel_at = at;
            mla_layer_options o = options_with(rec);
            mla_layer* const sentinel = reinterpret_cast<mla_layer*>(uintptr_t(0x4321));
            mla_layer* out = sentinel;
            CHECK_STATUS(mla_layer_create(ctx.get(), &wt.cfg, &wt.w, &o, &out), MLA_ERROR_CANCELLED);
            CHECK(out == sentinel);
            CHECK_EQ(rec.calls.size(), at);  // no call after the one that cancelled
            const std::string msg = mla_last_error();
            CHECK_MSG(msg.find("mla_layer_create") != std::string::npos &&
                          msg.find("cancelled") != std::string::npos &&
                          msg.find(names[at - 1]) != std::string::npos,
                      "message \"" + msg + "\" does not name " + names[at - 1]);
        }
        // The context is still usable.
        LayerPtr layer = make_layer(ctx.get(), wt.cfg, wt.w);
        CHECK(!forward_once(ctx.get(), wt.cfg, layer.get()).empty());
    }
    CHECK_EQ(std::string(mla_status_string(MLA_ERROR_CANCELLED)), std::string("MLA_ERROR_CANCELLED"));
}

// A caller compiled against the header before the progress fields passes struct_size 12 and
// nothing after head_end: the library must not read past it.
MLA_TEST(cpu_progress_old_options_struct_accepted) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    Weights wt(0, MLA_DTYPE_F32);
    struct OldOptions {
        uint32_t struct_size;
        int32_t head_begin;
        int32_t head_end;
    };
    static_assert(sizeof(OldOptions) == 12, "the first mla_layer_options");
    // Garbage where the new fields would be: a library that reads them would crash or call it.
    union {
        mla_layer_options full;
        unsigned char raw[sizeof(mla_layer_options)];
    } u;
    std::memset(u.raw, 0xA5, sizeof u.raw);
    OldOptions old{uint32_t(sizeof(OldOptions)), 1, 3};
    std::memcpy(u.raw, &old, sizeof old);
    mla_layer* layer = nullptr;
    REQUIRE_OK(mla_layer_create(ctx.get(), &wt.cfg, &wt.w, &u.full, &layer));
    LayerPtr owned(layer);
    int32_t h0 = -1, h1 = -1;
    REQUIRE_OK(mla_layer_get_config(layer, nullptr, &h0, &h1));
    CHECK_EQ(h0, 1);
    CHECK_EQ(h1, 3);
    // Same layer as with the current struct.
    LayerPtr current = make_layer(ctx.get(), wt.cfg, wt.w, 1, 3);
    const std::vector<float> a = forward_once(ctx.get(), wt.cfg, layer);
    const std::vector<float> b = forward_once(ctx.get(), wt.cfg, current.get());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);

    // Sizes between the two versions, or past the current one, are refused naming struct_size.
    for (uint32_t bad : {uint32_t(8), uint32_t(16), uint32_t(sizeof(mla_layer_options) - 8),
                         uint32_t(sizeof(mla_layer_options) + 8)}) {
        mla_layer_options o;
        mla_layer_options_init(&o);
        o.struct_size = bad;
        mla_layer* out = nullptr;
        CHECK_STATUS(mla_layer_create(ctx.get(), &wt.cfg, &wt.w, &o, &out), MLA_ERROR_INVALID_ARGUMENT);
        CHECK(out == nullptr);
        CHECK(std::strstr(mla_last_error(), "struct_size") != nullptr);
    }
}

MLA_TEST(cpu_progress_defaults_and_null_callback) {
    mla_layer_options o;
    std::memset(&o, 0xCD, sizeof o);
    REQUIRE_OK(mla_layer_options_init(&o));
    CHECK_EQ(o.struct_size, uint32_t(sizeof o));
    CHECK(o.progress == nullptr);
    CHECK(o.progress_user_data == nullptr);
    CHECK_EQ(o.head_begin, 0);
    CHECK_EQ(o.head_end, 0);
    // user data without a callback is ignored
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    Weights wt(0, MLA_DTYPE_F32);
    int dummy = 0;
    o.progress_user_data = &dummy;
    mla_layer* layer = nullptr;
    REQUIRE_OK(mla_layer_create(ctx.get(), &wt.cfg, &wt.w, &o, &layer));
    mla_layer_destroy(layer);
}

// ---- CUDA --------------------------------------------------------------------------------------

namespace {

constexpr uint64_t kChunk = uint64_t(16) << 20;  // the staging buffer of the CUDA backend

// A CUDA context on device 0, or null (with the reason in *why) where there is none.
ContextPtr cuda_context(std::string* why) {
    mla_context_options o;
    REQUIRE_OK(mla_context_options_init(&o));
    o.backend = MLA_BACKEND_CUDA;
    mla_context* c = nullptr;
    const mla_status st = mla_context_create(&o, &c);
    if (st != MLA_OK) {
        if (why) *why = status_text(st) + ": " + mla_last_error();
        return ContextPtr();
    }
    return ContextPtr(c);
}

size_t device_free(mla_context* ctx) {
    size_t free_bytes = 0;
    REQUIRE_OK(mla_context_memory_info(ctx, nullptr, &free_bytes, nullptr));
    return free_bytes;
}

// hidden 4096 and 32 heads (q_lora 1536, latent 512, 128/64/128 head dims): o_proj is 32 MiB
// in bf16 and q_b_proj 18 MiB, so they take two chunks each; q_b_proj's chunk boundary (row
// 5461 of 3072-byte rows) falls inside a 128-row FP8 scale block.
constexpr Dims kLarge{4096, 32, 512, 128, 64, 128};

}  // namespace

MLA_TEST(cuda_progress_chunks_and_layer_matches_cpu) {
    ContextPtr gpu = cuda_context(nullptr);
    REQUIRE(gpu != nullptr);
    ContextPtr cpu = make_context(MLA_SIMD_AUTO, 0);
    for (int32_t dtype : {MLA_DTYPE_BF16, MLA_DTYPE_F32, MLA_DTYPE_FP8_E4M3}) {
        Weights wt(1536, dtype, kLarge);
        for (const auto& heads : {std::pair<int32_t, int32_t>{0, 32}, {8, 24}}) {
            Recorder rec;
            mla_layer_options o = options_with(rec, heads.first, heads.second);
            mla_layer* layer = nullptr;
            REQUIRE_OK(mla_layer_create(gpu.get(), &wt.cfg, &wt.w, &o, &layer));
            LayerPtr on_gpu(layer);
            const uint64_t total = wt.prepared_bytes(heads.first, heads.second, 2);  // bf16 on the device
            check_calls(rec, total);
            uint64_t prev = 0, largest = 0;
            for (const Recorder::Call& c : rec.calls) {
                largest = std::max(largest, c.done - prev);
                prev = c.done;
            }
            CHECK(largest <= kChunk);
            CHECK(rec.calls.size() >= std::max<uint64_t>(tensor_count(wt.cfg), (total + kChunk - 1) / kChunk));
            if (heads.second - heads.first == wt.cfg.num_heads)
                CHECK(rec.calls.size() > tensor_count(wt.cfg));  // some tensor took several chunks
            LayerPtr on_cpu = make_layer(cpu.get(), wt.cfg, wt.w, heads.first, heads.second);
            const double err = max_rel(forward_once(gpu.get(), wt.cfg, on_gpu.get()),
                                       forward_once(cpu.get(), wt.cfg, on_cpu.get()));
            std::printf("    dtype=%d heads [%d, %d): %zu calls, %llu bytes, largest step %llu, CUDA vs CPU %.2e\n",
                        dtype, heads.first, heads.second, rec.calls.size(), static_cast<unsigned long long>(total),
                        static_cast<unsigned long long>(largest), err);
            CHECK_LE_TOL("CUDA vs CPU layer (bf16 weights on the device)", err, 2e-2);
        }
    }
}

MLA_TEST(cuda_progress_cancel_frees_the_device_memory) {
    ContextPtr gpu = cuda_context(nullptr);
    REQUIRE(gpu != nullptr);
    Weights wt(1536, MLA_DTYPE_BF16, kLarge);
    Recorder all;
    mla_layer_options o = options_with(all);
    mla_layer* layer = nullptr;
    REQUIRE_OK(mla_layer_create(gpu.get(), &wt.cfg, &wt.w, &o, &layer));
    mla_layer_destroy(layer);
    const size_t n = all.calls.size();
    const size_t free_before = device_free(gpu.get());
    for (size_t at : {size_t(1), n / 2, n}) {
        Recorder rec;
        rec.cancel_at = at;
        mla_layer_options oc = options_with(rec);
        mla_layer* const sentinel = reinterpret_cast<mla_layer*>(uintptr_t(0x4321));
        mla_layer* out = sentinel;
        CHECK_STATUS(mla_layer_create(gpu.get(), &wt.cfg, &wt.w, &oc, &out), MLA_ERROR_CANCELLED);
        CHECK(out == sentinel);
        CHECK_EQ(rec.calls.size(), at);
        CHECK(std::strstr(mla_last_error(), "cancelled") != nullptr);
        // The layer's ~100 MB of device memory are back (a little slack for the driver).
        const size_t free_after = device_free(gpu.get());
        CHECK_MSG(free_after + (size_t(4) << 20) >= free_before,
                  "device free " + std::to_string(free_before) + " -> " + std::to_string(free_after) +
                      " bytes after cancelling at call " + std::to_string(at) + " of " + std::to_string(n));
    }
    LayerPtr again = make_layer(gpu.get(), wt.cfg, wt.w);  // the context is still usable
    CHECK(!forward_once(gpu.get(), wt.cfg, again.get()).empty());
}

// Default: the CPU tests. --cuda: the CUDA tests, or exit 77 (skipped) without a CUDA device.
int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--cuda") == 0) {
        std::string why;
        if (!cuda_context(&why)) {
            std::printf("SKIP: no CUDA context (%s)\n", why.c_str());
            return 77;
        }
        char filter[] = "cuda_";
        char* args[] = {argv[0], argc > 2 ? argv[2] : filter};
        return run_all(2, args);
    }
    char filter[] = "cpu_";
    char* args[] = {argv[0], argc > 1 ? argv[1] : filter};
    return run_all(2, args);
}
