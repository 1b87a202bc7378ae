// Absorbed MLA attention over the paged latent cache on the CPU (flash-style online softmax).
//
// Work is cut into units: a contiguous range of query rows (rows are (token, head) pairs, row =
// token * H + head) of one sequence: up to kRowsPerUnit rows, i.e. several tokens of all heads or
// one token of a group of heads. Every unit streams its sequence's cache once, chunk by chunk,
// for all its rows. When there are fewer units than twice the thread count, units over long
// sequences are split along the keys (split-KV); each split writes a partial result (o, lse) to
// the workspace and a combine step merges them. The plan (metadata) is that schedule.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core.h"
#include "cpu/cpu_backend.h"

namespace mla::cpu {
namespace {

constexpr uint32_t kMagic = 0x4d4c4143u;  // "MLAC"
constexpr int64_t kRowsPerUnit = 64;
constexpr int64_t kChunk = 64;             // keys per scoring step
constexpr int64_t kMinKeysPerSplit = 512;

struct PlanHeader {
    uint32_t magic;
    int32_t num_seqs, num_tokens, num_heads;
    int32_t n_units, n_items, n_partials, threads;
    uint64_t batch_hash;
};

struct Unit {
    int32_t seq;
    int32_t row0, rows;     // query rows [row0, row0 + rows)
    int32_t n_splits;
    int32_t partial0;       // first partial slot (n_splits > 1), else -1
    int32_t pad;
};

struct Item {
    int32_t unit;
    int32_t k0, k1;         // key range
    int32_t split;
};

int64_t head_group(int64_t H) { return std::min<int64_t>(H, kRowsPerUnit); }
int64_t tokens_per_unit(int64_t H) { return H >= kRowsPerUnit ? 1 : kRowsPerUnit / H; }

// Most rows a unit can have: one token of a head group, or several tokens of all heads.
int64_t max_rows(int64_t H) { return H >= kRowsPerUnit ? kRowsPerUnit : tokens_per_unit(H) * H; }

int64_t max_units(int64_t max_seqs, int64_t max_tokens, int64_t H) {
    const int64_t hg = head_group(H), groups = (H + hg - 1) / hg, tt = tokens_per_unit(H);
    return groups * (max_tokens / tt + max_seqs);
}

int64_t max_partials(int threads) { return 4 * int64_t(threads); }

uint64_t batch_hash(const AttentionParams& p) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(uint64_t(p.num_seqs));
    mix(uint64_t(p.num_tokens));
    mix(uint64_t(p.num_heads));
    for (int32_t b = 0; b <= p.num_seqs; ++b) mix(uint32_t(p.qo_indptr[b]));
    for (int32_t b = 0; b < p.num_seqs; ++b) mix(uint32_t(p.seq_lens[b]));
    return h;
}

size_t metadata_size(int64_t units, int64_t items) {
    return sizeof(PlanHeader) + size_t(units) * sizeof(Unit) + size_t(items) * sizeof(Item);
}

// Per-worker scratch, in floats: q [R, dc+dr], scores [R, kChunk], m [R], l [R], acc [R, dc].
int64_t scratch_floats(int64_t dc, int64_t dr) {
    return kRowsPerUnit * (dc + dr + kChunk + 2 + dc);
}

}  // namespace

size_t CpuBackend::attention_metadata_bytes(int32_t max_seqs, int32_t max_tokens, int32_t heads,
                                            int32_t) const {
    const int64_t u = max_units(max_seqs, max_tokens, heads);
    return metadata_size(u, u + max_partials(threads()));
}

size_t CpuBackend::attention_workspace_bytes(int32_t, int32_t, int32_t heads, int32_t dc,
                                             int32_t dr) const {
    const int64_t partial = max_partials(threads()) * max_rows(heads) * (dc + 1);
    const int64_t scratch = int64_t(threads()) * scratch_floats(dc, dr);
    return size_t(partial + scratch) * sizeof(float);
}

