package dev.mla4j;

/**
 * A libmla call failed, or a cache ran out of blocks. Carries the library's status and, for
 * native failures, the message of {@code mla_last_error()}, which names the offending argument
 * and its value. Nothing the failed call was given has been written.
 */
public class MlaException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The status codes of mla.h; values are pinned by the C ABI. */
    public enum Status {
        OK(0),
        INVALID_ARGUMENT(1),
        UNSUPPORTED(2),
        OUT_OF_MEMORY(3),
        CACHE_FULL(4),
        BUFFER_TOO_SMALL(5),
        DEVICE(6),
        INTERNAL(7),
        /**
         * A layer's creation was cancelled by its progress listener ({@link MlaLayer.Progress}
         * returned false); nothing was created.
         */
        CANCELLED(8),
        /** A value this version of the Java API does not know (a newer library). */
        UNKNOWN(-1);

        private final int code;

        Status(int code) {
            this.code = code;
        }

        /** The C value of this status; -1 for {@link #UNKNOWN}. */
        public int code() {
            return code;
        }

        /** The status with the given C value, or {@link #UNKNOWN}. */
        public static Status of(int code) {
            for (Status s : values()) {
                if (s.code == code && s != UNKNOWN) {
                    return s;
                }
            }
            return UNKNOWN;
        }
    }

    private final Status status;
    private final int code;
    private final String function;
    private final String nativeMessage;

    MlaException(int code, String function, String nativeMessage) {
        super(function + " failed: " + Status.of(code).name() + (Status.of(code) == Status.UNKNOWN ? " (" + code + ")" : "")
                + (nativeMessage.isEmpty() ? "" : ": " + nativeMessage));
        this.status = Status.of(code);
        this.code = code;
        this.function = function;
        this.nativeMessage = nativeMessage;
    }

    /** A failure detected in Java (e.g. the block allocator of a {@link LatentCache}). */
    MlaException(Status status, String message) {
        super(message);
        this.status = status;
        this.code = status.code();
        this.function = "";
        this.nativeMessage = "";
    }

    /** The status of the failure. */
    public Status status() {
        return status;
    }

    /** The raw C status value (differs from {@code status().code()} only for UNKNOWN). */
    public int code() {
        return code;
    }

    /** The C function that failed, e.g. "mla_layer_create"; "" for failures detected in Java. */
    public String function() {
        return function;
    }

    /** mla_last_error() of the failed call; "" for failures detected in Java. */
    public String nativeMessage() {
        return nativeMessage;
    }
}
