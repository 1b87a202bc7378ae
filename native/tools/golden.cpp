#include "golden.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

namespace mla_golden {

// ------------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------------
namespace json {
namespace {

class Parser {
public:
    explicit Parser(const std::string& s) : s_(s) {}

    Value document() {
        Value v = value(0);
        ws();
        if (i_ != s_.size()) fail("trailing characters");
        return v;
    }

private:
    const std::string& s_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw Error("JSON: " + what + " at offset " + std::to_string(i_));
    }
    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    bool literal(const char* word) {
        size_t n = std::strlen(word);
        if (s_.compare(i_, n, word) != 0) return false;
        i_ += n;
        return true;
    }

    Value value(int depth) {
        if (depth > 64) fail("nesting too deep");
        ws();
        if (i_ >= s_.size()) fail("unexpected end");
        Value v;
        char c = s_[i_];
        if (c == '{') {
            v.kind = Value::Kind::Object;
            ++i_;
            ws();
            if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
            for (;;) {
                ws();
                if (i_ >= s_.size() || s_[i_] != '"') fail("expected a member name");
                std::string key = string();
                for (const auto& kv : v.object)
                    if (kv.first == key) fail("duplicate member \"" + key + "\"");
                ws();
                if (i_ >= s_.size() || s_[i_] != ':') fail("expected ':'");
                ++i_;
                v.object.emplace_back(std::move(key), value(depth + 1));
                ws();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
                fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.kind = Value::Kind::Array;
            ++i_;
            ws();
            if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
            for (;;) {
                v.array.push_back(value(depth + 1));
                ws();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
                fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.kind = Value::Kind::String;
            v.string = string();
            return v;
        }
        if (literal("true")) { v.kind = Value::Kind::Bool; v.boolean = true; return v; }
        if (literal("false")) { v.kind = Value::Kind::Bool; v.boolean = false; return v; }
        if (literal("null")) return v;
        if (c == '-' || (c >= '0' && c <= '9')) {
            v.kind = Value::Kind::Number;
            v.number = number();
            return v;
        }
        fail(std::string("unexpected character '") + c + "'");
    }

    double number() {
        size_t start = i_;
        if (s_[i_] == '-') ++i_;
        auto digits = [&] {
            size_t d = i_;
            while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
            if (i_ == d) fail("malformed number");
        };
        digits();
        if (i_ < s_.size() && s_[i_] == '.') { ++i_; digits(); }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            digits();
        }
        // The JSON number grammar is a subset of what strtod accepts in the "C" locale.
        std::string text = s_.substr(start, i_ - start);
        std::istringstream in(text);
        in.imbue(std::locale::classic());
        double d = 0;
        in >> d;
        if (in.fail()) fail("malformed number");
        return d;
    }

    unsigned hex4() {
        if (i_ + 4 > s_.size()) fail("short \\u escape");
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) {
            char h = s_[i_++];
            v <<= 4;
            if (h >= '0' && h <= '9') v |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f') v |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v |= unsigned(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return v;
    }

    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        } else {
            out += char(0xF0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3F));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        }
    }

