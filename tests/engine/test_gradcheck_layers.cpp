// Finite-difference gradient checks of the model's layers: the SwiGLU FFN, MLA (q LoRA on/off,
// default/YaRN RoPE, interleaved/half-split RoPE layout) and the MoE (with and without shared
// experts, normalized or not, sequence-wise balance loss, routing replay). Method and helpers:
// tests/engine/gradcheck.h. Each layer runs on cpu_backend() with parameters in a ParamSet filled
// with O(1)-activation random values (matrices N(0, 1/fan_in), norm weights 1 + N(0, 0.2)).
//
// Step and tolerance: fourth-order central differences (gradcheck.h central_diff) with a
// relative step of 3e-3 of each tensor's norm, relative tolerance 1e-2 (the f32 default). A layer
// chains several f32 GEMMs, norms and softmaxes, so L = sum(r * y) carries ~1e-6 of rounding
// noise relative to L, and the window between that noise (small steps) and curvature (large
// steps) is narrow: with the plain two-point difference the worst case here was ~5e-3 at any
// step. Scanning the step over 1e-3..2e-2, the fourth-order difference at 3e-3 gives a worst
// case of ~1.2e-3 over all checks below (printed per test as "max rel err") with no MoE
// selection flips; 1e-2 is ~10x that, while a wrong or missing gradient term gives O(1) errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/backend.h"
#include "engine/model/config.h"
#include "engine/model/ffn.h"
#include "engine/model/mla.h"
#include "engine/model/moe.h"
#include "engine/model/params.h"
#include "engine/model/rope_table.h"
#include "tests/engine/gradcheck.h"

