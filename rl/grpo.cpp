// GRPO advantages and loss with per-token gradients w.r.t. the current log-probs.
#include "rl/grpo.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace shoal::rl {

Advantages compute_advantages(const std::vector<double>& rewards,
                              const std::vector<int64_t>& groups,
                              const std::vector<int64_t>& lengths, const AdvantageConfig& cfg) {
  size_t n = rewards.size();
  SHOAL_CHECK(n > 0, "advantages: no rewards");
  SHOAL_CHECK(groups.size() == n, "advantages: {} group ids for {} rewards", groups.size(), n);
  bool overlong = cfg.overlong_max_len > 0;
  SHOAL_CHECK(!overlong || lengths.size() == n, "advantages: {} lengths for {} rewards",
              lengths.size(), n);
  SHOAL_CHECK(!overlong || (cfg.overlong_buffer > 0 && cfg.overlong_buffer <= cfg.overlong_max_len),
              "advantages: overlong buffer {} must be in (0, max_len {}]", cfg.overlong_buffer,
              cfg.overlong_max_len);
  Advantages a;
  a.rewards = rewards;
  for (size_t i = 0; i < n; ++i) {
    SHOAL_CHECK(std::isfinite(rewards[i]), "advantages: reward {} is {}", i, rewards[i]);
    if (!overlong) continue;
    int64_t start = cfg.overlong_max_len - cfg.overlong_buffer;
    if (lengths[i] > start)
      a.rewards[i] -= cfg.overlong_penalty *
                      std::min(1.0, double(lengths[i] - start) / double(cfg.overlong_buffer));
  }
  std::map<int64_t, std::vector<size_t>> members;
  for (size_t i = 0; i < n; ++i) members[groups[i]].push_back(i);
  a.values.assign(n, 0.0);
  a.keep.assign(n, 1);
  for (auto& [g, idx] : members) {
    double mean = 0;
    for (size_t i : idx) mean += a.rewards[i];
    mean /= double(idx.size());
    double var = 0;
    for (size_t i : idx) var += (a.rewards[i] - mean) * (a.rewards[i] - mean);
    double sd = std::sqrt(var / double(idx.size()));
    bool all_equal = std::all_of(idx.begin(), idx.end(),
                                 [&](size_t i) { return a.rewards[i] == a.rewards[idx[0]]; });
    if (cfg.mode == AdvantageMode::rloo)
      SHOAL_CHECK(idx.size() >= 2, "advantages: group {} has one member; RLOO needs two or more",
                  g);
    for (size_t i : idx) {
      double r = a.rewards[i];
      switch (cfg.mode) {
        case AdvantageMode::mean_centred:
          a.values[i] = r - mean;
          break;
        case AdvantageMode::mean_std:
          a.values[i] = (r - mean) / (sd + cfg.std_eps);
          break;
        case AdvantageMode::rloo:
          a.values[i] = r - (mean * double(idx.size()) - r) / double(idx.size() - 1);
          break;
      }
      if (cfg.filter_equal && all_equal) a.keep[i] = 0;
    }
  }
  return a;
}

