// Tiled causal attention on the tensor cores with bf16 operands (FlashAttention-2 scheme), for
// dense attention with dk <= 192 and dv <= 128 over packed sequences; opt-in
// (AttentionParams::precision == bf16), since it is not f32. Storage stays f32: each call first
// converts q, k, v (and dO) into head-major bf16 copies (round to nearest; scratch from the
// stream-ordered pool); every product accumulates in f32, and the softmax, masking, log-sum-exp
// and D = rowsum(dO * O) are f32. Not here: DSA selections and larger head dims (attention.cu),
// the f32 and TF32 kernels (flash_f32.cu, flash_tf32.cu).
//
// Products run through mma.sync m16n8k16 (bf16 in, f32 out), whose register layout the PTX ISA
// specifies, so the softmax works on the accumulators in place. Tiles stream from the bf16 copies
// into shared memory with cp.async, double buffered (the next tile loads while this one computes);
// operands go to registers through ldmatrix (rows padded by 16 bytes: the 8 rows of an 8x8 matrix
// fall in distinct banks).
// Forward: a block per (64-query tile, head), 4 warps of 16 query rows each, one pass over 64-key
// tiles with an online softmax (row max and sums in registers; O rescaled in registers); P goes
// from the S accumulators to bf16 A fragments of the P V product without touching memory.
// Backward: a block per (64-key tile, head), 4 warps of 16 key rows, walks 32-query tiles to the
// end of its last key's sequence; S^T = K Q^T and dP^T = V dO^T, P^T = exp(scale S^T - lse),
// dS^T = P^T (dP^T - D) in registers; dV += P^T dO and dK += dS^T Q accumulate in registers for
// the whole walk; dQ += dS K (dS^T through shared memory) is added with f32 atomics.
// A pair (query, key) counts when start(seq(query)) <= key <= query, as in flash_f32.cu.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_common.cuh"
#include "kernels/common/reduce.cuh"

