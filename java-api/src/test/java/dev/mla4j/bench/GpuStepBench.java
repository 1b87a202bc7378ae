package dev.mla4j.bench;

import dev.mla4j.Attention;
import dev.mla4j.Batch;
import dev.mla4j.DType;
import dev.mla4j.DeviceBuffer;
import dev.mla4j.LatentCache;
import dev.mla4j.MlaConfig;
import dev.mla4j.MlaContext;
import dev.mla4j.MlaException;
import dev.mla4j.MlaLayer;
import dev.mla4j.MlaStream;
import dev.mla4j.Tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * One decode step through the Java API, the Java side of the Java-vs-C benchmark: exactly the work
 * of native/bench/abi/bench_abi_step.c (read its header for the shapes, the timing method and the
 * CSV columns), with the same seeded inputs, warm-up, iteration counts and output format; the impl
 * column says "java". scripts/gpu-java-bench.sh runs both in one call and joins their rows.
 *
 * <ul>
 *   <li>layer_step: {@link MlaLayer#forward(Batch, DeviceBuffer, DType, DeviceBuffer, DType, MlaStream)}
 *       with a {@link Batch#decode} built per call (what an engine's step does);</li>
 *   <li>attention_run: {@link Attention#run(Attention.DeviceBatch, DeviceBuffer, DType, DeviceBuffer,
 *       DType, DeviceBuffer, float, boolean, MlaStream)} with the index arrays in device memory,
 *       planned once before timing.</li>
 * </ul>
 * Clock: System.nanoTime (CLOCK_MONOTONIC on Linux). Not a test (no JUnit annotations).
 *
 * <p>usage: GpuStepBench [--batches 1,128] [--cached N] [--iters N] [--reps N] [--warmup N]
 * [--warmup-kernel N] [--warmup-seconds N] [--single N] [--device N] [--cpu]. Exit status: 0, 77 without a usable CUDA device (the reason
 * is printed), 2 for bad arguments, 1 for other failures.
 */
public final class GpuStepBench {
    private static final int BLOCK_SIZE = 64;
    /** Length at which the layer_step warm-up sequences start again empty. */
    private static final int WARM_TOKENS = 1024;
    private static final long SEED_WEIGHTS = 1000;
    private static final long SEED_KV_A = 2000;
    private static final long SEED_HIDDEN = 3000;
    private static final long SEED_Q = 4000;

    private int[] batches = {1, 128};
    private int cached = -1;
    private int iters = 20;
    private int reps = 5;
    private int warmup = 2000;
    private int warmupKernel = 20000;
    private int warmupSeconds = 2;
    private int single = 20;
    private int device = 0;
    private boolean cpu;

    private GpuStepBench() {
    }

    public static void main(String[] args) {
        GpuStepBench b = new GpuStepBench();
        try {
            b.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("GpuStepBench: " + e.getMessage());
            System.exit(2);
        }
        try {
            System.exit(b.run());
        } catch (MlaException e) {
            System.err.println("GpuStepBench: " + e.getMessage());
            System.exit(1);
        }
    }

    private static int parseInt(String v, String name, int min) {
        try {
            int x = Integer.parseInt(v);
            if (x >= min) {
                return x;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new IllegalArgumentException(name + " = '" + v + "', expected an integer >= " + min);
    }

    private void parse(String[] args) {
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--cpu")) {
                cpu = true;
                continue;
            }
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException("unknown or incomplete argument '" + a + "'");
            }
            String v = args[++i];
            switch (a) {
                case "--batches" -> batches = Arrays.stream(v.split(",")).mapToInt(s -> parseInt(s, a, 1)).toArray();
                case "--cached" -> cached = parseInt(v, a, 1);
                case "--iters" -> iters = parseInt(v, a, 1);
                case "--reps" -> reps = parseInt(v, a, 1);
                case "--warmup" -> warmup = parseInt(v, a, 0);
                case "--warmup-kernel" -> warmupKernel = parseInt(v, a, 0);
                case "--warmup-seconds" -> warmupSeconds = parseInt(v, a, 0);
                case "--single" -> single = parseInt(v, a, 1);
                case "--device" -> device = parseInt(v, a, 0);
                default -> throw new IllegalArgumentException("unknown argument '" + a + "'");
            }
        }
        if (cached < 0) {
            cached = cpu ? 200 : 4095;
        }
    }

    // ---- seeded values, bit-identical to bench_abi_step.c ----

    /** splitmix64 over state[0]. */
    private static long splitmix64(long[] state) {
        long z = (state[0] += 0x9E3779B97F4A7C15L);
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** n bf16 values uniform in [-scale, scale) from seed, into dst at element 0. */
    private static void fillBf16(MemorySegment dst, long n, long seed, double scale) {
        long[] s = {seed};
        for (long i = 0; i < n; i++) {
            double u = (splitmix64(s) >>> 11) * 0x1.0p-53;
            dst.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16((float) ((2.0 * u - 1.0) * scale)));
        }
    }

    private static DeviceBuffer uploadBf16(MlaContext ctx, long n, long seed, double scale) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment h = tmp.allocate(n * 2, 8);
            fillBf16(h, n, seed, scale);
            DeviceBuffer b = DeviceBuffer.allocate(ctx, n * 2);
            b.upload(h);
            return b;
        }
    }

    private static DeviceBuffer uploadInts(MlaContext ctx, int[] v, MlaStream stream) {
        try (Arena tmp = Arena.ofConfined()) {
            DeviceBuffer b = DeviceBuffer.allocate(ctx, 4L * v.length);
            b.upload(0, tmp.allocateFrom(ValueLayout.JAVA_INT, v), stream);
            return b;
        }
    }

    /**
     * Checks that the first n bf16 values of b are finite; returns {how many are non-zero, their
     * sum in index order} (the same inputs give the same sum in C).
     */
    private static double[] checkFinite(DeviceBuffer b, long n, MlaStream stream, String what) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment h = tmp.allocate(n * 2, 8);
            b.download(0, h, stream);
            long nonzero = 0;
            double sum = 0;
            for (long i = 0; i < n; i++) {
                float v = DType.bf16ToFloat(h.getAtIndex(ValueLayout.JAVA_SHORT, i));
                sum += v;
                if (!Float.isFinite(v)) {
                    throw new IllegalStateException(what + "[" + i + "] = " + v + " is not finite");
                }
                if (v != 0) {
                    nonzero++;
                }
            }
            return new double[]{nonzero, sum};
        }
    }

    // ---- the run ----

    private MlaConfig config() {
        MlaConfig c = MlaConfig.deepseekV3();
        if (!cpu) {
            return c;
        }
        return new MlaConfig(256, 4, 64, 128, 32, 16, 32, c.ropeInterleave(), c.ropeScaling(),
                c.maxPositionEmbeddings(), c.originalMaxPositionEmbeddings(), c.ropeTheta(), c.ropeFactor(),
                c.ropeBetaFast(), c.ropeBetaSlow(), c.ropeMscale(), c.ropeMscaleAllDim(), c.ropeAttentionFactor(),
                c.ropeTruncate(), c.rmsNormEps(), c.softmaxScale());
    }

    /** Seeded bf16 weights (norms 1) as bench_abi_step.c makes them; the layer copies them. */
    private static MlaLayer createLayer(MlaContext ctx, MlaConfig c) {
        long h = c.numHeads();
        long d = c.hiddenSize();
        long qk = c.qkNopeHeadDim() + c.qkRopeHeadDim();
        Map<String, Tensor> w = new HashMap<>();
        try (Arena arena = Arena.ofConfined()) {
            weight(arena, w, "q_a_proj", c.qLoraRank(), d, SEED_WEIGHTS, false);
            weight(arena, w, "q_a_layernorm", c.qLoraRank(), 1, 0, true);
            weight(arena, w, "q_b_proj", h * qk, c.qLoraRank(), SEED_WEIGHTS + 2, false);
            weight(arena, w, "kv_a_proj_with_mqa", c.kvLoraRank() + c.qkRopeHeadDim(), d, SEED_WEIGHTS + 3, false);
            weight(arena, w, "kv_a_layernorm", c.kvLoraRank(), 1, 0, true);
            weight(arena, w, "kv_b_proj", h * (c.qkNopeHeadDim() + c.vHeadDim()), c.kvLoraRank(), SEED_WEIGHTS + 5, false);
            weight(arena, w, "o_proj", d, h * c.vHeadDim(), SEED_WEIGHTS + 6, false);
            return MlaLayer.create(ctx, c, name -> Optional.ofNullable(w.get(name)), 0, c.numHeads());
        }
    }

    private static void weight(Arena arena, Map<String, Tensor> w, String name, long rows, long cols, long seed,
                               boolean norm) {
        long n = rows * cols;
        MemorySegment s = arena.allocate(n * 2, 8);
        if (norm) {
            s.fill((byte) 0);
            for (long i = 0; i < n; i++) {
                s.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(1f));
            }
        } else {
            fillBf16(s, n, seed, 1.0 / Math.sqrt((double) cols));
        }
        long[] shape = norm ? new long[]{rows} : new long[]{rows, cols};
        w.put(name + ".weight", Tensor.of(name + ".weight", DType.BF16, shape, s));
    }

    private record Timing(double perCallUs, double perCallMinUs, double singleUs, double singleMinUs) {
    }

    private static double median(double[] v) {
        Arrays.sort(v);
        int n = v.length;
        return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    }

    /**
     * Warm-up: runs of warm, at least warmupCalls of them and (checked every 256 calls) until
     * seconds have passed; then the timed runs of call.
     */
    private Timing time(MlaStream stream, int warmupCalls, double seconds, Runnable warm, Runnable call) {
        long w0 = System.nanoTime();
        for (long i = 0; ; i++) {
            if (i >= warmupCalls) {
                if (seconds <= 0 || i % 256 != 0) {
                    break;
                }
                stream.synchronize();
                if (System.nanoTime() - w0 >= seconds * 1e9) {
                    break;
                }
            }
            warm.run();
        }
        stream.synchronize();
        double[] per = new double[reps];
        for (int r = 0; r < reps; r++) {
            long t0 = System.nanoTime();
            for (int i = 0; i < iters; i++) {
                call.run();
            }
            stream.synchronize();
            per[r] = (System.nanoTime() - t0) / 1e3 / iters;
        }
        double[] one = new double[single];
        for (int r = 0; r < single; r++) {
            long t0 = System.nanoTime();
            call.run();
            stream.synchronize();
            one[r] = (System.nanoTime() - t0) / 1e3;
        }
        double perMedian = median(per);
        double oneMedian = median(one);
        return new Timing(perMedian, per[0], oneMedian, one[0]);
    }

    private void row(String op, int b, Timing t, String dev) {
        System.out.printf(java.util.Locale.ROOT, "java,%s,%d,%d,%d,%d,%.3f,%.3f,%.3f,%.3f,%s%n", op, b, cached, iters, reps,
                t.perCallUs(), t.perCallMinUs(), t.singleUs(), t.singleMinUs(), dev);
        System.out.flush();
    }

    private int run() {
        MlaContext ctx;
        try {
            ctx = cpu ? MlaContext.cpu() : MlaContext.cuda(device);
        } catch (MlaException e) {
            if (!cpu && (e.status() == MlaException.Status.DEVICE || e.status() == MlaException.Status.UNSUPPORTED)) {
                System.err.println("GpuStepBench: no CUDA device to run on (" + e.getMessage() + "); skipped");
                return 77;
            }
            throw e;
        }
        try (ctx) {
            String dev = ctx.describe().replace(',', ';').replace('\n', ';');
            MlaConfig c = config();
            System.err.printf("GpuStepBench: %s; hidden %d, %d heads, q_lora %d, kv_lora %d, rope %d; cached %d; "
                            + "warm-up %d (layer) / %d (kernel) calls, %d reps x %d calls, %d single calls%n", dev,
                    c.hiddenSize(), c.numHeads(), c.qLoraRank(), c.kvLoraRank(), c.qkRopeHeadDim(), cached, warmup,
                    warmupKernel, reps, iters, single);
            try (MlaLayer layer = createLayer(ctx, c); MlaStream stream = MlaStream.create(ctx)) {
                System.out.println("impl,op,batch,cached,iters,reps,per_call_us,per_call_min_us,single_us,single_min_us,"
                        + "device");
                for (int b : batches) {
                    runBatch(ctx, c, layer, stream, b, dev);
                }
            }
        }
        return 0;
    }

    private void runBatch(MlaContext ctx, MlaConfig c, MlaLayer layer, MlaStream stream, int bsz, String dev) {
        int dc = c.kvLoraRank();
        int dr = c.qkRopeHeadDim();
        int e = dc + dr;
        int h = c.numHeads();
        int d = c.hiddenSize();
        int steps = reps * iters + single;
        int maxBlocks = (cached + steps + BLOCK_SIZE - 1) / BLOCK_SIZE;
        int warmBlocks = WARM_TOKENS / BLOCK_SIZE;
        List<AutoCloseable> open = new ArrayList<>();
        try (LatentCache cache = LatentCache.create(ctx, DType.BF16, BLOCK_SIZE, bsz * maxBlocks, dc, dr);
             LatentCache warmCache = LatentCache.create(ctx, DType.BF16, BLOCK_SIZE, bsz * warmBlocks, dc, dr)) {
            // Fill: `cached` tokens per sequence through compress (random kv_a rows, norm weight 1).
            int t = cached;
            DeviceBuffer kvA = uploadBf16(ctx, (long) t * e, SEED_KV_A, 1.0);
            open.add(kvA);
            DeviceBuffer norm = DeviceBuffer.allocate(ctx, 2L * dc);
            open.add(norm);
            DeviceBuffer pos = DeviceBuffer.allocate(ctx, 4L * t);
            open.add(pos);
            DeviceBuffer slots = DeviceBuffer.allocate(ctx, 8L * t);
            open.add(slots);
            int[] ids = new int[bsz];
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment ones = tmp.allocate(2L * dc, 8);
                for (int i = 0; i < dc; i++) {
                    ones.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(1f));
                }
                norm.upload(ones);
                MemorySegment hp = tmp.allocate(ValueLayout.JAVA_INT, t);
                MemorySegment hs = tmp.allocate(ValueLayout.JAVA_LONG, t);
                for (int b = 0; b < bsz; b++) {
                    ids[b] = cache.addSequence();
                    cache.reserve(ids[b], t);
                    int[] blocks = cache.blocks(ids[b]);
                    for (int i = 0; i < t; i++) {
                        hp.setAtIndex(ValueLayout.JAVA_INT, i, i);
                        hs.setAtIndex(ValueLayout.JAVA_LONG, i, (long) blocks[i / BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE);
                    }
                    pos.upload(0, hp, stream);
                    slots.upload(0, hs, stream);
                    Attention.compress(c, cache, t, kvA, DType.BF16, e, norm, DType.BF16, pos, slots, stream);
                    cache.advance(ids[b], t);
                }
            }
            stream.synchronize();

            // (i) layer_step; the warm-up runs on B empty sequences of a second cache
            int[] warmIds = new int[bsz];
            for (int b = 0; b < bsz; b++) {
                warmIds[b] = warmCache.addSequence();
            }
            DeviceBuffer hidden = uploadBf16(ctx, (long) bsz * d, SEED_HIDDEN, 1.0);
            open.add(hidden);
            DeviceBuffer out = DeviceBuffer.allocate(ctx, 2L * bsz * d);
            open.add(out);
            Timing tl = time(stream, warmup, warmupSeconds, () -> {
                if (warmCache.length(warmIds[0]) >= WARM_TOKENS) {
                    for (int b = 0; b < bsz; b++) {
                        warmCache.free(warmIds[b]);
                    }
                    for (int b = 0; b < bsz; b++) {
                        warmIds[b] = warmCache.addSequence();
                    }
                }
                try (Batch batch = Batch.decode(warmCache, warmIds)) {
                    layer.forward(batch, hidden, DType.BF16, out, DType.BF16, stream);
                }
            }, () -> {
                try (Batch batch = Batch.decode(cache, ids)) {
                    layer.forward(batch, hidden, DType.BF16, out, DType.BF16, stream);
                }
            });
            double[] nz = checkFinite(out, (long) bsz * d, stream, "layer out");
            System.err.printf(java.util.Locale.ROOT, "GpuStepBench: B=%d layer_step: %.1f us/call, single %.1f us (out "
                    + "finite, %d of %d non-zero, sum %.9e)%n", bsz, tl.perCallUs(), tl.singleUs(), (long) nz[0],
                    (long) bsz * d, nz[1]);
            row("layer_step", bsz, tl, dev);

            // (ii) attention_run: one query per sequence over cached + 1 keys (all written by now)
            int len = cached + 1;
            int nb = (len + BLOCK_SIZE - 1) / BLOCK_SIZE;
            int[] qo = new int[bsz + 1];
            int[] lens = new int[bsz];
            int[] table = new int[bsz * nb];
            for (int b = 0; b < bsz; b++) {
                qo[b + 1] = b + 1;
                lens[b] = len;
                System.arraycopy(cache.blocks(ids[b]), 0, table, b * nb, nb);
            }
            DeviceBuffer dqo = uploadInts(ctx, qo, stream);
            open.add(dqo);
            DeviceBuffer dlen = uploadInts(ctx, lens, stream);
            open.add(dlen);
            DeviceBuffer dbt = uploadInts(ctx, table, stream);
            open.add(dbt);
            DeviceBuffer q = uploadBf16(ctx, (long) bsz * h * e, SEED_Q, 1.0);
            open.add(q);
            DeviceBuffer aout = DeviceBuffer.allocate(ctx, 2L * bsz * h * dc);
            open.add(aout);
            try (Attention attn = Attention.create(ctx, bsz, bsz, h, dc, dr)) {
                Attention.DeviceBatch db = new Attention.DeviceBatch(cache, bsz, bsz, nb, dqo, dlen, dbt);
                float scale = (float) c.effectiveSoftmaxScale();
                attn.plan(db, stream);
                Runnable call = () -> attn.run(db, q, DType.BF16, aout, DType.BF16, null, scale, true, stream);
                Timing ta = time(stream, warmupKernel, warmupSeconds, call, call);
                nz = checkFinite(aout, (long) bsz * h * dc, stream, "attention out");
                System.err.printf(java.util.Locale.ROOT, "GpuStepBench: B=%d attention_run: %.1f us/call, single %.1f us "
                        + "(out finite, %d of %d non-zero, sum %.9e)%n", bsz, ta.perCallUs(), ta.singleUs(),
                        (long) nz[0], (long) bsz * h * dc, nz[1]);
                row("attention_run", bsz, ta, dev);
                stream.synchronize();
            }
        } finally {
            stream.synchronize();
            for (int i = open.size() - 1; i >= 0; i--) {
                try {
                    open.get(i).close();
                } catch (Exception ex) {
                    throw new IllegalStateException(ex);
                }
            }
        }
    }
}
