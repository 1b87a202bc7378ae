// Argument validation through the C ABI: every bad argument returns its status, mla_last_error()
// names the argument, and nothing the caller passed in is written (outputs, caches and
// out-parameters are poisoned before each call and compared after).
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include "mla_test.h"
#include "test_util.h"

using namespace mla_test;

namespace {

// Calls fn, expects `want` and a last-error message containing `needle` (an argument name).
#define EXPECT_FAIL(call, want, needle)                                                                    \
    do {                                                                                                   \
        CHECK_STATUS(call, want);                                                                          \
        const char* mla_msg_ = mla_last_error();                                                           \
        CHECK_MSG(mla_msg_ != nullptr && std::strstr(mla_msg_, needle) != nullptr,                        \
                  std::string("last error \"") + (mla_msg_ ? mla_msg_ : "(null)") + "\" does not name " + needle); \
    } while (0)

template <typename T>
std::vector<uint8_t> bytes_of(const T& v) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(&v);
    return std::vector<uint8_t>(p, p + sizeof(T));
}

template <typename T>
std::vector<uint8_t> bytes_of_vec(const std::vector<T>& v) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(v.data());
    return std::vector<uint8_t>(p, p + v.size() * sizeof(T));
}

mla_config tiny_config() {
    mla_config c;
    mla_config_init(&c);
    c.hidden_size = 32;
    c.num_heads = 2;
    c.q_lora_rank = 0;
    c.kv_lora_rank = 16;
    c.qk_nope_head_dim = 8;
    c.qk_rope_head_dim = 8;
    c.v_head_dim = 8;
    c.rope_scaling = MLA_ROPE_SCALING_NONE;
    return c;
}

// A tiny valid layer's weights (f32), owned.
struct TinyWeights {
    mla_config cfg = tiny_config();
    std::vector<float> q, kva, kvan, kvb, o;
    mla_layer_weights w{};
    TinyWeights() {
        std::mt19937_64 rng(11);
        const int64_t H = cfg.num_heads, D = cfg.hidden_size, dc = cfg.kv_lora_rank, dn = cfg.qk_nope_head_dim,
                      dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
        q = random_floats(rng, size_t(H * (dn + dr) * D), -0.2f, 0.2f);
        kva = random_floats(rng, size_t((dc + dr) * D), -0.2f, 0.2f);
        kvan = random_floats(rng, size_t(dc), 0.9f, 1.1f);
        kvb = random_floats(rng, size_t(H * (dn + dv) * dc), -0.2f, 0.2f);
        o = random_floats(rng, size_t(D * H * dv), -0.2f, 0.2f);
        mla_layer_weights_init(&w);
        auto set = [](mla_weight& m, const std::vector<float>& v, int64_t r, int64_t c) {
            m.data = v.data();
            m.dtype = MLA_DTYPE_F32;
            m.rows = r;
            m.cols = c;
        };
        set(w.q_proj, q, H * (dn + dr), D);
        set(w.kv_a_proj_with_mqa, kva, dc + dr, D);
        set(w.kv_a_layernorm, kvan, dc, 1);
        set(w.kv_b_proj, kvb, H * (dn + dv), dc);
        set(w.o_proj, o, D, H * dv);
    }
};

}  // namespace

MLA_TEST(version_and_status_strings) {
    CHECK_EQ(mla_version(), uint32_t(MLA_VERSION_NUMBER));
    CHECK_EQ(mla_abi_version(), uint32_t(MLA_ABI_VERSION));
    const struct { mla_status s; const char* name; } codes[] = {
        {MLA_OK, "MLA_OK"},
        {MLA_ERROR_INVALID_ARGUMENT, "MLA_ERROR_INVALID_ARGUMENT"},
        {MLA_ERROR_UNSUPPORTED, "MLA_ERROR_UNSUPPORTED"},
        {MLA_ERROR_OUT_OF_MEMORY, "MLA_ERROR_OUT_OF_MEMORY"},
        {MLA_ERROR_CACHE_FULL, "MLA_ERROR_CACHE_FULL"},
        {MLA_ERROR_BUFFER_TOO_SMALL, "MLA_ERROR_BUFFER_TOO_SMALL"},
        {MLA_ERROR_DEVICE, "MLA_ERROR_DEVICE"},
        {MLA_ERROR_INTERNAL, "MLA_ERROR_INTERNAL"},
        {MLA_ERROR_CANCELLED, "MLA_ERROR_CANCELLED"},
    };
    for (const auto& c : codes) {
        const char* s = mla_status_string(c.s);
        REQUIRE(s != nullptr);
        CHECK_EQ(std::string(s), std::string(c.name));
    }
    for (mla_status unknown : {9, 99, -1, 0x7fffffff}) {
        const char* s = mla_status_string(unknown);
        REQUIRE(s != nullptr);
        CHECK_EQ(std::string(s), std::string("MLA_ERROR_UNKNOWN"));
    }
}

MLA_TEST(last_error_cleared_on_success_and_per_thread) {
    CHECK_STATUS(mla_config_validate(nullptr), MLA_ERROR_INVALID_ARGUMENT);
    CHECK(std::strlen(mla_last_error()) > 0);
    std::string other_thread = "unset";
    std::thread th([&] { other_thread = mla_last_error(); });
    th.join();
    CHECK_EQ(other_thread, std::string(""));
    CHECK(std::strlen(mla_last_error()) > 0);  // still ours
    mla_config c;
    CHECK_STATUS(mla_config_init(&c), MLA_OK);
    CHECK_EQ(std::string(mla_last_error()), std::string(""));
}

MLA_TEST(init_functions_reject_null) {
    EXPECT_FAIL(mla_config_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "config");
    EXPECT_FAIL(mla_context_options_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "options");
    EXPECT_FAIL(mla_cache_options_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "options");
    EXPECT_FAIL(mla_compress_params_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "params");
    EXPECT_FAIL(mla_attention_params_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "params");
    EXPECT_FAIL(mla_layer_weights_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "weights");
    EXPECT_FAIL(mla_layer_options_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "options");
    EXPECT_FAIL(mla_batch_init(nullptr), MLA_ERROR_INVALID_ARGUMENT, "batch");
}

MLA_TEST(init_functions_fill_defaults) {
    mla_config c;
    std::memset(&c, 0xCD, sizeof c);
    REQUIRE_OK(mla_config_init(&c));
    CHECK_EQ(c.struct_size, uint32_t(sizeof(mla_config)));
    CHECK_EQ(c.hidden_size, 7168);
    CHECK_EQ(c.num_heads, 128);
    CHECK_EQ(c.q_lora_rank, 1536);
    CHECK_EQ(c.kv_lora_rank, 512);
    CHECK_EQ(c.qk_rope_head_dim, 64);
    CHECK_EQ(c.rope_scaling, int32_t(MLA_ROPE_SCALING_YARN));
    CHECK_EQ(c.reserved0, 0);
    CHECK_STATUS(mla_config_validate(&c), MLA_OK);
    mla_cache_options co;
    std::memset(&co, 0xCD, sizeof co);
    REQUIRE_OK(mla_cache_options_init(&co));
    CHECK_EQ(co.struct_size, uint32_t(sizeof co));
    CHECK_EQ(co.dtype, int32_t(MLA_DTYPE_BF16));
    CHECK_EQ(co.block_size, 64);
    CHECK_EQ(co.num_blocks, 0);
    mla_attention_params ap;
    std::memset(&ap, 0xCD, sizeof ap);
    REQUIRE_OK(mla_attention_params_init(&ap));
    CHECK_EQ(ap.causal, 1);
    CHECK(ap.q == nullptr && ap.out == nullptr && ap.lse == nullptr);
    mla_context_options o;
    std::memset(&o, 0xCD, sizeof o);
    REQUIRE_OK(mla_context_options_init(&o));
    CHECK_EQ(o.backend, int32_t(MLA_BACKEND_CPU));
    CHECK_EQ(o.simd, int32_t(MLA_SIMD_AUTO));
    CHECK_EQ(o.num_threads, 0);
}

MLA_TEST(config_validate_names_the_field) {
    struct Bad { const char* field; std::function<void(mla_config&)> mutate; };
    const Bad bads[] = {
        {"struct_size", [](mla_config& c) { c.struct_size = 4; }},
        {"hidden_size", [](mla_config& c) { c.hidden_size = 0; }},
        {"num_heads", [](mla_config& c) { c.num_heads = -3; }},
        {"q_lora_rank", [](mla_config& c) { c.q_lora_rank = -1; }},
        {"kv_lora_rank", [](mla_config& c) { c.kv_lora_rank = 0; }},
        {"qk_nope_head_dim", [](mla_config& c) { c.qk_nope_head_dim = -1; }},
        {"qk_rope_head_dim", [](mla_config& c) { c.qk_rope_head_dim = 63; }},
        {"v_head_dim", [](mla_config& c) { c.v_head_dim = 0; }},
        {"rope_interleave", [](mla_config& c) { c.rope_interleave = 2; }},
        {"rope_scaling", [](mla_config& c) { c.rope_scaling = 9; }},
        {"rope_theta", [](mla_config& c) { c.rope_theta = 0.0; }},
        {"rope_factor", [](mla_config& c) { c.rope_factor = -1.0; }},
        {"reserved0", [](mla_config& c) { c.reserved0 = 1; }},
        {"rms_norm_eps", [](mla_config& c) { c.rms_norm_eps = -1e-6; }},
        {"softmax_scale", [](mla_config& c) { c.softmax_scale = -0.5; }},
    };
    for (const Bad& b : bads) {
        mla_config c;
        REQUIRE_OK(mla_config_init(&c));
        b.mutate(c);
        EXPECT_FAIL(mla_config_validate(&c), MLA_ERROR_INVALID_ARGUMENT, b.field);
        double scale = -123.0;
        CHECK_STATUS(mla_config_softmax_scale(&c, &scale), MLA_ERROR_INVALID_ARGUMENT);
        CHECK_EQ(scale, -123.0);
    }
    EXPECT_FAIL(mla_config_validate(nullptr), MLA_ERROR_INVALID_ARGUMENT, "config");
}

