// Element-wise and reduction kernels of the Backend interface on f32: add (3-D strided views with
// unit last stride), scale, sum of squares (f64 accumulation), SwiGLU forward/backward. The CPU
// backend (engine/cpu/cpu_backend.cpp) is the reference each is tested against
// (tests/cuda/test_backend_ops.cpp). Not fused with anything; no bf16 inputs yet.
#pragma once

#include <cstdint>

namespace shoal::kernels {

// y[i, j, k] += alpha * x[i, j, k] over a [d0, d1, d2] view; the last stride is 1 on both sides.
struct AddParams {
  float* y = nullptr;
  const float* x = nullptr;
  int64_t d0 = 1, d1 = 1, d2 = 0;
  int64_t y_s0 = 0, y_s1 = 0, x_s0 = 0, x_s1 = 0;  // strides of dims 0 and 1 (elements)
  float alpha = 1.0f;
};
int add_cuda(const AddParams& p, void* stream);

// y[i] *= s over n contiguous floats.
int scale_cuda(float* y, int64_t n, float s, void* stream);

// *out = sum of x[i]^2 in f64 over n contiguous floats. `partials` is scratch of
// kSumSquaresBlocks doubles (device); out one double (device).
constexpr int kSumSquaresBlocks = 1024;
int sum_squares_cuda(const float* x, int64_t n, double* partials, double* out, void* stream);

// SwiGLU over rows: gate_up [rows, 2I] (gate columns first), h [rows, I]; row strides in
// elements. Backward: dgate_up from dh and gate_up (overwritten).
struct SwigluParams {
  const float* gate_up = nullptr;
  float* h = nullptr;         // forward output
  const float* dh = nullptr;  // backward input
  float* dgate_up = nullptr;  // backward output
  int64_t rows = 0, inter = 0;
  int64_t gu_stride = 0, h_stride = 0, dgu_stride = 0;  // h_stride is dh's in the backward
};
int swiglu_forward_cuda(const SwigluParams& p, void* stream);
int swiglu_backward_cuda(const SwigluParams& p, void* stream);

}  // namespace shoal::kernels
