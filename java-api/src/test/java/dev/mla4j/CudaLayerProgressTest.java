package dev.mla4j;

import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link LayerProgressTest} on a CUDA context (weights staged in chunks through pinned buffers to
 * the device, kept there as bf16 matrices and f32 norms), plus a layer large enough that its
 * tensors take several 16 MiB chunks each. Skipped without a GPU.
 */
@Tag("gpu")
class CudaLayerProgressTest extends LayerProgressTest {
    private static final long CHUNK = 16L << 20;

    @BeforeEach
    void requireCuda() {
        GpuSupport.assumeCuda();
    }

    @Override
    MlaContext openContext() {
        return MlaContext.cuda(GpuSupport.device());
    }

    @Override
    long matrixElementBytes(Kind kind) {
        return 2;  // every matrix is bf16 on the device, whatever the source
    }

    @Override
    boolean oneCallPerTensor() {
        return false;
    }

    @Override
    double goldenTolerance() {
        return TestSupport.TOL_CUDA;
    }

    @Override
    double fp8Tolerance() {
        return TestSupport.TOL_CUDA;
    }

    /**
     * DeepSeek-V3's hidden size and latent dims with 32 heads (about 58M weights, o_proj alone 56
     * MiB in bf16): each of several tensors is staged in more chunks than there are buffers, with
     * chunk boundaries inside FP8-sized 128-row blocks. The CUDA layer (full and a head slice)
     * must match the CPU layer of the same weights.
     */
    @Test
    void multiChunkLayerMatchesTheCpuLayer() {
        MlaConfig cfg = MlaConfig.deepseekV3().withNumHeads(32);
        int d = cfg.hiddenSize();
        long h = cfg.numHeads();
        long qk = cfg.qkNopeHeadDim() + cfg.qkRopeHeadDim();
        long[][] shapes = {
                {cfg.qLoraRank(), d}, {cfg.qLoraRank()}, {h * qk, cfg.qLoraRank()},
                {cfg.kvLoraRank() + cfg.qkRopeHeadDim(), d}, {cfg.kvLoraRank()},
                {h * (cfg.qkNopeHeadDim() + cfg.vHeadDim()), cfg.kvLoraRank()}, {d, h * cfg.vHeadDim()}};
        String[] names = {"q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm",
                "kv_b_proj", "o_proj"};
        SplittableRandom rnd = new SplittableRandom(2024);
        try (Arena arena = Arena.ofConfined(); MlaContext gpu = openContext(); MlaContext cpu = MlaContext.cpu()) {
            Map<String, Tensor> w = new HashMap<>();
            for (int i = 0; i < names.length; i++) {
                long[] shape = shapes[i];
                long n = shape.length == 1 ? shape[0] : shape[0] * shape[1];
                float scale = shape.length == 1 ? 0.1f : (float) (1.0 / Math.sqrt(shape[1]));
                MemorySegment seg = arena.allocate(ValueLayout.JAVA_SHORT, n);
                for (long k = 0; k < n; k++) {
                    float v = (float) (rnd.nextDouble() * 2 - 1) * scale + (shape.length == 1 ? 1f : 0f);
                    seg.setAtIndex(ValueLayout.JAVA_SHORT, k, DType.floatToBf16(v));
                }
                w.put(names[i] + ".weight", Tensor.of(names[i] + ".weight", DType.BF16, shape, seg));
            }
            int tokens = 7;
            float[] hidden = new float[tokens * d];
            for (int k = 0; k < hidden.length; k++) {
                hidden[k] = (float) (rnd.nextDouble() * 2 - 1);
            }
            for (int[] heads : new int[][]{{0, (int) h}, {8, 24}}) {
                Recorder rec = new Recorder();
                float[] onGpu;
                float[] onCpu;
                try (MlaLayer layer = MlaLayer.create(gpu, cfg, n -> Optional.ofNullable(w.get(n)), heads[0], heads[1], rec)) {
                    onGpu = forward(gpu, cfg, layer, hidden, tokens);
                }
                try (MlaLayer layer = MlaLayer.create(cpu, cfg, n -> Optional.ofNullable(w.get(n)), heads[0], heads[1])) {
                    onCpu = forward(cpu, cfg, layer, hidden, tokens);
                }
                long total = expectedBytes(cfg, heads[0], heads[1], Kind.BF16);
                checkCalls(rec.calls, total, tensors(cfg));
                long prev = 0;
                for (Call c : rec.calls) {
                    assertTrue(c.done() - prev <= CHUNK, "a chunk is at most 16 MiB: " + (c.done() - prev));
                    prev = c.done();
                }
                int calls = rec.calls.size();
                assertTrue(calls >= Math.max(tensors(cfg), Math.ceilDiv(total, CHUNK)) && calls > tensors(cfg),
                        "chunks: " + calls + " for " + total + " bytes in " + tensors(cfg) + " tensors");
                double err = TestSupport.relErr(onGpu, onCpu);
                assertTrue(err <= TestSupport.TOL_CUDA,
                        "heads [" + heads[0] + ", " + heads[1] + "): CUDA vs CPU layer " + err);
                System.out.printf("multi-chunk layer heads [%d, %d): %d progress calls, %d bytes, CUDA vs CPU %.2e%n",
                        heads[0], heads[1], rec.calls.size(), total, err);
            }
            assertEquals(0, gpu.openChildren());
        }
    }
}