MLA_TEST(config_softmax_scale_and_rope_tables_bad_args) {
    mla_config c = tiny_config();
    double s = -1.0;
    EXPECT_FAIL(mla_config_softmax_scale(nullptr, &s), MLA_ERROR_INVALID_ARGUMENT, "config");
    EXPECT_FAIL(mla_config_softmax_scale(&c, nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    CHECK_EQ(s, -1.0);
    REQUIRE_OK(mla_config_softmax_scale(&c, &s));
    CHECK(std::fabs(s - 1.0 / std::sqrt(16.0)) < 1e-12);  // (dn + dr)^-0.5, no YaRN
    c.softmax_scale = 0.3;
    REQUIRE_OK(mla_config_softmax_scale(&c, &s));
    CHECK_EQ(s, 0.3);
    c = tiny_config();

    const int32_t dr = c.qk_rope_head_dim;
    int32_t pos[3] = {0, 5, 9};
    std::vector<float> cs(3 * size_t(dr), -9.f), sn(3 * size_t(dr), -9.f);
    const std::vector<float> poison = cs;
    EXPECT_FAIL(mla_config_rope_tables(nullptr, pos, 3, cs.data(), sn.data()), MLA_ERROR_INVALID_ARGUMENT, "config");
    EXPECT_FAIL(mla_config_rope_tables(&c, nullptr, 3, cs.data(), sn.data()), MLA_ERROR_INVALID_ARGUMENT, "positions");
    EXPECT_FAIL(mla_config_rope_tables(&c, pos, -1, cs.data(), sn.data()), MLA_ERROR_INVALID_ARGUMENT, "count");
    EXPECT_FAIL(mla_config_rope_tables(&c, pos, 3, nullptr, sn.data()), MLA_ERROR_INVALID_ARGUMENT, "cos_out");
    EXPECT_FAIL(mla_config_rope_tables(&c, pos, 3, cs.data(), nullptr), MLA_ERROR_INVALID_ARGUMENT, "sin_out");
    pos[2] = -4;  // the bad position is the last: nothing before it may be written either
    EXPECT_FAIL(mla_config_rope_tables(&c, pos, 3, cs.data(), sn.data()), MLA_ERROR_INVALID_ARGUMENT, "positions[2]");
    CHECK(cs == poison);
    CHECK(sn == poison);
}

MLA_TEST(context_create_bad_args) {
    mla_context_options o;
    REQUIRE_OK(mla_context_options_init(&o));
    mla_context* const sentinel = reinterpret_cast<mla_context*>(uintptr_t(0x1234));
    mla_context* out = sentinel;
    EXPECT_FAIL(mla_context_create(&o, nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    struct Bad { const char* field; std::function<void(mla_context_options&)> mutate; };
    const Bad bads[] = {
        {"struct_size", [](mla_context_options& x) { x.struct_size = 3; }},
        {"backend", [](mla_context_options& x) { x.backend = 7; }},
        {"num_threads", [](mla_context_options& x) { x.num_threads = -2; }},
        {"simd", [](mla_context_options& x) { x.simd = 42; }},
    };
    for (const Bad& b : bads) {
        mla_context_options x = o;
        b.mutate(x);
        EXPECT_FAIL(mla_context_create(&x, &out), MLA_ERROR_INVALID_ARGUMENT, b.field);
        CHECK(out == sentinel);
    }
    // SIMD levels the CPU lacks are refused; the levels it has are accepted.
    for (int32_t simd : {MLA_SIMD_SCALAR, MLA_SIMD_AVX2, MLA_SIMD_AVX512}) {
        mla_context_options x = o;
        x.simd = simd;
        x.num_threads = 1;
        mla_context* c = sentinel;
        if (cpu_has_simd(simd)) {
            CHECK_STATUS(mla_context_create(&x, &c), MLA_OK);
            CHECK(c != sentinel && c != nullptr);
            if (c != sentinel) mla_context_destroy(c);
        } else {
            EXPECT_FAIL(mla_context_create(&x, &c), MLA_ERROR_UNSUPPORTED, "simd");
            CHECK(c == sentinel);
        }
    }
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && defined(__linux__)
// Worker threads that cannot be started (here: no address space left for their stacks) are a
// resource shortage, reported as MLA_ERROR_OUT_OF_MEMORY, not as an internal error.
MLA_TEST(context_create_without_room_for_threads) {
    rlimit old{};
    REQUIRE(getrlimit(RLIMIT_AS, &old) == 0);
    long pages = 0;
    {
        std::FILE* f = std::fopen("/proc/self/statm", "r");
        REQUIRE(f != nullptr);
        REQUIRE(std::fscanf(f, "%ld", &pages) == 1);
        std::fclose(f);
    }
    // Room for a few hundred MiB more, far less than 1024 thread stacks of 8 MiB.
    rlimit tight = old;
    tight.rlim_cur = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + (rlim_t(256) << 20);
    if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < tight.rlim_cur) tight.rlim_cur = old.rlim_cur;
    REQUIRE(setrlimit(RLIMIT_AS, &tight) == 0);
    mla_context_options o;
    mla_context_options_init(&o);
    o.num_threads = 1024;
    mla_context* out = nullptr;
    const mla_status st = mla_context_create(&o, &out);
    const std::string msg = mla_last_error();
    setrlimit(RLIMIT_AS, &old);
    if (st == MLA_OK) {  // the machine had room after all: nothing to check
        mla_context_destroy(out);
        return;
    }
    CHECK_MSG(st == MLA_ERROR_OUT_OF_MEMORY, status_text(st) + ": " + msg);
    CHECK_MSG(msg.find("threads") != std::string::npos, msg);
    CHECK(out == nullptr);
}
#endif

MLA_TEST(cuda_backend_without_gpu) {
    // This suite runs on CPU-only machines; a CUDA build on a machine with a GPU is the
    // CUDA suite's business, so that case only checks success and the reported backend.
    mla_context_options o;
    REQUIRE_OK(mla_context_options_init(&o));
    o.backend = MLA_BACKEND_CUDA;
    mla_context* const sentinel = reinterpret_cast<mla_context*>(uintptr_t(0x1234));
    mla_context* out = sentinel;
    mla_status st = mla_context_create(&o, &out);
    if (st == MLA_OK) {
        int32_t b = -1;
        CHECK_STATUS(mla_context_backend(out, &b), MLA_OK);
        CHECK_EQ(b, int32_t(MLA_BACKEND_CUDA));
        mla_context_destroy(out);
        std::printf("    CUDA backend available here\n");
    } else {
        CHECK_MSG(st == MLA_ERROR_UNSUPPORTED || st == MLA_ERROR_DEVICE,
                  std::string("got ") + status_text(st) + ": " + mla_last_error());
        CHECK(std::strlen(mla_last_error()) > 0);
        CHECK(out == sentinel);
        std::printf("    CUDA refused with %s: %s\n", mla_status_string(st), mla_last_error());
    }
    o.device = -1;
    out = sentinel;
    st = mla_context_create(&o, &out);
    CHECK_MSG(st == MLA_ERROR_INVALID_ARGUMENT || st == MLA_ERROR_UNSUPPORTED || st == MLA_ERROR_DEVICE,
              std::string("device -1 gave ") + status_text(st));
    CHECK(out == sentinel);
}

MLA_TEST(context_describe_and_backend) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    char buf[8];
    std::memset(buf, 'x', sizeof buf);
    EXPECT_FAIL(mla_context_describe(nullptr, buf, sizeof buf), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_context_describe(ctx.get(), nullptr, 8), MLA_ERROR_INVALID_ARGUMENT, "buf");
    EXPECT_FAIL(mla_context_describe(ctx.get(), buf, 0), MLA_ERROR_INVALID_ARGUMENT, "buf_len");
    for (char ch : buf) CHECK_EQ(ch, 'x');
    REQUIRE_OK(mla_context_describe(ctx.get(), buf, 4));  // truncated to 3 bytes + NUL
    CHECK_EQ(buf[3], '\0');
    CHECK_EQ(buf[4], 'x');
    CHECK_EQ(std::string(buf), std::string("cpu"));
    int32_t b = -5;
    EXPECT_FAIL(mla_context_backend(nullptr, &b), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_context_backend(ctx.get(), nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    CHECK_EQ(b, -5);
    REQUIRE_OK(mla_context_backend(ctx.get(), &b));
    CHECK_EQ(b, int32_t(MLA_BACKEND_CPU));
}

MLA_TEST(destroy_accepts_null) {
    mla_context_destroy(nullptr);
    mla_cache_destroy(nullptr);
    mla_layer_destroy(nullptr);
    CHECK(true);
}

MLA_TEST(cache_create_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    mla_cache_options o;
    REQUIRE_OK(mla_cache_options_init(&o));
    o.num_blocks = 4;
    mla_cache* const sentinel = reinterpret_cast<mla_cache*>(uintptr_t(0x4321));
    mla_cache* out = sentinel;
    EXPECT_FAIL(mla_cache_create(nullptr, &o, &out), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_cache_create(ctx.get(), &o, nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    CHECK(out == sentinel);
    struct Bad { const char* field; std::function<void(mla_cache_options&)> mutate; };
    const Bad bads[] = {
        {"struct_size", [](mla_cache_options& x) { x.struct_size = 1000; }},
        {"dtype", [](mla_cache_options& x) { x.dtype = MLA_DTYPE_F16; }},
        {"dtype", [](mla_cache_options& x) { x.dtype = MLA_DTYPE_FP8_E4M3; }},
        {"block_size", [](mla_cache_options& x) { x.block_size = 48; }},
        {"block_size", [](mla_cache_options& x) { x.block_size = 0; }},
        {"block_size", [](mla_cache_options& x) { x.block_size = 8192; }},
        {"num_blocks", [](mla_cache_options& x) { x.num_blocks = 0; }},
        {"kv_lora_rank", [](mla_cache_options& x) { x.kv_lora_rank = 0; }},
        {"rope_dim", [](mla_cache_options& x) { x.rope_dim = -2; }},
    };
    for (const Bad& b : bads) {
        mla_cache_options x = o;
        b.mutate(x);
        EXPECT_FAIL(mla_cache_create(ctx.get(), &x, &out), MLA_ERROR_INVALID_ARGUMENT, b.field);
        CHECK(out == sentinel);
    }
    // Absurd sizes fail cleanly (too large to allocate, or rejected as out of range).
    mla_cache_options huge = o;
    huge.num_blocks = 0x7fffffff;
    huge.block_size = 4096;
    mla_status st = mla_cache_create(ctx.get(), &huge, &out);
    CHECK_MSG(st == MLA_ERROR_OUT_OF_MEMORY || st == MLA_ERROR_INVALID_ARGUMENT, status_text(st));
    CHECK(out == sentinel);
}

MLA_TEST(cache_view_bytes_read_copy_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 3, 16, 8);
    mla_cache_view v;
    std::memset(&v, 0xEE, sizeof v);
    const std::vector<uint8_t> vp = bytes_of(v);
    EXPECT_FAIL(mla_cache_get_view(nullptr, &v), MLA_ERROR_INVALID_ARGUMENT, "cache");
    EXPECT_FAIL(mla_cache_get_view(cache.get(), nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    CHECK(bytes_of(v) == vp);
    REQUIRE_OK(mla_cache_get_view(cache.get(), &v));
    CHECK_EQ(v.num_blocks, 3);
    CHECK_EQ(v.block_size, 4);
    CHECK_EQ(v.kv_lora_rank, 16);
    CHECK_EQ(v.rope_dim, 8);
    CHECK_EQ(v.dtype, int32_t(MLA_DTYPE_F32));
    CHECK(v.data != nullptr);
    size_t per = 0, total = 0;
    EXPECT_FAIL(mla_cache_bytes(nullptr, &per, &total), MLA_ERROR_INVALID_ARGUMENT, "cache");
    CHECK_EQ(per, size_t(0));
    REQUIRE_OK(mla_cache_bytes(cache.get(), &per, &total));
    CHECK_EQ(per, size_t(24 * 4));
    CHECK_EQ(total, size_t(3 * 4 * 24 * 4));
    // Fresh caches are zero-filled.
    const float* mem = static_cast<const float*>(v.data);
    bool zero = true;
    for (size_t i = 0; i < total / 4; ++i) zero &= mem[i] == 0.0f;
    CHECK(zero);

    // Write a pattern through the view so reads and copies have something to move.
    float* wmem = static_cast<float*>(v.data);
    for (size_t i = 0; i < total / 4; ++i) wmem[i] = float(i);
    std::vector<float> lat(2 * 16, -1.f), rope(2 * 8, -1.f);
    const std::vector<float> lp = lat, rp = rope;
    int32_t table[2] = {2, 0};
    EXPECT_FAIL(mla_cache_read(nullptr, table, 0, 2, lat.data(), rope.data()), MLA_ERROR_INVALID_ARGUMENT, "cache");
    EXPECT_FAIL(mla_cache_read(cache.get(), nullptr, 0, 2, lat.data(), rope.data()), MLA_ERROR_INVALID_ARGUMENT,
                "block_table");
    EXPECT_FAIL(mla_cache_read(cache.get(), table, -1, 2, lat.data(), rope.data()), MLA_ERROR_INVALID_ARGUMENT, "start");
    EXPECT_FAIL(mla_cache_read(cache.get(), table, 0, -2, lat.data(), rope.data()), MLA_ERROR_INVALID_ARGUMENT, "count");
    int32_t bad_table[2] = {0, 3};
    EXPECT_FAIL(mla_cache_read(cache.get(), bad_table, 3, 2, lat.data(), rope.data()), MLA_ERROR_INVALID_ARGUMENT,
                "block_table[1]");
    int32_t neg_table[1] = {-1};
    EXPECT_FAIL(mla_cache_read(cache.get(), neg_table, 0, 1, lat.data(), rope.data()), MLA_ERROR_INVALID_ARGUMENT,
                "block_table[0]");
    CHECK(lat == lp);
    CHECK(rope == rp);
    // A good read: tokens 3..4 are block 2 offset 3 and block 0 offset 0.
    REQUIRE_OK(mla_cache_read(cache.get(), table, 3, 2, lat.data(), rope.data()));
    CHECK_EQ(lat[0], float((2 * 4 + 3) * 24));
    CHECK_EQ(rope[0], float((2 * 4 + 3) * 24 + 16));
    CHECK_EQ(lat[16], 0.0f);
    CHECK_EQ(rope[15], float(23));
    REQUIRE_OK(mla_cache_read(cache.get(), table, 3, 2, nullptr, rope.data()));  // either may be NULL

    const std::vector<float> snapshot(wmem, wmem + total / 4);
    int32_t src[2] = {0, 1}, dst[2] = {2, 3};
    EXPECT_FAIL(mla_cache_copy_blocks(nullptr, src, dst, 2, nullptr), MLA_ERROR_INVALID_ARGUMENT, "cache");
    EXPECT_FAIL(mla_cache_copy_blocks(cache.get(), nullptr, dst, 2, nullptr), MLA_ERROR_INVALID_ARGUMENT, "src_blocks");
    EXPECT_FAIL(mla_cache_copy_blocks(cache.get(), src, nullptr, 2, nullptr), MLA_ERROR_INVALID_ARGUMENT, "dst_blocks");
    EXPECT_FAIL(mla_cache_copy_blocks(cache.get(), src, dst, -1, nullptr), MLA_ERROR_INVALID_ARGUMENT, "count");
    // dst[1] = 3 is out of range: the valid first copy must not happen either.
    EXPECT_FAIL(mla_cache_copy_blocks(cache.get(), src, dst, 2, nullptr), MLA_ERROR_INVALID_ARGUMENT, "dst_blocks[1]");
    CHECK(std::vector<float>(wmem, wmem + total / 4) == snapshot);
    int32_t dst_ok[1] = {2};
    REQUIRE_OK(mla_cache_copy_blocks(cache.get(), src, dst_ok, 1, nullptr));
    bool copied = true;
    for (int i = 0; i < 4 * 24; ++i) copied &= wmem[2 * 4 * 24 + i] == snapshot[size_t(i)];
    CHECK(copied);
    CHECK_EQ(wmem[4 * 24], snapshot[4 * 24]);  // block 1 untouched
}

namespace {

struct CompressFixture {
    mla_config cfg = tiny_config();  // dc 16, dr 8
    std::vector<float> cache_mem = std::vector<float>(size_t(4) * 4 * 24, -3.0f);
    std::vector<float> kv = std::vector<float>(size_t(3) * 24, 0.5f);
    std::vector<float> w = std::vector<float>(16, 1.0f);
    std::vector<int32_t> pos = {0, 1, 2};
    std::vector<int64_t> slots = {0, 5, 9};
    mla_compress_params p{};
    CompressFixture() {
        mla_compress_params_init(&p);
        p.num_tokens = 3;
        p.kv_a = kv.data();
        p.kv_a_dtype = MLA_DTYPE_F32;
        p.kv_a_stride = 24;
        p.norm_weight = w.data();
        p.norm_weight_dtype = MLA_DTYPE_F32;
        p.positions = pos.data();
        p.slot_mapping = slots.data();
        p.cache.data = cache_mem.data();
        p.cache.dtype = MLA_DTYPE_F32;
        p.cache.num_blocks = 4;
        p.cache.block_size = 4;
        p.cache.kv_lora_rank = 16;
        p.cache.rope_dim = 8;
    }
};

}  // namespace

MLA_TEST(compress_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    {
        CompressFixture f;
        REQUIRE_OK(mla_compress(ctx.get(), &f.cfg, &f.p, nullptr));  // the fixture itself is valid
    }
    struct Bad { const char* field; mla_status want; std::function<void(CompressFixture&)> mutate; };
    const Bad bads[] = {
        {"struct_size", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.struct_size = 8; }},
        {"num_tokens", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.num_tokens = -1; }},
        {"kv_a", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.kv_a = nullptr; }},
        {"kv_a_dtype", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.kv_a_dtype = MLA_DTYPE_F16; }},
        {"reserved0", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.reserved0 = 1; }},
        {"reserved1", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.reserved1 = 1; }},
        {"kv_a_stride", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.kv_a_stride = 23; }},
        // [T, kv_a_stride] would span more than the address space: rows past the first are wild.
        {"kv_a_stride", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.kv_a_stride = INT64_MAX / 2; }},
        {"kv_a_stride", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.kv_a_stride = INT64_MAX / 5; }},
        {"norm_weight", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.norm_weight = nullptr; }},
        {"norm_weight_dtype", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.norm_weight_dtype = 9; }},
        {"positions", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.positions = nullptr; }},
        {"positions[2]", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.pos[2] = -1; }},
        {"slot_mapping", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.slot_mapping = nullptr; }},
        {"slot_mapping[2]", MLA_ERROR_CACHE_FULL, [](CompressFixture& f) { f.slots[2] = 16; }},
        {"cache.data", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.data = nullptr; }},
        {"cache.dtype", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.dtype = MLA_DTYPE_F16; }},
        {"cache.block_size", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.block_size = 3; }},
        {"cache.num_blocks", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.num_blocks = 0; }},
        {"cache.reserved0", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.reserved0 = 2; }},
        {"kv_lora_rank", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.kv_lora_rank = 32; }},
        {"rope", MLA_ERROR_INVALID_ARGUMENT, [](CompressFixture& f) { f.p.cache.rope_dim = 16; }},
    };
    for (const Bad& b : bads) {
        CompressFixture f;
        b.mutate(f);
        const std::vector<float> before = f.cache_mem;
        EXPECT_FAIL(mla_compress(ctx.get(), &f.cfg, &f.p, nullptr), b.want, b.field);
        CHECK_MSG(f.cache_mem == before, std::string("cache written after bad ") + b.field);
    }
    CompressFixture f;
    const std::vector<float> before = f.cache_mem;
    EXPECT_FAIL(mla_compress(nullptr, &f.cfg, &f.p, nullptr), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_compress(ctx.get(), nullptr, &f.p, nullptr), MLA_ERROR_INVALID_ARGUMENT, "config");
    EXPECT_FAIL(mla_compress(ctx.get(), &f.cfg, nullptr, nullptr), MLA_ERROR_INVALID_ARGUMENT, "params");
    mla_config bad = f.cfg;
    bad.rms_norm_eps = -1;
    EXPECT_FAIL(mla_compress(ctx.get(), &bad, &f.p, nullptr), MLA_ERROR_INVALID_ARGUMENT, "rms_norm_eps");
    CHECK(f.cache_mem == before);
}

