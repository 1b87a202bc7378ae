package dev.mla4j;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.mla4j.bindings.Mla;
import dev.mla4j.bindings.mla_config;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Objects;

/**
 * The attention configuration of an MLA model: the fields of HuggingFace's DeepseekV3Config that
 * the attention uses (mirrors {@code mla_config}).
 *
 * <p>{@link #fromJson} reads a {@code config.json} of DeepSeek-V2 / V2-Lite ({@code deepseek_v2}),
 * DeepSeek-V3 / R1 ({@code deepseek_v3}), V3.2 ({@code deepseek_v32}), Kimi K2 ({@code kimi_k2}) and
 * GLM-5 ({@code glm_moe_dsa}), with RoPE settings under {@code rope_scaling} (older files) or
 * {@code rope_parameters} (transformers 5), applying the defaults transformers applies to absent
 * fields. V3.2 and GLM-5 select keys with a sparse indexer (DSA) that this library does not run:
 * their attention here is the dense MLA, identical while a sequence has at most index_topk keys.
 *
 * @param ropeInterleave              RoPE pairs are (x0,x1),(x2,x3)… (DeepSeek); false: halves
 * @param originalMaxPositionEmbeddings YaRN; 0 = absent
 * @param ropeMscale                  YaRN; 0 = absent
 * @param ropeMscaleAllDim            YaRN; 0 = absent
 * @param ropeAttentionFactor         YaRN; 0 = absent (derived from the mscales)
 * @param softmaxScale                0 = derive as transformers does; see {@link #effectiveSoftmaxScale()}
 */
