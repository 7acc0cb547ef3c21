// Finite-difference gradient check of the whole Model: L = Model::forward(batch).loss (mean
// next-token cross-entropy + the balance loss when enabled), gradients from Model::backward()
// accumulated into params().grad. Every trainable parameter is checked along random directions
// and at one coordinate, plus one routed expert's slice on its own. Method and helpers:
// tests/engine/gradcheck.h. A tiny 2-layer model (dense layer 0, MoE layer 1 with a shared
// expert, q LoRA, YaRN RoPE), two packed sequences.
//
// Step and tolerance: fourth-order central differences from a relative step of 3e-3, relative
// tolerance 1e-2, as for the layers (test_gradcheck_layers.cpp), plus the f32-resolution rule of
// gradcheck.h Fd::loss_scale. Many parameters of a random tiny model barely move the mean
// cross-entropy (e.g. layer 0's input_layernorm acts only through k_pe, the q and c_kv paths being
// renormalized): their first-order change over a 3e-3 step is a few f32 ulps of L, so the
// difference quotient is mostly rounding (errors of 1e-2..2e-1 measured at a fixed step). Such
// directions get a larger step (up to 5%); those still below resolution are held to an absolute
// bound tied to the f32 resolution and counted ("floor-limited" in the printed summary, about 5%
// of the checks). Directions whose perturbation changes the MoE expert selection (compared
// through ForwardResult::routing) are retried with a smaller step or redrawn; a base point where
// even the smallest step flips the selection (a token at a near-tie) is redrawn with another seed
// up front. With routing replay the selection cannot change.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>

#include "engine/model/model.h"
#include "tests/engine/gradcheck.h"

