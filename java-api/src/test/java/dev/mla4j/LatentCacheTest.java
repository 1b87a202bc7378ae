package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.util.Arrays;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The block allocator of LatentCache: add, reserve, fork, free, capacity. */
class LatentCacheTest {
    private static float[] random(Random r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) r.nextGaussian();
        }
        return a;
    }

    @Test
    void allocatesBlocksAsSequencesGrowAndFreesThem() {
        try (MlaContext ctx = MlaContext.cpu(1); LatentCache cache = LatentCache.create(ctx, DType.BF16, 4, 8, 64, 16)) {
            assertEquals(8, cache.freeBlocks());
            assertEquals(2L * (64 + 16), cache.bytesPerToken());
            assertEquals(8L * 4 * 2 * (64 + 16), cache.totalBytes());
            int a = cache.addSequence();
            cache.reserve(a, 5);
            assertEquals(2, cache.blocks(a).length);
            assertEquals(6, cache.freeBlocks());
            cache.advance(a, 5);
            assertEquals(5, cache.length(a));
            cache.reserve(a, 3); // 8 tokens fit in 2 blocks
            assertEquals(6, cache.freeBlocks());
            assertThrows(IllegalStateException.class, () -> cache.advance(a, 4));
            cache.free(a);
            assertEquals(8, cache.freeBlocks());
            assertEquals(0, cache.sequenceCount());
            assertThrows(IllegalArgumentException.class, () -> cache.length(a));
        }
    }

    @Test
    void capacityErrorsAreExceptionsAndChangeNothing() {
        try (MlaContext ctx = MlaContext.cpu(1); LatentCache cache = LatentCache.create(ctx, DType.F32, 4, 3, 64, 16)) {
            int a = cache.addSequence();
            int b = cache.addSequence();
            cache.reserve(a, 8);
            MlaException e = assertThrows(MlaException.class, () -> cache.reserve(b, 5));
            assertEquals(MlaException.Status.CACHE_FULL, e.status());
            assertTrue(e.getMessage().contains("sequence " + b), e.getMessage());
            assertEquals(1, cache.freeBlocks());
            assertEquals(0, cache.blocks(b).length);
            // a batch is all or nothing over its sequences
            MlaException e2 = assertThrows(MlaException.class, () -> Batch.builder(cache).add(b, 4).add(a, 9).build());
            assertEquals(MlaException.Status.CACHE_FULL, e2.status());
            assertEquals(1, cache.freeBlocks());
            assertEquals(0, cache.blocks(b).length);
            try (Batch ok = Batch.builder(cache).add(b, 4).build()) {
                assertEquals(0, cache.freeBlocks());
                assertEquals(4, ok.numTokens());
            }
        }
    }

    @Test
    void forkSharesFullBlocksAndCopiesThePartialOne() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(1)) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            int d = cfg.hiddenSize();
            Random rnd = new Random(7);
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 4, 16);
                 LatentCache reference = LatentCache.create(ctx, cfg, DType.F32, 4, 16)) {
                int parent = cache.addSequence();
                float[] prompt = random(rnd, 6 * d);
                try (Batch b = Batch.builder(cache).add(parent, 6).build()) {
                    layer.forward(b, prompt);
                }
                int[] parentBlocks = cache.blocks(parent);
                int free = cache.freeBlocks();

                int child = cache.fork(parent);
                int[] childBlocks = cache.blocks(child);
                assertEquals(6, cache.length(child));
                assertEquals(parentBlocks[0], childBlocks[0], "full block shared");
                assertNotEquals(parentBlocks[1], childBlocks[1], "partial block copied");
                assertEquals(2, cache.refCount(parentBlocks[0]));
                assertEquals(1, cache.refCount(childBlocks[1]));
                IllegalArgumentException bad = assertThrows(IllegalArgumentException.class,
                        () -> cache.refCount(cache.numBlocks()));
                assertTrue(bad.getMessage().startsWith("block = "), bad.getMessage());
                assertEquals(free - 1, cache.freeBlocks());
                float[][] p0 = cache.read(parent, 0, 6);
                float[][] c0 = cache.read(child, 0, 6);
                assertArrayEquals(p0[0], c0[0]);
                assertArrayEquals(p0[1], c0[1]);

                // both continue differently; each must equal a fresh sequence fed the same tokens
                float[] nextParent = random(rnd, 3 * d);
                float[] nextChild = random(rnd, 3 * d);
                float[] outParent;
                float[] outChild;
                try (Batch b = Batch.builder(cache).add(parent, 3).add(child, 3).build()) {
                    float[] in = Arrays.copyOf(nextParent, 6 * d);
                    System.arraycopy(nextChild, 0, in, 3 * d, 3 * d);
                    float[] out = layer.forward(b, in);
                    outParent = Arrays.copyOfRange(out, 0, 3 * d);
                    outChild = Arrays.copyOfRange(out, 3 * d, 6 * d);
                }
                assertArrayEquals(p0[0], cache.read(child, 0, 6)[0], "shared prefix untouched by the parent's writes");
                for (float[][] run : new float[][][]{{nextParent, outParent}, {nextChild, outChild}}) {
                    int r = reference.addSequence();
                    try (Batch b = Batch.builder(reference).add(r, 6).build()) {
                        layer.forward(b, prompt);
                    }
                    float[] expected;
                    try (Batch b = Batch.builder(reference).add(r, 3).build()) {
                        expected = layer.forward(b, run[0]);
                    }
                    assertTrue(TestSupport.relErr(run[1], expected) <= 1e-6, "forked continuation = fresh sequence");
                    reference.free(r);
                }

                cache.free(parent);
                assertEquals(1, cache.refCount(childBlocks[0]), "still held by the child");
                cache.free(child);
                assertEquals(16, cache.freeBlocks());
            }
        }
    }

    @Test
    void forkAtABlockBoundaryCopiesNothingAndFailsCleanlyWhenFull() {
        try (MlaContext ctx = MlaContext.cpu(1); LatentCache cache = LatentCache.create(ctx, DType.F32, 4, 2, 64, 16)) {
            int a = cache.addSequence();
            cache.reserve(a, 4);
            cache.advance(a, 4);
            int b = cache.fork(a);
            assertArrayEquals(cache.blocks(a), cache.blocks(b));
            assertEquals(1, cache.freeBlocks());
            cache.reserve(a, 2);
            cache.advance(a, 2);
            assertEquals(0, cache.freeBlocks());
            MlaException e = assertThrows(MlaException.class, () -> cache.fork(a));
            assertEquals(MlaException.Status.CACHE_FULL, e.status());
            assertEquals(2, cache.sequenceCount());
        }
    }

    @Test
    void staleBatchIsRejected() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(1)) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            try (MlaLayer layer = MlaLayer.create(ctx, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 4, 4)) {
                int id = cache.addSequence();
                try (Batch b = Batch.builder(cache).add(id, 1).build()) {
                    layer.forward(b, new float[cfg.hiddenSize()]);
                    assertThrows(IllegalStateException.class, () -> layer.forward(b, new float[cfg.hiddenSize()]));
                    assertEquals(1, cache.length(id));
                }
            }
        }
    }
}
