// Finite-difference gradient checks of the CPU backend's ops (see tests/engine/gradcheck.h for the
// method). Every op is checked along random directions and at a few single coordinates.
//
// Step and tolerance: two-point central differences with a step of 3e-3 of the input's norm
// (gradcheck.h check_tensor), relative tolerance 2e-3. Inputs are O(1) and L = sum(r * y) sums
// O(10..100) f32 outputs, so L carries ~1e-6 of rounding noise; the difference divides it by 2h
// and adds a truncation error O(h^2). Scanning the step over 1e-3..2e-2 gives the smallest worst
// case at 3e-3: ~3e-4 relative over all checks below (printed per test as "max rel err"); 1e-3
// is noisier, 2e-2 truncation-limited (~1e-2). 2e-3 is ~6x the worst case measured, while a
// wrong term in a backward formula gives O(1) errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/backend.h"
#include "engine/model/config.h"
#include "engine/model/rope_table.h"
#include "tests/engine/gradcheck.h"

namespace shoal {
namespace {

using namespace gradcheck;

constexpr double kOpTol = 2e-3;
constexpr double kH = 3e-3;  // relative step (gradcheck.h check_tensor)

// Directional checks along `dirs` random directions plus single-coordinate checks.
void check_op(Checker& ck, const std::string& name, Tensor t, const Tensor& grad,
              const std::function<double()>& loss, std::mt19937& rng, int dirs = 3, int coords = 4,
              double h = kH) {
  Fd fd;
  fd.rel_step = h;
  fd.tol = kOpTol;
  check_tensor(ck, name, t, grad, loss, rng, dirs, coords, fd);
}

TEST(GradCheckOps, RmsNorm) {
  Checker ck("GradCheckOps.RmsNorm");
  std::mt19937 rng(11);
  const int64_t n = 5, d = 16;
  const float eps = 1e-6f;
  // x is a strided row view (as MLA normalizes the c_kv columns of kv_a in place).
  Tensor xbig = randn({n, d + 3}, rng);
  Tensor x = xbig.slice(1, 0, d);
  Tensor w = randn({d}, rng, 0.3f, 1.0f);
  Tensor r = randn({n, d}, rng);
  auto loss = [&] {
    Tensor y = be().empty({n, d}), rs = be().empty({n});
    be().rmsnorm_forward(x, w, eps, y, rs);
    return dot(r, y);
  };
  Tensor y = be().empty({n, d}), rstd = be().empty({n});
  be().rmsnorm_forward(x, w, eps, y, rstd);
  Tensor dx = be().empty({n, d});
  Tensor dw0 = randn({d}, rng), dw = dw0.clone();  // dw accumulates
  be().rmsnorm_backward(r, x, w, rstd, dx, dw);
  be().add(dw, dw0, -1.0f);
  check_op(ck, "dx", x, dx, loss, rng);
  check_op(ck, "dw", w, dw, loss, rng);
}

// RoPE is linear, so its gradient is its adjoint: the backward (inverse rotation, scaled by the
// same attention_scaling) must satisfy <rope(x), y> == <x, rope_inverse(y)>.
TEST(GradCheckOps, RopeAdjoint) {
  Checker ck("GradCheckOps.RopeAdjoint");
  std::mt19937 rng(12);
  const int64_t n = 7, h = 3, d = 6, extra = 4, table = 40;
  for (bool yarn : {false, true}) {
    ModelConfig c;
    c.qk_rope_head_dim = d;
    c.max_position_embeddings = table;
    if (yarn) {
      c.rope.type = "yarn";
      c.rope.factor = 4.0;
      c.rope.original_max_position_embeddings = 8;
      c.rope.mscale = 1.0;
      c.rope.mscale_all_dim = 0.5;  // attention_scaling = mscale(4, 1) / mscale(4, 0.5) != 1
    }
    double att = rope_frequencies(c).attention_scaling;
    if (yarn) {
      EXPECT_GT(std::fabs(att - 1.0), 1e-3);
    }
    Tensor cs = rope_cos_sin_table(c, table);
    Tensor pos = Tensor::empty({n}, DType::i32);
    std::uniform_int_distribution<int32_t> pd(0, int32_t(table - 1));
    for (int64_t i = 0; i < n; ++i) pos.i32()[i] = pd(rng);
    for (bool inter : {true, false}) {
      std::string tag = std::string(yarn ? "yarn" : "default") + (inter ? " interleaved" : " half");
      // x as a strided view (the rope part of q's [N, H, dn + dr] heads).
      Tensor xbig = randn({n, h, extra + d}, rng);
      Tensor x = xbig.slice(2, extra, extra + d);
      Tensor x0 = x.clone(), y = randn({n, h, d}, rng);
      Tensor rx = x0.clone();
      be().rope(rx, pos, cs, inter, false);
      be().rope(x, pos, cs, inter, false);  // in place on the view: same result
      Tensor xc = x.contiguous();
      for (int64_t i = 0; i < rx.numel(); ++i) ASSERT_EQ(rx.f32()[i], xc.f32()[i]) << tag;
      Tensor iy = y.clone();
      be().rope(iy, pos, cs, inter, true);
      ck.check(tag + " <rope x, y> vs <x, rope^T y>", dot(rx, y), dot(x0, iy), 1e-5);
      // A scaled rotation: norms scale by att, and inverse(forward(x)) = att^2 x.
      ck.check(tag + " |rope x|^2", dot(rx, rx), att * att * dot(x0, x0), 1e-5);
      Tensor back = rx.clone();
      be().rope(back, pos, cs, inter, true);
      for (int64_t i = 0; i < back.numel(); ++i)
        EXPECT_NEAR(back.f32()[i], att * att * x0.f32()[i], 1e-5) << tag;
    }
  }
}

TEST(GradCheckOps, Attention) {
  Checker ck("GradCheckOps.Attention");
  std::mt19937 rng(13);
  const int64_t n = 11, heads = 2, dk = 6, dn = 3, dvd = 5;
  const std::vector<int64_t> cu = {0, 4, 11};  // two packed sequences, lengths 4 and 7
  const float scale = 0.45f;
  Tensor q = randn({n, heads, dk}, rng), k = randn({n, heads, dk}, rng);
  Tensor vbig = randn({n, heads, dn + dvd}, rng);
  Tensor v = vbig.slice(2, dn, dn + dvd);  // strided, as MLA's value slice of kv_b
  Tensor r = randn({n, heads, dvd}, rng);
  auto fwd = [&](const std::vector<int64_t>& seqs, Tensor& out, Tensor& lse) {
    out = be().empty({n, heads, dvd});
    lse = be().empty({heads, n});
    be().attention_forward(q, k, v, seqs, scale, out, lse);
  };
  auto loss = [&] {
    Tensor out, lse;
    fwd(cu, out, lse);
    return dot(r, out);
  };
  Tensor out, lse;
  fwd(cu, out, lse);
  Tensor dq = be().empty({n, heads, dk}), dkk = be().empty({n, heads, dk});
  Tensor dv = be().empty({n, heads, dvd});
  be().attention_backward(q, k, v, out, r, lse, cu, scale, dq, dkk, dv);
  check_op(ck, "dq", q, dq, loss, rng);
  check_op(ck, "dk", k, dkk, loss, rng);
  check_op(ck, "dv", v, dv, loss, rng);

  // An empty sequence in cu_seqlens changes nothing.
  {
    Tensor out2, lse2;
    fwd({0, 4, 4, 11}, out2, lse2);
    for (int64_t i = 0; i < out.numel(); ++i) ASSERT_EQ(out.f32()[i], out2.f32()[i]);
  }
  // Causality and sequence isolation: changing token j's key and value leaves every earlier
  // token's output (its own sequence's and the other sequence's) bit-identical.
  {
    const int64_t j = 6;  // position 2 of the second sequence
    Tensor ks = k.clone(), vs = v.clone();
    Tensor kj = k.select(0, j), vj = v.select(0, j);
    kj.fill(3.0);
    vj.fill(-2.0);
    Tensor out2, lse2;
    fwd(cu, out2, lse2);
    int64_t row = heads * dvd;
    for (int64_t i = 0; i < j * row; ++i) ASSERT_EQ(out.f32()[i], out2.f32()[i]) << i;
    double diff = 0;
    for (int64_t i = j * row; i < (j + 1) * row; ++i)
      diff += std::fabs(out.f32()[i] - out2.f32()[i]);
    EXPECT_GT(diff, 1e-3);
    k.copy_from(ks);
    v.copy_from(vs);
  }
}

TEST(GradCheckOps, Swiglu) {
  Checker ck("GradCheckOps.Swiglu");
  std::mt19937 rng(14);
  const int64_t n = 4, inter = 6;
  Tensor gu = randn({n, 2 * inter}, rng, 1.5f);
  Tensor r = randn({n, inter}, rng);
  auto loss = [&] {
    Tensor hh = be().empty({n, inter});
    be().swiglu_forward(gu, hh);
    return dot(r, hh);
  };
  Tensor dgu = be().empty({n, 2 * inter});
  be().swiglu_backward(r, gu, dgu);
  check_op(ck, "dgate_up", gu, dgu, loss, rng, 3, 8);
}

TEST(GradCheckOps, CrossEntropy) {
  Checker ck("GradCheckOps.CrossEntropy");
  std::mt19937 rng(15);
  const int64_t n = 7, vocab = 10;
  Tensor logits = randn({n, vocab}, rng, 2.0f);
  Tensor labels = Tensor::empty({n}, DType::i32);
  std::uniform_int_distribution<int32_t> ld(0, int32_t(vocab - 1));
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    labels.i32()[i] = (i == 2 || i == 5) ? -100 : ld(rng);
    counted += labels.i32()[i] != -100;
  }
  const float gs = 1.0f / float(counted);
  auto loss = [&] { return double(gs) * be().cross_entropy(logits, labels, gs, nullptr); };

