/*
 * mla-bench-abi: one decode step driven through the public C ABI only, the C side of the Java API
 * benchmark (java-api/src/test/java/dev/mla4j/bench/GpuStepBench.java does the same work through
 * the Java API; scripts/gpu-java-bench.sh runs both and joins their CSV rows).
 *
 * Work, per batch size B (default 1 and 128), on a CUDA context:
 *   - DeepSeek-V3 attention layer (mla_config_init: hidden 7168, 128 heads, q_lora 1536, kv_lora
 *     512, nope 128, rope 64, v 128, YaRN x40) with seeded random bf16 weights;
 *   - a bf16 paged cache, 64 tokens per block; every sequence gets `cached` tokens (default 4095)
 *     written by mla_compress from random kv_a rows; block ids are handed out in the order the Java
 *     LatentCache allocator uses (sequence by sequence, then new blocks in sequence order);
 *   - layer_step: mla_layer_forward of one new token per sequence, bf16 hidden/out in device
 *     memory, on a stream; the host batch arrays are rebuilt for every call (the lengths grow by
 *     one per call, as an engine's step does: from `cached` to cached + reps * iters + single);
 *     its warm-up calls run on B other sequences in a second cache (empty at first, emptied again
 *     at 1024 tokens), so the timed calls start at `cached` tokens;
 *   - attention_run: mla_attention_run over B sequences of cached + 1 keys, one query token each,
 *     bf16 q/out in device memory, index arrays in device memory, planned once before timing.
 * Timing, the same for both operations: warm-up calls and a synchronize (at least `warmup`,
 * default 2000, layer steps or `warmup-kernel`, default 20000, attention runs, and more until
 * `warmup-seconds`, default 2, have passed, so that the JVM's optimizing JIT has compiled the
 * Java side's path); then `reps` times
 * { `iters` calls back to back on the stream, one synchronize } -> per-call time (median and min
 * over reps); then `single` times { one call, synchronize } -> latency (median and min).
 * Clock: clock_gettime(CLOCK_MONOTONIC) (System.nanoTime on the Java side).
 *
 * Output: CSV rows on stdout (header first), progress and checks on stderr:
 *   impl,op,batch,cached,iters,reps,per_call_us,per_call_min_us,single_us,single_min_us,device
 *
 * usage: mla-bench-abi [--batches 1,128] [--cached N] [--iters N] [--reps N] [--warmup N]
 *                      [--warmup-kernel N] [--warmup-seconds N] [--single N] [--device N] [--cpu]
 *   --cpu   runs on the CPU backend with small shapes (hidden 256, 4 heads, latent 128, rope 16,
 *           cached 200 unless given) to check the program itself where no GPU is.
 * Exit status: 0 on success, 77 when no CUDA device can be used (the reason is printed), 2 for
 * bad arguments, 1 for any other failure (the libmla message is printed).
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mla.h"

#define BLOCK_SIZE 64
#define MAX_BATCHES 16
/* Length at which the layer_step warm-up sequences start again empty. */
#define WARM_TOKENS 1024

static void die(const char* what, mla_status st) {
    fprintf(stderr, "mla-bench-abi: %s: %s: %s\n", what, mla_status_string(st), mla_last_error());
    exit(1);
}
#define CALL(expr)                          \
    do {                                    \
        mla_status st_ = (expr);            \
        if (st_ != MLA_OK) die(#expr, st_); \
    } while (0)

static void* xmalloc(size_t bytes) {
    void* p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "mla-bench-abi: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* ---- seeded values, bit-identical to GpuStepBench's ---- */

static uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* bf16 of f by round to nearest even (no NaN inputs here). */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* n bf16 values uniform in [-scale, scale) from seed. */
static void fill_bf16(uint16_t* dst, size_t n, uint64_t seed, double scale) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; ++i) {
        double u = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;
        dst[i] = to_bf16((float)((2.0 * u - 1.0) * scale));
    }
}

