// The generation loop and sampler: greedy equals the golden continuations, recorded log-probs
// equal a teacher-forced forward, seeds reproduce, truncation keeps to its set, bad parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/generate/generate.h"

namespace shoal {
namespace {

std::unique_ptr<Model> tiny_v3() {
  return Model::from_pretrained(std::string(SHOAL_TEST_DATA) + "/tiny_v3", cpu_backend());
}

TEST(Generate, GreedyBatchEqualsGoldenContinuations) {
  auto m = tiny_v3();
  auto doc =
      nlohmann::json::parse(std::ifstream(std::string(SHOAL_TEST_DATA) + "/tiny_v3/generate.json"));
  std::vector<std::vector<int32_t>> prompts, want;
  for (auto& c : doc.at("cases")) {
    prompts.push_back(c.at("prompt_ids").get<std::vector<int32_t>>());
    want.push_back(c.at("greedy_ids").get<std::vector<int32_t>>());
  }
  SamplingParams p;
  p.greedy = true;
  p.max_tokens = 16;
  auto out = generate(*m, prompts, p);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(out[i].ids, want[i]) << "prompt " << i;
}

TEST(Generate, SampledLogprobsMatchATeacherForcedForwardAndSeedsReproduce) {
  auto m = tiny_v3();
  SamplingParams p;  // temperature 1, no truncation: the sampling distribution is the model's
  p.max_tokens = 12;
  p.seed = 42;
  std::vector<std::vector<int32_t>> prompts = {{5, 9, 100}, {7}};
  auto a = generate(*m, prompts, p), b = generate(*m, prompts, p);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(a[i].ids, b[i].ids);
    std::vector<int32_t> seq = prompts[i];
    seq.insert(seq.end(), a[i].ids.begin(), a[i].ids.end());
    ForwardOptions o;
    o.need_backward = false;
    o.token_logprobs = true;
    Tensor lp = m->forward(Batch::next_token({seq}), o).token_logprobs;
    for (size_t t = 0; t < a[i].ids.size(); ++t)
      EXPECT_NEAR(a[i].logprobs[t], lp.f32()[prompts[i].size() - 1 + t], 1e-5) << i << " " << t;
  }
  // A request's result does not depend on the batch it ran in (request 0 keeps seed + 0).
  EXPECT_EQ(generate(*m, {prompts[0]}, p)[0].ids, a[0].ids);
}

TEST(Generate, TruncationKeepsToItsSet) {
  std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.5f, -1.0f};
  SamplingParams p;
  p.top_k = 2;
  std::mt19937_64 rng(1);
  std::set<int32_t> seen;
  for (int i = 0; i < 300; ++i) {
    auto [id, lp] = sample_token(logits.data(), 5, p, rng);
    seen.insert(id);
    double z = std::exp(3.0) + std::exp(2.5);
    EXPECT_NEAR(lp, logits[size_t(id)] - std::log(z), 1e-6);
  }
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));
  SamplingParams q;
  q.top_p = 0.5f;  // the best token alone has p = e^3 / sum > 0.5
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_token(logits.data(), 5, q, rng).first, 1);
  SamplingParams g;
  g.greedy = true;
  EXPECT_EQ(sample_token(logits.data(), 5, g, rng).first, 1);
}

TEST(Generate, BadRequestsAreRefused) {
  auto m = tiny_v3();
  SamplingParams p;
  p.temperature = 0;
  EXPECT_THROW(generate(*m, {{1, 2}}, p), Error);
  p = {};
  p.top_p = 1.5f;
  EXPECT_THROW(generate(*m, {{1, 2}}, p), Error);
  p = {};
  EXPECT_THROW(generate(*m, {{}}, p), Error);
  EXPECT_THROW(generate(*m, {{5000}}, p), Error);  // outside the vocabulary
  p.stop_ids = {-3};
  EXPECT_THROW(generate(*m, {{1}}, p), Error);
  p = {};
  p.max_tokens = 1000;  // beyond max_position_embeddings 256
  EXPECT_THROW(generate(*m, {{1}}, p), Error);
}

}  // namespace
}  // namespace shoal
