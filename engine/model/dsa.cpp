// The lightning indexer, as transformers' DeepseekV32Indexer computes it: q_I = wq_b(q_resid),
// k_I = LayerNorm(wk(x)) (eps 1e-6, with bias), half-split RoPE on the first qk_rope_head_dim dims
// of both (order [rope; nope]), w = weights_proj(x) * H_I^-0.5, scores with ReLU, causal, top-k.
#include "engine/model/dsa.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>

#include "engine/generate/kv_cache.h"
#include "engine/model/mla.h"

namespace shoal {

bool topk_tie_at_boundary(const float* scores, int64_t t, int64_t k) {
  if (t + 1 <= k) return false;  // every key is kept
  std::vector<float> v(scores, scores + t + 1);
  for (float x : v)
    if (std::isnan(x)) return true;
  std::nth_element(v.begin(), v.begin() + k, v.end(), std::greater<float>());
  float next = v[size_t(k)];  // the (k+1)-th best
  float kth = *std::min_element(v.begin(), v.begin() + k);
  return kth == next;
}

void topk_row(const float* scores, int64_t t, int64_t len, int64_t k, std::vector<int32_t>& out) {
  SHOAL_CHECK(t >= 0 && t < len && k >= 1, "topk_row: row {} of length {}, k {}", t, len, k);
  // The same (value, position) array, comparator and algorithm as the CPU backend's topk_rows
  // (torch.topk's CPU path): the masked tail takes part in nth_element, so ties among the real
  // scores are broken as a forward over a sequence of length len breaks them.
  std::vector<std::pair<double, int64_t>> row(static_cast<size_t>(len));
  for (int64_t j = 0; j < len; ++j) row[size_t(j)] = {j <= t ? double(scores[j]) : -DBL_MAX, j};
  auto greater = [](const std::pair<double, int64_t>& x, const std::pair<double, int64_t>& y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
  };
  int64_t kk = std::min(k, len);
  if (kk * 64 <= len)
    std::partial_sort(row.begin(), row.begin() + kk, row.end(), greater);
  else
    std::nth_element(row.begin(), row.begin() + kk - 1, row.end(), greater);
  std::sort(row.begin(), row.begin() + kk, greater);
  for (int64_t j = 0; j < kk; ++j)
    if (row[size_t(j)].second <= t) out.push_back(int32_t(row[size_t(j)].second));
}

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

namespace shoal {

std::vector<std::vector<int32_t>> Indexer::select_cached(Backend& be, const Tensor& x,
                                                         const Tensor& q_resid,
                                                         const CachedInputs& in,
                                                         LatentKvCache& cache, int64_t layer) {
  const int64_t n = x.size(0), hi = c_.index_n_heads, di = c_.index_head_dim,
                dr = c_.qk_rope_head_dim;
  Tensor q = be.empty({n, hi, di});
  Tensor q2 = q.view({n, hi * di});
  be.matmul(q_resid, false, wq_b_, true, q2);
  Tensor q_rope = q.slice(2, 0, dr);
  be.rope(q_rope, in.positions, in.cos_sin, false, false);
  Tensor k_proj = be.empty({n, di}), k = be.empty({n, di}), mean = be.empty({n}),
         rstd = be.empty({n});
  be.matmul(x, false, wk_, true, k_proj);
  be.layernorm_forward(k_proj, ln_w_, ln_b_, 1e-6f, k, mean, rstd);
  Tensor k_rope = k.view({n, 1, di}).slice(2, 0, dr);
  be.rope(k_rope, in.positions, in.cos_sin, false, false);
  Tensor w = be.empty({n, hi});
  be.matmul(x, false, wproj_, true, w);
  be.scale(w, float(1.0 / std::sqrt(double(hi))));

  const int32_t* pos = in.positions.i32();
  for (size_t c = 0; c + 1 < in.cu.size(); ++c)
    for (int64_t i = in.cu[c]; i < in.cu[c + 1]; ++i)
      std::copy_n(k.f32() + i * di, di, cache.indexer_key(layer, in.seq[c], pos[i]));

  // Scores as Backend::indexer_scores forms them: per head, (scale * w) * relu(q . k), summed in
  // head order from 0 (a key whose dot product is negative in every head scores exactly 0).
  const float scale = float(1.0 / std::sqrt(double(di)));
  std::vector<std::vector<int32_t>> sel(static_cast<size_t>(n));
  std::vector<float> keys, sc;
  for (size_t c = 0; c + 1 < in.cu.size(); ++c) {
    int64_t last = pos[in.cu[c + 1] - 1];
    keys.resize(size_t((last + 1) * di));
    for (int64_t j = 0; j <= last; ++j)
      std::copy_n(cache.indexer_key(layer, in.seq[c], j), di, keys.data() + j * di);
    for (int64_t i = in.cu[c]; i < in.cu[c + 1]; ++i) {
      int64_t t = pos[i];
      sc.assign(size_t(t + 1), 0.0f);
      for (int64_t h = 0; h < hi; ++h) {
        const float* qh = q.f32() + (i * hi + h) * di;
        float wh = scale * w.f32()[i * hi + h];
        for (int64_t j = 0; j <= t; ++j) {
          const float* kj = keys.data() + j * di;
          float g = 0;
          for (int64_t r = 0; r < di; ++r) g += qh[r] * kj[r];
          sc[size_t(j)] += wh * std::max(g, 0.0f);
        }
      }
      int64_t len = std::max<int64_t>(in.dsa_len[c], last + 1);
      std::vector<int32_t>& chosen = sel[size_t(i)];
      topk_row(sc.data(), t, len, c_.index_topk, chosen);
      if (topk_tie_at_boundary(sc.data(), t, c_.index_topk)) {
        DsaTieRow tie{int32_t(layer), int32_t(t), sc, chosen};
        std::sort(tie.selected.begin(), tie.selected.end());
        cache.dsa_ties(in.seq[c]).push_back(std::move(tie));
      }
    }
  }
  return sel;
}

}  // namespace shoal
