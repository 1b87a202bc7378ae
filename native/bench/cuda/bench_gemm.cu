// Benchmark of the CUDA layer's GEMM on the layer's real projection shapes (DeepSeek-V3:
// hidden 7168, 128 heads, q_lora 1536, kv_lora 512, rope 64, nope 128, v 128) at M = 1, 8, 32,
// 128, 4096 rows, the pipelined kernels (automatic plan) against the simple kernel in the same
// run. Each timing is one CUDA graph of back-to-back calls rotating over copies of the weights
// (> 200 MB in all, so they do not stay in L2), median of 7 graph launches. GB/s counts weights
// + A + C once; the device copy bandwidth (cudaMemcpy device to device, read + write) is
// measured in the same run.
//
// usage: bench_gemm [--csv out.csv] [--variants] [--sweep] [--only NAME] [--m M]
//   --variants also times each tile shape forced, and the automatic tile without split-K;
//   --sweep the automatic tile with K split 2, 4, 8 and 16 ways (M <= 128).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.cuh"
#include "cuda/layer.cuh"

using namespace mla::cuda;

namespace {

struct Proj {
    const char* name;
    int N, K, batch;
    bool a_f32, c_f32;
    int64_t lda_mul, sa, ldc_mul, sc;  // A row stride = lda_mul (or K), slices sa apart, ...
};

// The layer's six products as the layer issues them (A/C types and strides included).
const Proj kProj[] = {
    {"q_a", 1536, 7168, 1, false, true, 0, 0, 0, 0},
    {"q_b", 128 * 192, 1536, 1, true, true, 0, 0, 0, 0},
    {"kv_a", 576, 7168, 1, false, true, 0, 0, 0, 0},
    {"w_uk", 512, 128, 128, true, true, 128 * 192, 192, 128 * 576, 576},
    {"w_uv", 128, 512, 128, true, false, 128 * 512, 512, 128 * 128, 128},
    {"o_proj", 7168, 16384, 1, false, false, 0, 0, 0, 0},
};

}  // namespace

