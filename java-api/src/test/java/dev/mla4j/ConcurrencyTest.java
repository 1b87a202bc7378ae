package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/** 8 threads decoding independent sequences at once on one layer, one cache, one context. */
class ConcurrencyTest {
    private static final int THREADS = 8;
    private static final int PROMPT = 5;
    private static final int STEPS = 12;

    private static float[][] run(MlaLayer layer, LatentCache cache, float[] prompt, float[][] steps, CyclicBarrier barrier)
            throws Exception {
        int id = cache.addSequence();
        float[][] out = new float[steps.length + 1][];
        try (Batch b = Batch.builder(cache).add(id, PROMPT).build()) {
            out[0] = layer.forward(b, prompt);
        }
        for (int s = 0; s < steps.length; s++) {
            if (barrier != null) {
                barrier.await();
            }
            try (Batch b = Batch.decode(cache, id)) {
                out[s + 1] = layer.forward(b, steps[s]);
            }
        }
        cache.free(id);
        return out;
    }

    /** The context the test runs in; {@link CudaConcurrencyTest} uses a CUDA one. */
    MlaContext openContext() {
        return MlaContext.cpu();
    }

    @Test
    void parallelDecodeEqualsSerial() throws Exception {
        try (Safetensors st = Safetensors.open(TestSupport.testdata().resolve("golden/v3_yarn_h8.safetensors"));
             MlaContext ctx = openContext()) {
            MlaConfig cfg = MlaConfig.fromJson(st.metadata().get("config"));
            int d = cfg.hiddenSize();
            Random rnd = new Random(42);
            float[][] prompts = new float[THREADS][];
            float[][][] steps = new float[THREADS][STEPS][];
            for (int t = 0; t < THREADS; t++) {
                prompts[t] = new float[PROMPT * d];
                for (int i = 0; i < prompts[t].length; i++) {
                    prompts[t][i] = (float) rnd.nextGaussian();
                }
                for (int s = 0; s < STEPS; s++) {
                    steps[t][s] = new float[d];
                    for (int i = 0; i < d; i++) {
                        steps[t][s][i] = (float) rnd.nextGaussian();
                    }
                }
            }
            int blocksPerSeq = (PROMPT + STEPS + 3) / 4;
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.BF16, 4, THREADS * blocksPerSeq)) {
                float[][][] serial = new float[THREADS][][];
                for (int t = 0; t < THREADS; t++) {
                    serial[t] = run(layer, cache, prompts[t], steps[t], null);
                }
                CyclicBarrier barrier = new CyclicBarrier(THREADS);
                ExecutorService pool = Executors.newFixedThreadPool(THREADS);
                try {
                    List<Future<float[][]>> futures = new ArrayList<>();
                    for (int t = 0; t < THREADS; t++) {
                        int tt = t;
                        futures.add(pool.submit(() -> run(layer, cache, prompts[tt], steps[tt], barrier)));
                    }
                    for (int t = 0; t < THREADS; t++) {
                        float[][] parallel = futures.get(t).get();
                        for (int s = 0; s <= STEPS; s++) {
                            assertArrayEquals(serial[t][s], parallel[s], "thread " + t + " step " + s);
                        }
                    }
                } finally {
                    pool.shutdownNow();
                }
            }
        }
    }
}
