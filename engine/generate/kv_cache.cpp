// Page bookkeeping for the latent cache: a free list, reference counts for shared prefixes and
// copy-on-write of a shared partly filled page.
#include "engine/generate/kv_cache.h"

#include <algorithm>

namespace shoal {

LatentKvCache::LatentKvCache(const ModelConfig& c, const KvCacheConfig& cfg, Backend* be)
    : be_(be && be->device() != Device::cpu ? be : nullptr),
      layers_(c.num_hidden_layers),
      dim_(c.kv_lora_rank + c.qk_rope_head_dim),
      idim_(c.is_v32() ? c.index_head_dim : 0),
      page_tokens_(cfg.page_tokens) {
  SHOAL_CHECK(cfg.page_tokens > 0 && cfg.pages > 0, "kv cache: {} pages of {} tokens is invalid",
              cfg.pages, cfg.page_tokens);
  for (int64_t l = 0; l < layers_; ++l) {
    if (be_) {
      pool_.push_back(be_->zeros({cfg.pages, cfg.page_tokens, dim_}));
      if (idim_ > 0) ipool_.push_back(be_->zeros({cfg.pages, cfg.page_tokens, idim_}));
      continue;
    }
    pool_.push_back(Tensor::zeros({cfg.pages, cfg.page_tokens, dim_}, DType::f32));
    if (idim_ > 0) ipool_.push_back(Tensor::zeros({cfg.pages, cfg.page_tokens, idim_}, DType::f32));
  }
  refs_.assign(size_t(cfg.pages), 0);
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

int64_t LatentKvCache::fork(int64_t s) {
  int64_t child = add_sequence();
  const Seq& parent = seq(s);  // after add_sequence: seqs_ may have grown
  Seq& q = seqs_[size_t(child)];
  int64_t used = (parent.len + page_tokens_ - 1) / page_tokens_;
  q.pages.assign(parent.pages.begin(), parent.pages.begin() + used);
  for (int32_t p : q.pages) ++refs_[size_t(p)];
  q.len = q.reserved = parent.len;
  q.tokens = parent.tokens;
  q.ties = parent.ties;
  return child;
}

void LatentKvCache::release(int64_t s) {
  Seq& q = seq(s);
  for (int32_t p : q.pages)
    if (--refs_[size_t(p)] == 0) free_.push_back(p);
  q = Seq{};
}

int64_t LatentKvCache::length(int64_t s) const {
  return seq(s).len;
}

// The page index holding position from.
static int64_t first_page(int64_t from, int64_t pt) {
  return from / pt;
}

int64_t LatentKvCache::pages_needed(int64_t s, int64_t n) const {
  return pages_needed_at(s, seq(s).len, n);
}

int64_t LatentKvCache::pages_needed_at(int64_t s, int64_t from, int64_t n) const {
  const Seq& q = seq(s);
  int64_t want = from + n;
  int64_t have = int64_t(q.pages.size());
  int64_t fresh = std::max<int64_t>(0, (want + page_tokens_ - 1) / page_tokens_ - have);
  int64_t copies = 0;
  if (n > 0)
    for (int64_t p = first_page(from, page_tokens_); p < have && p * page_tokens_ < want; ++p)
      copies += refs_[size_t(q.pages[size_t(p)])] > 1;
  return fresh + copies;
}

int32_t LatentKvCache::take_page() {
  int32_t p = free_.back();
  free_.pop_back();
  refs_[size_t(p)] = 1;
  return p;
}

void LatentKvCache::reserve(int64_t s, int64_t n) {
  int64_t need = pages_needed(s, n);
  Seq& q = seq(s);
  int64_t want = q.len + n;
  SHOAL_CHECK(need <= int64_t(free_.size()),
              "kv cache: sequence {} needs {} more pages for {} tokens, {} free", s, need, want,
              free_.size());
  // Copy-on-write: a page another sequence holds is copied before positions in it are written.
  for (int64_t pi = first_page(q.len, page_tokens_);
       n > 0 && pi < int64_t(q.pages.size()) && pi * page_tokens_ < want; ++pi) {
    int32_t& page = q.pages[size_t(pi)];
    if (refs_[size_t(page)] <= 1) continue;
    int32_t copy = take_page();
    for (int64_t l = 0; be_ && l < layers_; ++l) {  // device pools: page copies on the device
      Tensor to = pool_[size_t(l)].select(0, copy);
      be_->copy(pool_[size_t(l)].select(0, page), to);
      if (idim_ > 0) {
        Tensor ito = ipool_[size_t(l)].select(0, copy);
        be_->copy(ipool_[size_t(l)].select(0, page), ito);
      }
    }
    for (int64_t l = 0; !be_ && l < layers_; ++l) {
      float* base = pool_[size_t(l)].f32();
      std::copy_n(base + int64_t(page) * page_tokens_ * dim_, page_tokens_ * dim_,
                  base + int64_t(copy) * page_tokens_ * dim_);
      if (idim_ > 0) {
        float* ib = ipool_[size_t(l)].f32();
        std::copy_n(ib + int64_t(page) * page_tokens_ * idim_, page_tokens_ * idim_,
                    ib + int64_t(copy) * page_tokens_ * idim_);
      }
    }
    --refs_[size_t(page)];
    page = copy;
  }
  while (int64_t(q.pages.size()) * page_tokens_ < want) q.pages.push_back(take_page());
  q.reserved = std::max(q.reserved, want);
}

void LatentKvCache::truncate(int64_t s, int64_t len) {
  Seq& q = seq(s);
  SHOAL_CHECK(len >= 0 && len <= q.len, "kv cache: truncate sequence {} of {} tokens to {}", s,
              q.len, len);
  rewritten_ += q.len - len;
  q.len = len;
  if (int64_t(q.tokens.size()) > len) q.tokens.resize(size_t(len));
  std::erase_if(q.ties, [&](const DsaTieRow& r) { return r.pos >= len; });
}

void LatentKvCache::advance(int64_t s, int64_t n) {
  Seq& q = seq(s);
  SHOAL_CHECK(q.len + n <= q.reserved, "kv cache: advance past the reserved length");
  q.len += n;
}

int64_t LatentKvCache::slot(const Seq& q, int64_t pos) const {
  SHOAL_CHECK(pos >= 0 && pos < q.reserved, "kv cache: position {} outside the reserved {}", pos,
              q.reserved);
  return int64_t(q.pages[size_t(pos / page_tokens_)]) * page_tokens_ + pos % page_tokens_;
}

void LatentKvCache::check_host(const char* what) const {
  SHOAL_CHECK(!be_, "kv cache: {} gives host pointers, and this cache's pools are on the {} device",
              what, device_name(be_->device()));
}

Tensor LatentKvCache::latent_pool(int64_t layer) const {
  const Tensor& t = pool_.at(size_t(layer));
  return t.view({t.size(0) * page_tokens_, dim_});
}

Tensor LatentKvCache::indexer_pool(int64_t layer) const {
  SHOAL_CHECK(idim_ > 0, "kv cache: this model has no DSA indexer keys");
  const Tensor& t = ipool_.at(size_t(layer));
  return t.view({t.size(0) * page_tokens_, idim_});
}

float* LatentKvCache::latent(int64_t layer, int64_t s, int64_t pos) {
  check_host("latent()");
  return pool_[size_t(layer)].f32() + slot(seq(s), pos) * dim_;
}

const float* LatentKvCache::latent(int64_t layer, int64_t s, int64_t pos) const {
  check_host("latent()");
  return pool_[size_t(layer)].f32() + slot(seq(s), pos) * dim_;
}

float* LatentKvCache::indexer_key(int64_t layer, int64_t s, int64_t pos) {
  SHOAL_CHECK(idim_ > 0, "kv cache: this model has no DSA indexer keys");
  check_host("indexer_key()");
  return ipool_[size_t(layer)].f32() + slot(seq(s), pos) * idim_;
}

const float* LatentKvCache::indexer_key(int64_t layer, int64_t s, int64_t pos) const {
  SHOAL_CHECK(idim_ > 0, "kv cache: this model has no DSA indexer keys");
  check_host("indexer_key()");
  return ipool_[size_t(layer)].f32() + slot(seq(s), pos) * idim_;
}

int64_t LatentKvCache::bytes_per_token() const {
  return layers_ * (dim_ + idim_) * int64_t(sizeof(float));
}

}  // namespace shoal
