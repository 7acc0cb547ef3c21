// Warp and block reductions shared by the kernels (sum and max, float and double). Device code
// only; a block reduction needs every thread of the block to call it (it uses __syncthreads).
#pragma once

#include <cuda_runtime.h>

namespace shoal::kernels {

constexpr int kWarpSize = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : T(0);
  return warp_sum(v);
}

template <typename T>
__device__ T block_max(T v, T lowest) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : lowest;
  return warp_max(v);
}

// Grid size for `n` work items of `per_block` each, capped (kernels loop grid-stride).
inline unsigned grid_for(int64_t n, int per_block, int64_t cap = 65535LL * 16) {
  int64_t g = (n + per_block - 1) / per_block;
  if (g < 1) g = 1;
  return unsigned(g < cap ? g : cap);
}

}  // namespace shoal::kernels
