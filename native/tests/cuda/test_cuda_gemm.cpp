// Tests of the CUDA layer's GEMM (C[z] = A[z] . B[z]^T, bf16 weights, f32 accumulation)
// against a host reference in double over the bf16-rounded operands: odd shapes, M = 1..300,
// every tile shape, split-K on and off, batched slices with strides, A f32 / bf16, C f32 / bf16,
// padded rows, the simple kernel. Exits 77 (ctest SKIP_RETURN_CODE) when no CUDA device exists.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/layer.cuh"
#include "cuda_test_util.h"

using namespace mla;
using namespace mla::cuda;

namespace {

struct Dev {
    void* p = nullptr;
    explicit Dev(size_t n) { CK(cudaMalloc(&p, std::max<size_t>(n, 16))); }
    Dev(const Dev&) = delete;
    Dev& operator=(const Dev&) = delete;
    ~Dev() { cudaFree(p); }
};

struct Shape {
    int M, N, K, batch;
    bool a_f32, c_f32;
    int pad_a, pad_b, pad_c;  // extra elements per row (the strides' padding)
    int gap;                  // extra elements between z slices
    // Slices interleaved in each row, as the layer's per-head products read and write them:
    // row m of slice z starts at m * batch * (K + pad_a) + z * (K + pad_a) (C likewise).
    bool inter = false;
};

std::mt19937 g_rng(20261124);

// Runs one GEMM (plan chosen by path / force_kernel / force_splits) and compares with the
// reference; returns the C buffer as bytes for determinism checks.
std::vector<unsigned char> run_case(const Shape& s, int sm_count, GemmPath path, int force_kernel,
                                    int force_splits, const char* label, int expect_kernel = -2) {
    const int64_t kw = s.K + s.pad_a, nw = s.N + s.pad_c, ldb = s.K + s.pad_b;
    const int64_t lda = s.inter ? kw * s.batch : kw, ldc = s.inter ? nw * s.batch : nw;
    const int64_t sa = s.inter ? kw : s.M * lda + s.gap, sb = int64_t(s.N) * ldb + s.gap,
                  sc = s.inter ? nw : s.M * ldc + s.gap;
    const size_t na = s.inter ? size_t(s.M) * lda : size_t(sa) * s.batch,
                 nb = size_t(sb) * s.batch, nc = s.inter ? size_t(s.M) * ldc : size_t(sc) * s.batch;
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> a(na);
    std::vector<uint16_t> b(nb);
    for (auto& v : a) v = nd(g_rng);
    for (auto& v : b) v = f32_to_bf16(nd(g_rng) * 0.25f);
    const size_t asz = s.a_f32 ? 4 : 2, csz = s.c_f32 ? 4 : 2;
    Dev da(na * asz), db(nb * 2), dc(nc * csz);
    std::vector<uint16_t> abf(na);
    for (size_t i = 0; i < na; ++i) abf[i] = f32_to_bf16(a[i]);
    if (s.a_f32) CK(cudaMemcpy(da.p, a.data(), na * 4, cudaMemcpyHostToDevice));
    else CK(cudaMemcpy(da.p, abf.data(), na * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db.p, b.data(), nb * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(dc.p, 0xff, nc * csz));  // NaN poison: every element must be written

    GemmDesc g;
    g.A = da.p;
    g.a_f32 = s.a_f32;
    g.lda = lda;
    g.sa = sa;
    g.B = static_cast<const uint16_t*>(db.p);
    g.ldb = ldb;
    g.sb = sb;
    g.C = dc.p;
    g.c_f32 = s.c_f32;
    g.ldc = ldc;
    g.sc = sc;
    g.M = s.M;
    g.N = s.N;
    g.K = s.K;
    g.batch = s.batch;
    const GemmPlan p = gemm_plan(g, sm_count, path, force_kernel, force_splits);
    char what[256];
    std::snprintf(what, sizeof what, "%s M=%d N=%d K=%d z=%d a%s c%s pads %d/%d/%d gap %d", label,
                  s.M, s.N, s.K, s.batch, s.a_f32 ? "f32" : "bf16", s.c_f32 ? "f32" : "bf16",
                  s.pad_a, s.pad_b, s.pad_c, s.gap);
    if (expect_kernel != -2)
        EXPECT(p.kernel == expect_kernel, "%s: kernel %d, expected %d", what, p.kernel,
               expect_kernel);
    if (force_splits > 0 && p.kernel >= 0)
        EXPECT(p.splits > 1 || force_splits == 1, "%s: forced split gave %d", what, p.splits);
    EXPECT((p.splits > 1) == (p.workspace_bytes > 0), "%s: splits %d, workspace %zu", what,
           p.splits, p.workspace_bytes);
    Dev dw(p.workspace_bytes);
    if (p.counter_bytes) CK(cudaMemset(dw.p, 0, p.counter_bytes));
    gemm_run(g, p, p.workspace_bytes ? dw.p : nullptr, nullptr);
    CK(cudaDeviceSynchronize());

    std::vector<unsigned char> out(nc * csz);
    CK(cudaMemcpy(out.data(), dc.p, out.size(), cudaMemcpyDeviceToHost));
    if (p.counter_bytes) {
        std::vector<int> cnt(p.counter_bytes / 4);
        CK(cudaMemcpy(cnt.data(), dw.p, p.counter_bytes, cudaMemcpyDeviceToHost));
        EXPECT(std::all_of(cnt.begin(), cnt.end(), [](int v) { return v == 0; }),
               "%s: split counters not left at zero", what);
    }
    int bad = 0, untouched_bad = 0;
    double worst = 0;
    for (int z = 0; z < s.batch; ++z)
        for (int m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < nw; ++n) {
                const size_t ci = size_t(z * sc + m * ldc + n);
                float c;
                if (s.c_f32) std::memcpy(&c, out.data() + ci * 4, 4);
                else c = bf16_to_f32(uint16_t(out[ci * 2] | (out[ci * 2 + 1] << 8)));
                if (n >= s.N) {  // row padding: must keep the poison
                    if (!std::isnan(c)) ++untouched_bad;
                    continue;
                }
                double ref = 0, mag = 0;
                for (int k = 0; k < s.K; ++k) {
                    const double x = bf16_to_f32(abf[size_t(z * sa + m * lda + k)]);
                    const double y = bf16_to_f32(b[size_t(z * sb + n * ldb + k)]);
                    ref += x * y;
                    mag += std::fabs(x * y);
                }
                const double tol = 1e-5 * mag + 1e-30 + (s.c_f32 ? 0.0 : 4e-3 * std::fabs(ref));
                const double err = std::fabs(double(c) - ref);
                if (!(err <= tol)) {
                    if (bad < 3)
                        std::printf("  %s: z=%d m=%d n=%lld got %g want %g (tol %g)\n", what, z,
                                    m, static_cast<long long>(n), double(c), ref, tol);
                    ++bad;
                }
                if (mag > 0) worst = std::max(worst, err / mag);
            }
    EXPECT(bad == 0, "%s (kernel %d, splits %d): %d wrong elements", what, p.kernel, p.splits,
           bad);
    EXPECT(untouched_bad == 0, "%s: %d padding elements written", what, untouched_bad);
    return out;
}

}  // namespace

int main() {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        std::printf("no CUDA device: skipped\n");
        return 77;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount;
    std::printf("device: %s, %d SMs\n", prop.name, sms);

    // Every M in 1..300 through the automatic choice (tile shape by M, split-K by the
    // heuristic), odd N, K a multiple of 8 but not of the tile depth.
    for (int M = 1; M <= 300; M += (M < 20 ? 1 : M < 140 ? 7 : 29)) {
        const bool af = M % 2 == 1, cf = M % 3 != 0;
        run_case({M, 77 + M % 13, 200, 1, af, cf, 0, 0, 0, 0}, sms, GemmPath::Auto, -1, 0, "auto");
    }
    // Each tile shape, split-K off and forced on, f32 and bf16 A and C, odd N, padded rows.
    const int Ms[] = {1, 3, 16, 17, 64, 65, 129, 300};
    for (int kern = 0; kern < 3; ++kern)
        for (int M : Ms)
            for (int splits : {1, 3, 7})
                for (int v = 0; v < 2; ++v) {
                    Shape s{M, v ? 130 : 33, v ? 1032 : 264, 1, v == 0, v == 1, v * 8, v * 16,
                            v * 3, 0};
                    run_case(s, sms, GemmPath::Auto, kern, splits, "tile", kern);
                }
    // Split-K: the result is the same bits on a second run (fixed summation order).
    {
        Shape s{5, 300, 4096, 1, true, true, 0, 0, 0, 0};
        auto r1 = run_case(s, sms, GemmPath::Auto, 0, 9, "determinism");
        g_rng.seed(7);
        auto r2 = run_case(s, sms, GemmPath::Auto, 0, 9, "determinism");
        g_rng.seed(7);
        auto r3 = run_case(s, sms, GemmPath::Auto, 0, 9, "determinism");
        EXPECT(r2 == r3, "split-K run twice on the same inputs gave different bits");
        (void)r1;
    }
    // Batched per-head products with interleaved slices (the layer's absorption and W_UV
    // shapes, scaled down): A rows of stride H * K with slices K apart, C likewise.
    {
        const int H = 6, K = 128, N = 72;
        for (int M : {1, 9, 70}) {
            for (int splits : {0, 1, 2}) {
                Shape s{M, N, K, H, true, true, 0, 0, 0, 8};
                run_case(s, sms, GemmPath::Auto, -1, splits, "batched");
                s.a_f32 = false;
                s.c_f32 = false;
                run_case(s, sms, GemmPath::Auto, -1, splits, "batched");
            }
        }
    }
    // Operands the pipelined kernels cannot take (K % 8 != 0, misaligned strides) run on the
    // simple kernel; the simple path on request.
    run_case({3, 50, 37, 2, true, true, 0, 0, 0, 0}, sms, GemmPath::Auto, -1, 0, "odd K", -1);
    run_case({70, 65, 100, 1, true, false, 1, 0, 0, 0}, sms, GemmPath::Auto, -1, 0, "odd lda", -1);
    run_case({70, 65, 96, 2, false, true, 0, 0, 0, 3}, sms, GemmPath::Auto, -1, 0, "odd gap", -1);
    run_case({130, 129, 136, 2, true, true, 0, 0, 0, 0}, sms, GemmPath::Simple, -1, 0, "simple",
             -1);
    // The layer's six products with the automatic plan, as CudaLayer runs them (A and C
    // layouts included: the per-head products read q_nope out of q rows and write q_abs rows
    // whose RoPE columns they must not touch), for a small golden-file config, a 32-head
    // hidden-4096 config, and DeepSeek-V3 at decode sizes.
    {
        struct Cfg {
            int D, H, ql, dc, dn, dr, dv;
            std::vector<int> Ms;
        };
        const Cfg cfgs[] = {{256, 8, 128, 512, 128, 64, 128, {1, 5, 16, 17, 64, 65, 128, 200}},
                            {4096, 32, 1536, 512, 128, 64, 128, {1, 5, 16, 65}},
                            {7168, 128, 1536, 512, 128, 64, 128, {1, 5}}};
        for (const Cfg& c : cfgs)
            for (int M : c.Ms) {
                const int qk = c.dn + c.dr;
                run_case({M, c.ql, c.D, 1, true, true, 0, 0, 0, 0}, sms, GemmPath::Auto, -1, 0,
                         "layer q_a");
                run_case({M, c.H * qk, c.ql, 1, true, true, 0, 0, 0, 0}, sms, GemmPath::Auto, -1,
                         0, "layer q_b");
                run_case({M, c.dc + c.dr, c.D, 1, true, true, 0, 0, 0, 0}, sms, GemmPath::Auto,
                         -1, 0, "layer kv_a");
                run_case({M, c.dc, c.dn, c.H, true, true, c.dr, 0, c.dr, 0, true}, sms,
                         GemmPath::Auto, -1, 0, "layer W_UK");
                run_case({M, c.dv, c.dc, c.H, true, false, 0, 0, 0, 0, true}, sms,
                         GemmPath::Auto, -1, 0, "layer W_UV");
                run_case({M, c.D, c.H * c.dv, 1, false, true, 0, 0, 0, 0}, sms, GemmPath::Auto,
                         -1, 0, "layer o_proj");
            }
    }
    // Larger: a prefill-like product on the 128 x 128 tiles.
    run_case({600, 520, 1536, 1, false, true, 0, 0, 0, 0}, sms, GemmPath::Auto, -1, 0, "large", 2);

    // Two split GEMMs with different counter regions taking turns on one workspace (as the
    // layer's projections do): the small plan's partial sums would land on counters of the big
    // one unless gemm_share_workspace gives them one counter region.
    {
        const int M = 5, K = 1024, Nb = 8192, Ns = 64;
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<float> a(size_t(M) * K);
        std::vector<uint16_t> bb(size_t(Nb) * K), bs(size_t(Ns) * K);
        for (auto& v : a) v = nd(g_rng);
        for (auto& v : bb) v = f32_to_bf16(nd(g_rng) * 0.05f);
        for (auto& v : bs) v = f32_to_bf16(nd(g_rng) * 0.05f);
        Dev da(a.size() * 4), dbb(bb.size() * 2), dbs(bs.size() * 2), dcb(size_t(M) * Nb * 4),
            dcs(size_t(M) * Ns * 4);
        CK(cudaMemcpy(da.p, a.data(), a.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dbb.p, bb.data(), bb.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dbs.p, bs.data(), bs.size() * 2, cudaMemcpyHostToDevice));
        GemmDesc gb;
        gb.A = da.p;
        gb.a_f32 = true;
        gb.lda = K;
        gb.B = static_cast<const uint16_t*>(dbb.p);
        gb.ldb = K;
        gb.C = dcb.p;
        gb.c_f32 = true;
        gb.ldc = Nb;
        gb.M = M;
        gb.N = Nb;
        gb.K = K;
        GemmDesc gs = gb;
        gs.B = static_cast<const uint16_t*>(dbs.p);
        gs.C = dcs.p;
        gs.ldc = Ns;
        gs.N = Ns;
        GemmPlan plans[2] = {gemm_plan(gb, sms, GemmPath::Auto, 0, 4),
                             gemm_plan(gs, sms, GemmPath::Auto, 0, 8)};
        EXPECT(plans[0].counter_bytes > plans[1].counter_bytes && plans[1].splits > 1,
               "shared workspace: counters %zu / %zu, splits %d", plans[0].counter_bytes,
               plans[1].counter_bytes, plans[1].splits);
        const size_t wsb = gemm_share_workspace(plans, 2);
        EXPECT(plans[0].counter_bytes == plans[1].counter_bytes, "shared workspace: one counter region");
        Dev dw(wsb);
        CK(cudaMemset(dw.p, 0, plans[0].counter_bytes));
        for (int rep = 0; rep < 3; ++rep) {
            CK(cudaMemset(dcb.p, 0xff, size_t(M) * Nb * 4));
            gemm_run(gb, plans[0], dw.p, nullptr);
            gemm_run(gs, plans[1], dw.p, nullptr);
        }
        CK(cudaDeviceSynchronize());
        std::vector<float> cb(size_t(M) * Nb), cs(size_t(M) * Ns);
        CK(cudaMemcpy(cb.data(), dcb.p, cb.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(cs.data(), dcs.p, cs.size() * 4, cudaMemcpyDeviceToHost));
        int bad = 0;
        for (int which = 0; which < 2; ++which) {
            const int N = which ? Ns : Nb;
            const std::vector<uint16_t>& b = which ? bs : bb;
            const std::vector<float>& c = which ? cs : cb;
            for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) {
                    double ref = 0, mag = 0;
                    for (int k = 0; k < K; ++k) {
                        const double x = bf16_to_f32(f32_to_bf16(a[size_t(m) * K + k]));
                        const double y = bf16_to_f32(b[size_t(n) * K + k]);
                        ref += x * y;
                        mag += std::fabs(x * y);
                    }
                    if (!(std::fabs(c[size_t(m) * N + n] - ref) <= 1e-5 * mag + 1e-30)) ++bad;
                }
        }
        EXPECT(bad == 0, "shared workspace: %d wrong elements", bad);
    }

    // A chain of dependent GEMMs launched as programmatic dependents (as the layer does):
    // C1 = A . B1^T (bf16, split-K), C2 = C1 . B2^T (split-K, sharing the workspace), repeated:
    // each must see its predecessor's complete output, and C1 is rewritten only after the
    // previous C2 finished reading it.
    for (int M : {1, 40, 200}) {
        const int K1 = 2048, N1 = 1024, N2 = 576;
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<float> a(size_t(M) * K1);
        std::vector<uint16_t> b1(size_t(N1) * K1), b2(size_t(N2) * N1);
        for (auto& v : a) v = nd(g_rng);
        for (auto& v : b1) v = f32_to_bf16(nd(g_rng) * 0.05f);
        for (auto& v : b2) v = f32_to_bf16(nd(g_rng) * 0.05f);
        Dev da(a.size() * 4), db1(b1.size() * 2), db2(b2.size() * 2), dc1(size_t(M) * N1 * 2),
            dc2(size_t(M) * N2 * 4);
        CK(cudaMemcpy(da.p, a.data(), a.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(db1.p, b1.data(), b1.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(db2.p, b2.data(), b2.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemset(dc1.p, 0xff, size_t(M) * N1 * 2));
        CK(cudaMemset(dc2.p, 0xff, size_t(M) * N2 * 4));
        GemmDesc g1;
        g1.A = da.p;
        g1.a_f32 = true;
        g1.lda = K1;
        g1.B = static_cast<const uint16_t*>(db1.p);
        g1.ldb = K1;
        g1.C = dc1.p;
        g1.c_f32 = false;
        g1.ldc = N1;
        g1.M = M;
        g1.N = N1;
        g1.K = K1;
        GemmDesc g2 = g1;
        g2.A = dc1.p;
        g2.a_f32 = false;
        g2.lda = N1;
        g2.B = static_cast<const uint16_t*>(db2.p);
        g2.ldb = N1;
        g2.C = dc2.p;
        g2.c_f32 = true;
        g2.ldc = N2;
        g2.N = N2;
        g2.K = N1;
        const GemmPlan p1 = gemm_plan(g1, sms, GemmPath::Auto, -1, 4);
        const GemmPlan p2 = gemm_plan(g2, sms, GemmPath::Auto, -1, 3);
        const size_t wsb = std::max(p1.workspace_bytes, p2.workspace_bytes);
        Dev dw(wsb);
        CK(cudaMemset(dw.p, 0, wsb));
        cudaStream_t st;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        for (int rep = 0; rep < 20; ++rep) {
            gemm_run(g1, p1, dw.p, st, rep > 0, true);
            gemm_run(g2, p2, dw.p, st, true, true);
        }
        CK(cudaStreamSynchronize(st));
        CK(cudaStreamDestroy(st));
        std::vector<uint16_t> c1(size_t(M) * N1);
        std::vector<float> c2(size_t(M) * N2);
        CK(cudaMemcpy(c1.data(), dc1.p, c1.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(c2.data(), dc2.p, c2.size() * 4, cudaMemcpyDeviceToHost));
        int bad1 = 0, bad2 = 0;
        for (int m = 0; m < M; ++m) {
            for (int n = 0; n < N1; ++n) {
                double ref = 0, mag = 0;
                for (int k = 0; k < K1; ++k) {
                    const double x = bf16_to_f32(f32_to_bf16(a[size_t(m) * K1 + k]));
                    const double y = bf16_to_f32(b1[size_t(n) * K1 + k]);
                    ref += x * y;
                    mag += std::fabs(x * y);
                }
                const double got = bf16_to_f32(c1[size_t(m) * N1 + n]);
                if (!(std::fabs(got - ref) <= 1e-5 * mag + 4e-3 * std::fabs(ref))) ++bad1;
            }
            for (int n = 0; n < N2; ++n) {
                double ref = 0, mag = 0;
                for (int k = 0; k < N1; ++k) {
                    const double x = bf16_to_f32(c1[size_t(m) * N1 + k]);
                    const double y = bf16_to_f32(b2[size_t(n) * N1 + k]);
                    ref += x * y;
                    mag += std::fabs(x * y);
                }
                if (!(std::fabs(c2[size_t(m) * N2 + n] - ref) <= 1e-5 * mag)) ++bad2;
            }
        }
        EXPECT(p1.splits > 1 && p2.splits > 1, "chain M=%d: splits %d / %d", M, p1.splits,
               p2.splits);
        EXPECT(bad1 == 0 && bad2 == 0, "programmatic chain M=%d: %d / %d wrong elements", M,
               bad1, bad2);
    }

    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
