// The MoE experts' grouped GEMMs of a training step with device-side group boundaries
// (Backend::grouped_matmul_dev above decode sizes, grouped_matmul_dev_nn, grouped_matmul_dev_tn;
// in bf16 GEMM mode kernels/moe/expert_gemm.cu) against the CPU reference (engine/backend.cpp)
// on the operands rounded to bf16, element by element under the accumulation bound: odd shapes
// (empty groups, groups of one row, rows, n and k not multiples of the tiles or of 8, strided and
// misaligned views that take the plain loads, tn's alpha and beta, tn's groups split over blocks),
// and moe-2b's six expert GEMMs at its training step's shapes (16,384 tokens to 6 of 64 experts,
// with their times beside grouped_matmul's per-expert cuBLAS GEMMs); add_group_sizes; and one
// MoE layer's training forward and backward on the device path against the host-count path.
// SHOAL_SMALL_SHAPES shrinks the moe-2b shapes (compute-sanitizer); SHOAL_NO_PERF skips timing.
// Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <random>

#include "base/error.h"
#include "engine/model/config.h"
#include "engine/model/moe.h"
#include "engine/model/params.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::abs_of;
using test::bf16_accumulation_bound;
using test::bf16_rounded;

enum class Layout { nt, nn, tn };
const char* layout_name(Layout l) {
  return l == Layout::nt   ? "grouped_matmul_dev"
         : l == Layout::nn ? "grouped_matmul_dev_nn"
                           : "grouped_matmul_dev_tn";
}

constexpr float kPoison = 12345.0f;

Tensor host_offsets(const std::vector<int64_t>& rows) {
  Tensor o = Tensor::empty({int64_t(rows.size()) + 1}, DType::i32);
  o.i32()[0] = 0;
  for (size_t g = 0; g < rows.size(); ++g) o.i32()[g + 1] = o.i32()[g] + int32_t(rows[g]);
  return o;
}

// Uniform [lo, hi) host values from a xorshift generator: the moe-2b operands hold ~470M values,
// which std::mt19937 with a distribution takes seconds to draw.
Tensor fast_uniform(const Shape& s, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(s, DType::f32);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    p[i] = lo + (hi - lo) * float(x >> 40) * (1.0f / 16777216.0f);
  }
  return t;
}

// Tokens routed to `top_k` distinct experts of `experts` each, uniformly: i32 [tokens, top_k].
Tensor route(int64_t tokens, int64_t experts, int64_t top_k, std::mt19937& rng) {
  Tensor idx = Tensor::empty({tokens, top_k}, DType::i32);
  std::vector<int32_t> all(static_cast<size_t>(experts));
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < tokens; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), top_k, idx.i32() + t * top_k);
  }
  return idx;
}

// A device copy of a host tensor, as a parameter (its kept bf16 copy is what the GEMMs read) or
// as an activation.
Tensor to_device(Backend& be, const Tensor& h, bool parameter) {
  if (!parameter) return be.from_host(h);
  Tensor d = be.zeros(h.shape());
  d.storage()->parameter = true;
  be.copy(be.from_host(h), d);
  return d;
}

