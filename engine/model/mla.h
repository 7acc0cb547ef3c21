// Multi-head Latent Attention in "MHA mode" (training and prefill): queries through an optional
// low-rank q path, keys/values from a compressed latent c_kv plus one shared RoPE key per token.
// Decode with weight absorption over the latent cache belongs to the generation engine.
#pragma once

#include <memory>

#include "engine/backend.h"
#include "engine/generate/kv_cache.h"
#include "engine/model/config.h"
#include "engine/model/dsa.h"
#include "engine/model/params.h"

namespace shoal {

struct MlaWeights {
  // q path: with q LoRA, q_a [r_q, D], q_a_norm [r_q], q_b [H*dq, r_q]; without, q_proj [H*dq, D].
  Tensor q_a, q_a_norm, q_b, q_proj;
  Tensor kv_a, kv_a_norm, kv_b, o;  // [r_kv+dr, D], [r_kv], [H*(dn+dv), r_kv], [D, H*dv]
  Tensor g_q_a, g_q_a_norm, g_q_b, g_q_proj, g_kv_a, g_kv_a_norm, g_kv_b, g_o;
};

struct MlaSaved {
  Tensor x, q_a, q_a_rstd, q_a_n, q, kv_a, kv_rstd, c_kv_n, k, kv_b, attn, lse;
  IndexerSaved indexer;   // V3.2 only
  bool sparse = false;    // attention ran over indexer.topk
  double indexer_kl = 0;  // summed over tokens (when requested)
};

// Parameter tensors are bound once at construction: loading and optimizer steps write into them,
// never replace them.

// Per-batch inputs shared by every attention layer.
struct AttentionInputs {
  Tensor positions;                 // i32 [N]
  std::vector<int64_t> cu_seqlens;  // sequence offsets, 0..N
  Tensor cos_sin;                   // rope table [P, dr/2, 2]
  // DeepSeek Sparse Attention (V3.2 models):
  bool dsa_dense = false;     // attend to every earlier token (the indexer's dense warm-up)
  bool indexer_fp8 = false;   // score with the reference's Hadamard + FP8 path
  bool indexer_kl = false;    // compute the indexer's KL loss
  float indexer_kl_grad = 0;  // and accumulate its gradient times this (0 = no gradient)
};

class Mla {
 public:
  Mla(const ModelConfig& c, ParamSet& params, const std::string& prefix);
  // y = attention(x); x: [N, D] (already normed), y: [N, D].
  void forward(Backend& be, const Tensor& x, const AttentionInputs& in, Tensor& y, MlaSaved& s);
  // Inference over the latent cache (MQA mode with weight absorption, REFERENCE.md §1): row i of
  // x is token positions[i] of cache sequence seq_of[i]. Its latent [c_kv; rope(k_pe)] is written
  // to the cache (room reserved by the caller), then it attends to positions 0..positions[i] of
  // its sequence through W_UK folded into the query and W_UV applied after: the same function as
  // forward(), computed over kv_lora_rank + qk_rope_head_dim values per cached token.
  void forward_cached(Backend& be, const Tensor& x, const Tensor& positions,
                      const std::vector<int64_t>& seq_of, LatentKvCache& cache, int64_t layer,
                      const Tensor& cos_sin, Tensor& y);
  // dx = d/dx (overwritten); parameter gradients accumulate.
  void backward(Backend& be, const MlaSaved& s, const AttentionInputs& in, const Tensor& dy,
                Tensor& dx);

 private:
  void bind(ParamSet& params);
  const ModelConfig& c_;
  std::unique_ptr<Indexer> indexer_;
  std::string prefix_;
  MlaWeights w_;
};

}  // namespace shoal
