// ModelConfig from and to a Hugging Face config.json. A config is untrusted input: every key is
// type-checked (no nlohmann exception escapes), unsupported variants are refused by name, and
// validate() checks the relations the model code relies on (group routing, head dims, YaRN).
#include "engine/model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/error.h"

namespace shoal {
namespace {
using json = nlohmann::json;

// Typed access to the keys of one JSON object; errors name the source and the full key path
// ("rope_parameters.factor"). Null counts as absent for optional keys, as transformers writes
// null for unset values.
class Keys {
 public:
  Keys(const json& j, const std::string& source, std::string prefix = "")
      : j_(j), source_(source), prefix_(std::move(prefix)) {}

  const json* find(const std::string& key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const std::string& key) const { return find(key) != nullptr; }
  std::string name(const std::string& key) const { return prefix_ + key; }

  [[noreturn]] void fail_type(const std::string& key, const char* expected, const json& v) const {
    SHOAL_FAIL("{}: key '{}': expected {}, got {} {}", source_, name(key), expected, v.type_name(),
               v.dump(-1, ' ', false, json::error_handler_t::replace));
  }

  int64_t to_int(const std::string& key, const json& v) const {
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > uint64_t(std::numeric_limits<int64_t>::max())) fail_type(key, "a 64-bit integer", v);
      return int64_t(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {  // 4096.0 is fine, 4096.5 is not
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
    }
    fail_type(key, "an integer", v);
  }
  int64_t req_int(const std::string& key) const {
    const json* v = find(key);
    SHOAL_CHECK(v != nullptr, "{}: key '{}' is missing (required)", source_, name(key));
    return to_int(key, *v);
  }
  int64_t opt_int(const std::string& key, int64_t def) const {
    const json* v = find(key);
    return v ? to_int(key, *v) : def;
  }
  double opt_num(const std::string& key, double def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_number()) fail_type(key, "a number", *v);
    return v->get<double>();
  }
  bool opt_bool(const std::string& key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) fail_type(key, "true or false", *v);
    return v->get<bool>();
  }
  std::string opt_str(const std::string& key, const std::string& def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_string()) fail_type(key, "a string", *v);
    return v->get<std::string>();
  }
  // A key that, when present, must have one specific string value (a variant shoal implements).
  void expect_str(const std::string& key, const std::string& only) const {
    if (!has(key)) return;
    std::string got = opt_str(key, only);
    SHOAL_CHECK(got == only, "{}: key '{}': '{}' is not supported (only '{}')", source_, name(key),
                got, only);
  }
  const json* opt_object(const std::string& key) const {
    const json* v = find(key);
    if (v && !v->is_object()) fail_type(key, "an object", *v);
    return v;
  }
  const json* opt_array(const std::string& key) const {
    const json* v = find(key);
    if (v && !v->is_array()) fail_type(key, "a list", *v);
    return v;
  }

 private:
  const json& j_;
  const std::string& source_;
  std::string prefix_;
};

// Reads RoPE fields from either rope_parameters (transformers 5) or rope_scaling (transformers 4);
// r.theta holds the top-level rope_theta (or the default) on entry.
void read_rope(const Keys& k, const std::string& source, RopeConfig& r) {
  std::string type_key = k.has("rope_type") ? "rope_type" : "type";
  r.type = k.opt_str(type_key, "default");
  SHOAL_CHECK(r.type == "default" || r.type == "yarn",
              "{}: key '{}': unsupported RoPE type '{}' (supported: default, yarn)", source,
              k.name(type_key), r.type);
  r.theta = k.opt_num("rope_theta", r.theta);
  if (r.type != "yarn") return;
  SHOAL_CHECK(k.has("factor"), "{}: key '{}' is missing (required for yarn)", source,
              k.name("factor"));
  r.factor = k.opt_num("factor", r.factor);
  r.original_max_position_embeddings = k.opt_int("original_max_position_embeddings", 0);
  r.beta_fast = k.opt_num("beta_fast", r.beta_fast);
  r.beta_slow = k.opt_num("beta_slow", r.beta_slow);
  r.mscale = k.opt_num("mscale", 0.0);
  r.mscale_all_dim = k.opt_num("mscale_all_dim", 0.0);
  if (k.has("attention_factor")) r.attention_factor = k.opt_num("attention_factor", 1.0);
  r.truncate = k.opt_bool("truncate", true);
}

