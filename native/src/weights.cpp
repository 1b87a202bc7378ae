// Weight validation and preparation: any supported dtype -> f32, sliced to a head range, kv_b_proj
// split into W_UK (transposed per head) and W_UV.
#include <algorithm>

#include "core.h"

namespace mla {
namespace {

struct Src {
    const char* name;
    const mla_weight* w;
    int64_t rows, cols;
    bool is_norm;
};

void check_weight(const char* fn, const Src& s, const char* rows_expr, const char* cols_expr) {
    const mla_weight& w = *s.w;
    if (!w.data) invalid(fn, "weights.", s.name, ".data is NULL (the weight is required by this config)");
    if (w.reserved0 != 0) invalid(fn, "weights.", s.name, ".reserved0 = ", w.reserved0, ", must be 0");
    if (w.dtype != MLA_DTYPE_F32 && w.dtype != MLA_DTYPE_BF16 && w.dtype != MLA_DTYPE_F16 &&
        w.dtype != MLA_DTYPE_FP8_E4M3)
        invalid(fn, "weights.", s.name, ".dtype = ", w.dtype, ", not a mla_dtype");
    if (s.is_norm && w.dtype == MLA_DTYPE_FP8_E4M3)
        invalid(fn, "weights.", s.name, ".dtype = MLA_DTYPE_FP8_E4M3 (3), norm weights must be F32, BF16 or F16");
    if (w.rows != s.rows)
        invalid(fn, "weights.", s.name, ".rows = ", w.rows, ", expected ", rows_expr, " = ", s.rows);
    if (w.cols != s.cols)
        invalid(fn, "weights.", s.name, ".cols = ", w.cols, ", expected ", cols_expr, " = ", s.cols);
    if (w.dtype == MLA_DTYPE_FP8_E4M3 && !w.scale_inv)
        invalid(fn, "weights.", s.name, ".scale_inv is NULL, required for MLA_DTYPE_FP8_E4M3 weights");
}

// Element (r, c) of a validated weight as f32.
struct Reader {
    const mla_weight& w;
    int64_t scale_cols;
    float at(int64_t r, int64_t c) const {
        const int64_t i = r * w.cols + c;
        switch (w.dtype) {
            case MLA_DTYPE_F32: return static_cast<const float*>(w.data)[i];
            case MLA_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
            case MLA_DTYPE_F16: return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
            default:
                return fp8_e4m3_to_f32(static_cast<const uint8_t*>(w.data)[i]) *
                       w.scale_inv[(r / 128) * scale_cols + c / 128];
        }
    }
};

Reader reader(const mla_weight& w) { return Reader{w, (w.cols + 127) / 128}; }

// Copies rows [r0, r0 + n) (all columns) into dst.
void copy_rows(const mla_weight& w, int64_t r0, int64_t n, float* dst) {
    Reader rd = reader(w);
    for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < w.cols; ++c) dst[r * w.cols + c] = rd.at(r0 + r, c);
}

}  // namespace

