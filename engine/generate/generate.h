// Token sampling and a simple generation loop over the latent KV cache: all requests run as one
// batch (prefill together, then one decode step per token for every unfinished request). Records
// each token's log-probability under the distribution it was sampled from. Not here yet: the
// continuous-batching scheduler, prefix sharing, streaming and sampling-mask/routing records
// (the generation issue).
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

// Samples one id from logits [V]; returns it and its log-probability under the sampling
// distribution (after temperature and truncation). Greedy returns the argmax and its log-prob
// under the model's own distribution (temperature 1, no truncation).
std::pair<int32_t, float> sample_token(const float* logits, int64_t vocab, const SamplingParams& p,
                                       std::mt19937_64& rng);

struct Generation {
  std::vector<int32_t> ids;     // generated tokens (without the prompt)
  std::vector<float> logprobs;  // one per generated token
  bool stopped = false;         // hit a stop id (which is included in ids)
};

// Generates for each prompt (a deepseek_v3 model; the cache sizes itself from the requests).
// Request i samples with seed params.seed + i, so results do not depend on the batch.
std::vector<Generation> generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                 const SamplingParams& params);

}  // namespace shoal