class ExpertGemm : public test::Bf16BackendOps {
 protected:
  // One call of the layout on bf() checked element by element against the CPU reference on the
  // rounded operands. Host operands: nt a [T, k], b [G, n, k]; nn a [T, k], b [G, k, n]; tn a
  // [T, n], b [T, k], c0 [G, n, k] (c's value before the call). When `strided`, a is a column
  // slice starting 1 element in (misaligned: plain loads) and b one starting 8 in (aligned when
  // its row stride is a multiple of 8); c is always a column slice of a poisoned wider tensor
  // whose outer columns must stay poisoned. Returns the elements out of bound.
  int64_t check(Layout layout, const std::string& what, const std::vector<int64_t>& rows,
                const Tensor& ah, const Tensor& bh, const Tensor* c0, bool strided, bool b_param,
                float alpha = 1.0f, float beta = 0.0f, const Tensor* offsets_d = nullptr) {
    const int64_t groups = int64_t(rows.size());
    const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
    const bool tn = layout == Layout::tn;
    auto widened = [&](const Tensor& h, int64_t at) {  // h as a column slice on the device
      if (!strided) return to_device(bf(), h, b_param && &h == &bh);
      Shape s = h.shape();
      s.back() += at + 3;
      Tensor big = Tensor::zeros(s, DType::f32);
      Tensor view = big.slice(h.ndim() - 1, at, at + h.size(-1));
      view.copy_from(h);
      Tensor d = to_device(bf(), big, b_param && &h == &bh);
      return d.slice(h.ndim() - 1, at, at + h.size(-1));
    };
    const Tensor ad = widened(ah, 1), bd = widened(bh, 8);
    // c: [T, n] (nt, nn) or [G, n, k] (tn) inside one more column on each side.
    Shape cs = tn ? Shape{groups, ah.size(1), bh.size(1)}
                  : Shape{total, layout == Layout::nt ? bh.size(1) : bh.size(2)};
    const int64_t cols = cs.back();
    Shape big_s = cs;
    big_s.back() += 2;
    Tensor ch_big = Tensor::empty(big_s, DType::f32);
    std::fill_n(ch_big.f32(), ch_big.numel(), kPoison);
    if (c0) ch_big.slice(int64_t(cs.size()) - 1, 1, 1 + cols).copy_from(*c0);
    Tensor cd_big = bf().from_host(ch_big);
    Tensor cd = cd_big.slice(int64_t(cs.size()) - 1, 1, 1 + cols);
    const Tensor offs_h = host_offsets(rows);
    const Tensor offs_d = offsets_d ? *offsets_d : bf().from_host(offs_h);
    switch (layout) {
      case Layout::nt:
        bf().grouped_matmul_dev(ad, bd, cd, offs_d);
        break;
      case Layout::nn:
        bf().grouped_matmul_dev_nn(ad, bd, cd, offs_d);
        break;
      case Layout::tn:
        bf().grouped_matmul_dev_tn(ad, bd, cd, offs_d, alpha, beta);
        break;
    }
    const Tensor got = bf().to_host(cd_big);

    // The reference on the rounded operands, and alpha |A||B| for the bound.
    const Tensor ar = bf16_rounded(ah), br = bf16_rounded(bh);
    Tensor ref = c0 ? c0->clone() : Tensor::zeros(cs, DType::f32);
    Tensor mag = Tensor::zeros(cs, DType::f32);
    switch (layout) {
      case Layout::nt:
        cpu().grouped_matmul_dev(ar, br, ref, offs_h);
        cpu().grouped_matmul_dev(abs_of(ar), abs_of(br), mag, offs_h);
        break;
      case Layout::nn:
        cpu().grouped_matmul_dev_nn(ar, br, ref, offs_h);
        cpu().grouped_matmul_dev_nn(abs_of(ar), abs_of(br), mag, offs_h);
        break;
      case Layout::tn:
        cpu().grouped_matmul_dev_tn(ar, br, ref, offs_h, alpha, beta);
        cpu().grouped_matmul_dev_tn(abs_of(ar), abs_of(br), mag, offs_h, std::fabs(alpha), 0.0f);
        break;
    }
    // Reduction length per output: k (nt, nn) or the group's rows (tn, plus one addition per
    // block of a split group).
    const int64_t per_matrix = tn ? cs[1] * cols : 0;
    const int64_t kk = layout == Layout::nt ? ah.size(1) : layout == Layout::nn ? bh.size(1) : 0;
    int64_t bad = 0;
    double worst = 0;
    const float* gp = got.f32();
    const float* rp = ref.f32();
    const float* mp = mag.f32();
    const int64_t outer = ref.numel() / cols;
    for (int64_t r = 0; r < outer; ++r)
      for (int64_t j = 0; j < cols + 2; ++j) {
        const float g = gp[r * (cols + 2) + j];
        if (j == 0 || j == cols + 1) {
          bad += g != kPoison;
          continue;
        }
        const int64_t i = r * cols + j - 1;
        const int64_t red = tn ? rows[size_t(i / per_matrix)] + 64 : kk;
        const double bc = tn && c0 && beta != 0.0f ? double(beta) * double(c0->f32()[i]) : 0.0;
        const double e = std::fabs(double(g) - double(rp[i]));
        const double b = bf16_accumulation_bound(double(mp[i]), red, bc);
        if (!(e <= b)) ++bad;
        worst = std::max(worst, e / b);
      }
    std::printf("[ %-24s] %-60s worst error / bound %-9.3g bad=%lld of %lld %s\n",
                layout_name(layout), what.c_str(), worst, static_cast<long long>(bad),
                static_cast<long long>(got.numel()), bad == 0 ? "PASS" : "FAIL");
    return bad;
  }

