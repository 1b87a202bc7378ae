package dev.mla4j;

import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Device memory from Java on a CUDA context: pointer-kind checks, host segments refused, streams,
 * and a leak check (device memory returns to its starting value after every resource closes).
 * Skipped, with libmla's reason, where no CUDA device is present.
 */
@Tag("gpu")
class CudaDeviceTest {
    @BeforeEach
    void requireCuda() {
        GpuSupport.assumeCuda();
    }

    @Test
    void hostMemoryIsRefusedWhereDeviceMemoryIsExpected() throws IOException {
        try (MlaContext ctx = MlaContext.cuda(GpuSupport.device()); Arena arena = Arena.ofConfined();
             Safetensors st = LifecycleTest.tiny()) {
            MemorySegment host = arena.allocate(256);
            MlaException e = assertThrows(MlaException.class, () -> DeviceBuffer.wrap(ctx, host.address(), 256));
            assertEquals(MlaException.Status.INVALID_ARGUMENT, e.status());
            assertTrue(e.nativeMessage().contains("data") && e.nativeMessage().contains("host memory"), e.nativeMessage());
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 1)) {
                int id = cache.addSequence();
                try (Batch b = Batch.builder(cache).add(id, 1).build()) {
                    MemorySegment seg = arena.allocate(cfg.hiddenSize() * 4L);
                    IllegalArgumentException iae = assertThrows(IllegalArgumentException.class,
                            () -> layer.forward(b, seg, DType.F32, seg, DType.F32));
                    assertTrue(iae.getMessage().startsWith("hidden and out are host MemorySegments"), iae.getMessage());
                }
                assertEquals(0, cache.length(id));
            }
        }
    }

    @Test
    void wrappedDeviceMemoryIsAccepted() {
        try (MlaContext ctx = MlaContext.cuda(GpuSupport.device());
             DeviceBuffer owner = DeviceBuffer.allocate(ctx, 64)) {
            try (DeviceBuffer view = DeviceBuffer.wrap(ctx, owner.address(), 64)) {
                view.upload(new float[]{1, 2, 3});
            }
            assertArrayEquals(new float[]{1, 2, 3, 0}, owner.downloadFloats(4), "wrap did not free or copy the memory");
        }
    }

    @Test
    void decodeLoopOnAStreamMatchesTheArrayPath() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cuda(GpuSupport.device())) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            float[] hidden = st.tensor("seq2.hidden").toFloatArray();
            int d = cfg.hiddenSize();
            int t = hidden.length / d;
            float[] ref = new float[hidden.length];
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.")) {
                try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, (t + 15) / 16)) {
                    int id = cache.addSequence();
                    for (int i = 0; i < t; i++) {
                        try (Batch b = Batch.decode(cache, id)) {
                            float[] o = layer.forward(b, TestSupport.slice(hidden, i * d, (i + 1) * d));
                            System.arraycopy(o, 0, ref, i * d, d);
                        }
                    }
                }
                // The same loop with the whole input uploaded once and no host round trip per step.
                try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, (t + 15) / 16);
                     DeviceBuffer in = DeviceBuffer.allocate(ctx, hidden.length * 4L);
                     DeviceBuffer out = DeviceBuffer.allocate(ctx, hidden.length * 4L);
                     MlaStream stream = MlaStream.create(ctx);
                     Arena arena = Arena.ofConfined()) {
                    in.upload(0, arena.allocateFrom(ValueLayout.JAVA_FLOAT, hidden), stream);
                    int id = cache.addSequence();
                    for (int i = 0; i < t; i++) {
                        try (Batch b = Batch.decode(cache, id);
                             DeviceBuffer hv = DeviceBuffer.wrap(ctx, in.address() + (long) i * d * 4, d * 4L);
                             DeviceBuffer ov = DeviceBuffer.wrap(ctx, out.address() + (long) i * d * 4, d * 4L)) {
                            layer.forward(b, hv, DType.F32, ov, DType.F32, stream);
                        }
                    }
                    MemorySegment result = arena.allocate(ValueLayout.JAVA_FLOAT, hidden.length);
                    out.download(0, result, stream);
                    double err = TestSupport.relErr(result.toArray(ValueLayout.JAVA_FLOAT), ref);
                    assertTrue(err <= 1e-6, "stream loop against the array path: " + err);
                    double golden = TestSupport.relErr(ref, st.tensor("seq2.output").toFloatArray());
                    assertTrue(golden <= TestSupport.TOL_CUDA, "array path against the golden output: " + golden);
                }
            }
        }
    }

    /** Device memory in use returns to its starting value once every resource is closed. */
    @Test
    void noDeviceMemoryLeaks() throws IOException {
        try (MlaContext ctx = MlaContext.cuda(GpuSupport.device()); Safetensors st = LifecycleTest.tiny()) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            float[] hidden = st.tensor("seq2.hidden").toFloatArray();
            int t = hidden.length / cfg.hiddenSize();
            Runnable work = () -> {
                try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                     LatentCache cache = LatentCache.create(ctx, cfg, DType.BF16, 16, (t + 15) / 16);
                     MlaStream stream = MlaStream.create(ctx);
                     DeviceBuffer in = DeviceBuffer.allocate(ctx, hidden.length * 4L);
                     DeviceBuffer out = DeviceBuffer.allocate(ctx, hidden.length * 4L)) {
                    in.upload(hidden);
                    try (Batch b = Batch.builder(cache).add(cache.addSequence(), t).build()) {
                        layer.forward(b, in, DType.F32, out, DType.F32, stream);
                    }
                    stream.synchronize();
                    assertTrue(ctx.memoryInfo().usedByLibrary() >= 2L * hidden.length * 4 + cache.totalBytes());
                }
            };
            work.run();  // loads the kernels (lazy module loading takes device memory once)
            MlaContext.MemoryInfo start = ctx.memoryInfo();
            assertEquals(0, start.usedByLibrary());
            for (int i = 0; i < 3; i++) {
                work.run();
            }
            MlaContext.MemoryInfo end = ctx.memoryInfo();
            assertEquals(0, end.usedByLibrary(), "library bytes after closing everything");
            assertEquals(start.free(), end.free(), () -> "device free bytes: start " + start + ", end " + end);
        }
    }
}
