// The grouped bf16 GEMM of grouped_gemm.h. A block of 4 warps computes one 64 x 64 tile of c
// (rows of one group x columns) over k in steps of 64. Each step's a tile (f32, rounded to bf16 on
// the way) goes global -> registers -> shared memory, the next step's loads issued before this
// step's products. The b tile (the weights: the bytes that bound the decode step) goes global ->
// shared by cp.async, 3 steps ahead in a ring of 4 buffers, so that enough of it is in flight to
// cover the memory latency without registers (with 16-byte aligned rows; otherwise it takes a's
// register route, one step ahead). Each warp owns a 32 x 32 quarter:
// 2 x 4 mma.sync m16n8k16 per 16 of k, fragments read from shared memory as 32-bit words (the
// weight rows [n, k] are already the "col" B operand, so no transposing load is needed). Rows of
// shared memory are padded by 16 bytes, so the 8 rows that a fragment load touches fall in
// distinct banks.
//
// The grid is (row slots, column tiles), row slots = grouped_gemm_row_tiles(rows, groups), an
// upper bound on sum_g ceil(rows_g / 64) that needs no offsets. Block x takes the x-th row tile in
// group order: it scans the groups' tile counts (a block-wide prefix sum over chunks of 128
// groups) and exits when x is past the last tile. Decode batches put a few rows in each of many
// groups (moe-2b at batch 256: ~24 rows in each of 64 experts), so most slots hold one tile of a
// partly filled group and the weights are read about once.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/common/float_formats.cuh"
#include "kernels/common/reduce.cuh"
#include "kernels/moe/grouped_gemm.h"

namespace shoal::kernels {
namespace {

constexpr int kBM = int(kGroupedGemmRows), kBN = 64, kBK = 64;
constexpr int kWarps = 4, kThreads = kWarps * kWarpSize;
constexpr int kLd = kBK + 8;  // shared row length in bf16 (16 bytes of padding)
// b tiles in flight on the vector path: the weights' loads go global -> shared by cp.async
// kStages - 1 steps ahead, without holding registers (4 x 9 KB + a's 9 KB of shared memory).
constexpr int kStages = 4;
// Per thread and k step: a's tile is 64 x 64 f32 = 1,024 groups of 4, b's 64 x 64 bf16 = 512
// groups of 8.
constexpr int kAVecs = kBM * kBK / 4 / kThreads, kBVecs = kBN * kBK / 8 / kThreads;
static_assert(kAVecs == 8 && kBVecs == 4, "tile loads per thread");

// c[16x8] += a[16x16] b[16x8]; fragments (g = lane / 4, t = lane % 4, two bf16 per register, the
// lower column in the low half): a = {(g, 2t), (g + 8, 2t), (g, 2t + 8), (g + 8, 2t + 8)},
// b = {(k 2t, n g), (k 2t + 8, n g)}, c = {(g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)}.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t ld_pair(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// 16 bytes global -> shared without registers; zeros when !full (nothing is read then).
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

// This block's tile: the group, its first row and the group's end; group < 0 when none.
struct Tile {
  int64_t group, row0, row_end;
};

// The block's (group, row tile) from the offsets, block-uniform. Also checks the offsets (block
// (0, 0) reports the first bad one). Group g's rows are [lo_g, hi_g) with lo_g = clamp(o_g, 0,
// rows) and hi_g = clamp(o_{g+1}, lo_g, rows), so bad offsets stay in bounds.
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
    const int64_t tiles = (hi - lo + kBM - 1) / kBM;
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
      found.row0 = lo + (slot - first) * kBM;
      found.row_end = hi;
    }
    carry += chunk;
    __syncthreads();  // `found` is written; warp_total may be overwritten next
    if (!checker && (found.group >= 0 || carry > slot)) break;  // the checker sees every group
  }
  return found;
}

