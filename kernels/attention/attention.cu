// Attention kernels (attention.h). Forward: a block of kWarps warps per (query, head); each warp
// takes every kWarps-th key of the query's set, computes the scaled dot product with its 32 lanes
// spread over the head dim, and keeps an online softmax (running max, sum, weighted sum of v);
// the warps' states merge in shared memory at the end. Backward: the same walk recomputes
// p = exp(s - lse), accumulates dq in registers and adds into dk/dv with atomics.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_common.cuh"
#include "kernels/common/reduce.cuh"

namespace shoal::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = kAttentionMaxHeadDim / kWarpSize;  // head-dim elements per lane

__device__ __forceinline__ void load_lanes(const float* src, int64_t d, int lane,
                                           float (&r)[kPerLane]) {
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int64_t i = c * kWarpSize + lane;
    r[c] = i < d ? src[i] : 0.0f;
  }
}

__device__ __forceinline__ float dot_lanes(const float (&a)[kPerLane], const float* b, int64_t d,
                                           int lane) {
  float acc = 0.0f;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int64_t i = c * kWarpSize + lane;
    if (i < d) acc += a[c] * b[i];
  }
  return warp_sum(acc);
}

__global__ void __launch_bounds__(kWarps* kWarpSize) attention_forward_kernel(AttentionParams p) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t s = sequence_of(p.cu_seqlens, p.n_seqs, t);
  const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start, pos = t - start;
  if (h == 0 && threadIdx.x == 0)
    check_sparse_row(p.sparse_idx, p.topk, t, pos, len, p.status, p.op);
  const KeySet ks = key_set(p.sparse_idx, p.topk, t, pos);

  float q[kPerLane], acc[kPerLane];
  load_lanes(p.q + t * p.q_sn + h * p.q_sh, p.dk, lane, q);
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = warp; j < ks.count; j += kWarps) {
    const int64_t key = ks.key(j, pos);
    if (key < 0) continue;
    const int64_t kt = start + key;
    const float sc = p.scale * dot_lanes(q, p.k + kt * p.k_sn + h * p.k_sh, p.dk, lane);
    const float m_new = fmaxf(m, sc);
    const float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float pj = expf(sc - m_new);
    l = l * corr + pj;
    const float* vr = p.v + kt * p.v_sn + h * p.v_sh;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int64_t i = c * kWarpSize + lane;
      acc[c] = acc[c] * corr + (i < p.dv ? pj * vr[i] : 0.0f);
    }
    m = m_new;
  }

  __shared__ float sm_m[kWarps], sm_l[kWarps];
  __shared__ float sm_acc[kWarps][kAttentionMaxHeadDim];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) sm_acc[warp][c * kWarpSize + lane] = acc[c];
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w]);
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w)
    if (sm_l[w] > 0.0f) total += sm_l[w] * expf(sm_m[w] - mx);
  float* o = p.out + t * p.o_sn + h * p.o_sh;
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int64_t i = threadIdx.x; i < p.dv; i += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sm_l[w] > 0.0f) a += sm_acc[w][i] * expf(sm_m[w] - mx);
    o[i] = a * inv;
  }
  if (threadIdx.x == 0) p.lse[h * p.n + t] = total > 0.0f ? mx + logf(total) : -INFINITY;
}

__global__ void __launch_bounds__(kWarps* kWarpSize) attention_backward_kernel(AttentionParams p) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t s = sequence_of(p.cu_seqlens, p.n_seqs, t);
  const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start, pos = t - start;
  if (h == 0 && threadIdx.x == 0)
    check_sparse_row(p.sparse_idx, p.topk, t, pos, len, p.status, p.op);
  const KeySet ks = key_set(p.sparse_idx, p.topk, t, pos);

  float q[kPerLane], dout[kPerLane], dq[kPerLane];
  load_lanes(p.q + t * p.q_sn + h * p.q_sh, p.dk, lane, q);
  load_lanes(p.dout + t * p.do_sn + h * p.do_sh, p.dv, lane, dout);
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) dq[c] = 0.0f;
  const float d_row = dot_lanes(dout, p.out + t * p.o_sn + h * p.o_sh, p.dv, lane);
  const float lse = p.lse[h * p.n + t];
  for (int64_t j = warp; j < ks.count; j += kWarps) {
    const int64_t key = ks.key(j, pos);
    if (key < 0) continue;
    const int64_t kt = start + key;
    const float* kr = p.k + kt * p.k_sn + h * p.k_sh;
    const float sc = p.scale * dot_lanes(q, kr, p.dk, lane);
    const float pj = expf(sc - lse);
    const float dp = dot_lanes(dout, p.v + kt * p.v_sn + h * p.v_sh, p.dv, lane);
    const float ds = pj * (dp - d_row);
    float* dkr = p.dkk + kt * p.dk_sn + h * p.dk_sh;
    float* dvr = p.dvv + kt * p.dv_sn + h * p.dv_sh;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int64_t i = c * kWarpSize + lane;
      if (i < p.dk) {
        dq[c] += ds * kr[i];
        atomicAdd(dkr + i, p.scale * ds * q[c]);
      }
      if (i < p.dv) atomicAdd(dvr + i, pj * dout[c]);
    }
  }
  __shared__ float sm_dq[kWarps][kAttentionMaxHeadDim];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) sm_dq[warp][c * kWarpSize + lane] = dq[c];
  __syncthreads();
  float* dqr = p.dq + t * p.dq_sn + h * p.dq_sh;
  for (int64_t i = threadIdx.x; i < p.dk; i += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kWarps; ++w) a += sm_dq[w][i];
    dqr[i] = p.scale * a;
  }
}

