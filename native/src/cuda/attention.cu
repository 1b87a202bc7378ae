// Absorbed MLA decode attention over a paged latent cache.
//
// Work decomposition. A sequence b with n_b query tokens and H heads has n_b * H query rows
// (row R = token j * H + head h), cut into head tiles of M rows, so several query tokens of one
// sequence (MTP) share the key stream. CTAs come in groups of R = ceil(H / M): the CTAs of a
// group walk the same keys at the same time, each with its own head tile, so the second read of
// a key tile hits L2. A segment is (sequence, pass); pass p holds head tiles p*R .. p*R+R-1.
// A segment's keys are cut into tiles of BN keys ("units"; an empty sequence still counts one
// unit so that someone writes its output). All segments' units are laid end to end and cut into
// NG contiguous ranges, one per group of a single persistent wave. A CTA walks its range segment
// by segment; a segment covered by one group is written straight to out, a segment cut between
// groups leaves f32 partials (O, lse) in the workspace that the combine kernel merges.
// The plan chooses the cuts: a cut piece costs about P units more than its keys (its own
// pipeline fill and Q load, the partials written and combined), so besides the equal split
// (ranges of U / NG units) it tries capacities C from ceil(U / NG) up to ~1.25x and one derived
// from the longest segment, the ideal boundaries k * C snapped to a segment edge (to the nearer
// one, or to one within C / 4, else cut), and keeps the candidate whose busiest group costs
// least (units + P per cut piece; ties: the equal split). No candidate may give a group more
// than ~1.25x the equal share: where groups hold few units (B = 1), the pieces of a cut
// sequence run side by side and their overhead is off the critical path. Uniform batches then
// get whole sequences (or equal halves) per group and leave a few groups idle; a long sequence
// is still cut across many groups. P = DeviceInfo::cut_penalty (MLA_CUDA_CUT_PENALTY; <= 0:
// the equal split).
//
// The plan (one CTA, on device) writes the segment table, the group boundaries and the list of
// cut segments into the metadata buffer; run reads it, so neither needs a host sync.
//
// Kernels for the fast path (dc = 512, dr = 64, bf16 cache):
//   decode_ws_kernel     sm_90a, 64-row tiles: warp-specialized (scores+softmax | loads+P V),
//                        wgmma, 32-key tiles in a 4-stage ring, 20 of the 36 k-steps of Q
//                        held in registers, cheaper softmax (default on H100/H200;
//                        MLA_CUDA_WS_FX=0: the previous softmax, MLA_CUDA_WS_QREG=0: no Q in
//                        registers)
//   decode_ss_kernel     sm_90a, 64-row tiles, bf16 q: two warpgroups in a "seesaw" (each
//                        computes the scores of every other 64-key tile and half of O; P
//                        and the row max cross over through shared memory), keys loaded by
//                        both (MLA_CUDA_DECODE=seesaw; not yet measured, so not the default)
//   decode_wgmma_kernel  sm_90a, 64-row tiles: two symmetric warpgroups, wgmma, 64-key tiles
//                        (MLA_CUDA_WS=0)
//   decode_mma_kernel    any sm_80+ GPU and 16/32-row tiles (H <= 32): mma.sync m16n8k16
// MLA_CUDA_PDL=1 launches the sm_90a kernels and the combine with programmatic dependent launch.
// MLA_CUDA_WS_LEAN=0 (the v12 Q copy and output rows, with an index division per chunk) selects
// a variant of decode_ws_kernel.
// The versions and their measurements: native/bench/cuda/NOTES.md.
// Anything else (other widths, f32 cache) takes generic_kernel: f32 CUDA cores, one CTA per
// (token, head); correct, not fast.
#include "attention.cuh"
#include "common.cuh"
#include "wgmma.cuh"

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <string>
#include <type_traits>

