// Decode attention benchmark of the CUDA backend (absorbed MLA, latent 512 + rope 64, bf16
// cache, page 64). Times mla attention_run (the plan is made once per step and shared by every
// layer) from one CUDA graph of many back-to-back runs timed with events (median over graph
// launches), rotating over enough copies of the inputs that they do not stay in L2. Prints a table and writes a CSV.
//
// After the decode rows: the compression kernel (kv_a -> RMSNorm + RoPE -> cache, tokens/s and
// GB/s against the copy floor) and whole-layer decode steps (mla layer forward, DeepSeek-V3
// shapes) in the same table and CSV.
//
// usage: bench_decode [--torch torch.csv] [--csv out.csv] [--iters N] [--only SHAPE]
//                     [--no-layer]
//   torch.csv (from torch_baseline.py, same run, same GPU) gives the PyTorch bmm+softmax times
//   and the measured copy bandwidth / matmul rate used for the floors.
//   --only takes one shape name or a comma-separated list of them (decode rows only, unless
//   a name starts with compress / layer).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend.h"
#include "bench_util.cuh"
#include "cuda/attention.cuh"

using namespace mla;

struct Shape {
    std::string name;
    int B, L, H, n;
    bool uneven;
};

// Same list and length formula as torch_baseline.py.
std::vector<Shape> shapes() {
    std::vector<Shape> v;
    for (int B : {1, 8, 32, 64, 128})
        for (int L : {1024, 4096, 16384})
            v.push_back({"B" + std::to_string(B) + "_L" + std::to_string(L) + "_H128", B, L, 128, 1,
                         false});
    for (int H : {16, 32, 64})
        v.push_back({"B128_L4096_H" + std::to_string(H), 128, 4096, H, 1, false});
    v.push_back({"B128_L4096_H128_n2", 128, 4096, 128, 2, false});
    v.push_back({"B128_uneven_H128", 128, 0, 128, 1, true});
    return v;
}

int seq_len(const Shape& s, int b) {
    if (!s.uneven) return s.L;
    return 64 + int((int64_t(b) * b * 37 + int64_t(b) * 101) % 16000);
}

// FlashMLA on an H100, as published (the reference figures of the performance goal; decode,
// 128 heads, page 64). Not measured here.
double flashmla_ms(const Shape& s) {
    if (s.H != 128 || s.n != 1 || s.uneven) return 0;
    static const std::map<std::pair<int, int>, double> t = {
        {{1, 1024}, 0.024}, {{8, 4096}, 0.042}, {{32, 4096}, 0.085},
        {{64, 16384}, 0.520}, {{128, 4096}, 0.259}, {{128, 16384}, 1.010}};
    auto it = t.find({s.B, s.L});
    return it == t.end() ? 0 : it->second;
}

// A row of the compress / layer part: time and what the floors count.
struct BenchRow {
    std::string name;
    int B, H;
    double ms, bytes, flops, tokens;
};

double floor_of(const BenchRow& r, double copy_gbps, double mm_tflops) {
    return std::max(r.bytes / (copy_gbps * 1e9), r.flops / (mm_tflops * 1e12)) * 1e3;
}

void write_extra(FILE* csv, const BenchRow& r, double copy_gbps, double mm_tflops) {
    const double mf = r.bytes / (copy_gbps * 1e9) * 1e3, cf = r.flops / (mm_tflops * 1e12) * 1e3;
    std::fprintf(csv, "%s,%d,0,%d,1,%s,%.4f,%.0f,%.1f,0,0,0,0,0,0,%.4f,%.4f,%.2f,0,%.0f\n",
                 r.name.c_str(), r.B, r.H, r.name.rfind("layer", 0) == 0 ? "layer" : "compress",
                 r.ms, r.bytes / (r.ms * 1e-3) / 1e9, r.flops / (r.ms * 1e-3) / 1e12, mf, cf,
                 std::max(mf, cf) / r.ms, r.tokens / (r.ms * 1e-3));
    std::fflush(csv);
}

// Random bf16 values (scaled), cheap enough for the layer's ~190 M weights.
struct FastRng {
    uint64_t s;
    float next() {  // roughly uniform in [-1, 1), a bf16 value
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        const float f = float(int32_t(uint32_t(s >> 32))) * (1.f / 2147483648.f);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        u &= 0xffff0000u;
        float r;
        std::memcpy(&r, &u, 4);
        return r;
    }
};

