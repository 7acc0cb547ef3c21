// RoPE kernel (rope.h): one thread per (token, head, pair), the CPU reference's arithmetic.
#include <cuda_runtime.h>

#include "kernels/common/reduce.cuh"
#include "kernels/rope/rope.h"

namespace shoal::kernels {
namespace {

__global__ void rope_kernel(RopeParams p) {
  const int64_t half = p.dim / 2, total = p.n * p.heads * half;
  const float sign = p.inverse ? -1.0f : 1.0f;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % half, rh = e / half, h = rh % p.heads, r = rh / p.heads;
    const int32_t pos = p.positions[r];
    if (pos < 0 || pos >= p.max_pos) {
      if (h == 0 && i == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, r, pos, 0, p.max_pos);
      continue;
    }
    const float* cs = p.table + int64_t(pos) * half * 2;
    const float c = cs[2 * i], s = sign * cs[2 * i + 1];
    float* v = p.x + r * p.stride_n + h * p.stride_h;
    const int64_t i0 = p.interleaved ? 2 * i : i, i1 = p.interleaved ? 2 * i + 1 : i + half;
    const float a = v[i0], b = v[i1];
    v[i0] = a * c - b * s;
    v[i1] = b * c + a * s;
  }
}

}  // namespace

int rope_cuda(const RopeParams& p, void* stream) {
  if (p.n == 0 || p.heads == 0 || p.dim == 0) return int(cudaSuccess);
  if (p.n < 0 || p.heads < 0 || p.dim % 2 != 0 || !p.x || !p.positions || !p.table)
    return int(cudaErrorInvalidValue);
  rope_kernel<<<grid_for(p.n * p.heads * (p.dim / 2), 256), 256, 0,
                static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