namespace mla {
namespace cuda {

namespace {

constexpr int kThreads = 256;            // 8 warps per CTA for the mma kernel
constexpr int kDc = 512, kDr = 64, kD = kDc + kDr;
constexpr int kChunks = kD / 8;          // 16-byte chunks per cache entry (bf16)
constexpr int kRowBytes = kD * 2;
constexpr int kHeader = 16;              // ints in the metadata header
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------------------------------
// Metadata layout (int32): header, then
//   seg_b[Smax], seg_m[Smax], seg_prefix[Smax + 1], split[G], seq_segoff[B + 1],
//   seq_unitoff[B + 1], bnd[G + 1]
// bnd[g] .. bnd[g + 1] is the unit range of group g (bnd[0] = 0, bnd[NG] = U; an empty range:
// an idle group).
// header: [0] U (units), [1] S (segments), [2] number of cut segments, [3] groups, [4] M,
// [5] BN, [6] R. A segment is (sequence, pass): pass p covers head tiles p*R .. p*R+R-1, one per
// CTA of a group.
// ------------------------------------------------------------------------------------------
struct Layout {
    int64_t smax = 0, g = 0, b = 0;
    __host__ __device__ int64_t seg_b() const { return kHeader; }
    __host__ __device__ int64_t seg_m() const { return kHeader + smax; }
    __host__ __device__ int64_t seg_prefix() const { return kHeader + 2 * smax; }
    __host__ __device__ int64_t split() const { return kHeader + 3 * smax + 1; }
    __host__ __device__ int64_t seq_segoff() const { return split() + g; }
    __host__ __device__ int64_t seq_unitoff() const { return seq_segoff() + b + 1; }
    __host__ __device__ int64_t bnd() const { return seq_unitoff() + b + 1; }
    __host__ __device__ int64_t total_ints() const { return bnd() + g + 1; }
};

// Rows per tile for a head count: 16, 32 or 64.
int rows_per_tile(int heads) {
    if (heads <= 16) return 16;
    if (heads <= 32) return 32;
    return 64;
}

size_t mma_smem_bytes(int M, int BN) {
    const int WC = BN / 16;
    size_t s = size_t(M) * kRowBytes + 2 * size_t(BN) * kRowBytes + size_t(M) * BN * 2;
    s += size_t(WC) * M * 4;        // cross-warp row max / row sum (aliased)
    s += size_t(M) * 4 * 5;         // m, l, alpha, qrow, limit
    return s;
}

// Key tile size of the mma kernel for M rows on this device; 0 = does not fit (generic path).
int pick_bn(const DeviceInfo& dev, int M) {
    for (int bn : {64, 32, 16})
        if (mma_smem_bytes(M, bn) <= dev.smem_optin) return bn;
    return 0;
}

struct Sched {
    int M = 64, BN = 64;
    int R = 1;    // CTAs per group: head tiles processed side by side over the same keys
    int NG = 1;   // groups; the unit ranges are cut into NG pieces
    int G = 1;    // CTAs = NG * R
    int64_t smax = 0;
};

bool use_wgmma(const DeviceInfo& dev, int M) { return dev.wgmma && M == 64; }

Sched schedule(const DeviceInfo& dev, int B, int T, int H) {
    Sched s;
    s.M = rows_per_tile(H);
    s.BN = use_wgmma(dev, s.M) ? 64 : pick_bn(dev, s.M);
    if (s.BN == 0) s.BN = 64;
    const int sms = std::max(1, dev.sm_count);
    s.R = std::min(sms, (H + s.M - 1) / s.M);
    s.NG = std::max(1, sms / s.R);
    s.G = s.NG * s.R;
    s.smax = int64_t(B) + (int64_t(T) * H + s.M - 1) / s.M;
    return s;
}

// The group whose range holds unit u (u < U): the last g < NG with bnd[g] <= u (idle groups,
// bnd[g] == bnd[g + 1], are passed over).
__device__ __forceinline__ int owner_in(const int32_t* bnd, int NG, int u) {
    int lo = 0, hi = NG - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (bnd[mid] <= u) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// ------------------------------------------------------------------------------------------
// Plan
// ------------------------------------------------------------------------------------------
struct PlanArgs {
    const int32_t* qo_indptr;
    const int32_t* seq_lens;
    int32_t* md;
    int B, H, M, BN, G, R;  // G: groups (NG)
    int penalty4;           // cost of a cut piece in quarter units; <= 0: the equal split
    Layout lay;
};

constexpr int kPlanThreads = 1024;
constexpr int kPlanMaxGroups = 192;   // more groups than this: the equal split
constexpr int kPlanCaps = 16;         // capacities ceil(U / NG) * (1 + j / 64), j < kPlanCaps
// candidates: 0 the equal split; 1, 2 the capacity derived from the longest segment (snap to the
// nearer edge, snap within C / 4); then each of the kPlanCaps capacities in both modes
constexpr int kPlanCands = 3 + 2 * kPlanCaps;

// A candidate's ideal boundary k is floor(k * num / den); mode 0: snap to the nearer segment
// edge, 1: snap to an edge within C / 4, else cut, 2: cut where it falls.
struct PlanCand {
    int64_t num, den;
    int mode, cap;
};
__device__ __forceinline__ PlanCand plan_cand(int c, int U, int NG, int cmin, int cder) {
    PlanCand k;
    if (c == 0) {
        k.num = U; k.den = NG; k.mode = 2; k.cap = cmin;
    } else {
        k.cap = c < 3 ? cder : cmin + (c - 3) / 2 * cmin / 64;
        k.num = k.cap; k.den = 1; k.mode = (c - 1) & 1;
    }
    return k;
}
// boundary x inside segment [p0, p1) (p0 <= x < p1) after snapping, encoded 2 * value + (cut)
__device__ __forceinline__ int plan_snap(int x, int p0, int p1, const PlanCand& k) {
    if (x == p0) return 2 * x;
    const int d = x - p0, u = p1 - x;
    if (k.mode == 0) return 2 * (d <= u ? p0 : p1);
    if (k.mode == 1) {
        const int tol = k.cap / 4;
        if (d <= tol) return 2 * p0;
        if (u <= tol) return 2 * p1;
    }
    return 2 * x + 1;
}

__global__ void __launch_bounds__(kPlanThreads) plan_kernel(PlanArgs a) {
    __shared__ int s_a[kPlanThreads], s_u[kPlanThreads];
    __shared__ int s_carry_a, s_carry_u, s_nsplit, s_szmax, s_best;
    __shared__ int s_bnd[kPlanCands][kPlanMaxGroups + 1];
    __shared__ int s_cost[kPlanCands];
    const int tid = threadIdx.x;
    int32_t* seg_b = a.md + a.lay.seg_b();
    int32_t* seg_m = a.md + a.lay.seg_m();
    int32_t* seg_prefix = a.md + a.lay.seg_prefix();
    int32_t* split = a.md + a.lay.split();
    int32_t* seq_segoff = a.md + a.lay.seq_segoff();
    int32_t* seq_unitoff = a.md + a.lay.seq_unitoff();
    int32_t* bnd = a.md + a.lay.bnd();
    if (tid == 0) { s_carry_a = 0; s_carry_u = 0; s_nsplit = 0; s_szmax = 1; }
    __syncthreads();
    for (int base = 0; base < a.B; base += kPlanThreads) {
        const int b = base + tid;
        int mt = 0, un = 0;
        if (b < a.B) {
            const int n = a.qo_indptr[b + 1] - a.qo_indptr[b];
            const int L = max(a.seq_lens[b], 0);
            mt = n > 0 ? int(((int64_t(n) * a.H + a.M - 1) / a.M + a.R - 1) / a.R) : 0;
            const int units = max(1, (L + a.BN - 1) / a.BN);
            un = mt * units;
            if (mt > 0) atomicMax(&s_szmax, units);
        }
        s_a[tid] = mt;
        s_u[tid] = un;
        __syncthreads();
        for (int off = 1; off < kPlanThreads; off <<= 1) {  // inclusive scan
            int va = tid >= off ? s_a[tid - off] : 0;
            int vu = tid >= off ? s_u[tid - off] : 0;
            __syncthreads();
            s_a[tid] += va;
            s_u[tid] += vu;
            __syncthreads();
        }
        if (b < a.B) {
            seq_segoff[b] = s_carry_a + s_a[tid] - mt;
            seq_unitoff[b] = s_carry_u + s_u[tid] - un;
        }
        __syncthreads();
        if (tid == 0) {
            s_carry_a += s_a[kPlanThreads - 1];
            s_carry_u += s_u[kPlanThreads - 1];
        }
        __syncthreads();
    }
    const int S = s_carry_a, U = s_carry_u, NG = a.G;
    if (tid == 0) {
        seq_segoff[a.B] = S;
        seq_unitoff[a.B] = U;
        seg_prefix[S] = U;
    }
    for (int b = tid; b < a.B; b += kPlanThreads) {
        const int n = a.qo_indptr[b + 1] - a.qo_indptr[b];
        const int L = max(a.seq_lens[b], 0);
        const int mt = n > 0 ? int(((int64_t(n) * a.H + a.M - 1) / a.M + a.R - 1) / a.R) : 0;
        const int units = max(1, (L + a.BN - 1) / a.BN);
        const int s0 = seq_segoff[b], u0 = seq_unitoff[b];
        for (int m = 0; m < mt; ++m) {
            seg_b[s0 + m] = b;
            seg_m[s0 + m] = m;
            seg_prefix[s0 + m] = u0 + m * units;
        }
    }
    __syncthreads();

    // group boundaries, kept in shared memory (s_a, free after the scan) where they fit
    int* fb = NG < kPlanThreads ? s_a : bnd;
    if (a.penalty4 > 0 && NG <= kPlanMaxGroups && U > 0) {
        const int cmin = (U + NG - 1) / NG;
        const int sz = s_szmax;
        const int cder = sz <= cmin ? (cmin + sz - 1) / sz * sz : (sz + sz / cmin - 1) / (sz / cmin);
        for (int i = tid; i < kPlanCands * (NG + 1); i += kPlanThreads) {
            const int c = i / (NG + 1), k = i - c * (NG + 1);
            s_bnd[c][k] = k == 0 ? 0 : 2 * U;
            if (k == 0) s_cost[c] = 0;
        }
        __syncthreads();
        // the ideal boundaries that fall inside each segment, snapped (32-bit arithmetic where
        // every product fits: U * (NG + 1) * 2 < 2^32). With few segments (long ones hold many
        // boundaries) up to 32 threads share one (segment, candidate) pair.
        const bool narrow = uint64_t(U) * uint64_t(NG + 1) * 2u < (uint64_t(1) << 32);
        const int ways = max(1, min(32, kPlanThreads / (S * kPlanCands)));
        for (int i = tid; i < S * kPlanCands * ways; i += kPlanThreads) {
            const int item = i / ways, sub = i - item * ways;
            const int s = item / kPlanCands, c = item - s * kPlanCands;
            const int p0 = seg_prefix[s], p1 = seg_prefix[s + 1];
            const PlanCand k = plan_cand(c, U, NG, cmin, cder);
            // floor(j * num / den) >= p  <=>  j >= ceil(p * den / num)
            if (narrow) {
                const uint32_t num = uint32_t(k.num), den = uint32_t(k.den);
                const uint32_t j0 = max(1u, (uint32_t(p0) * den + num - 1) / num);
                const uint32_t j1 = min(uint32_t(NG) - 1, (uint32_t(p1) * den + num - 1) / num - 1);
                for (uint32_t j = j0 + sub; j <= j1; j += ways)
                    s_bnd[c][j] = plan_snap(int(den == 1 ? j * num : j * num / den), p0, p1, k);
            } else {
                const int64_t j0 = max(int64_t(1), (int64_t(p0) * k.den + k.num - 1) / k.num);
                const int64_t j1 = min(int64_t(NG) - 1, (int64_t(p1) * k.den + k.num - 1) / k.num - 1);
                for (int64_t j = j0 + sub; j <= j1; j += ways)
                    s_bnd[c][j] = plan_snap(int(j * k.num / k.den), p0, p1, k);
            }
        }
        __syncthreads();
        // cost of a candidate: its busiest group (4 per unit + penalty4 per cut piece). No group
        // may hold more than cmin + max(1, cmin / 4) units: where the groups are short (few
        // units per group, e.g. B = 1) cut pieces run side by side and cost little, while one
        // group walking a whole sequence is slow.
        const int limit = cmin + max(1, cmin / 4);
        for (int i = tid; i < kPlanCands * NG; i += kPlanThreads) {
            const int c = i / NG, k = i - c * NG;
            const int lo = s_bnd[c][k], hi = s_bnd[c][k + 1];
            int cost = 0;
            if (hi / 2 > lo / 2) cost = 4 * (hi / 2 - lo / 2) + a.penalty4 * ((lo & 1) + (hi & 1));
            if (hi / 2 < lo / 2 || (c > 0 && hi / 2 - lo / 2 > limit))
                cost = 0x7fffffff;  // not monotone (cannot happen), or too long a group
            atomicMax(&s_cost[c], cost);
        }
        __syncthreads();
        if (tid < 32) {
            int best = 0x7fffffff, bi = 0;
            for (int c = tid; c < kPlanCands; c += 32)
                if (s_cost[c] < best) { best = s_cost[c]; bi = c; }
            for (int o = 16; o > 0; o >>= 1) {
                const int ob = __shfl_xor_sync(0xffffffffu, best, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (ob < best || (ob == best && oi < bi)) { best = ob; bi = oi; }
            }
            if (tid == 0) s_best = bi;
        }
        __syncthreads();
        for (int k = tid; k <= NG; k += kPlanThreads) fb[k] = s_bnd[s_best][k] / 2;
    } else {
        for (int k = tid; k <= NG; k += kPlanThreads) fb[k] = int(int64_t(k) * U / NG);
    }
    __syncthreads();
    if (fb != bnd)
        for (int k = tid; k <= NG; k += kPlanThreads) bnd[k] = fb[k];
    for (int s = tid; s < S; s += kPlanThreads) {
        const int p0 = seg_prefix[s], p1 = seg_prefix[s + 1];
        // cut: some boundary strictly inside (p0, p1)
        int lo = 0, hi = NG;  // first k with bnd[k] > p0 (bnd[NG] = U > p0)
        while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            if (fb[mid] > p0) hi = mid; else lo = mid + 1;
        }
        if (fb[lo] < p1) split[atomicAdd(&s_nsplit, 1)] = s;
    }
    __syncthreads();
    if (tid == 0) {
        a.md[0] = U;
        a.md[1] = S;
        a.md[2] = s_nsplit;
        a.md[3] = a.G;
        a.md[4] = a.M;
        a.md[5] = a.BN;
        a.md[6] = a.R;
    }
}

// ------------------------------------------------------------------------------------------
// Decode kernel: mma.sync bf16, dc = 512, dr = 64, bf16 cache
// ------------------------------------------------------------------------------------------
struct RunArgs {
    const void* q;
    int q_f32;
    const int32_t* qo_indptr;
    const int32_t* seq_lens;
    const int32_t* block_table;
    int64_t bt_stride;
    const uint16_t* cache;
    int page_shift;
    void* out;
    int out_f32;
    float* lse;
    const int32_t* md;
    float* ws_o;     // [2G][M][512] f32, or bf16 (same offsets in elements) where ws_bf16
    int ws_bf16;     // partial O stored as bf16 (warp-specialized kernel, bf16 output)
    float* ws_lse;   // [2G][M]
    int H, causal, M, G;  // G: CTAs
    int R, NG;            // CTAs per group, groups
    float scale_log2;
    Layout lay;
};

// This CTA's share of the plan: its group's unit range [ubeg, uend), the segment tables and
// the first segment reaching into the range (lo: the last s with seg_prefix[s] <= ubeg). False
// for an idle CTA (no units at all, or an empty range).
struct CtaRange {
    int g, rr, S, lo;
    int64_t ubeg, uend;
    const int32_t *seg_b, *seg_m, *seg_prefix;
};
__device__ __forceinline__ bool cta_range(const RunArgs& a, CtaRange& c) {
    c.g = blockIdx.x;
    const int grp = c.g / a.R;
    c.rr = c.g - grp * a.R;
    const int U = a.md[0];
    c.S = a.md[1];
    if (U <= 0) return false;
    c.ubeg = a.md[a.lay.bnd() + grp];
    c.uend = a.md[a.lay.bnd() + grp + 1];
    if (c.ubeg >= c.uend) return false;
    c.seg_b = a.md + a.lay.seg_b();
    c.seg_m = a.md + a.lay.seg_m();
    c.seg_prefix = a.md + a.lay.seg_prefix();
    int lo = 0, hi = c.S - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (c.seg_prefix[mid] <= c.ubeg) lo = mid; else hi = mid - 1;
    }
    c.lo = lo;
    return true;
}

// Byte offset of 16-byte chunk c of row r in a swizzled [rows][72 chunks] tile.
__device__ __forceinline__ uint32_t swz(int r, int c) {
    return uint32_t(r * kRowBytes + ((c ^ (r & 7)) << 4));
}
// Byte offset in the P tile [M][BN] bf16 (BN / 8 chunks per row).
template <int BN>
__device__ __forceinline__ uint32_t pswz(int r, int c) {
    if constexpr (BN == 64) return uint32_t(r * 128 + ((c ^ (r & 7)) << 4));
    else if constexpr (BN == 32) return uint32_t(r * 64 + ((c ^ ((r >> 1) & 3)) << 4));
    else return uint32_t(r * 32 + ((c ^ ((r >> 2) & 1)) << 4));
}

template <int MT, int BN>
__global__ void __launch_bounds__(kThreads, 1) decode_mma_kernel(RunArgs a) {
    constexpr int M = MT * 16;
    constexpr int WC = BN / 16;              // warps along keys in the score phase
    constexpr int WR = 8 / WC;               // warps along rows
    constexpr int MTW = MT / WR > 0 ? MT / WR : 1;  // m-tiles per warp in the score phase
    constexpr int TPK = kThreads / BN;       // threads per key row when loading
    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t* sQ = smem;
    uint8_t* sK = sQ + M * kRowBytes;
    uint8_t* sP = sK + 2 * BN * kRowBytes;
    float* s_red = reinterpret_cast<float*>(sP + M * BN * 2);   // [WC][M]
    float* s_m = s_red + WC * M;
    float* s_l = s_m + M;
    float* s_alpha = s_l + M;
    int* s_qrow = reinterpret_cast<int*>(s_alpha + M);
    int* s_lim = s_qrow + M;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    CtaRange cr;
    if (!cta_range(a, cr)) return;
    const int g = cr.g, rr = cr.rr, S = cr.S, lo = cr.lo;
    const int64_t ubeg = cr.ubeg, uend = cr.uend;
    const int32_t *seg_b = cr.seg_b, *seg_m = cr.seg_m, *seg_prefix = cr.seg_prefix;
    const uint32_t sQa = smem_addr(sQ), sKa = smem_addr(sK), sPa = smem_addr(sP);
    const int wr = warp / WC, wc = warp % WC;
    const bool s_active = wr * MTW < MT;

    for (int s = lo; s < S && seg_prefix[s] < uend; ++s) {
        const int p0 = seg_prefix[s], p1 = seg_prefix[s + 1];
        const int b = seg_b[s];
        const int qo0 = a.qo_indptr[b];
        const int n = a.qo_indptr[b + 1] - qo0;
        const int mtile = seg_m[s] * a.R + rr;
        if (mtile * M >= n * a.H) continue;  // this pass has no head tile for this CTA
        const int L = max(a.seq_lens[b], 0);
        const int ntiles = (L + BN - 1) / BN;
        const int t0 = int((ubeg > p0 ? ubeg : int64_t(p0)) - p0);
        const int t1 = min(int((uend < p1 ? uend : int64_t(p1)) - p0), ntiles);
        const bool cut = p0 < ubeg || p1 > uend;  // not all of it in this group's range
        const int slot = 2 * g + (ubeg >= p0 ? 0 : 1);

        __syncthreads();  // previous piece fully done with shared memory
        if (tid < M) {
            const int R = mtile * M + tid;
            int qrow = -1, lim = 0;
            if (R < n * a.H) {
                const int j = R / a.H, h = R - j * a.H;
                qrow = (qo0 + j) * a.H + h;
                lim = a.causal ? L - n + j + 1 : L;
                lim = max(0, min(lim, L));
            }
            s_qrow[tid] = qrow;
            s_lim[tid] = lim;
            s_m[tid] = -INFINITY;
            s_l[tid] = 0.f;
        }
        __syncthreads();

        const int32_t* bt = a.block_table + int64_t(b) * a.bt_stride;
        const int pmask = (1 << a.page_shift) - 1;
        const int my_key = tid / TPK, my_c0 = tid % TPK;
        auto key_src = [&](int t) -> const uint16_t* {
            const int kpos = t * BN + my_key;
            if (kpos >= L) return nullptr;
            const int blk = __ldg(bt + (kpos >> a.page_shift));
            return a.cache + (int64_t(blk) * (pmask + 1) + (kpos & pmask)) * kD;
        };
        auto issue_tile = [&](int t, const uint16_t* src) {
            const uint32_t dst = sKa + ((t - t0) & 1) * (BN * kRowBytes);
            for (int c = my_c0; c < kChunks; c += TPK)
                cp_async16(dst + swz(my_key, c), src ? src + c * 8 : a.cache, src ? 16 : 0);
        };

        float o[MT][8][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[i][j][e] = 0.f;

        if (t0 < t1) {
            // Q tile
            if (!a.q_f32) {
                const uint16_t* q = static_cast<const uint16_t*>(a.q);
                for (int i = tid; i < M * kChunks; i += kThreads) {
                    const int r = i / kChunks, c = i - r * kChunks;
                    const int qrow = s_qrow[r];
                    cp_async16(sQa + swz(r, c), qrow >= 0 ? q + int64_t(qrow) * kD + c * 8 : q,
                               qrow >= 0 ? 16 : 0);
                }
            } else {
                const float* q = static_cast<const float*>(a.q);
                for (int i = tid; i < M * kChunks; i += kThreads) {
                    const int r = i / kChunks, c = i - r * kChunks;
                    const int qrow = s_qrow[r];
                    uint4 v = make_uint4(0, 0, 0, 0);
                    if (qrow >= 0) {
                        const float4* src =
                            reinterpret_cast<const float4*>(q + int64_t(qrow) * kD + c * 8);
                        const float4 x0 = __ldg(src), x1 = __ldg(src + 1);
                        v.x = pack_bf16x2(x0.x, x0.y);
                        v.y = pack_bf16x2(x0.z, x0.w);
                        v.z = pack_bf16x2(x1.x, x1.y);
                        v.w = pack_bf16x2(x1.z, x1.w);
                    }
                    *reinterpret_cast<uint4*>(sQ + swz(r, c)) = v;
                }
            }
            issue_tile(t0, key_src(t0));
            cp_async_commit();
            const uint16_t* next_src = t0 + 1 < t1 ? key_src(t0 + 1) : nullptr;

            for (int t = t0; t < t1; ++t) {
                if (t + 1 < t1) {
                    issue_tile(t + 1, next_src);
                    cp_async_commit();
                    if (t + 2 < t1) next_src = key_src(t + 2);
                    cp_async_wait<1>();
                } else {
                    cp_async_wait<0>();
                }
                __syncthreads();
                const uint32_t kbase = sKa + ((t - t0) & 1) * (BN * kRowBytes);

                // ---- scores: rows [wr*MTW*16, +MTW*16), keys [wc*16, +16)
                float sc[MTW][2][4];
#pragma unroll
                for (int i = 0; i < MTW; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e) sc[i][j][e] = 0.f;
                if (s_active) {
                    const int krow = wc * 16 + (lane & 7) + ((lane >> 4) << 3);
                    const int kc = (lane >> 3) & 1;
#pragma unroll 6
                    for (int ks = 0; ks < kChunks / 2; ++ks) {
                        uint32_t bq[4];
                        ldmatrix_x4(kbase + swz(krow, ks * 2 + kc), bq[0], bq[1], bq[2], bq[3]);
#pragma unroll
                        for (int i = 0; i < MTW; ++i) {
                            uint32_t af[4];
                            const int r = (wr * MTW + i) * 16 + (lane & 15);
                            ldmatrix_x4(sQa + swz(r, ks * 2 + (lane >> 4)), af[0], af[1], af[2],
                                        af[3]);
                            mma_bf16_16816(sc[i][0], af, bq[0], bq[1]);
                            mma_bf16_16816(sc[i][1], af, bq[2], bq[3]);
                        }
                    }
                    // scale, mask, row max
#pragma unroll
                    for (int i = 0; i < MTW; ++i)
#pragma unroll
                        for (int hf = 0; hf < 2; ++hf) {
                            const int r = (wr * MTW + i) * 16 + (lane >> 2) + hf * 8;
                            const int lim = s_lim[r];
                            float mx = -INFINITY;
#pragma unroll
                            for (int j = 0; j < 2; ++j)
#pragma unroll
                                for (int e = 0; e < 2; ++e) {
                                    const int key = t * BN + wc * 16 + j * 8 + (lane & 3) * 2 + e;
                                    float v = sc[i][j][hf * 2 + e] * a.scale_log2;
                                    v = key < lim ? v : -INFINITY;
                                    sc[i][j][hf * 2 + e] = v;
                                    mx = fmaxf(mx, v);
                                }
                            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                            if ((lane & 3) == 0) s_red[wc * M + r] = mx;
                        }
                }
                __syncthreads();
                if (tid < M) {
                    float mx = s_red[tid];
#pragma unroll
                    for (int c = 1; c < WC; ++c) mx = fmaxf(mx, s_red[c * M + tid]);
                    const float mold = s_m[tid];
                    const float mnew = fmaxf(mold, mx);
                    s_alpha[tid] = mnew == -INFINITY ? 1.f : exp2f(mold - mnew);
                    s_m[tid] = mnew;
                }
                __syncthreads();
                if (s_active) {
#pragma unroll
                    for (int i = 0; i < MTW; ++i)
#pragma unroll
                        for (int hf = 0; hf < 2; ++hf) {
                            const int r = (wr * MTW + i) * 16 + (lane >> 2) + hf * 8;
                            float mu = s_m[r];
                            mu = mu == -INFINITY ? 0.f : mu;
                            float sum = 0.f;
#pragma unroll
                            for (int j = 0; j < 2; ++j) {
                                const float p0 = exp2f(sc[i][j][hf * 2] - mu);
                                const float p1 = exp2f(sc[i][j][hf * 2 + 1] - mu);
                                sum += p0 + p1;
                                const int col = wc * 16 + j * 8 + (lane & 3) * 2;
                                *reinterpret_cast<uint32_t*>(sP + pswz<BN>(r, col >> 3) +
                                                             (col & 7) * 2) = pack_bf16x2(p0, p1);
                            }
                            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                            if ((lane & 3) == 0) s_red[wc * M + r] = sum;
                        }
                }
                __syncthreads();
                if (tid < M) {
                    float sum = 0.f;
#pragma unroll
                    for (int c = 0; c < WC; ++c) sum += s_red[c * M + tid];
                    s_l[tid] = s_l[tid] * s_alpha[tid] + sum;
                }
                // ---- O[:, warp*64 .. +64] = alpha * O + P V
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    const float a0 = s_alpha[i * 16 + (lane >> 2)];
                    const float a1 = s_alpha[i * 16 + (lane >> 2) + 8];
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        o[i][j][0] *= a0;
                        o[i][j][1] *= a0;
                        o[i][j][2] *= a1;
                        o[i][j][3] *= a1;
                    }
                }
#pragma unroll
                for (int ks = 0; ks < BN / 16; ++ks) {
                    uint32_t pf[MT][4];
#pragma unroll
                    for (int i = 0; i < MT; ++i)
                        ldmatrix_x4(sPa + pswz<BN>(i * 16 + (lane & 15), ks * 2 + (lane >> 4)),
                                    pf[i][0], pf[i][1], pf[i][2], pf[i][3]);
                    const int vrow = ks * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
                    for (int nb = 0; nb < 4; ++nb) {
                        uint32_t v0, v1, v2, v3;
                        ldmatrix_x4_trans(kbase + swz(vrow, warp * 8 + nb * 2 + (lane >> 4)), v0,
                                          v1, v2, v3);
#pragma unroll
                        for (int i = 0; i < MT; ++i) {
                            mma_bf16_16816(o[i][nb * 2], pf[i], v0, v1);
                            mma_bf16_16816(o[i][nb * 2 + 1], pf[i], v2, v3);
                        }
                    }
                }
                __syncthreads();
            }
        }

        // ---- write this piece
        if (t0 >= t1) __syncthreads();
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = i * 16 + (lane >> 2) + hf * 8;
                const int qrow = s_qrow[r];
                if (qrow < 0) continue;
                const float l = s_l[r];
                const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int col = warp * 64 + j * 8 + (lane & 3) * 2;
                    const float v0 = o[i][j][hf * 2] * inv, v1 = o[i][j][hf * 2 + 1] * inv;
                    if (cut) {
                        float* dst = a.ws_o + (int64_t(slot) * M + r) * kDc + col;
                        *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
                    } else if (a.out_f32) {
                        float* dst = static_cast<float*>(a.out) + int64_t(qrow) * kDc + col;
                        *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
                    } else {
                        uint16_t* dst = static_cast<uint16_t*>(a.out) + int64_t(qrow) * kDc + col;
                        *reinterpret_cast<uint32_t*>(dst) = pack_bf16x2(v0, v1);
                    }
                }
            }
        if (tid < M) {
            const int qrow = s_qrow[tid];
            const float l = s_l[tid];
            if (qrow >= 0) {
                if (cut) {
                    a.ws_lse[int64_t(slot) * M + tid] =
                        l > 0.f ? (s_m[tid] + log2f(l)) * kLn2 : -INFINITY;
                } else if (a.lse) {
                    a.lse[qrow] = l > 0.f ? (s_m[tid] + log2f(l)) * kLn2 : INFINITY;
                }
            }
        }
    }
}


