// Element-wise kernels (elementwise.h): grid-stride loops, one element per thread per trip. Sum of
// squares reduces in f64 per block, then one block adds the block partials in a fixed order, so
// the result does not depend on scheduling.
#include <cuda_runtime.h>

#include <cstdint>

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

// y += alpha x over n contiguous floats, four at a time (n % 4 == 0, both 16-byte aligned).
__global__ void add_vec4_kernel(float4* __restrict__ y, const float4* __restrict__ x, int64_t n4,
                                float alpha) {
  SHOAL_GRID_STRIDE(i, n4) {
    float4 a = y[i];
    const float4 b = x[i];
    a.x += alpha * b.x;
    a.y += alpha * b.y;
    a.z += alpha * b.z;
    a.w += alpha * b.w;
    y[i] = a;
  }
}

// Rows of d2 contiguous floats (d2 % 4 == 0; row starts 16-byte aligned): a block per row of the
// [d0, d1] grid of rows (grid-stride), threads across the row in float4s.
__global__ void add_rows_vec4_kernel(AddParams p) {
  const int64_t rows = p.d0 * p.d1, n4 = p.d2 / 4;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t i = r / p.d1, j = r % p.d1;
    float4* y = reinterpret_cast<float4*>(p.y + i * p.y_s0 + j * p.y_s1);
    const float4* x = reinterpret_cast<const float4*>(p.x + i * p.x_s0 + j * p.x_s1);
    for (int64_t c = threadIdx.x; c < n4; c += blockDim.x) {
      float4 a = y[c];
      const float4 b = x[c];
      a.x += p.alpha * b.x;
      a.y += p.alpha * b.y;
      a.z += p.alpha * b.z;
      a.w += p.alpha * b.w;
      y[c] = a;
    }
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
  auto st = static_cast<cudaStream_t>(stream);
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  const bool rows4 = p.d2 % 4 == 0 && p.y_s0 % 4 == 0 && p.y_s1 % 4 == 0 && p.x_s0 % 4 == 0 &&
                     p.x_s1 % 4 == 0 && aligned(p.y) && aligned(p.x);
  // Dense: the rows follow one another (a stride only matters where its dim has more than one;
  // a contiguous add comes as one row of numel).
  auto dense = [&](int64_t s0, int64_t s1) {
    return (p.d1 == 1 || s1 == p.d2) && (p.d0 == 1 || s0 == p.d1 * p.d2);
  };
  const bool flat = dense(p.y_s0, p.y_s1) && dense(p.x_s0, p.x_s1);
  if (rows4 && flat) {
    add_vec4_kernel<<<grid_for(n / 4, kThreads), kThreads, 0, st>>>(
        reinterpret_cast<float4*>(p.y), reinterpret_cast<const float4*>(p.x), n / 4, p.alpha);
  } else if (rows4 && p.d2 >= 128 && p.d0 * p.d1 >= 256) {  // enough rows for a block each
    add_rows_vec4_kernel<<<grid_for(p.d0 * p.d1, 1), kThreads, 0, st>>>(p);
  } else {
    add_kernel<<<grid_for(n, kThreads), kThreads, 0, st>>>(p);
  }
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
