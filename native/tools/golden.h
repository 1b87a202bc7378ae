// mla_golden: reads the `mla-golden/1` test vectors (safetensors files) for the C-level tests and
// mla-check. C++17, no dependencies beyond mla.h (for mla_config, header only).
//
// Every failure (unreadable file, malformed header, span out of bounds, wrong dtype, missing
// tensor or field) throws mla_golden::Error with a message naming the file and the item.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "mla.h"

namespace mla_golden {

struct Error : std::runtime_error {
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// ---- a small JSON reader (objects, arrays, strings with escapes, numbers, true/false/null) ----
namespace json {

struct Value {
    enum class Kind { Null, Bool, Number, String, Array, Object };
    Kind kind = Kind::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Value> array;
    std::vector<std::pair<std::string, Value>> object;  // in document order, keys unique

    bool is_null() const { return kind == Kind::Null; }
    // Member lookup: NULL when absent or when this is not an object.
    const Value* find(const std::string& key) const;
    // Typed accessors; throw Error naming `what` on a kind mismatch.
    double as_number(const std::string& what) const;
    int64_t as_int(const std::string& what) const;  // a number with no fractional part
    bool as_bool(const std::string& what) const;
    const std::string& as_string(const std::string& what) const;
    const std::vector<Value>& as_array(const std::string& what) const;
};

// Parses a complete document (trailing whitespace only). Throws Error with the byte offset.
Value parse(const std::string& text);

}  // namespace json

// ---- safetensors ----
enum class DType { F64, F32, F16, BF16, I64, I32, U8 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    size_t begin = 0;  // byte offsets into the data section, end - begin = numel * dtype size
    size_t end = 0;
    int64_t numel() const;
};

class SafeTensors {
public:
    // Reads and validates the whole file: header length, JSON header, dtypes, shapes, and that
    // every tensor's span is inside the data section and matches its shape.
    static SafeTensors load(const std::string& path);

    const std::string& path() const { return path_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    const TensorInfo& info(const std::string& name) const;  // throws when absent

    // Tensor values converted to f32 (from F32, BF16, F16, F64) or i64 (from I64, I32).
    std::vector<float> f32(const std::string& name) const;
    std::vector<int64_t> i64(const std::string& name) const;
    // The raw little-endian bytes of a tensor (a copy, so alignment is that of the vector).
    std::vector<uint8_t> bytes(const std::string& name) const;

private:
    std::string path_;
    std::vector<uint8_t> data_;  // data section only
    std::map<std::string, std::string> metadata_;
    std::map<std::string, TensorInfo> tensors_;
};

// ---- mla-golden/1 ----
struct Sequence {
    int32_t index = 0;
    int32_t tokens = 0;          // T
    int32_t prefill_tokens = 0;  // P: first P tokens as one prefill, the rest decoded one by one
};

// The weight names of the attention module under transformers' names (without "weights." and
// ".weight"), in mla_layer_weights order.
extern const char* const kWeightNames[8];

class Golden {
public:
    static Golden load(const std::string& path);

    const std::string& path() const { return st_.path(); }
    const SafeTensors& file() const { return st_; }
    const mla_config& config() const { return config_; }  // softmax_scale left 0 (derived)
    double softmax_scale() const { return softmax_scale_; }  // metadata value
    const std::vector<Sequence>& sequences() const { return sequences_; }

    // Sequence tensors: "hidden", "output", "latent", "k_rope", "rope_cos", "rope_sin".
    std::vector<float> seq_f32(int32_t index, const std::string& what) const;
    std::vector<int32_t> seq_positions(int32_t index) const;

    // The module's bf16 weights, e.g. weight_bf16("kv_b_proj"); empty when absent.
    const std::vector<uint16_t>& weight_bf16(const std::string& short_name) const;
    // [rows, cols] of a weight (cols = 1 for norm vectors); {0, 0} when absent.
    std::pair<int64_t, int64_t> weight_shape(const std::string& short_name) const;
    // mla_layer_weights pointing at this object's bf16 weights (valid while *this lives).
    mla_layer_weights layer_weights() const;

private:
    SafeTensors st_;
    mla_config config_{};
    double softmax_scale_ = 0.0;
    std::vector<Sequence> sequences_;
    std::map<std::string, std::vector<uint16_t>> weights_;
    std::map<std::string, std::pair<int64_t, int64_t>> shapes_;
};

// Builds an mla_config from the `config` JSON of a golden file (DeepseekV3Config fields):
// q_lora_rank null -> 0, rope_scaling null -> NONE, yarn fields with transformers' defaults.
mla_config config_from_json(const json::Value& cfg);

// Scalar conversions (round to nearest even where narrowing).
float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);

}  // namespace mla_golden