// ------------------------------------------------------------------------------------------
// Decode kernel for sm_90a: warpgroup MMA (wgmma), M = 64 rows, BN = 64 keys, two warpgroups.
// Shared-memory tiles use the 128-byte swizzled layout that wgmma descriptors read: a tile of
// R rows x 576 columns is 9 column blocks of [R rows][64 bf16 = 128 B], chunk c of row r at
// ((c ^ (r & 7)) << 4). Scores: warpgroup w computes S[:, 32w .. 32w+32) = Q K^T (K-major A
// and B). Softmax statistics are exchanged through shared memory; P (bf16) goes to shared
// memory; then warpgroup w computes O[:, 256w .. 256w+256) += P V with V read MN-major from
// the same key tile.
// ------------------------------------------------------------------------------------------
constexpr int kWgM = 64, kWgBN = 64;
constexpr size_t kWgSmem = 1024 + size_t(kWgM) * kRowBytes + 2 * size_t(kWgBN) * kRowBytes +
                           size_t(kWgM) * kWgBN * 2 + 4 * kWgM * 4 + 2 * kWgM * 4;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // helpers of the sm_90a kernels only
__device__ __forceinline__ uint32_t sw128(int row, int chunk, int rows) {
    return uint32_t((chunk >> 3) * rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
    return uint64_t((saddr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
           (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

// Masks the keys at or past each row's limit (lim0: this thread's row r0, lim1: r1) in a tile of
// 8 J keys from key0 (accumulator layout: s[4 j + e] is key key0 + 8 j + 2 (lane & 3) + (e & 1)),
// unless full (every key of the tile is visible to every row of the warp), and returns each row's
// max of the raw scores, reduced over the four lanes that hold the row.
template <int J>
__device__ __forceinline__ void mask_row_max(float (&s)[4 * J], int key0, int lim0, int lim1,
                                             bool full, int lane, float& mx0, float& mx1) {
    mx0 = -INFINITY;
    mx1 = -INFINITY;
    if (full) {
#pragma unroll
        for (int j = 0; j < J; ++j) {
            mx0 = fmaxf(mx0, fmaxf(s[j * 4 + 0], s[j * 4 + 1]));
            mx1 = fmaxf(mx1, fmaxf(s[j * 4 + 2], s[j * 4 + 3]));
        }
    } else {
#pragma unroll
        for (int j = 0; j < J; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key0 + j * 8 + (lane & 3) * 2 + (e & 1);
                float v = s[j * 4 + e];
                if (e < 2) {
                    v = key < lim0 ? v : -INFINITY;
                    mx0 = fmaxf(mx0, v);
                } else {
                    v = key < lim1 ? v : -INFINITY;
                    mx1 = fmaxf(mx1, v);
                }
                s[j * 4 + e] = v;
            }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
}

#endif

__global__ void __launch_bounds__(kThreads, 1) decode_wgmma_kernel(RunArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int M = kWgM, BN = kWgBN, TPK = kThreads / BN;
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                               ~uintptr_t(1023));
    uint8_t* sQ = smem;
    uint8_t* sK = sQ + M * kRowBytes;
    uint8_t* sP = sK + 2 * BN * kRowBytes;
    float* red_max = reinterpret_cast<float*>(sP + M * BN * 2);  // [2][M]
    float* red_sum = red_max + 2 * M;                           // [2][M]
    int* s_qrow = reinterpret_cast<int*>(red_sum + 2 * M);
    int* s_lim = s_qrow + M;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wq = warp & 3;
    const int r0 = wq * 16 + (lane >> 2), r1 = r0 + 8;
    CtaRange cr;
    if (!cta_range(a, cr)) return;
    const int g = cr.g, rr = cr.rr, S = cr.S, lo = cr.lo;
    const int64_t ubeg = cr.ubeg, uend = cr.uend;
    const int32_t *seg_b = cr.seg_b, *seg_m = cr.seg_m, *seg_prefix = cr.seg_prefix;
    const uint32_t sQa = smem_addr(sQ), sKa = smem_addr(sK), sPa = smem_addr(sP);

    for (int s = lo; s < S && seg_prefix[s] < uend; ++s) {
        const int p0 = seg_prefix[s], p1 = seg_prefix[s + 1];
        const int b = seg_b[s];
        const int qo0 = a.qo_indptr[b];
        const int n = a.qo_indptr[b + 1] - qo0;
        const int mtile = seg_m[s] * a.R + rr;
        if (mtile * M >= n * a.H) continue;  // this pass has no head tile for this CTA
        const int L = max(a.seq_lens[b], 0);
        const int ntiles = (L + BN - 1) / BN;
        const int t0 = int((ubeg > p0 ? ubeg : int64_t(p0)) - p0);
        const int t1 = min(int((uend < p1 ? uend : int64_t(p1)) - p0), ntiles);
        const bool cut = p0 < ubeg || p1 > uend;  // not all of it in this group's range
        const int slot = 2 * g + (ubeg >= p0 ? 0 : 1);

        __syncthreads();
        if (tid < M) {
            const int R = mtile * M + tid;
            int qrow = -1, lim = 0;
            if (R < n * a.H) {
                const int j = R / a.H, h = R - j * a.H;
                qrow = (qo0 + j) * a.H + h;
                lim = a.causal ? L - n + j + 1 : L;
                lim = max(0, min(lim, L));
            }
            s_qrow[tid] = qrow;
            s_lim[tid] = lim;
        }
        __syncthreads();
        const int lim0 = s_lim[r0], lim1 = s_lim[r1];
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

        const int32_t* bt = a.block_table + int64_t(b) * a.bt_stride;
        const int pmask = (1 << a.page_shift) - 1;
        const int my_key = tid / TPK, my_c0 = tid % TPK;
        auto key_src = [&](int t) -> const uint16_t* {
            const int kpos = t * BN + my_key;
            if (kpos >= L) return nullptr;
            const int blk = __ldg(bt + (kpos >> a.page_shift));
            return a.cache + (int64_t(blk) * (pmask + 1) + (kpos & pmask)) * kD;
        };
        auto issue_tile = [&](int t, const uint16_t* src) {
            const uint32_t dst = sKa + ((t - t0) & 1) * (BN * kRowBytes);
            for (int c = my_c0; c < kChunks; c += TPK)
                cp_async16(dst + sw128(my_key, c, BN), src ? src + c * 8 : a.cache, src ? 16 : 0);
        };

        float o[128];
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] = 0.f;

        if (t0 < t1) {
            if (!a.q_f32) {
                const uint16_t* q = static_cast<const uint16_t*>(a.q);
                for (int i = tid; i < M * kChunks; i += kThreads) {
                    const int r = i / kChunks, c = i - r * kChunks;
                    const int qrow = s_qrow[r];
                    cp_async16(sQa + sw128(r, c, M), qrow >= 0 ? q + int64_t(qrow) * kD + c * 8 : q,
                               qrow >= 0 ? 16 : 0);
                }
            } else {
                const float* q = static_cast<const float*>(a.q);
                for (int i = tid; i < M * kChunks; i += kThreads) {
                    const int r = i / kChunks, c = i - r * kChunks;
                    const int qrow = s_qrow[r];
                    uint4 v = make_uint4(0, 0, 0, 0);
                    if (qrow >= 0) {
                        const float4* src =
                            reinterpret_cast<const float4*>(q + int64_t(qrow) * kD + c * 8);
                        const float4 x0 = __ldg(src), x1 = __ldg(src + 1);
                        v.x = pack_bf16x2(x0.x, x0.y);
                        v.y = pack_bf16x2(x0.z, x0.w);
                        v.z = pack_bf16x2(x1.x, x1.y);
                        v.w = pack_bf16x2(x1.z, x1.w);
                    }
                    *reinterpret_cast<uint4*>(sQ + sw128(r, c, M)) = v;
                }
            }
            issue_tile(t0, key_src(t0));
            cp_async_commit();
            const uint16_t* next_src = t0 + 1 < t1 ? key_src(t0 + 1) : nullptr;

            for (int t = t0; t < t1; ++t) {
                if (t + 1 < t1) {
                    issue_tile(t + 1, next_src);
                    cp_async_commit();
                    if (t + 2 < t1) next_src = key_src(t + 2);
                    cp_async_wait<1>();
                } else {
                    cp_async_wait<0>();
                }
                fence_proxy_async();
                __syncthreads();
                const uint32_t kst = sKa + ((t - t0) & 1) * (BN * kRowBytes);

                float sc[16];
#pragma unroll
                for (int i = 0; i < 16; ++i) sc[i] = 0.f;
                wgmma_fence();
                // descriptors advance by plain adds on the encoded (>> 4) address field
                const uint64_t da0 = make_desc(sQa, 0, 1024);
                const uint64_t db0 = make_desc(kst + wg * 32 * 128, 0, 1024);
#pragma unroll
                for (int ks = 0; ks < kChunks / 2; ++ks) {
                    const uint32_t kk = (ks & 3) * 32;
                    wgmma_m64n32k16(sc, da0 + (((ks >> 2) * (M * 128) + kk) >> 4),
                                    db0 + (((ks >> 2) * (BN * 128) + kk) >> 4), ks > 0);
                }
                wgmma_commit();
                wgmma_wait0();

#pragma unroll
                for (int i = 0; i < 16; ++i) sc[i] *= a.scale_log2;
                float mx0, mx1;
                mask_row_max<4>(sc, t * BN + wg * 32, lim0, lim1, false, lane, mx0, mx1);
                if ((lane & 3) == 0) {
                    red_max[wg * M + r0] = mx0;
                    red_max[wg * M + r1] = mx1;
                }
                __syncthreads();
                const float mn0 = fmaxf(m0, fmaxf(red_max[r0], red_max[M + r0]));
                const float mn1 = fmaxf(m1, fmaxf(red_max[r1], red_max[M + r1]));
                const float al0 = mn0 == -INFINITY ? 1.f : exp2f(m0 - mn0);
                const float al1 = mn1 == -INFINITY ? 1.f : exp2f(m1 - mn1);
                const float mu0 = mn0 == -INFINITY ? 0.f : mn0;
                const float mu1 = mn1 == -INFINITY ? 0.f : mn1;
                m0 = mn0;
                m1 = mn1;
                float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float p00 = exp2f(sc[j * 4 + 0] - mu0), p01 = exp2f(sc[j * 4 + 1] - mu0);
                    const float p10 = exp2f(sc[j * 4 + 2] - mu1), p11 = exp2f(sc[j * 4 + 3] - mu1);
                    sum0 += p00 + p01;
                    sum1 += p10 + p11;
                    const int col = wg * 32 + j * 8 + (lane & 3) * 2;
                    const int ch = col >> 3, wi = (col & 7) * 2;
                    *reinterpret_cast<uint32_t*>(sP + r0 * 128 + ((ch ^ (r0 & 7)) << 4) + wi) =
                        pack_bf16x2(p00, p01);
                    *reinterpret_cast<uint32_t*>(sP + r1 * 128 + ((ch ^ (r1 & 7)) << 4) + wi) =
                        pack_bf16x2(p10, p11);
                }
                sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
                sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
                sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
                sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
                if ((lane & 3) == 0) {
                    red_sum[wg * M + r0] = sum0;
                    red_sum[wg * M + r1] = sum1;
                }
                fence_proxy_async();
                __syncthreads();
                l0 = l0 * al0 + red_sum[r0] + red_sum[M + r0];
                l1 = l1 * al1 + red_sum[r1] + red_sum[M + r1];
#pragma unroll
                for (int j = 0; j < 32; ++j) {
                    o[j * 4 + 0] *= al0;
                    o[j * 4 + 1] *= al0;
                    o[j * 4 + 2] *= al1;
                    o[j * 4 + 3] *= al1;
                }
                wgmma_fence();
                const uint64_t pa0 = make_desc(sPa, 0, 1024);
                const uint64_t vb0 = make_desc(kst + wg * 4 * (BN * 128), BN * 128, 1024);
#pragma unroll
                for (int ks = 0; ks < BN / 16; ++ks)
                    wgmma_m64n256k16_bt(o, pa0 + ((ks * 32) >> 4), vb0 + ((ks * 2048) >> 4), 1);
                wgmma_commit();
                wgmma_wait0();
                __syncthreads();
            }
        }

        // ---- write this piece
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int r = hf ? r1 : r0;
            const int qrow = s_qrow[r];
            if (qrow < 0) continue;
            const float l = hf ? l1 : l0;
            const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                const int col = wg * 256 + j * 8 + (lane & 3) * 2;
                const float v0 = o[j * 4 + hf * 2] * inv, v1 = o[j * 4 + hf * 2 + 1] * inv;
                if (cut) {
                    float* dst = a.ws_o + (int64_t(slot) * M + r) * kDc + col;
                    *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
                } else if (a.out_f32) {
                    float* dst = static_cast<float*>(a.out) + int64_t(qrow) * kDc + col;
                    *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
                } else {
                    uint16_t* dst = static_cast<uint16_t*>(a.out) + int64_t(qrow) * kDc + col;
                    *reinterpret_cast<uint32_t*>(dst) = pack_bf16x2(v0, v1);
                }
            }
            if (wg == 0 && (lane & 3) == 0) {
                const float m = hf ? m1 : m0;
                if (cut) {
                    a.ws_lse[int64_t(slot) * M + r] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
                } else if (a.lse) {
                    a.lse[qrow] = l > 0.f ? (m + log2f(l)) * kLn2 : INFINITY;
                }
            }
        }
    }
#endif
}


// ------------------------------------------------------------------------------------------
// Warp-specialized decode kernel for sm_90a: 3 warpgroups, M = 64 rows, 32-key tiles in a
// 4-stage ring. Warpgroup 0 computes S = Q K^T for tile t, the online softmax (whole rows: it
// holds all 32 keys) and writes P and the rescale factors to a double buffer; warpgroups 1 and
// 2 load the key tiles (cp.async, three tiles ahead) and compute O[:, 256w .. +256] += P V for
// tile t while warpgroup 0 already works on tile t+1. Hand-offs use mbarriers:
//   full[s]   tile in stage s landed      (256 loader arrivals)
//   empty[s]  every warp is done with s  (4 score warps + 8 P V warps)
//   pfull[b]  P / alpha of buffer b ready (128 arrivals)
//   pempty[b] buffer b consumed           (8 warp arrivals)
// ------------------------------------------------------------------------------------------
constexpr int kWsThreads = 384, kWsBN = 32, kWsStages = 4;
// The score warpgroup keeps the first QR k-steps (16 columns each) of its Q tile in registers
// (A operand from registers), so each key tile reads less of Q from shared memory. QR = 0 is the
// previous all-shared-memory version (MLA_CUDA_WS_QREG=0).
constexpr int kWsQRegSteps = 20;
// setmaxnreg split (registers per thread): score warpgroup / each P V warpgroup, with and without
// Q in registers. The CTA starts with 168 per thread (384 threads, launch bound 1 CTA/SM) and the
// split must stay within that allocation, or setmaxnreg.inc waits forever.
constexpr int kWsRegScoreQ = 152, kWsRegPvQ = 176, kWsRegScore = 104, kWsRegPv = 200;
static_assert(128 * kWsRegScoreQ + 256 * kWsRegPvQ <= 168 * 384, "register split");
static_assert(128 * kWsRegScore + 256 * kWsRegPv <= 168 * 384, "register split");
constexpr size_t kWsQ = size_t(64) * kRowBytes;                  // 73728
constexpr size_t kWsStage = size_t(kWsBN) * kRowBytes;           // 36864
constexpr size_t kWsP = size_t(64) * kWsBN * 2;                  // 4096 per buffer
constexpr size_t kWsSmem = 1024 + kWsQ + kWsStages * kWsStage + 2 * kWsP + 2 * 64 * 4 +
                           2 * 2 * 64 * 4 + 16 * 8;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // helpers of the sm_90a kernels only
__device__ __forceinline__ void mbar_init(uint32_t addr, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t addr) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(addr) : "memory");
}
// Arrives only where pred != 0, as a predicated instruction (no branch: a branch that the
// compiler cannot prove uniform would serialize the wgmmas in flight around it).
__device__ __forceinline__ void mbar_arrive_if(uint32_t addr, int pred) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(addr),
        "r"(pred)
        : "memory");
}
// 2^x with one MUFU.EX2 (flushes results below 2^-126 to 0: a probability that small does not
// change a bf16 P or an f32 row sum); exp2f adds a range fix-up around it.
__device__ __forceinline__ float ex2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ void mbar_wait(uint32_t addr, int parity) {
    asm volatile(
        "{\n.reg .pred p;\nWAIT_LOOP:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WAIT_LOOP;\n}\n" ::"r"(addr),
        "r"(parity)
        : "memory");
}
// Programmatic dependent launch (no-ops when the grid was launched without the attribute):
// wait for the preceding grid's completion and memory, and let the dependent grid (combine) be
// launched now, so that its launch overlaps this grid's tail.
__device__ __forceinline__ void pdl_wait_and_release() {
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ uint64_t make_desc64(uint32_t saddr, uint32_t sbo) {
    return uint64_t((saddr & 0x3FFFF) >> 4) | (uint64_t((sbo >> 4) & 0x3FFF) << 32) |
           (uint64_t(2) << 62);
}

struct WsPiece {
    int b, qo0, n, L, mtile, t0, t1, slot;
    bool cut, skip;
};

// Segment s still reaches into the CTA's range.
__device__ __forceinline__ bool cta_in_range(const CtaRange& c, int s) {
    return s < c.S && c.seg_prefix[s] < c.uend;
}

// Piece s of the CTA's range: TPU key tiles per 64-key unit of the plan, 2 (32-key tiles) or 1
// (64-key tiles)
template <int TPU = 2>
__device__ __forceinline__ WsPiece ws_piece(const RunArgs& a, const CtaRange& c, int s) {
    WsPiece p;
    const int64_t ubeg = c.ubeg, uend = c.uend;
    const int p0 = c.seg_prefix[s], p1 = c.seg_prefix[s + 1];
    p.b = c.seg_b[s];
    p.qo0 = a.qo_indptr[p.b];
    p.n = a.qo_indptr[p.b + 1] - p.qo0;
    p.L = max(a.seq_lens[p.b], 0);
    p.mtile = c.seg_m[s] * a.R + c.rr;
    p.skip = p.mtile * 64 >= p.n * a.H;
    constexpr int BN = 64 / TPU;
    const int ntiles = (p.L + BN - 1) / BN;
    // units are counted in 64-key tiles by the plan (BN = 64): TPU tiles per unit
    p.t0 = TPU * int((ubeg > p0 ? ubeg : int64_t(p0)) - p0);
    p.t1 = min(TPU * int((uend < p1 ? uend : int64_t(p1)) - p0), ntiles);
    p.cut = p0 < ubeg || p1 > uend;
    p.slot = 2 * c.g + (ubeg >= p0 ? 0 : 1);
    return p;
}

// The key tiles a CTA's loaders walk, piece after piece (pieces without a tile for this CTA are
// passed over): tile t of sequence b (L keys); t1 ends the piece of segment s; done past the last.
struct KeyCursor {
    int s = 0, t = 0, t1 = 0, b = 0, L = 0;
    bool done = false;
    // the first tile of the first piece with one, from segment s0 on
    template <class Piece, class InRange>
    __device__ __forceinline__ void seek(int s0, const Piece& piece, const InRange& in_range) {
        for (; in_range(s0); ++s0) {
            const WsPiece pc = piece(s0);
            if (pc.skip || pc.t0 >= pc.t1) continue;
            s = s0; t = pc.t0; t1 = pc.t1; b = pc.b; L = pc.L;
            return;
        }
        done = true;
    }
    template <class Piece, class InRange>
    __device__ __forceinline__ void advance(const Piece& piece, const InRange& in_range) {
        if (++t >= t1) seek(s + 1, piece, in_range);
    }
};

// Keys [0, lim) are visible to row r of the piece's head tile (causal within the sequence's new
// tokens); 0 for a padding row past the sequence's n * H rows.
__device__ __forceinline__ int ws_row_limit(const RunArgs& a, const WsPiece& pc, int r) {
    const int R = pc.mtile * 64 + r;
    return R < pc.n * a.H ? max(0, min(a.causal ? pc.L - pc.n + R / a.H + 1 : pc.L, pc.L)) : 0;
}

// Writes row r of a piece's 64-row head tile, columns 256 half .. 256 half + 255: O from the
// accumulator fragments o[4 jj + 2 hf + {0, 1}] (hf: r is this thread's first or second row)
// divided by the row sum l, to out, or for a cut piece to its workspace slot; with lse_out, the
// row's log-sum-exp from its max m (log2 units). l = 0 (no key seen): zeros and lse +inf (a cut
// piece's partial: -inf). LEAN: the row's q row found without a division (rows of a head tile are
// contiguous in q).
template <bool LEAN>
__device__ __forceinline__ void ws_write_row(const RunArgs& a, const WsPiece& pc,
                                             const float (&o)[128], int hf, int r, int half,
                                             int lane, float l, float m, bool lse_out) {
    constexpr int M = 64;
    const int R = pc.mtile * M + r;
    if (R >= pc.n * a.H) return;
    int64_t qrow;
    if constexpr (LEAN) {
        qrow = int64_t(pc.qo0) * a.H + R;
    } else {
        const int j = R / a.H;
        qrow = int64_t(pc.qo0 + j) * a.H + (R - j * a.H);
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int jj = 0; jj < 32; ++jj) {
        const int col = half * 256 + jj * 8 + (lane & 3) * 2;
        const float v0 = o[jj * 4 + hf * 2] * inv, v1 = o[jj * 4 + hf * 2 + 1] * inv;
        if (pc.cut && a.ws_bf16) {
            uint16_t* dst = reinterpret_cast<uint16_t*>(a.ws_o) +
                            (int64_t(pc.slot) * M + r) * kDc + col;
            *reinterpret_cast<uint32_t*>(dst) = pack_bf16x2(v0, v1);
        } else if (pc.cut) {
            float* dst = a.ws_o + (int64_t(pc.slot) * M + r) * kDc + col;
            *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
        } else if (a.out_f32) {
            float* dst = static_cast<float*>(a.out) + qrow * kDc + col;
            *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
        } else {
            uint16_t* dst = static_cast<uint16_t*>(a.out) + qrow * kDc + col;
            *reinterpret_cast<uint32_t*>(dst) = pack_bf16x2(v0, v1);
        }
    }
    if (lse_out && (lane & 3) == 0) {
        if (pc.cut) {
            a.ws_lse[int64_t(pc.slot) * M + r] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
        } else if (a.lse) {
            a.lse[qrow] = l > 0.f ? (m + log2f(l)) * kLn2 : INFINITY;
        }
    }
}


#endif

// FX > 0 (MLA_CUDA_WS_FX=1): cheaper softmax on the score warpgroup: the scale folded into
// the exponent's FFMA (max over the raw scores), ex2.approx.ftz instead of exp2f, and the row
// sums kept per thread (reduced across the four lanes of a row once, at a piece's last tile).
// LEAN (the default with FX = 1; MLA_CUDA_WS_LEAN=0 turns it off): a piece's Q rows are copied
// with two threads per row and the chunk offsets known at compile time (the rows of a head tile are contiguous in q: row
// R is row qo0 * H + R), instead of a per-chunk index division (~80 dependent instructions per
// 16-byte chunk, ncu: NOTES.md v13); the epilogue finds its output rows the same way.
// Variants measured slower and removed (NOTES.md v11, v13, v14; git history): the softmax in the
// P V warpgroups, S of tile t + 1 in flight under the softmax of tile t, one S chain with 24
// k-steps of Q, the next piece's Q prefetched into L2, P V queued after the next S, a five-stage
// ring.
template <int QR, int FX = 0, bool LEAN = false>
__global__ void __launch_bounds__(kWsThreads, 1) decode_ws_kernel(RunArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int M = 64, BN = kWsBN, NST = kWsStages;
    extern __shared__ uint8_t smem_raw[];
    // aligned by an offset from the shared array itself, so that the compiler keeps these
    // pointers in the shared state space (STS / LDS rather than generic stores)
    uint8_t* smem = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
    uint8_t* sQ = smem;
    uint8_t* sK = sQ + kWsQ;
    uint8_t* sP = sK + NST * kWsStage;
    float* s_alpha = reinterpret_cast<float*>(sP + 2 * kWsP);  // [2][64]
    float* s_fin = s_alpha + 2 * 64;                            // [2][m, l][64]
    uint64_t* bars = reinterpret_cast<uint64_t*>(s_fin + 2 * 2 * 64);
    const uint32_t bar0 = smem_addr(bars);
    auto full_b = [&](int st) { return bar0 + 8 * st; };
    auto empty_b = [&](int st) { return bar0 + 8 * (NST + st); };
    auto pfull_b = [&](int i) { return bar0 + 8 * (2 * NST + i); };
    auto pempty_b = [&](int i) { return bar0 + 8 * (2 * NST + 2 + i); };

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wq = warp & 3;
    const int r0 = wq * 16 + (lane >> 2), r1 = r0 + 8;
    if (tid == 0) {
        for (int i = 0; i < NST; ++i) {
            mbar_init(full_b(i), 256);
            mbar_init(empty_b(i), 12);
        }
        for (int i = 0; i < 2; ++i) {
            mbar_init(pfull_b(i), 128);
            mbar_init(pempty_b(i), 8);
        }
    }
    __syncthreads();
    pdl_wait_and_release();

    CtaRange cr;
    if (!cta_range(a, cr)) return;
    const int lo = cr.lo;
    const uint32_t sQa = smem_addr(sQ), sKa = smem_addr(sK), sPa = smem_addr(sP);
    auto piece = [&](int s) { return ws_piece(a, cr, s); };
    auto in_range = [&](int s) { return cta_in_range(cr, s); };

    if (wg == 0) {
        // ---------------- scores + softmax
        if constexpr (QR > 0)
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kWsRegScoreQ) : "memory");
        else
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kWsRegScore) : "memory");
        int tau = 0, pp = 0;
        for (int s = lo; in_range(s); ++s) {
            const WsPiece pc = piece(s);
            if (pc.skip || pc.t0 >= pc.t1) continue;
            // the previous piece's Q reads (ldmatrix by every warp) before this piece's writes
            if (pp > 0) asm volatile("bar.sync 1, 128;\n" ::: "memory");
            // Q tile (this warpgroup is its only reader)
            if (LEAN && !a.q_f32) {
                const int r = tid >> 1;  // two threads per row, alternate chunks
                const int R = pc.mtile * M + r;
                const bool ok = R < pc.n * a.H;
                const uint16_t* src = static_cast<const uint16_t*>(a.q) +
                                      (ok ? (int64_t(pc.qo0) * a.H + R) * kD : 0);
                const uint32_t dst = sQa + r * 128;
                const int x = r & 7, h = tid & 1;
#pragma unroll
                for (int k = 0; k < kChunks / 2; ++k) {
                    const int c = 2 * k + h;  // (c >> 3) and (c & 7) depend on k and h only
                    cp_async16(dst + (c >> 3) * (M * 128) + (((c & 7) ^ x) << 4), src + c * 8,
                               ok ? 16 : 0);
                }
            } else
            for (int i = tid; i < M * kChunks; i += 128) {
                const int r = i / kChunks, c = i - r * kChunks;
                const int R = pc.mtile * M + r;
                int64_t qrow = -1;
                if (R < pc.n * a.H) {
                    const int j = R / a.H;
                    qrow = int64_t(pc.qo0 + j) * a.H + (R - j * a.H);
                }
                if (!a.q_f32) {
                    const uint16_t* q = static_cast<const uint16_t*>(a.q);
                    cp_async16(sQa + sw128(r, c, M), qrow >= 0 ? q + qrow * kD + c * 8 : q,
                               qrow >= 0 ? 16 : 0);
                } else {
                    uint4 v = make_uint4(0, 0, 0, 0);
                    if (qrow >= 0) {
                        const float4* src = reinterpret_cast<const float4*>(
                            static_cast<const float*>(a.q) + qrow * kD + c * 8);
                        const float4 x0 = __ldg(src), x1 = __ldg(src + 1);
                        v.x = pack_bf16x2(x0.x, x0.y);
                        v.y = pack_bf16x2(x0.z, x0.w);
                        v.z = pack_bf16x2(x1.x, x1.y);
                        v.w = pack_bf16x2(x1.z, x1.w);
                    }
                    *reinterpret_cast<uint4*>(sQ + sw128(r, c, M)) = v;
                }
            }
            cp_async_commit();
            cp_async_wait<0>();
            fence_proxy_async();
            asm volatile("bar.sync 1, 128;\n" ::: "memory");
            const int lim0 = ws_row_limit(a, pc, r0), lim1 = ws_row_limit(a, pc, r1);
            // keys below lim_min are visible to every row this warp holds in the tile
            const int lim_min = __reduce_min_sync(0xffffffffu, min(lim0, lim1));
            float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
            const uint64_t da0 = make_desc(sQa, 0, 1024);
            uint32_t qa[QR > 0 ? QR : 1][4];
            {
                const int qr = wq * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
                for (int ks = 0; ks < QR; ++ks)
                    ldmatrix_x4(sQa + sw128(qr, 2 * ks + (lane >> 4), M), qa[ks][0], qa[ks][1],
                                qa[ks][2], qa[ks][3]);
            }
            // S = Q K^T of tile tau_i into x / x2: two independent accumulator chains (even / odd
            // k-steps) keep two wgmmas in flight instead of one dependent chain; committed as one
            // group, not waited for
            auto s_issue = [&](int tau_i, float (&x)[16], float (&x2)[16]) {
                const int st = tau_i % NST;
                mbar_wait(full_b(st), (tau_i / NST) & 1);
                float* sc = x;
                float* sc2 = x2;
                const uint64_t db0 = make_desc(sKa + st * kWsStage, 0, 1024);
                uint64_t da = da0;
                // opaque copy (FX): the per-k-step descriptors are then formed at issue instead
                // of being hoisted out of the tile loop (36 live 64-bit values)
                if constexpr (FX) asm volatile("" : "+l"(da));
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < kChunks / 2; ks += 2) {
                    const uint32_t kk = (ks & 3) * 32, kk2 = ((ks + 1) & 3) * 32;
                    const uint64_t db = db0 + (((ks >> 2) * (BN * 128) + kk) >> 4);
                    const uint64_t db2 = db0 + ((((ks + 1) >> 2) * (BN * 128) + kk2) >> 4);
                    if (ks < QR) {
                        wgmma_m64n32k16_ra(sc, qa[ks], db, ks > 0);
                        wgmma_m64n32k16_ra(sc2, qa[ks + 1], db2, ks > 0);
                    } else {
                        wgmma_m64n32k16(sc, da + (((ks >> 2) * (M * 128) + kk) >> 4), db, ks > 0);
                        wgmma_m64n32k16(sc2, da + ((((ks + 1) >> 2) * (M * 128) + kk2) >> 4),
                                        db2, ks > 0);
                    }
                }
                wgmma_commit();
            };
            // softmax of tile t (ring position tau_i) once its S group has completed
            auto s_finish = [&](int t, int tau_i, float (&sc)[16], const float (&sc2)[16]) {
#pragma unroll
                for (int i = 0; i < 16; ++i) sc[i] += sc2[i];
                __syncwarp();
                mbar_arrive_if(empty_b(tau_i % NST), lane == 0);
#pragma unroll
                for (int i = 0; i < 16; ++i) sc[i] *= a.scale_log2;
                float mx0, mx1;
                mask_row_max<4>(sc, t * BN, lim0, lim1, (t + 1) * BN <= lim_min, lane, mx0, mx1);
                const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
                // selects, not branches (see mbar_arrive_if)
                const float mu0 = mn0 == -INFINITY ? 0.f : mn0;
                const float mu1 = mn1 == -INFINITY ? 0.f : mn1;
                const float e0 = exp2f(m0 - mu0), e1 = exp2f(m1 - mu1);
                const float al0 = mn0 == -INFINITY ? 1.f : e0;
                const float al1 = mn1 == -INFINITY ? 1.f : e1;
                m0 = mn0;
                m1 = mn1;
                const int pb = tau_i & 1;
                // for tau_i < 2 this waits on the phase before the first: returns at once
                mbar_wait(pempty_b(pb), ((tau_i >> 1) - 1) & 1);
                uint8_t* P = sP + pb * kWsP;
                float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float p00 = exp2f(sc[j * 4 + 0] - mu0), p01 = exp2f(sc[j * 4 + 1] - mu0);
                    const float p10 = exp2f(sc[j * 4 + 2] - mu1), p11 = exp2f(sc[j * 4 + 3] - mu1);
                    sum0 += p00 + p01;
                    sum1 += p10 + p11;
                    const int col = j * 8 + (lane & 3) * 2, ch = col >> 3, wi = (col & 7) * 2;
                    *reinterpret_cast<uint32_t*>(P + r0 * 64 + ((ch ^ ((r0 >> 1) & 3)) << 4) + wi) =
                        pack_bf16x2(p00, p01);
                    *reinterpret_cast<uint32_t*>(P + r1 * 64 + ((ch ^ ((r1 >> 1) & 3)) << 4) + wi) =
                        pack_bf16x2(p10, p11);
                }
                sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
                sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
                sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
                sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
                l0 = l0 * al0 + sum0;
                l1 = l1 * al1 + sum1;
                // the four lanes of a row hold the same values: all of them store (no branch);
                // the running m / l go out every tile, the PV warps read them after the last
                {
                    s_alpha[pb * 64 + r0] = al0;
                    s_alpha[pb * 64 + r1] = al1;
                    float* fin = s_fin + (pp & 1) * 128;
                    fin[r0] = m0;
                    fin[r1] = m1;
                    fin[64 + r0] = l0;
                    fin[64 + r1] = l1;
                }
                fence_proxy_async();
                mbar_arrive(pfull_b(pb));
            };
            // FX variant of s_finish (see the template parameter)
            auto s_finish_fx = [&](int t, int tau_i, float (&sc)[16]) {
                __syncwarp();
                mbar_arrive_if(empty_b(tau_i % NST), lane == 0);
                float mx0, mx1;
                mask_row_max<4>(sc, t * BN, lim0, lim1, (t + 1) * BN <= lim_min, lane, mx0, mx1);
                const float sl = a.scale_log2;  // > 0: the max of raw scores gives the scaled max
                const float mn0 = fmaxf(m0, mx0 * sl), mn1 = fmaxf(m1, mx1 * sl);
                const float mu0 = mn0 == -INFINITY ? 0.f : mn0;
                const float mu1 = mn1 == -INFINITY ? 0.f : mn1;
                const float al0 = mn0 == -INFINITY ? 1.f : ex2_fast(m0 - mu0);
                const float al1 = mn1 == -INFINITY ? 1.f : ex2_fast(m1 - mu1);
                m0 = mn0;
                m1 = mn1;
                const int pb = tau_i & 1;
                mbar_wait(pempty_b(pb), ((tau_i >> 1) - 1) & 1);
                uint8_t* P = sP + pb * kWsP;
                float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float p00 = ex2_fast(fmaf(sc[j * 4 + 0], sl, -mu0));
                    const float p01 = ex2_fast(fmaf(sc[j * 4 + 1], sl, -mu0));
                    const float p10 = ex2_fast(fmaf(sc[j * 4 + 2], sl, -mu1));
                    const float p11 = ex2_fast(fmaf(sc[j * 4 + 3], sl, -mu1));
                    sum0 += p00 + p01;
                    sum1 += p10 + p11;
                    const int col = j * 8 + (lane & 3) * 2, ch = col >> 3, wi = (col & 7) * 2;
                    *reinterpret_cast<uint32_t*>(P + r0 * 64 + ((ch ^ ((r0 >> 1) & 3)) << 4) + wi) =
                        pack_bf16x2(p00, p01);
                    *reinterpret_cast<uint32_t*>(P + r1 * 64 + ((ch ^ ((r1 >> 1) & 3)) << 4) + wi) =
                        pack_bf16x2(p10, p11);
                }
                l0 = l0 * al0 + sum0;  // this thread's share of the row sums
                l1 = l1 * al1 + sum1;
                s_alpha[pb * 64 + r0] = al0;
                s_alpha[pb * 64 + r1] = al1;
                if (t == pc.t1 - 1) {  // last tile of the piece: the P V warps read m / l after it
                    float ls0 = l0 + __shfl_xor_sync(0xffffffffu, l0, 1);
                    ls0 += __shfl_xor_sync(0xffffffffu, ls0, 2);
                    float ls1 = l1 + __shfl_xor_sync(0xffffffffu, l1, 1);
                    ls1 += __shfl_xor_sync(0xffffffffu, ls1, 2);
                    float* fin = s_fin + (pp & 1) * 128;
                    fin[r0] = m0;
                    fin[r1] = m1;
                    fin[64 + r0] = ls0;
                    fin[64 + r1] = ls1;
                }
                fence_proxy_async();
                mbar_arrive(pfull_b(pb));
            };
            for (int t = pc.t0; t < pc.t1; ++t, ++tau) {
                float x[16], x2[16];
                s_issue(tau, x, x2);
                wgmma_wait0();
                if constexpr (FX) {
#pragma unroll
                    for (int i = 0; i < 16; ++i) x[i] += x2[i];
                    s_finish_fx(t, tau, x);
                } else {
                    s_finish(t, tau, x, x2);
                }
            }
            ++pp;
        }
        return;
    }

    // ---------------- loaders + P V (warpgroups 1 and 2)
    if constexpr (QR > 0)
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kWsRegPvQ) : "memory");
    else
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kWsRegPv) : "memory");
    const int ltid = tid - 128;           // 0..255
    const int half = wg - 1;              // which 256 columns of O
    // loader cursor
    KeyCursor kc;
    kc.seek(lo, piece, in_range);
    int n_issued = 0;
    const int my_key = ltid >> 3, my_c0 = ltid & 7;  // 8 threads per key row, 32 keys
    const int pmask = (1 << a.page_shift) - 1;
    // block id of the next tile this thread loads, read one tile ahead so that the block-table
    // latency is off the load issue path
    auto fetch_blk = [&]() -> int {
        const int kpos = kc.t * BN + my_key;
        return (!kc.done && kpos < kc.L)
                   ? __ldg(a.block_table + int64_t(kc.b) * a.bt_stride + (kpos >> a.page_shift))
                   : 0;
    };
    int next_blk = fetch_blk();
    auto issue_next = [&]() {
        if (!kc.done) {
            if (n_issued >= NST) mbar_wait(empty_b(n_issued % NST), ((n_issued / NST) - 1) & 1);
            const int kpos = kc.t * BN + my_key;
            const uint16_t* src = nullptr;
            if (kpos < kc.L) src = a.cache + (int64_t(next_blk) * (pmask + 1) + (kpos & pmask)) * kD;
            const uint32_t dst = sKa + (n_issued % NST) * kWsStage + my_key * 128;
#pragma unroll
            for (int i = 0; i < kChunks / 8; ++i) {
                const int c = my_c0 + i * 8;
                cp_async16(dst + (c >> 3) * (BN * 128) + (((c & 7) ^ (my_key & 7)) << 4),
                           src ? src + c * 8 : a.cache, src ? 16 : 0);
            }
            ++n_issued;
            kc.advance(piece, in_range);
            next_blk = fetch_blk();
        }
        cp_async_commit();
    };
    issue_next();
    issue_next();
    issue_next();
    cp_async_wait<2>();
    fence_proxy_async();
    if (n_issued > 0) mbar_arrive(full_b(0));

    float o[128];
    int tau = 0, pp = 0;
    for (int s = lo; in_range(s); ++s) {
        const WsPiece pc = piece(s);
        if (pc.skip) continue;
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] = 0.f;
        float fm0 = -INFINITY, fm1 = -INFINITY, fl0 = 0.f, fl1 = 0.f;
        if (pc.t0 < pc.t1) {
            for (int t = pc.t0; t < pc.t1; ++t, ++tau) {
                // tile tau + 1 landed (its group is the older of the two outstanding ones)
                cp_async_wait<1>();
                fence_proxy_async();
                if (tau + 1 < n_issued) mbar_arrive(full_b((tau + 1) % NST));
                issue_next();
                const int pb = tau & 1;
                mbar_wait(pfull_b(pb), (tau >> 1) & 1);
                const float al0 = s_alpha[pb * 64 + r0], al1 = s_alpha[pb * 64 + r1];
                if (!__all_sync(0xffffffffu, al0 == 1.f && al1 == 1.f)) {
#pragma unroll
                    for (int j = 0; j < 32; ++j) {
                        o[j * 4 + 0] *= al0;
                        o[j * 4 + 1] *= al0;
                        o[j * 4 + 2] *= al1;
                        o[j * 4 + 3] *= al1;
                    }
                }
                const int st = tau % NST;
                const uint64_t pa0 = make_desc64(sPa + pb * kWsP, 512);
                const uint64_t vb0 =
                    make_desc(sKa + st * kWsStage + half * 4 * (BN * 128), BN * 128, 1024);
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < BN / 16; ++ks)
                    wgmma_m64n256k16_bt(o, pa0 + ((ks * 32) >> 4), vb0 + ((ks * 2048) >> 4), 1);
                wgmma_commit();
                wgmma_wait0();
                if (t == pc.t1 - 1) {
                    const float* fin = s_fin + (pp & 1) * 128;
                    fm0 = fin[r0];
                    fm1 = fin[r1];
                    fl0 = fin[64 + r0];
                    fl1 = fin[64 + r1];
                }
                __syncwarp();
                if (lane == 0) {
                    mbar_arrive(empty_b(st));   // this warp no longer reads the key stage
                    mbar_arrive(pempty_b(pb));
                }
            }
            ++pp;
        }
        // write this piece's rows (l = 0: no key seen -> out 0, lse +inf / -inf partial)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
            ws_write_row<LEAN>(a, pc, o, hf, hf ? r1 : r0, half, lane, hf ? fl1 : fl0,
                               hf ? fm1 : fm0, half == 0);
    }
