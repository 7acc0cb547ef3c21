// LayerNorm with bias over rows (the DSA indexer's k_norm): y = (x - mean) * rstd * w + b with
// mean and rstd saved per row, and its backward (dx overwritten, dw/db accumulated with the
// deterministic chunked column reduction of norm_common.cuh). f32; the CPU backend's
// layernorm_forward/backward are the reference. Not fused with anything.
#pragma once

#include <cstdint>

namespace shoal::kernels {

struct LayerNormParams {
  const float* x = nullptr;  // [rows, dim], row stride x_stride
  const float* w = nullptr;  // [dim]
  const float* b = nullptr;  // [dim] (forward)
  float* y = nullptr;        // [rows, dim] (forward), row stride y_stride
  float* mean = nullptr;     // [rows] (written by the forward, read by the backward)
  float* rstd = nullptr;     // [rows]
  // backward
  const float* dy = nullptr;  // row stride y_stride
  float* dx = nullptr;        // row stride dx_stride
  float* dw = nullptr;
  float* db = nullptr;
  float* scratch = nullptr;  // 2 * norm_dw_scratch_floats(rows, dim) floats
  int64_t rows = 0, dim = 0;
  int64_t x_stride = 0, y_stride = 0, dx_stride = 0;
  float eps = 1e-6f;
};
int layernorm_forward_cuda(const LayerNormParams& p, void* stream);
int layernorm_backward_cuda(const LayerNormParams& p, void* stream);

}  // namespace shoal::kernels
