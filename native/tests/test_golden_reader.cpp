// The golden-file reader itself: JSON edge cases, safetensors validation (every malformed file
// is an exception, never a crash), and the mla-golden/1 config mapping.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "golden.h"
#include "mla_test.h"

using mla_golden::Error;
namespace json = mla_golden::json;

namespace {

std::string temp_path(const char* name) {
    return (std::filesystem::temp_directory_path() / (std::string("mla_golden_reader_") + name)).string();
}

// Writes a safetensors file from a header string and a data section.
std::string write_st(const char* name, const std::string& header, const std::vector<uint8_t>& data,
                     int64_t header_len_override = -1) {
    std::string path = temp_path(name);
    std::ofstream f(path, std::ios::binary);
    uint64_t n = header_len_override >= 0 ? uint64_t(header_len_override) : header.size();
    for (int i = 0; i < 8; ++i) f.put(char((n >> (8 * i)) & 0xff));
    f.write(header.data(), std::streamsize(header.size()));
    f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
    return path;
}

template <typename F>
bool throws(F f, const char* needle = nullptr, std::string* msg = nullptr) {
    try {
        f();
    } catch (const Error& e) {
        if (msg) *msg = e.what();
        return !needle || std::strstr(e.what(), needle) != nullptr;
    }
    return false;
}

}  // namespace

MLA_TEST(json_values) {
    json::Value v = json::parse(R"( {"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}} )");
    REQUIRE(v.kind == json::Value::Kind::Object);
    const json::Value* a = v.find("a");
    REQUIRE(a != nullptr);
    REQUIRE(a->array.size() == 5);
    CHECK_EQ(a->array[0].as_int("a0"), int64_t(1));
    CHECK_EQ(a->array[1].as_number("a1"), -2500.0);
    CHECK(a->array[2].as_bool("a2"));
    CHECK(!a->array[3].as_bool("a3"));
    CHECK(a->array[4].is_null());
    CHECK_EQ(v.find("s")->as_string("s"), std::string("x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80"));
    CHECK(v.find("o")->object.empty());
    CHECK(v.find("missing") == nullptr);
    CHECK(!throws([&] { (void)json::parse("-0.5"); }));
    CHECK(throws([&] { json::parse("1.5").as_int("frac"); }, "integer"));
    CHECK(throws([&] { v.find("s")->as_number("s"); }, "expected a number"));
}

MLA_TEST(json_errors) {
    const char* bad[] = {"", "{", "[1,]", "{\"a\" 1}", "{\"a\":1,}", "tru", "01x", "\"abc", "\"\\x\"", "[1] 2",
                         "{\"a\":1,\"a\":2}", "\"\\ud800\"", "-", "1.", "1e", "\"a\nb\""};
    for (const char* s : bad) {
        std::string msg;
        bool t = throws([&] { json::parse(s); }, "JSON", &msg);
        CHECK_MSG(t, std::string("accepted malformed JSON: ") + s);
    }
    std::string deep(100, '[');
    deep += std::string(100, ']');
    CHECK(throws([&] { json::parse(deep); }, "deep"));
}

MLA_TEST(safetensors_valid_file) {
    std::vector<uint8_t> data(8 + 4);
    float f = 1.5f;
    std::memcpy(data.data(), &f, 4);
    f = -2.0f;
    std::memcpy(data.data() + 4, &f, 4);
    data[8] = 0x80;  // bf16 1.0 = 0x3f80, -3.0 = 0xc040
    data[9] = 0x3f;
    data[10] = 0x40;
    data[11] = 0xc0;
    std::string path = write_st(
        "ok.safetensors",
        R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},"e":{"dtype":"I64","shape":[0],"data_offsets":[12,12]}})",
        data);
    mla_golden::SafeTensors st = mla_golden::SafeTensors::load(path);
    CHECK_EQ(st.metadata().at("k"), std::string("v"));
    CHECK_EQ(st.tensors().size(), size_t(3));
    std::vector<float> a = st.f32("a"), b = st.f32("b");
    REQUIRE(a.size() == 2 && b.size() == 2);
    CHECK_EQ(a[0], 1.5f);
    CHECK_EQ(a[1], -2.0f);
    CHECK_EQ(b[0], 1.0f);
    CHECK_EQ(b[1], -3.0f);
    CHECK(st.i64("e").empty());
    CHECK(throws([&] { st.i64("a"); }, "not an integer"));
    CHECK(throws([&] { st.f32("zz"); }, "no tensor"));
    std::filesystem::remove(path);
}