// Compression: T tokens of kv_a [T, 576] bf16 -> bf16 cache (page 64), slots a permutation.
BenchRow bench_compress(Backend* be, int T, size_t l2, double, int iters) {
    const int page = 64, D = 576, dc = 512, dr = 64;
    const int nblk = (T + page - 1) / page + 1;
    std::mt19937 rng(7 + T);
    std::vector<uint16_t> kv(size_t(T) * D);
    FastRng fr{0x9e3779b97f4a7c15ull + uint64_t(T)};
    for (auto& v : kv) v = f32_to_bf16(2.f * fr.next());
    std::vector<float> w(dc);
    for (auto& v : w) v = 1.f + 0.1f * fr.next();
    std::vector<int> pos(T);
    std::vector<int64_t> slots(T), all(size_t(nblk) * page);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    for (int t = 0; t < T; ++t) {
        pos[t] = t;
        slots[t] = all[t];
    }
    RopeParams rope;
    rope.dim = dr;
    rope.interleave = 1;
    rope.attention_factor = 1.f;
    for (int i = 0; i < dr / 2; ++i)
        rope.inv_freq.push_back(float(1.0 / std::pow(10000.0, 2.0 * i / dr)));
    const double bytes = double(T) * (D * 2 + 4 + 8) + double(T) * D * 2;
    const int copies = int(std::min<size_t>(64, std::max<size_t>(1, size_t(3 * l2 / bytes) + 1)));
    std::vector<void*> d_kv(copies), d_cache(copies);
    const size_t cache_bytes = size_t(nblk) * page * D * 2;
    for (int c = 0; c < copies; ++c) {
        CK(cudaMalloc(&d_kv[c], kv.size() * 2));
        CK(cudaMemcpy(d_kv[c], kv.data(), kv.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&d_cache[c], cache_bytes));
        CK(cudaMemset(d_cache[c], 0, cache_bytes));
    }
    void *d_w, *d_pos, *d_slots;
    CK(cudaMalloc(&d_w, dc * 4));
    CK(cudaMalloc(&d_pos, size_t(T) * 4));
    CK(cudaMalloc(&d_slots, size_t(T) * 8));
    CK(cudaMemcpy(d_w, w.data(), dc * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_pos, pos.data(), size_t(T) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_slots, slots.data(), size_t(T) * 8, cudaMemcpyHostToDevice));
    CompressParams p;
    p.num_tokens = T;
    p.kv_a_dtype = DType::BF16;
    p.kv_a_stride = D;
    p.norm_weight = d_w;
    p.norm_dtype = DType::F32;
    p.positions = static_cast<const int32_t*>(d_pos);
    p.slots = static_cast<const int64_t*>(d_slots);
    p.eps = 1e-6f;
    p.rope = &rope;
    p.cache = CacheDesc{nullptr, DType::BF16, nblk, page, dc, dr};
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const int reps = std::min(400, std::max(copies, int(1.0 / (bytes / 1.5e12 * 1e3 + 0.004))));
    cudaGraphExec_t exec;
    {
        cudaGraph_t g;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int r = 0; r < reps; ++r) {
            p.kv_a = d_kv[r % copies];
            p.cache.data = d_cache[r % copies];
            be->compress(p, st);
        }
        CK(cudaStreamEndCapture(st, &g));
        CK(cudaGraphInstantiate(&exec, g, 0));
        CK(cudaGraphDestroy(g));
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaStreamSynchronize(st));
    const float ms =
        median(time_events(st, e0, e1, iters, [&] { CK(cudaGraphLaunch(exec, st)); })) / reps;
    CK(cudaGetLastError());
    cudaGraphExecDestroy(exec);
    for (int c = 0; c < copies; ++c) {
        cudaFree(d_kv[c]);
        cudaFree(d_cache[c]);
    }
    cudaFree(d_w);
    cudaFree(d_pos);
    cudaFree(d_slots);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(st);
    // flops: RMSNorm + RoPE, a few per element (not the limit)
    return {"compress_T" + std::to_string(T), T, 1, ms, bytes, 8.0 * T * D, double(T)};
}

