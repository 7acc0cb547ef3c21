// RMSNorm forward on the GPU, f32 in / f32 out / f32 accumulate: y = w * x * rstd with
// rstd = 1 / sqrt(mean(x^2) + eps), one warp per row for short rows, one block per row for long
// ones. Not the backward pass, not bf16/fp8 inputs, not fused with a residual add; rmsnorm_ref.cpp
// is the specification this kernel is tested against (tests/cuda/test_rmsnorm_cuda.cpp).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/norm/rmsnorm.h"

namespace shoal::kernels {
namespace {

constexpr int kWarp = 32;
// Per-thread register cache, in load units (float4 or float). A row that fits is read from global
// memory once; the remainder of a longer row is read again in the second pass (from L1/L2).
// 1024-thread blocks get 64 registers a thread, which 8 cached float4 would overflow into spills.
template <int kThreadsPerRow>
constexpr int kCachedUnits = kThreadsPerRow == 1024 ? 4 : 8;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float sum_of_squares(float v) {
  return v * v;
}
__device__ __forceinline__ float sum_of_squares(float4 v) {
  return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
}

// Same operation order as the reference (w * (x * rstd)) so that both round alike.
__device__ __forceinline__ float scale(float x, float w, float inv) {
  return w * (x * inv);
}
__device__ __forceinline__ float4 scale(float4 x, float4 w, float inv) {
  return make_float4(w.x * (x.x * inv), w.y * (x.y * inv), w.z * (x.z * inv), w.w * (x.w * inv));
}

// Unit = float4 (row length, strides and pointers 16-byte aligned) or float (anything else).
// kThreadsPerRow = 32: each warp of the block owns a row; otherwise the whole block owns a row and
// the per-warp partial sums meet in shared memory. Rows are walked grid-stride so any row count
// fits.
template <typename Unit, int kThreadsPerRow>
__global__ void __launch_bounds__(kThreadsPerRow > 256 ? kThreadsPerRow : 256)
    rmsnorm_forward_kernel(const Unit* __restrict__ x, const Unit* __restrict__ w,
                           Unit* __restrict__ y, float* __restrict__ rstd, int64_t rows,
                           int units_per_row, int64_t x_stride, int64_t y_stride, float inv_dim,
                           float eps) {
  constexpr bool kWarpPerRow = kThreadsPerRow == kWarp;
  constexpr int kWarpsPerRow = kThreadsPerRow / kWarp;
  constexpr int kCache = kCachedUnits<kThreadsPerRow>;
  const int lane = threadIdx.x % kWarp;
  const int tid = kWarpPerRow ? lane : int(threadIdx.x);  // index within the row's thread group
  const int64_t rows_per_block = blockDim.x / kThreadsPerRow;
  const int64_t first_row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / kThreadsPerRow;
  const int64_t row_step = int64_t(gridDim.x) * rows_per_block;
  __shared__ float warp_partials[kWarpsPerRow];

  // In block-per-row mode every thread of the block takes the same number of trips (first_row is
  // blockIdx.x), so the __syncthreads below are reached uniformly.
  for (int64_t row = first_row; row < rows; row += row_step) {
    const Unit* xr = x + row * x_stride;
    Unit* yr = y + row * y_stride;

    Unit cached[kCache];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int i = tid + k * kThreadsPerRow;
      if (i < units_per_row) {
        cached[k] = __ldg(xr + i);
        ss += sum_of_squares(cached[k]);
      }
    }
    for (int i = tid + kCache * kThreadsPerRow; i < units_per_row; i += kThreadsPerRow)
      ss += sum_of_squares(__ldg(xr + i));

    ss = warp_sum(ss);
    if constexpr (!kWarpPerRow) {
      if (lane == 0) warp_partials[threadIdx.x / kWarp] = ss;
      __syncthreads();
      // Every warp reduces the partials itself: no second barrier needed to broadcast the total.
      ss = warp_sum(lane < kWarpsPerRow ? warp_partials[lane] : 0.f);
      __syncthreads();  // the next row's writes to warp_partials must wait for these reads
    }
    // sqrtf and the division are each correctly rounded (rsqrtf is not), so rstd stays within
    // ~1 ulp of the reference's double computation.
    const float inv = 1.f / sqrtf(ss * inv_dim + eps);
    if (rstd != nullptr && tid == 0) rstd[row] = inv;

#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int i = tid + k * kThreadsPerRow;
      if (i < units_per_row) yr[i] = scale(cached[k], __ldg(w + i), inv);
    }
    for (int i = tid + kCache * kThreadsPerRow; i < units_per_row; i += kThreadsPerRow)
      yr[i] = scale(__ldg(xr + i), __ldg(w + i), inv);
  }
}

template <typename Unit, int kThreadsPerRow>
void launch(const RmsNormParams& p, int units_per_row, int64_t x_stride, int64_t y_stride,
            cudaStream_t stream) {
  constexpr int kBlock = kThreadsPerRow > 256 ? kThreadsPerRow : 256;
  constexpr int64_t kRowsPerBlock = kBlock / kThreadsPerRow;
  const int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  // The kernel walks rows grid-stride, so capping the grid only matters for > 2^31 blocks.
  const unsigned grid = unsigned(blocks < INT_MAX ? blocks : INT_MAX);
  rmsnorm_forward_kernel<Unit, kThreadsPerRow><<<grid, kBlock, 0, stream>>>(
      reinterpret_cast<const Unit*>(p.x), reinterpret_cast<const Unit*>(p.w),
      reinterpret_cast<Unit*>(p.y), p.rstd, p.rows, units_per_row, x_stride, y_stride,
      1.f / float(p.dim), p.eps);
}

// Warp per row while a row fits the warp's register cache (no re-read, no barrier, 8 rows per
// block); 256 threads per row while the row fits their caches; 1024 beyond (re-reading the tail).
template <typename Unit>
void dispatch(const RmsNormParams& p, int units_per_row, int64_t x_stride, int64_t y_stride,
              cudaStream_t stream) {
  if (units_per_row <= kWarp * kCachedUnits<kWarp>)
    launch<Unit, kWarp>(p, units_per_row, x_stride, y_stride, stream);
  else if (units_per_row <= 256 * kCachedUnits<256>)
    launch<Unit, 256>(p, units_per_row, x_stride, y_stride, stream);
  else
    launch<Unit, 1024>(p, units_per_row, x_stride, y_stride, stream);
}

// Column indices are int; the bound keeps `i += kThreadsPerRow` in the tail loops from overflowing.
constexpr int64_t kMaxDim = int64_t(1) << 30;

bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

}  // namespace

int rmsnorm_forward_cuda(const RmsNormParams& p, void* stream) {
  if (p.rows == 0) return int(cudaSuccess);
  // Fail loudly on requests the kernel does not support rather than reading out of bounds.
  if (p.rows < 0 || p.dim <= 0 || p.dim > kMaxDim || p.x == nullptr || p.w == nullptr ||
      p.y == nullptr || p.x_stride < p.dim || p.y_stride < p.dim)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const bool vec4 = p.dim % 4 == 0 && p.x_stride % 4 == 0 && p.y_stride % 4 == 0 &&
                    aligned16(p.x) && aligned16(p.w) && aligned16(p.y);
  if (vec4)
    dispatch<float4>(p, int(p.dim / 4), p.x_stride / 4, p.y_stride / 4, s);
  else
    dispatch<float>(p, int(p.dim), p.x_stride, p.y_stride, s);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
