// The continuous-batching scheduler: golden greedy continuations (V3 and V3.2) with requests
// joining mid-flight and chunked prefill, records (log-probs, sampling masks, routing) against a
// teacher-forced forward, prefix-shared groups against independent requests, seeds, streaming,
// stop ids and stop strings, cancellation, pool exhaustion and bad requests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/generate/scheduler.h"
#include "tests/engine/golden_generate.h"

namespace shoal {
namespace {

using testing::golden_cases;
using testing::GoldenCase;
using testing::load_golden;

GenerationRequest greedy(const std::vector<int32_t>& prompt, int64_t max_tokens) {
  GenerationRequest r;
  r.prompt = prompt;
  r.sampling.greedy = true;
  r.sampling.max_tokens = max_tokens;
  return r;
}

ForwardResult teacher_forced(Model& m, const std::vector<int32_t>& seq) {
  ForwardOptions o;
  o.need_backward = false;
  o.keep_logits = true;
  o.token_logprobs = true;
  return m.forward(Batch::next_token({seq}), o);
}

// Greedy ids equal the golden ones (the argmax of a full float64 forward at every step) with the
// requests submitted at different steps, prompts prefilled in chunks of at most 7 tokens next to
// running decodes, and a pool that holds only part of the requests at once.
TEST(Scheduler, GoldenGreedyWithRequestsJoiningMidFlightAndChunkedPrefill) {
  for (std::string name : {"tiny_v3", "tiny_v32"}) {
    auto m = load_golden(name);
    auto cases = golden_cases(name);
    SchedulerConfig cfg;
    cfg.max_batch_tokens = 7;
    cfg.max_sequences = 3;
    cfg.cache = {4, 24};
    Scheduler s(*m, cfg);
    std::vector<std::shared_ptr<RequestHandle>> h;
    for (int step = 0; h.size() < cases.size() || s.step(); ++step) {
      if (step % 4 == 0 && h.size() < cases.size())
        h.push_back(s.submit(greedy(cases[h.size()].prompt, int64_t(cases[h.size()].want.size()))));
      ASSERT_LE(s.committed_pages(), 24);
      ASSERT_LT(step, 500);
    }
    for (size_t i = 0; i < cases.size(); ++i) {
      Completion c = h[i]->wait()[0];
      EXPECT_EQ(c.finish, FinishReason::length) << c.error;
      EXPECT_EQ(c.ids(), cases[i].want) << name << " request " << i;
    }
    EXPECT_EQ(s.cache().free_pages(), 24);
    EXPECT_EQ(s.committed_pages(), 0);
  }
}

// Sampled tokens (temperature 1, no truncation) record the log-prob of the model's distribution at
// the step they were drawn, and the routing of that row: equal to an uncached forward over the
// sequence the token was drawn after. For V3, whose rows do not depend on the sequence length,
// also to one teacher-forced forward of the whole sequence. (Not for V3.2: torch.topk's tie-breaks
// make a row's DSA selection depend on the sequence length, so a teacher-forced forward over the
// longer sequence may attend differently; see docs/ENGINE.md.)
TEST(Scheduler, RecordsEqualATeacherForcedForward) {
  for (std::string name : {"tiny_v3", "tiny_v32"}) {
    auto m = load_golden(name);
    const ModelConfig& mc = m->config();
    Scheduler s(*m);
    GenerationRequest r;
    r.prompt = {11, 22, 33, 44, 55, 66, 77, 88, 99, 111};
    r.sampling.max_tokens = 14;
    r.sampling.seed = 5;
    r.record_routing = true;
    auto h = s.submit(r);
    s.run_until_idle();
    Completion c = h->wait()[0];
    ASSERT_EQ(c.tokens.size(), 14u);
    std::vector<int32_t> seq = r.prompt;
    for (auto id : c.ids()) seq.push_back(id);
    const int64_t p = int64_t(r.prompt.size()), k = mc.num_experts_per_tok;
    int64_t moe = 0;
    for (int64_t l = 0; l < mc.num_hidden_layers; ++l) moe += mc.is_moe_layer(l);
    ASSERT_EQ(int64_t(c.prompt_experts.size()), (p - 1) * moe * k);
    // Routing of position pos in a forward, as recorded: MoE layers in order, K ids each.
    auto routing_at = [&](const ForwardResult& f, int64_t pos) {
      std::vector<int32_t> out;
      for (auto& t : f.routing)
        if (t.defined()) out.insert(out.end(), t.i32() + pos * k, t.i32() + (pos + 1) * k);
      return out;
    };
    for (size_t t = 0; t < c.tokens.size(); ++t) {
      // The sequence the token was drawn after; its last row's distribution.
      std::vector<int32_t> upto(seq.begin(), seq.begin() + p + int64_t(t));
      ForwardResult f = teacher_forced(*m, upto);
      int64_t v = f.logits.size(1), last = f.logits.size(0) - 1;
      const float* row = f.logits.f32() + last * v;
      double mx = *std::max_element(row, row + v), z = 0;
      for (int64_t j = 0; j < v; ++j) z += std::exp(double(row[j]) - mx);
      double want = double(row[c.tokens[t].id]) - mx - std::log(z);
      EXPECT_NEAR(c.tokens[t].logprob, want, 1e-5) << name << " token " << t;
      EXPECT_EQ(c.tokens[t].experts, routing_at(f, last)) << name << " token " << t;
    }
    // The prompt's routing is that of a forward over the prompt (V3: over any longer sequence).
    ForwardResult whole = teacher_forced(*m, seq);
    ForwardResult prompt_only = teacher_forced(*m, r.prompt);
    for (int64_t pos = 0; pos + 1 < p; ++pos)
      EXPECT_EQ(std::vector<int32_t>(c.prompt_experts.begin() + pos * moe * k,
                                     c.prompt_experts.begin() + (pos + 1) * moe * k),
                routing_at(mc.is_v32() ? prompt_only : whole, pos))
          << name << " prompt position " << pos;
    if (!mc.is_v32()) {
      for (size_t t = 0; t < c.tokens.size(); ++t) {
        EXPECT_NEAR(c.tokens[t].logprob, whole.token_logprobs.f32()[p + int64_t(t) - 1], 1e-5);
        EXPECT_EQ(c.tokens[t].experts, routing_at(whole, p + int64_t(t) - 1));
      }
    }
  }
}

// A truncated sampler records its kept set; the log-prob renormalised over that set by the
// training-side op (keep-sampling-mask) is the recorded one.
TEST(Scheduler, SamplingMaskIsTheKeptSet) {
  auto m = load_golden("tiny_v3");
  Scheduler s(*m);
  GenerationRequest r;
  r.prompt = {3, 1, 4, 1, 5};
  r.sampling.top_k = 20;
  r.sampling.top_p = 0.9f;
  r.sampling.max_tokens = 8;
  r.sampling.seed = 9;
  r.record_sampling_mask = true;
  auto h = s.submit(r);
  s.run_until_idle();
  Completion c = h->wait()[0];
  std::vector<int32_t> seq = r.prompt;
  for (auto id : c.ids()) seq.push_back(id);
  int64_t n = int64_t(seq.size()), p = int64_t(r.prompt.size());
  Tensor offsets = Tensor::empty({n + 1}, DType::i64);
  std::vector<int32_t> ids;
  offsets.i64()[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t t = i - (p - 1);
    if (t >= 0 && t < int64_t(c.tokens.size())) {
      const auto& mask = c.tokens[size_t(t)].sampling_mask;
      ASSERT_FALSE(mask.empty());
      EXPECT_LE(mask.size(), 20u);
      EXPECT_TRUE(std::is_sorted(mask.begin(), mask.end()));
      EXPECT_TRUE(std::binary_search(mask.begin(), mask.end(), c.tokens[size_t(t)].id));
      ids.insert(ids.end(), mask.begin(), mask.end());
    } else {
      ids.push_back(seq[size_t(std::min(i + 1, n - 1))]);  // any set holding the label
    }
    offsets.i64()[i + 1] = int64_t(ids.size());
  }
  TokenSets sets{offsets, Tensor::empty({int64_t(ids.size())}, DType::i32)};
  std::copy(ids.begin(), ids.end(), sets.ids.i32());
  ForwardOptions o;
  o.need_backward = false;
  o.token_logprobs = true;
  o.sampling_sets = &sets;
  Tensor lp = m->forward(Batch::next_token({seq}), o).token_logprobs;
  for (size_t t = 0; t < c.tokens.size(); ++t)
    EXPECT_NEAR(c.tokens[t].logprob, lp.f32()[p - 1 + int64_t(t)], 1e-5) << t;
  // Without truncation the set is the whole vocabulary: recorded as empty.
  GenerationRequest full = r;
  full.sampling.top_k = 0;
  full.sampling.top_p = 1;
  auto h2 = s.submit(full);
  s.run_until_idle();
  Completion unmasked = h2->wait()[0];
  for (auto& t : unmasked.tokens) EXPECT_TRUE(t.sampling_mask.empty());
}

// G samples of one prompt prefill it once and share its pages; each sample equals an independent
// request with seed + i (greedy: every sample equals the golden continuation).
TEST(Scheduler, PrefixSharedGroupsEqualIndependentRequests) {
  for (std::string name : {"tiny_v3", "tiny_v32"}) {
    auto m = load_golden(name);
    auto cases = golden_cases(name);
    const GoldenCase& gc = cases[3];  // 40-token prompt: 10 pages of 4
    SchedulerConfig cfg;
    cfg.cache = {4, 200};
    for (bool sampled : {false, true}) {
      GenerationRequest r = greedy(gc.prompt, 16);
      r.sampling.greedy = !sampled;
      r.sampling.seed = 100;
      r.samples = 4;
      Scheduler group(*m, cfg);
      auto h = group.submit(r);
      group.step();  // prefill + first tokens: the samples hold the prompt's 10 pages together
      EXPECT_EQ(group.cache().free_pages(), 200 - 10);
      group.run_until_idle();
      auto got = h->wait();
      Scheduler indep(*m, cfg);
      std::vector<std::shared_ptr<RequestHandle>> hs;
      for (int i = 0; i < 4; ++i) {
        GenerationRequest one = r;
        one.samples = 1;
        one.sampling.seed = 100 + uint64_t(i);
        hs.push_back(indep.submit(one));
      }
      indep.run_until_idle();
      for (int i = 0; i < 4; ++i) {
        Completion want = hs[size_t(i)]->wait()[0];
        EXPECT_EQ(got[size_t(i)].ids(), want.ids()) << name << " sample " << i;
        auto a = got[size_t(i)].logprobs(), b = want.logprobs();
        for (size_t t = 0; t < a.size() && t < b.size(); ++t) EXPECT_NEAR(a[t], b[t], 1e-5);
        if (!sampled) {
          EXPECT_EQ(want.ids(), gc.want);
        }
      }
      if (sampled) {
        EXPECT_NE(got[0].ids(), got[1].ids());  // different seeds draw differently
      }
      EXPECT_EQ(group.cache().free_pages(), 200);
    }
  }
}

// The same request gives the same output: bit for bit in the same schedule; with the same ids (and
// log-probs to float rounding, as batch shapes change GEMM blocking) in a different batch.
TEST(Scheduler, IdenticalSeedsGiveIdenticalOutputs) {
  auto m = load_golden("tiny_v32");
  GenerationRequest r;
  r.prompt = {7, 8, 9};
  r.sampling.temperature = 1.3f;
  r.sampling.max_tokens = 20;
  r.sampling.seed = 77;
  Scheduler s1(*m), s2(*m);
  auto x = s1.submit(r), y = s2.submit(r);
  s1.run_until_idle();
  s2.run_until_idle();
  EXPECT_EQ(x->wait()[0].ids(), y->wait()[0].ids());
  EXPECT_EQ(x->wait()[0].logprobs(), y->wait()[0].logprobs());
  Scheduler s(*m);
  auto a = s.submit(r);
  s.step();
  auto b = s.submit(r);  // the same request, joining later in a different batch
  s.run_until_idle();
  EXPECT_EQ(a->wait()[0].ids(), x->wait()[0].ids());
  EXPECT_EQ(b->wait()[0].ids(), x->wait()[0].ids());
  auto la = a->wait()[0].logprobs(), lb = b->wait()[0].logprobs();
  for (size_t t = 0; t < la.size(); ++t) EXPECT_NEAR(la[t], lb[t], 1e-5);
}

TEST(Scheduler, StreamsFromABackgroundThreadAndStopsOnIdsAndStrings) {
  auto m = load_golden("tiny_v3");
  auto cases = golden_cases("tiny_v3");
  SchedulerConfig cfg;
  // A stand-in detokenizer: every id becomes "<id>".
  cfg.detokenize = [](std::span<const int32_t> ids) {
    std::string s;
    for (int32_t id : ids) s += "<" + std::to_string(id) + ">";
    return s;
  };
  Scheduler s(*m, cfg);
  s.start();
  const GoldenCase& gc = cases[2];
  GenerationRequest by_id = greedy(gc.prompt, 16);
  by_id.sampling.stop_ids = {gc.want[5]};
  GenerationRequest by_string = greedy(gc.prompt, 16);
  by_string.stop_strings = {"<" + std::to_string(gc.want[3]) + "><"};
  std::atomic<int> callbacks{0};
  GenerationRequest plain = greedy(gc.prompt, 16);
  plain.on_token = [&](int64_t, const TokenRecord&) { ++callbacks; };
  auto h1 = s.submit(by_id), h2 = s.submit(by_string), h3 = s.submit(plain);
  std::vector<int32_t> streamed;
  TokenRecord t;
  while (h3->next(0, t)) streamed.push_back(t.id);
  EXPECT_EQ(streamed, gc.want);
  Completion c1 = h1->wait()[0], c2 = h2->wait()[0], c3 = h3->wait()[0];
  s.stop();
  EXPECT_EQ(callbacks.load(), 16);
  EXPECT_EQ(c1.finish, FinishReason::stop_id);
  size_t first = size_t(std::find(gc.want.begin(), gc.want.end(), gc.want[5]) - gc.want.begin());
  EXPECT_EQ(c1.ids(), std::vector<int32_t>(gc.want.begin(), gc.want.begin() + int64_t(first) + 1));
  // The stop string is complete once the token after want[3] is out; the text ends before it.
  EXPECT_EQ(c2.finish, FinishReason::stop_string);
  EXPECT_EQ(c2.ids(), std::vector<int32_t>(gc.want.begin(), gc.want.begin() + 5));
  std::string want_text = cfg.detokenize(std::span(gc.want.data(), 3));
  EXPECT_EQ(c2.text, want_text);
  EXPECT_EQ(c3.text, cfg.detokenize(gc.want));
}

TEST(Scheduler, CancellationFreesPagesAndExhaustionWaits) {
  auto m = load_golden("tiny_v3");
  SchedulerConfig cfg;
  cfg.cache = {4, 12};  // room for one 30-token request at a time
  Scheduler s(*m, cfg);
  GenerationRequest r;
  r.prompt = {1, 2, 3, 4, 5, 6};
  r.sampling.max_tokens = 30;
  auto a = s.submit(r), b = s.submit(r);
  s.step();
  s.step();
  EXPECT_EQ(s.running_samples(), 1);  // b waits for pages
  EXPECT_EQ(s.waiting_requests(), 1);
  a->cancel();
  s.step();  // a leaves and frees its pages; b is admitted and prefilled
  Completion ca = a->wait()[0];
  EXPECT_EQ(ca.finish, FinishReason::cancelled);
  EXPECT_EQ(ca.tokens.size(), 2u);
  EXPECT_EQ(s.running_samples(), 1);
  s.run_until_idle();
  EXPECT_EQ(b->wait()[0].finish, FinishReason::length);
  EXPECT_EQ(b->wait()[0].tokens.size(), 30u);
  EXPECT_EQ(s.cache().free_pages(), 12);
  // A request that could never fit is refused, not queued forever.
  GenerationRequest huge = r;
  huge.sampling.max_tokens = 100;
  Completion ch = s.submit(huge)->wait()[0];
  EXPECT_EQ(ch.finish, FinishReason::error);
  EXPECT_NE(ch.error.find("pages"), std::string::npos) << ch.error;
}

TEST(Scheduler, BadRequestsFailAloneAndOthersFinish) {
  auto m = load_golden("tiny_v3");
  auto cases = golden_cases("tiny_v3");
  Scheduler s(*m);
  std::vector<GenerationRequest> bad(6, greedy({1, 2}, 4));
  bad[0].prompt = {};
  bad[1].prompt = {1, 5000};
  bad[2].sampling.greedy = false;
  bad[2].sampling.temperature = -1;
  bad[3].sampling.stop_ids = {99999};
  bad[4].sampling.max_tokens = 300;  // beyond the context of 256
  bad[5].stop_strings = {"x"};       // no detokenizer
  auto good = s.submit(greedy(cases[1].prompt, 16));
  for (auto& r : bad) {
    Completion c = s.submit(r)->wait()[0];
    EXPECT_EQ(c.finish, FinishReason::error);
    EXPECT_FALSE(c.error.empty());
  }
  s.run_until_idle();
  EXPECT_EQ(good->wait()[0].ids(), cases[1].want);
}

// top_logprobs: each token's log-prob under the model's own distribution and the most likely ids
// equal a teacher-forced forward's log-softmax, whatever the sampling temperature.
TEST(Scheduler, TopLogprobsAreTheModelsOwnDistribution) {
  auto m = load_golden("tiny_v3");
  auto cases = golden_cases("tiny_v3");
  Scheduler s(*m);
  GenerationRequest r;
  r.prompt = cases[0].prompt;
  r.sampling.temperature = 1.7f;
  r.sampling.top_k = 5;
  r.sampling.seed = 3;
  r.sampling.max_tokens = 6;
  r.top_logprobs = 4;
  auto h = s.submit(r);
  s.run_until_idle();
  Completion c = h->wait()[0];
  ASSERT_EQ(c.tokens.size(), 6u) << c.error;
  std::vector<int32_t> seq = r.prompt;
  for (auto& t : c.tokens) seq.push_back(t.id);
  ForwardResult f = teacher_forced(*m, seq);
  const int64_t V = m->config().vocab_size;
  for (size_t i = 0; i < c.tokens.size(); ++i) {
    const float* row = f.logits.data<float>() + (r.prompt.size() - 1 + i) * size_t(V);
    double mx = *std::max_element(row, row + V), z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
    auto lp = [&](int32_t id) { return double(row[id]) - mx - std::log(z); };
    const TokenRecord& t = c.tokens[i];
    EXPECT_NEAR(t.model_logprob, lp(t.id), 1e-4);
    ASSERT_EQ(t.top_logprobs.size(), 4u);
    for (size_t k = 0; k < 4; ++k) {
      EXPECT_NEAR(t.top_logprobs[k].second, lp(t.top_logprobs[k].first), 1e-4);
      if (k > 0) {
        EXPECT_GE(t.top_logprobs[k - 1].second, t.top_logprobs[k].second);
      }
    }
    int32_t argmax = int32_t(std::max_element(row, row + V) - row);
    EXPECT_EQ(t.top_logprobs[0].first, argmax);
  }
}

}  // namespace
}  // namespace shoal