ObjectiveResult grpo_loss(const Batch& b, const GrpoInputs& in, const GrpoConfig& cfg) {
  size_t nseq = b.cu_seqlens.size() - 1;
  check_per_row(b, in.logp, "grpo_loss logp");
  check_per_row(b, in.logp_old, "grpo_loss logp_old");
  bool kl = cfg.kl != KlEstimator::none && cfg.kl_coef != 0.0;
  if (kl) check_per_row(b, in.logp_ref, "grpo_loss logp_ref");
  if (in.entropy.defined()) check_per_row(b, in.entropy, "grpo_loss entropy");
  SHOAL_CHECK(in.advantages.size() == nseq, "grpo_loss: {} advantages for {} sequences",
              in.advantages.size(), nseq);
  SHOAL_CHECK(in.keep.empty() || in.keep.size() == nseq, "grpo_loss: keep has {} entries for {}",
              in.keep.size(), nseq);
  SHOAL_CHECK(cfg.clip_low >= 0 && cfg.clip_low < 1 && cfg.clip_high >= 0,
              "grpo_loss: clip range [1 - {}, 1 + {}] is invalid", cfg.clip_low, cfg.clip_high);
  for (size_t s = 0; s < nseq; ++s)
    SHOAL_CHECK(std::isfinite(in.advantages[s]), "grpo_loss: advantage {} is {}", s,
                in.advantages[s]);

  const float* lp = in.logp.f32();
  const float* lo = in.logp_old.f32();
  const float* lr = kl ? in.logp_ref.f32() : nullptr;
  std::vector<int64_t> len(nseq);
  std::vector<uint8_t> active(nseq, 1);
  int64_t total = 0, longest = 0, seqs_with_tokens = 0, masked = 0;
  for (size_t s = 0; s < nseq; ++s) {
    len[s] = response_tokens(b, s);
    total += len[s];
    longest = std::max(longest, len[s]);
    seqs_with_tokens += len[s] > 0;
    if (!in.keep.empty() && !in.keep[s]) active[s] = 0;
    if (active[s] && cfg.off_policy_mask && in.advantages[s] < 0 && len[s] > 0) {
      double mean_gap = 0;
      for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
        if (b.labels.i32()[t] != -100) mean_gap += double(lo[t]) - double(lp[t]);
      if (mean_gap / double(len[s]) > cfg.off_policy_delta) active[s] = 0;
    }
    masked += !active[s];
  }
  SHOAL_CHECK(total > 0, "grpo_loss: the batch has no response tokens");
  double norm_len = cfg.length_norm > 0 ? double(cfg.length_norm) : double(longest);

  ObjectiveResult r;
  r.dlogp = Tensor::zeros({b.tokens()}, DType::f32);
  double ratio_sum = 0, clipped = 0, kl_sum = 0, ent_sum = 0;
  for (size_t s = 0; s < nseq; ++s) {
    if (len[s] == 0) continue;
    double w;  // weight of one token's J in the loss
    switch (cfg.aggregation) {
      case Aggregation::token_mean:
        w = 1.0 / double(total);
        break;
      case Aggregation::sequence_mean:
        w = 1.0 / (double(len[s]) * double(seqs_with_tokens));
        break;
      default:
        w = 1.0 / (norm_len * double(seqs_with_tokens));
        break;
    }
    double a = in.advantages[s];
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t) {
      if (b.labels.i32()[t] == -100) continue;
      double rho = std::exp(double(lp[t]) - double(lo[t]));
      ratio_sum += rho;
      bool clip = (a >= 0 && rho > 1 + cfg.clip_high) || (a < 0 && rho < 1 - cfg.clip_low);
      clipped += clip;
      if (in.entropy.defined()) ent_sum += in.entropy.f32()[t];
      double j = std::min(rho * a, std::clamp(rho, 1 - cfg.clip_low, 1 + cfg.clip_high) * a);
      double dj = clip ? 0.0 : rho * a;  // d/dlogp of the min's active branch
      if (kl) {
        double d = double(lr[t]) - double(lp[t]);  // log(ref / pi)
        double k = 0, dk = 0;
        switch (cfg.kl) {
          case KlEstimator::k1:
            k = -d, dk = 1.0;
            break;
          case KlEstimator::k2:
            k = 0.5 * d * d, dk = -d;
            break;
          case KlEstimator::k3:
            k = std::exp(d) - d - 1, dk = 1 - std::exp(d);
            break;
          case KlEstimator::k3_unbiased: {
            // (pi / pi_old) * k3; its gradient is w * log(pi / ref): unbiased for KL(pi || ref).
            double iw = rho;
            k = iw * (std::exp(d) - d - 1);
            dk = iw * (-d);
            break;
          }
          default:
            break;
        }
        kl_sum += k;
        j -= cfg.kl_coef * k;
        dj -= cfg.kl_coef * dk;
      }
      if (!active[s]) continue;
      r.loss -= w * j;
      r.dlogp.f32()[t] = float(-w * dj);
    }
  }
  double am = 0, a2 = 0, amin = INFINITY, amax = -INFINITY;
  for (double a : in.advantages) {
    am += a;
    a2 += a * a;
    amin = std::min(amin, a);
    amax = std::max(amax, a);
  }
  am /= double(nseq);
  r.metrics["ratio_mean"] = ratio_sum / double(total);
  r.metrics["clip_fraction"] = clipped / double(total);
  r.metrics["kl_mean"] = kl_sum / double(total);
  r.metrics["entropy_mean"] = in.entropy.defined() ? ent_sum / double(total) : 0.0;
  r.metrics["masked_fraction"] = double(masked) / double(nseq);
  r.metrics["adv_mean"] = am;
  r.metrics["adv_std"] = std::sqrt(std::max(0.0, a2 / double(nseq) - am * am));
  r.metrics["adv_min"] = amin;
  r.metrics["adv_max"] = amax;
  r.metrics["tokens"] = double(total);
  return r;
}

}  // namespace shoal::rl
