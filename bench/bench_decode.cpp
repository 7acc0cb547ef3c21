// bench_decode: greedy decode tokens/s on the CPU through the latent KV cache (prefill in MHA
// mode, absorbed decode, DSA over cached indexer keys for the V3.2 variant), at batch 1, 16 and 64,
// against a naive baseline measured in the same run that recomputes every sequence in full
// (uncached forward) for each new token. Also prints the cache bytes per token and checks them
// against (kv_lora_rank + qk_rope_head_dim [+ index_head_dim]) x layers x 4 bytes.
// Not a test: random weights; numbers go to docs/PERFORMANCE.md.
//
//   bench_decode [--config tiny|tiny_v32|50m|all] [--prompt N (32)] [--steps N (32)]
//                [--baseline-steps N (4)]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "engine/backend.h"
#include "engine/generate/kv_cache.h"
#include "engine/model/model.h"

namespace shoal {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

ModelConfig base_config() {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.first_k_dense_replace = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rope_interleave = true;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.n_group = 2;
  c.topk_group = 1;
  return c;
}

// The two presets of bench_cpu_train (tiny; ~50M parameters, DeepSeek-V2-Lite-like ratios).
ModelConfig tiny_config() {
  ModelConfig c = base_config();
  c.vocab_size = 1024;
  c.hidden_size = 64;
  c.num_hidden_layers = 3;
  c.intermediate_size = 176;
  c.num_attention_heads = 4;
  c.q_lora_rank = 32;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.moe_intermediate_size = 32;
  c.max_position_embeddings = 256;
  c.layer_is_moe.assign(3, true);
  c.layer_is_moe[0] = false;
  return c;
}

ModelConfig tiny_v32_config() {
  ModelConfig c = tiny_config();
  c.model_type = "deepseek_v32";
  c.index_n_heads = 2;
  c.index_head_dim = 16;
  c.index_topk = 16;
  return c;
}

ModelConfig config_50m() {
  ModelConfig c = base_config();
  c.vocab_size = 8192;
  c.hidden_size = 512;
  c.num_hidden_layers = 8;
  c.intermediate_size = 1408;
  c.num_attention_heads = 8;
  c.q_lora_rank = 192;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  c.moe_intermediate_size = 352;
  c.max_position_embeddings = 4096;
  c.layer_is_moe.assign(8, true);
  c.layer_is_moe[0] = false;
  return c;
}

int32_t argmax(const float* row, int64_t v) {
  return int32_t(std::max_element(row, row + v) - row);
}

struct Result {
  double cached_tps = 0, naive_tps = 0;
  double rewritten = 0;  // DSA: tokens recomputed per decoded token (exact-tie re-selection)
};

Result run(Model& m, int64_t batch, int64_t prompt_len, int64_t steps, int64_t baseline_steps) {
  const ModelConfig& c = m.config();
  std::mt19937 rng(1);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(batch));
  for (auto& s : seqs)
    for (int64_t i = 0; i < prompt_len; ++i) s.push_back(int32_t(rng() % uint32_t(c.vocab_size)));
  // Cached: prefill every prompt, then time `steps` decode steps of the whole batch.
  KvCacheConfig kc{16, batch * ((prompt_len + steps + 15) / 16 + 1)};
  LatentKvCache cache(c, kc);
  std::vector<int64_t> handles;
  for (int64_t b = 0; b < batch; ++b) handles.push_back(cache.add_sequence());
  CachedForwardOptions o;
  o.last_logits_only = true;
  Tensor logits = m.forward_cached(cache, handles, seqs, o);
  int64_t v = logits.size(1);
  std::vector<std::vector<int32_t>> next(static_cast<size_t>(batch));
  auto t0 = Clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    for (int64_t b = 0; b < batch; ++b) next[size_t(b)] = {argmax(logits.f32() + b * v, v)};
    logits = m.forward_cached(cache, handles, next, o);
  }
  Result r;
  r.cached_tps = double(batch * steps) / since(t0);
  r.rewritten = double(cache.rewritten_tokens()) / double(batch * steps);
  // Naive: each new token recomputes every sequence in full (one packed uncached forward).
  ForwardOptions fo;
  fo.need_backward = false;
  fo.keep_logits = true;
  auto t1 = Clock::now();
  for (int64_t step = 0; step < baseline_steps; ++step) {
    Batch bt = Batch::next_token(seqs);
    Tensor full = m.forward(bt, fo).logits;
    for (int64_t b = 0; b < batch; ++b)
      seqs[size_t(b)].push_back(argmax(full.f32() + (bt.cu_seqlens[size_t(b) + 1] - 1) * v, v));
  }
  r.naive_tps = double(batch * baseline_steps) / since(t1);
  return r;
}

