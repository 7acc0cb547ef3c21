// Losses over logits rows on the GPU: softmax cross-entropy (per-row loss in f64, optional
// gradient, which may overwrite the logits), and per-token log-probabilities / entropies over the
// whole vocabulary or a per-row token set, with their backward. f32 logits; the CPU backend is the
// reference. A block per row; not fused with the vocabulary projection (that comes with the
// chunked lm_head), no bf16 logits yet.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

struct LogitsParams {
  const float* logits = nullptr;  // [rows, vocab], row stride ld
  int64_t rows = 0, vocab = 0, ld = 0;
  const int32_t* labels = nullptr;  // [rows], -100 = ignored
  float* dlogits = nullptr;         // may equal logits; row stride d_ld
  int64_t d_ld = 0;
  // token sets (token_logprobs*): row r uses ids[offsets[r] .. offsets[r+1]); null = whole vocab
  const int64_t* set_offsets = nullptr;
  const int32_t* set_ids = nullptr;
  float* set_scratch = nullptr;    // backward with sets: one float per set entry
  KernelStatus* status = nullptr;  // labels out of range / missing from their set
  int32_t op = 0;
};

// row_loss[r] = logsumexp(x_r) - x_r[label] (0 for ignored rows); dlogits (if set) =
// grad_scale * (softmax(x_r) - onehot(label)), zero rows for ignored labels.
int cross_entropy_cuda(const LogitsParams& p, float grad_scale, double* row_loss, void* stream);

// logp[r] = log p(label), entropy[r] (may be null) of the row's distribution; 0 for ignored rows.
int token_logprobs_cuda(const LogitsParams& p, float* logp, float* entropy, void* stream);
// dlogits = dlogp[r] * (onehot(label) - softmax) over the row's distribution, 0 outside its set.
int token_logprobs_backward_cuda(const LogitsParams& p, const float* dlogp, void* stream);

}  // namespace shoal::kernels