namespace shoal::kernels {
namespace {

constexpr int kWarps = 4, kThreads = kWarps * kWarpSize;
constexpr int kFwdRows = 16 * kWarps, kFwdCols = 64;  // forward: queries x keys per tile
constexpr int kBwdRows = 16 * kWarps, kBwdCols = 32;  // backward: keys x queries per tile
constexpr int kMaxDk = 192, kMaxDv = 128;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int round16(int x) {
  return (x + 15) / 16 * 16;
}
// Shared row length (bf16 elements) for a head dim: padded by 8 (16 bytes), so that the 8 row
// addresses of an ldmatrix 8x8 matrix hit 8 distinct 16-byte bank groups.
__host__ __device__ constexpr int lead(int d) {
  return round16(d) + 8;
}

// ------------------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}
// Four 8x8 b16 matrices; lane l gives the row address of row l % 8 of matrix l / 8 and gets, of
// matrix j, elements (row l / 4, columns 2 (l % 4) and + 1) in r[j] (transposed with .trans).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// c[16x8] += a[16x16] b[16x8]. Fragments (g = lane / 4, t = lane % 4; two bf16 per register, the
// lower column in the low half): a = {(g, 2t), (g + 8, 2t), (g, 2t + 8), (g + 8, 2t + 8)},
// b = {(k 2t, n g), (k 2t + 8, n g)}, c = {(g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)}.
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Fragment loads from shared memory (ld in bf16 elements). A 16x16 tile at (m0, k0) of a
// row-major [m][k] array: r = a0..a3.
__device__ __forceinline__ void load_a(uint32_t (&r)[4], const __nv_bfloat16* s, int ld, int m0,
                                       int k0) {
  const int l = threadIdx.x % kWarpSize;
  ldsm_x4(r, s + (m0 + l % 8 + ((l >> 3) & 1) * 8) * ld + k0 + (l >> 4) * 8);
}
// The same A tile from a [k][m] array (A transposed in memory).
__device__ __forceinline__ void load_a_t(uint32_t (&r)[4], const __nv_bfloat16* s, int ld, int k0,
                                         int m0) {
  const int l = threadIdx.x % kWarpSize;
  ldsm_x4_t(r, s + (k0 + l % 8 + (l >> 4) * 8) * ld + m0 + ((l >> 3) & 1) * 8);
}
// B fragments of two n-tiles (n0 .. n0 + 15) at k-step k0 from an [n][k] array:
// r = {b0, b1 of n-tile 0, b0, b1 of n-tile 1}.
__device__ __forceinline__ void load_b_nk(uint32_t (&r)[4], const __nv_bfloat16* s, int ld, int n0,
                                          int k0) {
  const int l = threadIdx.x % kWarpSize;
  ldsm_x4(r, s + (n0 + l % 8 + (l >> 4) * 8) * ld + k0 + ((l >> 3) & 1) * 8);
}
// The same from a [k][n] array.
__device__ __forceinline__ void load_b_kn(uint32_t (&r)[4], const __nv_bfloat16* s, int ld, int k0,
                                          int n0) {
  const int l = threadIdx.x % kWarpSize;
  ldsm_x4_t(r, s + (k0 + l % 8 + ((l >> 3) & 1) * 8) * ld + n0 + (l >> 4) * 8);
}

// ------------------------------------------------------------------------- operands in bf16

// The operands are converted once per call into head-major bf16 copies, [heads][rows][dp] with
// dp = round16(d) and rows = n + kPadRows, zero past d and past n, so that every tile a kernel
// touches (a key tile may start anywhere and run 63 rows past its sequence) is in bounds and
// 16-byte aligned for cp.async.
constexpr int kPadRows = 64;

struct Bf16Operand {
  const __nv_bfloat16* base = nullptr;
  int dp = 0;        // row length (elements)
  int64_t rows = 0;  // per head
  __device__ const __nv_bfloat16* row(int64_t h, int64_t t) const {
    return base + (h * rows + t) * dp;
  }
};

// dst[h][t][c] = bf16(src[t * sn + h * sh + c]) (round to nearest), 0 for t >= n or c >= d;
// eight columns per thread.
__global__ void to_bf16_heads_kernel(const float* src, int64_t sn, int64_t sh, int64_t n,
                                     int64_t heads, int d, int dp, int64_t rows,
                                     __nv_bfloat16* dst) {
  const int chunks = dp / 8;
  const int64_t total = heads * rows * chunks;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(e % chunks) * 8;
    const int64_t ht = e / chunks, h = ht / rows, t = ht % rows;
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = (t < n && c + j < d) ? src[t * sn + h * sh + c + j] : 0.0f;
    *reinterpret_cast<uint4*>(dst + ht * dp + c) = make_uint4(
        pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
  }
}

// cp.async: 16 bytes global -> shared, bypassing L1; groups committed and waited per stage.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Rows [t0, t0 + rows) of head h of a bf16 operand into sm[rows][ld], asynchronously.
__device__ __forceinline__ void copy_tile_async(__nv_bfloat16* sm, int ld, const Bf16Operand& op,
                                                int64_t h, int64_t t0, int rows) {
  const int per_row = op.dp / 8;
  const __nv_bfloat16* src = op.row(h, t0);
  for (int e = threadIdx.x; e < rows * per_row; e += kThreads) {
    const int i = e / per_row, c = (e % per_row) * 8;
    cp_async16(sm + i * ld + c, src + int64_t(i) * op.dp + c);
  }
}

__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx: 2^x to ~2 ulp; 2^-inf = 0
  float y;
  asm("ex2.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ int64_t seq_start(const AttentionParams& p, int64_t t) {
  return p.cu_seqlens[sequence_of(p.cu_seqlens, p.n_seqs, t)];
}

// ------------------------------------------------------------------------------------ forward

__global__ void __launch_bounds__(kThreads, 2)
    flash_bf16_fwd_kernel(AttentionParams p, Bf16Operand Q, Bf16Operand K, Bf16Operand V) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int dk = int(p.dk), dv = int(p.dv), ldk = lead(dk), ldv = lead(dv);
  const int dkp = round16(dk), dvp = round16(dv);
  auto* sQ = reinterpret_cast<__nv_bfloat16*>(smem);  // [64][ldk]
  __nv_bfloat16* sK0 = sQ + kFwdRows * ldk;           // two stages of [64][ldk]
  __nv_bfloat16* sV0 = sK0 + 2 * kFwdCols * ldk;      // two stages of [64][ldv]
  __shared__ int64_t s_start[kFwdRows];
  // The last query tiles (the most keys) first: less tail when the grid drains.
  const int64_t h = blockIdx.y, t0 = int64_t(gridDim.x - 1 - blockIdx.x) * kFwdRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, tq = lane % 4;
  for (int i = threadIdx.x; i < kFwdRows; i += kThreads)
    s_start[i] = t0 + i < p.n ? seq_start(p, t0 + i) : p.n;
  __syncthreads();
  const int64_t kbeg = s_start[0], kend = min(t0 + kFwdRows, p.n);
  const int ntiles = int((kend - kbeg + kFwdCols - 1) / kFwdCols);
  copy_tile_async(sQ, ldk, Q, h, t0, kFwdRows);
  copy_tile_async(sK0, ldk, K, h, kbeg, kFwdCols);
  copy_tile_async(sV0, ldv, V, h, kbeg, kFwdCols);
  cp_async_commit();
  // This thread's two query rows: w0 + g and w0 + g + 8.
  const int w0 = warp * 16;
  const int64_t row[2] = {t0 + w0 + g, t0 + w0 + g + 8};
  const int64_t rstart[2] = {s_start[w0 + g], s_start[w0 + g + 8]};
  const int64_t last_start = s_start[min(int64_t(kFwdRows), p.n - t0) - 1];
  const int64_t warp_last = t0 + w0 + 15;
  const float sl2 = p.scale * kLog2e;  // scores in log2 units
  float o[kMaxDv / 8][4];
#pragma unroll
  for (int j = 0; j < kMaxDv / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  // Per row: running max, and this thread's partial sums of p (for the lse) and of p rounded to
  // bf16 (normalises O, so that O stays a convex combination of v: the weights P V really uses
  // sum to 1, and rounding P biases no row as a whole).
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, lr[2] = {0.0f, 0.0f};
  for (int it = 0; it < ntiles; ++it) {
    const int64_t k0 = kbeg + int64_t(it) * kFwdCols;
    if (it + 1 < ntiles) {  // prefetch the next tile into the other stage
      const int st = (it + 1) & 1;
      copy_tile_async(sK0 + st * kFwdCols * ldk, ldk, K, h, k0 + kFwdCols, kFwdCols);
      copy_tile_async(sV0 + st * kFwdCols * ldv, ldv, V, h, k0 + kFwdCols, kFwdCols);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* sK = sK0 + (it & 1) * kFwdCols * ldk;
    const __nv_bfloat16* sV = sV0 + (it & 1) * kFwdCols * ldv;
    if (k0 <= warp_last) {  // else every key of the tile is after this warp's queries
      // S = Q K^T: 16 rows x 64 keys in 8 n-tiles.
      float s[kFwdCols / 8][4];
#pragma unroll
      for (int j = 0; j < kFwdCols / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kMaxDk / 16; ++kk) {
        if (kk * 16 >= dkp) break;
        uint32_t a[4];
        load_a(a, sQ, ldk, w0, kk * 16);
#pragma unroll
        for (int np = 0; np < kFwdCols / 16; ++np) {
          uint32_t b[4];
          load_b_nk(b, sK, ldk, np * 16, kk * 16);
          mma_bf16(s[2 * np], a[0], a[1], a[2], a[3], b[0], b[1]);
          mma_bf16(s[2 * np + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
        }
      }
      // Mask (only tiles that cross the diagonal or a sequence start), row max, rescale.
      const bool full = k0 >= last_start && k0 + kFwdCols - 1 <= t0 && t0 + kFwdRows <= p.n;
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kFwdCols / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const int64_t key = k0 + 8 * j + 2 * tq + (e & 1);
          const bool ok = full || (row[r] < p.n && key >= rstart[r] && key <= row[r]);
          s[j][e] = ok ? s[j][e] * sl2 : -INFINITY;
          mx[r] = fmaxf(mx[r], s[j][e]);
        }
      }
      float corr[2], base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], mx[r]);
        base[r] = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: every p is 0
        corr[r] = fast_exp2(m[r] - base[r]);          // 0 while m = -inf (o and l are 0 then)
        m[r] = m_new;
        l[r] *= corr[r];
        lr[r] *= corr[r];
      }
#pragma unroll
      for (int j = 0; j < kMaxDv / 8; ++j) {
        o[j][0] *= corr[0];
        o[j][1] *= corr[0];
        o[j][2] *= corr[1];
        o[j][3] *= corr[1];
      }
#pragma unroll
      for (int j = 0; j < kFwdCols / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pr = fast_exp2(s[j][e] - base[e / 2]);
          s[j][e] = __bfloat162float(__float2bfloat16_rn(pr));  // packed exactly below
          l[e / 2] += pr;
          lr[e / 2] += s[j][e];
        }
      }
      // O += P V: P's accumulators are A fragments (16 rows x 16 keys per k-step).
#pragma unroll
      for (int kk = 0; kk < kFwdCols / 16; ++kk) {
        const uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        const uint32_t a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        const uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        const uint32_t a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < kMaxDv / 16; ++np) {
          if (np * 16 >= dvp) break;
          uint32_t b[4];
          load_b_kn(b, sV, ldv, kk * 16, np * 16);
          mma_bf16(o[2 * np], a0, a1, a2, a3, b[0], b[1]);
          mma_bf16(o[2 * np + 1], a0, a1, a2, a3, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    lr[r] += __shfl_xor_sync(0xffffffffu, lr[r], 1);
    lr[r] += __shfl_xor_sync(0xffffffffu, lr[r], 2);
    inv[r] = lr[r] > 0.0f ? 1.0f / lr[r] : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < kMaxDv / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e / 2, c = 8 * j + 2 * tq + (e & 1);
      if (row[r] < p.n && c < dv) p.out[row[r] * p.o_sn + h * p.o_sh + c] = o[j][e] * inv[r];
    }
  }
  if (tq == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (row[r] < p.n)
        p.lse[h * p.n + row[r]] = l[r] > 0.0f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
  }
}

// ------------------------------------------------------------------------------------ backward

__global__ void __launch_bounds__(kThreads, 2)
    flash_bf16_bwd_kernel(AttentionParams p, Bf16Operand Q, Bf16Operand K, Bf16Operand V,
                          Bf16Operand dO) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int dk = int(p.dk), dv = int(p.dv), ldk = lead(dk), ldv = lead(dv);
  const int dkp = round16(dk), dvp = round16(dv);
  constexpr int lds = kBwdCols + 8;
  auto* sK = reinterpret_cast<__nv_bfloat16*>(smem);  // [64][ldk]
  __nv_bfloat16* sV = sK + kBwdRows * ldk;            // [64][ldv]
  __nv_bfloat16* sQ0 = sV + kBwdRows * ldv;           // two stages of [32][ldk]
  __nv_bfloat16* sdO0 = sQ0 + 2 * kBwdCols * ldk;     // two stages of [32][ldv]
  __nv_bfloat16* sdS = sdO0 + 2 * kBwdCols * ldv;     // [64 keys][40]: dS^T
  __shared__ int64_t s_qstart[2][kBwdCols];
  __shared__ float s_lse[2][kBwdCols], s_d[2][kBwdCols];
  const int64_t h = blockIdx.y, k0 = int64_t(blockIdx.x) * kBwdRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, tq = lane % 4;
  const int w0 = warp * 16;
  const int64_t key[2] = {k0 + w0 + g, k0 + w0 + g + 8};
  const int64_t last = min(k0 + kBwdRows, p.n) - 1;
  const int64_t qend = p.cu_seqlens[sequence_of(p.cu_seqlens, p.n_seqs, last) + 1];
  const int ntiles = int((qend - k0 + kBwdCols - 1) / kBwdCols);
  // Stage a query tile: Q and dO asynchronously, the rows' sequence starts, lse, D directly.
  auto stage = [&](int it) {
    const int st = it & 1;
    const int64_t q0 = k0 + int64_t(it) * kBwdCols;
    copy_tile_async(sQ0 + st * kBwdCols * ldk, ldk, Q, h, q0, kBwdCols);
    copy_tile_async(sdO0 + st * kBwdCols * ldv, ldv, dO, h, q0, kBwdCols);
    for (int i = threadIdx.x; i < kBwdCols; i += kThreads) {
      const int64_t t = q0 + i;
      const bool in = t < p.n;
      s_qstart[st][i] = in ? seq_start(p, t) : p.n;
      s_lse[st][i] = in ? p.lse[h * p.n + t] * kLog2e : 0.0f;
      s_d[st][i] = in ? p.drow[h * p.n + t] : 0.0f;
    }
  };
  copy_tile_async(sK, ldk, K, h, k0, kBwdRows);
  copy_tile_async(sV, ldv, V, h, k0, kBwdRows);
  stage(0);
  cp_async_commit();
  const float sl2 = p.scale * kLog2e;
  float dK[kMaxDk / 8][4], dV[kMaxDv / 8][4];
#pragma unroll
  for (int j = 0; j < kMaxDk / 8; ++j) dK[j][0] = dK[j][1] = dK[j][2] = dK[j][3] = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxDv / 8; ++j) dV[j][0] = dV[j][1] = dV[j][2] = dV[j][3] = 0.0f;
  for (int it = 0; it < ntiles; ++it) {
    const int64_t q0 = k0 + int64_t(it) * kBwdCols;
    const int st = it & 1;
    if (it + 1 < ntiles) {
      stage(it + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* sQ = sQ0 + st * kBwdCols * ldk;
    const __nv_bfloat16* sdO = sdO0 + st * kBwdCols * ldv;
    const int64_t* qstart = s_qstart[st];
    const float* lse2 = s_lse[st];
    const float* drow = s_d[st];
    // S^T = K Q^T and dP^T = V dO^T: 16 keys x 32 queries in 4 n-tiles each.
    float s[kBwdCols / 8][4], dp[kBwdCols / 8][4];
#pragma unroll
    for (int j = 0; j < kBwdCols / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kMaxDk / 16; ++kk) {
      if (kk * 16 >= dkp) break;
      uint32_t a[4];
      load_a(a, sK, ldk, w0, kk * 16);
#pragma unroll
      for (int np = 0; np < kBwdCols / 16; ++np) {
        uint32_t b[4];
        load_b_nk(b, sQ, ldk, np * 16, kk * 16);
        mma_bf16(s[2 * np], a[0], a[1], a[2], a[3], b[0], b[1]);
        mma_bf16(s[2 * np + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < kMaxDv / 16; ++kk) {
      if (kk * 16 >= dvp) break;
      uint32_t a[4];
      load_a(a, sV, ldv, w0, kk * 16);
#pragma unroll
      for (int np = 0; np < kBwdCols / 16; ++np) {
        uint32_t b[4];
        load_b_nk(b, sdO, ldv, np * 16, kk * 16);
        mma_bf16(dp[2 * np], a[0], a[1], a[2], a[3], b[0], b[1]);
        mma_bf16(dp[2 * np + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
      }
    }
    // P^T and dS^T in place (s becomes P^T, dp becomes dS^T); dS^T also to shared memory.
    const bool full = q0 >= k0 + kBwdRows - 1 && qstart[kBwdCols - 1] <= k0 && q0 + kBwdCols <= p.n;
#pragma unroll
    for (int j = 0; j < kBwdCols / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = 8 * j + 2 * tq + (e & 1);
        const int64_t t = q0 + c, kt = key[e / 2];
        const bool ok = full || (t < p.n && kt < p.n && kt >= qstart[c] && kt <= t);
        const float pr = ok ? fast_exp2(s[j][e] * sl2 - lse2[c]) : 0.0f;
        s[j][e] = pr;
        dp[j][e] = pr * (dp[j][e] - drow[c]);
      }
      *reinterpret_cast<uint32_t*>(sdS + (w0 + g) * lds + 8 * j + 2 * tq) =
          pack_bf16(dp[j][0], dp[j][1]);
      *reinterpret_cast<uint32_t*>(sdS + (w0 + g + 8) * lds + 8 * j + 2 * tq) =
          pack_bf16(dp[j][2], dp[j][3]);
    }
    // dV += P^T dO and dK += dS^T Q (k = the tile's 32 queries, two k-steps).
#pragma unroll
    for (int kk = 0; kk < kBwdCols / 16; ++kk) {
      const uint32_t p0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      const uint32_t p1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      const uint32_t p2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const uint32_t p3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int np = 0; np < kMaxDv / 16; ++np) {
        if (np * 16 >= dvp) break;
        uint32_t b[4];
        load_b_kn(b, sdO, ldv, kk * 16, np * 16);
        mma_bf16(dV[2 * np], p0, p1, p2, p3, b[0], b[1]);
        mma_bf16(dV[2 * np + 1], p0, p1, p2, p3, b[2], b[3]);
      }
      const uint32_t d0 = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]);
      const uint32_t d1 = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
      const uint32_t d2 = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
      const uint32_t d3 = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
      for (int np = 0; np < kMaxDk / 16; ++np) {
        if (np * 16 >= dkp) break;
        uint32_t b[4];
        load_b_kn(b, sQ, ldk, kk * 16, np * 16);
        mma_bf16(dK[2 * np], d0, d1, d2, d3, b[0], b[1]);
        mma_bf16(dK[2 * np + 1], d0, d1, d2, d3, b[2], b[3]);
      }
    }
    __syncthreads();  // sdS complete
    // dQ (32 queries x dk) += dS K over the 64 keys: warp -> query rows (warp % 2) * 16, column
    // pairs of 16 from warp / 2 in steps of 2; added into p.dq with f32 atomics.
    {
      const int m0 = (warp % 2) * 16;
      uint32_t a[kBwdRows / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBwdRows / 16; ++kk) load_a_t(a[kk], sdS, lds, kk * 16, m0);
      const int64_t tr[2] = {q0 + m0 + g, q0 + m0 + g + 8};
      for (int np = warp / 2; np * 16 < dkp; np += 2) {
        float acc[2][4] = {};
#pragma unroll
        for (int kk = 0; kk < kBwdRows / 16; ++kk) {
          uint32_t b[4];
          load_b_kn(b, sK, ldk, kk * 16, np * 16);
          mma_bf16(acc[0], a[kk][0], a[kk][1], a[kk][2], a[kk][3], b[0], b[1]);
          mma_bf16(acc[1], a[kk][0], a[kk][1], a[kk][2], a[kk][3], b[2], b[3]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t t = tr[e / 2];
            const int c = np * 16 + 8 * j + 2 * tq + (e & 1);
            if (t < p.n && c < dk)
              atomicAdd(p.dq + t * p.dq_sn + h * p.dq_sh + c, p.scale * acc[j][e]);
          }
        }
      }
    }
    __syncthreads();  // sdS and this stage are rewritten next
  }
#pragma unroll
  for (int j = 0; j < kMaxDk / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t kt = key[e / 2];
      const int c = 8 * j + 2 * tq + (e & 1);
      if (kt < p.n && c < dk) p.dkk[kt * p.dk_sn + h * p.dk_sh + c] = p.scale * dK[j][e];
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxDv / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t kt = key[e / 2];
      const int c = 8 * j + 2 * tq + (e & 1);
      if (kt < p.n && c < dv) p.dvv[kt * p.dv_sn + h * p.dv_sh + c] = dV[j][e];
    }
  }
}

size_t fwd_smem(const AttentionParams& p) {
  const int ldk = lead(int(p.dk)), ldv = lead(int(p.dv));
  return sizeof(__nv_bfloat16) * size_t(kFwdRows * ldk + 2 * kFwdCols * (ldk + ldv));
}
size_t bwd_smem(const AttentionParams& p) {
  const int ldk = lead(int(p.dk)), ldv = lead(int(p.dv));
  return sizeof(__nv_bfloat16) *
         size_t(kBwdRows * (ldk + ldv) + 2 * kBwdCols * (ldk + ldv) + kBwdRows * (kBwdCols + 8));
}

// Scratch for the bf16 copies, from the device's stream-ordered pool (the CUDA backend keeps
// freed blocks cached there), freed in stream order after the kernels.
class Bf16Copies {
 public:
  Bf16Copies(const AttentionParams& p, cudaStream_t s)
      : s_(s), rows_(p.n + kPadRows), heads_(p.heads) {}
  ~Bf16Copies() {
    if (mem_) cudaFreeAsync(mem_, s_);
  }
  // Reserves the copies of the given operands' dims; then convert() each in order.
  cudaError_t reserve(std::initializer_list<int> dims) {
    size_t elems = 0;
    for (int d : dims) elems += size_t(heads_) * size_t(rows_) * size_t(round16(d));
    return cudaMallocAsync(&mem_, elems * sizeof(__nv_bfloat16), s_);
  }
  Bf16Operand convert(const float* src, int64_t sn, int64_t sh, int64_t n, int d) {
    Bf16Operand op;
    op.base = static_cast<__nv_bfloat16*>(mem_) + used_;
    op.dp = round16(d);
    op.rows = rows_;
    const int64_t chunks = heads_ * rows_ * (op.dp / 8);
    const unsigned blocks = unsigned(std::min<int64_t>((chunks + 255) / 256, 65536));
    to_bf16_heads_kernel<<<blocks, 256, 0, s_>>>(src, sn, sh, n, heads_, d, op.dp, rows_,
                                                 const_cast<__nv_bfloat16*>(op.base));
    used_ += size_t(heads_) * size_t(rows_) * size_t(op.dp);
    return op;
  }

 private:
  cudaStream_t s_;
  int64_t rows_, heads_;
  void* mem_ = nullptr;
  size_t used_ = 0;
};

template <typename Kernel, typename... Ops>
cudaError_t launch(Kernel k, const AttentionParams& p, int rows, size_t smem, cudaStream_t s,
                   Ops... ops) {
  const cudaError_t e =
      cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const unsigned tiles = unsigned((p.n + rows - 1) / rows);
  k<<<dim3(tiles, unsigned(p.heads)), kThreads, smem, s>>>(p, ops...);
  return cudaGetLastError();
}

}  // namespace

