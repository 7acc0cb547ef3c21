// Shared checks for the objectives.
#include "rl/objective.h"

#include <cmath>

namespace shoal::rl {

int64_t response_tokens(const Batch& b, size_t seq) {
  int64_t n = 0;
  for (int64_t t = b.cu_seqlens[seq]; t < b.cu_seqlens[seq + 1]; ++t)
    n += b.labels.i32()[t] != -100;
  return n;
}

void check_per_row(const Batch& b, const Tensor& t, const char* what) {
  SHOAL_CHECK(t.defined() && t.dtype() == DType::f32 && t.numel() == b.tokens() &&
                  t.is_contiguous() && t.device() == Device::cpu,
              "{}: expected host f32[{}] aligned with the batch, got {}", what, b.tokens(),
              t.describe());
  for (int64_t i = 0; i < b.tokens(); ++i)
    SHOAL_CHECK(b.labels.i32()[i] == -100 || std::isfinite(t.f32()[i]),
                "{}: row {} is {} (not finite)", what, i, t.f32()[i]);
}

}  // namespace shoal::rl
