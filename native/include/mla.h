/*
 * mla.h: Multi-head Latent Attention (DeepSeek-V2/V3, Kimi K2) behind a plain C ABI.
 *
 * The only public header of libmla. C11 and C++ compatible, fixed-width types, no CUDA types:
 * CUDA streams and device pointers cross as void*.
 *
 * Two API levels over one core:
 *   1. Kernels, for engines that run their own projections (FlashMLA-shaped):
 *      mla_compress()              kv_a output -> RMSNorm + RoPE -> paged latent cache, one pass
 *      mla_attention_*()           absorbed queries x paged latent cache -> latent output + lse,
 *                                  split as workspace size -> plan -> run (run never allocates)
 *   2. A whole attention layer, for engines without their own MLA:
 *      mla_layer_create()          config + weights (bf16, f32, f16 or FP8 e4m3 with 128x128 block
 *                                  scales) + head range -> prepared, immutable layer
 *      mla_layer_forward()         hidden states of a ragged batch -> output after o_proj,
 *                                  appending the new tokens to a mla_cache
 *
 * Semantics are those of HuggingFace transformers' DeepseekV3Attention (eager), YaRN RoPE and
 * interleaved RoPE included.
 *
 * Conventions, for every function below unless its comment says otherwise:
 *   - Every function that can fail returns mla_status. MLA_OK is 0. On failure nothing the caller
 *     passed in is written (outputs, caches and out-parameters keep their contents) and
 *     mla_last_error() describes the failure, naming the offending argument and value.
 *   - No function exits, aborts, prints, or lets a C++ exception escape.
 *   - Pointers documented as "host" are ordinary CPU memory. Pointers documented as "backend"
 *     are host memory for a CPU context and device memory of the context's GPU for a CUDA context.
 *   - The caller owns every pointer it passes in; the library keeps none of them past the call
 *     (mla_layer_create copies what it needs). Objects returned through an out-parameter are owned
 *     by the caller and released by their destroy function, which accepts NULL.
 *   - Structs that carry struct_size are filled with defaults by their *_init function; set
 *     struct_size = sizeof(struct) (the init functions do). The library rejects a struct_size it
 *     does not know, so an old library refuses a newer header's larger struct instead of reading
 *     past it. Fields are only ever appended.
 *   - Thread rules: a mla_context, a mla_layer and a mla_cache may be used from several threads at
 *     once. Calls that write a cache may run concurrently only when they write disjoint blocks.
 *     Destroying an object while another thread uses it is undefined.
 *   - Status values are pinned: new values may be added, existing values never change.
 */
#ifndef MLA_H
#define MLA_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(MLA_BUILDING_LIBRARY)
#    define MLA_API __declspec(dllexport)
#  else
#    define MLA_API __declspec(dllimport)
#  endif
#else
#  define MLA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions
 * ------------------------------------------------------------------------------------------- */

#define MLA_VERSION_MAJOR 0
#define MLA_VERSION_MINOR 1
#define MLA_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define MLA_VERSION_NUMBER 100
/* Incremented on every incompatible change of this header; bindings check it at load. */
#define MLA_ABI_VERSION 1

/* Returns MLA_VERSION_NUMBER of the library actually loaded. Never fails. */
MLA_API uint32_t mla_version(void);
/* Returns MLA_ABI_VERSION of the library actually loaded. Never fails. */
MLA_API uint32_t mla_abi_version(void);

/* ---------------------------------------------------------------------------------------------
 * Status codes and errors
 * ------------------------------------------------------------------------------------------- */

typedef int32_t mla_status;

enum mla_status_code {
    MLA_OK = 0,
    /* An argument is NULL where it must not be, out of range, or inconsistent with another. */
    MLA_ERROR_INVALID_ARGUMENT = 1,
    /* Valid, but not supported by this build or backend (e.g. CUDA backend not compiled in). */
    MLA_ERROR_UNSUPPORTED = 2,
    /* A host or device allocation failed. */
    MLA_ERROR_OUT_OF_MEMORY = 3,
    /* A sequence needs a cache slot that its block table does not provide (out of blocks). */
    MLA_ERROR_CACHE_FULL = 4,
    /* A caller-provided metadata or workspace buffer is smaller than required. */
    MLA_ERROR_BUFFER_TOO_SMALL = 5,
    /* The GPU runtime reported an error (no device, bad pointer kind, launch failure). */
    MLA_ERROR_DEVICE = 6,
    /* An unexpected internal failure; the message says what. Please report it. */
    MLA_ERROR_INTERNAL = 7,
    /* The caller's progress callback asked to stop (mla_layer_options.progress returned
     * non-zero); the message names the weight being prepared. Everything the call allocated is
     * freed. */
    MLA_ERROR_CANCELLED = 8
};

