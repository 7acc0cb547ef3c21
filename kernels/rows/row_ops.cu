// Row gather / scatter kernels (row_ops.h): a block of 128 threads per row (grid-stride over
// rows), threads across the columns -- in 16-byte vectors when the columns, leading dimensions and
// pointers allow (scatter_add_rows then adds with the 4-wide atomics of sm_90); the dot product
// reduces in f64 like the CPU reference.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/reduce.cuh"
#include "kernels/rows/row_ops.h"

namespace shoal::kernels {
namespace {

constexpr int kThreads = 128;

__global__ void gather_rows_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v < 0 || v / p.div >= p.src_rows) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, p.src_rows * p.div);
      continue;
    }
    const float* s = p.src + (v / p.div) * p.src_ld;
    float* d = p.dst + i * p.dst_ld;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) d[c] = s[c];
  }
}

// Whether the rows of both operands can be moved as float4: columns, leading dimensions and
// base pointers all multiples of 4 floats.
inline bool vec4_rows(const RowOpParams& p) {
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return p.cols % 4 == 0 && p.src_ld % 4 == 0 && p.dst_ld % 4 == 0 && aligned(p.src) &&
         aligned(p.dst);
}

__global__ void gather_rows_vec4_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v < 0 || v / p.div >= p.src_rows) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, p.src_rows * p.div);
      continue;
    }
    const float4* s = reinterpret_cast<const float4*>(p.src + (v / p.div) * p.src_ld);
    float4* d = reinterpret_cast<float4*>(p.dst + i * p.dst_ld);
    for (int64_t c = threadIdx.x; c < p.cols / 4; c += blockDim.x) d[c] = s[c];
  }
}

__global__ void scatter_add_rows_vec4_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v < 0 || v / p.div >= p.dst_rows || (p.w && v >= p.w_count)) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0,
                     p.w ? p.w_count : p.dst_rows * p.div);
      continue;
    }
    const float wi = p.w ? p.w[v] : 1.0f;
    const float4* s = reinterpret_cast<const float4*>(p.src + i * p.src_ld);
    float4* d = reinterpret_cast<float4*>(p.dst + (v / p.div) * p.dst_ld);
    for (int64_t c = threadIdx.x; c < p.cols / 4; c += blockDim.x) {
      const float4 x = s[c];
      atomicAdd(d + c, make_float4(wi * x.x, wi * x.y, wi * x.z, wi * x.w));
    }
  }
}

__global__ void scatter_rows_vec4_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v == -1) continue;
    if (v < 0 || v >= p.dst_rows) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, p.dst_rows);
      continue;
    }
    const float4* s = reinterpret_cast<const float4*>(p.src + i * p.src_ld);
    float4* d = reinterpret_cast<float4*>(p.dst + v * p.dst_ld);
    for (int64_t c = threadIdx.x; c < p.cols / 4; c += blockDim.x) d[c] = s[c];
  }
}

__global__ void scatter_add_rows_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v < 0 || v / p.div >= p.dst_rows || (p.w && v >= p.w_count)) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0,
                     p.w ? p.w_count : p.dst_rows * p.div);
      continue;
    }
    const float wi = p.w ? p.w[v] : 1.0f;
    const float* s = p.src + i * p.src_ld;
    float* d = p.dst + (v / p.div) * p.dst_ld;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) atomicAdd(d + c, wi * s[c]);
  }
}

__global__ void invert_permutation_kernel(RowOpParams p, int32_t* inv) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n_idx;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = p.idx[i];
    if (v < 0 || v >= p.n_idx)
      report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, p.n_idx);
    else
      inv[v] = int32_t(i);
  }
}

// A block per dst row: thread 0 orders the row's div source rows by position (insertion sort of
// at most kCombineMaxDiv), then the threads sum them across the columns in that order.
template <bool kVec4>
__global__ void combine_rows_kernel(RowOpParams p, const int32_t* inv, bool accumulate) {
  __shared__ int32_t pos[kCombineMaxDiv];
  __shared__ float wt[kCombineMaxDiv];
  __shared__ int count;
  for (int64_t t = blockIdx.x; t < p.dst_rows; t += gridDim.x) {
    if (threadIdx.x == 0) {
      int m = 0;
      for (int64_t j = 0; j < p.div; ++j) {
        const int64_t slot = t * p.div + j;
        const int32_t i = inv[slot];
        if (i < 0) {  // no index names this slot: idx is not a permutation
          report_fault(p.status, p.op, KernelFault::index_out_of_range, slot, -1, 0, p.n_idx);
          continue;
        }
        int q = m;
        for (; q > 0 && pos[q - 1] > i; --q) pos[q] = pos[q - 1], wt[q] = wt[q - 1];
        pos[q] = i;
        wt[q] = p.w ? p.w[slot] : 1.0f;
        ++m;
      }
      count = m;
    }
    __syncthreads();
    const int m = count;
    if constexpr (kVec4) {
      float4* d = reinterpret_cast<float4*>(p.dst + t * p.dst_ld);
      for (int64_t c = threadIdx.x; c < p.cols / 4; c += blockDim.x) {
        float4 acc = accumulate ? d[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        for (int q = 0; q < m; ++q) {
          const float4 x = reinterpret_cast<const float4*>(p.src + pos[q] * p.src_ld)[c];
          const float wq = wt[q];
          acc.x += wq * x.x;
          acc.y += wq * x.y;
          acc.z += wq * x.z;
          acc.w += wq * x.w;
        }
        d[c] = acc;
      }
    } else {
      float* d = p.dst + t * p.dst_ld;
      for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
        float acc = accumulate ? d[c] : 0.f;
        for (int q = 0; q < m; ++q) acc += wt[q] * p.src[pos[q] * p.src_ld + c];
        d[c] = acc;
      }
    }
    __syncthreads();  // before thread 0 orders the next row
  }
}

