// The grouped bf16 GEMMs of expert_gemm.h. One kernel template for the three layouts: a block of
// 8 warps computes a 128 x 128 tile of C = A B (the GEMM's own M x N; for nt and nn M runs over a
// group's rows and N over n, for tn M over n, N over k and the reduction over the group's rows),
// k in steps of 32, each warp a 64 x 32 part of it (4 x 4 mma.sync m16n8k16 per 16 of k, 64 f32
// accumulators per thread).
//
// Operands move global -> shared by cp.async in their global dtype, kStages - 1 steps ahead, with
// no registers held: the weights (bf16) straight into the padded tiles the warps read, the f32
// activations into a staging ring from which the block rounds each step's tile to bf16 (nearest
// even) once, one step ahead of its use, for all the warps that share it. Fragments come from
// shared memory by ldmatrix, transposed (.trans) where the operand is stored with M or N
// contiguous (nn's weights [k, n], both tn operands [rows, .]), so no layout needs a copy. Rows
// of the bf16 tiles are padded by 16 bytes, so the 8 rows an 8 x 8 ldmatrix reads fall in
// distinct banks. Shapes or strides that break 16-byte chunks take plain loads into the same
// tiles (slower, same result).
//
// Which block does what is read from the offsets on the device. nt, nn: a 1-D grid of (row slot,
// column tile), row slots = ceil(rows / 128) + groups >= sum_g ceil(rows_g / 128); block slot s
// takes the s-th row tile in group order (a block-wide prefix sum over the groups' tile counts)
// and exits when there is none. tn: (chunk slot, tile of c[g]); a group's rows are cut into
// chunks of at most `split` rows (one chunk for an empty group, which still owes beta c[g]), with
// `split` chosen on the host from the shapes alone so that the moe-2b step's groups (~1,500 rows,
// 64 groups of 64 tiles) are whole, and only over-full groups or too few tiles to fill the GPU
// are cut. The chunks of a group add their parts into c[g] in chunk order, each waiting on a
// counter per (group, tile) that the previous one releases, so the sum's order never depends on
// timing (the blocks of one group are consecutive in the grid and start in order, so a waiting
// block waits only on blocks already running).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/common/reduce.cuh"
#include "kernels/moe/expert_gemm.h"

