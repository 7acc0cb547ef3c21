// YaRN as in transformers' _compute_yarn_parameters: blend interpolated (freq/factor) and
// extrapolated frequencies with a linear ramp over the correction range found from beta_fast and
// beta_slow; the attention factor is mscale(factor, mscale)/mscale(factor, mscale_all_dim).
#include "engine/model/rope_table.h"

#include <algorithm>
#include <cmath>

namespace shoal {
namespace {
double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}
double correction_dim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}
}  // namespace

RopeFrequencies rope_frequencies(const ModelConfig& c) {
  const RopeConfig& r = c.rope;
  int64_t dim = c.qk_rope_head_dim;
  RopeFrequencies out;
  out.inv_freq.resize(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    // transformers computes base ** (arange(0, dim, 2).float() / dim) in float32.
    float expo = float(2 * i) / float(dim);
    out.inv_freq[size_t(i)] = 1.0 / double(std::pow(float(r.theta), expo));
  }
  if (r.type == "default") return out;

  double factor = r.factor;
  double orig = double(r.original_max_position_embeddings ? r.original_max_position_embeddings
                                                          : c.max_position_embeddings);
  if (r.attention_factor) {
    out.attention_scaling = *r.attention_factor;
  } else if (r.mscale != 0.0 && r.mscale_all_dim != 0.0) {
    out.attention_scaling = yarn_mscale(factor, r.mscale) / yarn_mscale(factor, r.mscale_all_dim);
  } else {
    out.attention_scaling = yarn_mscale(factor, 1.0);
  }
  double low = correction_dim(r.beta_fast, double(dim), r.theta, orig);
  double high = correction_dim(r.beta_slow, double(dim), r.theta, orig);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < dim / 2; ++i) {
    double extrap = out.inv_freq[size_t(i)];
    double interp = extrap / factor;
    double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    double extrap_factor = 1.0 - ramp;
    out.inv_freq[size_t(i)] = interp * (1.0 - extrap_factor) + extrap * extrap_factor;
  }
  return out;
}

Tensor rope_cos_sin_table(const ModelConfig& c, int64_t positions) {
  RopeFrequencies f = rope_frequencies(c);
  int64_t half = int64_t(f.inv_freq.size());
  Tensor t = Tensor::empty({positions, half, 2}, DType::f32);
  float* p = t.f32();
  for (int64_t pos = 0; pos < positions; ++pos)
    for (int64_t i = 0; i < half; ++i) {
      double a = double(pos) * f.inv_freq[size_t(i)];
      p[(pos * half + i) * 2] = float(std::cos(a) * f.attention_scaling);
      p[(pos * half + i) * 2 + 1] = float(std::sin(a) * f.attention_scaling);
    }
  return t;
}

}  // namespace shoal
