package dev.mla4j;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;

/**
 * Demo job: one MLA layer prefilling a batch and decoding, with throughput, cache size against an
 * MHA cache, and a check of the absorbed decode against a plain decompressed computation in Java.
 *
 * <pre>
 *   java -jar mla4j.jar                      DeepSeek-V3-shaped layer, seeded random bf16 weights
 *   java -jar mla4j.jar --config config.json --weights &lt;dir or file&gt; --layer N
 * options: --batch B (4) --prompt P (64) --steps S (32) --threads N (0 = all cores)
 *          --cache bf16|f32 (bf16) --seed S (1) --prefix P (model.layers.N.self_attn.)
 * </pre>
 */
public final class Main {
    private Main() {
    }

    public static void main(String[] args) throws IOException {
        Map<String, String> opt = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                usage(System.out);
                return;
            }
            if (!a.startsWith("--") || i + 1 >= args.length) {
                System.err.println("bad argument: " + a);
                usage(System.err);
                System.exit(2);
            }
            opt.put(a.substring(2), args[++i]);
        }
        try {
            run(opt, System.out);
        } catch (IllegalArgumentException | MlaException | SafetensorsException e) {
            System.err.println("error: " + e.getMessage());
            System.exit(1);
        }
    }

    private static void usage(PrintStream out) {
        out.println("usage: mla4j [--config config.json --weights <dir|file> --layer N [--prefix P]]");
        out.println("             [--batch B] [--prompt P] [--steps S] [--threads N] [--cache bf16|f32] [--seed S]");
    }

    private static int intOpt(Map<String, String> opt, String name, int dflt, int min) {
        String v = opt.remove(name);
        if (v == null) {
            return dflt;
        }
        try {
            int n = Integer.parseInt(v);
            if (n < min) {
                throw new IllegalArgumentException("--" + name + " " + v + " must be >= " + min);
            }
            return n;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + name + " " + v + " is not an integer");
        }
    }

    /** Runs the job with parsed options (the keys without "--"), printing to out. */
    static void run(Map<String, String> opt, PrintStream out) throws IOException {
        opt = new HashMap<>(opt);
        int batchSize = intOpt(opt, "batch", 4, 1);
        int prompt = intOpt(opt, "prompt", 64, 1);
        int steps = intOpt(opt, "steps", 32, 1);
        int threads = intOpt(opt, "threads", 0, 0);
        long seed = intOpt(opt, "seed", 1, 0);
        String cacheName = opt.getOrDefault("cache", "bf16");
        opt.remove("cache");
        DType cacheType = switch (cacheName) {
            case "bf16" -> DType.BF16;
            case "f32" -> DType.F32;
            default -> throw new IllegalArgumentException("--cache " + cacheName + ": expected bf16 or f32");
        };
        String configPath = opt.remove("config");
        String weightsPath = opt.remove("weights");
        int layerIndex = intOpt(opt, "layer", 0, 0);
        String prefixArg = opt.remove("prefix");
        if (!opt.isEmpty()) {
            throw new IllegalArgumentException("unknown options " + opt.keySet());
        }
        if ((configPath == null) != (weightsPath == null)) {
            throw new IllegalArgumentException("--config and --weights go together");
        }

        NativeLibrary.load();
        try (MlaContext ctx = MlaContext.cpu(threads); Arena weightArena = Arena.ofShared()) {
            out.printf("libmla %s (%s), context: %s%n", versionString(NativeLibrary.version()), NativeLibrary.source(),
                    ctx.describe());
            MlaConfig cfg;
            Safetensors checkpoint = null;
            Function<String, Optional<Tensor>> weights;
            long t0 = System.nanoTime();
            if (configPath != null) {
                cfg = MlaConfig.fromJson(Path.of(configPath));
                String prefix = prefixArg != null ? prefixArg : "model.layers." + layerIndex + ".self_attn.";
                checkpoint = Safetensors.open(Path.of(weightsPath));
                Safetensors st = checkpoint;
                weights = name -> st.find(prefix + name);
                out.printf("checkpoint %s, weights %s*%n", weightsPath, prefix);
            } else {
                cfg = MlaConfig.deepseekV3();
                weights = randomWeights(cfg, weightArena, seed);
                out.printf("DeepSeek-V3-shaped layer with seeded random bf16 weights (seed %d), made in %.1f s%n", seed,
                        (System.nanoTime() - t0) / 1e9);
            }
            out.printf("config: hidden %d, heads %d, q_lora %d, latent %d, nope %d, rope %d, v %d, rope scaling %s%n",
                    cfg.hiddenSize(), cfg.numHeads(), cfg.qLoraRank(), cfg.kvLoraRank(), cfg.qkNopeHeadDim(),
                    cfg.qkRopeHeadDim(), cfg.vHeadDim(), cfg.ropeScaling());
            try {
                runLayer(ctx, cfg, weights, batchSize, prompt, steps, cacheType, seed, out);
            } finally {
                if (checkpoint != null) {
                    checkpoint.close();
                }
            }
        }
    }

    private static String versionString(int v) {
        return (v / 10000) + "." + (v / 100 % 100) + "." + (v % 100);
    }

    private static void runLayer(MlaContext ctx, MlaConfig cfg, Function<String, Optional<Tensor>> weights, int batchSize,
                                 int prompt, int steps, DType cacheType, long seed, PrintStream out) {
        int d = cfg.hiddenSize();
        int blockSize = 64;
        int blocksPerSeq = (prompt + steps + blockSize - 1) / blockSize;
        long t0 = System.nanoTime();
        try (MlaLayer layer = MlaLayer.create(ctx, cfg, weights, 0, cfg.numHeads());
             LatentCache cache = LatentCache.create(ctx, cfg, cacheType, blockSize, batchSize * blocksPerSeq);
             Arena arena = Arena.ofConfined()) {
            out.printf("layer prepared in %.1f s%n", (System.nanoTime() - t0) / 1e9);
            Rng rng = new Rng(seed * 7919 + 1);
            int[] ids = new int[batchSize];
            Batch.Builder pb = Batch.builder(cache);
            for (int b = 0; b < batchSize; b++) {
                ids[b] = cache.addSequence();
                pb.add(ids[b], prompt);
            }
            MemorySegment hidden = arena.allocate(ValueLayout.JAVA_FLOAT, (long) batchSize * prompt * d);
            fillGaussian(hidden, rng);
            MemorySegment output = arena.allocate(ValueLayout.JAVA_FLOAT, (long) batchSize * prompt * d);
            double prefillSeconds;
            try (Batch batch = pb.build()) {
                long s = System.nanoTime();
                layer.forward(batch, hidden, DType.F32, output, DType.F32);
                prefillSeconds = (System.nanoTime() - s) / 1e9;
            }
            out.printf("prefill: %d sequences x %d tokens in %.3f s = %.1f tokens/s%n", batchSize, prompt, prefillSeconds,
                    batchSize * prompt / prefillSeconds);

            MemorySegment stepIn = arena.allocate(ValueLayout.JAVA_FLOAT, (long) batchSize * d);
            MemorySegment stepOut = arena.allocate(ValueLayout.JAVA_FLOAT, (long) batchSize * d);
            float[] checkHidden = null;
            float[] checkOut = null;
            int checkLength = 0;
            double decodeSeconds = 0;
            for (int step = 0; step < steps; step++) {
                fillGaussian(stepIn, rng);
                try (Batch batch = Batch.decode(cache, ids)) {
                    long s = System.nanoTime();
                    layer.forward(batch, stepIn, DType.F32, stepOut, DType.F32);
                    decodeSeconds += (System.nanoTime() - s) / 1e9;
                }
                if (step == 0) {
                    checkHidden = stepIn.asSlice(0, (long) d * 4).toArray(ValueLayout.JAVA_FLOAT);
                    checkOut = stepOut.asSlice(0, (long) d * 4).toArray(ValueLayout.JAVA_FLOAT);
                    checkLength = cache.length(ids[0]);
                }
                out.printf("\rdecode step %d/%d: %d sequences at %d tokens, %.1f tokens/s   ", step + 1, steps, batchSize,
                        cache.length(ids[0]), (step + 1) * batchSize / decodeSeconds);
                out.flush();
            }
            out.println();
            out.printf("decode: %d steps x %d sequences in %.3f s = %.1f tokens/s (%.1f ms per step)%n", steps, batchSize,
                    decodeSeconds, steps * batchSize / decodeSeconds, decodeSeconds * 1e3 / steps);

            long latentBytes = cache.bytesPerToken();
            long mhaBytes = cfg.mhaCacheBytesPerToken();
            out.printf("KV cache per token per layer: latent %d B (%s, %d values) vs MHA %d B (bf16, H*(dn+dr+dv) = %d"
                            + " values): %.1fx smaller%n", latentBytes, cacheType, cfg.latentEntryDim(), mhaBytes,
                    mhaBytes / 2, (double) mhaBytes / latentBytes);

            long c0 = System.nanoTime();
            float[][] cached = cache.read(ids[0], 0, checkLength);
            float[] ref = new NaiveAttention(cfg, weights).forward(checkHidden, checkLength - 1, cached[0], cached[1],
                    checkLength);
            double maxErr = 0;
            double maxRef = 0;
            for (int i = 0; i < d; i++) {
                maxErr = Math.max(maxErr, Math.abs(checkOut[i] - ref[i]));
                maxRef = Math.max(maxRef, Math.abs(ref[i]));
            }
            out.printf("absorbed decode vs naive decompressed attention in Java (sequence 0, first decode step, %d keys):"
                            + " max|diff| = %.3g, max|ref| = %.3g, relative %.3g (%.1f s)%n", checkLength, maxErr, maxRef,
                    maxErr / maxRef, (System.nanoTime() - c0) / 1e9);
        }
    }

    /** Random weights for a config: N(0, 1/in_features) matrices, norms near 1, bf16. */
    static Function<String, Optional<Tensor>> randomWeights(MlaConfig cfg, Arena arena, long seed) {
        long h = cfg.numHeads();
        long d = cfg.hiddenSize();
        long qk = cfg.qkNopeHeadDim() + cfg.qkRopeHeadDim();
        Map<String, Tensor> w = new HashMap<>();
        Rng rng = new Rng(seed);
        if (cfg.hasQueryCompression()) {
            w.put("q_a_proj.weight", matrix("q_a_proj.weight", cfg.qLoraRank(), d, arena, rng));
            w.put("q_a_layernorm.weight", norm("q_a_layernorm.weight", cfg.qLoraRank(), arena, rng));
            w.put("q_b_proj.weight", matrix("q_b_proj.weight", h * qk, cfg.qLoraRank(), arena, rng));
        } else {
            w.put("q_proj.weight", matrix("q_proj.weight", h * qk, d, arena, rng));
        }
        w.put("kv_a_proj_with_mqa.weight", matrix("kv_a_proj_with_mqa.weight", cfg.latentEntryDim(), d, arena, rng));
        w.put("kv_a_layernorm.weight", norm("kv_a_layernorm.weight", cfg.kvLoraRank(), arena, rng));
        w.put("kv_b_proj.weight", matrix("kv_b_proj.weight", h * (cfg.qkNopeHeadDim() + cfg.vHeadDim()),
                cfg.kvLoraRank(), arena, rng));
        w.put("o_proj.weight", matrix("o_proj.weight", d, h * cfg.vHeadDim(), arena, rng));
        return name -> Optional.ofNullable(w.get(name));
    }

    private static Tensor matrix(String name, long rows, long cols, Arena arena, Rng rng) {
        MemorySegment m = arena.allocate(rows * cols * 2, 64);
        float amp = (float) Math.sqrt(3.0 / cols); // uniform(-amp, amp) has variance 1/cols
        for (long i = 0; i < rows * cols; i++) {
            m.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(amp * rng.nextSymmetric()));
        }
        return Tensor.of(name, DType.BF16, new long[]{rows, cols}, m);
    }

    private static Tensor norm(String name, long n, Arena arena, Rng rng) {
        MemorySegment m = arena.allocate(n * 2, 64);
        for (long i = 0; i < n; i++) {
            m.setAtIndex(ValueLayout.JAVA_SHORT, i, DType.floatToBf16(1.0f + 0.1f * rng.nextSymmetric()));
        }
        return Tensor.of(name, DType.BF16, new long[]{n}, m);
    }

    private static void fillGaussian(MemorySegment s, Rng rng) {
        long n = s.byteSize() / 4;
        for (long i = 0; i < n; i++) {
            // sum of 4 uniforms: mean 0, variance 4/3 -> scaled to variance 1
            float g = (rng.nextSymmetric() + rng.nextSymmetric() + rng.nextSymmetric() + rng.nextSymmetric()) * 0.8660254f;
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, g);
        }
    }

    /** xorshift64*: fast, seeded, reproducible. */
    private static final class Rng {
        private long state;

        Rng(long seed) {
            state = seed * 0x9E3779B97F4A7C15L + 0x632BE59BD9B4E019L;
            if (state == 0) {
                state = 1;
            }
        }

        /** Uniform in [-1, 1). */
        float nextSymmetric() {
            state ^= state >>> 12;
            state ^= state << 25;
            state ^= state >>> 27;
            long r = state * 0x2545F4914F6CDD1DL;
            return ((r >>> 40) * 0x1p-23f) - 1.0f;
        }
    }
}
