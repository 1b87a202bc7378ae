package dev.mla4j;

import dev.mla4j.AttentionScenario.Mode;
import dev.mla4j.AttentionScenario.Result;
import dev.mla4j.AttentionScenario.Seq;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The kernel level on a CUDA context from Java: compress and attention with DeviceBuffers (the
 * staged Batch path and the DeviceBatch path) against the CPU backend on the same inputs, for
 * ragged batches (empty sequences, decode, MTP with 2 tokens, a causal prefill chunk, sequences
 * without new tokens), bf16 and f32 q/out, 1, 16 and 128 heads; a query without keys; the misuse
 * cases of AttentionDeviceTest on the GPU; and the device memory the Attention allocates coming
 * back on close. Skipped, with libmla's reason, where no CUDA device is present.
 */
@Tag("gpu")
class CudaAttentionTest {
    @BeforeEach
    void requireCuda() {
        GpuSupport.assumeCuda();
    }

    static Stream<Arguments> cases() {
        List<Arguments> list = new ArrayList<>();
        for (int heads : new int[]{1, 16, 128}) {
            for (DType io : new DType[]{DType.BF16, DType.F32}) {
                for (Mode mode : new Mode[]{Mode.STAGED, Mode.DEVICE_BATCH}) {
                    list.add(Arguments.of(heads, io, DType.BF16, mode, true));
                }
            }
        }
        // an f32 cache (the generic kernel), bf16 kv_a rows, and a non-causal batch
        list.add(Arguments.of(16, DType.BF16, DType.F32, Mode.STAGED, true));
        list.add(Arguments.of(128, DType.BF16, DType.BF16, Mode.DEVICE_BATCH, false));
        return list.stream();
    }

    @ParameterizedTest(name = "H={0} q/out={1} cache={2} {3} causal={4}")
    @MethodSource("cases")
    void matchesTheCpuBackend(int heads, DType io, DType cacheType, Mode mode, boolean causal) {
        DType kv = cacheType == DType.F32 ? DType.BF16 : DType.F32;
        Result cpu;
        try (MlaContext ctx = MlaContext.cpu()) {
            cpu = AttentionScenario.run(ctx, AttentionDeviceTest.RAGGED, heads, cacheType, kv, io, io, causal,
                    Mode.STAGED, 17);
        }
        Result gpu;
        try (MlaContext ctx = MlaContext.cuda(GpuSupport.device())) {
            gpu = AttentionScenario.run(ctx, AttentionDeviceTest.RAGGED, heads, cacheType, kv, io, io, causal, mode, 17);
        }
        String what = "H " + heads + ", q/out " + io + ", cache " + cacheType + ", " + mode + ", causal " + causal;
        double cacheErr = TestSupport.relErr(gpu.cache(), cpu.cache());
        // bf16 kv_a rows: both backends round the normalized latent to bf16 (transformers'
        // RMSNorm), and their f32 values before that rounding differ in the last bits, so a value
        // near a rounding boundary may land one bf16 step apart even in an f32 cache.
        boolean exact = cacheType == DType.F32 && kv == DType.F32;
        assertTrue(cacheErr <= (exact ? TestSupport.TOL_F32 : TestSupport.TOL_BF16),
                what + ": cache written on the GPU against the CPU's: " + cacheErr);
        double outErr = TestSupport.relErr(gpu.out(), cpu.out());
        double lseErr = TestSupport.relErr(gpu.lse(), cpu.lse());
        assertTrue(outErr <= TestSupport.TOL_CUDA, what + ": out against the CPU backend: " + outErr);
        assertTrue(lseErr <= TestSupport.TOL_CUDA, what + ": lse against the CPU backend: " + lseErr);
        double norm = 0;
        for (float v : gpu.out()) {
            norm = Math.max(norm, Math.abs(v));
        }
        assertTrue(norm > 1e-3, what + ": the GPU output is all zeros");
        assertEquals(1, gpu.plans(), what + ": two runs of one batch plan once");
        assertEquals(mode == Mode.STAGED ? 2 : 0, gpu.uploads(), what + ": staged copies (prefill, step)");
    }