/* Returns a static, NUL-terminated name for a status ("MLA_ERROR_INVALID_ARGUMENT"), or
 * "MLA_ERROR_UNKNOWN" for a value this library does not know. Never NULL. Thread-safe. */
MLA_API const char* mla_status_string(mla_status status);

/* Returns the message of the most recent failed call on the calling thread, e.g.
 * "mla_layer_create: weights.kv_b_proj.rows = 1000, expected num_heads * (qk_nope_head_dim +
 * v_head_dim) = 1024". Every other API function clears it on entry; "" when the last call
 * succeeded. The pointer stays valid until the next API call on this thread. Never NULL. */
MLA_API const char* mla_last_error(void);

/* ---------------------------------------------------------------------------------------------
 * Enumerations (passed as int32_t in structs and arguments)
 * ------------------------------------------------------------------------------------------- */

enum mla_dtype {
    MLA_DTYPE_F32 = 0,
    MLA_DTYPE_BF16 = 1,
    MLA_DTYPE_F16 = 2,
    /* FP8 e4m3 (fn variant: no infinities, 0x7f/0xff are NaN); weights only, with block scales */
    MLA_DTYPE_FP8_E4M3 = 3
};

enum mla_backend {
    MLA_BACKEND_CPU = 0,
    MLA_BACKEND_CUDA = 1
};

enum mla_rope_scaling {
    MLA_ROPE_SCALING_NONE = 0,
    MLA_ROPE_SCALING_YARN = 1
};

/* CPU instruction set used by a CPU context; MLA_SIMD_AUTO picks the best the CPU has. */
enum mla_simd {
    MLA_SIMD_AUTO = 0,
    MLA_SIMD_SCALAR = 1,
    MLA_SIMD_AVX2 = 2,
    MLA_SIMD_AVX512 = 3
};

/* ---------------------------------------------------------------------------------------------
 * Model configuration: the DeepseekV3Config fields the attention uses
 * ------------------------------------------------------------------------------------------- */

typedef struct mla_config {
    uint32_t struct_size;            /* sizeof(mla_config) */
    int32_t hidden_size;             /* D, e.g. 7168 */
    int32_t num_heads;               /* H, num_attention_heads, e.g. 128 */
    int32_t q_lora_rank;             /* e.g. 1536; 0 = no query compression (q_proj) */
    int32_t kv_lora_rank;            /* latent width dc, e.g. 512 */
    int32_t qk_nope_head_dim;        /* dn, e.g. 128 */
    int32_t qk_rope_head_dim;        /* dr, e.g. 64; even */
    int32_t v_head_dim;              /* dv, e.g. 128 */
    int32_t rope_interleave;         /* 1: RoPE pairs are (x0,x1),(x2,x3)... (DeepSeek); 0: halves */
    int32_t rope_scaling;            /* mla_rope_scaling */
    int32_t max_position_embeddings; /* e.g. 163840 */
    int32_t original_max_position_embeddings; /* YaRN; 0 = absent (max_position_embeddings used) */
    double rope_theta;               /* base, e.g. 10000 */
    double rope_factor;              /* YaRN scaling factor, e.g. 40 */
    double rope_beta_fast;           /* YaRN, default 32 */
    double rope_beta_slow;           /* YaRN, default 1 */
    double rope_mscale;              /* YaRN; 0 = absent */
    double rope_mscale_all_dim;      /* YaRN; 0 = absent */
    double rope_attention_factor;    /* YaRN; 0 = absent (derived from the mscales, as transformers) */
    int32_t rope_truncate;           /* YaRN: 1 (default) rounds the correction range as transformers */
    int32_t reserved0;               /* must be 0 */
    double rms_norm_eps;             /* e.g. 1e-6 */
    double softmax_scale;            /* 0 = derive: (dn+dr)^-0.5 * yarn_mscale(factor, mscale_all_dim)^2 */
} mla_config;