#endif
}

// ------------------------------------------------------------------------------------------
// Seesaw decode kernel for sm_90a (MLA_CUDA_DECODE=seesaw, NOTES.md v15): 2 warpgroups, M = 64
// rows, 64-key tiles, two key buffers, no producer warpgroup. Warpgroup w holds O[:, 256w ..
// 256w + 256) and computes the scores of every other tile of a piece (w = 0 the even, w = 1 the
// odd ones). Per pair of tiles (e, o), with m the running row max (log2 units):
//   wg0  softmax(S_e) against m -> m_a, P_e; O0 *= 2^(m - m_a)            ->  SCALE0
//        O0 += P_e V_e[:, 0:256] (P from registers)
//   wg1  SCALE0 ->  softmax(S_o) against m_a -> m_b, P_o; O1 *= 2^(m - m_b) ->  SCALE1
//        P_o -> sP1; O1 += P_o V_o[:, 256:512] (P from registers)
//   wg0  SCALE1 ->  P_e 2^(m_a - m_b) -> sP0                                ->  P0
//   wg1  P0 ->  O1 += sP0 V_e[:, 256:512]                                   ->  P1
//   wg0  P1 ->  O0 *= 2^(m_a - m_b); O0 += sP1 V_o[:, 0:256]
//   then each warpgroup computes the scores of its next tile (e + 2, o + 2).
// One warpgroup's softmax runs while the other's wgmmas keep the tensor cores busy, with four
// named-barrier hand-offs per 128 keys (decode_ws_kernel: four mbarrier round trips per 32).
// A key tile is [9 column blocks][64 keys][128 B] (128-byte swizzle). Column blocks 0..3
// ("part 0") are loaded by warpgroup 0 and blocks 4..8 ("part 1") by warpgroup 1, with cp.async
// that arrive on the part's mbarrier when they land (cp.async.mbarrier.arrive.noinc). The
// warpgroup that loads a part is always its last user (part 0 of an even tile: wg0's S and
// P V; of an odd tile: wg1's S, then wg0's P V; part 1 the other way round), so tile n + 2 goes
// into tile n's buffer right after that use, without another hand-off.
// Shared memory: Q 64 x 576 (72 KB), two key buffers (144 KB), sP1 (8 KB), row max / scale /
// sum exchange; 231,744 bytes with the alignment pad. sP0 takes column block 8 (the RoPE keys)
// of the even tile's buffer: only that tile's scores read it, and warpgroup 1 reloads it (tile
// e + 2) only after its P V has read sP0.
// ------------------------------------------------------------------------------------------
constexpr int kSsThreads = 256;
constexpr size_t kSsTile = size_t(64) * kRowBytes;  // 73728: Q, or one 64-key tile
constexpr size_t kSsSmem = 1024 + 3 * kSsTile + 8192 + 5 * 64 * 4 + 8 * 8;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// named barriers (0 is __syncthreads)
constexpr int kSsBarScale0 = 1, kSsBarScale1 = 2, kSsBarP0 = 3, kSsBarP1 = 4, kSsBarPiece = 5;
constexpr int kSsBarWg = 6;  // + w: warpgroup w's own barrier (128 threads)
// Named barrier of both warpgroups: the producer arrives (release), the consumer syncs
// (acquire); each use is one arrive by one warpgroup and one sync by the other.
__device__ __forceinline__ void ss_sync(int id) {
    asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void ss_arrive(int id) {
    asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
// Before a warpgroup refills a key buffer that its own wgmmas read: each warp's wait_group only
// retires that warp's slice of a wgmma, and every slice reads all of B, so all four warps must
// be past their wait before any thread's cp.async may land on it.
__device__ __forceinline__ void ss_wg_sync(int wg) {
    asm volatile("bar.sync %0, 128;\n" ::"r"(kSsBarWg + wg) : "memory");
}
// Arrives on the mbarrier once every cp.async this thread issued so far has landed (counts as
// one of the barrier's expected arrivals).
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t addr) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(addr) : "memory");
}
// S (64 x 64 keys) = Q K^T over column blocks B0 .. B1 - 1 of the key tile at kst. zero: the
// first wgmma starts the accumulators.
template <int B0, int B1>
__device__ __forceinline__ void ss_scores(float (&s)[32], uint32_t sQa, uint32_t kst, bool zero) {
    const uint64_t da0 = make_desc(sQa, 0, 1024), db0 = make_desc(kst, 0, 1024);
#pragma unroll
    for (int blk = B0; blk < B1; ++blk)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const uint32_t off = (blk * 8192 + kk * 32) >> 4;
            wgmma_m64n64k16(s, da0 + off, db0 + off, (zero && blk == B0 && kk == 0) ? 0 : 1);
        }
}
// O (64 x 256) += P (registers, 64 x 64 keys) V, V = column blocks 4h .. 4h + 3 of the key tile
__device__ __forceinline__ void ss_pv_reg(float (&o)[128], const uint32_t (&pf)[4][4],
                                          uint32_t kst, int h) {
    const uint64_t vb = make_desc(kst + h * 4 * 8192, 64 * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_m64n256k16_ra_bt(o, pf[kk], vb + ((kk * 2048) >> 4), 1);
}
// O (64 x 256) += P (shared memory at sp, [64][64] bf16 swizzled) V
__device__ __forceinline__ void ss_pv_smem(float (&o)[128], uint32_t sp, uint32_t kst, int h) {
    const uint64_t pa = make_desc(sp, 0, 1024);
    const uint64_t vb = make_desc(kst + h * 4 * 8192, 64 * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
        wgmma_m64n256k16_bt(o, pa + ((kk * 32) >> 4), vb + ((kk * 2048) >> 4), 1);
}
// Rows r0 / r1 of O *= f0 / f1, skipped when every row of the warp keeps its scale.
__device__ __forceinline__ void ss_rescale(float (&o)[128], float f0, float f1) {
    if (__all_sync(0xffffffffu, f0 == 1.f && f1 == 1.f)) return;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
        o[j * 4 + 0] *= f0;
        o[j * 4 + 1] *= f0;
        o[j * 4 + 2] *= f1;
        o[j * 4 + 3] *= f1;
    }
}
// P (f32, accumulator layout) * c0 / c1 as bf16 into a [64][64] swizzled tile at p
__device__ __forceinline__ void ss_store_p(uint8_t* p, const float (&s)[32], float c0, float c1,
                                           int r0, int r1, int lane) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int col = j * 8 + (lane & 3) * 2, ch = col >> 3, wi = (col & 7) * 2;
        *reinterpret_cast<uint32_t*>(p + r0 * 128 + ((ch ^ (r0 & 7)) << 4) + wi) =
            pack_bf16x2(s[j * 4 + 0] * c0, s[j * 4 + 1] * c0);
        *reinterpret_cast<uint32_t*>(p + r1 * 128 + ((ch ^ (r1 & 7)) << 4) + wi) =
            pack_bf16x2(s[j * 4 + 2] * c1, s[j * 4 + 3] * c1);
    }
}
// P (f32, accumulator layout) as the wgmma A fragments of the four 16-key steps
__device__ __forceinline__ void ss_pack_p(uint32_t (&pf)[4][4], const float (&s)[32]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        pf[kk][0] = pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);
        pf[kk][1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
        pf[kk][2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
        pf[kk][3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
    }
}
#endif

// EARLY (MLA_CUDA_SS_EARLY=1): warpgroup 1 loads its part of tile o + 2 as soon as its P V of
// tile o is done, before tile e + 2's (which waits for its P V of tile e): the next odd tile's
// load latency starts one P V earlier on warpgroup 1's path.
template <bool EARLY>
__global__ void __launch_bounds__(kSsThreads, 1) decode_ss_kernel(RunArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int M = 64, BN = 64;
    using T0 = std::integral_constant<int, 0>;
    using T1 = std::integral_constant<int, 1>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
    uint8_t* sQ = smem;
    uint8_t* sK = sQ + kSsTile;       // two key buffers
    uint8_t* sP1 = sK + 2 * kSsTile;  // P_o for warpgroup 0 (sP0: see above)
    float* s_m = reinterpret_cast<float*>(sP1 + 8192);  // [64] running max after a softmax
    float* s_sc0 = s_m + 64;                             // [64] 2^(m - m_a)
    float* s_sc1 = s_sc0 + 64;                           // [64] 2^(m_a - m_b)
    float* s_l = s_sc1 + 64;                             // [2][64] row sums per warpgroup
    uint64_t* bars = reinterpret_cast<uint64_t*>(s_l + 128);
    const uint32_t bar0 = smem_addr(bars);
    const uint32_t qbar = bar0;  // Q landed (256 arrivals)
    // part p of key buffer b landed (128 arrivals: the loading warpgroup)
    auto kbar = [&](int b, int p) { return bar0 + 8 * (1 + 2 * b + p); };

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wq = warp & 3, wt = tid & 127;
    const int r0 = wq * 16 + (lane >> 2), r1 = r0 + 8;
    if (tid == 0) {
        mbar_init(qbar, 256);
        for (int i = 0; i < 4; ++i) mbar_init(bar0 + 8 * (1 + i), 128);
    }
    __syncthreads();
    pdl_wait_and_release();

    CtaRange cr;
    if (!cta_range(a, cr)) return;
    const int lo = cr.lo;
    const uint32_t sQa = smem_addr(sQ), sKa = smem_addr(sK), sP1a = smem_addr(sP1);
    auto piece = [&](int s) { return ws_piece<1>(a, cr, s); };
    auto in_range = [&](int s) { return cta_in_range(cr, s); };
    const float sl = a.scale_log2;  // > 0 (dispatch): the max of raw scores gives the scaled max

    // ---- key loader: this warpgroup's part of each tile, tiles in the order they are used.
    // 8 threads per key row (one 16-byte chunk of each 128-byte column block), 16 rows per pass.
    const int lrow = wt >> 3, lch = wt & 7;
    KeyCursor kc;
    kc.seek(lo, piece, in_range);
    const int pmask = (1 << a.page_shift) - 1;
    int n_loaded = 0;
    // block ids of the four rows of this thread in the cursor c's tile
    auto fetch_blk = [&](const KeyCursor& c, int (&blk)[4]) {
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const int kpos = c.t * BN + lrow + 16 * p;
            blk[p] = (!c.done && kpos < c.L)
                         ? __ldg(a.block_table + int64_t(c.b) * a.bt_stride + (kpos >> a.page_shift))
                         : 0;
        }
    };
    // the next tile's, read one tile ahead
    int nblk[4];
    fetch_blk(kc, nblk);
    // issues this warpgroup's part (PART = wg) of c's tile, the n-th in load order, into buffer
    // n & 1; keys past the sequence's end are written as zeros (their P is 0; V must not be NaN)
    auto issue_part = [&](auto part, const KeyCursor& c, int n, const int (&blk)[4]) {
        constexpr int PART = decltype(part)::value;
        constexpr int C0 = PART == 0 ? 0 : 4, C1 = PART == 0 ? 4 : 9;
        const int buf = n & 1;
        const uint32_t dst0 = sKa + buf * kSsTile + lrow * 128 + ((lch ^ (lrow & 7)) << 4);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const int kpos = c.t * BN + lrow + 16 * p;
            const bool ok = kpos < c.L;
            const uint16_t* src =
                ok ? a.cache + (int64_t(blk[p]) * (pmask + 1) + (kpos & pmask)) * kD + lch * 8
                   : a.cache;
#pragma unroll
            for (int cb = C0; cb < C1; ++cb)
                cp_async16(dst0 + p * 16 * 128 + cb * 8192, ok ? src + cb * 64 : src, ok ? 16 : 0);
        }
        cp_async_mbar_arrive(kbar(buf, PART));
    };
    // this warpgroup's part of the next tile in load order
    auto load_next = [&](auto part) {
        if (kc.done) return;
        issue_part(part, kc, n_loaded, nblk);
        ++n_loaded;
        kc.advance(piece, in_range);
        fetch_blk(kc, nblk);
    };
    // the first two tiles
    if (wg == 0) {
        load_next(T0{});
        load_next(T0{});
    } else {
        load_next(T1{});
        load_next(T1{});
    }

    float o[128];
    float s[32];
    uint32_t pf[4][4];
    int n_base = 0, nq = 0;  // global index of the piece's first tile; Q loads so far
    bool first = true;
    for (int sg = lo; in_range(sg); ++sg) {
        const WsPiece pc = piece(sg);
        if (pc.skip) continue;
        const int nt = max(pc.t1 - pc.t0, 0);
        // every thread is done with the previous piece (Q, sP0 / sP1, s_l)
        if (!first) ss_sync(kSsBarPiece);
        first = false;
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] = 0.f;
        float l0 = 0.f, l1 = 0.f;             // this thread's share of the row sums
        float m0 = -INFINITY, m1 = -INFINITY;  // running max (warpgroup 0)
        const int lim0 = ws_row_limit(a, pc, r0), lim1 = ws_row_limit(a, pc, r1);
        // keys below lim_min are visible to every row this warp holds
        const int lim_min = __reduce_min_sync(0xffffffffu, min(lim0, lim1));
        // masks keys at or past each row's limit in tile t; row max of the raw scores
        auto mask_max = [&](int t, float& mx0, float& mx1) {
            mask_row_max<8>(s, t * BN, lim0, lim1, (t + 1) * BN <= lim_min, lane, mx0, mx1);
        };
        // s <- 2^(s sl - mu) (P), returns this thread's row sums
        auto exp_rows = [&](float mu0, float mu1, float& sum0, float& sum1) {
            sum0 = 0.f;
            sum1 = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                s[j * 4 + 0] = ex2_fast(fmaf(s[j * 4 + 0], sl, -mu0));
                s[j * 4 + 1] = ex2_fast(fmaf(s[j * 4 + 1], sl, -mu0));
                s[j * 4 + 2] = ex2_fast(fmaf(s[j * 4 + 2], sl, -mu1));
                s[j * 4 + 3] = ex2_fast(fmaf(s[j * 4 + 3], sl, -mu1));
                sum0 += s[j * 4 + 0] + s[j * 4 + 1];
                sum1 += s[j * 4 + 2] + s[j * 4 + 3];
            }
        };
        // the scores of tile n (global index; buffer n & 1) into s: part 0's blocks first
        // (WG0) or part 1's (WG1), each after its barrier
        auto scores = [&](int n, auto part_first) {
            constexpr int PF = decltype(part_first)::value;
            const int b = n & 1, par = (n >> 1) & 1;
            const uint32_t kst = sKa + b * kSsTile;
            mbar_wait(kbar(b, PF), par);
            fence_proxy_async();  // the cp.async writes, seen through the mbarrier
            wgmma_fence();
            if constexpr (PF == 0) ss_scores<0, 4>(s, sQa, kst, true);
            else ss_scores<4, 9>(s, sQa, kst, true);
            wgmma_commit();
            mbar_wait(kbar(b, 1 - PF), par);
            fence_proxy_async();
            wgmma_fence();
            if constexpr (PF == 0) ss_scores<4, 9>(s, sQa, kst, false);
            else ss_scores<0, 4>(s, sQa, kst, false);
            wgmma_commit();
        };

        if (nt > 0) {
            // Q tile: four threads per row, chunk 4k + (tid & 3) (rows of a head tile are
            // contiguous in q: row R is row qo0 * H + R)
            {
                const int r = tid >> 2, h = tid & 3, x = r & 7;
                const int R = pc.mtile * M + r;
                const bool ok = R < pc.n * a.H;
                const uint16_t* src = static_cast<const uint16_t*>(a.q) +
                                      (ok ? (int64_t(pc.qo0) * a.H + R) * kD : 0);
                const uint32_t dst = sQa + r * 128;
#pragma unroll
                for (int k = 0; k < kChunks / 4; ++k) {
                    const int c = 4 * k + h;  // c >> 3 = k >> 1, c & 7 = 4 (k & 1) + h
                    cp_async16(dst + (k >> 1) * (M * 128) + (((4 * (k & 1) + h) ^ x) << 4),
                               src + c * 8, ok ? 16 : 0);
                }
                cp_async_mbar_arrive(qbar);
                mbar_wait(qbar, nq & 1);
                ++nq;
                fence_proxy_async();
            }
        }

        if (wg == 0 && nt > 0) {
            // ---------------- warpgroup 0: even tiles' scores, O[:, 0:256]
            scores(n_base, T0{});
            wgmma_wait0();
            // one pair (tiles i, i + 1 of the piece); HAS_O: tile i + 1 exists, HAS_NEXT: i + 2
            auto pair = [&](int i, auto has_o, auto has_next) {
                constexpr bool HAS_O = decltype(has_o)::value;
                constexpr bool HAS_NEXT = decltype(has_next)::value;
                const int n_e = n_base + i, be = n_e & 1;
                const uint32_t kse = sKa + be * kSsTile, kso = sKa + (be ^ 1) * kSsTile;
                float mx0, mx1;
                mask_max(pc.t0 + i, mx0, mx1);
                const float mn0 = fmaxf(m0, mx0 * sl), mn1 = fmaxf(m1, mx1 * sl);
                const float mu0 = mn0 == -INFINITY ? 0.f : mn0;
                const float mu1 = mn1 == -INFINITY ? 0.f : mn1;
                const float al0 = mn0 == -INFINITY ? 1.f : ex2_fast(m0 - mu0);
                const float al1 = mn1 == -INFINITY ? 1.f : ex2_fast(m1 - mu1);
                m0 = mn0;
                m1 = mn1;
                if ((lane & 3) == 0) {
                    s_m[r0] = mn0;
                    s_m[r1] = mn1;
                    s_sc0[r0] = al0;
                    s_sc0[r1] = al1;
                }
                ss_rescale(o, al0, al1);
                float sum0, sum1;
                exp_rows(mu0, mu1, sum0, sum1);
                l0 = l0 * al0 + sum0;
                l1 = l1 * al1 + sum1;
                ss_pack_p(pf, s);
                ss_arrive(kSsBarScale0);
                wgmma_fence();
                ss_pv_reg(o, pf, kse, 0);
                wgmma_commit();
                wgmma_wait0();
                ss_wg_sync(0);
                load_next(T0{});  // part 0 of tile n_e + 2 into buffer be (its last use is done)
                ss_sync(kSsBarScale1);
                float c0 = 1.f, c1 = 1.f;
                if constexpr (HAS_O) {
                    c0 = s_sc1[r0];
                    c1 = s_sc1[r1];
                    m0 = s_m[r0];
                    m1 = s_m[r1];
                }
                // sP0: column block 8 of tile e's buffer (its scores are done)
                ss_store_p(sK + be * kSsTile + 8 * 8192, s, c0, c1, r0, r1, lane);
                fence_proxy_async();  // sP0 is read by warpgroup 1's wgmma
                ss_arrive(kSsBarP0);
                if constexpr (HAS_O) {
                    ss_sync(kSsBarP1);
                    // tile o's part 0 landed (warpgroup 1 waited for it; this wait returns at
                    // once and gives this warpgroup its own acquire; its next phase is tile
                    // n_e + 3, which this warpgroup loads only after the P V below), and sP1:
                    // async-proxy reads after it
                    mbar_wait(kbar(be ^ 1, 0), ((n_e + 1) >> 1) & 1);
                    fence_proxy_async();
                    ss_rescale(o, c0, c1);
                    l0 *= c0;
                    l1 *= c1;
                    wgmma_fence();
                    ss_pv_smem(o, sP1a, kso, 0);
                    wgmma_commit();
                }
                if constexpr (HAS_NEXT) {
                    // scores of tile n_e + 2 (buffer be): part 0 under the P V above
                    mbar_wait(kbar(be, 0), ((n_e + 2) >> 1) & 1);
                    fence_proxy_async();
                    wgmma_fence();
                    ss_scores<0, 4>(s, sQa, kse, true);
                    wgmma_commit();
                }
                if constexpr (HAS_O) {
                    if constexpr (HAS_NEXT) wgmma_wait1(); else wgmma_wait0();
                    ss_wg_sync(0);
                    load_next(T0{});  // part 0 of tile n_e + 3 into buffer be ^ 1
                }
                if constexpr (HAS_NEXT) {
                    mbar_wait(kbar(be, 1), ((n_e + 2) >> 1) & 1);
                    fence_proxy_async();
                    wgmma_fence();
                    ss_scores<4, 9>(s, sQa, kse, false);
                    wgmma_commit();
                }
                wgmma_wait0();
            };
            int i = 0;
            for (; i + 2 < nt; i += 2) pair(i, std::true_type{}, std::true_type{});
            if (i + 1 < nt) pair(i, std::true_type{}, std::false_type{});
            else pair(i, std::false_type{}, std::false_type{});
        } else if (nt > 0) {
            // ---------------- warpgroup 1: odd tiles' scores, O[:, 256:512]
            if (nt > 1) {
                scores(n_base + 1, T1{});
                wgmma_wait0();
            }
            // HAS_O: tile i + 1 exists, HAS_NEXT: tile i + 3 exists
            auto pair = [&](int i, auto has_o, auto has_next) {
                constexpr bool HAS_O = decltype(has_o)::value;
                constexpr bool HAS_NEXT = decltype(has_next)::value;
                const int n_e = n_base + i, be = n_e & 1;
                const uint32_t kse = sKa + be * kSsTile, kso = sKa + (be ^ 1) * kSsTile;
                ss_sync(kSsBarScale0);
                const float a0 = s_sc0[r0], a1 = s_sc0[r1];
                if constexpr (HAS_O) {
                    float mx0, mx1;
                    mask_max(pc.t0 + i + 1, mx0, mx1);
                    const float ma0 = s_m[r0], ma1 = s_m[r1];
                    const float mn0 = fmaxf(ma0, mx0 * sl), mn1 = fmaxf(ma1, mx1 * sl);
                    const float mu0 = mn0 == -INFINITY ? 0.f : mn0;
                    const float mu1 = mn1 == -INFINITY ? 0.f : mn1;
                    const float c0 = mn0 == -INFINITY ? 1.f : ex2_fast(ma0 - mu0);
                    const float c1 = mn1 == -INFINITY ? 1.f : ex2_fast(ma1 - mu1);
                    __syncwarp();  // every lane has read s_m before it changes
                    if ((lane & 3) == 0) {
                        s_m[r0] = mn0;
                        s_m[r1] = mn1;
                        s_sc1[r0] = c0;
                        s_sc1[r1] = c1;
                    }
                    ss_arrive(kSsBarScale1);
                    ss_rescale(o, a0 * c0, a1 * c1);
                    float sum0, sum1;
                    exp_rows(mu0, mu1, sum0, sum1);
                    l0 = l0 * (a0 * c0) + sum0;
                    l1 = l1 * (a1 * c1) + sum1;
                    ss_pack_p(pf, s);
                    ss_store_p(sP1, s, 1.f, 1.f, r0, r1, lane);
                    fence_proxy_async();  // sP1 is read by warpgroup 0's wgmma
                    wgmma_fence();
                    ss_pv_reg(o, pf, kso, 1);
                    wgmma_commit();
                } else {
                    ss_arrive(kSsBarScale1);
                    ss_rescale(o, a0, a1);
                    l0 *= a0;
                    l1 *= a1;
                }
                ss_sync(kSsBarP0);
                // tile e's part 1 landed (warpgroup 0 waited for it; returns at once, this
                // warpgroup's own acquire; its next phase is tile n_e + 2, loaded only after the
                // P V below), and sP0: async-proxy reads after it
                mbar_wait(kbar(be, 1), (n_e >> 1) & 1);
                fence_proxy_async();
                wgmma_fence();
                ss_pv_smem(o, kse + 8 * 8192, kse, 1);  // sP0 in tile e's column block 8
                wgmma_commit();
                if constexpr (HAS_O) ss_arrive(kSsBarP1);
                if constexpr (HAS_O && EARLY) {
                    // part 1 of tile n_e + 3 (into be ^ 1) as soon as this warpgroup's P V of
                    // tile o is done, ahead of tile n_e + 2's, which waits for the other P V
                    wgmma_wait1();
                    ss_wg_sync(1);
                    KeyCursor k3 = kc;
                    if (!k3.done) k3.advance(piece, in_range);
                    if (!k3.done) {
                        int blk3[4];
                        fetch_blk(k3, blk3);
                        issue_part(T1{}, k3, n_loaded + 1, blk3);
                    }
                    wgmma_wait0();
                    ss_wg_sync(1);
                    if (!kc.done) {
                        issue_part(T1{}, kc, n_loaded, nblk);  // part 1 of tile n_e + 2 into be
                        n_loaded += k3.done ? 1 : 2;
                        if (!k3.done) k3.advance(piece, in_range);
                        kc = k3;
                        fetch_blk(kc, nblk);
                    }
                } else {
                    wgmma_wait0();
                    ss_wg_sync(1);
                    load_next(T1{});                     // part 1 of tile n_e + 2 into buffer be
                    if constexpr (HAS_O) load_next(T1{});  // part 1 of tile n_e + 3 into be ^ 1
                }
                if constexpr (HAS_NEXT) {
                    scores(n_e + 3, T1{});
                    wgmma_wait0();
                }
            };
            int i = 0;
            for (; i + 3 < nt; i += 2) pair(i, std::true_type{}, std::true_type{});
            if (i + 1 < nt) {
                pair(i, std::true_type{}, std::false_type{});
                i += 2;
            }
            if (i < nt) pair(i, std::false_type{}, std::false_type{});
        }
        n_base += nt;

        // ---- write this piece's rows (l = 0: no key seen -> out 0, lse +inf / -inf partial)
        {
            float ls0 = l0 + __shfl_xor_sync(0xffffffffu, l0, 1);
            ls0 += __shfl_xor_sync(0xffffffffu, ls0, 2);
            float ls1 = l1 + __shfl_xor_sync(0xffffffffu, l1, 1);
            ls1 += __shfl_xor_sync(0xffffffffu, ls1, 2);
            if ((lane & 3) == 0) {
                s_l[wg * 64 + r0] = ls0;
                s_l[wg * 64 + r1] = ls1;
            }
        }
        ss_sync(kSsBarPiece);
        // the piece read again from the metadata rather than kept in registers across the tiles
        const WsPiece pw = piece(sg);
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int r = hf ? r1 : r0;
            ws_write_row<true>(a, pw, o, hf, r, wg, lane, s_l[r] + s_l[64 + r], hf ? m1 : m0,
                               wg == 0);
        }
    }
