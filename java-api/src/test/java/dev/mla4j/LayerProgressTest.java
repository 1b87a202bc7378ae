package dev.mla4j;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link MlaLayer.Progress} on layer creation: the calls are monotone and end at the layer's
 * prepared weight bytes, the layer built with a listener matches the golden output for bf16, f32
 * and FP8 weights, a listener can cancel (status CANCELLED) and an exception it throws comes back
 * out of {@code create} (the same instance), with the context still usable.
 * {@link CudaLayerProgressTest} runs the same on a CUDA context.
 */
class LayerProgressTest {
    /** The weight dtypes a layer is built from (norm vectors stay bf16 for FP8). */
    enum Kind { BF16, F32, FP8 }

    record Call(long done, long total, Thread thread) {
    }

    /** Records every call; returns false (cancel) at call number cancelAt (1-based; 0 = never). */
    static final class Recorder implements MlaLayer.Progress {
        final List<Call> calls = new ArrayList<>();
        int cancelAt;
        RuntimeException throwAt2;

        @Override
        public boolean update(long bytesDone, long bytesTotal) {
            calls.add(new Call(bytesDone, bytesTotal, Thread.currentThread()));
            if (throwAt2 != null && calls.size() == 2) {
                throw throwAt2;
            }
            return calls.size() != cancelAt;
        }
    }

    MlaContext openContext() {
        return MlaContext.cpu(2);
    }

    /** Bytes a prepared matrix element takes in the context: the CPU keeps bf16 only for all-bf16 weights. */
    long matrixElementBytes(Kind kind) {
        return kind == Kind.BF16 ? 2 : 4;
    }

    /** The CPU reports once per prepared tensor; CUDA once per staged chunk (at least one per tensor). */
    boolean oneCallPerTensor() {
        return true;
    }

    /** Bound of a layer of bf16 or f32 weights against the golden output (f32 cache). */
    double goldenTolerance() {
        return TestSupport.TOL_F32;
    }

    /** Bound of an FP8 layer against the layer of its dequantized weights in f32. */
    double fp8Tolerance() {
        return 1e-5;
    }

    static Stream<Arguments> filesAndKinds() throws IOException {
        List<Arguments> out = new ArrayList<>();
        for (Path f : TestSupport.goldenFiles()) {
            for (Kind k : Kind.values()) {
                out.add(Arguments.of(f.getFileName().toString(), k));
            }
        }
        return out.stream();
    }

    static Safetensors open(String file) throws IOException {
        return Safetensors.open(TestSupport.testdata().resolve("golden").resolve(file));
    }

    /** Prepared tensors of a layer: the q path (q_proj, or q_a_proj, its norm and q_b_proj), kv_a, its norm, W_UK, W_UV, o_proj. */
    static int tensors(MlaConfig c) {
        return c.hasQueryCompression() ? 8 : 6;
    }

    /** The layer's prepared weight bytes in the context for heads [h0, h1). */
    long expectedBytes(MlaConfig c, int h0, int h1, Kind kind) {
        long hs = h1 - h0;
        long d = c.hiddenSize();
        long ql = c.qLoraRank();
        long dc = c.kvLoraRank();
        long dn = c.qkNopeHeadDim();
        long dr = c.qkRopeHeadDim();
        long dv = c.vHeadDim();
        long matrices = (dc + dr) * d + hs * dc * dn + hs * dv * dc + d * hs * dv
                + (ql > 0 ? ql * d + hs * (dn + dr) * ql : hs * (dn + dr) * d);
        long norms = dc + ql;
        return matrices * matrixElementBytes(kind) + norms * 4;
    }

    /** Checks the calls of one successful creation. */
    void checkCalls(List<Call> calls, long total, int tensors) {
        assertTrue(calls.size() >= tensors, "at least one call per tensor: " + calls.size());
        if (oneCallPerTensor()) {
            assertEquals(tensors, calls.size(), "one call per prepared tensor");
        }
        long prev = 0;
        for (Call c : calls) {
            assertEquals(total, c.total(), "bytesTotal");
            assertTrue(c.done() > prev, () -> "bytesDone not increasing: " + calls);
            assertSame(Thread.currentThread(), c.thread(), "called on the creating thread");
            prev = c.done();
        }
        assertEquals(total, calls.get(calls.size() - 1).done(), "the last call reports the total");
    }

    // ---- weights of each kind -------------------------------------------------------------------

    private static final List<String> MATRICES = List.of("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa",
            "kv_b_proj", "o_proj");

