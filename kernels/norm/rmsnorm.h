// RMSNorm over rows: y = w * x / sqrt(mean(x^2) + eps), f32, with the per-row reciprocal RMS saved
// for the backward pass. A plain C++ reference and (with CUDA) the GPU kernel, same parameters.
#pragma once

#include <cstdint>

namespace shoal::kernels {

struct RmsNormParams {
  const float* x = nullptr;  // [rows, dim], row stride x_stride (elements)
  const float* w = nullptr;  // [dim]
  float* y = nullptr;        // [rows, dim], row stride y_stride
  float* rstd = nullptr;     // [rows] 1 / sqrt(mean(x^2) + eps); may be null
  int64_t rows = 0, dim = 0;
  int64_t x_stride = 0, y_stride = 0;
  float eps = 1e-6f;
};

// Reference: host pointers, accumulates the sum of squares in double.
void rmsnorm_forward_ref(const RmsNormParams& p);

#ifdef SHOAL_HAVE_CUDA
// GPU: device pointers; asynchronous on `stream` (a cudaStream_t, passed as void* so this header
// stays free of CUDA includes). Returns a CUDA error code (0 = success).
int rmsnorm_forward_cuda(const RmsNormParams& p, void* stream);
#endif

}  // namespace shoal::kernels
