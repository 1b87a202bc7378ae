package dev.mla4j;

import dev.mla4j.bindings.Mla;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;

/**
 * An ordered queue of work on a context's device (owns the stream made by
 * {@code mla_stream_create}): a non-blocking {@code cudaStream_t} on a CUDA context, a token
 * without effect on a CPU context (where every call is synchronous), so the same code runs on
 * both. Pass it to {@link DeviceBuffer#upload}, {@link DeviceBuffer#download} and
 * {@link MlaLayer#forward(Batch, DeviceBuffer, DType, DeviceBuffer, DType, MlaStream)}; a
 * {@code null} stream means the device's default stream.
 *
 * <p>Close a stream after the work queued on it is complete ({@link #synchronize()}); a context
 * refuses to close while streams made in it are open.
 */
public final class MlaStream extends NativeResource {
    private final MlaContext context;

    private MlaStream(MlaContext context, Arena arena, MemorySegment raw, MemorySegment contextHandle) {
        super("MlaStream", arena, raw, s -> Mla.mla_stream_destroy(contextHandle, s));
        this.context = context;
    }

    /**
     * Creates a stream on the context's device.
     *
     * @throws MlaException DEVICE or OUT_OF_MEMORY from the CUDA runtime
     */
    public static MlaStream create(MlaContext context) {
        Objects.requireNonNull(context, "context");
        return context.createChild(arena -> {  // the context refuses to close meanwhile
            try (Arena tmp = Arena.ofConfined()) {
                MemorySegment ctx = context.handle();
                MemorySegment out = tmp.allocate(ValueLayout.ADDRESS);
                Native.check(Mla.mla_stream_create(ctx, out), "mla_stream_create");
                return new MlaStream(context, arena, out.get(ValueLayout.ADDRESS, 0), ctx);
            }
        });
    }

    public MlaContext context() {
        return context;
    }

    /**
     * Waits until the work queued on this stream is complete.
     *
     * @throws MlaException DEVICE: an earlier asynchronous failure on the stream
     */
    public void synchronize() {
        Native.check(Mla.mla_stream_synchronize(context.handle(), handle()), "mla_stream_synchronize");
    }

    /**
     * The native stream for a call in context, or NULL for a null stream. Passing it to the
     * downcall keeps the stream alive for the call (a concurrent close fails).
     *
     * @throws IllegalStateException    the stream is closed (the message names the argument)
     * @throws IllegalArgumentException the stream belongs to another context
     */
    static MemorySegment of(MlaStream stream, MlaContext context, String name) {
        if (stream == null) {
            return MemorySegment.NULL;
        }
        if (stream.isClosed()) {
            throw new IllegalStateException(name + " is a closed MlaStream");
        }
        if (stream.context != context) {
            throw new IllegalArgumentException(name + " belongs to another context (" + stream.context.describe()
                    + ") than the call's (" + context.describe() + ")");
        }
        return stream.handle();
    }

    @Override
    void afterClose() {
        context.unregister(this);
    }
}
