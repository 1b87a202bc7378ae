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
 * <p>Three ways to pass tensors:
 * <ul>
 *   <li>host {@link MemorySegment}s ({@link #run(Batch, MemorySegment, DType, MemorySegment, DType,
 *       MemorySegment, float, boolean)}): CPU contexts only;</li>
 *   <li>{@link DeviceBuffer}s of the context with a {@link Batch} ({@link #run(Batch, DeviceBuffer,
 *       DType, DeviceBuffer, DType, DeviceBuffer, float, boolean, MlaStream)}): this object copies the
 *       batch's index arrays into backend memory it owns and plans, once per distinct batch;</li>
 *   <li>{@link DeviceBuffer}s with a {@link DeviceBatch} whose index arrays the caller keeps in
 *       backend memory (engines that keep block tables on the device): {@link #plan(DeviceBatch,
 *       MlaStream)} when the lengths change, then {@link #run(DeviceBatch, DeviceBuffer, DType,
 *       DeviceBuffer, DType, DeviceBuffer, float, boolean, MlaStream)} per layer.</li>
 * </ul>
 * The last two work on every backend (a CPU context's DeviceBuffers are host memory); on CUDA the
 * metadata and workspace are device memory and the work is queued on the given stream. The copy of
 * a new batch's arrays goes through {@code mla_buffer_upload}, which returns once the copy is
 * complete: it waits for the work already queued on the stream, once per distinct batch (runs of
 * the same batch, e.g. the other layers of a step, do not wait). The DeviceBatch path never waits.
 *
 * <p>One {@code Attention} serves batches of at most {@code maxNumSeqs} sequences and
 * {@code maxNumTokens} query tokens. Its buffers are reused by every call: use one instance from
 * one thread at a time (make one per thread otherwise). Calls on one stream are ordered by the
 * stream; when a call names another stream than the previous call, this object first waits for
 * the previous stream, so its buffers are never written while queued work still reads them.
 * Close it after the work queued with it is complete.
 *
 * <p>Lengths: neither call advances the cache's sequences. After a step has compressed its new
 * tokens, call {@link LatentCache#commit(Batch)} (after the attention runs, or before building
 * the next batch).
 */
public final class Attention extends NativeResource {
    /** Smallest staging buffer for a batch's index arrays, in bytes. */
    private static final long MIN_STAGING_BYTES = 16 << 10;

    private final MlaContext context;
    private final int maxNumSeqs;
    private final int maxNumTokens;
    private final int numHeads;
    private final int kvLoraRank;
    private final int ropeDim;
    private final long metadataBytes;
    private final long workspaceBytes;
    private final MemorySegment metadata;   // host (CPU) or the device pointer of an owned mla_buffer
    private final MemorySegment workspace;
    private final MemorySegment params;
    private final MemorySegment compressParams;
    private Object planned;           // the Batch or DeviceBatch the metadata was planned for, or null
    private boolean plannedStaged;    // planned from the staged copy of a Batch's arrays
    private long plans;
    // A Batch's index arrays in backend memory: see stage(). Replaced (never freed before close:
    // queued work may still read it) when a larger batch comes.
    private BackendMemory staging;
    private long stagingBytes;
    private Batch staged;
    private long stagedUploads;
    private MlaStream lastStream;     // stream of the previous device call (null = default stream)
    private boolean usedDevice;       // a device call has run (lastStream is meaningful)

    private Attention(MlaContext context, Arena arena, int maxNumSeqs, int maxNumTokens, int numHeads, int kvLoraRank,
                      int ropeDim, long metadataBytes, long workspaceBytes) {
        super("Attention", arena, MemorySegment.NULL, s -> { });
        this.context = context;
        this.maxNumSeqs = maxNumSeqs;
        this.maxNumTokens = maxNumTokens;
        this.numHeads = numHeads;
        this.kvLoraRank = kvLoraRank;
        this.ropeDim = ropeDim;
        this.metadataBytes = Math.max(1, metadataBytes);
        this.workspaceBytes = Math.max(1, workspaceBytes);
        if (context.backend() == MlaContext.Backend.CPU) {
            this.metadata = arena.allocate(this.metadataBytes, 64);
            this.workspace = arena.allocate(this.workspaceBytes, 64);
        } else {
            this.metadata = backendAlloc(context, arena, this.metadataBytes).data();
            this.workspace = backendAlloc(context, arena, this.workspaceBytes).data();
        }
        this.params = mla_attention_params.allocate(arena);
        this.compressParams = mla_compress_params.allocate(arena);
    }

    /**
     * Allocates bytes of the context's memory owned by arena (freed when it closes): an
     * {@code mla_buffer} handle and a zero-length segment at its backend pointer, for downcalls only
     * (never read on the host).
     */
    private record BackendMemory(MemorySegment handle, MemorySegment data) {
    }

    private static BackendMemory backendAlloc(MlaContext context, Arena arena, long bytes) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(ValueLayout.ADDRESS);
            Native.check(Mla.mla_buffer_create(context.handle(), bytes, out), "mla_buffer_create");
            MemorySegment raw = out.get(ValueLayout.ADDRESS, 0).reinterpret(arena, Mla::mla_buffer_destroy);
            MemorySegment ptr = tmp.allocate(ValueLayout.ADDRESS);
            Native.check(Mla.mla_buffer_data(raw, ptr, MemorySegment.NULL), "mla_buffer_data");
            // zero-length and scoped to arena: passing it to a downcall keeps this memory alive
            return new BackendMemory(raw, ptr.get(ValueLayout.ADDRESS, 0).reinterpret(arena, null));
        }
    }

    /**
     * Allocates the metadata and workspace for batches up to the given sizes over caches of
     * {@code kvLoraRank + ropeDim} values per token, in the context's memory (host memory for a CPU
     * context, device memory for a CUDA context; freed by {@link #close()}).
     *
     * @throws MlaException INVALID_ARGUMENT for non-positive sizes; OUT_OF_MEMORY, DEVICE
     */
    public static Attention create(MlaContext context, int maxNumSeqs, int maxNumTokens, int numHeads, int kvLoraRank,
                                   int ropeDim) {
        Objects.requireNonNull(context, "context");
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

    /**
     * A batch whose index arrays live in the context's memory, for {@link #plan(DeviceBatch,
     * MlaStream)} and {@link #run(DeviceBatch, DeviceBuffer, DType, DeviceBuffer, DType, DeviceBuffer,
     * float, boolean, MlaStream)}. The buffers are the caller's; their contents (lengths, block ids)
     * are read by the device and are not checked on CUDA. The record checks sizes only.
     *
     * @param cache            the paged cache the block ids index
     * @param numSeqs          B &gt;= 1
     * @param numTokens        T = qo_indptr[B] &gt;= 0
     * @param blockTableStride entries per block-table row, &gt;= 1
     * @param qoIndptr         int32 [B + 1], qo_indptr[0] = 0, non-decreasing
     * @param seqLens          int32 [B]: keys of each sequence, its new tokens included
     * @param blockTable       int32 [B, blockTableStride]: each sequence's block ids in order
     */
    public record DeviceBatch(LatentCache cache, int numSeqs, int numTokens, int blockTableStride,
                              DeviceBuffer qoIndptr, DeviceBuffer seqLens, DeviceBuffer blockTable) {
        /**
         * @throws IllegalArgumentException a non-positive count, a buffer too small or of another
         *                                  context than the cache's (the message names it)
         * @throws IllegalStateException    the cache or a buffer is closed
         */
        public DeviceBatch {
            Objects.requireNonNull(cache, "cache");
            if (numSeqs < 1) {
                throw new IllegalArgumentException("numSeqs = " + numSeqs + " must be >= 1");
            }
            if (numTokens < 0) {
                throw new IllegalArgumentException("numTokens = " + numTokens + " must be >= 0");
            }
            if (blockTableStride < 1) {
                throw new IllegalArgumentException("blockTableStride = " + blockTableStride + " must be >= 1");
            }
            MlaContext ctx = cache.context();
            DeviceBuffer.of(qoIndptr, ctx, "qoIndptr", 4L * (numSeqs + 1));
            DeviceBuffer.of(seqLens, ctx, "seqLens", 4L * numSeqs);
            DeviceBuffer.of(blockTable, ctx, "blockTable", tableBytes(numSeqs, blockTableStride));
        }

        /** Bytes of a block table of numSeqs rows of stride int32 entries. */
        static long tableBytes(int numSeqs, int stride) {
            try {
                return Math.multiplyExact(4L * numSeqs, stride);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("numSeqs = " + numSeqs + " x blockTableStride = " + stride
                        + " entries overflow");
            }
        }
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

    public MlaContext context() {
        return context;
    }

    /** Bytes of the metadata buffer. */
    public long metadataBytes() {
        return metadataBytes;
    }

    /** Bytes of the workspace buffer. */
    public long workspaceBytes() {
        return workspaceBytes;
    }

    /**
     * Writes the batch's new tokens into its cache: RMSNorm of the latent times normWeight and RoPE
     * of the key, at positions cache_len + j. kvA: native [T, kvAStride] (F32 or BF16), the
     * kv_a_proj_with_mqa output (latent, then RoPE key); normWeight: native [kv_lora_rank].
     * CPU contexts only (host memory); see {@link #compress(MlaConfig, Batch, DeviceBuffer, DType,
     * long, DeviceBuffer, DType, MlaStream)} for any backend. Does not advance the sequences (see the
     * class comment).
     *
     * @param kvAStride elements between rows, >= kv_lora_rank + rope dim
     * @throws IllegalArgumentException a CUDA context (kvA is host memory), a segment too small
     */
    public static void compress(MlaContext context, MlaConfig config, Batch batch, MemorySegment kvA, DType kvADtype,
                                long kvAStride, MemorySegment normWeight, DType normDtype) {
        Objects.requireNonNull(context, "context");
        Objects.requireNonNull(config, "config");
        Objects.requireNonNull(batch, "batch");
        if (context.backend() != MlaContext.Backend.CPU) {
            throw new IllegalArgumentException("kvA and normWeight are host MemorySegments, but the context is "
                    + context.backend() + " device " + context.device() + ": pass DeviceBuffers (Attention.compress("
                    + "MlaConfig, Batch, DeviceBuffer, DType, long, DeviceBuffer, DType, MlaStream))");
        }
        batch.ensureOpen();
        requireType(kvADtype, "kvADtype");
        requireType(normDtype, "normDtype");
        LatentCache cache = batch.cache();
        long kvABytes = kvABytes(batch.numTokens(), kvAStride, cache, kvADtype);
        Native.requireNative(kvA, "kvA", kvABytes);
        Native.requireNative(normWeight, "normWeight", (long) cache.kvLoraRank() * normDtype.byteSize());
        cache.checkCurrent(batch);
        // The call reaches the cache and the batch's arrays through pointers in the params struct:
        // keep the cache from closing and the batch (an automatic arena) reachable until it returns.
        cache.acquire();
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment p = mla_compress_params.allocate(tmp);
            fillCompress(p, batch.numTokens(), kvA, kvADtype, kvAStride, normWeight, normDtype, batch.positions,
                    batch.slotMapping, cache);
            Native.check(Mla.mla_compress(context.handle(), config.toNative(tmp), p, MemorySegment.NULL), "mla_compress");
        } finally {
            cache.release();
            Reference.reachabilityFence(batch);
            Reference.reachabilityFence(kvA);
            Reference.reachabilityFence(normWeight);
        }
    }

    /**
     * As {@link #compress(MlaContext, MlaConfig, Batch, MemorySegment, DType, long, MemorySegment,
     * DType)} with tensors in the context's memory, on any backend: kvA [T, kvAStride] (F32 or
     * BF16), normWeight [kv_lora_rank] (F32 or BF16). The batch's positions and slots are copied
     * into backend memory this object owns (once per distinct batch, shared with {@link #run(Batch,
     * DeviceBuffer, DType, DeviceBuffer, DType, DeviceBuffer, float, boolean, MlaStream)}); that
     * copy waits for the work already queued on stream (mla_buffer_upload completes before it
     * returns). The compression itself is queued on stream (null = default stream) on CUDA.
     *
     * @throws IllegalArgumentException a buffer too small or of another context, a bad dtype or
     *                                  stride, a cache of another context, a stream of another context
     * @throws IllegalStateException    this object, the batch, its cache, a buffer or the stream is
     *                                  closed; the batch is stale
     * @throws MlaException             CACHE_FULL, INVALID_ARGUMENT, DEVICE from libmla
     */
    public synchronized void compress(MlaConfig config, Batch batch, DeviceBuffer kvA, DType kvADtype, long kvAStride,
                                      DeviceBuffer normWeight, DType normDtype, MlaStream stream) {
        Objects.requireNonNull(config, "config");
        Objects.requireNonNull(batch, "batch");
        ensureOpen();
        batch.ensureOpen();
        requireType(kvADtype, "kvADtype");
        requireType(normDtype, "normDtype");
        LatentCache cache = batch.cache();
        requireCache(cache, "batch");
        requireCacheShape(config, cache);
        long t = batch.numTokens();
        MemorySegment kv = DeviceBuffer.of(kvA, context, "kvA", kvABytes(t, kvAStride, cache, kvADtype));
        MemorySegment norm = DeviceBuffer.of(normWeight, context, "normWeight",
                (long) cache.kvLoraRank() * normDtype.byteSize());
        MemorySegment s = MlaStream.of(stream, context, "stream");
        cache.checkCurrent(batch);
        Uses uses = new Uses().add(cache).add(kvA).add(normWeight);
        try (Arena tmp = Arena.ofConfined()) {
            switchStream(stream);
            MemorySegment st = stage(batch, s);
            fillCompress(compressParams, (int) t, kv, kvADtype, kvAStride, norm, normDtype,
                    at(st, batch.offsetOf(batch.positions)), at(st, batch.offsetOf(batch.slotMapping)), cache);
            Native.check(Mla.mla_compress(context.handle(), config.toNative(tmp), compressParams, s), "mla_compress");
        } finally {
            uses.release();
            Reference.reachabilityFence(batch);
        }
    }

    /**
     * The lowest level of compression, for engines that keep positions and slots in the context's
     * memory: tokens i &lt; numTokens go to slot slotMapping[i] (block * block_size + offset; &lt; 0 =
     * skipped) of cache with RoPE position positions[i]. kvA [numTokens, kvAStride] (F32/BF16),
     * normWeight [kv_lora_rank] (F32/BF16), positions int32 [numTokens], slotMapping int64
     * [numTokens], all in the cache's context. Queued on stream (null = default) on CUDA, where the
     * device-side values are not checked. Does not touch the cache's sequence bookkeeping (see
     * {@link LatentCache#advance}).
     *
     * @throws IllegalArgumentException a buffer too small or of another context, a bad dtype or stride
     * @throws IllegalStateException    the cache, a buffer or the stream is closed
     * @throws MlaException             CACHE_FULL (CPU: a slot beyond the cache), INVALID_ARGUMENT, DEVICE
     */
    public static void compress(MlaConfig config, LatentCache cache, int numTokens, DeviceBuffer kvA, DType kvADtype,
                                long kvAStride, DeviceBuffer normWeight, DType normDtype, DeviceBuffer positions,
                                DeviceBuffer slotMapping, MlaStream stream) {
        Objects.requireNonNull(config, "config");
        Objects.requireNonNull(cache, "cache");
        cache.ensureOpen();
        if (numTokens < 0) {
            throw new IllegalArgumentException("numTokens = " + numTokens + " must be >= 0");
        }
        requireType(kvADtype, "kvADtype");
        requireType(normDtype, "normDtype");
        requireCacheShape(config, cache);
        MlaContext ctx = cache.context();
        MemorySegment kv = DeviceBuffer.of(kvA, ctx, "kvA", kvABytes(numTokens, kvAStride, cache, kvADtype));
        MemorySegment norm = DeviceBuffer.of(normWeight, ctx, "normWeight",
                (long) cache.kvLoraRank() * normDtype.byteSize());
        MemorySegment pos = DeviceBuffer.of(positions, ctx, "positions", 4L * numTokens);
        MemorySegment slots = DeviceBuffer.of(slotMapping, ctx, "slotMapping", 8L * numTokens);
        MemorySegment s = MlaStream.of(stream, ctx, "stream");
        Uses uses = new Uses().add(cache).add(kvA).add(normWeight).add(positions).add(slotMapping);
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment p = mla_compress_params.allocate(tmp);
            fillCompress(p, numTokens, kv, kvADtype, kvAStride, norm, normDtype, pos, slots, cache);
            Native.check(Mla.mla_compress(ctx.handle(), config.toNative(tmp), p, s), "mla_compress");
        } finally {
            uses.release();
        }
    }

    private static long kvABytes(long t, long kvAStride, LatentCache cache, DType kvADtype) {
        int entry = cache.kvLoraRank() + cache.ropeDim();
        if (kvAStride < entry) {
            throw new IllegalArgumentException("kvAStride = " + kvAStride + " must be >= kv_lora_rank + rope_dim = " + entry);
        }
        try {
            return t == 0 ? 0 : Math.multiplyExact(Math.addExact(Math.multiplyExact(t - 1, kvAStride), entry),
                    kvADtype.byteSize());
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("kvAStride = " + kvAStride + " with " + t
                    + " tokens: kvA would need more than 2^63 bytes");
        }
    }

    private static void requireCacheShape(MlaConfig config, LatentCache cache) {
        if (config.kvLoraRank() != cache.kvLoraRank() || config.qkRopeHeadDim() != cache.ropeDim()) {
            throw new IllegalArgumentException("config has kv_lora_rank " + config.kvLoraRank() + " + rope_dim "
                    + config.qkRopeHeadDim() + ", the cache holds " + cache.kvLoraRank() + " + " + cache.ropeDim());
        }
    }

    private static void fillCompress(MemorySegment p, int t, MemorySegment kvA, DType kvADtype, long kvAStride,
                                     MemorySegment norm, DType normDtype, MemorySegment positions, MemorySegment slots,
                                     LatentCache cache) {
        Native.check(Mla.mla_compress_params_init(p), "mla_compress_params_init");
        mla_compress_params.num_tokens(p, t);
        mla_compress_params.kv_a(p, kvA);
        mla_compress_params.kv_a_dtype(p, kvADtype.mlaCode());
        mla_compress_params.kv_a_stride(p, kvAStride);
        mla_compress_params.norm_weight(p, norm);
        mla_compress_params.norm_weight_dtype(p, normDtype.mlaCode());
        mla_compress_params.positions(p, positions);
        mla_compress_params.slot_mapping(p, slots);
        mla_compress_params.cache(p, cache.view());
    }

    private void fillParams(int numSeqs, int numTokens, int blockTableStride, MemorySegment qoIndptr,
                            MemorySegment seqLens, MemorySegment blockTable, LatentCache cache, MemorySegment q,
                            DType qDtype, MemorySegment out, DType outDtype, MemorySegment lse, float softmaxScale,
                            boolean causal) {
        // every field is written, so the struct needs no mla_attention_params_init per call
        MemorySegment p = params;
        mla_attention_params.struct_size(p, (int) mla_attention_params.sizeof());
        mla_attention_params.reserved0(p, 0);
        mla_attention_params.num_seqs(p, numSeqs);
        mla_attention_params.num_tokens(p, numTokens);
        mla_attention_params.num_heads(p, numHeads);
        mla_attention_params.causal(p, causal ? 1 : 0);
        mla_attention_params.block_table_stride(p, blockTableStride);
        mla_attention_params.q_dtype(p, qDtype.mlaCode());
        mla_attention_params.out_dtype(p, outDtype.mlaCode());
        mla_attention_params.softmax_scale(p, softmaxScale);
        mla_attention_params.q(p, q);
        mla_attention_params.qo_indptr(p, qoIndptr);
        mla_attention_params.seq_lens(p, seqLens);
        mla_attention_params.block_table(p, blockTable);
        mla_attention_params.cache(p, cache.view());
        mla_attention_params.out(p, out);
        mla_attention_params.lse(p, lse == null ? MemorySegment.NULL : lse);
    }

    /**
     * Runs the absorbed attention of a batch over its cache: q native [T, H, kv_lora_rank +
     * rope_dim] (F32/BF16) to out native [T, H, kv_lora_rank] (F32/BF16) and optionally lse native
     * f32 [T, H] (null = not wanted). CPU contexts only (host memory). The batch's new tokens must
     * already be in the cache ({@link #compress}). The split-KV schedule is planned on the first
     * call with a batch and reused while the same batch is passed again (e.g. by every layer of
     * one step).
     *
     * @throws IllegalArgumentException a segment too small or on the heap, a bad dtype or scale, a
     *                                  CUDA context (the message names q: host memory where device
     *                                  memory is needed)
     * @throws MlaException             BUFFER_TOO_SMALL when the batch exceeds this object's maxima,
     *                                  INVALID_ARGUMENT / CACHE_FULL for bad block tables
     */
    public synchronized void run(Batch batch, MemorySegment q, DType qDtype, MemorySegment out, DType outDtype,
                                 MemorySegment lse, float softmaxScale, boolean causal) {
        Objects.requireNonNull(batch, "batch");
        ensureOpen();
        if (context.backend() != MlaContext.Backend.CPU) {
            throw new IllegalArgumentException("q, out and lse are host MemorySegments, but this Attention's context is "
                    + context.backend() + " device " + context.device() + ": pass DeviceBuffers (run(Batch, DeviceBuffer, "
                    + "DType, DeviceBuffer, DType, DeviceBuffer, float, boolean, MlaStream))");
        }
        batch.ensureOpen();
        requireType(qDtype, "qDtype");
        requireType(outDtype, "outDtype");
        LatentCache cache = batch.cache();
        requireCacheWidths(cache);
        long th = (long) batch.numTokens() * numHeads;
        Native.requireNative(q, "q", th * (cache.kvLoraRank() + cache.ropeDim()) * qDtype.byteSize());
        Native.requireWritable(out, "out", th * cache.kvLoraRank() * outDtype.byteSize());
        if (lse != null) {
            Native.requireWritable(lse, "lse", th * 4);
        }
        requireScale(softmaxScale);
        // As in compress: the cache, the batch's arrays, q, out and lse are reached through params.
        cache.acquire();
        try {
            fillParams(batch.numSeqs(), batch.numTokens(), batch.blockTableStride(), batch.qoIndptr, batch.seqLens,
                    batch.blockTable, cache, q, qDtype, out, outDtype, lse, softmaxScale, causal);
            if (planned != batch || plannedStaged) {
                plan(batch, false, MemorySegment.NULL);
            }
            runPlanned(MemorySegment.NULL);
        } finally {
            cache.release();
            Reference.reachabilityFence(batch);
            Reference.reachabilityFence(q);
            Reference.reachabilityFence(out);
            Reference.reachabilityFence(lse);
        }
    }

    /**
     * Runs the absorbed attention of a batch with tensors in the context's memory, on any backend:
     * q [T, H, kv_lora_rank + rope_dim] (F32/BF16) to out [T, H, kv_lora_rank] (F32/BF16) and
     * optionally lse f32 [T, H] (null = not wanted). The batch's new tokens must already be in the
     * cache. On the first call with a batch its index arrays (qo_indptr, seq_lens, block table) are
     * copied into backend memory this object owns and the schedule is planned; later calls with the
     * same batch (the other layers of the step) reuse both. The copy, the plan and the attention
     * are queued on stream (null = default stream) on CUDA and this returns before they complete
     * (the copy is from pageable memory, which mla_buffer_upload stages without waiting).
     *
     * @throws IllegalArgumentException a buffer too small or of another context (named), a bad
     *                                  dtype or scale, a batch beyond this object's maxima, a cache
     *                                  of another context or width, a stream of another context
     * @throws IllegalStateException    this object, the batch, its cache, a buffer or the stream is closed
     * @throws MlaException             INVALID_ARGUMENT / CACHE_FULL for bad block tables (CPU), DEVICE
     */
    public synchronized void run(Batch batch, DeviceBuffer q, DType qDtype, DeviceBuffer out, DType outDtype,
                                 DeviceBuffer lse, float softmaxScale, boolean causal, MlaStream stream) {
        Objects.requireNonNull(batch, "batch");
        ensureOpen();
        batch.ensureOpen();
        LatentCache cache = batch.cache();
        requireCache(cache, "batch");
        requireBatchSize(batch.numSeqs(), batch.numTokens());
        Tensors t = checkTensors(batch.numTokens(), q, qDtype, out, outDtype, lse, softmaxScale, stream);
        Uses uses = new Uses().add(cache).add(q).add(out).add(lse);
        try {
            switchStream(stream);
            MemorySegment st = stage(batch, t.stream);
            fillParams(batch.numSeqs(), batch.numTokens(), batch.blockTableStride(),
                    at(st, batch.offsetOf(batch.qoIndptr)), at(st, batch.offsetOf(batch.seqLens)),
                    at(st, batch.offsetOf(batch.blockTable)), cache, t.q, qDtype, t.out, outDtype, t.lse,
                    softmaxScale, causal);
            if (planned != batch || !plannedStaged) {
                plan(batch, true, t.stream);
            }
            runPlanned(t.stream);
        } finally {
            uses.release();
            Reference.reachabilityFence(batch);
        }
    }

    /**
     * Computes the split-KV schedule of a batch whose index arrays the caller keeps in the
     * context's memory, for the following {@link #run(DeviceBatch, DeviceBuffer, DType, DeviceBuffer,
     * DType, DeviceBuffer, float, boolean, MlaStream)} calls with the same DeviceBatch object. Plan
     * again whenever qoIndptr or seqLens change (the schedule depends on them); a block table may
     * change without a new plan. Queued on stream (null = default stream) on CUDA.
     *
     * @throws IllegalArgumentException a batch beyond this object's maxima, a cache of another
     *                                  context or width, a stream of another context
     * @throws IllegalStateException    this object, the cache, a buffer or the stream is closed
     * @throws MlaException             INVALID_ARGUMENT (CPU: bad lengths), DEVICE
     */
    public synchronized void plan(DeviceBatch batch, MlaStream stream) {
        Objects.requireNonNull(batch, "batch");
        ensureOpen();
        requireDeviceBatch(batch);
        MemorySegment s = MlaStream.of(stream, context, "stream");
        Uses uses = new Uses().add(batch.cache()).add(batch.qoIndptr()).add(batch.seqLens()).add(batch.blockTable());
        try {
            switchStream(stream);
            fillParams(batch.numSeqs(), batch.numTokens(), batch.blockTableStride(),
                    DeviceBuffer.of(batch.qoIndptr(), context, "batch.qoIndptr", 0),
                    DeviceBuffer.of(batch.seqLens(), context, "batch.seqLens", 0),
                    DeviceBuffer.of(batch.blockTable(), context, "batch.blockTable", 0), batch.cache(),
                    MemorySegment.NULL, DType.F32, MemorySegment.NULL, DType.F32, null, 1f, true);
            plan(batch, false, s);
        } finally {
            uses.release();
        }
    }

    /**
     * Runs the absorbed attention of a DeviceBatch with the schedule of the last {@link
     * #plan(DeviceBatch, MlaStream)} of that same object: q [T, H, kv_lora_rank + rope_dim]
     * (F32/BF16) to out [T, H, kv_lora_rank] (F32/BF16) and optionally lse f32 [T, H] (null = not
     * wanted), all in the context's memory. Copies nothing and never waits: on CUDA the attention
     * is queued on stream (null = default stream) and this returns before it completes.
     *
     * @throws IllegalArgumentException a buffer too small or of another context (named), a bad
     *                                  dtype or scale, a stream of another context
     * @throws IllegalStateException    batch was not the last one planned; this object, the cache, a
     *                                  buffer or the stream is closed
     * @throws MlaException             INVALID_ARGUMENT / CACHE_FULL for bad block tables (CPU), DEVICE
     */
    public synchronized void run(DeviceBatch batch, DeviceBuffer q, DType qDtype, DeviceBuffer out, DType outDtype,
                                 DeviceBuffer lse, float softmaxScale, boolean causal, MlaStream stream) {
        Objects.requireNonNull(batch, "batch");
        ensureOpen();
        requireDeviceBatch(batch);
        if (planned != batch) {
            throw new IllegalStateException("batch: this DeviceBatch is not the one planned last; call plan(batch, "
                    + "stream) first (and again whenever its lengths change)");
        }
        Tensors t = checkTensors(batch.numTokens(), q, qDtype, out, outDtype, lse, softmaxScale, stream);
        Uses uses = new Uses().add(batch.cache()).add(batch.qoIndptr()).add(batch.seqLens()).add(batch.blockTable())
                .add(q).add(out).add(lse);
        try {
            switchStream(stream);
            fillParams(batch.numSeqs(), batch.numTokens(), batch.blockTableStride(),
                    DeviceBuffer.of(batch.qoIndptr(), context, "batch.qoIndptr", 0),
                    DeviceBuffer.of(batch.seqLens(), context, "batch.seqLens", 0),
                    DeviceBuffer.of(batch.blockTable(), context, "batch.blockTable", 0), batch.cache(),
                    t.q, qDtype, t.out, outDtype, t.lse, softmaxScale, causal);
            runPlanned(t.stream);
        } finally {
            uses.release();
        }
    }

    /** How many schedules this object has planned (one per distinct batch run, or per plan call). */
    public synchronized long plans() {
        return plans;
    }

    /** How many times a Batch's index arrays were copied into this object's backend memory. */
    synchronized long stagedUploads() {
        return stagedUploads;
    }

    /** The checked pointers of one device-level call. */
    /**
     * Plans the schedule of the batch in params into metadata, on stream, and records it as the
     * planned one (key: the Batch or DeviceBatch object; staged: planned from the staged copy of
     * a Batch's arrays). planned stays null if the plan fails.
     */
    private void plan(Object key, boolean staged, MemorySegment stream) {
        planned = null;
        Native.check(Mla.mla_attention_plan(context.handle(), params, metadata, metadataBytes, stream),
                "mla_attention_plan");
        planned = key;
        plannedStaged = staged;
        plans++;
    }

    /** Runs the attention in params with the planned schedule, on stream. */
    private void runPlanned(MemorySegment stream) {
        Native.check(Mla.mla_attention_run(context.handle(), params, metadata, metadataBytes, workspace,
                workspaceBytes, stream), "mla_attention_run");
    }

    private record Tensors(MemorySegment q, MemorySegment out, MemorySegment lse, MemorySegment stream) {
    }

    private Tensors checkTensors(long tokens, DeviceBuffer q, DType qDtype, DeviceBuffer out, DType outDtype,
                                 DeviceBuffer lse, float softmaxScale, MlaStream stream) {
        requireType(qDtype, "qDtype");
        requireType(outDtype, "outDtype");
        requireScale(softmaxScale);
        long th = tokens * numHeads;
        MemorySegment qs = DeviceBuffer.of(q, context, "q", th * (kvLoraRank + ropeDim) * qDtype.byteSize());
        MemorySegment os = DeviceBuffer.of(out, context, "out", th * kvLoraRank * outDtype.byteSize());
        MemorySegment ls = lse == null ? null : DeviceBuffer.of(lse, context, "lse", th * 4);
        if (q == out) {
            throw new IllegalArgumentException("out is the same DeviceBuffer as q");
        }
        if (lse != null && (lse == q || lse == out)) {
            throw new IllegalArgumentException("lse is the same DeviceBuffer as " + (lse == q ? "q" : "out"));
        }
        return new Tensors(qs, os, ls, MlaStream.of(stream, context, "stream"));
    }

    private void requireDeviceBatch(DeviceBatch batch) {
        requireCache(batch.cache(), "batch");
        requireBatchSize(batch.numSeqs(), batch.numTokens());
        DeviceBuffer.of(batch.qoIndptr(), context, "batch.qoIndptr", 4L * (batch.numSeqs() + 1));
        DeviceBuffer.of(batch.seqLens(), context, "batch.seqLens", 4L * batch.numSeqs());
        DeviceBuffer.of(batch.blockTable(), context, "batch.blockTable",
                DeviceBatch.tableBytes(batch.numSeqs(), batch.blockTableStride()));
    }

    private void requireCache(LatentCache cache, String name) {
        cache.ensureOpen();
        if (cache.context() != context) {
            throw new IllegalArgumentException(name + ": its cache belongs to another context (" + cache.context().describe()
                    + ") than this Attention's (" + context.describe() + ")");
        }
        requireCacheWidths(cache);
    }

    private void requireCacheWidths(LatentCache cache) {
        if (cache.kvLoraRank() != kvLoraRank || cache.ropeDim() != ropeDim) {
            throw new IllegalArgumentException("batch: its cache holds kv_lora_rank " + cache.kvLoraRank() + " + rope_dim "
                    + cache.ropeDim() + ", this Attention was sized for " + kvLoraRank + " + " + ropeDim);
        }
    }

    private void requireBatchSize(int numSeqs, int numTokens) {
        if (numSeqs > maxNumSeqs || numTokens > maxNumTokens) {
            throw new IllegalArgumentException("batch has " + numSeqs + " sequences and " + numTokens
                    + " tokens, this Attention was created for at most " + maxNumSeqs + " and " + maxNumTokens);
        }
    }

    private static void requireScale(float softmaxScale) {
        if (!(softmaxScale > 0) || Float.isInfinite(softmaxScale)) {
            throw new IllegalArgumentException("softmaxScale = " + softmaxScale + " must be > 0");
        }
    }

    /**
     * Before work is queued on stream: when the previous device call used another stream, waits
     * for it, so this object's metadata, workspace and staging are not rewritten under queued work.
     */
    private void switchStream(MlaStream stream) {
        if (usedDevice && lastStream != stream && context.backend() != MlaContext.Backend.CPU
                && (lastStream == null || !lastStream.isClosed())) {
            if (lastStream == null) {
                Native.check(Mla.mla_stream_synchronize(context.handle(), MemorySegment.NULL), "mla_stream_synchronize");
            } else {
                lastStream.synchronize();
            }
        }
        lastStream = stream;
        usedDevice = true;
    }

    /**
     * The batch's index arrays in backend memory (the layout of {@link Batch#arrays()}): copied on
     * the first call with the batch, reused while it stays the last one staged. A copy into memory
     * that queued work may still read is ordered after it by the stream (switchStream covers a
     * change of stream); a larger batch gets a new buffer and the old one lives until close.
     */
    private MemorySegment stage(Batch batch, MemorySegment stream) {
        if (staged == batch) {
            return staging.data();
        }
        staged = null;
        MemorySegment src = batch.arrays();
        long bytes = src.byteSize();
        if (staging == null || stagingBytes < bytes) {
            long size = Math.max(MIN_STAGING_BYTES, Math.max(bytes, 2 * stagingBytes));
            staging = backendAlloc(context, arena(), size);
            stagingBytes = size;
        }
        Native.check(Mla.mla_buffer_upload(staging.handle(), 0, src, bytes, stream), "mla_buffer_upload");
        Reference.reachabilityFence(batch);
        staged = batch;
        stagedUploads++;
        return staging.data();
    }

    /** The pointer offset bytes into backend memory (zero-length, in this object's arena). */
    private MemorySegment at(MemorySegment base, long offset) {
        return MemorySegment.ofAddress(base.address() + offset).reinterpret(arena(), null);
    }

    private static void requireType(DType t, String name) {
        if (t != DType.F32 && t != DType.BF16) {
            throw new IllegalArgumentException(name + " = " + t + ", expected F32 or BF16");
        }
    }

    /** Resources a call reaches through pointers in a params struct: none may close during it. */
    private static final class Uses {
        private final NativeResource[] held = new NativeResource[8];
        private int count;

        /** Acquires r (null is skipped); on failure releases what was acquired and rethrows. */
        Uses add(NativeResource r) {
            if (r != null) {
                try {
                    r.acquire();
                } catch (RuntimeException e) {
                    release();
                    throw e;
                }
                held[count++] = r;
            }
            return this;
        }

        void release() {
            for (int i = 0; i < count; i++) {
                held[i].release();
                held[i] = null;
            }
            count = 0;
        }
    }

    @Override
    void afterClose() {
        context.unregister(this);
    }
}
