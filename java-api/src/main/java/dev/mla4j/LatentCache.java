package dev.mla4j;

import dev.mla4j.bindings.Mla;
import dev.mla4j.bindings.mla_cache_options;
import dev.mla4j.bindings.mla_cache_view;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Objects;

/**
 * A paged latent cache (owns a native {@code mla_cache}) and the allocator of its blocks.
 *
 * <p>Memory is {@code [numBlocks, blockSize, kvLoraRank + ropeDim]}: per token the normalized
 * latent followed by the rotated RoPE key. Sequences are identified by ids this cache hands out.
 * A sequence owns an ordered list of blocks; {@link #fork} shares the parent's full blocks
 * (reference counted; full blocks are never written again) and copies its partly filled last
 * block, so parent and child then grow independently. Allocation is all or nothing: when the free
 * blocks do not suffice, {@link MlaException} with status CACHE_FULL is thrown and nothing changes.
 *
 * <p>Thread-safe: the allocator is synchronized; batches for different sequences may run at the
 * same time (they write disjoint blocks).
 */
public final class LatentCache extends NativeResource {
    private final MlaContext context;
    private final DType dtype;
    private final int blockSize;
    private final int numBlocks;
    private final int kvLoraRank;
    private final int ropeDim;
    private final MemorySegment view;

    // allocator state, guarded by this
    private final int[] refCount;
    private final ArrayDeque<Integer> free = new ArrayDeque<>();
    private final Map<Integer, Sequence> sequences = new HashMap<>();
    private int nextId;

    private static final class Sequence {
        int length;
        boolean writing;  // a forward is appending to it (between beginWrite and endWrite)
        int[] blocks = new int[4];
        int numBlocks;

        void add(int block) {
            if (numBlocks == blocks.length) {
                blocks = Arrays.copyOf(blocks, blocks.length * 2);
            }
            blocks[numBlocks++] = block;
        }
    }

    private LatentCache(MlaContext context, Arena arena, MemorySegment raw, DType dtype, int blockSize, int numBlocks,
                        int kvLoraRank, int ropeDim) {
        super("LatentCache", arena, raw, Mla::mla_cache_destroy);
        this.context = context;
        this.dtype = dtype;
        this.blockSize = blockSize;
        this.numBlocks = numBlocks;
        this.kvLoraRank = kvLoraRank;
        this.ropeDim = ropeDim;
        this.refCount = new int[numBlocks];
        for (int b = 0; b < numBlocks; b++) {
            free.add(b);
        }
        this.view = mla_cache_view.allocate(arena);
        Native.check(Mla.mla_cache_get_view(handle(), view), "mla_cache_get_view");
    }

    /** A cache sized for a model's config (kv_lora_rank, qk_rope_head_dim). */
    public static LatentCache create(MlaContext context, MlaConfig config, DType dtype, int blockSize, int numBlocks) {
        Objects.requireNonNull(config, "config");
        return create(context, dtype, blockSize, numBlocks, config.kvLoraRank(), config.qkRopeHeadDim());
    }

