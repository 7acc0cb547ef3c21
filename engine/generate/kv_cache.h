// The latent KV cache for MLA decoding: per token and layer only the normed compressed KV
// (kv_lora_rank values) and the RoPE'd shared key (qk_rope_head_dim values) are stored, in
// fixed-size pages drawn from a preallocated pool (no per-request reallocation). Host memory for
// the CPU backend. Not here: the DSA indexer's key cache and prefix sharing (generation issue).
#pragma once

#include <vector>

#include "engine/backend.h"
#include "engine/model/config.h"

namespace shoal {

struct KvCacheConfig {
  int64_t page_tokens = 16;  // tokens per page
  int64_t pages = 256;       // pool size
};

class LatentKvCache {
 public:
  LatentKvCache(const ModelConfig& c, const KvCacheConfig& cfg = {});
  int64_t add_sequence();     // a new, empty sequence; returns its handle
  void release(int64_t seq);  // returns its pages to the pool
  int64_t length(int64_t seq) const;
  // Makes room for n more tokens; throws (naming the need and what is free) when the pool is out.
  void reserve(int64_t seq, int64_t n);
  void advance(int64_t seq, int64_t n);  // n reserved tokens are now written
  // The [kv_lora_rank + qk_rope_head_dim] latent of token pos (< reserved length) in a layer.
  float* latent(int64_t layer, int64_t seq, int64_t pos);
  const float* latent(int64_t layer, int64_t seq, int64_t pos) const;
  int64_t latent_dim() const { return dim_; }
  int64_t bytes_per_token() const;  // over all layers
  int64_t free_pages() const { return int64_t(free_.size()); }

 private:
  struct Seq {
    std::vector<int32_t> pages;
    int64_t len = 0, reserved = 0;
    bool live = false;
  };
  const Seq& seq(int64_t s) const;
  int64_t layers_, dim_, page_tokens_;
  std::vector<Tensor> pool_;  // per layer [pages, page_tokens, dim]
  std::vector<int32_t> free_;
  std::vector<Seq> seqs_;
};

}  // namespace shoal
