// The MoE experts' forward GEMM with the group boundaries read on the device (Backend::
// grouped_matmul_dev in bf16 GEMM mode) at decode sizes: for g < groups, c[o_g .. o_{g+1}) =
// a[o_g .. o_{g+1}) @ b[g]^T, o = offsets (i32 [groups + 1] on the device). a is f32 and rounded
// to bf16 (nearest even, as Tensor::to(bf16)) as it is loaded; b is bf16 already (the weights'
// kept copy); products on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulation), c f32.
// The grid is sized from a host bound on the row tiles (grouped_gemm_plan), and each block finds
// its (group, row tile) from the offsets, so nothing is read back to the host. Offsets that are
// not 0 = o_0 <= ... <= o_groups = rows are reported (KernelStatus) and clamped into [0, rows], so
// a bad call never reads or writes out of bounds. The reference: the CPU backend's grouped_matmul
// on the operands rounded to bf16 (engine/backend.cpp). Not for large groups (prefill, training):
// kernels/moe/expert_gemm.h.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

// How a call is cut into blocks, from the shapes alone (the host never sees the offsets). A block
// of 8 warps takes one row tile (up to 8 row_tiles rows of one group) and 16 n_warps columns; its
// warps split k k_split ways (n_warps k_split = 8), each warp streaming its 16 weight rows over
// its k steps of 128 (steps k_split apart), the partial sums added in a fixed order at the end.
struct GroupedGemmPlan {
  int row_tiles = 1;       // 8-row mma tiles per block: 1, 2 or 4
  int k_split = 1;         // 1, 2, 4 or 8
  int n_warps = 8;         // 8 / k_split
  int64_t slots = 0;       // blocks along the rows: a bound on sum_g ceil(rows_g / (8 row_tiles))
  int64_t col_blocks = 0;  // blocks along n: ceil(n / (16 n_warps))
};

constexpr int64_t kGroupedGemmStepK = 128;  // the k of one warp step
// Warps (of 8 rows each) the k split aims for: about one full wave of the GPU's warp slots (132
// SMs x 64), so that even a batch of 1 has enough weight loads in flight.
constexpr int64_t kGroupedGemmTargetWarps = 8192;

inline GroupedGemmPlan grouped_gemm_plan(int64_t rows, int64_t n, int64_t k, int64_t groups) {
  GroupedGemmPlan pl;
  if (rows <= 0 || groups <= 0 || n <= 0) return pl;
  // At most min(groups, rows) groups have rows; the tile height follows their average, so that a
  // group is mostly one tile (its weights read once) without idle rows costing registers.
  const int64_t active = std::min(groups, rows);
  const int64_t avg = (rows + active - 1) / active;
  pl.row_tiles = avg <= 5 ? 1 : avg <= 10 ? 2 : 4;
  const int64_t tile = 8 * pl.row_tiles;
  // sum_g ceil(r_g / tile) <= sum_g (r_g + tile - 1) / tile over at most `active` groups.
  pl.slots = (rows + active * (tile - 1)) / tile;
  const int64_t steps = (k + kGroupedGemmStepK - 1) / kGroupedGemmStepK;
  const int64_t col16 = (n + 15) / 16;
  while (pl.k_split < 8 && 2 * pl.k_split <= steps &&
         pl.slots * col16 * pl.k_split * pl.row_tiles < kGroupedGemmTargetWarps)
    pl.k_split *= 2;
  pl.n_warps = 8 / pl.k_split;
  pl.col_blocks = (n + 16 * pl.n_warps - 1) / (16 * pl.n_warps);
  return pl;
}

struct GroupedGemmParams {
  const float* a = nullptr;  // [rows, k], row r at a + r * lda, unit column stride
  int64_t lda = 0;
  const uint16_t* b = nullptr;  // bf16 bits [groups, n, k]: b + g * b_stride + j * ldb + kk
  int64_t ldb = 0, b_stride = 0;
  float* c = nullptr;  // [rows, n], row r at c + r * ldc
  int64_t ldc = 0;
  const int32_t* offsets = nullptr;  // [groups + 1], on the device
  int64_t rows = 0, n = 0, k = 0, groups = 0;
  KernelStatus* status = nullptr;  // offsets out of order or range
  int32_t op = 0;
};
int grouped_gemm_bf16_cuda(const GroupedGemmParams& p, void* stream);

}  // namespace shoal::kernels
