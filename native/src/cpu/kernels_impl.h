// Kernel bodies, written once over a vector-traits type V and instantiated per ISA.
// Include only inside an anonymous namespace of a kernels_<isa>.cpp, after defining V, so that
// every ISA gets its own internal-linkage copy (no ODR mixing of code built with different
// instruction sets). V provides: R (register type), W (lanes), zero, set1, load (f32), loadw
// (f32 or bf16 overloads), store, fma(a, b, c) = a * b + c, hsum, exp, and the register-tile
// widths kNR4 (weight rows per 4-row tile) and kNV (vectors per row in gemm_nn_acc tiles).
//
// Expects <cstdint>, <cstring> and <cmath> to be included before.

inline float scalar_bf16(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float scalar_w(float v) { return v; }
inline float scalar_w(uint16_t v) { return scalar_bf16(v); }

// y[MR x NR] = x[MR rows] . w[NR rows]
template <int MR, int NR, class WT>
inline void nt_tile(const float* x, int64_t ldx, const WT* w, int64_t ldw, int64_t K, float* y,
                    int64_t ldy) {
    using R = typename V::R;
    R acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
    int64_t k = 0;
    for (; k + V::W <= K; k += V::W) {
        R wv[NR];
        for (int j = 0; j < NR; ++j) wv[j] = V::loadw(w + j * ldw + k);
        for (int i = 0; i < MR; ++i) {
            R xv = V::load(x + i * ldx + k);
            for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) {
            float t = V::hsum(acc[i][j]);
            for (int64_t kk = k; kk < K; ++kk) t += x[i * ldx + kk] * scalar_w(w[j * ldw + kk]);
            y[i * ldy + j] = t;
        }
}

template <int MR, class WT>
inline void nt_rows(const float* x, int64_t ldx, const WT* w, int64_t ldw, int64_t n0, int64_t n1,
                    int64_t K, float* y, int64_t ldy) {
    constexpr int NR = MR <= 2 ? 4 : V::kNR4;
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) nt_tile<MR, NR>(x, ldx, w + n * ldw, ldw, K, y + n, ldy);
    for (; n < n1; ++n) nt_tile<MR, 1>(x, ldx, w + n * ldw, ldw, K, y + n, ldy);
}

template <class WT>
void gemm_nt(const float* x, int64_t ldx, int64_t M, const WT* w, int64_t ldw, int64_t N,
             int64_t K, float* y, int64_t ldy) {
    // Weight rows in blocks that stay in L2 while every 4-row tile of x passes over them.
    const int64_t row_bytes = K * int64_t(sizeof(WT));
    int64_t nb = M <= 4 ? N : std::max<int64_t>(8, (256 * 1024) / std::max<int64_t>(row_bytes, 1));
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
        const int64_t n1 = std::min(N, n0 + nb);
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) nt_rows<4>(x + m * ldx, ldx, w, ldw, n0, n1, K, y + m * ldy, ldy);
        switch (M - m) {
            case 3: nt_rows<3>(x + m * ldx, ldx, w, ldw, n0, n1, K, y + m * ldy, ldy); break;
            case 2: nt_rows<2>(x + m * ldx, ldx, w, ldw, n0, n1, K, y + m * ldy, ldy); break;
            case 1: nt_rows<1>(x + m * ldx, ldx, w, ldw, n0, n1, K, y + m * ldy, ldy); break;
            default: break;
        }
    }
}

void gemm_nt_f32(const float* x, int64_t ldx, int64_t M, const float* w, int64_t ldw, int64_t N,
                 int64_t K, float* y, int64_t ldy) {
    gemm_nt(x, ldx, M, w, ldw, N, K, y, ldy);
}
void gemm_nt_bf16(const float* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t ldw,
                  int64_t N, int64_t K, float* y, int64_t ldy) {
    gemm_nt(x, ldx, M, w, ldw, N, K, y, ldy);
}