  // The returned sum against a direct double evaluation.
  double ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t l = labels.i32()[i];
    if (l == -100) continue;
    double mx = -1e30, s = 0;
    for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, double(logits.f32()[i * vocab + j]));
    for (int64_t j = 0; j < vocab; ++j) s += std::exp(double(logits.f32()[i * vocab + j]) - mx);
    ref += mx + std::log(s) - double(logits.f32()[i * vocab + l]);
  }
  Tensor dl = be().empty({n, vocab});
  double total = be().cross_entropy(logits, labels, gs, &dl);
  EXPECT_NEAR(total, ref, 1e-5 * std::fabs(ref));

  // dlogits may alias the logits (the model does this): same values.
  Tensor alias = logits.clone();
  be().cross_entropy(alias, labels, gs, &alias);
  for (int64_t i = 0; i < dl.numel(); ++i) ASSERT_EQ(dl.f32()[i], alias.f32()[i]);

  // Ignored rows: zero gradient, and the loss does not depend on them.
  for (int64_t i : {2, 5}) {
    for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(dl.f32()[i * vocab + j], 0.0f);
    Tensor v = one_hot({n, vocab}, i * vocab + 3);
    EXPECT_NEAR(central_diff(logits, v, 1e-2, loss), 0.0, 1e-9);
  }
  check_op(ck, "dlogits", logits, dl, loss, rng, 3, 8);
}

