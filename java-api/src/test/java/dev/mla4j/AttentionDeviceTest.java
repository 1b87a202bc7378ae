package dev.mla4j;

import dev.mla4j.AttentionScenario.Mode;
import dev.mla4j.AttentionScenario.Result;
import dev.mla4j.AttentionScenario.Seq;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The kernel level with DeviceBuffers on a CPU context (where they are host memory): the staged
 * Batch path and the DeviceBatch path give exactly what the host-segment path gives, planning and
 * staging happen once per batch, and every misuse is refused in Java, naming the argument, with
 * nothing written. CudaAttentionTest runs the same paths on a GPU against this backend.
 */
class AttentionDeviceTest {
    /** Ragged: empty, decode, MTP (2), a causal prefill chunk, a block boundary, no new tokens. */
    static final Seq[] RAGGED = {new Seq(0, 0), new Seq(37, 1), new Seq(100, 2), new Seq(0, 3), new Seq(64, 2),
            new Seq(15, 0), new Seq(200, 1)};

    @Test
    void deviceBufferPathsMatchTheHostPath() {
        try (MlaContext ctx = MlaContext.cpu(2)) {
            for (DType io : new DType[]{DType.F32, DType.BF16}) {
                for (DType kv : new DType[]{DType.F32, DType.BF16}) {
                    int heads = io == DType.F32 ? 16 : 1;
                    String what = "q/out " + io + ", kv_a " + kv + ", H " + heads;
                    Result host = AttentionScenario.run(ctx, RAGGED, heads, DType.BF16, kv, io, io, true, Mode.HOST, 7);
                    Result staged = AttentionScenario.run(ctx, RAGGED, heads, DType.BF16, kv, io, io, true, Mode.STAGED, 7);
                    Result device = AttentionScenario.run(ctx, RAGGED, heads, DType.BF16, kv, io, io, true,
                            Mode.DEVICE_BATCH, 7);
                    assertArrayEquals(host.cache(), staged.cache(), "cache written by the staged compress, " + what);
                    assertArrayEquals(host.cache(), device.cache(), "cache written by the DeviceBuffer compress, " + what);
                    assertArrayEquals(host.out(), staged.out(), "staged out, " + what);
                    assertArrayEquals(host.lse(), staged.lse(), "staged lse, " + what);
                    assertArrayEquals(host.out(), device.out(), "DeviceBatch out, " + what);
                    assertArrayEquals(host.lse(), device.lse(), "DeviceBatch lse, " + what);
                    // the host path itself against a double-precision reference over what the cache holds
                    float[][] ref = AttentionScenario.reference(RAGGED, heads, host.q(), host.cache(),
                            MlaConfig.deepseekV3().effectiveSoftmaxScale(), true);
                    double tol = io == DType.F32 ? TestSupport.TOL_F32 : TestSupport.TOL_BF16;
                    assertTrue(TestSupport.relErr(host.out(), ref[0]) <= tol, what + ": out against the reference "
                            + TestSupport.relErr(host.out(), ref[0]));
                    assertTrue(TestSupport.relErr(host.lse(), ref[1]) <= TestSupport.TOL_F32, what
                            + ": lse against the reference " + TestSupport.relErr(host.lse(), ref[1]));
                    // two runs (layers) of one batch plan once; the staged path copies each batch's
                    // arrays once (prefill, step), the compress of the step sharing the run's copy
                    assertEquals(1, host.plans(), what);
                    assertEquals(1, staged.plans(), what);
                    assertEquals(1, device.plans(), what);
                    assertEquals(2, staged.uploads(), what);
                    assertEquals(0, device.uploads(), what);
                }
            }
        }
    }

    @Test
    void nonCausalStagedMatchesTheReference() {
        try (MlaContext ctx = MlaContext.cpu(2)) {
            Result r = AttentionScenario.run(ctx, RAGGED, 4, DType.F32, DType.F32, DType.F32, DType.F32, false,
                    Mode.STAGED, 11);
            float[][] ref = AttentionScenario.reference(RAGGED, 4, r.q(), r.cache(),
                    MlaConfig.deepseekV3().effectiveSoftmaxScale(), false);
            assertTrue(TestSupport.relErr(r.out(), ref[0]) <= TestSupport.TOL_F32, "out " + TestSupport.relErr(r.out(), ref[0]));
            assertTrue(TestSupport.relErr(r.lse(), ref[1]) <= TestSupport.TOL_F32, "lse " + TestSupport.relErr(r.lse(), ref[1]));
        }
    }