int main(int argc, char** argv) {
    std::string csv_path = "bench_gemm.csv", only;
    bool variants = false, sweep = false;
    int only_m = 0;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
        else if (!std::strcmp(argv[i], "--variants")) variants = true;
        else if (!std::strcmp(argv[i], "--sweep")) sweep = true;
        else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!std::strcmp(argv[i], "--m") && i + 1 < argc) only_m = std::atoi(argv[++i]);
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    // Copy bandwidth (read + write), 1 GiB each way.
    double copy_gbps = 0;
    {
        const size_t n = size_t(1) << 30;
        void *a, *b;
        CK(cudaMalloc(&a, n));
        CK(cudaMalloc(&b, n));
        CK(cudaMemset(a, 1, n));
        const std::vector<float> t = time_events(st, e0, e1, 7, [&] {
            CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
        });
        copy_gbps = 2.0 * n / (median(t) * 1e-3) / 1e9;
        cudaFree(a);
        cudaFree(b);
    }
    std::printf("device: %s (%d SMs); device copy %.0f GB/s (read + write)\n", prop.name, sms,
                copy_gbps);

    FILE* csv = std::fopen(csv_path.c_str(), "w");
    if (csv)
        std::fprintf(csv, "proj,M,N,K,batch,variant,kernel,splits,us,GBps,TFLOPs,copy_fraction,"
                          "speedup_vs_simple\n");
    std::printf("%-7s %5s %-9s %3s %3s %10s %8s %8s %6s %8s\n", "proj", "M", "variant", "k", "s",
                "us", "GB/s", "TFLOP/s", "copy", "x simple");

    const int Ms[] = {1, 8, 32, 128, 4096};
    for (const Proj& pj : kProj) {
        if (!only.empty() && only != pj.name) continue;
        const int64_t wel = int64_t(pj.N) * pj.K * pj.batch;
        const double wbytes = 2.0 * double(wel);
        const int copies = int(std::max<double>(1, std::ceil(200e6 / wbytes)));
        std::vector<uint16_t> hw(size_t(std::min<int64_t>(wel, 1 << 22)));
        for (size_t i = 0; i < hw.size(); ++i) hw[i] = uint16_t(0x3c00 + (i * 7919) % 512);
        std::vector<void*> W(static_cast<size_t>(copies));
        for (auto& w : W) {
            CK(cudaMalloc(&w, size_t(wel) * 2));
            for (int64_t o = 0; o < wel; o += int64_t(hw.size()))
                CK(cudaMemcpy(static_cast<uint16_t*>(w) + o, hw.data(),
                              size_t(std::min<int64_t>(int64_t(hw.size()), wel - o)) * 2,
                              cudaMemcpyHostToDevice));
        }
        for (int M : Ms) {
            if (only_m && M != only_m) continue;
            GemmDesc g;
            g.a_f32 = pj.a_f32;
            g.lda = pj.lda_mul ? pj.lda_mul : pj.K;
            g.sa = pj.sa;
            g.ldb = pj.K;
            g.sb = int64_t(pj.N) * pj.K;
            g.c_f32 = pj.c_f32;
            g.ldc = pj.ldc_mul ? pj.ldc_mul : pj.N;
            g.sc = pj.sc;
            g.M = M;
            g.N = pj.N;
            g.K = pj.K;
            g.batch = pj.batch;
            const size_t a_el = pj.batch > 1 ? size_t(M) * g.lda : size_t(M) * pj.K;
            const size_t c_el = pj.batch > 1 ? size_t(M) * g.ldc : size_t(M) * pj.N;
            void *A, *C;
            CK(cudaMalloc(&A, a_el * (pj.a_f32 ? 4 : 2)));
            CK(cudaMalloc(&C, c_el * (pj.c_f32 ? 4 : 2)));
            CK(cudaMemset(A, 0x3c, a_el * (pj.a_f32 ? 4 : 2)));
            g.A = A;
            g.C = C;
            const double bytes = wbytes + double(M) * pj.K * pj.batch * (pj.a_f32 ? 4 : 2) +
                                 double(M) * pj.N * pj.batch * (pj.c_f32 ? 4 : 2);
            const double flops = 2.0 * M * double(wel);

            struct Var {
                std::string name;
                GemmPath path;
                int kernel, splits;
            };
            std::vector<Var> vars = {{"simple", GemmPath::Simple, -1, 0},
                                     {"auto", GemmPath::Auto, -1, 0}};
            if (variants) {
                vars.push_back({"nosplit", GemmPath::Auto, -1, 1});
                for (int k = 0; k < 3; ++k)
                    vars.push_back({"tile" + std::to_string(k), GemmPath::Auto, k, 0});
            }
            if (sweep && M <= 128)
                for (int sp : {2, 4, 8, 16})
                    vars.push_back({"split" + std::to_string(sp), GemmPath::Auto, -1, sp});
            double simple_us = 0;
            for (const Var& v : vars) {
                const GemmPlan p = gemm_plan(g, sms, v.path, v.kernel, v.splits);
                void* ws = nullptr;
                if (p.workspace_bytes) {
                    CK(cudaMalloc(&ws, p.workspace_bytes));
                    CK(cudaMemset(ws, 0, p.counter_bytes));
                }
                auto call = [&](int i) {
                    GemmDesc gi = g;
                    gi.B = static_cast<const uint16_t*>(W[size_t(i % copies)]);
                    gemm_run(gi, p, ws, st);
                };
                call(0);
                CK(cudaStreamSynchronize(st));
                const float ms1 = time_events(st, e0, e1, 1, [&] {
                    for (int i = 0; i < 3; ++i) call(i);
                })[0];
                const int reps = std::max(copies, std::min(200, int(30.0 / (ms1 / 3) + 1)));
                cudaGraph_t graph;
                cudaGraphExec_t exec;
                CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                for (int i = 0; i < reps; ++i) call(i);
                CK(cudaStreamEndCapture(st, &graph));
                CK(cudaGraphInstantiate(&exec, graph, 0));
                CK(cudaGraphLaunch(exec, st));
                const std::vector<float> t =
                    time_events(st, e0, e1, 7, [&] { CK(cudaGraphLaunch(exec, st)); });
                CK(cudaGetLastError());
                cudaGraphExecDestroy(exec);
                cudaGraphDestroy(graph);
                if (ws) cudaFree(ws);
                const double us = median(t) * 1e3 / reps;
                if (v.path == GemmPath::Simple) simple_us = us;
                const double gbps = bytes / (us * 1e-6) / 1e9, tf = flops / (us * 1e-6) / 1e12;
                const double x = simple_us > 0 ? simple_us / us : 0;
                std::printf("%-7s %5d %-9s %3d %3d %10.2f %8.0f %8.1f %6.2f %8.2f\n", pj.name, M,
                            v.name.c_str(), p.kernel, p.splits, us, gbps, tf, gbps / copy_gbps,
                            x);
                std::fflush(stdout);
                if (csv)
                    std::fprintf(csv, "%s,%d,%d,%d,%d,%s,%d,%d,%.3f,%.1f,%.2f,%.3f,%.3f\n",
                                 pj.name, M, pj.N, pj.K, pj.batch, v.name.c_str(), p.kernel,
                                 p.splits, us, gbps, tf, gbps / copy_gbps, x);
            }
            cudaFree(A);
            cudaFree(C);
        }
        for (void* w : W) cudaFree(w);
    }
    if (csv) std::fclose(csv);
    return 0;
}
