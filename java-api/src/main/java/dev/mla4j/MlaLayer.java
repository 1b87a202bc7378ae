package dev.mla4j;

import dev.mla4j.bindings.Mla;
import dev.mla4j.bindings.mla_config;
import dev.mla4j.bindings.mla_layer_options;
import dev.mla4j.bindings.mla_layer_weights;
import dev.mla4j.bindings.mla_weight;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.Objects;
import java.util.Optional;
import java.util.function.Function;

/**
 * One MLA attention layer (owns a native {@code mla_layer}): built once from a config and the
 * module's weights, immutable, shareable between threads. {@link #forward} runs a ragged batch of
 * hidden states through q/kv projections, the latent cache and o_proj, appending the new tokens to
 * the cache.
 */
public final class MlaLayer extends NativeResource {
    /** Weight names under the attention module, as in transformers' checkpoints. */
    static final String[] WEIGHTS = {"q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj", "kv_a_proj_with_mqa",
            "kv_a_layernorm", "kv_b_proj", "o_proj"};

    /**
     * Progress of a layer's creation. Units: bytes of the layer's prepared weights in the context's
     * memory (bf16 or f32 as the backend keeps them), so {@code bytesTotal} is the layer's weight
     * footprint there and the same in every call. Called on the thread that calls
     * {@code create}, never concurrently: on a CUDA context after each staged chunk (16 MiB or
     * less) has reached the device, on the CPU after each prepared tensor. {@code bytesDone}
     * increases strictly from call to call; the last call of a successful creation has
     * {@code bytesDone == bytesTotal}.
     */
    @FunctionalInterface
    public interface Progress {
        /**
         * Reports progress.
         *
         * @return true to go on; false cancels the creation: it frees what it allocated and
         *         {@code create} throws an {@link MlaException} with status
         *         {@link MlaException.Status#CANCELLED}. An exception thrown here cancels too, and
         *         {@code create} rethrows it (the same instance) once libmla has returned.
         */
        boolean update(long bytesDone, long bytesTotal);
    }

    private final MlaContext context;
    private final MlaConfig config;
    private final int headBegin;
    private final int headEnd;

    private MlaLayer(MlaContext context, Arena arena, MemorySegment raw, MlaConfig config, int headBegin, int headEnd) {
        super("MlaLayer", arena, raw, Mla::mla_layer_destroy);
        this.context = context;
        this.config = config;
        this.headBegin = headBegin;
        this.headEnd = headEnd;
    }

    /**
     * A layer from a checkpoint: weights named {@code prefix + "q_a_proj.weight"} etc. (e.g. prefix
     * {@code "model.layers.0.self_attn."}); FP8 weights take their {@code weight_scale_inv}. The
     * layer keeps nothing of the mapping: {@code weights} may be closed once this returns.
     */
    public static MlaLayer create(MlaContext context, MlaConfig config, Safetensors weights, String prefix) {
        return create(context, config, weights, prefix, 0, config.numHeads(), null);
    }

    /**
     * As {@link #create(MlaContext, MlaConfig, Safetensors, String)}, reporting progress to
     * {@code progress} (which may cancel; see {@link Progress}).
     */
    public static MlaLayer create(MlaContext context, MlaConfig config, Safetensors weights, String prefix,
                                  Progress progress) {
        return create(context, config, weights, prefix, 0, config.numHeads(), progress);
    }

    /** As {@link #create(MlaContext, MlaConfig, Safetensors, String)}, for the heads [headBegin, headEnd). */
    public static MlaLayer create(MlaContext context, MlaConfig config, Safetensors weights, String prefix,
                                  int headBegin, int headEnd) {
        return create(context, config, weights, prefix, headBegin, headEnd, null);
    }

