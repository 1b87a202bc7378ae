package dev.mla4j;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The demo job on a real (small) checkpoint: the golden file's weights under the prefix "weights.". */
class MainTest {
    @TempDir
    Path dir;

    @Test
    void checkpointModeRunsAndAbsorbedMatchesNaive() throws Exception {
        Path golden = TestSupport.testdata().resolve("golden/v3_yarn_h8.safetensors");
        String config;
        try (Safetensors st = Safetensors.open(golden)) {
            config = st.metadata().get("config");
        }
        Path configJson = dir.resolve("config.json");
        Files.writeString(configJson, config);
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        Main.run(Map.of("config", configJson.toString(), "weights", golden.toString(), "prefix", "weights.",
                "batch", "2", "prompt", "9", "steps", "3", "cache", "f32"), new PrintStream(bytes, true, StandardCharsets.UTF_8));
        String out = bytes.toString(StandardCharsets.UTF_8);
        assertTrue(out.contains("prefill: 2 sequences x 9 tokens"), out);
        assertTrue(out.contains("decode: 3 steps x 2 sequences"), out);
        assertTrue(out.contains("latent 2304 B (F32, 576 values) vs MHA 5120 B"), out);
        Matcher m = Pattern.compile("relative ([0-9.eE+-]+)").matcher(out);
        assertTrue(m.find(), out);
        double rel = Double.parseDouble(m.group(1));
        assertTrue(rel < 1e-4, "absorbed vs naive relative difference " + rel);
    }

    @Test
    void badOptionsAreReported() {
        PrintStream sink = new PrintStream(new ByteArrayOutputStream(), true, StandardCharsets.UTF_8);
        assertThrows(IllegalArgumentException.class, () -> Main.run(Map.of("steps", "zero"), sink));
        assertThrows(IllegalArgumentException.class, () -> Main.run(Map.of("config", "x.json"), sink));
        assertThrows(IllegalArgumentException.class, () -> Main.run(Map.of("cache", "fp8"), sink));
        assertThrows(IllegalArgumentException.class, () -> Main.run(Map.of("bogus", "1"), sink));
    }
}