static double bf16_to_double(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- statistics ---- */

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

/* Sorts v and returns its median. */
static double median(double* v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- the run ---- */

typedef struct options {
    int batches[MAX_BATCHES];
    int num_batches;
    int cached;
    int iters, reps, warmup, warmup_kernel, single;
    double warmup_seconds;
    int device;
    int cpu;
} options;

static int parse_int(const char* s, const char* name, int min) {
    char* end = NULL;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || v < min || v > 1000000000L) {
        fprintf(stderr, "mla-bench-abi: %s = '%s', expected an integer >= %d\n", name, s, min);
        exit(2);
    }
    return (int)v;
}

static void parse(int argc, char** argv, options* o) {
    o->num_batches = 2;
    o->batches[0] = 1;
    o->batches[1] = 128;
    o->cached = -1;
    o->iters = 20;
    o->reps = 5;
    o->warmup = 2000;
    o->warmup_kernel = 20000;
    o->warmup_seconds = 2.0;
    o->single = 20;
    o->device = 0;
    o->cpu = 0;
    for (int i = 1; i < argc; ++i) {
        const char* a = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--cpu")) {
            o->cpu = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "mla-bench-abi: unknown or incomplete argument '%s' (see the usage at the top of "
                            "bench_abi_step.c)\n", a);
            exit(2);
        }
        ++i;
        if (!strcmp(a, "--batches")) {
            o->num_batches = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char* tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                if (o->num_batches == MAX_BATCHES) {
                    fprintf(stderr, "mla-bench-abi: at most %d batch sizes\n", MAX_BATCHES);
                    exit(2);
                }
                o->batches[o->num_batches++] = parse_int(tok, "--batches", 1);
            }
            if (!o->num_batches) parse_int("", "--batches", 1);
        } else if (!strcmp(a, "--cached")) {
            o->cached = parse_int(v, a, 1);
        } else if (!strcmp(a, "--iters")) {
            o->iters = parse_int(v, a, 1);
        } else if (!strcmp(a, "--reps")) {
            o->reps = parse_int(v, a, 1);
        } else if (!strcmp(a, "--warmup")) {
            o->warmup = parse_int(v, a, 0);
        } else if (!strcmp(a, "--warmup-kernel")) {
            o->warmup_kernel = parse_int(v, a, 0);
        } else if (!strcmp(a, "--warmup-seconds")) {
            o->warmup_seconds = parse_int(v, a, 0);
        } else if (!strcmp(a, "--single")) {
            o->single = parse_int(v, a, 1);
        } else if (!strcmp(a, "--device")) {
            o->device = parse_int(v, a, 0);
        } else {
            fprintf(stderr, "mla-bench-abi: unknown argument '%s'\n", a);
            exit(2);
        }
    }
    if (o->cached < 0) o->cached = o->cpu ? 200 : 4095;
}

/* Seeds of the tensors (shared with GpuStepBench). */
enum { SEED_WEIGHTS = 1000, SEED_KV_A = 2000, SEED_HIDDEN = 3000, SEED_Q = 4000 };

/* The host weights of one layer: the seven bf16 matrices and two norm vectors. */
typedef struct host_weights {
    uint16_t* data[8];
} host_weights;

static mla_weight make_weight(uint16_t** keep, int64_t rows, int64_t cols, uint64_t seed, int norm) {
    size_t n = (size_t)(rows * cols);
    uint16_t* d = xmalloc(n * 2);
    if (norm) {
        for (size_t i = 0; i < n; ++i) d[i] = to_bf16(1.0f);
    } else {
        fill_bf16(d, n, seed, 1.0 / sqrt((double)cols));
    }
    *keep = d;
    mla_weight w;
    memset(&w, 0, sizeof w);
    w.data = d;
    w.dtype = MLA_DTYPE_BF16;
    w.rows = rows;
    w.cols = cols;
    return w;
}

