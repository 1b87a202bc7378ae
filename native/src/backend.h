// Internal interface between the shared core (validation, RoPE/YaRN, weight preparation, the
// C ABI in api.cpp) and the compute backends (cpu/, cuda/). Not installed, not part of the ABI.
//
// The shared core validates every argument and fills the plain params structs below exactly once;
// backends never re-validate host-visible values. Backends report failures by throwing mla::Error
// (status + message); api.cpp catches everything at the ABI boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "mla.h"

namespace mla {

// A failure with its ABI status. The message names the argument and value where there is one.
struct Error : std::runtime_error {
    mla_status status;
    Error(mla_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

enum class DType : int32_t { F32 = MLA_DTYPE_F32, BF16 = MLA_DTYPE_BF16, F16 = MLA_DTYPE_F16, FP8_E4M3 = MLA_DTYPE_FP8_E4M3 };

inline size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::BF16: return 2;
        case DType::F16: return 2;
        case DType::FP8_E4M3: return 1;
    }
    return 0;
}

// RoPE as transformers computes it for one config: inv_freq in f32 (as torch keeps the buffer),
// the YaRN attention factor folded into cos/sin, and the pair layout.
struct RopeParams {
    int32_t dim = 0;                 // qk_rope_head_dim (even)
    int32_t interleave = 0;          // 1: input pairs (x0,x1),(x2,x3)... are permuted to halves first
    float attention_factor = 1.0f;   // multiplies cos and sin
    std::vector<float> inv_freq;     // [dim / 2]
};

// One cache, validated (from mla_cache_view).
struct CacheDesc {
    void* data = nullptr;            // backend [num_blocks, block_size, dc + dr]
    DType dtype = DType::BF16;       // BF16 or F32
    int32_t num_blocks = 0;
    int32_t block_size = 0;          // power of two
    int32_t dc = 0;                  // kv_lora_rank
    int32_t dr = 0;                  // rope dim
    int64_t entry_elems() const { return int64_t(dc) + dr; }
};

// mla_compress, validated. Slots have been checked against the cache when host-visible.
struct CompressParams {
    int32_t num_tokens = 0;
    const void* kv_a = nullptr;      // backend [T, kv_a_stride], dtype kv_a_dtype (F32/BF16)
    DType kv_a_dtype = DType::F32;
    int64_t kv_a_stride = 0;         // elements
    const void* norm_weight = nullptr; // backend [dc]
    DType norm_dtype = DType::F32;
    const int32_t* positions = nullptr; // backend [T]
    const int64_t* slots = nullptr;  // backend [T], < 0 = skip
    float eps = 1e-6f;
    const RopeParams* rope = nullptr;
    CacheDesc cache;
};

// mla_attention_params, validated.
struct AttentionParams {
    int32_t num_seqs = 0;            // B
    int32_t num_tokens = 0;          // T
    int32_t num_heads = 0;           // H
    int32_t causal = 1;
    int32_t block_table_stride = 0;
    DType q_dtype = DType::F32;      // F32/BF16
    DType out_dtype = DType::F32;    // F32/BF16
    float scale = 0.f;
    const void* q = nullptr;         // backend [T, H, dc + dr]
    const int32_t* qo_indptr = nullptr;   // backend [B + 1]
    const int32_t* seq_lens = nullptr;    // backend [B]
    const int32_t* block_table = nullptr; // backend [B, block_table_stride]
    CacheDesc cache;
    void* out = nullptr;             // backend [T, H, dc]
    float* lse = nullptr;            // backend [T, H] or nullptr
};

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

// The prepared weights of a layer for the heads [h0, h1) (Hs = h1 - h0 heads): the tensors of
// enum Tensor, f32 values, sliced to the layer's heads, kv_b_proj split into W_UK (transposed per
// head) and W_UV, FP8 dequantized. exactly_bf16 says every value is exactly representable in
// bf16 (all sources were bf16), so a backend may store them as bf16 without loss.
//
// Backends read the tensors in row ranges with read(), never through the vectors: this class
// serves read() from the vectors (weights materialized in host memory, as tests build them);
// the core's StreamedWeights (core.h) leaves them empty and converts each range straight from
// the caller's mla_layer_weights, so that no host copy of the whole layer exists. read() is
// const and may run on several threads at once.
struct PreparedWeights {
    enum Tensor : int {
        kQA,        // q_a_proj [q_lora, hidden]                (q_lora > 0, else 0 rows)
        kQANorm,    // q_a_layernorm [q_lora] (1 column)        (q_lora > 0, else 0 rows)
        kQB,        // q_b_proj [Hs * (dn + dr), q_lora]        (q_lora > 0, else 0 rows)
        kQ,         // q_proj [Hs * (dn + dr), hidden]          (q_lora == 0, else 0 rows)
        kKvA,       // kv_a_proj_with_mqa [dc + dr, hidden]
        kKvANorm,   // kv_a_layernorm [dc] (1 column)
        kWUkT,      // [Hs * dc, dn]: W_UK[h] transposed, so q_lat = W_UK_T[h] . q_nope
        kWUv,       // [Hs * dv, dc]: o_h = W_UV[h] . o_lat
        kO,         // o_proj [hidden, Hs * dv]: the slice's columns
        kCount
    };

