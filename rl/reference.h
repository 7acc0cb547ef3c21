// Reference-model log-probs for DPO and GRPO's KL term: computed once per sample with the frozen
// reference model (forward only, no gradient) and cached by the sample's content, so repeated
// epochs over the same data never recompute them. Not thread-safe (one learner owns it).
#pragma once

#include <unordered_map>
#include <vector>

#include "engine/model/model.h"
#include "rl/batch.h"

namespace shoal::rl {

class ReferenceLogprobs {
 public:
  explicit ReferenceLogprobs(Model& reference) : ref_(&reference) {}
  // Per-row log-probs of `b` (packed from `samples`, in order) under the reference, aligned with
  // the batch like Model::forward's token_logprobs. Cached samples are not recomputed.
  Tensor token_logprobs(const std::vector<Sample>& samples, const Batch& b);
  size_t cached() const { return cache_.size(); }
  size_t computed_samples() const { return computed_; }

 private:
  static uint64_t key(const Sample& s);
  Model* ref_;
  std::unordered_map<uint64_t, std::vector<float>> cache_;  // per sample: one value per token
  size_t computed_ = 0;
};

}  // namespace shoal::rl