    std::string string() {
        ++i_;  // opening quote
        std::string out;
        for (;;) {
            if (i_ >= s_.size()) fail("unterminated string");
            char c = s_[i_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
            if (c != '\\') { out += c; continue; }
            if (i_ >= s_.size()) fail("unterminated escape");
            char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {
                        if (i_ + 2 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') fail("lone surrogate");
                        i_ += 2;
                        unsigned lo = hex4();
                        if (lo < 0xDC00 || lo >= 0xE000) fail("bad surrogate pair");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        fail("lone surrogate");
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
    }
};

const char* kind_name(Value::Kind k) {
    switch (k) {
        case Value::Kind::Null: return "null";
        case Value::Kind::Bool: return "a boolean";
        case Value::Kind::Number: return "a number";
        case Value::Kind::String: return "a string";
        case Value::Kind::Array: return "an array";
        case Value::Kind::Object: return "an object";
    }
    return "?";
}

[[noreturn]] void mismatch(const std::string& what, const char* want, Value::Kind got) {
    throw Error(what + ": expected " + want + ", got " + kind_name(got));
}

}  // namespace

const Value* Value::find(const std::string& key) const {
    if (kind != Kind::Object) return nullptr;
    for (const auto& kv : object)
        if (kv.first == key) return &kv.second;
    return nullptr;
}

double Value::as_number(const std::string& what) const {
    if (kind != Kind::Number) mismatch(what, "a number", kind);
    return number;
}

int64_t Value::as_int(const std::string& what) const {
    double d = as_number(what);
    if (d != std::floor(d) || std::fabs(d) > 9.0e15) throw Error(what + ": expected an integer, got " + std::to_string(d));
    return static_cast<int64_t>(d);
}

bool Value::as_bool(const std::string& what) const {
    if (kind != Kind::Bool) mismatch(what, "a boolean", kind);
    return boolean;
}

const std::string& Value::as_string(const std::string& what) const {
    if (kind != Kind::String) mismatch(what, "a string", kind);
    return string;
}

const std::vector<Value>& Value::as_array(const std::string& what) const {
    if (kind != Kind::Array) mismatch(what, "an array", kind);
    return array;
}

Value parse(const std::string& text) { return Parser(text).document(); }

}  // namespace json

// ------------------------------------------------------------------------------------------------
// conversions
// ------------------------------------------------------------------------------------------------
float bf16_to_f32(uint16_t v) {
    uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

namespace {

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    float f;
    if (exp == 0) {
        f = std::ldexp(float(man), -24);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        u |= sign;
        std::memcpy(&f, &u, 4);
        return f;
    }
    uint32_t u = exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
    std::memcpy(&f, &u, 4);
    return f;
}

template <typename T>
T load_le(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));  // the supported hosts are little-endian
    return v;
}

bool parse_dtype(const std::string& s, DType* out) {
    static const std::pair<const char*, DType> table[] = {
        {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
        {"I64", DType::I64}, {"I32", DType::I32}, {"U8", DType::U8}};
    for (const auto& e : table)
        if (s == e.first) { *out = e.second; return true; }
    return false;
}

}  // namespace

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F64: return "F64";
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::I64: return "I64";
        case DType::I32: return "I32";
        case DType::U8: return "U8";
    }
    return "?";
}

size_t dtype_size(DType t) {
    switch (t) {
        case DType::F64: case DType::I64: return 8;
        case DType::F32: case DType::I32: return 4;
        case DType::F16: case DType::BF16: return 2;
        case DType::U8: return 1;
    }
    return 0;
}

int64_t TensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

// ------------------------------------------------------------------------------------------------
// safetensors
// ------------------------------------------------------------------------------------------------
SafeTensors SafeTensors::load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": cannot open");
    in.seekg(0, std::ios::end);
    std::streamoff file_size = in.tellg();
    in.seekg(0, std::ios::beg);
    if (file_size < 8) throw Error(path + ": " + std::to_string(file_size) + " bytes, too short for a safetensors file");
    uint8_t len_bytes[8];
    in.read(reinterpret_cast<char*>(len_bytes), 8);
    uint64_t header_len = load_le<uint64_t>(len_bytes);
    const uint64_t kMaxHeader = 100u << 20;
    if (header_len < 2 || header_len > kMaxHeader || header_len > uint64_t(file_size) - 8)
        throw Error(path + ": header length " + std::to_string(header_len) + " invalid for a file of " +
                    std::to_string(file_size) + " bytes");
    std::string header(size_t(header_len), '\0');
    in.read(&header[0], std::streamsize(header_len));
    SafeTensors st;
    st.path_ = path;
    size_t data_size = size_t(uint64_t(file_size) - 8 - header_len);
    st.data_.resize(data_size);
    if (data_size) in.read(reinterpret_cast<char*>(st.data_.data()), std::streamsize(data_size));
    if (!in) throw Error(path + ": read failed");

    json::Value root;
    try {
        root = json::parse(header);
    } catch (const Error& e) {
        throw Error(path + ": header: " + e.what());
    }
    if (root.kind != json::Value::Kind::Object) throw Error(path + ": header is not a JSON object");
    for (const auto& kv : root.object) {
        const std::string& name = kv.first;
        const json::Value& v = kv.second;
        std::string where = path + ": " + name;
        if (name == "__metadata__") {
            if (v.kind != json::Value::Kind::Object) throw Error(where + ": not an object");
            for (const auto& m : v.object) st.metadata_[m.first] = m.second.as_string(where + "." + m.first);
            continue;
        }
        if (v.kind != json::Value::Kind::Object) throw Error(where + ": not an object");
        TensorInfo t;
        t.name = name;
        const json::Value* dt = v.find("dtype");
        const json::Value* shape = v.find("shape");
        const json::Value* offs = v.find("data_offsets");
        if (!dt || !shape || !offs) throw Error(where + ": needs dtype, shape and data_offsets");
        if (!parse_dtype(dt->as_string(where + ".dtype"), &t.dtype))
            throw Error(where + ": unsupported dtype " + dt->string);
        uint64_t numel = 1;
        for (const auto& d : shape->as_array(where + ".shape")) {
            int64_t n = d.as_int(where + ".shape");
            if (n < 0 || n > (int64_t(1) << 40)) throw Error(where + ": bad dimension " + std::to_string(n));
            t.shape.push_back(n);
            if (n != 0 && numel > (uint64_t(1) << 40) / uint64_t(n)) throw Error(where + ": too many elements");
            numel *= uint64_t(n);
        }
        const auto& o = offs->as_array(where + ".data_offsets");
        if (o.size() != 2) throw Error(where + ": data_offsets needs 2 entries");
        int64_t b = o[0].as_int(where + ".data_offsets"), e = o[1].as_int(where + ".data_offsets");
        if (b < 0 || e < b || uint64_t(e) > data_size)
            throw Error(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                        ") outside the data section of " + std::to_string(data_size) + " bytes");
        if (uint64_t(e - b) != numel * dtype_size(t.dtype))
            throw Error(where + ": " + std::to_string(e - b) + " bytes for " + std::to_string(numel) + " " +
                        dtype_name(t.dtype) + " elements");
        t.begin = size_t(b);
        t.end = size_t(e);
        st.tensors_[name] = t;
    }
    return st;
}