namespace {

struct AttnFixture {
    // 2 sequences: 1 query over 5 keys, 2 queries over 6 keys; block size 4, 5 blocks.
    std::vector<float> cache_mem = std::vector<float>(size_t(5) * 4 * 24, 0.25f);
    std::vector<float> q = std::vector<float>(size_t(3) * 2 * 24, 0.5f);
    std::vector<int32_t> qo = {0, 1, 3};
    std::vector<int32_t> lens = {5, 6};
    std::vector<int32_t> table = {0, 1, 3, 4};  // stride 2
    std::vector<float> out = std::vector<float>(size_t(3) * 2 * 16, -5.0f);
    std::vector<float> lse = std::vector<float>(size_t(3) * 2, -5.0f);
    mla_attention_params p{};
    AttnFixture() {
        mla_attention_params_init(&p);
        p.num_seqs = 2;
        p.num_tokens = 3;
        p.num_heads = 2;
        p.block_table_stride = 2;
        p.softmax_scale = 0.25f;
        p.q = q.data();
        p.qo_indptr = qo.data();
        p.seq_lens = lens.data();
        p.block_table = table.data();
        p.cache.data = cache_mem.data();
        p.cache.dtype = MLA_DTYPE_F32;
        p.cache.num_blocks = 5;
        p.cache.block_size = 4;
        p.cache.kv_lora_rank = 16;
        p.cache.rope_dim = 8;
        p.out = out.data();
        p.lse = lse.data();
    }
};

}  // namespace

