// Decoding through the latent KV cache (MQA mode, weight absorption) against the uncached MHA
// forward: golden greedy continuations, logits at every step, batched requests joining
// mid-flight, cache size per token, pool exhaustion and the V3.2 refusal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/generate/kv_cache.h"
#include "engine/model/model.h"

namespace shoal {
namespace {

int32_t argmax_row(const Tensor& logits, int64_t row) {
  int64_t v = logits.size(1);
  const float* p = logits.f32() + row * v;
  return int32_t(std::max_element(p, p + v) - p);
}

TEST(KvCache, GreedyThroughTheCacheReproducesGoldenAndUncachedLogits) {
  for (std::string name : {"tiny_v3", "tiny_v3_yarn"}) {
    std::string dir = std::string(SHOAL_TEST_DATA) + "/" + name;
    auto m = Model::from_pretrained(dir, cpu_backend());
    auto doc = nlohmann::json::parse(std::ifstream(dir + "/generate.json"));
    for (auto& c : doc.at("cases")) {
      auto prompt = c.at("prompt_ids").get<std::vector<int32_t>>();
      auto want = c.at("greedy_ids").get<std::vector<int32_t>>();
      LatentKvCache cache(m->config(), {4, 64});
      int64_t s = cache.add_sequence();
      Tensor logits = m->forward_cached(cache, {s}, {prompt});  // prefill
      std::vector<int32_t> seq = prompt;
      for (size_t step = 0; step < want.size(); ++step) {
        int32_t next = argmax_row(logits, logits.size(0) - 1);
        ASSERT_EQ(next, want[step]) << name << " step " << step;
        // The cached logits equal the uncached (MHA-mode) forward's last row.
        ForwardOptions o;
        o.need_backward = false;
        o.keep_logits = true;
        Tensor full = m->forward(Batch::next_token({seq}), o).logits;
        int64_t v = full.size(1), last = full.size(0) - 1;
        double num = 0, den = 0;
        for (int64_t j = 0; j < v; ++j) {
          double d = logits.f32()[(logits.size(0) - 1) * v + j] - full.f32()[last * v + j];
          num += d * d;
          den += double(full.f32()[last * v + j]) * full.f32()[last * v + j];
        }
        EXPECT_LT(std::sqrt(num / den), 1e-5) << name << " step " << step;
        seq.push_back(next);
        logits = m->forward_cached(cache, {s}, {{next}});
      }
      EXPECT_EQ(cache.length(s), int64_t(prompt.size() + want.size()));
    }
  }
}

TEST(KvCache, BatchedRequestsJoiningMidFlightMatchSingleRequests) {
  std::string dir = std::string(SHOAL_TEST_DATA) + "/tiny_v3";
  auto m = Model::from_pretrained(dir, cpu_backend());
  auto doc = nlohmann::json::parse(std::ifstream(dir + "/generate.json"));
  std::vector<std::vector<int32_t>> prompts, want;
  for (auto& c : doc.at("cases")) {
    prompts.push_back(c.at("prompt_ids").get<std::vector<int32_t>>());
    want.push_back(c.at("greedy_ids").get<std::vector<int32_t>>());
  }
  LatentKvCache cache(m->config(), {8, 64});
  // Request r joins at step 3 r; every step decodes one token for each running request, and a
  // joining request's prompt is prefilled in the same forward.
  std::vector<int64_t> handle(prompts.size(), -1);
  std::vector<std::vector<int32_t>> got(prompts.size());
  std::vector<int32_t> pending(prompts.size(), -1);
  for (int step = 0; step < 30; ++step) {
    std::vector<int64_t> seqs;
    std::vector<std::vector<int32_t>> toks;
    std::vector<size_t> who;
    for (size_t r = 0; r < prompts.size(); ++r) {
      if (got[r].size() == want[r].size()) continue;
      if (handle[r] < 0 && step == int(3 * r)) {
        handle[r] = cache.add_sequence();
        seqs.push_back(handle[r]);
        toks.push_back(prompts[r]);
        who.push_back(r);
      } else if (handle[r] >= 0) {
        seqs.push_back(handle[r]);
        toks.push_back({pending[r]});
        who.push_back(r);
      }
    }
    if (seqs.empty()) continue;
    Tensor logits = m->forward_cached(cache, seqs, toks);
    int64_t row = -1;
    for (size_t i = 0; i < who.size(); ++i) {
      row += int64_t(toks[i].size());
      int32_t next = argmax_row(logits, row);
      got[who[i]].push_back(next);
      pending[who[i]] = next;
      if (got[who[i]].size() == want[who[i]].size()) cache.release(handle[who[i]]);
    }
  }
  for (size_t r = 0; r < prompts.size(); ++r) EXPECT_EQ(got[r], want[r]) << "request " << r;
}

TEST(KvCache, StoresOnlyTheLatentAndRunsOutCleanly) {
  std::string dir = std::string(SHOAL_TEST_DATA) + "/tiny_v3";
  auto m = Model::from_pretrained(dir, cpu_backend());
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
  cache.release(s);
  EXPECT_EQ(cache.free_pages(), 3);
  auto v32 = Model::from_pretrained(std::string(SHOAL_TEST_DATA) + "/tiny_v32", cpu_backend());
  LatentKvCache c32(v32->config());
  int64_t s32 = c32.add_sequence();
  EXPECT_THROW(v32->forward_cached(c32, {s32}, {{1, 2}}), Error);
}

}  // namespace
}  // namespace shoal
