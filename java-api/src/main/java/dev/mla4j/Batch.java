package dev.mla4j;

import dev.mla4j.bindings.mla_batch;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Objects;
import java.util.Set;

/**
 * One step of a ragged batch over a {@link LatentCache}: sequences (by id) and how many new tokens
 * each contributes (a prefill chunk, or 1 for decode). Building it reserves the cache blocks the
 * new tokens need and captures the block tables and lengths in native memory; rows of the hidden
 * states / queries are the sequences' tokens in the order they were added.
 *
 * <p>A batch describes the cache as it was when built: after a step has written it
 * ({@link MlaLayer#forward} commits the new lengths) it is stale, and using it again throws
 * {@link IllegalStateException}. Its few hundred bytes of native memory live in one block of an
 * automatic arena, so a batch may be built on one thread and run on another, and building one per
 * step costs no arena handshake; {@link #close()} (idempotent) makes it unusable, and the memory
 * is returned once the batch is unreachable.
 */
public final class Batch implements AutoCloseable {
    private final LatentCache cache;
    private final int[] seqIds;
    private final int[] newTokens;
    private final int[] cacheLens;
    private final int numTokens;
    private final int blockTableStride;
    private volatile boolean closed;
    final MemorySegment qoIndptr;     // int32 [B+1]
    final MemorySegment cacheLensSeg; // int32 [B]
    final MemorySegment seqLens;      // int32 [B]: cache_lens + new tokens
    final MemorySegment positions;    // int32 [T]
    final MemorySegment slotMapping;  // int64 [T]
    final MemorySegment blockTable;   // int32 [B, stride]
    final MemorySegment nativeBatch;  // mla_batch
    private final MemorySegment arrays; // slotMapping .. positions, contiguous

    /** Starts a batch over the cache. */
    public static Builder builder(LatentCache cache) {
        return new Builder(cache);
    }

    /** A decode step: one new token for each sequence. */
    public static Batch decode(LatentCache cache, int... seqIds) {
        Builder b = builder(cache);
        for (int id : seqIds) {
            b.add(id, 1);
        }
        return b.build();
    }

    /** Collects (sequence, new tokens) pairs. */
    public static final class Builder {
        private final LatentCache cache;
        private final List<int[]> entries = new ArrayList<>();
        private final Set<Integer> seen = new HashSet<>();

        private Builder(LatentCache cache) {
            this.cache = Objects.requireNonNull(cache, "cache");
        }

        /** Adds a sequence with {@code tokens} >= 0 new tokens; each sequence at most once. */
        public Builder add(int seqId, int tokens) {
            if (tokens < 0) {
                throw new IllegalArgumentException("tokens = " + tokens + " for sequence " + seqId + " must be >= 0");
            }
            if (!seen.add(seqId)) {
                throw new IllegalArgumentException("sequence " + seqId + " is already in this batch");
            }
            entries.add(new int[]{seqId, tokens});
            return this;
        }

        /**
         * Reserves the blocks and builds the batch.
         *
         * @throws MlaException CACHE_FULL when the cache cannot hold the new tokens (nothing reserved)
         */
        public Batch build() {
            if (entries.isEmpty()) {
                throw new IllegalArgumentException("a batch needs at least one sequence");
            }
            int[] ids = new int[entries.size()];
            int[] toks = new int[entries.size()];
            long total = 0;
            for (int i = 0; i < ids.length; i++) {
                ids[i] = entries.get(i)[0];
                toks[i] = entries.get(i)[1];
                total += toks[i];
            }
            if (total > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("the batch has " + total + " tokens, more than 2^31 - 1");
            }
            int[] lens = cache.reserveAll(ids, toks);
            int[][] tables = new int[ids.length][];
            for (int i = 0; i < ids.length; i++) {
                tables[i] = cache.blocks(ids[i]);
            }
            return new Batch(cache, ids, toks, lens, tables, (int) total);
        }
    }