/* Fills *config with DeepSeek-V3's attention configuration (7168 / 128 heads / q_lora 1536 /
 * 512 / 128 / 64 / 128, YaRN x40, mscale 1, interleaved) and struct_size.
 * Returns MLA_ERROR_INVALID_ARGUMENT if config is NULL. */
MLA_API mla_status mla_config_init(mla_config* config);

/* Checks every field; the error message names the first bad field and its value.
 * Returns MLA_OK or MLA_ERROR_INVALID_ARGUMENT. */
MLA_API mla_status mla_config_validate(const mla_config* config);

/* Writes the softmax scale the attention applies (softmax_scale if non-zero, else derived).
 * Returns MLA_OK or MLA_ERROR_INVALID_ARGUMENT (config invalid or out NULL). */
MLA_API mla_status mla_config_softmax_scale(const mla_config* config, double* out);

/* Writes the RoPE tables transformers uses for the given positions: cos and sin, host f32
 * [count, qk_rope_head_dim] each, in the half-split (rotate_half) layout, attention factor
 * included. positions: host [count], each >= 0. Returns MLA_OK or MLA_ERROR_INVALID_ARGUMENT. */
MLA_API mla_status mla_config_rope_tables(const mla_config* config, const int32_t* positions,
                                          int32_t count, float* cos_out, float* sin_out);

/* ---------------------------------------------------------------------------------------------
 * Context: a backend (CPU or one CUDA device) and its resources (CPU worker threads)
 * ------------------------------------------------------------------------------------------- */

typedef struct mla_context mla_context;

typedef struct mla_context_options {
    uint32_t struct_size;  /* sizeof(mla_context_options) */
    int32_t backend;       /* mla_backend, default MLA_BACKEND_CPU */
    int32_t device;        /* CUDA device ordinal, default 0; ignored by the CPU backend */
    int32_t num_threads;   /* CPU worker threads, default 0 = one per online core */
    int32_t simd;          /* mla_simd, default MLA_SIMD_AUTO; forcing one the CPU lacks fails */
} mla_context_options;

/* Fills *options with the defaults above. Returns MLA_ERROR_INVALID_ARGUMENT if NULL. */
MLA_API mla_status mla_context_options_init(mla_context_options* options);

/* Creates a context. options may be NULL (defaults). On success *out owns the context.
 * Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT, MLA_ERROR_UNSUPPORTED (backend not built in, or
 * SIMD level missing), MLA_ERROR_DEVICE (no such GPU), MLA_ERROR_OUT_OF_MEMORY. */
MLA_API mla_status mla_context_create(const mla_context_options* options, mla_context** out);

/* Destroys a context; NULL is a no-op. Layers and caches created in it must be destroyed first. */
MLA_API void mla_context_destroy(mla_context* context);

/* Writes a one-line, NUL-terminated description ("cpu avx512 threads=2", "cuda:0 NVIDIA H100
 * sm_90") into buf, truncated to buf_len - 1 bytes. Returns MLA_ERROR_INVALID_ARGUMENT if
 * context or buf is NULL or buf_len is 0. */
MLA_API mla_status mla_context_describe(const mla_context* context, char* buf, size_t buf_len);

/* Writes the context's backend (mla_backend) to *out. */
MLA_API mla_status mla_context_backend(const mla_context* context, int32_t* out);

/* ---------------------------------------------------------------------------------------------
 * Paged latent cache
 *
 * Memory: [num_blocks, block_size, kv_lora_rank + rope_dim]; one token's entry is the latent c
 * (after kv_a_layernorm) followed by the rotated RoPE key (half-split layout), in the cache
 * dtype. Which blocks belong to which sequence is the caller's business: every call that reads
 * or writes the cache takes per-sequence block tables.
 * ------------------------------------------------------------------------------------------- */

/* Describes paged cache memory without owning it (the kernel level accepts caller memory). */
typedef struct mla_cache_view {
    void* data;            /* backend memory, [num_blocks, block_size, kv_lora_rank + rope_dim] */
    int32_t dtype;         /* MLA_DTYPE_BF16 or MLA_DTYPE_F32 */
    int32_t num_blocks;    /* >= 1 */
    int32_t block_size;    /* tokens per block, a power of two */
    int32_t kv_lora_rank;  /* dc */
    int32_t rope_dim;      /* dr */
    int32_t reserved0;     /* must be 0 */
} mla_cache_view;

