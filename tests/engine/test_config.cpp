// Tests for engine/model/config: the golden tiny configs, full-size DeepSeek-V3 in transformers 4
// layout, the softmax scale under YaRN, to_json round trips, and one bad input per rule, each of
// which must raise shoal::Error naming the key.
#include "engine/model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include "base/error.h"

namespace shoal {
namespace {
using json = nlohmann::json;
namespace fs = std::filesystem;

json read_json(const std::string& path) {
  return json::parse(std::ifstream(path));
}

// Full-size DeepSeek-V3 as its config.json ships (transformers 4 keys).
const char* kDeepSeekV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
  "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
  "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
  "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
  "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
  "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid",
  "hidden_act": "silu", "max_position_embeddings": 163840, "rms_norm_eps": 1e-06,
  "rope_theta": 10000, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40,
    "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
    "type": "yarn"},
  "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
    "weight_block_size": [128, 128]},
  "torch_dtype": "bfloat16", "use_cache": true
})";

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.kv_lora_rank, b.kv_lora_rank);
  EXPECT_EQ(a.qk_nope_head_dim, b.qk_nope_head_dim);
  EXPECT_EQ(a.qk_rope_head_dim, b.qk_rope_head_dim);
  EXPECT_EQ(a.v_head_dim, b.v_head_dim);
  EXPECT_EQ(a.first_k_dense_replace, b.first_k_dense_replace);
  EXPECT_EQ(a.layer_is_moe, b.layer_is_moe);
  EXPECT_EQ(a.n_routed_experts, b.n_routed_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.n_shared_experts, b.n_shared_experts);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.n_group, b.n_group);
  EXPECT_EQ(a.topk_group, b.topk_group);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rope_interleave, b.rope_interleave);
  EXPECT_EQ(a.rope.type, b.rope.type);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(a.rope.beta_fast, b.rope.beta_fast);
  EXPECT_EQ(a.rope.beta_slow, b.rope.beta_slow);
  EXPECT_EQ(a.rope.mscale, b.rope.mscale);
  EXPECT_EQ(a.rope.mscale_all_dim, b.rope.mscale_all_dim);
  EXPECT_EQ(a.rope.attention_factor, b.rope.attention_factor);
  EXPECT_EQ(a.rope.truncate, b.rope.truncate);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.num_nextn_predict_layers, b.num_nextn_predict_layers);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.index_n_heads, b.index_n_heads);
  EXPECT_EQ(a.index_head_dim, b.index_head_dim);
  EXPECT_EQ(a.index_topk, b.index_topk);
  EXPECT_EQ(a.fp8_weights, b.fp8_weights);
  EXPECT_EQ(a.fp8_block_rows, b.fp8_block_rows);
  EXPECT_EQ(a.fp8_block_cols, b.fp8_block_cols);
  EXPECT_EQ(a.softmax_scale(), b.softmax_scale());
}

void expect_round_trip(const ModelConfig& c) {
  json j = c.to_json();
  ModelConfig back = ModelConfig::from_json(j, "round-trip");
  expect_same(c, back);
  EXPECT_EQ(back.to_json(), j);
  // And through text, as a config.json on disk would go.
  expect_same(c, ModelConfig::from_json(json::parse(j.dump(2)), "round-trip text"));
}

TEST(ConfigTest, TinyV3) {
  ModelConfig c = ModelConfig::load(SHOAL_TEST_DATA "/tiny_v3");  // a directory
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_FALSE(c.is_v32());
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.q_lora_rank, 32);
  EXPECT_EQ(c.kv_lora_rank, 16);
  EXPECT_EQ(c.qk_head_dim(), 24);
  EXPECT_EQ(c.v_head_dim, 16);
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, true, true}));
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(2));
  EXPECT_EQ(c.n_routed_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.n_group, 2);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.pad_token_id, std::optional<int64_t>(2));
  EXPECT_FALSE(c.fp8_weights);
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 1.0 / std::sqrt(24.0));
  expect_round_trip(c);
  // Loading the file path directly gives the same config.
  expect_same(c, ModelConfig::load(SHOAL_TEST_DATA "/tiny_v3/config.json"));
}

