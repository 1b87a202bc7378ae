package dev.mla4j;

import dev.mla4j.bindings.Mla;
import dev.mla4j.bindings.mla_context_options;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Set;
import java.util.function.Function;
import java.util.concurrent.ConcurrentHashMap;

/**
 * A libmla backend (the CPU with its worker threads, or one CUDA device) and its resources. Thread-safe: layers,
 * caches and calls may use one context from several threads.
 *
 * <p>Closing a context while layers, caches or attention workspaces made in it are open throws
 * {@link IllegalStateException} and leaves everything open: close those first (try-with-resources
 * does so in reverse order).
 */
public final class MlaContext extends NativeResource {
    /** mla_backend. */
    public enum Backend {
        CPU(0), CUDA(1);

        final int code;

        Backend(int code) {
            this.code = code;
        }
    }

    /** mla_simd: the CPU instruction set; AUTO picks the best the CPU has. */
    public enum Simd {
        AUTO(0), SCALAR(1), AVX2(2), AVX512(3);

        final int code;

        Simd(int code) {
            this.code = code;
        }
    }

    private final Set<NativeResource> children = ConcurrentHashMap.newKeySet();
    private final Object childLock = new Object();
    private int pendingChildren;  // creations between beginChild and endChild, guarded by childLock
    private boolean closing;      // beforeClose passed, guarded by childLock
    private final Backend backend;
    private final int device;

    private MlaContext(Arena arena, MemorySegment raw, Backend backend, int device) {
        super("MlaContext", arena, raw, Mla::mla_context_destroy);
        this.backend = backend;
        this.device = backend == Backend.CUDA ? device : -1;
    }

    /** A CPU context with one worker per online core and the best SIMD level. */
    public static MlaContext cpu() {
        return create(Backend.CPU, 0, 0, Simd.AUTO);
    }

    /** A CPU context with the given number of worker threads (0 = one per online core). */
    public static MlaContext cpu(int numThreads) {
        return create(Backend.CPU, 0, numThreads, Simd.AUTO);
    }

    /**
     * A context on CUDA device {@code device}. Its layers keep their weights in device memory;
     * activations cross as {@link DeviceBuffer}s.
     *
     * @throws IllegalArgumentException device &lt; 0
     * @throws MlaException             DEVICE (no driver, no such GPU; the message says which),
     *                                  UNSUPPORTED (libmla built without CUDA)
     */
    public static MlaContext cuda(int device) {
        if (device < 0) {
            throw new IllegalArgumentException("device = " + device + " must be >= 0");
        }
        return create(Backend.CUDA, device, 0, Simd.AUTO);
    }

    /**
     * A context on the backend {@link NativeLibrary#defaultBackend()} chose (CUDA device 0 when a
     * CUDA driver and device are present, else the CPU; the choice and its reason are logged).
     */
    public static MlaContext auto() {
        NativeLibrary.BackendChoice choice = NativeLibrary.defaultBackend();
        return choice.backend() == Backend.CUDA ? cuda(0) : cpu();
    }

    /**
     * Creates a context.
     *
     * @param device     CUDA device ordinal; ignored by the CPU backend
     * @param numThreads CPU worker threads, 0 = one per online core
     * @throws MlaException UNSUPPORTED (backend not built in, SIMD level missing), DEVICE, INVALID_ARGUMENT
     */
    public static MlaContext create(Backend backend, int device, int numThreads, Simd simd) {
        NativeLibrary.load();
        if (numThreads < 0) {
            throw new IllegalArgumentException("numThreads = " + numThreads + " must be >= 0");
        }
        Arena arena = Arena.ofShared();
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment opts = mla_context_options.allocate(tmp);
            Native.check(Mla.mla_context_options_init(opts), "mla_context_options_init");
            mla_context_options.backend(opts, backend.code);
            mla_context_options.device(opts, device);
            mla_context_options.num_threads(opts, numThreads);
            mla_context_options.simd(opts, simd.code);
            MemorySegment out = tmp.allocate(ValueLayout.ADDRESS);
            Native.check(Mla.mla_context_create(opts, out), "mla_context_create");
            return new MlaContext(arena, out.get(ValueLayout.ADDRESS, 0), backend, device);
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    /** The backend of this context. */
    public Backend backend() {
        ensureOpen();
        return backend;
    }

    /** The CUDA device ordinal of a CUDA context, -1 for a CPU context. */
    public int device() {
        ensureOpen();
        return device;
    }

    /**
     * Memory figures for leak checks (mla_context_memory_info).
     *
     * @param usedByLibrary bytes of caches and owned device buffers open in this context (layers'
     *                      weights not counted)
     * @param free          free bytes of the device (CUDA: all processes) or available host memory (CPU)
     * @param total         total bytes of the device or of host memory
     */
    public record MemoryInfo(long usedByLibrary, long free, long total) {
    }

    /** The context's current {@link MemoryInfo}. */
    public MemoryInfo memoryInfo() {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment v = tmp.allocate(ValueLayout.JAVA_LONG, 3);
            Native.check(Mla.mla_context_memory_info(handle(), v, v.asSlice(8), v.asSlice(16)),
                    "mla_context_memory_info");
            return new MemoryInfo(v.getAtIndex(ValueLayout.JAVA_LONG, 0), v.getAtIndex(ValueLayout.JAVA_LONG, 1),
                    v.getAtIndex(ValueLayout.JAVA_LONG, 2));
        }
    }

    /** A one-line description, e.g. "cpu avx512 threads=2". */
    public String describe() {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment buf = tmp.allocate(256);
            Native.check(Mla.mla_context_describe(handle(), buf, buf.byteSize()), "mla_context_describe");
            return buf.getString(0);
        }
    }

    /**
     * Announces the creation of a layer, cache or workspace in this context: from here until
     * {@link #endChild} the context refuses to close, so it cannot be destroyed between the native
     * create call and the child's registration.
     *
     * @throws IllegalStateException the context is closed or closing
     */
    private void beginChild() {
        synchronized (childLock) {
            if (closing) {
                throw new IllegalStateException("MlaContext is closed");
            }
            ensureOpen();
            pendingChildren++;
        }
    }

    /**
     * Creates a child resource (layer, cache, attention workspace, buffer, stream) that owns a new
     * shared arena: the context refuses to close until the child is registered, and the arena is
     * closed when the creation fails.
     */
    <T extends NativeResource> T createChild(Function<Arena, T> create) {
        beginChild();
        Arena arena = Arena.ofShared();
        T made = null;
        try {
            made = create.apply(arena);
            return made;
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        } finally {
            endChild(made);
        }
    }

    /** Ends a {@link #beginChild}: registers child, or nothing (null) when the creation failed. */
    private void endChild(NativeResource child) {
        synchronized (childLock) {
            pendingChildren--;
            if (child != null) {
                children.add(child);
            }
        }
    }

    void unregister(NativeResource child) {
        children.remove(child);
    }

    /** Number of open layers, caches, attention workspaces, device buffers and streams made in this context. */
    public int openChildren() {
        return children.size();
    }

    @Override
    void beforeClose() {
        synchronized (childLock) {
            if (!children.isEmpty() || pendingChildren > 0) {
                throw new IllegalStateException("MlaContext still has " + (children.size() + pendingChildren)
                        + " open layers/caches/workspaces/buffers/streams; close them before the context");
            }
            closing = true;
        }
    }

    @Override
    void closeRefused() {
        synchronized (childLock) {
            closing = false;
        }
    }
}