typedef struct mla_cache mla_cache;

typedef struct mla_cache_options {
    uint32_t struct_size;  /* sizeof(mla_cache_options) */
    int32_t dtype;         /* default MLA_DTYPE_BF16; MLA_DTYPE_F32 also accepted */
    int32_t block_size;    /* default 64; any power of two from 1 to 4096 */
    int32_t num_blocks;    /* default 0: must be set (>= 1) */
    int32_t kv_lora_rank;  /* default 512 */
    int32_t rope_dim;      /* default 64 */
} mla_cache_options;

/* Fills *options with the defaults above. */
MLA_API mla_status mla_cache_options_init(mla_cache_options* options);

/* Allocates a cache in the context's memory (zero-filled). On success *out owns it.
 * Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT, MLA_ERROR_OUT_OF_MEMORY, MLA_ERROR_DEVICE. */
MLA_API mla_status mla_cache_create(mla_context* context, const mla_cache_options* options,
                                    mla_cache** out);

/* Destroys a cache and frees its memory; NULL is a no-op. */
MLA_API void mla_cache_destroy(mla_cache* cache);

/* Writes the view of the cache's own memory to *out (the view does not own it; it is valid
 * until mla_cache_destroy). */
MLA_API mla_status mla_cache_get_view(const mla_cache* cache, mla_cache_view* out);

/* Size in bytes of one token's entry and of the whole cache memory. */
MLA_API mla_status mla_cache_bytes(const mla_cache* cache, size_t* bytes_per_token,
                                   size_t* total_bytes);

/* Reads tokens [start, start + count) of one sequence, converted to f32, into host buffers:
 * latent_out [count, kv_lora_rank], rope_out [count, rope_dim] (either may be NULL).
 * block_table: host [ceil((start + count) / block_size)] block ids of the sequence.
 * Synchronizes with the context's GPU (for tests and debugging, not for the hot path).
 * Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT (a block id out of range, negative start/count). */
MLA_API mla_status mla_cache_read(const mla_cache* cache, const int32_t* block_table,
                                  int32_t start, int32_t count, float* latent_out,
                                  float* rope_out);

/* Copies whole blocks src_blocks[i] -> dst_blocks[i] (host arrays [count]) inside the cache, e.g.
 * the partly filled last block of a forked sequence. stream: cudaStream_t or NULL (CUDA). */
MLA_API mla_status mla_cache_copy_blocks(mla_cache* cache, const int32_t* src_blocks,
                                         const int32_t* dst_blocks, int32_t count, void* stream);

/* ---------------------------------------------------------------------------------------------
 * Kernel level 1: compression (kv_a output -> cache)
 * ------------------------------------------------------------------------------------------- */

typedef struct mla_compress_params {
    uint32_t struct_size;          /* sizeof(mla_compress_params) */
    int32_t num_tokens;            /* T >= 0 */
    const void* kv_a;              /* backend [T, kv_a_stride]: kv_a_proj_with_mqa output, the raw
                                      latent (kv_lora_rank) then the raw RoPE key (rope_dim) */
    int32_t kv_a_dtype;            /* MLA_DTYPE_F32 or MLA_DTYPE_BF16 */
    int32_t reserved0;             /* must be 0 */
    int64_t kv_a_stride;           /* elements between rows, >= kv_lora_rank + rope_dim */
    const void* norm_weight;       /* backend [kv_lora_rank]: kv_a_layernorm.weight */
    int32_t norm_weight_dtype;     /* MLA_DTYPE_F32 or MLA_DTYPE_BF16 */
    int32_t reserved1;             /* must be 0 */
    const int32_t* positions;      /* backend [T]: RoPE position of each token, >= 0 */
    const int64_t* slot_mapping;   /* backend [T]: block * block_size + offset; < 0 = skip */
    mla_cache_view cache;          /* destination */
} mla_compress_params;

/* Fills *params with zeros/NULLs and struct_size. */
MLA_API mla_status mla_compress_params_init(mla_compress_params* params);