PreparedWeights prepare_weights(const char* fn, const mla_config& c, const mla_layer_weights& w,
                                int32_t h0, int32_t h1) {
    const int64_t H = c.num_heads, D = c.hidden_size, ql = c.q_lora_rank, dc = c.kv_lora_rank;
    const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
    const int64_t Hs = h1 - h0;

    std::vector<Src> srcs;
    if (ql > 0) {
        Src a{"q_a_proj", &w.q_a_proj, ql, D, false};
        check_weight(fn, a, "q_lora_rank", "hidden_size");
        Src n{"q_a_layernorm", &w.q_a_layernorm, ql, 1, true};
        check_weight(fn, n, "q_lora_rank", "1");
        Src b{"q_b_proj", &w.q_b_proj, H * (dn + dr), ql, false};
        check_weight(fn, b, "num_heads * (qk_nope_head_dim + qk_rope_head_dim)", "q_lora_rank");
        srcs.push_back(a);
        srcs.push_back(n);
        srcs.push_back(b);
    } else {
        Src q{"q_proj", &w.q_proj, H * (dn + dr), D, false};
        check_weight(fn, q, "num_heads * (qk_nope_head_dim + qk_rope_head_dim)", "hidden_size");
        srcs.push_back(q);
    }
    Src kva{"kv_a_proj_with_mqa", &w.kv_a_proj_with_mqa, dc + dr, D, false};
    check_weight(fn, kva, "kv_lora_rank + qk_rope_head_dim", "hidden_size");
    Src kvn{"kv_a_layernorm", &w.kv_a_layernorm, dc, 1, true};
    check_weight(fn, kvn, "kv_lora_rank", "1");
    Src kvb{"kv_b_proj", &w.kv_b_proj, H * (dn + dv), dc, false};
    check_weight(fn, kvb, "num_heads * (qk_nope_head_dim + v_head_dim)", "kv_lora_rank");
    Src o{"o_proj", &w.o_proj, D, H * dv, false};
    check_weight(fn, o, "hidden_size", "num_heads * v_head_dim");
    srcs.push_back(kva);
    srcs.push_back(kvn);
    srcs.push_back(kvb);
    srcs.push_back(o);

    PreparedWeights p;
    p.hidden = int32_t(D);
    p.heads = int32_t(Hs);
    p.q_lora = int32_t(ql);
    p.dc = int32_t(dc);
    p.dn = int32_t(dn);
    p.dr = int32_t(dr);
    p.dv = int32_t(dv);
    p.exactly_bf16 = std::all_of(srcs.begin(), srcs.end(),
                                 [](const Src& s) { return s.w->dtype == MLA_DTYPE_BF16; });

    const int64_t qk = dn + dr;
    if (ql > 0) {
        p.q_a.resize(size_t(ql * D));
        copy_rows(w.q_a_proj, 0, ql, p.q_a.data());
        p.q_a_norm.resize(size_t(ql));
        copy_rows(w.q_a_layernorm, 0, ql, p.q_a_norm.data());
        p.q_b.resize(size_t(Hs * qk * ql));
        copy_rows(w.q_b_proj, h0 * qk, Hs * qk, p.q_b.data());
    } else {
        p.q.resize(size_t(Hs * qk * D));
        copy_rows(w.q_proj, h0 * qk, Hs * qk, p.q.data());
    }
    p.kv_a.resize(size_t((dc + dr) * D));
    copy_rows(w.kv_a_proj_with_mqa, 0, dc + dr, p.kv_a.data());
    p.kv_a_norm.resize(size_t(dc));
    copy_rows(w.kv_a_layernorm, 0, dc, p.kv_a_norm.data());

    p.w_uk_t.resize(size_t(Hs * dc * dn));
    p.w_uv.resize(size_t(Hs * dv * dc));
    Reader kb = reader(w.kv_b_proj);
    for (int64_t h = 0; h < Hs; ++h) {
        const int64_t base = (h0 + h) * (dn + dv);
        for (int64_t i = 0; i < dn; ++i)  // W_UK[h] is [dn, dc]; store [dc, dn]
            for (int64_t j = 0; j < dc; ++j)
                p.w_uk_t[size_t((h * dc + j) * dn + i)] = kb.at(base + i, j);
        for (int64_t i = 0; i < dv; ++i)
            for (int64_t j = 0; j < dc; ++j)
                p.w_uv[size_t((h * dv + i) * dc + j)] = kb.at(base + dn + i, j);
    }
    p.o.resize(size_t(D * Hs * dv));
    Reader ro = reader(w.o_proj);
    for (int64_t r = 0; r < D; ++r)
        for (int64_t j = 0; j < Hs * dv; ++j)
            p.o[size_t(r * Hs * dv + j)] = ro.at(r, h0 * dv + j);
    return p;
}

}  // namespace mla
