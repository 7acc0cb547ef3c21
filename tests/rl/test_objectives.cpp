// The training objectives: values worked out by hand on small cases, invariants, finite-difference
// gradients through the real engine on a tiny model, keep-routing and keep-sampling-mask, bad
// input, and an end-to-end check that GRPO raises a toy reward.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/model/model.h"
#include "engine/optim/adamw.h"
#include "engine/tokenizer/tokenizer.h"
#include "rl/batch.h"
#include "rl/dpo.h"
#include "rl/grpo.h"
#include "rl/reference.h"
#include "rl/sft.h"

namespace shoal::rl {
namespace {

Tensor row_tensor(const std::vector<float>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::f32);
  for (size_t i = 0; i < v.size(); ++i) t.f32()[i] = v[i];
  return t;
}

// Two sequences: [p, a, b] with a, b model-produced (2 response rows: 0 and 1), and
// [p, q, c] with only c model-produced (1 response row: 4).
Batch two_sequences() {
  return pack({{{1, 2, 3}, {0, 1, 1}}, {{1, 4, 5}, {0, 0, 1}}});
}

TEST(RlBatch, PackMasksAllButModelTokensAndKeepsSequencesApart) {
  Batch b = two_sequences();
  ASSERT_EQ(b.tokens(), 6);
  EXPECT_EQ(b.cu_seqlens, (std::vector<int64_t>{0, 3, 6}));
  std::vector<int32_t> labels(b.labels.i32(), b.labels.i32() + 6);
  EXPECT_EQ(labels, (std::vector<int32_t>{2, 3, -100, -100, 5, -100}));
  EXPECT_THROW(pack({{{1, 2}, {0}}}), Error);
  EXPECT_THROW(pack({{{}, {}}}), Error);
  auto plan = plan_batches({{{1, 2, 3}, {0, 1, 1}}, {{1}, {0}}, {{1, 2}, {0, 1}}}, 4);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0], (std::vector<size_t>{0, 1}));
  EXPECT_EQ(plan[1], (std::vector<size_t>{2}));
  EXPECT_THROW(plan_batches({{{1, 2, 3}, {0, 1, 1}}}, 2), Error);
}

TEST(RlObjectives, SftByHand) {
  Batch b = two_sequences();
  Tensor lp = row_tensor({-1.0f, -2.0f, 0, 0, -4.0f, 0});
  ObjectiveResult tok = sft_loss(b, lp, Averaging::per_token);
  EXPECT_NEAR(tok.loss, (1 + 2 + 4) / 3.0, 1e-9);
  EXPECT_FLOAT_EQ(tok.dlogp.f32()[0], -1.0f / 3);
  EXPECT_FLOAT_EQ(tok.dlogp.f32()[2], 0.0f);
  ObjectiveResult seq = sft_loss(b, lp, Averaging::per_sequence);
  EXPECT_NEAR(seq.loss, ((1 + 2) / 2.0 + 4) / 2.0, 1e-9);
  EXPECT_FLOAT_EQ(seq.dlogp.f32()[4], -0.5f);
}

TEST(RlObjectives, DpoByHandAndAtTheReference) {
  Batch b = two_sequences();  // (chosen, rejected)
  Tensor lp = row_tensor({-1.0f, -2.0f, 0, 0, -4.0f, 0});
  std::vector<double> pi = sequence_logprobs(b, lp);
  EXPECT_DOUBLE_EQ(pi[0], -3.0);
  EXPECT_DOUBLE_EQ(pi[1], -4.0);
  // Policy = reference: h = 0, loss = log 2.
  ObjectiveResult same = dpo_loss(b, lp, pi, {});
  EXPECT_NEAR(same.loss, std::log(2.0), 1e-12);
  // h = (-3 - -3.5) - (-4 - -3) = 1.5; beta 0.5: loss = -log sigma(0.75).
  DpoConfig c;
  c.beta = 0.5;
  ObjectiveResult r = dpo_loss(b, lp, {-3.5, -3.0}, c);
  EXPECT_NEAR(r.loss, std::log1p(std::exp(-0.75)), 1e-12);
  double dh = -0.5 / (1 + std::exp(0.75));
  EXPECT_NEAR(r.dlogp.f32()[0], dh, 1e-7);
  EXPECT_NEAR(r.dlogp.f32()[4], -dh, 1e-7);
  EXPECT_EQ(r.metrics["accuracy"], 1.0);
  c.variant = DpoVariant::ipo;
  EXPECT_NEAR(dpo_loss(b, lp, {-3.5, -3.0}, c).loss, (1.5 - 1.0) * (1.5 - 1.0), 1e-12);
  c.variant = DpoVariant::sigmoid;
  c.label_smoothing = 0.1;
  EXPECT_NEAR(dpo_loss(b, lp, {-3.5, -3.0}, c).loss,
              0.9 * std::log1p(std::exp(-0.75)) + 0.1 * std::log1p(std::exp(0.75)), 1e-12);
  EXPECT_THROW(dpo_loss(b, lp, {-3.5}, {}), Error);
  EXPECT_THROW(dpo_loss(b, lp, {-3.5, NAN}, {}), Error);
}