namespace shoal {
namespace {

using namespace gradcheck;

constexpr double kH = 3e-3;  // relative step (gradcheck.h check_tensor)
constexpr double kTol = 1e-2;

Fd layer_fd(bool* flipped = nullptr) {
  Fd fd;
  fd.rel_step = kH;
  fd.tol = kTol;
  fd.fourth_order = true;
  fd.flipped = flipped;
  return fd;
}

TEST(GradCheckLayers, SwiGluFfn) {
  OneOmpThread one_thread;
  std::mt19937 rng(21);
  const int64_t n = 6, d = 10, inter = 7;
  SwiGluWeights w;
  w.gate_up = randn({2 * inter, d}, rng, 1.0f / std::sqrt(float(d)));
  w.down = randn({d, inter}, rng, 1.0f / std::sqrt(float(inter)));
  w.g_gate_up = Tensor::zeros({2 * inter, d}, DType::f32);
  w.g_down = Tensor::zeros({d, inter}, DType::f32);
  for (bool acc : {false, true}) {
    Checker ck(std::string("GradCheckLayers.SwiGluFfn") + (acc ? " accumulate" : ""));
    // x is a row view (experts run on row slices of the gathered tokens).
    Tensor xbig = randn({n + 2, d}, rng);
    Tensor x = xbig.slice(0, 1, n + 1);
    Tensor r = randn({n, d}, rng), y0 = randn({n, d}, rng);
    auto loss = [&] {
      Tensor y = acc ? y0.clone() : be().empty({n, d});
      SwiGluSaved s;
      swiglu_forward(be(), w, x, y, s, acc);
      return dot(r, y);
    };
    Tensor y = acc ? y0.clone() : be().empty({n, d});
    SwiGluSaved s;
    swiglu_forward(be(), w, x, y, s, acc);
    if (acc) {  // y += ffn(x): the old contents stay in
      Tensor y2 = be().empty({n, d});
      SwiGluSaved s2;
      swiglu_forward(be(), w, x, y2, s2, false);
      for (int64_t i = 0; i < y.numel(); ++i)
        EXPECT_NEAR(y.f32()[i], y0.f32()[i] + y2.f32()[i], 1e-5);
    }
    // Parameter gradients accumulate; dx accumulates when asked to.
    Tensor gu0 = randn(w.g_gate_up.shape(), rng), dn0 = randn(w.g_down.shape(), rng);
    w.g_gate_up.copy_from(gu0);
    w.g_down.copy_from(dn0);
    Tensor dx0 = randn({n, d}, rng), dx = acc ? dx0.clone() : be().empty({n, d});
    swiglu_backward(be(), w, s, r, dx, acc);
    if (acc) be().add(dx, dx0, -1.0f);
    Tensor g_gu = w.g_gate_up.clone(), g_dn = w.g_down.clone();
    be().add(g_gu, gu0, -1.0f);
    be().add(g_dn, dn0, -1.0f);
    const Fd fd = layer_fd();
    check_tensor(ck, "dx", x, dx, loss, rng, 3, 4, fd);
    check_tensor(ck, "dgate_up", w.gate_up, g_gu, loss, rng, 3, 4, fd);
    check_tensor(ck, "ddown", w.down, g_dn, loss, rng, 3, 4, fd);
  }
}

ModelConfig mla_config(bool q_lora, bool yarn, bool interleave) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 16;
  c.num_hidden_layers = 1;
  c.layer_is_moe = {false};
  c.intermediate_size = 8;
  c.num_attention_heads = 2;
  c.q_lora_rank = q_lora ? 8 : 0;
  c.kv_lora_rank = 6;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 6;  // three rotated pairs: an odd count catches pair-layout mix-ups
  c.v_head_dim = 5;        // != qk_nope_head_dim: catches k/v column mix-ups in kv_b
  c.max_position_embeddings = 32;
  c.rope_interleave = interleave;
  if (yarn) {
    c.rope.type = "yarn";
    c.rope.factor = 4.0;
    c.rope.original_max_position_embeddings = 8;
    c.rope.beta_fast = 32.0;
    c.rope.beta_slow = 1.0;
    c.rope.mscale = 1.0;
    c.rope.mscale_all_dim = 0.5;  // cos/sin scaled by 1.07 and the softmax scale by 1.15
  }
  c.validate("gradcheck mla config");
  return c;
}

TEST(GradCheckLayers, Mla) {
  OneOmpThread one_thread;
  for (bool q_lora : {true, false})
    for (bool yarn : {false, true})
      for (bool inter : {true, false}) {
        std::string tag = std::string("GradCheckLayers.Mla") + (q_lora ? " q_lora" : " q_proj") +
                          (yarn ? " yarn" : " default") + (inter ? " interleaved" : " half");
        Checker ck(tag);
        std::mt19937 rng(uint32_t(300 + 4 * q_lora + 2 * yarn + inter));
        ModelConfig c = mla_config(q_lora, yarn, inter);
        ParamSet ps(be());
        Mla mla(c, ps, "model.layers.0.self_attn.");
        fill_params(ps, rng);
        const int64_t n = 9, d = c.hidden_size;
        AttentionInputs in;
        in.cu_seqlens = {0, 4, 9};  // two packed sequences
        in.positions = Tensor::empty({n}, DType::i32);
        const int32_t pos[] = {0, 1, 2, 3, 3, 4, 5, 6, 7};  // the second continues at 3
        std::copy(pos, pos + n, in.positions.i32());
        in.cos_sin = rope_cos_sin_table(c, c.max_position_embeddings);
        Tensor x = randn({n, d}, rng), r = randn({n, d}, rng);
        auto loss = [&] {
          Tensor y = be().empty({n, d});
          MlaSaved s;
          mla.forward(be(), x, in, y, s);
          return dot(r, y);
        };
        ps.zero_grads();
        Tensor y = be().empty({n, d});
        MlaSaved s;
        mla.forward(be(), x, in, y, s);
        Tensor dx = be().empty({n, d});
        mla.backward(be(), s, in, r, dx);
        const Fd fd = layer_fd();
        check_tensor(ck, "dx", x, dx, loss, rng, 3, 4, fd);
        for (auto& p : ps) check_tensor(ck, p.name, p.value, p.grad, loss, rng, 2, 1, fd);
      }
}

struct MoeCase {
  const char* name;
  int64_t shared;
  bool norm;
  int64_t n_group, topk_group;
  double alpha;
  bool replay;
  bool balance_only;  // r = 0: L is the balance loss alone
};

ModelConfig moe_config(const MoeCase& mc) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 12;
  c.num_hidden_layers = 1;
  c.layer_is_moe = {true};
  c.num_attention_heads = 1;
  c.kv_lora_rank = 4;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 2;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 3;
  c.n_shared_experts = mc.shared;
  c.moe_intermediate_size = 5;
  c.n_group = mc.n_group;
  c.topk_group = mc.topk_group;
  c.norm_topk_prob = mc.norm;
  c.routed_scaling_factor = 2.5;
  c.validate("gradcheck moe config");
  return c;
}

