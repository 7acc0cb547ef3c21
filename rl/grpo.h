// GRPO with DeepSeek-V3.2's corrections (REFERENCE.md §5), every choice a config option. Defaults
// (also in docs/RL.md): mean-centred advantages (V3.2), symmetric clip 0.2, token-level
// aggregation, no KL term, V3.2's unbiased k3 when a KL term is on, off-policy sequence masking
// off, no group filtering, no overlong penalty.
//
// Per response token t of sequence i (rows of the packed batch):
//   rho = exp(logp - logp_old)     (logp_old: the probability recorded at sampling)
//   J   = min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) - kl_coef * KL_t
// and the loss is -J aggregated (token mean over the batch, per-sequence mean, or summed per
// sequence and divided by a constant length: the length-unbiased variant).
#pragma once

#include <vector>

#include "rl/objective.h"

namespace shoal::rl {

enum class AdvantageMode { mean_centred, mean_std, rloo };
enum class Aggregation { token_mean, sequence_mean, length_unbiased };
enum class KlEstimator { none, k1, k2, k3, k3_unbiased };

struct AdvantageConfig {
  AdvantageMode mode = AdvantageMode::mean_centred;
  double std_eps = 1e-6;      // mean_std: A = (r - mean) / (std + eps)
  bool filter_equal = false;  // drop groups whose rewards are all equal (no signal)
  // Overlong penalty (soft, DAPO): with max_len > 0, a response longer than max_len - buffer
  // loses (len - (max_len - buffer)) / buffer * penalty (penalty at max_len and beyond).
  int64_t overlong_max_len = 0, overlong_buffer = 0;
  double overlong_penalty = 1.0;
};

struct Advantages {
  std::vector<double> values;   // per sequence
  std::vector<uint8_t> keep;    // per sequence: 0 when its group was filtered out
  std::vector<double> rewards;  // after the overlong penalty
};

// rewards and group ids per sequence (sequences of one prompt share a group id); response
// lengths are used by the overlong penalty (may be empty when it is off). Errors on NaN rewards,
// empty or single-member groups (RLOO), and mismatched lengths.
Advantages compute_advantages(const std::vector<double>& rewards,
                              const std::vector<int64_t>& groups,
                              const std::vector<int64_t>& lengths, const AdvantageConfig& cfg);

struct GrpoConfig {
  double clip_low = 0.2, clip_high = 0.2;  // clip-higher: clip_high > clip_low (e.g. 0.28)
  Aggregation aggregation = Aggregation::token_mean;
  int64_t length_norm = 0;  // length_unbiased: the constant divisor (0 = longest response)
  KlEstimator kl = KlEstimator::none;
  double kl_coef = 0.0;
  // V3.2 off-policy sequence masking: drop sequence i when A_i < 0 and
  // mean_t (logp_old - logp) > delta.
  bool off_policy_mask = false;
  double off_policy_delta = 0.0;
};

struct GrpoInputs {
  Tensor logp;      // current policy, host f32 [N] (Model::forward with token_logprobs)
  Tensor logp_old;  // recorded at sampling
  Tensor logp_ref;  // frozen reference (needed when kl != none)
  Tensor entropy;   // optional, for the metric
  std::vector<double> advantages;  // per sequence
  std::vector<uint8_t> keep;       // per sequence (empty = all); 0 drops the sequence
};

// metrics: "ratio_mean", "clip_fraction", "kl_mean", "entropy_mean", "masked_fraction",
// "adv_mean", "adv_std", "adv_min", "adv_max", "tokens"
ObjectiveResult grpo_loss(const Batch& b, const GrpoInputs& in, const GrpoConfig& cfg);

}  // namespace shoal::rl