bool finite_positive(double v) {
  return std::isfinite(v) && v > 0;
}

}  // namespace

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope.type == "yarn" && rope.mscale_all_dim != 0.0) {
    double m = rope.factor <= 1.0 ? 1.0 : 0.1 * rope.mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  SHOAL_CHECK(j.is_object(), "{}: expected a JSON object, got {}", source, j.type_name());
  ModelConfig c;
  try {
    Keys k(j, source);
    c.model_type = k.opt_str("model_type", "");
    SHOAL_CHECK(c.model_type == "deepseek_v3" || c.model_type == "deepseek_v32",
                "{}: key 'model_type': unknown model_type '{}' (supported: deepseek_v3, "
                "deepseek_v32)",
                source, c.model_type);

    c.vocab_size = k.req_int("vocab_size");
    c.hidden_size = k.req_int("hidden_size");
    c.num_hidden_layers = k.req_int("num_hidden_layers");
    c.intermediate_size = k.req_int("intermediate_size");
    c.num_attention_heads = k.req_int("num_attention_heads");
    c.q_lora_rank = k.opt_int("q_lora_rank", 0);
    c.kv_lora_rank = k.req_int("kv_lora_rank");
    c.qk_nope_head_dim = k.req_int("qk_nope_head_dim");
    c.qk_rope_head_dim = k.req_int("qk_rope_head_dim");
    c.v_head_dim = k.req_int("v_head_dim");

    c.n_routed_experts = k.opt_int("n_routed_experts", 0);
    c.num_experts_per_tok = k.opt_int("num_experts_per_tok", 0);
    c.n_shared_experts = k.opt_int("n_shared_experts", 0);
    c.moe_intermediate_size = k.opt_int("moe_intermediate_size", 0);
    c.n_group = k.opt_int("n_group", 1);
    c.topk_group = k.opt_int("topk_group", 1);
    c.norm_topk_prob = k.opt_bool("norm_topk_prob", true);
    c.routed_scaling_factor = k.opt_num("routed_scaling_factor", 1.0);
    c.first_k_dense_replace = k.opt_int("first_k_dense_replace", 0);
    k.expect_str("scoring_func", "sigmoid");
    k.expect_str("topk_method", "noaux_tc");
    k.expect_str("hidden_act", "silu");

    SHOAL_CHECK(c.num_hidden_layers >= 0 && c.num_hidden_layers <= 1000000,
                "{}: key 'num_hidden_layers': {} is out of range", source, c.num_hidden_layers);
    if (const json* types = k.opt_array("mlp_layer_types")) {
      SHOAL_CHECK(int64_t(types->size()) == c.num_hidden_layers,
                  "{}: key 'mlp_layer_types': has {} entries but num_hidden_layers is {}", source,
                  types->size(), c.num_hidden_layers);
      for (size_t i = 0; i < types->size(); ++i) {
        const json& t = (*types)[i];
        SHOAL_CHECK(t.is_string() && (t == "dense" || t == "sparse"),
                    "{}: key 'mlp_layer_types': entry {} is {}, not \"dense\" or \"sparse\"",
                    source, i, t.dump(-1, ' ', false, json::error_handler_t::replace));
        c.layer_is_moe.push_back(t == "sparse");
      }
    } else {
      for (int64_t i = 0; i < c.num_hidden_layers; ++i)
        c.layer_is_moe.push_back(c.n_routed_experts > 0 && i >= c.first_k_dense_replace);
    }

    c.rms_norm_eps = k.opt_num("rms_norm_eps", 1e-6);
    c.max_position_embeddings = k.opt_int("max_position_embeddings", 4096);
    c.rope_interleave = k.opt_bool("rope_interleave", true);
    c.tie_word_embeddings = k.opt_bool("tie_word_embeddings", false);
    c.num_nextn_predict_layers = k.opt_int("num_nextn_predict_layers", 0);
    c.bos_token_id = k.opt_int("bos_token_id", 0);
    // Some configs list several end tokens; the first is the one the chat format emits.
    if (const json* eos = k.find("eos_token_id"); eos && eos->is_array()) {
      SHOAL_CHECK(!eos->empty(), "{}: key 'eos_token_id': empty list", source);
      c.eos_token_id = k.to_int("eos_token_id", (*eos)[0]);
    } else {
      c.eos_token_id = k.opt_int("eos_token_id", 1);
    }
    if (k.has("pad_token_id")) c.pad_token_id = k.opt_int("pad_token_id", 0);

    c.rope.theta = k.opt_num("rope_theta", 10000.0);
    if (const json* rp = k.opt_object("rope_parameters")) {
      read_rope(Keys(*rp, source, "rope_parameters."), source, c.rope);
    } else if (const json* rs = k.opt_object("rope_scaling")) {
      read_rope(Keys(*rs, source, "rope_scaling."), source, c.rope);
    }

    if (c.is_v32()) {
      c.index_n_heads = k.req_int("index_n_heads");
      c.index_head_dim = k.req_int("index_head_dim");
      c.index_topk = k.req_int("index_topk");
      if (const json* types = k.opt_array("layer_types")) {
        SHOAL_CHECK(int64_t(types->size()) == c.num_hidden_layers,
                    "{}: key 'layer_types': has {} entries but num_hidden_layers is {}", source,
                    types->size(), c.num_hidden_layers);
        for (size_t i = 0; i < types->size(); ++i)
          SHOAL_CHECK((*types)[i] == "deepseek_sparse_attention",
                      "{}: key 'layer_types': entry {} is {}; only \"deepseek_sparse_attention\" "
                      "layers are supported",
                      source, i, (*types)[i].dump());
      }
    } else {
      c.index_n_heads = k.opt_int("index_n_heads", 0);
      c.index_head_dim = k.opt_int("index_head_dim", 0);
      c.index_topk = k.opt_int("index_topk", 0);
    }

    if (const json* q = k.opt_object("quantization_config")) {
      Keys qk(*q, source, "quantization_config.");
      std::string method = qk.opt_str("quant_method", "");
      SHOAL_CHECK(method == "fp8",
                  "{}: key 'quantization_config.quant_method': '{}' is not supported (only fp8)",
                  source, method);
      qk.expect_str("fmt", "e4m3");
      c.fp8_weights = true;
      if (const json* bs = qk.opt_array("weight_block_size")) {
        SHOAL_CHECK(
            bs->size() == 2,
            "{}: key 'quantization_config.weight_block_size': expected [rows, cols], got {}",
            source, bs->dump());
        c.fp8_block_rows = qk.to_int("weight_block_size", (*bs)[0]);
        c.fp8_block_cols = qk.to_int("weight_block_size", (*bs)[1]);
      }
    }
  } catch (const json::exception& e) {  // a safety net: the typed readers above should catch all
    SHOAL_FAIL("{}: malformed config: {}", source, e.what());
  }
  c.validate(source);
  return c;
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) {
    SHOAL_CHECK(v > 0, "{}: key '{}': must be positive, got {}", source, key, v);
  };
  auto non_negative = [&](const char* key, int64_t v) {
    SHOAL_CHECK(v >= 0, "{}: key '{}': must be >= 0, got {}", source, key, v);
  };
  SHOAL_CHECK(
      model_type == "deepseek_v3" || model_type == "deepseek_v32",
      "{}: key 'model_type': unknown model_type '{}' (supported: deepseek_v3, deepseek_v32)",
      source, model_type);
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  non_negative("q_lora_rank", q_lora_rank);
  positive("kv_lora_rank", kv_lora_rank);
  positive("qk_nope_head_dim", qk_nope_head_dim);
  positive("qk_rope_head_dim", qk_rope_head_dim);
  SHOAL_CHECK(qk_rope_head_dim % 2 == 0,
              "{}: key 'qk_rope_head_dim': {} is odd (RoPE rotates pairs)", source,
              qk_rope_head_dim);
  positive("v_head_dim", v_head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  non_negative("first_k_dense_replace", first_k_dense_replace);
  non_negative("num_nextn_predict_layers", num_nextn_predict_layers);
  SHOAL_CHECK(std::isfinite(rms_norm_eps) && rms_norm_eps > 0,
              "{}: key 'rms_norm_eps': must be positive, got {}", source, rms_norm_eps);
  SHOAL_CHECK(int64_t(layer_is_moe.size()) == num_hidden_layers,
              "{}: key 'mlp_layer_types': {} entries for {} layers", source, layer_is_moe.size(),
              num_hidden_layers);

  bool any_moe = false, any_dense = false;
  for (bool m : layer_is_moe) (m ? any_moe : any_dense) = true;
  if (any_dense) positive("intermediate_size", intermediate_size);
  non_negative("n_routed_experts", n_routed_experts);
  non_negative("n_shared_experts", n_shared_experts);
  if (any_moe) {
    SHOAL_CHECK(n_routed_experts > 0,
                "{}: key 'n_routed_experts': 0, but some layers are MoE (mlp_layer_types / "
                "first_k_dense_replace)",
                source);
    positive("num_experts_per_tok", num_experts_per_tok);
    positive("moe_intermediate_size", moe_intermediate_size);
    positive("n_group", n_group);
    SHOAL_CHECK(num_experts_per_tok <= n_routed_experts,
                "{}: key 'num_experts_per_tok': {} exceeds n_routed_experts {}", source,
                num_experts_per_tok, n_routed_experts);
    SHOAL_CHECK(n_routed_experts % n_group == 0,
                "{}: key 'n_group': {} does not divide n_routed_experts {}", source, n_group,
                n_routed_experts);
    int64_t per_group = n_routed_experts / n_group;
    SHOAL_CHECK(per_group >= 2,
                "{}: key 'n_group': {} groups of {} expert(s); the group score sums the top 2, so "
                "each group needs at least 2 experts",
                source, n_group, per_group);
    SHOAL_CHECK(topk_group >= 1 && topk_group <= n_group,
                "{}: key 'topk_group': {} is not in [1, n_group = {}]", source, topk_group,
                n_group);
    SHOAL_CHECK(
        num_experts_per_tok <= topk_group * per_group,
        "{}: key 'num_experts_per_tok': {} exceeds the {} experts in topk_group = {} groups",
        source, num_experts_per_tok, topk_group * per_group, topk_group);
    SHOAL_CHECK(std::isfinite(routed_scaling_factor) && routed_scaling_factor > 0,
                "{}: key 'routed_scaling_factor': must be positive, got {}", source,
                routed_scaling_factor);
  }

  SHOAL_CHECK(rope.type == "default" || rope.type == "yarn",
              "{}: key 'rope_type': unsupported RoPE type '{}' (supported: default, yarn)", source,
              rope.type);
  SHOAL_CHECK(finite_positive(rope.theta), "{}: key 'rope_theta': must be positive, got {}", source,
              rope.theta);
  if (rope.type == "yarn") {
    SHOAL_CHECK(finite_positive(rope.factor), "{}: key 'factor' (yarn): must be positive, got {}",
                source, rope.factor);
    SHOAL_CHECK(rope.original_max_position_embeddings >= 0,
                "{}: key 'original_max_position_embeddings': must be >= 0, got {}", source,
                rope.original_max_position_embeddings);
    SHOAL_CHECK(std::isfinite(rope.beta_fast) && std::isfinite(rope.beta_slow),
                "{}: key 'beta_fast'/'beta_slow': must be finite", source);
    SHOAL_CHECK(std::isfinite(rope.mscale) && std::isfinite(rope.mscale_all_dim),
                "{}: key 'mscale'/'mscale_all_dim': must be finite", source);
    SHOAL_CHECK(!rope.attention_factor || finite_positive(*rope.attention_factor),
                "{}: key 'attention_factor': must be positive", source);
  }

  if (is_v32()) {
    positive("index_n_heads", index_n_heads);
    positive("index_topk", index_topk);
    SHOAL_CHECK(q_lora_rank > 0,
                "{}: key 'q_lora_rank': deepseek_v32 needs a query LoRA (the indexer reads its "
                "normed latent), got null",
                source);
    SHOAL_CHECK(index_head_dim >= qk_rope_head_dim,
                "{}: key 'index_head_dim': {} is smaller than qk_rope_head_dim {} (RoPE covers the "
                "first qk_rope_head_dim dims)",
                source, index_head_dim, qk_rope_head_dim);
  }
  if (fp8_weights) {
    SHOAL_CHECK(fp8_block_rows > 0 && fp8_block_cols > 0,
                "{}: key 'quantization_config.weight_block_size': [{}, {}] must be positive",
                source, fp8_block_rows, fp8_block_cols);
  }
}