namespace shoal::kernels {
namespace {

constexpr int kBM = 128, kBK = 32;  // the tile's M and k step; its N is 128 or 256
constexpr int kWarps = 8, kThreads = kWarps * kWarpSize;
constexpr int kPad = 8;  // bf16 elements (16 bytes) of padding per shared row
// tn reduces over at least this many rows per block, so that a block's pipeline start and
// epilogue stay small beside its products.
constexpr int64_t kMinSplitRows = 256;

// ---------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool full) {
  const uint32_t d = uint32_t(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(full ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(p));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
// c[16x8] += a[16x16] b[16x8] (fragments as in grouped_gemm.cu).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two f32 rounded to bf16, nearest even (lo in the low half). The hardware conversion: equal to
// engine/dtype.h's f32_to_bf16 on every number (NaNs stay NaN, their payload may differ).
__device__ __forceinline__ uint32_t bf16x2(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ int ld_acquire(const int32_t* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(int32_t* p, int v) {
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

// ---------------------------------------------------------------- operand tiles

// One operand's tile in shared memory: kMN (M or N) x 32 (k). kInner: stored as its global rows
// are, [128][32] with k contiguous; else [32][128] with M or N contiguous (loaded with .trans).
// kF32: the global operand is f32, staged as is ([rows][cols], unpadded) and rounded into a bf16
// tile per step; else bf16 copied straight into the padded tile.
template <bool kF32, bool kInner, int kMN>
struct Tile {
  static constexpr int rows = kInner ? kMN : kBK, cols = kInner ? kBK : kMN;
  static constexpr int ld = cols + kPad;  // bf16 row length
  static constexpr int bf16_bytes = rows * ld * 2;
  static constexpr int raw_bytes = kF32 ? rows * cols * 4 : bf16_bytes;
  static constexpr int per_chunk = kF32 ? 4 : 8;  // elements in 16 bytes
  static constexpr int chunks = rows * cols / per_chunk / kThreads;
  static_assert(chunks * kThreads * per_chunk == rows * cols, "whole chunks per thread");
};

// Global side of an operand: the tile origin at k = 0, its row stride, how many of the 128
// columns (M or N) exist, how many k (rows of the reduction) exist, and whether 16-byte chunks
// are whole and aligned.
template <typename T>
struct Src {
  const T* base;
  int64_t ld;
  int mn_here;
  int64_t k_here;
  bool vec;
};

// Step st's tile of an operand into `dst` (cp.async, or plain stores without whole chunks);
// elements outside the operand are zeros.
template <bool kF32, bool kInner, int kMN, typename T>
__device__ __forceinline__ void load_tile(void* dst, const Src<T>& s, int64_t st) {
  using Tl = Tile<kF32, kInner, kMN>;
  const int64_t k0 = st * kBK;
#pragma unroll
  for (int i = 0; i < Tl::chunks; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    const int r = idx / (Tl::cols / Tl::per_chunk),
              c = (idx % (Tl::cols / Tl::per_chunk)) * Tl::per_chunk;
    // (global row, global column) of the chunk's first element and the column limit.
    const int64_t gr = kInner ? int64_t(r) : k0 + r, gc = kInner ? k0 + c : int64_t(c);
    const bool row_in = kInner ? r < s.mn_here : gr < s.k_here;
    const int64_t col_end = kInner ? s.k_here : int64_t(s.mn_here);
    const T* src = s.base + gr * s.ld + gc;
    void* d = kF32 ? static_cast<void*>(static_cast<float*>(dst) + r * Tl::cols + c)
                   : static_cast<void*>(static_cast<uint16_t*>(dst) + r * Tl::ld + c);
    if (s.vec) {
      const bool in = row_in && gc < col_end;  // whole chunks: in or out together
      cp_async16(d, in ? static_cast<const void*>(src) : static_cast<const void*>(s.base), in);
    } else {
#pragma unroll
      for (int j = 0; j < Tl::per_chunk; ++j) {
        const bool in = row_in && gc + j < col_end;
        if constexpr (kF32)
          static_cast<float*>(d)[j] = in ? src[j] : 0.0f;
        else
          static_cast<uint16_t*>(d)[j] = in ? src[j] : uint16_t(0);
      }
    }
  }
}

// The f32 staging tile rounded into the bf16 tile (same layout, padded rows).
template <bool kInner, int kMN>
__device__ __forceinline__ void round_tile(const float* raw, uint16_t* out) {
  using Tl = Tile<true, kInner, kMN>;
#pragma unroll
  for (int i = 0; i < Tl::chunks; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    const int r = idx / (Tl::cols / 4), c = (idx % (Tl::cols / 4)) * 4;
    const float4 v = *reinterpret_cast<const float4*>(raw + r * Tl::cols + c);
    *reinterpret_cast<uint2*>(out + r * Tl::ld + c) =
        make_uint2(bf16x2(v.x, v.y), bf16x2(v.z, v.w));
  }
}

// ---------------------------------------------------------------- scheduling

// A block's share of a group: rows [start, min(start + unit, hi)) of the group [lo, hi).
struct Unit {
  int64_t group, start, lo, hi;
};

// The slot-th unit in group order (block-uniform; group < 0 when there is none). Group g's rows
// are [lo_g, hi_g) with lo_g = clamp(o_g, 0, rows) and hi_g = clamp(o_{g+1}, lo_g, rows), so bad
// offsets stay in bounds; block 0 checks every offset and reports the first bad one. A group
// holds ceil(rows_g / unit) units, at least one when at_least_one.
__device__ Unit find_unit(const ExpertGemmParams& p, int64_t slot, int64_t unit,
                          bool at_least_one) {
  __shared__ int64_t warp_total[kWarps];
  __shared__ Unit found;
  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  if (threadIdx.x == 0) found.group = -1;
  const bool checker = blockIdx.x == 0;
  int64_t carry = 0;  // units of the groups before this chunk of groups
  for (int64_t base = 0; base < p.groups; base += kThreads) {
    const int64_t g = base + threadIdx.x;
    int64_t lo = 0, hi = 0, units = 0;
    if (g < p.groups) {
      const int64_t o0 = p.offsets[g], o1 = p.offsets[g + 1];
      lo = o0 < 0 ? 0 : (o0 > p.rows ? p.rows : o0);
      hi = o1 < lo ? lo : (o1 > p.rows ? p.rows : o1);
      units = (hi - lo + unit - 1) / unit;
      if (at_least_one && units == 0) units = 1;
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
    int64_t incl = units;  // inclusive prefix sum within the warp
#pragma unroll
    for (int o = 1; o < kWarpSize; o *= 2) {
      const int64_t v = __shfl_up_sync(0xffffffffu, static_cast<long long>(incl), o);
      if (lane >= o) incl += v;
    }
    if (lane == kWarpSize - 1) warp_total[warp] = incl;
    __syncthreads();
    int64_t first = carry + incl - units, chunk = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) first += warp_total[w];
      chunk += warp_total[w];
    }
    if (units > 0 && slot >= first && slot < first + units) {
      found.group = g;
      found.start = lo + (slot - first) * unit;
      found.lo = lo;
      found.hi = hi;
    }
    carry += chunk;
    __syncthreads();  // `found` is written; warp_total may be overwritten next
    if (!checker && (found.group >= 0 || carry > slot)) break;  // the checker sees every group
  }
  return found;
}

// ---------------------------------------------------------------- the kernel

template <ExpertGemmLayout L, int kBNv>
struct Layout {
  static constexpr bool kInnerA = L != ExpertGemmLayout::tn;  // a [rows, k] vs a [rows, n]
  static constexpr bool kInnerB = L == ExpertGemmLayout::nt;  // b [n, k] vs [k, n] / [rows, k]
  static constexpr bool kF32B = L == ExpertGemmLayout::tn;
  // 128-wide tiles: nt and nn fit two blocks per SM with three stages; tn keeps both operands
  // in f32 staging (one block per SM), so a deeper ring. 256-wide: one block per SM, four stages
  // (tn: three, for shared memory).
  static constexpr int kStages = kBNv == 256 ? (kF32B ? 3 : 4) : (kF32B ? 4 : 3);
  static constexpr int kMinBlocks = kBNv == 256 || kF32B ? 1 : 2;
  using TA = Tile<true, kInnerA, kBM>;
  using TB = Tile<kF32B, kInnerB, kBNv>;
  static constexpr int a_raw = 0;
  static constexpr int b_raw = a_raw + kStages * TA::raw_bytes;
  static constexpr int a_bf16 = b_raw + kStages * TB::raw_bytes;
  static constexpr int b_bf16 = a_bf16 + 2 * TA::bf16_bytes;
  static constexpr int bytes = b_bf16 + (kF32B ? 2 * TB::bf16_bytes : 0);
};

struct Setup {
  int64_t tiles_n;  // nt, nn: column tiles of c; tn: tiles of c[g] along k
  int64_t split;    // tn: rows per chunk
  bool vec_a, vec_b;
};

template <ExpertGemmLayout L, int kBN>
__global__ void __launch_bounds__(kThreads, Layout<L, kBN>::kMinBlocks)
    expert_gemm_kernel(ExpertGemmParams p, Setup s) {
  using Ly = Layout<L, kBN>;
  constexpr int kWN = kBN / 4, kNI = kWN / 8;  // a warp's columns and its 8-wide pieces
  constexpr bool kTn = L == ExpertGemmLayout::tn;
  constexpr int S = Ly::kStages;
  extern __shared__ __align__(16) unsigned char smem[];

  // This block's group, its rows and its tile of c.
  const int64_t tiles = kTn ? ((p.n + kBM - 1) / kBM) * s.tiles_n : s.tiles_n;
  const int64_t slot = int64_t(blockIdx.x) / tiles, tile = int64_t(blockIdx.x) % tiles;
  const Unit u = find_unit(p, slot, kTn ? s.split : kBM, kTn);
  if (u.group < 0) return;  // past the last unit (block-uniform)
  const int64_t unit_end = kTn ? std::min(u.start + s.split, u.hi) : std::min(u.start + kBM, u.hi);
  int64_t m0, n0, kdim;  // the tile's origin in the GEMM's M and N, and its reduction length
  int m_here, n_here;
  Src<float> sa;
  Src<std::conditional_t<kTn, float, uint16_t>> sb;
  if constexpr (kTn) {
    m0 = (tile / s.tiles_n) * kBM;  // over n
    n0 = (tile % s.tiles_n) * kBN;  // over k
    kdim = unit_end - u.start;
    m_here = int(std::min<int64_t>(kBM, p.n - m0));
    n_here = int(std::min<int64_t>(kBN, p.k - n0));
    if (kdim == 0 && p.beta == 1.0f) return;  // an empty group with beta 1: c[g] stays
    sa = {p.a + u.start * p.lda + m0, p.lda, m_here, kdim, s.vec_a};
    sb = {p.b_f32 + u.start * p.ldb + n0, p.ldb, n_here, kdim, s.vec_b};
  } else {
    m0 = u.start;
    n0 = tile * kBN;
    kdim = p.k;
    m_here = int(unit_end - u.start);
    n_here = int(std::min<int64_t>(kBN, p.n - n0));
    sa = {p.a + m0 * p.lda, p.lda, m_here, kdim, s.vec_a};
    sb = {p.b + u.group * p.b_stride + (Ly::kInnerB ? n0 * p.ldb : n0), p.ldb, n_here, kdim,
          s.vec_b};
  }

  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  const int wm = warp / 4, wn = warp % 4;  // 2 x 4 warps of 64 x kWN
  // A warp with no rows or columns of c here computes nothing (it still loads and synchronises).
  const bool busy = wm * 64 < m_here && wn * kWN < n_here;
  auto a_raw = [&](int64_t st) { return smem + Ly::a_raw + int(st % S) * Ly::TA::raw_bytes; };
  auto b_raw = [&](int64_t st) { return smem + Ly::b_raw + int(st % S) * Ly::TB::raw_bytes; };
  auto a_bf16 = [&](int64_t st) {
    return reinterpret_cast<uint16_t*>(smem + Ly::a_bf16 + int(st & 1) * Ly::TA::bf16_bytes);
  };
  auto b_bf16 = [&](int64_t st) {
    if constexpr (Ly::kF32B)
      return reinterpret_cast<uint16_t*>(smem + Ly::b_bf16 + int(st & 1) * Ly::TB::bf16_bytes);
    else
      return reinterpret_cast<uint16_t*>(b_raw(st));
  };

  const int64_t steps = (kdim + kBK - 1) / kBK;
  // Groups committed: one per step (empty past the end), so that waiting until n are pending
  // means every step but the last n has landed.
  auto issue = [&](int64_t st) {
    if (st < steps) {
      load_tile<true, Ly::kInnerA, kBM>(a_raw(st), sa, st);
      load_tile<Ly::kF32B, Ly::kInnerB, kBN>(b_raw(st), sb, st);
    }
    cp_async_commit();
  };
  auto round_step = [&](int64_t st) {
    if (st >= steps) return;
    round_tile<Ly::kInnerA, kBM>(reinterpret_cast<const float*>(a_raw(st)), a_bf16(st));
    if constexpr (Ly::kF32B)
      round_tile<Ly::kInnerB, kBN>(reinterpret_cast<const float*>(b_raw(st)), b_bf16(st));
  };

  float acc[4][kNI][4] = {};
  const int li = lane % 8, lj = lane / 8;  // ldmatrix: the row this lane addresses, its matrix
  for (int st = 0; st < S - 1; ++st) issue(st);
  cp_async_wait<S - 2>();
  __syncthreads();
  round_step(0);
  for (int64_t st = 0; st < steps; ++st) {
    // Step st + 1 has landed; step st is rounded; every warp is done with step st - 1, whose
    // buffers are written next.
    cp_async_wait<S - 3>();
    __syncthreads();
    issue(st + S - 1);
    round_step(st + 1);
    if (!busy) continue;
    const uint16_t* as = a_bf16(st);
    const uint16_t* bs = b_bf16(st);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t fa[4][4], fb[kNI][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int mb = wm * 64 + mi * 16;
        if constexpr (Ly::kInnerA)
          ldmatrix_x4<false>(fa[mi],
                             as + (mb + li + 8 * (lj % 2)) * Ly::TA::ld + kk + 8 * (lj / 2));
        else
          ldmatrix_x4<true>(fa[mi], as + (kk + li + 8 * (lj / 2)) * Ly::TA::ld + mb + 8 * (lj % 2));
      }
#pragma unroll
      for (int nj = 0; nj < kNI / 2; ++nj) {
        const int nb = wn * kWN + nj * 16;
        uint32_t r[4];
        if constexpr (Ly::kInnerB)
          ldmatrix_x4<false>(r, bs + (nb + li + 8 * (lj / 2)) * Ly::TB::ld + kk + 8 * (lj % 2));
        else
          ldmatrix_x4<true>(r, bs + (kk + li + 8 * (lj % 2)) * Ly::TB::ld + nb + 8 * (lj / 2));
        fb[2 * nj][0] = r[0], fb[2 * nj][1] = r[1];
        fb[2 * nj + 1][0] = r[2], fb[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) mma_bf16(acc[mi][ni], fa[mi], fb[ni][0], fb[ni][1]);
    }
  }

  // Epilogue: thread (g, t) holds rows g and g + 8 of each 16 x 8 piece, columns 2t and 2t + 1.
  const int g8 = lane / 4, t4 = lane % 4;
  if constexpr (!kTn) {
    if (!busy) return;
    float* c = p.c + m0 * p.ldc + n0;
    const bool pairs = p.ldc % 2 == 0 && (reinterpret_cast<uintptr_t>(p.c) & 7u) == 0;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm * 64 + mi * 16 + g8 + 8 * h, col = wn * kWN + ni * 8 + 2 * t4;
          if (r >= m_here) continue;
          float* dst = c + int64_t(r) * p.ldc + col;
          const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
          if (pairs && col + 1 < n_here) {
            *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
          } else {
            if (col < n_here) dst[0] = v0;
            if (col + 1 < n_here) dst[1] = v1;
          }
        }
  } else {
    // c[g] (+)= alpha part + beta c[g]: the first chunk of the group applies beta, later ones
    // add to what the earlier ones left, in chunk order.
    const int64_t chunks = std::max<int64_t>(1, (u.hi - u.lo + s.split - 1) / s.split);
    const int64_t chunk = (u.start - u.lo) / s.split;
    int32_t* sem = chunks > 1 ? p.workspace + u.group * tiles + tile : nullptr;
    if (sem) {
      if (threadIdx.x == 0)
        while (ld_acquire(sem) != int(chunk)) __nanosleep(128);
      __syncthreads();
    }
    const float alpha = p.alpha, beta = chunk == 0 ? p.beta : 1.0f;
    float* c = p.c + u.group * p.c_stride + m0 * p.ldc + n0;
    if (busy) {
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = wm * 64 + mi * 16 + g8 + 8 * h, col = wn * kWN + ni * 8 + 2 * t4;
            if (r >= m_here) continue;
            float* dst = c + int64_t(r) * p.ldc + col;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              if (col + e >= n_here) continue;
              float v = alpha * acc[mi][ni][2 * h + e];
              if (beta != 0.0f) v += beta * __ldcg(dst + e);  // beta 0: c is not read
              dst[e] = v;
            }
          }
    }
    if (sem) {
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) st_release(sem, int(chunk) + 1);
    }
  }
}

bool aligned16(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    return 132;
  }
  return sms;
}