TEST(GradCheckOps, EmbeddingBackward) {
  Checker ck("GradCheckOps.EmbeddingBackward");
  std::mt19937 rng(16);
  const int64_t vocab = 9, d = 5;
  const std::vector<int32_t> idv = {3, 1, 3, 0, 7, 3, 1, 8};  // repeats; rows 2, 4, 5, 6 unused
  const int64_t n = int64_t(idv.size());
  Tensor ids = Tensor::empty({n}, DType::i32);
  std::copy(idv.begin(), idv.end(), ids.i32());
  Tensor table = randn({vocab, d}, rng), r = randn({n, d}, rng);
  auto loss = [&] {
    Tensor out = be().empty({n, d});
    be().embedding_forward(ids, table, out);
    return dot(r, out);
  };
  Tensor g0 = randn({vocab, d}, rng), g = g0.clone();  // dtable accumulates
  be().embedding_backward(ids, r, g);
  be().add(g, g0, -1.0f);
  // Row 3 (three uses) gets the sum of three rows of r; unused rows get exactly nothing.
  for (int64_t j = 0; j < d; ++j) {
    EXPECT_NEAR(g.f32()[3 * d + j], r.f32()[0 * d + j] + r.f32()[2 * d + j] + r.f32()[5 * d + j],
                1e-5);
    EXPECT_EQ(g.f32()[2 * d + j], 0.0f);
  }
  check_op(ck, "dtable", table, g, loss, rng, 3, 6, 1e-2);
}