// acc[MR rows, NV vectors starting at column n] += p[MR rows, K] . c[K rows]
template <int MR, int NV, class CT>
inline void nn_tile(const float* p, int64_t ldp, const CT* c, int64_t ldc, int64_t K, float* acc,
                    int64_t lda) {
    using R = typename V::R;
    R a[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NV; ++j) a[i][j] = V::load(acc + i * lda + j * V::W);
    for (int64_t k = 0; k < K; ++k) {
        R cv[NV];
        for (int j = 0; j < NV; ++j) cv[j] = V::loadw(c + k * ldc + j * V::W);
        for (int i = 0; i < MR; ++i) {
            R pv = V::set1(p[i * ldp + k]);
            for (int j = 0; j < NV; ++j) a[i][j] = V::fma(pv, cv[j], a[i][j]);
        }
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NV; ++j) V::store(acc + i * lda + j * V::W, a[i][j]);
}

template <int NV, class CT>
inline void nn_cols(const float* p, int64_t ldp, int64_t M, const CT* c, int64_t ldc, int64_t K,
                    float* acc, int64_t lda) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) nn_tile<4, NV>(p + m * ldp, ldp, c, ldc, K, acc + m * lda, lda);
    for (; m < M; ++m) nn_tile<1, NV>(p + m * ldp, ldp, c, ldc, K, acc + m * lda, lda);
}

template <class CT>
void gemm_nn_acc(const float* p, int64_t ldp, int64_t M, const CT* c, int64_t ldc, int64_t N,
                 int64_t K, float* acc, int64_t lda) {
    int64_t n = 0;
    if constexpr (V::kNV > 2)
        for (; n + V::kNV * V::W <= N; n += V::kNV * V::W)
            nn_cols<V::kNV>(p, ldp, M, c + n, ldc, K, acc + n, lda);
    for (; n + 2 * V::W <= N; n += 2 * V::W) nn_cols<2>(p, ldp, M, c + n, ldc, K, acc + n, lda);
    for (; n + V::W <= N; n += V::W) nn_cols<1>(p, ldp, M, c + n, ldc, K, acc + n, lda);
    for (; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
            float t = acc[m * lda + n];
            for (int64_t k = 0; k < K; ++k) t += p[m * ldp + k] * scalar_w(c[k * ldc + n]);
            acc[m * lda + n] = t;
        }
}

void gemm_nn_acc_f32(const float* p, int64_t ldp, int64_t M, const float* c, int64_t ldc,
                     int64_t N, int64_t K, float* acc, int64_t lda) {
    gemm_nn_acc(p, ldp, M, c, ldc, N, K, acc, lda);
}
void gemm_nn_acc_bf16(const float* p, int64_t ldp, int64_t M, const uint16_t* c, int64_t ldc,
                      int64_t N, int64_t K, float* acc, int64_t lda) {
    gemm_nn_acc(p, ldp, M, c, ldc, N, K, acc, lda);
}

float exp_sub_sum(float* x, int64_t n, float m) {
    using R = typename V::R;
    R vm = V::set1(m);
    R vs = V::zero();
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) {
        R e = V::exp(V::sub(V::load(x + i), vm));
        V::store(x + i, e);
        vs = V::add(vs, e);
    }
    float s = V::hsum(vs);
    for (; i < n; ++i) {
        x[i] = std::exp(x[i] - m);
        s += x[i];
    }
    return s;
}

void scale(float* y, int64_t n, float a) {
    using R = typename V::R;
    R va = V::set1(a);
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(y + i, V::mul(V::load(y + i), va));
    for (; i < n; ++i) y[i] *= a;
}

void bf16_to_f32(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + V::W <= n; i += V::W) V::store(dst + i, V::loadw(src + i));
    for (; i < n; ++i) dst[i] = scalar_bf16(src[i]);
}

void f32_to_bf16(const float* src, uint16_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, &src[i], 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            dst[i] = uint16_t((u >> 16) | 0x40u);
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);
            dst[i] = uint16_t(u >> 16);
        }
    }
}

const mla::cpu::Kernels kTable = {
    V::kName, gemm_nt_f32, gemm_nt_bf16, gemm_nn_acc_f32, gemm_nn_acc_bf16,
    exp_sub_sum, scale, bf16_to_f32, f32_to_bf16,
};