TEST(RlObjectives, AdvantagesByHand) {
  std::vector<double> r = {1, 0, 0, 1, 2, 2};
  std::vector<int64_t> g = {7, 7, 7, 7, 9, 9};
  Advantages a = compute_advantages(r, g, {}, {});
  EXPECT_DOUBLE_EQ(a.values[0], 0.5);
  EXPECT_DOUBLE_EQ(a.values[1], -0.5);
  EXPECT_DOUBLE_EQ(a.values[4], 0.0);
  AdvantageConfig s;
  s.mode = AdvantageMode::mean_std;
  s.std_eps = 0;
  EXPECT_DOUBLE_EQ(compute_advantages(r, g, {}, s).values[0], 1.0);  // std 0.5
  AdvantageConfig l;
  l.mode = AdvantageMode::rloo;
  EXPECT_DOUBLE_EQ(compute_advantages(r, g, {}, l).values[0], 1 - 1.0 / 3);
  AdvantageConfig f;
  f.filter_equal = true;
  Advantages af = compute_advantages(r, g, {}, f);
  EXPECT_EQ(af.keep, (std::vector<uint8_t>{1, 1, 1, 1, 0, 0}));
  AdvantageConfig o;
  o.overlong_max_len = 10;
  o.overlong_buffer = 4;
  Advantages ao = compute_advantages({1, 1, 1}, {0, 0, 0}, {5, 8, 12}, o);
  EXPECT_DOUBLE_EQ(ao.rewards[0], 1.0);
  EXPECT_DOUBLE_EQ(ao.rewards[1], 0.5);
  EXPECT_DOUBLE_EQ(ao.rewards[2], 0.0);
  EXPECT_THROW(compute_advantages({1, NAN}, {0, 0}, {}, {}), Error);
  EXPECT_THROW(compute_advantages({1, 2}, {0}, {}, {}), Error);
  EXPECT_THROW(compute_advantages({}, {}, {}, {}), Error);
  EXPECT_THROW(compute_advantages({1, 2}, {0, 1}, {}, l), Error);  // RLOO needs groups of >= 2
}

TEST(RlObjectives, GrpoByHand) {
  Batch b = two_sequences();
  GrpoInputs in;
  in.logp = row_tensor({std::log(0.55f), std::log(0.2f), 0, 0, std::log(0.5f), 0});
  in.logp_old = row_tensor({std::log(0.5f), std::log(0.1f), 0, 0, std::log(0.5f), 0});
  in.advantages = {1.0, -1.0};
  GrpoConfig c;  // clip 0.2, token mean
  ObjectiveResult r = grpo_loss(b, in, c);
  // rho = 1.1 (A=+1: J = 1.1), 2.0 (A=+1: clipped, J = 1.2), 1.0 (A=-1: J = -1).
  EXPECT_NEAR(r.loss, -(1.1 + 1.2 - 1.0) / 3.0, 1e-6);
  EXPECT_NEAR(r.dlogp.f32()[0], -1.1 / 3.0, 1e-6);  // rho * A
  EXPECT_EQ(r.dlogp.f32()[1], 0.0f);                // clipped: no gradient
  EXPECT_NEAR(r.dlogp.f32()[4], 1.0 / 3.0, 1e-6);
  EXPECT_NEAR(r.metrics["clip_fraction"], 1.0 / 3.0, 1e-9);
  EXPECT_NEAR(r.metrics["ratio_mean"], (1.1 + 2.0 + 1.0) / 3.0, 1e-6);
  // Sequence mean: ((1.1 + 1.2) / 2 + (-1)) / 2.
  c.aggregation = Aggregation::sequence_mean;
  EXPECT_NEAR(grpo_loss(b, in, c).loss, -((1.1 + 1.2) / 2 - 1.0) / 2.0, 1e-6);
  // Length-unbiased with a constant 4: (2.3 - 1) / (4 * 2).
  c.aggregation = Aggregation::length_unbiased;
  c.length_norm = 4;
  EXPECT_NEAR(grpo_loss(b, in, c).loss, -(2.3 - 1.0) / 8.0, 1e-6);
  // Clip-higher: eps_high 1.5 keeps rho = 2 unclipped.
  GrpoConfig h;
  h.clip_high = 1.5;
  ObjectiveResult rh = grpo_loss(b, in, h);
  EXPECT_NEAR(rh.dlogp.f32()[1], -2.0 / 3.0, 1e-6);
}