    int32_t hidden = 0, heads = 0, q_lora = 0, dc = 0, dn = 0, dr = 0, dv = 0;  // heads = Hs
    bool exactly_bf16 = false;
    std::vector<float> q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, w_uk_t, w_uv, o;  // see Tensor

    // Progress of the layer's creation (mla_layer_options.progress); nullptr = none.
    int32_t (*progress)(void* user_data, uint64_t bytes_done, uint64_t bytes_total) = nullptr;
    void* progress_user_data = nullptr;

    virtual ~PreparedWeights() = default;

    // Shape of tensor t; a tensor this config does not use has 0 rows.
    int64_t rows(Tensor t) const {
        const int64_t H = heads;
        switch (t) {
            case kQA: case kQANorm: return q_lora > 0 ? q_lora : 0;
            case kQB: return q_lora > 0 ? H * (dn + dr) : 0;
            case kQ: return q_lora > 0 ? 0 : H * (dn + dr);
            case kKvA: return int64_t(dc) + dr;
            case kKvANorm: return dc;
            case kWUkT: return H * dc;
            case kWUv: return H * dv;
            case kO: return hidden;
            default: return 0;
        }
    }
    int64_t cols(Tensor t) const {
        switch (t) {
            case kQA: case kQ: case kKvA: return hidden;
            case kQB: return q_lora;
            case kWUkT: return dn;
            case kWUv: return dc;
            case kO: return int64_t(heads) * dv;
            default: return 1;  // norm vectors
        }
    }
    static bool is_vector(Tensor t) { return t == kQANorm || t == kKvANorm; }
    // The checkpoint weight tensor t comes from, for messages ("kv_b_proj (W_UK)").
    static const char* name(Tensor t) {
        static const char* const names[kCount] = {"q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj",
                                                  "kv_a_proj_with_mqa", "kv_a_layernorm",
                                                  "kv_b_proj (W_UK)", "kv_b_proj (W_UV)", "o_proj"};
        return t >= 0 && t < kCount ? names[t] : "?";
    }

    // Writes rows [r0, r1) of tensor t (0 <= r0 <= r1 <= rows(t)), all columns, row-major into
    // dst: as F32 (cols floats a row) or BF16 (f32 values rounded to nearest even). Never throws.
    virtual void read(Tensor t, int64_t r0, int64_t r1, DType as, void* dst) const {
        const std::vector<float>* v[kCount] = {&q_a, &q_a_norm, &q_b, &q, &kv_a, &kv_a_norm,
                                               &w_uk_t, &w_uv, &o};
        const int64_t c = cols(t);
        const float* src = v[t]->data() + r0 * c;
        const size_t n = size_t((r1 - r0) * c);
        if (as == DType::F32) {
            if (n) std::memcpy(dst, src, n * 4);
        } else {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
        }
    }

