// Training smoke tests: a tiny DeepSeek-V3 model learns a synthetic task (the loss falls by an
// asserted margin), checkpoints round-trip bit-exactly, resume continues the same trajectory, the
// router-bias update follows the load, and AdamW matches its formula.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/model/model.h"
#include "engine/optim/adamw.h"
#include "engine/train/synthetic.h"
#include "engine/train/trainer.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

ModelConfig tiny_config(int64_t vocab) {
  nlohmann::json j = {{"model_type", "deepseek_v3"},
                      {"vocab_size", vocab},
                      {"hidden_size", 48},
                      {"num_hidden_layers", 2},
                      {"first_k_dense_replace", 1},
                      {"intermediate_size", 96},
                      {"num_attention_heads", 4},
                      {"q_lora_rank", 24},
                      {"kv_lora_rank", 16},
                      {"qk_nope_head_dim", 8},
                      {"qk_rope_head_dim", 8},
                      {"v_head_dim", 8},
                      {"n_routed_experts", 4},
                      {"num_experts_per_tok", 2},
                      {"n_shared_experts", 1},
                      {"moe_intermediate_size", 24},
                      {"n_group", 2},
                      {"topk_group", 1},
                      {"routed_scaling_factor", 2.5},
                      {"max_position_embeddings", 64}};
  return ModelConfig::from_json(j, "test");
}

fs::path temp_dir(const std::string& name) {
  fs::path p =
      fs::temp_directory_path() / ("shoal_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().raw(), b.contiguous().raw(), a.nbytes()) == 0;
}

TEST(Training, TinyModelLearnsCopyTask) {
  SyntheticTask task;
  task.kind = "copy";
  task.alphabet = 8;
  task.min_len = 3;
  task.max_len = 6;
  Model model(tiny_config(task.vocab()), cpu_backend());
  model.init_random(7);
  TrainerConfig tc;
  tc.steps = 250;
  tc.lr = 1e-2f;
  tc.warmup_steps = 10;
  Trainer trainer(model, tc, 7);
  std::vector<double> losses;
  trainer.run([&](std::mt19937_64& rng) { return task.batch(rng, 16); },
              [&](const StepStats& s) { losses.push_back(s.loss); });
  ASSERT_EQ(losses.size(), 250u);
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) first += losses[size_t(i)] / 10;
  for (size_t i = losses.size() - 10; i < losses.size(); ++i) last += losses[i] / 10;
  // Uniform guessing over 8 symbols costs ln 8 = 2.08 nats; the task is learnable to ~0.
  EXPECT_GT(first, 1.8);
  EXPECT_LT(last, 0.5 * first) << "loss fell from " << first << " to only " << last;
  // Exact match of every answer token by chance is at most 8^-3 = 0.2%; after 250 steps the model
  // gets a clear share of whole answers right.
  std::mt19937_64 rng(99);
  EXPECT_GT(synthetic_accuracy(model, task, rng, 64), 0.05);
}

TEST(Training, CheckpointRoundTripsBitExactly) {
  Model a(tiny_config(40), cpu_backend());
  a.init_random(3, 0.3f);
  fs::path dir = temp_dir("roundtrip");
  a.save(dir.string());
  EXPECT_TRUE(fs::exists(dir / "config.json"));
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  auto b = Model::from_pretrained(dir.string(), cpu_backend());
  ASSERT_EQ(a.params().size(), b->params().size());
  for (size_t i = 0; i < a.params().size(); ++i)
    EXPECT_TRUE(bitwise_equal(a.params()[i].value, b->params()[i].value)) << a.params()[i].name;
  ForwardOptions opt;
  opt.keep_logits = true;
  opt.need_backward = false;
  Batch batch = Batch::next_token({{1, 5, 9, 30}, {2, 3}});
  EXPECT_TRUE(bitwise_equal(a.forward(batch, opt).logits, b->forward(batch, opt).logits));
  // Sharded save (tiny shard limit) loads back identically too.
  fs::path sharded = temp_dir("sharded");
  a.save(sharded.string(), 64 * 1024);
  EXPECT_TRUE(fs::exists(sharded / "model.safetensors.index.json"));
  auto c = Model::from_pretrained(sharded.string(), cpu_backend());
  for (size_t i = 0; i < a.params().size(); ++i)
    EXPECT_TRUE(bitwise_equal(a.params()[i].value, c->params()[i].value)) << a.params()[i].name;
  fs::remove_all(dir);
  fs::remove_all(sharded);
}

TEST(Training, ResumeContinuesTheSameTrajectory) {
  SyntheticTask task;
  task.kind = "reverse";
  task.alphabet = 6;
  fs::path out = temp_dir("resume");
  // Both runs are configured for 8 steps (the LR schedule depends on it); run "b" is stopped
  // after 4 steps, as Ctrl-C would, then resumed from its checkpoint.
  auto run = [&](int64_t stop_at, bool resume, const std::string& dir) {
    auto m = std::make_unique<Model>(tiny_config(task.vocab()), cpu_backend());
    m->init_random(11);
    TrainerConfig tc;
    tc.steps = 8;
    tc.checkpoint_every = 3;
    tc.out_dir = dir;
    tc.warmup_steps = 2;
    Trainer t(*m, tc, 11);
    if (resume) {
      EXPECT_EQ(t.resume().value_or(-1), 4);
    }
    t.run([&](std::mt19937_64& rng) { return task.batch(rng, 4); }, nullptr,
          [&] { return t.step() >= stop_at; });
    return m;
  };
  auto straight = run(8, false, (out / "a").string());
  run(4, false, (out / "b").string());
  auto resumed = run(8, true, (out / "b").string());
  for (size_t i = 0; i < straight->params().size(); ++i)
    EXPECT_TRUE(bitwise_equal(straight->params()[i].value, resumed->params()[i].value))
        << straight->params()[i].name;
  fs::remove_all(out);
}

