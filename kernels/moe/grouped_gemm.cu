// The grouped bf16 GEMM of grouped_gemm.h, built for decode: few rows per expert, so the time is
// the weights' bytes and the kernel's job is to keep enough of them in flight on every SM. The
// product is computed transposed, c_g^T = b_g a_g^T: the weights are the mma's 16-row A operand
// and the group's rows its 8-column B operand, so a warp's 16 weight rows serve all of a tile's
// rows (8, 16 or 32) and a group of one row is padded to 8 rows, not 16. Both operands go straight
// from global memory to the mma's registers, no shared memory on the way: a lane loads 16
// contiguous bytes of a weight row (8 k), and the k order inside an mma is permuted (below) so that
// those 16 bytes are whole A fragments; it loads the same 8 k of an activation row (f32, rounded by
// cvt.rn.bf16x2) as its B fragment. The weights are loaded without allocating in L1 (read once per
// call), the next step's issued before this step's products; the activations through L1, where the
// warps of a block that take the same k steps share them.
//
// A block (8 warps) takes one row tile of one group and 16 n_warps columns; its warps split k
// k_split ways (grouped_gemm_plan: a batch of 1 splits the most, so that its few experts still
// fill the GPU) and add their partial sums through shared memory in a fixed order, so the result
// is the same on every call. The grid is (slots, column blocks), slots a host bound on the row
// tiles; block x takes the x-th row tile in group order by a prefix sum over the groups' tile
// counts and exits when there is none.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common/reduce.cuh"
#include "kernels/moe/grouped_gemm.h"

namespace shoal::kernels {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * kWarpSize;
constexpr int kStepK = int(kGroupedGemmStepK);  // 4 x 32: a lane loads 8 k in each of 4 columns

// c[16x8] += a[16x16] b[16x8] (bf16 in, f32 accumulation); fragments (g = lane / 4, t = lane % 4,
// two bf16 per register, the lower k in the low half): a = {(g, 2t), (g + 8, 2t), (g, 2t + 8),
// (g + 8, 2t + 8)}, b = {(k 2t, n g), (k 2t + 8, n g)}, c = {(g, 2t), (g, 2t + 1), (g + 8, 2t),
// (g + 8, 2t + 1)}. Not volatile: it is a pure function of its operands, and the compiler may
// move the next step's loads above it.
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 bytes of weights, read once per call: not kept in L1 (which holds the activations).
// Volatile so that it is never hoisted out of the bounds check around it.
__device__ __forceinline__ uint4 ld_weights16(const uint16_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Two f32 rounded to bf16 (nearest even) in one word, lo in the low half. The hardware cvt rounds
// finite values (subnormals included) exactly as f32_to_bf16_bits does; only a NaN's payload may
// differ, and a NaN operand makes its products NaN either way.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

// This block's tile: the group, its first row and the group's end; group < 0 when none.
struct Tile {
  int64_t group, row0, row_end;
};

// The block's (group, row tile) from the offsets, block-uniform; tiles of kTileRows rows. Also
// checks the offsets (block (0, 0) reports the first bad one). Group g's rows are [lo_g, hi_g)
// with lo_g = clamp(o_g, 0, rows) and hi_g = clamp(o_{g+1}, lo_g, rows), so bad offsets stay in
// bounds.
template <int kTileRows>
__device__ Tile find_tile(const GroupedGemmParams& p, int64_t slot) {
  __shared__ int64_t warp_total[kWarps];
  __shared__ Tile found;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (threadIdx.x == 0) found.group = -1;
  const bool checker = blockIdx.x == 0 && blockIdx.y == 0;
  int64_t carry = 0;  // tiles of the groups before this chunk
  for (int64_t base = 0; base < p.groups; base += kThreads) {
    const int64_t g = base + threadIdx.x;
    int64_t lo = 0, hi = 0;
    if (g < p.groups) {
      const int64_t o0 = p.offsets[g], o1 = p.offsets[g + 1];
      lo = o0 < 0 ? 0 : (o0 > p.rows ? p.rows : o0);
      hi = o1 < lo ? lo : (o1 > p.rows ? p.rows : o1);
      if (checker) {
        if (g == 0 && o0 != 0)
          report_fault(p.status, p.op, KernelFault::index_out_of_range, 0, o0, 0, 1);
        else if (o1 < o0 || o1 > p.rows)
          report_fault(p.status, p.op, KernelFault::index_out_of_range, g + 1, o1, o0, p.rows + 1);
        else if (g == p.groups - 1 && o1 != p.rows)
          report_fault(p.status, p.op, KernelFault::index_out_of_range, g + 1, o1, p.rows,
                       p.rows + 1);
      }
    }
    const int64_t tiles = (hi - lo + kTileRows - 1) / kTileRows;
    int64_t incl = tiles;  // inclusive prefix sum within the warp
#pragma unroll
    for (int o = 1; o < kWarpSize; o *= 2) {
      const int64_t v = __shfl_up_sync(0xffffffffu, static_cast<long long>(incl), o);
      if (lane >= o) incl += v;
    }
    if (lane == kWarpSize - 1) warp_total[warp] = incl;
    __syncthreads();
    int64_t first = carry + incl - tiles, chunk = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) first += warp_total[w];
      chunk += warp_total[w];
    }
    if (tiles > 0 && slot >= first && slot < first + tiles) {
      found.group = g;
      found.row0 = lo + (slot - first) * kTileRows;
      found.row_end = hi;
    }
    carry += chunk;
    __syncthreads();  // `found` is written; warp_total may be overwritten next
    if (!checker && (found.group >= 0 || carry > slot)) break;  // the checker sees every group
  }
  return found;
}