    /**
     * A layer from a checkpoint for the heads [headBegin, headEnd), reporting progress to
     * {@code progress} (null: none). The weights are read from the mapped files while this runs: a
     * CUDA context stages them in bounded chunks (two 16 MiB pinned buffers) straight to the
     * device, a CPU context converts them into the layer's own memory. Nothing of the mapping is
     * kept: {@code weights} may be closed once this returns.
     *
     * @throws IllegalArgumentException a required weight is missing, or has the wrong dtype or shape
     * @throws MlaException             libmla refused the config or weights, ran out of memory, or
     *                                  {@code progress} cancelled (status CANCELLED)
     */
    public static MlaLayer create(MlaContext context, MlaConfig config, Safetensors weights, String prefix,
                                  int headBegin, int headEnd, Progress progress) {
        Objects.requireNonNull(weights, "weights");
        Objects.requireNonNull(prefix, "prefix");
        weights.acquire();  // the files stay mapped while libmla reads from them
        try {
            return create(context, config, name -> weights.find(prefix + name), headBegin, headEnd, progress);
        } finally {
            weights.release();
        }
    }

    /**
     * A layer from tensors found by name relative to the attention module ("q_a_proj.weight",
     * "q_a_proj.weight_scale_inv", ...), for the heads [headBegin, headEnd). libmla copies what it
     * needs: the tensors may be released after this returns.
     *
     * @throws IllegalArgumentException a required weight is missing, or has the wrong dtype or
     *                                  shape (the message names the tensor and the expected shape)
     * @throws MlaException             libmla refused the config or weights, or ran out of memory
     */
    public static MlaLayer create(MlaContext context, MlaConfig config, Function<String, Optional<Tensor>> weights,
                                  int headBegin, int headEnd) {
        return create(context, config, weights, headBegin, headEnd, null);
    }