#endif
}

__global__ void probe_sm90a_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    *out = 1;
#else
    *out = 0;
#endif
}

// ------------------------------------------------------------------------------------------
// Combine: merges the partials of cut segments. grid (G, ceil(M / 8)), one warp per row.
// ------------------------------------------------------------------------------------------
constexpr int kCombineChunk = 128;

__global__ void __launch_bounds__(256) combine_kernel(RunArgs a) {
    const int idx = blockIdx.x;
    if (idx >= a.md[2]) return;  // the plan's output: complete before the decode grid began
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the decode grid's partials
#endif
    const int s = a.md[a.lay.split() + idx];
    const int b = a.md[a.lay.seg_b() + s];
    const int rblocks = (a.M + 7) / 8;
    const int rr = blockIdx.y / rblocks;
    const int mtile = a.md[a.lay.seg_m() + s] * a.R + rr;
    const int p0 = a.md[a.lay.seg_prefix() + s], p1 = a.md[a.lay.seg_prefix() + s + 1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = (blockIdx.y - rr * rblocks) * 8 + warp;
    if (r >= a.M) return;
    const int qo0 = a.qo_indptr[b];
    const int n = a.qo_indptr[b + 1] - qo0;
    const int R = mtile * a.M + r;
    if (R >= n * a.H) return;
    const int j = R / a.H, h = R - j * a.H;
    const int64_t qrow = int64_t(qo0 + j) * a.H + h;
    const int32_t* bnd = a.md + a.lay.bnd();
    const int g0 = owner_in(bnd, a.NG, p0), g1 = owner_in(bnd, a.NG, p1 - 1);

    // Pieces are the non-empty groups g0..g1. Lanes read their lse values in parallel; the
    // weighted sum then streams 4 pieces per step so that several loads are in flight.
    __shared__ float s_w[8][kCombineChunk];
    __shared__ int s_slot[8][kCombineChunk];
    const int np = g1 - g0 + 1;
    auto slot_of = [&](int g) -> int {
        const int rb = bnd[g];
        if (rb == bnd[g + 1]) return -1;
        return 2 * (g * a.R + rr) + (rb >= p0 ? 0 : 1);
    };
    float mx = -INFINITY;
    for (int i = lane; i < np; i += 32) {
        const int slot = slot_of(g0 + i);
        if (slot >= 0) mx = fmaxf(mx, a.ws_lse[int64_t(slot) * a.M + r]);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float4 acc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    float wsum = 0.f;
    if (mx != -INFINITY) {
        for (int c0 = 0; c0 < np; c0 += kCombineChunk) {
            const int nc = min(kCombineChunk, np - c0);
            for (int i = lane; i < nc; i += 32) {
                const int slot = slot_of(g0 + c0 + i);
                const float w = slot >= 0 ? expf(a.ws_lse[int64_t(slot) * a.M + r] - mx) : 0.f;
                s_w[warp][i] = w;
                s_slot[warp][i] = w > 0.f ? slot : -1;
            }
            __syncwarp();
            for (int i0 = 0; i0 < nc; i0 += 4) {
                float4 v[4][4];
                float w[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int slot = i0 + k < nc ? s_slot[warp][i0 + k] : -1;
                    w[k] = slot >= 0 ? s_w[warp][i0 + k] : 0.f;
                    const int64_t off = (int64_t(slot >= 0 ? slot : 0) * a.M + r) * kDc;
                    if (a.ws_bf16) {
                        const uint2* src =
                            reinterpret_cast<const uint2*>(reinterpret_cast<const uint16_t*>(a.ws_o) + off);
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            const uint2 x = slot >= 0 ? src[lane + 32 * j] : make_uint2(0, 0);
                            v[k][j] = make_float4(__uint_as_float(x.x << 16), __uint_as_float(x.x & 0xffff0000u),
                                                  __uint_as_float(x.y << 16), __uint_as_float(x.y & 0xffff0000u));
                        }
                    } else {
                        const float4* src = reinterpret_cast<const float4*>(a.ws_o + off);
#pragma unroll
                        for (int j = 0; j < 4; ++j)
                            v[k][j] = slot >= 0 ? src[lane + 32 * j] : make_float4(0.f, 0.f, 0.f, 0.f);
                    }
                }
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    wsum += w[k];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        acc[j].x += w[k] * v[k][j].x;
                        acc[j].y += w[k] * v[k][j].y;
                        acc[j].z += w[k] * v[k][j].z;
                        acc[j].w += w[k] * v[k][j].w;
                    }
                }
            }
            __syncwarp();
        }
    }
    const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int col = (lane + 32 * i) * 4;
        const float4 v = make_float4(acc[i].x * inv, acc[i].y * inv, acc[i].z * inv, acc[i].w * inv);
        if (a.out_f32) {
            *reinterpret_cast<float4*>(static_cast<float*>(a.out) + qrow * kDc + col) = v;
        } else {
            uint2 pk;
            pk.x = pack_bf16x2(v.x, v.y);
            pk.y = pack_bf16x2(v.z, v.w);
            *reinterpret_cast<uint2*>(static_cast<uint16_t*>(a.out) + qrow * kDc + col) = pk;
        }
    }
    if (lane == 0 && a.lse) a.lse[qrow] = wsum > 0.f ? mx + logf(wsum) : INFINITY;
}

