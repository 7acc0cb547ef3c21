// AdamW update kernels (adamw.h): one element per thread in the single-tensor kernel; the
// multi-tensor kernels give each block one chunk of one tensor. The same operation order as the
// CPU loop (engine/cpu/cpu_backend.cpp), the clipping factor applied as a f32 multiply first.
#include <cuda_runtime.h>

#include "kernels/common/float_formats.cuh"
#include "kernels/common/reduce.cuh"
#include "kernels/optim/adamw.h"

namespace shoal::kernels {
namespace {

__global__ void adamw_kernel(AdamWKernelParams p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = p.grad[i];
    const float m = p.beta1 * p.m[i] + (1.0f - p.beta1) * g;
    const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
    p.m[i] = m;
    p.v[i] = v;
    p.param[i] = p.param[i] * p.decay - p.step * m / (sqrtf(v) * p.inv_sqrt_bc2 + p.eps);
  }
}

constexpr int kMultiThreads = 256;
constexpr int kPerThread = int(kAdamWChunk / kMultiThreads);  // 32
constexpr int kBatch = 4;  // elements whose loads are issued together

// The tensor whose chunks contain `chunk`: the last t with chunk_start[t] <= chunk.
__device__ int tensor_of_chunk(const int64_t* chunk_start, int count, int64_t chunk) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (chunk_start[mid] <= chunk)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__global__ void __launch_bounds__(kMultiThreads) adamw_multi_kernel(AdamWMultiParams p) {
  const int64_t chunk = blockIdx.x;
  const int t = tensor_of_chunk(p.chunk_start, p.count, chunk);
  const AdamWTensorPtrs d = p.tensors[t];
  const int64_t begin = (chunk - p.chunk_start[t]) * kAdamWChunk;
  const float factor = p.clip ? float(p.clip[1]) : 1.0f;
  for (int b = 0; b < kPerThread; b += kBatch) {
    float g[kBatch], m[kBatch], v[kBatch], w[kBatch];
    int64_t idx[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      idx[j] = begin + int64_t(b + j) * kMultiThreads + threadIdx.x;
      const bool in = idx[j] < d.n;
      g[j] = in ? d.grad[idx[j]] : 0.0f;
      m[j] = in ? d.m[idx[j]] : 0.0f;
      v[j] = in ? d.v[idx[j]] : 0.0f;
      w[j] = in ? d.param[idx[j]] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (idx[j] >= d.n) continue;
      const float gs = g[j] * factor;
      const float mn = p.beta1 * m[j] + (1.0f - p.beta1) * gs;
      const float vn = p.beta2 * v[j] + (1.0f - p.beta2) * gs * gs;
      const float wn = w[j] * d.decay - p.step * mn / (sqrtf(vn) * p.inv_sqrt_bc2 + p.eps);
      d.m[idx[j]] = mn;
      d.v[idx[j]] = vn;
      d.param[idx[j]] = wn;
      if (d.shadow) d.shadow[idx[j]] = f32_to_bf16_bits(wn);
    }
  }
}

__global__ void __launch_bounds__(kMultiThreads)
    grad_squares_kernel(AdamWMultiParams p, double* partials) {
  const int64_t chunk = blockIdx.x;
  const int t = tensor_of_chunk(p.chunk_start, p.count, chunk);
  const float* g = p.tensors[t].grad;
  const int64_t n = p.tensors[t].n, begin = (chunk - p.chunk_start[t]) * kAdamWChunk;
  double acc = 0;
#pragma unroll 4
  for (int b = 0; b < kPerThread; ++b) {
    const int64_t i = begin + int64_t(b) * kMultiThreads + threadIdx.x;
    if (i < n) acc += double(g[i]) * g[i];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[chunk] = acc;
}

__global__ void clip_factor_kernel(const double* partials, int64_t count, double max_norm,
                                   double* clip) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    const double norm = sqrt(acc);
    clip[0] = norm;
    clip[1] = max_norm > 0 && norm > max_norm ? double(float(max_norm / (norm + 1e-6))) : 1.0;
  }
}

bool valid_table(const AdamWMultiParams& p) {
  return p.count >= 0 && p.chunks >= 0 && p.chunks <= INT32_MAX &&
         (p.count == 0 || (p.tensors && p.chunk_start));
}

}  // namespace

int adamw_cuda(const AdamWKernelParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || !p.param || !p.grad || !p.m || !p.v) return int(cudaErrorInvalidValue);
  adamw_kernel<<<grid_for(p.n, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int adamw_multi_cuda(const AdamWMultiParams& p, void* stream) {
  if (!valid_table(p)) return int(cudaErrorInvalidValue);
  if (p.count == 0 || p.chunks == 0) return int(cudaSuccess);
  adamw_multi_kernel<<<unsigned(p.chunks), kMultiThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p);
  return int(cudaGetLastError());
}

int grad_clip_cuda(const AdamWMultiParams& p, double max_norm, double* partials, double* clip,
                   void* stream) {
  if (!valid_table(p) || !partials || !clip) return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  if (p.chunks > 0) grad_squares_kernel<<<unsigned(p.chunks), kMultiThreads, 0, s>>>(p, partials);
  clip_factor_kernel<<<1, 1024, 0, s>>>(partials, p.chunks, max_norm, clip);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