/* One fused pass per token: RMSNorm(latent) * norm_weight, RoPE(k_rope) with the config's
 * scaling and interleave, both written to the token's cache slot in the cache dtype.
 * config supplies rms_norm_eps, the RoPE parameters, kv_lora_rank and qk_rope_head_dim, which must
 * match the cache view. A slot >= num_blocks * block_size fails with MLA_ERROR_CACHE_FULL before
 * anything is written. On CUDA the call is asynchronous on stream (NULL = default stream) and
 * device-side values (positions, slots) are not checked. */
MLA_API mla_status mla_compress(mla_context* context, const mla_config* config,
                                const mla_compress_params* params, void* stream);

/* ---------------------------------------------------------------------------------------------
 * Kernel level 2: absorbed attention over the paged cache (plan / run)
 *
 * For sequence b with n_b = qo_indptr[b+1] - qo_indptr[b] query tokens and L_b = seq_lens[b] keys
 * (the new tokens' entries included, already written), query token j (0 <= j < n_b) attends to
 * keys [0, L_b - n_b + j] when causal, else to all L_b keys. Scores are
 *   softmax_scale * (q[:, :dc] . c + q[:, dc:] . k_rope),
 * out is the softmax-weighted sum of the latents c, and lse the natural log-sum-exp of the scaled
 * scores. A query that sees no key (L_b = 0) yields out = 0 and lse = +inf.
 * ------------------------------------------------------------------------------------------- */

typedef struct mla_attention_params {
    uint32_t struct_size;          /* sizeof(mla_attention_params) */
    int32_t num_seqs;              /* B >= 1 */
    int32_t num_tokens;            /* T = qo_indptr[B] */
    int32_t num_heads;             /* H >= 1 */
    int32_t causal;                /* 1 (default) or 0 */
    int32_t block_table_stride;    /* entries per block_table row */
    int32_t q_dtype;               /* MLA_DTYPE_F32 or MLA_DTYPE_BF16 */
    int32_t out_dtype;             /* MLA_DTYPE_F32 or MLA_DTYPE_BF16 */
    float softmax_scale;           /* > 0 */
    int32_t reserved0;             /* must be 0 */
    const void* q;                 /* backend [T, H, kv_lora_rank + rope_dim] absorbed queries */
    const int32_t* qo_indptr;      /* backend [B+1], qo_indptr[0] = 0, non-decreasing */
    const int32_t* seq_lens;       /* backend [B], L_b >= n_b (0 allowed when n_b = 0 or 1) */
    const int32_t* block_table;    /* backend [B, block_table_stride] */
    mla_cache_view cache;
    void* out;                     /* backend [T, H, kv_lora_rank] */
    float* lse;                    /* backend [T, H] f32, or NULL */
} mla_attention_params;

/* Fills *params with zeros/NULLs, causal = 1, dtypes F32, and struct_size. */
MLA_API mla_status mla_attention_params_init(mla_attention_params* params);

/* Sizes of the caller-owned buffers for batches of at most max_num_seqs sequences and
 * max_num_tokens query tokens with num_heads heads, kv_lora_rank latent width and rope_dim RoPE
 * width (the cache's): metadata
 * (scheduling, written by plan) and workspace (split-KV partials, used by run), in backend
 * memory. Either out-parameter may be NULL. Sizes depend on these arguments and the device only,
 * never on sequence lengths, so one allocation serves every step (and a captured CUDA graph). */
MLA_API mla_status mla_attention_workspace_size(mla_context* context, int32_t max_num_seqs,
                                                int32_t max_num_tokens, int32_t num_heads,
                                                int32_t kv_lora_rank, int32_t rope_dim,
                                                size_t* metadata_bytes, size_t* workspace_bytes);

/* Computes the split-KV schedule for params' batch into metadata. The schedule depends on
 * num_seqs, num_tokens, num_heads, qo_indptr and seq_lens only: it may be reused by every layer
 * of one step, and params.q, params.out and params.lse may be NULL here. Does not allocate. On
 * CUDA asynchronous on stream and capturable in a graph.
 * Returns MLA_ERROR_BUFFER_TOO_SMALL when metadata_bytes is below the size for this batch. */
MLA_API mla_status mla_attention_plan(mla_context* context, const mla_attention_params* params,
                                      void* metadata, size_t metadata_bytes, void* stream);