static mla_layer* create_layer(mla_context* ctx, const mla_config* c) {
    mla_layer_weights w;
    CALL(mla_layer_weights_init(&w));
    host_weights keep;
    memset(&keep, 0, sizeof keep);
    const int64_t H = c->num_heads, D = c->hidden_size, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    w.q_a_proj = make_weight(&keep.data[0], c->q_lora_rank, D, SEED_WEIGHTS + 0, 0);
    w.q_a_layernorm = make_weight(&keep.data[1], c->q_lora_rank, 1, 0, 1);
    w.q_b_proj = make_weight(&keep.data[2], H * qk, c->q_lora_rank, SEED_WEIGHTS + 2, 0);
    w.kv_a_proj_with_mqa = make_weight(&keep.data[3], c->kv_lora_rank + c->qk_rope_head_dim, D, SEED_WEIGHTS + 3, 0);
    w.kv_a_layernorm = make_weight(&keep.data[4], c->kv_lora_rank, 1, 0, 1);
    w.kv_b_proj = make_weight(&keep.data[5], H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                              SEED_WEIGHTS + 5, 0);
    w.o_proj = make_weight(&keep.data[6], D, H * c->v_head_dim, SEED_WEIGHTS + 6, 0);
    mla_layer* layer = NULL;
    CALL(mla_layer_create(ctx, c, &w, NULL, &layer));
    for (int i = 0; i < 8; ++i) free(keep.data[i]);
    return layer;
}

static mla_buffer* buffer(mla_context* ctx, size_t bytes) {
    mla_buffer* b = NULL;
    CALL(mla_buffer_create(ctx, bytes, &b));
    return b;
}

static void* data_of(mla_buffer* b) {
    void* p = NULL;
    CALL(mla_buffer_data(b, &p, NULL));
    return p;
}

static mla_buffer* upload_bf16(mla_context* ctx, size_t n, uint64_t seed, double scale) {
    uint16_t* h = xmalloc(n * 2);
    fill_bf16(h, n, seed, scale);
    mla_buffer* b = buffer(ctx, n * 2);
    CALL(mla_buffer_upload(b, 0, h, n * 2, NULL));
    free(h);
    return b;
}

/* Checks that the first n bf16 values of b are finite; returns how many are non-zero and writes
 * their sum (in index order, in double) to *sum: the same inputs give the same sum in Java. */
static size_t check_finite(const mla_buffer* b, size_t n, void* stream, const char* what, double* sum) {
    uint16_t* h = xmalloc(n * 2);
    CALL(mla_buffer_download(b, 0, h, n * 2, stream));
    size_t nonzero = 0;
    *sum = 0;
    for (size_t i = 0; i < n; ++i) {
        double v = bf16_to_double(h[i]);
        *sum += v;
        if (!isfinite(v)) {
            fprintf(stderr, "mla-bench-abi: %s[%zu] = %g is not finite\n", what, i, v);
            exit(1);
        }
        nonzero += v != 0;
    }
    free(h);
    return nonzero;
}

/* Block bookkeeping, mirroring LatentCache: free blocks handed out in increasing order. */
typedef struct seqs {
    int num_seqs, max_blocks, next_free;
    int32_t* blocks; /* [num_seqs, max_blocks] */
    int32_t* nblocks;
    int32_t* lens;
} seqs;

static void reserve(seqs* s, int seq, int64_t tokens) {
    const int64_t need = (tokens + BLOCK_SIZE - 1) / BLOCK_SIZE;
    while (s->nblocks[seq] < need) {
        if (s->nblocks[seq] == s->max_blocks) {
            fprintf(stderr, "mla-bench-abi: internal: sequence %d needs more than %d blocks\n", seq, s->max_blocks);
            exit(1);
        }
        s->blocks[(size_t)seq * s->max_blocks + s->nblocks[seq]++] = s->next_free++;
    }
}

static void seqs_init(seqs* s, int num_seqs, int max_blocks) {
    s->num_seqs = num_seqs;
    s->max_blocks = max_blocks;
    s->next_free = 0;
    s->blocks = xmalloc(sizeof(int32_t) * (size_t)num_seqs * max_blocks);
    s->nblocks = calloc((size_t)num_seqs, sizeof(int32_t));
    s->lens = calloc((size_t)num_seqs, sizeof(int32_t));
    if (!s->nblocks || !s->lens) die("calloc", MLA_ERROR_OUT_OF_MEMORY);
}

static void seqs_free(seqs* s) {
    free(s->blocks);
    free(s->nblocks);
    free(s->lens);
}

static mla_cache* cache_create(mla_context* ctx, int num_blocks, int dc, int dr) {
    mla_cache_options co;
    CALL(mla_cache_options_init(&co));
    co.dtype = MLA_DTYPE_BF16;
    co.block_size = BLOCK_SIZE;
    co.num_blocks = num_blocks;
    co.kv_lora_rank = dc;
    co.rope_dim = dr;
    mla_cache* cache = NULL;
    CALL(mla_cache_create(ctx, &co, &cache));
    return cache;
}

