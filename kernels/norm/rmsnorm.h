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

// Backward (rmsnorm_backward.cu; the CPU backend's rmsnorm_backward is its reference):
// dx = rstd * (dy * w - x * rstd * mean(dy * w * x * rstd)) overwritten, dw += sum_rows(dy * x *
// rstd). dw is reduced deterministically: per-chunk column sums into `scratch`
// (norm_dw_scratch_floats(rows, dim) floats), then one pass over the chunks.
struct RmsNormBackwardParams {
  const float* dy = nullptr;    // [rows, dim], row stride dy_stride
  const float* x = nullptr;     // [rows, dim], row stride x_stride
  const float* w = nullptr;     // [dim]
  const float* rstd = nullptr;  // [rows]
  float* dx = nullptr;          // [rows, dim], row stride dx_stride
  float* dw = nullptr;          // [dim], accumulated
  float* scratch = nullptr;
  int64_t rows = 0, dim = 0;
  int64_t dy_stride = 0, x_stride = 0, dx_stride = 0;
};
int64_t norm_dw_chunks(int64_t rows);
inline int64_t norm_dw_scratch_floats(int64_t rows, int64_t dim) {
  return norm_dw_chunks(rows) * dim;
}
#ifdef SHOAL_HAVE_CUDA
int rmsnorm_backward_cuda(const RmsNormBackwardParams& p, void* stream);
#endif

}  // namespace shoal::kernels