// The k permutation. One mma covers 16 k slots; lane t holds slots {2t, 2t+1, 2t+8, 2t+9} of
// both operands (A for weight rows g and g + 8, B for tile row g), so any renaming of slots to
// physical k that keeps each lane's four slots its own computes the same sum. With slot 2t + i
// -> 4t + i and slot 2t + 8 + i -> 4t + 2 + i (i < 2), mma j (0, 1) of a 32-k column takes
// physical k 8t + 4j .. 8t + 4j + 3 in lane t: the 8 contiguous k a lane loads feed two mmas,
// words {x, y} of the 16 bytes the first and {z, w} the second.
//
// kRT: 8-row tiles per block (the tile's rows 8 rt + g). kVecA: a's rows are 16-byte aligned and
// k % 4 == 0 (float4 loads); kVecB: b's rows are 16-byte aligned and k % 8 == 0 (16-byte loads);
// otherwise element by element with the same k bounds.
template <int kRT, bool kVecA, bool kVecB>
__global__ void __launch_bounds__(kThreads, 2)
    grouped_gemm_kernel(GroupedGemmParams p, int n_warps, int k_split) {
  __shared__ __align__(16) float4 partial[kWarps][kRT][kWarpSize];  // the k split's sums
  const Tile tile = find_tile<8 * kRT>(p, blockIdx.x);
  if (tile.group < 0) return;  // past the last tile (block-uniform)
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int kpart = warp / n_warps;
  const int64_t col0 = int64_t(blockIdx.y) * 16 * n_warps + (warp % n_warps) * 16;
  const int rows_here =
      int(tile.row_end - tile.row0 < 8 * kRT ? tile.row_end - tile.row0 : 8 * kRT);
  const int64_t steps = (p.k + kStepK - 1) / kStepK;
  const uint16_t* b = p.b + tile.group * p.b_stride;
  const float* a = p.a + tile.row0 * p.lda;

  // Weight rows col0 + g and col0 + g + 8 from k 8 t on (null past n); a step adds 128 k.
  const uint16_t* wrow[2];
#pragma unroll
  for (int r = 0; r < 2; ++r)
    wrow[r] = col0 + g + 8 * r < p.n ? b + (col0 + g + 8 * r) * p.ldb + 8 * t : nullptr;
  // The k left after a step's first k in this lane's columns: column q is in range when
  // 32 q < left (its 8 k are whole when k % 8 == 0), element e when 32 q + e < left.
  auto k_left = [&](int64_t step) {
    const int64_t left = p.k - step * kStepK - 8 * t;
    return int(left < kStepK ? left : kStepK);
  };
  // k = step 128 + 32 q + 8 t .. + 8 of both weight rows; zero past n and k.
  auto load_w = [&](int64_t step, uint4(&w)[2][4]) {
    const int left = k_left(step);
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint4 x = make_uint4(0, 0, 0, 0);
        if (wrow[r]) {
          const uint16_t* src = wrow[r] + step * kStepK + 32 * q;
          if constexpr (kVecB) {
            if (32 * q < left) x = ld_weights16(src);
          } else {
            uint32_t h[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) h[e] = 32 * q + e < left ? uint32_t(src[e]) : 0u;
            x = make_uint4(h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16),
                           h[6] | (h[7] << 16));
          }
        }
        w[r][q] = x;
      }
  };
  // Tile row 8 rt + g at the same k as load_w, rounded to bf16 pairs: B fragments of both mmas of
  // each 32-k column q ({f[q][0], f[q][1]} the first, {f[q][2], f[q][3]} the second).
  auto load_a = [&](int64_t step, int rt, uint32_t(&f)[4][4]) {
    const int r = 8 * rt + g, left = k_left(step);
    const float* src = a + int64_t(r) * p.lda + step * kStepK + 8 * t;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      if (r < rows_here) {
        if constexpr (kVecA) {
#pragma unroll
          for (int h = 0; h < 2; ++h)
            if (32 * q + 4 * h < left) {  // k % 4 == 0: the whole vector is in range
              const float4 x = *reinterpret_cast<const float4*>(src + 32 * q + 4 * h);
              v[4 * h] = x.x, v[4 * h + 1] = x.y, v[4 * h + 2] = x.z, v[4 * h + 3] = x.w;
            }
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e)
            if (32 * q + e < left) v[e] = src[32 * q + e];
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) f[q][i] = pack_bf16x2(v[2 * i], v[2 * i + 1]);
    }
  };

  float acc[kRT][4] = {};
  // This step's products: each 8-row block of the tile that has rows (block-uniform).
  auto multiply = [&](int64_t step, const uint4(&w)[2][4]) {
#pragma unroll
    for (int rt = 0; rt < kRT; ++rt) {
      if (8 * rt >= rows_here) continue;
      uint32_t f[4][4];
      load_a(step, rt, f);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        mma_bf16(acc[rt], w[0][q].x, w[1][q].x, w[0][q].y, w[1][q].y, f[q][0], f[q][1]);
        mma_bf16(acc[rt], w[0][q].z, w[1][q].z, w[0][q].w, w[1][q].w, f[q][2], f[q][3]);
      }
    }
  };
  // The warp's steps kpart, kpart + k_split, ... with the weights in two register buffers, the
  // next step's loads issued before this step's products (and no copies between the buffers,
  // which would wait for the loads). Warp-uniform: a warp whose 16 columns are all past n has
  // nothing to load (it still meets the block at the k split's barrier).
  if (col0 < p.n && kpart < steps) {
    uint4 w0[2][4], w1[2][4];
    load_w(kpart, w0);
    for (int64_t s = kpart; s < steps; s += 2 * k_split) {
      const int64_t s1 = s + k_split, s2 = s1 + k_split;
      if (s1 < steps) load_w(s1, w1);
      multiply(s, w0);
      if (s1 >= steps) break;
      if (s2 < steps) load_w(s2, w0);
      multiply(s1, w1);
    }
  }

  if (k_split > 1) {  // block-uniform: the other k parts' sums, added in k part order
    if (kpart > 0)
#pragma unroll
      for (int rt = 0; rt < kRT; ++rt)
        partial[warp][rt][lane] = make_float4(acc[rt][0], acc[rt][1], acc[rt][2], acc[rt][3]);
    __syncthreads();
    if (kpart > 0) return;
    for (int kp = 1; kp < k_split; ++kp)
#pragma unroll
      for (int rt = 0; rt < kRT; ++rt) {
        const float4 o = partial[warp + kp * n_warps][rt][lane];
        acc[rt][0] += o.x, acc[rt][1] += o.y, acc[rt][2] += o.z, acc[rt][3] += o.w;
      }
  }
  if (col0 >= p.n) return;
  // acc[rt] = {(col g, row 2t), (col g, row 2t + 1), (col g + 8, row 2t), (col g + 8, row 2t + 1)}
  // of the tile's 8-row block rt.
  float* c = p.c + tile.row0 * p.ldc;
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 8 * rt + 2 * t + (i & 1);
      const int64_t j = col0 + g + 8 * (i >> 1);
      if (r < rows_here && j < p.n) c[int64_t(r) * p.ldc + j] = acc[rt][i];
    }
}