  void moe2b_shapes(int64_t tokens);
};

struct OddCase {
  std::vector<int64_t> rows;
  int64_t n, k;
  bool strided;
};
// Above 64 rows per group on average, so that grouped_matmul_dev (nt) takes expert_gemm.cu too.
const OddCase kOddCases[] = {
    {{0, 1, 150, 0, 3, 317, 1}, 24, 70, true},   // k % 4 != 0: plain loads of a (and nt's b)
    {{0, 1, 150, 0, 3, 317, 1}, 24, 72, false},  // 16-byte chunks everywhere (nt)
    {{3, 0, 270}, 40, 68, false},                // k % 8 != 0: vector a, plain bf16 b
    {{0, 0, 0}, 8, 16, false},                   // no rows (tn: every group empty)
    {{140}, 100, 72, true},                      // misaligned a, aligned b
    {{33, 0, 364, 1, 2}, 65, 128, false},        // n % 8 != 0
    {{129, 0, 257, 1}, 130, 136, false},         // partial tiles in M, N and k
    {{65}, 1, 1, false},
    {{200, 3}, 7, 9, true},
    {{300, 0, 129}, 136, 264, false},
};

std::string odd_what(const OddCase& c, const std::string& extra) {
  return fmt::format("groups={} rows={} n={} k={}{}{}", c.rows.size(),
                     std::accumulate(c.rows.begin(), c.rows.end(), int64_t(0)), c.n, c.k,
                     c.strided ? " strided" : "", extra);
}

TEST_F(ExpertGemm, ForwardMatchesTheCpuReferenceOnOddShapes) {
  for (const OddCase& c : kOddCases)
    for (int b_param = 0; b_param < 2; ++b_param) {
      const int64_t total = std::accumulate(c.rows.begin(), c.rows.end(), int64_t(0));
      const Tensor a = rand_host({total, c.k}, -2.0f, 2.0f);
      const Tensor b = rand_host({int64_t(c.rows.size()), c.n, c.k}, -2.0f, 2.0f);
      const std::string what = odd_what(c, b_param ? " b parameter" : " b activation");
      EXPECT_EQ(check(Layout::nt, what, c.rows, a, b, nullptr, c.strided, b_param), 0) << what;
    }
}

TEST_F(ExpertGemm, DataGradientMatchesTheCpuReferenceOnOddShapes) {
  for (const OddCase& c : kOddCases)
    for (int b_param = 0; b_param < 2; ++b_param) {
      const int64_t total = std::accumulate(c.rows.begin(), c.rows.end(), int64_t(0));
      const Tensor a = rand_host({total, c.k}, -2.0f, 2.0f);
      const Tensor b = rand_host({int64_t(c.rows.size()), c.k, c.n}, -2.0f, 2.0f);
      const std::string what = odd_what(c, b_param ? " b parameter" : " b activation");
      EXPECT_EQ(check(Layout::nn, what, c.rows, a, b, nullptr, c.strided, b_param), 0) << what;
    }
}

// c[g] = alpha a_g^T b_g + beta c[g] with beta 1 (gradient accumulation), beta 0 over a c full of
// NaN (c must not be read) and a general pair; then groups large enough to be split over blocks
// (the counters that order their parts) among small and empty ones.
TEST_F(ExpertGemm, WeightGradientMatchesTheCpuReferenceOnOddShapes) {
  struct Scale {
    float alpha, beta;
    bool nan_c;
  };
  const Scale scales[] = {{1.0f, 1.0f, false}, {0.5f, 0.0f, true}, {1.5f, -0.75f, false}};
  auto run = [&](const OddCase& c, const Scale& s) {
    const int64_t total = std::accumulate(c.rows.begin(), c.rows.end(), int64_t(0));
    const Tensor a = rand_host({total, c.n}, -2.0f, 2.0f);
    const Tensor b = rand_host({total, c.k}, -2.0f, 2.0f);
    Tensor c0 = rand_host({int64_t(c.rows.size()), c.n, c.k}, -2.0f, 2.0f);
    if (s.nan_c) std::fill_n(c0.f32(), c0.numel(), NAN);
    const std::string what =
        odd_what(c, fmt::format(" alpha {} beta {}{}", s.alpha, s.beta, s.nan_c ? " c NaN" : ""));
    EXPECT_EQ(check(Layout::tn, what, c.rows, a, b, &c0, c.strided, false, s.alpha, s.beta), 0)
        << what;
  };
  for (const OddCase& c : kOddCases)
    for (const Scale& s : scales) run(c, s);
  // Split groups: few tiles (n, k <= 256) and groups far above the split length.
  const bool small = std::getenv("SHOAL_SMALL_SHAPES") != nullptr;
  const OddCase split[] = {
      {{small ? 1500 : 5000, 3, 0}, 130, 136, false},
      {{0, small ? 900 : 3001, 1, small ? 700 : 2500}, 64, 72, true},
  };
  for (const OddCase& c : split) {
    run(c, scales[0]);
    run(c, scales[2]);
  }
}

