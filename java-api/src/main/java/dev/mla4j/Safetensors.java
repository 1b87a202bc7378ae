package dev.mla4j;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;

/**
 * A safetensors checkpoint, memory-mapped read-only (no copy): one file, or a sharded checkpoint
 * described by {@code model.safetensors.index.json}. Tensors are typed views into the mapping.
 *
 * <p>Files are untrusted input. Opening validates, before any tensor can be read: the header
 * length (at most the file's size and at most {@value #MAX_HEADER_BYTES} bytes), that the header is
 * one JSON object, every tensor's dtype, shape (non-negative; element count times element size
 * computed with overflow checks) and data_offsets (inside the data section, matching the size,
 * not overlapping another tensor's bytes), and for shards that every indexed tensor exists in its
 * shard. Failures throw {@link SafetensorsException} naming the file and the tensor or field.
 *
 * <p>Owns its mapping: {@link #close()} unmaps it (idempotent); afterwards the tensor views of this
 * file throw {@link IllegalStateException} when read. Thread-safe for reading.
 */
public final class Safetensors implements AutoCloseable {
    /** The largest header accepted, as in the reference implementation (100 MB). */
    public static final long MAX_HEADER_BYTES = 100_000_000L;
    /** The index file of a sharded checkpoint. */
    public static final String INDEX_FILE = "model.safetensors.index.json";

    private static final ObjectMapper JSON = new ObjectMapper()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    private final Arena arena;
    private final Map<String, Tensor> tensors;
    private final Map<String, String> metadata;
    private final List<Path> files;
    private final AtomicBoolean closed = new AtomicBoolean();
    private int users;  // native calls between acquire and release, guarded by this

    private Safetensors(Arena arena, Map<String, Tensor> tensors, Map<String, String> metadata, List<Path> files) {
        this.arena = arena;
        this.tensors = tensors;
        this.metadata = metadata;
        this.files = files;
    }

    /**
     * Opens a checkpoint: a {@code .safetensors} file, a {@code *.index.json} shard index, or a
     * directory holding {@value #INDEX_FILE}, {@code model.safetensors}, or exactly one
     * {@code .safetensors} file.
     *
     * @throws SafetensorsException the file or index is malformed (message names file and tensor/field)
     * @throws IOException          the file cannot be read
     */
    public static Safetensors open(Path path) throws IOException {
        Objects.requireNonNull(path, "path");
        if (Files.isDirectory(path)) {
            Path index = path.resolve(INDEX_FILE);
            Path single = path.resolve("model.safetensors");
            if (Files.isRegularFile(index)) {
                return openIndex(index);
            }
            if (Files.isRegularFile(single)) {
                return openFile(single);
            }
            List<Path> candidates;
            try (Stream<Path> s = Files.list(path)) {
                candidates = s.filter(p -> p.getFileName().toString().endsWith(".safetensors")).sorted().toList();
            }
            if (candidates.size() == 1) {
                return openFile(candidates.get(0));
            }
            throw new SafetensorsException(path + ": no " + INDEX_FILE + " or model.safetensors, and "
                    + candidates.size() + " .safetensors files; name the file or the index");
        }
        if (path.getFileName().toString().endsWith(".index.json")) {
            return openIndex(path);
        }
        return openFile(path);
    }

