// Row gathers and scatters over f32 matrices with free row strides, indexed by an i32 vector on
// the device: the MoE permutation (gather token rows per expert slot, weighted scatter-add back),
// the per-row dot products and scalings of the MoE backward, and the embedding lookup and its
// gradient (a gather / scatter-add with div = 1). The CPU backend is the reference. Indices out
// of range are reported through KernelStatus and their rows skipped. scatter_add uses f32
// atomics (several slots of a token meet in one row), so its summation order is not fixed.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

struct RowOpParams {
  const float* src = nullptr;  // row stride src_ld
  float* dst = nullptr;        // row stride dst_ld
  int64_t src_ld = 0, dst_ld = 0;
  int64_t src_rows = 0, dst_rows = 0, cols = 0;
  const int32_t* idx = nullptr;  // one index per iterated row
  int64_t n_idx = 0;
  int64_t div = 1;
  const float* w = nullptr;  // per-index weights (scatter_add, scale_rows), w_count entries
  int64_t w_count = 0;
  KernelStatus* status = nullptr;
  int32_t op = 0;
};

// dst[i] = src[idx[i] / div] for i < n_idx.
int gather_rows_cuda(const RowOpParams& p, void* stream);
// dst[idx[i] / div] += (w ? w[idx[i]] : 1) * src[i] for i < n_idx.
int scatter_add_rows_cuda(const RowOpParams& p, void* stream);
// Backend::combine_rows: idx (n_idx = dst_rows * div entries) a permutation of [0, n_idx);
// dst[t] = (accumulate ? dst[t] : 0) + sum over i with idx[i] / div == t, in increasing i, of
// (w ? w[idx[i]] : 1) * src[i]. inv: scratch of n_idx int32 (the inverse permutation). A block
// per dst row, no atomics; slots no index maps to are reported. div <= kCombineMaxDiv.
constexpr int64_t kCombineMaxDiv = 64;
int combine_rows_cuda(const RowOpParams& p, int32_t* inv, bool accumulate, void* stream);
// out[idx[i]] = dot(a[i], b[i]) (a = src, b = dst read-only here) for i < n_idx; out_count slots.
int row_dot_scatter_cuda(const RowOpParams& p, float* out, int64_t out_count, void* stream);
// dst[i] *= w[idx[i]] for i < n_idx.
int scale_rows_cuda(const RowOpParams& p, void* stream);
// dst[idx[i]] = src[i] for i < n_idx (indices distinct; dst_rows bounds them; -1: not written).
int scatter_rows_cuda(const RowOpParams& p, void* stream);

}  // namespace shoal::kernels
