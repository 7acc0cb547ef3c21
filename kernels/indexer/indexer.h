// The DSA lightning indexer on the GPU: scores I[t, s] = scale * sum_h w[t,h] relu(q[t,h] . k[s])
// packed per sequence as [L, L] blocks (-inf above the diagonal) and their backward, the top-k
// selection per query row with the reference's tie-break (topk_select.h), the KL loss towards the
// head-summed attention distribution, and the Hadamard + FP8 simulation of the reference's fast
// path. f32; the CPU backend is the reference. Straightforward kernels (a block per query row),
// not the fused FP8 indexer of the reference implementation.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

constexpr int64_t kIndexerMaxHeadDim = 256;

struct IndexerParams {
  const float* q = nullptr;  // [n, heads, dim], last stride 1
  int64_t q_sn = 0, q_sh = 0;
  const float* k = nullptr;  // [n, dim], row stride k_s
  int64_t k_s = 0;
  const float* w = nullptr;  // [n, heads], row stride w_s
  int64_t w_s = 0;
  int64_t n = 0, heads = 0, dim = 0;
  const int64_t* cu_seqlens = nullptr;  // device, n_seqs + 1
  const int64_t* sq_offsets = nullptr;  // device, offset of each sequence's [L, L] block
  int64_t n_seqs = 0;
  float scale = 1.0f;
  float* scores = nullptr;  // forward output (packed)
  // backward
  const float* dscores = nullptr;  // packed
  float* dq = nullptr;             // like q: strides dq_sn, dq_sh
  int64_t dq_sn = 0, dq_sh = 0;
  float* dk = nullptr;  // row stride dk_s (overwritten; accumulated with atomics)
  int64_t dk_s = 0;
  float* dw = nullptr;  // row stride dw_s
  int64_t dw_s = 0;
};
int indexer_scores_cuda(const IndexerParams& p, void* stream);
int indexer_scores_backward_cuda(const IndexerParams& p, void* stream);

// Top-k per query row of packed scores: idx [n, k] (i32, -1 padded), the best first (ties by
// position). Rows are processed sequence by sequence in chunks; `scratch` holds
// topk_scratch_items(...) 16-byte items.
struct TopkParams {
  const float* scores = nullptr;
  int32_t* idx = nullptr;
  int64_t k = 0;
  void* scratch = nullptr;
  int64_t scratch_items = 0;
};
// Launches the rows [row0, row1) of the sequence starting at token `start` with length `len` whose
// block is at `sq_offset`; scratch must hold (row1 - row0) * len items.
int topk_rows_cuda(const TopkParams& p, int64_t start, int64_t len, int64_t sq_offset, int64_t row0,
                   int64_t row1, void* stream);

// KL(p_t || softmax(I_t)) per query row over its attended set (causal, or the DSA selection) into
// row_kl[t] (f64), and dscores = grad_scale * (softmax(I_t) - p_t) on the set, 0 elsewhere.
struct IndexerKlParams {
  const float* p = nullptr;       // packed
  const float* scores = nullptr;  // packed
  float* dscores = nullptr;       // packed
  double* row_kl = nullptr;       // [n]
  int64_t n = 0;
  const int64_t* cu_seqlens = nullptr;
  const int64_t* sq_offsets = nullptr;
  int64_t n_seqs = 0;
  const int32_t* sparse_idx = nullptr;  // [n, topk] or null
  int64_t topk = 0;
  float grad_scale = 1.0f;
  KernelStatus* status = nullptr;
  int32_t op = 0;
};
int indexer_kl_cuda(const IndexerKlParams& p, void* stream);

// Rows of x [rows, dim] (row stride ld): normalized Hadamard transform (dim a power of two, at
// most 16384) and/or per-row FP8 e4m3 rounding with scale amax / 448 (amax at least 1e-4).
int hadamard_fp8_cuda(float* x, int64_t rows, int64_t dim, int64_t ld, bool hadamard, bool fp8,
                      float norm, void* stream);

}  // namespace shoal::kernels