MLA_TEST(attention_workspace_size_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    size_t mb = 777, wb = 777;
    EXPECT_FAIL(mla_attention_workspace_size(nullptr, 2, 3, 2, 16, 8, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_attention_workspace_size(ctx.get(), 0, 3, 2, 16, 8, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT, "max_num_seqs");
    EXPECT_FAIL(mla_attention_workspace_size(ctx.get(), 2, -1, 2, 16, 8, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT,
                "max_num_tokens");
    EXPECT_FAIL(mla_attention_workspace_size(ctx.get(), 2, 3, 0, 16, 8, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT, "num_heads");
    EXPECT_FAIL(mla_attention_workspace_size(ctx.get(), 2, 3, 2, 0, 8, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT, "kv_lora_rank");
    EXPECT_FAIL(mla_attention_workspace_size(ctx.get(), 2, 3, 2, 16, 0, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT, "rope_dim");
    EXPECT_FAIL(mla_attention_workspace_size(ctx.get(), 2, 3, 2, 16, 7, &mb, &wb), MLA_ERROR_INVALID_ARGUMENT, "rope_dim");
    CHECK_EQ(mb, size_t(777));
    CHECK_EQ(wb, size_t(777));
    REQUIRE_OK(mla_attention_workspace_size(ctx.get(), 2, 3, 2, 16, 8, &mb, nullptr));
    REQUIRE_OK(mla_attention_workspace_size(ctx.get(), 2, 3, 2, 16, 8, nullptr, &wb));
    size_t mb2 = 0, wb2 = 0;
    REQUIRE_OK(mla_attention_workspace_size(ctx.get(), 64, 300, 16, 512, 64, &mb2, &wb2));
    CHECK(mb2 >= mb);
    CHECK(wb2 >= wb);
}

MLA_TEST(attention_plan_run_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    size_t mb = 0, wb = 0;
    REQUIRE_OK(mla_attention_workspace_size(ctx.get(), 2, 3, 2, 16, 8, &mb, &wb));
    std::vector<uint8_t> meta(mb + 1, 0), ws(wb + 1, 0);
    {
        AttnFixture f;  // the fixture itself is valid
        REQUIRE_OK(mla_attention_plan(ctx.get(), &f.p, meta.data(), mb, nullptr));
        REQUIRE_OK(mla_attention_run(ctx.get(), &f.p, meta.data(), mb, ws.data(), wb, nullptr));
        CHECK(f.out[0] != -5.0f);
    }
    struct Bad { const char* field; mla_status want; std::function<void(AttnFixture&)> mutate; };
    const Bad bads[] = {
        {"struct_size", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.struct_size = 12; }},
        {"num_seqs", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.num_seqs = 0; }},
        {"num_tokens", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.num_tokens = 4; }},
        {"num_heads", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.num_heads = 0; }},
        {"causal", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.causal = 2; }},
        {"q_dtype", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.q_dtype = MLA_DTYPE_F16; }},
        {"out_dtype", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.out_dtype = MLA_DTYPE_FP8_E4M3; }},
        {"softmax_scale", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.softmax_scale = 0.0f; }},
        {"reserved0", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.reserved0 = 5; }},
        {"q", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.q = nullptr; }},
        {"qo_indptr", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.qo_indptr = nullptr; }},
        {"qo_indptr[0]", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.qo[0] = 1; }},
        {"qo_indptr", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.qo = {0, 2, 1}; f.p.qo_indptr = f.qo.data(); f.p.num_tokens = 1; }},
        {"seq_lens", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.seq_lens = nullptr; }},
        {"seq_lens[1]", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.lens[1] = 1; }},  // < n_b = 2
        {"block_table", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.block_table = nullptr; }},
        {"block_table", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.table[3] = 5; }},
        {"block_table", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.table[1] = -1; }},
        {"seq_lens", MLA_ERROR_CACHE_FULL, [](AttnFixture& f) { f.lens[1] = 9; }},  // > 2 blocks x 4
        {"cache.dtype", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.cache.dtype = MLA_DTYPE_F16; }},
        {"cache.block_size", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.cache.block_size = 6; }},
        {"cache.data", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.cache.data = nullptr; }},
        {"out", MLA_ERROR_INVALID_ARGUMENT, [](AttnFixture& f) { f.p.out = nullptr; }},
    };
    for (const Bad& b : bads) {
        // plan validates the batch; run validates it again plus the cache and buffers.
        AttnFixture f;
        b.mutate(f);
        const std::vector<float> out0 = f.out, lse0 = f.lse;
        std::vector<uint8_t> meta_fresh(mb + 1, 0);
        AttnFixture good;
        REQUIRE_OK(mla_attention_plan(ctx.get(), &good.p, meta_fresh.data(), mb, nullptr));
        mla_status sp = mla_attention_plan(ctx.get(), &f.p, meta.data(), mb, nullptr);
        mla_status sr = mla_attention_run(ctx.get(), &f.p, meta_fresh.data(), mb, ws.data(), wb, nullptr);
        std::string msg = mla_last_error();
        CHECK_MSG(sr == b.want, std::string(b.field) + ": run returned " + status_text(sr) + ", expected " +
                                    status_text(b.want) + "; last error: " + msg);
        CHECK_MSG(msg.find(b.field) != std::string::npos,
                  std::string("run's last error \"") + msg + "\" does not name " + b.field);
        CHECK_MSG(sp == MLA_OK || sp == MLA_ERROR_INVALID_ARGUMENT || sp == MLA_ERROR_CACHE_FULL,
                  std::string(b.field) + ": plan returned " + status_text(sp));
        CHECK_MSG(f.out == out0, std::string("out written after bad ") + b.field);
        CHECK_MSG(f.lse == lse0, std::string("lse written after bad ") + b.field);
    }
    // Buffers too small: a 16-byte metadata or workspace buffer cannot hold any schedule.
    AttnFixture f;
    const std::vector<float> out0 = f.out;
    std::vector<uint8_t> small(16, 0x5A);
    const std::vector<uint8_t> small0 = small;
    EXPECT_FAIL(mla_attention_plan(ctx.get(), &f.p, small.data(), small.size(), nullptr), MLA_ERROR_BUFFER_TOO_SMALL,
                "metadata_bytes");
    CHECK_MSG(small == small0, "plan wrote into a too-small metadata buffer");
    EXPECT_FAIL(mla_attention_plan(ctx.get(), &f.p, nullptr, mb, nullptr), MLA_ERROR_INVALID_ARGUMENT, "metadata");
    EXPECT_FAIL(mla_attention_plan(nullptr, &f.p, meta.data(), mb, nullptr), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_attention_plan(ctx.get(), nullptr, meta.data(), mb, nullptr), MLA_ERROR_INVALID_ARGUMENT, "params");
    REQUIRE_OK(mla_attention_plan(ctx.get(), &f.p, meta.data(), mb, nullptr));
    EXPECT_FAIL(mla_attention_run(ctx.get(), &f.p, meta.data(), mb, ws.data(), 16, nullptr), MLA_ERROR_BUFFER_TOO_SMALL,
                "workspace_bytes");
    EXPECT_FAIL(mla_attention_run(ctx.get(), &f.p, meta.data(), 16, ws.data(), wb, nullptr), MLA_ERROR_BUFFER_TOO_SMALL,
                "metadata_bytes");
    EXPECT_FAIL(mla_attention_run(ctx.get(), &f.p, meta.data(), mb, nullptr, wb, nullptr), MLA_ERROR_INVALID_ARGUMENT,
                "workspace");
    EXPECT_FAIL(mla_attention_run(ctx.get(), &f.p, nullptr, mb, ws.data(), wb, nullptr), MLA_ERROR_INVALID_ARGUMENT,
                "metadata");
    EXPECT_FAIL(mla_attention_run(nullptr, &f.p, meta.data(), mb, ws.data(), wb, nullptr), MLA_ERROR_INVALID_ARGUMENT,
                "context");
    EXPECT_FAIL(mla_attention_run(ctx.get(), nullptr, meta.data(), mb, ws.data(), wb, nullptr),
                MLA_ERROR_INVALID_ARGUMENT, "params");
    // A schedule planned for another batch (other seq_lens) is refused.
    f.lens[0] = 4;
    EXPECT_FAIL(mla_attention_run(ctx.get(), &f.p, meta.data(), mb, ws.data(), wb, nullptr), MLA_ERROR_INVALID_ARGUMENT,
                "metadata");
    // Metadata that no plan wrote is refused.
    std::vector<uint8_t> garbage(mb, 0x11);
    EXPECT_FAIL(mla_attention_run(ctx.get(), &f.p, garbage.data(), mb, ws.data(), wb, nullptr), MLA_ERROR_INVALID_ARGUMENT,
                "metadata");
    CHECK(f.out == out0);
    CHECK(mb > 0);  // a schedule always needs some metadata
}

