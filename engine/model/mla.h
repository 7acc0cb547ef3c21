// Multi-head Latent Attention: "MHA mode" (training) with queries through an optional low-rank q
// path and keys/values from a compressed latent c_kv plus one shared RoPE key per token; and the
// inference path over the latent KV cache (prefill chunks in MHA mode, decode with weight
// absorption, DSA over cached indexer keys). Not here: which tokens run together (scheduler).
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

// The rows of one cached forward, grouped in chunks: chunk c is rows cu[c] .. cu[c+1], new tokens
// of one cache sequence at consecutive positions.
struct CachedInputs {
  Tensor positions;              // i32 [N]
  Tensor cos_sin;                // rope table [P, dr/2, 2]
  std::vector<int64_t> cu;       // chunk offsets, 0..N
  std::vector<int64_t> seq;      // per chunk: its cache sequence
  std::vector<uint8_t> mha;      // per chunk: 1 = MHA mode (decompress keys/values), 0 = absorbed
  std::vector<int64_t> dsa_len;  // per chunk: the sequence length whose top-k tie-breaking the
                                 // DSA selection of its rows reproduces (see Indexer)
  std::vector<std::vector<int32_t>>* dsa_topk = nullptr;  // when set: each row's selection
  // A device backend's addressing of the cache, built (and uploaded) once per forward by
  // Model::forward_cached: i32 device tensors.
  Tensor slots;         // [N] the pool row (LatentKvCache::slot) each row's latent is written to
  Tensor block_table;   // [chunks, P] each chunk's sequence's pages (-1 past its last)
  Tensor row_seq;       // [N] each row's chunk (its row of block_table)
  Tensor row_len;       // [N] each row's keys: positions 0 .. its own
  int64_t max_len = 0;  // >= every row_len
  // Every chunk is a prompt's start (MHA mode, from position 0): a device backend then attends
  // within the chunks in MHA mode (Backend::attention_forward over cu) instead of through the
  // cache, which costs far fewer operations for long chunks (the CPU prefills in MHA mode too).
  bool fresh_chunks = false;
};

class Mla {
 public:
  Mla(const ModelConfig& c, ParamSet& params, const std::string& prefix);
  // y = attention(x); x: [N, D] (already normed), y: [N, D].
  void forward(Backend& be, const Tensor& x, const AttentionInputs& in, Tensor& y, MlaSaved& s);
  // Inference over the latent cache: the rows' latents [c_kv; rope(k_pe)] (and, for V3.2, indexer
  // keys) are written to the cache (room reserved by the caller), then each row attends to the
  // cached positions 0..its own (or, with DSA, to the top-k of them its indexer scores select).
  // MHA chunks decompress the cached latents through kv_b_proj and attend per head; absorbed
  // chunks (REFERENCE.md §1) fold W_UK into the query, attend over the latent with one KV head
  // shared by all heads and apply W_UV after. Both compute forward()'s function. On a device
  // backend every chunk runs absorbed through Backend::latent_attention over the device cache,
  // except a forward whose chunks all start prompts (CachedInputs::fresh_chunks), which attends
  // within the chunks in MHA mode (no DSA yet: V3.2 models decode on the CPU backend only).
  void forward_cached(Backend& be, const Tensor& x, const CachedInputs& in, LatentKvCache& cache,
                      int64_t layer, Tensor& y);
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
