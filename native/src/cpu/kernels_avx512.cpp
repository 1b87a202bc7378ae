// AVX-512 (F/BW/VL/DQ) kernels: 16 f32 lanes. Compiled with -mavx512f -mavx512bw ... only here.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"

namespace {

struct V {
    using R = __m512;
    static constexpr int W = 16;
    static constexpr int kNR4 = 4;
    static constexpr int kNV = 4;
    static constexpr const char* kName = "avx512";
    static R zero() { return _mm512_setzero_ps(); }
    static R set1(float v) { return _mm512_set1_ps(v); }
    static R load(const float* p) { return _mm512_loadu_ps(p); }
    static R loadw(const float* p) { return _mm512_loadu_ps(p); }
    static R loadw(const uint16_t* p) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
    static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
    static R add(R a, R b) { return _mm512_add_ps(a, b); }
    static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
    static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
    static float hsum(R v) { return _mm512_reduce_add_ps(v); }
    // exp(x) = 2^n * e^r, |r| <= ln2/2, degree-7 Taylor polynomial (rel. error < 1e-7).
    static R exp(R x) {
        x = _mm512_max_ps(_mm512_min_ps(x, set1(88.3762626647949f)), set1(-87.3365478515625f));
        R n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        R r = _mm512_fnmadd_ps(n, set1(0.693359375f), x);
        r = _mm512_fnmadd_ps(n, set1(-2.12194440e-4f), r);
        R p = set1(1.0f / 5040);
        p = fma(p, r, set1(1.0f / 720));
        p = fma(p, r, set1(1.0f / 120));
        p = fma(p, r, set1(1.0f / 24));
        p = fma(p, r, set1(1.0f / 6));
        p = fma(p, r, set1(0.5f));
        p = fma(p, r, set1(1.0f));
        p = fma(p, r, set1(1.0f));
        return _mm512_scalef_ps(p, n);
    }
};

#include "cpu/kernels_impl.h"

}  // namespace

namespace mla::cpu {
const Kernels& kernels_avx512() { return kTable; }
}  // namespace mla::cpu