    /**
     * The attention module's weights of a golden file as kind: bf16 as stored, f32 (the same
     * values), or FP8 with 128 x 128 block scales (norm vectors stay bf16). dequantized, when not
     * null, receives the FP8 weights' exact values in f32 (the same layer without quantization).
     */
    static Function<String, Optional<Tensor>> weights(Safetensors st, Kind kind, Arena arena,
                                                      Map<String, Tensor> dequantized) {
        Map<String, Tensor> out = new HashMap<>();
        for (String name : MlaLayer.WEIGHTS) {
            Optional<Tensor> found = st.find("weights." + name + ".weight");
            if (found.isEmpty()) {
                continue;
            }
            Tensor w = found.get();
            String key = name + ".weight";
            boolean matrix = MATRICES.contains(name);
            switch (kind) {
                case BF16 -> out.put(key, w);
                case F32 -> out.put(key, Tensor.of(key, DType.F32, w.shape(),
                        arena.allocateFrom(ValueLayout.JAVA_FLOAT, w.toFloatArray())));
                case FP8 -> {
                    if (!matrix) {
                        out.put(key, w);
                        if (dequantized != null) {
                            dequantized.put(key, w);
                        }
                        continue;
                    }
                    float[] v = w.toFloatArray();
                    int rows = (int) w.dim(0);
                    int cols = (int) w.dim(1);
                    TestSupport.BlockFp8 fp8 = TestSupport.quantizeFp8(v, rows, cols, arena);
                    out.put(key, Tensor.of(key, DType.F8_E4M3, w.shape(), fp8.codes()));
                    out.put(name + ".weight_scale_inv", Tensor.of(name + ".weight_scale_inv", DType.F32,
                            fp8.scaleShape(), arena.allocateFrom(ValueLayout.JAVA_FLOAT, fp8.scaleInv())));
                    if (dequantized != null) {
                        dequantized.put(key, Tensor.of(key, DType.F32, w.shape(),
                                arena.allocateFrom(ValueLayout.JAVA_FLOAT, fp8.dequantized())));
                    }
                }
            }
        }
        return n -> Optional.ofNullable(out.get(n));
    }