bool aligned16(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

template <int kRT>
void launch(const GroupedGemmParams& p, const GroupedGemmPlan& pl, bool vec_a, bool vec_b,
            cudaStream_t s) {
  const dim3 grid{unsigned(pl.slots), unsigned(pl.col_blocks), 1u};
  if (vec_a && vec_b)
    grouped_gemm_kernel<kRT, true, true><<<grid, kThreads, 0, s>>>(p, pl.n_warps, pl.k_split);
  else if (vec_a)
    grouped_gemm_kernel<kRT, true, false><<<grid, kThreads, 0, s>>>(p, pl.n_warps, pl.k_split);
  else if (vec_b)
    grouped_gemm_kernel<kRT, false, true><<<grid, kThreads, 0, s>>>(p, pl.n_warps, pl.k_split);
  else
    grouped_gemm_kernel<kRT, false, false><<<grid, kThreads, 0, s>>>(p, pl.n_warps, pl.k_split);
}

}  // namespace

int grouped_gemm_bf16_cuda(const GroupedGemmParams& p, void* stream) {
  if (p.rows < 0 || p.n < 0 || p.k < 0 || p.groups < 0 || (p.groups == 0 && p.rows > 0))
    return int(cudaErrorInvalidValue);
  if (p.rows == 0 || p.n == 0) return int(cudaSuccess);
  if (p.k == 0 || !p.a || !p.b || !p.c || !p.offsets || p.lda < p.k || p.ldb < p.k || p.ldc < p.n)
    return int(cudaErrorInvalidValue);  // k == 0 is the caller's (c = 0, no products)
  const GroupedGemmPlan pl = grouped_gemm_plan(p.rows, p.n, p.k, p.groups);
  if (pl.slots > INT32_MAX || pl.col_blocks > 65535) return int(cudaErrorInvalidValue);
  // Vector loads need every row start 16-byte aligned and k a whole number of vectors.
  const bool vec_a = p.k % 4 == 0 && p.lda % 4 == 0 && aligned16(p.a);
  const bool vec_b = p.k % 8 == 0 && p.ldb % 8 == 0 && p.b_stride % 8 == 0 && aligned16(p.b);
  auto s = static_cast<cudaStream_t>(stream);
  if (pl.row_tiles == 1)
    launch<1>(p, pl, vec_a, vec_b, s);
  else if (pl.row_tiles == 2)
    launch<2>(p, pl, vec_a, vec_b, s);
  else
    launch<4>(p, pl, vec_a, vec_b, s);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