TEST(RlObjectives, GrpoKlEstimatorsByHand) {
  Batch b = pack({{{1, 2}, {0, 1}}});
  GrpoInputs in;
  in.logp = row_tensor({std::log(0.5f), 0});
  in.logp_old = row_tensor({std::log(0.25f), 0});
  in.logp_ref = row_tensor({std::log(0.25f), 0});
  in.advantages = {0.0};
  GrpoConfig c;
  c.kl_coef = 1.0;
  double d = std::log(0.5);  // log(ref / pi)
  struct Case {
    KlEstimator e;
    double k;
  } cases[] = {{KlEstimator::k1, -d},
               {KlEstimator::k2, 0.5 * d * d},
               {KlEstimator::k3, std::exp(d) - d - 1},
               {KlEstimator::k3_unbiased, 2.0 * (std::exp(d) - d - 1)}};  // pi / pi_old = 2
  for (auto& cs : cases) {
    c.kl = cs.e;
    ObjectiveResult r = grpo_loss(b, in, c);
    EXPECT_NEAR(r.loss, cs.k, 1e-6) << int(cs.e);
    EXPECT_NEAR(r.metrics["kl_mean"], cs.k, 1e-6);
  }
  // At the reference every estimator is zero; k2 and k3 (plain and unbiased) also have zero
  // gradient there, while k1 = log(pi / ref) always has gradient 1 (zero only in expectation).
  in.logp_ref = in.logp;
  in.logp_old = in.logp;
  for (auto& cs : cases) {
    c.kl = cs.e;
    ObjectiveResult r = grpo_loss(b, in, c);
    EXPECT_NEAR(r.loss, 0.0, 1e-7);
    EXPECT_NEAR(r.dlogp.f32()[0], cs.e == KlEstimator::k1 ? 1.0 : 0.0, 1e-7);
  }
}

TEST(RlObjectives, ZeroAdvantagesGiveZeroPolicyGradient) {
  Batch b = two_sequences();
  GrpoInputs in;
  in.logp = row_tensor({-0.3f, -1.7f, 0, 0, -0.9f, 0});
  in.logp_old = row_tensor({-0.5f, -1.2f, 0, 0, -1.0f, 0});
  in.advantages = {0.0, 0.0};
  ObjectiveResult r = grpo_loss(b, in, {});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(r.dlogp.f32()[i], 0.0f);
}

TEST(RlObjectives, OffPolicyMaskingDropsExactlyTheIntendedSequences) {
  // Three single-token sequences: (A < 0, far off-policy) is dropped; (A > 0, far) and
  // (A < 0, near) stay.
  Batch b = pack({{{1, 2}, {0, 1}}, {{1, 3}, {0, 1}}, {{1, 4}, {0, 1}}});
  GrpoInputs in;
  in.logp = row_tensor({-3.0f, 0, -3.0f, 0, -1.05f, 0});
  in.logp_old = row_tensor({-1.0f, 0, -1.0f, 0, -1.0f, 0});
  in.advantages = {-1.0, 1.0, -1.0};
  GrpoConfig c;
  c.clip_low = 0.99;  // isolate the masking from clipping
  c.clip_high = 100;
  c.off_policy_mask = true;
  c.off_policy_delta = 0.5;
  ObjectiveResult r = grpo_loss(b, in, c);
  EXPECT_EQ(r.dlogp.f32()[0], 0.0f);
  EXPECT_NE(r.dlogp.f32()[2], 0.0f);
  EXPECT_NE(r.dlogp.f32()[4], 0.0f);
  EXPECT_NEAR(r.metrics["masked_fraction"], 1.0 / 3.0, 1e-12);
  in.keep = {1, 0, 1};  // filtered group
  ObjectiveResult r2 = grpo_loss(b, in, c);
  EXPECT_EQ(r2.dlogp.f32()[2], 0.0f);
  in.advantages = {1.0, NAN, 1.0};
  EXPECT_THROW(grpo_loss(b, in, c), Error);
  in.advantages = {1.0, 1.0};
  EXPECT_THROW(grpo_loss(b, in, c), Error);
}

