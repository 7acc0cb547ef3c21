// Device helpers shared by the attention and indexer kernels: finding a token's sequence in the
// packed batch and walking the keys a query attends (dense causal, or a DSA selection).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {
namespace {

// Sequence s with cu[s] <= t < cu[s + 1] (empty sequences skipped): the last s with cu[s] <= t.
__device__ __forceinline__ int64_t sequence_of(const int64_t* cu, int64_t n_seqs, int64_t t) {
  int64_t lo = 0, hi = n_seqs;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// The number of keys query t considers and the j-th of them (its position in the sequence):
// dense: 0..pos; sparse: the row's slots, where an unused or future slot yields -1.
struct KeySet {
  const int32_t* row = nullptr;  // sparse row, or null
  int64_t count = 0;
  __device__ int64_t key(int64_t j, int64_t pos) const {
    if (row == nullptr) return j;
    const int64_t v = row[j];
    return (v >= 0 && v <= pos) ? v : -1;
  }
};

__device__ __forceinline__ KeySet key_set(const int32_t* sparse_idx, int64_t topk, int64_t t,
                                          int64_t pos) {
  KeySet ks;
  if (sparse_idx == nullptr) {
    ks.count = pos + 1;
  } else {
    ks.row = sparse_idx + t * topk;
    ks.count = topk;
  }
  return ks;
}

// Validates token t's sparse row as the CPU backend does (entries in [-1, len), at least one key at
// or before the token); reports the first problem. Called by one thread per token.
__device__ inline void check_sparse_row(const int32_t* sparse_idx, int64_t topk, int64_t t,
                                        int64_t pos, int64_t len, KernelStatus* st, int32_t op) {
  if (sparse_idx == nullptr) return;
  const int32_t* row = sparse_idx + t * topk;
  bool any = false;
  for (int64_t j = 0; j < topk; ++j) {
    const int64_t v = row[j];
    if (v < -1 || v >= len) {
      report_fault(st, op, KernelFault::sparse_out_of_range, t, v, -1, len);
      return;
    }
    any = any || (v >= 0 && v <= pos);
  }
  if (!any) report_fault(st, op, KernelFault::sparse_no_key, t, 0, 0, 0);
}

}  // namespace
}  // namespace shoal::kernels