namespace shoal {
namespace {

using namespace gradcheck;

constexpr double kH = 3e-3;  // smallest relative step (gradcheck.h check_tensor, Fd)
constexpr double kTol = 1e-2;

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.layer_is_moe = {false, true};
  c.intermediate_size = 20;
  c.num_attention_heads = 2;
  c.q_lora_rank = 8;
  c.kv_lora_rank = 6;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 6;
  c.v_head_dim = 5;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 6;
  c.n_group = 2;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.max_position_embeddings = 64;
  c.rope.type = "yarn";
  c.rope.factor = 4.0;
  c.rope.original_max_position_embeddings = 16;
  c.rope.mscale = 1.0;
  c.rope.mscale_all_dim = 0.5;
  c.tie_word_embeddings = tied;
  return c;
}

struct ModelCase {
  const char* name;
  bool tied;
  double alpha;
  bool replay;
};

TEST(GradCheckModel, WholeModel) {
  OneOmpThread one_thread;
  const ModelCase cases[] = {
      {"plain", false, 0.0, false},
      {"balance", false, 0.1, false},
      {"replay balance", false, 0.1, true},
      {"tied embeddings", true, 0.0, false},
  };
  int ci = 0;
  for (const ModelCase& mc : cases) {
    Checker ck(std::string("GradCheckModel.WholeModel ") + mc.name);
    ModelConfig cfg = tiny_config(mc.tied);
    const int64_t k = cfg.num_experts_per_tok;
    std::unique_ptr<Model> model;
    Batch batch;
    ForwardOptions opt;
    ForwardResult base;
    std::vector<Tensor> replay(size_t(cfg.num_hidden_layers));  // undefined for the dense layer
    std::mt19937 rng;
    // Draw parameters and batch; without replay, redraw them (another seed) while perturbing
    // some single parameter by 2x the smallest step (the fourth-order difference's outer points)
    // changes the expert selection: a token at a near-tie would make most directions invalid.
    int reseeds = 0;
    for (;; ++reseeds) {
      ASSERT_LT(reseeds, 20) << mc.name << ": no seed without a near-tie in the routing";
      rng.seed(uint32_t(500 + 100 * ci + reseeds));
      model = std::make_unique<Model>(cfg, be());
      fill_params(model->params(), rng);
      std::uniform_int_distribution<int32_t> tok(0, int32_t(cfg.vocab_size - 1));
      std::vector<std::vector<int32_t>> seqs = {std::vector<int32_t>(5), std::vector<int32_t>(7)};
      for (auto& sq : seqs)
        for (auto& t : sq) t = tok(rng);
      batch = Batch::next_token(seqs);
      const int64_t n = batch.tokens();
      replay[1] = Tensor::empty({n, k}, DType::i32);
      for (int64_t i = 0; i < n; ++i) {  // arbitrary distinct experts per token
        std::vector<int32_t> perm(static_cast<size_t>(cfg.n_routed_experts));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        std::copy(perm.begin(), perm.begin() + k, replay[1].i32() + i * k);
      }
      opt = ForwardOptions();
      opt.balance_alpha = mc.alpha;
      opt.replay_routing = mc.replay ? &replay : nullptr;
      opt.need_backward = false;
      base = model->forward(batch, opt);
      if (mc.replay) break;
      bool stable = true;
      for (auto& p : model->params()) {
        if (!p.trainable || !stable) continue;
        Tensor v = randn(p.value.shape(), rng);
        double h = 2 * kH * std::sqrt(dot(p.value, p.value) / dot(v, v));
        Tensor saved = p.value.clone();
        for (double sgn : {1.0, -1.0}) {
          be().add(p.value, v, float(sgn * h));
          ForwardResult r = model->forward(batch, opt);
          p.value.copy_from(saved);
          for (int64_t i = 0; i < n * k; ++i)
            stable &= r.routing[1].i32()[i] == base.routing[1].i32()[i];
        }
      }
      if (stable) break;
    }
    ++ci;
    if (reseeds)
      std::printf("[gradcheck] %s: %d reseed(s) for a routing without near-ties\n",
                  ck.name().c_str(), reseeds);
    Model& m = *model;
    const ModelConfig& c = m.config();
    const int64_t n = batch.tokens();

    m.params().zero_grads();
    opt.need_backward = true;
    base = m.forward(batch, opt);
    m.backward();
    EXPECT_EQ(base.targets, n - 2);
    EXPECT_NEAR(base.loss, base.ce_loss + base.balance_loss, 1e-12);
    if (mc.alpha > 0) {
      EXPECT_GT(base.balance_loss, 0.0);
    } else {
      EXPECT_EQ(base.balance_loss, 0.0);
    }
    const Tensor routing0 = base.routing[1];
    if (mc.replay) {
      for (int64_t i = 0; i < n * k; ++i) ASSERT_EQ(routing0.i32()[i], replay[1].i32()[i]);
    }

    bool flipped = false;
    ForwardOptions eval = opt;
    eval.need_backward = false;
    auto loss = [&] {
      ForwardResult r = m.forward(batch, eval);
      for (int64_t i = 0; i < n * k; ++i) flipped |= r.routing[1].i32()[i] != routing0.i32()[i];
      return r.loss;
    };
    Fd fd;
    fd.rel_step = kH;
    fd.tol = kTol;
    fd.fourth_order = true;
    fd.flipped = &flipped;
    fd.loss_scale = std::fabs(base.loss);
    for (auto& p : m.params()) {
      if (!p.trainable) continue;
      check_tensor(ck, p.name, p.value, p.grad, loss, rng, 2, 1, fd);
    }
    // The routed expert with the most tokens, on its own.
    std::vector<int64_t> count(size_t(c.n_routed_experts), 0);
    for (int64_t i = 0; i < n * k; ++i) ++count[size_t(routing0.i32()[i])];
    int64_t best = std::max_element(count.begin(), count.end()) - count.begin();
    for (const char* nm : {"experts.gate_up_proj", "experts.down_proj"}) {
      Param& p = m.params().get(std::string("model.layers.1.mlp.") + nm);
      check_tensor(ck, std::string(nm) + "[" + std::to_string(best) + "]", p.value.select(0, best),
                   p.grad.select(0, best), loss, rng, 2, 2, fd);
    }
  }
}

}  // namespace
}  // namespace shoal
