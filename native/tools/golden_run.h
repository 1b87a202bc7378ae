// Helpers shared by mla-check and the golden tests: run a token sequence through an mla_layer in
// a chunk schedule, and compare outputs. Header only; the user links libmla.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mla.h"

namespace mla_golden {

// Chunk schedules for a sequence of T tokens.
inline std::vector<int32_t> schedule_prefill_decode(int32_t T, int32_t P) {
    std::vector<int32_t> c;
    if (P > 0) c.push_back(P);
    for (int32_t i = P; i < T; ++i) c.push_back(1);
    return c;
}
inline std::vector<int32_t> schedule_full(int32_t T) { return {T}; }
inline std::vector<int32_t> schedule_tokenwise(int32_t T) { return std::vector<int32_t>(size_t(T), 1); }

// Feeds rows of hidden [T, hidden_size] (f32) through `layer` as consecutive batches of one
// sequence whose sizes are `chunks`, writing out [T, hidden_size] (f32). The sequence's blocks are
// block_table[0 .. block_table_len). Returns the first failing status (out rows of later chunks
// are then left as they were).
inline mla_status run_sequence(mla_layer* layer, mla_cache* cache, const int32_t* block_table,
                               int32_t block_table_len, const float* hidden, int32_t hidden_size,
                               const std::vector<int32_t>& chunks, float* out) {
    int32_t done = 0;
    for (int32_t n : chunks) {
        int32_t qo[2] = {0, n};
        int32_t lens[1] = {done};
        mla_batch b;
        mla_status st = mla_batch_init(&b);
        if (st != MLA_OK) return st;
        b.num_seqs = 1;
        b.num_tokens = n;
        b.block_table_stride = block_table_len;
        b.qo_indptr = qo;
        b.cache_lens = lens;
        b.positions = nullptr;
        b.block_table = block_table;
        st = mla_layer_forward(layer, cache, &b, hidden + size_t(done) * size_t(hidden_size), MLA_DTYPE_F32,
                               out + size_t(done) * size_t(hidden_size), MLA_DTYPE_F32, nullptr);
        if (st != MLA_OK) return st;
        done += n;
    }
    return MLA_OK;
}

// max |a - b| / max |b| over n values (b is the reference); 0 when both are all zeros, +inf when
// a NaN appears or the reference is all zeros but a is not.
inline double max_rel_err(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        double d = std::fabs(double(a[i]) - double(b[i]));
        if (std::isnan(d)) return INFINITY;
        num = std::max(num, d);
        den = std::max(den, std::fabs(double(b[i])));
    }
    if (den == 0) return num == 0 ? 0.0 : INFINITY;
    return num / den;
}

}  // namespace mla_golden
