package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Optional;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Closing, use after close, and argument checking of the native resources. */
class LifecycleTest {
    static Safetensors tiny() throws IOException {
        return Safetensors.open(TestSupport.testdata().resolve("golden/tiny_v3.safetensors"));
    }

    static MlaConfig tinyConfig(Safetensors st) {
        return MlaConfig.fromJson(st.metadata().get("config"));
    }

    private static void assertMessage(Exception e, String part) {
        assertTrue(e.getMessage().contains(part), () -> "'" + e.getMessage() + "' lacks '" + part + "'");
    }

    @Test
    void contextDescribesItselfAndClosesIdempotently() {
        MlaContext ctx = MlaContext.cpu(1);
        assertEquals(MlaContext.Backend.CPU, ctx.backend());
        assertTrue(ctx.describe().startsWith("cpu"), ctx.describe());
        ctx.close();
        assertTrue(ctx.isClosed());
        assertDoesNotThrow(ctx::close);
        assertMessage(assertThrows(IllegalStateException.class, ctx::describe), "MlaContext is closed");
        assertThrows(IllegalStateException.class, () -> LatentCache.create(ctx, DType.F32, 16, 4, 64, 16));
    }

    @Test
    void contextRefusesToCloseWhileLayersAndCachesAreOpen() throws IOException {
        try (Safetensors st = tiny()) {
            MlaConfig cfg = tinyConfig(st);
            MlaContext ctx = MlaContext.cpu(1);
            MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
            LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 4);
            assertEquals(2, ctx.openChildren());
            IllegalStateException e = assertThrows(IllegalStateException.class, ctx::close);
            assertMessage(e, "2 open");
            assertFalse(ctx.isClosed());
            // still fully usable
            int id = cache.addSequence();
            try (Batch b = Batch.builder(cache).add(id, 2).build()) {
                assertEquals(2 * cfg.hiddenSize(), layer.forward(b, new float[2 * cfg.hiddenSize()]).length);
            }
            layer.close();
            layer.close();
            cache.close();
            assertEquals(0, ctx.openChildren());
            ctx.close();
            assertTrue(ctx.isClosed());
        }
    }

    @Test
    void useAfterCloseThrowsIllegalState() throws IOException {
        try (Safetensors st = tiny(); MlaContext ctx = MlaContext.cpu(1)) {
            MlaConfig cfg = tinyConfig(st);
            MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
            LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 4);
            int id = cache.addSequence();
            Batch batch = Batch.builder(cache).add(id, 1).build();
            float[] hidden = new float[cfg.hiddenSize()];

            layer.close();
            assertMessage(assertThrows(IllegalStateException.class, () -> layer.forward(batch, hidden)), "MlaLayer is closed");
            assertThrows(IllegalStateException.class, layer::nativeConfig);

            try (MlaLayer layer2 = MlaLayer.create(ctx, cfg, st, "weights.")) {
                batch.close();
                batch.close();
                assertMessage(assertThrows(IllegalStateException.class, () -> layer2.forward(batch, hidden)),
                        "Batch is closed");
                cache.close();
                assertThrows(IllegalStateException.class, cache::addSequence);
                assertThrows(IllegalStateException.class, () -> cache.read(id, 0, 0));
                assertThrows(IllegalStateException.class, cache::bytesPerToken);
            }
        }
    }

    @Test
    void wrongArgumentsAreNamed() throws IOException {
        try (Safetensors st = tiny(); MlaContext ctx = MlaContext.cpu(1)) {
            MlaConfig cfg = tinyConfig(st);
            // a weight of the wrong shape: the config claims 8 heads
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> MlaLayer.create(ctx, cfg.withNumHeads(8), st, "weights."));
            assertMessage(e, "weights.q_b_proj.weight");
            assertMessage(assertThrows(IllegalArgumentException.class, () -> MlaLayer.create(ctx, cfg, st, "model.")),
                    "q_a_proj.weight is missing");
            assertMessage(assertThrows(IllegalArgumentException.class,
                    () -> MlaLayer.create(ctx, cfg, st, "weights.", 2, 9)), "head range");
            assertMessage(assertThrows(IllegalArgumentException.class,
                    () -> LatentCache.create(ctx, cfg, DType.F16, 16, 4)), "dtype = F16");
            assertMessage(assertThrows(IllegalArgumentException.class,
                    () -> LatentCache.create(ctx, cfg, DType.F32, 12, 4)), "blockSize = 12");

            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 4);
                 Arena arena = Arena.ofConfined()) {
                int id = cache.addSequence();
                try (Batch b = Batch.builder(cache).add(id, 2).build()) {
                    assertMessage(assertThrows(IllegalArgumentException.class,
                            () -> layer.forward(b, new float[cfg.hiddenSize()])), "hidden has");
                    MemorySegment small = arena.allocate(ValueLayout.JAVA_FLOAT, cfg.hiddenSize());
                    MemorySegment out = arena.allocate(ValueLayout.JAVA_FLOAT, 2L * cfg.hiddenSize());
                    assertMessage(assertThrows(IllegalArgumentException.class,
                            () -> layer.forward(b, small, DType.F32, out, DType.F32)), "hidden has");
                    MemorySegment heap = MemorySegment.ofArray(new float[2 * cfg.hiddenSize()]);
                    assertMessage(assertThrows(IllegalArgumentException.class,
                            () -> layer.forward(b, heap, DType.F32, out, DType.F32)), "hidden is a heap segment");
                    assertMessage(assertThrows(IllegalArgumentException.class,
                            () -> layer.forward(b, out, DType.F16, out, DType.F32)), "hiddenType = F16");
                    assertEquals(0, cache.length(id), "nothing written on failure");
                }
                // a cache of another latent width: libmla refuses, and says why
                try (LatentCache other = LatentCache.create(ctx, DType.F32, 16, 4, 32, 16)) {
                    int oid = other.addSequence();
                    try (Batch b = Batch.builder(other).add(oid, 1).build()) {
                        MlaException m = assertThrows(MlaException.class,
                                () -> layer.forward(b, new float[cfg.hiddenSize()]));
                        assertEquals(MlaException.Status.INVALID_ARGUMENT, m.status());
                        assertEquals("mla_layer_forward", m.function());
                        assertFalse(m.nativeMessage().isEmpty());
                        assertEquals(0, other.length(oid));
                    }
                }
            }
        }
    }

    @Test
    void fp8WeightNeedsItsScale() throws IOException {
        try (Safetensors st = tiny(); MlaContext ctx = MlaContext.cpu(1); Arena arena = Arena.ofConfined()) {
            MlaConfig cfg = tinyConfig(st);
            Tensor qa = st.tensor("weights.q_a_proj.weight");
            Tensor fp8 = Tensor.of("q_a_proj.weight", DType.F8_E4M3, qa.shape(), arena.allocate(qa.numel()));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> MlaLayer.create(ctx, cfg,
                    name -> name.equals("q_a_proj.weight") ? Optional.of(fp8) : st.find("weights." + name), 0, cfg.numHeads()));
            assertMessage(e, "q_a_proj.weight_scale_inv is missing");
        }
    }

    @Test
    void cudaContextWithoutAGpuFailsWithItsStatus() {
        try {
            try (MlaContext ctx = MlaContext.create(MlaContext.Backend.CUDA, 0, 0, MlaContext.Simd.AUTO)) {
                assertEquals(MlaContext.Backend.CUDA, ctx.backend());
                assertTrue(ctx.describe().startsWith("cuda"), ctx.describe());
            }
        } catch (MlaException e) {
            assertTrue(e.status() == MlaException.Status.UNSUPPORTED || e.status() == MlaException.Status.DEVICE,
                    e.getMessage());
            assertFalse(e.nativeMessage().isEmpty());
        }
    }

    @Test
    void aBatchBuiltOnOneThreadRunsOnAnother() throws Exception {
        try (Safetensors st = tiny(); MlaContext ctx = MlaContext.cpu(1)) {
            MlaConfig cfg = tinyConfig(st);
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 4)) {
                int id = cache.addSequence();
                Batch batch = Batch.builder(cache).add(id, 3).build();
                float[][] out = new float[1][];
                Thread t = new Thread(() -> out[0] = layer.forward(batch, new float[3 * cfg.hiddenSize()]));
                t.start();
                t.join();
                batch.close();
                assertEquals(3 * cfg.hiddenSize(), out[0].length);
                assertEquals(3, cache.length(id));
            }
        }
    }

    @Test
    void libraryIsTheBundledOneWithTheBindingsAbi() {
        NativeLibrary.load();
        assertEquals(dev.mla4j.bindings.Mla.MLA_ABI_VERSION(), NativeLibrary.abiVersion());
        assertEquals(dev.mla4j.bindings.Mla.MLA_VERSION_NUMBER(), NativeLibrary.version());
        assertEquals("bundled", NativeLibrary.source());
        assertTrue(NativeLibrary.path().getFileName().toString().matches("libmla-.*\\.so"), NativeLibrary.path().toString());
    }
}
