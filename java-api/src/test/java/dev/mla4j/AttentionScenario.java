package dev.mla4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;

/**
 * One ragged kernel-level step on any context, through one of the three ways Attention takes
 * tensors: the caches are filled by compress, then the step's new tokens are compressed and the
 * attention runs twice (as two layers of one step would). DeepSeek-V3 cache widths (latent 512,
 * RoPE 64), 16-token blocks. The inputs depend on the seed only, so two contexts can be compared.
 */
final class AttentionScenario {
    static final int DC = 512;
    static final int DR = 64;
    static final int E = DC + DR;
    static final int BLOCK = 16;

    /** A sequence: tokens already in the cache, and new tokens of the step. */
    record Seq(int cached, int fresh) {
    }

    /** How the tensors are passed. */
    enum Mode {
        /** host MemorySegments and the static compress (CPU contexts only) */
        HOST,
        /** DeviceBuffers with a Batch: Attention stages the index arrays */
        STAGED,
        /** DeviceBuffers with a DeviceBatch whose index arrays the caller uploaded */
        DEVICE_BATCH
    }

    /**
     * out [T, H, DC] and lse [T, H] as floats; cache: every sequence's latent then RoPE entries
     * after the step (f32); plans and uploads: the Attention's counters after the two runs.
     */
    record Result(float[] q, float[] out, float[] lse, float[] cache, long plans, long uploads) {
    }

    private AttentionScenario() {
    }