// Zeroes an [n, heads, d] strided view.
__global__ void zero_nhd_kernel(float* x, int64_t n, int64_t heads, int64_t d, int64_t sn,
                                int64_t sh) {
  const int64_t total = n * heads * d;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % d, rh = e / d;
    x[(rh / heads) * sn + (rh % heads) * sh + i] = 0.0f;
  }
}

__global__ void head_sum_probs_kernel(AttentionParams p, const int64_t* sq_offsets, float* probs) {
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  const int64_t s = sequence_of(p.cu_seqlens, p.n_seqs, t);
  const int64_t start = p.cu_seqlens[s], len = p.cu_seqlens[s + 1] - start, pos = t - start;
  if (threadIdx.x == 0) check_sparse_row(p.sparse_idx, p.topk, t, pos, len, p.status, p.op);
  float* row = probs + sq_offsets[s] + pos * len;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) row[j] = 0.0f;
  __syncthreads();
  const KeySet ks = key_set(p.sparse_idx, p.topk, t, pos);
  for (int64_t j = warp; j < ks.count; j += nwarps) {
    const int64_t key = ks.key(j, pos);
    if (key < 0) continue;
    const int64_t kt = start + key;
    float acc = 0.0f;  // summed over heads in order, as the CPU reference does
    for (int64_t h = 0; h < p.heads; ++h) {
      const float* qr = p.q + t * p.q_sn + h * p.q_sh;
      const float* kr = p.k + kt * p.k_sn + h * p.k_sh;
      float d = 0.0f;
      for (int64_t i = lane; i < p.dk; i += kWarpSize) d += qr[i] * kr[i];
      d = warp_sum(d);
      acc += expf(p.scale * d - p.lse[h * p.n + t]);
    }
    if (lane == 0) row[key] = acc;
  }
  __syncthreads();
  double sum = 0;
  for (int64_t j = threadIdx.x; j <= pos; j += blockDim.x) sum += row[j];
  sum = block_sum(sum);
  const float inv = sum > 0 ? float(1.0 / sum) : 0.0f;
  for (int64_t j = threadIdx.x; j <= pos; j += blockDim.x) row[j] *= inv;
}

bool valid(const AttentionParams& p) {
  return p.n >= 0 && p.heads >= 0 && p.dk > 0 && p.dk <= kAttentionMaxHeadDim && p.dv >= 0 &&
         p.dv <= kAttentionMaxHeadDim && p.cu_seqlens != nullptr && p.n_seqs >= 1 &&
         p.heads <= 65535 && (p.sparse_idx == nullptr || p.topk >= 1) && p.q && p.k;
}

}  // namespace

int attention_forward_cuda(const AttentionParams& p, void* stream) {
  if (p.n == 0 || p.heads == 0) return int(cudaSuccess);
  if (!valid(p) || !p.v || !p.out || !p.lse) return int(cudaErrorInvalidValue);
  if (flash_attention_f32_supported(p)) {
    switch (p.precision) {
      case AttentionPrecision::tf32:
        return flash_attention_forward_tf32(p, stream);
      case AttentionPrecision::bf16:
        return flash_attention_forward_bf16(p, stream);
      case AttentionPrecision::f32:
        break;
    }
    return flash_attention_forward_f32(p, stream);
  }
  attention_forward_kernel<<<dim3(unsigned(p.n), unsigned(p.heads)), kWarps * kWarpSize, 0,
                             static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

int attention_backward_cuda(const AttentionParams& p, void* stream) {
  if (p.n == 0 || p.heads == 0) return int(cudaSuccess);
  if (!valid(p) || !p.v || !p.out || !p.lse || !p.dout || !p.dq || !p.dkk || !p.dvv)
    return int(cudaErrorInvalidValue);
  if (p.drow && flash_attention_f32_supported(p)) {
    switch (p.precision) {
      case AttentionPrecision::tf32:
        return flash_attention_backward_tf32(p, stream);
      case AttentionPrecision::bf16:
        return flash_attention_backward_bf16(p, stream);
      case AttentionPrecision::f32:
        break;
    }
    return flash_attention_backward_f32(p, stream);
  }
  auto s = static_cast<cudaStream_t>(stream);
  zero_nhd_kernel<<<grid_for(p.n * p.heads * p.dk, 256), 256, 0, s>>>(p.dkk, p.n, p.heads, p.dk,
                                                                      p.dk_sn, p.dk_sh);
  if (p.dv > 0)
    zero_nhd_kernel<<<grid_for(p.n * p.heads * p.dv, 256), 256, 0, s>>>(p.dvv, p.n, p.heads, p.dv,
                                                                        p.dv_sn, p.dv_sh);
  attention_backward_kernel<<<dim3(unsigned(p.n), unsigned(p.heads)), kWarps * kWarpSize, 0, s>>>(
      p);
  return int(cudaGetLastError());
}

int attention_head_sum_probs_cuda(const AttentionParams& p, const int64_t* sq_offsets, float* probs,
                                  void* stream) {
  if (p.n == 0) return int(cudaSuccess);
  if (!valid(p) || !p.lse || !sq_offsets || !probs) return int(cudaErrorInvalidValue);
  head_sum_probs_kernel<<<unsigned(p.n), 256, 0, static_cast<cudaStream_t>(stream)>>>(p, sq_offsets,
                                                                                      probs);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
