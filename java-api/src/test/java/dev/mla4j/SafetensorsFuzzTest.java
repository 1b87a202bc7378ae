package dev.mla4j;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

import static dev.mla4j.TestSupport.Entry;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Safetensors files are untrusted: random mutations of a valid file must either open (and then
 * read back without error) or fail with {@link SafetensorsException} or
 * {@link IllegalArgumentException}; nothing else (index errors, NPE, arithmetic, other I/O
 * exceptions, errors) may escape. Seeded, so a failure reproduces.
 */
class SafetensorsFuzzTest {
    private static final int ROUNDS = 3000;

    @TempDir
    Path dir;

    private static byte[] validBytes(Path tmp) throws IOException {
        Map<String, Entry> t = new LinkedHashMap<>();
        t.put("a", Entry.f32(new long[]{2, 3}, new float[]{1, 2, 3, 4, 5, 6}));
        t.put("b", Entry.bf16(new long[]{4}, new float[]{0.5f, -1.25f, 3f, 1024f}));
        t.put("c", new Entry("F8_E4M3", new long[]{1, 3}, new byte[]{1, 2, 3}));
        t.put("empty", new Entry("F32", new long[]{0, 5}, new byte[0]));
        Path f = tmp.resolve("seed.safetensors");
        TestSupport.writeSafetensors(f, t, Map.of("format", "pt"));
        return Files.readAllBytes(f);
    }

