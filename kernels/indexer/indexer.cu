// Indexer kernels (indexer.h). Scores: a block per query row with the query's heads in shared
// memory, a warp per key. Backward: a block per (query, head), dk by atomics. Top-k: a thread per
// row re-tracing the reference's selection (topk_select.h) in global scratch. KL: a block per row,
// f64 sums as the CPU reference. Hadamard: a block per row, butterflies in shared memory.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "kernels/attention/attention_common.cuh"
#include "kernels/common/float_formats.cuh"
#include "kernels/common/reduce.cuh"
#include "kernels/indexer/indexer.h"
#include "kernels/indexer/topk_select.h"

namespace shoal::kernels {
namespace {

constexpr int kPerLane = int(kIndexerMaxHeadDim) / kWarpSize;

__global__ void indexer_scores_kernel(IndexerParams p) {
  extern __shared__ float smem[];
  float* qs = smem;                    // [heads * dim]
  float* ws = smem + p.heads * p.dim;  // [heads], already multiplied by scale
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  const int64_t s = sequence_of(p.cu_seqlens, p.n_seqs, t);
  const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start, pos = t - start;
  for (int64_t e = threadIdx.x; e < p.heads * p.dim; e += blockDim.x)
    qs[e] = p.q[t * p.q_sn + (e / p.dim) * p.q_sh + e % p.dim];
  for (int64_t h = threadIdx.x; h < p.heads; h += blockDim.x) ws[h] = p.scale * p.w[t * p.w_s + h];
  float* row = p.scores + p.sq_offsets[s] + pos * len;
  for (int64_t j = pos + 1 + threadIdx.x; j < len; j += blockDim.x) row[j] = -INFINITY;
  __syncthreads();
  for (int64_t j = warp; j <= pos; j += nwarps) {
    const float* kr = p.k + (start + j) * p.k_s;
    float kreg[kPerLane];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int64_t i = c * kWarpSize + lane;
      kreg[c] = i < p.dim ? kr[i] : 0.0f;
    }
    float acc = 0.0f;
    for (int64_t h = 0; h < p.heads; ++h) {
      float g = 0.0f;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int64_t i = c * kWarpSize + lane;
        if (i < p.dim) g += qs[h * p.dim + i] * kreg[c];
      }
      g = warp_sum(g);
      acc += ws[h] * fmaxf(g, 0.0f);
    }
    if (lane == 0) row[j] = acc;
  }
}

constexpr int kBwdWarps = 4;

__global__ void __launch_bounds__(kBwdWarps* kWarpSize) indexer_backward_kernel(IndexerParams p) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t s = sequence_of(p.cu_seqlens, p.n_seqs, t);
  const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start, pos = t - start;
  const float* drow = p.dscores + p.sq_offsets[s] + pos * len;
  const float* qr = p.q + t * p.q_sn + h * p.q_sh;
  const float wh = p.w[t * p.w_s + h];
  float q[kPerLane], dq[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int64_t i = c * kWarpSize + lane;
    q[c] = i < p.dim ? qr[i] : 0.0f;
    dq[c] = 0.0f;
  }
  double acc = 0;
  for (int64_t j = warp; j <= pos; j += kBwdWarps) {
    const float* kr = p.k + (start + j) * p.k_s;
    float g = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int64_t i = c * kWarpSize + lane;
      if (i < p.dim) g += q[c] * kr[i];
    }
    g = warp_sum(g);
    const float dij = drow[j];
    acc += double(dij) * fmaxf(g, 0.0f);
    if (g > 0.0f) {
      const float dg = dij * p.scale * wh;
      float* dkr = p.dk + (start + j) * p.dk_s;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int64_t i = c * kWarpSize + lane;
        if (i < p.dim) {
          dq[c] += dg * kr[i];
          atomicAdd(dkr + i, dg * q[c]);
        }
      }
    }
  }
  __shared__ float sm_dq[kBwdWarps][kIndexerMaxHeadDim];
  __shared__ double sm_acc[kBwdWarps];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) sm_dq[warp][c * kWarpSize + lane] = dq[c];
  if (lane == 0) sm_acc[warp] = acc;  // every lane holds the same acc (g is warp-uniform)
  __syncthreads();
  float* dqr = p.dq + t * p.dq_sn + h * p.dq_sh;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kBwdWarps; ++w) a += sm_dq[w][i];
    dqr[i] = a;
  }
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kBwdWarps; ++w) total += sm_acc[w];
    p.dw[t * p.dw_s + h] = float(p.scale * total);
  }
}

