// One AdamW step with decoupled weight decay over n contiguous f32 parameters, the moments in f32.
// The bias corrections are computed on the host exactly as the CPU backend computes them, so both
// backends round alike; the CPU backend's adamw is the reference. Not multi-tensor (one launch per
// parameter); the multi-tensor step below is what the optimizer uses.
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

// The multi-tensor step (Backend::adamw_multi): every parameter of the optimizer in one launch,
// each tensor cut into chunks of kAdamWChunk elements, one block per chunk. The gradient clipping
// factor is read from device memory (grad_clip_cuda writes it), so clipping needs no host round
// trip; when a parameter has a bf16 copy (the CUDA backend's GEMM operand), the new value is also
// written there, rounded to nearest even, in the same pass.
constexpr int64_t kAdamWChunk = 8192;

struct AdamWTensorPtrs {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  uint16_t* shadow = nullptr;  // bf16 bits of param to refresh; nullptr: none
  int64_t n = 0;
  float decay = 1.0f;  // 1 - lr * weight_decay (per tensor: none on 1-D parameters)
};

struct AdamWMultiParams {
  const AdamWTensorPtrs* tensors = nullptr;  // device array of `count` entries
  const int64_t* chunk_start = nullptr;      // device array [count + 1]: each tensor's first chunk
  int count = 0;
  int64_t chunks = 0;  // chunk_start[count]: the number of blocks
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float step = 0.0f;             // lr / (1 - beta1^t)
  float inv_sqrt_bc2 = 1.0f;     // 1 / sqrt(1 - beta2^t)
  const double* clip = nullptr;  // device [norm, factor]; the gradient is multiplied by
                                 // float(factor); nullptr: factor 1
};
int adamw_multi_cuda(const AdamWMultiParams& p, void* stream);

// Global-norm clipping on the device over the `grad` pointers of the same tensor table:
// clip[0] = sqrt(sum of squares) (f64 sums, a fixed order: per chunk, then the chunks in order),
// clip[1] = float(max_norm / (norm + 1e-6)) when max_norm > 0 and norm > max_norm, else 1 (as
// ParamSet::clip_grad_norm). partials: device scratch of max(chunks, 1) doubles.
int grad_clip_cuda(const AdamWMultiParams& tensors, double max_norm, double* partials, double* clip,
                   void* stream);

}  // namespace shoal::kernels
