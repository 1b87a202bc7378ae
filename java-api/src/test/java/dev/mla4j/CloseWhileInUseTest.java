package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Closing a cache while another thread runs the kernel-level attention over it: the close must be
 * refused while the call is inside libmla (the cache memory is in use), and later calls must fail
 * with IllegalStateException once it is closed. Freeing it under the running kernel would crash
 * the JVM.
 */
class CloseWhileInUseTest {
    @Test
    void cacheCannotCloseUnderARunningAttention() throws Exception {
        // A refusal needs the close to land inside a run (tens of ms each, back to back); a
        // descheduled runner can let one attempt land between two runs, so try a few scenarios.
        int refused = 0;
        for (int attempt = 0; attempt < 5 && refused == 0; attempt++) {
            refused = closeWhileRunning();
        }
        assertTrue(refused > 0, "close was never refused although runs were in flight");
    }

    /** Runs one scenario; returns how often the close was refused. */
    private static int closeWhileRunning() throws Exception {
        final int heads = 128, dc = 512, dr = 64, blockSize = 64, numBlocks = 256, cached = 16000;
        try (MlaContext ctx = MlaContext.cpu(1); Arena arena = Arena.ofShared()) {
            LatentCache cache = LatentCache.create(ctx, DType.F32, blockSize, numBlocks, dc, dr);
            Attention attn = Attention.create(ctx, 1, 1, heads, dc, dr);
            int id = cache.addSequence();
            cache.reserve(id, cached);
            cache.advance(id, cached);
            Batch batch = Batch.decode(cache, id);
            MemorySegment q = arena.allocate(ValueLayout.JAVA_FLOAT, (long) heads * (dc + dr));
            MemorySegment out = arena.allocate(ValueLayout.JAVA_FLOAT, (long) heads * dc);
            CountDownLatch running = new CountDownLatch(1);
            AtomicInteger runs = new AtomicInteger();
            AtomicReference<Throwable> error = new AtomicReference<>();
            Thread runner = new Thread(() -> {
                try {
                    for (;;) {
                        attn.run(batch, q, DType.F32, out, DType.F32, null, 0.1f, true);
                        runs.incrementAndGet();
                        running.countDown();
                    }
                } catch (IllegalStateException expected) {
                    // the cache was closed between two runs
                } catch (Throwable t) {
                    error.set(t);
                }
            });
            runner.start();
            running.await();  // one run done (tens of ms each): the runner is inside the next one
            Thread.sleep(5);
            int refused = 0;
            for (;;) {
                try {
                    cache.close();
                    break;
                } catch (IllegalStateException inUse) {
                    assertTrue(inUse.getMessage().contains("in use"), inUse.getMessage());
                    refused++;
                }
            }
            runner.join();
            assertNull(error.get(), () -> "runner failed: " + error.get());
            assertTrue(cache.isClosed());
            assertThrows(IllegalStateException.class,
                    () -> attn.run(batch, q, DType.F32, out, DType.F32, null, 0.1f, true));
            batch.close();
            attn.close();
            assertEquals(0, ctx.openChildren());
            return refused;
        }
    }
}
