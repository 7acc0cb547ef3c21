// DPO / IPO losses and their per-token gradients.
#include "rl/dpo.h"

#include <cmath>

namespace shoal::rl {
namespace {
double log_sigmoid(double x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}
double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
}  // namespace

std::vector<double> sequence_logprobs(const Batch& b, const Tensor& logp) {
  check_per_row(b, logp, "sequence_logprobs logp");
  std::vector<double> out;
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    double sum = 0;
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      if (b.labels.i32()[t] != -100) sum += logp.f32()[t];
    out.push_back(sum);
  }
  return out;
}

ObjectiveResult dpo_loss(const Batch& b, const Tensor& logp, const std::vector<double>& ref,
                         const DpoConfig& cfg) {
  size_t nseq = b.cu_seqlens.size() - 1;
  SHOAL_CHECK(nseq > 0 && nseq % 2 == 0,
              "dpo_loss: the batch must hold (chosen, rejected) pairs, got {} sequences", nseq);
  SHOAL_CHECK(ref.size() == nseq, "dpo_loss: {} reference log-probs for {} sequences", ref.size(),
              nseq);
  SHOAL_CHECK(cfg.beta > 0, "dpo_loss: beta must be positive, got {}", cfg.beta);
  SHOAL_CHECK(cfg.label_smoothing >= 0 && cfg.label_smoothing < 0.5,
              "dpo_loss: label_smoothing must be in [0, 0.5), got {}", cfg.label_smoothing);
  for (size_t s = 0; s < nseq; ++s) {
    SHOAL_CHECK(std::isfinite(ref[s]), "dpo_loss: reference log-prob {} is {}", s, ref[s]);
    SHOAL_CHECK(response_tokens(b, s) > 0, "dpo_loss: sequence {} has no response tokens", s);
  }
  std::vector<double> pi = sequence_logprobs(b, logp);
  ObjectiveResult r;
  r.dlogp = Tensor::zeros({b.tokens()}, DType::f32);
  size_t pairs = nseq / 2;
  double acc = 0, margin = 0, cr = 0, rr = 0;
  for (size_t p = 0; p < pairs; ++p) {
    size_t c = 2 * p, l = 2 * p + 1;
    double h = (pi[c] - ref[c]) - (pi[l] - ref[l]);
    double loss, dh;  // dL/dh
    if (cfg.variant == DpoVariant::ipo) {
      double e = h - 1.0 / (2.0 * cfg.beta);
      loss = e * e;
      dh = 2.0 * e;
    } else {
      double eps = cfg.label_smoothing, bh = cfg.beta * h;
      loss = -(1 - eps) * log_sigmoid(bh) - eps * log_sigmoid(-bh);
      dh = -cfg.beta * ((1 - eps) * sigmoid(-bh) - eps * sigmoid(bh));
    }
    r.loss += loss / double(pairs);
    acc += h > 0;
    margin += h;
    cr += cfg.beta * (pi[c] - ref[c]);
    rr += cfg.beta * (pi[l] - ref[l]);
    for (auto [seq, sign] : {std::pair{c, 1.0}, std::pair{l, -1.0}})
      for (int64_t t = b.cu_seqlens[seq]; t < b.cu_seqlens[seq + 1]; ++t)
        if (b.labels.i32()[t] != -100) r.dlogp.f32()[t] = float(sign * dh / double(pairs));
  }
  r.metrics["pairs"] = double(pairs);
  r.metrics["accuracy"] = acc / double(pairs);
  r.metrics["margin"] = margin / double(pairs);
  r.metrics["chosen_reward"] = cr / double(pairs);
  r.metrics["rejected_reward"] = rr / double(pairs);
  return r;
}

}  // namespace shoal::rl
