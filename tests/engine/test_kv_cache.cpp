// Inference through the latent KV cache against the uncached forward: golden greedy continuations
// and logits at every step (V3 and V3.2 with DSA over cached indexer keys), batched requests
// joining mid-flight, absorbed decode equal to MHA-mode attention on the same cache, chunked
// prefill equal to one-shot prefill, the DSA row selection equal to topk_rows, pages shared and
// copied on write, cache size per token, pool exhaustion.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/generate/kv_cache.h"
#include "engine/model/dsa.h"
#include "engine/model/model.h"
#include "tests/engine/golden_generate.h"

namespace shoal {
namespace {

using testing::golden_cases;
using testing::GoldenCase;
using testing::load_golden;

int32_t argmax_row(const Tensor& logits, int64_t row) {
  int64_t v = logits.size(1);
  const float* p = logits.f32() + row * v;
  return int32_t(std::max_element(p, p + v) - p);
}

double rel_err(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t j = 0; j < n; ++j) {
    num += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
    den += double(b[j]) * b[j];
  }
  return std::sqrt(num / den);
}

Tensor full_logits(Model& m, const std::vector<int32_t>& seq) {
  ForwardOptions o;
  o.need_backward = false;
  o.keep_logits = true;
  return m.forward(Batch::next_token({seq}), o).logits;
}

TEST(KvCache, GreedyThroughTheCacheReproducesGoldenAndUncachedLogits) {
  for (std::string name : {"tiny_v3", "tiny_v3_yarn", "tiny_v32"}) {
    auto m = load_golden(name);
    for (auto& c : golden_cases(name)) {
      LatentKvCache cache(m->config(), {4, 64});
      int64_t s = cache.add_sequence();
      Tensor logits = m->forward_cached(cache, {s}, {c.prompt});  // prefill (MHA mode)
      std::vector<int32_t> seq = c.prompt;
      for (size_t step = 0; step < c.want.size(); ++step) {
        int64_t last = logits.size(0) - 1, v = logits.size(1);
        int32_t next = argmax_row(logits, last);
        ASSERT_EQ(next, c.want[step]) << name << " step " << step;
        // The cached logits equal the uncached forward's last row; its argmax is the same token.
        Tensor full = full_logits(*m, seq);
        EXPECT_EQ(argmax_row(full, full.size(0) - 1), next) << name << " step " << step;
        EXPECT_LT(rel_err(logits.f32() + last * v, full.f32() + (full.size(0) - 1) * v, v), 1e-5)
            << name << " step " << step << " length " << seq.size();
        seq.push_back(next);
        logits = m->forward_cached(cache, {s}, {{next}});  // decode (absorbed)
      }
      EXPECT_EQ(cache.length(s), int64_t(c.prompt.size() + c.want.size()));
    }
  }
}

TEST(KvCache, BatchedRequestsJoiningMidFlightMatchSingleRequests) {
  for (std::string name : {"tiny_v3", "tiny_v32"}) {
    auto m = load_golden(name);
    auto cases = golden_cases(name);
    LatentKvCache cache(m->config(), {8, 64});
    // Request r joins at step 3 r; every step decodes one token for each running request, and a
    // joining request's prompt is prefilled in the same forward.
    std::vector<int64_t> handle(cases.size(), -1);
    std::vector<std::vector<int32_t>> got(cases.size());
    std::vector<int32_t> pending(cases.size(), -1);
    for (int step = 0; step < 30; ++step) {
      std::vector<int64_t> seqs;
      std::vector<std::vector<int32_t>> toks;
      std::vector<size_t> who;
      for (size_t r = 0; r < cases.size(); ++r) {
        if (got[r].size() == cases[r].want.size()) continue;
        if (handle[r] < 0 && step == int(3 * r)) {
          handle[r] = cache.add_sequence();
          seqs.push_back(handle[r]);
          toks.push_back(cases[r].prompt);
          who.push_back(r);
        } else if (handle[r] >= 0) {
          seqs.push_back(handle[r]);
          toks.push_back({pending[r]});
          who.push_back(r);
        }
      }
      if (seqs.empty()) continue;
      CachedForwardOptions o;
      o.last_logits_only = true;
      Tensor logits = m->forward_cached(cache, seqs, toks, o);
      for (size_t i = 0; i < who.size(); ++i) {
        int32_t next = argmax_row(logits, int64_t(i));
        got[who[i]].push_back(next);
        pending[who[i]] = next;
        if (got[who[i]].size() == cases[who[i]].want.size()) cache.release(handle[who[i]]);
      }
    }
    for (size_t r = 0; r < cases.size(); ++r)
      EXPECT_EQ(got[r], cases[r].want) << name << " request " << r;
    EXPECT_EQ(cache.free_pages(), 64);
  }
}

// The same new tokens against the same cached prefix, once with weight absorption and once in
// MHA mode (latents decompressed through kv_b_proj): the same function.
TEST(KvCache, AbsorbedDecodeEqualsMhaAttentionOnTheSameCache) {
  for (std::string name : {"tiny_v3", "tiny_v32"}) {
    auto m = load_golden(name);
    LatentKvCache cache(m->config(), {4, 64});
    std::vector<int32_t> prompt = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43};
    int64_t base = cache.add_sequence();
    m->forward_cached(cache, {base}, {prompt});
    for (std::vector<int32_t> next : {std::vector<int32_t>{383}, {279, 50, 288, 41, 97}}) {
      int64_t a = cache.fork(base), b = cache.fork(base);
      CachedForwardOptions abs, mha;
      abs.attention = CachedAttention::absorbed;
      mha.attention = CachedAttention::mha;
      std::vector<std::vector<std::vector<int32_t>>> sel_a, sel_b;
      abs.dsa_topk = &sel_a;
      mha.dsa_topk = &sel_b;
      Tensor la = m->forward_cached(cache, {a}, {next}, abs);
      Tensor lb = m->forward_cached(cache, {b}, {next}, mha);
      ASSERT_EQ(la.numel(), lb.numel());
      int64_t v = la.size(1);
      for (int64_t r = 0; r < la.size(0); ++r)
        EXPECT_LT(rel_err(la.f32() + r * v, lb.f32() + r * v, v), 1e-5) << name << " row " << r;
      if (m->config().is_v32()) {
        EXPECT_EQ(sel_a, sel_b);
        EXPECT_LT(sel_a[0].back().size(), prompt.size() + next.size());  // really sparse
      }
      cache.release(a);
      cache.release(b);
    }
    // And both equal the uncached forward over the whole sequence.
    std::vector<int32_t> seq = prompt;
    seq.push_back(383);
    int64_t c = cache.fork(base);
    Tensor l = m->forward_cached(cache, {c}, {{383}});
    Tensor full = full_logits(*m, seq);
    int64_t v = l.size(1);
    EXPECT_LT(rel_err(l.f32(), full.f32() + (full.size(0) - 1) * v, v), 1e-5) << name;
  }
}