    @Test
    void aQueryWithoutKeysGivesZeroAndInfiniteLse() {
        for (int heads : new int[]{1, 16, 128}) {
            float[][] gpu;
            float[][] cpu;
            try (MlaContext ctx = MlaContext.cuda(GpuSupport.device())) {
                gpu = AttentionScenario.zeroLengthSequence(ctx, heads, 5);
            }
            try (MlaContext ctx = MlaContext.cpu()) {
                cpu = AttentionScenario.zeroLengthSequence(ctx, heads, 5);
            }
            int row = heads * AttentionScenario.DC;
            for (int i = 0; i < row; i++) {
                assertEquals(0f, gpu[0][i], "H " + heads + ": out of the sequence without keys, element " + i);
            }
            for (int h = 0; h < heads; h++) {
                assertEquals(Float.POSITIVE_INFINITY, gpu[1][h], "H " + heads + ": lse without keys, head " + h);
            }
            float[] gOut = TestSupport.slice(gpu[0], row, 2 * row);
            float[] cOut = TestSupport.slice(cpu[0], row, 2 * row);
            assertTrue(TestSupport.relErr(gOut, cOut) <= TestSupport.TOL_CUDA, "H " + heads + ": second sequence's out");
            assertTrue(TestSupport.relErr(TestSupport.slice(gpu[1], heads, 2 * heads),
                    TestSupport.slice(cpu[1], heads, 2 * heads)) <= TestSupport.TOL_CUDA, "H " + heads + ": its lse");
        }
    }

    /**
     * A batch restaged after another batch's compress, and a change of stream between the calls
     * (the Attention then waits for the previous stream before reusing its buffers): the second
     * run equals the first, on two streams, on one stream and stream to default stream.
     */
    @Test
    void restagingAndStreamChangesKeepResults() {
        try (MlaContext ctx = MlaContext.cuda(GpuSupport.device());
             MlaStream s1 = MlaStream.create(ctx); MlaStream s2 = MlaStream.create(ctx)) {
            float[][] cpu;
            try (MlaContext c = MlaContext.cpu()) {
                cpu = AttentionScenario.restage(c, 16, null, null);
            }
            MlaStream[][] pairs = {{s1, s2}, {s1, s1}, {s2, null}, {null, null}};
            for (MlaStream[] p : pairs) {
                float[][] r = AttentionScenario.restage(ctx, 16, p[0], p[1]);
                String what = (p[0] == null ? "default" : p[0] == s1 ? "s1" : "s2") + " then "
                        + (p[1] == null ? "default" : p[1] == s1 ? "s1" : "s2");
                assertArrayEquals(r[0], r[1], what + ": second run differs");
                assertTrue(TestSupport.relErr(r[0], cpu[0]) <= TestSupport.TOL_CUDA, what + ": against the CPU "
                        + TestSupport.relErr(r[0], cpu[0]));
                assertArrayEquals(new float[]{1, 4}, r[2], what + ": plans, uploads");
            }
        }
    }

    @Test
    void misuseIsRefusedNamingTheArgument() {
        // the second context is a CPU one: its buffers are host memory, which the GPU calls refuse
        AttentionDeviceTest.misuse(MlaContext.cuda(GpuSupport.device()), MlaContext.cpu(1));
    }

    @Test
    void attentionDeviceMemoryIsFreedOnClose() {
        try (MlaContext ctx = MlaContext.cuda(GpuSupport.device())) {
            AttentionScenario.run(ctx, AttentionDeviceTest.RAGGED, 16, DType.BF16, DType.F32, DType.BF16, DType.BF16,
                    true, Mode.STAGED, 1);  // loads the kernels
            MlaContext.MemoryInfo start = ctx.memoryInfo();
            for (int i = 0; i < 3; i++) {
                try (Attention attn = Attention.create(ctx, 128, 256, 128, AttentionScenario.DC, AttentionScenario.DR)) {
                    assertTrue(ctx.memoryInfo().usedByLibrary() >= attn.metadataBytes() + attn.workspaceBytes(),
                            "metadata and workspace are the context's (device) memory");
                }
                AttentionScenario.run(ctx, AttentionDeviceTest.RAGGED, 16, DType.BF16, DType.F32, DType.BF16,
                        DType.BF16, true, Mode.STAGED, 1);
            }
            MlaContext.MemoryInfo end = ctx.memoryInfo();
            assertEquals(start.usedByLibrary(), end.usedByLibrary(), "library bytes after closing everything");
            assertEquals(0, end.usedByLibrary());
            assertEquals(start.free(), end.free(), () -> "device free bytes: start " + start + ", end " + end);
        }
    }
}
