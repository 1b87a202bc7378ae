// AVX2 + FMA kernels: 8 f32 lanes. Compiled with -mavx2 -mfma only here.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"

namespace {

struct V {
    using R = __m256;
    static constexpr int W = 8;
    static constexpr int kNR4 = 2;
    static constexpr int kNV = 2;
    static constexpr const char* kName = "avx2";
    static R zero() { return _mm256_setzero_ps(); }
    static R set1(float v) { return _mm256_set1_ps(v); }
    static R load(const float* p) { return _mm256_loadu_ps(p); }
    static R loadw(const float* p) { return _mm256_loadu_ps(p); }
    static R loadw(const uint16_t* p) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
    static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
    static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
    static R add(R a, R b) { return _mm256_add_ps(a, b); }
    static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
    static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
    static float hsum(R v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    // exp(x) = 2^n * e^r, |r| <= ln2/2, degree-7 Taylor polynomial (rel. error < 1e-7).
    static R exp(R x) {
        x = _mm256_max_ps(_mm256_min_ps(x, set1(88.0f)), set1(-87.3365478515625f));
        R n = _mm256_round_ps(_mm256_mul_ps(x, set1(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        R r = _mm256_fnmadd_ps(n, set1(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
        R p = set1(1.0f / 5040);
        p = fma(p, r, set1(1.0f / 720));
        p = fma(p, r, set1(1.0f / 120));
        p = fma(p, r, set1(1.0f / 24));
        p = fma(p, r, set1(1.0f / 6));
        p = fma(p, r, set1(0.5f));
        p = fma(p, r, set1(1.0f));
        p = fma(p, r, set1(1.0f));
        // 2^n built from the exponent bits; the clamp keeps n in [-126, 127].
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }
};

#include "cpu/kernels_impl.h"

}  // namespace

namespace mla::cpu {
const Kernels& kernels_avx2() { return kTable; }
}  // namespace mla::cpu