public record MlaConfig(
        int hiddenSize,
        int numHeads,
        int qLoraRank,
        int kvLoraRank,
        int qkNopeHeadDim,
        int qkRopeHeadDim,
        int vHeadDim,
        boolean ropeInterleave,
        RopeScaling ropeScaling,
        int maxPositionEmbeddings,
        int originalMaxPositionEmbeddings,
        double ropeTheta,
        double ropeFactor,
        double ropeBetaFast,
        double ropeBetaSlow,
        double ropeMscale,
        double ropeMscaleAllDim,
        double ropeAttentionFactor,
        boolean ropeTruncate,
        double rmsNormEps,
        double softmaxScale) {

    /** RoPE scaling kinds libmla implements. */
    public enum RopeScaling {
        NONE(0), YARN(1);

        private final int code;

        RopeScaling(int code) {
            this.code = code;
        }

        public int code() {
            return code;
        }
    }

    private static final ObjectMapper JSON = new ObjectMapper().enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION);

    /** Defaults of a model family's config class (those fields the attention uses). */
    private record Family(String modelType, int hidden, int heads, int qLora, int kvLora, int nope, int rope, int v,
                          int maxPos, double eps, boolean interleaveAlways) {
    }

    // transformers' DeepseekV2Config, DeepseekV3Config (also DeepseekV32Config and Kimi K2, which
    // ships DeepseekV3Config), GlmMoeDsaConfig. V2 and GLM-5 always rotate interleaved pairs.
    private static final Map<String, Family> FAMILIES = Map.of(
            "deepseek_v2", new Family("deepseek_v2", 4096, 32, 1536, 512, 128, 64, 128, 2048, 1e-6, true),
            "deepseek_v3", new Family("deepseek_v3", 7168, 128, 1536, 512, 128, 64, 128, 4096, 1e-6, false),
            "deepseek_v32", new Family("deepseek_v32", 7168, 128, 1536, 512, 128, 64, 128, 4096, 1e-6, false),
            "kimi_k2", new Family("kimi_k2", 7168, 128, 1536, 512, 128, 64, 128, 4096, 1e-6, false),
            "glm_moe_dsa", new Family("glm_moe_dsa", 6144, 64, 2048, 512, 192, 64, 256, 202752, 1e-5, true));

    /** The default RoPE base of transformers' configs. */
    private static final double DEFAULT_THETA = 10000.0;

    public MlaConfig {
        Objects.requireNonNull(ropeScaling, "ropeScaling");
    }

    /** DeepSeek-V3's attention configuration, as {@code mla_config_init} fills it. */
    public static MlaConfig deepseekV3() {
        NativeLibrary.load();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment c = mla_config.allocate(arena);
            Native.check(Mla.mla_config_init(c), "mla_config_init");
            return fromNative(c);
        }
    }

    /** Reads a HuggingFace config.json (see the class comment for the families understood). */
    public static MlaConfig fromJson(Path configJson) throws IOException {
        return fromJson(Files.readString(configJson));
    }

    /**
     * Parses the text of a HuggingFace config.json.
     *
     * @throws IllegalArgumentException not JSON, an unknown model_type, or a field of the wrong
     *                                  type or out of range (the message names the field and value)
     */
    public static MlaConfig fromJson(String json) {
        JsonNode root;
        try {
            root = JSON.readTree(json);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException("config.json is not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("config.json: expected a JSON object");
        }
        // multimodal wrappers (e.g. Kimi K2.5) keep the language model under text_config
        if (!root.has("kv_lora_rank") && root.has("text_config") && root.get("text_config").isObject()) {
            root = root.get("text_config");
        }
        String modelType = root.has("model_type") && root.get("model_type").isTextual()
                ? root.get("model_type").asText() : "deepseek_v3";
        Family f = FAMILIES.get(modelType);
        if (f == null) {
            if (root.has("kv_lora_rank")) {
                f = FAMILIES.get("deepseek_v3");
            } else {
                throw new IllegalArgumentException("config.json: model_type = '" + modelType
                        + "' is not an MLA model (expected one of " + new java.util.TreeSet<>(FAMILIES.keySet())
                        + ", or a config with kv_lora_rank)");
            }
        }

        int hidden = intField(root, "hidden_size", f.hidden, 1);
        int heads = intField(root, "num_attention_heads", f.heads, 1);
        int qLora;
        if (root.has("q_lora_rank") && root.get("q_lora_rank").isNull()) {
            qLora = 0;
        } else {
            qLora = intField(root, "q_lora_rank", f.qLora, 0);
        }
        int kvLora = intField(root, "kv_lora_rank", f.kvLora, 1);
        int nope = intField(root, "qk_nope_head_dim", f.nope, 0);
        int rope = intField(root, "qk_rope_head_dim", f.rope, 2);
        if (rope % 2 != 0) {
            throw new IllegalArgumentException("config.json: qk_rope_head_dim = " + rope + " must be even");
        }
        int v = intField(root, "v_head_dim", f.v, 1);
        int maxPos = intField(root, "max_position_embeddings", f.maxPos, 1);
        double eps = doubleField(root, "rms_norm_eps", f.eps);
        if (!(eps > 0) || Double.isInfinite(eps)) {
            throw new IllegalArgumentException("config.json: rms_norm_eps = " + eps + " must be > 0");
        }
        boolean interleave = true;
        if (!f.interleaveAlways && root.has("rope_interleave") && !root.get("rope_interleave").isNull()) {
            JsonNode n = root.get("rope_interleave");
            if (!n.isBoolean()) {
                throw new IllegalArgumentException("config.json: rope_interleave = " + n + " must be true or false");
            }
            interleave = n.asBoolean();
        }

        // RoPE: transformers 5 takes rope_scaling when present and non-null, else rope_parameters;
        // rope_theta comes from that dict, else the top-level field, else 10000.
        String ropeField = "rope_scaling";
        JsonNode rp = root.get("rope_scaling");
        if (rp == null || rp.isNull()) {
            ropeField = "rope_parameters";
            rp = root.get("rope_parameters");
        }
        if (rp != null && !rp.isNull()) {
            if (!rp.isObject()) {
                throw new IllegalArgumentException("config.json: " + ropeField + " = " + rp + " must be an object");
            }
            if (!rp.has("rope_type") && !rp.has("type") && !rp.has("rope_theta") && rp.size() == 1
                    && rp.elements().next().isObject()) {
                // per-layer-type form {"full_attention": {...}}: MLA models have one kind
                String key = rp.fieldNames().next();
                rp = rp.get(key);
                ropeField = ropeField + "." + key;
            }
        }
        double theta = doubleField(root, "rope_theta", DEFAULT_THETA);
        RopeScaling scaling = RopeScaling.NONE;
        double factor = 1.0;
        double betaFast = 32.0;
        double betaSlow = 1.0;
        double mscale = 0;
        double mscaleAllDim = 0;
        double attentionFactor = 0;
        int originalMax = 0;
        boolean truncate = true;
        if (rp != null && !rp.isNull()) {
            String p = ropeField + ".";
            if (rp.has("rope_theta")) {
                theta = doubleField(rp, "rope_theta", theta, p);
            }
            String type = "default";
            JsonNode t = rp.has("rope_type") ? rp.get("rope_type") : rp.get("type");
            String typeField = rp.has("rope_type") ? "rope_type" : "type";
            if (t != null && !t.isNull()) {
                if (!t.isTextual()) {
                    throw new IllegalArgumentException("config.json: " + p + typeField + " = " + t + " must be a string");
                }
                type = t.asText();
            }
            switch (type) {
                case "default" -> scaling = RopeScaling.NONE;
                case "yarn" -> {
                    scaling = RopeScaling.YARN;
                    if (!rp.has("factor")) {
                        throw new IllegalArgumentException("config.json: " + p + "factor is required for yarn");
                    }
                    factor = doubleField(rp, "factor", 1.0, p);
                    if (!(factor >= 1.0) || Double.isInfinite(factor)) {
                        throw new IllegalArgumentException("config.json: " + p + "factor = " + factor + " must be >= 1");
                    }
                    // transformers reads them as `get(...) or default`: 0 means the default
                    betaFast = positiveOrDefault(rp, "beta_fast", 32.0, p);
                    betaSlow = positiveOrDefault(rp, "beta_slow", 1.0, p);
                    mscale = nonNegative(rp, "mscale", 0, p);
                    mscaleAllDim = nonNegative(rp, "mscale_all_dim", 0, p);
                    attentionFactor = nonNegative(rp, "attention_factor", 0, p);
                    if (rp.has("original_max_position_embeddings") && !rp.get("original_max_position_embeddings").isNull()) {
                        originalMax = intField(rp, "original_max_position_embeddings", 0, 1, p);
                    }
                    if (rp.has("truncate") && !rp.get("truncate").isNull()) {
                        if (!rp.get("truncate").isBoolean()) {
                            throw new IllegalArgumentException("config.json: " + p + "truncate = " + rp.get("truncate")
                                    + " must be true or false");
                        }
                        truncate = rp.get("truncate").asBoolean();
                    }
                }
                default -> throw new IllegalArgumentException("config.json: " + p + typeField + " = '" + type
                        + "' is not supported (MLA layers support 'default' and 'yarn')");
            }
        }
        if (!(theta > 0) || Double.isInfinite(theta)) {
            throw new IllegalArgumentException("config.json: rope_theta = " + theta + " must be > 0");
        }
        return new MlaConfig(hidden, heads, qLora, kvLora, nope, rope, v, interleave, scaling, maxPos, originalMax,
                theta, factor, betaFast, betaSlow, mscale, mscaleAllDim, attentionFactor, truncate, eps, 0.0);
    }

    private static int intField(JsonNode node, String name, int dflt, int min) {
        return intField(node, name, dflt, min, "");
    }

    private static int intField(JsonNode node, String name, int dflt, int min, String prefix) {
        JsonNode n = node.get(name);
        if (n == null || n.isNull()) {
            return dflt;
        }
        boolean integral = n.isIntegralNumber() || (n.isFloatingPointNumber() && n.asDouble() == Math.rint(n.asDouble()));
        if (!integral || !n.canConvertToInt() || n.asDouble() > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("config.json: " + prefix + name + " = " + n + " must be an integer");
        }
        int value = n.asInt();
        if (value < min) {
            throw new IllegalArgumentException("config.json: " + prefix + name + " = " + value + " must be >= " + min);
        }
        return value;
    }

    private static double doubleField(JsonNode node, String name, double dflt) {
        return doubleField(node, name, dflt, "");
    }

    private static double doubleField(JsonNode node, String name, double dflt, String prefix) {
        JsonNode n = node.get(name);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isNumber()) {
            throw new IllegalArgumentException("config.json: " + prefix + name + " = " + n + " must be a number");
        }
        return n.asDouble();
    }

    private static double positiveOrDefault(JsonNode node, String name, double dflt, String prefix) {
        double v = doubleField(node, name, dflt, prefix);
        if (v == 0) {
            return dflt;
        }
        if (!(v > 0) || Double.isInfinite(v)) {
            throw new IllegalArgumentException("config.json: " + prefix + name + " = " + v + " must be > 0");
        }
        return v;
    }

    private static double nonNegative(JsonNode node, String name, double dflt, String prefix) {
        double v = doubleField(node, name, dflt, prefix);
        if (!(v >= 0) || Double.isInfinite(v)) {
            throw new IllegalArgumentException("config.json: " + prefix + name + " = " + v + " must be >= 0");
        }
        return v;
    }

    /** Queries use a low-rank compression (q_a_proj / q_b_proj) rather than q_proj. */
    public boolean hasQueryCompression() {
        return qLoraRank > 0;
    }

    /** Values per token in the latent cache: kv_lora_rank + qk_rope_head_dim. */
    public int latentEntryDim() {
        return kvLoraRank + qkRopeHeadDim;
    }

    /** Bytes per token of an MHA cache of the same model in bf16: H * ((dn + dr) + dv) * 2. */
    public long mhaCacheBytesPerToken() {
        return (long) numHeads * (qkNopeHeadDim + qkRopeHeadDim + vHeadDim) * 2;
    }

    /** A copy with another head count (e.g. a smaller model of the same shape). */
    public MlaConfig withNumHeads(int heads) {
        return new MlaConfig(hiddenSize, heads, qLoraRank, kvLoraRank, qkNopeHeadDim, qkRopeHeadDim, vHeadDim,
                ropeInterleave, ropeScaling, maxPositionEmbeddings, originalMaxPositionEmbeddings, ropeTheta,
                ropeFactor, ropeBetaFast, ropeBetaSlow, ropeMscale, ropeMscaleAllDim, ropeAttentionFactor,
                ropeTruncate, rmsNormEps, softmaxScale);
    }

    /** A copy with another hidden size. */
    public MlaConfig withHiddenSize(int hidden) {
        return new MlaConfig(hidden, numHeads, qLoraRank, kvLoraRank, qkNopeHeadDim, qkRopeHeadDim, vHeadDim,
                ropeInterleave, ropeScaling, maxPositionEmbeddings, originalMaxPositionEmbeddings, ropeTheta,
                ropeFactor, ropeBetaFast, ropeBetaSlow, ropeMscale, ropeMscaleAllDim, ropeAttentionFactor,
                ropeTruncate, rmsNormEps, softmaxScale);
    }

    /** Writes this config into a new native {@code mla_config} allocated from the arena. */
    public MemorySegment toNative(Arena arena) {
        NativeLibrary.load();
        MemorySegment c = mla_config.allocate(arena);
        Native.check(Mla.mla_config_init(c), "mla_config_init");
        mla_config.hidden_size(c, hiddenSize);
        mla_config.num_heads(c, numHeads);
        mla_config.q_lora_rank(c, qLoraRank);
        mla_config.kv_lora_rank(c, kvLoraRank);
        mla_config.qk_nope_head_dim(c, qkNopeHeadDim);
        mla_config.qk_rope_head_dim(c, qkRopeHeadDim);
        mla_config.v_head_dim(c, vHeadDim);
        mla_config.rope_interleave(c, ropeInterleave ? 1 : 0);
        mla_config.rope_scaling(c, ropeScaling.code());
        mla_config.max_position_embeddings(c, maxPositionEmbeddings);
        mla_config.original_max_position_embeddings(c, originalMaxPositionEmbeddings);
        mla_config.rope_theta(c, ropeTheta);
        mla_config.rope_factor(c, ropeFactor);
        mla_config.rope_beta_fast(c, ropeBetaFast);
        mla_config.rope_beta_slow(c, ropeBetaSlow);
        mla_config.rope_mscale(c, ropeMscale);
        mla_config.rope_mscale_all_dim(c, ropeMscaleAllDim);
        mla_config.rope_attention_factor(c, ropeAttentionFactor);
        mla_config.rope_truncate(c, ropeTruncate ? 1 : 0);
        mla_config.reserved0(c, 0);
        mla_config.rms_norm_eps(c, rmsNormEps);
        mla_config.softmax_scale(c, softmaxScale);
        return c;
    }

    /** Reads a native {@code mla_config}. */
    static MlaConfig fromNative(MemorySegment c) {
        int scaling = mla_config.rope_scaling(c);
        return new MlaConfig(mla_config.hidden_size(c), mla_config.num_heads(c), mla_config.q_lora_rank(c),
                mla_config.kv_lora_rank(c), mla_config.qk_nope_head_dim(c), mla_config.qk_rope_head_dim(c),
                mla_config.v_head_dim(c), mla_config.rope_interleave(c) != 0,
                scaling == RopeScaling.YARN.code() ? RopeScaling.YARN : RopeScaling.NONE,
                mla_config.max_position_embeddings(c), mla_config.original_max_position_embeddings(c),
                mla_config.rope_theta(c), mla_config.rope_factor(c), mla_config.rope_beta_fast(c),
                mla_config.rope_beta_slow(c), mla_config.rope_mscale(c), mla_config.rope_mscale_all_dim(c),
                mla_config.rope_attention_factor(c), mla_config.rope_truncate(c) != 0, mla_config.rms_norm_eps(c),
                mla_config.softmax_scale(c));
    }

    /**
     * Checks every field with libmla's rules.
     *
     * @throws MlaException INVALID_ARGUMENT naming the first bad field and its value
     */
    public void validate() {
        try (Arena arena = Arena.ofConfined()) {
            Native.check(Mla.mla_config_validate(toNative(arena)), "mla_config_validate");
        }
    }

    /** The softmax scale the attention applies: softmaxScale if non-zero, else derived as transformers does. */
    public double effectiveSoftmaxScale() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ValueLayout.JAVA_DOUBLE);
            Native.check(Mla.mla_config_softmax_scale(toNative(arena), out), "mla_config_softmax_scale");
            return out.get(ValueLayout.JAVA_DOUBLE, 0);
        }
    }

    /**
     * The RoPE tables transformers uses for these positions, {cos, sin}, each [positions.length,
     * qk_rope_head_dim] row-major, half-split layout, attention factor included.
     */
    public float[][] ropeTables(int[] positions) {
        Objects.requireNonNull(positions, "positions");
        try (Arena arena = Arena.ofConfined()) {
            long n = (long) positions.length * qkRopeHeadDim;
            MemorySegment cos = arena.allocate(ValueLayout.JAVA_FLOAT, Math.max(1, n));
            MemorySegment sin = arena.allocate(ValueLayout.JAVA_FLOAT, Math.max(1, n));
            MemorySegment pos = arena.allocateFrom(ValueLayout.JAVA_INT, positions);
            Native.check(Mla.mla_config_rope_tables(toNative(arena), pos, positions.length, cos, sin),
                    "mla_config_rope_tables");
            return new float[][]{cos.asSlice(0, n * 4).toArray(ValueLayout.JAVA_FLOAT),
                    sin.asSlice(0, n * 4).toArray(ValueLayout.JAVA_FLOAT)};
        }
    }
}
