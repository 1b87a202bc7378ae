package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * DeviceBuffer, MlaStream and memoryInfo on a CPU context (where backend memory is host memory),
 * the same code paths a CUDA context takes; the CUDA specifics are in {@link CudaDeviceTest}.
 */
class DeviceBufferTest {
    @Test
    void uploadDownloadRoundTripAndBounds() {
        try (MlaContext ctx = MlaContext.cpu(1); Arena arena = Arena.ofConfined();
             DeviceBuffer buf = DeviceBuffer.allocate(ctx, 32)) {
            assertTrue(buf.isOwned());
            assertEquals(32, buf.byteSize());
            assertArrayEquals(new float[8], buf.downloadFloats(8), "zero-filled");
            buf.upload(new float[]{1, 2, 3});
            MemorySegment two = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 7f, 8f);
            buf.upload(20, two, null);
            assertArrayEquals(new float[]{1, 2, 3, 0, 0, 7, 8, 0}, buf.downloadFloats(8));
            MemorySegment part = arena.allocate(8);
            buf.download(4, part, null);
            assertArrayEquals(new float[]{2, 3}, part.toArray(ValueLayout.JAVA_FLOAT));

            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> buf.upload(28, two, null));
            assertTrue(e.getMessage().contains("offset = 28"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class,
                    () -> buf.upload(0, MemorySegment.ofArray(new float[2]), null));
            assertTrue(e.getMessage().startsWith("src"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> buf.download(-1, part, null));
            assertTrue(e.getMessage().contains("offset = -1"), e.getMessage());
            assertArrayEquals(new float[]{1, 2, 3, 0, 0, 7, 8, 0}, buf.downloadFloats(8), "failed calls wrote nothing");
            assertThrows(IllegalArgumentException.class, () -> DeviceBuffer.allocate(ctx, 0));
        }
    }

    @Test
    void wrappedMemoryIsNotOwnedAndSeesWrites() {
        try (MlaContext ctx = MlaContext.cpu(1); Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate(ValueLayout.JAVA_FLOAT, 4);
            try (DeviceBuffer w = DeviceBuffer.wrap(ctx, host.address(), host.byteSize())) {
                assertFalse(w.isOwned());
                assertEquals(host.address(), w.address());
                assertEquals(0, ctx.memoryInfo().usedByLibrary(), "wrapped memory is not the library's");
                w.upload(new float[]{5, 6});
                assertEquals(6f, host.getAtIndex(ValueLayout.JAVA_FLOAT, 1));
            }
            host.setAtIndex(ValueLayout.JAVA_FLOAT, 3, 9f);  // still valid: closing did not free it
            assertEquals(9f, host.getAtIndex(ValueLayout.JAVA_FLOAT, 3));
            assertThrows(IllegalArgumentException.class, () -> DeviceBuffer.wrap(ctx, 0, 4));
        }
    }

