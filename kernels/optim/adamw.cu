// AdamW update kernel (adamw.h): one element per thread, the same operation order as the CPU loop.
#include <cuda_runtime.h>

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

}  // namespace

int adamw_cuda(const AdamWKernelParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || !p.param || !p.grad || !p.m || !p.v) return int(cudaErrorInvalidValue);
  adamw_kernel<<<grid_for(p.n, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
