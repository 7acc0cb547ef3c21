// Supervised fine-tuning: masked token cross-entropy, -mean log p over model-produced tokens,
// averaged per token over the batch or per sequence (each sequence's mean, then the mean over
// sequences).
#pragma once

#include "rl/objective.h"

namespace shoal::rl {

enum class Averaging { per_token, per_sequence };

// metrics: "tokens", "sequences"
ObjectiveResult sft_loss(const Batch& b, const Tensor& logp, Averaging avg = Averaging::per_token);

}  // namespace shoal::rl
