package dev.mla4j;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Shared helpers: test data location, tolerances, a safetensors writer. */
final class TestSupport {
    private TestSupport() {
    }

    /** max|err| / max|ref| tolerance with an f32 cache. */
    static final double TOL_F32 = 1e-4;
    /** max|err| / max|ref| tolerance with a bf16 cache. */
    static final double TOL_BF16 = 1e-2;
    /**
     * max|err| / max|ref| tolerance of a CUDA layer, either cache dtype: its weights are bf16 on the
     * device (the C tests' bound for the CUDA backend).
     */
    static final double TOL_CUDA = 2e-2;

    static Path testdata() {
        String p = System.getProperty("mla4j.testdata");
        Path dir = p != null ? Path.of(p) : Path.of("..", "testdata");
        if (!Files.isDirectory(dir)) {
            throw new IllegalStateException("test data not found at " + dir.toAbsolutePath()
                    + " (set -Dmla4j.testdata=<repo>/testdata)");
        }
        return dir;
    }

    static List<Path> goldenFiles() throws IOException {
        try (var s = Files.list(testdata().resolve("golden"))) {
            return s.filter(f -> f.toString().endsWith(".safetensors")).sorted().toList();
        }
    }

    static double relErr(float[] actual, float[] ref) {
        if (actual.length != ref.length) {
            throw new AssertionError("length " + actual.length + " != " + ref.length);
        }
        double maxErr = 0;
        double maxRef = 0;
        for (int i = 0; i < ref.length; i++) {
            if (!Float.isFinite(actual[i])) {
                return Double.POSITIVE_INFINITY;
            }
            maxErr = Math.max(maxErr, Math.abs((double) actual[i] - ref[i]));
            maxRef = Math.max(maxRef, Math.abs(ref[i]));
        }
        return maxRef == 0 ? maxErr : maxErr / maxRef;
    }

    static float[] slice(float[] a, int from, int to) {
        return java.util.Arrays.copyOfRange(a, from, to);
    }

    /** A tensor to write: dtype name, shape, raw little-endian bytes. */
    record Entry(String dtype, long[] shape, byte[] bytes) {
        static Entry f32(long[] shape, float[] values) {
            ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
            for (float v : values) {
                b.putFloat(v);
            }
            return new Entry("F32", shape, b.array());
        }

        static Entry bf16(long[] shape, float[] values) {
            ByteBuffer b = ByteBuffer.allocate(values.length * 2).order(ByteOrder.LITTLE_ENDIAN);
            for (float v : values) {
                b.putShort(DType.floatToBf16(v));
            }
            return new Entry("BF16", shape, b.array());
        }
    }

    /** Writes a well-formed safetensors file (tensors packed in order). */
    static void writeSafetensors(Path file, Map<String, Entry> tensors, Map<String, String> metadata) throws IOException {
        ObjectMapper json = new ObjectMapper();
        ObjectNode header = json.createObjectNode();
        if (metadata != null && !metadata.isEmpty()) {
            ObjectNode md = header.putObject("__metadata__");
            metadata.forEach(md::put);
        }
        long offset = 0;
        for (Map.Entry<String, Entry> e : tensors.entrySet()) {
            ObjectNode t = header.putObject(e.getKey());
            t.put("dtype", e.getValue().dtype());
            var shape = t.putArray("shape");
            for (long d : e.getValue().shape()) {
                shape.add(d);
            }
            var offs = t.putArray("data_offsets");
            offs.add(offset);
            offset += e.getValue().bytes().length;
            offs.add(offset);
        }
        Map<String, byte[]> data = new LinkedHashMap<>();
        tensors.forEach((k, v) -> data.put(k, v.bytes()));
        writeRaw(file, json.writeValueAsString(header), data.values().toArray(new byte[0][]));
    }

    /** Writes header JSON (padded to 8 bytes with spaces) and the given data blobs. */
    static void writeRaw(Path file, String headerJson, byte[]... blobs) throws IOException {
        byte[] h = headerJson.getBytes(StandardCharsets.UTF_8);
        int padded = (h.length + 7) / 8 * 8;
        int dataLen = 0;
        for (byte[] b : blobs) {
            dataLen += b.length;
        }
        ByteBuffer buf = ByteBuffer.allocate(8 + padded + dataLen).order(ByteOrder.LITTLE_ENDIAN);
        buf.putLong(padded);
        buf.put(h);
        for (int i = h.length; i < padded; i++) {
            buf.put((byte) ' ');
        }
        for (byte[] b : blobs) {
            buf.put(b);
        }
        Files.write(file, buf.array());
    }
}