MLA_TEST(layer_create_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    TinyWeights tw;
    {
        mla_layer* l = nullptr;
        REQUIRE_OK(mla_layer_create(ctx.get(), &tw.cfg, &tw.w, nullptr, &l));  // valid as is
        mla_layer_destroy(l);
    }
    mla_layer* const sentinel = reinterpret_cast<mla_layer*>(uintptr_t(0x5678));
    mla_layer* out = sentinel;
    EXPECT_FAIL(mla_layer_create(nullptr, &tw.cfg, &tw.w, nullptr, &out), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_layer_create(ctx.get(), nullptr, &tw.w, nullptr, &out), MLA_ERROR_INVALID_ARGUMENT, "config");
    EXPECT_FAIL(mla_layer_create(ctx.get(), &tw.cfg, nullptr, nullptr, &out), MLA_ERROR_INVALID_ARGUMENT, "weights");
    EXPECT_FAIL(mla_layer_create(ctx.get(), &tw.cfg, &tw.w, nullptr, nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    CHECK(out == sentinel);
    struct Bad { const char* field; std::function<void(mla_config&, mla_layer_weights&, mla_layer_options&)> mutate; };
    static const float scale1 = 1.0f;
    const Bad bads[] = {
        {"struct_size", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.struct_size = 16; }},
        {"reserved0", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.reserved0 = 1; }},
        {"hidden_size", [](mla_config& c, mla_layer_weights&, mla_layer_options&) { c.hidden_size = -1; }},
        {"q_proj", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.q_proj.data = nullptr; }},
        {"kv_b_proj", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.kv_b_proj.rows = 31; }},
        {"o_proj", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.o_proj.cols = 8; }},
        {"kv_a_proj_with_mqa", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.kv_a_proj_with_mqa.dtype = 17; }},
        {"kv_a_proj_with_mqa", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.kv_a_proj_with_mqa.reserved0 = 3; }},
        {"kv_a_layernorm", [](mla_config&, mla_layer_weights& w, mla_layer_options&) {
             w.kv_a_layernorm.dtype = MLA_DTYPE_FP8_E4M3; w.kv_a_layernorm.scale_inv = &scale1; }},
        {"kv_a_layernorm", [](mla_config&, mla_layer_weights& w, mla_layer_options&) { w.kv_a_layernorm.rows = 15; }},
        {"o_proj", [](mla_config&, mla_layer_weights& w, mla_layer_options&) {
             w.o_proj.dtype = MLA_DTYPE_FP8_E4M3; w.o_proj.scale_inv = nullptr; }},
        {"q_a_proj", [](mla_config& c, mla_layer_weights&, mla_layer_options&) { c.q_lora_rank = 8; }},
        {"head_begin", [](mla_config&, mla_layer_weights&, mla_layer_options& o) { o.head_begin = -1; }},
        {"head_end", [](mla_config&, mla_layer_weights&, mla_layer_options& o) { o.head_end = 3; }},
        {"head_begin", [](mla_config&, mla_layer_weights&, mla_layer_options& o) { o.head_begin = 1; o.head_end = 1; }},
        {"struct_size", [](mla_config&, mla_layer_weights&, mla_layer_options& o) { o.struct_size = 1; }},
    };
    for (const Bad& b : bads) {
        TinyWeights t;
        mla_layer_options o;
        REQUIRE_OK(mla_layer_options_init(&o));
        b.mutate(t.cfg, t.w, o);
        EXPECT_FAIL(mla_layer_create(ctx.get(), &t.cfg, &t.w, &o, &out), MLA_ERROR_INVALID_ARGUMENT, b.field);
        CHECK(out == sentinel);
    }
}

MLA_TEST(layer_get_config) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    TinyWeights tw;
    LayerPtr layer = make_layer(ctx.get(), tw.cfg, tw.w, 1, 2);
    mla_config c;
    std::memset(&c, 0, sizeof c);
    int32_t h0 = -1, h1 = -1;
    EXPECT_FAIL(mla_layer_get_config(nullptr, &c, &h0, &h1), MLA_ERROR_INVALID_ARGUMENT, "layer");
    CHECK_EQ(h0, -1);
    REQUIRE_OK(mla_layer_get_config(layer.get(), &c, &h0, &h1));
    CHECK_EQ(h0, 1);
    CHECK_EQ(h1, 2);
    CHECK_EQ(c.hidden_size, tw.cfg.hidden_size);
    CHECK_EQ(c.kv_lora_rank, tw.cfg.kv_lora_rank);
    REQUIRE_OK(mla_layer_get_config(layer.get(), nullptr, nullptr, nullptr));
}

namespace {

struct ForwardFixture {
    // 2 sequences of a tiny layer: seq 0 has 3 cached tokens and adds 2; seq 1 adds 1 token.
    // Block size 4, 4 blocks, stride 2.
    std::vector<float> hidden = std::vector<float>(size_t(3) * 32, 0.1f);
    std::vector<float> out = std::vector<float>(size_t(3) * 32, -5.0f);
    std::vector<int32_t> qo = {0, 2, 3};
    std::vector<int32_t> lens = {3, 0};
    std::vector<int32_t> table = {0, 2, 1, 3};
    std::vector<int32_t> pos = {3, 4, 0};
    mla_batch b{};
    ForwardFixture() {
        mla_batch_init(&b);
        b.num_seqs = 2;
        b.num_tokens = 3;
        b.block_table_stride = 2;
        b.qo_indptr = qo.data();
        b.cache_lens = lens.data();
        b.positions = pos.data();
        b.block_table = table.data();
    }
};

std::vector<uint8_t> cache_bytes(mla_cache* c) {
    mla_cache_view v;
    mla_cache_get_view(c, &v);
    size_t per = 0, total = 0;
    mla_cache_bytes(c, &per, &total);
    const uint8_t* p = static_cast<const uint8_t*>(v.data);
    return std::vector<uint8_t>(p, p + total);
}

}  // namespace