typedef void (*step_fn)(void* state);

typedef struct timing {
    double per_call_us, per_call_min_us, single_us, single_min_us;
} timing;

/* Warm-up: calls of warm_fn(warm_state), at least `warmup` of them and (checked every 256 calls)
 * until `seconds` have passed; then the timed calls of fn(state). */
static timing time_op(mla_context* ctx, void* stream, const options* o, int warmup, double seconds, step_fn warm_fn,
                      void* warm_state, step_fn fn, void* state) {
    const double w0 = now_ns();
    for (long i = 0;; ++i) {
        if (i >= warmup) {
            if (seconds <= 0 || i % 256 != 0) break;
            CALL(mla_stream_synchronize(ctx, stream));
            if (now_ns() - w0 >= seconds * 1e9) break;
        }
        warm_fn(warm_state);
    }
    CALL(mla_stream_synchronize(ctx, stream));
    double* per = xmalloc(sizeof(double) * (size_t)o->reps);
    for (int r = 0; r < o->reps; ++r) {
        const double t0 = now_ns();
        for (int i = 0; i < o->iters; ++i) fn(state);
        CALL(mla_stream_synchronize(ctx, stream));
        per[r] = (now_ns() - t0) / 1e3 / o->iters;
    }
    double* one = xmalloc(sizeof(double) * (size_t)o->single);
    for (int r = 0; r < o->single; ++r) {
        const double t0 = now_ns();
        fn(state);
        CALL(mla_stream_synchronize(ctx, stream));
        one[r] = (now_ns() - t0) / 1e3;
    }
    timing t;
    t.per_call_us = median(per, o->reps);
    t.per_call_min_us = per[0];
    t.single_us = median(one, o->single);
    t.single_min_us = one[0];
    free(per);
    free(one);
    return t;
}

/* layer_step state */
typedef struct layer_state {
    mla_layer* layer;
    mla_cache* cache;
    seqs* s;
    int32_t *qo_indptr, *cache_lens, *positions, *table;
    mla_buffer *hidden, *out;
    void *hidden_data, *out_data;
    void* stream;
    int reset_at; /* > 0: when the sequences reach this length, start them again empty (warm-up) */
} layer_state;

static void layer_step(void* p) {
    layer_state* st = p;
    seqs* s = st->s;
    const int B = s->num_seqs;
    if (st->reset_at > 0 && s->lens[0] >= st->reset_at) {
        /* as LatentCache.free + addSequence of every sequence: their blocks are handed out again */
        s->next_free = 0;
        memset(s->nblocks, 0, sizeof(int32_t) * (size_t)B);
        memset(s->lens, 0, sizeof(int32_t) * (size_t)B);
    }
    /* What a Batch.decode does: reserve a slot for each sequence's new token, then lay out the
     * arrays with the stride of the longest block list. */
    int stride = 1;
    for (int b = 0; b < B; ++b) {
        reserve(s, b, (int64_t)s->lens[b] + 1);
        if (s->nblocks[b] > stride) stride = s->nblocks[b];
    }
    for (int b = 0; b < B; ++b) {
        st->qo_indptr[b + 1] = b + 1;
        st->cache_lens[b] = s->lens[b];
        st->positions[b] = s->lens[b]; /* explicit, as a Java Batch passes them */
        memcpy(st->table + (size_t)b * stride, s->blocks + (size_t)b * s->max_blocks,
               sizeof(int32_t) * (size_t)s->nblocks[b]);
        memset(st->table + (size_t)b * stride + s->nblocks[b], 0, sizeof(int32_t) * (size_t)(stride - s->nblocks[b]));
    }
    mla_batch batch;
    CALL(mla_batch_init(&batch));
    batch.num_seqs = B;
    batch.num_tokens = B;
    batch.block_table_stride = stride;
    batch.qo_indptr = st->qo_indptr;
    batch.cache_lens = st->cache_lens;
    batch.positions = st->positions;
    batch.block_table = st->table;
    CALL(mla_layer_forward(st->layer, st->cache, &batch, st->hidden_data, MLA_DTYPE_BF16, st->out_data,
                           MLA_DTYPE_BF16, st->stream));
    for (int b = 0; b < B; ++b) s->lens[b] += 1;
}