// --- through the engine ---

ModelConfig tiny(int64_t vocab) {
  nlohmann::json j = {{"model_type", "deepseek_v3"},
                      {"vocab_size", vocab},
                      {"hidden_size", 32},
                      {"num_hidden_layers", 2},
                      {"first_k_dense_replace", 1},
                      {"intermediate_size", 48},
                      {"num_attention_heads", 2},
                      {"q_lora_rank", 16},
                      {"kv_lora_rank", 12},
                      {"qk_nope_head_dim", 8},
                      {"qk_rope_head_dim", 4},
                      {"v_head_dim", 8},
                      {"n_routed_experts", 4},
                      {"num_experts_per_tok", 2},
                      {"n_shared_experts", 1},
                      {"moe_intermediate_size", 16},
                      {"n_group", 2},
                      {"topk_group", 1},
                      {"max_position_embeddings", 64}};
  return ModelConfig::from_json(j, "test");
}

// Checks d(objective(logp(theta)))/d(theta) from backward(dlogp) against central differences.
template <typename Objective>
void check_through_engine(Objective objective, const Batch& b, const TokenSets* sets = nullptr) {
  int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  Model m(tiny(24), cpu_backend());
  m.init_random(3, 0.3f);
  ForwardOptions o;
  o.token_logprobs = true;
  o.sampling_sets = sets;
  auto loss_at = [&]() {
    ForwardOptions fo = o;
    fo.need_backward = false;
    return objective(m.forward(b, fo).token_logprobs).loss;
  };
  m.params().zero_grads();
  ForwardResult r = m.forward(b, o);
  ObjectiveResult obj = objective(r.token_logprobs);
  m.backward(&obj.dlogp);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (const char* name :
       {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_b_proj.weight",
        "model.layers.1.mlp.experts.gate_up_proj"}) {
    Param& p = m.params().get(name);
    Tensor v = Tensor::empty(p.value.shape(), DType::f32);
    double vn = 0, pn = 0, ana = 0;
    for (int64_t i = 0; i < v.numel(); ++i) {
      v.f32()[i] = nd(rng);
      vn += double(v.f32()[i]) * v.f32()[i];
      pn += double(p.value.f32()[i]) * p.value.f32()[i];
      ana += double(p.grad.f32()[i]) * v.f32()[i];
    }
    double h = 1e-3 * std::sqrt(pn / vn);
    Tensor saved = p.value.clone();
    auto at = [&](double s) {
      for (int64_t i = 0; i < v.numel(); ++i)
        p.value.f32()[i] = saved.f32()[i] + float(s * v.f32()[i]);
      return loss_at();
    };
    double f1 = at(h), f2 = at(-h), f3 = at(2 * h), f4 = at(-2 * h);
    p.value.copy_from(saved);
    double num = (8 * (f1 - f2) - (f3 - f4)) / (12 * h);
    double rel = std::fabs(num - ana) / std::max({std::fabs(num), std::fabs(ana), 1e-5});
    // f32 forward, fourth-order differences: ~1e-3 agreement (a routing flip would show as a
    // large error; the perturbations here are small enough that none occurs).
    EXPECT_LT(rel, 2e-2) << name << " numeric " << num << " analytic " << ana;
  }
  omp_set_num_threads(prev);
}