// One decode step of a whole layer (DeepSeek-V3 shapes): B sequences, each 1 new token after
// L - 1 cached ones; bf16 weights, cache, hidden and out.
BenchRow bench_layer(Backend* be, int B, int L, int iters) {
    const int D = 7168, H = 128, ql = 1536, dc = 512, dn = 128, dr = 64, dv = 128, qk = dn + dr,
              E = dc + dr, page = 64;
    FastRng fr{0x1234567ull + uint64_t(B)};
    auto rnd = [&](size_t n, float sc) {
        std::vector<float> v(n);
        for (auto& x : v) x = fr.next() * sc;  // sc a power of two keeps the values bf16
        return v;
    };
    PreparedWeights w;
    w.hidden = D; w.heads = H; w.q_lora = ql; w.dc = dc; w.dn = dn; w.dr = dr; w.dv = dv;
    w.exactly_bf16 = true;
    w.q_a = rnd(size_t(ql) * D, 1.f / 64);
    w.q_a_norm = std::vector<float>(ql, 1.f);
    w.q_b = rnd(size_t(H) * qk * ql, 1.f / 32);
    w.kv_a = rnd(size_t(E) * D, 1.f / 64);
    w.kv_a_norm = std::vector<float>(dc, 1.f);
    w.w_uk_t = rnd(size_t(H) * dc * dn, 1.f / 8);
    w.w_uv = rnd(size_t(H) * dv * dc, 1.f / 16);
    w.o = rnd(size_t(D) * H * dv, 1.f / 128);
    const double wbytes = 2.0 * double(w.q_a.size() + w.q_b.size() + w.kv_a.size() +
                                       w.w_uk_t.size() + w.w_uv.size() + w.o.size());
    const double wmacs = double(w.q_a.size() + w.q_b.size() + w.kv_a.size() + w.w_uk_t.size() +
                                w.w_uv.size() + w.o.size());
    LayerSpec spec;
    spec.hidden = D; spec.heads = H; spec.q_lora = ql; spec.dc = dc; spec.dn = dn; spec.dr = dr;
    spec.dv = dv;
    spec.eps = 1e-6f;
    spec.scale = 1.f / std::sqrt(float(qk));
    spec.rope.dim = dr;
    spec.rope.interleave = 1;
    spec.rope.attention_factor = 1.f;
    for (int i = 0; i < dr / 2; ++i)
        spec.rope.inv_freq.push_back(float(1.0 / std::pow(10000.0, 2.0 * i / dr)));
    std::unique_ptr<LayerImpl> layer = be->create_layer(spec, w);
    w = PreparedWeights();  // free the host copies

    const int per_seq = (L + page - 1) / page, nblk = B * per_seq;
    std::vector<int> qo(B + 1), lens(B, L - 1), pos(B), bt(size_t(B) * per_seq), perm(nblk);
    for (int b = 0; b <= B; ++b) qo[b] = b;
    for (int b = 0; b < B; ++b) pos[b] = L - 1;
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937 rng(11 + B);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (size_t i = 0; i < bt.size(); ++i) bt[i] = perm[i];
    const size_t cache_elems = size_t(nblk) * page * E;
    std::vector<uint16_t> hbuf(1 << 20);
    for (auto& v : hbuf) v = f32_to_bf16(2.f * fr.next());
    void *d_cache, *d_x, *d_out;
    CK(cudaMalloc(&d_cache, cache_elems * 2));
    for (size_t off = 0; off < cache_elems; off += hbuf.size())
        CK(cudaMemcpy(static_cast<uint16_t*>(d_cache) + off, hbuf.data(),
                      std::min(hbuf.size(), cache_elems - off) * 2, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&d_x, size_t(B) * D * 2));
    CK(cudaMemcpy(d_x, hbuf.data(), size_t(B) * D * 2, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&d_out, size_t(B) * D * 2));
    BatchDesc bd;
    bd.num_seqs = B;
    bd.num_tokens = B;
    bd.block_table_stride = per_seq;
    bd.qo_indptr = qo.data();
    bd.cache_lens = lens.data();
    bd.positions = pos.data();
    bd.block_table = bt.data();
    CacheDesc cd{d_cache, DType::BF16, nblk, page, dc, dr};
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; ++i) layer->forward(bd, cd, d_x, DType::BF16, d_out, DType::BF16, st);
    CK(cudaStreamSynchronize(st));
    const float ms = median(time_events(st, e0, e1, std::max(iters, 20), [&] {
        layer->forward(bd, cd, d_x, DType::BF16, d_out, DType::BF16, st);
    }));
    CK(cudaGetLastError());
    std::vector<uint16_t> outh(size_t(B) * D);
    CK(cudaMemcpy(outh.data(), d_out, outh.size() * 2, cudaMemcpyDeviceToHost));
    for (uint16_t v : outh)
        if ((v & 0x7f80u) == 0x7f80u) {
            std::fprintf(stderr, "layer_B%d: non-finite output\n", B);
            std::exit(1);
        }
    cudaFree(d_cache);
    cudaFree(d_x);
    cudaFree(d_out);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(st);
    const double bytes = wbytes + double(B) * L * E * 2 + 2.0 * B * D * 2;
    const double flops = 2.0 * B * wmacs + 2.0 * B * H * double(L) * (E + dc);
    return {"layer_B" + std::to_string(B) + "_L" + std::to_string(L), B, H, ms, bytes, flops,
            double(B)};
}