/* attention_run state */
typedef struct attn_state {
    mla_context* ctx;
    mla_attention_params* params;
    void *metadata, *workspace;
    size_t metadata_bytes, workspace_bytes;
    void* stream;
} attn_state;

static void attention_step(void* p) {
    attn_state* st = p;
    CALL(mla_attention_run(st->ctx, st->params, st->metadata, st->metadata_bytes, st->workspace,
                           st->workspace_bytes, st->stream));
}

static void print_row(const char* op, int B, const options* o, timing t, const char* device) {
    printf("c,%s,%d,%d,%d,%d,%.3f,%.3f,%.3f,%.3f,%s\n", op, B, o->cached, o->iters, o->reps, t.per_call_us,
           t.per_call_min_us, t.single_us, t.single_min_us, device);
    fflush(stdout);
}

static void run_batch(mla_context* ctx, const mla_config* c, mla_layer* layer, void* stream, const options* o,
                      int B, const char* device) {
    const int dc = c->kv_lora_rank, dr = c->qk_rope_head_dim, E = dc + dr, H = c->num_heads, D = c->hidden_size;
    const int steps = o->reps * o->iters + o->single;
    const int max_blocks = (o->cached + steps + BLOCK_SIZE - 1) / BLOCK_SIZE;
    const int warm_blocks = WARM_TOKENS / BLOCK_SIZE;

    mla_cache* cache = cache_create(ctx, B * max_blocks, dc, dr);
    mla_cache_view view;
    CALL(mla_cache_get_view(cache, &view));
    seqs s;
    seqs_init(&s, B, max_blocks);

    /* Fill: `cached` tokens per sequence through mla_compress (random kv_a rows, norm weight 1). */
    const int T = o->cached;
    mla_buffer* kv_a = upload_bf16(ctx, (size_t)T * E, SEED_KV_A, 1.0);
    mla_buffer* norm = buffer(ctx, (size_t)dc * 2);
    {
        uint16_t* ones = xmalloc((size_t)dc * 2);
        for (int i = 0; i < dc; ++i) ones[i] = to_bf16(1.0f);
        CALL(mla_buffer_upload(norm, 0, ones, (size_t)dc * 2, NULL));
        free(ones);
    }
    mla_buffer* pos = buffer(ctx, (size_t)T * 4);
    mla_buffer* slots = buffer(ctx, (size_t)T * 8);
    int32_t* hpos = xmalloc((size_t)T * 4);
    int64_t* hslots = xmalloc((size_t)T * 8);
    mla_compress_params cp;
    for (int b = 0; b < B; ++b) {
        reserve(&s, b, T);
        for (int t = 0; t < T; ++t) {
            hpos[t] = t;
            hslots[t] = (int64_t)s.blocks[(size_t)b * max_blocks + t / BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE;
        }
        CALL(mla_buffer_upload(pos, 0, hpos, (size_t)T * 4, stream));
        CALL(mla_buffer_upload(slots, 0, hslots, (size_t)T * 8, stream));
        CALL(mla_compress_params_init(&cp));
        cp.num_tokens = T;
        cp.kv_a = data_of(kv_a);
        cp.kv_a_dtype = MLA_DTYPE_BF16;
        cp.kv_a_stride = E;
        cp.norm_weight = data_of(norm);
        cp.norm_weight_dtype = MLA_DTYPE_BF16;
        cp.positions = data_of(pos);
        cp.slot_mapping = data_of(slots);
        cp.cache = view;
        CALL(mla_compress(ctx, c, &cp, stream));
        s.lens[b] = T;
    }
    CALL(mla_stream_synchronize(ctx, stream));
    free(hpos);
    free(hslots);

    /* (i) layer_step; the warm-up runs on B empty sequences of a second cache */
    mla_cache* warm_cache = cache_create(ctx, B * warm_blocks, dc, dr);
    seqs wseq;
    seqs_init(&wseq, B, warm_blocks);
    layer_state ls;
    ls.layer = layer;
    ls.cache = cache;
    ls.s = &s;
    ls.qo_indptr = calloc((size_t)B + 1, sizeof(int32_t));
    ls.cache_lens = xmalloc(sizeof(int32_t) * (size_t)B);
    ls.positions = xmalloc(sizeof(int32_t) * (size_t)B);
    ls.table = xmalloc(sizeof(int32_t) * (size_t)B * (max_blocks > warm_blocks ? max_blocks : warm_blocks));
    ls.hidden = upload_bf16(ctx, (size_t)B * D, SEED_HIDDEN, 1.0);
    ls.out = buffer(ctx, (size_t)B * D * 2);
    ls.hidden_data = data_of(ls.hidden);
    ls.out_data = data_of(ls.out);
    ls.stream = stream;
    ls.reset_at = 0;
    if (!ls.qo_indptr) die("calloc", MLA_ERROR_OUT_OF_MEMORY);
    layer_state wl = ls;
    wl.cache = warm_cache;
    wl.s = &wseq;
    wl.reset_at = WARM_TOKENS;
    timing tl = time_op(ctx, stream, o, o->warmup, o->warmup_seconds, layer_step, &wl, layer_step, &ls);
    double sum = 0;
    size_t nz = check_finite(ls.out, (size_t)B * D, stream, "layer out", &sum);
    fprintf(stderr, "mla-bench-abi: B=%d layer_step: %.1f us/call, single %.1f us (out finite, %zu of %zu non-zero, "
                    "sum %.9e)\n", B, tl.per_call_us, tl.single_us, nz, (size_t)B * D, sum);
    print_row("layer_step", B, o, tl, device);

    /* (ii) attention_run: one query per sequence over cached + 1 keys (all written by now). */
    const int L = o->cached + 1, nb = (L + BLOCK_SIZE - 1) / BLOCK_SIZE;
    int32_t* hqo = xmalloc(sizeof(int32_t) * ((size_t)B + 1));
    int32_t* hlen = xmalloc(sizeof(int32_t) * (size_t)B);
    int32_t* hbt = xmalloc(sizeof(int32_t) * (size_t)B * nb);
    for (int b = 0; b <= B; ++b) hqo[b] = b;
    for (int b = 0; b < B; ++b) {
        hlen[b] = L;
        memcpy(hbt + (size_t)b * nb, s.blocks + (size_t)b * max_blocks, sizeof(int32_t) * (size_t)nb);
    }
    mla_buffer* dqo = buffer(ctx, sizeof(int32_t) * ((size_t)B + 1));
    mla_buffer* dlen = buffer(ctx, sizeof(int32_t) * (size_t)B);
    mla_buffer* dbt = buffer(ctx, sizeof(int32_t) * (size_t)B * nb);
    CALL(mla_buffer_upload(dqo, 0, hqo, sizeof(int32_t) * ((size_t)B + 1), stream));
    CALL(mla_buffer_upload(dlen, 0, hlen, sizeof(int32_t) * (size_t)B, stream));
    CALL(mla_buffer_upload(dbt, 0, hbt, sizeof(int32_t) * (size_t)B * nb, stream));
    mla_buffer* q = upload_bf16(ctx, (size_t)B * H * E, SEED_Q, 1.0);
    mla_buffer* aout = buffer(ctx, (size_t)B * H * dc * 2);
    size_t md_bytes = 0, ws_bytes = 0;
    CALL(mla_attention_workspace_size(ctx, B, B, H, dc, dr, &md_bytes, &ws_bytes));
    if (md_bytes == 0) md_bytes = 1;
    if (ws_bytes == 0) ws_bytes = 1;
    mla_buffer* md = buffer(ctx, md_bytes);
    mla_buffer* ws = buffer(ctx, ws_bytes);
    double scale = 0;
    CALL(mla_config_softmax_scale(c, &scale));
    mla_attention_params ap;
    CALL(mla_attention_params_init(&ap));
    ap.num_seqs = B;
    ap.num_tokens = B;
    ap.num_heads = H;
    ap.causal = 1;
    ap.block_table_stride = nb;
    ap.q_dtype = MLA_DTYPE_BF16;
    ap.out_dtype = MLA_DTYPE_BF16;
    ap.softmax_scale = (float)scale;
    ap.q = data_of(q);
    ap.qo_indptr = data_of(dqo);
    ap.seq_lens = data_of(dlen);
    ap.block_table = data_of(dbt);
    ap.cache = view;
    ap.out = data_of(aout);
    ap.lse = NULL;
    attn_state as;
    as.ctx = ctx;
    as.params = &ap;
    as.metadata = data_of(md);
    as.metadata_bytes = md_bytes;
    as.workspace = data_of(ws);
    as.workspace_bytes = ws_bytes;
    as.stream = stream;
    CALL(mla_attention_plan(ctx, &ap, as.metadata, md_bytes, stream));
    timing ta = time_op(ctx, stream, o, o->warmup_kernel, o->warmup_seconds, attention_step, &as, attention_step, &as);
    nz = check_finite(aout, (size_t)B * H * dc, stream, "attention out", &sum);
    fprintf(stderr, "mla-bench-abi: B=%d attention_run: %.1f us/call, single %.1f us (out finite, %zu of %zu non-zero, "
                    "sum %.9e)\n", B, ta.per_call_us, ta.single_us, nz, (size_t)B * H * dc, sum);
    print_row("attention_run", B, o, ta, device);

    CALL(mla_stream_synchronize(ctx, stream));
    mla_buffer* all[] = {kv_a, norm, pos, slots, ls.hidden, ls.out, dqo, dlen, dbt, q, aout, md, ws};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) mla_buffer_destroy(all[i]);
    mla_cache_destroy(cache);
    mla_cache_destroy(warm_cache);
    free(hqo);
    free(hlen);
    free(hbt);
    free(ls.qo_indptr);
    free(ls.cache_lens);
    free(ls.positions);
    free(ls.table);
    seqs_free(&s);
    seqs_free(&wseq);
}

