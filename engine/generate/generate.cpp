// Sampling and the batch generation loop.
#include "engine/generate/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/generate/kv_cache.h"

namespace shoal {

void SamplingParams::validate() const {
  SHOAL_CHECK(greedy || (std::isfinite(temperature) && temperature > 0),
              "sampling: temperature must be > 0, got {}", temperature);
  SHOAL_CHECK(top_k >= 0, "sampling: top_k must be >= 0, got {}", top_k);
  SHOAL_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1], got {}", top_p);
  SHOAL_CHECK(min_p >= 0 && min_p < 1, "sampling: min_p must be in [0, 1), got {}", min_p);
  SHOAL_CHECK(max_tokens > 0, "sampling: max_tokens must be positive, got {}", max_tokens);
}

std::pair<int32_t, float> sample_token(const float* x, int64_t vocab, const SamplingParams& p,
                                       std::mt19937_64& rng) {
  if (p.greedy) {
    int64_t best = std::max_element(x, x + vocab) - x;
    double mx = x[best], z = 0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(double(x[i]) - mx);
    return {int32_t(best), float(-std::log(z))};
  }
  std::vector<double> logit(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) logit[size_t(i)] = double(x[i]) / p.temperature;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logit[size_t(a)] > logit[size_t(b)]; });
  double mx = logit[size_t(order[0])], z = 0;
  for (double v : logit) z += std::exp(v - mx);
  // Truncate: top-k, then top-p (smallest prefix with mass >= top_p), then min-p.
  size_t keep = p.top_k > 0 ? std::min<size_t>(size_t(p.top_k), order.size()) : order.size();
  if (p.top_p < 1) {
    double mass = 0;
    size_t i = 0;
    while (i < keep) {
      mass += std::exp(logit[size_t(order[i])] - mx) / z;
      ++i;
      if (mass >= p.top_p) break;
    }
    keep = i;
  }
  if (p.min_p > 0) {
    size_t i = 1;
    while (i < keep && std::exp(logit[size_t(order[i])] - mx) >= p.min_p) ++i;
    keep = i;
  }
  double zk = 0;
  for (size_t i = 0; i < keep; ++i) zk += std::exp(logit[size_t(order[i])] - mx);
  std::uniform_real_distribution<double> u(0.0, zk);
  double r = u(rng), acc = 0;
  size_t pick = keep - 1;
  for (size_t i = 0; i < keep; ++i) {
    acc += std::exp(logit[size_t(order[i])] - mx);
    if (r < acc) {
      pick = i;
      break;
    }
  }
  int32_t id = order[pick];
  return {id, float(logit[size_t(id)] - mx - std::log(zk))};
}

std::vector<Generation> generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                 const SamplingParams& params) {
  params.validate();
  const ModelConfig& c = model.config();
  SHOAL_CHECK(!prompts.empty(), "generate: no prompts");
  int64_t need_pages = 0;
  const int64_t page = 16;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SHOAL_CHECK(!prompts[i].empty(), "generate: prompt {} is empty", i);
    int64_t total = int64_t(prompts[i].size()) + params.max_tokens;
    SHOAL_CHECK(total <= c.max_position_embeddings,
                "generate: prompt {} ({} tokens) plus max_tokens {} exceeds the context of {}", i,
                prompts[i].size(), params.max_tokens, c.max_position_embeddings);
    for (int32_t id : prompts[i])
      SHOAL_CHECK(id >= 0 && id < c.vocab_size, "generate: prompt {} has token {} outside [0, {})",
                  i, id, c.vocab_size);
    need_pages += (total + page - 1) / page;
  }
  for (int32_t id : params.stop_ids)
    SHOAL_CHECK(id >= 0 && id < c.vocab_size, "generate: stop id {} outside [0, {})", id,
                c.vocab_size);
  LatentKvCache cache(c, {page, need_pages});
  std::vector<Generation> out(prompts.size());
  std::vector<std::mt19937_64> rng;
  std::vector<int64_t> handle;
  for (size_t i = 0; i < prompts.size(); ++i) {
    rng.emplace_back(params.seed + i);
    handle.push_back(cache.add_sequence());
  }
  std::vector<size_t> active(prompts.size());
  std::iota(active.begin(), active.end(), size_t(0));
  std::vector<std::vector<int32_t>> next(prompts.begin(), prompts.end());
  while (!active.empty()) {
    std::vector<int64_t> seqs;
    std::vector<std::vector<int32_t>> toks;
    for (size_t i : active) {
      seqs.push_back(handle[i]);
      toks.push_back(next[i]);
    }
    Tensor logits = model.forward_cached(cache, seqs, toks);
    int64_t row = -1, v = logits.size(1);
    std::vector<size_t> still;
    for (size_t k = 0; k < active.size(); ++k) {
      size_t i = active[k];
      row += int64_t(toks[k].size());
      auto [id, lp] = sample_token(logits.f32() + row * v, v, params, rng[i]);
      out[i].ids.push_back(id);
      out[i].logprobs.push_back(lp);
      bool stop =
          std::find(params.stop_ids.begin(), params.stop_ids.end(), id) != params.stop_ids.end();
      out[i].stopped = stop;
      if (stop || int64_t(out[i].ids.size()) >= params.max_tokens) {
        cache.release(handle[i]);
      } else {
        next[i] = {id};
        still.push_back(i);
      }
    }
    active = still;
  }
  return out;
}

}  // namespace shoal
