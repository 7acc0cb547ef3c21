// Cached reference log-probs: misses are packed into one forward over the reference model.
#include "rl/reference.h"

#include <algorithm>

namespace shoal::rl {

uint64_t ReferenceLogprobs::key(const Sample& s) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over tokens and mask
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ULL;
    }
  };
  mix(s.tokens.size());
  for (size_t i = 0; i < s.tokens.size(); ++i)
    mix(uint64_t(uint32_t(s.tokens[i])) << 1 | s.loss_mask[i]);
  return h;
}

Tensor ReferenceLogprobs::token_logprobs(const std::vector<Sample>& samples, const Batch& b) {
  SHOAL_CHECK(samples.size() + 1 == b.cu_seqlens.size(),
              "reference log-probs: {} samples for a batch of {} sequences", samples.size(),
              b.cu_seqlens.size() - 1);
  std::vector<Sample> missing;
  std::vector<uint64_t> missing_keys;
  for (const Sample& s : samples) {
    uint64_t k = key(s);
    if (!cache_.count(k) &&
        std::find(missing_keys.begin(), missing_keys.end(), k) == missing_keys.end()) {
      missing.push_back(s);
      missing_keys.push_back(k);
    }
  }
  if (!missing.empty()) {
    Batch mb = pack(missing);
    ForwardOptions o;
    o.token_logprobs = true;
    o.need_backward = false;
    Tensor lp = ref_->forward(mb, o).token_logprobs;
    for (size_t i = 0; i < missing.size(); ++i)
      cache_[missing_keys[i]] =
          std::vector<float>(lp.f32() + mb.cu_seqlens[i], lp.f32() + mb.cu_seqlens[i + 1]);
    computed_ += missing.size();
  }
  Tensor out = Tensor::zeros({b.tokens()}, DType::f32);
  for (size_t i = 0; i < samples.size(); ++i) {
    const std::vector<float>& v = cache_.at(key(samples[i]));
    SHOAL_CHECK(int64_t(v.size()) == b.cu_seqlens[i + 1] - b.cu_seqlens[i],
                "reference log-probs: sample {} does not match its batch sequence", i);
    std::copy(v.begin(), v.end(), out.f32() + b.cu_seqlens[i]);
  }
  return out;
}

}  // namespace shoal::rl
