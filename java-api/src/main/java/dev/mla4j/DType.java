package dev.mla4j;

import java.util.Optional;

/**
 * Element types of safetensors files. Those libmla accepts have a non-negative {@link #mlaCode()}
 * (mla_dtype): F32, BF16, F16 and F8_E4M3 (weights only, with block scales).
 */
public enum DType {
    BOOL(1, -1),
    U8(1, -1),
    I8(1, -1),
    U16(2, -1),
    I16(2, -1),
    F16(2, 2),
    BF16(2, 1),
    U32(4, -1),
    I32(4, -1),
    F32(4, 0),
    U64(8, -1),
    I64(8, -1),
    F64(8, -1),
    /** FP8 e4m3 "fn": no infinities, 0x7f/0xff are NaN. */
    F8_E4M3(1, 3),
    F8_E5M2(1, -1);

    private final int byteSize;
    private final int mlaCode;

    DType(int byteSize, int mlaCode) {
        this.byteSize = byteSize;
        this.mlaCode = mlaCode;
    }

    /** Bytes per element. */
    public int byteSize() {
        return byteSize;
    }

    /** The mla_dtype value, or -1 when libmla does not take this type. */
    public int mlaCode() {
        return mlaCode;
    }

    /** The type for a safetensors "dtype" string, if it is one this API knows. */
    public static Optional<DType> ofSafetensors(String name) {
        for (DType t : values()) {
            if (t.name().equals(name)) {
                return Optional.of(t);
            }
        }
        return Optional.empty();
    }

    /** bf16 bits to float (exact). */
    public static float bf16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }

    /** float to bf16 bits, round to nearest even; NaN stays NaN. */
    public static short floatToBf16(float value) {
        int bits = Float.floatToRawIntBits(value);
        if ((bits & 0x7fffffff) > 0x7f800000) {
            return (short) ((bits >>> 16) | 0x40);
        }
        int rounded = bits + 0x7fff + ((bits >>> 16) & 1);
        return (short) (rounded >>> 16);
    }

    /** FP8 e4m3fn bits to float (exact): bias 7, subnormals, 0x7f/0xff NaN, no infinities. */
    public static float e4m3ToFloat(byte bits) {
        int b = bits & 0xff;
        int sign = b >>> 7;
        int exp = (b >>> 3) & 0xf;
        int mant = b & 0x7;
        float magnitude;
        if (exp == 0xf && mant == 0x7) {
            return Float.NaN;
        } else if (exp == 0) {
            magnitude = mant * 0x1p-9f; // mant / 8 * 2^-6
        } else {
            magnitude = (1.0f + mant / 8.0f) * Math.scalb(1.0f, exp - 7);
        }
        return sign == 1 ? -magnitude : magnitude;
    }
}