    /**
     * Allocates a zero-filled cache in the context's memory.
     *
     * @param dtype     BF16 or F32
     * @param blockSize tokens per block, a power of two in [1, 4096]
     * @param numBlocks blocks, >= 1
     * @throws IllegalArgumentException a bad dtype or size (named)
     * @throws MlaException             OUT_OF_MEMORY, DEVICE, or INVALID_ARGUMENT from libmla
     */
    public static LatentCache create(MlaContext context, DType dtype, int blockSize, int numBlocks, int kvLoraRank,
                                     int ropeDim) {
        Objects.requireNonNull(context, "context");
        Objects.requireNonNull(dtype, "dtype");
        if (dtype != DType.BF16 && dtype != DType.F32) {
            throw new IllegalArgumentException("dtype = " + dtype + ", a cache is BF16 or F32");
        }
        if (blockSize < 1 || blockSize > 4096 || Integer.bitCount(blockSize) != 1) {
            throw new IllegalArgumentException("blockSize = " + blockSize + " must be a power of two in [1, 4096]");
        }
        if (numBlocks < 1) {
            throw new IllegalArgumentException("numBlocks = " + numBlocks + " must be >= 1");
        }
        return context.createChild(arena -> {  // the context refuses to close meanwhile
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment opts = mla_cache_options.allocate(tmp);
                Native.check(Mla.mla_cache_options_init(opts), "mla_cache_options_init");
                mla_cache_options.dtype(opts, dtype.mlaCode());
                mla_cache_options.block_size(opts, blockSize);
                mla_cache_options.num_blocks(opts, numBlocks);
                mla_cache_options.kv_lora_rank(opts, kvLoraRank);
                mla_cache_options.rope_dim(opts, ropeDim);
                MemorySegment out = tmp.allocate(ValueLayout.ADDRESS);
                Native.check(Mla.mla_cache_create(context.handle(), opts, out), "mla_cache_create");
                return new LatentCache(context, arena, out.get(ValueLayout.ADDRESS, 0), dtype, blockSize,
                        numBlocks, kvLoraRank, ropeDim);
            }
        });
    }

    public MlaContext context() {
        return context;
    }

    public DType dtype() {
        return dtype;
    }

    public int blockSize() {
        return blockSize;
    }

    public int numBlocks() {
        return numBlocks;
    }

    public int kvLoraRank() {
        return kvLoraRank;
    }

    public int ropeDim() {
        return ropeDim;
    }

    /** The native mla_cache_view of this cache's memory (valid while the cache is open). */
    MemorySegment view() {
        ensureOpen();
        return view;
    }

    /** Bytes of one token's entry: (kvLoraRank + ropeDim) * element size. */
    public long bytesPerToken() {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment perToken = tmp.allocate(ValueLayout.JAVA_LONG);
            Native.check(Mla.mla_cache_bytes(handle(), perToken, MemorySegment.NULL), "mla_cache_bytes");
            return perToken.get(ValueLayout.JAVA_LONG, 0);
        }
    }

    /** Bytes of the whole cache memory. */
    public long totalBytes() {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment total = tmp.allocate(ValueLayout.JAVA_LONG);
            Native.check(Mla.mla_cache_bytes(handle(), MemorySegment.NULL, total), "mla_cache_bytes");
            return total.get(ValueLayout.JAVA_LONG, 0);
        }
    }

    // ---------------------------------------------------------------------------------------
    // allocator

    /** Starts an empty sequence and returns its id. */
    public synchronized int addSequence() {
        ensureOpen();
        int id = nextId++;
        sequences.put(id, new Sequence());
        return id;
    }

    private Sequence seq(int id) {
        Sequence s = sequences.get(id);
        if (s == null) {
            throw new IllegalArgumentException("sequence " + id + " is not in this cache (never added, or freed)");
        }
        return s;
    }

    /** Tokens the sequence has in the cache. */
    public synchronized int length(int seqId) {
        return seq(seqId).length;
    }

    /** The sequence's block ids, in order (a copy). */
    public synchronized int[] blocks(int seqId) {
        Sequence s = seq(seqId);
        return Arrays.copyOf(s.blocks, s.numBlocks);
    }

    /** Blocks not owned by any sequence. */
    public synchronized int freeBlocks() {
        return free.size();
    }

    /** Number of live sequences. */
    public synchronized int sequenceCount() {
        return sequences.size();
    }

    /** References to a block (sequences holding it); 0 = free. */
    public synchronized int refCount(int block) {
        if (block < 0 || block >= numBlocks) {
            throw new IllegalArgumentException("block = " + block + ", not a block id in [0, " + numBlocks + ")");
        }
        return refCount[block];
    }

    /**
     * Makes sure the sequence has blocks for {@code length + extraTokens} tokens, allocating new
     * blocks at its end.
     *
     * @throws MlaException CACHE_FULL when not enough blocks are free (nothing allocated)
     */
    public synchronized void reserve(int seqId, int extraTokens) {
        ensureOpen();
        if (extraTokens < 0) {
            throw new IllegalArgumentException("extraTokens = " + extraTokens + " must be >= 0");
        }
        Sequence s = seq(seqId);
        long needTokens = (long) s.length + extraTokens;
        long needBlocks = (needTokens + blockSize - 1) / blockSize;
        long more = needBlocks - s.numBlocks;
        if (more <= 0) {
            return;
        }
        if (more > free.size()) {
            throw new MlaException(MlaException.Status.CACHE_FULL, "LatentCache: sequence " + seqId + " needs " + more
                    + " more blocks for " + needTokens + " tokens, " + free.size() + " of " + numBlocks + " are free");
        }
        for (long i = 0; i < more; i++) {
            int b = free.poll();
            refCount[b] = 1;
            s.add(b);
        }
    }

    /**
     * Reserves blocks for several sequences at once, all or nothing: {@code extraTokens[i]} more
     * tokens for sequence {@code seqIds[i]}. Returns each sequence's current length.
     *
     * @throws MlaException CACHE_FULL when the free blocks do not cover all of them (nothing allocated)
     */
    synchronized int[] reserveAll(int[] seqIds, int[] extraTokens) {
        ensureOpen();
        long total = 0;
        int[] lengths = new int[seqIds.length];
        for (int i = 0; i < seqIds.length; i++) {
            Sequence s = seq(seqIds[i]);
            lengths[i] = s.length;
            long needBlocks = ((long) s.length + extraTokens[i] + blockSize - 1) / blockSize;
            total += Math.max(0, needBlocks - s.numBlocks);
        }
        if (total > free.size()) {
            throw new MlaException(MlaException.Status.CACHE_FULL, "LatentCache: the batch needs " + total
                    + " more blocks, " + free.size() + " of " + numBlocks + " are free");
        }
        for (int i = 0; i < seqIds.length; i++) {
            reserve(seqIds[i], extraTokens[i]);
        }
        return lengths;
    }

    /**
     * Records that tokens [length, length + count) of the sequence have been written, e.g. by
     * {@link Attention#compress}; {@link MlaLayer#forward} does this itself.
     *
     * @throws IllegalStateException the sequence has no blocks reserved for them
     */
    public synchronized void advance(int seqId, int count) {
        Sequence s = seq(seqId);
        if (count < 0 || (long) s.length + count > (long) s.numBlocks * blockSize) {
            throw new IllegalStateException("sequence " + seqId + ": cannot advance by " + count + " tokens, " + s.length
                    + " of " + (long) s.numBlocks * blockSize + " reserved slots are used");
        }
        s.length += count;
    }

    /**
     * Advances every sequence of the batch by its new tokens, after they were written to the
     * cache ({@link Attention#compress}); {@link MlaLayer#forward} calls this itself.
     *
     * @throws IllegalStateException the batch is stale (a sequence's length changed since it was built)
     */
    public synchronized void commit(Batch batch) {
        if (batch.cache() != this) {
            throw new IllegalArgumentException("the batch was built for another cache");
        }
        for (int b = 0; b < batch.numSeqs(); b++) {
            Sequence s = seq(batch.seqId(b));
            if (s.length != batch.cacheLen(b)) {
                throw new IllegalStateException("batch is stale: sequence " + batch.seqId(b) + " has " + s.length
                        + " tokens, the batch was built at " + batch.cacheLen(b));
            }
        }
        for (int b = 0; b < batch.numSeqs(); b++) {
            seq(batch.seqId(b)).length += batch.newTokens(b);
        }
    }

    /**
     * Claims the batch's sequences for one forward: checks that the batch is current and that no
     * other forward is appending to them, then marks them until {@link #endWrite}. Two batches
     * appending to one sequence thus never write at once: the second fails before writing.
     *
     * @throws IllegalStateException the batch is stale, or another thread is appending to one of its sequences
     */
    synchronized void beginWrite(Batch batch) {
        if (batch.cache() != this) {
            throw new IllegalArgumentException("the batch was built for another cache");
        }
        checkCurrent(batch);
        for (int b = 0; b < batch.numSeqs(); b++) {
            seq(batch.seqId(b)).writing = true;
        }
    }

    /** Ends a {@link #beginWrite}; advances the sequences by the batch's tokens when commit is set. */
    synchronized void endWrite(Batch batch, boolean commit) {
        for (int b = 0; b < batch.numSeqs(); b++) {
            Sequence s = sequences.get(batch.seqId(b));
            s.writing = false;
            if (commit) {
                s.length += batch.newTokens(b);
            }
        }
    }

    /** Checks that the batch still matches the sequences' lengths (before a native call writes). */
    synchronized void checkCurrent(Batch batch) {
        for (int b = 0; b < batch.numSeqs(); b++) {
            Sequence s = seq(batch.seqId(b));
            if (s.writing) {
                throw new IllegalStateException("sequence " + batch.seqId(b)
                        + " is being appended to by another thread's forward");
            }
            if (s.length != batch.cacheLen(b)) {
                throw new IllegalStateException("batch is stale: sequence " + batch.seqId(b) + " has " + s.length
                        + " tokens, the batch was built at " + batch.cacheLen(b));
            }
        }
    }

    /**
     * A new sequence with the parent's tokens: full blocks are shared, the partly filled last block
     * (if any) is copied into a new block with {@code mla_cache_copy_blocks}.
     *
     * @throws MlaException CACHE_FULL when no block is free for the copy (nothing changed)
     */
    public synchronized int fork(int parentId) {
        ensureOpen();
        Sequence p = seq(parentId);
        int full = p.length / blockSize;
        boolean partial = p.length % blockSize != 0;
        if (partial && free.isEmpty()) {
            throw new MlaException(MlaException.Status.CACHE_FULL, "LatentCache: fork of sequence " + parentId
                    + " needs a block for its partial last block, none of " + numBlocks + " is free");
        }
        Sequence c = new Sequence();
        for (int i = 0; i < full; i++) {
            c.add(p.blocks[i]);
        }
        if (partial) {
            int src = p.blocks[full];
            int dst = free.peek();
            try (Arena tmp = Arena.ofConfined()) {
                Native.check(Mla.mla_cache_copy_blocks(handle(), tmp.allocateFrom(ValueLayout.JAVA_INT, src),
                        tmp.allocateFrom(ValueLayout.JAVA_INT, dst), 1, MemorySegment.NULL), "mla_cache_copy_blocks");
            }
            free.poll();
            refCount[dst] = 1;
            c.add(dst);
        }
        for (int i = 0; i < full; i++) {
            refCount[p.blocks[i]]++;
        }
        c.length = p.length;
        int id = nextId++;
        sequences.put(id, c);
        return id;
    }

    /**
     * Drops a sequence; its blocks return to the free list when no other sequence shares them.
     *
     * @throws IllegalStateException a forward on another thread is appending to the sequence
     */
    public synchronized void free(int seqId) {
        Sequence s = seq(seqId);
        if (s.writing) {
            throw new IllegalStateException("sequence " + seqId + " is being appended to by a forward; free it after");
        }
        for (int i = 0; i < s.numBlocks; i++) {
            int b = s.blocks[i];
            if (--refCount[b] == 0) {
                free.add(b);
            }
        }
        sequences.remove(seqId);
    }

    /**
     * Reads tokens [start, start + count) of a sequence, converted to f32: {latent [count,
     * kvLoraRank], rope [count, ropeDim]} row-major. For tests and debugging.
     */
    public float[][] read(int seqId, int start, int count) {
        int[] table;
        synchronized (this) {
            Sequence s = seq(seqId);
            if (start < 0 || count < 0 || (long) start + count > s.length) {
                throw new IllegalArgumentException("tokens [" + start + ", " + ((long) start + count) + ") of sequence "
                        + seqId + " are outside its " + s.length + " tokens");
            }
            table = Arrays.copyOf(s.blocks, s.numBlocks);
        }
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment lat = tmp.allocate(ValueLayout.JAVA_FLOAT, Math.max(1, (long) count * kvLoraRank));
            MemorySegment rope = tmp.allocate(ValueLayout.JAVA_FLOAT, Math.max(1, (long) count * ropeDim));
            MemorySegment bt = tmp.allocateFrom(ValueLayout.JAVA_INT, table.length == 0 ? new int[]{0} : table);
            Native.check(Mla.mla_cache_read(handle(), bt, start, count, lat, rope), "mla_cache_read");
            return new float[][]{
                    lat.asSlice(0, (long) count * kvLoraRank * 4).toArray(ValueLayout.JAVA_FLOAT),
                    rope.asSlice(0, (long) count * ropeDim * 4).toArray(ValueLayout.JAVA_FLOAT)};
        }
    }

    @Override
    void afterClose() {
        context.unregister(this);
    }
}
