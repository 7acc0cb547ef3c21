// RMSNorm backward on the GPU (rmsnorm.h): one block per row for dx (f64 row dot, as the CPU
// reference), then the chunked column reduction for dw. f32 in/out; not fused with the forward.
#include <cuda_runtime.h>

#include "kernels/common/reduce.cuh"
#include "kernels/norm/norm_common.cuh"
#include "kernels/norm/rmsnorm.h"

namespace shoal::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_dx_kernel(RmsNormBackwardParams p) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* dy = p.dy + r * p.dy_stride;
    const float* x = p.x + r * p.x_stride;
    float* dx = p.dx + r * p.dx_stride;
    const float inv = p.rstd[r];
    double dot = 0;
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x)
      dot += double(dy[i]) * p.w[i] * (x[i] * inv);
    dot = block_sum(dot);
    const float mean = float(dot / double(p.dim));
    for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x)
      dx[i] = inv * (dy[i] * p.w[i] - x[i] * inv * mean);
  }
}

struct RmsDwTerm {
  const float *dy, *x, *rstd;
  int64_t dy_stride, x_stride;
  __device__ float operator()(int64_t r, int64_t c) const {
    return dy[r * dy_stride + c] * (x[r * x_stride + c] * rstd[r]);
  }
};

}  // namespace

int rmsnorm_backward_cuda(const RmsNormBackwardParams& p, void* stream) {
  if (p.rows == 0 || p.dim == 0) return int(cudaSuccess);
  if (p.rows < 0 || p.dim < 0 || !p.dy || !p.x || !p.w || !p.rstd || !p.dx || !p.dw || !p.scratch ||
      p.dy_stride < p.dim || p.x_stride < p.dim || p.dx_stride < p.dim)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  // dw first: dx may alias dy (the kernels read dy before overwriting only within a row).
  const int64_t chunks = norm_dw_chunks(p.rows);
  if (chunks > 65535) return int(cudaErrorInvalidValue);
  const dim3 grid(unsigned((p.dim + kThreads - 1) / kThreads), unsigned(chunks));
  column_chunk_sums<<<grid, kThreads, 0, s>>>(RmsDwTerm{p.dy, p.x, p.rstd, p.dy_stride, p.x_stride},
                                              p.rows, p.dim, p.scratch);
  column_chunks_accumulate<<<unsigned((p.dim + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      p.scratch, chunks, p.dim, p.dw);
  rmsnorm_dx_kernel<<<grid_for(p.rows, 1), kThreads, 0, s>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