int main(int argc, char** argv) {
    options o;
    parse(argc, argv, &o);

    mla_context_options opts;
    CALL(mla_context_options_init(&opts));
    opts.backend = o.cpu ? MLA_BACKEND_CPU : MLA_BACKEND_CUDA;
    opts.device = o.device;
    mla_context* ctx = NULL;
    mla_status st = mla_context_create(&opts, &ctx);
    if (st != MLA_OK) {
        if (!o.cpu && (st == MLA_ERROR_DEVICE || st == MLA_ERROR_UNSUPPORTED)) {
            fprintf(stderr, "mla-bench-abi: no CUDA device to run on (%s: %s); skipped\n", mla_status_string(st),
                    mla_last_error());
            return 77;
        }
        die("mla_context_create", st);
    }
    char device[256];
    CALL(mla_context_describe(ctx, device, sizeof device));
    for (char* p = device; *p; ++p)
        if (*p == ',' || *p == '\n') *p = ';';

    mla_config c;
    CALL(mla_config_init(&c));
    if (o.cpu) {
        c.hidden_size = 256;
        c.num_heads = 4;
        c.q_lora_rank = 64;
        c.kv_lora_rank = 128;
        c.qk_nope_head_dim = 32;
        c.qk_rope_head_dim = 16;
        c.v_head_dim = 32;
    }
    CALL(mla_config_validate(&c));
    fprintf(stderr, "mla-bench-abi: %s; hidden %d, %d heads, q_lora %d, kv_lora %d, rope %d; cached %d; warm-up %d "
                    "(layer) / %d (kernel) calls, %d reps x %d calls, %d single calls\n", device, c.hidden_size,
            c.num_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_rope_head_dim, o.cached, o.warmup, o.warmup_kernel,
            o.reps, o.iters, o.single);
    mla_layer* layer = create_layer(ctx, &c);
    void* stream = NULL;
    CALL(mla_stream_create(ctx, &stream));

    printf("impl,op,batch,cached,iters,reps,per_call_us,per_call_min_us,single_us,single_min_us,device\n");
    for (int i = 0; i < o.num_batches; ++i) run_batch(ctx, &c, layer, stream, &o, o.batches[i], device);

    mla_stream_destroy(ctx, stream);
    mla_layer_destroy(layer);
    mla_context_destroy(ctx);
    return 0;
}
