// Token sampling (greedy, temperature, top-k, top-p, min-p; the log-probability under the
// distribution sampled from and, on request, the kept set) and generate(), a blocking batch call
// over the continuous-batching scheduler. Not here: the scheduler itself (scheduler.h).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/model/model.h"

namespace shoal {

struct SamplingParams {
  bool greedy = false;
  float temperature = 1.0f;
  int64_t top_k = 0;   // 0 = off
  float top_p = 1.0f;  // 1 = off
  float min_p = 0.0f;  // 0 = off; keep tokens with p >= min_p * p_max
  uint64_t seed = 0;
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_ids;
  void validate() const;  // throws naming the bad parameter
};

// Samples one id from logits [V] (kernels/sampling/sampling.h's reference); returns it and its
// log-probability under the sampling distribution (after temperature and truncation). Greedy
// returns the argmax and its log-prob under the model's own distribution (temperature 1, no
// truncation). kept (optional) receives the truncated set as sorted ids, or nothing when the whole
// vocabulary was kept (greedy included).
std::pair<int32_t, float> sample_token(const float* logits, int64_t vocab, const SamplingParams& p,
                                       std::mt19937_64& rng, std::vector<int32_t>* kept = nullptr);
// The same draw as Backend::sample_rows takes it: p for logits row `row`, with the one uniform
// sample_token would take from rng (none when greedy). sample_rows on any backend given
// token_draw(row, p, rng) picks what sample_token(row's logits, p, rng) picks (the CPU backend
// exactly; CUDA up to summation order, kernels/sampling/sampling.h).
TokenDraw token_draw(int64_t row, const SamplingParams& p, std::mt19937_64& rng);

struct Generation {
  std::vector<int32_t> ids;     // generated tokens (without the prompt)
  std::vector<float> logprobs;  // one per generated token
  bool stopped = false;         // hit a stop id (which is included in ids)
};

// Generates for each prompt through the scheduler, all admitted at once (the cache sizes itself
// from the requests). Request i samples with seed params.seed + i, so results do not depend on
// the batch. Throws on the first request that fails.
std::vector<Generation> generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                 const SamplingParams& params);

}  // namespace shoal