ModelConfig ModelConfig::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string file = fs::is_directory(path, ec) ? (fs::path(path) / "config.json").string() : path;
  std::ifstream in(file, std::ios::binary);
  SHOAL_CHECK(in.good(), "{}: cannot read model config: {}", file,
              fs::exists(file, ec) ? "cannot open" : "no such file");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    SHOAL_FAIL("{}: not valid JSON: {}", file, e.what());
  }
  return from_json(j, file);
}

json ModelConfig::to_json() const {
  json j;
  j["architectures"] = {is_v32() ? "DeepseekV32ForCausalLM" : "DeepseekV3ForCausalLM"};
  j["model_type"] = model_type;
  j["dtype"] = "float32";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["intermediate_size"] = intermediate_size;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_attention_heads;
  j["q_lora_rank"] = q_lora_rank > 0 ? json(q_lora_rank) : json(nullptr);
  j["kv_lora_rank"] = kv_lora_rank;
  j["qk_nope_head_dim"] = qk_nope_head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["qk_head_dim"] = qk_head_dim();
  j["head_dim"] = qk_rope_head_dim;  // what transformers writes for DeepSeek (the RoPE width)
  j["v_head_dim"] = v_head_dim;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;

  j["n_routed_experts"] = n_routed_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["n_shared_experts"] = n_shared_experts;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["n_group"] = n_group;
  j["topk_group"] = topk_group;
  j["norm_topk_prob"] = norm_topk_prob;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["scoring_func"] = "sigmoid";
  j["topk_method"] = "noaux_tc";
  j["first_k_dense_replace"] = first_k_dense_replace;
  json types = json::array();
  for (bool m : layer_is_moe) types.push_back(m ? "sparse" : "dense");
  j["mlp_layer_types"] = types;

  j["rms_norm_eps"] = rms_norm_eps;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_interleave"] = rope_interleave;
  json rp = {{"rope_type", rope.type}, {"rope_theta", rope.theta}};
  if (rope.type == "yarn") {
    rp["factor"] = rope.factor;
    if (rope.original_max_position_embeddings > 0)
      rp["original_max_position_embeddings"] = rope.original_max_position_embeddings;
    rp["beta_fast"] = rope.beta_fast;
    rp["beta_slow"] = rope.beta_slow;
    if (rope.mscale != 0.0) rp["mscale"] = rope.mscale;
    if (rope.mscale_all_dim != 0.0) rp["mscale_all_dim"] = rope.mscale_all_dim;
    if (rope.attention_factor) rp["attention_factor"] = *rope.attention_factor;
    if (!rope.truncate) rp["truncate"] = false;  // true is the default
  }
  j["rope_parameters"] = rp;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  j["use_cache"] = true;

  if (is_v32() || index_n_heads || index_head_dim || index_topk) {
    j["index_n_heads"] = index_n_heads;
    j["index_head_dim"] = index_head_dim;
    j["index_topk"] = index_topk;
  }
  if (is_v32()) {
    json lt = json::array();
    for (int64_t i = 0; i < num_hidden_layers; ++i) lt.push_back("deepseek_sparse_attention");
    j["layer_types"] = lt;
  }
  if (fp8_weights) {
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {fp8_block_rows, fp8_block_cols}}};
  }
  return j;
}

}  // namespace shoal