int flash_attention_forward_bf16(const AttentionParams& p, void* stream) {
  if (!flash_attention_f32_supported(p) || !p.q || !p.k || !p.v || !p.out || !p.lse ||
      !p.cu_seqlens)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  Bf16Copies copies(p, s);
  const int dk = int(p.dk), dv = int(p.dv);
  cudaError_t e = copies.reserve({dk, dk, dv});
  if (e != cudaSuccess) return int(e);
  const Bf16Operand q = copies.convert(p.q, p.q_sn, p.q_sh, p.n, dk);
  const Bf16Operand k = copies.convert(p.k, p.k_sn, p.k_sh, p.n, dk);
  const Bf16Operand v = copies.convert(p.v, p.v_sn, p.v_sh, p.n, dv);
  return int(launch(flash_bf16_fwd_kernel, p, kFwdRows, fwd_smem(p), s, q, k, v));
}

int flash_attention_backward_bf16(const AttentionParams& p, void* stream) {
  if (!flash_attention_f32_supported(p) || !p.q || !p.k || !p.v || !p.out || !p.lse || !p.dout ||
      !p.dq || !p.dkk || !p.dvv || !p.drow || !p.cu_seqlens)
    return int(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  int e = flash_attention_backward_prologue(p, stream);  // D and dq = 0
  if (e != int(cudaSuccess)) return e;
  Bf16Copies copies(p, s);
  const int dk = int(p.dk), dv = int(p.dv);
  e = int(copies.reserve({dk, dk, dv, dv}));
  if (e != int(cudaSuccess)) return e;
  const Bf16Operand q = copies.convert(p.q, p.q_sn, p.q_sh, p.n, dk);
  const Bf16Operand k = copies.convert(p.k, p.k_sn, p.k_sh, p.n, dk);
  const Bf16Operand v = copies.convert(p.v, p.v_sn, p.v_sh, p.n, dv);
  const Bf16Operand d_out = copies.convert(p.dout, p.do_sn, p.do_sh, p.n, dv);
  return int(launch(flash_bf16_bwd_kernel, p, kBwdRows, bwd_smem(p), s, q, k, v, d_out));
}

}  // namespace shoal::kernels