// Bad offsets reach the new kernels' check too (reported at the next synchronisation), and the
// backend works on afterwards.
TEST_F(ExpertGemm, BadOffsetsAreReportedAtTheNextSynchronisation) {
  const int64_t rows = 300;
  Tensor x = bf().from_host(rand_host({rows, 16})), wt = bf().from_host(rand_host({2, 16, 8}));
  Tensor dy = bf().from_host(rand_host({rows, 8})), dw = bf().zeros({2, 8, 16});
  Tensor y = bf().zeros({rows, 8}), w = bf().from_host(rand_host({2, 8, 16}));
  auto offs = [&](std::vector<int32_t> v) {
    Tensor o = Tensor::empty({int64_t(v.size())}, DType::i32);
    for (size_t i = 0; i < v.size(); ++i) o.i32()[i] = v[i];
    return bf().from_host(o);
  };
  for (const std::vector<int32_t>& bad :
       {std::vector<int32_t>{1, 2, 300}, {0, 200, 100}, {0, 7, 299}, {0, -2, 300}, {0, 2, 900}}) {
    bf().grouped_matmul_dev(x, w, y, offs(bad));
    EXPECT_THROW(bf().to_host(y), Error) << "nt " << bad[0] << " " << bad[1] << " " << bad[2];
    bf().grouped_matmul_dev_nn(x, wt, y, offs(bad));
    EXPECT_THROW(bf().to_host(y), Error) << "nn " << bad[0] << " " << bad[1] << " " << bad[2];
    bf().grouped_matmul_dev_tn(dy, x, dw, offs(bad), 1.0f, 1.0f);
    EXPECT_THROW(bf().to_host(dw), Error) << "tn " << bad[0] << " " << bad[1] << " " << bad[2];
  }
  bf().grouped_matmul_dev_tn(dy, x, dw, offs({0, 100, 300}), 1.0f, 1.0f);
  EXPECT_NO_THROW(bf().to_host(dw));
}

TEST_F(ExpertGemm, AddGroupSizesMatchesTheReference) {
  std::mt19937 rng(4);
  for (int64_t groups : {1, 7, 64, 300}) {
    std::vector<int64_t> rows(static_cast<size_t>(groups));
    std::uniform_int_distribution<int64_t> pick(0, 50);
    for (auto& r : rows) r = pick(rng) < 10 ? 0 : pick(rng);
    const Tensor o = host_offsets(rows);
    Tensor counts_h = Tensor::empty({groups}, DType::i64);
    for (int64_t g = 0; g < groups; ++g) counts_h.i64()[g] = g * 1000;
    Tensor counts_d = bf().from_host(counts_h);
    const Tensor od = bf().from_host(o);
    bf().add_group_sizes(od, counts_d);
    bf().add_group_sizes(od, counts_d);
    cpu().add_group_sizes(o, counts_h);
    cpu().add_group_sizes(o, counts_h);
    const Tensor got = bf().to_host(counts_d);
    for (int64_t g = 0; g < groups; ++g)
      ASSERT_EQ(got.i64()[g], counts_h.i64()[g]) << "group " << g << " of " << groups;
  }
}

// moe-2b's training step: 16,384 tokens routed to 6 of 64 experts (~1,536 rows per expert,
// boundaries from moe_sort_offsets on the device), its six expert GEMMs checked in full and
// timed beside grouped_matmul with host counts (one cuBLAS bf16 GEMM per expert).
TEST_F(ExpertGemm, MatchesTheCpuReferenceAtMoe2bTrainingShapes) {
  const bool small = std::getenv("SHOAL_SMALL_SHAPES") != nullptr;
  moe2b_shapes(small ? 512 : 16384);
}