MLA_TEST(safetensors_malformed_files) {
    const std::vector<uint8_t> d8(8, 0);
    struct Case { const char* name; std::string header; std::vector<uint8_t> data; int64_t len; const char* needle; };
    const Case cases[] = {
        {"len_past_end", "{}", d8, 1000, "header length"},
        {"not_json", "{abc}", d8, -1, "JSON"},
        {"not_object", "[1,2]", d8, -1, "not a JSON object"},
        {"span_out", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d8, -1, "outside"},
        {"span_reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", d8, -1, "outside"},
        {"size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8, -1, "bytes for"},
        {"bad_dtype", R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", d8, -1, "dtype"},
        {"neg_dim", R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", d8, -1, "dimension"},
        {"no_offsets", R"({"a":{"dtype":"U8","shape":[1]}})", d8, -1, "data_offsets"},
        {"meta_not_string", R"({"__metadata__":{"k":1}})", d8, -1, "expected a string"},
        // 2^24 * 2^40 elements wrap a 64-bit count to 0, which an empty span would match.
        {"numel_wraps", R"({"a":{"dtype":"F32","shape":[16777216,1099511627776],"data_offsets":[0,0]}})", d8, -1,
         "too many elements"},
        {"numel_wraps_3d", R"({"a":{"dtype":"U8","shape":[1099511627776,1099511627776,2],"data_offsets":[0,0]}})",
         d8, -1, "too many elements"},
    };
    for (const Case& c : cases) {
        std::string path = write_st(c.name, c.header, c.data, c.len);
        std::string msg;
        bool t = throws([&] { mla_golden::SafeTensors::load(path); }, c.needle, &msg);
        CHECK_MSG(t, std::string(c.name) + ": expected an error containing '" + c.needle + "', got '" + msg + "'");
        std::filesystem::remove(path);
    }
    std::string tiny = temp_path("tiny");
    { std::ofstream(tiny, std::ios::binary) << "abc"; }
    CHECK(throws([&] { mla_golden::SafeTensors::load(tiny); }, "too short"));
    std::filesystem::remove(tiny);
    CHECK(throws([&] { mla_golden::SafeTensors::load(temp_path("does_not_exist")); }, "cannot open"));
    // A safetensors file that is not mla-golden/1.
    std::string path = write_st("nogolden", R"({"__metadata__":{"format":"pt"}})", {});
    CHECK(throws([&] { mla_golden::Golden::load(path); }, "mla-golden/1"));
    std::filesystem::remove(path);
}

MLA_TEST(config_mapping) {
    json::Value yarn = json::parse(
        R"({"hidden_size": 256, "num_attention_heads": 4, "q_lora_rank": null, "kv_lora_rank": 512,
            "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "rope_theta": 10000.0,
            "rope_scaling": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                             "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707},
            "rope_interleave": true, "max_position_embeddings": 163840, "rms_norm_eps": 1e-06})");
    mla_config c = mla_golden::config_from_json(yarn);
    CHECK_EQ(c.struct_size, uint32_t(sizeof(mla_config)));
    CHECK_EQ(c.q_lora_rank, 0);
    CHECK_EQ(c.num_heads, 4);
    CHECK_EQ(c.rope_scaling, int32_t(MLA_ROPE_SCALING_YARN));
    CHECK_EQ(c.rope_factor, 40.0);
    CHECK_EQ(c.original_max_position_embeddings, 4096);
    CHECK_EQ(c.rope_mscale, 0.707);
    CHECK_EQ(c.rope_mscale_all_dim, 0.707);
    CHECK_EQ(c.rope_attention_factor, 0.0);
    CHECK_EQ(c.rope_truncate, 1);
    CHECK_EQ(c.rope_interleave, 1);
    CHECK_EQ(c.softmax_scale, 0.0);
    CHECK_EQ(c.rms_norm_eps, 1e-6);
    json::Value plain = json::parse(
        R"({"hidden_size": 8, "num_attention_heads": 1, "q_lora_rank": 4, "kv_lora_rank": 8,
            "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "rope_scaling": null,
            "rope_interleave": false, "max_position_embeddings": 64})");
    c = mla_golden::config_from_json(plain);
    CHECK_EQ(c.q_lora_rank, 4);
    CHECK_EQ(c.rope_scaling, int32_t(MLA_ROPE_SCALING_NONE));
    CHECK_EQ(c.rope_interleave, 0);
    json::Value linear = json::parse(
        R"({"hidden_size": 8, "num_attention_heads": 1, "q_lora_rank": 4, "kv_lora_rank": 8,
            "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "max_position_embeddings": 64})");
    CHECK(throws([&] { mla_golden::config_from_json(linear); }, "linear"));
    json::Value missing = json::parse(R"({"hidden_size": 8})");
    CHECK(throws([&] { mla_golden::config_from_json(missing); }, "num_attention_heads"));
}

MLA_TEST(repository_golden_files) {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(MLA_GOLDEN_DIR)) {
        if (e.path().extension() != ".safetensors") continue;
        ++n;
        mla_golden::Golden g = mla_golden::Golden::load(e.path().string());
        const mla_config& c = g.config();
        CHECK(c.hidden_size > 0 && c.num_heads > 0);
        for (const auto& s : g.sequences()) {
            CHECK_EQ(g.seq_f32(s.index, "hidden").size(), size_t(s.tokens) * size_t(c.hidden_size));
            std::vector<int32_t> pos = g.seq_positions(s.index);
            for (int32_t i = 0; i < s.tokens; ++i) CHECK_EQ(pos[size_t(i)], i);
        }
        mla_layer_weights w = g.layer_weights();
        CHECK(w.kv_b_proj.data != nullptr);
        CHECK_EQ(w.kv_b_proj.rows, int64_t(c.num_heads) * (c.qk_nope_head_dim + c.v_head_dim));
        CHECK_EQ(w.kv_b_proj.cols, int64_t(c.kv_lora_rank));
        CHECK_EQ(w.kv_a_layernorm.cols, int64_t(1));
        CHECK((c.q_lora_rank > 0) == (w.q_a_proj.data != nullptr));
        CHECK((c.q_lora_rank > 0) == (w.q_proj.data == nullptr));
    }
    CHECK(n >= 3);
}