/* Runs the attention with a schedule made by mla_attention_plan for the same batch. Never
 * allocates. On CUDA asynchronous on stream and capturable in a graph; block ids and lengths
 * that live in device memory are not checked there (the CPU backend checks them and fails with
 * MLA_ERROR_INVALID_ARGUMENT or MLA_ERROR_CACHE_FULL before writing anything). */
MLA_API mla_status mla_attention_run(mla_context* context, const mla_attention_params* params,
                                     const void* metadata, size_t metadata_bytes, void* workspace,
                                     size_t workspace_bytes, void* stream);

/* ---------------------------------------------------------------------------------------------
 * Layer level
 * ------------------------------------------------------------------------------------------- */

/* One weight tensor in PyTorch's [out_features, in_features] layout, row-major, host memory. */
typedef struct mla_weight {
    const void* data;              /* host [rows, cols]; NULL = not given */
    int32_t dtype;                 /* mla_dtype */
    int32_t reserved0;             /* must be 0 */
    int64_t rows;                  /* out_features (vector length for norm weights) */
    int64_t cols;                  /* in_features (1 for norm weights) */
    const float* scale_inv;        /* FP8 only: host f32 [ceil(rows/128), ceil(cols/128)], the
                                      checkpoint's weight_scale_inv: w = fp8 * scale_inv */
} mla_weight;

/* The attention module's parameters under transformers' names. q_a_proj, q_a_layernorm and
 * q_b_proj are used when q_lora_rank > 0, q_proj when it is 0; the others always. Norm weights
 * are vectors (cols = 1) and may not be FP8. */
typedef struct mla_layer_weights {
    uint32_t struct_size;          /* sizeof(mla_layer_weights) */
    int32_t reserved0;             /* must be 0 */
    mla_weight q_a_proj;           /* [q_lora_rank, hidden_size] */
    mla_weight q_a_layernorm;      /* [q_lora_rank] */
    mla_weight q_b_proj;           /* [num_heads * (qk_nope_head_dim + qk_rope_head_dim), q_lora_rank] */
    mla_weight q_proj;             /* [num_heads * (qk_nope_head_dim + qk_rope_head_dim), hidden_size] */
    mla_weight kv_a_proj_with_mqa; /* [kv_lora_rank + qk_rope_head_dim, hidden_size] */
    mla_weight kv_a_layernorm;     /* [kv_lora_rank] */
    mla_weight kv_b_proj;          /* [num_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank] */
    mla_weight o_proj;             /* [hidden_size, num_heads * v_head_dim] */
} mla_layer_weights;

/* Fills *weights with NULL tensors and struct_size. */
MLA_API mla_status mla_layer_weights_init(mla_layer_weights* weights);

typedef struct mla_layer_options {
    uint32_t struct_size;          /* sizeof(mla_layer_options) */
    int32_t head_begin;            /* first head of this tensor-parallel slice, default 0 */
    int32_t head_end;              /* one past its last head; default 0 = num_heads */
    /* The fields below were appended later: a struct_size of 12 (the struct up to head_end, as
     * older headers define it) is accepted and means no progress callback.
     *
     * Progress of mla_layer_create, default NULL (none). Units: bytes of the layer's prepared
     * weights in the context's memory (bf16 or f32 as the backend keeps them), so bytes_total is
     * the layer's weight footprint there; it is the same in every call. Called on the thread
     * that called mla_layer_create, never concurrently, with bytes_done increasing strictly from
     * call to call; the last call of a successful create has bytes_done == bytes_total. When it
     * is called: CUDA, after each staged chunk (16 MiB or less, unless one row is larger) has
     * reached the device; CPU, after each prepared tensor. Returning non-zero cancels the
     * create: it frees everything it allocated, writes nothing to *out and returns
     * MLA_ERROR_CANCELLED (also when the callback returns non-zero at bytes_done ==
     * bytes_total). The callback must not destroy the context. */
    int32_t (*progress)(void* user_data, uint64_t bytes_done, uint64_t bytes_total);
    void* progress_user_data;      /* passed to progress as user_data, default NULL */
} mla_layer_options;

/* Fills *options with the defaults above. */
MLA_API mla_status mla_layer_options_init(mla_layer_options* options);

typedef struct mla_layer mla_layer;

