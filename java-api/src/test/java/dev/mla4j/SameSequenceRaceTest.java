package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

/**
 * Two threads run batches that append to the same sequence at the same position: exactly one may
 * succeed, the other must fail with IllegalStateException, and the failed one must write nothing
 * (the cache keeps the winner's token, as MlaLayer.forward promises on failure).
 */
class SameSequenceRaceTest {
    private static final int ROUNDS = 200;

    @Test
    void concurrentAppendsToOneSequenceNeverCorruptIt() throws Exception {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(1)) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            int d = cfg.hiddenSize();
            float[][] hidden = new float[2][d];
            for (int i = 0; i < d; i++) {
                hidden[0][i] = (float) Math.sin(i);
                hidden[1][i] = (float) Math.cos(3 * i);
            }
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 1, ROUNDS + 4)) {
                // What each thread's token alone leaves in the cache.
                float[][] expected = new float[2][];
                for (int k = 0; k < 2; k++) {
                    int id = cache.addSequence();
                    try (Batch b = Batch.decode(cache, id)) {
                        layer.forward(b, hidden[k]);
                    }
                    expected[k] = cache.read(id, 0, 1)[0];
                    cache.free(id);
                }
                int raced = 0;
                for (int round = 0; round < ROUNDS; round++) {
                    int id = cache.addSequence();
                    Batch[] batches = {Batch.decode(cache, id), Batch.decode(cache, id)};
                    CyclicBarrier barrier = new CyclicBarrier(2);
                    boolean[] won = new boolean[2];
                    AtomicReference<Throwable> error = new AtomicReference<>();
                    Thread[] threads = new Thread[2];
                    for (int k = 0; k < 2; k++) {
                        int kk = k;
                        threads[k] = new Thread(() -> {
                            try {
                                barrier.await();
                                layer.forward(batches[kk], hidden[kk]);
                                won[kk] = true;
                            } catch (IllegalStateException lost) {
                                // the other thread's batch went first
                            } catch (Throwable t) {
                                error.set(t);
                            }
                        });
                        threads[k].start();
                    }
                    for (Thread t : threads) {
                        t.join();
                    }
                    assertNull(error.get(), () -> "round: " + error.get());
                    assertEquals(1, (won[0] ? 1 : 0) + (won[1] ? 1 : 0), "exactly one append succeeds");
                    assertEquals(1, cache.length(id));
                    int winner = won[0] ? 0 : 1;
                    assertArrayEquals(expected[winner], cache.read(id, 0, 1)[0],
                            "round " + round + ": the cache holds the losing thread's token");
                    raced++;
                    batches[0].close();
                    batches[1].close();
                    cache.free(id);
                }
                assertEquals(ROUNDS, raced);
            }
        }
    }
}