Batch engine_batch() {
  return pack({{{0, 5, 7, 9, 3}, {0, 0, 1, 1, 1}},
               {{0, 6, 2, 11, 4}, {0, 0, 1, 1, 1}},
               {{0, 8, 8, 1}, {0, 1, 1, 1}},
               {{0, 8, 3, 2}, {0, 1, 1, 1}}});
}

TEST(RlEngine, SftGradientsByFiniteDifferences) {
  Batch b = engine_batch();
  check_through_engine([&](const Tensor& lp) { return sft_loss(b, lp, Averaging::per_sequence); },
                       b);
}

TEST(RlEngine, DpoGradientsByFiniteDifferences) {
  Batch b = engine_batch();
  std::vector<double> ref = {-9.0, -10.5, -7.0, -6.5};
  DpoConfig c;
  c.beta = 0.3;
  check_through_engine([&](const Tensor& lp) { return dpo_loss(b, lp, ref, c); }, b);
}

TEST(RlEngine, GrpoGradientsByFiniteDifferences) {
  Batch b = engine_batch();
  // logp_old and logp_ref near the policy's own values (ratios inside the clip range).
  Model m(tiny(24), cpu_backend());
  m.init_random(3, 0.3f);
  ForwardOptions o;
  o.token_logprobs = true;
  o.need_backward = false;
  Tensor base = m.forward(b, o).token_logprobs;
  GrpoInputs in;
  in.logp_old = base.clone();
  in.logp_ref = base.clone();
  for (int64_t i = 0; i < base.numel(); ++i) {
    in.logp_old.f32()[i] += 0.05f * float(std::sin(3.0 * double(i)));
    in.logp_ref.f32()[i] += 0.3f * float(std::cos(2.0 * double(i)));
  }
  in.advantages = {0.7, -0.4, 1.1, -1.4};
  GrpoConfig c;
  c.kl = KlEstimator::k3_unbiased;
  c.kl_coef = 0.5;
  c.aggregation = Aggregation::sequence_mean;
  check_through_engine(
      [&](const Tensor& lp) {
        GrpoInputs x = in;
        x.logp = lp;
        return grpo_loss(b, x, c);
      },
      b);
}

TEST(RlEngine, KeepSamplingMaskRenormalisesAndDifferentiates) {
  Batch b = engine_batch();
  // Each labelled row may use its label and two fixed other ids.
  TokenSets sets;
  int64_t n = b.tokens();
  std::vector<int64_t> off = {0};
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < n; ++i) {
    int32_t lab = b.labels.i32()[i];
    if (lab != -100) {
      ids.push_back(lab);
      ids.push_back((lab + 1) % 24);
      ids.push_back((lab + 7) % 24);
    }
    off.push_back(int64_t(ids.size()));
  }
  sets.offsets = Tensor::empty({n + 1}, DType::i64);
  sets.ids = Tensor::empty({int64_t(ids.size())}, DType::i32);
  std::copy(off.begin(), off.end(), sets.offsets.i64());
  std::copy(ids.begin(), ids.end(), sets.ids.i32());
  Model m(tiny(24), cpu_backend());
  m.init_random(3, 0.3f);
  ForwardOptions o;
  o.need_backward = false;
  o.keep_logits = true;
  o.token_logprobs = true;
  o.sampling_sets = &sets;
  ForwardResult r = m.forward(b, o);
  for (int64_t i = 0; i < n; ++i) {
    int32_t lab = b.labels.i32()[i];
    if (lab == -100) continue;
    const float* x = r.logits.f32() + i * 24;
    double z = std::exp(double(x[lab])) + std::exp(double(x[(lab + 1) % 24])) +
               std::exp(double(x[(lab + 7) % 24]));
    EXPECT_NEAR(r.token_logprobs.f32()[i], double(x[lab]) - std::log(z), 1e-5);
  }
  check_through_engine([&](const Tensor& lp) { return sft_loss(b, lp); }, b, &sets);
  // A set without its label is refused.
  sets.ids.i32()[0] = (sets.ids.i32()[0] + 3) % 24;
  EXPECT_THROW(m.forward(b, o), Error);
}

