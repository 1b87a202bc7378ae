package dev.mla4j;

import dev.mla4j.bindings.Mla;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** Status checking and small memory helpers shared by the API classes. */
final class Native {
    private Native() {
    }

    /**
     * Turns a libmla status into an exception. Must run on the thread that made the call, before
     * any other libmla call (mla_last_error() is per thread and cleared by every call).
     */
    static void check(int status, String function) {
        if (status != 0) {
            throw new MlaException(status, function, lastError());
        }
    }

    /** mla_last_error() of the calling thread. */
    static String lastError() {
        return string(Mla.mla_last_error());
    }

    /** A NUL-terminated string returned by libmla (static or thread-local storage). */
    static String string(MemorySegment cString) {
        if (cString.equals(MemorySegment.NULL)) {
            return "";
        }
        return cString.reinterpret(Long.MAX_VALUE).getString(0);
    }

    /** Copies a Java int array into native memory of the given arena. */
    static MemorySegment ints(Arena arena, int[] values) {
        return arena.allocateFrom(ValueLayout.JAVA_INT, values);
    }

    /** Requires a segment libmla can be given: native memory of at least the given size. */
    static void requireNative(MemorySegment segment, String name, long minBytes) {
        if (segment == null) {
            throw new IllegalArgumentException(name + " is null");
        }
        if (!segment.isNative()) {
            throw new IllegalArgumentException(name + " is a heap segment; libmla needs native memory "
                    + "(allocate it from an Arena, or use the float[] overload)");
        }
        if (segment.byteSize() < minBytes) {
            throw new IllegalArgumentException(name + " has " + segment.byteSize() + " bytes, needs at least "
                    + minBytes);
        }
    }

    /** Requires a writable native segment of at least the given size. */
    static void requireWritable(MemorySegment segment, String name, long minBytes) {
        requireNative(segment, name, minBytes);
        if (segment.isReadOnly()) {
            throw new IllegalArgumentException(name + " is read-only");
        }
    }
}