// The tile's width along the GEMM's N (n for nt and nn, k for tn): 256 when N has that many (half
// the reads of the M operand per product), else 128. SHOAL_EXPERT_GEMM_BN (128 or 256) forces
// one, for measurements.
int tile_width(const ExpertGemmParams& p) {
  static const int forced = [] {
    const char* e = std::getenv("SHOAL_EXPERT_GEMM_BN");
    return e ? std::atoi(e) : 0;
  }();
  if (forced == 128 || forced == 256) return forced;
  const int64_t cols = p.layout == ExpertGemmLayout::tn ? p.k : p.n;
  return cols >= 256 ? 256 : 128;
}

// tn's tiles of c[g].
int64_t tn_tiles(const ExpertGemmParams& p) {
  const int64_t bn = tile_width(p);
  return ((p.n + kBM - 1) / kBM) * ((p.k + bn - 1) / bn);
}

// tn: the rows per chunk. Enough chunks that the tiles fill the GPU about twice over (tn runs one
// block per SM), and twice the average group so that balanced groups stay whole.
int64_t tn_split_rows(const ExpertGemmParams& p) {
  const int64_t tiles = tn_tiles(p);
  const int64_t want = 2 * int64_t(sm_count());
  const int64_t chunks = std::max<int64_t>({p.groups, (want + tiles - 1) / tiles, 1});
  int64_t split = (2 * p.rows + chunks - 1) / chunks;
  split = (split + kBK - 1) / kBK * kBK;
  return std::max(split, kMinSplitRows);
}