// L = sum(r * y) + balance_loss (Moe::forward returns the latter, already weighted by alpha).
// Directions that change the top-k selection are redrawn (check_tensor's `flipped`).
TEST(GradCheckLayers, Moe) {
  OneOmpThread one_thread;
  const MoeCase cases[] = {
      {"shared1 norm", 1, true, 4, 2, 0.0, false, false},
      {"no-shared no-norm balance", 0, false, 4, 2, 0.3, false, false},
      {"shared2 norm 1-group balance", 2, true, 1, 1, 0.3, false, false},
      {"shared1 norm balance replay", 1, true, 4, 2, 0.3, true, false},
      {"balance loss only", 1, true, 4, 2, 1.0, false, true},
  };
  int ci = 0;
  for (const MoeCase& mc : cases) {
    Checker ck(std::string("GradCheckLayers.Moe ") + mc.name);
    std::mt19937 rng(uint32_t(400 + ci++));
    ModelConfig c = moe_config(mc);
    ParamSet ps(be());
    Moe moe(c, ps, "model.layers.0.mlp.");
    fill_params(ps, rng);
    const int64_t n = 10, d = c.hidden_size, e = c.n_routed_experts, k = c.num_experts_per_tok;
    const std::vector<int64_t> cu = {0, 4, 10};
    Tensor x = randn({n, d}, rng), r = randn({n, d}, rng);
    if (mc.balance_only) r.fill(0.0);
    Tensor replay = Tensor::empty({n, k}, DType::i32);
    for (int64_t i = 0; i < n; ++i) {  // arbitrary distinct experts per token
      std::vector<int32_t> perm(static_cast<size_t>(e));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::copy(perm.begin(), perm.begin() + k, replay.i32() + i * k);
    }
    const Tensor* rp = mc.replay ? &replay : nullptr;

    ps.zero_grads();
    Tensor y = be().empty({n, d});
    MoeSaved s;
    double bal = moe.forward(be(), x, cu, y, s, rp, mc.alpha);
    if (mc.alpha > 0) {
      EXPECT_GT(bal, 0.0);
    } else {
      EXPECT_EQ(bal, 0.0);
    }
    Tensor idx0 = s.topk_idx.clone();
    if (mc.replay) {
      for (int64_t i = 0; i < n * k; ++i) ASSERT_EQ(idx0.i32()[i], replay.i32()[i]);
    }
    Tensor dx = be().empty({n, d});
    moe.backward(be(), s, r, dx);

    bool flipped = false;
    auto loss = [&] {
      Tensor y2 = be().empty({n, d});
      MoeSaved s2;
      double b = moe.forward(be(), x, cu, y2, s2, rp, mc.alpha);
      for (int64_t i = 0; i < n * k; ++i) flipped |= s2.topk_idx.i32()[i] != idx0.i32()[i];
      return dot(r, y2) + b;
    };
    const Fd fd = layer_fd(&flipped);
    check_tensor(ck, "dx", x, dx, loss, rng, 3, 4, fd);
    for (auto& p : ps) {
      if (!p.trainable) continue;
      check_tensor(ck, p.name, p.value, p.grad, loss, rng, 2, 1, fd);
    }
    // One routed expert on its own (the one with the most tokens).
    int64_t best = std::max_element(s.counts.begin(), s.counts.end()) - s.counts.begin();
    for (const char* nm : {"experts.gate_up_proj", "experts.down_proj"}) {
      Param& p = ps.get(std::string("model.layers.0.mlp.") + nm);
      Tensor pv = p.value.select(0, best);
      check_tensor(ck, std::string(nm) + "[" + std::to_string(best) + "]", pv,
                   p.grad.select(0, best), loss, rng, 2, 2, fd);
    }
    // An expert that received no token has exactly zero gradient.
    for (int64_t i = 0; i < e; ++i) {
      if (s.counts[size_t(i)] != 0) continue;
      Tensor g = ps.get("model.layers.0.mlp.experts.gate_up_proj").grad.select(0, i);
      EXPECT_EQ(max_abs(g), 0.0) << "expert " << i;
    }
  }
}

}  // namespace
}  // namespace shoal