/* Builds a layer: validates config and every weight's dtype and shape, then keeps its own
 * prepared copy (W_UK and W_UV split from kv_b_proj, the slice's heads only, FP8 dequantized) in
 * the context's memory; the caller may free the weights afterwards. Weights are always the full
 * model's tensors; a layer for heads [head_begin, head_end) uses their rows/columns of q_b_proj
 * (or q_proj), kv_b_proj and o_proj, and its forward output is that slice's partial o_proj sum:
 * the sum over slices covering all heads equals the full layer. options may be NULL.
 * Weights are read while the call runs and never afterwards (the host copy of a memory-mapped
 * checkpoint may be unmapped once it returns). Host memory: the CPU backend converts each tensor
 * straight into the layer's own copy; the CUDA backend converts chunks into a bounded pinned
 * staging buffer (2 x 16 MiB) and copies them to the device, keeping no host copy of the layer.
 * Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT, MLA_ERROR_OUT_OF_MEMORY, MLA_ERROR_DEVICE,
 * MLA_ERROR_CANCELLED (options->progress asked to stop). */
MLA_API mla_status mla_layer_create(mla_context* context, const mla_config* config,
                                    const mla_layer_weights* weights,
                                    const mla_layer_options* options, mla_layer** out);

/* Destroys a layer; NULL is a no-op. */
MLA_API void mla_layer_destroy(mla_layer* layer);

/* Writes the layer's config (with its head range) to the out-parameters; either may be NULL. */
MLA_API mla_status mla_layer_get_config(const mla_layer* layer, mla_config* config_out,
                                        int32_t* head_begin_out, int32_t* head_end_out);

/* A ragged batch: B sequences, each with n_b new tokens (a prefill chunk or decode tokens)
 * appended after cache_lens[b] tokens it already has in the cache. All arrays are host memory,
 * for both backends. */
typedef struct mla_batch {
    uint32_t struct_size;          /* sizeof(mla_batch) */
    int32_t num_seqs;              /* B >= 1 */
    int32_t num_tokens;            /* T = qo_indptr[B] >= 0 */
    int32_t block_table_stride;    /* entries per block_table row (max blocks per sequence) */
    const int32_t* qo_indptr;      /* [B+1]: rows qo_indptr[b] .. qo_indptr[b+1]-1 of hidden/out */
    const int32_t* cache_lens;     /* [B]: tokens of sequence b already in the cache */
    const int32_t* positions;      /* [T]: RoPE position of each new token, >= 0; NULL = the
                                      token's index in its sequence (cache_lens[b] + j) */
    const int32_t* block_table;    /* [B, block_table_stride]: sequence b's blocks in order */
} mla_batch;

/* Fills *batch with zeros/NULLs and struct_size. */
MLA_API mla_status mla_batch_init(mla_batch* batch);

/* Runs the layer on a ragged batch. hidden: backend [T, hidden_size] (F32 or BF16); out: backend
 * [T, hidden_size] (F32 or BF16). Token j of sequence b is written to cache slot cache_lens[b] + j
 * of that sequence and attends causally to slots [0, cache_lens[b] + j]. Every slot must be
 * covered by the sequence's block table (else MLA_ERROR_CACHE_FULL, nothing written) and every
 * block id must be in [0, num_blocks). The cache must match the layer (kv_lora_rank, rope dim)
 * and live in the layer's context. Synchronous on the CPU; on CUDA asynchronous on stream.
 * Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT, MLA_ERROR_CACHE_FULL, MLA_ERROR_OUT_OF_MEMORY,
 * MLA_ERROR_DEVICE. */
MLA_API mla_status mla_layer_forward(mla_layer* layer, mla_cache* cache, const mla_batch* batch,
                                     const void* hidden, int32_t hidden_dtype, void* out,
                                     int32_t out_dtype, void* stream);

/* ---------------------------------------------------------------------------------------------
 * Backend memory and streams
 *
 * For engines (and bindings) that keep activations in the context's memory: a mla_buffer is a
 * byte range of backend memory (device memory of the context's GPU for a CUDA context, host memory
 * for a CPU context) that is either owned by the buffer or wrapped from a pointer the caller owns.
 * Its pointer (mla_buffer_data) is what the "backend" arguments above take. Streams are opaque
 * handles: a cudaStream_t created on the context's device for CUDA, a token without effect for
 * the CPU backend (every CPU call is synchronous), so the same code runs on both.
 * ------------------------------------------------------------------------------------------- */