MLA_TEST(layer_forward_bad_args) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    TinyWeights tw;
    LayerPtr layer = make_layer(ctx.get(), tw.cfg, tw.w);
    CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 4, 16, 8);
    {
        // Give the cache non-zero content so a stray write shows.
        mla_cache_view v;
        REQUIRE_OK(mla_cache_get_view(cache.get(), &v));
        float* m = static_cast<float*>(v.data);
        for (int i = 0; i < 4 * 4 * 24; ++i) m[i] = 0.01f * float(i % 97);
    }
    {
        ForwardFixture f;  // valid as is
        std::vector<uint8_t> before = cache_bytes(cache.get());
        REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(),
                                     MLA_DTYPE_F32, nullptr));
        CHECK(cache_bytes(cache.get()) != before);
        CHECK(f.out[0] != -5.0f);
    }
    struct Bad { const char* field; mla_status want; std::function<void(ForwardFixture&)> mutate; };
    const Bad bads[] = {
        {"struct_size", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.struct_size = 0; }},
        {"num_seqs", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.num_seqs = 0; }},
        {"num_tokens", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.num_tokens = 2; }},
        {"qo_indptr", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.qo_indptr = nullptr; }},
        {"qo_indptr[0]", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.qo[0] = 1; }},
        {"cache_lens", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.cache_lens = nullptr; }},
        {"cache_lens[1]", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.lens[1] = -1; }},
        {"positions[2]", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.pos[2] = -7; }},
        {"block_table", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.block_table = nullptr; }},
        {"block_table", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.table[1] = 4; }},
        {"block_table_stride", MLA_ERROR_CACHE_FULL, [](ForwardFixture& f) { f.b.block_table_stride = 0; }},
        {"block_table_stride", MLA_ERROR_INVALID_ARGUMENT, [](ForwardFixture& f) { f.b.block_table_stride = -1; }},
        // seq 0 needs slots 3..4, i.e. 2 blocks; a stride of 1 covers only 4 slots.
        {"cache_lens[0]", MLA_ERROR_CACHE_FULL, [](ForwardFixture& f) {
             f.table = {0, 1}; f.b.block_table = f.table.data(); f.b.block_table_stride = 1; }},
        {"cache_lens[0]", MLA_ERROR_CACHE_FULL, [](ForwardFixture& f) { f.lens[0] = 7; f.pos = {7, 8, 0}; }},
    };
    for (const Bad& b : bads) {
        ForwardFixture f;
        b.mutate(f);
        const std::vector<uint8_t> before = cache_bytes(cache.get());
        const std::vector<float> out0 = f.out;
        mla_status st = mla_layer_forward(layer.get(), cache.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(),
                                          MLA_DTYPE_F32, nullptr);
        std::string msg = mla_last_error();
        CHECK_MSG(st == b.want, std::string(b.field) + ": returned " + status_text(st) + ", expected " +
                                    status_text(b.want) + "; last error: " + msg);
        // Either name is fine for CACHE_FULL: the message names the sequence's length or table.
        bool named = msg.find(b.field) != std::string::npos ||
                     (b.want == MLA_ERROR_CACHE_FULL && msg.find("block_table") != std::string::npos);
        CHECK_MSG(named, std::string("last error \"") + msg + "\" does not name " + b.field);
        CHECK_MSG(cache_bytes(cache.get()) == before, std::string("cache written after bad ") + b.field);
        CHECK_MSG(f.out == out0, std::string("out written after bad ") + b.field);
    }
    ForwardFixture f;
    const std::vector<uint8_t> before = cache_bytes(cache.get());
    const std::vector<float> out0 = f.out;
    EXPECT_FAIL(mla_layer_forward(nullptr, cache.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(), MLA_DTYPE_F32,
                                  nullptr), MLA_ERROR_INVALID_ARGUMENT, "layer");
    EXPECT_FAIL(mla_layer_forward(layer.get(), nullptr, &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(), MLA_DTYPE_F32,
                                  nullptr), MLA_ERROR_INVALID_ARGUMENT, "cache");
    EXPECT_FAIL(mla_layer_forward(layer.get(), cache.get(), nullptr, f.hidden.data(), MLA_DTYPE_F32, f.out.data(),
                                  MLA_DTYPE_F32, nullptr), MLA_ERROR_INVALID_ARGUMENT, "batch");
    EXPECT_FAIL(mla_layer_forward(layer.get(), cache.get(), &f.b, nullptr, MLA_DTYPE_F32, f.out.data(), MLA_DTYPE_F32,
                                  nullptr), MLA_ERROR_INVALID_ARGUMENT, "hidden");
    EXPECT_FAIL(mla_layer_forward(layer.get(), cache.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, nullptr, MLA_DTYPE_F32,
                                  nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    EXPECT_FAIL(mla_layer_forward(layer.get(), cache.get(), &f.b, f.hidden.data(), MLA_DTYPE_F16, f.out.data(),
                                  MLA_DTYPE_F32, nullptr), MLA_ERROR_INVALID_ARGUMENT, "hidden_dtype");
    EXPECT_FAIL(mla_layer_forward(layer.get(), cache.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(), 3,
                                  nullptr), MLA_ERROR_INVALID_ARGUMENT, "out_dtype");
    // A cache of other dims than the layer's.
    CachePtr other = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 4, 32, 8);
    const std::vector<uint8_t> other_before = cache_bytes(other.get());
    EXPECT_FAIL(mla_layer_forward(layer.get(), other.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(),
                                  MLA_DTYPE_F32, nullptr), MLA_ERROR_INVALID_ARGUMENT, "kv_lora_rank");
    CHECK(cache_bytes(other.get()) == other_before);
    // A cache of another context.
    ContextPtr ctx2 = make_context(MLA_SIMD_AUTO, 1);
    CachePtr foreign = make_cache(ctx2.get(), MLA_DTYPE_F32, 4, 4, 16, 8);
    EXPECT_FAIL(mla_layer_forward(layer.get(), foreign.get(), &f.b, f.hidden.data(), MLA_DTYPE_F32, f.out.data(),
                                  MLA_DTYPE_F32, nullptr), MLA_ERROR_INVALID_ARGUMENT, "context");
    CHECK(cache_bytes(cache.get()) == before);
    CHECK(f.out == out0);
}

MLA_TEST(layer_forward_zero_tokens) {
    // A batch with no new tokens is valid and writes nothing.
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    TinyWeights tw;
    LayerPtr layer = make_layer(ctx.get(), tw.cfg, tw.w);
    CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 4, 16, 8);
    const std::vector<uint8_t> before = cache_bytes(cache.get());
    int32_t qo[3] = {0, 0, 0}, lens[2] = {2, 0}, table[2] = {0, 1};
    mla_batch b;
    REQUIRE_OK(mla_batch_init(&b));
    b.num_seqs = 2;
    b.num_tokens = 0;
    b.block_table_stride = 1;
    b.qo_indptr = qo;
    b.cache_lens = lens;
    b.block_table = table;
    float h = 0, o = -1;
    CHECK_STATUS(mla_layer_forward(layer.get(), cache.get(), &b, &h, MLA_DTYPE_F32, &o, MLA_DTYPE_F32, nullptr), MLA_OK);
    CHECK_EQ(o, -1.0f);
    CHECK(cache_bytes(cache.get()) == before);
}

MLA_TEST(layer_forward_rope_wider_than_latent) {
    // qk_rope_head_dim (256) far above both kv_lora_rank (8) and 64: the attention scratch must be
    // sized for the real rope width, and a token-by-token run must match the one-shot prefill.
    mla_config cfg = tiny_config();
    cfg.kv_lora_rank = 8;
    cfg.qk_rope_head_dim = 256;
    const int64_t H = cfg.num_heads, D = cfg.hidden_size, dc = cfg.kv_lora_rank, dn = cfg.qk_nope_head_dim,
                  dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
    std::mt19937_64 rng(5);
    std::vector<float> q = random_floats(rng, size_t(H * (dn + dr) * D), -0.2f, 0.2f);
    std::vector<float> kva = random_floats(rng, size_t((dc + dr) * D), -0.2f, 0.2f);
    std::vector<float> kvan = random_floats(rng, size_t(dc), 0.9f, 1.1f);
    std::vector<float> kvb = random_floats(rng, size_t(H * (dn + dv) * dc), -0.2f, 0.2f);
    std::vector<float> o = random_floats(rng, size_t(D * H * dv), -0.2f, 0.2f);
    mla_layer_weights w;
    REQUIRE_OK(mla_layer_weights_init(&w));
    auto set = [](mla_weight& m, const std::vector<float>& v, int64_t r, int64_t c) {
        m.data = v.data();
        m.dtype = MLA_DTYPE_F32;
        m.rows = r;
        m.cols = c;
    };
    set(w.q_proj, q, H * (dn + dr), D);
    set(w.kv_a_proj_with_mqa, kva, dc + dr, D);
    set(w.kv_a_layernorm, kvan, dc, 1);
    set(w.kv_b_proj, kvb, H * (dn + dv), dc);
    set(w.o_proj, o, D, H * dv);
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    LayerPtr layer = make_layer(ctx.get(), cfg, w);
    const int32_t T = 5;
    const std::vector<float> hidden = random_floats(rng, size_t(T * D));
    int32_t table[2] = {0, 1};
    // One-shot prefill of 5 tokens.
    CachePtr c1 = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 2, int32_t(dc), int32_t(dr));
    std::vector<float> out1(size_t(T * D), -5.0f);
    {
        int32_t qo[2] = {0, T}, lens[1] = {0};
        mla_batch b;
        REQUIRE_OK(mla_batch_init(&b));
        b.num_seqs = 1;
        b.num_tokens = T;
        b.block_table_stride = 2;
        b.qo_indptr = qo;
        b.cache_lens = lens;
        b.block_table = table;
        CHECK_STATUS(mla_layer_forward(layer.get(), c1.get(), &b, hidden.data(), MLA_DTYPE_F32, out1.data(),
                                       MLA_DTYPE_F32, nullptr), MLA_OK);
    }
    // The same tokens one at a time.
    CachePtr c2 = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 2, int32_t(dc), int32_t(dr));
    std::vector<float> out2(size_t(T * D), -7.0f);
    for (int32_t t = 0; t < T; ++t) {
        int32_t qo[2] = {0, 1}, lens[1] = {t};
        mla_batch b;
        REQUIRE_OK(mla_batch_init(&b));
        b.num_seqs = 1;
        b.num_tokens = 1;
        b.block_table_stride = 2;
        b.qo_indptr = qo;
        b.cache_lens = lens;
        b.block_table = table;
        CHECK_STATUS(mla_layer_forward(layer.get(), c2.get(), &b, hidden.data() + t * D, MLA_DTYPE_F32,
                                       out2.data() + t * D, MLA_DTYPE_F32, nullptr), MLA_OK);
    }
    CHECK(out1[0] != -5.0f);
    CHECK_LE_TOL("token-by-token vs prefill, rel err", max_rel(out2, out1), 1e-5);
    CHECK(cache_bytes(c1.get()) == cache_bytes(c2.get()));
}