// noaux_tc routing: the weights topk_w are a smooth function of the logits while the selection
// stays fixed. L = sum(c * topk_w) for random c. Each trial uses a fresh seed; a trial whose
// perturbed logits select different experts is skipped (the function is not differentiable
// across a flip), and most trials must run. Step 1e-2: L = sum(c * topk_w) is O(1) while its
// derivatives are only O(0.1) (sigmoid slopes <= 1/4), so a larger step than kH keeps the noise
// down; flips stay rare because the choice scores' gaps are much larger than the step.
TEST(GradCheckOps, Router) {
  Checker ck("GradCheckOps.Router");
  const int64_t n = 6, e = 8, kk = 3;
  for (bool norm : {true, false}) {
    for (bool replay : {false, true}) {
      RouterParams p;
      p.n_experts = e;
      p.top_k = kk;
      p.n_group = 4;
      p.topk_group = 2;
      p.norm_topk_prob = norm;
      p.routed_scaling_factor = 2.5f;
      std::string tag = std::string(norm ? "norm" : "no-norm") + (replay ? " replay" : "");
      const int trials = 10;
      int ran = 0;
      for (int t = 0; t < trials; ++t) {
        std::mt19937 rng(uint32_t(1000 + 17 * t + (norm ? 0 : 7) + (replay ? 3 : 0)));
        Tensor logits = randn({n, e}, rng, 1.5f), bias = randn({e}, rng, 0.1f);
        Tensor c = randn({n, kk}, rng);
        Tensor given = Tensor::empty({n, kk}, DType::i32);
        for (int64_t i = 0; i < n; ++i) {  // replay: arbitrary distinct experts per token
          std::vector<int32_t> perm(static_cast<size_t>(e));
          std::iota(perm.begin(), perm.end(), 0);
          std::shuffle(perm.begin(), perm.end(), rng);
          std::copy(perm.begin(), perm.begin() + kk, given.i32() + i * kk);
        }
        auto route = [&](Tensor& scores, Tensor& idx, Tensor& w) {
          scores = be().empty({n, e});
          idx = replay ? given.clone() : be().empty({n, kk}, DType::i32);
          w = be().empty({n, kk});
          be().route_noaux_tc(logits, bias, p, scores, idx, w, replay);
        };
        Tensor scores, idx, w;
        route(scores, idx, w);
        if (replay) {
          for (int64_t i = 0; i < n * kk; ++i) ASSERT_EQ(idx.i32()[i], given.i32()[i]);
        }
        bool flipped = false;
        auto loss = [&] {
          Tensor s2, i2, w2;
          route(s2, i2, w2);
          for (int64_t i = 0; i < n * kk; ++i) flipped |= i2.i32()[i] != idx.i32()[i];
          return dot(c, w2);
        };
        Tensor dlogits = be().empty({n, e});
        be().route_backward(c, scores, idx, p, dlogits);
        const double h = 1e-2;
        Tensor v = randn({n, e}, rng);
        double num = central_diff(logits, v, h, loss);
        std::vector<std::pair<int64_t, double>> coords;  // (flat index, numeric)
        for (int64_t ci : pick_coords(dlogits, 4, rng)) coords.push_back({ci, 0.0});
        for (int64_t tok : {int64_t(0), n - 1}) {
          for (int64_t j = 0; j < e; ++j) {  // one unselected expert: no influence at all
            bool sel = false;
            for (int64_t s = 0; s < kk; ++s) sel |= idx.i32()[tok * kk + s] == j;
            if (!sel) {
              coords.push_back({tok * e + j, 0.0});
              break;
            }
          }
        }
        for (auto& [ci, cn] : coords) cn = central_diff(logits, one_hot({n, e}, ci), h, loss);
        if (flipped) {  // selection changed somewhere: not a valid difference
          ck.skip();
          continue;
        }
        ++ran;
        std::string tt = tag + " trial " + std::to_string(t);
        ck.check(tt + " dir", num, dot(dlogits, v), kOpTol);
        for (auto& [ci, cn] : coords) {
          double ana = dlogits.f32()[ci];
          bool sel = false;
          for (int64_t s = 0; s < kk; ++s) sel |= ci % e == idx.i32()[(ci / e) * kk + s];
          if (sel) {
            ck.check(tt + " [" + std::to_string(ci) + "]", cn, ana, kOpTol);
          } else {
            EXPECT_EQ(ana, 0.0f) << tt << " unselected expert " << ci;
            EXPECT_NEAR(cn, 0.0, 1e-9) << tt << " unselected expert " << ci;
          }
        }
      }
      EXPECT_GE(ran, trials * 8 / 10) << tag << ": too many trials flipped the selection";
      if (replay) {
        EXPECT_EQ(ran, trials) << tag;
      }
    }
  }
}

}  // namespace
}  // namespace shoal
