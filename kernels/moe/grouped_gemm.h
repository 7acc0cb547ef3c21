// The MoE experts' forward GEMM with the group boundaries read on the device (Backend::
// grouped_matmul_dev in bf16 GEMM mode): for g < groups, c[o_g .. o_{g+1}) = a[o_g .. o_{g+1}) @
// b[g]^T, o = offsets (i32 [groups + 1] on the device). a is f32 and rounded to bf16 (nearest
// even, as Tensor::to(bf16)) as it is loaded; b is bf16 already (the weights' kept copy); products
// on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulation), c f32. The grid is sized
// from a host bound on the tiles (sum_g ceil(rows_g / BM) <= ceil(rows / BM) + groups), and each
// block finds its (group, row tile) from the offsets, so nothing is read back to the host. Offsets
// that are not 0 = o_0 <= ... <= o_groups = rows are reported (KernelStatus) and clamped into
// [0, rows], so a bad call never reads or writes out of bounds. The reference: the CPU backend's
// grouped_matmul on the operands rounded to bf16 (engine/backend.cpp).
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

constexpr int64_t kGroupedGemmRows = 64;  // BM: the rows of a tile

// Blocks along the rows for `rows` rows in `groups` groups (the bound above).
inline int64_t grouped_gemm_row_tiles(int64_t rows, int64_t groups) {
  return (rows + kGroupedGemmRows - 1) / kGroupedGemmRows + groups;
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
