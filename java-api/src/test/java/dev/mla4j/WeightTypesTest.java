package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;

import static org.junit.jupiter.api.Assertions.assertTrue;

/** Weight and activation dtypes other than the golden files' bf16 weights / f32 activations. */
class WeightTypesTest {
    private static final String[] MATRICES = {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"};

    /**
     * FP8 weights with 128x128 block scales must give the same layer as the dequantized weights
     * (w = fp8 * scale_inv) given in f32.
     */
    /** The context the tests run in; {@link CudaWeightTypesTest} uses a CUDA one. */
    MlaContext openContext() {
        return MlaContext.cpu();
    }

    @Test
    void fp8BlockScaledWeightsEqualTheirDequantizedF32() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = openContext(); Arena arena = Arena.ofConfined()) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            Map<String, Tensor> fp8 = new HashMap<>();
            Map<String, Tensor> f32 = new HashMap<>();
            for (String name : MlaLayer.WEIGHTS) {
                Optional<Tensor> t = st.find("weights." + name + ".weight");
                if (t.isEmpty()) {
                    continue;
                }
                Tensor w = t.get();
                float[] v = w.toFloatArray();
                boolean matrix = java.util.Arrays.asList(MATRICES).contains(name);
                if (!matrix) {
                    fp8.put(name + ".weight", w);
                    f32.put(name + ".weight", w);
                    continue;
                }
                int rows = (int) w.dim(0);
                int cols = (int) w.dim(1);
                TestSupport.BlockFp8 q = TestSupport.quantizeFp8(v, rows, cols, arena);
                fp8.put(name + ".weight", Tensor.of(name + ".weight", DType.F8_E4M3, w.shape(), q.codes()));
                fp8.put(name + ".weight_scale_inv", Tensor.of(name + ".weight_scale_inv", DType.F32, q.scaleShape(),
                        arena.allocateFrom(ValueLayout.JAVA_FLOAT, q.scaleInv())));
                f32.put(name + ".weight", Tensor.of(name + ".weight", DType.F32, w.shape(),
                        arena.allocateFrom(ValueLayout.JAVA_FLOAT, q.dequantized())));
            }
            float[] hidden = st.tensor("seq1.hidden").toFloatArray();
            float[][] outs = new float[2][];
            int i = 0;
            for (Map<String, Tensor> weights : java.util.List.of(fp8, f32)) {
                try (MlaLayer layer = MlaLayer.create(ctx, cfg, n -> Optional.ofNullable(weights.get(n)), 0, cfg.numHeads());
                     LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 1)) {
                    int id = cache.addSequence();
                    try (Batch b = Batch.builder(cache).add(id, 5).build()) {
                        outs[i++] = layer.forward(b, hidden);
                    }
                }
            }
            double err = TestSupport.relErr(outs[0], outs[1]);
            assertTrue(err <= 1e-5, "fp8 vs dequantized f32: " + err);
            // and quantization really happened: the result differs from the bf16 original
            double vsGolden = TestSupport.relErr(outs[0], st.tensor("seq1.output").toFloatArray());
            assertTrue(vsGolden > 1e-4 && vsGolden < 0.2, "fp8 vs bf16 golden: " + vsGolden);
        }
    }

    /** bf16 hidden states in, bf16 out: within the bf16 tolerance of the golden output. */
    @Test
    void bf16Activations() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = openContext(); Arena arena = Arena.ofConfined()) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            float[] hidden = st.tensor("seq2.hidden").toFloatArray();
            float[] expected = st.tensor("seq2.output").toFloatArray();
            int t = 70;
            MemorySegment in = arena.allocate(ValueLayout.JAVA_SHORT, hidden.length);
            for (int k = 0; k < hidden.length; k++) {
                in.setAtIndex(ValueLayout.JAVA_SHORT, k, DType.floatToBf16(hidden[k]));
            }
            MemorySegment out = arena.allocate(ValueLayout.JAVA_SHORT, expected.length);
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.BF16, 16, 5)) {
                int id = cache.addSequence();
                try (Batch b = Batch.builder(cache).add(id, t).build()) {
                    if (ctx.backend() == MlaContext.Backend.CPU) {
                        layer.forward(b, in, DType.BF16, out, DType.BF16);
                    } else {  // device memory: through buffers on a stream of the context
                        try (DeviceBuffer din = DeviceBuffer.allocate(ctx, in.byteSize());
                             DeviceBuffer dout = DeviceBuffer.allocate(ctx, out.byteSize());
                             MlaStream stream = MlaStream.create(ctx)) {
                            din.upload(0, in, stream);
                            layer.forward(b, din, DType.BF16, dout, DType.BF16, stream);
                            dout.download(0, out, stream);
                        }
                    }
                }
            }
            float[] actual = new float[expected.length];
            for (int k = 0; k < actual.length; k++) {
                actual[k] = DType.bf16ToFloat(out.getAtIndex(ValueLayout.JAVA_SHORT, k));
            }
            double err = TestSupport.relErr(actual, expected);
            assertTrue(err <= TestSupport.TOL_BF16, "bf16 activations: " + err);
        }
    }
}
