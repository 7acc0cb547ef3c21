// The lightning indexer, as transformers' DeepseekV32Indexer computes it: q_I = wq_b(q_resid),
// k_I = LayerNorm(wk(x)) (eps 1e-6, with bias), half-split RoPE on the first qk_rope_head_dim dims
// of both (order [rope; nope]), w = weights_proj(x) * H_I^-0.5, scores with ReLU, causal, top-k.
#include "engine/model/dsa.h"

#include <cmath>

#include "engine/model/mla.h"

namespace shoal {

Indexer::Indexer(const ModelConfig& c, ParamSet& ps, const std::string& prefix) : c_(c) {
  int64_t hi = c.index_n_heads, di = c.index_head_dim;
  auto add = [&](const std::string& n, Shape s, Tensor& v, Tensor& g) {
    Param& p = ps[ps.add(prefix + n, s)];
    p.lm_grad = false;  // trained by the KL loss only
    v = p.value;
    g = p.grad;
  };
  add("wq_b.weight", {hi * di, c.q_lora_rank}, wq_b_, g_wq_b_);
  add("wk.weight", {di, c.hidden_size}, wk_, g_wk_);
  add("k_norm.weight", {di}, ln_w_, g_ln_w_);
  add("k_norm.bias", {di}, ln_b_, g_ln_b_);
  add("weights_proj.weight", {hi, c.hidden_size}, wproj_, g_wproj_);
}

void Indexer::forward(Backend& be, const Tensor& x, const Tensor& q_resid,
                      const AttentionInputs& in, bool fp8_sim, IndexerSaved& s) {
  const int64_t n = x.size(0), hi = c_.index_n_heads, di = c_.index_head_dim,
                dr = c_.qk_rope_head_dim;
  s.x = x;
  s.q_resid = q_resid;
  s.q = be.empty({n, hi, di});
  Tensor q2 = s.q.view({n, hi * di});
  be.matmul(q_resid, false, wq_b_, true, q2);
  Tensor q_rope = s.q.slice(2, 0, dr);
  be.rope(q_rope, in.positions, in.cos_sin, false, false);

  s.k_proj = be.empty({n, di});
  be.matmul(x, false, wk_, true, s.k_proj);
  s.k = be.empty({n, di});
  s.ln_mean = be.empty({n});
  s.ln_rstd = be.empty({n});
  be.layernorm_forward(s.k_proj, ln_w_, ln_b_, 1e-6f, s.k, s.ln_mean, s.ln_rstd);
  Tensor k_rope = s.k.view({n, 1, di}).slice(2, 0, dr);
  be.rope(k_rope, in.positions, in.cos_sin, false, false);

  s.w = be.empty({n, hi});
  be.matmul(x, false, wproj_, true, s.w);
  be.scale(s.w, float(1.0 / std::sqrt(double(hi))));

  int64_t total = 0, longest = 0;
  for (size_t i = 0; i + 1 < in.cu_seqlens.size(); ++i) {
    int64_t len = in.cu_seqlens[i + 1] - in.cu_seqlens[i];
    total += len * len;
    longest = std::max(longest, len);
  }
  s.scores = be.empty({total});
  float scale = float(1.0 / std::sqrt(double(di)));
  if (fp8_sim) {
    Tensor qf = be.empty({n * hi, di}), kf = be.empty({n, di});
    be.copy(s.q.view({n * hi, di}), qf);
    be.copy(s.k, kf);
    be.hadamard_fp8(qf, true, true);
    be.hadamard_fp8(kf, true, true);
    be.indexer_scores(qf.view({n, hi, di}), kf, s.w, in.cu_seqlens, scale, s.scores);
  } else {
    be.indexer_scores(s.q, s.k, s.w, in.cu_seqlens, scale, s.scores);
  }
  int64_t k = std::min<int64_t>(c_.index_topk, longest);
  s.topk = be.empty({n, k}, DType::i32);
  be.topk_rows(s.scores, in.cu_seqlens, k, s.topk);
}

double Indexer::kl(Backend& be, const IndexerSaved& s, const Tensor& p, const Tensor* sparse_idx,
                   const AttentionInputs& in, float grad_scale) {
  const int64_t n = s.x.size(0), hi = c_.index_n_heads, di = c_.index_head_dim,
                dr = c_.qk_rope_head_dim;
  Tensor dscores = be.empty({s.scores.numel()});
  double kl = be.indexer_kl(p, s.scores, in.cu_seqlens, sparse_idx, grad_scale, dscores);
  if (grad_scale == 0.0f) return kl;

  Tensor dq = be.empty({n, hi, di}), dk = be.empty({n, di}), dw = be.empty({n, hi});
  float scale = float(1.0 / std::sqrt(double(di)));
  be.indexer_scores_backward(s.q, s.k, s.w, in.cu_seqlens, scale, dscores, dq, dk, dw);
  // w = weights_proj(x) * H^-0.5
  be.matmul(dw, true, s.x, false, g_wproj_, float(1.0 / std::sqrt(double(hi))), 1.0f);
  Tensor dq_rope = dq.slice(2, 0, dr);
  be.rope(dq_rope, in.positions, in.cos_sin, false, true);
  be.matmul(dq.view({n, hi * di}), true, s.q_resid, false, g_wq_b_, 1.0f, 1.0f);
  Tensor dk_rope = dk.view({n, 1, di}).slice(2, 0, dr);
  be.rope(dk_rope, in.positions, in.cos_sin, false, true);
  Tensor dk_proj = be.empty({n, di});
  be.layernorm_backward(dk, s.k_proj, ln_w_, s.ln_mean, s.ln_rstd, dk_proj, g_ln_w_, g_ln_b_);
  be.matmul(dk_proj, true, s.x, false, g_wk_, 1.0f, 1.0f);
  return kl;
}

}  // namespace shoal