// Random, often invalid batches through mla_layer_forward: every call returns a documented status,
// and a failed call leaves the cache and out untouched. Arrays are sized exactly as the batch
// claims, so a read past one shows under AddressSanitizer.
MLA_TEST(layer_forward_random_batches_fail_cleanly) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 2);
    TinyWeights tw;
    LayerPtr layer = make_layer(ctx.get(), tw.cfg, tw.w);
    const int32_t D = tw.cfg.hidden_size, bs = 4, nblocks = 8;
    CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, bs, nblocks, 16, 8);
    std::mt19937_64 rng(77);
    auto pick = [&](int32_t lo, int32_t hi) { return int32_t(lo + int64_t(rng() % uint64_t(int64_t(hi) - lo + 1))); };
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 600; ++iter) {
        const int32_t B = pick(1, 4);
        std::vector<int32_t> qo(size_t(B) + 1, 0), lens(static_cast<size_t>(B));
        for (int32_t b = 0; b < B; ++b) {
            qo[size_t(b) + 1] = qo[size_t(b)] + pick(0, 5);
            lens[size_t(b)] = pick(0, 3) == 0 ? pick(-2, 40) : pick(0, 12);
        }
        int32_t T = qo[size_t(B)];
        const int mutate = pick(0, 9);
        if (mutate == 0) qo[size_t(pick(0, B))] += pick(-3, 3);
        if (mutate == 1) T += pick(-2, 2);
        if (mutate == 2) lens[size_t(pick(0, B - 1))] = INT32_MAX - pick(0, 3);
        if (mutate == 3) qo[size_t(pick(1, B))] = INT32_MIN + pick(0, 3);
        const int32_t stride = pick(0, 5);
        std::vector<int32_t> table(size_t(B) * size_t(stride));
        for (int32_t& e : table) e = pick(0, 7) == 0 ? pick(-2, nblocks + 2) : pick(0, nblocks - 1);
        const bool with_pos = pick(0, 1) == 1;
        std::vector<int32_t> pos(size_t(std::max(T, 0)));
        for (int32_t& p : pos) p = pick(0, 9) == 0 ? pick(-3, -1) : pick(0, 100);
        std::vector<float> hidden(size_t(std::max(T, 0)) * size_t(D), 0.25f);
        std::vector<float> out(size_t(std::max(T, 0)) * size_t(D), -3.0f);
        mla_batch b;
        REQUIRE_OK(mla_batch_init(&b));
        b.num_seqs = B;
        b.num_tokens = T;
        b.block_table_stride = stride;
        b.qo_indptr = qo.data();
        b.cache_lens = lens.data();
        b.positions = with_pos ? pos.data() : nullptr;
        b.block_table = table.empty() ? nullptr : table.data();
        const std::vector<uint8_t> before = cache_bytes(cache.get());
        const std::vector<float> out0 = out;
        const mla_status st = mla_layer_forward(layer.get(), cache.get(), &b, hidden.empty() ? nullptr : hidden.data(),
                                                MLA_DTYPE_F32, out.empty() ? nullptr : out.data(), MLA_DTYPE_F32,
                                                nullptr);
        const std::string msg = mla_last_error();
        if (st == MLA_OK) {
            ++ok;
            CHECK(msg.empty());
            for (float v : out) CHECK(std::isfinite(v));
        } else {
            ++failed;
            CHECK_MSG(st == MLA_ERROR_INVALID_ARGUMENT || st == MLA_ERROR_CACHE_FULL,
                      "iteration " + std::to_string(iter) + ": " + status_text(st) + ": " + msg);
            CHECK_MSG(!msg.empty(), "iteration " + std::to_string(iter) + ": failure without a message");
            CHECK_MSG(cache_bytes(cache.get()) == before, "iteration " + std::to_string(iter) + ": cache written: " + msg);
            CHECK_MSG(out == out0, "iteration " + std::to_string(iter) + ": out written: " + msg);
        }
    }
    // Both kinds of batches were exercised.
    CHECK(ok > 50);
    CHECK(failed > 50);
}

// ---- backend memory and streams -----------------------------------------------------------------

struct BufferDel { void operator()(mla_buffer* p) const { mla_buffer_destroy(p); } };
using BufferPtr = std::unique_ptr<mla_buffer, BufferDel>;

MLA_TEST(buffer_create_upload_download_roundtrip) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    size_t used0 = 7;
    REQUIRE_OK(mla_context_memory_info(ctx.get(), &used0, nullptr, nullptr));
    CHECK_EQ(used0, size_t(0));
    mla_buffer* raw = nullptr;
    REQUIRE_OK(mla_buffer_create(ctx.get(), 64, &raw));
    BufferPtr buf(raw);
    void* data = nullptr;
    size_t bytes = 0;
    REQUIRE_OK(mla_buffer_data(buf.get(), &data, &bytes));
    CHECK(data != nullptr);
    CHECK_EQ(bytes, size_t(64));
    // zero-filled
    std::vector<uint8_t> all(64, 0xAB);
    REQUIRE_OK(mla_buffer_download(buf.get(), 0, all.data(), 64, nullptr));
    for (uint8_t v : all) CHECK_EQ(int(v), 0);
    std::vector<uint8_t> src(16);
    for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i + 1);
    REQUIRE_OK(mla_buffer_upload(buf.get(), 8, src.data(), src.size(), nullptr));
    REQUIRE_OK(mla_buffer_download(buf.get(), 0, all.data(), 64, nullptr));
    for (size_t i = 0; i < 64; ++i) CHECK_EQ(int(all[i]), (i >= 8 && i < 24) ? int(i - 7) : 0);
    std::vector<uint8_t> part(4, 0);
    REQUIRE_OK(mla_buffer_download(buf.get(), 10, part.data(), 4, nullptr));
    CHECK_EQ(int(part[0]), 3);
    CHECK_EQ(int(part[3]), 6);
    size_t used = 0, free_b = 0, total_b = 0;
    REQUIRE_OK(mla_context_memory_info(ctx.get(), &used, &free_b, &total_b));
    CHECK_EQ(used, size_t(64));
    CHECK(total_b > 0);
    CHECK(free_b <= total_b);
    {
        CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 2, 16, 8);
        REQUIRE_OK(mla_context_memory_info(ctx.get(), &used, nullptr, nullptr));
        CHECK_EQ(used, size_t(64 + 2 * 4 * (16 + 8) * 4));
    }
    buf.reset();
    REQUIRE_OK(mla_context_memory_info(ctx.get(), &used, nullptr, nullptr));
    CHECK_EQ(used, size_t(0));
}

