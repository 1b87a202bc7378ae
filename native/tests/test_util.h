// Shared helpers of the C-level suites: owning handles, number formats (bf16, f16, FP8 e4m3),
// seeded random data, CPU feature checks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mla.h"
#include "mla_test.h"

namespace mla_test {

struct ContextDel { void operator()(mla_context* p) const { mla_context_destroy(p); } };
struct CacheDel { void operator()(mla_cache* p) const { mla_cache_destroy(p); } };
struct LayerDel { void operator()(mla_layer* p) const { mla_layer_destroy(p); } };
using ContextPtr = std::unique_ptr<mla_context, ContextDel>;
using CachePtr = std::unique_ptr<mla_cache, CacheDel>;
using LayerPtr = std::unique_ptr<mla_layer, LayerDel>;

// Tests run on 2 worker threads unless they say otherwise (the CI machine has 2 cores).
inline ContextPtr make_context(int32_t simd = MLA_SIMD_AUTO, int32_t threads = 2) {
    mla_context_options o;
    REQUIRE_OK(mla_context_options_init(&o));
    o.backend = MLA_BACKEND_CPU;
    o.num_threads = threads;
    o.simd = simd;
    mla_context* c = nullptr;
    REQUIRE_OK(mla_context_create(&o, &c));
    REQUIRE(c != nullptr);
    return ContextPtr(c);
}

inline CachePtr make_cache(mla_context* ctx, int32_t dtype, int32_t block_size, int32_t num_blocks, int32_t dc,
                           int32_t dr) {
    mla_cache_options o;
    REQUIRE_OK(mla_cache_options_init(&o));
    o.dtype = dtype;
    o.block_size = block_size;
    o.num_blocks = num_blocks;
    o.kv_lora_rank = dc;
    o.rope_dim = dr;
    mla_cache* c = nullptr;
    REQUIRE_OK(mla_cache_create(ctx, &o, &c));
    REQUIRE(c != nullptr);
    return CachePtr(c);
}

inline LayerPtr make_layer(mla_context* ctx, const mla_config& cfg, const mla_layer_weights& w, int32_t head_begin = 0,
                           int32_t head_end = 0) {
    mla_layer_options o;
    REQUIRE_OK(mla_layer_options_init(&o));
    o.head_begin = head_begin;
    o.head_end = head_end;
    mla_layer* l = nullptr;
    REQUIRE_OK(mla_layer_create(ctx, &cfg, &w, &o, &l));
    REQUIRE(l != nullptr);
    return LayerPtr(l);
}

// ---- number formats ----
inline float bf16_to_f32(uint16_t v) {
    uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_bf16(float v) {  // round to nearest even
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
inline float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        float f = std::ldexp(float(man), -24);
        return sign ? -f : f;
    }
    uint32_t u = exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112u) << 23) | (man << 13));
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_f16(float v) {  // round to nearest even, overflow to inf
    uint32_t x;
    std::memcpy(&x, &v, 4);
    uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));
    if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
    if (x < 0x38800000u) {  // below the smallest normal f16: units of 2^-24
        float a;
        std::memcpy(&a, &x, 4);
        return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));
    }
    uint32_t h = (((x >> 23) - 112u) << 10) | ((x & 0x7fffffu) >> 13);
    uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return uint16_t(sign | h);
}

// FP8 e4m3 (fn): bias 7, 3 mantissa bits, max 448, 0x7f / 0xff NaN, no infinities.
inline float fp8e4m3_to_f32(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 0xf, m = b & 7;
    float v;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) v = std::ldexp(float(m), -9);
    else v = std::ldexp(1.0f + float(m) / 8.0f, e - 7);
    return s ? -v : v;
}
// Nearest e4m3 value (ties to even code), saturating at +-448.
inline uint8_t f32_to_fp8e4m3(float x) {
    static const std::vector<float> pos = [] {
        std::vector<float> t(127);
        for (int c = 0; c < 127; ++c) t[size_t(c)] = fp8e4m3_to_f32(uint8_t(c));
        return t;
    }();
    uint8_t sign = std::signbit(x) ? 0x80 : 0;
    float a = std::fabs(x);
    if (a >= 448.0f) return uint8_t(sign | 126);
    auto it = std::upper_bound(pos.begin(), pos.end(), a);  // first value > a
    int hi = int(it - pos.begin());
    int lo = hi - 1;
    int code;
    float dlo = a - pos[size_t(lo)], dhi = pos[size_t(hi)] - a;
    if (dlo < dhi) code = lo;
    else if (dhi < dlo) code = hi;
    else code = (lo & 1) ? hi : lo;
    return uint8_t(sign | code);
}

// ---- data ----
inline std::vector<float> random_floats(std::mt19937_64& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = f32_to_bf16(v[i]);
    return o;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
    std::vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = bf16_to_f32(v[i]);
    return o;
}

// max |a - b| / max |b| (b the reference); +inf on NaN or size mismatch.
inline double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return INFINITY;
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        double d = std::fabs(double(a[i]) - double(b[i]));
        if (std::isnan(d)) return INFINITY;
        num = std::max(num, d);
        den = std::max(den, std::fabs(double(b[i])));
    }
    if (den == 0) return num == 0 ? 0.0 : INFINITY;
    return num / den;
}

// ---- CPU features, as the SIMD levels of mla_context_options need them ----
inline bool cpu_has_simd(int32_t simd) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (simd) {
        case MLA_SIMD_SCALAR: return true;
        case MLA_SIMD_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case MLA_SIMD_AVX512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        default: return false;
    }
#else
    return simd == MLA_SIMD_SCALAR;
#endif
}

inline const char* simd_name(int32_t simd) {
    switch (simd) {
        case MLA_SIMD_AUTO: return "auto";
        case MLA_SIMD_SCALAR: return "scalar";
        case MLA_SIMD_AVX2: return "avx2";
        case MLA_SIMD_AVX512: return "avx512";
    }
    return "?";
}

}  // namespace mla_test
