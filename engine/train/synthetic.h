// Synthetic sequence tasks for training small models from scratch (smoke tests, the quick start):
// "<bos> a1 .. ak <sep> f(a1 .. ak) <eos>" with f = copy, reverse or sort, over a small alphabet.
// Only answer tokens carry a loss. Not agentic tasks (those are tasks/, in chat messages).
#pragma once

#include <random>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace shoal {

struct SyntheticTask {
  std::string kind = "reverse";  // copy | reverse | sort
  int64_t alphabet = 16;         // symbol tokens are ids [4, 4 + alphabet)
  int64_t min_len = 4, max_len = 12;
  static constexpr int32_t kBos = 0, kEos = 1, kPad = 2, kSep = 3;
  int64_t vocab() const { return 4 + alphabet; }
  void validate() const;  // throws on an unknown kind or bad lengths

  struct Example {
    std::vector<int32_t> tokens;
    int64_t answer_start = 0;  // index of the first answer token (after <sep>)
  };
  Example sample(std::mt19937_64& rng) const;
  // A batch of examples with labels only on answer tokens and <eos>.
  Batch batch(std::mt19937_64& rng, int64_t sequences) const;
};

// Teacher-forced exact-match accuracy: the share of examples whose every answer token is the argmax
// of the model's prediction at the previous position.
double synthetic_accuracy(Model& model, const SyntheticTask& task, std::mt19937_64& rng,
                          int64_t examples);

}  // namespace shoal
