package dev.mla4j;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import static dev.mla4j.TestSupport.relErr;
import static dev.mla4j.TestSupport.slice;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every golden file (transformers' DeepseekV3Attention in float64) and sequence through the Java
 * API: prefill P then decode one by one, one prefill of all T, and token by token; f32 and bf16
 * caches. Also checks the cache contents (latent, rotated key), the RoPE tables and the softmax
 * scale against the file, and a ragged batch of all sequences at once.
 */
class GoldenTest {
    /** The context every case runs in; {@link CudaGoldenTest} replaces it with a CUDA one. */
    static MlaContext context;

    enum Mode { PREFILL_THEN_DECODE, ONE_PREFILL, TOKEN_BY_TOKEN }

    record Seq(int index, int tokens, int prefill) {
    }

    @BeforeAll
    static void open() {
        context = MlaContext.cpu();
    }

    @AfterAll
    static void close() {
        if (context != null) {
            context.close();
            context = null;
        }
    }

    /** max|err| / max|ref| bound of a layer output or cache entry against transformers' values. */
    double tolerance(DType cacheType) {
        return cacheType == DType.F32 ? TestSupport.TOL_F32 : TestSupport.TOL_BF16;
    }

    static MlaConfig config(Safetensors st) {
        return MlaConfig.fromJson(st.metadata().get("config"));
    }

    static List<Seq> sequences(Safetensors st) throws IOException {
        JsonNode arr = new ObjectMapper().readTree(st.metadata().get("sequences"));
        List<Seq> out = new ArrayList<>();
        for (JsonNode n : arr) {
            out.add(new Seq(n.get("index").asInt(), n.get("tokens").asInt(), n.get("prefill_tokens").asInt()));
        }
        return out;
    }

    static Stream<Arguments> cases() throws IOException {
        List<Arguments> out = new ArrayList<>();
        for (Path f : TestSupport.goldenFiles()) {
            List<Seq> seqs;
            try (Safetensors st = Safetensors.open(f)) {
                seqs = sequences(st);
            }
            for (Seq s : seqs) {
                for (Mode m : Mode.values()) {
                    for (DType d : new DType[]{DType.F32, DType.BF16}) {
                        out.add(Arguments.of(f.getFileName().toString(), s.index, m, d));
                    }
                }
            }
        }
        if (out.isEmpty()) {
            throw new IllegalStateException("no golden files found");
        }
        return out.stream();
    }

    static Stream<Arguments> files() throws IOException {
        return TestSupport.goldenFiles().stream().map(f -> Arguments.of(f.getFileName().toString()));
    }

    private static Path golden(String name) {
        return TestSupport.testdata().resolve("golden").resolve(name);
    }

    @ParameterizedTest(name = "{0} seq{1} {2} cache={3}")
    @MethodSource("cases")
    void sequenceMatchesTransformers(String file, int index, Mode mode, DType cacheType) throws IOException {
        try (Safetensors st = Safetensors.open(golden(file))) {
            MlaConfig cfg = config(st);
            Seq seq = sequences(st).stream().filter(s -> s.index == index).findFirst().orElseThrow();
            float[] hidden = st.tensor("seq" + index + ".hidden").toFloatArray();
            float[] expected = st.tensor("seq" + index + ".output").toFloatArray();
            int d = cfg.hiddenSize();
            int t = seq.tokens;
            int blockSize = 16;
            try (MlaLayer layer = MlaLayer.create(context, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(context, cfg, cacheType, blockSize, (t + blockSize - 1) / blockSize)) {
                int id = cache.addSequence();
                float[] actual = new float[t * d];
                int done = 0;
                List<Integer> chunks = new ArrayList<>();
                switch (mode) {
                    case PREFILL_THEN_DECODE -> {
                        chunks.add(seq.prefill);
                        for (int i = seq.prefill; i < t; i++) {
                            chunks.add(1);
                        }
                    }
                    case ONE_PREFILL -> chunks.add(t);
                    case TOKEN_BY_TOKEN -> {
                        for (int i = 0; i < t; i++) {
                            chunks.add(1);
                        }
                    }
                }
                for (int n : chunks) {
                    try (Batch batch = Batch.builder(cache).add(id, n).build()) {
                        float[] out = layer.forward(batch, slice(hidden, done * d, (done + n) * d));
                        System.arraycopy(out, 0, actual, done * d, n * d);
                    }
                    done += n;
                }
                assertEquals(t, cache.length(id));
                double tol = tolerance(cacheType);
                double err = relErr(actual, expected);
                assertTrue(err <= tol, () -> file + " seq" + index + " " + mode + " " + cacheType + ": max|err|/max|ref| = "
                        + err + " > " + tol);

                // what the cache holds: the normalized latent and the rotated key (half-split layout)
                float[][] stored = cache.read(id, 0, t);
                double latErr = relErr(stored[0], st.tensor("seq" + index + ".latent").toFloatArray());
                double ropeErr = relErr(stored[1], st.tensor("seq" + index + ".k_rope").toFloatArray());
                double cacheTol = tolerance(cacheType);
                assertTrue(latErr <= cacheTol, "latent in cache: " + latErr);
                assertTrue(ropeErr <= cacheTol, "k_rope in cache: " + ropeErr);
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("files")
    void ropeTablesAndScaleMatch(String file) throws IOException {
        try (Safetensors st = Safetensors.open(golden(file))) {
            MlaConfig cfg = config(st);
            double scale = Double.parseDouble(st.metadata().get("softmax_scale"));
            assertEquals(scale, cfg.effectiveSoftmaxScale(), 1e-6 * scale, "softmax scale");
            for (Seq s : sequences(st)) {
                long[] pos = st.tensor("seq" + s.index + ".positions").toLongArray();
                int[] p = new int[pos.length];
                for (int i = 0; i < p.length; i++) {
                    p[i] = (int) pos[i];
                }
                float[][] tables = cfg.ropeTables(p);
                assertTrue(relErr(tables[0], st.tensor("seq" + s.index + ".rope_cos").toFloatArray()) <= 1e-5, "cos");
                assertTrue(relErr(tables[1], st.tensor("seq" + s.index + ".rope_sin").toFloatArray()) <= 1e-5, "sin");
            }
        }
    }

    /** Tensor parallelism: layers over disjoint head ranges sum to the full layer's output. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("files")
    void headSlicesSumToTheFullLayer(String file) throws IOException {
        try (Safetensors st = Safetensors.open(golden(file))) {
            MlaConfig cfg = config(st);
            Seq seq = sequences(st).get(sequences(st).size() - 1);
            float[] hidden = st.tensor("seq" + seq.index + ".hidden").toFloatArray();
            float[] expected = st.tensor("seq" + seq.index + ".output").toFloatArray();
            int split = cfg.numHeads() / 2;
            int blocks = (seq.tokens + 15) / 16;
            float[] sum = new float[expected.length];
            for (int[] range : new int[][]{{0, split}, {split, cfg.numHeads()}}) {
                try (MlaLayer layer = MlaLayer.create(context, cfg, st, "weights.", range[0], range[1]);
                     LatentCache cache = LatentCache.create(context, cfg, DType.F32, 16, blocks)) {
                    assertEquals(range[0], layer.headBegin());
                    int id = cache.addSequence();
                    try (Batch batch = Batch.builder(cache).add(id, seq.tokens).build()) {
                        float[] part = layer.forward(batch, hidden);
                        double partErr = relErr(part, expected);
                        assertTrue(partErr > 1e-2, "one slice alone is not the full output: " + partErr);
                        for (int i = 0; i < sum.length; i++) {
                            sum[i] += part[i];
                        }
                    }
                }
            }
            double err = relErr(sum, expected);
            assertTrue(err <= tolerance(DType.F32), () -> file + ": sum of head slices " + err);
        }
    }

    /** All sequences of a file in one ragged batch: prefill chunks together, then decode together. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("files")
    void raggedBatchOfAllSequences(String file) throws IOException {
        try (Safetensors st = Safetensors.open(golden(file))) {
            MlaConfig cfg = config(st);
            List<Seq> seqs = sequences(st);
            int d = cfg.hiddenSize();
            int blockSize = 16;
            int blocks = 0;
            for (Seq s : seqs) {
                blocks += (s.tokens + blockSize - 1) / blockSize;
            }
            try (MlaLayer layer = MlaLayer.create(context, cfg, st, "weights.");
                 LatentCache cache = LatentCache.create(context, cfg, DType.F32, blockSize, blocks)) {
                int n = seqs.size();
                int[] ids = new int[n];
                float[][] hidden = new float[n][];
                float[][] actual = new float[n][];
                for (int i = 0; i < n; i++) {
                    ids[i] = cache.addSequence();
                    hidden[i] = st.tensor("seq" + seqs.get(i).index + ".hidden").toFloatArray();
                    actual[i] = new float[seqs.get(i).tokens * d];
                }
                int[] done = new int[n];
                boolean first = true;
                while (true) {
                    Batch.Builder b = Batch.builder(cache);
                    List<float[]> rows = new ArrayList<>();
                    int[] take = new int[n];
                    for (int i = 0; i < n; i++) {
                        Seq s = seqs.get(i);
                        take[i] = first ? s.prefill : Math.min(1, s.tokens - done[i]);
                        if (take[i] > 0) {
                            b.add(ids[i], take[i]);
                            rows.add(slice(hidden[i], done[i] * d, (done[i] + take[i]) * d));
                        }
                    }
                    first = false;
                    if (rows.isEmpty()) {
                        break;
                    }
                    int total = rows.stream().mapToInt(r -> r.length).sum();
                    float[] in = new float[total];
                    int off = 0;
                    for (float[] r : rows) {
                        System.arraycopy(r, 0, in, off, r.length);
                        off += r.length;
                    }
                    float[] out;
                    try (Batch batch = b.build()) {
                        out = layer.forward(batch, in);
                    }
                    off = 0;
                    for (int i = 0; i < n; i++) {
                        if (take[i] > 0) {
                            System.arraycopy(out, off, actual[i], done[i] * d, take[i] * d);
                            off += take[i] * d;
                            done[i] += take[i];
                        }
                    }
                }
                for (int i = 0; i < n; i++) {
                    float[] expected = st.tensor("seq" + seqs.get(i).index + ".output").toFloatArray();
                    double err = relErr(actual[i], expected);
                    int idx = i;
                    assertTrue(err <= tolerance(DType.F32), () -> file + " seq" + seqs.get(idx).index + " in a batch: " + err);
                }
            }
        }
    }
}
