// SFT loss and its per-token gradient.
#include "rl/sft.h"

namespace shoal::rl {

ObjectiveResult sft_loss(const Batch& b, const Tensor& logp, Averaging avg) {
  check_per_row(b, logp, "sft_loss logp");
  ObjectiveResult r;
  r.dlogp = Tensor::zeros({b.tokens()}, DType::f32);
  int64_t total = 0, seqs = 0;
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    int64_t n = response_tokens(b, s);
    total += n;
    seqs += n > 0;
  }
  SHOAL_CHECK(total > 0, "sft_loss: the batch has no model-produced tokens");
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    int64_t n = response_tokens(b, s);
    if (n == 0) continue;
    double w = avg == Averaging::per_token ? 1.0 / double(total) : 1.0 / double(n * seqs);
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t) {
      if (b.labels.i32()[t] == -100) continue;
      r.loss -= w * logp.f32()[t];
      r.dlogp.f32()[t] = float(-w);
    }
  }
  r.metrics["tokens"] = double(total);
  r.metrics["sequences"] = double(seqs);
  return r;
}

}  // namespace shoal::rl