void ExpertGemm::moe2b_shapes(int64_t tokens) {
  std::mt19937 rng(21);
  const int64_t experts = 64, top_k = 6, d = 2048, inter = 256, rows_total = tokens * top_k;
  const Tensor idx = route(tokens, experts, top_k, rng);
  Tensor order = bf().empty({rows_total}, DType::i32),
         offs_d = bf().empty({experts + 1}, DType::i32);
  bf().moe_sort_offsets(bf().from_host(idx), experts, order, offs_d);
  const Tensor offs_h = bf().to_host(offs_d);
  std::vector<int64_t> rows(static_cast<size_t>(experts));
  for (int64_t e = 0; e < experts; ++e) rows[size_t(e)] = offs_h.i32()[e + 1] - offs_h.i32()[e];
  const std::string tag = fmt::format("moe-2b {} tokens, {} rows", tokens, rows_total);
  // The activations (xs, h, dy, dgu) and weights (W_gu [E, 2I, D], W_d [E, D, I]).
  const Tensor xs = fast_uniform({rows_total, d}, 1), h = fast_uniform({rows_total, inter}, 2);
  const Tensor dy = fast_uniform({rows_total, d}, 3),
               dgu = fast_uniform({rows_total, 2 * inter}, 4);
  const Tensor wgu = fast_uniform({experts, 2 * inter, d}, 5, -0.1f, 0.1f);
  const Tensor wd = fast_uniform({experts, d, inter}, 6, -0.1f, 0.1f);
  const Tensor gwd0 = fast_uniform({experts, d, inter}, 7),
               gwgu0 = fast_uniform({experts, 2 * inter, d}, 8);
  EXPECT_EQ(
      check(Layout::nt, "x W_gu^T " + tag, rows, xs, wgu, nullptr, false, true, 1, 0, &offs_d), 0);
  EXPECT_EQ(check(Layout::nt, "h W_d^T " + tag, rows, h, wd, nullptr, false, true, 1, 0, &offs_d),
            0);
  EXPECT_EQ(
      check(Layout::tn, "dW_d += dy^T h " + tag, rows, dy, h, &gwd0, false, false, 1, 1, &offs_d),
      0);
  EXPECT_EQ(
      check(Layout::nn, "dh = dy W_d " + tag, rows, dy, wd, nullptr, false, true, 1, 0, &offs_d),
      0);
  EXPECT_EQ(check(Layout::tn, "dW_gu += dgu^T x " + tag, rows, dgu, xs, &gwgu0, false, false, 1, 1,
                  &offs_d),
            0);
  EXPECT_EQ(check(Layout::nn, "dx = dgu W_gu " + tag, rows, dgu, wgu, nullptr, false, true, 1, 0,
                  &offs_d),
            0);
  if (!perf_enabled()) return;

  // Timing: the same six GEMMs on device tensors, device offsets against host counts.
  const Tensor xs_d = bf().from_host(xs), h_d = bf().from_host(h), dy_d = bf().from_host(dy),
               dgu_d = bf().from_host(dgu);
  const Tensor wgu_d = to_device(bf(), wgu, true), wd_d = to_device(bf(), wd, true);
  Tensor gate_up = bf().empty({rows_total, 2 * inter}), ys = bf().empty({rows_total, d});
  Tensor dh = bf().empty({rows_total, inter}), dxs = bf().empty({rows_total, d});
  Tensor gwd = bf().zeros({experts, d, inter}), gwgu = bf().zeros({experts, 2 * inter, d});
  const double flops = 2.0 * double(rows_total) * double(2 * inter) * double(d);
  const double flops_d = 2.0 * double(rows_total) * double(inter) * double(d);
  struct Timed {
    const char* what;
    double flops;
    std::function<void()> dev, host;
  };
  const std::vector<Timed> timed = {
      {"x W_gu^T (nt, n 512 k 2048)", flops,
       [&] { bf().grouped_matmul_dev(xs_d, wgu_d, gate_up, offs_d); },
       [&] { bf().grouped_matmul(xs_d, false, wgu_d, true, gate_up, rows); }},
      {"h W_d^T (nt, n 2048 k 256)", flops_d,
       [&] { bf().grouped_matmul_dev(h_d, wd_d, ys, offs_d); },
       [&] { bf().grouped_matmul(h_d, false, wd_d, true, ys, rows); }},
      {"dW_d += dy^T h (tn, 2048 x 256)", flops_d,
       [&] { bf().grouped_matmul_dev_tn(dy_d, h_d, gwd, offs_d, 1.0f, 1.0f); },
       [&] { bf().grouped_matmul(dy_d, true, h_d, false, gwd, rows, 1.0f, 1.0f); }},
      {"dh = dy W_d (nn, n 256 k 2048)", flops_d,
       [&] { bf().grouped_matmul_dev_nn(dy_d, wd_d, dh, offs_d); },
       [&] { bf().grouped_matmul(dy_d, false, wd_d, false, dh, rows); }},
      {"dW_gu += dgu^T x (tn, 512 x 2048)", flops,
       [&] { bf().grouped_matmul_dev_tn(dgu_d, xs_d, gwgu, offs_d, 1.0f, 1.0f); },
       [&] { bf().grouped_matmul(dgu_d, true, xs_d, false, gwgu, rows, 1.0f, 1.0f); }},
      {"dx = dgu W_gu (nn, n 2048 k 512)", flops,
       [&] { bf().grouped_matmul_dev_nn(dgu_d, wgu_d, dxs, offs_d); },
       [&] { bf().grouped_matmul(dgu_d, false, wgu_d, false, dxs, rows); }},
  };
  double dev_total = 0, host_total = 0;
  for (const Timed& t : timed) {
    const double dev_us = time_us(t.dev, 20), host_us = time_us(t.host, 20);
    dev_total += dev_us;
    host_total += host_us;
    perf_flops("expert GEMM, dev", t.what, dev_us, t.flops);
    perf_flops("expert GEMM, host cnt", t.what, host_us, t.flops);
  }
  std::printf("[ perf %-19s] %-44s %10.1f us against %.1f us with host counts (%.2fx)\n",
              "expert GEMMs", "six GEMMs of one layer", dev_total, host_total,
              host_total / dev_total);
}

