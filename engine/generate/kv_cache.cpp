// Page bookkeeping for the latent cache.
#include "engine/generate/kv_cache.h"

namespace shoal {

LatentKvCache::LatentKvCache(const ModelConfig& c, const KvCacheConfig& cfg)
    : layers_(c.num_hidden_layers),
      dim_(c.kv_lora_rank + c.qk_rope_head_dim),
      page_tokens_(cfg.page_tokens) {
  SHOAL_CHECK(cfg.page_tokens > 0 && cfg.pages > 0, "kv cache: {} pages of {} tokens is invalid",
              cfg.pages, cfg.page_tokens);
  for (int64_t l = 0; l < layers_; ++l)
    pool_.push_back(Tensor::zeros({cfg.pages, cfg.page_tokens, dim_}, DType::f32));
  for (int64_t p = cfg.pages - 1; p >= 0; --p) free_.push_back(int32_t(p));
}

const LatentKvCache::Seq& LatentKvCache::seq(int64_t s) const {
  SHOAL_CHECK(s >= 0 && s < int64_t(seqs_.size()) && seqs_[size_t(s)].live,
              "kv cache: no live sequence {}", s);
  return seqs_[size_t(s)];
}

int64_t LatentKvCache::add_sequence() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i].live) {
      seqs_[i] = Seq{};
      seqs_[i].live = true;
      return int64_t(i);
    }
  seqs_.push_back(Seq{});
  seqs_.back().live = true;
  return int64_t(seqs_.size()) - 1;
}

void LatentKvCache::release(int64_t s) {
  Seq& q = const_cast<Seq&>(seq(s));
  for (int32_t p : q.pages) free_.push_back(p);
  q = Seq{};
}

int64_t LatentKvCache::length(int64_t s) const {
  return seq(s).len;
}

void LatentKvCache::reserve(int64_t s, int64_t n) {
  Seq& q = const_cast<Seq&>(seq(s));
  int64_t want = q.len + n;
  int64_t pages_needed = (want + page_tokens_ - 1) / page_tokens_ - int64_t(q.pages.size());
  SHOAL_CHECK(pages_needed <= int64_t(free_.size()),
              "kv cache: sequence {} needs {} more pages for {} tokens, {} free", s, pages_needed,
              want, free_.size());
  for (int64_t i = 0; i < pages_needed; ++i) {
    q.pages.push_back(free_.back());
    free_.pop_back();
  }
  q.reserved = std::max(q.reserved, want);
}

void LatentKvCache::advance(int64_t s, int64_t n) {
  Seq& q = const_cast<Seq&>(seq(s));
  SHOAL_CHECK(q.len + n <= q.reserved, "kv cache: advance past the reserved length");
  q.len += n;
}

float* LatentKvCache::latent(int64_t layer, int64_t s, int64_t pos) {
  return const_cast<float*>(static_cast<const LatentKvCache*>(this)->latent(layer, s, pos));
}

const float* LatentKvCache::latent(int64_t layer, int64_t s, int64_t pos) const {
  const Seq& q = seq(s);
  SHOAL_CHECK(pos >= 0 && pos < q.reserved, "kv cache: position {} outside the reserved {}", pos,
              q.reserved);
  int32_t page = q.pages[size_t(pos / page_tokens_)];
  return pool_[size_t(layer)].f32() + (int64_t(page) * page_tokens_ + pos % page_tokens_) * dim_;
}

int64_t LatentKvCache::bytes_per_token() const {
  return layers_ * dim_ * int64_t(sizeof(float));
}

}  // namespace shoal
