package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Closing a context while another thread creates a cache in it: either the creation fails with
 * IllegalStateException, or the cache is created and the context refuses to close while it is
 * open. A context that closed under an open cache would free memory the cache still uses.
 */
class ContextCloseRaceTest {
    private static final int ROUNDS = 400;

    @Test
    void contextNeverClosesUnderAChildBeingCreated() throws Exception {
        int bothSucceeded = 0;
        for (int round = 0; round < ROUNDS; round++) {
            MlaContext ctx = MlaContext.cpu(1);
            CountDownLatch go = new CountDownLatch(1);
            AtomicReference<Throwable> creatorError = new AtomicReference<>();
            AtomicInteger leaked = new AtomicInteger();
            Thread creator = new Thread(() -> {
                try {
                    go.await();
                    for (;;) {
                        LatentCache c = LatentCache.create(ctx, DType.F32, 1, 1, 1, 2);
                        if (ctx.isClosed()) {
                            leaked.incrementAndGet();  // left open: closing it would touch freed memory
                            return;
                        }
                        c.close();
                    }
                } catch (IllegalStateException expected) {
                    // the context closed first
                } catch (Throwable t) {
                    creatorError.set(t);
                }
            });
            creator.start();
            go.countDown();
            for (int spin = 0; spin < 200; spin++) {
                Thread.onSpinWait();
            }
            boolean closed = false;
            while (!closed) {
                try {
                    ctx.close();
                    closed = true;
                } catch (IllegalStateException refused) {
                    Thread.onSpinWait();
                }
            }
            creator.join();
            if (creatorError.get() != null) {
                fail("round " + round + ": creation failed with " + creatorError.get(), creatorError.get());
            }
            bothSucceeded += leaked.get();
            assertTrue(ctx.isClosed());
        }
        assertEquals(0, bothSucceeded, "the context closed while a cache created in it was open");
    }
}