int main_impl(int argc, char** argv) {
  std::string which = "all";
  int64_t prompt_len = 32, steps = 32, baseline_steps = 4;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      SHOAL_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--config")
      which = value();
    else if (a == "--prompt")
      prompt_len = std::stoll(value());
    else if (a == "--steps")
      steps = std::stoll(value());
    else if (a == "--baseline-steps")
      baseline_steps = std::stoll(value());
    else
      SHOAL_FAIL(
          "usage: bench_decode [--config tiny|tiny_v32|50m|all] [--prompt N] [--steps N] "
          "[--baseline-steps N]; unknown '{}'",
          a);
  }
  std::vector<std::pair<std::string, ModelConfig>> configs;
  if (which == "tiny" || which == "all") configs.emplace_back("tiny", tiny_config());
  if (which == "tiny_v32" || which == "all") configs.emplace_back("tiny_v32", tiny_v32_config());
  if (which == "50m" || which == "all") configs.emplace_back("50m", config_50m());
  SHOAL_CHECK(!configs.empty(), "--config must be tiny, tiny_v32, 50m or all, got '{}'", which);
  std::printf("prompt %lld tokens, %lld decode steps (baseline %lld steps), greedy\n",
              (long long)prompt_len, (long long)steps, (long long)baseline_steps);
  for (auto& [name, cfg] : configs) {
    Model m(cfg, cpu_backend());
    m.init_random(1);
    int64_t params = 0;
    for (auto& p : m.params()) params += p.value.numel();
    LatentKvCache probe(cfg, {16, 1});
    int64_t want =
        (cfg.kv_lora_rank + cfg.qk_rope_head_dim + (cfg.is_v32() ? cfg.index_head_dim : 0)) *
        cfg.num_hidden_layers * 4;
    SHOAL_CHECK(probe.bytes_per_token() == want, "cache bytes per token {} != expected {}",
                probe.bytes_per_token(), want);
    std::printf(
        "\n%s (%.1fM parameters): cache %lld bytes/token = (%lld + %lld%s) x %lld layers x 4 "
        "[checked]\n",
        name.c_str(), double(params) / 1e6, (long long)probe.bytes_per_token(),
        (long long)cfg.kv_lora_rank, (long long)cfg.qk_rope_head_dim,
        cfg.is_v32() ? fmt::format(" + {}", cfg.index_head_dim).c_str() : "",
        (long long)cfg.num_hidden_layers);
    run(m, 1, prompt_len, 2, 1);  // warm-up (thread pools, first allocations)
    std::printf("  %6s %16s %16s %8s %s\n", "batch", "cached tok/s", "naive tok/s", "ratio",
                cfg.is_v32() ? "  recomputed tokens per decoded token (DSA ties)" : "");
    for (int64_t batch : {1, 16, 64}) {
      Result r = run(m, batch, prompt_len, steps, baseline_steps);
      std::printf("  %6lld %16.1f %16.1f %7.1fx", (long long)batch, r.cached_tps, r.naive_tps,
                  r.cached_tps / r.naive_tps);
      if (cfg.is_v32()) std::printf("  %.2f", r.rewritten);
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  try {
    return shoal::main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: %s\n", e.what());
    return 1;
  }
}
