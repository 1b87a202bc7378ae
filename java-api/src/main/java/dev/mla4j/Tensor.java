package dev.mla4j;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Objects;

/**
 * A typed, read-only view of a tensor's bytes: row-major, little-endian (safetensors' layout).
 * The view does not own its memory: it is valid while the {@link Safetensors} file (or the arena
 * of the segment given to {@link #of}) is open; reading it afterwards throws
 * {@link IllegalStateException}.
 */
public final class Tensor {
    static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort I16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt I32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong I64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfDouble F64 = ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final String name;
    private final DType dtype;
    private final long[] shape;
    private final long numel;
    private final MemorySegment data;

    Tensor(String name, DType dtype, long[] shape, long numel, MemorySegment data) {
        this.name = name;
        this.dtype = dtype;
        this.shape = shape;
        this.numel = numel;
        this.data = data.asReadOnly();
    }

    /**
     * Wraps memory the caller owns as a tensor (e.g. weights made in memory).
     *
     * @throws IllegalArgumentException a negative dimension, an element count that overflows, or
     *                                  data.byteSize() different from numel * dtype size
     */
    public static Tensor of(String name, DType dtype, long[] shape, MemorySegment data) {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(dtype, "dtype");
        Objects.requireNonNull(shape, "shape");
        Objects.requireNonNull(data, "data");
        long n = 1;
        for (int i = 0; i < shape.length; i++) {
            if (shape[i] < 0) {
                throw new IllegalArgumentException("tensor " + name + ": shape[" + i + "] = " + shape[i] + " is negative");
            }
            try {
                n = Math.multiplyExact(n, shape[i]);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("tensor " + name + ": shape " + Arrays.toString(shape) + " overflows");
            }
        }
        long bytes;
        try {
            bytes = Math.multiplyExact(n, dtype.byteSize());
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("tensor " + name + ": shape " + Arrays.toString(shape) + " overflows");
        }
        if (bytes != data.byteSize()) {
            throw new IllegalArgumentException("tensor " + name + ": " + dtype + " " + Arrays.toString(shape) + " needs "
                    + bytes + " bytes, data has " + data.byteSize());
        }
        return new Tensor(name, dtype, shape.clone(), n, data);
    }

    public String name() {
        return name;
    }

    public DType dtype() {
        return dtype;
    }

    /** A copy of the shape. */
    public long[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    /** Size of dimension i. */
    public long dim(int i) {
        return shape[i];
    }

    /** Number of elements. */
    public long numel() {
        return numel;
    }

    /** The bytes, read-only, not owned. */
    public MemorySegment data() {
        return data;
    }

    /** Element i (flat, row-major) as float; for F32, BF16, F16, F8_E4M3, F64 and integer types. */
    public float getFloat(long i) {
        Objects.checkIndex(i, numel);
        return switch (dtype) {
            case F32 -> data.getAtIndex(F32, i);
            case BF16 -> DType.bf16ToFloat(data.getAtIndex(I16, i));
            case F16 -> Float.float16ToFloat(data.getAtIndex(I16, i));
            case F8_E4M3 -> DType.e4m3ToFloat(data.get(ValueLayout.JAVA_BYTE, i));
            case F64 -> (float) data.getAtIndex(F64, i);
            case I64, U64 -> data.getAtIndex(I64, i);
            case I32, U32 -> data.getAtIndex(I32, i);
            case I16 -> data.getAtIndex(I16, i);
            case U16 -> data.getAtIndex(I16, i) & 0xffff;
            case I8 -> data.get(ValueLayout.JAVA_BYTE, i);
            case U8, BOOL -> data.get(ValueLayout.JAVA_BYTE, i) & 0xff;
            case F8_E5M2 -> Float.float16ToFloat((short) ((data.get(ValueLayout.JAVA_BYTE, i) & 0xff) << 8));
        };
    }

    /** All elements as floats (see {@link #getFloat}). */
    public float[] toFloatArray() {
        if (numel > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException("tensor " + name + " has " + numel + " elements, too many for a Java array");
        }
        float[] out = new float[(int) numel];
        if (dtype == DType.F32) {
            MemorySegment.copy(data, F32, 0, out, 0, out.length);
            return out;
        }
        for (int i = 0; i < out.length; i++) {
            out[i] = getFloat(i);
        }
        return out;
    }

    /** All elements of an integer tensor (I64, I32, I16, I8, U8 ...) as longs. */
    public long[] toLongArray() {
        if (numel > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException("tensor " + name + " has " + numel + " elements, too many for a Java array");
        }
        long[] out = new long[(int) numel];
        for (int i = 0; i < out.length; i++) {
            out[i] = switch (dtype) {
                case I64, U64 -> data.getAtIndex(I64, i);
                case I32 -> data.getAtIndex(I32, i);
                case U32 -> data.getAtIndex(I32, i) & 0xffffffffL;
                case I16 -> data.getAtIndex(I16, i);
                case U16 -> data.getAtIndex(I16, i) & 0xffff;
                case I8 -> data.get(ValueLayout.JAVA_BYTE, i);
                case U8, BOOL -> data.get(ValueLayout.JAVA_BYTE, i) & 0xff;
                default -> throw new IllegalStateException("tensor " + name + " is " + dtype + ", not an integer type");
            };
        }
        return out;
    }

    @Override
    public String toString() {
        return name + " " + dtype + Arrays.toString(shape);
    }
}
