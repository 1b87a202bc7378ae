// The CPU backend's instruction-set-specific kernels: one table per ISA (scalar, AVX2+FMA,
// AVX-512), each compiled in its own translation unit from kernels_impl.h. Strides are in
// elements. All accumulate in f32.
#pragma once

#include <cstdint>

namespace mla::cpu {

struct Kernels {
    const char* name;
    // y[m * ldy + n] = sum_k x[m * ldx + k] * w[n * ldw + k]   for m < M, n < N
    void (*gemm_nt_f32)(const float* x, int64_t ldx, int64_t M, const float* w, int64_t ldw,
                        int64_t N, int64_t K, float* y, int64_t ldy);
    void (*gemm_nt_bf16)(const float* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t ldw,
                         int64_t N, int64_t K, float* y, int64_t ldy);
    // acc[m * lda + n] += sum_k p[m * ldp + k] * c[k * ldc + n]   for m < M, n < N
    void (*gemm_nn_acc_f32)(const float* p, int64_t ldp, int64_t M, const float* c, int64_t ldc,
                            int64_t N, int64_t K, float* acc, int64_t lda);
    void (*gemm_nn_acc_bf16)(const float* p, int64_t ldp, int64_t M, const uint16_t* c,
                             int64_t ldc, int64_t N, int64_t K, float* acc, int64_t lda);
    // x[i] = exp(x[i] - m) for i < n; returns the sum of the new values.
    float (*exp_sub_sum)(float* x, int64_t n, float m);
    // y[i] *= a
    void (*scale)(float* y, int64_t n, float a);
    void (*bf16_to_f32)(const uint16_t* src, float* dst, int64_t n);
    void (*f32_to_bf16)(const float* src, uint16_t* dst, int64_t n);
};

const Kernels& kernels_scalar();
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();

}  // namespace mla::cpu
