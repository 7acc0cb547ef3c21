// DeepSeek Sparse Attention's lightning indexer (V3.2): per query token, scores every earlier token
// of its sequence, I[t, s] = sum_h w[t, h] * relu(q_I[t, h] . k_I[s]) / sqrt(index_head_dim), and
// keeps the index_topk best as the keys MLA attends to. Its own training signal is a KL loss to
// the main attention's distribution; the language-model loss never reaches it. Also the cached
// (decode) path: keys in the latent KV cache, one score row per new token.
#pragma once

#include "engine/backend.h"
#include "engine/model/config.h"
#include "engine/model/params.h"

namespace shoal {

struct AttentionInputs;
struct CachedInputs;
class LatentKvCache;

// Row t of Backend::topk_rows for a sequence of length len (len > t; positions after t masked):
// the positions of the k best of scores[0..t], ties broken exactly as topk_rows (torch.topk on the
// CPU) breaks them at that length. Appends to out in topk_rows' order, without -1 padding.
void topk_row(const float* scores, int64_t t, int64_t len, int64_t k, std::vector<int32_t>& out);
// Whether the k-th and (k+1)-th best of scores[0..t] are equal (or a score is NaN): only then does
// topk_row's selection depend on len.
bool topk_tie_at_boundary(const float* scores, int64_t t, int64_t k);

struct IndexerSaved {
  Tensor x, q_resid;  // inputs (detached: the indexer's gradients stop at its parameters)
  Tensor q;           // [N, H_I, D_I] after RoPE
  Tensor k_proj;      // [N, D_I] before the LayerNorm
  Tensor k;           // [N, D_I] after LayerNorm and RoPE
  Tensor ln_mean, ln_rstd;
  Tensor w;       // [N, H_I] head weights (already times H_I^-0.5)
  Tensor scores;  // packed per sequence [L, L]
  Tensor topk;    // i32 [N, min(index_topk, longest sequence)]
};

class Indexer {
 public:
  Indexer(const ModelConfig& c, ParamSet& params, const std::string& prefix);
  // Scores and selection. x: the attention input [N, D]; q_resid: MLA's normed query latent.
  // fp8_sim applies the reference implementation's Hadamard rotation + FP8 rounding of q and k
  // before scoring (a check of the fast path; the plain path is what transformers computes).
  void forward(Backend& be, const Tensor& x, const Tensor& q_resid, const AttentionInputs& in,
               bool fp8_sim, IndexerSaved& s);
  // KL(p || softmax(I)) summed over query tokens, over each row's attended set (all earlier
  // tokens, or the selection when sparse_idx is given). p: the main attention's head-summed,
  // normalized distribution (Backend::attention_head_sum_probs). With grad_scale != 0 the
  // gradient (times grad_scale) is accumulated into the indexer's parameters.
  double kl(Backend& be, const IndexerSaved& s, const Tensor& p, const Tensor* sparse_idx,
            const AttentionInputs& in, float grad_scale);
  // Cached path: writes the rows' keys to the cache, scores each row against its sequence's cached
  // keys 0..its position and returns the selection per row (topk_row at the chunk's dsa_len: a
  // decode row reproduces the last row of a full forward over the sequence so far).
  std::vector<std::vector<int32_t>> select_cached(Backend& be, const Tensor& x,
                                                  const Tensor& q_resid, const CachedInputs& in,
                                                  LatentKvCache& cache, int64_t layer);

 private:
  const ModelConfig& c_;
  Tensor wq_b_, wk_, ln_w_, ln_b_, wproj_;
  Tensor g_wq_b_, g_wk_, g_ln_w_, g_ln_b_, g_wproj_;
};

}  // namespace shoal
