// RoPE frequencies and the cos/sin table, computed exactly as transformers does for DeepSeek-V3
// ("default" and "yarn" rope types), including YaRN's attention factor on cos/sin.
#pragma once

#include <vector>

#include "engine/model/config.h"
#include "engine/tensor.h"

namespace shoal {

struct RopeFrequencies {
  std::vector<double> inv_freq;    // qk_rope_head_dim / 2 entries
  double attention_scaling = 1.0;  // multiplies cos and sin
};

RopeFrequencies rope_frequencies(const ModelConfig& c);
// Host table [positions, d/2, 2] of (cos, sin) * attention_scaling for positions [0, positions).
Tensor rope_cos_sin_table(const ModelConfig& c, int64_t positions);

}  // namespace shoal