void CpuBackend::attention_plan(const AttentionParams& p, void* metadata, size_t metadata_bytes,
                                void*) {
    const int64_t H = p.num_heads, hg = head_group(H), tt = tokens_per_unit(H);
    // Units in order, generated twice (count, then write) so that planning never allocates.
    auto for_each_unit = [&](auto&& f) {
        for (int32_t b = 0; b < p.num_seqs; ++b) {
            const int64_t t0 = p.qo_indptr[b], t1 = p.qo_indptr[b + 1];
            for (int64_t t = t0; t < t1; t += tt) {
                const int64_t te = std::min(t1, t + tt);
                for (int64_t h = 0; h < H; h += hg) {
                    Unit u{};
                    u.seq = b;
                    u.row0 = int32_t(hg == H ? t * H : t * H + h);
                    u.rows = int32_t(hg == H ? (te - t) * H : std::min(hg, H - h));
                    u.n_splits = 1;
                    u.partial0 = -1;
                    f(u);
                }
            }
        }
    };
    int64_t n_units = 0;
    for_each_unit([&](const Unit&) { ++n_units; });
    // Split along the keys only when there are too few units to keep every thread busy.
    const int64_t target = 2 * int64_t(threads());
    const bool split = threads() > 1 && n_units > 0 && n_units < target;
    const int64_t want = split ? (target + n_units - 1) / n_units : 1;
    auto assign_splits = [&](Unit& u, int64_t& n_partials) {
        const int64_t s = std::min<int64_t>(want, p.seq_lens[u.seq] / kMinKeysPerSplit);
        if (s > 1 && n_partials + s <= max_partials(threads())) {
            u.n_splits = int32_t(s);
            u.partial0 = int32_t(n_partials);
            n_partials += s;
        }
    };
    int64_t n_items = 0, n_partials = 0;
    for_each_unit([&](Unit u) {
        assign_splits(u, n_partials);
        n_items += u.n_splits;
    });
    const size_t need = metadata_size(n_units, n_items);
    if (metadata_bytes < need)
        throw Error(MLA_ERROR_BUFFER_TOO_SMALL,
                    "mla_attention_plan: metadata_bytes = " + std::to_string(metadata_bytes) +
                        ", this batch needs " + std::to_string(need) +
                        " (size it with mla_attention_workspace_size)");
    PlanHeader hdr{};
    hdr.magic = kMagic;
    hdr.num_seqs = p.num_seqs;
    hdr.num_tokens = p.num_tokens;
    hdr.num_heads = p.num_heads;
    hdr.n_units = int32_t(n_units);
    hdr.n_items = int32_t(n_items);
    hdr.n_partials = int32_t(n_partials);
    hdr.threads = threads();
    hdr.batch_hash = batch_hash(p);
    char* out = static_cast<char*>(metadata);
    std::memcpy(out, &hdr, sizeof hdr);
    char* ou = out + sizeof hdr;
    char* oi = ou + size_t(n_units) * sizeof(Unit);
    int64_t ui = 0, ii = 0, np = 0;
    for_each_unit([&](Unit u) {
        assign_splits(u, np);
        std::memcpy(ou + size_t(ui) * sizeof(Unit), &u, sizeof u);
        const int64_t L = p.seq_lens[u.seq];
        for (int32_t s = 0; s < u.n_splits; ++s) {
            Item it{};
            it.unit = int32_t(ui);
            it.k0 = int32_t(L * s / u.n_splits);
            it.k1 = int32_t(L * (s + 1) / u.n_splits);
            it.split = s;
            std::memcpy(oi + size_t(ii) * sizeof(Item), &it, sizeof it);
            ++ii;
        }
        ++ui;
    });
}