TEST(ConfigTest, TinyV3Yarn) {
  ModelConfig c = ModelConfig::load(SHOAL_TEST_DATA "/tiny_v3_yarn/config.json");
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 64);
  EXPECT_EQ(c.rope.beta_fast, 32.0);
  EXPECT_EQ(c.rope.beta_slow, 1.0);
  EXPECT_EQ(c.rope.mscale, 1.0);
  EXPECT_EQ(c.rope.mscale_all_dim, 1.0);
  double m = 0.1 * std::log(4.0) + 1.0;
  EXPECT_DOUBLE_EQ(c.softmax_scale(), m * m / std::sqrt(24.0));
  expect_round_trip(c);
}

TEST(ConfigTest, TinyV32) {
  ModelConfig c = ModelConfig::load(SHOAL_TEST_DATA "/tiny_v32");
  EXPECT_TRUE(c.is_v32());
  EXPECT_EQ(c.index_n_heads, 2);
  EXPECT_EQ(c.index_head_dim, 16);
  EXPECT_EQ(c.index_topk, 8);
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  json j = c.to_json();
  EXPECT_EQ(j["architectures"][0], "DeepseekV32ForCausalLM");
  EXPECT_EQ(j["layer_types"].size(), 3u);
  EXPECT_EQ(j["layer_types"][2], "deepseek_sparse_attention");
  expect_round_trip(c);
}

TEST(ConfigTest, FullSizeDeepSeekV3Transformers4) {
  ModelConfig c = ModelConfig::from_json(json::parse(kDeepSeekV3), "v3/config.json");
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.intermediate_size, 18432);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.vocab_size, 129280);
  ASSERT_EQ(c.layer_is_moe.size(), 61u);
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_TRUE(c.is_moe_layer(60));
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.factor, 40.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.rope.mscale_all_dim, 1.0);
  EXPECT_TRUE(c.rope_interleave);  // the default
  EXPECT_FALSE(c.pad_token_id.has_value());
  EXPECT_TRUE(c.fp8_weights);
  EXPECT_EQ(c.fp8_block_rows, 128);
  EXPECT_EQ(c.fp8_block_cols, 128);
  double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(c.softmax_scale(), std::pow(192.0, -0.5) * m * m);
  json j = c.to_json();
  EXPECT_EQ(j["rope_parameters"]["rope_type"], "yarn");
  EXPECT_EQ(j["rope_parameters"]["factor"], 40.0);
  EXPECT_EQ(j["quantization_config"]["quant_method"], "fp8");
  EXPECT_EQ(j["mlp_layer_types"][2], "dense");
  EXPECT_EQ(j["mlp_layer_types"][3], "sparse");
  expect_round_trip(c);
}

TEST(ConfigTest, NullQLoraAndDefaults) {
  json j = json::parse(kDeepSeekV3);
  j["q_lora_rank"] = nullptr;
  j.erase("quantization_config");
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("n_group");
  j.erase("topk_group");
  j.erase("norm_topk_prob");
  j["eos_token_id"] = {1, 7};  // several end tokens: the first one is used
  ModelConfig c = ModelConfig::from_json(j, "x");
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.to_json()["q_lora_rank"], nullptr);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_FALSE(c.fp8_weights);
  EXPECT_DOUBLE_EQ(c.softmax_scale(), std::pow(192.0, -0.5));
  expect_round_trip(c);

  // All-dense model: no MoE keys needed.
  json d = read_json(SHOAL_TEST_DATA "/tiny_v3/config.json");
  for (auto k : {"n_routed_experts", "num_experts_per_tok", "n_shared_experts",
                 "moe_intermediate_size", "n_group", "topk_group", "first_k_dense_replace"})
    d.erase(k);
  ModelConfig dense = ModelConfig::from_json(d, "dense");
  EXPECT_EQ(dense.layer_is_moe, (std::vector<bool>{false, false, false}));
  expect_round_trip(dense);
}

TEST(ConfigTest, RopeParametersAndRopeScalingAgree) {
  json t5 = read_json(SHOAL_TEST_DATA "/tiny_v3_yarn/config.json");
  json t4 = t5;
  t4.erase("rope_parameters");
  t4["rope_theta"] = 10000.0;
  t4["rope_scaling"] = {{"type", "yarn"},
                        {"factor", 4.0},
                        {"mscale", 1.0},
                        {"mscale_all_dim", 1.0},
                        {"beta_fast", 32},
                        {"beta_slow", 1},
                        {"original_max_position_embeddings", 64}};
  expect_same(ModelConfig::from_json(t5, "t5"), ModelConfig::from_json(t4, "t4"));
  // rope_parameters also accepts "type".
  json alt = t5;
  alt["rope_parameters"].erase("rope_type");
  alt["rope_parameters"]["type"] = "yarn";
  expect_same(ModelConfig::from_json(t5, "t5"), ModelConfig::from_json(alt, "alt"));
}