template <bool kVecA, bool kVecB>
__global__ void __launch_bounds__(kThreads, 4) grouped_gemm_kernel(GroupedGemmParams p) {
  __shared__ __align__(16) uint16_t as[kBM][kLd];
  __shared__ __align__(16) uint16_t bs[kVecB ? kStages : 1][kBN][kLd];
  const Tile tile = find_tile(p, blockIdx.x);
  if (tile.group < 0) return;  // past the last tile (block-uniform)
  const int64_t n0 = int64_t(blockIdx.y) * kBN;
  const int m_here = int(tile.row_end - tile.row0 < kBM ? tile.row_end - tile.row0 : kBM);
  const int n_here = int(p.n - n0 < kBN ? p.n - n0 : kBN);
  const float* a = p.a + tile.row0 * p.lda;
  const uint16_t* b = p.b + tile.group * p.b_stride + n0 * p.ldb;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int wm = warp / 2, wn = warp % 2, g = lane / 4, t = lane % 4;

  // One k step's tiles in registers: a as bf16 pairs (4 columns -> 2 words), b as 8 bf16 (the
  // scalar path; the vector path copies b with cp.async instead).
  uint32_t ra[kAVecs][2];
  uint4 rb[kVecB ? 1 : kBVecs];
  auto issue_b = [&](int64_t step) {  // vector path: step's b tile into its buffer, one group
    const int64_t k0 = step * kBK;
#pragma unroll
    for (int i = 0; i < kBVecs; ++i) {
      const int idx = tid + i * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
      const bool in = r < n_here && k0 + c < p.k;  // k % 8 == 0: whole vectors
      cp_async16(&bs[kVecB ? step % kStages : 0][r][c], in ? b + int64_t(r) * p.ldb + k0 + c : b,
                 in);
    }
    cp_async_commit();
  };
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < kAVecs; ++i) {
      const int idx = tid + i * kThreads, r = idx / (kBK / 4), c = (idx % (kBK / 4)) * 4;
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (r < m_here) {
        const float* src = a + int64_t(r) * p.lda + k0 + c;
        if (kVecA) {
          if (k0 + c < p.k) {  // k % 4 == 0: the whole vector is in range
            const float4 x = *reinterpret_cast<const float4*>(src);
            v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (k0 + c + j < p.k) v[j] = src[j];
        }
      }
      ra[i][0] = uint32_t(f32_to_bf16_bits(v[0])) | (uint32_t(f32_to_bf16_bits(v[1])) << 16);
      ra[i][1] = uint32_t(f32_to_bf16_bits(v[2])) | (uint32_t(f32_to_bf16_bits(v[3])) << 16);
    }
    if constexpr (!kVecB) {
#pragma unroll
      for (int i = 0; i < kBVecs; ++i) {
        const int idx = tid + i * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
        uint4 x = make_uint4(0, 0, 0, 0);
        if (r < n_here) {
          const uint16_t* src = b + int64_t(r) * p.ldb + k0 + c;
          uint16_t h[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) h[j] = k0 + c + j < p.k ? src[j] : uint16_t(0);
          x.x = uint32_t(h[0]) | (uint32_t(h[1]) << 16);
          x.y = uint32_t(h[2]) | (uint32_t(h[3]) << 16);
          x.z = uint32_t(h[4]) | (uint32_t(h[5]) << 16);
          x.w = uint32_t(h[6]) | (uint32_t(h[7]) << 16);
        }
        rb[i] = x;
      }
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < kAVecs; ++i) {
      const int idx = tid + i * kThreads, r = idx / (kBK / 4), c = (idx % (kBK / 4)) * 4;
      *reinterpret_cast<uint2*>(&as[r][c]) = make_uint2(ra[i][0], ra[i][1]);
    }
    if constexpr (!kVecB) {
#pragma unroll
      for (int i = 0; i < kBVecs; ++i) {
        const int idx = tid + i * kThreads, r = idx / (kBK / 8), c = (idx % (kBK / 8)) * 8;
        *reinterpret_cast<uint4*>(&bs[0][r][c]) = rb[i];
      }
    }
  };

  float acc[2][4][4] = {};
  // A warp whose 32 rows are all past the group's end has nothing to compute (but still loads
  // and synchronises with the others).
  const bool busy = wm * 32 < m_here;
  const int64_t steps = (p.k + kBK - 1) / kBK;
  // Vector path: groups committed before step st = kStages - 1 + st (empty ones past the end keep
  // the count), so waiting until kStages - 2 are pending completes step st's.
  if constexpr (kVecB)
    for (int st = 0; st < kStages - 1; ++st) {
      if (st < steps)
        issue_b(st);
      else
        cp_async_commit();
    }
  load(0);
  for (int64_t st = 0; st < steps; ++st) {
    const int64_t k0 = st * kBK;
    store();
    if constexpr (kVecB) cp_async_wait<kStages - 2>();
    __syncthreads();
    if constexpr (kVecB) {
      // Into the buffer that step st - 1 read (every warp passed the barrier after it).
      if (st + kStages - 1 < steps)
        issue_b(st + kStages - 1);
      else
        cp_async_commit();
    }
    if (k0 + kBK < p.k) load(k0 + kBK);
    const uint16_t(*bt)[kLd] = bs[kVecB ? st % kStages : 0];
    if (busy) {
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        uint32_t fa[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int r = wm * 32 + mi * 16 + g;
          fa[mi][0] = ld_pair(&as[r][kk + 2 * t]);
          fa[mi][1] = ld_pair(&as[r + 8][kk + 2 * t]);
          fa[mi][2] = ld_pair(&as[r][kk + 2 * t + 8]);
          fa[mi][3] = ld_pair(&as[r + 8][kk + 2 * t + 8]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int r = wn * 32 + ni * 8 + g;
          const uint32_t b0 = ld_pair(&bt[r][kk + 2 * t]), b1 = ld_pair(&bt[r][kk + 2 * t + 8]);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) mma_bf16(acc[mi][ni], fa[mi], b0, b1);
        }
      }
    }
    __syncthreads();  // everyone is done reading this step's tiles before the next store
  }
  if (!busy) return;
  float* c = p.c + tile.row0 * p.ldc + n0;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 32 + mi * 16 + g + 8 * h, col = wn * 32 + ni * 8 + 2 * t;
        if (r >= m_here) continue;
        float* dst = c + int64_t(r) * p.ldc + col;
        if (col < n_here) dst[0] = acc[mi][ni][2 * h];
        if (col + 1 < n_here) dst[1] = acc[mi][ni][2 * h + 1];
      }
}