// A prompt prefilled in chunks (each chunk attending to the cached latents of the earlier ones)
// gives the logits of a one-shot prefill; with DSA every row keeps the selection of one forward
// over the whole prompt (dsa_len).
TEST(KvCache, ChunkedPrefillEqualsOneShotPrefill) {
  for (std::string name : {"tiny_v3", "tiny_v32"}) {
    auto m = load_golden(name);
    std::vector<int32_t> prompt;
    std::mt19937 rng(7);
    for (int i = 0; i < 40; ++i) prompt.push_back(int32_t(rng() % 1000));
    LatentKvCache cache(m->config(), {4, 64});
    int64_t one = cache.add_sequence(), chunked = cache.add_sequence();
    std::vector<std::vector<std::vector<int32_t>>> sel_one, sel_part;
    CachedForwardOptions o;
    o.dsa_topk = &sel_one;
    Tensor l1 = m->forward_cached(cache, {one}, {prompt}, o);
    std::vector<std::vector<std::vector<int32_t>>> sel_chunked(
        size_t(m->config().num_hidden_layers));
    Tensor l2;
    for (size_t from = 0; from < prompt.size(); from += 13) {
      size_t to = std::min(prompt.size(), from + 13);
      CachedForwardOptions oc;
      oc.dsa_len = {int64_t(prompt.size())};
      oc.dsa_topk = &sel_part;
      l2 = m->forward_cached(cache, {chunked},
                             {{prompt.begin() + int64_t(from), prompt.begin() + int64_t(to)}}, oc);
      for (size_t l = 0; l < sel_part.size(); ++l)
        sel_chunked[l].insert(sel_chunked[l].end(), sel_part[l].begin(), sel_part[l].end());
    }
    int64_t v = l1.size(1);
    EXPECT_LT(rel_err(l2.f32() + (l2.size(0) - 1) * v, l1.f32() + (l1.size(0) - 1) * v, v), 1e-5)
        << name;
    if (m->config().is_v32()) {
      EXPECT_EQ(sel_chunked, sel_one);
      // One forward over the prompt selects exactly as the uncached forward does.
      ForwardOptions fo;
      fo.need_backward = false;
      fo.keep_dsa_topk = true;
      auto r = m->forward(Batch::next_token({prompt}), fo);
      for (size_t l = 0; l < r.dsa_topk.size(); ++l)
        for (size_t t = 0; t < prompt.size(); ++t) {
          std::vector<int32_t> want;
          for (int64_t j = 0; j < r.dsa_topk[l].size(1); ++j) {
            int32_t p = r.dsa_topk[l].i32()[int64_t(t) * r.dsa_topk[l].size(1) + j];
            if (p >= 0) want.push_back(p);
          }
          EXPECT_EQ(sel_one[l][t], want) << "layer " << l << " row " << t;
        }
    }
  }
}

