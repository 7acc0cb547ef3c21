// Tiled causal attention on the tensor cores in TF32 (operands rounded to nearest to a 10-bit
// mantissa when they enter shared memory, f32 accumulation), for dense attention with dk <= 192
// and dv <= 128 over packed sequences; opt-in (AttentionParams::tf32), since it is not f32.
// The tile products run through WMMA (16x16x8 TF32 fragments); everything else (masking, softmax,
// the log-sum-exp, D = rowsum(dO * O)) is f32 on the CUDA cores.
//
// Forward: a block per (64-query tile, head), 8 warps. Two passes over the 32-key tiles from the
// start of the first query's sequence to the last query: the first computes S = Q K^T and keeps
// each row's running max and sum (scalars; 4 threads per row); the second recomputes S, turns it
// into P = exp(S - lse) and accumulates O += P V in fragments. Two passes avoid rescaling O,
// whose fragment layout is opaque. Backward: a block per (64-key tile, head) walks 32-query tiles
// to the end of its last key's sequence: S^T = K Q^T and dP^T = V dO^T, then P^T and
// dS^T = P^T (dP^T - D) on the CUDA cores, dV += P^T dO and dK += dS^T Q in fragments held across
// tiles, and dQ += dS K for the query tile, added to global memory with f32 atomics.
// A pair (query, key) counts when start(seq(query)) <= key <= query, as in flash_f32.cu.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_common.cuh"
#include "kernels/common/reduce.cuh"

