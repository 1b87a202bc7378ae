package dev.mla4j;

import dev.mla4j.bindings.Mla;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * A byte range of a context's memory (owns a native {@code mla_buffer}): device memory of the
 * context's GPU for a CUDA context, host memory for a CPU context. Either allocated by libmla
 * ({@link #allocate}, zero-filled, freed on close) or wrapped from a pointer owned by someone
 * else ({@link #wrap}, e.g. a tensor of another CUDA library; close releases the handle only).
 *
 * <p>The memory is never exposed as a host-readable {@link MemorySegment}: data moves through
 * {@link #upload} and {@link #download}, and layers take the buffer itself. {@link #address()}
 * gives the raw pointer for other native libraries. Thread-safe; a context refuses to close while
 * buffers made in it are open, and a buffer refuses to close while a call uses it.
 */
public final class DeviceBuffer extends NativeResource {
    private final MlaContext context;
    private final long byteSize;
    private final long address;
    private final boolean owned;
    private final MemorySegment data;  // zero-length, tied to this buffer's arena: for downcalls only

    private DeviceBuffer(MlaContext context, Arena arena, MemorySegment raw, long address, long byteSize,
                         boolean owned) {
        super("DeviceBuffer", arena, raw, Mla::mla_buffer_destroy);
        this.context = context;
        this.address = address;
        this.byteSize = byteSize;
        this.owned = owned;
        this.data = MemorySegment.ofAddress(address).reinterpret(arena, null);
    }

    /**
     * Allocates byteSize bytes (zero-filled) of the context's memory.
     *
     * @throws IllegalArgumentException byteSize &lt; 1
     * @throws MlaException             OUT_OF_MEMORY, DEVICE
     */
    public static DeviceBuffer allocate(MlaContext context, long byteSize) {
        Objects.requireNonNull(context, "context");
        if (byteSize < 1) {
            throw new IllegalArgumentException("byteSize = " + byteSize + " must be >= 1");
        }
        return make(context, 0, byteSize, true);
    }

    /**
     * Wraps byteSize bytes of memory at address that the caller owns and keeps valid until this
     * buffer is closed (closing never frees it). On a CUDA context libmla checks that address is
     * device memory of the context's device; on a CPU context it must be host memory.
     *
     * @throws IllegalArgumentException address is 0 or byteSize &lt; 1
     * @throws MlaException             INVALID_ARGUMENT naming {@code data}: host memory or another
     *                                  device's memory given to a CUDA context
     */
    public static DeviceBuffer wrap(MlaContext context, long address, long byteSize) {
        Objects.requireNonNull(context, "context");
        if (address == 0) {
            throw new IllegalArgumentException("address is 0 (NULL)");
        }
        if (byteSize < 1) {
            throw new IllegalArgumentException("byteSize = " + byteSize + " must be >= 1");
        }
        return make(context, address, byteSize, false);
    }

    private static DeviceBuffer make(MlaContext context, long address, long byteSize, boolean owned) {
        return context.createChild(arena -> {  // the context refuses to close meanwhile
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment out = tmp.allocate(ValueLayout.ADDRESS);
                if (owned) {
                    Native.check(Mla.mla_buffer_create(context.handle(), byteSize, out), "mla_buffer_create");
                } else {
                    Native.check(Mla.mla_buffer_wrap(context.handle(), MemorySegment.ofAddress(address), byteSize, out),
                            "mla_buffer_wrap");
                }
                MemorySegment raw = out.get(ValueLayout.ADDRESS, 0);
                MemorySegment ptr = tmp.allocate(ValueLayout.ADDRESS);
                int st = Mla.mla_buffer_data(raw, ptr, MemorySegment.NULL);
                if (st != 0) {
                    String msg = Native.lastError();
                    Mla.mla_buffer_destroy(raw);
                    throw new MlaException(st, "mla_buffer_data", msg);
                }
                return new DeviceBuffer(context, arena, raw, ptr.get(ValueLayout.ADDRESS, 0).address(), byteSize, owned);
            }
        });
    }

    public MlaContext context() {
        return context;
    }

    /** Size in bytes. */
    public long byteSize() {
        return byteSize;
    }

    /** Whether closing frees the memory (allocated) or only the handle (wrapped). */
    public boolean isOwned() {
        return owned;
    }

    /**
     * The raw pointer (device memory on CUDA: never read it on the host), for other native
     * libraries. Valid while this buffer is open.
     */
    public long address() {
        ensureOpen();
        return address;
    }

    /**
     * Copies src (native host memory) into this buffer at byte offset, ordered after the work
     * queued on stream (null = default stream). src may be reused or freed as soon as this
     * returns. On CUDA the call does not wait for the queued work when src is ordinary (pageable)
     * memory, as Java's arenas allocate; from page-locked memory it waits until the copy is done.
     *
     * @throws IllegalArgumentException src is heap memory, or the range exceeds the buffer
     * @throws IllegalStateException    this buffer or the stream is closed
     */
    public void upload(long offset, MemorySegment src, MlaStream stream) {
        Native.requireNative(src, "src", 0);
        checkRange(offset, src.byteSize());
        Native.check(Mla.mla_buffer_upload(handle(), offset, src, src.byteSize(),
                MlaStream.of(stream, context, "stream")), "mla_buffer_upload");
    }

    /** {@link #upload(long, MemorySegment, MlaStream)} at offset 0 on the default stream. */
    public void upload(MemorySegment src) {
        upload(0, src, null);
    }

    /** Copies values (f32) into this buffer at byte offset 0. */
    public void upload(float[] values) {
        Objects.requireNonNull(values, "values");
        try (Arena tmp = Arena.ofConfined()) {
            upload(0, tmp.allocateFrom(ValueLayout.JAVA_FLOAT, values), null);
        }
    }

    /**
     * Copies dst.byteSize() bytes of this buffer from byte offset into dst (native host memory),
     * after the work queued on stream (null = default stream): waits for that work.
     *
     * @throws IllegalArgumentException dst is heap memory or read-only, or the range exceeds the buffer
     * @throws IllegalStateException    this buffer or the stream is closed
     */
    public void download(long offset, MemorySegment dst, MlaStream stream) {
        Native.requireWritable(dst, "dst", 0);
        checkRange(offset, dst.byteSize());
        Native.check(Mla.mla_buffer_download(handle(), offset, dst, dst.byteSize(),
                MlaStream.of(stream, context, "stream")), "mla_buffer_download");
    }

    /** {@link #download(long, MemorySegment, MlaStream)} at offset 0 on the default stream. */
    public void download(MemorySegment dst) {
        download(0, dst, null);
    }

    /** The first count f32 values of this buffer. */
    public float[] downloadFloats(int count) {
        if (count < 0) {
            throw new IllegalArgumentException("count = " + count + " must be >= 0");
        }
        if (count == 0) {
            return new float[0];
        }
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment s = tmp.allocate(ValueLayout.JAVA_FLOAT, count);
            download(0, s, null);
            return s.toArray(ValueLayout.JAVA_FLOAT);
        }
    }

    private void checkRange(long offset, long bytes) {
        if (offset < 0 || offset > byteSize || bytes > byteSize - offset) {
            throw new IllegalArgumentException("offset = " + offset + ", bytes = " + bytes + ": the range exceeds the "
                    + byteSize + "-byte buffer");
        }
    }

    /**
     * The pointer to pass to a downcall in context as argument name, requiring at least minBytes;
     * passing it keeps this buffer open for the call.
     *
     * @throws IllegalArgumentException null, too small, or a buffer of another context
     * @throws IllegalStateException    closed
     */
    static MemorySegment of(DeviceBuffer buffer, MlaContext context, String name, long minBytes) {
        if (buffer == null) {
            throw new IllegalArgumentException(name + " is null");
        }
        if (buffer.isClosed()) {
            throw new IllegalStateException(name + " is a closed DeviceBuffer");
        }
        if (buffer.context != context) {
            throw new IllegalArgumentException(name + " is memory of another context (" + buffer.context.describe()
                    + ") than the call's (" + context.describe() + ")");
        }
        if (buffer.byteSize < minBytes) {
            throw new IllegalArgumentException(name + " has " + buffer.byteSize + " bytes, needs at least " + minBytes);
        }
        buffer.ensureOpen();
        return buffer.data;
    }

    @Override
    void afterClose() {
        context.unregister(this);
    }

    @Override
    public String toString() {
        return "DeviceBuffer[" + byteSize + " bytes, " + (owned ? "owned" : "wrapped") + ", " + context.backend() + "]";
    }
}
