package dev.mla4j;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
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

    /** e4m3fn values of the codes 0..126 (the non-negative, non-NaN ones), increasing. */
    private static final float[] E4M3 = new float[127];

    static {
        for (int c = 0; c < 127; c++) {
            E4M3[c] = DType.e4m3ToFloat((byte) c);
        }
    }

    /** Nearest e4m3fn code of x (|x| <= 448; ties to the smaller magnitude). */
    static byte toE4m3(float x) {
        float a = Math.min(Math.abs(x), 448f);
        int i = Arrays.binarySearch(E4M3, a);
        int code;
        if (i >= 0) {
            code = i;
        } else {
            int hi = Math.min(-i - 1, 126);
            int lo = Math.max(hi - 1, 0);
            code = a - E4M3[lo] <= E4M3[hi] - a ? lo : hi;
        }
        return (byte) (x < 0 ? code | 0x80 : code);
    }

    /**
     * A [rows, cols] matrix quantized as DeepSeek's FP8 checkpoints are: e4m3 codes (in arena)
     * with one f32 scale per 128 x 128 block (scale = block max |v| / 448; w = code * scaleInv),
     * and the f32 values those codes and scales stand for.
     */
    record BlockFp8(MemorySegment codes, float[] scaleInv, long[] scaleShape, float[] dequantized) {
    }

    static BlockFp8 quantizeFp8(float[] v, int rows, int cols, Arena arena) {
        int br = (rows + 127) / 128;
        int bc = (cols + 127) / 128;
        float[] scale = new float[br * bc];
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < cols; c++) {
                int s = (r / 128) * bc + c / 128;
                scale[s] = Math.max(scale[s], Math.abs(v[r * cols + c]) / 448f);
            }
        }
        MemorySegment q = arena.allocate((long) rows * cols);
        float[] deq = new float[rows * cols];
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < cols; c++) {
                float s = scale[(r / 128) * bc + c / 128];
                byte code = toE4m3(s == 0 ? 0 : v[r * cols + c] / s);
                q.set(ValueLayout.JAVA_BYTE, (long) r * cols + c, code);
                deq[r * cols + c] = DType.e4m3ToFloat(code) * s;
            }
        }
        return new BlockFp8(q, scale, new long[]{br, bc}, deq);
    }
}
