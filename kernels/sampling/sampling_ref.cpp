// The sampling reference (sampling.h): sort the row, truncate, walk the kept prefix in f64.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/sampling/sampling.h"

namespace shoal::kernels {

int mass_bits(int64_t vocab) {
  int log2v = 0;
  while ((int64_t(1) << log2v) < vocab) ++log2v;
  // Every mass is <= 2^bits, the row's total <= vocab * 2^bits < 2^62; and a mass < 2^46 lets the
  // kernel sum 32 of them in two 32-bit halves (sampling.cu).
  return std::min(45, 62 - log2v);
}

SampledToken sample_row_ref(const float* x, int64_t vocab, const SampleDraw& d,
                            std::vector<int32_t>* kept) {
  if (kept) kept->clear();
  if (d.greedy) {
    int64_t best = std::max_element(x, x + vocab) - x;
    double mx = x[best], z = 0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(double(x[i]) - mx);
    return {int32_t(best), float(-std::log(z))};
  }
  std::vector<double> logit(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) logit[size_t(i)] = double(x[i]) / d.temperature;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logit[size_t(a)] > logit[size_t(b)]; });
  double mx = logit[size_t(order[0])], z = 0;
  for (double v : logit) z += std::exp(v - mx);
  // Truncate: top-k, then top-p (smallest prefix with mass >= top_p), then min-p.
  size_t keep = d.top_k > 0 ? std::min<size_t>(size_t(d.top_k), order.size()) : order.size();
  if (d.top_p < 1) {
    double mass = 0;
    size_t i = 0;
    while (i < keep) {
      mass += std::exp(logit[size_t(order[i])] - mx) / z;
      ++i;
      if (mass >= d.top_p) break;
    }
    keep = i;
  }
  if (d.min_p > 0) {
    size_t i = 1;
    while (i < keep && std::exp(logit[size_t(order[i])] - mx) >= d.min_p) ++i;
    keep = i;
  }
  double zk = 0;
  for (size_t i = 0; i < keep; ++i) zk += std::exp(logit[size_t(order[i])] - mx);
  // r = u * zk is exactly what std::uniform_real_distribution<double>(0, zk) returns for the
  // generator state that gave u = uniform_real_distribution<double>(0, 1).
  double r = d.u * zk, acc = 0;
  size_t pick = keep - 1;
  for (size_t i = 0; i < keep; ++i) {
    acc += std::exp(logit[size_t(order[i])] - mx);
    if (r < acc) {
      pick = i;
      break;
    }
  }
  int32_t id = order[pick];
  if (kept && keep < order.size()) {
    kept->assign(order.begin(), order.begin() + int64_t(keep));
    std::sort(kept->begin(), kept->end());
  }
  return {id, float(logit[size_t(id)] - mx - std::log(zk))};
}

}  // namespace shoal::kernels
