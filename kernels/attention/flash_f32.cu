// Tiled causal attention in f32 for dense (non-DSA) attention over packed sequences: the
// FlashAttention-2 scheme on CUDA cores. Forward: a block per (64-query tile, head) walks 32-key
// tiles from the start of its first query's sequence to its last query, with an online softmax;
// scores and probabilities stay in registers and shared memory. Backward: a block per (64-key
// tile, head) walks 32-query tiles to the end of its last key's sequence, recomputes P from the
// saved log-sum-exp (D = rowsum(dO * O) comes from a small kernel first), accumulates dK and dV
// in registers (written once) and adds its share of each query tile's dQ with f32 atomics. A tile
// may straddle sequences: each (query, key) pair is masked by start(seq(query)) <= key <= query,
// so packing needs no tile table.
//
// Thread layout (256 threads): thread (ty = tid / 8, tx = tid % 8) owns rows 2 ty, 2 ty + 1 of the
// 64-row tile and columns tx + 8 j of the 32-column tile (j < 4) and of the head dims (j < dims/8);
// the 8 threads of a row pair are adjacent lanes of one warp, so row reductions are 3 shuffles.
// Shared rows are padded by one float (conflict-free column walks). Limits: dk <= 192, dv <= 128
// (the MLA head dims of DeepSeek-V3); attention.cu keeps the general kernels for the rest.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_common.cuh"
#include "kernels/common/reduce.cuh"