// ------------------------------------------------------------------------------------------
// Generic path: any dc / dr, f32 or bf16 cache. One CTA per (token, head), keys in chunks of
// 128 with an online softmax in f32. Correct, not fast.
// ------------------------------------------------------------------------------------------
struct GenericArgs {
    const void* q;
    int q_f32;
    const int32_t* qo_indptr;
    const int32_t* seq_lens;
    const int32_t* block_table;
    int64_t bt_stride;
    const void* cache;
    int cache_f32;
    int page_shift;
    void* out;
    int out_f32;
    float* lse;
    int B, T, H, dc, dr, causal;
    float scale;
};

constexpr int kGenThreads = 128;

__device__ __forceinline__ float load_elem(const void* p, int64_t i, int is_f32) {
    return is_f32 ? static_cast<const float*>(p)[i]
                  : bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

__global__ void __launch_bounds__(kGenThreads) generic_kernel(GenericArgs a) {
    extern __shared__ float gsm[];
    const int D = a.dc + a.dr;
    float* sq = gsm;               // [D]
    float* sacc = sq + D;          // [dc]
    float* sp = sacc + a.dc;       // [kGenThreads]
    __shared__ float s_red[kGenThreads / 32];
    __shared__ float s_m, s_l, s_alpha;
    const int tid = threadIdx.x;
    const int64_t row = blockIdx.x;           // token * H + head
    const int t = int(row / a.H);
    // sequence of token t: last b with qo_indptr[b] <= t (and a non-empty range)
    int lo = 0, hi = a.B - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (a.qo_indptr[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const int b = lo;
    const int n = a.qo_indptr[b + 1] - a.qo_indptr[b];
    const int j = t - a.qo_indptr[b];
    const int L = max(a.seq_lens[b], 0);
    int lim = a.causal ? L - n + j + 1 : L;
    lim = max(0, min(lim, L));
    for (int d = tid; d < D; d += kGenThreads) sq[d] = load_elem(a.q, row * D + d, a.q_f32);
    for (int d = tid; d < a.dc; d += kGenThreads) sacc[d] = 0.f;
    if (tid == 0) { s_m = -INFINITY; s_l = 0.f; }
    __syncthreads();
    const int32_t* bt = a.block_table + int64_t(b) * a.bt_stride;
    const int pmask = (1 << a.page_shift) - 1;
    for (int k0 = 0; k0 < lim; k0 += kGenThreads) {
        const int k = k0 + tid;
        float sc = -INFINITY;
        int64_t base = 0;
        if (k < lim) {
            const int blk = bt[k >> a.page_shift];
            base = (int64_t(blk) * (pmask + 1) + (k & pmask)) * D;
            float acc = 0.f;
            for (int d = 0; d < D; ++d) acc += sq[d] * load_elem(a.cache, base + d, a.cache_f32);
            sc = acc * a.scale;
        }
        float mx = sc;
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if ((tid & 31) == 0) s_red[tid >> 5] = mx;
        __syncthreads();
        if (tid == 0) {
            float m = s_red[0];
            for (int w = 1; w < kGenThreads / 32; ++w) m = fmaxf(m, s_red[w]);
            const float mnew = fmaxf(s_m, m);
            s_alpha = expf(s_m - mnew);   // s_m = -inf only before the first key: 0
            s_m = mnew;
        }
        __syncthreads();
        const float p = k < lim ? expf(sc - s_m) : 0.f;
        sp[tid] = p;
        float sum = p;
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        __syncthreads();
        if ((tid & 31) == 0) s_red[tid >> 5] = sum;
        __syncthreads();
        if (tid == 0) {
            float l = 0.f;
            for (int w = 0; w < kGenThreads / 32; ++w) l += s_red[w];
            s_l = s_l * s_alpha + l;
        }
        const int kn = min(kGenThreads, lim - k0);
        for (int d = tid; d < a.dc; d += kGenThreads) {
            float acc = sacc[d] * s_alpha;
            for (int kk = 0; kk < kn; ++kk) {
                const int key = k0 + kk;
                const int blk = bt[key >> a.page_shift];
                const int64_t kb = (int64_t(blk) * (pmask + 1) + (key & pmask)) * D;
                acc += sp[kk] * load_elem(a.cache, kb + d, a.cache_f32);
            }
            sacc[d] = acc;
        }
        __syncthreads();
    }
    const float l = s_l;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int d = tid; d < a.dc; d += kGenThreads) {
        const float v = sacc[d] * inv;
        if (a.out_f32) static_cast<float*>(a.out)[row * a.dc + d] = v;
        else static_cast<uint16_t*>(a.out)[row * a.dc + d] = f32_to_bf16(v);
    }
    if (tid == 0 && a.lse) a.lse[row] = l > 0.f ? s_m + logf(l) : INFINITY;
}

bool fast_path(const DeviceInfo& dev, const AttentionParams& p) {
    return p.cache.dc == kDc && p.cache.dr == kDr && p.cache.dtype == DType::BF16 &&
           pick_bn(dev, rows_per_tile(p.num_heads)) != 0;
}

template <int MT, int BN>
void set_smem_attr() {
    const size_t bytes = mma_smem_bytes(MT * 16, BN);
    check(cudaFuncSetAttribute(decode_mma_kernel<MT, BN>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          "cudaFuncSetAttribute(decode kernel)");
}

template <int MT>
void launch_mt(int BN, const RunArgs& a, size_t smem, cudaStream_t st) {
    switch (BN) {
        case 64: decode_mma_kernel<MT, 64><<<a.G, kThreads, smem, st>>>(a); break;
        case 32: decode_mma_kernel<MT, 32><<<a.G, kThreads, smem, st>>>(a); break;
        default: decode_mma_kernel<MT, 16><<<a.G, kThreads, smem, st>>>(a); break;
    }
}

// Launches kernel k (RunArgs) on st; with pdl, as a programmatic dependent of the preceding
// work in the stream (the kernel calls griddepcontrol.wait before it reads what that wrote).
void launch_run_kernel(void (*k)(RunArgs), dim3 grid, int threads, size_t smem, cudaStream_t st,
                       const RunArgs& a, bool pdl) {
    launch_ex(k, grid, dim3(unsigned(threads)), smem, st, pdl, "cudaLaunchKernelEx(attention)", a);
}

int log2_exact(int v) {
    int s = 0;
    while ((1 << s) < v) ++s;
    return s;
}

}  // namespace

void attention_init(DeviceInfo& dev, bool allow_wgmma) {
    dev.wgmma = false;
    // MLA_CUDA_CUT_PENALTY: the plan's cost of a cut piece in 64-key units (<= 0: the equal split)
    if (const char* cp = std::getenv("MLA_CUDA_CUT_PENALTY")) {
        char* end = nullptr;
        const float v = std::strtof(cp, &end);
        if (end != cp && std::isfinite(v)) dev.cut_penalty = std::min(v, 1.0e6f);
    }
    if (allow_wgmma && dev.cc_major == 9 && dev.cc_minor == 0 && kWgSmem <= dev.smem_optin) {
        int* d = nullptr;
        int h = 0;
        check(cudaMalloc(&d, sizeof(int)), "cudaMalloc(probe)");
        probe_sm90a_kernel<<<1, 1>>>(d);
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
        cudaFree(d);
        if (e != cudaSuccess) throw_cuda(e, "sm_90a probe kernel");
        if (h == 1) {
            check(cudaFuncSetAttribute(decode_wgmma_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWgSmem)),
                  "cudaFuncSetAttribute(wgmma decode kernel)");
            dev.wgmma = true;
            // MLA_CUDA_WS=0 keeps the simpler two-warpgroup kernel (for comparisons)
            const char* ws = std::getenv("MLA_CUDA_WS");
            if (!(ws && ws[0] == '0') && kWsSmem <= dev.smem_optin) {
                for (auto* k : {decode_ws_kernel<kWsQRegSteps>, decode_ws_kernel<0>})
                    check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(kWsSmem)),
                          "cudaFuncSetAttribute(warp-specialized decode kernel)");
                dev.ws = true;
                // MLA_CUDA_WS_QREG=0 (for comparisons): Q read from shared memory every k-step
                const char* v = std::getenv("MLA_CUDA_WS_QREG");
                dev.ws_qreg = !(v && v[0] == '0');
                // The cheaper softmax on the score warpgroup (decode_ws_kernel<QR, FX>) is the
                // default; MLA_CUDA_WS_FX=0: the previous softmax (v10)
                const char* fx = std::getenv("MLA_CUDA_WS_FX");
                dev.ws_fx = !dev.ws_qreg ? 0 : (fx && fx[0] == '0') ? 0 : 1;
                if (dev.ws_fx)
                    for (auto* k : {decode_ws_kernel<kWsQRegSteps, 1>,
                                    decode_ws_kernel<kWsQRegSteps, 1, true>})
                        check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   int(kWsSmem)),
                              "cudaFuncSetAttribute(warp-specialized decode kernel)");
                // The division-free Q copy and epilogue rows (decode_ws_kernel<.., LEAN>,
                // NOTES.md v13) are the default with FX = 1; MLA_CUDA_WS_LEAN=0 gives the v12
                // kernel back
                const char* ln = std::getenv("MLA_CUDA_WS_LEAN");
                dev.ws_lean = !(ln && ln[0] == '0');
                // MLA_CUDA_PDL=1: programmatic dependent launch of this kernel and the combine
                const char* pd = std::getenv("MLA_CUDA_PDL");
                dev.pdl = pd && pd[0] == '1';
            }
            // MLA_CUDA_DECODE=seesaw: the two-warpgroup seesaw kernel (decode_ss_kernel) for
            // bf16 queries and a positive scale; not the default until it is measured faster
            const char* dk = std::getenv("MLA_CUDA_DECODE");
            if (dk && std::string(dk) == "seesaw" && kSsSmem <= dev.smem_optin) {
                for (auto* k : {decode_ss_kernel<false>, decode_ss_kernel<true>})
                    check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(kSsSmem)),
                          "cudaFuncSetAttribute(seesaw decode kernel)");
                dev.ss = true;
                // MLA_CUDA_SS_EARLY=1: warpgroup 1 loads the next odd tile first (see the kernel)
                const char* ea = std::getenv("MLA_CUDA_SS_EARLY");
                dev.ss_early = ea && ea[0] == '1';
            }
        }
    }
    // Raise the shared-memory limit of every instantiation that fits this device.
    auto fits = [&](int M, int BN) { return mma_smem_bytes(M, BN) <= dev.smem_optin; };
    if (fits(64, 64)) set_smem_attr<4, 64>();
    if (fits(64, 32)) set_smem_attr<4, 32>();
    if (fits(64, 16)) set_smem_attr<4, 16>();
    if (fits(32, 64)) set_smem_attr<2, 64>();
    if (fits(32, 32)) set_smem_attr<2, 32>();
    if (fits(32, 16)) set_smem_attr<2, 16>();
    if (fits(16, 64)) set_smem_attr<1, 64>();
    if (fits(16, 32)) set_smem_attr<1, 32>();
    if (fits(16, 16)) set_smem_attr<1, 16>();
}

