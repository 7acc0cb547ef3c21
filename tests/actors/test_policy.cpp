// The engine owner's policy on the tiny golden model: generation through the scheduler equals
// greedy decoding, and each kind of training step moves the log-probs the way its objective says;
// a saved policy loads back exactly.
#include <gtest/gtest.h>

#include <filesystem>

#include "actors/policy.h"
#include "engine/generate/generate.h"

namespace shoal::actors {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<Model> tiny() {
  return Model::from_pretrained(std::string(SHOAL_TEST_DATA) + "/tiny_v3", cpu_backend());
}

rl::Sample sample(std::vector<int32_t> prompt, std::vector<int32_t> response) {
  rl::Sample s;
  s.tokens = prompt;
  s.loss_mask.assign(prompt.size(), 0);
  for (int32_t id : response) {
    s.tokens.push_back(id);
    s.loss_mask.push_back(1);
  }
  return s;
}

TEST(Policy, GreedyGenerationEqualsTheGenerateLoop) {
  std::vector<int32_t> prompt = {5, 17, 42, 99, 3};
  auto reference = tiny();
  SamplingParams p;
  p.greedy = true;
  p.max_tokens = 12;
  std::vector<Generation> want = generate(*reference, {prompt}, p);
  Policy policy(tiny(), {});
  GenOutput got = policy.generate(prompt, p);
  EXPECT_EQ(got.ids, want[0].ids);
  ASSERT_EQ(got.logprobs.size(), want[0].logprobs.size());
  for (size_t i = 0; i < got.logprobs.size(); ++i)
    EXPECT_NEAR(got.logprobs[i], want[0].logprobs[i], 1e-5);
  EXPECT_EQ(got.weight_version, 0);
}

TEST(Policy, SftRaisesTheLikelihoodOfTheDemonstration) {
  Policy policy(tiny(), {});
  std::vector<rl::Sample> demo = {sample({5, 6, 7}, {100, 200, 300, 1})};
  double before = policy.mean_logprob(demo);
  policy.pause_generation();
  for (int i = 0; i < 10; ++i) policy.sft_step(demo, 1e-2);
  policy.resume_generation();
  double after = policy.mean_logprob(demo);
  EXPECT_GT(after, before + 1.0) << before << " -> " << after;
  EXPECT_EQ(policy.weight_version(), 10);
}

TEST(Policy, GrpoStepAscendsTheAdvantageWeightedLikelihood) {
  Policy policy(tiny(), {});
  rl::Sample good = sample({5, 6, 7}, {100, 200, 1});
  rl::Sample bad = sample({5, 6, 7}, {300, 400, 1});
  // Log-probs as recorded when sampling: those of the current policy (on-policy).
  auto recorded = [&](const rl::Sample& s) {
    Batch b = rl::pack({s});
    ForwardOptions fo;
    fo.token_logprobs = true;
    fo.need_backward = false;
    ForwardResult r = policy.model().forward(b, fo);
    std::vector<float> per_token(s.tokens.size(), 0.0f);
    for (size_t t = 0; t + 1 < s.tokens.size(); ++t)
      if (s.loss_mask[t + 1]) per_token[t + 1] = r.token_logprobs.data<float>()[t];
    return per_token;
  };
  std::vector<GrpoSample> batch = {{good, recorded(good), +1.0, true},
                                   {bad, recorded(bad), -1.0, true}};
  double good0 = policy.mean_logprob({good}), bad0 = policy.mean_logprob({bad});
  policy.pause_generation();
  Metrics m = policy.grpo_step(batch, {}, 1e-3);
  policy.resume_generation();
  EXPECT_NEAR(m["ratio_mean"], 1.0, 1e-5);  // on-policy: every ratio is 1 before the step
  // A small step ascends the objective: sum_i A_i log p_i (equal lengths, token mean) grows.
  // (Each log-prob alone need not move its own way: the samples share parameters.)
  double gain = (policy.mean_logprob({good}) - good0) - (policy.mean_logprob({bad}) - bad0);
  EXPECT_GT(gain, 0.0);
}

TEST(Policy, DpoWidensTheMarginAndSaveLoadRoundTrips) {
  Policy policy(tiny(), {});
  std::vector<rl::Sample> pair = {sample({5, 6, 7}, {100, 200, 1}),
                                  sample({5, 6, 7}, {300, 400, 1})};
  auto margin = [&] { return policy.mean_logprob({pair[0]}) - policy.mean_logprob({pair[1]}); };
  double m0 = margin();
  policy.pause_generation();
  for (int i = 0; i < 3; ++i) policy.dpo_step(pair, {}, 1e-2);
  policy.resume_generation();
  EXPECT_GT(margin(), m0 + 0.1);

  fs::path dir = fs::temp_directory_path() / ("shoal-policy-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  policy.save(dir.string());
  Policy loaded(tiny(), {});
  loaded.load(dir.string());
  EXPECT_EQ(loaded.weight_version(), 3);
  EXPECT_DOUBLE_EQ(loaded.mean_logprob({pair[0]}), policy.mean_logprob({pair[0]}));
  // The reference came back too: the next DPO step is the same on both.
  loaded.pause_generation();
  policy.pause_generation();
  Metrics a = policy.dpo_step(pair, {}, 1e-2), b = loaded.dpo_step(pair, {}, 1e-2);
  EXPECT_DOUBLE_EQ(a["loss"], b["loss"]);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shoal::actors