namespace shoal::kernels {
namespace {

constexpr int kRows = 64, kCols = 32, kThreads = 256;
constexpr int kMaxDk = 192, kMaxDv = 128;
constexpr int kDkc = kMaxDk / 8, kDvc = kMaxDv / 8;  // head-dim columns per thread

__device__ __forceinline__ float row_max8(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
}
__device__ __forceinline__ float row_sum8(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v + __shfl_xor_sync(0xffffffffu, v, 4);
}

// Loads rows [t0, t0 + rows) of an [N, H, d] operand (head h) into sm[rows][ld], times mul;
// rows past n are zero.
__device__ __forceinline__ void load_tile(float* sm, int ld, const float* src, int64_t sn,
                                          int64_t sh, int64_t h, int64_t t0, int rows, int64_t d,
                                          int64_t n, float mul) {
  for (int e = threadIdx.x; e < rows * d; e += kThreads) {
    const int i = e / int(d), c = e % int(d);
    const int64_t t = t0 + i;
    sm[i * ld + c] = t < n ? mul * src[t * sn + h * sh + c] : 0.0f;
  }
}

__device__ __forceinline__ int64_t seq_start(const AttentionParams& p, int64_t t) {
  return p.cu_seqlens[sequence_of(p.cu_seqlens, p.n_seqs, t)];
}

// ------------------------------------------------------------------------------------ forward

__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(AttentionParams p) {
  extern __shared__ float sm[];
  const int dk = int(p.dk), dv = int(p.dv), ldk = dk + 1, ldv = dv + 1;
  float* sQ = sm;                // [64][ldk], pre-scaled
  float* sK = sQ + kRows * ldk;  // [32][ldk]
  float* sV = sK + kCols * ldk;  // [32][ldv]
  float* sP = sV + kCols * ldv;  // [64][33]
  __shared__ int64_t s_start[kRows];
  const int64_t h = blockIdx.y, t0 = int64_t(blockIdx.x) * kRows;
  const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;
  for (int i = threadIdx.x; i < kRows; i += kThreads)
    s_start[i] = t0 + i < p.n ? seq_start(p, t0 + i) : p.n;
  load_tile(sQ, ldk, p.q, p.q_sn, p.q_sh, h, t0, kRows, dk, p.n, p.scale);
  __syncthreads();
  const int r[2] = {2 * ty, 2 * ty + 1};
  const int64_t tq[2] = {t0 + r[0], t0 + r[1]};
  const int64_t qs[2] = {s_start[r[0]], s_start[r[1]]};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[2][kDvc];
#pragma unroll
  for (int j = 0; j < kDvc; ++j) o[0][j] = o[1][j] = 0.0f;
  const int64_t kbeg = s_start[0], kend = min(t0 + kRows, p.n);
  for (int64_t k0 = kbeg; k0 < kend; k0 += kCols) {
    __syncthreads();  // the previous tile's readers are done
    load_tile(sK, ldk, p.k, p.k_sn, p.k_sh, h, k0, kCols, dk, p.n, 1.0f);
    load_tile(sV, ldv, p.v, p.v_sn, p.v_sh, h, k0, kCols, dv, p.n, 1.0f);
    __syncthreads();
    float s[2][4] = {};
    for (int d = 0; d < dk; ++d) {
      const float q0 = sQ[r[0] * ldk + d], q1 = sQ[r[1] * ldk + d];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float kv = sK[(tx + 8 * j) * ldk + d];
        s[0][j] += q0 * kv;
        s[1][j] += q1 * kv;
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t key = k0 + tx + 8 * j;
        if (!(key >= qs[i] && key <= tq[i] && tq[i] < p.n)) s[i][j] = -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = row_max8(mx);
      const float m_new = fmaxf(m[i], mx);
      float sum = 0.0f, corr = 1.0f;
      if (m_new != -INFINITY) {
        corr = expf(m[i] - m_new);  // 0 while m is -inf
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[i][j] = s[i][j] == -INFINITY ? 0.0f : expf(s[i][j] - m_new);
          sum += s[i][j];
        }
        m[i] = m_new;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
      }
      sum = row_sum8(sum);
      l[i] = l[i] * corr + sum;
#pragma unroll
      for (int j = 0; j < kDvc; ++j) o[i][j] *= corr;
#pragma unroll
      for (int j = 0; j < 4; ++j) sP[r[i] * (kCols + 1) + tx + 8 * j] = s[i][j];
    }
    __syncwarp();  // a row pair's probabilities come from its own 8 lanes
    for (int kk = 0; kk < kCols; ++kk) {
      const float p0 = sP[r[0] * (kCols + 1) + kk], p1 = sP[r[1] * (kCols + 1) + kk];
#pragma unroll
      for (int j = 0; j < kDvc; ++j) {
        const int c = tx + 8 * j;
        if (c < dv) {
          const float vv = sV[kk * ldv + c];
          o[0][j] += p0 * vv;
          o[1][j] += p1 * vv;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (tq[i] >= p.n) continue;
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
    float* orow = p.out + tq[i] * p.o_sn + h * p.o_sh;
#pragma unroll
    for (int j = 0; j < kDvc; ++j) {
      const int c = tx + 8 * j;
      if (c < dv) orow[c] = o[i][j] * inv;
    }
    if (tx == 0) p.lse[h * p.n + tq[i]] = l[i] > 0.0f ? m[i] + logf(l[i]) : -INFINITY;
  }
}

// ------------------------------------------------------------------------------------ backward

// dq[t, h, :] = 0 for the atomics of the dK/dV kernel.
__global__ void flash_zero_dq_kernel(AttentionParams p) {
  const int64_t total = p.n * p.heads * p.dk;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % p.dk, rh = e / p.dk;
    p.dq[(rh / p.heads) * p.dq_sn + (rh % p.heads) * p.dq_sh + i] = 0.0f;
  }
}

// D[h, t] = dot(dout[t, h], out[t, h]): a warp per (t, h).
__global__ void flash_drow_kernel(AttentionParams p) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (w >= p.n * p.heads) return;
  const int64_t t = w / p.heads, h = w % p.heads;
  const float* a = p.dout + t * p.do_sn + h * p.do_sh;
  const float* b = p.out + t * p.o_sn + h * p.o_sh;
  float acc = 0.0f;
  for (int64_t i = lane; i < p.dv; i += kWarpSize) acc += a[i] * b[i];
  acc = warp_sum(acc);
  if (lane == 0) p.drow[h * p.n + t] = acc;
}

// dK, dV for 64 keys of one head (rows = keys, columns = queries of the current 32-query tile),
// written once; and this block's share of dQ for each query tile, added with f32 atomics (dQ is
// zeroed first; the order of the additions, and so dQ's last bits, vary from run to run).
__global__ void __launch_bounds__(kThreads) flash_bwd_dkdv_kernel(AttentionParams p) {
  extern __shared__ float sm[];
  const int dk = int(p.dk), dv = int(p.dv), ldk = dk + 1, ldv = dv + 1;
  float* sK = sm;                         // [64][ldk]
  float* sV = sK + kRows * ldk;           // [64][ldv]
  float* sQ = sV + kRows * ldv;           // [32][ldk]
  float* sdO = sQ + kCols * ldk;          // [32][ldv]
  float* sP = sdO + kCols * ldv;          // [64][33] P^T
  float* sdS = sP + kRows * (kCols + 1);  // [64][33] dS^T
  __shared__ int64_t s_qstart[kCols];
  __shared__ float s_lse[kCols], s_d[kCols];
  const int64_t h = blockIdx.y, k0 = int64_t(blockIdx.x) * kRows;
  const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;
  load_tile(sK, ldk, p.k, p.k_sn, p.k_sh, h, k0, kRows, dk, p.n, 1.0f);
  load_tile(sV, ldv, p.v, p.v_sn, p.v_sh, h, k0, kRows, dv, p.n, 1.0f);
  const int r[2] = {2 * ty, 2 * ty + 1};
  const int64_t key[2] = {k0 + r[0], k0 + r[1]};
  float dK[2][kDkc], dV[2][kDvc];
#pragma unroll
  for (int j = 0; j < kDkc; ++j) dK[0][j] = dK[1][j] = 0.0f;
#pragma unroll
  for (int j = 0; j < kDvc; ++j) dV[0][j] = dV[1][j] = 0.0f;
  const int64_t last = min(k0 + kRows, p.n) - 1;
  const int64_t qend = p.cu_seqlens[sequence_of(p.cu_seqlens, p.n_seqs, last) + 1];
  for (int64_t q0 = k0; q0 < qend; q0 += kCols) {
    __syncthreads();
    load_tile(sQ, ldk, p.q, p.q_sn, p.q_sh, h, q0, kCols, dk, p.n, 1.0f);
    load_tile(sdO, ldv, p.dout, p.do_sn, p.do_sh, h, q0, kCols, dv, p.n, 1.0f);
    for (int i = threadIdx.x; i < kCols; i += kThreads) {
      const int64_t t = q0 + i;
      const bool in = t < p.n;
      s_qstart[i] = in ? seq_start(p, t) : p.n;
      s_lse[i] = in ? p.lse[h * p.n + t] : 0.0f;
      s_d[i] = in ? p.drow[h * p.n + t] : 0.0f;
    }
    __syncthreads();
    float s[2][4] = {}, dp[2][4] = {};
    for (int d = 0; d < dk; ++d) {
      const float a0 = sK[r[0] * ldk + d], a1 = sK[r[1] * ldk + d];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float b = sQ[(tx + 8 * j) * ldk + d];
        s[0][j] += a0 * b;
        s[1][j] += a1 * b;
      }
    }
    for (int d = 0; d < dv; ++d) {
      const float a0 = sV[r[0] * ldv + d], a1 = sV[r[1] * ldv + d];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float b = sdO[(tx + 8 * j) * ldv + d];
        dp[0][j] += a0 * b;
        dp[1][j] += a1 * b;
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = tx + 8 * j;
        const int64_t t = q0 + c;
        const bool ok = t < p.n && key[i] < p.n && key[i] >= s_qstart[c] && key[i] <= t;
        const float pr = ok ? expf(p.scale * s[i][j] - s_lse[c]) : 0.0f;
        sP[r[i] * (kCols + 1) + c] = pr;
        sdS[r[i] * (kCols + 1) + c] = pr * (dp[i][j] - s_d[c]);
      }
    __syncwarp();
    for (int qq = 0; qq < kCols; ++qq) {
      const float p0 = sP[r[0] * (kCols + 1) + qq], p1 = sP[r[1] * (kCols + 1) + qq];
      const float g0 = sdS[r[0] * (kCols + 1) + qq], g1 = sdS[r[1] * (kCols + 1) + qq];
#pragma unroll
      for (int j = 0; j < kDvc; ++j) {
        const int c = tx + 8 * j;
        if (c < dv) {
          const float b = sdO[qq * ldv + c];
          dV[0][j] += p0 * b;
          dV[1][j] += p1 * b;
        }
      }
#pragma unroll
      for (int j = 0; j < kDkc; ++j) {
        const int c = tx + 8 * j;
        if (c < dk) {
          const float b = sQ[qq * ldk + c];
          dK[0][j] += g0 * b;
          dK[1][j] += g1 * b;
        }
      }
    }
    // dQ[q] += scale * sum over this block's keys of dS[q, key] K[key]: thread (ty, tx) takes
    // query column ty and head dims tx + 8 j; other key blocks add into the same rows.
    __syncthreads();  // every key row's dS is written
    float acc[kDkc];
#pragma unroll
    for (int j = 0; j < kDkc; ++j) acc[j] = 0.0f;
    for (int kk = 0; kk < kRows; ++kk) {
      const float g = sdS[kk * (kCols + 1) + ty];
#pragma unroll
      for (int j = 0; j < kDkc; ++j) {
        const int c = tx + 8 * j;
        if (c < dk) acc[j] += g * sK[kk * ldk + c];
      }
    }
    const int64_t tqc = q0 + ty;
    if (tqc < p.n) {
      float* dqr = p.dq + tqc * p.dq_sn + h * p.dq_sh;
#pragma unroll
      for (int j = 0; j < kDkc; ++j) {
        const int c = tx + 8 * j;
        if (c < dk) atomicAdd(dqr + c, p.scale * acc[j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (key[i] >= p.n) continue;
    float* dkr = p.dkk + key[i] * p.dk_sn + h * p.dk_sh;
    float* dvr = p.dvv + key[i] * p.dv_sn + h * p.dv_sh;
#pragma unroll
    for (int j = 0; j < kDkc; ++j) {
      const int c = tx + 8 * j;
      if (c < dk) dkr[c] = p.scale * dK[i][j];
    }
#pragma unroll
    for (int j = 0; j < kDvc; ++j) {
      const int c = tx + 8 * j;
      if (c < dv) dvr[c] = dV[i][j];
    }
  }
}

size_t fwd_smem(const AttentionParams& p) {
  const int64_t ldk = p.dk + 1, ldv = p.dv + 1;
  return sizeof(float) * size_t(kRows * ldk + kCols * ldk + kCols * ldv + kRows * (kCols + 1));
}
size_t dkdv_smem(const AttentionParams& p) {
  const int64_t ldk = p.dk + 1, ldv = p.dv + 1;
  return sizeof(float) *
         size_t(kRows * ldk + kRows * ldv + kCols * ldk + kCols * ldv + 2 * kRows * (kCols + 1));
}
template <typename Kernel>
cudaError_t launch(Kernel k, const AttentionParams& p, size_t smem, cudaStream_t s) {
  const cudaError_t e =
      cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const unsigned tiles = unsigned((p.n + kRows - 1) / kRows);
  k<<<dim3(tiles, unsigned(p.heads)), kThreads, smem, s>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool flash_attention_f32_supported(const AttentionParams& p) {
  return p.sparse_idx == nullptr && p.dk >= 1 && p.dk <= kMaxDk && p.dv >= 1 && p.dv <= kMaxDv &&
         p.heads >= 1 && p.heads <= 65535 && p.n >= 1 && (p.n + kRows - 1) / kRows <= INT32_MAX;
}

int flash_attention_forward_f32(const AttentionParams& p, void* stream) {
  if (!flash_attention_f32_supported(p) || !p.q || !p.k || !p.v || !p.out || !p.lse ||
      !p.cu_seqlens)
    return int(cudaErrorInvalidValue);
  return int(launch(flash_fwd_kernel, p, fwd_smem(p), static_cast<cudaStream_t>(stream)));
}

int flash_attention_backward_prologue(const AttentionParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t warps = p.n * p.heads;
  flash_drow_kernel<<<unsigned((warps * kWarpSize + 255) / 256), 256, 0, s>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return int(e);
  const int64_t zero_blocks = std::min<int64_t>((p.n * p.heads * p.dk + 255) / 256, 65536);
  flash_zero_dq_kernel<<<unsigned(zero_blocks), 256, 0, s>>>(p);
  return int(cudaGetLastError());
}

int flash_attention_backward_f32(const AttentionParams& p, void* stream) {
  if (!flash_attention_f32_supported(p) || !p.q || !p.k || !p.v || !p.out || !p.lse || !p.dout ||
      !p.dq || !p.dkk || !p.dvv || !p.drow || !p.cu_seqlens)
    return int(cudaErrorInvalidValue);
  const int e = flash_attention_backward_prologue(p, stream);
  if (e != int(cudaSuccess)) return e;
  return int(launch(flash_bwd_dkdv_kernel, p, dkdv_smem(p), static_cast<cudaStream_t>(stream)));
}

}  // namespace shoal::kernels
