package dev.mla4j;

import dev.mla4j.bindings.Mla;
import dev.mla4j.bindings.mla_attention_params;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import java.util.concurrent.TimeUnit;

/**
 * Per-call overhead of the Java API on one decode attention call: {@link Attention#run} (argument
 * checks, params struct fill, schedule reuse) against the generated binding's
 * {@code Mla.mla_attention_run} on the same context, cache, block table and queries, with its own
 * planned params, metadata and workspace. Shape: 1 sequence, 1 query
 * token, H heads, DeepSeek latent (512 + 64), {@code keys} cached tokens, bf16 cache, f32 q/out,
 * CPU context with one thread. The difference of the two is the API's cost per call.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
@State(Scope.Thread)
public class DecodeOverheadBench {
    @Param({"1", "16"})
    int heads;

    @Param({"16"})
    int keys;

    private MlaContext ctx;
    private LatentCache cache;
    private Attention attention;
    private Batch batch;
    private Arena arena;
    private MemorySegment q;
    private MemorySegment out;
    private float scale;
    // raw path
    private MemorySegment rawCtx;
    private MemorySegment rawParams;
    private MemorySegment rawOut;
    private MemorySegment metadata;
    private MemorySegment workspace;

    @Setup(Level.Trial)
    public void setup() {
        MlaConfig cfg = MlaConfig.deepseekV3().withNumHeads(heads);
        int dc = cfg.kvLoraRank();
        int dr = cfg.qkRopeHeadDim();
        ctx = MlaContext.cpu(1);
        arena = Arena.ofShared();
        cache = LatentCache.create(ctx, cfg, DType.BF16, 64, 4);
        attention = Attention.create(ctx, 1, 1, heads, dc, dr);
        Random rnd = new Random(1);
        MemorySegment norm = arena.allocate(ValueLayout.JAVA_FLOAT, dc);
        for (int i = 0; i < dc; i++) {
            norm.setAtIndex(ValueLayout.JAVA_FLOAT, i, 1f);
        }
        int id = cache.addSequence();
        try (Batch prefill = Batch.builder(cache).add(id, keys - 1).build()) {
            MemorySegment kv = random(arena, (long) (keys - 1) * (dc + dr), rnd);
            Attention.compress(ctx, cfg, prefill, kv, DType.F32, dc + dr, norm, DType.F32);
            cache.commit(prefill);
        }
        batch = Batch.decode(cache, id);
        Attention.compress(ctx, cfg, batch, random(arena, dc + dr, rnd), DType.F32, dc + dr, norm, DType.F32);
        q = random(arena, (long) heads * (dc + dr), rnd);
        out = arena.allocate(ValueLayout.JAVA_FLOAT, (long) heads * dc);
        scale = (float) cfg.effectiveSoftmaxScale();
        attention.run(batch, q, DType.F32, out, DType.F32, null, scale, true); // plans

        // the same call through the raw binding, on the same context, cache, block table and q
        // (this benchmark lives in the API's package to reach them), with its own params and buffers
        rawCtx = ctx.handle();
        rawOut = arena.allocate(ValueLayout.JAVA_FLOAT, (long) heads * dc);
        MemorySegment meta = arena.allocate(ValueLayout.JAVA_LONG);
        MemorySegment ws = arena.allocate(ValueLayout.JAVA_LONG);
        check(Mla.mla_attention_workspace_size(rawCtx, 1, 1, heads, dc, dr, meta, ws));
        metadata = arena.allocate(Math.max(1, meta.get(ValueLayout.JAVA_LONG, 0)), 64);
        workspace = arena.allocate(Math.max(1, ws.get(ValueLayout.JAVA_LONG, 0)), 64);
        rawParams = mla_attention_params.allocate(arena);
        check(Mla.mla_attention_params_init(rawParams));
        mla_attention_params.num_seqs(rawParams, 1);
        mla_attention_params.num_tokens(rawParams, 1);
        mla_attention_params.num_heads(rawParams, heads);
        mla_attention_params.block_table_stride(rawParams, batch.blockTableStride());
        mla_attention_params.softmax_scale(rawParams, scale);
        mla_attention_params.q(rawParams, q);
        mla_attention_params.qo_indptr(rawParams, batch.qoIndptr);
        mla_attention_params.seq_lens(rawParams, batch.seqLens);
        mla_attention_params.block_table(rawParams, batch.blockTable);
        mla_attention_params.cache(rawParams, cache.view());
        mla_attention_params.out(rawParams, rawOut);
        check(Mla.mla_attention_plan(rawCtx, rawParams, metadata, metadata.byteSize(), MemorySegment.NULL));
    }

    private static MemorySegment random(Arena arena, long n, Random rnd) {
        MemorySegment s = arena.allocate(ValueLayout.JAVA_FLOAT, n);
        for (long i = 0; i < n; i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) rnd.nextGaussian());
        }
        return s;
    }

    private static void check(int status) {
        if (status != 0) {
            throw new IllegalStateException("libmla status " + status);
        }
    }

    @Benchmark
    public void api() {
        attention.run(batch, q, DType.F32, out, DType.F32, null, scale, true);
    }

    @Benchmark
    public int rawBinding() {
        return Mla.mla_attention_run(rawCtx, rawParams, metadata, metadata.byteSize(), workspace, workspace.byteSize(),
                MemorySegment.NULL);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        batch.close();
        attention.close();
        cache.close();
        ctx.close();
        arena.close();
    }
}