    @Test
    void aQueryWithoutKeysGivesZeroAndInfiniteLse() {
        try (MlaContext ctx = MlaContext.cpu(1)) {
            int heads = 16;
            float[][] r = AttentionScenario.zeroLengthSequence(ctx, heads, 5);
            for (int i = 0; i < heads * AttentionScenario.DC; i++) {
                assertEquals(0f, r[0][i], "out of the empty sequence, element " + i);
            }
            for (int h = 0; h < heads; h++) {
                assertEquals(Float.POSITIVE_INFINITY, r[1][h], "lse of the empty sequence, head " + h);
                assertTrue(Float.isFinite(r[1][heads + h]) && r[1][heads + h] != 0, "lse of the second sequence");
            }
        }
    }

    @Test
    void aBatchStagedAgainAfterAnotherKeepsItsPlan() {
        try (MlaContext ctx = MlaContext.cpu(1)) {
            float[][] r = AttentionScenario.restage(ctx, 4, null, null);
            assertArrayEquals(r[0], r[1], "run after the staged copy was replaced");
            assertTrue(TestSupport.relErr(r[0], new float[r[0].length]) > 0, "output is all zeros");
            // uploads: prefill, X (compress and the first run share it), Y, X again; one plan for X
            assertArrayEquals(new float[]{1, 4}, r[2]);
        }
    }

    @Test
    void stagingGrowsAndIsReleasedWithTheAttention() {
        try (MlaContext ctx = MlaContext.cpu(1)) {
            long before = ctx.memoryInfo().usedByLibrary();
            // a 400-token prefill needs a larger staging copy than the first, small batch
            Seq[] seqs = {new Seq(400, 1), new Seq(3, 2)};
            Result r = AttentionScenario.run(ctx, seqs, 2, DType.F32, DType.F32, DType.F32, DType.F32, true,
                    Mode.STAGED, 3);
            float[][] ref = AttentionScenario.reference(seqs, 2, r.q(), r.cache(),
                    MlaConfig.deepseekV3().effectiveSoftmaxScale(), true);
            assertTrue(TestSupport.relErr(r.out(), ref[0]) <= TestSupport.TOL_F32);
            assertEquals(before, ctx.memoryInfo().usedByLibrary(), "backend memory after everything closed");
            assertEquals(0, ctx.openChildren());
        }
    }

    /** Checks that call throws type with a message containing part, and that out was not written. */
    private static <T extends Throwable> void refused(Class<T> type, String part, Executable call, DeviceBuffer out,
                                                      float[] sentinel, Attention attn, long plans) {
        T e = assertThrows(type, call);
        assertTrue(e.getMessage().contains(part), () -> "'" + e.getMessage() + "' lacks '" + part + "'");
        if (!out.isClosed()) {
            assertArrayEquals(sentinel, out.downloadFloats(sentinel.length), "out was written by a refused call: " + part);
        }
        assertEquals(plans, attn.plans(), "planned by a refused call: " + part);
    }

    @Test
    void misuseIsRefusedNamingTheArgument() {
        misuse(MlaContext.cpu(1), MlaContext.cpu(1));
    }

