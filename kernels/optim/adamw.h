// One AdamW step with decoupled weight decay over n contiguous f32 parameters, the moments in f32.
// The bias corrections are computed on the host exactly as the CPU backend computes them, so both
// backends round alike; the CPU backend's adamw is the reference. Not multi-tensor (one launch per
// parameter) and no master-weight / bf16 handling yet.
#pragma once

#include <cstdint>

namespace shoal::kernels {

struct AdamWKernelParams {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float decay = 1.0f;         // 1 - lr * weight_decay
  float step = 0.0f;          // lr / (1 - beta1^t)
  float inv_sqrt_bc2 = 1.0f;  // 1 / sqrt(1 - beta2^t)
};
int adamw_cuda(const AdamWKernelParams& p, void* stream);

}  // namespace shoal::kernels