    static float[] gaussian(Random rnd, int n, double scale) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (rnd.nextGaussian() * scale);
        }
        return v;
    }

    /** values as a native segment of dtype (F32 or BF16, round to nearest even). */
    static MemorySegment encode(Arena arena, float[] values, DType dtype) {
        MemorySegment s = arena.allocate(Math.max(1, (long) values.length * dtype.byteSize()), 8);
        for (int i = 0; i < values.length; i++) {
            if (dtype == DType.F32) {
                s.setAtIndex(ValueLayout.JAVA_FLOAT, i, values[i]);
            } else {
                s.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(values[i]));
            }
        }
        return s;
    }

    static float[] decode(MemorySegment s, DType dtype, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = dtype == DType.F32 ? s.getAtIndex(ValueLayout.JAVA_FLOAT, i)
                    : DType.bf16ToFloat(s.getAtIndex(ValueLayout.JAVA_SHORT, i));
        }
        return v;
    }

    /** A buffer of ctx holding values in dtype. */
    static DeviceBuffer upload(MlaContext ctx, Arena arena, float[] values, DType dtype) {
        MemorySegment s = encode(arena, values, dtype);
        DeviceBuffer b = DeviceBuffer.allocate(ctx, s.byteSize());
        b.upload(s);
        return b;
    }

    static DeviceBuffer uploadInts(MlaContext ctx, Arena arena, int[] values) {
        MemorySegment s = arena.allocateFrom(ValueLayout.JAVA_INT, values.length == 0 ? new int[1] : values);
        DeviceBuffer b = DeviceBuffer.allocate(ctx, s.byteSize());
        b.upload(s);
        return b;
    }

    static float[] download(DeviceBuffer b, Arena arena, DType dtype, int n, MlaStream stream) {
        MemorySegment s = arena.allocate(Math.max(1, (long) n * dtype.byteSize()), 8);
        b.download(0, s, stream);
        return decode(s, dtype, n);
    }

    static int tokens(Seq[] seqs, boolean fresh) {
        int t = 0;
        for (Seq s : seqs) {
            t += fresh ? s.fresh() : s.cached();
        }
        return t;
    }

    static int blocksNeeded(Seq[] seqs) {
        int n = 0;
        for (Seq s : seqs) {
            n += (s.cached() + s.fresh() + BLOCK - 1) / BLOCK;
        }
        return Math.max(1, n);
    }

    /** The index arrays of a batch as the C ABI lays them out: {qo_indptr, seq_lens, block_table}. */
    static int[][] indexArrays(Batch batch, LatentCache cache) {
        int b = batch.numSeqs();
        int stride = batch.blockTableStride();
        int[] qo = new int[b + 1];
        int[] lens = new int[b];
        int[] table = new int[b * stride];
        for (int i = 0; i < b; i++) {
            qo[i + 1] = qo[i] + batch.newTokens(i);
            lens[i] = batch.cacheLen(i) + batch.newTokens(i);
            int[] blocks = cache.blocks(batch.seqId(i));
            System.arraycopy(blocks, 0, table, i * stride, blocks.length);
        }
        return new int[][]{qo, lens, table};
    }

    /** kvType: dtype of the kv_a rows given to compress (F32 or BF16). */
    static Result run(MlaContext ctx, Seq[] seqs, int heads, DType cacheType, DType kvType, DType qType,
                      DType outType, boolean causal, Mode mode, long seed) {
        MlaConfig cfg = MlaConfig.deepseekV3();
        float scale = (float) cfg.effectiveSoftmaxScale();
        Random rnd = new Random(seed);
        float[] norm = new float[DC];
        for (int i = 0; i < DC; i++) {
            norm[i] = (float) (1 + 0.1 * rnd.nextGaussian());
        }
        float[] kvPre = gaussian(rnd, tokens(seqs, false) * E, 1);
        float[] kvStep = gaussian(rnd, tokens(seqs, true) * E, 1);
        int t = tokens(seqs, true);
        float[] q = gaussian(rnd, t * heads * E, 1);
        try (Arena arena = Arena.ofConfined();
             LatentCache cache = LatentCache.create(ctx, cacheType, BLOCK, blocksNeeded(seqs), DC, DR);
             Attention attn = Attention.create(ctx, seqs.length, Math.max(1, t), heads, DC, DR);
             MlaStream stream = MlaStream.create(ctx)) {
            int[] ids = new int[seqs.length];
            for (int i = 0; i < seqs.length; i++) {
                ids[i] = cache.addSequence();
            }
            Batch.Builder pb = Batch.builder(cache);
            Batch.Builder sb = Batch.builder(cache);
            for (int i = 0; i < seqs.length; i++) {
                pb.add(ids[i], seqs[i].cached());
            }
            try (Batch pre = pb.build()) {
                compress(ctx, cfg, attn, pre, kvPre, kvType, norm, mode, arena, stream);
                cache.commit(pre);
            }
            for (int i = 0; i < seqs.length; i++) {
                sb.add(ids[i], seqs[i].fresh());
            }
            float[] out;
            float[] lse;
            try (Batch step = sb.build()) {
                compress(ctx, cfg, attn, step, kvStep, kvType, norm, mode, arena, stream);
                int outN = t * heads * DC;
                if (mode == Mode.HOST) {
                    MemorySegment qs = encode(arena, q, qType);
                    MemorySegment os = arena.allocate(Math.max(1, (long) outN * outType.byteSize()), 8);
                    MemorySegment ls = arena.allocate(Math.max(4, t * heads * 4L), 4);
                    for (int layer = 0; layer < 2; layer++) {
                        attn.run(step, qs, qType, os, outType, ls, scale, causal);
                    }
                    out = decode(os, outType, outN);
                    lse = decode(ls, DType.F32, t * heads);
                } else {
                    try (DeviceBuffer qb = upload(ctx, arena, q, qType);
                         DeviceBuffer ob = DeviceBuffer.allocate(ctx, Math.max(1, (long) outN * outType.byteSize()));
                         DeviceBuffer lb = DeviceBuffer.allocate(ctx, Math.max(4, t * heads * 4L))) {
                        if (mode == Mode.STAGED) {
                            for (int layer = 0; layer < 2; layer++) {
                                attn.run(step, qb, qType, ob, outType, lb, scale, causal, stream);
                            }
                        } else {
                            int[][] idx = indexArrays(step, cache);
                            try (DeviceBuffer qo = uploadInts(ctx, arena, idx[0]);
                                 DeviceBuffer lens = uploadInts(ctx, arena, idx[1]);
                                 DeviceBuffer table = uploadInts(ctx, arena, idx[2])) {
                                Attention.DeviceBatch db = new Attention.DeviceBatch(cache, step.numSeqs(), t,
                                        step.blockTableStride(), qo, lens, table);
                                attn.plan(db, stream);
                                for (int layer = 0; layer < 2; layer++) {
                                    attn.run(db, qb, qType, ob, outType, lb, scale, causal, stream);
                                }
                                stream.synchronize();  // before the index buffers close
                            }
                        }
                        out = download(ob, arena, outType, outN, stream);
                        lse = download(lb, arena, DType.F32, t * heads, stream);
                    }
                }
                cache.commit(step);
            }
            int total = 0;
            for (Seq s : seqs) {
                total += s.cached() + s.fresh();
            }
            float[] stored = new float[total * E];
            int at = 0;
            for (int i = 0; i < seqs.length; i++) {
                int len = seqs[i].cached() + seqs[i].fresh();
                float[][] r = cache.read(ids[i], 0, len);
                System.arraycopy(r[0], 0, stored, at, r[0].length);
                System.arraycopy(r[1], 0, stored, at + r[0].length, r[1].length);
                at += r[0].length + r[1].length;
            }
            stream.synchronize();
            return new Result(decode(encode(arena, q, qType), qType, q.length), out, lse, stored, attn.plans(),
                    attn.stagedUploads());
        }
    }

    /**
     * The attention in double precision from the cache contents a Result read back: {out, lse}.
     * Query j of a sequence with L keys and n new tokens sees keys [0, L - n + j] when causal.
     */
    static float[][] reference(Seq[] seqs, int heads, float[] q, float[] cache, double scale, boolean causal) {
        int t = tokens(seqs, true);
        float[] out = new float[t * heads * DC];
        float[] lse = new float[t * heads];
        int row = 0;
        int base = 0;
        for (Seq s : seqs) {
            int len = s.cached() + s.fresh();
            int ropeAt = base + len * DC;  // cache holds [len, DC] latents then [len, DR] rope keys
            for (int j = 0; j < s.fresh(); j++, row++) {
                int keys = causal ? s.cached() + j + 1 : len;
                for (int h = 0; h < heads; h++) {
                    int qo = (row * heads + h) * E;
                    double[] sc = new double[keys];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int k = 0; k < keys; k++) {
                        double dot = 0;
                        for (int c = 0; c < DC; c++) {
                            dot += (double) q[qo + c] * cache[base + k * DC + c];
                        }
                        for (int c = 0; c < DR; c++) {
                            dot += (double) q[qo + DC + c] * cache[ropeAt + k * DR + c];
                        }
                        sc[k] = dot * scale;
                        max = Math.max(max, sc[k]);
                    }
                    double sum = 0;
                    for (int k = 0; k < keys; k++) {
                        sum += Math.exp(sc[k] - max);
                    }
                    int oo = (row * heads + h) * DC;
                    for (int k = 0; k < keys; k++) {
                        double p = Math.exp(sc[k] - max) / sum;
                        for (int c = 0; c < DC; c++) {
                            out[oo + c] += (float) (p * cache[base + k * DC + c]);
                        }
                    }
                    lse[row * heads + h] = (float) (max + Math.log(sum));
                }
            }
            base += len * E;
        }
        return new float[][]{out, lse};
    }

    /**
     * A DeviceBatch of two sequences with one query each: the first has no keys (seq_lens 0), the
     * second 20 keys. Returns {out [2, heads, DC], lse [2, heads]}.
     */
    static float[][] zeroLengthSequence(MlaContext ctx, int heads, long seed) {
        MlaConfig cfg = MlaConfig.deepseekV3();
        Random rnd = new Random(seed);
        try (Arena arena = Arena.ofConfined();
             LatentCache cache = LatentCache.create(ctx, DType.BF16, BLOCK, 4, DC, DR);
             Attention attn = Attention.create(ctx, 2, 2, heads, DC, DR);
             MlaStream stream = MlaStream.create(ctx)) {
            int empty = cache.addSequence();
            int full = cache.addSequence();
            float[] norm = new float[DC];
            java.util.Arrays.fill(norm, 1f);
            try (Batch pre = Batch.builder(cache).add(empty, 0).add(full, 20).build();
                 DeviceBuffer kv = upload(ctx, arena, gaussian(rnd, 20 * E, 1), DType.F32);
                 DeviceBuffer nb = upload(ctx, arena, norm, DType.F32)) {
                attn.compress(cfg, pre, kv, DType.F32, E, nb, DType.F32, stream);
                cache.commit(pre);
                stream.synchronize();  // before kv and nb close
            }
            int[] fullBlocks = cache.blocks(full);
            int[] table = {0, 0, fullBlocks[0], fullBlocks[1]};
            try (DeviceBuffer qo = uploadInts(ctx, arena, new int[]{0, 1, 2});
                 DeviceBuffer lens = uploadInts(ctx, arena, new int[]{0, 20});
                 DeviceBuffer bt = uploadInts(ctx, arena, table);
                 DeviceBuffer q = upload(ctx, arena, gaussian(rnd, 2 * heads * E, 1), DType.BF16);
                 DeviceBuffer out = upload(ctx, arena, gaussian(rnd, 2 * heads * DC, 1), DType.F32);
                 DeviceBuffer lse = DeviceBuffer.allocate(ctx, 2L * heads * 4)) {
                Attention.DeviceBatch db = new Attention.DeviceBatch(cache, 2, 2, 2, qo, lens, bt);
                attn.plan(db, stream);
                attn.run(db, q, DType.BF16, out, DType.F32, lse, (float) cfg.effectiveSoftmaxScale(), true, stream);
                float[] o = download(out, arena, DType.F32, 2 * heads * DC, stream);
                float[] l = download(lse, arena, DType.F32, 2 * heads, stream);
                return new float[][]{o, l};
            }
        }
    }

    /**
     * Restaging: on one Attention, run batch X, compress batch Y (which replaces the staged copy
     * of X's arrays), run X again, on the streams given per call (null = default stream). Returns
     * {out of the first run, out of the second run, {plans, uploads}}; both runs must agree.
     */
    static float[][] restage(MlaContext ctx, int heads, MlaStream first, MlaStream second) {
        MlaConfig cfg = MlaConfig.deepseekV3();
        float scale = (float) cfg.effectiveSoftmaxScale();
        Random rnd = new Random(23);
        float[] norm = new float[DC];
        java.util.Arrays.fill(norm, 1f);
        try (Arena arena = Arena.ofConfined();
             LatentCache cache = LatentCache.create(ctx, DType.BF16, BLOCK, 16, DC, DR);
             Attention attn = Attention.create(ctx, 2, 4, heads, DC, DR);
             DeviceBuffer nb = upload(ctx, arena, norm, DType.F32);
             DeviceBuffer kv = upload(ctx, arena, gaussian(rnd, 100 * E, 1), DType.F32);
             DeviceBuffer q = upload(ctx, arena, gaussian(rnd, 4 * heads * E, 1), DType.BF16);
             DeviceBuffer out = DeviceBuffer.allocate(ctx, 4L * heads * DC * 4)) {
            int a = cache.addSequence();
            int b = cache.addSequence();
            int c = cache.addSequence();
            try (Batch pre = Batch.builder(cache).add(a, 40).add(b, 33).build()) {
                attn.compress(cfg, pre, kv, DType.F32, E, nb, DType.F32, first);
                cache.commit(pre);
            }
            try (Batch x = Batch.builder(cache).add(a, 2).add(b, 2).build();
                 Batch y = Batch.builder(cache).add(c, 20).build()) {
                attn.compress(cfg, x, kv, DType.F32, E, nb, DType.F32, first);
                attn.run(x, q, DType.BF16, out, DType.F32, null, scale, true, first);
                float[] out1 = download(out, arena, DType.F32, 4 * heads * DC, first);
                out.upload(new float[4 * heads * DC]);
                attn.compress(cfg, y, kv, DType.F32, E, nb, DType.F32, second);
                attn.run(x, q, DType.BF16, out, DType.F32, null, scale, true, second);
                float[] out2 = download(out, arena, DType.F32, 4 * heads * DC, second);
                return new float[][]{out1, out2, {attn.plans(), attn.stagedUploads()}};
            }
        }
    }

    private static void compress(MlaContext ctx, MlaConfig cfg, Attention attn, Batch batch, float[] kv, DType kvType,
                                 float[] norm, Mode mode, Arena arena, MlaStream stream) {
        if (mode == Mode.HOST) {
            Attention.compress(ctx, cfg, batch, encode(arena, kv, kvType), kvType, E,
                    encode(arena, norm, DType.F32), DType.F32);
            return;
        }
        try (DeviceBuffer kb = upload(ctx, arena, kv.length == 0 ? new float[1] : kv, kvType);
             DeviceBuffer nb = upload(ctx, arena, norm, DType.F32)) {
            if (mode == Mode.STAGED) {
                attn.compress(cfg, batch, kb, kvType, E, nb, DType.F32, stream);
            } else {
                int t = batch.numTokens();
                int[] pos = new int[Math.max(1, t)];
                long[] slots = new long[Math.max(1, t)];
                int[][] idx = indexArrays(batch, batch.cache());
                for (int b = 0; b < batch.numSeqs(); b++) {
                    int[] blocks = batch.cache().blocks(batch.seqId(b));
                    for (int j = 0; j < batch.newTokens(b); j++) {
                        int p = batch.cacheLen(b) + j;
                        pos[idx[0][b] + j] = p;
                        slots[idx[0][b] + j] = (long) blocks[p / BLOCK] * BLOCK + p % BLOCK;
                    }
                }
                try (DeviceBuffer pb = uploadInts(ctx, arena, pos);
                     DeviceBuffer sb = DeviceBuffer.allocate(ctx, 8L * slots.length)) {
                    sb.upload(arena.allocateFrom(ValueLayout.JAVA_LONG, slots));
                    Attention.compress(cfg, batch.cache(), t, kb, kvType, E, nb, DType.F32, pb, sb, stream);
                    stream.synchronize();  // before the buffers close
                }
            }
            stream.synchronize();
        }
    }
}