size_t attention_metadata_bytes(const DeviceInfo& dev, int32_t max_seqs, int32_t max_tokens,
                                int32_t heads, int32_t /*dc*/) {
    const Sched s = schedule(dev, max_seqs, max_tokens, heads);
    Layout lay{s.smax, s.G, max_seqs};
    return size_t(lay.total_ints()) * sizeof(int32_t);
}

size_t attention_workspace_bytes(const DeviceInfo& dev, int32_t max_seqs, int32_t max_tokens,
                                 int32_t heads, int32_t dc) {
    const Sched s = schedule(dev, max_seqs, max_tokens, heads);
    const size_t slots = 2 * size_t(s.G);
    return slots * size_t(s.M) * (size_t(std::max(dc, 1)) + 1) * sizeof(float);
}

const char* attention_path(const DeviceInfo& dev, const AttentionParams& p) {
    if (!fast_path(dev, p)) return "generic";
    const int M = rows_per_tile(p.num_heads), BN = pick_bn(dev, M);
    const bool pos = p.scale > 0.f;  // see attention_run
    if (use_wgmma(dev, M) && dev.ss && pos && p.q_dtype == DType::BF16)
        return dev.ss_early ? "wgmma-seesaw-bf16 M=64 BN=64 early" : "wgmma-seesaw-bf16 M=64 BN=64";
    if (use_wgmma(dev, M) && dev.ws && dev.ws_fx && pos)
        return dev.ws_lean ? "wgmma-ws-bf16 M=64 BN=32 Qreg=20 fastsoftmax"
                           : "wgmma-ws-bf16 M=64 BN=32 Qreg=20 fastsoftmax v12-Qcopy";
    if (use_wgmma(dev, M) && dev.ws)
        return dev.ws_qreg ? "wgmma-ws-bf16 M=64 BN=32 Qreg=20" : "wgmma-ws-bf16 M=64 BN=32";
    if (use_wgmma(dev, M)) return "wgmma-bf16 M=64 BN=64";
    static const char* names[3][3] = {
        {"mma-bf16 M=16 BN=64", "mma-bf16 M=16 BN=32", "mma-bf16 M=16 BN=16"},
        {"mma-bf16 M=32 BN=64", "mma-bf16 M=32 BN=32", "mma-bf16 M=32 BN=16"},
        {"mma-bf16 M=64 BN=64", "mma-bf16 M=64 BN=32", "mma-bf16 M=64 BN=16"}};
    const int mi = M == 16 ? 0 : M == 32 ? 1 : 2;
    const int bi = BN == 64 ? 0 : BN == 32 ? 1 : 2;
    return names[mi][bi];
}