template <ExpertGemmLayout L, int kBN>
int launch(const ExpertGemmParams& p, const Setup& s, int64_t blocks, cudaStream_t stream) {
  const int bytes = Layout<L, kBN>::bytes;
  // Above 48 KB of dynamic shared memory a kernel must opt in (once per process).
  static const cudaError_t opted_in = cudaFuncSetAttribute(
      expert_gemm_kernel<L, kBN>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (opted_in != cudaSuccess) return int(opted_in);
  expert_gemm_kernel<L, kBN><<<unsigned(blocks), kThreads, bytes, stream>>>(p, s);
  return int(cudaGetLastError());
}

template <ExpertGemmLayout L>
int launch_width(const ExpertGemmParams& p, const Setup& s, int64_t blocks, int bn,
                 cudaStream_t stream) {
  return bn == 256 ? launch<L, 256>(p, s, blocks, stream) : launch<L, 128>(p, s, blocks, stream);
}

__global__ void add_group_sizes_kernel(const int32_t* offsets, int64_t groups, int64_t* counts) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g < groups) counts[g] += int64_t(offsets[g + 1]) - int64_t(offsets[g]);
}

}  // namespace

int64_t expert_gemm_workspace(const ExpertGemmParams& p) {
  if (p.layout != ExpertGemmLayout::tn || p.groups <= 0 || p.n <= 0 || p.k <= 0) return 0;
  if (tn_split_rows(p) >= p.rows) return 0;  // no group can hold more than one chunk
  return p.groups * tn_tiles(p);
}