    /**
     * As {@link #create(MlaContext, MlaConfig, Function, int, int)}, reporting progress to
     * {@code progress} (null: none). The listener runs on this thread inside the native call,
     * through an upcall stub that lives for this call only; an exception it throws never reaches
     * native code: it cancels the creation and is rethrown here, the same instance (wrapped in an
     * {@link java.lang.reflect.UndeclaredThrowableException} only if it is a checked exception).
     *
     * @throws MlaException status CANCELLED when {@code progress} returned false, or as
     *                      {@link #create(MlaContext, MlaConfig, Function, int, int)}
     */
    public static MlaLayer create(MlaContext context, MlaConfig config, Function<String, Optional<Tensor>> weights,
                                  int headBegin, int headEnd, Progress progress) {
        Objects.requireNonNull(context, "context");
        Objects.requireNonNull(config, "config");
        Objects.requireNonNull(weights, "weights");
        if (headBegin < 0 || headEnd > config.numHeads() || headBegin >= headEnd) {
            throw new IllegalArgumentException("head range [" + headBegin + ", " + headEnd + ") is not inside [0, "
                    + config.numHeads() + ")");
        }
        long h = config.numHeads();
        long d = config.hiddenSize();
        long qk = config.qkNopeHeadDim() + config.qkRopeHeadDim();
        ProgressUpcall upcall = progress == null ? null : new ProgressUpcall(progress);
        MlaLayer made = context.createChild(arena -> {  // the context refuses to close meanwhile
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment w = mla_layer_weights.allocate(tmp);
                Native.check(Mla.mla_layer_weights_init(w), "mla_layer_weights_init");
                if (config.hasQueryCompression()) {
                    fill(tmp, weights, "q_a_proj", w, mla_layer_weights.q_a_proj$offset(), config.qLoraRank(), d);
                    fill(tmp, weights, "q_a_layernorm", w, mla_layer_weights.q_a_layernorm$offset(), config.qLoraRank(), 0);
                    fill(tmp, weights, "q_b_proj", w, mla_layer_weights.q_b_proj$offset(), h * qk, config.qLoraRank());
                } else {
                    fill(tmp, weights, "q_proj", w, mla_layer_weights.q_proj$offset(), h * qk, d);
                }
                fill(tmp, weights, "kv_a_proj_with_mqa", w, mla_layer_weights.kv_a_proj_with_mqa$offset(),
                        config.kvLoraRank() + config.qkRopeHeadDim(), d);
                fill(tmp, weights, "kv_a_layernorm", w, mla_layer_weights.kv_a_layernorm$offset(), config.kvLoraRank(), 0);
                fill(tmp, weights, "kv_b_proj", w, mla_layer_weights.kv_b_proj$offset(),
                        h * (config.qkNopeHeadDim() + config.vHeadDim()), config.kvLoraRank());
                fill(tmp, weights, "o_proj", w, mla_layer_weights.o_proj$offset(), d, h * config.vHeadDim());

                MemorySegment opts = mla_layer_options.allocate(tmp);
                Native.check(Mla.mla_layer_options_init(opts), "mla_layer_options_init");
                mla_layer_options.head_begin(opts, headBegin);
                mla_layer_options.head_end(opts, headEnd);
                if (upcall != null) {  // the stub is freed with tmp, after the call
                    mla_layer_options.progress(opts, mla_layer_options.progress.allocate(upcall, tmp));
                }
                MemorySegment out = tmp.allocate(ValueLayout.ADDRESS);
                out.set(ValueLayout.ADDRESS, 0, MemorySegment.NULL);
                int status = Mla.mla_layer_create(context.handle(), config.toNative(tmp), w, opts, out);
                if (upcall != null && upcall.thrown != null) {
                    // The listener threw, so libmla cancelled; nothing was made (defensively
                    // destroyed otherwise). The exception is rethrown once createChild is done.
                    Mla.mla_layer_destroy(out.get(ValueLayout.ADDRESS, 0));
                    arena.close();
                    return null;
                }
                Native.check(status, "mla_layer_create");
                return new MlaLayer(context, arena, out.get(ValueLayout.ADDRESS, 0), config, headBegin, headEnd);
            }
        });
        if (made == null) {
            throw rethrow(upcall.thrown);
        }
        return made;
    }

    /** The progress upcall: runs the listener, never lets an exception reach native code. */
    private static final class ProgressUpcall implements mla_layer_options.progress.Function {
        private final Progress listener;
        private Throwable thrown;  // the listener's exception; written and read on the creating thread

        ProgressUpcall(Progress listener) {
            this.listener = listener;
        }

        @Override
        public int apply(MemorySegment userData, long bytesDone, long bytesTotal) {
            if (thrown != null) {
                return 1;
            }
            try {
                return listener.update(bytesDone, bytesTotal) ? 0 : 1;
            } catch (Throwable t) {  // an exception escaping an upcall would end the JVM
                thrown = t;
                return 1;
            }
        }
    }

    private static RuntimeException rethrow(Throwable t) {
        if (t instanceof RuntimeException r) {
            throw r;
        }
        if (t instanceof Error e) {
            throw e;
        }
        throw new java.lang.reflect.UndeclaredThrowableException(t, "the progress listener threw " + t);
    }

    /**
     * Fills one mla_weight. cols == 0 marks a norm vector: the tensor must be 1-D [rows].
     */
    private static void fill(Arena tmp, Function<String, Optional<Tensor>> weights, String name, MemorySegment w,
                             long offset, long rows, long cols) {
        String key = name + ".weight";
        Tensor t = weights.apply(key).orElseThrow(() -> new IllegalArgumentException("weight " + key + " is missing"));
        long[] shape = t.shape();
        boolean vector = cols == 0;
        long[] expected = vector ? new long[]{rows} : new long[]{rows, cols};
        if (!Arrays.equals(shape, expected)) {
            throw new IllegalArgumentException("weight " + t.name() + " has shape " + Arrays.toString(shape) + ", expected "
                    + Arrays.toString(expected));
        }
        if (t.dtype().mlaCode() < 0 || (vector && t.dtype() == DType.F8_E4M3)) {
            throw new IllegalArgumentException("weight " + t.name() + " has dtype " + t.dtype() + "; expected "
                    + (vector ? "F32, BF16 or F16" : "F32, BF16, F16 or F8_E4M3"));
        }
        if (!t.data().isNative()) {
            throw new IllegalArgumentException("weight " + t.name() + " is in heap memory; libmla needs native memory");
        }
        MemorySegment mw = w.asSlice(offset, mla_weight.sizeof());
        mla_weight.data(mw, t.data());
        mla_weight.dtype(mw, t.dtype().mlaCode());
        mla_weight.reserved0(mw, 0);
        mla_weight.rows(mw, rows);
        mla_weight.cols(mw, vector ? 1 : cols);
        mla_weight.scale_inv(mw, MemorySegment.NULL);
        if (t.dtype() == DType.F8_E4M3) {
            String sk = name + ".weight_scale_inv";
            Tensor s = weights.apply(sk).orElseThrow(() -> new IllegalArgumentException(
                    "weight " + t.name() + " is FP8 but its scale " + sk + " is missing"));
            long[] se = {(rows + 127) / 128, (cols + 127) / 128};
            if (!Arrays.equals(s.shape(), se)) {
                throw new IllegalArgumentException("weight " + s.name() + " has shape " + Arrays.toString(s.shape())
                        + ", expected " + Arrays.toString(se));
            }
            MemorySegment scales;
            if (s.dtype() == DType.F32 && s.data().isNative() && s.data().address() % 4 == 0) {
                scales = s.data();
            } else if (s.dtype() == DType.F32 || s.dtype() == DType.BF16) {
                scales = tmp.allocateFrom(ValueLayout.JAVA_FLOAT, s.toFloatArray());
            } else {
                throw new IllegalArgumentException("weight " + s.name() + " has dtype " + s.dtype() + ", expected F32");
            }
            mla_weight.scale_inv(mw, scales);
        }
    }

    public MlaContext context() {
        return context;
    }

    /** The config the layer was built with (as Java read it; see {@link #nativeConfig()}). */
    public MlaConfig config() {
        return config;
    }

    /** The config as the library keeps it (mla_layer_get_config). */
    public MlaConfig nativeConfig() {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment c = mla_config.allocate(tmp);
            mla_config.struct_size(c, (int) mla_config.sizeof());
            Native.check(Mla.mla_layer_get_config(handle(), c, MemorySegment.NULL, MemorySegment.NULL),
                    "mla_layer_get_config");
            return MlaConfig.fromNative(c);
        }
    }

    public int headBegin() {
        return headBegin;
    }

    public int headEnd() {
        return headEnd;
    }

    /**
     * Runs the layer on a batch: hidden [T, hidden_size] (F32 or BF16) to out [T, hidden_size] (F32
     * or BF16), appending the new tokens to the batch's cache and advancing its sequences. Both
     * segments must be native memory. On failure nothing is written and the cache is unchanged.
     *
     * @throws IllegalArgumentException a segment too small, heap memory, an unsupported dtype, or
     *                                  a batch of another cache
     * @throws IllegalStateException    the layer, cache or batch is closed, or the batch is stale
     * @throws MlaException             CACHE_FULL, INVALID_ARGUMENT ... from libmla
     */
    public void forward(Batch batch, MemorySegment hidden, DType hiddenType, MemorySegment out, DType outType) {
        Objects.requireNonNull(batch, "batch");
        LatentCache cache = batch.cache();
        requireActivation(hiddenType, "hiddenType");
        requireActivation(outType, "outType");
        long rowElems = config.hiddenSize();
        long t = batch.numTokens();
        if (context.backend() != MlaContext.Backend.CPU) {
            throw new IllegalArgumentException("hidden and out are host MemorySegments, but the layer's context is "
                    + context.backend() + " device " + context.device() + ": pass DeviceBuffers "
                    + "(forward(Batch, DeviceBuffer, DType, DeviceBuffer, DType, MlaStream))");
        }
        Native.requireNative(hidden, "hidden", t * rowElems * hiddenType.byteSize());
        Native.requireWritable(out, "out", t * rowElems * outType.byteSize());
        if (cache.context() != context) {
            throw new IllegalArgumentException("the batch's cache belongs to another context than this layer");
        }
        cache.beginWrite(batch);
        boolean written = false;
        try {
            Native.check(Mla.mla_layer_forward(handle(), cache.handle(), batch.nativeBatch(), hidden,
                    hiddenType.mlaCode(), out, outType.mlaCode(), MemorySegment.NULL), "mla_layer_forward");
            written = true;
        } finally {
            cache.endWrite(batch, written);
        }
    }

    /**
     * Runs the layer on a batch with activations in the context's memory: hidden [T, hidden_size]
     * (F32 or BF16) to out [T, hidden_size] (F32 or BF16), appending the new tokens to the batch's
     * cache and advancing its sequences. On CUDA the work is queued on stream (null = default
     * stream) and this returns before it completes: {@link MlaStream#synchronize()} or a
     * {@link DeviceBuffer#download} on the same stream waits for it. Host-side checks (shapes,
     * block tables, cache capacity) run before anything is queued; on failure nothing is written.
     *
     * @throws IllegalArgumentException a buffer too small or of another context, an unsupported
     *                                  dtype, a stream of another context, a batch of another cache
     * @throws IllegalStateException    the layer, cache, batch, a buffer or the stream is closed
     * @throws MlaException             CACHE_FULL, INVALID_ARGUMENT, DEVICE ... from libmla
     */
    public void forward(Batch batch, DeviceBuffer hidden, DType hiddenType, DeviceBuffer out, DType outType,
                        MlaStream stream) {
        Objects.requireNonNull(batch, "batch");
        LatentCache cache = batch.cache();
        requireActivation(hiddenType, "hiddenType");
        requireActivation(outType, "outType");
        long t = batch.numTokens();
        long rowElems = config.hiddenSize();
        MemorySegment h = DeviceBuffer.of(hidden, context, "hidden", t * rowElems * hiddenType.byteSize());
        MemorySegment o = DeviceBuffer.of(out, context, "out", t * rowElems * outType.byteSize());
        MemorySegment s = MlaStream.of(stream, context, "stream");
        if (cache.context() != context) {
            throw new IllegalArgumentException("the batch's cache belongs to another context than this layer");
        }
        cache.beginWrite(batch);
        boolean written = false;
        try {
            Native.check(Mla.mla_layer_forward(handle(), cache.handle(), batch.nativeBatch(), h,
                    hiddenType.mlaCode(), o, outType.mlaCode(), s), "mla_layer_forward");
            written = true;
        } finally {
            cache.endWrite(batch, written);
        }
    }

    /**
     * As {@link #forward(Batch, MemorySegment, DType, MemorySegment, DType)} with f32 Java arrays.
     * On a CUDA context the values go through temporary device buffers (upload, forward, download).
     */
    public float[] forward(Batch batch, float[] hidden) {
        Objects.requireNonNull(batch, "batch");
        Objects.requireNonNull(hidden, "hidden");
        long need = (long) batch.numTokens() * config.hiddenSize();
        if (hidden.length != need) {
            throw new IllegalArgumentException("hidden has " + hidden.length + " floats, the batch needs numTokens "
                    + batch.numTokens() + " x hidden_size " + config.hiddenSize() + " = " + need);
        }
        if (context.backend() != MlaContext.Backend.CPU) {
            long bytes = Math.max(4, need * 4);
            try (DeviceBuffer in = DeviceBuffer.allocate(context, bytes);
                 DeviceBuffer o = DeviceBuffer.allocate(context, bytes)) {
                if (need > 0) {
                    in.upload(hidden);
                }
                forward(batch, in, DType.F32, o, DType.F32, null);
                return o.downloadFloats((int) need);  // the default stream: waits for the forward
            }
        }
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment in = tmp.allocateFrom(ValueLayout.JAVA_FLOAT, hidden.length == 0 ? new float[1] : hidden);
            MemorySegment o = tmp.allocate(ValueLayout.JAVA_FLOAT, Math.max(1, need));
            forward(batch, in, DType.F32, o, DType.F32);
            return o.asSlice(0, need * 4).toArray(ValueLayout.JAVA_FLOAT);
        }
    }

    private static void requireActivation(DType t, String name) {
        if (t != DType.F32 && t != DType.BF16) {
            throw new IllegalArgumentException(name + " = " + t + ", expected F32 or BF16");
        }
    }

    @Override
    void afterClose() {
        context.unregister(this);
    }
}