    // Calls progress (if set) with bytes_done of bytes_total, the last prepared bytes being of
    // tensor t; throws Error(MLA_ERROR_CANCELLED) naming t when it returns non-zero.
    void report(Tensor t, uint64_t bytes_done, uint64_t bytes_total) const {
        if (!progress || progress(progress_user_data, bytes_done, bytes_total) == 0) return;
        throw Error(MLA_ERROR_CANCELLED,
                    std::string("mla_layer_create: cancelled by options.progress at ") + name(t) +
                        " (" + std::to_string(bytes_done) + " of " + std::to_string(bytes_total) +
                        " bytes of prepared weights done)");
    }
};

// mla_batch, validated against the cache: every slot the batch writes or reads is covered and
// every block id used is in range. Host arrays.
struct BatchDesc {
    int32_t num_seqs = 0;
    int32_t num_tokens = 0;
    int32_t block_table_stride = 0;
    const int32_t* qo_indptr = nullptr;   // [B + 1]
    const int32_t* cache_lens = nullptr;  // [B]
    const int32_t* positions = nullptr;   // [T], never null here (filled by the core if absent)
    const int32_t* block_table = nullptr; // [B, stride]
};

struct LayerSpec {
    int32_t hidden = 0, heads = 0, q_lora = 0, dc = 0, dn = 0, dr = 0, dv = 0;  // heads = slice
    float eps = 1e-6f;
    float scale = 0.f;               // softmax scale
    RopeParams rope;
};

// A backend's prepared layer (weights in its own memory and format).
class LayerImpl {
public:
    virtual ~LayerImpl() = default;
    // hidden/out: backend memory [T, hidden]; dtypes F32/BF16. Must not write the cache or out
    // before all checks that can fail have passed.
    virtual void forward(const BatchDesc& batch, const CacheDesc& cache, const void* hidden,
                         DType hidden_dtype, void* out, DType out_dtype, void* stream) = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual mla_backend kind() const = 0;
    virtual std::string describe() const = 0;

    // Memory in the backend's space. alloc throws Error(MLA_ERROR_OUT_OF_MEMORY); memory is
    // zero-filled. copy_to_host synchronizes.
    virtual void* alloc(size_t bytes) = 0;
    virtual void dealloc(void* p) noexcept = 0;
    virtual void copy_from_host(void* dst, const void* host_src, size_t bytes, void* stream) = 0;
    virtual void copy_to_host(void* host_dst, const void* src, size_t bytes, void* stream) = 0;
    virtual void copy(void* dst, const void* src, size_t bytes, void* stream) = 0;

    virtual void compress(const CompressParams& p, void* stream) = 0;

    virtual size_t attention_metadata_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                            int32_t dc) const = 0;
    virtual size_t attention_workspace_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                             int32_t dc, int32_t dr) const = 0;
    virtual void attention_plan(const AttentionParams& p, void* metadata, size_t metadata_bytes,
                                void* stream) = 0;
    virtual void attention_run(const AttentionParams& p, const void* metadata,
                               size_t metadata_bytes, void* workspace, size_t workspace_bytes,
                               void* stream) = 0;

    virtual std::unique_ptr<LayerImpl> create_layer(const LayerSpec& spec,
                                                    const PreparedWeights& w) = 0;

    // Streams and memory figures (mla_stream_*, mla_buffer_wrap, mla_context_memory_info). The
    // defaults fail with MLA_ERROR_UNSUPPORTED so a backend without them still builds; fn names
    // the ABI function for the message. stream_destroy accepts nullptr and never throws.
    virtual void* stream_create(const char* fn) { unsupported(fn); }
    virtual void stream_destroy(void* /*stream*/) noexcept {}
    virtual void stream_synchronize(const char* fn, void* /*stream*/) { unsupported(fn); }
    // Available and total bytes of the memory this backend allocates from.
    virtual void memory_info(const char* fn, size_t* /*free*/, size_t* /*total*/) { unsupported(fn); }
    // Throws INVALID_ARGUMENT naming arg when p cannot be backend memory of this context.
    virtual void check_backend_pointer(const char* fn, const char* /*arg*/, const void* /*p*/) {
        unsupported(fn);
    }

private:
    [[noreturn]] void unsupported(const char* fn) const {
        throw Error(MLA_ERROR_UNSUPPORTED, std::string(fn) + ": not supported by the " + describe() +
                                               " backend of this build");
    }
};

// Factories. make_cuda_backend throws Error(MLA_ERROR_UNSUPPORTED) in builds without CUDA.
std::unique_ptr<Backend> make_cpu_backend(int32_t num_threads, int32_t simd);
std::unique_ptr<Backend> make_cuda_backend(int32_t device);

}  // namespace mla