__global__ void row_dot_scatter_kernel(RowOpParams p, float* out, int64_t out_count) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    const float* a = p.src + i * p.src_ld;
    const float* b = p.dst + i * p.dst_ld;
    double acc = 0;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) acc += double(a[c]) * b[c];
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
      if (v < 0 || v >= out_count)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, out_count);
      else
        out[v] = float(acc);
    }
  }
}

__global__ void scale_rows_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v < 0 || v >= p.w_count) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, p.w_count);
      continue;
    }
    const float wi = p.w[v];
    float* d = p.dst + i * p.dst_ld;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) d[c] *= wi;
  }
}

__global__ void scatter_rows_kernel(RowOpParams p) {
  for (int64_t i = blockIdx.x; i < p.n_idx; i += gridDim.x) {
    const int64_t v = p.idx[i];
    if (v == -1) continue;  // a row not written (a padding row of a recorded decode step)
    if (v < 0 || v >= p.dst_rows) {
      if (threadIdx.x == 0)
        report_fault(p.status, p.op, KernelFault::index_out_of_range, i, v, 0, p.dst_rows);
      continue;
    }
    const float* s = p.src + i * p.src_ld;
    float* d = p.dst + v * p.dst_ld;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) d[c] = s[c];
  }
}

}  // namespace

int gather_rows_cuda(const RowOpParams& p, void* stream) {
  if (p.n_idx == 0) return int(cudaSuccess);
  if (!p.src || !p.dst || !p.idx || p.div < 1 || p.n_idx < 0) return int(cudaErrorInvalidValue);
  if (vec4_rows(p))
    gather_rows_vec4_kernel<<<grid_for(p.n_idx, 1), kThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(p);
  else
    gather_rows_kernel<<<grid_for(p.n_idx, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int scatter_add_rows_cuda(const RowOpParams& p, void* stream) {
  if (p.n_idx == 0) return int(cudaSuccess);
  if (!p.src || !p.dst || !p.idx || p.div < 1 || p.n_idx < 0) return int(cudaErrorInvalidValue);
  if (vec4_rows(p))
    scatter_add_rows_vec4_kernel<<<grid_for(p.n_idx, 1), kThreads, 0,
                                   static_cast<cudaStream_t>(stream)>>>(p);
  else
    scatter_add_rows_kernel<<<grid_for(p.n_idx, 1), kThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int row_dot_scatter_cuda(const RowOpParams& p, float* out, int64_t out_count, void* stream) {
  if (p.n_idx == 0) return int(cudaSuccess);
  if (!p.src || !p.dst || !p.idx || !out || p.n_idx < 0) return int(cudaErrorInvalidValue);
  row_dot_scatter_kernel<<<grid_for(p.n_idx, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, out, out_count);
  return int(cudaGetLastError());
}

int scale_rows_cuda(const RowOpParams& p, void* stream) {
  if (p.n_idx == 0) return int(cudaSuccess);
  if (!p.dst || !p.idx || !p.w || p.n_idx < 0) return int(cudaErrorInvalidValue);
  scale_rows_kernel<<<grid_for(p.n_idx, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int combine_rows_cuda(const RowOpParams& p, int32_t* inv, bool accumulate, void* stream) {
  if (p.dst_rows == 0) return int(cudaSuccess);
  if (!p.src || !p.dst || !p.idx || !inv || p.div < 1 || p.div > kCombineMaxDiv ||
      p.n_idx != p.dst_rows * p.div)
    return int(cudaErrorInvalidValue);
  auto st = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(inv, 0xFF, size_t(p.n_idx) * sizeof(int32_t), st);  // -1
  if (e != cudaSuccess) return int(e);
  invert_permutation_kernel<<<grid_for(p.n_idx, kThreads), kThreads, 0, st>>>(p, inv);
  if (vec4_rows(p))
    combine_rows_kernel<true><<<grid_for(p.dst_rows, 1), kThreads, 0, st>>>(p, inv, accumulate);
  else
    combine_rows_kernel<false><<<grid_for(p.dst_rows, 1), kThreads, 0, st>>>(p, inv, accumulate);
  return int(cudaGetLastError());
}

int scatter_rows_cuda(const RowOpParams& p, void* stream) {
  if (p.n_idx == 0) return int(cudaSuccess);
  if (!p.src || !p.dst || !p.idx || p.n_idx < 0) return int(cudaErrorInvalidValue);
  if (vec4_rows(p))
    scatter_rows_vec4_kernel<<<grid_for(p.n_idx, 1), kThreads, 0,
                               static_cast<cudaStream_t>(stream)>>>(p);
  else
    scatter_rows_kernel<<<grid_for(p.n_idx, 1), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