TEST(ConfigTest, Fp8QuantizationConfig) {
  json j = read_json(SHOAL_TEST_DATA "/tiny_v3/config.json");
  j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {64, 32}}};
  ModelConfig c = ModelConfig::from_json(j, "fp8");
  EXPECT_TRUE(c.fp8_weights);
  EXPECT_EQ(c.fp8_block_rows, 64);
  EXPECT_EQ(c.fp8_block_cols, 32);
  expect_round_trip(c);
}

// Applies `edit` to the tiny config (or the v32 one) and expects an error mentioning `needles`.
template <typename Edit>
void expect_bad(Edit edit, std::initializer_list<std::string> needles, bool v32 = false) {
  json j = read_json(v32 ? SHOAL_TEST_DATA "/tiny_v32/config.json"
                         : SHOAL_TEST_DATA "/tiny_v3/config.json");
  edit(j);
  try {
    ModelConfig::from_json(j, "bad/config.json");
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("bad/config.json"), std::string::npos) << e.message();
    for (const auto& n : needles)
      EXPECT_NE(e.message().find(n), std::string::npos) << "'" << n << "' not in: " << e.message();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a shoal::Error: " << e.what();
  }
}

TEST(ConfigTest, BadInputsNameTheKey) {
  expect_bad([](json& j) { j["model_type"] = "llama"; },
             {"unknown model_type 'llama' (supported: deepseek_v3, deepseek_v32)"});
  expect_bad([](json& j) { j.erase("model_type"); }, {"model_type"});
  expect_bad([](json& j) { j["hidden_size"] = "64"; }, {"'hidden_size'", "integer"});
  expect_bad([](json& j) { j["hidden_size"] = 64.5; }, {"'hidden_size'"});
  expect_bad([](json& j) { j.erase("hidden_size"); }, {"'hidden_size'", "missing"});
  expect_bad([](json& j) { j["vocab_size"] = nullptr; }, {"'vocab_size'", "missing"});
  expect_bad([](json& j) { j["hidden_size"] = 0; }, {"'hidden_size'", "positive"});
  expect_bad([](json& j) { j["kv_lora_rank"] = -16; }, {"'kv_lora_rank'"});
  expect_bad([](json& j) { j["q_lora_rank"] = -1; }, {"'q_lora_rank'"});
  expect_bad([](json& j) { j["num_hidden_layers"] = 1e12; }, {"'num_hidden_layers'"});
  expect_bad([](json& j) { j["vocab_size"] = 18446744073709551615ull; }, {"'vocab_size'"});
  expect_bad([](json& j) { j["qk_rope_head_dim"] = 7; }, {"'qk_rope_head_dim'", "odd"});
  expect_bad([](json& j) { j["n_group"] = 3; },
             {"key 'n_group': 3 does not divide n_routed_experts 8"});
  expect_bad([](json& j) { j["n_group"] = 8; }, {"'n_group'", "at least 2"});
  expect_bad([](json& j) { j["n_group"] = 0; }, {"'n_group'"});
  expect_bad([](json& j) { j["topk_group"] = 3; }, {"'topk_group'"});
  expect_bad([](json& j) { j["topk_group"] = 0; }, {"'topk_group'"});
  expect_bad([](json& j) { j["num_experts_per_tok"] = 9; }, {"'num_experts_per_tok'"});
  expect_bad([](json& j) { j["num_experts_per_tok"] = 5; },  // > topk_group(1) * 4 per group
             {"'num_experts_per_tok'", "topk_group"});
  expect_bad([](json& j) { j["num_experts_per_tok"] = 0; }, {"'num_experts_per_tok'"});
  expect_bad([](json& j) { j["moe_intermediate_size"] = 0; }, {"'moe_intermediate_size'"});
  expect_bad([](json& j) { j["routed_scaling_factor"] = "2.5"; }, {"'routed_scaling_factor'"});
  expect_bad([](json& j) { j["norm_topk_prob"] = "yes"; }, {"'norm_topk_prob'"});
  expect_bad([](json& j) { j["rms_norm_eps"] = 0; }, {"'rms_norm_eps'"});
  expect_bad([](json& j) { j["rms_norm_eps"] = "1e-6"; }, {"'rms_norm_eps'"});
  expect_bad([](json& j) { j["scoring_func"] = "softmax"; }, {"'scoring_func'", "softmax"});
  expect_bad([](json& j) { j["topk_method"] = "greedy"; }, {"'topk_method'", "greedy"});
  expect_bad([](json& j) { j["hidden_act"] = "gelu"; }, {"'hidden_act'", "gelu"});
  expect_bad([](json& j) { j["hidden_act"] = 1; }, {"'hidden_act'"});
  expect_bad([](json& j) { j["mlp_layer_types"] = {"dense", "sparse"}; }, {"'mlp_layer_types'"});
  expect_bad(
      [](json& j) {
        j["mlp_layer_types"] = {"dense", "moe", "sparse"};
      },
      {"'mlp_layer_types'"});
  expect_bad([](json& j) { j["mlp_layer_types"] = "dense"; }, {"'mlp_layer_types'"});
  expect_bad(
      [](json& j) {
        j["n_routed_experts"] = 0;
        j["mlp_layer_types"] = {"dense", "sparse", "sparse"};
      },
      {"'n_routed_experts'"});
  expect_bad([](json& j) { j["eos_token_id"] = "</s>"; }, {"'eos_token_id'"});
  expect_bad([](json& j) { j["pad_token_id"] = 2.5; }, {"'pad_token_id'"});

  // RoPE.
  expect_bad([](json& j) { j["rope_parameters"]["rope_type"] = "linear"; },
             {"'rope_parameters.rope_type'", "'linear'"});
  expect_bad([](json& j) { j["rope_parameters"] = "yarn"; }, {"'rope_parameters'"});
  expect_bad([](json& j) { j["rope_parameters"]["rope_theta"] = -1; }, {"'rope_theta'"});
  expect_bad(
      [](json& j) {
        j.erase("rope_parameters");
        j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
      },
      {"'rope_scaling.type'", "'dynamic'"});
  expect_bad(
      [](json& j) {
        j["rope_parameters"] = {{"rope_type", "yarn"}};
      },
      {"'rope_parameters.factor'", "missing"});
  expect_bad(
      [](json& j) {
        j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 0}};
      },
      {"'factor'"});
  expect_bad(
      [](json& j) {
        j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", "4"}};
      },
      {"'rope_parameters.factor'"});

  // Quantization.
  expect_bad(
      [](json& j) {
        j["quantization_config"] = {{"quant_method", "gptq"}};
      },
      {"'quantization_config.quant_method'", "gptq"});
  expect_bad(
      [](json& j) {
        j["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e5m2"}};
      },
      {"'quantization_config.fmt'", "e5m2"});
  expect_bad(
      [](json& j) {
        j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128}}};
      },
      {"'quantization_config.weight_block_size'"});
  expect_bad(
      [](json& j) {
        j["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 0}}};
      },
      {"'quantization_config.weight_block_size'"});

  // DeepSeek V3.2 keys.
  expect_bad([](json& j) { j.erase("index_topk"); }, {"'index_topk'", "missing"}, true);
  expect_bad([](json& j) { j["index_topk"] = 0; }, {"'index_topk'"}, true);
  expect_bad([](json& j) { j["index_n_heads"] = 0; }, {"'index_n_heads'"}, true);
  expect_bad([](json& j) { j["index_head_dim"] = 4; }, {"'index_head_dim'"}, true);
}

TEST(ConfigTest, NotAnObject) {
  EXPECT_THROW(ModelConfig::from_json(json::array({1, 2}), "arr"), Error);
  EXPECT_THROW(ModelConfig::from_json(json("deepseek_v3"), "str"), Error);
}

TEST(ConfigTest, LoadErrorsNameTheFile) {
  fs::path dir = fs::temp_directory_path() / fmt::format("shoal_config_{}", ::getpid());
  fs::create_directories(dir);
  std::string missing = (dir / "nope.json").string();
  try {
    ModelConfig::load(missing);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(missing), std::string::npos) << e.message();
  }
  // A directory without config.json names the config.json it looked for.
  try {
    ModelConfig::load(dir.string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find((dir / "config.json").string()), std::string::npos) << e.message();
  }
  std::string bad = (dir / "config.json").string();
  std::ofstream(bad) << "{\"model_type\": \"deepseek_v3\",";
  try {
    ModelConfig::load(dir.string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(bad), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("JSON"), std::string::npos) << e.message();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shoal