__global__ void zero_rows_kernel(float* x, int64_t rows, int64_t cols, int64_t ld) {
  const int64_t total = rows * cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    x[(e / cols) * ld + e % cols] = 0.0f;
}

__global__ void topk_kernel(TopkParams p, int64_t start, int64_t len, int64_t sq_offset,
                            int64_t row0, int64_t row1) {
  const int64_t i = row0 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= row1) return;
  topk::Item* row = static_cast<topk::Item*>(p.scratch) + (i - row0) * len;
  const float* blk = p.scores + sq_offset + i * len;
  for (int64_t j = 0; j < len; ++j) row[j] = {j <= i ? double(blk[j]) : -DBL_MAX, int32_t(j)};
  const int64_t kk = p.k < len ? p.k : len;
  topk::select_like_reference(row, kk, len);
  topk::make_heap(row, kk, topk::Better());
  topk::sort_heap(row, kk, topk::Better());
  int32_t* dst = p.idx + (start + i) * p.k;
  int64_t w = 0;
  for (int64_t j = 0; j < kk; ++j)
    if (row[j].p <= i) dst[w++] = row[j].p;
  for (; w < p.k; ++w) dst[w] = -1;
}

__global__ void indexer_kl_kernel(IndexerKlParams p) {
  const int64_t t = blockIdx.x;
  const int64_t s = sequence_of(p.cu_seqlens, p.n_seqs, t);
  const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start, pos = t - start;
  if (threadIdx.x == 0) check_sparse_row(p.sparse_idx, p.topk, t, pos, len, p.status, p.op);
  const int64_t off = p.sq_offsets[s] + pos * len;
  const float *pr = p.p + off, *ir = p.scores + off;
  float* dr = p.dscores + off;
  const KeySet ks = key_set(p.sparse_idx, p.topk, t, pos);
  double mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < ks.count; j += blockDim.x) {
    const int64_t key = ks.key(j, pos);
    if (key >= 0) mx = fmax(mx, double(ir[key]));
  }
  mx = block_max(mx, double(-INFINITY));
  double z = 0;
  for (int64_t j = threadIdx.x; j < ks.count; j += blockDim.x) {
    const int64_t key = ks.key(j, pos);
    if (key >= 0) z += exp(double(ir[key]) - mx);
  }
  z = block_sum(z);
  const double lz = mx + log(z);
  // Zero the row first: in the sparse case the set is scattered over it.
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
    if (ks.row != nullptr || j > pos) dr[j] = 0.0f;
  __syncthreads();
  double kl = 0;
  for (int64_t j = threadIdx.x; j < ks.count; j += blockDim.x) {
    const int64_t key = ks.key(j, pos);
    if (key < 0) continue;
    const double logq = double(ir[key]) - lz, pj = pr[key];
    if (pj > 0) kl += pj * (log(pj) - logq);
    dr[key] = float(p.grad_scale * (exp(logq) - pj));
  }
  kl = block_sum(kl);
  if (threadIdx.x == 0) p.row_kl[t] = kl;
}