namespace shoal::kernels {
namespace {

namespace wmma = nvcuda::wmma;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragAc = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

constexpr int kRows = 64, kCols = 32, kThreads = 256;
constexpr int kLdS = kCols + 8;          // score tiles [64][40]
constexpr int kMaxDkF = 192 / 16;        // 16-wide fragment columns of dk
constexpr int kMaxDvF = 128 / 16;        // of dv
constexpr int kDkPerWarp = kMaxDkF / 2;  // dK fragments a warp holds (4 row groups x 2 halves)
constexpr int kDvPerWarp = kMaxDvF / 2;

__host__ __device__ constexpr int round16(int x) {
  return (x + 15) / 16 * 16;
}
// Shared row length for a head dim: a multiple of 8 floats (32-byte fragment pointers), padded.
__host__ __device__ constexpr int lead(int d) {
  return round16(d) + 8;
}

// Rows [t0, t0 + rows) of an [N, H, d] operand (head h) into sm[rows][ld], times mul, rounded to
// TF32; columns d .. round16(d) and rows past n are zero.
__device__ __forceinline__ void load_tile_tf32(float* sm, int ld, const float* src, int64_t sn,
                                               int64_t sh, int64_t h, int64_t t0, int rows, int d,
                                               int64_t n, float mul) {
  const int dp = round16(d);
  for (int e = threadIdx.x; e < rows * dp; e += kThreads) {
    const int i = e / dp, c = e % dp;
    const int64_t t = t0 + i;
    const float v = (t < n && c < d) ? mul * src[t * sn + h * sh + c] : 0.0f;
    sm[i * ld + c] = wmma::__float_to_tf32(v);
  }
}

__device__ __forceinline__ int64_t seq_start(const AttentionParams& p, int64_t t) {
  return p.cu_seqlens[sequence_of(p.cu_seqlens, p.n_seqs, t)];
}

// C[16x16] = A[16 x k] B[k x 16], k a multiple of 8; A row-major (lda), B col-major (ldb).
__device__ __forceinline__ void mma_rc(FragC& c, const float* a, int lda, const float* b, int ldb,
                                       int k) {
  FragA fa;
  FragBc fb;
  for (int k8 = 0; k8 < k; k8 += 8) {
    wmma::load_matrix_sync(fa, a + k8, lda);
    wmma::load_matrix_sync(fb, b + k8, ldb);
    wmma::mma_sync(c, fa, fb, c);
  }
}

// ------------------------------------------------------------------------------------ forward

__global__ void __launch_bounds__(kThreads) flash_tf32_fwd_kernel(AttentionParams p) {
  extern __shared__ __align__(128) float sm[];
  const int dk = int(p.dk), dv = int(p.dv), ldk = lead(dk), ldv = lead(dv);
  const int dkp = round16(dk), dvf = round16(dv) / 16;
  float* sQ = sm;                 // [64][ldk], pre-scaled
  float* sK = sQ + kRows * ldk;   // [32][ldk]
  float* sV = sK + kCols * ldk;   // [32][ldv]
  float* sS = sV + kCols * ldv;   // [64][40]
  float* sO = sS + kRows * kLdS;  // [64][ldv]
  __shared__ int64_t s_start[kRows];
  const int64_t h = blockIdx.y, t0 = int64_t(blockIdx.x) * kRows;
  const int warp = threadIdx.x / kWarpSize;
  for (int i = threadIdx.x; i < kRows; i += kThreads)
    s_start[i] = t0 + i < p.n ? seq_start(p, t0 + i) : p.n;
  load_tile_tf32(sQ, ldk, p.q, p.q_sn, p.q_sh, h, t0, kRows, dk, p.n, p.scale);
  __syncthreads();
  // Softmax threads: row sr (4 threads per row, adjacent lanes), columns sc0 .. sc0 + 7.
  const int sr = threadIdx.x / 4, sc0 = (threadIdx.x % 4) * 8;
  const int64_t tq = t0 + sr, qs = s_start[sr];
  float m = -INFINITY, l = 0.0f;
  const int64_t kbeg = s_start[0], kend = min(t0 + kRows, p.n);
  const int fr = warp / 2, fc = warp % 2;  // the S fragment of this warp
  FragC o[kDvPerWarp];
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
#pragma unroll
      for (int j = 0; j < kDvPerWarp; ++j) wmma::fill_fragment(o[j], 0.0f);
    }
    const float lse = l > 0.0f ? m + logf(l) : 0.0f;
    for (int64_t k0 = kbeg; k0 < kend; k0 += kCols) {
      __syncthreads();
      load_tile_tf32(sK, ldk, p.k, p.k_sn, p.k_sh, h, k0, kCols, dk, p.n, 1.0f);
      if (pass == 1) load_tile_tf32(sV, ldv, p.v, p.v_sn, p.v_sh, h, k0, kCols, dv, p.n, 1.0f);
      __syncthreads();
      FragC s;
      wmma::fill_fragment(s, 0.0f);
      mma_rc(s, sQ + fr * 16 * ldk, ldk, sK + fc * 16 * ldk, ldk, dkp);
      wmma::store_matrix_sync(sS + fr * 16 * kLdS + fc * 16, s, kLdS, wmma::mem_row_major);
      __syncthreads();
      float v[8];
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t key = k0 + sc0 + j;
        const bool ok = tq < p.n && key >= qs && key <= tq;
        v[j] = ok ? sS[sr * kLdS + sc0 + j] : -INFINITY;
        mx = fmaxf(mx, v[j]);
      }
      if (pass == 0) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m, mx);
        float sum = 0.0f;  // all lanes shuffle; a row with no key yet has m_new = -inf, sum 0
#pragma unroll
        for (int j = 0; j < 8; ++j) sum += v[j] == -INFINITY ? 0.0f : expf(v[j] - m_new);
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (m_new != -INFINITY) {
          l = l * expf(m - m_new) + sum;
          m = m_new;
        }
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          sS[sr * kLdS + sc0 + j] =
              wmma::__float_to_tf32(v[j] == -INFINITY ? 0.0f : expf(v[j] - lse));
        __syncthreads();
        // O[fr rows, fragment columns warp%2 + 2 j] += P V
#pragma unroll
        for (int j = 0; j < kDvPerWarp; ++j) {
          const int col = fc + 2 * j;
          if (col >= dvf) continue;
          FragA fa;
          FragB fb;
#pragma unroll
          for (int k8 = 0; k8 < kCols; k8 += 8) {
            wmma::load_matrix_sync(fa, sS + fr * 16 * kLdS + k8, kLdS);
            wmma::load_matrix_sync(fb, sV + k8 * ldv + col * 16, ldv);
            wmma::mma_sync(o[j], fa, fb, o[j]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kDvPerWarp; ++j) {
    const int col = fc + 2 * j;
    if (col < dvf)
      wmma::store_matrix_sync(sO + fr * 16 * ldv + col * 16, o[j], ldv, wmma::mem_row_major);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kRows * dv; e += kThreads) {
    const int i = e / dv, c = e % dv;
    const int64_t t = t0 + i;
    if (t < p.n) p.out[t * p.o_sn + h * p.o_sh + c] = sO[i * ldv + c];
  }
  if (threadIdx.x % 4 == 0 && tq < p.n) p.lse[h * p.n + tq] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// ------------------------------------------------------------------------------------ backward

__global__ void __launch_bounds__(kThreads) flash_tf32_bwd_kernel(AttentionParams p) {
  extern __shared__ __align__(128) float sm[];
  const int dk = int(p.dk), dv = int(p.dv), ldk = lead(dk), ldv = lead(dv);
  const int dkp = round16(dk), dvp = round16(dv), dkf = dkp / 16, dvf = dvp / 16;
  float* sK = sm;                   // [64][ldk]
  float* sV = sK + kRows * ldk;     // [64][ldv]
  float* sQ = sV + kRows * ldv;     // [32][ldk]
  float* sdO = sQ + kCols * ldk;    // [32][ldv]
  float* sST = sdO + kCols * ldv;   // [64][40]: S^T, then P^T
  float* sDT = sST + kRows * kLdS;  // [64][40]: dP^T, then dS^T
  float* sdQ = sDT + kRows * kLdS;  // [32][ldk]
  __shared__ int64_t s_qstart[kCols];
  __shared__ float s_lse[kCols], s_d[kCols];
  const int64_t h = blockIdx.y, k0 = int64_t(blockIdx.x) * kRows;
  const int warp = threadIdx.x / kWarpSize;
  load_tile_tf32(sK, ldk, p.k, p.k_sn, p.k_sh, h, k0, kRows, dk, p.n, 1.0f);
  load_tile_tf32(sV, ldv, p.v, p.v_sn, p.v_sh, h, k0, kRows, dv, p.n, 1.0f);
  const int fr = warp / 2, fc = warp % 2;
  FragC dK[kDkPerWarp], dV[kDvPerWarp];
#pragma unroll
  for (int j = 0; j < kDkPerWarp; ++j) wmma::fill_fragment(dK[j], 0.0f);
#pragma unroll
  for (int j = 0; j < kDvPerWarp; ++j) wmma::fill_fragment(dV[j], 0.0f);
  // Element threads: key row er (4 per row), query columns ec0 .. ec0 + 7.
  const int er = threadIdx.x / 4, ec0 = (threadIdx.x % 4) * 8;
  const int64_t key = k0 + er;
  const int64_t last = min(k0 + kRows, p.n) - 1;
  const int64_t qend = p.cu_seqlens[sequence_of(p.cu_seqlens, p.n_seqs, last) + 1];
  for (int64_t q0 = k0; q0 < qend; q0 += kCols) {
    __syncthreads();
    load_tile_tf32(sQ, ldk, p.q, p.q_sn, p.q_sh, h, q0, kCols, dk, p.n, 1.0f);
    load_tile_tf32(sdO, ldv, p.dout, p.do_sn, p.do_sh, h, q0, kCols, dv, p.n, 1.0f);
    for (int i = threadIdx.x; i < kCols; i += kThreads) {
      const int64_t t = q0 + i;
      const bool in = t < p.n;
      s_qstart[i] = in ? seq_start(p, t) : p.n;
      s_lse[i] = in ? p.lse[h * p.n + t] : 0.0f;
      s_d[i] = in ? p.drow[h * p.n + t] : 0.0f;
    }
    __syncthreads();
    {
      FragC s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
      mma_rc(s, sK + fr * 16 * ldk, ldk, sQ + fc * 16 * ldk, ldk, dkp);
      mma_rc(dp, sV + fr * 16 * ldv, ldv, sdO + fc * 16 * ldv, ldv, dvp);
      wmma::store_matrix_sync(sST + fr * 16 * kLdS + fc * 16, s, kLdS, wmma::mem_row_major);
      wmma::store_matrix_sync(sDT + fr * 16 * kLdS + fc * 16, dp, kLdS, wmma::mem_row_major);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int c = ec0 + j;
      const int64_t t = q0 + c;
      const bool ok = t < p.n && key < p.n && key >= s_qstart[c] && key <= t;
      const float pr = ok ? expf(p.scale * sST[er * kLdS + c] - s_lse[c]) : 0.0f;
      const float ds = pr * (sDT[er * kLdS + c] - s_d[c]);
      sST[er * kLdS + c] = wmma::__float_to_tf32(pr);
      sDT[er * kLdS + c] = wmma::__float_to_tf32(ds);
    }
    __syncthreads();
    // dV += P^T dO, dK += dS^T Q: this warp's 16 key rows (fr), fragment columns fc + 2 j.
#pragma unroll
    for (int k8 = 0; k8 < kCols; k8 += 8) {
      FragA pa, ga;
      wmma::load_matrix_sync(pa, sST + fr * 16 * kLdS + k8, kLdS);
      wmma::load_matrix_sync(ga, sDT + fr * 16 * kLdS + k8, kLdS);
#pragma unroll
      for (int j = 0; j < kDvPerWarp; ++j) {
        const int col = fc + 2 * j;
        if (col >= dvf) continue;
        FragB fb;
        wmma::load_matrix_sync(fb, sdO + k8 * ldv + col * 16, ldv);
        wmma::mma_sync(dV[j], pa, fb, dV[j]);
      }
#pragma unroll
      for (int j = 0; j < kDkPerWarp; ++j) {
        const int col = fc + 2 * j;
        if (col >= dkf) continue;
        FragB fb;
        wmma::load_matrix_sync(fb, sQ + k8 * ldk + col * 16, ldk);
        wmma::mma_sync(dK[j], ga, fb, dK[j]);
      }
    }
    // dQ (32 x dk) = dS K: dS[q][key] = sDT[key][q] is column-major. Warp: query fragment row
    // warp / 4, fragment columns warp % 4 + 4 j.
    {
      const int qr = warp / 4, qc = warp % 4;
#pragma unroll
      for (int j = 0; j < (kMaxDkF + 3) / 4; ++j) {
        const int col = qc + 4 * j;
        if (col >= dkf) continue;
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int k8 = 0; k8 < kRows; k8 += 8) {
          FragAc fa;
          FragB fb;
          wmma::load_matrix_sync(fa, sDT + k8 * kLdS + qr * 16, kLdS);
          wmma::load_matrix_sync(fb, sK + k8 * ldk + col * 16, ldk);
          wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(sdQ + qr * 16 * ldk + col * 16, acc, ldk, wmma::mem_row_major);
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kCols * dk; e += kThreads) {
      const int i = e / dk, c = e % dk;
      const int64_t t = q0 + i;
      if (t < p.n) atomicAdd(p.dq + t * p.dq_sn + h * p.dq_sh + c, p.scale * sdQ[i * ldk + c]);
    }
  }
  __syncthreads();  // sK, sV are free: stage dK, dV there
#pragma unroll
  for (int j = 0; j < kDkPerWarp; ++j) {
    const int col = fc + 2 * j;
    if (col < dkf)
      wmma::store_matrix_sync(sK + fr * 16 * ldk + col * 16, dK[j], ldk, wmma::mem_row_major);
  }
#pragma unroll
  for (int j = 0; j < kDvPerWarp; ++j) {
    const int col = fc + 2 * j;
    if (col < dvf)
      wmma::store_matrix_sync(sV + fr * 16 * ldv + col * 16, dV[j], ldv, wmma::mem_row_major);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kRows * dk; e += kThreads) {
    const int i = e / dk, c = e % dk;
    const int64_t t = k0 + i;
    if (t < p.n) p.dkk[t * p.dk_sn + h * p.dk_sh + c] = p.scale * sK[i * ldk + c];
  }
  for (int e = threadIdx.x; e < kRows * dv; e += kThreads) {
    const int i = e / dv, c = e % dv;
    const int64_t t = k0 + i;
    if (t < p.n) p.dvv[t * p.dv_sn + h * p.dv_sh + c] = sV[i * ldv + c];
  }
}

size_t fwd_smem(const AttentionParams& p) {
  const int ldk = lead(int(p.dk)), ldv = lead(int(p.dv));
  return sizeof(float) *
         size_t(kRows * ldk + kCols * ldk + kCols * ldv + kRows * kLdS + kRows * ldv);
}
size_t bwd_smem(const AttentionParams& p) {
  const int ldk = lead(int(p.dk)), ldv = lead(int(p.dv));
  return sizeof(float) * size_t(kRows * ldk + kRows * ldv + kCols * ldk + kCols * ldv +
                                2 * kRows * kLdS + kCols * ldk);
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

int flash_attention_forward_tf32(const AttentionParams& p, void* stream) {
  if (!flash_attention_f32_supported(p) || !p.q || !p.k || !p.v || !p.out || !p.lse ||
      !p.cu_seqlens)
    return int(cudaErrorInvalidValue);
  return int(launch(flash_tf32_fwd_kernel, p, fwd_smem(p), static_cast<cudaStream_t>(stream)));
}

int flash_attention_backward_tf32(const AttentionParams& p, void* stream) {
  if (!flash_attention_f32_supported(p) || !p.q || !p.k || !p.v || !p.out || !p.lse || !p.dout ||
      !p.dq || !p.dkk || !p.dvv || !p.drow || !p.cu_seqlens)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const int e = flash_attention_backward_prologue(p, stream);  // D and dq = 0
  if (e != int(cudaSuccess)) return e;
  return int(launch(flash_tf32_bwd_kernel, p, bwd_smem(p), s));
}

}  // namespace shoal::kernels