    private Batch(LatentCache cache, int[] seqIds, int[] newTokens, int[] cacheLens, int[][] tables, int numTokens) {
        this.cache = cache;
        this.seqIds = seqIds;
        this.newTokens = newTokens;
        this.cacheLens = cacheLens;
        this.numTokens = numTokens;
        int b = seqIds.length;
        int stride = 1;
        for (int[] t : tables) {
            stride = Math.max(stride, t.length);
        }
        this.blockTableStride = stride;
        int[] indptr = new int[b + 1];
        int[] seqLen = new int[b];
        int[] table = new int[b * stride];
        int tokens = Math.max(1, numTokens);
        int[] pos = new int[tokens];
        long[] slots = new long[tokens];
        int bs = cache.blockSize();
        for (int i = 0; i < b; i++) {
            indptr[i + 1] = indptr[i] + newTokens[i];
            seqLen[i] = cacheLens[i] + newTokens[i];
            System.arraycopy(tables[i], 0, table, i * stride, tables[i].length);
            for (int j = 0; j < newTokens[i]; j++) {
                int p = cacheLens[i] + j;
                pos[indptr[i] + j] = p;
                slots[indptr[i] + j] = (long) tables[i][p / bs] * bs + (p % bs);
            }
        }
        // one allocation: mla_batch, then int64 slots, then the int32 arrays
        long structBytes = (mla_batch.sizeof() + 7) & ~7L;
        long total = structBytes + 8L * tokens + 4L * ((b + 1) + b + b + (long) b * stride + tokens);
        MemorySegment slab = Arena.ofAuto().allocate(total, 8);
        long off = 0;
        nativeBatch = slab.asSlice(off, mla_batch.sizeof());
        off += structBytes;
        slotMapping = slab.asSlice(off, 8L * tokens);
        MemorySegment.copy(slots, 0, slotMapping, ValueLayout.JAVA_LONG, 0, tokens);
        off += 8L * tokens;
        qoIndptr = ints(slab, off, indptr);
        off += 4L * indptr.length;
        cacheLensSeg = ints(slab, off, cacheLens);
        off += 4L * b;
        seqLens = ints(slab, off, seqLen);
        off += 4L * b;
        blockTable = ints(slab, off, table);
        off += 4L * table.length;
        positions = ints(slab, off, pos);
        arrays = slab.asSlice(structBytes);
        mla_batch.struct_size(nativeBatch, (int) mla_batch.sizeof());
        mla_batch.num_seqs(nativeBatch, b);
        mla_batch.num_tokens(nativeBatch, numTokens);
        mla_batch.block_table_stride(nativeBatch, stride);
        mla_batch.qo_indptr(nativeBatch, qoIndptr);
        mla_batch.cache_lens(nativeBatch, cacheLensSeg);
        mla_batch.positions(nativeBatch, positions);
        mla_batch.block_table(nativeBatch, blockTable);
    }

    private static MemorySegment ints(MemorySegment slab, long offset, int[] values) {
        MemorySegment s = slab.asSlice(offset, 4L * values.length);
        MemorySegment.copy(values, 0, s, ValueLayout.JAVA_INT, 0, values.length);
        return s;
    }

    void ensureOpen() {
        if (closed) {
            throw new IllegalStateException("Batch is closed");
        }
    }

    /** Whether {@link #close()} has run. */
    public boolean isClosed() {
        return closed;
    }

    /** Makes the batch unusable; idempotent. */
    @Override
    public void close() {
        closed = true;
    }

    /** The cache this batch was built over. */
    public LatentCache cache() {
        return cache;
    }

    /** B, the number of sequences. */
    public int numSeqs() {
        return seqIds.length;
    }

    /** T, the number of new tokens over all sequences (rows of hidden/out). */
    public int numTokens() {
        return numTokens;
    }

    /** Id of the b-th sequence. */
    public int seqId(int b) {
        return seqIds[b];
    }

    /** New tokens of the b-th sequence. */
    public int newTokens(int b) {
        return newTokens[b];
    }

    /** Tokens the b-th sequence had in the cache when the batch was built. */
    public int cacheLen(int b) {
        return cacheLens[b];
    }

    /** First row of the b-th sequence's tokens in hidden/out (qo_indptr[b]). */
    public int rowOffset(int b) {
        return qoIndptr.getAtIndex(ValueLayout.JAVA_INT, b);
    }

    /** Entries per block-table row. */
    public int blockTableStride() {
        return blockTableStride;
    }

    MemorySegment nativeBatch() {
        ensureOpen();
        return nativeBatch;
    }

    /**
     * The batch's index arrays as one contiguous range (slots, qo_indptr, cache_lens, seq_lens,
     * block table, positions), for staging them into backend memory with a single copy; find an
     * array in it with {@link #offsetOf}.
     */
    MemorySegment arrays() {
        return arrays;
    }

    /** Byte offset of one of this batch's arrays inside {@link #arrays()}. */
    long offsetOf(MemorySegment array) {
        return array.address() - slotMapping.address();
    }
}
