// Sampling and the batch generation loop.
#include "engine/generate/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/backend_checks.h"
#include "engine/generate/scheduler.h"
#include "kernels/sampling/sampling.h"

namespace shoal {

void SamplingParams::validate() const {
  SHOAL_CHECK(greedy || (std::isfinite(temperature) && temperature > 0),
              "sampling: temperature must be > 0, got {}", temperature);
  SHOAL_CHECK(top_k >= 0, "sampling: top_k must be >= 0, got {}", top_k);
  SHOAL_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1], got {}", top_p);
  SHOAL_CHECK(min_p >= 0 && min_p < 1, "sampling: min_p must be in [0, 1), got {}", min_p);
  SHOAL_CHECK(max_tokens > 0, "sampling: max_tokens must be positive, got {}", max_tokens);
}

TokenDraw token_draw(int64_t row, const SamplingParams& p, std::mt19937_64& rng) {
  TokenDraw d;
  d.row = row;
  d.greedy = p.greedy;
  d.temperature = p.temperature;
  d.top_k = p.top_k;
  d.top_p = p.top_p;
  d.min_p = p.min_p;
  // The generator's draw that uniform_real_distribution<double>(0, zk) would scale by zk.
  if (!p.greedy) d.u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  return d;
}

std::pair<int32_t, float> sample_token(const float* x, int64_t vocab, const SamplingParams& p,
                                       std::mt19937_64& rng, std::vector<int32_t>* kept) {
  kernels::SampledToken t = kernels::sample_row_ref(
      x, vocab, backend_checks::sample_draw(token_draw(0, p, rng), vocab), kept);
  return {t.id, t.logprob};
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
