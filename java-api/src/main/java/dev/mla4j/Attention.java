package dev.mla4j;

import dev.mla4j.bindings.Mla;
import dev.mla4j.bindings.mla_attention_params;
import dev.mla4j.bindings.mla_compress_params;

import java.lang.foreign.Arena;
import java.lang.ref.Reference;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * The kernel level, for engines that run their own projections: {@link #compress} writes kv_a
 * outputs into the paged cache, and an {@code Attention} object owns the metadata and workspace
 * buffers of the absorbed attention and runs it ({@code mla_attention_plan} once per batch, then
 * {@code mla_attention_run}, which never allocates).
 *
 * <p>One {@code Attention} serves batches of at most {@code maxNumSeqs} sequences and
 * {@code maxNumTokens} query tokens. Its buffers are reused by every call: use one instance from
 * one thread at a time (make one per thread otherwise).
 *
 * <p>Lengths: neither call advances the cache's sequences. After a step has compressed its new
 * tokens, call {@link LatentCache#commit(Batch)} (after the attention runs, or before building
 * the next batch).
 */
public final class Attention extends NativeResource {
    private final MlaContext context;
    private final int maxNumSeqs;
    private final int maxNumTokens;
    private final int numHeads;
    private final int kvLoraRank;
    private final int ropeDim;
    private final MemorySegment metadata;
    private final MemorySegment workspace;
    private final MemorySegment params;
    private Batch planned;
    private long plans;

    private Attention(MlaContext context, Arena arena, int maxNumSeqs, int maxNumTokens, int numHeads, int kvLoraRank,
                      int ropeDim, long metadataBytes, long workspaceBytes) {
        super("Attention", arena, MemorySegment.NULL, s -> { });
        this.context = context;
        this.maxNumSeqs = maxNumSeqs;
        this.maxNumTokens = maxNumTokens;
        this.numHeads = numHeads;
        this.kvLoraRank = kvLoraRank;
        this.ropeDim = ropeDim;
        this.metadata = arena.allocate(Math.max(1, metadataBytes), 64);
        this.workspace = arena.allocate(Math.max(1, workspaceBytes), 64);
        this.params = mla_attention_params.allocate(arena);
    }

    /**
     * Allocates the metadata and workspace for batches up to the given sizes over caches of
     * {@code kvLoraRank + ropeDim} values per token (CPU contexts; the buffers live in host memory).
     *
     * @throws MlaException INVALID_ARGUMENT for non-positive sizes; UNSUPPORTED for a CUDA context
     */
    public static Attention create(MlaContext context, int maxNumSeqs, int maxNumTokens, int numHeads, int kvLoraRank,
                                   int ropeDim) {
        Objects.requireNonNull(context, "context");
        if (context.backend() != MlaContext.Backend.CPU) {
            throw new MlaException(MlaException.Status.UNSUPPORTED,
                    "Attention: device buffers for CUDA contexts are not available from Java yet");
        }
        return context.createChild(arena -> {  // the context refuses to close meanwhile
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment meta = tmp.allocate(ValueLayout.JAVA_LONG);
                MemorySegment ws = tmp.allocate(ValueLayout.JAVA_LONG);
                Native.check(Mla.mla_attention_workspace_size(context.handle(), maxNumSeqs, maxNumTokens, numHeads,
                        kvLoraRank, ropeDim, meta, ws), "mla_attention_workspace_size");
                return new Attention(context, arena, maxNumSeqs, maxNumTokens, numHeads, kvLoraRank, ropeDim,
                        meta.get(ValueLayout.JAVA_LONG, 0), ws.get(ValueLayout.JAVA_LONG, 0));
            }
        });
    }

    public int numHeads() {
        return numHeads;
    }

    public int maxNumSeqs() {
        return maxNumSeqs;
    }

    public int maxNumTokens() {
        return maxNumTokens;
    }

    /** Bytes of the metadata buffer. */
    public long metadataBytes() {
        return metadata.byteSize();
    }

    /** Bytes of the workspace buffer. */
    public long workspaceBytes() {
        return workspace.byteSize();
    }

    /**
     * Writes the batch's new tokens into its cache: RMSNorm of the latent times normWeight and RoPE
     * of the key, at positions cache_len + j. kvA: native [T, kvAStride] (F32 or BF16), the
     * kv_a_proj_with_mqa output (latent, then RoPE key); normWeight: native [kv_lora_rank].
     * Does not advance the sequences (see the class comment).
     *
     * @param kvAStride elements between rows, >= kv_lora_rank + rope dim
     */
    public static void compress(MlaContext context, MlaConfig config, Batch batch, MemorySegment kvA, DType kvADtype,
                                long kvAStride, MemorySegment normWeight, DType normDtype) {
        Objects.requireNonNull(context, "context");
        Objects.requireNonNull(config, "config");
        Objects.requireNonNull(batch, "batch");
        if (context.backend() != MlaContext.Backend.CPU) {
            throw new MlaException(MlaException.Status.UNSUPPORTED,
                    "Attention.compress: kvA and the batch's positions and slots are host memory; a CUDA context "
                            + "needs them in device memory (not available from Java yet; use MlaLayer.forward)");
        }
        batch.ensureOpen();
        requireType(kvADtype, "kvADtype");
        requireType(normDtype, "normDtype");
        LatentCache cache = batch.cache();
        int entry = cache.kvLoraRank() + cache.ropeDim();
        if (kvAStride < entry) {
            throw new IllegalArgumentException("kvAStride = " + kvAStride + " must be >= kv_lora_rank + rope_dim = " + entry);
        }
        long t = batch.numTokens();
        long kvABytes;
        try {
            kvABytes = t == 0 ? 0 : Math.multiplyExact(Math.addExact(Math.multiplyExact(t - 1, kvAStride), entry),
                    kvADtype.byteSize());
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("kvAStride = " + kvAStride + " with " + t
                    + " tokens: kvA would need more than 2^63 bytes");
        }
        Native.requireNative(kvA, "kvA", kvABytes);
        Native.requireNative(normWeight, "normWeight", (long) cache.kvLoraRank() * normDtype.byteSize());
        cache.checkCurrent(batch);
        // The call reaches the cache and the batch's arrays through pointers in the params struct:
        // keep the cache from closing and the batch (an automatic arena) reachable until it returns.
        cache.acquire();
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment p = mla_compress_params.allocate(tmp);
            Native.check(Mla.mla_compress_params_init(p), "mla_compress_params_init");
            mla_compress_params.num_tokens(p, (int) t);
            mla_compress_params.kv_a(p, kvA);
            mla_compress_params.kv_a_dtype(p, kvADtype.mlaCode());
            mla_compress_params.kv_a_stride(p, kvAStride);
            mla_compress_params.norm_weight(p, normWeight);
            mla_compress_params.norm_weight_dtype(p, normDtype.mlaCode());
            mla_compress_params.positions(p, batch.positions);
            mla_compress_params.slot_mapping(p, batch.slotMapping);
            mla_compress_params.cache(p, cache.view());
            Native.check(Mla.mla_compress(context.handle(), config.toNative(tmp), p, MemorySegment.NULL), "mla_compress");
        } finally {
            cache.release();
            Reference.reachabilityFence(batch);
            Reference.reachabilityFence(kvA);
            Reference.reachabilityFence(normWeight);
        }
    }

    private void fillParams(Batch batch, MemorySegment q, DType qDtype, MemorySegment out, DType outDtype,
                            MemorySegment lse, float softmaxScale, boolean causal) {
        // every field is written, so the struct needs no mla_attention_params_init per call
        MemorySegment p = params;
        mla_attention_params.struct_size(p, (int) mla_attention_params.sizeof());
        mla_attention_params.reserved0(p, 0);
        mla_attention_params.num_seqs(p, batch.numSeqs());
        mla_attention_params.num_tokens(p, batch.numTokens());
        mla_attention_params.num_heads(p, numHeads);
        mla_attention_params.causal(p, causal ? 1 : 0);
        mla_attention_params.block_table_stride(p, batch.blockTableStride());
        mla_attention_params.q_dtype(p, qDtype.mlaCode());
        mla_attention_params.out_dtype(p, outDtype.mlaCode());
        mla_attention_params.softmax_scale(p, softmaxScale);
        mla_attention_params.q(p, q);
        mla_attention_params.qo_indptr(p, batch.qoIndptr);
        mla_attention_params.seq_lens(p, batch.seqLens);
        mla_attention_params.block_table(p, batch.blockTable);
        mla_attention_params.cache(p, batch.cache().view());
        mla_attention_params.out(p, out);
        mla_attention_params.lse(p, lse == null ? MemorySegment.NULL : lse);
    }

    /**
     * Runs the absorbed attention of a batch over its cache: q native [T, H, kv_lora_rank +
     * rope_dim] (F32/BF16) to out native [T, H, kv_lora_rank] (F32/BF16) and optionally lse native
     * f32 [T, H] (null = not wanted). The batch's new tokens must already be in the cache
     * ({@link #compress}). The split-KV schedule is planned on the first call with a batch and
     * reused while the same batch is passed again (e.g. by every layer of one step).
     *
     * @throws IllegalArgumentException a segment too small or on the heap, a bad dtype or scale
     * @throws MlaException             BUFFER_TOO_SMALL when the batch exceeds this object's maxima,
     *                                  INVALID_ARGUMENT / CACHE_FULL for bad block tables
     */
    public synchronized void run(Batch batch, MemorySegment q, DType qDtype, MemorySegment out, DType outDtype,
                                 MemorySegment lse, float softmaxScale, boolean causal) {
        Objects.requireNonNull(batch, "batch");
        ensureOpen();
        batch.ensureOpen();
        requireType(qDtype, "qDtype");
        requireType(outDtype, "outDtype");
        LatentCache cache = batch.cache();
        if (cache.kvLoraRank() != kvLoraRank || cache.ropeDim() != ropeDim) {
            throw new IllegalArgumentException("batch: its cache holds kv_lora_rank " + cache.kvLoraRank() + " + rope_dim "
                    + cache.ropeDim() + ", this Attention was sized for " + kvLoraRank + " + " + ropeDim);
        }
        long th = (long) batch.numTokens() * numHeads;
        Native.requireNative(q, "q", th * (cache.kvLoraRank() + cache.ropeDim()) * qDtype.byteSize());
        Native.requireWritable(out, "out", th * cache.kvLoraRank() * outDtype.byteSize());
        if (lse != null) {
            Native.requireWritable(lse, "lse", th * 4);
        }
        if (!(softmaxScale > 0) || Float.isInfinite(softmaxScale)) {
            throw new IllegalArgumentException("softmaxScale = " + softmaxScale + " must be > 0");
        }
        // As in compress: the cache, the batch's arrays, q, out and lse are reached through params.
        cache.acquire();
        try {
            fillParams(batch, q, qDtype, out, outDtype, lse, softmaxScale, causal);
            if (planned != batch) {
                planned = null;
                Native.check(Mla.mla_attention_plan(context.handle(), params, metadata, metadata.byteSize(),
                        MemorySegment.NULL), "mla_attention_plan");
                planned = batch;
                plans++;
            }
            Native.check(Mla.mla_attention_run(context.handle(), params, metadata, metadata.byteSize(), workspace,
                    workspace.byteSize(), MemorySegment.NULL), "mla_attention_run");
        } finally {
            cache.release();
            Reference.reachabilityFence(batch);
            Reference.reachabilityFence(q);
            Reference.reachabilityFence(out);
            Reference.reachabilityFence(lse);
        }
    }

    /** How many schedules this object has planned (one per distinct batch run). */
    public synchronized long plans() {
        return plans;
    }

    private static void requireType(DType t, String name) {
        if (t != DType.F32 && t != DType.BF16) {
            throw new IllegalArgumentException(name + " = " + t + ", expected F32 or BF16");
        }
    }

    @Override
    void afterClose() {
        context.unregister(this);
    }
}
