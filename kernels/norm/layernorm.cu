// LayerNorm forward/backward on the GPU (layernorm.h): one block per row, statistics in f64 as the
// CPU reference computes them; dw/db through the chunked column sums.
#include <cuda_runtime.h>

#include "kernels/common/reduce.cuh"
#include "kernels/norm/layernorm.h"
#include "kernels/norm/norm_common.cuh"
#include "kernels/norm/rmsnorm.h"

namespace shoal::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void layernorm_forward_kernel(LayerNormParams p) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.x + r * p.x_stride;
    float* y = p.y + r * p.y_stride;
    double m = 0;
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) m += x[i];
    m = block_sum(m) / double(p.dim);
    double v = 0;
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) v += (x[i] - m) * (x[i] - m);
    v = block_sum(v);
    const float inv = float(1.0 / sqrt(v / double(p.dim) + double(p.eps)));
    const float mf = float(m);
    if (threadIdx.x == 0) {
      p.mean[r] = mf;
      p.rstd[r] = inv;
    }
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x)
      y[i] = (x[i] - mf) * inv * p.w[i] + p.b[i];
  }
}

__global__ void layernorm_dx_kernel(LayerNormParams p) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* dy = p.dy + r * p.y_stride;
    const float* x = p.x + r * p.x_stride;
    float* dx = p.dx + r * p.dx_stride;
    const float m = p.mean[r], inv = p.rstd[r];
    double s1 = 0, s2 = 0;
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float xh = (x[i] - m) * inv, g = dy[i] * p.w[i];
      s1 += g;
      s2 += double(g) * xh;
    }
    s1 = block_sum(s1);
    s2 = block_sum(s2);
    const float a = float(s1 / double(p.dim)), c = float(s2 / double(p.dim));
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float xh = (x[i] - m) * inv;
      dx[i] = inv * (dy[i] * p.w[i] - a - xh * c);
    }
  }
}

struct LnDwTerm {
  const float *dy, *x, *mean, *rstd;
  int64_t dy_stride, x_stride;
  __device__ float operator()(int64_t r, int64_t c) const {
    return dy[r * dy_stride + c] * ((x[r * x_stride + c] - mean[r]) * rstd[r]);
  }
};
struct LnDbTerm {
  const float* dy;
  int64_t dy_stride;
  __device__ float operator()(int64_t r, int64_t c) const { return dy[r * dy_stride + c]; }
};

}  // namespace

int layernorm_forward_cuda(const LayerNormParams& p, void* stream) {
  if (p.rows == 0) return int(cudaSuccess);
  if (p.rows < 0 || p.dim <= 0 || !p.x || !p.w || !p.b || !p.y || !p.mean || !p.rstd ||
      p.x_stride < p.dim || p.y_stride < p.dim)
    return int(cudaErrorInvalidValue);
  layernorm_forward_kernel<<<grid_for(p.rows, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p);
  return int(cudaGetLastError());
}

int layernorm_backward_cuda(const LayerNormParams& p, void* stream) {
  if (p.rows == 0 || p.dim == 0) return int(cudaSuccess);
  if (p.rows < 0 || p.dim < 0 || !p.dy || !p.x || !p.w || !p.mean || !p.rstd || !p.dx || !p.dw ||
      !p.db || !p.scratch || p.y_stride < p.dim || p.x_stride < p.dim || p.dx_stride < p.dim)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = norm_dw_chunks(p.rows);
  if (chunks > 65535) return int(cudaErrorInvalidValue);
  const unsigned col_blocks = unsigned((p.dim + kThreads - 1) / kThreads);
  float* dw_part = p.scratch;
  float* db_part = p.scratch + chunks * p.dim;
  const dim3 grid(col_blocks, unsigned(chunks));
  column_chunk_sums<<<grid, kThreads, 0, s>>>(
      LnDwTerm{p.dy, p.x, p.mean, p.rstd, p.y_stride, p.x_stride}, p.rows, p.dim, dw_part);
  column_chunk_sums<<<grid, kThreads, 0, s>>>(LnDbTerm{p.dy, p.y_stride}, p.rows, p.dim, db_part);
  column_chunks_accumulate<<<col_blocks, kThreads, 0, s>>>(dw_part, chunks, p.dim, p.dw);
  column_chunks_accumulate<<<col_blocks, kThreads, 0, s>>>(db_part, chunks, p.dim, p.db);
  layernorm_dx_kernel<<<grid_for(p.rows, 1), kThreads, 0, s>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
