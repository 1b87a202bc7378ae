/* mla-example: one MLA layer through the C ABI alone (C99).
 *
 * Builds a small layer from seeded random weights, prefills a prompt into a paged bf16 cache,
 * then decodes token by token (each step's input is the previous step's output). Finally it
 * recomputes the whole sequence as a single prefill into a fresh cache and checks that the
 * decode steps produced the same outputs: the cache holds exactly what attention needs.
 * Exit status 0 on success, 1 on any failed call or mismatch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mla.h"

enum { HIDDEN = 256, HEADS = 4, LATENT = 128, NOPE = 32, ROPE = 16, VDIM = 32 };
enum { PROMPT = 24, DECODE = 8, TOTAL = PROMPT + DECODE, BLOCK = 16, BLOCKS = 2 };

/* Calls an API function; on failure prints the status and message, and jumps to cleanup. */
#define TRY(call)                                                                          \
    do {                                                                                   \
        mla_status st_ = (call);                                                           \
        if (st_ != MLA_OK) {                                                               \
            fprintf(stderr, "%s\n  -> %s: %s\n", #call, mla_status_string(st_), mla_last_error()); \
            goto cleanup;                                                                  \
        }                                                                                  \
    } while (0)

static unsigned long long rng_state = 42;
static float uniform(void) { /* xorshift64*, in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((rng_state * 2685821657736338717ULL) >> 40) / 8388608.0f - 1.0f;
}
static float* random_matrix(mla_weight* w, int64_t rows, int64_t cols, float mean, float spread) {
    float* m = malloc((size_t)(rows * cols) * sizeof *m);
    int64_t i;
    if (!m) return NULL;
    for (i = 0; i < rows * cols; ++i) m[i] = mean + spread * uniform();
    w->data = m;
    w->dtype = MLA_DTYPE_F32;
    w->rows = rows;
    w->cols = cols;
    return m;
}
static double rms(const float* x, int n) {
    double s = 0;
    int i;
    for (i = 0; i < n; ++i) s += (double)x[i] * x[i];
    return sqrt(s / n);
}

int main(void) {
    mla_config cfg;
    mla_layer_weights w;
    mla_cache_options co;
    mla_context* ctx = NULL;
    mla_layer* layer = NULL;
    mla_cache* cache = NULL;
    mla_cache* check_cache = NULL;
    float* mats[5] = {NULL, NULL, NULL, NULL, NULL};
    static float hidden[TOTAL][HIDDEN], out[TOTAL][HIDDEN], check_out[TOTAL][HIDDEN];
    int32_t table[BLOCKS] = {1, 0}; /* any blocks, in sequence order */
    int32_t qo[2], cache_len[1];
    mla_batch batch;
    char desc[128];
    double max_diff = 0, max_ref = 0;
    int i, t, ok = 0;

    TRY(mla_config_init(&cfg)); /* DeepSeek-V3 defaults (YaRN RoPE), shrunk below */
    cfg.hidden_size = HIDDEN;
    cfg.num_heads = HEADS;
    cfg.q_lora_rank = 0;
    cfg.kv_lora_rank = LATENT;
    cfg.qk_nope_head_dim = NOPE;
    cfg.qk_rope_head_dim = ROPE;
    cfg.v_head_dim = VDIM;
    TRY(mla_layer_weights_init(&w));
    mats[0] = random_matrix(&w.q_proj, HEADS * (NOPE + ROPE), HIDDEN, 0.0f, 0.1f);
    mats[1] = random_matrix(&w.kv_a_proj_with_mqa, LATENT + ROPE, HIDDEN, 0.0f, 0.1f);
    mats[2] = random_matrix(&w.kv_a_layernorm, LATENT, 1, 1.0f, 0.1f);
    mats[3] = random_matrix(&w.kv_b_proj, HEADS * (NOPE + VDIM), LATENT, 0.0f, 0.15f);
    mats[4] = random_matrix(&w.o_proj, HIDDEN, HEADS * VDIM, 0.0f, 0.15f);
    for (i = 0; i < 5; ++i)
        if (!mats[i]) { fprintf(stderr, "out of memory\n"); goto cleanup; }

    TRY(mla_context_create(NULL, &ctx));
    TRY(mla_context_describe(ctx, desc, sizeof desc));
    TRY(mla_layer_create(ctx, &cfg, &w, NULL, &layer)); /* the layer keeps its own copy */
    TRY(mla_cache_options_init(&co));
    co.block_size = BLOCK;
    co.num_blocks = BLOCKS;
    co.kv_lora_rank = LATENT;
    co.rope_dim = ROPE;
    TRY(mla_cache_create(ctx, &co, &cache));
    TRY(mla_cache_create(ctx, &co, &check_cache));
    printf("context: %s\nlayer: hidden %d, %d heads, latent %d, rope %d; bf16 cache of %d x %d tokens\n", desc,
           HIDDEN, HEADS, LATENT, ROPE, BLOCKS, BLOCK);

    for (t = 0; t < PROMPT; ++t)
        for (i = 0; i < HIDDEN; ++i) hidden[t][i] = uniform();
    TRY(mla_batch_init(&batch));
    batch.num_seqs = 1;
    batch.block_table_stride = BLOCKS;
    batch.qo_indptr = qo;
    batch.cache_lens = cache_len;
    batch.block_table = table; /* positions NULL: each token's index in the sequence */

    /* Prefill: the whole prompt in one call. */
    qo[0] = 0;
    qo[1] = batch.num_tokens = PROMPT;
    cache_len[0] = 0;
    TRY(mla_layer_forward(layer, cache, &batch, hidden[0], MLA_DTYPE_F32, out[0], MLA_DTYPE_F32, NULL));
    printf("prefill %d tokens: output rms %.4f\n", PROMPT, rms(out[PROMPT - 1], HIDDEN));

    /* Decode: one token per call, attending to everything cached so far. */
    for (t = PROMPT; t < TOTAL; ++t) {
        memcpy(hidden[t], out[t - 1], sizeof hidden[t]);
        qo[1] = batch.num_tokens = 1;
        cache_len[0] = t;
        TRY(mla_layer_forward(layer, cache, &batch, hidden[t], MLA_DTYPE_F32, out[t], MLA_DTYPE_F32, NULL));
        printf("decode step %d (position %d): output rms %.4f\n", t - PROMPT + 1, t, rms(out[t], HIDDEN));
    }

    /* Check: all TOTAL inputs as one prefill must reproduce the decoded outputs. */
    qo[1] = batch.num_tokens = TOTAL;
    cache_len[0] = 0;
    TRY(mla_layer_forward(layer, check_cache, &batch, hidden[0], MLA_DTYPE_F32, check_out[0], MLA_DTYPE_F32, NULL));
    for (t = 0; t < TOTAL; ++t)
        for (i = 0; i < HIDDEN; ++i) {
            double d = fabs((double)out[t][i] - check_out[t][i]);
            if (!(d <= max_diff)) max_diff = d; /* NaN propagates */
            if (fabs(check_out[t][i]) > max_ref) max_ref = fabs(check_out[t][i]);
        }
    ok = max_ref > 0 && max_diff <= 1e-3 * max_ref;
    printf("prefill+decode vs one prefill of %d tokens: max |diff| %.3g (max |out| %.3g): %s\n", TOTAL, max_diff,
           max_ref, ok ? "match" : "MISMATCH");

cleanup:
    mla_cache_destroy(check_cache);
    mla_cache_destroy(cache);
    mla_layer_destroy(layer);
    mla_context_destroy(ctx);
    for (i = 0; i < 5; ++i) free(mats[i]);
    return ok ? 0 : 1;
}
