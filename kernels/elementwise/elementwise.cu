// Element-wise kernels (elementwise.h): grid-stride loops, one element per thread per trip. Sum of
// squares reduces in f64 per block, then one block adds the block partials in a fixed order, so
// the result does not depend on scheduling.
#include <cuda_runtime.h>

#include "kernels/common/reduce.cuh"
#include "kernels/elementwise/elementwise.h"

namespace shoal::kernels {
namespace {

constexpr int kThreads = 256;

#define SHOAL_GRID_STRIDE(i, n)                                             \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

__global__ void add_kernel(AddParams p) {
  const int64_t n = p.d0 * p.d1 * p.d2;
  SHOAL_GRID_STRIDE(e, n) {
    const int64_t k = e % p.d2, r = e / p.d2, j = r % p.d1, i = r / p.d1;
    p.y[i * p.y_s0 + j * p.y_s1 + k] += p.alpha * p.x[i * p.x_s0 + j * p.x_s1 + k];
  }
}

__global__ void scale_kernel(float* y, int64_t n, float s) {
  SHOAL_GRID_STRIDE(i, n) y[i] *= s;
}

__global__ void sum_squares_partial_kernel(const float* __restrict__ x, int64_t n,
                                           double* partials) {
  double acc = 0;
  SHOAL_GRID_STRIDE(i, n) acc += double(x[i]) * x[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(const double* partials, int count, double* out) {
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc;
}

// Matches the CPU backend's sigmoidf (1 / (1 + exp(-x)), f32).
__device__ __forceinline__ float sigmoidf_(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__global__ void swiglu_forward_kernel(SwigluParams p) {
  const int64_t n = p.rows * p.inter;
  SHOAL_GRID_STRIDE(e, n) {
    const int64_t r = e / p.inter, i = e % p.inter;
    const float g = p.gate_up[r * p.gu_stride + i], u = p.gate_up[r * p.gu_stride + p.inter + i];
    p.h[r * p.h_stride + i] = g * sigmoidf_(g) * u;
  }
}

__global__ void swiglu_backward_kernel(SwigluParams p) {
  const int64_t n = p.rows * p.inter;
  SHOAL_GRID_STRIDE(e, n) {
    const int64_t r = e / p.inter, i = e % p.inter;
    const float g = p.gate_up[r * p.gu_stride + i], u = p.gate_up[r * p.gu_stride + p.inter + i];
    const float d = p.dh[r * p.h_stride + i];
    const float sg = sigmoidf_(g), silu = g * sg;
    float* dg = p.dgate_up + r * p.dgu_stride;
    dg[p.inter + i] = d * silu;
    dg[i] = d * u * sg * (1.0f + g * (1.0f - sg));
  }
}

}  // namespace

int add_cuda(const AddParams& p, void* stream) {
  const int64_t n = p.d0 * p.d1 * p.d2;
  if (n == 0) return int(cudaSuccess);
  if (p.y == nullptr || p.x == nullptr || n < 0) return int(cudaErrorInvalidValue);
  add_kernel<<<grid_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int scale_cuda(float* y, int64_t n, float s, void* stream) {
  if (n == 0) return int(cudaSuccess);
  if (y == nullptr || n < 0) return int(cudaErrorInvalidValue);
  scale_kernel<<<grid_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(y, n, s);
  return int(cudaGetLastError());
}

int sum_squares_cuda(const float* x, int64_t n, double* partials, double* out, void* stream) {
  if (n < 0 || partials == nullptr || out == nullptr || (n > 0 && x == nullptr))
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = grid_for(n, kThreads, kSumSquaresBlocks);
  sum_squares_partial_kernel<<<blocks, kThreads, 0, s>>>(x, n, partials);
  sum_partials_kernel<<<1, 1024, 0, s>>>(partials, int(blocks), out);
  return int(cudaGetLastError());
}

int swiglu_forward_cuda(const SwigluParams& p, void* stream) {
  const int64_t n = p.rows * p.inter;
  if (n == 0) return int(cudaSuccess);
  if (p.gate_up == nullptr || p.h == nullptr || p.gu_stride < 2 * p.inter || p.h_stride < p.inter)
    return int(cudaErrorInvalidValue);
  swiglu_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p);
  return int(cudaGetLastError());
}

int swiglu_backward_cuda(const SwigluParams& p, void* stream) {
  const int64_t n = p.rows * p.inter;
  if (n == 0) return int(cudaSuccess);
  if (p.gate_up == nullptr || p.dh == nullptr || p.dgate_up == nullptr ||
      p.gu_stride < 2 * p.inter || p.h_stride < p.inter || p.dgu_stride < 2 * p.inter)
    return int(cudaErrorInvalidValue);
  swiglu_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