void CpuBackend::attention_run(const AttentionParams& p, const void* metadata,
                               size_t metadata_bytes, void* workspace, size_t workspace_bytes,
                               void*) {
    static const char* fn = "mla_attention_run";
    PlanHeader hdr{};
    if (metadata_bytes < sizeof hdr)
        fail(MLA_ERROR_BUFFER_TOO_SMALL, fn, "metadata_bytes = ", metadata_bytes, ", below the plan's size");
    std::memcpy(&hdr, metadata, sizeof hdr);
    if (hdr.magic != kMagic || hdr.threads != threads())
        invalid(fn, "metadata was not written by mla_attention_plan on this context");
    if (hdr.num_seqs != p.num_seqs || hdr.num_tokens != p.num_tokens ||
        hdr.num_heads != p.num_heads || hdr.batch_hash != batch_hash(p))
        invalid(fn, "metadata was planned for a different batch (num_seqs, num_tokens, num_heads, "
                    "qo_indptr or seq_lens differ); call mla_attention_plan for this batch");
    if (metadata_bytes < metadata_size(hdr.n_units, hdr.n_items))
        fail(MLA_ERROR_BUFFER_TOO_SMALL, fn, "metadata_bytes = ", metadata_bytes, ", below the plan's size ",
             metadata_size(hdr.n_units, hdr.n_items));
    const int64_t dc = p.cache.dc, dr = p.cache.dr, E = dc + dr, H = p.num_heads;
    const int64_t R = kRowsPerUnit;
    const int64_t pstride = max_rows(H) * (dc + 1);  // one partial slot: o [rows, dc], lse [rows]
    const int64_t partial_floats = int64_t(hdr.n_partials) * pstride;
    const int64_t per_worker = scratch_floats(dc, dr);
    const size_t need = size_t(partial_floats + per_worker * threads()) * sizeof(float);
    if (!workspace && need > 0) invalid(fn, "workspace is NULL");
    if (workspace_bytes < need)
        fail(MLA_ERROR_BUFFER_TOO_SMALL, fn, "workspace_bytes = ", workspace_bytes, ", this batch needs ",
             need, " (size it with mla_attention_workspace_size)");

    const char* md = static_cast<const char*>(metadata);
    const Unit* units = reinterpret_cast<const Unit*>(md + sizeof hdr);
    const Item* items = reinterpret_cast<const Item*>(md + sizeof hdr + size_t(hdr.n_units) * sizeof(Unit));
    float* partial = static_cast<float*>(workspace);
    float* scratch_base = partial + partial_floats;

    const bool cache_bf16 = p.cache.dtype == DType::BF16;
    const float scale = p.scale;
    const float inf = std::numeric_limits<float>::infinity();
    const Kernels& K = k_;

    auto write_final = [&](int64_t row, const float* o, float lse) {
        if (p.out_dtype == DType::BF16)
            K.f32_to_bf16(o, static_cast<uint16_t*>(p.out) + row * dc, dc);
        else
            std::memcpy(static_cast<float*>(p.out) + row * dc, o, size_t(dc) * sizeof(float));
        if (p.lse) p.lse[row] = lse;
    };

    pool_.run(hdr.n_items, [&](int64_t ii, int worker) {
        Item it;
        std::memcpy(&it, items + ii, sizeof it);
        Unit u;
        std::memcpy(&u, units + it.unit, sizeof u);
        float* qs = scratch_base + worker * per_worker;     // [rows, E]
        float* S = qs + R * E;                              // [rows, kChunk]
        float* mrow = S + R * kChunk;                       // [rows]
        float* lrow = mrow + R;                             // [rows]
        float* acc = lrow + R;                              // [rows, dc]
        const int64_t rows = u.rows;
        const int64_t b = u.seq;
        const int64_t L = p.seq_lens[b];
        const int64_t tq0 = p.qo_indptr[b], nq = p.qo_indptr[b + 1] - tq0;
        // Queries, pre-scaled so that scores come out scaled.
        if (p.q_dtype == DType::BF16)
            K.bf16_to_f32(static_cast<const uint16_t*>(p.q) + u.row0 * E, qs, rows * E);
        else
            std::memcpy(qs, static_cast<const float*>(p.q) + u.row0 * E, size_t(rows * E) * sizeof(float));
        K.scale(qs, rows * E, scale);
        std::memset(acc, 0, size_t(rows * dc) * sizeof(float));
        int64_t k_end = it.k0;  // last key any row can see, exclusive
        for (int64_t r = 0; r < rows; ++r) {
            mrow[r] = -inf;
            lrow[r] = 0.0f;
            const int64_t j = (u.row0 + r) / H - tq0;
            const int64_t lim = p.causal ? std::min<int64_t>(L, L - nq + j + 1) : L;
            k_end = std::max(k_end, std::min<int64_t>(lim, it.k1));
        }
        const int64_t bs = p.cache.block_size;
        const int32_t* bt = p.block_table + b * int64_t(p.block_table_stride);
        for (int64_t c0 = it.k0; c0 < k_end;) {
            const int64_t blk = c0 / bs, off = c0 % bs;
            const int64_t c1 = std::min({k_end, c0 + kChunk, (blk + 1) * bs});
            const int64_t n = c1 - c0;
            const int64_t entry0 = (int64_t(bt[blk]) * bs + off) * E;
            if (cache_bf16)
                K.gemm_nt_bf16(qs, E, rows, static_cast<const uint16_t*>(p.cache.data) + entry0, E, n, E,
                               S, kChunk);
            else
                K.gemm_nt_f32(qs, E, rows, static_cast<const float*>(p.cache.data) + entry0, E, n, E, S,
                              kChunk);
            for (int64_t r = 0; r < rows; ++r) {
                float* s = S + r * kChunk;
                const int64_t j = (u.row0 + r) / H - tq0;
                const int64_t lim = p.causal ? std::min<int64_t>(L, L - nq + j + 1) : L;
                const int64_t v = std::max<int64_t>(0, std::min<int64_t>(lim, c1) - c0);
                if (v == 0) {
                    std::memset(s, 0, size_t(n) * sizeof(float));
                    continue;
                }
                float mx = s[0];
                for (int64_t i = 1; i < v; ++i) mx = std::max(mx, s[i]);
                const float m_new = std::max(mrow[r], mx);
                if (m_new > mrow[r] && lrow[r] > 0.0f) {
                    const float f = std::exp(mrow[r] - m_new);
                    lrow[r] *= f;
                    K.scale(acc + r * dc, dc, f);
                }
                mrow[r] = m_new;
                lrow[r] += K.exp_sub_sum(s, v, m_new);
                if (v < n) std::memset(s + v, 0, size_t(n - v) * sizeof(float));
            }
            const int64_t lat0 = entry0;
            if (cache_bf16)
                K.gemm_nn_acc_bf16(S, kChunk, rows, static_cast<const uint16_t*>(p.cache.data) + lat0, E, dc,
                                   n, acc, dc);
            else
                K.gemm_nn_acc_f32(S, kChunk, rows, static_cast<const float*>(p.cache.data) + lat0, E, dc, n,
                                  acc, dc);
            c0 = c1;
        }
        // Normalize; write the final row or this split's partial.
        for (int64_t r = 0; r < rows; ++r) {
            float* o = acc + r * dc;
            float lse;
            if (lrow[r] > 0.0f) {
                K.scale(o, dc, 1.0f / lrow[r]);
                lse = mrow[r] + std::log(lrow[r]);
            } else {
                std::memset(o, 0, size_t(dc) * sizeof(float));
                lse = u.n_splits > 1 ? -inf : inf;
            }
            if (u.n_splits > 1) {
                float* slot = partial + (u.partial0 + it.split) * pstride;
                std::memcpy(slot + r * dc, o, size_t(dc) * sizeof(float));
                slot[rows * dc + r] = lse;
            } else {
                write_final(u.row0 + r, o, lse);
            }
        }
    });

    if (hdr.n_partials == 0) return;
    // Combine the splits of every split unit, one unit per task.
    pool_.run(hdr.n_units, [&](int64_t ui, int worker) {
        Unit u;
        std::memcpy(&u, units + ui, sizeof u);
        if (u.n_splits <= 1) return;
        float* o = scratch_base + worker * per_worker;
        for (int64_t r = 0; r < u.rows; ++r) {
            float mx = -inf;
            for (int32_t s = 0; s < u.n_splits; ++s)
                mx = std::max(mx, partial[(u.partial0 + s) * pstride + u.rows * dc + r]);
            std::memset(o, 0, size_t(dc) * sizeof(float));
            if (mx == -inf) {
                write_final(u.row0 + r, o, inf);
                continue;
            }
            float total = 0.0f;
            for (int32_t s = 0; s < u.n_splits; ++s) {
                const float* slot = partial + (u.partial0 + s) * pstride;
                const float w = std::exp(slot[u.rows * dc + r] - mx);
                if (w == 0.0f) continue;
                total += w;
                const float* os = slot + r * dc;
                for (int64_t i = 0; i < dc; ++i) o[i] += w * os[i];
            }
            K.scale(o, dc, 1.0f / total);
            write_final(u.row0 + r, o, mx + std::log(total));
        }
    });
}

}  // namespace mla::cpu