const TensorInfo& SafeTensors::info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw Error(path_ + ": no tensor " + name);
    return it->second;
}

std::vector<float> SafeTensors::f32(const std::string& name) const {
    const TensorInfo& t = info(name);
    const uint8_t* p = data_.data() + t.begin;
    size_t n = size_t(t.numel());
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
        switch (t.dtype) {
            case DType::F32: out[i] = load_le<float>(p + 4 * i); break;
            case DType::F64: out[i] = float(load_le<double>(p + 8 * i)); break;
            case DType::BF16: out[i] = bf16_to_f32(load_le<uint16_t>(p + 2 * i)); break;
            case DType::F16: out[i] = f16_to_f32(load_le<uint16_t>(p + 2 * i)); break;
            default: throw Error(path_ + ": " + name + " is " + dtype_name(t.dtype) + ", not a float tensor");
        }
    }
    return out;
}

std::vector<int64_t> SafeTensors::i64(const std::string& name) const {
    const TensorInfo& t = info(name);
    const uint8_t* p = data_.data() + t.begin;
    size_t n = size_t(t.numel());
    std::vector<int64_t> out(n);
    for (size_t i = 0; i < n; ++i) {
        switch (t.dtype) {
            case DType::I64: out[i] = load_le<int64_t>(p + 8 * i); break;
            case DType::I32: out[i] = load_le<int32_t>(p + 4 * i); break;
            default: throw Error(path_ + ": " + name + " is " + dtype_name(t.dtype) + ", not an integer tensor");
        }
    }
    return out;
}

std::vector<uint8_t> SafeTensors::bytes(const std::string& name) const {
    const TensorInfo& t = info(name);
    return std::vector<uint8_t>(data_.begin() + std::ptrdiff_t(t.begin), data_.begin() + std::ptrdiff_t(t.end));
}

// ------------------------------------------------------------------------------------------------
// mla-golden/1
// ------------------------------------------------------------------------------------------------
const char* const kWeightNames[8] = {"q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj",
                                     "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj"};

namespace {

int32_t to_i32(const json::Value& v, const std::string& what) {
    int64_t x = v.as_int(what);
    if (x < INT32_MIN || x > INT32_MAX) throw Error(what + ": " + std::to_string(x) + " out of int32 range");
    return int32_t(x);
}

const json::Value& member(const json::Value& obj, const std::string& key, const std::string& where) {
    const json::Value* v = obj.find(key);
    if (!v) throw Error(where + ": missing \"" + key + "\"");
    return *v;
}

}  // namespace