    /** One random mutation: byte flips, header-length edits, JSON-token splices, truncation. */
    private static byte[] mutate(byte[] seed, Random rnd) {
        byte[] b = seed.clone();
        int headerLen = (int) ByteBuffer.wrap(seed).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        int kind = rnd.nextInt(7);
        switch (kind) {
            case 0 -> { // flip a few bytes anywhere
                for (int i = 0, n = 1 + rnd.nextInt(4); i < n; i++) {
                    b[rnd.nextInt(b.length)] = (byte) rnd.nextInt(256);
                }
            }
            case 1 -> { // flip bytes inside the header
                for (int i = 0, n = 1 + rnd.nextInt(3); i < n; i++) {
                    b[8 + rnd.nextInt(headerLen)] = (byte) rnd.nextInt(256);
                }
            }
            case 2 -> { // a new header length
                long[] picks = {0, 1, 2, headerLen - 1, headerLen + 1, b.length, b.length - 8, -1, Long.MAX_VALUE,
                        Long.MIN_VALUE, 1L << 32, rnd.nextLong()};
                ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putLong(0, picks[rnd.nextInt(picks.length)]);
            }
            case 3 -> { // truncate
                b = Arrays.copyOf(b, rnd.nextInt(b.length));
            }
            case 4 -> { // replace a digit run in the header with a hostile number
                String h = new String(b, 8, headerLen, StandardCharsets.ISO_8859_1);
                List<int[]> runs = new ArrayList<>();
                for (int i = 0; i < h.length(); ) {
                    if (Character.isDigit(h.charAt(i))) {
                        int j = i;
                        while (j < h.length() && Character.isDigit(h.charAt(j))) {
                            j++;
                        }
                        runs.add(new int[]{i, j});
                        i = j;
                    } else {
                        i++;
                    }
                }
                String[] nums = {"-1", "0", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
                        "99999999999999999999999", "1e3", "1.5", "4294967296", "2147483648", "null", "\"3\"",
                        "[]", "{}", "3037000500", "4611686018427387904"};
                int[] r = runs.get(rnd.nextInt(runs.size()));
                String nh = h.substring(0, r[0]) + nums[rnd.nextInt(nums.length)] + h.substring(r[1]);
                b = withHeader(seed, nh.getBytes(StandardCharsets.ISO_8859_1), headerLen);
            }
            case 5 -> { // replace the header with a hostile JSON-ish document
                String[] docs = {"{}", "{\"a\":null}", "{\"a\":{\"dtype\":null}}", "{\"a\":[]}",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}}",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[null,4]}}",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
                        "{\"__metadata__\":{\"x\":1}}", "{\"__metadata__\":null}", "[1,2]", "{\"a\":1}{",
                        "{\u0000\u0000\u0000", "{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,0]}}",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{}}",
                        "{" + "[".repeat(5000), "{\"\\ud800\":1}", "{\"a\":\"\u00ff\u00fe\"}"};
                b = withHeader(seed, docs[rnd.nextInt(docs.length)].getBytes(StandardCharsets.ISO_8859_1), headerLen);
            }
            default -> { // raw invalid UTF-8 / UTF-16/32-looking bytes right after '{'
                int at = 9 + rnd.nextInt(Math.min(3, headerLen - 1));
                b[at] = (byte) (rnd.nextBoolean() ? 0 : 0x80 + rnd.nextInt(128));
                if (rnd.nextBoolean() && at + 1 < 8 + headerLen) {
                    b[at + 1] = 0;
                }
            }
        }
        return b;
    }

    /** The seed's data section behind a new header (its length field set to the new header's size). */
    private static byte[] withHeader(byte[] seed, byte[] header, int oldHeaderLen) {
        int dataLen = seed.length - 8 - oldHeaderLen;
        ByteBuffer out = ByteBuffer.allocate(8 + header.length + dataLen).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(header.length).put(header).put(seed, 8 + oldHeaderLen, dataLen);
        return out.array();
    }

    @Test
    void randomMutationsOnlyEverThrowTypedErrors() throws IOException {
        byte[] seed = validBytes(dir);
        Random rnd = new Random(20240611L);
        Path f = dir.resolve("fuzz.safetensors");
        int opened = 0, rejected = 0;
        for (int round = 0; round < ROUNDS; round++) {
            byte[] b = mutate(seed, rnd);
            Files.write(f, b);
            try (Safetensors st = Safetensors.open(f)) {
                for (String name : st.names()) {
                    Tensor t = st.tensor(name);
                    for (long i = 0; i < Math.min(t.numel(), 64); i++) {
                        t.getFloat(i);
                    }
                }
                opened++;
            } catch (SafetensorsException | IllegalArgumentException expected) {
                assertTrue(expected.getMessage() != null && !expected.getMessage().isEmpty(), "message");
                rejected++;
            } catch (Throwable e) {
                fail("round " + round + ": " + e + " escaped for bytes " + Arrays.toString(
                        Arrays.copyOf(b, Math.min(b.length, 96))), e);
            }
        }
        // Both outcomes happen: the mutations are neither all harmless nor all fatal.
        assertTrue(opened > 0, "no mutated file opened");
        assertTrue(rejected > ROUNDS / 4, "few mutated files rejected: " + rejected);
        assertEquals(ROUNDS, opened + rejected);
    }

    @Test
    void headerThatIsNotUtf8IsASafetensorsException() throws IOException {
        // '{' then NULs makes a UTF-32 byte-order guess possible; safetensors headers are UTF-8.
        for (byte[] header : new byte[][]{
                {'{', 0, 0, 0, '}', 0, 0, 0},
                {'{', 0, 0, 0, (byte) 0xff, (byte) 0xff, (byte) 0xff, 0x7f},
                {'{', 0, '"', 0, 'a', 0, '"', 0},
                {'{', '"', (byte) 0xc3, '"', ':', '1', '}', ' '},
                {'{', '"', (byte) 0xed, (byte) 0xa0, (byte) 0x80, '"', ':', '1', '}'}}) {
            Path f = dir.resolve("enc.safetensors");
            ByteBuffer buf = ByteBuffer.allocate(8 + header.length).order(ByteOrder.LITTLE_ENDIAN);
            buf.putLong(header.length).put(header);
            Files.write(f, buf.array());
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(f).close(),
                    () -> "header " + Arrays.toString(header));
            assertTrue(e.getMessage().contains(f.toString()), e.getMessage());
        }
    }
    @Test
    void indexThatIsNotUtf8IsASafetensorsException() throws IOException {
        Path index = dir.resolve(Safetensors.INDEX_FILE);
        for (byte[] bytes : new byte[][]{
                {'{', 0, 0, 0, (byte) 0xff, (byte) 0xff, (byte) 0xff, 0x7f},
                {'{', 0, 0, 0, '"', 0, 0, 0, 0, 0, (byte) 0xd8, 0},
                {'{', '"', (byte) 0xc3, '"', ':', '1', '}'}}) {
            Files.write(index, bytes);
            SafetensorsException e = assertThrows(SafetensorsException.class, () -> Safetensors.open(index).close(),
                    () -> "index " + Arrays.toString(bytes));
            assertTrue(e.getMessage().contains(index.toString()), e.getMessage());
        }
    }
}