MLA_TEST(buffer_bad_arguments_name_the_argument_and_write_nothing) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    mla_buffer* const sentinel = reinterpret_cast<mla_buffer*>(uintptr_t(0x1234));
    mla_buffer* out = sentinel;
    EXPECT_FAIL(mla_buffer_create(nullptr, 8, &out), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_buffer_create(ctx.get(), 0, &out), MLA_ERROR_INVALID_ARGUMENT, "bytes");
    EXPECT_FAIL(mla_buffer_create(ctx.get(), 8, nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    EXPECT_FAIL(mla_buffer_create(ctx.get(), SIZE_MAX, &out), MLA_ERROR_INVALID_ARGUMENT, "bytes");
    CHECK(out == sentinel);
    std::vector<uint8_t> host(32, 0x5A);
    EXPECT_FAIL(mla_buffer_wrap(ctx.get(), nullptr, 8, &out), MLA_ERROR_INVALID_ARGUMENT, "data");
    EXPECT_FAIL(mla_buffer_wrap(ctx.get(), host.data(), 0, &out), MLA_ERROR_INVALID_ARGUMENT, "bytes");
    EXPECT_FAIL(mla_buffer_wrap(nullptr, host.data(), 8, &out), MLA_ERROR_INVALID_ARGUMENT, "context");
    CHECK(out == sentinel);

    mla_buffer* raw = nullptr;
    REQUIRE_OK(mla_buffer_create(ctx.get(), 16, &raw));
    BufferPtr buf(raw);
    std::vector<uint8_t> src(17, 9);
    EXPECT_FAIL(mla_buffer_upload(buf.get(), 0, src.data(), 17, nullptr), MLA_ERROR_INVALID_ARGUMENT, "bytes");
    EXPECT_FAIL(mla_buffer_upload(buf.get(), 12, src.data(), 8, nullptr), MLA_ERROR_INVALID_ARGUMENT, "offset");
    EXPECT_FAIL(mla_buffer_upload(buf.get(), SIZE_MAX, src.data(), 2, nullptr), MLA_ERROR_INVALID_ARGUMENT, "offset");
    EXPECT_FAIL(mla_buffer_upload(buf.get(), 0, nullptr, 4, nullptr), MLA_ERROR_INVALID_ARGUMENT, "host");
    EXPECT_FAIL(mla_buffer_upload(nullptr, 0, src.data(), 4, nullptr), MLA_ERROR_INVALID_ARGUMENT, "buffer");
    CHECK_STATUS(mla_buffer_upload(buf.get(), 16, nullptr, 0, nullptr), MLA_OK);  // empty range at the end
    std::vector<uint8_t> dst(17, 0xEE);
    EXPECT_FAIL(mla_buffer_download(buf.get(), 1, dst.data(), 16, nullptr), MLA_ERROR_INVALID_ARGUMENT, "offset");
    EXPECT_FAIL(mla_buffer_download(buf.get(), 0, nullptr, 1, nullptr), MLA_ERROR_INVALID_ARGUMENT, "host");
    for (uint8_t v : dst) CHECK_EQ(int(v), 0xEE);
    // nothing was uploaded by the failed calls
    REQUIRE_OK(mla_buffer_download(buf.get(), 0, dst.data(), 16, nullptr));
    for (size_t i = 0; i < 16; ++i) CHECK_EQ(int(dst[i]), 0);
    void* d = reinterpret_cast<void*>(uintptr_t(0x99));
    size_t n = 77;
    EXPECT_FAIL(mla_buffer_data(nullptr, &d, &n), MLA_ERROR_INVALID_ARGUMENT, "buffer");
    CHECK(d == reinterpret_cast<void*>(uintptr_t(0x99)));
    CHECK_EQ(n, size_t(77));
    mla_buffer_destroy(nullptr);  // no-op
    size_t used = 1;
    EXPECT_FAIL(mla_context_memory_info(nullptr, &used, nullptr, nullptr), MLA_ERROR_INVALID_ARGUMENT, "context");
    CHECK_EQ(used, size_t(1));
}

MLA_TEST(wrapped_buffer_does_not_own_and_feeds_the_layer) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    std::vector<float> host(8, 0.f);
    mla_buffer* raw = nullptr;
    REQUIRE_OK(mla_buffer_wrap(ctx.get(), host.data(), host.size() * 4, &raw));
    BufferPtr wrapped(raw);
    size_t used = 1;
    REQUIRE_OK(mla_context_memory_info(ctx.get(), &used, nullptr, nullptr));
    CHECK_EQ(used, size_t(0));  // wrapped memory is the caller's
    const float v[2] = {1.5f, -2.0f};
    REQUIRE_OK(mla_buffer_upload(wrapped.get(), 4, v, sizeof v, nullptr));
    CHECK_EQ(host[1], 1.5f);
    CHECK_EQ(host[2], -2.0f);
    void* d = nullptr;
    REQUIRE_OK(mla_buffer_data(wrapped.get(), &d, nullptr));
    CHECK(d == host.data());
    wrapped.reset();  // frees the handle only; host stays valid (ASan/valgrind would flag a free)
    host[0] = 3.f;
    CHECK_EQ(host[0], 3.f);

    // Buffers carry a layer's activations: forward through buffer pointers equals forward
    // through plain host pointers.
    TinyWeights tw;
    LayerPtr layer = make_layer(ctx.get(), tw.cfg, tw.w);
    const int32_t T = 3, D = tw.cfg.hidden_size;
    std::mt19937_64 rng(5);
    std::vector<float> hidden = random_floats(rng, size_t(T * D), -1.f, 1.f);
    std::vector<float> ref(size_t(T * D)), got(size_t(T * D), 0.f);
    int32_t qo[2] = {0, T}, lens[1] = {0}, table[1] = {0};
    mla_batch b;
    REQUIRE_OK(mla_batch_init(&b));
    b.num_seqs = 1;
    b.num_tokens = T;
    b.block_table_stride = 1;
    b.qo_indptr = qo;
    b.cache_lens = lens;
    b.block_table = table;
    {
        CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 1, tw.cfg.kv_lora_rank, tw.cfg.qk_rope_head_dim);
        REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &b, hidden.data(), MLA_DTYPE_F32, ref.data(),
                                     MLA_DTYPE_F32, nullptr));
    }
    mla_buffer *hb = nullptr, *ob = nullptr;
    REQUIRE_OK(mla_buffer_create(ctx.get(), hidden.size() * 4, &hb));
    BufferPtr hbuf(hb);
    REQUIRE_OK(mla_buffer_create(ctx.get(), got.size() * 4, &ob));
    BufferPtr obuf(ob);
    void* stream = nullptr;
    REQUIRE_OK(mla_stream_create(ctx.get(), &stream));
    REQUIRE_OK(mla_buffer_upload(hbuf.get(), 0, hidden.data(), hidden.size() * 4, stream));
    void *hp = nullptr, *op = nullptr;
    REQUIRE_OK(mla_buffer_data(hbuf.get(), &hp, nullptr));
    REQUIRE_OK(mla_buffer_data(obuf.get(), &op, nullptr));
    {
        CachePtr cache = make_cache(ctx.get(), MLA_DTYPE_F32, 4, 1, tw.cfg.kv_lora_rank, tw.cfg.qk_rope_head_dim);
        REQUIRE_OK(mla_layer_forward(layer.get(), cache.get(), &b, hp, MLA_DTYPE_F32, op, MLA_DTYPE_F32, stream));
    }
    REQUIRE_OK(mla_buffer_download(obuf.get(), 0, got.data(), got.size() * 4, stream));
    REQUIRE_OK(mla_stream_synchronize(ctx.get(), stream));
    mla_stream_destroy(ctx.get(), stream);
    float maxv = 0.f;
    for (size_t i = 0; i < ref.size(); ++i) {
        CHECK_EQ(got[i], ref[i]);
        maxv = std::max(maxv, std::fabs(ref[i]));
    }
    CHECK(maxv > 0.f);
}

MLA_TEST(streams_on_the_cpu_are_distinct_tokens) {
    ContextPtr ctx = make_context(MLA_SIMD_AUTO, 1);
    void* s1 = nullptr;
    void* s2 = nullptr;
    REQUIRE_OK(mla_stream_create(ctx.get(), &s1));
    REQUIRE_OK(mla_stream_create(ctx.get(), &s2));
    CHECK(s1 != nullptr);
    CHECK(s2 != nullptr);
    CHECK(s1 != s2);
    CHECK_STATUS(mla_stream_synchronize(ctx.get(), s1), MLA_OK);
    CHECK_STATUS(mla_stream_synchronize(ctx.get(), nullptr), MLA_OK);
    EXPECT_FAIL(mla_stream_synchronize(nullptr, s1), MLA_ERROR_INVALID_ARGUMENT, "context");
    EXPECT_FAIL(mla_stream_create(nullptr, &s1), MLA_ERROR_INVALID_ARGUMENT, "context");
    void* keep = s1;
    EXPECT_FAIL(mla_stream_create(ctx.get(), nullptr), MLA_ERROR_INVALID_ARGUMENT, "out");
    CHECK(s1 == keep);
    mla_stream_destroy(ctx.get(), s1);
    mla_stream_destroy(ctx.get(), nullptr);  // no-op
    mla_stream_destroy(nullptr, s2);         // no-op: s2 stays with the context
    int not_a_stream = 0;
    mla_stream_destroy(ctx.get(), &not_a_stream);  // not this context's token: ignored
    // s2 is released with the context
}

MLA_TEST(cuda_buffers_without_gpu) {
    // Where a CUDA context can be made (a GPU machine), host memory must be refused by wrap.
    mla_context_options o;
    REQUIRE_OK(mla_context_options_init(&o));
    o.backend = MLA_BACKEND_CUDA;
    mla_context* c = nullptr;
    if (mla_context_create(&o, &c) != MLA_OK) {
        std::printf("    no CUDA context here (%s); wrap's pointer-kind check not exercised\n", mla_last_error());
        return;
    }
    ContextPtr ctx(c);
    std::vector<uint8_t> host(64);
    mla_buffer* out = nullptr;
    EXPECT_FAIL(mla_buffer_wrap(ctx.get(), host.data(), host.size(), &out), MLA_ERROR_INVALID_ARGUMENT, "host memory");
    CHECK(out == nullptr);
    mla_buffer* raw = nullptr;
    REQUIRE_OK(mla_buffer_create(ctx.get(), 256, &raw));
    BufferPtr owned(raw);
    void* d = nullptr;
    REQUIRE_OK(mla_buffer_data(owned.get(), &d, nullptr));
    REQUIRE_OK(mla_buffer_wrap(ctx.get(), d, 256, &out));
    mla_buffer_destroy(out);
}

int main(int argc, char** argv) { return mla_test::run_all(argc, argv); }