TEST(Training, RouterBiasMovesTowardsBalance) {
  Model m(tiny_config(40), cpu_backend());
  m.init_random(5, 0.5f);
  const Batch batch = Batch::next_token({{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}});
  Tensor before = m.params().get("model.layers.1.mlp.gate.e_score_correction_bias").value.clone();
  // A forward that will not be trained on (scoring, diagnostics) counts no load: no bias change.
  ForwardOptions scoring;
  scoring.need_backward = false;
  m.forward(batch, scoring);
  m.update_router_bias(0.01);
  for (int64_t e = 0; e < 4; ++e)
    EXPECT_EQ(m.params().get("model.layers.1.mlp.gate.e_score_correction_bias").value.f32()[e],
              before.f32()[e]);
  // A training forward does.
  ForwardResult r = m.forward(batch);
  const Tensor& idx = r.routing[1];
  ASSERT_TRUE(idx.defined());
  std::vector<int64_t> load(4, 0);
  for (int64_t i = 0; i < idx.numel(); ++i) ++load[size_t(idx.i32()[i])];
  m.update_router_bias(0.01);
  Tensor after = m.params().get("model.layers.1.mlp.gate.e_score_correction_bias").value;
  double mean = double(idx.numel()) / 4.0;
  for (int64_t e = 0; e < 4; ++e) {
    double want = load[size_t(e)] < mean ? 0.01 : load[size_t(e)] > mean ? -0.01 : 0.0;
    EXPECT_NEAR(after.f32()[e] - before.f32()[e], want, 1e-7) << "expert " << e;
  }
}

TEST(Training, AdamWMatchesItsFormula) {
  ParamSet ps(cpu_backend());
  ps.add("w", {2, 3});
  ps.add("norm", {3});
  for (int i = 0; i < 6; ++i) ps[0].value.f32()[i] = 0.1f * float(i + 1);
  for (int i = 0; i < 3; ++i) ps[1].value.f32()[i] = 1.0f;
  AdamWConfig cfg;
  cfg.lr = 0.01f;
  cfg.weight_decay = 0.1f;
  cfg.grad_clip = 0;
  AdamW opt(ps, cpu_backend(), cfg);
  std::vector<double> p(6), m(6, 0), v(6, 0);
  for (int i = 0; i < 6; ++i) p[size_t(i)] = 0.1 * (i + 1);
  for (int step = 1; step <= 3; ++step) {
    for (int i = 0; i < 6; ++i) ps[0].grad.f32()[i] = float(std::sin(step * 1.3 + i));
    for (int i = 0; i < 3; ++i) ps[1].grad.f32()[i] = 0.5f;
    opt.step(cfg.lr);
    for (int i = 0; i < 6; ++i) {
      double g = std::sin(step * 1.3 + i);
      m[size_t(i)] = 0.9 * m[size_t(i)] + 0.1 * g;
      v[size_t(i)] = 0.95 * v[size_t(i)] + 0.05 * g * g;
      double mh = m[size_t(i)] / (1 - std::pow(0.9, step)),
             vh = v[size_t(i)] / (1 - std::pow(0.95, step));
      p[size_t(i)] = p[size_t(i)] * (1 - 0.01 * 0.1) - 0.01 * mh / (std::sqrt(vh) + 1e-8);
      EXPECT_NEAR(ps[0].value.f32()[i], p[size_t(i)], 1e-6) << "step " << step << " i " << i;
    }
  }
  // 1-D parameters get no weight decay: constant gradient 0.5 moves each by exactly lr per step.
  EXPECT_NEAR(ps[1].value.f32()[0], 1.0 - 3 * 0.01, 1e-5);
}

// After reset() the optimizer moves exactly as a new one would (moments and bias correction
// start over), whatever it did before.
TEST(Training, AdamWResetStartsAfresh) {
  auto run = [](bool warm_then_reset) {
    ParamSet ps(cpu_backend());
    ps.add("w", {4});
    for (int i = 0; i < 4; ++i) ps[0].value.f32()[i] = 0.5f;
    AdamWConfig cfg;
    cfg.grad_clip = 0;
    AdamW opt(ps, cpu_backend(), cfg);
    if (warm_then_reset) {
      for (int k = 0; k < 5; ++k) {
        for (int i = 0; i < 4; ++i) ps[0].grad.f32()[i] = 10.0f * float(i + 1);
        opt.step(0.0f);  // lr 0: the moments fill up, the weights stay
      }
      opt.reset();
      EXPECT_EQ(opt.steps(), 0);
    }
    for (int i = 0; i < 4; ++i) ps[0].grad.f32()[i] = 0.01f * float(i - 1);
    opt.step(0.1f);
    std::vector<float> out(4);
    for (int i = 0; i < 4; ++i) out[size_t(i)] = ps[0].value.f32()[i];
    return out;
  };
  std::vector<float> fresh = run(false), reset = run(true);
  for (size_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(reset[i], fresh[i]) << i;
}

TEST(Training, GradientClippingBoundsTheGlobalNorm) {
  ParamSet ps(cpu_backend());
  ps.add("a", {4});
  ps.add("b", {3});
  for (int i = 0; i < 4; ++i) ps[0].grad.f32()[i] = 3.0f;
  for (int i = 0; i < 3; ++i) ps[1].grad.f32()[i] = 4.0f;
  double norm = ps.clip_grad_norm(1.0);
  EXPECT_NEAR(norm, std::sqrt(4 * 9.0 + 3 * 16.0), 1e-5);
  EXPECT_NEAR(ps.grad_norm(), 1.0, 1e-5);
}

}  // namespace
}  // namespace shoal