// Random mutations of a real golden file (header bytes, header length, truncation): loading
// either succeeds or throws mla_golden::Error; no other exception, no crash. Seeded.
MLA_TEST(golden_file_mutations_fail_cleanly) {
    const std::string src = std::string(MLA_GOLDEN_DIR) + "/tiny_v3.safetensors";
    std::ifstream in(src, std::ios::binary);
    REQUIRE(in.good());
    const std::vector<uint8_t> seed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(seed.size() > 16);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= uint64_t(seed[size_t(i)]) << (8 * i);
    REQUIRE(hlen + 8 <= seed.size());
    std::mt19937_64 rng(4242);
    const std::string path = temp_path("mutated");
    int loaded = 0, rejected = 0;
    for (int iter = 0; iter < 300; ++iter) {
        std::vector<uint8_t> b = seed;
        switch (rng() % 4) {
            case 0:  // bytes of the header
                for (int k = 0, n = 1 + int(rng() % 3); k < n; ++k) b[8 + size_t(rng() % hlen)] = uint8_t(rng());
                break;
            case 1: {  // a digit of the header
                std::vector<size_t> digits;
                for (size_t k = 8; k < 8 + hlen; ++k)
                    if (b[k] >= '0' && b[k] <= '9') digits.push_back(k);
                const char* repl = "90-";
                b[digits[size_t(rng() % digits.size())]] = uint8_t(repl[rng() % 3]);
                break;
            }
            case 2: {  // the header length
                const uint64_t picks[] = {0, 1, hlen - 1, hlen + 1, uint64_t(b.size()), ~uint64_t(0), uint64_t(1) << 40};
                const uint64_t v = picks[rng() % 7];
                for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(v >> (8 * i));
                break;
            }
            default:  // truncation
                b.resize(size_t(rng() % b.size()));
        }
        {
            std::ofstream f(path, std::ios::binary | std::ios::trunc);
            f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
        }
        try {
            mla_golden::Golden g = mla_golden::Golden::load(path);
            for (const mla_golden::Sequence& sq : g.sequences()) {
                (void)g.seq_f32(sq.index, "hidden");
                (void)g.seq_positions(sq.index);
            }
            ++loaded;
        } catch (const Error&) {
            ++rejected;
        } catch (const std::exception& e) {
            CHECK_MSG(false, "iteration " + std::to_string(iter) + ": " + e.what());
        }
    }
    std::filesystem::remove(path);
    CHECK(loaded > 0);
    CHECK(rejected > 100);
}

int main(int argc, char** argv) { return mla_test::run_all(argc, argv); }