    /** The layer's output for the file's last sequence as one prefill, f32 cache. */
    static float[] forward(MlaContext ctx, MlaConfig cfg, MlaLayer layer, float[] hidden, int tokens) {
        try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, (tokens + 15) / 16)) {
            int id = cache.addSequence();
            try (Batch b = Batch.builder(cache).add(id, tokens).build()) {
                return layer.forward(b, hidden);
            }
        }
    }

    record Golden(float[] hidden, float[] output, int tokens) {
        static Golden last(Safetensors st) throws IOException {
            GoldenTest.Seq s = GoldenTest.sequences(st).get(GoldenTest.sequences(st).size() - 1);
            return new Golden(st.tensor("seq" + s.index() + ".hidden").toFloatArray(),
                    st.tensor("seq" + s.index() + ".output").toFloatArray(), s.tokens());
        }
    }

    // ---- tests ----------------------------------------------------------------------------------

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("filesAndKinds")
    void progressEndsAtThePreparedBytesAndTheLayerMatchesGolden(String file, Kind kind) throws IOException {
        try (Safetensors st = open(file); MlaContext ctx = openContext(); Arena arena = Arena.ofConfined()) {
            MlaConfig cfg = GoldenTest.config(st);
            Golden g = Golden.last(st);
            Map<String, Tensor> deq = new HashMap<>();
            Function<String, Optional<Tensor>> w = weights(st, kind, arena, deq);
            Recorder rec = new Recorder();
            float[] actual;
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, w, 0, cfg.numHeads(), rec)) {
                actual = forward(ctx, cfg, layer, g.hidden(), g.tokens());
            }
            checkCalls(rec.calls, expectedBytes(cfg, 0, cfg.numHeads(), kind), tensors(cfg));

            // The listener does not change the layer.
            try (MlaLayer plain = MlaLayer.create(ctx, cfg, w, 0, cfg.numHeads())) {
                assertArrayEquals(forward(ctx, cfg, plain, g.hidden(), g.tokens()), actual, "same layer without listener");
            }
            if (kind == Kind.FP8) {
                // FP8 is checked against its dequantized weights; quantization moves it off golden.
                try (MlaLayer ref = MlaLayer.create(ctx, cfg, n -> Optional.ofNullable(deq.get(n)), 0, cfg.numHeads())) {
                    double err = TestSupport.relErr(actual, forward(ctx, cfg, ref, g.hidden(), g.tokens()));
                    assertTrue(err <= fp8Tolerance(), () -> file + " fp8 vs dequantized f32: " + err);
                }
                double vsGolden = TestSupport.relErr(actual, g.output());
                assertTrue(vsGolden > 1e-4 && vsGolden < 0.2, () -> file + " fp8 vs golden: " + vsGolden);
            } else {
                double err = TestSupport.relErr(actual, g.output());
                assertTrue(err <= goldenTolerance(), () -> file + " " + kind + " vs golden: " + err);
            }
        }
    }

    @Test
    void headSliceReportsItsOwnBytes() throws IOException {
        try (Safetensors st = open("v3_yarn_h8.safetensors"); MlaContext ctx = openContext()) {
            MlaConfig cfg = GoldenTest.config(st);
            Recorder rec = new Recorder();
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.", 2, 5, rec)) {
                assertEquals(2, layer.headBegin());
            }
            checkCalls(rec.calls, expectedBytes(cfg, 2, 5, Kind.BF16), tensors(cfg));
        }
    }

    @Test
    void cancelAtTheFirstMiddleAndLastCall() throws IOException {
        try (Safetensors st = open("tiny_v3.safetensors"); MlaContext ctx = openContext()) {
            MlaConfig cfg = GoldenTest.config(st);
            Recorder all = new Recorder();
            MlaLayer.create(ctx, cfg, st, "weights.", all).close();
            int n = all.calls.size();
            for (int at : new int[]{1, (n + 1) / 2, n}) {
                Recorder rec = new Recorder();
                rec.cancelAt = at;
                MlaException e = assertThrows(MlaException.class, () -> MlaLayer.create(ctx, cfg, st, "weights.", rec));
                assertEquals(MlaException.Status.CANCELLED, e.status());
                assertEquals(8, e.code());
                assertEquals("mla_layer_create", e.function());
                assertTrue(e.nativeMessage().contains("cancelled"), e.nativeMessage());
                assertEquals(at, rec.calls.size(), "no call after the cancelling one");
                assertEquals(0, ctx.openChildren(), "nothing was created");
            }
            assertStillUsable(ctx, st, cfg);
        }
    }

    @Test
    void listenerExceptionComesOutOfCreate() throws IOException {
        try (Safetensors st = open("tiny_v3.safetensors"); MlaContext ctx = openContext()) {
            MlaConfig cfg = GoldenTest.config(st);
            Recorder rec = new Recorder();
            rec.throwAt2 = new IllegalStateException("listener failed");
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> MlaLayer.create(ctx, cfg, st, "weights.", rec));
            assertSame(rec.throwAt2, e);
            assertEquals(2, rec.calls.size(), "cancelled at the throwing call");
            assertEquals(0, ctx.openChildren());

            // An Error too (never into native code), the same instance.
            AssertionError boom = new AssertionError("boom");
            AssertionError got = assertThrows(AssertionError.class, () -> MlaLayer.create(ctx, cfg, st, "weights.",
                    (done, total) -> {
                        throw boom;
                    }));
            assertSame(boom, got);
            assertEquals(0, ctx.openChildren());
            assertStillUsable(ctx, st, cfg);
        }
    }

    /** The layer keeps nothing of the mapping: it works after the Safetensors is closed. */
    @Test
    void weightsMayBeClosedAfterCreate() throws IOException {
        MlaConfig cfg;
        Golden g;
        MlaLayer layer;
        try (MlaContext ctx = openContext()) {
            try (Safetensors st = open("lite_v2_yarn.safetensors")) {
                cfg = GoldenTest.config(st);
                g = Golden.last(st);
                layer = MlaLayer.create(ctx, cfg, st, "weights.", (done, total) -> true);
            }
            try (layer) {
                double err = TestSupport.relErr(forward(ctx, cfg, layer, g.hidden(), g.tokens()), g.output());
                assertTrue(err <= goldenTolerance(), "after closing the weights: " + err);
            }
        }
    }

    private void assertStillUsable(MlaContext ctx, Safetensors st, MlaConfig cfg) throws IOException {
        Golden g = Golden.last(st);
        try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.")) {
            double err = TestSupport.relErr(forward(ctx, cfg, layer, g.hidden(), g.tokens()), g.output());
            assertTrue(err <= goldenTolerance(), "context usable afterwards: " + err);
        }
    }
}