// One MoE layer's training forward (load counted, no balance loss) and backward in bf16 GEMM
// mode, on the device path (boundaries and load counts on the device) against the host-count
// path (a backend whose grouped GEMMs are the reference): the same routing and load counts, the
// experts' first GEMM (the same rounded inputs on both sides) within twice the accumulation
// bound, and the output, input gradient and every parameter gradient within bf16's resolution
// (2^-7 of the tensor's RMS per element, 2^-9 of its norm overall: the two paths differ only in
// summation order, which can move an intermediate across a bf16 rounding boundary; an expert GEMM
// on the wrong rows, group or layout errs by O(1)). Then the bias update reads the device counts.
TEST_F(ExpertGemm, MoeTrainingStepOnTheDevicePathMatchesTheHostCountPath) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 264;
  c.num_hidden_layers = 1;
  c.layer_is_moe = {true};
  c.num_attention_heads = 1;
  c.kv_lora_rank = 4;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 2;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 72;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.validate("expert_gemm moe config");
  const int64_t n = 700, d = c.hidden_size, e = c.n_routed_experts;
  auto host_be = make_cuda_backend(
      0, CudaBackendOptions{.gemm = CudaGemm::bf16, .device_grouped_gemms = false});
  ASSERT_TRUE(bf().device_grouped_gemms());
  ASSERT_FALSE(host_be->device_grouped_gemms());
  Backend* bes[2] = {&bf(), host_be.get()};
  std::vector<std::unique_ptr<ParamSet>> ps;
  std::vector<std::unique_ptr<Moe>> moes;
  for (Backend* be : bes) {
    ps.push_back(std::make_unique<ParamSet>(*be));
    moes.push_back(std::make_unique<Moe>(c, *ps.back(), "model.layers.0.mlp."));
  }
  for (size_t i = 0; i < ps[0]->size(); ++i) {
    const Tensor v = rand_host((*ps[0])[i].value.shape(), -0.2f, 0.2f);
    for (int s = 0; s < 2; ++s) bes[s]->copy(v, (*ps[size_t(s)])[i].value);
  }
  const Tensor xh = rand_host({n, d}), dyh = rand_host({n, d});
  MoeSaved saved[2];
  Tensor y[2], dx[2];
  for (int s = 0; s < 2; ++s) {
    Backend& be = *bes[s];
    for (auto& p : *ps[size_t(s)])
      if (p.grad.defined()) be.zero(p.grad);
    y[s] = be.empty({n, d});
    dx[s] = be.empty({n, d});
    moes[size_t(s)]->forward(be, be.from_host(xh), {0, 300, n}, y[s], saved[s], nullptr, 0.0, true);
    moes[size_t(s)]->backward(be, saved[s], be.from_host(dyh), dx[s]);
  }
  EXPECT_TRUE(saved[0].counts.empty() && saved[0].offsets.defined()) << "device path";
  ASSERT_EQ(int64_t(saved[1].counts.size()), e) << "host-count path";
  // The same routing, and the same load counts (the device's read back).
  const Tensor idx0 = bf().to_host(saved[0].topk_idx), idx1 = host_be->to_host(saved[1].topk_idx);
  for (int64_t i = 0; i < idx0.numel(); ++i) ASSERT_EQ(idx0.i32()[i], idx1.i32()[i]);
  const std::vector<int64_t> load0 = moes[0]->load(bf()), load1 = moes[1]->load(*host_be);
  EXPECT_EQ(load0, load1);
  EXPECT_EQ(load1, saved[1].counts);

  {  // The experts' first GEMM: the same rounded inputs on both paths.
    const Tensor xs = bf().to_host(saved[0].xs);
    Tensor w;
    for (auto& p : *ps[0])
      if (p.name.ends_with("experts.gate_up_proj")) w = bf().to_host(p.value);
    Tensor mag = Tensor::zeros({xs.size(0), w.size(1)}, DType::f32);
    cpu().grouped_matmul(abs_of(bf16_rounded(xs)), false, abs_of(bf16_rounded(w)), true, mag,
                         saved[1].counts);
    const Tensor g0 = bf().to_host(saved[0].gate_up), g1 = host_be->to_host(saved[1].gate_up);
    int64_t bad = 0;
    for (int64_t i = 0; i < g0.numel(); ++i)
      bad += !(std::fabs(double(g0.f32()[i]) - double(g1.f32()[i])) <=
               2 * bf16_accumulation_bound(double(mag.f32()[i]), d));
    EXPECT_EQ(bad, 0) << "the experts' first GEMM, device path against host path";
  }
  auto close = [&](const std::string& what, const Tensor& dev, const Tensor& host) {
    const Tensor a = bf().to_host(dev), b = host_be->to_host(host);
    ASSERT_EQ(a.shape(), b.shape()) << what;
    double ss = 0, diff2 = 0, worst = 0;
    for (int64_t i = 0; i < b.numel(); ++i) ss += double(b.f32()[i]) * double(b.f32()[i]);
    const double rms = std::sqrt(ss / double(std::max<int64_t>(1, b.numel())));
    int64_t bad = 0;
    for (int64_t i = 0; i < b.numel(); ++i) {
      const double e = std::fabs(double(a.f32()[i]) - double(b.f32()[i]));
      diff2 += e * e;
      bad += !(e <= std::ldexp(rms, -7));
      worst = std::max(worst, e / std::max(rms, 1e-30));
    }
    const bool norm_ok = std::sqrt(diff2) <= std::ldexp(std::sqrt(ss), -9);
    std::printf("[ %-24s] %-40s rms %-10.3g worst |diff| / rms %-10.3g norm ratio %-10.3g %s\n",
                "moe device vs host", what.c_str(), rms, worst,
                std::sqrt(diff2) / std::max(std::sqrt(ss), 1e-30),
                bad == 0 && norm_ok ? "PASS" : "FAIL");
    EXPECT_EQ(bad, 0) << what;
    EXPECT_TRUE(norm_ok) << what;
  };
  close("y", y[0], y[1]);
  close("dx", dx[0], dx[1]);
  for (size_t i = 0; i < ps[0]->size(); ++i)
    if ((*ps[0])[i].grad.defined())
      close("grad " + (*ps[0])[i].name, (*ps[0])[i].grad, (*ps[1])[i].grad);

  // The bias update reads the device counts back, moves the same way as the host path's, and
  // resets them.
  moes[0]->update_bias(bf(), 0.01);
  moes[1]->update_bias(*host_be, 0.01);
  const Tensor b0 = bf().to_host(moes[0]->bias()), b1 = host_be->to_host(moes[1]->bias());
  for (int64_t i = 0; i < e; ++i) EXPECT_EQ(b0.f32()[i], b1.f32()[i]) << "expert " << i;
  for (int64_t l : moes[0]->load(bf())) EXPECT_EQ(l, 0);
}

}  // namespace
}  // namespace shoal