    /** The misuse cases on ctx (CPU or CUDA); other is a second context. Closes both. */
    @SuppressWarnings("try")  // closes resources of the try block on purpose (use after close)
    static void misuse(MlaContext ctx, MlaContext other) {
        int heads = 2;
        int dc = AttentionScenario.DC;
        int e = AttentionScenario.E;
        float scale = 0.1f;
        try (other; ctx; Arena arena = Arena.ofConfined();
             LatentCache cache = LatentCache.create(ctx, DType.BF16, 16, 4, dc, AttentionScenario.DR);
             LatentCache otherCache = LatentCache.create(other, DType.BF16, 16, 4, dc, AttentionScenario.DR);
             Attention attn = Attention.create(ctx, 2, 2, heads, dc, AttentionScenario.DR);
             MlaStream otherStream = MlaStream.create(other);
             DeviceBuffer q = DeviceBuffer.allocate(ctx, 2L * heads * e * 4);
             DeviceBuffer out = DeviceBuffer.allocate(ctx, 2L * heads * dc * 4);
             DeviceBuffer small = DeviceBuffer.allocate(ctx, 4);
             DeviceBuffer foreign = DeviceBuffer.allocate(other, 2L * heads * dc * 4);
             DeviceBuffer qo = AttentionScenario.uploadInts(ctx, arena, new int[]{0, 1, 2});
             DeviceBuffer lens = AttentionScenario.uploadInts(ctx, arena, new int[]{1, 1});
             DeviceBuffer table = AttentionScenario.uploadInts(ctx, arena, new int[]{0, 1})) {
            float[] sentinel = new float[2 * heads * dc];
            java.util.Arrays.fill(sentinel, 42f);
            out.upload(sentinel);
            int a = cache.addSequence();
            int b = cache.addSequence();
            try (Batch batch = Batch.builder(cache).add(a, 1).add(b, 1).build();
                 Batch big = Batch.builder(cache).add(a, 3).build();
                 Batch foreignBatch = Batch.decode(otherCache, otherCache.addSequence())) {
                long p = attn.plans();
                refused(IllegalArgumentException.class, "q has 4 bytes, needs at least " + 2L * heads * e * 4,
                        () -> attn.run(batch, small, DType.F32, out, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "out has 4 bytes",
                        () -> attn.run(batch, q, DType.F32, small, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "lse has 4 bytes",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, small, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "out is memory of another context",
                        () -> attn.run(batch, q, DType.F32, foreign, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "out is the same DeviceBuffer as q",
                        () -> attn.run(batch, q, DType.F32, q, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "lse is the same DeviceBuffer as out",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, out, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "qDtype = F16",
                        () -> attn.run(batch, q, DType.F16, out, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "outDtype = F8_E4M3",
                        () -> attn.run(batch, q, DType.F32, out, DType.F8_E4M3, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "softmaxScale = 0.0",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, null, 0f, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "softmaxScale = NaN",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, null, Float.NaN, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "batch has 1 sequences and 3 tokens, this Attention was created "
                        + "for at most 2 and 2",
                        () -> attn.run(big, q, DType.F32, out, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "batch: its cache belongs to another context",
                        () -> attn.run(foreignBatch, q, DType.F32, out, DType.F32, null, scale, true, null), out, sentinel,
                        attn, p);
                refused(IllegalArgumentException.class, "stream belongs to another context",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, null, scale, true, otherStream), out, sentinel,
                        attn, p);

                // compress with DeviceBuffers: the staged form and the lowest level
                MlaConfig cfg = MlaConfig.deepseekV3();
                try (DeviceBuffer kv = DeviceBuffer.allocate(ctx, 2L * e * 4);
                     DeviceBuffer norm = DeviceBuffer.allocate(ctx, dc * 4L);
                     DeviceBuffer pos = DeviceBuffer.allocate(ctx, 8);
                     DeviceBuffer slots = DeviceBuffer.allocate(ctx, 16)) {
                    refused(IllegalArgumentException.class, "kvA has 4 bytes, needs at least " + 2L * e * 4,
                            () -> attn.compress(cfg, batch, small, DType.F32, e, norm, DType.F32, null), out, sentinel,
                            attn, p);
                    refused(IllegalArgumentException.class, "normWeight is memory of another context",
                            () -> attn.compress(cfg, batch, kv, DType.F32, e, foreign, DType.F32, null), out, sentinel,
                            attn, p);
                    refused(IllegalArgumentException.class, "kvAStride = 575 must be >= kv_lora_rank + rope_dim = 576",
                            () -> attn.compress(cfg, batch, kv, DType.F32, e - 1, norm, DType.F32, null), out, sentinel,
                            attn, p);
                    refused(IllegalArgumentException.class, "normDtype = F16",
                            () -> attn.compress(cfg, batch, kv, DType.F32, e, norm, DType.F16, null), out, sentinel,
                            attn, p);
                    refused(IllegalArgumentException.class, "slotMapping has 8 bytes, needs at least 16",
                            () -> Attention.compress(cfg, cache, 2, kv, DType.F32, e, norm, DType.F32, pos, pos, null),
                            out, sentinel, attn, p);
                    refused(IllegalArgumentException.class, "positions is memory of another context",
                            () -> Attention.compress(cfg, cache, 2, kv, DType.F32, e, norm, DType.F32, foreign, slots,
                                    null), out, sentinel, attn, p);
                    refused(IllegalArgumentException.class, "numTokens = -1",
                            () -> Attention.compress(cfg, cache, -1, kv, DType.F32, e, norm, DType.F32, pos, slots,
                                    null), out, sentinel, attn, p);
                    assertEquals(0, attn.stagedUploads(), "a refused compress staged the batch");
                }

                // DeviceBatch: sizes checked when made, plan required before run
                refused(IllegalArgumentException.class, "blockTable has 8 bytes, needs at least 16",
                        () -> new Attention.DeviceBatch(cache, 2, 2, 2, qo, lens, table), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "seqLens is memory of another context",
                        () -> new Attention.DeviceBatch(cache, 2, 2, 1, qo, foreign, table), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "numSeqs = 0",
                        () -> new Attention.DeviceBatch(cache, 0, 0, 1, qo, lens, table), out, sentinel, attn, p);
                Attention.DeviceBatch db = new Attention.DeviceBatch(cache, 2, 2, 1, qo, lens, table);
                refused(IllegalStateException.class, "not the one planned last",
                        () -> attn.run(db, q, DType.F32, out, DType.F32, null, scale, true, null), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "stream belongs to another context",
                        () -> attn.plan(db, otherStream), out, sentinel, attn, p);
                refused(IllegalArgumentException.class, "batch: its cache belongs to another context",
                        () -> attn.plan(new Attention.DeviceBatch(otherCache, 1, 1, 1, foreign, foreign, foreign), null),
                        out, sentinel, attn, p);

                // host segments where the context's memory is expected (CPU contexts take them; a
                // CUDA context refuses them naming q)
                if (ctx.backend() == MlaContext.Backend.CUDA) {
                    MemorySegment hq = arena.allocate(2L * heads * e * 4);
                    MemorySegment ho = arena.allocate(2L * heads * dc * 4);
                    refused(IllegalArgumentException.class, "q, out and lse are host MemorySegments",
                            () -> attn.run(batch, hq, DType.F32, ho, DType.F32, null, scale, true), out, sentinel, attn, p);
                    refused(IllegalArgumentException.class, "kvA and normWeight are host MemorySegments",
                            () -> Attention.compress(ctx, MlaConfig.deepseekV3(), batch, hq, DType.F32, e, ho, DType.F32),
                            out, sentinel, attn, p);
                }

                // closed objects
                DeviceBuffer closed = DeviceBuffer.allocate(ctx, 2L * heads * e * 4);
                closed.close();
                refused(IllegalStateException.class, "q is a closed DeviceBuffer",
                        () -> attn.run(batch, closed, DType.F32, out, DType.F32, null, scale, true, null), out, sentinel,
                        attn, p);
                MlaStream closedStream = MlaStream.create(ctx);
                closedStream.close();
                refused(IllegalStateException.class, "stream is a closed MlaStream",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, null, scale, true, closedStream), out, sentinel,
                        attn, p);
                batch.close();
                refused(IllegalStateException.class, "Batch is closed",
                        () -> attn.run(batch, q, DType.F32, out, DType.F32, null, scale, true, null), out, sentinel, attn, p);

                // a correct call works after all of that, and plans once
                try (Batch ok = Batch.builder(cache).add(a, 1).add(b, 1).build()) {
                    attn.run(ok, q, DType.F32, out, DType.F32, null, scale, true, null);
                    assertEquals(p + 1, attn.plans());
                    attn.plan(db, null);
                    attn.run(db, q, DType.F32, out, DType.F32, null, scale, true, null);
                    assertEquals(p + 2, attn.plans());
                }
                attn.close();
                refused(IllegalStateException.class, "Attention is closed",
                        () -> attn.run(db, q, DType.F32, out, DType.F32, null, scale, true, null), out,
                        out.downloadFloats(sentinel.length), attn, p + 2);
            }
        }
    }
}
