// The C ABI of libmla (mla.h): argument validation, objects, and the exception boundary.
// Every exported body runs inside guard()/guard_void(), which catch everything; nothing the
// caller passed is written before all checks have passed.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core.h"

struct mla_context {
    std::unique_ptr<mla::Backend> backend;
    std::atomic<size_t> used{0};  // bytes of caches and owned buffers (mla_context_memory_info)
};

struct mla_cache {
    mla_context* ctx = nullptr;
    mla::CacheDesc desc;
    size_t bytes = 0;
    ~mla_cache() {
        if (desc.data) {
            ctx->backend->dealloc(desc.data);
            ctx->used -= bytes;
        }
    }
};

struct mla_buffer {
    mla_context* ctx = nullptr;
    void* data = nullptr;
    size_t bytes = 0;
    bool owned = false;  // allocated by mla_buffer_create (else wrapped caller memory)
    ~mla_buffer() {
        if (owned && data) {
            ctx->backend->dealloc(data);
            ctx->used -= bytes;
        }
    }
};

struct mla_layer {
    mla_context* ctx = nullptr;
    mla_config config{};
    int32_t head_begin = 0, head_end = 0;
    mla::LayerSpec spec;
    std::unique_ptr<mla::LayerImpl> impl;
};

namespace {

using mla::DType;
using mla::Error;
using mla::fail;
using mla::invalid;

thread_local std::string t_last_error;

// Builds the message inside its own try: under memory exhaustion the message may be lost, but
// no exception leaves a noexcept ABI function.
void set_error(const char* a, const char* b = "", const char* c = "") noexcept {
    try {
        t_last_error = a;
        t_last_error += b;
        t_last_error += c;
    } catch (...) {
        t_last_error.clear();
    }
}

void clear_error() noexcept { t_last_error.clear(); }

template <class F>
mla_status guard(const char* fn, F&& body) noexcept {
    clear_error();
    try {
        body();
        return MLA_OK;
    } catch (const Error& e) {
        set_error(e.what());
        return e.status;
    } catch (const std::bad_alloc&) {
        set_error(fn, ": out of host memory");
        return MLA_ERROR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_error(fn, ": internal error: ", e.what());
        return MLA_ERROR_INTERNAL;
    } catch (...) {
        set_error(fn, ": internal error (unknown exception)");
        return MLA_ERROR_INTERNAL;
    }
}

template <class F>
void guard_void(F&& body) noexcept {
    clear_error();
    try {
        body();
    } catch (...) {
    }
}

void require(const char* fn, const void* p, const char* name) {
    if (!p) invalid(fn, name, " is NULL");
}

// The body of every *_init function: a zeroed T with struct_size set, adjusted by fill, copied to
// *out (nothing is written when out is NULL).
template <class T, class F>
mla_status init_struct(const char* fn, T* out, const char* name, F&& fill) {
    return guard(fn, [&] {
        require(fn, out, name);
        T v;
        std::memset(&v, 0, sizeof v);
        v.struct_size = sizeof v;
        fill(v);
        *out = v;
    });
}

// mla_layer_options as headers before the progress callback defined it (struct_size 12).
struct LayerOptionsV1 {
    uint32_t struct_size;
    int32_t head_begin;
    int32_t head_end;
};
static_assert(sizeof(LayerOptionsV1) == 12 && offsetof(mla_layer_options, head_end) == 8,
              "mla_layer_options starts as its first version did");

void check_struct_size(const char* fn, const char* name, uint32_t got, size_t want) {
    if (got != want)
        invalid(fn, name, "->struct_size = ", got, ", expected ", want,
                got > want ? " (the caller's header is newer than this library; update libmla)"
                           : " (fill the struct with its *_init function; the caller's header is "
                             "older than this library or the field was not set)");
}

DType act_dtype(const char* fn, const char* name, int32_t v) {
    if (v != MLA_DTYPE_F32 && v != MLA_DTYPE_BF16)
        invalid(fn, name, " = ", v, ", must be MLA_DTYPE_F32 (0) or MLA_DTYPE_BF16 (1)");
    return DType(v);
}

bool host_visible(const mla_context* ctx) { return ctx->backend->kind() == MLA_BACKEND_CPU; }

// Multiplies non-negative sizes, failing on overflow of size_t.
size_t mul_size(const char* fn, const char* what, std::initializer_list<uint64_t> v) {
    unsigned __int128 r = 1;
    for (uint64_t x : v) {
        r *= x;
        if (r > std::numeric_limits<size_t>::max() / 2) invalid(fn, what, " overflows size_t");
    }
    return size_t(r);
}

mla::CacheDesc check_view(const char* fn, const char* name, const mla_cache_view& v) {
    if (!v.data) invalid(fn, name, ".data is NULL");
    if (v.dtype != MLA_DTYPE_BF16 && v.dtype != MLA_DTYPE_F32)
        invalid(fn, name, ".dtype = ", v.dtype, ", must be MLA_DTYPE_BF16 (1) or MLA_DTYPE_F32 (0)");
    if (v.num_blocks < 1) invalid(fn, name, ".num_blocks = ", v.num_blocks, ", must be >= 1");
    if (!mla::is_pow2(v.block_size) || v.block_size > (1 << 16))
        invalid(fn, name, ".block_size = ", v.block_size, ", must be a power of two in [1, 65536]");
    if (v.kv_lora_rank < 1 || v.kv_lora_rank > (1 << 20))
        invalid(fn, name, ".kv_lora_rank = ", v.kv_lora_rank, ", must be in [1, 1048576]");
    if (v.rope_dim < 2 || v.rope_dim % 2 != 0 || v.rope_dim > (1 << 20))
        invalid(fn, name, ".rope_dim = ", v.rope_dim, ", must be even and in [2, 1048576]");
    if (v.reserved0 != 0) invalid(fn, name, ".reserved0 = ", v.reserved0, ", must be 0");
    mul_size(fn, name, {uint64_t(v.num_blocks), uint64_t(v.block_size),
                        uint64_t(v.kv_lora_rank + v.rope_dim), 4});
    mla::CacheDesc d;
    d.data = v.data;
    d.dtype = DType(v.dtype);
    d.num_blocks = v.num_blocks;
    d.block_size = v.block_size;
    d.dc = v.kv_lora_rank;
    d.dr = v.rope_dim;
    return d;
}

// qo_indptr [B+1]: starts at 0, non-decreasing, ends at T.
void check_indptr(const char* fn, const char* name, const int32_t* ip, int32_t B, int32_t T) {
    if (ip[0] != 0) invalid(fn, name, "[0] = ", ip[0], ", must be 0");
    for (int32_t b = 0; b < B; ++b)
        if (ip[b + 1] < ip[b])
            invalid(fn, name, "[", b + 1, "] = ", ip[b + 1], " < ", name, "[", b, "] = ", ip[b],
                    ", must be non-decreasing");
    if (ip[B] != T) invalid(fn, name, "[", B, "] = ", ip[B], ", must equal num_tokens = ", T);
}

// Sequence b of length L needs blocks [0, ceil(L / bs)) of its row; each must exist and be valid.
void check_blocks(const char* fn, const char* table_name, const int32_t* table, int32_t stride,
                  int32_t b, int64_t L, const mla::CacheDesc& c, const char* len_what) {
    const int64_t need = (L + c.block_size - 1) / c.block_size;
    if (need > stride)
        fail(MLA_ERROR_CACHE_FULL, fn, "sequence ", b, " needs ", need, " blocks for ", len_what,
             " = ", L, " tokens (block_size ", c.block_size, "), but block_table_stride = ", stride);
    for (int64_t i = 0; i < need; ++i) {
        const int32_t id = table[int64_t(b) * stride + i];
        if (id < 0 || id >= c.num_blocks)
            invalid(fn, table_name, "[", b, " * ", stride, " + ", i, "] = ", id,
                    ", not a block id in [0, ", c.num_blocks, ")");
    }
}

// Validates mla_attention_params into the backend's struct (host values only on the CPU).
// need_data: q and out are required (run); the plan reads only the batch's shape and lengths.
mla::AttentionParams check_attention(const char* fn, mla_context* ctx, const mla_attention_params* p,
                                     bool need_data) {
    require(fn, ctx, "context");
    require(fn, p, "params");
    check_struct_size(fn, "params", p->struct_size, sizeof(mla_attention_params));
    if (p->num_seqs < 1) invalid(fn, "params.num_seqs = ", p->num_seqs, ", must be >= 1");
    if (p->num_tokens < 0) invalid(fn, "params.num_tokens = ", p->num_tokens, ", must be >= 0");
    if (p->num_heads < 1 || p->num_heads > (1 << 16))
        invalid(fn, "params.num_heads = ", p->num_heads, ", must be in [1, 65536]");
    if (p->causal != 0 && p->causal != 1) invalid(fn, "params.causal = ", p->causal, ", must be 0 or 1");
    if (p->block_table_stride < 0)
        invalid(fn, "params.block_table_stride = ", p->block_table_stride, ", must be >= 0");
    if (int64_t(p->num_tokens) * p->num_heads > INT32_MAX)
        invalid(fn, "params.num_tokens * params.num_heads = ", int64_t(p->num_tokens) * p->num_heads,
                ", must be < 2^31");
    mla::AttentionParams a;
    a.q_dtype = act_dtype(fn, "params.q_dtype", p->q_dtype);
    a.out_dtype = act_dtype(fn, "params.out_dtype", p->out_dtype);
    if (!(p->softmax_scale > 0.0f) || !std::isfinite(p->softmax_scale))
        invalid(fn, "params.softmax_scale = ", p->softmax_scale, ", must be finite and > 0");
    if (p->reserved0 != 0) invalid(fn, "params.reserved0 = ", p->reserved0, ", must be 0");
    require(fn, p->qo_indptr, "params.qo_indptr");
    require(fn, p->seq_lens, "params.seq_lens");
    if (p->block_table_stride > 0) require(fn, p->block_table, "params.block_table");
    if (need_data && p->num_tokens > 0) {
        require(fn, p->q, "params.q");
        require(fn, p->out, "params.out");
    }
    a.cache = check_view(fn, "params.cache", p->cache);
    if (host_visible(ctx)) {
        check_indptr(fn, "params.qo_indptr", p->qo_indptr, p->num_seqs, p->num_tokens);
        for (int32_t b = 0; b < p->num_seqs; ++b) {
            const int32_t n = p->qo_indptr[b + 1] - p->qo_indptr[b], L = p->seq_lens[b];
            if (L < 0 || (L < n && !(L == 0 && n <= 1)))
                invalid(fn, "params.seq_lens[", b, "] = ", L, ", must be >= the sequence's query tokens ",
                        n, " (0 allowed only with at most 1 query token)");
            check_blocks(fn, "params.block_table", p->block_table, p->block_table_stride, b, L, a.cache,
                         "seq_lens");
        }
    }
    a.num_seqs = p->num_seqs;
    a.num_tokens = p->num_tokens;
    a.num_heads = p->num_heads;
    a.causal = p->causal;
    a.block_table_stride = p->block_table_stride;
    a.scale = p->softmax_scale;
    a.q = p->q;
    a.qo_indptr = p->qo_indptr;
    a.seq_lens = p->seq_lens;
    a.block_table = p->block_table;
    a.out = p->out;
    a.lse = p->lse;
    return a;
}

void copy_out(char* buf, size_t buf_len, const std::string& s) {
    const size_t n = std::min(s.size(), buf_len - 1);
    std::memcpy(buf, s.data(), n);
    buf[n] = '\0';
}

}  // namespace

