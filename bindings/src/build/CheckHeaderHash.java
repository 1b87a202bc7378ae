import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;

/**
 * Build check, run by the bindings module in the validate phase (java source launcher):
 * compares the sha256 of the header recorded in mla.h.sha256 (sha256sum format, path relative
 * to the repository root) with the header's current hash, and fails with the command to run when
 * they differ.
 *
 * Usage: java CheckHeaderHash.java <repository root> <path of mla.h.sha256>
 */
public final class CheckHeaderHash {
    public static void main(String[] args) throws IOException, NoSuchAlgorithmException {
        if (args.length != 2) {
            fail("usage: java CheckHeaderHash.java <repository root> <mla.h.sha256>");
        }
        Path root = Path.of(args[0]);
        Path record = Path.of(args[1]);
        if (!Files.isRegularFile(record)) {
            fail(record + " is missing; run scripts/regen-bindings.sh");
        }
        String line = Files.readString(record, StandardCharsets.UTF_8).strip();
        String[] parts = line.split("\\s+", 2);
        if (parts.length != 2 || !parts[0].matches("[0-9a-f]{64}")) {
            fail(record + ": expected '<sha256>  native/include/mla.h', found '" + line + "'");
        }
        String relative = parts[1].startsWith("*") ? parts[1].substring(1) : parts[1];
        Path header = root.resolve(relative);
        if (!Files.isRegularFile(header)) {
            fail(record + " names " + header + ", which does not exist");
        }
        byte[] digest = MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(header));
        String actual = HexFormat.of().formatHex(digest);
        if (!actual.equals(parts[0])) {
            fail(relative + " changed since the bindings were generated (sha256 " + actual
                    + ", bindings made from " + parts[0] + ").\n"
                    + "  Regenerate them with scripts/regen-bindings.sh (needs jextract on PATH) and "
                    + "commit bindings/ together with the header.");
        }
        System.out.println("bindings match " + relative + " (sha256 " + actual + ")");
    }

    private static void fail(String message) {
        System.err.println("[mla4j] ERROR: " + message);
        System.exit(1);
    }
}