    private static Safetensors openFile(Path file) throws IOException {
        Arena arena = Arena.ofShared();
        try {
            Map<String, String> md = new LinkedHashMap<>();
            Map<String, Tensor> t = mapFile(file, arena, md);
            return new Safetensors(arena, Collections.unmodifiableMap(t), Collections.unmodifiableMap(md), List.of(file));
        } catch (IOException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    private static Safetensors openIndex(Path index) throws IOException {
        JsonNode root;
        try {
            root = JSON.readTree(utf8(index, "index", Files.readAllBytes(index)));
        } catch (JsonProcessingException e) {
            throw new SafetensorsException(index + ": not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw new SafetensorsException(index + ": expected a JSON object");
        }
        JsonNode weightMap = root.get("weight_map");
        if (weightMap == null || !weightMap.isObject()) {
            throw new SafetensorsException(index + ": field weight_map is missing or not an object");
        }
        Map<String, String> wanted = new LinkedHashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = weightMap.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            if (!e.getValue().isTextual()) {
                throw new SafetensorsException(index + ": weight_map." + e.getKey() + " is not a file name");
            }
            String shard = e.getValue().asText();
            if (shard.isEmpty() || shard.contains("/") || shard.contains("\\") || shard.equals("..") || shard.equals(".")) {
                throw new SafetensorsException(index + ": weight_map." + e.getKey() + " = '" + shard
                        + "' is not a file name in the index's directory");
            }
            wanted.put(e.getKey(), shard);
        }
        Map<String, String> md = new LinkedHashMap<>();
        JsonNode meta = root.get("metadata");
        if (meta != null && meta.isObject()) {
            meta.fields().forEachRemaining(e -> md.put(e.getKey(), e.getValue().isTextual() ? e.getValue().asText()
                    : e.getValue().toString()));
        }
        Path dir = index.toAbsolutePath().getParent();
        Arena arena = Arena.ofShared();
        try {
            Map<String, Map<String, Tensor>> shards = new LinkedHashMap<>();
            List<Path> files = new ArrayList<>();
            for (String shard : new java.util.TreeSet<>(wanted.values())) {
                Path file = dir.resolve(shard);
                shards.put(shard, mapFile(file, arena, new LinkedHashMap<>()));
                files.add(file);
            }
            Map<String, Tensor> all = new LinkedHashMap<>();
            for (Map.Entry<String, String> e : wanted.entrySet()) {
                Tensor t = shards.get(e.getValue()).get(e.getKey());
                if (t == null) {
                    throw new SafetensorsException(index + ": tensor " + e.getKey() + " is indexed in " + e.getValue()
                            + ", which does not contain it");
                }
                all.put(e.getKey(), t);
            }
            return new Safetensors(arena, Collections.unmodifiableMap(all), Collections.unmodifiableMap(md),
                    List.copyOf(files));
        } catch (IOException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    /**
     * Decodes JSON text as strict UTF-8, so that Jackson never guesses another encoding (UTF-16/32
     * from NUL bytes) or fails with a plain CharConversionException.
     */
    private static String utf8(Path file, String what, byte[] bytes) throws SafetensorsException {
        try {
            return StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(bytes))
                    .toString();
        } catch (CharacterCodingException e) {
            throw new SafetensorsException(file + ": " + what + " is not valid UTF-8 (" + e + ")", e);
        }
    }

    private record Span(String name, long begin, long end) {
    }

    private static Map<String, Tensor> mapFile(Path file, Arena arena, Map<String, String> metadataOut)
            throws IOException {
        MemorySegment whole;
        long size;
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            size = ch.size();
            if (size < 8) {
                throw new SafetensorsException(file + ": " + size + " bytes, too short for the 8-byte header length");
            }
            whole = ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
        }
        long headerLen = whole.get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0);
        if (headerLen < 0 || headerLen > size - 8) {
            throw new SafetensorsException(file + ": header length " + Long.toUnsignedString(headerLen)
                    + " runs past the end of the file (" + size + " bytes)");
        }
        if (headerLen > MAX_HEADER_BYTES) {
            throw new SafetensorsException(file + ": header length " + headerLen + " exceeds the limit of "
                    + MAX_HEADER_BYTES + " bytes");
        }
        if (headerLen < 2) {
            throw new SafetensorsException(file + ": header length " + headerLen + " cannot hold a JSON object");
        }
        byte[] headerBytes = whole.asSlice(8, headerLen).toArray(ValueLayout.JAVA_BYTE);
        if (headerBytes[0] != '{') {
            throw new SafetensorsException(file + ": header does not start with '{'");
        }
        // The header is UTF-8 by the format.
        String headerText = utf8(file, "header", headerBytes);
        JsonNode header;
        try {
            header = JSON.readTree(headerText);
        } catch (JsonProcessingException e) {
            throw new SafetensorsException(file + ": header is not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (header == null || !header.isObject()) {
            throw new SafetensorsException(file + ": header is not a JSON object");
        }
        long dataStart = 8 + headerLen;
        long dataLen = size - dataStart;
        MemorySegment dataSection = whole.asSlice(dataStart, dataLen);

        Map<String, Tensor> out = new LinkedHashMap<>();
        List<Span> spans = new ArrayList<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = header.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String name = e.getKey();
            JsonNode node = e.getValue();
            if (name.equals("__metadata__")) {
                if (!node.isObject()) {
                    throw new SafetensorsException(file + ": __metadata__ is not an object");
                }
                for (Iterator<Map.Entry<String, JsonNode>> m = node.fields(); m.hasNext(); ) {
                    Map.Entry<String, JsonNode> kv = m.next();
                    if (!kv.getValue().isTextual()) {
                        throw new SafetensorsException(file + ": __metadata__." + kv.getKey() + " is not a string");
                    }
                    metadataOut.put(kv.getKey(), kv.getValue().asText());
                }
                continue;
            }
            String where = file + ": tensor " + name;
            if (!node.isObject()) {
                throw new SafetensorsException(where + ": entry is not an object");
            }
            JsonNode dtypeNode = node.get("dtype");
            if (dtypeNode == null || !dtypeNode.isTextual()) {
                throw new SafetensorsException(where + ": dtype is missing or not a string");
            }
            Optional<DType> dtype = DType.ofSafetensors(dtypeNode.asText());
            if (dtype.isEmpty()) {
                throw new SafetensorsException(where + ": unknown dtype '" + dtypeNode.asText() + "'");
            }
            JsonNode shapeNode = node.get("shape");
            if (shapeNode == null || !shapeNode.isArray()) {
                throw new SafetensorsException(where + ": shape is missing or not an array");
            }
            long[] shape = new long[shapeNode.size()];
            long numel = 1;
            for (int i = 0; i < shape.length; i++) {
                JsonNode d = shapeNode.get(i);
                if (!d.isIntegralNumber() || !d.canConvertToLong() || d.asLong() < 0) {
                    throw new SafetensorsException(where + ": shape[" + i + "] = " + d + " is not a non-negative integer");
                }
                shape[i] = d.asLong();
                try {
                    numel = Math.multiplyExact(numel, shape[i]);
                } catch (ArithmeticException ex) {
                    throw new SafetensorsException(where + ": shape " + Arrays.toString(shape) + " has more elements than fit in 64 bits");
                }
            }
            long bytes;
            try {
                bytes = Math.multiplyExact(numel, (long) dtype.get().byteSize());
            } catch (ArithmeticException ex) {
                throw new SafetensorsException(where + ": shape " + Arrays.toString(shape) + " x " + dtype.get().byteSize()
                        + " bytes overflows 64 bits");
            }
            JsonNode offs = node.get("data_offsets");
            if (offs == null || !offs.isArray() || offs.size() != 2 || !offs.get(0).isIntegralNumber()
                    || !offs.get(1).isIntegralNumber() || !offs.get(0).canConvertToLong() || !offs.get(1).canConvertToLong()) {
                throw new SafetensorsException(where + ": data_offsets is not a pair of integers");
            }
            long begin = offs.get(0).asLong();
            long end = offs.get(1).asLong();
            if (begin < 0 || end < begin || end > dataLen) {
                throw new SafetensorsException(where + ": data_offsets [" + begin + ", " + end
                        + "] are outside the data section [0, " + dataLen + "]");
            }
            if (end - begin != bytes) {
                throw new SafetensorsException(where + ": data_offsets [" + begin + ", " + end + "] span " + (end - begin)
                        + " bytes, but " + dtype.get() + " " + Arrays.toString(shape) + " needs " + bytes);
            }
            spans.add(new Span(name, begin, end));
            out.put(name, new Tensor(name, dtype.get(), shape, numel, dataSection.asSlice(begin, bytes)));
        }
        spans.sort(Comparator.comparingLong(Span::begin).thenComparingLong(Span::end));
        Span prev = null;
        for (Span s : spans) {
            if (s.begin == s.end) {
                continue;
            }
            if (prev != null && s.begin < prev.end) {
                throw new SafetensorsException(file + ": tensor " + s.name + " [" + s.begin + ", " + s.end
                        + ") overlaps tensor " + prev.name + " [" + prev.begin + ", " + prev.end + ")");
            }
            prev = s;
        }
        return out;
    }

    private void ensureOpen() {
        if (closed.get()) {
            throw new IllegalStateException("Safetensors " + files + " is closed");
        }
    }

    /** Tensor names, in file order. */
    public Set<String> names() {
        ensureOpen();
        return tensors.keySet();
    }

    public boolean contains(String name) {
        ensureOpen();
        return tensors.containsKey(name);
    }

    /**
     * The tensor with this name.
     *
     * @throws IllegalArgumentException no such tensor (the message names it)
     */
    public Tensor tensor(String name) {
        ensureOpen();
        Tensor t = tensors.get(name);
        if (t == null) {
            throw new IllegalArgumentException("no tensor " + name + " in " + files);
        }
        return t;
    }

    /** The tensor with this name, if present. */
    public Optional<Tensor> find(String name) {
        ensureOpen();
        return Optional.ofNullable(tensors.get(name));
    }

    /** __metadata__ of a single file, or the "metadata" object of a shard index (values as strings). */
    public Map<String, String> metadata() {
        ensureOpen();
        return metadata;
    }

    /** The mapped files. */
    public List<Path> files() {
        return files;
    }

    /**
     * Marks a native call that reads the mapped memory through raw addresses held in a struct (which
     * keeps no arena alive), such as libmla copying the weights in {@link MlaLayer#create}: close is
     * refused until {@link #release()}.
     *
     * @throws IllegalStateException already closed
     */
    void acquire() {
        synchronized (this) {
            ensureOpen();
            users++;
        }
    }

    /** Ends an {@link #acquire()}. */
    void release() {
        synchronized (this) {
            users--;
        }
    }

    /**
     * Unmaps the files; idempotent.
     *
     * @throws IllegalStateException a layer is being created from these weights on another thread
     */
    @Override
    public void close() {
        synchronized (this) {
            if (users > 0) {
                throw new IllegalStateException("Safetensors " + files + " is in use by " + users
                        + " call(s) copying its weights; close it after they return");
            }
            if (!closed.compareAndSet(false, true)) {
                return;
            }
        }
        arena.close();
    }
}