typedef struct mla_buffer mla_buffer;

/* Allocates bytes (>= 1) of zero-filled backend memory in the context; on success *out owns it.
 * The buffer keeps no reference to the context past its memory: destroy buffers before their
 * context. Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT (context/out NULL, bytes 0),
 * MLA_ERROR_OUT_OF_MEMORY, MLA_ERROR_DEVICE. */
MLA_API mla_status mla_buffer_create(mla_context* context, size_t bytes, mla_buffer** out);

/* Wraps bytes (>= 1) of backend memory at data, which the caller owns and keeps valid until the
 * buffer is destroyed; mla_buffer_destroy frees the handle only, never data. A CUDA context checks
 * with the runtime that data is device (or managed) memory of its own device and fails with
 * MLA_ERROR_INVALID_ARGUMENT naming data for host memory or another device's; a CPU context takes
 * any non-NULL pointer as host memory (it cannot check the range). On success *out owns the handle.
 * Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT, MLA_ERROR_DEVICE. */
MLA_API mla_status mla_buffer_wrap(mla_context* context, void* data, size_t bytes, mla_buffer** out);

/* Destroys a buffer: frees its memory when it owns it; NULL is a no-op. Work still queued on a
 * stream that uses the memory must be complete (synchronize first). */
MLA_API void mla_buffer_destroy(mla_buffer* buffer);

/* Writes the buffer's backend pointer and size in bytes; either out-parameter may be NULL. The
 * pointer is device memory on CUDA: never dereference it on the host there. */
MLA_API mla_status mla_buffer_data(const mla_buffer* buffer, void** data, size_t* bytes);

/* Copies bytes from host memory into the buffer at byte offset. stream: from mla_stream_create
 * of the buffer's context, or NULL (the default stream). host may be reused as soon as the call
 * returns; the copy is ordered after work queued earlier on stream. On CUDA the call waits for
 * neither that work nor the copy when host is pageable memory (the driver stages it before
 * returning); from page-locked (pinned) host memory it waits until the copy is done.
 * Fails with MLA_ERROR_INVALID_ARGUMENT before copying anything when offset + bytes exceeds the
 * buffer or host is NULL with bytes > 0; bytes 0 is a no-op. */
MLA_API mla_status mla_buffer_upload(mla_buffer* buffer, size_t offset, const void* host,
                                     size_t bytes, void* stream);

/* Copies bytes of the buffer from byte offset into host memory, after the work queued on stream
 * (NULL = default stream) before it: synchronizes with stream. Same checks as mla_buffer_upload;
 * host is written only on success. */
MLA_API mla_status mla_buffer_download(const mla_buffer* buffer, size_t offset, void* host,
                                       size_t bytes, void* stream);

/* Creates a stream on the context's device (CUDA: a non-blocking cudaStream_t; CPU: a token that
 * the CPU backend ignores) and writes it to *out; release it with mla_stream_destroy on the same
 * context. Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT, MLA_ERROR_DEVICE, MLA_ERROR_OUT_OF_MEMORY. */
MLA_API mla_status mla_stream_create(mla_context* context, void** out);

/* Destroys a stream made by mla_stream_create on this context (after the work queued on it
 * completes, on CUDA); NULL is a no-op, as is a NULL context. */
MLA_API void mla_stream_destroy(mla_context* context, void* stream);

/* Waits until all work queued on stream (NULL = the default stream) is complete; a no-op on the
 * CPU. Returns MLA_OK, MLA_ERROR_INVALID_ARGUMENT (context NULL), MLA_ERROR_DEVICE (an earlier
 * asynchronous failure, reported here). */
MLA_API mla_status mla_stream_synchronize(mla_context* context, void* stream);

/* Memory figures for leak checks. used_by_library: bytes of caches and owned buffers currently
 * allocated in this context (layers' prepared weights are not counted). device_free and
 * device_total: cudaMemGetInfo of the context's GPU for CUDA (all processes), available and total
 * physical memory of the host for the CPU. Any out-parameter may be NULL. Thread-safe. */
MLA_API mla_status mla_context_memory_info(const mla_context* context, size_t* used_by_library,
                                           size_t* device_free, size_t* device_total);

#ifdef __cplusplus
}
#endif

#endif /* MLA_H */