void attention_plan(const DeviceInfo& dev, const AttentionParams& p, void* metadata,
                    size_t metadata_bytes, cudaStream_t stream) {
    const size_t need =
        attention_metadata_bytes(dev, p.num_seqs, p.num_tokens, p.num_heads, p.cache.dc);
    if (metadata_bytes < need)
        throw Error(MLA_ERROR_BUFFER_TOO_SMALL,
                    "mla_attention_plan: metadata_bytes = " + std::to_string(metadata_bytes) +
                        ", this batch needs " + std::to_string(need));
    require_device_pointer(metadata, "metadata");
    require_device_pointer(p.qo_indptr, "params.qo_indptr");
    require_device_pointer(p.seq_lens, "params.seq_lens");
    const Sched s = schedule(dev, p.num_seqs, p.num_tokens, p.num_heads);
    PlanArgs a;
    a.qo_indptr = p.qo_indptr;
    a.seq_lens = p.seq_lens;
    a.md = static_cast<int32_t*>(metadata);
    a.B = p.num_seqs;
    a.H = p.num_heads;
    a.M = s.M;
    a.BN = s.BN;
    a.G = s.NG;
    a.R = s.R;
    a.penalty4 = dev.cut_penalty > 0.f ? std::max(1, int(std::lround(4.f * dev.cut_penalty))) : 0;
    a.lay = Layout{s.smax, s.G, p.num_seqs};
    plan_kernel<<<1, kPlanThreads, 0, stream>>>(a);
    check_launch("attention plan kernel");
}

void attention_run(const DeviceInfo& dev, const AttentionParams& p, const void* metadata,
                   size_t metadata_bytes, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream) {
    const size_t need_md =
        attention_metadata_bytes(dev, p.num_seqs, p.num_tokens, p.num_heads, p.cache.dc);
    if (metadata_bytes < need_md)
        throw Error(MLA_ERROR_BUFFER_TOO_SMALL,
                    "mla_attention_run: metadata_bytes = " + std::to_string(metadata_bytes) +
                        ", this batch needs " + std::to_string(need_md));
    const bool fast = fast_path(dev, p);
    if (fast) {
        const size_t need_ws =
            attention_workspace_bytes(dev, p.num_seqs, p.num_tokens, p.num_heads, p.cache.dc);
        if (workspace_bytes < need_ws)
            throw Error(MLA_ERROR_BUFFER_TOO_SMALL,
                        "mla_attention_run: workspace_bytes = " + std::to_string(workspace_bytes) +
                            ", this batch needs " + std::to_string(need_ws));
        require_device_pointer(workspace, "workspace");
    }
    require_device_pointer(metadata, "metadata");
    require_device_pointer(p.q, "params.q");
    require_device_pointer(p.qo_indptr, "params.qo_indptr");
    require_device_pointer(p.seq_lens, "params.seq_lens");
    require_device_pointer(p.block_table, "params.block_table");
    require_device_pointer(p.cache.data, "params.cache.data");
    require_device_pointer(p.out, "params.out");
    require_device_pointer(p.lse, "params.lse");
    if (p.num_tokens == 0) return;
    const int page_shift = log2_exact(p.cache.block_size);

    if (!fast) {
        GenericArgs g;
        g.q = p.q;
        g.q_f32 = p.q_dtype == DType::F32;
        g.qo_indptr = p.qo_indptr;
        g.seq_lens = p.seq_lens;
        g.block_table = p.block_table;
        g.bt_stride = p.block_table_stride;
        g.cache = p.cache.data;
        g.cache_f32 = p.cache.dtype == DType::F32;
        g.page_shift = page_shift;
        g.out = p.out;
        g.out_f32 = p.out_dtype == DType::F32;
        g.lse = p.lse;
        g.B = p.num_seqs;
        g.T = p.num_tokens;
        g.H = p.num_heads;
        g.dc = p.cache.dc;
        g.dr = p.cache.dr;
        g.causal = p.causal;
        g.scale = p.scale;
        const size_t smem = (size_t(2) * g.dc + g.dr + kGenThreads) * sizeof(float);
        if (smem > dev.smem_optin)
            throw Error(MLA_ERROR_UNSUPPORTED,
                        "mla_attention_run: kv_lora_rank = " + std::to_string(g.dc) +
                            " is too large for the generic CUDA kernel on this device");
        if (smem > 48 * 1024)
            check(cudaFuncSetAttribute(generic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(smem)),
                  "cudaFuncSetAttribute(generic attention)");
        const int64_t rows = int64_t(p.num_tokens) * p.num_heads;
        generic_kernel<<<dim3(unsigned(rows)), kGenThreads, smem, as_stream(stream)>>>(g);
        check_launch("generic attention kernel");
        return;
    }

    const Sched s = schedule(dev, p.num_seqs, p.num_tokens, p.num_heads);
    RunArgs a;
    a.q = p.q;
    a.q_f32 = p.q_dtype == DType::F32;
    a.qo_indptr = p.qo_indptr;
    a.seq_lens = p.seq_lens;
    a.block_table = p.block_table;
    a.bt_stride = p.block_table_stride;
    a.cache = static_cast<const uint16_t*>(p.cache.data);
    a.page_shift = page_shift;
    a.out = p.out;
    a.out_f32 = p.out_dtype == DType::F32;
    a.lse = p.lse;
    a.md = static_cast<const int32_t*>(metadata);
    a.ws_o = static_cast<float*>(workspace);
    a.ws_lse = a.ws_o + size_t(2) * s.G * s.M * kDc;
    // the warp-specialized kernel keeps partials in bf16 when the output is bf16 (the final
    // rounding dominates; half the partial traffic)
    const bool seesaw = use_wgmma(dev, s.M) && dev.ss && !a.q_f32 && p.scale > 0.f;
    a.ws_bf16 = (!a.out_f32 && use_wgmma(dev, s.M) && (dev.ws || seesaw)) ? 1 : 0;
    a.H = p.num_heads;
    a.causal = p.causal;
    a.M = s.M;
    a.G = s.G;
    a.R = s.R;
    a.NG = s.NG;
    a.scale_log2 = p.scale * kLog2e;
    a.lay = Layout{s.smax, s.G, p.num_seqs};
    const size_t smem = mma_smem_bytes(s.M, s.BN);
    // the cheaper softmaxes take the max over unscaled scores: only for a positive scale
    const int ws_fx = a.scale_log2 > 0.f ? dev.ws_fx : 0;
    if (seesaw) {
        launch_run_kernel(dev.ss_early ? decode_ss_kernel<true> : decode_ss_kernel<false>,
                          dim3(unsigned(a.G)), kSsThreads, kSsSmem, stream, a, dev.pdl);
    } else if (use_wgmma(dev, s.M) && dev.ws) {
        if (ws_fx && dev.ws_lean)
            launch_run_kernel(decode_ws_kernel<kWsQRegSteps, 1, true>, dim3(unsigned(a.G)),
                              kWsThreads, kWsSmem, stream, a, dev.pdl);
        else if (ws_fx)
            launch_run_kernel(decode_ws_kernel<kWsQRegSteps, 1>, dim3(unsigned(a.G)),
                              kWsThreads, kWsSmem, stream, a, dev.pdl);
        else if (dev.ws_qreg)
            launch_run_kernel(decode_ws_kernel<kWsQRegSteps>, dim3(unsigned(a.G)), kWsThreads,
                              kWsSmem, stream, a, dev.pdl);
        else
            launch_run_kernel(decode_ws_kernel<0>, dim3(unsigned(a.G)), kWsThreads, kWsSmem,
                              stream, a, dev.pdl);
    } else if (use_wgmma(dev, s.M)) {
        decode_wgmma_kernel<<<a.G, kThreads, kWgSmem, stream>>>(a);
    } else switch (s.M) {
        case 16: launch_mt<1>(s.BN, a, smem, stream); break;
        case 32: launch_mt<2>(s.BN, a, smem, stream); break;
        default: launch_mt<4>(s.BN, a, smem, stream); break;
    }
    check_launch("decode attention kernel");
    // with PDL only after the warp-specialized and seesaw kernels (they release it early)
    launch_run_kernel(combine_kernel, dim3(unsigned(s.NG), unsigned(s.R * ((s.M + 7) / 8))), 256,
                      0, stream, a, dev.pdl && use_wgmma(dev, s.M) && (dev.ws || seesaw));
    check_launch("attention combine kernel");
}

}  // namespace cuda
}  // namespace mla
