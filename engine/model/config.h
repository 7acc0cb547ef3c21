// ModelConfig: the DeepSeek-V3 / V3.2 architecture read from a Hugging Face config.json, validated.
// Accepts both transformers 4 keys (rope_theta + rope_scaling) and transformers 5's
// rope_parameters, q_lora_rank null, any number of layers/experts/groups. Not the run config (that
// is rl/actors').
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <optional>
#include <string>
#include <vector>

namespace shoal {

struct RopeConfig {
  std::string type = "default";  // "default" or "yarn"
  double theta = 10000.0;
  // YaRN (type == "yarn"):
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // 0 = max_position_embeddings
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;  // 0 = not set
  std::optional<double> attention_factor;     // explicit override, rarely set
  bool truncate = true;
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";  // or "deepseek_v32"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t intermediate_size = 0;  // dense MLP width
  int64_t num_attention_heads = 0;
  int64_t q_lora_rank = 0;  // 0 = no q LoRA (config null): q = q_proj(x)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t first_k_dense_replace = 0;
  std::vector<bool> layer_is_moe;  // from mlp_layer_types when present, else first_k_dense_replace
  int64_t n_routed_experts = 0, num_experts_per_tok = 0, n_shared_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  bool rope_interleave = true;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  int64_t num_nextn_predict_layers = 0;
  int64_t bos_token_id = 0, eos_token_id = 1;
  std::optional<int64_t> pad_token_id;
  // DeepSeek Sparse Attention (deepseek_v32); used by the DSA work.
  int64_t index_n_heads = 0, index_head_dim = 0, index_topk = 0;
  // FP8 checkpoints: quantization_config {quant_method fp8, weight_block_size}.
  bool fp8_weights = false;
  int64_t fp8_block_rows = 128, fp8_block_cols = 128;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const { return layer_is_moe.at(size_t(layer)); }
  bool is_v32() const { return model_type == "deepseek_v32"; }
  // Softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN (as HF
  // does).
  double softmax_scale() const;

  // Parses and validates; errors name `source` (a file path) and the key.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const std::string& path);  // a config.json path or a checkpoint dir
  // HF-compatible config.json (transformers 5 layout: rope_parameters, mlp_layer_types).
  nlohmann::json to_json() const;
  void validate(const std::string& source) const;  // throws shoal::Error naming source and key
};

}  // namespace shoal
