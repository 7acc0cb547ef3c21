// Causal softmax attention over packed sequences (cu_seqlens), optionally restricted to a DSA
// selection (sparse_idx), forward (out + log-sum-exp) and backward (dq, dk, dv from the saved lse,
// FlashAttention-style recomputation), plus the head-summed, L1-normalised attention distribution
// that the DSA indexer is trained towards. f32 storage; f32 arithmetic by default, the tensor
// cores on request (p.precision). The CPU backend is the reference. Dense attention with dk <= 192
// and dv <= 128 (DeepSeek-V3's MLA dims) runs on tiled kernels: flash_f32.cu (f32, the default),
// flash_tf32.cu (TF32 WMMA, two-pass forward) or flash_bf16.cu (bf16 mma.sync, one-pass forward,
// cp.async double buffering; the fastest: ~110 / ~92 TFLOP/s forward / backward on the H200 at
// 4 x 4096 tokens, docs/PERFORMANCE.md). DSA selections and larger head dims run on the
// straightforward f32 kernels of attention.cu (one block of 4 warps per (query, head), a warp per
// key), head dims up to 256, whatever p.precision says. Not here: the absorbed decode kernel.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_status.h"

namespace shoal::kernels {

constexpr int kAttentionMaxHeadDim = 256;

enum class AttentionPrecision : int32_t { f32, tf32, bf16 };

struct AttentionParams {
  // [N, H, d] operands, last stride 1; s_n / s_h are the token and head strides (elements).
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_sn = 0, q_sh = 0, k_sn = 0, k_sh = 0, v_sn = 0, v_sh = 0;
  float* out = nullptr;  // forward output; backward reads it (D = dout . out)
  int64_t o_sn = 0, o_sh = 0;
  float* lse = nullptr;  // [H, N]: written by the forward, read by the backward
  int64_t n = 0, heads = 0, dk = 0, dv = 0;
  const int64_t* cu_seqlens = nullptr;  // device, n_seqs + 1 entries from 0 to n
  int64_t n_seqs = 0;
  // DSA: i32 [n, topk] key positions within the token's sequence, -1 = unused; null = dense.
  // Entries must be distinct within a row (topk_rows guarantees it); a repeated key would count
  // twice here but once on the CPU.
  const int32_t* sparse_idx = nullptr;
  int64_t topk = 0;
  float scale = 1.0f;
  // backward
  const float* dout = nullptr;
  int64_t do_sn = 0, do_sh = 0;
  float *dq = nullptr, *dkk = nullptr, *dvv = nullptr;  // overwritten
  int64_t dq_sn = 0, dq_sh = 0, dk_sn = 0, dk_sh = 0, dv_sn = 0, dv_sh = 0;
  KernelStatus* status = nullptr;  // bad sparse indices are reported here
  int32_t op = 0;
  // Backward scratch, [heads, n] f32 (D = rowsum(dout * out)); needed by the tiled backward.
  float* drow = nullptr;
  // How dense attention within the tiled limits multiplies: f32 (flash_f32.cu, the default and
  // the reference precision), or on the tensor cores with operands rounded to TF32
  // (flash_tf32.cu) or bf16 (flash_bf16.cu), f32 accumulation: opt-in, they are not f32-accurate.
  AttentionPrecision precision = AttentionPrecision::f32;
};
int attention_forward_cuda(const AttentionParams& p, void* stream);
// Tiled (when flash_attention_f32_supported and drow is given): dk, dv deterministic, dq added
// with f32 atomics. Otherwise dk and dv accumulate with f32 atomics, dq is deterministic.
int attention_backward_cuda(const AttentionParams& p, void* stream);

// flash_f32.cu: whether the tiled kernels take p (dense, dk <= 192, dv <= 128), and the kernels.
bool flash_attention_f32_supported(const AttentionParams& p);
int flash_attention_forward_f32(const AttentionParams& p, void* stream);
int flash_attention_backward_f32(const AttentionParams& p, void* stream);
// The tiled backwards' first launches: D into p.drow, p.dq zeroed (both kernels add into dq).
int flash_attention_backward_prologue(const AttentionParams& p, void* stream);
// flash_tf32.cu: the same limits, on the tensor cores with TF32 operands (f32 accumulation).
int flash_attention_forward_tf32(const AttentionParams& p, void* stream);
int flash_attention_backward_tf32(const AttentionParams& p, void* stream);
// flash_bf16.cu: the same limits, mma.sync with bf16 operands (f32 accumulation), one-pass
// forward; the operands are converted to bf16 copies (stream-ordered scratch) per call.
int flash_attention_forward_bf16(const AttentionParams& p, void* stream);
int flash_attention_backward_bf16(const AttentionParams& p, void* stream);

// probs: per sequence a row-major [L, L] block at probs + sq_offsets[s] (zero outside the attended
// set): sum over heads of exp(scale q.k - lse), each row divided by its sum. Uses q, k, lse,
// cu_seqlens, sparse_idx of `p`.
int attention_head_sum_probs_cuda(const AttentionParams& p, const int64_t* sq_offsets, float* probs,
                                  void* stream);

}  // namespace shoal::kernels
