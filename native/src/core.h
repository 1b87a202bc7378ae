// Shared core helpers: error construction, scalar conversions, config validation, RoPE/YaRN and
// weight preparation. Used by api.cpp and by both backends; not part of the ABI.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "backend.h"

namespace mla {

// Builds "fn: <streamed parts>" and throws Error(status, ...).
template <class... Args>
[[noreturn]] void fail(mla_status status, const char* fn, const Args&... parts) {
    std::ostringstream os;
    os.precision(17);
    os << fn << ": ";
    (os << ... << parts);
    throw Error(status, os.str());
}

template <class... Args>
[[noreturn]] void invalid(const char* fn, const Args&... parts) {
    fail(MLA_ERROR_INVALID_ARGUMENT, fn, parts...);
}

// ---- scalar conversions -----------------------------------------------------------------------

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// f32_to_bf16 (round to nearest even) is in backend.h: the backends use it too.

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: man * 2^-24
            float v = float(man) * 5.9604644775390625e-08f;
            std::memcpy(&u, &v, 4);
            u |= sign;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// FP8 e4m3fn: bias 7, no infinities, S.1111.111 is NaN.
inline float fp8_e4m3_to_f32(uint8_t v) {
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xfu, man = v & 7u;
    float r;
    if (exp == 15 && man == 7) return std::nanf("");
    if (exp == 0)
        r = std::ldexp(float(man) / 8.0f, -6);
    else
        r = std::ldexp(1.0f + float(man) / 8.0f, int(exp) - 7);
    return sign ? -r : r;
}

inline bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// ---- config -----------------------------------------------------------------------------------

// Throws INVALID_ARGUMENT naming the first bad field ("fn: config.kv_lora_rank = 0, must be >= 1").
void validate_config(const char* fn, const mla_config* config);

// Softmax scale of a valid config: softmax_scale if non-zero, else derived as transformers.
double config_softmax_scale(const mla_config& c);

// RoPE parameters of a valid config (inv_freq in f32 as torch computes it).
RopeParams make_rope_params(const mla_config& c);

// cos/sin [dim] for one position, half-split layout, attention factor included.
void rope_cos_sin(const RopeParams& rope, int32_t position, float* cos_out, float* sin_out);

// Rotates one raw RoPE vector x [dim] (pair layout per rope.interleave) into out [dim], half-split.
// x and out must not overlap.
inline void rope_rotate(const RopeParams& rope, const float* cos_t, const float* sin_t,
                        const float* x, float* out) {
    const int half = rope.dim / 2;
    for (int i = 0; i < half; ++i) {
        float a = rope.interleave ? x[2 * i] : x[i];
        float b = rope.interleave ? x[2 * i + 1] : x[i + half];
        out[i] = a * cos_t[i] - b * sin_t[i];
        out[i + half] = b * cos_t[i + half] + a * sin_t[i + half];
    }
}

LayerSpec make_layer_spec(const mla_config& c, int32_t h0, int32_t h1);

// ---- weights ----------------------------------------------------------------------------------

// The prepared weights of a layer read straight from the caller's tensors: read() converts each
// row range on demand (any supported dtype, FP8 block scales, the head slice, the W_UK transpose
// and W_UV split of kv_b_proj), so nothing is copied up front. Keeps the caller's pointers: valid
// while the mla_layer_weights' tensors are (the duration of mla_layer_create).
class StreamedWeights final : public PreparedWeights {
public:
    // Validates every weight the config uses (presence, dtype, shape, scales) for heads [h0, h1).
    // Throws INVALID_ARGUMENT naming the weight and field.
    StreamedWeights(const char* fn, const mla_config& c, const mla_layer_weights& w, int32_t h0,
                    int32_t h1);

    void read(Tensor t, int64_t r0, int64_t r1, DType as, void* dst) const override;

private:
    mla_layer_weights w_;
    int64_t h0_ = 0;
};

}  // namespace mla
