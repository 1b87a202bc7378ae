package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The kernel level: compress into the paged cache, then plan/run the absorbed attention. */
class AttentionTest {
    /** Reference: softmax over the causal keys of each query, out = sum p * latent, lse natural. */
    private static void reference(float[] q, float[] lat, float[] rope, int cacheLen, int n, int h, int dc, int dr,
                                  double scale, float[] out, float[] lse) {
        for (int j = 0; j < n; j++) {
            int keys = cacheLen + j + 1;
            for (int head = 0; head < h; head++) {
                int qo = (j * h + head) * (dc + dr);
                double[] s = new double[keys];
                double max = Double.NEGATIVE_INFINITY;
                for (int k = 0; k < keys; k++) {
                    double dot = 0;
                    for (int c = 0; c < dc; c++) {
                        dot += (double) q[qo + c] * lat[k * dc + c];
                    }
                    for (int c = 0; c < dr; c++) {
                        dot += (double) q[qo + dc + c] * rope[k * dr + c];
                    }
                    s[k] = dot * scale;
                    max = Math.max(max, s[k]);
                }
                double sum = 0;
                for (int k = 0; k < keys; k++) {
                    sum += Math.exp(s[k] - max);
                }
                for (int c = 0; c < dc; c++) {
                    double o = 0;
                    for (int k = 0; k < keys; k++) {
                        o += Math.exp(s[k] - max) / sum * lat[k * dc + c];
                    }
                    out[(j * h + head) * dc + c] = (float) o;
                }
                lse[j * h + head] = (float) (max + Math.log(sum));
            }
        }
    }

    @Test
    void compressThenPlanRunMatchReferences() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(); Arena arena = Arena.ofConfined()) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            int d = cfg.hiddenSize();
            int dc = cfg.kvLoraRank();
            int dr = cfg.qkRopeHeadDim();
            int h = cfg.numHeads();
            int t = 70;
            float[] hidden = st.tensor("seq2.hidden").toFloatArray();
            float[] wkva = st.tensor("weights.kv_a_proj_with_mqa.weight").toFloatArray();
            float[] kvA = new float[t * (dc + dr)];
            for (int i = 0; i < t; i++) {
                for (int r = 0; r < dc + dr; r++) {
                    double s = 0;
                    for (int c = 0; c < d; c++) {
                        s += (double) hidden[i * d + c] * wkva[r * d + c];
                    }
                    kvA[i * (dc + dr) + r] = (float) s;
                }
            }
            MemorySegment norm = arena.allocateFrom(ValueLayout.JAVA_FLOAT,
                    st.tensor("weights.kv_a_layernorm.weight").toFloatArray());
            float scale = (float) cfg.effectiveSoftmaxScale();
            Random rnd = new Random(3);
            int prefill = 64;
            try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 5);
                 Attention attn = Attention.create(ctx, 4, prefill, h, dc, dr)) {
                assertTrue(attn.workspaceBytes() > 0 || attn.metadataBytes() > 0);
                int id = cache.addSequence();
                int done = 0;
                for (int n : new int[]{prefill, 1, 1, 4}) {
                    try (Batch batch = Batch.builder(cache).add(id, n).build()) {
                        MemorySegment kv = arena.allocateFrom(ValueLayout.JAVA_FLOAT,
                                java.util.Arrays.copyOfRange(kvA, done * (dc + dr), (done + n) * (dc + dr)));
                        Attention.compress(ctx, cfg, batch, kv, DType.F32, dc + dr, norm, DType.F32);
                        float[] q = new float[n * h * (dc + dr)];
                        for (int i = 0; i < q.length; i++) {
                            q[i] = (float) rnd.nextGaussian();
                        }
                        MemorySegment qs = arena.allocateFrom(ValueLayout.JAVA_FLOAT, q);
                        MemorySegment out = arena.allocate(ValueLayout.JAVA_FLOAT, (long) n * h * dc);
                        MemorySegment lse = arena.allocate(ValueLayout.JAVA_FLOAT, (long) n * h);
                        long plans = attn.plans();
                        attn.run(batch, qs, DType.F32, out, DType.F32, lse, scale, true);
                        attn.run(batch, qs, DType.F32, out, DType.F32, lse, scale, true); // a second layer
                        assertEquals(plans + 1, attn.plans(), "planned once per batch");
                        cache.commit(batch);

                        float[][] stored = cache.read(id, 0, done + n);
                        float[] refOut = new float[n * h * dc];
                        float[] refLse = new float[n * h];
                        reference(q, stored[0], stored[1], done, n, h, dc, dr, scale, refOut, refLse);
                        assertTrue(TestSupport.relErr(out.toArray(ValueLayout.JAVA_FLOAT), refOut) <= 1e-5, "out, n=" + n);
                        assertTrue(TestSupport.relErr(lse.toArray(ValueLayout.JAVA_FLOAT), refLse) <= 1e-5, "lse, n=" + n);
                        done += n;
                    }
                }
                // what compress wrote equals transformers' normalized latent and rotated key
                float[][] stored = cache.read(id, 0, t);
                assertTrue(TestSupport.relErr(stored[0], st.tensor("seq2.latent").toFloatArray()) <= 1e-4, "latent");
                assertTrue(TestSupport.relErr(stored[1], st.tensor("seq2.k_rope").toFloatArray()) <= 1e-4, "k_rope");

                try (Batch batch = Batch.builder(cache).add(id, 1).build()) {
                    MemorySegment small = arena.allocate(4);
                    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                            () -> attn.run(batch, small, DType.F32, small, DType.F32, null, scale, true));
                    assertTrue(e.getMessage().startsWith("q has 4 bytes"), e.getMessage());
                }
            }
        }
    }
    @Test
    void compressRejectsAStrideWhoseSizeOverflows() throws IOException {
        try (Safetensors st = LifecycleTest.tiny(); MlaContext ctx = MlaContext.cpu(1); Arena arena = Arena.ofConfined()) {
            MlaConfig cfg = LifecycleTest.tinyConfig(st);
            int entry = cfg.kvLoraRank() + cfg.qkRopeHeadDim();
            try (LatentCache cache = LatentCache.create(ctx, cfg, DType.F32, 16, 2)) {
                int id = cache.addSequence();
                try (Batch batch = Batch.builder(cache).add(id, 2).build()) {
                    MemorySegment kv = arena.allocate(ValueLayout.JAVA_FLOAT, 2L * entry);
                    MemorySegment norm = arena.allocate(ValueLayout.JAVA_FLOAT, cfg.kvLoraRank());
                    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                            () -> Attention.compress(ctx, cfg, batch, kv, DType.F32, 1L << 62, norm, DType.F32));
                    assertTrue(e.getMessage().contains("kvAStride"), e.getMessage());
                }
            }
        }
    }
}
