// Weight validation and preparation: any supported dtype -> f32 (or bf16), sliced to a head range,
// kv_b_proj split into W_UK (transposed per head) and W_UV, produced in row ranges on demand.
#include <algorithm>
#include <array>

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

// fp8_e4m3_to_f32 of every code (the same values, without ldexp per element).
const std::array<float, 256>& fp8_table() {
    static const std::array<float, 256> t = [] {
        std::array<float, 256> v{};
        for (int i = 0; i < 256; ++i) v[size_t(i)] = fp8_e4m3_to_f32(uint8_t(i));
        return v;
    }();
    return t;
}

// Output of a conversion: element i of the destination as f32 or as bf16.
struct F32Out {
    float* p;
    void put(int64_t i, float v) const { p[i] = v; }
};
struct Bf16Out {
    uint16_t* p;
    void put(int64_t i, float v) const { p[i] = f32_to_bf16(v); }
};

// Converts elements [c0, c0 + n) of row r of a validated weight to f32 and writes element k to
// out at index o0 + k * step. FP8 values are multiplied by their 128 x 128 block's scale_inv.
template <class Out>
void convert_span(const mla_weight& w, int64_t r, int64_t c0, int64_t n, Out out, int64_t o0,
                  int64_t step) {
    const int64_t base = r * w.cols + c0;
    switch (w.dtype) {
        case MLA_DTYPE_F32: {
            const float* s = static_cast<const float*>(w.data) + base;
            for (int64_t k = 0; k < n; ++k) out.put(o0 + k * step, s[k]);
            break;
        }
        case MLA_DTYPE_BF16: {
            const uint16_t* s = static_cast<const uint16_t*>(w.data) + base;
            for (int64_t k = 0; k < n; ++k) out.put(o0 + k * step, bf16_to_f32(s[k]));
            break;
        }
        case MLA_DTYPE_F16: {
            const uint16_t* s = static_cast<const uint16_t*>(w.data) + base;
            for (int64_t k = 0; k < n; ++k) out.put(o0 + k * step, f16_to_f32(s[k]));
            break;
        }
        default: {  // MLA_DTYPE_FP8_E4M3 (validated)
            const uint8_t* s = static_cast<const uint8_t*>(w.data) + base;
            const float* scale = w.scale_inv + (r / 128) * ((w.cols + 127) / 128);
            const std::array<float, 256>& lut = fp8_table();
            for (int64_t k = 0; k < n; ++k)
                out.put(o0 + k * step, lut[s[k]] * scale[(c0 + k) / 128]);
            break;
        }
    }
}

// Rows [r0, r1) of prepared tensor t of p (whose sources are w, heads from h0) into out.
template <class Out>
void read_rows(const PreparedWeights& p, const mla_layer_weights& w, int64_t h0,
               PreparedWeights::Tensor t, int64_t r0, int64_t r1, Out out) {
    const int64_t D = p.hidden, dc = p.dc, dn = p.dn, dr = p.dr, dv = p.dv, qk = dn + dr;
    // Rows of one source tensor, each `cols` wide from column c0, source row = row0 + r.
    auto rows_of = [&](const mla_weight& src, int64_t row0, int64_t c0, int64_t cols) {
        for (int64_t r = r0; r < r1; ++r) convert_span(src, row0 + r, c0, cols, out, (r - r0) * cols, 1);
    };
    switch (t) {
        case PreparedWeights::kQA: rows_of(w.q_a_proj, 0, 0, D); break;
        case PreparedWeights::kQANorm: rows_of(w.q_a_layernorm, 0, 0, 1); break;
        case PreparedWeights::kQB: rows_of(w.q_b_proj, h0 * qk, 0, p.q_lora); break;
        case PreparedWeights::kQ: rows_of(w.q_proj, h0 * qk, 0, D); break;
        case PreparedWeights::kKvA: rows_of(w.kv_a_proj_with_mqa, 0, 0, D); break;
        case PreparedWeights::kKvANorm: rows_of(w.kv_a_layernorm, 0, 0, 1); break;
        case PreparedWeights::kWUkT:
            // Row h * dc + j, column i = kv_b_proj[(h0 + h) * (dn + dv) + i, j]: for each head in
            // range, read source rows i over the range's columns j and scatter them transposed.
            for (int64_t h = r0 / dc; h * dc < r1; ++h) {
                const int64_t j0 = std::max(r0, h * dc) - h * dc;
                const int64_t j1 = std::min(r1, (h + 1) * dc) - h * dc;
                const int64_t base = (h0 + h) * (dn + dv);
                for (int64_t i = 0; i < dn; ++i)
                    convert_span(w.kv_b_proj, base + i, j0, j1 - j0, out, (h * dc + j0 - r0) * dn + i, dn);
            }
            break;
        case PreparedWeights::kWUv:
            // Row h * dv + i = kv_b_proj row (h0 + h) * (dn + dv) + dn + i.
            for (int64_t r = r0; r < r1; ++r) {
                const int64_t h = r / dv, i = r % dv;
                convert_span(w.kv_b_proj, (h0 + h) * (dn + dv) + dn + i, 0, dc, out, (r - r0) * dc, 1);
            }
            break;
        case PreparedWeights::kO: rows_of(w.o_proj, 0, h0 * dv, int64_t(p.heads) * dv); break;
        default: break;
    }
}

}  // namespace

StreamedWeights::StreamedWeights(const char* fn, const mla_config& c, const mla_layer_weights& w,
                                 int32_t h0, int32_t h1)
    : w_(w), h0_(h0) {
    const int64_t H = c.num_heads, D = c.hidden_size, ql = c.q_lora_rank, dc = c.kv_lora_rank;
    const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;

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
        Src qp{"q_proj", &w.q_proj, H * (dn + dr), D, false};
        check_weight(fn, qp, "num_heads * (qk_nope_head_dim + qk_rope_head_dim)", "hidden_size");
        srcs.push_back(qp);
    }
    Src kva{"kv_a_proj_with_mqa", &w.kv_a_proj_with_mqa, dc + dr, D, false};
    check_weight(fn, kva, "kv_lora_rank + qk_rope_head_dim", "hidden_size");
    Src kvn{"kv_a_layernorm", &w.kv_a_layernorm, dc, 1, true};
    check_weight(fn, kvn, "kv_lora_rank", "1");
    Src kvb{"kv_b_proj", &w.kv_b_proj, H * (dn + dv), dc, false};
    check_weight(fn, kvb, "num_heads * (qk_nope_head_dim + v_head_dim)", "kv_lora_rank");
    Src op{"o_proj", &w.o_proj, D, H * dv, false};
    check_weight(fn, op, "hidden_size", "num_heads * v_head_dim");
    srcs.push_back(kva);
    srcs.push_back(kvn);
    srcs.push_back(kvb);
    srcs.push_back(op);

    hidden = int32_t(D);
    heads = h1 - h0;
    q_lora = int32_t(ql);
    this->dc = int32_t(dc);
    this->dn = int32_t(dn);
    this->dr = int32_t(dr);
    this->dv = int32_t(dv);
    exactly_bf16 = std::all_of(srcs.begin(), srcs.end(),
                               [](const Src& s) { return s.w->dtype == MLA_DTYPE_BF16; });
}

void StreamedWeights::read(Tensor t, int64_t r0, int64_t r1, DType as, void* dst) const {
    if (as == DType::F32)
        read_rows(*this, w_, h0_, t, r0, r1, F32Out{static_cast<float*>(dst)});
    else
        read_rows(*this, w_, h0_, t, r0, r1, Bf16Out{static_cast<uint16_t*>(dst)});
}

}  // namespace mla