extern "C" {

MLA_API uint32_t mla_version(void) {
    clear_error();
    return MLA_VERSION_NUMBER;
}
MLA_API uint32_t mla_abi_version(void) {
    clear_error();
    return MLA_ABI_VERSION;
}

MLA_API const char* mla_status_string(mla_status status) {
    switch (status) {
        case MLA_OK: return "MLA_OK";
        case MLA_ERROR_INVALID_ARGUMENT: return "MLA_ERROR_INVALID_ARGUMENT";
        case MLA_ERROR_UNSUPPORTED: return "MLA_ERROR_UNSUPPORTED";
        case MLA_ERROR_OUT_OF_MEMORY: return "MLA_ERROR_OUT_OF_MEMORY";
        case MLA_ERROR_CACHE_FULL: return "MLA_ERROR_CACHE_FULL";
        case MLA_ERROR_BUFFER_TOO_SMALL: return "MLA_ERROR_BUFFER_TOO_SMALL";
        case MLA_ERROR_DEVICE: return "MLA_ERROR_DEVICE";
        case MLA_ERROR_INTERNAL: return "MLA_ERROR_INTERNAL";
        case MLA_ERROR_CANCELLED: return "MLA_ERROR_CANCELLED";
        default: return "MLA_ERROR_UNKNOWN";
    }
}

MLA_API const char* mla_last_error(void) { return t_last_error.c_str(); }

// ---- config -------------------------------------------------------------------------------------

MLA_API mla_status mla_config_init(mla_config* config) {
    return init_struct("mla_config_init", config, "config", [](mla_config& c) {
        c.hidden_size = 7168;
        c.num_heads = 128;
        c.q_lora_rank = 1536;
        c.kv_lora_rank = 512;
        c.qk_nope_head_dim = 128;
        c.qk_rope_head_dim = 64;
        c.v_head_dim = 128;
        c.rope_interleave = 1;
        c.rope_scaling = MLA_ROPE_SCALING_YARN;
        c.max_position_embeddings = 163840;
        c.original_max_position_embeddings = 4096;
        c.rope_theta = 10000.0;
        c.rope_factor = 40.0;
        c.rope_beta_fast = 32.0;
        c.rope_beta_slow = 1.0;
        c.rope_mscale = 1.0;
        c.rope_mscale_all_dim = 1.0;
        c.rope_attention_factor = 0.0;
        c.rope_truncate = 1;
        c.reserved0 = 0;
        c.rms_norm_eps = 1e-6;
        c.softmax_scale = 0.0;
    });
}

MLA_API mla_status mla_config_validate(const mla_config* config) {
    return guard("mla_config_validate", [&] { mla::validate_config("mla_config_validate", config); });
}

MLA_API mla_status mla_config_softmax_scale(const mla_config* config, double* out) {
    static const char* fn = "mla_config_softmax_scale";
    return guard(fn, [&] {
        mla::validate_config(fn, config);
        require(fn, out, "out");
        *out = mla::config_softmax_scale(*config);
    });
}

MLA_API mla_status mla_config_rope_tables(const mla_config* config, const int32_t* positions,
                                          int32_t count, float* cos_out, float* sin_out) {
    static const char* fn = "mla_config_rope_tables";
    return guard(fn, [&] {
        mla::validate_config(fn, config);
        if (count < 0) invalid(fn, "count = ", count, ", must be >= 0");
        if (count == 0) return;
        require(fn, positions, "positions");
        require(fn, cos_out, "cos_out");
        require(fn, sin_out, "sin_out");
        for (int32_t i = 0; i < count; ++i)
            if (positions[i] < 0) invalid(fn, "positions[", i, "] = ", positions[i], ", must be >= 0");
        const mla::RopeParams rope = mla::make_rope_params(*config);
        const int64_t d = rope.dim;
        for (int32_t i = 0; i < count; ++i)
            mla::rope_cos_sin(rope, positions[i], cos_out + i * d, sin_out + i * d);
    });
}

// ---- context ------------------------------------------------------------------------------------

MLA_API mla_status mla_context_options_init(mla_context_options* options) {
    return init_struct("mla_context_options_init", options, "options", [](mla_context_options& o) {
        o.backend = MLA_BACKEND_CPU;
        o.device = 0;
        o.num_threads = 0;
        o.simd = MLA_SIMD_AUTO;
    });
}

MLA_API mla_status mla_context_create(const mla_context_options* options, mla_context** out) {
    static const char* fn = "mla_context_create";
    return guard(fn, [&] {
        require(fn, out, "out");
        mla_context_options o;
        if (options) {
            check_struct_size(fn, "options", options->struct_size, sizeof(mla_context_options));
            o = *options;
        } else {
            mla_context_options_init(&o);
        }
        if (o.backend != MLA_BACKEND_CPU && o.backend != MLA_BACKEND_CUDA)
            invalid(fn, "options.backend = ", o.backend, ", must be MLA_BACKEND_CPU (0) or MLA_BACKEND_CUDA (1)");
        if (o.num_threads < 0 || o.num_threads > 1024)
            invalid(fn, "options.num_threads = ", o.num_threads, ", must be in [0, 1024] (0 = one per core)");
        if (o.simd < MLA_SIMD_AUTO || o.simd > MLA_SIMD_AVX512)
            invalid(fn, "options.simd = ", o.simd, ", not a mla_simd");
        if (o.device < 0) invalid(fn, "options.device = ", o.device, ", must be >= 0");
        auto ctx = std::make_unique<mla_context>();
        ctx->backend = o.backend == MLA_BACKEND_CPU ? mla::make_cpu_backend(o.num_threads, o.simd)
                                                    : mla::make_cuda_backend(o.device);
        *out = ctx.release();
    });
}

MLA_API void mla_context_destroy(mla_context* context) {
    guard_void([&] { delete context; });
}

MLA_API mla_status mla_context_describe(const mla_context* context, char* buf, size_t buf_len) {
    static const char* fn = "mla_context_describe";
    return guard(fn, [&] {
        require(fn, context, "context");
        require(fn, buf, "buf");
        if (buf_len == 0) invalid(fn, "buf_len = 0, must be >= 1");
        copy_out(buf, buf_len, context->backend->describe());
    });
}

MLA_API mla_status mla_context_backend(const mla_context* context, int32_t* out) {
    static const char* fn = "mla_context_backend";
    return guard(fn, [&] {
        require(fn, context, "context");
        require(fn, out, "out");
        *out = context->backend->kind();
    });
}

// ---- cache --------------------------------------------------------------------------------------

MLA_API mla_status mla_cache_options_init(mla_cache_options* options) {
    return init_struct("mla_cache_options_init", options, "options", [](mla_cache_options& o) {
        o.dtype = MLA_DTYPE_BF16;
        o.block_size = 64;
        o.num_blocks = 0;
        o.kv_lora_rank = 512;
        o.rope_dim = 64;
    });
}

MLA_API mla_status mla_cache_create(mla_context* context, const mla_cache_options* options,
                                    mla_cache** out) {
    static const char* fn = "mla_cache_create";
    return guard(fn, [&] {
        require(fn, context, "context");
        require(fn, options, "options");
        require(fn, out, "out");
        check_struct_size(fn, "options", options->struct_size, sizeof(mla_cache_options));
        const mla_cache_options& o = *options;
        if (o.dtype != MLA_DTYPE_BF16 && o.dtype != MLA_DTYPE_F32)
            invalid(fn, "options.dtype = ", o.dtype, ", must be MLA_DTYPE_BF16 (1) or MLA_DTYPE_F32 (0)");
        if (!mla::is_pow2(o.block_size) || o.block_size > 4096)
            invalid(fn, "options.block_size = ", o.block_size, ", must be a power of two in [1, 4096]");
        if (o.num_blocks < 1) invalid(fn, "options.num_blocks = ", o.num_blocks, ", must be >= 1");
        if (o.kv_lora_rank < 1 || o.kv_lora_rank > (1 << 20))
            invalid(fn, "options.kv_lora_rank = ", o.kv_lora_rank, ", must be in [1, 1048576]");
        if (o.rope_dim < 2 || o.rope_dim % 2 != 0 || o.rope_dim > (1 << 20))
            invalid(fn, "options.rope_dim = ", o.rope_dim, ", must be even and in [2, 1048576]");
        const size_t bytes = mul_size(fn, "options: num_blocks * block_size * entry bytes",
                                      {uint64_t(o.num_blocks), uint64_t(o.block_size),
                                       uint64_t(o.kv_lora_rank + o.rope_dim),
                                       uint64_t(mla::dtype_size(DType(o.dtype)))});
        auto c = std::make_unique<mla_cache>();
        c->ctx = context;
        c->desc.dtype = DType(o.dtype);
        c->desc.num_blocks = o.num_blocks;
        c->desc.block_size = o.block_size;
        c->desc.dc = o.kv_lora_rank;
        c->desc.dr = o.rope_dim;
        c->bytes = bytes;
        c->desc.data = context->backend->alloc(bytes);
        context->used += bytes;
        *out = c.release();
    });
}

MLA_API void mla_cache_destroy(mla_cache* cache) {
    guard_void([&] { delete cache; });
}

MLA_API mla_status mla_cache_get_view(const mla_cache* cache, mla_cache_view* out) {
    static const char* fn = "mla_cache_get_view";
    return guard(fn, [&] {
        require(fn, cache, "cache");
        require(fn, out, "out");
        mla_cache_view v;
        std::memset(&v, 0, sizeof v);
        v.data = cache->desc.data;
        v.dtype = int32_t(cache->desc.dtype);
        v.num_blocks = cache->desc.num_blocks;
        v.block_size = cache->desc.block_size;
        v.kv_lora_rank = cache->desc.dc;
        v.rope_dim = cache->desc.dr;
        v.reserved0 = 0;
        *out = v;
    });
}

MLA_API mla_status mla_cache_bytes(const mla_cache* cache, size_t* bytes_per_token,
                                   size_t* total_bytes) {
    static const char* fn = "mla_cache_bytes";
    return guard(fn, [&] {
        require(fn, cache, "cache");
        const size_t per = size_t(cache->desc.entry_elems()) * mla::dtype_size(cache->desc.dtype);
        if (bytes_per_token) *bytes_per_token = per;
        if (total_bytes) *total_bytes = cache->bytes;
    });
}

MLA_API mla_status mla_cache_read(const mla_cache* cache, const int32_t* block_table, int32_t start,
                                  int32_t count, float* latent_out, float* rope_out) {
    static const char* fn = "mla_cache_read";
    return guard(fn, [&] {
        require(fn, cache, "cache");
        if (start < 0) invalid(fn, "start = ", start, ", must be >= 0");
        if (count < 0) invalid(fn, "count = ", count, ", must be >= 0");
        if (count == 0) return;
        require(fn, block_table, "block_table");
        const mla::CacheDesc& c = cache->desc;
        const int64_t bs = c.block_size, E = c.entry_elems();
        const int64_t first = start / bs, last = (int64_t(start) + count - 1) / bs;
        for (int64_t i = first; i <= last; ++i)
            if (block_table[i] < 0 || block_table[i] >= c.num_blocks)
                invalid(fn, "block_table[", i, "] = ", block_table[i], ", not a block id in [0, ",
                        c.num_blocks, ")");
        const size_t es = mla::dtype_size(c.dtype);
        std::vector<unsigned char> raw(size_t(count) * size_t(E) * es);
        // Copy contiguous runs (the rest of a block) at a time.
        for (int64_t t = start; t < int64_t(start) + count;) {
            const int64_t blk = t / bs, off = t % bs;
            const int64_t n = std::min<int64_t>(bs - off, int64_t(start) + count - t);
            const char* src = static_cast<const char*>(c.data) +
                              size_t((int64_t(block_table[blk]) * bs + off) * E) * es;
            cache->ctx->backend->copy_to_host(raw.data() + size_t((t - start) * E) * es, src,
                                              size_t(n * E) * es, nullptr);
            t += n;
        }
        for (int64_t t = 0; t < count; ++t)
            for (int64_t i = 0; i < E; ++i) {
                const size_t at = size_t(t * E + i);
                const float v = c.dtype == DType::BF16
                                    ? mla::bf16_to_f32(reinterpret_cast<const uint16_t*>(raw.data())[at])
                                    : reinterpret_cast<const float*>(raw.data())[at];
                if (i < c.dc) {
                    if (latent_out) latent_out[t * c.dc + i] = v;
                } else if (rope_out) {
                    rope_out[t * c.dr + (i - c.dc)] = v;
                }
            }
    });
}

MLA_API mla_status mla_cache_copy_blocks(mla_cache* cache, const int32_t* src_blocks,
                                         const int32_t* dst_blocks, int32_t count, void* stream) {
    static const char* fn = "mla_cache_copy_blocks";
    return guard(fn, [&] {
        require(fn, cache, "cache");
        if (count < 0) invalid(fn, "count = ", count, ", must be >= 0");
        if (count == 0) return;
        require(fn, src_blocks, "src_blocks");
        require(fn, dst_blocks, "dst_blocks");
        const mla::CacheDesc& c = cache->desc;
        for (int32_t i = 0; i < count; ++i) {
            if (src_blocks[i] < 0 || src_blocks[i] >= c.num_blocks)
                invalid(fn, "src_blocks[", i, "] = ", src_blocks[i], ", not a block id in [0, ", c.num_blocks, ")");
            if (dst_blocks[i] < 0 || dst_blocks[i] >= c.num_blocks)
                invalid(fn, "dst_blocks[", i, "] = ", dst_blocks[i], ", not a block id in [0, ", c.num_blocks, ")");
        }
        const size_t block_bytes = size_t(c.block_size) * size_t(c.entry_elems()) * mla::dtype_size(c.dtype);
        char* base = static_cast<char*>(c.data);
        for (int32_t i = 0; i < count; ++i)
            cache->ctx->backend->copy(base + size_t(dst_blocks[i]) * block_bytes,
                                      base + size_t(src_blocks[i]) * block_bytes, block_bytes, stream);
    });
}

// ---- kernel level: compress ---------------------------------------------------------------------

MLA_API mla_status mla_compress_params_init(mla_compress_params* params) {
    return init_struct("mla_compress_params_init", params, "params", [](mla_compress_params& p) {
        p.kv_a_dtype = MLA_DTYPE_F32;
        p.norm_weight_dtype = MLA_DTYPE_F32;
        p.cache.dtype = MLA_DTYPE_BF16;
    });
}

MLA_API mla_status mla_compress(mla_context* context, const mla_config* config,
                                const mla_compress_params* params, void* stream) {
    static const char* fn = "mla_compress";
    return guard(fn, [&] {
        require(fn, context, "context");
        mla::validate_config(fn, config);
        require(fn, params, "params");
        const mla_compress_params& p = *params;
        check_struct_size(fn, "params", p.struct_size, sizeof(mla_compress_params));
        if (p.num_tokens < 0) invalid(fn, "params.num_tokens = ", p.num_tokens, ", must be >= 0");
        mla::CompressParams cp;
        cp.kv_a_dtype = act_dtype(fn, "params.kv_a_dtype", p.kv_a_dtype);
        cp.norm_dtype = act_dtype(fn, "params.norm_weight_dtype", p.norm_weight_dtype);
        if (p.reserved0 != 0) invalid(fn, "params.reserved0 = ", p.reserved0, ", must be 0");
        if (p.reserved1 != 0) invalid(fn, "params.reserved1 = ", p.reserved1, ", must be 0");
        cp.cache = check_view(fn, "params.cache", p.cache);
        if (cp.cache.dc != config->kv_lora_rank)
            invalid(fn, "params.cache.kv_lora_rank = ", cp.cache.dc, ", expected config.kv_lora_rank = ",
                    config->kv_lora_rank);
        if (cp.cache.dr != config->qk_rope_head_dim)
            invalid(fn, "params.cache.rope_dim = ", cp.cache.dr, ", expected config.qk_rope_head_dim = ",
                    config->qk_rope_head_dim);
        const int64_t E = cp.cache.entry_elems();
        if (p.kv_a_stride < E)
            invalid(fn, "params.kv_a_stride = ", p.kv_a_stride, ", must be >= kv_lora_rank + rope_dim = ", E);
        // Row t starts at t * kv_a_stride elements: [T, kv_a_stride] must fit in the address space.
        const int64_t max_elems = std::numeric_limits<int64_t>::max() / int64_t(mla::dtype_size(cp.kv_a_dtype));
        if (p.num_tokens > 1 && p.kv_a_stride > (max_elems - E) / (p.num_tokens - 1))
            invalid(fn, "params.kv_a_stride = ", p.kv_a_stride, " with num_tokens = ", p.num_tokens,
                    ": the kv_a rows overflow the address space");
        if (p.num_tokens == 0) return;
        require(fn, p.kv_a, "params.kv_a");
        require(fn, p.norm_weight, "params.norm_weight");
        require(fn, p.positions, "params.positions");
        require(fn, p.slot_mapping, "params.slot_mapping");
        if (host_visible(context)) {
            const int64_t slots = int64_t(cp.cache.num_blocks) * cp.cache.block_size;
            for (int32_t t = 0; t < p.num_tokens; ++t) {
                if (p.positions[t] < 0)
                    invalid(fn, "params.positions[", t, "] = ", p.positions[t], ", must be >= 0");
                if (p.slot_mapping[t] >= slots)
                    fail(MLA_ERROR_CACHE_FULL, fn, "params.slot_mapping[", t, "] = ", p.slot_mapping[t],
                         ", beyond the cache's ", slots, " slots (num_blocks * block_size)");
            }
        }
        const mla::RopeParams rope = mla::make_rope_params(*config);
        cp.num_tokens = p.num_tokens;
        cp.kv_a = p.kv_a;
        cp.kv_a_stride = p.kv_a_stride;
        cp.norm_weight = p.norm_weight;
        cp.positions = p.positions;
        cp.slots = p.slot_mapping;
        cp.eps = float(config->rms_norm_eps);
        cp.rope = &rope;
        context->backend->compress(cp, stream);
    });
}

// ---- kernel level: attention --------------------------------------------------------------------

MLA_API mla_status mla_attention_params_init(mla_attention_params* params) {
    return init_struct("mla_attention_params_init", params, "params", [](mla_attention_params& p) {
        p.causal = 1;
        p.q_dtype = MLA_DTYPE_F32;
        p.out_dtype = MLA_DTYPE_F32;
        p.cache.dtype = MLA_DTYPE_BF16;
    });
}

MLA_API mla_status mla_attention_workspace_size(mla_context* context, int32_t max_num_seqs,
                                                int32_t max_num_tokens, int32_t num_heads,
                                                int32_t kv_lora_rank, int32_t rope_dim,
                                                size_t* metadata_bytes, size_t* workspace_bytes) {
    static const char* fn = "mla_attention_workspace_size";
    return guard(fn, [&] {
        require(fn, context, "context");
        if (max_num_seqs < 1) invalid(fn, "max_num_seqs = ", max_num_seqs, ", must be >= 1");
        if (max_num_tokens < 0) invalid(fn, "max_num_tokens = ", max_num_tokens, ", must be >= 0");
        if (num_heads < 1 || num_heads > (1 << 16))
            invalid(fn, "num_heads = ", num_heads, ", must be in [1, 65536]");
        if (kv_lora_rank < 1 || kv_lora_rank > (1 << 20))
            invalid(fn, "kv_lora_rank = ", kv_lora_rank, ", must be in [1, 1048576]");
        if (rope_dim < 2 || rope_dim % 2 != 0 || rope_dim > (1 << 20))
            invalid(fn, "rope_dim = ", rope_dim, ", must be even and in [2, 1048576]");
        const size_t m = context->backend->attention_metadata_bytes(max_num_seqs, max_num_tokens,
                                                                    num_heads, kv_lora_rank);
        const size_t w = context->backend->attention_workspace_bytes(max_num_seqs, max_num_tokens,
                                                                     num_heads, kv_lora_rank, rope_dim);
        if (metadata_bytes) *metadata_bytes = m;
        if (workspace_bytes) *workspace_bytes = w;
    });
}

MLA_API mla_status mla_attention_plan(mla_context* context, const mla_attention_params* params,
                                      void* metadata, size_t metadata_bytes, void* stream) {
    static const char* fn = "mla_attention_plan";
    return guard(fn, [&] {
        const mla::AttentionParams a = check_attention(fn, context, params, false);
        require(fn, metadata, "metadata");
        context->backend->attention_plan(a, metadata, metadata_bytes, stream);
    });
}

MLA_API mla_status mla_attention_run(mla_context* context, const mla_attention_params* params,
                                     const void* metadata, size_t metadata_bytes, void* workspace,
                                     size_t workspace_bytes, void* stream) {
    static const char* fn = "mla_attention_run";
    return guard(fn, [&] {
        const mla::AttentionParams a = check_attention(fn, context, params, true);
        require(fn, metadata, "metadata");
        context->backend->attention_run(a, metadata, metadata_bytes, workspace, workspace_bytes, stream);
    });
}

// ---- layer --------------------------------------------------------------------------------------

MLA_API mla_status mla_layer_weights_init(mla_layer_weights* weights) {
    return init_struct("mla_layer_weights_init", weights, "weights", [](mla_layer_weights&) {});
}

MLA_API mla_status mla_layer_options_init(mla_layer_options* options) {
    return init_struct("mla_layer_options_init", options, "options", [](mla_layer_options&) {});
}

MLA_API mla_status mla_layer_create(mla_context* context, const mla_config* config,
                                    const mla_layer_weights* weights,
                                    const mla_layer_options* options, mla_layer** out) {
    static const char* fn = "mla_layer_create";
    return guard(fn, [&] {
        require(fn, context, "context");
        mla::validate_config(fn, config);
        require(fn, weights, "weights");
        require(fn, out, "out");
        check_struct_size(fn, "weights", weights->struct_size, sizeof(mla_layer_weights));
        if (weights->reserved0 != 0) invalid(fn, "weights.reserved0 = ", weights->reserved0, ", must be 0");
        int32_t h0 = 0, h1 = config->num_heads;
        mla_layer_options o;
        std::memset(&o, 0, sizeof o);
        if (options) {
            // The struct as older headers define it (up to head_end) is accepted: no progress.
            const uint32_t size = options->struct_size;
            if (size != sizeof(LayerOptionsV1))
                check_struct_size(fn, "options", size, sizeof(mla_layer_options));
            std::memcpy(&o, options, size);  // the caller's fields only
            h0 = o.head_begin;
            h1 = o.head_end == 0 ? config->num_heads : o.head_end;
            if (h0 < 0 || h0 >= config->num_heads)
                invalid(fn, "options.head_begin = ", h0, ", must be in [0, num_heads = ", config->num_heads, ")");
            if (h1 <= h0 || h1 > config->num_heads)
                invalid(fn, "options.head_end = ", o.head_end, ", must be in (head_begin = ", h0,
                        ", num_heads = ", config->num_heads, "] or 0");
        }
        // Reads the caller's tensors while the backend builds the layer; no host copy is made here.
        mla::StreamedWeights pw(fn, *config, *weights, h0, h1);
        pw.progress = o.progress;
        pw.progress_user_data = o.progress_user_data;
        auto layer = std::make_unique<mla_layer>();
        layer->ctx = context;
        layer->config = *config;
        layer->head_begin = h0;
        layer->head_end = h1;
        layer->spec = mla::make_layer_spec(*config, h0, h1);
        layer->impl = context->backend->create_layer(layer->spec, pw);
        *out = layer.release();
    });
}

MLA_API void mla_layer_destroy(mla_layer* layer) {
    guard_void([&] { delete layer; });
}

MLA_API mla_status mla_layer_get_config(const mla_layer* layer, mla_config* config_out,
                                        int32_t* head_begin_out, int32_t* head_end_out) {
    static const char* fn = "mla_layer_get_config";
    return guard(fn, [&] {
        require(fn, layer, "layer");
        if (config_out) *config_out = layer->config;
        if (head_begin_out) *head_begin_out = layer->head_begin;
        if (head_end_out) *head_end_out = layer->head_end;
    });
}

MLA_API mla_status mla_batch_init(mla_batch* batch) {
    return init_struct("mla_batch_init", batch, "batch", [](mla_batch&) {});
}

MLA_API mla_status mla_layer_forward(mla_layer* layer, mla_cache* cache, const mla_batch* batch,
                                     const void* hidden, int32_t hidden_dtype, void* out,
                                     int32_t out_dtype, void* stream) {
    static const char* fn = "mla_layer_forward";
    return guard(fn, [&] {
        require(fn, layer, "layer");
        require(fn, cache, "cache");
        require(fn, batch, "batch");
        check_struct_size(fn, "batch", batch->struct_size, sizeof(mla_batch));
        const mla_batch& b = *batch;
        if (b.num_seqs < 1) invalid(fn, "batch.num_seqs = ", b.num_seqs, ", must be >= 1");
        if (b.num_tokens < 0) invalid(fn, "batch.num_tokens = ", b.num_tokens, ", must be >= 0");
        if (b.block_table_stride < 0)
            invalid(fn, "batch.block_table_stride = ", b.block_table_stride, ", must be >= 0");
        const DType hd = act_dtype(fn, "hidden_dtype", hidden_dtype);
        const DType od = act_dtype(fn, "out_dtype", out_dtype);
        if (cache->ctx != layer->ctx)
            invalid(fn, "cache belongs to another context than layer");
        const mla::CacheDesc& c = cache->desc;
        if (c.dc != layer->spec.dc)
            invalid(fn, "cache kv_lora_rank = ", c.dc, ", expected the layer's kv_lora_rank = ", layer->spec.dc);
        if (c.dr != layer->spec.dr)
            invalid(fn, "cache rope_dim = ", c.dr, ", expected the layer's qk_rope_head_dim = ", layer->spec.dr);
        require(fn, b.qo_indptr, "batch.qo_indptr");
        require(fn, b.cache_lens, "batch.cache_lens");
        if (b.block_table_stride > 0) require(fn, b.block_table, "batch.block_table");
        if (b.num_tokens > 0) {
            require(fn, hidden, "hidden");
            require(fn, out, "out");
        }
        check_indptr(fn, "batch.qo_indptr", b.qo_indptr, b.num_seqs, b.num_tokens);
        for (int32_t s = 0; s < b.num_seqs; ++s) {
            const int64_t n = b.qo_indptr[s + 1] - b.qo_indptr[s];
            if (b.cache_lens[s] < 0)
                invalid(fn, "batch.cache_lens[", s, "] = ", b.cache_lens[s], ", must be >= 0");
            const int64_t L = int64_t(b.cache_lens[s]) + n;
            if (L > INT32_MAX) invalid(fn, "batch.cache_lens[", s, "] = ", b.cache_lens[s], " overflows with its tokens");
            check_blocks(fn, "batch.block_table", b.block_table, b.block_table_stride, s, L, c,
                         "cache_lens + new tokens");
        }
        std::vector<int32_t> filled;
        const int32_t* positions = b.positions;
        if (positions) {
            for (int32_t t = 0; t < b.num_tokens; ++t)
                if (positions[t] < 0) invalid(fn, "batch.positions[", t, "] = ", positions[t], ", must be >= 0");
        } else {
            filled.resize(size_t(b.num_tokens));
            for (int32_t s = 0; s < b.num_seqs; ++s)
                for (int32_t t = b.qo_indptr[s]; t < b.qo_indptr[s + 1]; ++t)
                    filled[size_t(t)] = b.cache_lens[s] + (t - b.qo_indptr[s]);
            positions = filled.data();
        }
        if (b.num_tokens == 0) return;
        mla::BatchDesc d;
        d.num_seqs = b.num_seqs;
        d.num_tokens = b.num_tokens;
        d.block_table_stride = b.block_table_stride;
        d.qo_indptr = b.qo_indptr;
        d.cache_lens = b.cache_lens;
        d.positions = positions;
        d.block_table = b.block_table;
        layer->impl->forward(d, c, hidden, hd, out, od, stream);
    });
}

// ---- backend memory and streams ------------------------------------------------------------------

namespace {

// Checks [offset, offset + bytes) against a buffer and host against NULL; fn names the call.
void check_range(const char* fn, const mla_buffer* buffer, size_t offset, const void* host,
                 size_t bytes) {
    require(fn, buffer, "buffer");
    if (offset > buffer->bytes || bytes > buffer->bytes - offset)
        invalid(fn, "offset = ", offset, ", bytes = ", bytes, ": the range exceeds the buffer's ",
                buffer->bytes, " bytes");
    if (bytes > 0) require(fn, host, "host");
}

}  // namespace

MLA_API mla_status mla_buffer_create(mla_context* context, size_t bytes, mla_buffer** out) {
    static const char* fn = "mla_buffer_create";
    return guard(fn, [&] {
        require(fn, context, "context");
        require(fn, out, "out");
        if (bytes == 0) invalid(fn, "bytes = 0, must be >= 1");
        if (bytes > std::numeric_limits<size_t>::max() / 2) invalid(fn, "bytes = ", bytes, " is too large");
        auto b = std::make_unique<mla_buffer>();
        b->ctx = context;
        b->bytes = bytes;
        b->data = context->backend->alloc(bytes);
        b->owned = true;
        context->used += bytes;
        *out = b.release();
    });
}

MLA_API mla_status mla_buffer_wrap(mla_context* context, void* data, size_t bytes, mla_buffer** out) {
    static const char* fn = "mla_buffer_wrap";
    return guard(fn, [&] {
        require(fn, context, "context");
        require(fn, data, "data");
        require(fn, out, "out");
        if (bytes == 0) invalid(fn, "bytes = 0, must be >= 1");
        if (uintptr_t(data) + bytes < uintptr_t(data))
            invalid(fn, "data + bytes = ", bytes, " wraps around the address space");
        context->backend->check_backend_pointer(fn, "data", data);
        auto b = std::make_unique<mla_buffer>();
        b->ctx = context;
        b->bytes = bytes;
        b->data = data;
        b->owned = false;
        *out = b.release();
    });
}

MLA_API void mla_buffer_destroy(mla_buffer* buffer) {
    guard_void([&] { delete buffer; });
}

MLA_API mla_status mla_buffer_data(const mla_buffer* buffer, void** data, size_t* bytes) {
    static const char* fn = "mla_buffer_data";
    return guard(fn, [&] {
        require(fn, buffer, "buffer");
        if (data) *data = buffer->data;
        if (bytes) *bytes = buffer->bytes;
    });
}

MLA_API mla_status mla_buffer_upload(mla_buffer* buffer, size_t offset, const void* host,
                                     size_t bytes, void* stream) {
    static const char* fn = "mla_buffer_upload";
    return guard(fn, [&] {
        check_range(fn, buffer, offset, host, bytes);
        if (bytes == 0) return;
        buffer->ctx->backend->copy_from_host(static_cast<char*>(buffer->data) + offset, host, bytes,
                                             stream);
    });
}

MLA_API mla_status mla_buffer_download(const mla_buffer* buffer, size_t offset, void* host,
                                       size_t bytes, void* stream) {
    static const char* fn = "mla_buffer_download";
    return guard(fn, [&] {
        check_range(fn, buffer, offset, host, bytes);
        if (bytes == 0) return;
        // Through a staging copy, so host is written only when the whole copy succeeded.
        std::vector<unsigned char> staged(bytes);
        buffer->ctx->backend->copy_to_host(staged.data(),
                                           static_cast<const char*>(buffer->data) + offset, bytes,
                                           stream);
        std::memcpy(host, staged.data(), bytes);
    });
}

MLA_API mla_status mla_stream_create(mla_context* context, void** out) {
    static const char* fn = "mla_stream_create";
    return guard(fn, [&] {
        require(fn, context, "context");
        require(fn, out, "out");
        *out = context->backend->stream_create(fn);
    });
}

MLA_API void mla_stream_destroy(mla_context* context, void* stream) {
    guard_void([&] {
        if (context && stream) context->backend->stream_destroy(stream);
    });
}

MLA_API mla_status mla_stream_synchronize(mla_context* context, void* stream) {
    static const char* fn = "mla_stream_synchronize";
    return guard(fn, [&] {
        require(fn, context, "context");
        context->backend->stream_synchronize(fn, stream);
    });
}

MLA_API mla_status mla_context_memory_info(const mla_context* context, size_t* used_by_library,
                                           size_t* device_free, size_t* device_total) {
    static const char* fn = "mla_context_memory_info";
    return guard(fn, [&] {
        require(fn, context, "context");
        size_t free_bytes = 0, total_bytes = 0;
        if (device_free || device_total) context->backend->memory_info(fn, &free_bytes, &total_bytes);
        if (used_by_library) *used_by_library = context->used.load();
        if (device_free) *device_free = free_bytes;
        if (device_total) *device_total = total_bytes;
    });
}

}  // extern "C"
