// Config validation, softmax scale and RoPE/YaRN as transformers' DeepseekV3 computes them
// (modeling_rope_utils._compute_yarn_parameters, DeepseekV3RotaryEmbedding, DeepseekV3Attention).
#include <cmath>
#include <limits>

#include "core.h"

namespace mla {
namespace {

constexpr double kPi = 3.141592653589793;
constexpr int64_t kMaxDim = 1 << 20;

void check_dim(const char* fn, const char* field, int64_t v, int64_t min) {
    if (v < min || v > kMaxDim)
        invalid(fn, "config.", field, " = ", v, ", must be in [", min, ", ", kMaxDim, "]");
}

void check_finite(const char* fn, const char* field, double v) {
    if (!std::isfinite(v)) invalid(fn, "config.", field, " = ", v, ", must be finite");
}

// transformers: get_mscale / yarn_get_mscale
double yarn_mscale(double scale, double mscale) {
    if (scale <= 1.0) return 1.0;
    return 0.1 * mscale * std::log(scale) + 1.0;
}

// transformers reads beta_fast/beta_slow as `get(...) or default`: 0 means the default.
double beta_fast_of(const mla_config& c) { return c.rope_beta_fast != 0.0 ? c.rope_beta_fast : 32.0; }
double beta_slow_of(const mla_config& c) { return c.rope_beta_slow != 0.0 ? c.rope_beta_slow : 1.0; }

int64_t original_max_of(const mla_config& c) {
    return c.original_max_position_embeddings > 0 ? c.original_max_position_embeddings
                                                  : c.max_position_embeddings;
}

}  // namespace

void validate_config(const char* fn, const mla_config* c) {
    if (!c) invalid(fn, "config is NULL");
    if (c->struct_size != sizeof(mla_config))
        invalid(fn, "config->struct_size = ", c->struct_size, ", expected ", sizeof(mla_config),
                " (a struct_size this library does not know: header and library versions differ; "
                "fill the struct with mla_config_init)");
    check_dim(fn, "hidden_size", c->hidden_size, 1);
    check_dim(fn, "num_heads", c->num_heads, 1);
    check_dim(fn, "q_lora_rank", c->q_lora_rank, 0);
    check_dim(fn, "kv_lora_rank", c->kv_lora_rank, 1);
    check_dim(fn, "qk_nope_head_dim", c->qk_nope_head_dim, 1);
    check_dim(fn, "qk_rope_head_dim", c->qk_rope_head_dim, 2);
    if (c->qk_rope_head_dim % 2 != 0)
        invalid(fn, "config.qk_rope_head_dim = ", c->qk_rope_head_dim, ", must be even");
    check_dim(fn, "v_head_dim", c->v_head_dim, 1);
    const int64_t heads = c->num_heads;
    if (heads * (int64_t(c->qk_nope_head_dim) + c->qk_rope_head_dim) > INT32_MAX ||
        heads * (int64_t(c->qk_nope_head_dim) + c->v_head_dim) > INT32_MAX ||
        heads * int64_t(c->kv_lora_rank + c->qk_rope_head_dim) > INT32_MAX)
        invalid(fn, "config.num_heads = ", c->num_heads, " makes a projection wider than 2^31 - 1");
    if (c->rope_interleave != 0 && c->rope_interleave != 1)
        invalid(fn, "config.rope_interleave = ", c->rope_interleave, ", must be 0 or 1");
    if (c->rope_scaling != MLA_ROPE_SCALING_NONE && c->rope_scaling != MLA_ROPE_SCALING_YARN)
        invalid(fn, "config.rope_scaling = ", c->rope_scaling,
                ", must be MLA_ROPE_SCALING_NONE (0) or MLA_ROPE_SCALING_YARN (1)");
    if (c->max_position_embeddings < 1)
        invalid(fn, "config.max_position_embeddings = ", c->max_position_embeddings, ", must be >= 1");
    if (c->original_max_position_embeddings < 0)
        invalid(fn, "config.original_max_position_embeddings = ",
                c->original_max_position_embeddings, ", must be >= 0 (0 = absent)");
    check_finite(fn, "rope_theta", c->rope_theta);
    if (!(c->rope_theta > 0.0))
        invalid(fn, "config.rope_theta = ", c->rope_theta, ", must be > 0");
    if (c->rope_scaling == MLA_ROPE_SCALING_YARN) {
        if (!(c->rope_theta > 1.0))
            invalid(fn, "config.rope_theta = ", c->rope_theta, ", must be > 1 with YaRN");
        check_finite(fn, "rope_factor", c->rope_factor);
        if (!(c->rope_factor >= 1.0))
            invalid(fn, "config.rope_factor = ", c->rope_factor, ", must be >= 1 with YaRN");
        check_finite(fn, "rope_beta_fast", c->rope_beta_fast);
        check_finite(fn, "rope_beta_slow", c->rope_beta_slow);
        if (c->rope_beta_fast < 0.0)
            invalid(fn, "config.rope_beta_fast = ", c->rope_beta_fast, ", must be > 0 (0 = default 32)");
        if (c->rope_beta_slow < 0.0)
            invalid(fn, "config.rope_beta_slow = ", c->rope_beta_slow, ", must be > 0 (0 = default 1)");
        check_finite(fn, "rope_mscale", c->rope_mscale);
        check_finite(fn, "rope_mscale_all_dim", c->rope_mscale_all_dim);
        check_finite(fn, "rope_attention_factor", c->rope_attention_factor);
        if (c->rope_mscale < 0.0)
            invalid(fn, "config.rope_mscale = ", c->rope_mscale, ", must be >= 0 (0 = absent)");
        if (c->rope_mscale_all_dim < 0.0)
            invalid(fn, "config.rope_mscale_all_dim = ", c->rope_mscale_all_dim,
                    ", must be >= 0 (0 = absent)");
        if (c->rope_attention_factor < 0.0)
            invalid(fn, "config.rope_attention_factor = ", c->rope_attention_factor,
                    ", must be >= 0 (0 = absent)");
        if (c->rope_truncate != 0 && c->rope_truncate != 1)
            invalid(fn, "config.rope_truncate = ", c->rope_truncate, ", must be 0 or 1");
    }
    if (c->reserved0 != 0) invalid(fn, "config.reserved0 = ", c->reserved0, ", must be 0");
    check_finite(fn, "rms_norm_eps", c->rms_norm_eps);
    if (!(c->rms_norm_eps > 0.0))
        invalid(fn, "config.rms_norm_eps = ", c->rms_norm_eps, ", must be > 0");
    check_finite(fn, "softmax_scale", c->softmax_scale);
    if (c->softmax_scale < 0.0)
        invalid(fn, "config.softmax_scale = ", c->softmax_scale, ", must be > 0 (0 = derive)");
    if (config_softmax_scale(*c) > double(std::numeric_limits<float>::max()))
        invalid(fn, "config.softmax_scale = ", config_softmax_scale(*c), ", too large for f32");
}

// DeepseekV3Attention.__init__: scaling = qk_head_dim ** -0.5, times yarn_get_mscale(factor,
// mscale_all_dim) ** 2 when the RoPE type is not "default" and mscale_all_dim is set.
double config_softmax_scale(const mla_config& c) {
    if (c.softmax_scale != 0.0) return c.softmax_scale;
    double s = std::pow(double(c.qk_nope_head_dim + c.qk_rope_head_dim), -0.5);
    if (c.rope_scaling == MLA_ROPE_SCALING_YARN && c.rope_mscale_all_dim != 0.0) {
        double m = yarn_mscale(c.rope_factor, c.rope_mscale_all_dim);
        s = s * m * m;
    }
    return s;
}

// Mirrors torch's float32 arithmetic step by step (each tensor op rounds to f32):
//   pos_freqs = base ** (arange(0, dim, 2).float() / dim)
//   default:  inv_freq = 1.0 / pos_freqs
//   YaRN:     inv_freq = (1/(factor*pos_freqs)) * (1 - ef) + (1/pos_freqs) * ef,
//             ef = 1 - clamp((arange(dim/2) - low) / (high - low), 0, 1)
// transformers 5 takes `factor` as given (it derives it from max_position_embeddings /
// original_max_position_embeddings only when factor is absent; transformers 4.5x overrode it with
// that ratio whenever original_max_position_embeddings was set). For DeepSeek's published configs
// (40 = 163840 / 4096) both agree. The correction range uses original_max_position_embeddings
// (max_position_embeddings when absent), the attention factor comes from the mscales, and
// truncate=1 floors/ceils the range, as transformers 5 does.
RopeParams make_rope_params(const mla_config& c) {
    RopeParams r;
    r.dim = c.qk_rope_head_dim;
    r.interleave = c.rope_interleave;
    const int half = r.dim / 2;
    const float base = float(c.rope_theta);
    std::vector<float> pos_freqs(half);
    for (int i = 0; i < half; ++i) {
        float e = float(2 * i) / float(r.dim);
        pos_freqs[i] = float(std::pow(double(base), double(e)));
    }
    r.inv_freq.resize(half);
    if (c.rope_scaling != MLA_ROPE_SCALING_YARN) {
        for (int i = 0; i < half; ++i) r.inv_freq[i] = 1.0f / pos_freqs[i];
        r.attention_factor = 1.0f;
        return r;
    }
    const double factor = c.rope_factor;
    const double dim = r.dim;
    const double orig = double(original_max_of(c));
    auto correction_dim = [&](double rot) {
        return (dim * std::log(orig / (rot * 2.0 * kPi))) / (2.0 * std::log(c.rope_theta));
    };
    double low = correction_dim(beta_fast_of(c));
    double high = correction_dim(beta_slow_of(c));
    if (c.rope_truncate) {
        low = std::floor(low);
        high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1.0);
    if (low == high) high += 0.001;
    const float flow = float(low), fspan = float(high - low);
    const float ffactor = float(factor);
    for (int i = 0; i < half; ++i) {
        float extra = 1.0f / pos_freqs[i];
        float inter = 1.0f / (ffactor * pos_freqs[i]);
        float ramp = (float(i) - flow) / fspan;
        ramp = std::min(std::max(ramp, 0.0f), 1.0f);
        float ef = 1.0f - ramp;
        float a = inter * (1.0f - ef);
        float b = extra * ef;
        r.inv_freq[i] = a + b;
    }
    double af = c.rope_attention_factor;
    if (af == 0.0) {
        if (c.rope_mscale != 0.0 && c.rope_mscale_all_dim != 0.0)
            af = yarn_mscale(factor, c.rope_mscale) / yarn_mscale(factor, c.rope_mscale_all_dim);
        else
            af = yarn_mscale(factor, 1.0);
    }
    r.attention_factor = float(af);
    return r;
}

// DeepseekV3RotaryEmbedding.forward: freqs = inv_freq (f32) * position (f32),
// emb = cat(freqs, freqs), cos = emb.cos() * attention_scaling (f32).
void rope_cos_sin(const RopeParams& rope, int32_t position, float* cos_out, float* sin_out) {
    const int half = rope.dim / 2;
    const float p = float(position);
    for (int i = 0; i < half; ++i) {
        float f = rope.inv_freq[i] * p;
        float cv = float(std::cos(double(f))) * rope.attention_factor;
        float sv = float(std::sin(double(f))) * rope.attention_factor;
        cos_out[i] = cos_out[i + half] = cv;
        sin_out[i] = sin_out[i + half] = sv;
    }
}

LayerSpec make_layer_spec(const mla_config& c, int32_t h0, int32_t h1) {
    LayerSpec s;
    s.hidden = c.hidden_size;
    s.heads = h1 - h0;
    s.q_lora = c.q_lora_rank;
    s.dc = c.kv_lora_rank;
    s.dn = c.qk_nope_head_dim;
    s.dr = c.qk_rope_head_dim;
    s.dv = c.v_head_dim;
    s.eps = float(c.rms_norm_eps);
    s.scale = float(config_softmax_scale(c));
    s.rope = make_rope_params(c);
    return s;
}

}  // namespace mla
