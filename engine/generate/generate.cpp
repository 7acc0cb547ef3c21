// Sampling and the batch generation loop.
#include "engine/generate/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/generate/scheduler.h"

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
                                       std::mt19937_64& rng, std::vector<int32_t>* kept) {
  if (kept) kept->clear();
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
  if (kept && keep < order.size()) {
    kept->assign(order.begin(), order.begin() + int64_t(keep));
    std::sort(kept->begin(), kept->end());
  }
  return {id, float(logit[size_t(id)] - mx - std::log(zk))};
}

std::vector<Generation> generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                 const SamplingParams& params) {
  params.validate();
  SHOAL_CHECK(!prompts.empty(), "generate: no prompts");
  SchedulerConfig sc;
  sc.cache.page_tokens = 16;
  sc.cache.pages = 0;
  sc.max_sequences = int64_t(prompts.size());
  sc.max_batch_tokens = int64_t(prompts.size());
  for (auto& p : prompts) {
    int64_t total = int64_t(p.size()) + params.max_tokens;
    sc.cache.pages += (total + sc.cache.page_tokens - 1) / sc.cache.page_tokens;
    sc.max_batch_tokens += int64_t(p.size());
  }
  Scheduler sched(model, sc);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r;
    r.prompt = prompts[i];
    r.sampling = params;
    r.sampling.seed = params.seed + i;
    handles.push_back(sched.submit(std::move(r)));
  }
  sched.run_until_idle();
  std::vector<Generation> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Completion c = handles[i]->wait()[0];
    SHOAL_CHECK(c.finish != FinishReason::error, "generate: prompt {}: {}", i, c.error);
    Generation g;
    g.ids = c.ids();
    g.logprobs = c.logprobs();
    g.stopped = c.finish == FinishReason::stop_id;
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace shoal