    @Test
    void forwardThroughBuffersOnAStreamEqualsForwardThroughSegments() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(2)) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            float[] hidden = st.tensor("seq2.hidden").toFloatArray();
            int t = hidden.length / cfg.hiddenSize();
            float[] viaArrays;
            float[] viaBuffers;
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.")) {
                try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, (t + 15) / 16);
                     Batch b = Batch.builder(cache).add(cache.addSequence(), t).build()) {
                    viaArrays = layer.forward(b, hidden);
                }
                try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, (t + 15) / 16);
                     DeviceBuffer in = DeviceBuffer.allocate(ctx, hidden.length * 4L);
                     DeviceBuffer out = DeviceBuffer.allocate(ctx, hidden.length * 4L);
                     MlaStream stream = MlaStream.create(ctx)) {
                    int id = cache.addSequence();
                    try (Arena arena = Arena.ofConfined();
                         Batch b = Batch.builder(cache).add(id, t).build()) {
                        in.upload(0, arena.allocateFrom(ValueLayout.JAVA_FLOAT, hidden), stream);
                        layer.forward(b, in, DType.F32, out, DType.F32, stream);
                        stream.synchronize();
                        viaBuffers = out.downloadFloats(hidden.length);
                    }
                    assertEquals(t, cache.length(id));
                }
            }
            assertArrayEquals(viaArrays, viaBuffers);
            double err = TestSupport.relErr(viaBuffers, st.tensor("seq2.output").toFloatArray());
            assertTrue(err <= TestSupport.TOL_F32, "against the golden output: " + err);
        }
    }

    @Test
    void misuseNamesTheArgument() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(1); MlaContext other = MlaContext.cpu(1)) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            long rowBytes = cfg.hiddenSize() * 4L;
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 1);
                 DeviceBuffer in = DeviceBuffer.allocate(ctx, rowBytes);
                 DeviceBuffer out = DeviceBuffer.allocate(ctx, rowBytes);
                 DeviceBuffer small = DeviceBuffer.allocate(ctx, rowBytes - 4);
                 DeviceBuffer foreign = DeviceBuffer.allocate(other, rowBytes);
                 MlaStream foreignStream = MlaStream.create(other)) {
                int id = cache.addSequence();
                Batch b = Batch.builder(cache).add(id, 1).build();
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(b, foreign, DType.F32, out, DType.F32, null));
                assertTrue(e.getMessage().startsWith("hidden is memory of another context"), e.getMessage());
                e = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(b, in, DType.F32, small, DType.F32, null));
                assertTrue(e.getMessage().startsWith("out has " + (rowBytes - 4) + " bytes"), e.getMessage());
                e = assertThrows(IllegalArgumentException.class,
                        () -> layer.forward(b, in, DType.F32, out, DType.F32, foreignStream));
                assertTrue(e.getMessage().startsWith("stream belongs to another context"), e.getMessage());
                e = assertThrows(IllegalArgumentException.class, () -> in.upload(0, MemorySegment.NULL, foreignStream));
                assertTrue(e.getMessage().startsWith("stream belongs to another context"), e.getMessage());
                MlaStream closed = MlaStream.create(ctx);
                closed.close();
                IllegalStateException s = assertThrows(IllegalStateException.class,
                        () -> layer.forward(b, in, DType.F32, out, DType.F32, closed));
                assertEquals("stream is a closed MlaStream", s.getMessage());
                DeviceBuffer gone = DeviceBuffer.allocate(ctx, rowBytes);
                gone.close();
                s = assertThrows(IllegalStateException.class, () -> layer.forward(b, in, DType.F32, gone, DType.F32, null));
                assertEquals("out is a closed DeviceBuffer", s.getMessage());
                assertEquals(0, cache.length(id), "nothing ran");
                b.close();
            }
        }
    }

    @Test
    void memoryInfoCountsBuffersAndCachesAndReturnsToZero() {
        try (MlaContext ctx = MlaContext.cpu(1)) {
            MlaContext.MemoryInfo start = ctx.memoryInfo();
            assertEquals(0, start.usedByLibrary());
            assertTrue(start.total() > 0 && start.free() <= start.total(), start.toString());
            try (DeviceBuffer a = DeviceBuffer.allocate(ctx, 1000);
                 LatentCache c = LatentCache.create(ctx, DType.BF16, 4, 2, 16, 8)) {
                assertEquals(1000 + c.totalBytes(), ctx.memoryInfo().usedByLibrary());
                IllegalStateException e = assertThrows(IllegalStateException.class, ctx::close);
                assertTrue(e.getMessage().contains("open"), e.getMessage());
            }
            assertEquals(0, ctx.memoryInfo().usedByLibrary());
        }
    }

    @Test
    void streamsAreDistinctAndClosedWithTheirUse() {
        try (MlaContext ctx = MlaContext.cpu(1); MlaStream a = MlaStream.create(ctx); MlaStream b = MlaStream.create(ctx)) {
            a.synchronize();
            assertNotEquals(a.handle().address(), b.handle().address());
            assertEquals(2, ctx.openChildren());
        }
    }

    @Test
    void defaultBackendHereIsExplained() {
        NativeLibrary.BackendChoice c = NativeLibrary.defaultBackend();
        String reason = NativeLibrary.cudaUnavailableReason();
        if (reason != null) {
            assertEquals(MlaContext.Backend.CPU, c.backend());
            assertTrue(c.reason().startsWith("no CUDA device: MLA_ERROR_"), c.reason());
        } else {
            assertEquals(MlaContext.Backend.CUDA, c.backend(), c.reason());
        }
        try (MlaContext ctx = MlaContext.auto()) {
            assertEquals(c.backend(), ctx.backend());
        }
    }
}
