// The latent KV cache for MLA decoding: per token and layer only the normed compressed KV
// (kv_lora_rank values) and the RoPE'd shared key (qk_rope_head_dim values) are stored, plus, for
// V3.2 models, the DSA indexer's key (index_head_dim values), in fixed-size pages drawn from a
// pool preallocated up front (no per-request reallocation). Pages are reference counted so that
// sequences can share a prefix (fork); a shared, partly filled last page is copied before the
// first write past the shared length (copy-on-write). It also keeps each sequence's token ids and,
// for DSA, the score rows whose top-k selection depends on the sequence length through exact ties
// (see Model::forward_cached). The pools live in the memory of the backend given at construction
// (host memory without one or for the CPU backend, device memory for CUDA); pages, reference
// counts, token ids and tie rows are host bookkeeping either way. Not here: which requests run when
// (engine/generate/scheduler.h).
#pragma once

#include <vector>

#include "engine/backend.h"
#include "engine/model/config.h"

namespace shoal {

struct KvCacheConfig {
  int64_t page_tokens = 16;  // tokens per page
  int64_t pages = 256;       // pool size
};

// A DSA row whose top-k boundary falls inside a group of exactly equal scores: which of the tied
// keys torch.topk keeps depends on the length of the sequence the row is computed in, so a longer
// sequence may select differently and the cached state after it may no longer be what a full
// forward computes.
struct DsaTieRow {
  int32_t layer = 0, pos = 0;
  std::vector<float> scores;      // the row's indexer scores over keys 0..pos
  std::vector<int32_t> selected;  // the selection the cached state was computed with (sorted)
};

class LatentKvCache {
 public:
  // be: whose allocator holds the pools (null = host memory, as the CPU backend's).
  LatentKvCache(const ModelConfig& c, const KvCacheConfig& cfg = {}, Backend* be = nullptr);
  Device device() const { return be_ ? be_->device() : Device::cpu; }
  int64_t add_sequence();  // a new, empty sequence; returns its handle
  // A new sequence holding the same tokens as seq, sharing its pages (no copy, no new page).
  int64_t fork(int64_t seq);
  void release(int64_t seq);  // drops its references; pages nobody holds return to the pool
  int64_t length(int64_t seq) const;
  // Pages reserve(seq, n) would take from the pool (including a copy-on-write of a shared page).
  int64_t pages_needed(int64_t seq, int64_t n) const;
  // The same for writing positions from .. from+n-1 after a truncate(seq, from).
  int64_t pages_needed_at(int64_t seq, int64_t from, int64_t n) const;
  // Makes room for n more tokens (positions length .. length + n - 1 become writable and owned by
  // seq alone); throws, naming the need and what is free, when the pool is out.
  void reserve(int64_t seq, int64_t n);
  void advance(int64_t seq, int64_t n);  // n reserved tokens are now written
  // Forgets positions len .. length-1 (they will be written again); pages stay with seq.
  void truncate(int64_t seq, int64_t len);
  std::vector<int32_t>& tokens(int64_t seq) { return this->seq(seq).tokens; }  // ids by position
  std::vector<DsaTieRow>& dsa_ties(int64_t seq) { return this->seq(seq).ties; }
  // The [kv_lora_rank + qk_rope_head_dim] latent of token pos (< reserved length) in a layer.
  // Host pointers: a cache on the host only (latent_pool / slot for a device cache).
  float* latent(int64_t layer, int64_t seq, int64_t pos);
  const float* latent(int64_t layer, int64_t seq, int64_t pos) const;
  // The DSA indexer key [index_head_dim] of token pos in a layer (V3.2 models only).
  float* indexer_key(int64_t layer, int64_t seq, int64_t pos);
  const float* indexer_key(int64_t layer, int64_t seq, int64_t pos) const;
  // What kernels address: a layer's pool as [pages * page_tokens, latent_dim] (indexer keys:
  // [pages * page_tokens, indexer_dim]), and the pool row of (seq, pos < reserved length).
  Tensor latent_pool(int64_t layer) const;
  Tensor indexer_pool(int64_t layer) const;
  int64_t slot(int64_t seq, int64_t pos) const { return slot(this->seq(seq), pos); }
  int64_t latent_dim() const { return dim_; }
  int64_t indexer_dim() const { return idim_; }  // 0 without DSA
  int64_t bytes_per_token() const;               // over all layers, latents and indexer keys
  int64_t page_tokens() const { return page_tokens_; }
  int64_t total_pages() const { return int64_t(refs_.size()); }
  int64_t free_pages() const { return int64_t(free_.size()); }
  // Tokens written again after a truncate (DSA tie recomputation), over the cache's life.
  int64_t rewritten_tokens() const { return rewritten_; }
  const std::vector<int32_t>& pages(int64_t seq) const { return this->seq(seq).pages; }
  int32_t page_refs(int32_t page) const { return refs_.at(size_t(page)); }

 private:
  struct Seq {
    std::vector<int32_t> pages;
    std::vector<int32_t> tokens;
    std::vector<DsaTieRow> ties;
    int64_t len = 0, reserved = 0;
    bool live = false;
  };
  const Seq& seq(int64_t s) const;
  Seq& seq(int64_t s) { return const_cast<Seq&>(static_cast<const LatentKvCache*>(this)->seq(s)); }
  int64_t slot(const Seq& q, int64_t pos) const;  // row of pos in the pools
  int32_t take_page();
  void check_host(const char* what) const;
  Backend* be_ = nullptr;
  int64_t layers_, dim_, idim_, page_tokens_;
  std::vector<Tensor> pool_;   // per layer [pages, page_tokens, dim]
  std::vector<Tensor> ipool_;  // per layer [pages, page_tokens, idim] (V3.2)
  std::vector<int32_t> refs_;  // per page: sequences holding it
  std::vector<int32_t> free_;
  std::vector<Seq> seqs_;
  int64_t rewritten_ = 0;
};

}  // namespace shoal
