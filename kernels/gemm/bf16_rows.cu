// f32 rows -> contiguous bf16 (bf16_rows.h): four elements per thread with 16-byte loads when the
// rows allow it, else one; memory-bound, one pass.
#include <cuda_runtime.h>

#include "kernels/common/float_formats.cuh"
#include "kernels/common/reduce.cuh"
#include "kernels/gemm/bf16_rows.h"

namespace shoal::kernels {
namespace {

__global__ void rows_to_bf16_vec4(Bf16RowsParams p) {
  const int64_t quads = p.cols / 4, n = p.rows * quads;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / quads, c = (i - r * quads) * 4;
    const float4 v = *reinterpret_cast<const float4*>(p.src + r * p.src_stride + c);
    uint2 out;
    out.x = uint32_t(f32_to_bf16_bits(v.x)) | (uint32_t(f32_to_bf16_bits(v.y)) << 16);
    out.y = uint32_t(f32_to_bf16_bits(v.z)) | (uint32_t(f32_to_bf16_bits(v.w)) << 16);
    *reinterpret_cast<uint2*>(p.dst + r * p.cols + c) = out;
  }
}

__global__ void rows_to_bf16_scalar(Bf16RowsParams p) {
  const int64_t n = p.rows * p.cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.cols, c = i - r * p.cols;
    p.dst[i] = f32_to_bf16_bits(p.src[r * p.src_stride + c]);
  }
}

}  // namespace

int f32_rows_to_bf16_cuda(const Bf16RowsParams& p, void* stream) {
  if (p.rows == 0 || p.cols == 0) return int(cudaSuccess);
  if (p.rows < 0 || p.cols < 0 || p.src_stride < p.cols || !p.src || !p.dst)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const bool vec = p.cols % 4 == 0 && p.src_stride % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(p.src) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.dst) % 8 == 0;
  if (vec)
    rows_to_bf16_vec4<<<grid_for(p.rows * (p.cols / 4), 256), 256, 0, s>>>(p);
  else
    rows_to_bf16_scalar<<<grid_for(p.rows * p.cols, 256), 256, 0, s>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