bool aligned16(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

}  // namespace

int grouped_gemm_bf16_cuda(const GroupedGemmParams& p, void* stream) {
  if (p.rows < 0 || p.n < 0 || p.k < 0 || p.groups < 0 || (p.groups == 0 && p.rows > 0))
    return int(cudaErrorInvalidValue);
  if (p.rows == 0 || p.n == 0) return int(cudaSuccess);
  if (p.k == 0 || !p.a || !p.b || !p.c || !p.offsets || p.lda < p.k || p.ldb < p.k || p.ldc < p.n)
    return int(cudaErrorInvalidValue);  // k == 0 is the caller's (c = 0, no products)
  const int64_t slots = grouped_gemm_row_tiles(p.rows, p.groups);
  const int64_t col_tiles = (p.n + kBN - 1) / kBN;
  if (slots > INT32_MAX || col_tiles > 65535) return int(cudaErrorInvalidValue);
  // Vector loads need every row start 16-byte aligned and k a whole number of vectors.
  const bool vec_a = p.k % 4 == 0 && p.lda % 4 == 0 && aligned16(p.a);
  const bool vec_b = p.k % 8 == 0 && p.ldb % 8 == 0 && p.b_stride % 8 == 0 && aligned16(p.b);
  const dim3 grid{unsigned(slots), unsigned(col_tiles), 1u};
  auto s = static_cast<cudaStream_t>(stream);
  if (vec_a && vec_b)
    grouped_gemm_kernel<true, true><<<grid, kThreads, 0, s>>>(p);
  else if (vec_a)
    grouped_gemm_kernel<true, false><<<grid, kThreads, 0, s>>>(p);
  else if (vec_b)
    grouped_gemm_kernel<false, true><<<grid, kThreads, 0, s>>>(p);
  else
    grouped_gemm_kernel<false, false><<<grid, kThreads, 0, s>>>(p);
  return int(cudaGetLastError());
}

}  // namespace shoal::kernels