int main(int argc, char** argv) {
    std::string torch_csv, out_csv = "bench_decode.csv";
    int iters = 15;
    std::string only;
    bool with_layer = true;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--torch") && i + 1 < argc) torch_csv = argv[++i];
        else if (!std::strcmp(argv[i], "--csv") && i + 1 < argc) out_csv = argv[++i];
        else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!std::strcmp(argv[i], "--no-layer")) with_layer = false;
    }
    std::map<std::string, double> torch_ms;
    double copy_gbps = 0, mm_tflops = 0;
    if (!torch_csv.empty()) {
        std::ifstream f(torch_csv);
        std::string line;
        while (std::getline(f, line)) {
            std::stringstream ss(line);
            std::string k, v;
            if (!std::getline(ss, k, ',') || !std::getline(ss, v, ',')) continue;
            const double x = std::atof(v.c_str());
            if (k == "copy_GBps") copy_gbps = x;
            else if (k == "matmul_TFLOPs") mm_tflops = x;
            else torch_ms[k] = x;
        }
    }
    if (copy_gbps <= 0) copy_gbps = 3000;
    if (mm_tflops <= 0) mm_tflops = 790;

    std::unique_ptr<Backend> be = make_cuda_backend(0);
    std::printf("device: %s; copy %.0f GB/s, bf16 matmul %.0f TFLOP/s (measured by torch)\n",
                be->describe().c_str(), copy_gbps, mm_tflops);
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const size_t l2 = prop.l2CacheSize;
    // the same device description and kernel choice as the backend (for the path column)
    mla::cuda::DeviceInfo dinfo;
    dinfo.device = 0;
    dinfo.sm_count = prop.multiProcessorCount;
    dinfo.cc_major = prop.major;
    dinfo.cc_minor = prop.minor;
    dinfo.smem_optin = prop.sharedMemPerBlockOptin;
    {
        const char* no_wg = std::getenv("MLA_CUDA_NO_WGMMA");
        mla::cuda::attention_init(dinfo, !(no_wg && no_wg[0] == '1'));
    }

    FILE* csv = std::fopen(out_csv.c_str(), "w");
    std::fprintf(csv,
                 "shape,B,L_mean,H,n,path,ms,GBps,TFLOPs,torch_ms,speedup_vs_torch,torch_graph_ms,"
                 "speedup_vs_torch_graph,flashmla_ms,"
                 "ratio_to_flashmla,mem_floor_ms,compute_floor_ms,floor_fraction,plan_ms,tokens_per_s\n");
    struct Row {
        std::string name, path;
        double ms, gbps, tflops, tms, tgms, fms, frac, tok_s;
    };
    std::vector<Row> rows;
    const int page = 64, D = 576;
    std::mt19937 rng(42);
    for (const Shape& s : shapes()) {
        if (!only.empty() && ("," + only + ",").find("," + s.name + ",") == std::string::npos)
            continue;
        const int T = s.B * s.n;
        std::vector<int> lens(s.B), qo(s.B + 1, 0);
        int64_t tokens = 0;
        int maxblk = 0;
        for (int b = 0; b < s.B; ++b) {
            lens[b] = seq_len(s, b);
            tokens += lens[b];
            maxblk = std::max(maxblk, (lens[b] + page - 1) / page);
            qo[b + 1] = qo[b] + s.n;
        }
        int64_t nblk = 0;
        for (int b = 0; b < s.B; ++b) nblk += (lens[b] + page - 1) / page;
        const size_t cache_bytes = size_t(nblk) * page * D * 2;
        // copies so that the rotation spans > 3x L2
        const int copies = int(std::min<size_t>(160, std::max<size_t>(1, 3 * l2 / cache_bytes + 1)));
        std::vector<int> bt(size_t(s.B) * maxblk, 0), perm(nblk);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        int64_t next = 0;
        for (int b = 0; b < s.B; ++b)
            for (int i = 0; i < (lens[b] + page - 1) / page; ++i)
                bt[size_t(b) * maxblk + i] = perm[next++];

        // random bf16 data, generated once on the host (a block of 1M values, tiled)
        std::vector<uint16_t> blockv(1 << 20);
        std::normal_distribution<float> nd;
        for (auto& v : blockv) v = f32_to_bf16(nd(rng));
        auto fill = [&](void* dst, size_t bytes) {
            const size_t chunk = blockv.size() * 2;
            for (size_t off = 0; off < bytes; off += chunk)
                CK(cudaMemcpy(static_cast<char*>(dst) + off, blockv.data(),
                              std::min(chunk, bytes - off), cudaMemcpyHostToDevice));
        };
        std::vector<void*> d_cache(copies), d_q(copies);
        const size_t q_bytes = size_t(T) * s.H * D * 2;
        for (int c = 0; c < copies; ++c) {
            CK(cudaMalloc(&d_cache[c], cache_bytes));
            fill(d_cache[c], cache_bytes);
            CK(cudaMalloc(&d_q[c], q_bytes));
            fill(d_q[c], q_bytes);
        }
        int *d_qo, *d_len, *d_bt;
        void* d_out;
        float* d_lse;
        CK(cudaMalloc(&d_qo, qo.size() * 4));
        CK(cudaMalloc(&d_len, lens.size() * 4));
        CK(cudaMalloc(&d_bt, bt.size() * 4));
        CK(cudaMalloc(&d_out, size_t(T) * s.H * 512 * 2));
        CK(cudaMalloc(&d_lse, size_t(T) * s.H * 4));
        CK(cudaMemcpy(d_qo, qo.data(), qo.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_len, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_bt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));

        AttentionParams p;
        p.num_seqs = s.B;
        p.num_tokens = T;
        p.num_heads = s.H;
        p.causal = 1;
        p.block_table_stride = maxblk;
        p.q_dtype = DType::BF16;
        p.out_dtype = DType::BF16;
        p.scale = 1.f / std::sqrt(192.f);
        p.qo_indptr = d_qo;
        p.seq_lens = d_len;
        p.block_table = d_bt;
        p.cache = CacheDesc{nullptr, DType::BF16, int32_t(nblk), page, 512, 64};
        p.out = d_out;
        p.lse = d_lse;
        const size_t mdb = be->attention_metadata_bytes(s.B, T, s.H, 512);
        const size_t wsb = be->attention_workspace_bytes(s.B, T, s.H, 512, 64);
        void *d_md, *d_ws;
        CK(cudaMalloc(&d_md, mdb));
        CK(cudaMalloc(&d_ws, wsb));
        cudaStream_t st;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        // plan time (once per step in an engine)
        p.q = d_q[0];
        p.cache.data = d_cache[0];
        const float plan_ms =
            median(time_events(st, e0, e1, 11, [&] { be->attention_plan(p, d_md, mdb, st); }));
        const double bytes_est = (double(tokens) * D * 2) / 1.5e12 * 1e3;  // ms at 1.5 TB/s
        // One graph holding `reps` back-to-back runs that rotate over the input copies, so the
        // timing sees GPU time, not host launch overhead (launches are slow on some hosts): at
        // least ~4 ms of estimated work per graph, so that the graph's own launch gap (the
        // event before it is timestamped before the host has submitted it) stays under ~1%.
        const int reps = std::min(400, std::max(copies, int(4.0 / (bytes_est + 0.005))));
        cudaGraphExec_t exec;
        {
            cudaGraph_t g;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            for (int r = 0; r < reps; ++r) {
                p.q = d_q[r % copies];
                p.cache.data = d_cache[r % copies];
                be->attention_run(p, d_md, mdb, d_ws, wsb, st);
            }
            CK(cudaStreamEndCapture(st, &g));
            CK(cudaGraphInstantiate(&exec, g, 0));
            CK(cudaGraphDestroy(g));
        }
        CK(cudaGraphLaunch(exec, st));
        CK(cudaStreamSynchronize(st));
        const double ms =
            median(time_events(st, e0, e1, iters, [&] { CK(cudaGraphLaunch(exec, st)); })) / reps;
        CK(cudaGetLastError());
        const double bytes = double(tokens) * D * 2 + double(q_bytes) + double(T) * s.H * 512 * 2;
        const double flops = 2.0 * s.n * s.H * double(tokens) * (576 + 512);
        const double gbps = bytes / (ms * 1e-3) / 1e9;
        const double tflops = flops / (ms * 1e-3) / 1e12;
        const double mem_floor = bytes / (copy_gbps * 1e9) * 1e3;
        const double cmp_floor = flops / (mm_tflops * 1e12) * 1e3;
        const double floor = std::max(mem_floor, cmp_floor);
        const double tms = torch_ms.count(s.name) ? torch_ms[s.name] : 0;
        const double tgms = torch_ms.count(s.name + "@graph") ? torch_ms[s.name + "@graph"] : 0;
        const double fms = flashmla_ms(s);
        const std::string path = mla::cuda::attention_path(dinfo, p);
        std::fprintf(csv, "%s,%d,%.0f,%d,%d,%s,%.4f,%.0f,%.1f,%.4f,%.2f,%.4f,%.2f,%.3f,%.2f,%.4f,%.4f,%.2f,%.4f,%.0f\n",
                     s.name.c_str(), s.B, double(tokens) / s.B, s.H, s.n, path.c_str(), ms, gbps,
                     tflops, tms, tms > 0 ? tms / ms : 0, tgms, tgms > 0 ? tgms / ms : 0, fms,
                     fms > 0 ? fms / ms : 0, mem_floor,
                     cmp_floor, floor / ms, plan_ms, T / (ms * 1e-3));
        std::fflush(csv);
        rows.push_back({s.name, path, ms, gbps, tflops, tms, tgms, fms, floor / ms, T / (ms * 1e-3)});
        cudaGraphExecDestroy(exec);
        for (int c = 0; c < copies; ++c) {
            cudaFree(d_cache[c]);
            cudaFree(d_q[c]);
        }
        cudaFree(d_qo);
        cudaFree(d_len);
        cudaFree(d_bt);
        cudaFree(d_out);
        cudaFree(d_lse);
        cudaFree(d_md);
        cudaFree(d_ws);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        cudaStreamDestroy(st);
    }
    if (only.empty() || only.rfind("compress", 0) == 0) {
        for (int T : {128, 4096, 65536}) {
            const BenchRow r = bench_compress(be.get(), T, l2, copy_gbps, iters);
            write_extra(csv, r, copy_gbps, mm_tflops);
            rows.push_back({r.name, "compress", r.ms, r.bytes / (r.ms * 1e-3) / 1e9,
                            r.flops / (r.ms * 1e-3) / 1e12, 0, 0, 0, floor_of(r, copy_gbps, mm_tflops) / r.ms,
                            r.tokens / (r.ms * 1e-3)});
        }
    }
    if (with_layer && (only.empty() || only.rfind("layer", 0) == 0)) {
        for (int B : {1, 128}) {
            const BenchRow r = bench_layer(be.get(), B, 4096, iters);
            write_extra(csv, r, copy_gbps, mm_tflops);
            rows.push_back({r.name, "layer", r.ms, r.bytes / (r.ms * 1e-3) / 1e9,
                            r.flops / (r.ms * 1e-3) / 1e12, 0, 0, 0, floor_of(r, copy_gbps, mm_tflops) / r.ms,
                            r.tokens / (r.ms * 1e-3)});
        }
    }
    std::fclose(csv);
    std::printf("\n%-20s %8s %6s %7s %8s %7s %8s %7s %8s %6s %5s %10s\n", "shape", "ms", "GB/s",
                "TFLOP/s", "torch", "x torch", "torch_g", "x tg", "flashmla", "x fmla", "floor",
                "tokens/s");
    for (const Row& r : rows)
        std::printf("%-20s %8.4f %6.0f %7.1f %8.4f %7.2f %8.4f %7.2f %8.3f %6.2f %5.2f %10.3g\n",
                    r.name.c_str(), r.ms, r.gbps, r.tflops, r.tms, r.tms > 0 ? r.tms / r.ms : 0.0,
                    r.tgms, r.tgms > 0 ? r.tgms / r.ms : 0.0, r.fms, r.fms > 0 ? r.fms / r.ms : 0.0,
                    r.frac, r.tok_s);
    std::printf("(torch = eager bmm+softmax, torch_g = the same captured in a CUDA graph; x = their "
                "time / ours;\n x fmla = FlashMLA's published H100 time / ours; floor = max(memory, "
                "compute) floor / ours;\n compress_T*: T tokens of kv_a (bf16) -> RMSNorm + RoPE -> bf16 cache, "
                "bytes = kv_a + positions + slots read + cache entries written;\n layer_B*: one "
                "mla layer forward (DeepSeek-V3: hidden 7168, 128 heads, q_lora 1536), B sequences "
                "of one new token after 4095 cached,\n bf16 weights/cache/hidden, timed with events "
                "around each call (host staging included), bytes = weights + cache read once)\n");
    return 0;
}