TEST(RlEngine, KeepRoutingReplaysTheSampledExpertsAfterAnUpdate) {
  Model m(tiny(24), cpu_backend());
  m.init_random(8, 0.5f);
  Batch b = engine_batch();
  ForwardOptions o;
  o.need_backward = false;
  ForwardResult sampled = m.forward(b, o);
  // Change the router weights substantially: free routing now differs...
  Tensor& gate = m.params().get("model.layers.1.mlp.gate.weight").value;
  for (int64_t i = 0; i < gate.numel(); ++i) gate.f32()[i] = -gate.f32()[i];
  ForwardResult free_run = m.forward(b, o);
  const Tensor& a = sampled.routing[1];
  const Tensor& f = free_run.routing[1];
  EXPECT_FALSE(std::equal(a.i32(), a.i32() + a.numel(), f.i32()));
  // ...but with the recorded routing replayed the experts are the sampled ones.
  o.replay_routing = &sampled.routing;
  ForwardResult replay = m.forward(b, o);
  EXPECT_TRUE(std::equal(a.i32(), a.i32() + a.numel(), replay.routing[1].i32()));
}

TEST(RlEngine, GrpoRaisesAToyReward) {
  // Reward: the share of generated tokens equal to 5. Sampling runs the full forward per step
  // (no KV cache: the generation engine is separate work). 4 groups x 8 samples of 6 tokens.
  int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  const int32_t target = 5, vocab = 16, gen = 6, groups = 4, per_group = 8;
  Model m(tiny(vocab), cpu_backend());
  m.init_random(1, 0.1f);
  AdamWConfig ac;
  ac.weight_decay = 0;
  AdamW opt(m.params(), cpu_backend(), ac);
  std::mt19937 rng(7);
  std::vector<double> mean_reward;
  for (int step = 0; step < 40; ++step) {
    std::vector<std::vector<int32_t>> seqs(groups * per_group);
    std::vector<std::vector<float>> old(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) seqs[i] = {int32_t(i / per_group)};  // prompt = group
    for (int t = 0; t < gen; ++t) {
      ForwardOptions fo;
      fo.need_backward = false;
      fo.keep_logits = true;
      Batch pb = Batch::next_token(seqs);
      ForwardResult r = m.forward(pb, fo);
      for (size_t i = 0; i < seqs.size(); ++i) {
        const float* x = r.logits.f32() + (pb.cu_seqlens[i + 1] - 1) * vocab;
        std::vector<double> p(vocab);
        double mx = *std::max_element(x, x + vocab), z = 0;
        for (int v = 0; v < vocab; ++v) z += p[size_t(v)] = std::exp(double(x[v]) - mx);
        std::discrete_distribution<int> d(p.begin(), p.end());
        int tok = d(rng);
        seqs[i].push_back(tok);
        old[i].push_back(float(std::log(p[size_t(tok)] / z)));
      }
    }
    std::vector<Sample> samples;
    std::vector<double> rewards;
    std::vector<int64_t> gids;
    double mr = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Sample s{seqs[i], std::vector<uint8_t>(seqs[i].size(), 1)};
      s.loss_mask[0] = 0;
      samples.push_back(s);
      double rwd = 0;
      for (int t = 1; t <= gen; ++t) rwd += seqs[i][size_t(t)] == target;
      rewards.push_back(rwd / gen);
      gids.push_back(int64_t(i / per_group));
      mr += rwd / gen / double(seqs.size());
    }
    mean_reward.push_back(mr);
    Batch b = pack(samples);
    Advantages adv = compute_advantages(rewards, gids, {}, {});
    GrpoInputs in;
    in.logp_old = Tensor::zeros({b.tokens()}, DType::f32);
    for (size_t i = 0; i < seqs.size(); ++i)
      for (int t = 0; t < gen; ++t) in.logp_old.f32()[b.cu_seqlens[i] + t] = old[i][size_t(t)];
    in.advantages = adv.values;
    m.params().zero_grads();
    ForwardOptions o;
    o.token_logprobs = true;
    ForwardResult r = m.forward(b, o);
    in.logp = r.token_logprobs;
    ObjectiveResult obj = grpo_loss(b, in, {});
    // On-policy: the recorded log-probs are the current ones (ratio 1 up to rounding).
    if (step == 0) {
      EXPECT_NEAR(obj.metrics["ratio_mean"], 1.0, 1e-4);
    }
    m.backward(&obj.dlogp);
    opt.step(1e-2f);
  }
  double first = (mean_reward[0] + mean_reward[1] + mean_reward[2]) / 3;
  double last = (mean_reward[37] + mean_reward[38] + mean_reward[39]) / 3;
  // Uniform sampling over 16 tokens gives ~0.06; GRPO must clearly raise it.
  EXPECT_LT(first, 0.2);
  EXPECT_GT(last, first + 0.3) << "reward went from " << first << " to " << last;
  omp_set_num_threads(prev);
}

}  // namespace
}  // namespace shoal::rl

