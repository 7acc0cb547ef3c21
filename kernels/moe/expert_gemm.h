// The MoE experts' grouped GEMMs at training sizes (hundreds to thousands of rows per expert),
// with the group boundaries read only on the device (offsets, i32 [groups + 1]), in the three
// layouts a training step needs (o = offsets, group g's rows [o_g, o_{g+1})):
//   nt (forward):         c[o_g..o_{g+1}) = a[o_g..o_{g+1}) @ b[g]^T, b bf16 [groups, n, k];
//   nn (data gradient):   c[o_g..o_{g+1}) = a[o_g..o_{g+1}) @ b[g],   b bf16 [groups, k, n];
//   tn (weight gradient): c[g] = alpha a[o_g..o_{g+1})^T @ b[o_g..o_{g+1}) + beta c[g], a f32
//                         [rows, n], b f32 [rows, k], c [groups, n, k] (an empty group leaves
//                         beta c[g]).
// a (and b in tn) is f32 and rounded to bf16 (nearest even) in the kernel; products on the tensor
// cores (mma.sync m16n8k16, bf16 in, f32 accumulation), c f32. Not the decode-sized kernel
// (grouped_gemm.h: 64-row tiles, faster when groups hold a few rows). Offsets that are not 0 =
// o_0 <= ... <= o_groups = rows are reported (KernelStatus) and clamped into [0, rows], so a bad
// call stays in bounds. The reference: the CPU backend's grouped_matmul on the operands rounded to
// bf16 (engine/backend.cpp).
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

enum class ExpertGemmLayout : int32_t { nt, nn, tn };

struct ExpertGemmParams {
  ExpertGemmLayout layout = ExpertGemmLayout::nt;
  // nt, nn: [rows, k]; tn: [rows, n]. Row r at a + r * lda, unit column stride.
  const float* a = nullptr;
  int64_t lda = 0;
  // nt: bf16 bits, b + g * b_stride + j * ldb + kk for (j < n, kk < k);
  // nn: bf16 bits, b + g * b_stride + kk * ldb + j;
  // tn: f32 [rows, k], row r at b_f32 + r * ldb (b_stride unused).
  const uint16_t* b = nullptr;
  const float* b_f32 = nullptr;
  int64_t ldb = 0, b_stride = 0;
  // nt, nn: [rows, n], row r at c + r * ldc; tn: c + g * c_stride + j * ldc + kk.
  float* c = nullptr;
  int64_t ldc = 0, c_stride = 0;
  const int32_t* offsets = nullptr;  // [groups + 1], on the device
  int64_t rows = 0, n = 0, k = 0, groups = 0;
  float alpha = 1.0f, beta = 0.0f;  // tn only (nt and nn overwrite c)
  // tn when a group's rows are split over several blocks (expert_gemm_workspace): one counter per
  // (group, tile of c[g]), which the launcher zeroes; the blocks of a group add their parts in
  // row order, so the result does not depend on timing.
  int32_t* workspace = nullptr;
  KernelStatus* status = nullptr;  // offsets out of order or range
  int32_t op = 0;
};

// The i32 counters a tn call needs in `workspace` (0 when no group can be split: then it may be
// null). Depends on the shapes and the device's SM count only, never on the offsets.
int64_t expert_gemm_workspace(const ExpertGemmParams& p);
int expert_gemm_bf16_cuda(const ExpertGemmParams& p, void* stream);

// counts[g] += offsets[g + 1] - offsets[g] for g < groups (the MoE load counts kept on the
// device; offsets as above, unchecked here: the GEMMs that read them report bad ones).
int add_group_sizes_cuda(const int32_t* offsets, int64_t groups, int64_t* counts, void* stream);

}  // namespace shoal::kernels
