// Direct Preference Optimisation over pairs packed as [chosen_0, rejected_0, chosen_1, ...]:
// h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) with sequence log-probs summed
// over response tokens;
//   sigmoid (DPO):   L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)  (eps = label
//                    smoothing, 0 by default)
//   ipo:             L = (h - 1 / (2 beta))^2
// averaged over pairs. Reference sequence log-probs are computed once (frozen model, no
// gradient) and cached by the caller; sequence_logprobs gives them.
#pragma once

#include <vector>

#include "rl/objective.h"

namespace shoal::rl {

enum class DpoVariant { sigmoid, ipo };

struct DpoConfig {
  double beta = 0.1;
  DpoVariant variant = DpoVariant::sigmoid;
  double label_smoothing = 0.0;  // sigmoid variant only, in [0, 0.5)
};

// Sum of log p over each sequence's response rows.
std::vector<double> sequence_logprobs(const Batch& b, const Tensor& logp);

// ref_seq_logp: one per sequence of the batch (chosen, rejected, ...). metrics: "pairs",
// "accuracy" (share with h > 0), "margin" (mean h), "chosen_reward", "rejected_reward" (mean
// beta * (log pi - log ref)).
ObjectiveResult dpo_loss(const Batch& b, const Tensor& logp,
                         const std::vector<double>& ref_seq_logp, const DpoConfig& cfg);

}  // namespace shoal::rl