// topk_row reproduces the backend's topk_rows row by row, ties included, on both of its branches
// (nth_element, and partial_sort when k * 64 <= length).
TEST(KvCache, TopkRowEqualsTopkRowsWithTies) {
  std::mt19937 rng(3);
  for (int64_t len : {1, 5, 24, 130, 300}) {
    for (int64_t k : {1, 2, 8}) {
      Tensor sc = Tensor::empty({len * len}, DType::f32);
      for (int64_t i = 0; i < len * len; ++i) sc.f32()[i] = float(int(rng() % 4)) - 1.0f;  // ties
      Tensor idx = Tensor::empty({len, k}, DType::i32);
      cpu_backend().topk_rows(sc, {0, len}, k, idx);
      for (int64_t t = 0; t < len; ++t) {
        std::vector<int32_t> got, want;
        topk_row(sc.f32() + t * len, t, len, k, got);
        for (int64_t j = 0; j < k; ++j)
          if (idx.i32()[t * k + j] >= 0) want.push_back(idx.i32()[t * k + j]);
        ASSERT_EQ(got, want) << "len " << len << " k " << k << " row " << t;
      }
    }
  }
}

TEST(KvCache, ForkSharesPagesAndCopiesOnWrite) {
  auto m = load_golden("tiny_v32");
  LatentKvCache cache(m->config(), {4, 8});
  int64_t a = cache.add_sequence();
  m->forward_cached(cache, {a}, {{5, 6, 7, 8, 9, 10}});  // pages: one full, one half filled
  EXPECT_EQ(cache.free_pages(), 6);
  std::vector<float> before(cache.latent(1, a, 5), cache.latent(1, a, 5) + cache.latent_dim());
  int64_t b = cache.fork(a);
  EXPECT_EQ(cache.pages(b), cache.pages(a));
  EXPECT_EQ(cache.free_pages(), 6);
  EXPECT_EQ(cache.pages_needed(b, 1), 1);  // the shared half page is copied first
  m->forward_cached(cache, {b}, {{11}});
  EXPECT_EQ(cache.pages(b)[0], cache.pages(a)[0]);  // the full page stays shared
  EXPECT_NE(cache.pages(b)[1], cache.pages(a)[1]);
  EXPECT_EQ(cache.page_refs(cache.pages(a)[0]), 2);
  EXPECT_EQ(cache.page_refs(cache.pages(a)[1]), 1);
  EXPECT_EQ(std::vector<float>(cache.latent(1, b, 5), cache.latent(1, b, 5) + cache.latent_dim()),
            before);
  EXPECT_EQ(cache.free_pages(), 5);
  m->forward_cached(cache, {a}, {{12}});  // a now owns its half page alone: no copy
  EXPECT_EQ(cache.free_pages(), 5);
  cache.release(a);
  EXPECT_EQ(cache.free_pages(), 6);
  cache.release(b);
  EXPECT_EQ(cache.free_pages(), 8);
}

TEST(KvCache, StoresOnlyTheLatentAndRunsOutCleanly) {
  auto m = load_golden("tiny_v3");
  const ModelConfig& c = m->config();
  LatentKvCache cache(c, {4, 3});
  EXPECT_EQ(cache.bytes_per_token(),
            c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4);
  int64_t s = cache.add_sequence();
  m->forward_cached(cache, {s}, {{1, 2, 3, 4, 5, 6, 7, 8}});  // 2 of 3 pages
  EXPECT_EQ(cache.free_pages(), 1);
  try {
    m->forward_cached(cache, {s}, {{1, 2, 3, 4, 5}});  // would need 4 pages in all
    FAIL() << "the pool should be exhausted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("free"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(s), 8);  // the failed forward changed nothing
  EXPECT_EQ(cache.free_pages(), 1);
  cache.release(s);
  EXPECT_EQ(cache.free_pages(), 3);
  auto v32 = load_golden("tiny_v32");
  const ModelConfig& c32 = v32->config();
  LatentKvCache cache32(c32);
  EXPECT_EQ(
      cache32.bytes_per_token(),
      c32.num_hidden_layers * (c32.kv_lora_rank + c32.qk_rope_head_dim + c32.index_head_dim) * 4);
}

}  // namespace
}  // namespace shoal
