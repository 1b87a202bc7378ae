package dev.mla4j;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class MlaConfigTest {
    private static MlaConfig sample(String name) throws IOException {
        try (InputStream in = MlaConfigTest.class.getResourceAsStream("/configs/" + name)) {
            return MlaConfig.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8));
        }
    }

    /** (dn + dr)^-0.5 * (0.1 * mscale_all_dim * ln(factor) + 1)^2, transformers' DeepseekV3Attention scaling. */
    private static double yarnScale(int dn, int dr, double factor, double mscaleAllDim) {
        double m = factor <= 1 ? 1 : 0.1 * mscaleAllDim * Math.log(factor) + 1;
        return Math.pow(dn + dr, -0.5) * m * m;
    }

    private static void assertBad(String json, String... parts) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> MlaConfig.fromJson(json));
        for (String p : parts) {
            assertTrue(e.getMessage().contains(p), () -> "'" + e.getMessage() + "' lacks '" + p + "'");
        }
    }

    @Test
    void deepseekV3() throws IOException {
        MlaConfig c = sample("deepseek_v3.json");
        assertEquals(7168, c.hiddenSize());
        assertEquals(128, c.numHeads());
        assertEquals(1536, c.qLoraRank());
        assertEquals(512, c.kvLoraRank());
        assertEquals(128, c.qkNopeHeadDim());
        assertEquals(64, c.qkRopeHeadDim());
        assertEquals(128, c.vHeadDim());
        assertTrue(c.ropeInterleave());
        assertEquals(MlaConfig.RopeScaling.YARN, c.ropeScaling());
        assertEquals(40.0, c.ropeFactor());
        assertEquals(4096, c.originalMaxPositionEmbeddings());
        assertEquals(163840, c.maxPositionEmbeddings());
        assertEquals(1.0, c.ropeMscaleAllDim());
        assertEquals(1e-6, c.rmsNormEps());
        c.validate();
        assertEquals(yarnScale(128, 64, 40, 1.0), c.effectiveSoftmaxScale(), 1e-12);
        // the native default is DeepSeek-V3's attention, with the same derived scale
        assertEquals(c.effectiveSoftmaxScale(), MlaConfig.deepseekV3().effectiveSoftmaxScale(), 1e-12);
        assertEquals(c.kvLoraRank(), MlaConfig.deepseekV3().kvLoraRank());
        assertEquals(1152, c.latentEntryDim() * 2);
        assertEquals(128L * (192 + 128) * 2, c.mhaCacheBytesPerToken());
    }

    @Test
    void transformers5RopeParametersEqualOlderRopeScaling() throws IOException {
        assertEquals(sample("deepseek_v3.json"), sample("deepseek_v3_tf5.json"));
    }

    @Test
    void deepseekV2LiteHasNoQueryCompression() throws IOException {
        MlaConfig c = sample("deepseek_v2_lite.json");
        assertEquals(0, c.qLoraRank());
        assertFalse(c.hasQueryCompression());
        assertEquals(2048, c.hiddenSize());
        assertEquals(16, c.numHeads());
        assertEquals(0.707, c.ropeMscale());
        assertEquals(0.707, c.ropeMscaleAllDim());
        assertTrue(c.ropeInterleave());
        c.validate();
        assertEquals(yarnScale(128, 64, 40, 0.707), c.effectiveSoftmaxScale(), 1e-12);
    }

    @Test
    void deepseekV2() throws IOException {
        MlaConfig c = sample("deepseek_v2.json");
        assertEquals(5120, c.hiddenSize());
        assertEquals(128, c.numHeads());
        assertEquals(1536, c.qLoraRank());
        c.validate();
    }

    @Test
    void deepseekV32AndKimiK2() throws IOException {
        MlaConfig v32 = sample("deepseek_v32.json");
        assertEquals(sample("deepseek_v3.json"), v32);
        MlaConfig k2 = sample("kimi_k2.json");
        assertEquals(64, k2.numHeads());
        assertEquals(50000.0, k2.ropeTheta());
        assertEquals(32.0, k2.ropeFactor());
        assertEquals(1.0, k2.ropeBetaFast());
        assertEquals(131072, k2.maxPositionEmbeddings());
        k2.validate();
    }

    @Test
    void glm5() throws IOException {
        MlaConfig c = sample("glm5.json");
        assertEquals(6144, c.hiddenSize());
        assertEquals(64, c.numHeads());
        assertEquals(2048, c.qLoraRank());
        assertEquals(192, c.qkNopeHeadDim());
        assertEquals(256, c.vHeadDim());
        assertEquals(MlaConfig.RopeScaling.NONE, c.ropeScaling());
        assertEquals(1_000_000.0, c.ropeTheta());
        assertEquals(1e-5, c.rmsNormEps());
        assertTrue(c.ropeInterleave());
        c.validate();
        assertEquals(Math.pow(192 + 64, -0.5), c.effectiveSoftmaxScale(), 1e-12);
    }

    @Test
    void defaultsOfEachFamily() {
        MlaConfig v3 = MlaConfig.fromJson("{\"model_type\": \"deepseek_v3\"}");
        assertEquals(7168, v3.hiddenSize());
        assertEquals(128, v3.numHeads());
        assertEquals(1536, v3.qLoraRank());
        assertEquals(4096, v3.maxPositionEmbeddings());
        assertEquals(10000.0, v3.ropeTheta());
        assertEquals(MlaConfig.RopeScaling.NONE, v3.ropeScaling());
        assertTrue(v3.ropeInterleave());
        assertEquals(1e-6, v3.rmsNormEps());

        MlaConfig v2 = MlaConfig.fromJson("{\"model_type\": \"deepseek_v2\"}");
        assertEquals(4096, v2.hiddenSize());
        assertEquals(32, v2.numHeads());
        assertEquals(2048, v2.maxPositionEmbeddings());

        MlaConfig glm = MlaConfig.fromJson("{\"model_type\": \"glm_moe_dsa\"}");
        assertEquals(6144, glm.hiddenSize());
        assertEquals(192, glm.qkNopeHeadDim());
        assertEquals(256, glm.vHeadDim());
        assertEquals(202752, glm.maxPositionEmbeddings());

        MlaConfig yarn = MlaConfig.fromJson("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}");
        assertEquals(32.0, yarn.ropeBetaFast());
        assertEquals(1.0, yarn.ropeBetaSlow());
        assertEquals(0.0, yarn.ropeMscale());
        assertEquals(0, yarn.originalMaxPositionEmbeddings());
        assertTrue(yarn.ropeTruncate());

        MlaConfig halves = MlaConfig.fromJson("{\"rope_interleave\": false}");
        assertFalse(halves.ropeInterleave());
        // rope_theta inside rope_parameters wins over the top-level field
        assertEquals(5.0, MlaConfig.fromJson("{\"rope_theta\": 7, \"rope_parameters\": {\"rope_type\": \"default\", "
                + "\"rope_theta\": 5}}").ropeTheta());
        // per-layer-type rope_parameters
        assertEquals(MlaConfig.RopeScaling.YARN, MlaConfig.fromJson("{\"rope_parameters\": {\"full_attention\": "
                + "{\"rope_type\": \"yarn\", \"factor\": 2, \"rope_theta\": 10000}}}").ropeScaling());
    }

    @Test
    void badFieldsAreNamed() {
        assertBad("{\"hidden_size\": \"big\"}", "hidden_size", "integer");
        assertBad("{\"num_attention_heads\": 0}", "num_attention_heads = 0");
        assertBad("{\"qk_rope_head_dim\": 63}", "qk_rope_head_dim = 63", "even");
        assertBad("{\"kv_lora_rank\": 1.5}", "kv_lora_rank");
        assertBad("{\"rms_norm_eps\": -1}", "rms_norm_eps");
        assertBad("{\"rope_interleave\": \"yes\"}", "rope_interleave");
        assertBad("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}", "rope_scaling.type = 'linear'");
        assertBad("{\"rope_parameters\": {\"rope_type\": \"yarn\"}}", "rope_parameters.factor");
        assertBad("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 0.5}}", "rope_scaling.factor = 0.5");
        assertBad("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": -1}}", "rope_scaling.beta_fast");
        assertBad("{\"rope_scaling\": 3}", "rope_scaling");
        assertBad("{\"model_type\": \"llama\"}", "model_type = 'llama'");
        assertBad("{\"hidden_size\": 8", "not valid JSON");
        assertBad("{\"hidden_size\": 8, \"hidden_size\": 9}", "not valid JSON");
    }

    @Test
    void zeroBetasMeanTheDefaultsAsInTransformers() {
        // _compute_yarn_parameters: beta_fast = get("beta_fast") or 32, beta_slow = get("beta_slow") or 1
        MlaConfig c = MlaConfig.fromJson("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": 0, "
                + "\"beta_slow\": 0}}");
        assertEquals(32.0, c.ropeBetaFast());
        assertEquals(1.0, c.ropeBetaSlow());
        MlaConfig d = MlaConfig.fromJson("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}");
        assertArrayEquals(d.ropeTables(new int[]{5, 1000})[0], c.ropeTables(new int[]{5, 1000})[0]);
    }

    @Test
    void nativeValidationNamesTheField() {
        MlaConfig bad = MlaConfig.fromJson("{}").withNumHeads(-3);
        MlaException e = assertThrows(MlaException.class, bad::validate);
        assertEquals(MlaException.Status.INVALID_ARGUMENT, e.status());
        assertEquals("mla_config_validate", e.function());
        assertTrue(e.nativeMessage().contains("num_heads"), e.nativeMessage());
        assertTrue(e.getMessage().contains("-3"), e.getMessage());
    }
}