mla_config config_from_json(const json::Value& cfg) {
    const std::string w = "config";
    if (cfg.kind != json::Value::Kind::Object) throw Error(w + ": not an object");
    mla_config c;
    std::memset(&c, 0, sizeof c);
    c.struct_size = sizeof(mla_config);
    c.hidden_size = to_i32(member(cfg, "hidden_size", w), w + ".hidden_size");
    c.num_heads = to_i32(member(cfg, "num_attention_heads", w), w + ".num_attention_heads");
    const json::Value& ql = member(cfg, "q_lora_rank", w);
    c.q_lora_rank = ql.is_null() ? 0 : to_i32(ql, w + ".q_lora_rank");
    c.kv_lora_rank = to_i32(member(cfg, "kv_lora_rank", w), w + ".kv_lora_rank");
    c.qk_nope_head_dim = to_i32(member(cfg, "qk_nope_head_dim", w), w + ".qk_nope_head_dim");
    c.qk_rope_head_dim = to_i32(member(cfg, "qk_rope_head_dim", w), w + ".qk_rope_head_dim");
    c.v_head_dim = to_i32(member(cfg, "v_head_dim", w), w + ".v_head_dim");
    const json::Value* il = cfg.find("rope_interleave");  // DeepseekV3Config's default is true
    c.rope_interleave = (il && !il->is_null()) ? (il->as_bool(w + ".rope_interleave") ? 1 : 0) : 1;
    c.max_position_embeddings = to_i32(member(cfg, "max_position_embeddings", w), w + ".max_position_embeddings");
    const json::Value* theta = cfg.find("rope_theta");
    c.rope_theta = theta ? theta->as_number(w + ".rope_theta") : 10000.0;
    const json::Value* eps = cfg.find("rms_norm_eps");
    c.rms_norm_eps = eps ? eps->as_number(w + ".rms_norm_eps") : 1e-6;
    c.rope_truncate = 1;
    c.rope_factor = 1.0;
    c.rope_beta_fast = 32.0;
    c.rope_beta_slow = 1.0;
    c.softmax_scale = 0.0;

    const json::Value* rs = cfg.find("rope_scaling");
    if (!rs || rs->is_null()) {
        c.rope_scaling = MLA_ROPE_SCALING_NONE;
        return c;
    }
    const std::string rw = w + ".rope_scaling";
    if (rs->kind != json::Value::Kind::Object) throw Error(rw + ": not an object");
    const json::Value* type = rs->find("rope_type");
    if (!type) type = rs->find("type");
    if (!type) throw Error(rw + ": missing \"rope_type\"");
    const std::string& t = type->as_string(rw + ".rope_type");
    if (t == "default") {
        c.rope_scaling = MLA_ROPE_SCALING_NONE;
        return c;
    }
    if (t != "yarn") throw Error(rw + ": rope type \"" + t + "\" is not supported (default or yarn)");
    c.rope_scaling = MLA_ROPE_SCALING_YARN;
    c.rope_factor = member(*rs, "factor", rw).as_number(rw + ".factor");
    auto opt_num = [&](const char* key, double dflt) {
        const json::Value* v = rs->find(key);
        return (v && !v->is_null()) ? v->as_number(rw + "." + key) : dflt;
    };
    const json::Value* omp = rs->find("original_max_position_embeddings");
    c.original_max_position_embeddings = (omp && !omp->is_null()) ? to_i32(*omp, rw + ".original_max_position_embeddings") : 0;
    c.rope_beta_fast = opt_num("beta_fast", 32.0);
    c.rope_beta_slow = opt_num("beta_slow", 1.0);
    c.rope_mscale = opt_num("mscale", 0.0);
    c.rope_mscale_all_dim = opt_num("mscale_all_dim", 0.0);
    c.rope_attention_factor = opt_num("attention_factor", 0.0);
    const json::Value* tr = rs->find("truncate");
    c.rope_truncate = (tr && !tr->is_null()) ? (tr->as_bool(rw + ".truncate") ? 1 : 0) : 1;
    return c;
}

