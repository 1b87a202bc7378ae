// Portable scalar kernels (one lane); the reference path and the fallback on CPUs without AVX2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"

namespace {

inline float bf16_bits_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

struct V {
    using R = float;
    static constexpr int W = 1;
    static constexpr int kNR4 = 2;
    static constexpr int kNV = 2;
    static constexpr const char* kName = "scalar";
    static R zero() { return 0.0f; }
    static R set1(float v) { return v; }
    static R load(const float* p) { return *p; }
    static R loadw(const float* p) { return *p; }
    static R loadw(const uint16_t* p) { return bf16_bits_to_f32(*p); }
    static void store(float* p, R v) { *p = v; }
    static R fma(R a, R b, R c) { return a * b + c; }
    static R add(R a, R b) { return a + b; }
    static R sub(R a, R b) { return a - b; }
    static R mul(R a, R b) { return a * b; }
    static float hsum(R v) { return v; }
    static R exp(R x) { return std::exp(x); }
};

#include "cpu/kernels_impl.h"

}  // namespace

namespace mla::cpu {
const Kernels& kernels_scalar() { return kTable; }
}  // namespace mla::cpu