__global__ void hadamard_fp8_kernel(float* x, int64_t rows, int64_t dim, int64_t ld, bool hadamard,
                                    bool fp8, float norm) {
  extern __shared__ float v[];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* xr = x + r * ld;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] = xr[i];
    __syncthreads();
    if (hadamard) {
      for (int64_t h = 1; h < dim; h *= 2) {
        for (int64_t e = threadIdx.x; e < dim / 2; e += blockDim.x) {
          const int64_t i = (e / h) * 2 * h + e % h;
          const float a = v[i], b = v[i + h];
          v[i] = a + b;
          v[i + h] = a - b;
        }
        __syncthreads();
      }
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] *= norm;
      __syncthreads();
    }
    if (fp8) {
      float amax = 1e-4f;
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) amax = fmaxf(amax, fabsf(v[i]));
      amax = block_max(amax, 1e-4f);
      const float sc = amax / 448.0f;
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        v[i] = f8e4m3_bits_to_f32(f32_to_f8e4m3_bits(v[i] / sc)) * sc;
      __syncthreads();
    }
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) xr[i] = v[i];
    __syncthreads();  // v is reused by the next row
  }
}

}  // namespace

int indexer_scores_cuda(const IndexerParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || p.heads < 0 || p.dim <= 0 || p.dim > kIndexerMaxHeadDim || !p.q || !p.k || !p.w ||
      !p.cu_seqlens || !p.sq_offsets || !p.scores || p.n_seqs < 1)
    return int(cudaErrorInvalidValue);
  const size_t smem = size_t(p.heads * p.dim + p.heads) * sizeof(float);
  if (smem > 48 * 1024) {
    if (smem > 200 * 1024) return int(cudaErrorInvalidValue);
    const cudaError_t e = cudaFuncSetAttribute(
        indexer_scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return int(e);
  }
  indexer_scores_kernel<<<unsigned(p.n), 256, smem, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int indexer_scores_backward_cuda(const IndexerParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || p.heads <= 0 || p.heads > 65535 || p.dim <= 0 || p.dim > kIndexerMaxHeadDim ||
      !p.q || !p.k || !p.w || !p.cu_seqlens || !p.sq_offsets || !p.dscores || !p.dq || !p.dk ||
      !p.dw || p.n_seqs < 1)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  zero_rows_kernel<<<grid_for(p.n * p.dim, 256), 256, 0, s>>>(p.dk, p.n, p.dim, p.dk_s);
  indexer_backward_kernel<<<dim3(unsigned(p.n), unsigned(p.heads)), kBwdWarps * kWarpSize, 0, s>>>(
      p);
  return int(cudaGetLastError());
}

int topk_rows_cuda(const TopkParams& p, int64_t start, int64_t len, int64_t sq_offset, int64_t row0,
                   int64_t row1, void* stream) {
  if (row1 <= row0) return int(cudaSuccess);
  if (p.k < 1 || !p.scores || !p.idx || !p.scratch || (row1 - row0) * len > p.scratch_items ||
      len > INT32_MAX)
    return int(cudaErrorInvalidValue);
  constexpr int kThreads = 64;
  topk_kernel<<<unsigned((row1 - row0 + kThreads - 1) / kThreads), kThreads, 0,
                static_cast<cudaStream_t>(stream)>>>(p, start, len, sq_offset, row0, row1);
  return int(cudaGetLastError());
}

int indexer_kl_cuda(const IndexerKlParams& p, void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (p.n < 0 || !p.p || !p.scores || !p.dscores || !p.row_kl || !p.cu_seqlens || !p.sq_offsets ||
      p.n_seqs < 1 || (p.sparse_idx && p.topk < 1))
    return int(cudaErrorInvalidValue);
  indexer_kl_kernel<<<unsigned(p.n), 256, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int hadamard_fp8_cuda(float* x, int64_t rows, int64_t dim, int64_t ld, bool hadamard, bool fp8,
                      float norm, void* stream) {
  if (rows == 0 || dim == 0) return int(cudaSuccess);
  if (!x || rows < 0 || dim < 0 || ld < dim || dim > 16384 || (hadamard && (dim & (dim - 1)) != 0))
    return int(cudaErrorInvalidValue);
  const size_t smem = size_t(dim) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        hadamard_fp8_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return int(e);
  }
  hadamard_fp8_kernel<<<grid_for(rows, 1), 256, smem, static_cast<cudaStream_t>(stream)>>>(
      x, rows, dim, ld, hadamard, fp8, norm);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
