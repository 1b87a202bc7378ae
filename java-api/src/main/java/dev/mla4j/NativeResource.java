package dev.mla4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Consumer;

/**
 * Owner of one native handle: a shared arena whose close runs the destroy function. Passing
 * {@link #handle()} to a downcall keeps the arena alive for the call, so a concurrent close fails
 * instead of freeing memory in use.
 */
abstract sealed class NativeResource implements AutoCloseable permits MlaContext, MlaLayer, LatentCache, Attention, DeviceBuffer, MlaStream {
    private final String kind;
    private final Arena arena;
    private final MemorySegment handle;
    private final AtomicBoolean closed = new AtomicBoolean();
    private int users;  // calls between acquire and release, guarded by closed's monitor

    /** Takes ownership of raw (or of nothing, for NULL) and destroys it when closed. */
    NativeResource(String kind, Arena arena, MemorySegment raw, Consumer<MemorySegment> destroy) {
        this.kind = kind;
        this.arena = arena;
        this.handle = raw.equals(MemorySegment.NULL) ? MemorySegment.NULL : raw.reinterpret(arena, destroy);
    }

    /** The owned handle; throws IllegalStateException after close. */
    final MemorySegment handle() {
        ensureOpen();
        return handle;
    }

    /** The arena that owns this resource's native memory. */
    final Arena arena() {
        return arena;
    }

    final void ensureOpen() {
        if (closed.get()) {
            throw new IllegalStateException(kind + " is closed");
        }
    }

    /**
     * Marks this resource in use by a call that reaches its native memory through a pointer
     * inside another struct (which keeps no arena alive): close is refused until {@link #release()}.
     *
     * @throws IllegalStateException it is closed
     */
    final void acquire() {
        synchronized (closed) {
            ensureOpen();
            users++;
        }
    }

    /** Ends an {@link #acquire()}. */
    final void release() {
        synchronized (closed) {
            users--;
        }
    }

    /** Whether {@link #close()} has run. */
    public final boolean isClosed() {
        return closed.get();
    }

    /** Called before the arena is closed, once; may throw to refuse the close (state unchanged). */
    void beforeClose() {
    }

    /** Called when the close was refused after {@link #beforeClose()} passed (state unchanged). */
    void closeRefused() {
    }

    /** Called after the arena is closed, once. */
    void afterClose() {
    }

    /**
     * Frees the native resource; idempotent.
     *
     * @throws IllegalStateException another thread is inside a call that uses it (it stays open),
     *                               or, for a context, layers or caches made in it are still open
     */
    @Override
    public final void close() {
        synchronized (closed) {
            if (closed.get()) {
                return;
            }
            if (users > 0) {
                throw new IllegalStateException(kind + " is in use by another thread and cannot be closed now");
            }
            beforeClose();
            try {
                arena.close();
            } catch (IllegalStateException e) {
                closeRefused();
                throw new IllegalStateException(kind + " is in use by another thread and cannot be closed now", e);
            }
            closed.set(true);
        }
        afterClose();
    }
}