namespace shoal::rl {
namespace {

TEST(RlBatch, ConversationLossMaskCoversOnlyAssistantTurns) {
  // The fetched DeepSeek-V3 tokenizer (scripts/install-deps).
  Tokenizer tok = Tokenizer::load(std::string(SHOAL_DATA_DIR) + "/tokenizers/deepseek_v3");
  auto messages = chat_messages_from_json(nlohmann::json::parse(R"([
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
      "function": {"name": "calculator", "arguments": "{\"expr\": \"2+2\"}"}}]},
    {"role": "tool", "content": "4"},
    {"role": "assistant", "content": "4."}])"));
  Sample s = sample_from_chat(tok, messages);
  ASSERT_EQ(s.tokens.size(), s.loss_mask.size());
  std::vector<int32_t> model_ids, other_ids;
  for (size_t i = 0; i < s.tokens.size(); ++i)
    (s.loss_mask[i] ? model_ids : other_ids).push_back(s.tokens[i]);
  std::string model_text = tok.decode(model_ids), other_text = tok.decode(other_ids);
  // The model produced the tool call and the final answer, each closed by end-of-sentence...
  EXPECT_NE(model_text.find("calculator"), std::string::npos) << model_text;
  EXPECT_NE(model_text.find("4."), std::string::npos) << model_text;
  EXPECT_NE(model_text.find("<｜end▁of▁sentence｜>"), std::string::npos) << model_text;
  // ...but not the system prompt, the question or the tool's output.
  EXPECT_EQ(model_text.find("terse"), std::string::npos) << model_text;
  EXPECT_EQ(model_text.find("2+2?"), std::string::npos) << model_text;
  EXPECT_EQ(model_text.find("tool▁output"), std::string::npos) << model_text;
  EXPECT_NE(other_text.find("What is 2+2?"), std::string::npos) << other_text;
  // Packed for training, only rows whose next token is the model's carry a label.
  Batch b = pack({s});
  int64_t labelled = 0;
  for (int64_t i = 0; i < b.tokens(); ++i) labelled += b.labels.i32()[i] != -100;
  int64_t masked_after_first = 0;
  for (size_t i = 1; i < s.tokens.size(); ++i) masked_after_first += s.loss_mask[i];
  EXPECT_EQ(labelled, masked_after_first);
}

}  // namespace
}  // namespace shoal::rl

namespace shoal::rl {
namespace {

TEST(RlReference, LogprobsAreComputedOnceAndMatchTheModel) {
  Model ref(tiny(24), cpu_backend());
  ref.init_random(4, 0.3f);
  std::vector<Sample> samples = {{{0, 5, 7, 9}, {0, 1, 1, 1}}, {{0, 6, 2}, {0, 0, 1}}};
  Batch b = pack(samples);
  ReferenceLogprobs cache(ref);
  Tensor a = cache.token_logprobs(samples, b);
  EXPECT_EQ(cache.computed_samples(), 2u);
  ForwardOptions o;
  o.token_logprobs = true;
  o.need_backward = false;
  Tensor direct = ref.forward(b, o).token_logprobs;
  for (int64_t i = 0; i < b.tokens(); ++i) EXPECT_FLOAT_EQ(a.f32()[i], direct.f32()[i]);
  // Same samples again, in another order and with a new one: only the new one is computed.
  std::vector<Sample> again = {samples[1], {{0, 3, 3}, {0, 1, 1}}, samples[0]};
  Tensor c = cache.token_logprobs(again, pack(again));
  EXPECT_EQ(cache.computed_samples(), 3u);
  EXPECT_EQ(cache.cached(), 3u);
  EXPECT_FLOAT_EQ(c.f32()[1], a.f32()[5]);  // sample 1's model-produced row
  EXPECT_THROW(cache.token_logprobs(again, b), Error);
}

}  // namespace
}  // namespace shoal::rl
