// Random host tensors for the engine's op tests.
#pragma once

#include <random>

#include "engine/tensor.h"

namespace shoal::testing {

// f32 host tensor of shape s with entries drawn from N(0, scale^2), in index order.
inline Tensor randn(const Shape& s, std::mt19937& rng, float scale = 1.0f) {
  Tensor t = Tensor::empty(s, DType::f32);
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = nd(rng);
  return t;
}

}  // namespace shoal::testing
