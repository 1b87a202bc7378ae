package dev.mla4j;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

import static dev.mla4j.TestSupport.Entry;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class SafetensorsTest {
    @TempDir
    Path dir;

    private Path valid() throws IOException {
        Map<String, Entry> t = new LinkedHashMap<>();
        t.put("a", Entry.f32(new long[]{2, 3}, new float[]{1, 2, 3, 4, 5, 6}));
        t.put("b", Entry.bf16(new long[]{4}, new float[]{0.5f, -1.25f, 3f, 1024f}));
        t.put("empty", new Entry("F32", new long[]{0, 5}, new byte[0]));
        Path f = dir.resolve("ok.safetensors");
        TestSupport.writeSafetensors(f, t, Map.of("format", "pt"));
        return f;
    }

    private SafetensorsException bad(String header, byte[]... data) throws IOException {
        Path f = dir.resolve("bad.safetensors");
        TestSupport.writeRaw(f, header, data);
        return assertThrows(SafetensorsException.class, () -> Safetensors.open(f).close());
    }

    private static void assertMessage(Exception e, String... parts) {
        for (String p : parts) {
            assertTrue(e.getMessage().contains(p), () -> "message '" + e.getMessage() + "' lacks '" + p + "'");
        }
    }

    @Test
    void readsTypedViewsWithoutCopy() throws IOException {
        try (Safetensors st = Safetensors.open(valid())) {
            assertEquals(java.util.List.of("a", "b", "empty"), java.util.List.copyOf(st.names()));
            Tensor a = st.tensor("a");
            assertEquals(DType.F32, a.dtype());
            assertArrayEquals(new long[]{2, 3}, a.shape());
            assertArrayEquals(new float[]{1, 2, 3, 4, 5, 6}, a.toFloatArray());
            assertTrue(a.data().isNative(), "mapped, not copied to the heap");
            assertTrue(a.data().isReadOnly());
            assertArrayEquals(new float[]{0.5f, -1.25f, 3f, 1024f}, st.tensor("b").toFloatArray());
            assertEquals(0, st.tensor("empty").numel());
            assertEquals("pt", st.metadata().get("format"));
            assertThrows(IllegalArgumentException.class, () -> st.tensor("nope"));
        }
    }

    @Test
    void viewsFailAfterClose() throws IOException {
        Safetensors st = Safetensors.open(valid());
        Tensor a = st.tensor("a");
        st.close();
        st.close(); // idempotent
        assertThrows(IllegalStateException.class, () -> st.tensor("a"));
        assertThrows(IllegalStateException.class, () -> a.getFloat(0));
    }

    @Test
    void sharded() throws IOException {
        Map<String, Entry> s1 = new LinkedHashMap<>();
        s1.put("x", Entry.f32(new long[]{2}, new float[]{1, 2}));
        Map<String, Entry> s2 = new LinkedHashMap<>();
        s2.put("y", Entry.f32(new long[]{1}, new float[]{7}));
        TestSupport.writeSafetensors(dir.resolve("model-00001-of-00002.safetensors"), s1, null);
        TestSupport.writeSafetensors(dir.resolve("model-00002-of-00002.safetensors"), s2, null);
        Files.writeString(dir.resolve(Safetensors.INDEX_FILE), """
                {"metadata": {"total_size": 12},
                 "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
                """);
        try (Safetensors st = Safetensors.open(dir)) {
            assertArrayEquals(new float[]{1, 2}, st.tensor("x").toFloatArray());
            assertArrayEquals(new float[]{7}, st.tensor("y").toFloatArray());
            assertEquals(2, st.files().size());
            assertEquals("12", st.metadata().get("total_size"));
        }
        Files.writeString(dir.resolve(Safetensors.INDEX_FILE), """
                {"weight_map": {"x": "model-00002-of-00002.safetensors"}}
                """);
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(dir)), "x", "does not contain");
        Files.writeString(dir.resolve(Safetensors.INDEX_FILE), """
                {"weight_map": {"x": "../etc/passwd"}}
                """);
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(dir)), "weight_map.x");
    }

    @Test
    void truncatedFile() throws IOException {
        Path f = dir.resolve("t.safetensors");
        Files.write(f, new byte[]{1, 2, 3});
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(f)), "too short");
        // a valid file cut inside its data section
        Path ok = valid();
        byte[] all = Files.readAllBytes(ok);
        Files.write(f, java.util.Arrays.copyOf(all, all.length - 5));
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(f)), "tensor b",
                "outside the data section");
    }

    @Test
    void headerLengthPastEndOfFile() throws IOException {
        Path f = dir.resolve("h.safetensors");
        ByteBuffer b = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(1000).put("{}      ".getBytes());
        Files.write(f, b.array());
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(f)), "header length 1000",
                "past the end");
        b.clear();
        b.putLong(-1L).put("{}      ".getBytes());
        Files.write(f, b.array());
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(f)), "header length "
                + Long.toUnsignedString(-1L));
    }

    @Test
    void headerLengthOverCap() throws IOException {
        Path f = dir.resolve("big.safetensors");
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) {
            raf.setLength(Safetensors.MAX_HEADER_BYTES + 1024); // sparse
            raf.seek(0);
            raf.write(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(Safetensors.MAX_HEADER_BYTES + 16).array());
        }
        assertMessage(assertThrows(SafetensorsException.class, () -> Safetensors.open(f)), "exceeds the limit");
    }

    @Test
    void badJson() throws IOException {
        assertMessage(bad("{\"a\": "), "not valid JSON");
        assertMessage(bad("[1, 2]"), "does not start with '{'");
        assertMessage(bad("{\"a\": 1}"), "tensor a", "not an object");
        assertMessage(bad("{\"a\": {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                + "\"a\": {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", new byte[4]), "not valid JSON");
    }

    @Test
    void unknownDtype() throws IOException {
        assertMessage(bad("{\"w\": {\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,1]}}", new byte[1]), "tensor w",
                "unknown dtype 'F7'");
    }

    @Test
    void badShapes() throws IOException {
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}"), "tensor w", "shape[0]");
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                + "\"data_offsets\":[0,0]}}"), "tensor w", "64 bits");
        // element count fits, byte count does not
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}"),
                "tensor w", "overflows");
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", new byte[8]), "tensor w",
                "needs 8");
    }

    @Test
    void offsetsOutOfRangeOrOverlapping() throws IOException {
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", new byte[8]), "tensor w",
                "outside the data section");
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", new byte[8]), "tensor w");
        assertMessage(bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", new byte[8]), "tensor w",
                "data_offsets");
        assertMessage(bad("{\"u\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"v\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", new byte[12]), "overlaps");
    }

    @Test
    void tensorOfChecksSize() {
        MemorySegment heap = MemorySegment.ofArray(new byte[8]);
        assertEquals(2, Tensor.of("t", DType.F32, new long[]{2}, heap).numel());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Tensor.of("t", DType.F32, new long[]{3}, heap));
        assertMessage(e, "tensor t", "needs 12");
        assertFalse(Tensor.of("t", DType.BF16, new long[]{4}, heap).data().isNative());
    }

    @Test
    void fp8AndBf16Conversions() {
        assertEquals(1.0f, DType.e4m3ToFloat((byte) 0x38));
        assertEquals(448.0f, DType.e4m3ToFloat((byte) 0x7e));
        assertEquals(-448.0f, DType.e4m3ToFloat((byte) 0xfe));
        assertEquals(0x1p-9f, DType.e4m3ToFloat((byte) 0x01));
        assertTrue(Float.isNaN(DType.e4m3ToFloat((byte) 0x7f)));
        assertEquals(1.0f, DType.bf16ToFloat(DType.floatToBf16(1.0f)));
        // round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7
        assertEquals(1.0f, DType.bf16ToFloat(DType.floatToBf16(1.0f + 0x1p-8f)));
        assertEquals(1.0f + 0x1p-6f, DType.bf16ToFloat(DType.floatToBf16(1.0f + 0x1p-6f + 0x1p-8f)));
    }

    @Test
    void closeIsRefusedWhileANativeCallReadsTheMapping() throws IOException {
        Safetensors st = Safetensors.open(valid());
        st.acquire();
        IllegalStateException inUse = assertThrows(IllegalStateException.class, st::close);
        assertMessage(inUse, "in use");
        assertArrayEquals(new float[]{1, 2, 3, 4, 5, 6}, st.tensor("a").toFloatArray(), "still mapped");
        st.release();
        st.close();
        assertThrows(IllegalStateException.class, st::acquire);
        assertThrows(IllegalStateException.class, () -> st.tensor("a"));
    }
}