Golden Golden::load(const std::string& path) {
    Golden g;
    g.st_ = SafeTensors::load(path);
    const auto& md = g.st_.metadata();
    auto meta = [&](const char* key) -> const std::string& {
        auto it = md.find(key);
        if (it == md.end()) throw Error(path + ": metadata has no \"" + key + "\"");
        return it->second;
    };
    if (meta("format") != "mla-golden/1") throw Error(path + ": format \"" + meta("format") + "\", expected mla-golden/1");
    try {
        g.config_ = config_from_json(json::parse(meta("config")));
        g.softmax_scale_ = json::parse(meta("softmax_scale")).as_number("softmax_scale");
        if (!(g.softmax_scale_ > 0)) throw Error("softmax_scale: not positive");
        json::Value seqs = json::parse(meta("sequences"));
        for (const auto& s : seqs.as_array("sequences")) {
            Sequence q;
            q.index = to_i32(member(s, "index", "sequences[]"), "sequences[].index");
            q.tokens = to_i32(member(s, "tokens", "sequences[]"), "sequences[].tokens");
            q.prefill_tokens = to_i32(member(s, "prefill_tokens", "sequences[]"), "sequences[].prefill_tokens");
            if (q.tokens < 1 || q.prefill_tokens < 0 || q.prefill_tokens > q.tokens)
                throw Error("sequence " + std::to_string(q.index) + ": tokens " + std::to_string(q.tokens) +
                            ", prefill_tokens " + std::to_string(q.prefill_tokens));
            g.sequences_.push_back(q);
        }
    } catch (const Error& e) {
        throw Error(path + ": " + e.what());
    }
    const mla_config& c = g.config_;
    for (const char* n : kWeightNames) {
        std::string key = std::string("weights.") + n + ".weight";
        if (!g.st_.has(key)) continue;
        const TensorInfo& t = g.st_.info(key);
        if (t.dtype != DType::BF16) throw Error(path + ": " + key + " is " + dtype_name(t.dtype) + ", expected BF16");
        std::pair<int64_t, int64_t> shape;
        if (t.shape.size() == 1) shape = {t.shape[0], 1};
        else if (t.shape.size() == 2) shape = {t.shape[0], t.shape[1]};
        else throw Error(path + ": " + key + " has rank " + std::to_string(t.shape.size()));
        std::vector<uint8_t> raw = g.st_.bytes(key);
        std::vector<uint16_t> w(raw.size() / 2);
        std::memcpy(w.data(), raw.data(), raw.size());
        g.weights_[n] = std::move(w);
        g.shapes_[n] = shape;
    }
    const char* needed_lora[] = {"q_a_proj", "q_a_layernorm", "q_b_proj"};
    const char* needed[] = {"kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj"};
    for (const char* n : needed)
        if (!g.weights_.count(n)) throw Error(path + ": missing weights." + n + ".weight");
    if (c.q_lora_rank > 0) {
        for (const char* n : needed_lora)
            if (!g.weights_.count(n)) throw Error(path + ": missing weights." + n + ".weight");
    } else if (!g.weights_.count("q_proj")) {
        throw Error(path + ": missing weights.q_proj.weight");
    }
    for (const Sequence& s : g.sequences_) {
        const char* parts[] = {"hidden", "output", "latent", "k_rope", "rope_cos", "rope_sin", "positions"};
        const int64_t cols[] = {c.hidden_size, c.hidden_size, c.kv_lora_rank, c.qk_rope_head_dim,
                                c.qk_rope_head_dim, c.qk_rope_head_dim, -1};
        for (int k = 0; k < 7; ++k) {
            std::string key = "seq" + std::to_string(s.index) + "." + parts[k];
            const TensorInfo& t = g.st_.info(key);
            bool ok = cols[k] < 0 ? (t.shape.size() == 1 && t.shape[0] == s.tokens)
                                  : (t.shape.size() == 2 && t.shape[0] == s.tokens && t.shape[1] == cols[k]);
            if (!ok) throw Error(path + ": " + key + " has an unexpected shape");
        }
    }
    return g;
}

std::vector<float> Golden::seq_f32(int32_t index, const std::string& what) const {
    return st_.f32("seq" + std::to_string(index) + "." + what);
}

std::vector<int32_t> Golden::seq_positions(int32_t index) const {
    std::vector<int64_t> p = st_.i64("seq" + std::to_string(index) + ".positions");
    std::vector<int32_t> out(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
        if (p[i] < 0 || p[i] > INT32_MAX) throw Error(path() + ": position " + std::to_string(p[i]) + " out of range");
        out[i] = int32_t(p[i]);
    }
    return out;
}

const std::vector<uint16_t>& Golden::weight_bf16(const std::string& short_name) const {
    static const std::vector<uint16_t> empty;
    auto it = weights_.find(short_name);
    return it == weights_.end() ? empty : it->second;
}

std::pair<int64_t, int64_t> Golden::weight_shape(const std::string& short_name) const {
    auto it = shapes_.find(short_name);
    return it == shapes_.end() ? std::pair<int64_t, int64_t>{0, 0} : it->second;
}

mla_layer_weights Golden::layer_weights() const {
    mla_layer_weights w;
    std::memset(&w, 0, sizeof w);
    w.struct_size = sizeof(mla_layer_weights);
    mla_weight* slots[8] = {&w.q_a_proj, &w.q_a_layernorm, &w.q_b_proj, &w.q_proj,
                            &w.kv_a_proj_with_mqa, &w.kv_a_layernorm, &w.kv_b_proj, &w.o_proj};
    for (int i = 0; i < 8; ++i) {
        auto it = weights_.find(kWeightNames[i]);
        if (it == weights_.end()) continue;
        slots[i]->data = it->second.data();
        slots[i]->dtype = MLA_DTYPE_BF16;
        slots[i]->rows = shapes_.at(kWeightNames[i]).first;
        slots[i]->cols = shapes_.at(kWeightNames[i]).second;
    }
    return w;
}

}  // namespace mla_golden
