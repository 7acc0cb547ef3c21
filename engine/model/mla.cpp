// MLA forward/backward (MHA mode) and the cached inference path (MHA-mode prefill chunks, absorbed
// decode, DSA over cached keys). Shapes: N tokens, H heads, dn/dr/dv = nope/rope/value head dims,
// dq = dn + dr. RoPE is applied in the checkpoint's interleaved pair layout; transformers
// de-interleaves first, which permutes q and k identically and so leaves every dot product (and so
// every output and gradient) unchanged.
#include "engine/model/mla.h"

#include <algorithm>
#include <cmath>

namespace shoal {

Mla::Mla(const ModelConfig& c, ParamSet& ps, const std::string& prefix) : c_(c), prefix_(prefix) {
  int64_t d = c.hidden_size, h = c.num_attention_heads, dq = c.qk_head_dim();
  auto add = [&](const std::string& n, Shape s) { return ps.add(prefix + n, s); };
  if (c.q_lora_rank > 0) {
    w_.q_a = ps[add("q_a_proj.weight", {c.q_lora_rank, d})].value;
    w_.q_a_norm = ps[add("q_a_layernorm.weight", {c.q_lora_rank})].value;
    w_.q_b = ps[add("q_b_proj.weight", {h * dq, c.q_lora_rank})].value;
  } else {
    w_.q_proj = ps[add("q_proj.weight", {h * dq, d})].value;
  }
  w_.kv_a = ps[add("kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, d})].value;
  w_.kv_a_norm = ps[add("kv_a_layernorm.weight", {c.kv_lora_rank})].value;
  w_.kv_b =
      ps[add("kv_b_proj.weight", {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank})].value;
  w_.o = ps[add("o_proj.weight", {d, h * c.v_head_dim})].value;
  if (c.is_v32()) indexer_ = std::make_unique<Indexer>(c, ps, prefix + "indexer.");
  bind(ps);
}

void Mla::bind(ParamSet& ps) {
  auto g = [&](const char* n) { return ps.get(prefix_ + n).grad; };
  if (c_.q_lora_rank > 0) {
    w_.g_q_a = g("q_a_proj.weight");
    w_.g_q_a_norm = g("q_a_layernorm.weight");
    w_.g_q_b = g("q_b_proj.weight");
  } else {
    w_.g_q_proj = g("q_proj.weight");
  }
  w_.g_kv_a = g("kv_a_proj_with_mqa.weight");
  w_.g_kv_a_norm = g("kv_a_layernorm.weight");
  w_.g_kv_b = g("kv_b_proj.weight");
  w_.g_o = g("o_proj.weight");
}

void Mla::forward(Backend& be, const Tensor& x, const AttentionInputs& in, Tensor& y, MlaSaved& s) {
  const int64_t n = x.size(0), h = c_.num_attention_heads, dn = c_.qk_nope_head_dim,
                dr = c_.qk_rope_head_dim, dv = c_.v_head_dim, dq = dn + dr, rkv = c_.kv_lora_rank;
  const float eps = float(c_.rms_norm_eps);
  s.x = x;
  s.q = be.empty({n, h * dq});
  if (c_.q_lora_rank > 0) {
    s.q_a = be.empty({n, c_.q_lora_rank});
    s.q_a_n = be.empty({n, c_.q_lora_rank});
    s.q_a_rstd = be.empty({n});
    be.matmul(x, false, w_.q_a, true, s.q_a);
    be.rmsnorm_forward(s.q_a, w_.q_a_norm, eps, s.q_a_n, s.q_a_rstd);
    be.matmul(s.q_a_n, false, w_.q_b, true, s.q);
  } else {
    be.matmul(x, false, w_.q_proj, true, s.q);
  }
  Tensor q3 = s.q.view({n, h, dq});
  Tensor q_pe = q3.slice(2, dn, dq);
  be.rope(q_pe, in.positions, in.cos_sin, c_.rope_interleave, false);

  s.kv_a = be.empty({n, rkv + dr});
  be.matmul(x, false, w_.kv_a, true, s.kv_a);
  s.c_kv_n = be.empty({n, rkv});
  s.kv_rstd = be.empty({n});
  be.rmsnorm_forward(s.kv_a.slice(1, 0, rkv), w_.kv_a_norm, eps, s.c_kv_n, s.kv_rstd);
  s.kv_b = be.empty({n, h * (dn + dv)});
  be.matmul(s.c_kv_n, false, w_.kv_b, true, s.kv_b);
  Tensor kv3 = s.kv_b.view({n, h, dn + dv});

  // k = [k_nope (per head); rope(k_pe) (shared by all heads)].
  s.k = be.empty({n, h, dq});
  Tensor k_pe = be.empty({n, 1, dr});
  Tensor k_pe2 = k_pe.select(1, 0);
  be.copy(s.kv_a.slice(1, rkv, rkv + dr), k_pe2);
  be.rope(k_pe, in.positions, in.cos_sin, c_.rope_interleave, false);
  Tensor k_nope_dst = s.k.slice(2, 0, dn);
  be.copy(kv3.slice(2, 0, dn), k_nope_dst);
  for (int64_t hh = 0; hh < h; ++hh) {
    Tensor dst = s.k.select(1, hh).slice(1, dn, dq);
    be.copy(k_pe.select(1, 0), dst);
  }

  // V3.2: the indexer picks the keys each query attends to (from the unrotated query latent).
  const Tensor* sparse = nullptr;
  s.sparse = false;
  if (indexer_) {
    indexer_->forward(be, x, s.q_a_n, in, in.indexer_fp8, s.indexer);
    s.sparse = !in.dsa_dense;
    if (s.sparse) sparse = &s.indexer.topk;
  }
  s.attn = be.empty({n, h, dv});
  s.lse = be.empty({h, n});
  be.attention_forward(q3, s.k, kv3.slice(2, dn, dn + dv), in.cu_seqlens, float(c_.softmax_scale()),
                       s.attn, s.lse, sparse);
  s.indexer_kl = 0;
  if (indexer_ && in.indexer_kl) {
    int64_t total = s.indexer.scores.numel();
    Tensor p = be.empty({total});
    be.attention_head_sum_probs(q3, s.k, s.lse, in.cu_seqlens, float(c_.softmax_scale()), sparse,
                                p);
    s.indexer_kl = indexer_->kl(be, s.indexer, p, sparse, in, in.indexer_kl_grad);
  }
  be.matmul(s.attn.view({n, h * dv}), false, w_.o, true, y);
}

void Mla::forward_cached(Backend& be, const Tensor& x, const CachedInputs& in, LatentKvCache& cache,
                         int64_t layer, Tensor& y) {
  const int64_t n = x.size(0), h = c_.num_attention_heads, dn = c_.qk_nope_head_dim,
                dr = c_.qk_rope_head_dim, dv = c_.v_head_dim, dq = dn + dr, rkv = c_.kv_lora_rank,
                dim = rkv + dr;
  const size_t chunks = in.seq.size();
  SHOAL_CHECK(in.positions.numel() == n && in.cu.size() == chunks + 1 && in.cu.back() == n &&
                  in.mha.size() == chunks && in.dsa_len.size() == chunks,
              "forward_cached: {} rows, {} positions, {} chunk offsets for {} chunks", n,
              in.positions.numel(), in.cu.size(), chunks);
  const float eps = float(c_.rms_norm_eps);
  Tensor q = be.empty({n, h * dq}), qan;
  if (c_.q_lora_rank > 0) {
    Tensor qa = be.empty({n, c_.q_lora_rank}), rs = be.empty({n});
    qan = be.empty({n, c_.q_lora_rank});
    be.matmul(x, false, w_.q_a, true, qa);
    be.rmsnorm_forward(qa, w_.q_a_norm, eps, qan, rs);
    be.matmul(qan, false, w_.q_b, true, q);
  } else {
    be.matmul(x, false, w_.q_proj, true, q);
  }
  Tensor q3 = q.view({n, h, dq});
  Tensor q_pe = q3.slice(2, dn, dq);
  be.rope(q_pe, in.positions, in.cos_sin, c_.rope_interleave, false);
  Tensor kv_a = be.empty({n, dim}), c_kv = be.empty({n, rkv}), rs = be.empty({n});
  be.matmul(x, false, w_.kv_a, true, kv_a);
  be.rmsnorm_forward(kv_a.slice(1, 0, rkv), w_.kv_a_norm, eps, c_kv, rs);
  Tensor k_pe = be.empty({n, 1, dr});
  Tensor k_pe2 = k_pe.select(1, 0);
  be.copy(kv_a.slice(1, rkv, dim), k_pe2);
  be.rope(k_pe, in.positions, in.cos_sin, c_.rope_interleave, false);
  Tensor kvb3 = w_.kv_b.view({h, dn + dv, rkv});
  Tensor attn = be.empty({n, h, dv});
  // Absorption: q_cat = [W_UK^T q_nope ; q_pe] per head, and attn = W_UV o_lat per head, each
  // one batched GEMM over the heads on head-first views ([h, n, d], no copies).
  auto absorb_q = [&]() {
    Tensor q_cat = be.empty({n, h, dim});
    Tensor ql = q_cat.slice(2, 0, rkv).transpose(0, 1);
    be.batched_matmul(q3.slice(2, 0, dn).transpose(0, 1), false, kvb3.slice(1, 0, dn), false, ql);
    Tensor q_cat_pe = q_cat.slice(2, rkv, dim);
    be.copy(q_pe, q_cat_pe);
    return q_cat;
  };
  auto expand_o = [&](const Tensor& o_lat) {
    Tensor a = attn.transpose(0, 1);
    be.batched_matmul(o_lat.transpose(0, 1), false, kvb3.slice(1, dn, dn + dv), true, a);
  };
  const float scale = float(c_.softmax_scale());
  if (be.device() != Device::cpu) {
    SHOAL_CHECK(!indexer_,
                "forward_cached: DeepSeek Sparse Attention (V3.2) decoding is not built for the {} "
                "backend yet (the indexer's cached top-k selection runs on the host)",
                device_name(be.device()));
    SHOAL_CHECK(in.block_table.defined() && in.slots.numel() == n && in.row_len.numel() == n,
                "forward_cached on the {} backend needs the cache addressing Model::forward_cached "
                "builds (slots, block table, row maps)",
                device_name(be.device()));
    Tensor lat = be.empty({n, dim});
    Tensor lat_c = lat.slice(1, 0, rkv), lat_pe = lat.slice(1, rkv, dim);
    be.copy(c_kv, lat_c);
    be.copy(k_pe.select(1, 0), lat_pe);
    Tensor pool = cache.latent_pool(layer);
    be.scatter_rows(lat, in.slots, pool);
    if (in.fresh_chunks) {  // as Mla::forward: k = [k_nope (per head); k_pe (shared)], v
      Tensor kvb = be.empty({n, h * (dn + dv)});
      be.matmul(c_kv, false, w_.kv_b, true, kvb);
      Tensor kv3 = kvb.view({n, h, dn + dv});
      Tensor k = be.empty({n, h, dq});
      Tensor k_nope = k.slice(2, 0, dn);
      be.copy(kv3.slice(2, 0, dn), k_nope);
      for (int64_t hh = 0; hh < h; ++hh) {
        Tensor dst = k.select(1, hh).slice(1, dn, dq);
        be.copy(k_pe.select(1, 0), dst);
      }
      Tensor lse = be.empty({h, n});
      be.attention_forward(q3, k, kv3.slice(2, dn, dn + dv), in.cu, scale, attn, lse, nullptr);
      be.matmul(attn.view({n, h * dv}), false, w_.o, true, y);
      return;
    }
    Tensor q_cat = absorb_q();
    Tensor o_lat = be.empty({n, h, rkv});
    be.latent_attention(q_cat, pool, cache.page_tokens(), in.block_table, in.row_seq, in.row_len,
                        in.max_len, nullptr, scale, o_lat);
    expand_o(o_lat);
    be.matmul(attn.view({n, h * dv}), false, w_.o, true, y);
    return;
  }
  const int32_t* pos = in.positions.i32();
  for (size_t c = 0; c < chunks; ++c)
    for (int64_t i = in.cu[c]; i < in.cu[c + 1]; ++i) {
      float* dst = cache.latent(layer, in.seq[c], pos[i]);
      std::copy_n(c_kv.f32() + i * rkv, rkv, dst);
      std::copy_n(k_pe.f32() + i * dr, dr, dst + rkv);
    }
  // V3.2: the rows' keys, as the indexer selects them from the cached indexer keys.
  std::vector<std::vector<int32_t>> sel;
  if (indexer_) {
    sel = indexer_->select_cached(be, x, qan, in, cache, layer);
    if (in.dsa_topk) *in.dsa_topk = sel;
  }
  auto keys_of = [&](int64_t i, std::vector<int32_t>& out) {
    out.clear();
    if (indexer_) {
      out = sel[size_t(i)];
    } else {
      for (int32_t t = 0; t <= pos[i]; ++t) out.push_back(t);
    }
  };
  auto softmax = [&](float* row, int64_t len) {
    float mx = -INFINITY;
    for (int64_t t = 0; t < len; ++t) mx = std::max(mx, row[t] *= scale);
    double z = 0;
    for (int64_t t = 0; t < len; ++t) z += row[t] = std::exp(row[t] - mx);
    for (int64_t t = 0; t < len; ++t) row[t] = float(row[t] / z);
  };
  std::vector<int32_t> keys;

  // Absorbed chunks: score = (W_UK^T q_nope) . c_kv + q_pe . k_pe over the latent, one KV head for
  // all heads; o = W_UV (sum_t p_t c_kv_t). Rows of MHA chunks are computed below and overwrite.
  bool any_absorbed = std::find(in.mha.begin(), in.mha.end(), 0) != in.mha.end();
  if (any_absorbed) {
    Tensor q_cat = absorb_q();
    Tensor o_lat = be.zeros({n, h, rkv});
    for (size_t c = 0; c < chunks; ++c) {
      if (in.mha[c]) continue;
      for (int64_t i = in.cu[c]; i < in.cu[c + 1]; ++i) {
        keys_of(i, keys);
        int64_t m = int64_t(keys.size());
        Tensor lat = Tensor::empty({m, dim}, DType::f32), sc = Tensor::empty({h, m}, DType::f32);
        for (int64_t j = 0; j < m; ++j)
          std::copy_n(cache.latent(layer, in.seq[c], keys[size_t(j)]), dim, lat.f32() + j * dim);
        be.matmul(q_cat.select(0, i), false, lat, true, sc);
        for (int64_t hh = 0; hh < h; ++hh) softmax(sc.f32() + hh * m, m);
        Tensor ol = o_lat.select(0, i);
        be.matmul(sc, false, lat.slice(1, 0, rkv), false, ol);
      }
    }
    expand_o(o_lat);
  }

  // MHA chunks: decompress k_nope and v of the cached positions 0..last through kv_b_proj and
  // attend per head over the allowed positions.
  std::vector<uint8_t> allowed;
  for (size_t c = 0; c < chunks; ++c) {
    if (!in.mha[c]) continue;
    int64_t r0 = in.cu[c], r1 = in.cu[c + 1], m = r1 - r0, len = int64_t(pos[r1 - 1]) + 1;
    Tensor lat = Tensor::empty({len, dim}, DType::f32);
    for (int64_t t = 0; t < len; ++t)
      std::copy_n(cache.latent(layer, in.seq[c], t), dim, lat.f32() + t * dim);
    Tensor kv = be.empty({len, h * (dn + dv)});
    be.matmul(lat.slice(1, 0, rkv), false, w_.kv_b, true, kv);
    Tensor kv3 = kv.view({len, h, dn + dv});
    allowed.assign(size_t(m * len), 0);
    for (int64_t i = r0; i < r1; ++i) {
      keys_of(i, keys);
      for (int32_t t : keys) allowed[size_t((i - r0) * len + t)] = 1;
    }
    Tensor sc = be.empty({m, len});
    Tensor qc = q3.slice(0, r0, r1);
    for (int64_t hh = 0; hh < h; ++hh) {
      Tensor qh = qc.select(1, hh);
      be.matmul(qh.slice(1, 0, dn), false, kv3.select(1, hh).slice(1, 0, dn), true, sc);
      be.matmul(qh.slice(1, dn, dq), false, lat.slice(1, rkv, dim), true, sc, 1.0f, 1.0f);
      for (int64_t r = 0; r < m; ++r) {
        float* row = sc.f32() + r * len;
        float mx = -INFINITY;
        for (int64_t t = 0; t < len; ++t)
          if (allowed[size_t(r * len + t)]) mx = std::max(mx, row[t] * scale);
        double z = 0;
        for (int64_t t = 0; t < len; ++t)
          z += row[t] = allowed[size_t(r * len + t)] ? std::exp(row[t] * scale - mx) : 0.0f;
        for (int64_t t = 0; t < len; ++t) row[t] = float(row[t] / z);
      }
      Tensor a = attn.slice(0, r0, r1).select(1, hh);
      be.matmul(sc, false, kv3.select(1, hh).slice(1, dn, dn + dv), false, a);
    }
  }
  be.matmul(attn.view({n, h * dv}), false, w_.o, true, y);
}

void Mla::backward(Backend& be, const MlaSaved& s, const AttentionInputs& in, const Tensor& dy,
                   Tensor& dx) {
  const int64_t n = dy.size(0), h = c_.num_attention_heads, dn = c_.qk_nope_head_dim,
                dr = c_.qk_rope_head_dim, dv = c_.v_head_dim, dq = dn + dr, rkv = c_.kv_lora_rank;
  Tensor attn2 = s.attn.view({n, h * dv});
  be.matmul(dy, true, attn2, false, w_.g_o, 1.0f, 1.0f);
  Tensor dattn = be.empty({n, h, dv});
  Tensor dattn2 = dattn.view({n, h * dv});
  be.matmul(dy, false, w_.o, false, dattn2);

  Tensor dqt = be.empty({n, h, dq}), dk = be.empty({n, h, dq});
  Tensor dkv_b = be.empty({n, h, dn + dv});
  Tensor dv_view = dkv_b.slice(2, dn, dn + dv);
  Tensor kv3 = s.kv_b.view({n, h, dn + dv});
  Tensor dv_tmp = be.empty({n, h, dv});
  be.attention_backward(s.q.view({n, h, dq}), s.k, kv3.slice(2, dn, dn + dv), s.attn, dattn, s.lse,
                        in.cu_seqlens, float(c_.softmax_scale()), dqt, dk, dv_tmp,
                        s.sparse ? &s.indexer.topk : nullptr);
  be.copy(dv_tmp, dv_view);
  Tensor dk_nope_dst = dkv_b.slice(2, 0, dn);
  be.copy(dk.slice(2, 0, dn), dk_nope_dst);

  // k_pe is shared by every head: its gradient is the sum over heads, then the inverse rotation.
  Tensor dkv_a = be.empty({n, rkv + dr});
  Tensor dk_pe = be.zeros({n, dr});
  for (int64_t hh = 0; hh < h; ++hh) be.add(dk_pe, dk.select(1, hh).slice(1, dn, dq));
  Tensor dk_pe3 = dk_pe.view({n, 1, dr});
  be.rope(dk_pe3, in.positions, in.cos_sin, c_.rope_interleave, true);
  Tensor dkv_a_pe = dkv_a.slice(1, rkv, rkv + dr);
  be.copy(dk_pe, dkv_a_pe);

  Tensor dkv_b2 = dkv_b.view({n, h * (dn + dv)});
  be.matmul(dkv_b2, true, s.c_kv_n, false, w_.g_kv_b, 1.0f, 1.0f);
  Tensor dc_kv_n = be.empty({n, rkv});
  be.matmul(dkv_b2, false, w_.kv_b, false, dc_kv_n);
  Tensor dc_kv = dkv_a.slice(1, 0, rkv);
  be.rmsnorm_backward(dc_kv_n, s.kv_a.slice(1, 0, rkv), w_.kv_a_norm, s.kv_rstd, dc_kv,
                      w_.g_kv_a_norm);
  be.matmul(dkv_a, true, s.x, false, w_.g_kv_a, 1.0f, 1.0f);
  be.matmul(dkv_a, false, w_.kv_a, false, dx);

  Tensor dq_pe = dqt.slice(2, dn, dq);
  be.rope(dq_pe, in.positions, in.cos_sin, c_.rope_interleave, true);
  Tensor dq2 = dqt.view({n, h * dq});
  if (c_.q_lora_rank > 0) {
    be.matmul(dq2, true, s.q_a_n, false, w_.g_q_b, 1.0f, 1.0f);
    Tensor dq_a_n = be.empty({n, c_.q_lora_rank});
    be.matmul(dq2, false, w_.q_b, false, dq_a_n);
    Tensor dq_a = be.empty({n, c_.q_lora_rank});
    be.rmsnorm_backward(dq_a_n, s.q_a, w_.q_a_norm, s.q_a_rstd, dq_a, w_.g_q_a_norm);
    be.matmul(dq_a, true, s.x, false, w_.g_q_a, 1.0f, 1.0f);
    be.matmul(dq_a, false, w_.q_a, false, dx, 1.0f, 1.0f);
  } else {
    be.matmul(dq2, true, s.x, false, w_.g_q_proj, 1.0f, 1.0f);
    be.matmul(dq2, false, w_.q_proj, false, dx, 1.0f, 1.0f);
  }
}

}  // namespace shoal