int expert_gemm_bf16_cuda(const ExpertGemmParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const bool tn = p.layout == ExpertGemmLayout::tn;
  if (p.rows < 0 || p.n < 0 || p.k < 0 || p.groups < 0 || (p.groups == 0 && p.rows > 0))
    return int(cudaErrorInvalidValue);
  if (p.n == 0 || (tn ? p.k == 0 || p.groups == 0 : p.rows == 0)) return int(cudaSuccess);
  // nt, nn with k == 0 are the caller's (c = 0, no products).
  // (tn with no rows reads neither operand: every group is empty and owes beta c[g] only.)
  if ((!tn && p.k == 0) || !p.c || !p.offsets || (p.rows > 0 && (!p.a || (tn ? !p.b_f32 : !p.b))))
    return int(cudaErrorInvalidValue);
  const int64_t a_cols = tn ? p.n : p.k;
  const int64_t b_cols = p.layout == ExpertGemmLayout::nn ? p.n : p.k;
  const int64_t c_cols = tn ? p.k : p.n;
  if (p.lda < a_cols || p.ldb < b_cols || p.ldc < c_cols) return int(cudaErrorInvalidValue);
  Setup st{};
  st.vec_a = a_cols % 4 == 0 && p.lda % 4 == 0 && aligned16(p.a);
  if (tn)
    st.vec_b = p.k % 4 == 0 && p.ldb % 4 == 0 && aligned16(p.b_f32);
  else
    st.vec_b = b_cols % 8 == 0 && p.ldb % 8 == 0 && p.b_stride % 8 == 0 && aligned16(p.b);
  int64_t blocks = 0;
  const int bn = tile_width(p);
  if (tn) {
    st.split = tn_split_rows(p);
    st.tiles_n = (p.k + bn - 1) / bn;
    const int64_t slots = (p.rows + st.split - 1) / st.split + p.groups;
    blocks = slots * ((p.n + kBM - 1) / kBM) * st.tiles_n;
    const int64_t need = expert_gemm_workspace(p);
    if (need > 0) {
      if (!p.workspace) return int(cudaErrorInvalidValue);
      const cudaError_t e = cudaMemsetAsync(p.workspace, 0, size_t(need) * sizeof(int32_t), s);
      if (e != cudaSuccess) return int(e);
    }
  } else {
    st.tiles_n = (p.n + bn - 1) / bn;
    blocks = ((p.rows + kBM - 1) / kBM + p.groups) * st.tiles_n;
  }
  if (blocks > INT32_MAX) return int(cudaErrorInvalidValue);
  switch (p.layout) {
    case ExpertGemmLayout::nt:
      return launch_width<ExpertGemmLayout::nt>(p, st, blocks, bn, s);
    case ExpertGemmLayout::nn:
      return launch_width<ExpertGemmLayout::nn>(p, st, blocks, bn, s);
    case ExpertGemmLayout::tn:
      return launch_width<ExpertGemmLayout::tn>(p, st, blocks, bn, s);
  }
  return int(cudaErrorInvalidValue);
}

int add_group_sizes_cuda(const int32_t* offsets, int64_t groups, int64_t* counts, void* stream) {
  if (groups < 0 || (groups > 0 && (!offsets || !counts))) return int(cudaErrorInvalidValue);
  if (groups == 0) return int(cudaSuccess);
  const int threads = 256;
  const int64_t blocks = (groups + threads - 1) / threads;
  add_group_sizes_kernel<<<unsigned(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      offsets, groups, counts);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
