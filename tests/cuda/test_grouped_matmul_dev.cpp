// The MoE expert GEMM with device-side group boundaries (Backend::grouped_matmul_dev; in bf16
// GEMM mode kernels/moe/grouped_gemm.cu) and the sort that produces them (moe_sort_offsets),
// against the CPU reference (engine/backend.cpp) on random inputs: moe-2b's two expert GEMMs
// (x W_gu^T, 2,048 -> 512, and h W_d^T, 256 -> 2,048) at the decode step's row counts (batch 1, 32
// and 256 routed to 6 of 64 experts, boundaries from moe_sort_offsets on the device), odd shapes
// (empty groups, groups of one row, rows, n and k not multiples of the tiles, strided and
// misaligned views that take the scalar loads), and each of the kernel's plans (row tiles of 8,
// 16 and 32 rows, k split 1 to 8 ways, more groups than a block scans at once); every call twice,
// bit for bit the same; the weight as a parameter (its kept bf16 copy) and as an activation; bad
// offsets reported at the next synchronisation; the f32 mode's fallback. Then the time of the
// decode shapes against grouped_matmul with host counts, and of each GEMM alone per call
// (recorded, as the decode step runs it) with its weights' GB/s. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>

#include "base/error.h"
#include "engine/model/config.h"
#include "engine/model/moe.h"
#include "engine/model/params.h"
#include "kernels/moe/grouped_gemm.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;

Tensor moe_weight(ParamSet& ps, const std::string& suffix) {
  for (auto& p : ps)
    if (p.name.ends_with(suffix)) return p.value;
  SHOAL_FAIL("no parameter named *{}", suffix);
}

using test::abs_of;
using test::bf16_accumulation_bound;
using test::bf16_rounded;

constexpr float kPoison = 12345.0f;

// The kernel's plan for a call (grouped_gemm.h), to name the path a case takes.
std::string plan_of(int64_t rows, int64_t n, int64_t k, int64_t groups) {
  const kernels::GroupedGemmPlan pl = kernels::grouped_gemm_plan(rows, n, k, groups);
  return fmt::format("[{} rows/tile, k split {}]", 8 * pl.row_tiles, pl.k_split);
}

Tensor host_offsets(const std::vector<int64_t>& rows) {
  Tensor o = Tensor::empty({int64_t(rows.size()) + 1}, DType::i32);
  o.i32()[0] = 0;
  for (size_t g = 0; g < rows.size(); ++g) o.i32()[g + 1] = o.i32()[g] + int32_t(rows[g]);
  return o;
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

class GroupedMatmulDev : public test::Bf16BackendOps {
 protected:
  void time_decode_shapes();

  // Mean microseconds of one call of fn as a decode step runs it: `calls` calls recorded into one
  // graph (no launch cost from the host), the replay timed; without a recording, called directly.
  template <typename Fn>
  double recorded_us(Fn&& fn, int calls = 10) {
    std::string why;
    auto graph = bf().record(
        [&] {
          for (int i = 0; i < calls; ++i) fn();
        },
        why);
    if (!graph) return time_us(fn);
    return time_us([&] { graph->replay(); }) / calls;
  }

  // One call of bf().grouped_matmul_dev(a, b, c, offsets) checked element by element against
  // the CPU reference on the rounded operands: a [T, k] (a column slice of a wider tensor when
  // `strided`), b [G, n, k] (a parameter or an activation, a slice when strided), c a column slice
  // of a poisoned [T, n + 2] whose outer columns must stay poisoned. offsets_d: the device offsets
  // (given, or uploaded from rows). A second call into a second poisoned c must give the same
  // bits (the k split adds in a fixed order). Returns the elements out of bound or differing.
  int64_t check(const std::string& what, const std::vector<int64_t>& rows, int64_t n, int64_t k,
                bool strided, bool b_param, const Tensor* offsets_d = nullptr) {
    const int64_t groups = int64_t(rows.size());
    const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
    // Strided views: a starts 1 element in (misaligned: scalar loads); b 8 in, so that it stays
    // 16-byte aligned (vector loads) when its row stride k + 8 is a multiple of 8.
    const int64_t pa = strided ? 3 : 0, pb = strided ? 8 : 0;
    Tensor ah_big = rand_host({total, k + pa}, -2.0f, 2.0f);
    Tensor bh_big = rand_host({groups, n, k + pb}, -2.0f, 2.0f);
    Tensor ad_big = bf().from_host(ah_big);
    Tensor bd_big;
    if (b_param) {
      bd_big = bf().zeros(bh_big.shape());
      bd_big.storage()->parameter = true;
      bf().copy(bf().from_host(bh_big), bd_big);
    } else {
      bd_big = bf().from_host(bh_big);
    }
    const int64_t a0 = strided ? 1 : 0, b0 = strided ? 8 : 0;
    Tensor ah = ah_big.slice(1, a0, a0 + k), ad = ad_big.slice(1, a0, a0 + k);
    Tensor bh = bh_big.slice(2, b0, b0 + k), bd = bd_big.slice(2, b0, b0 + k);
    Tensor ch_big = Tensor::empty({total, n + 2}, DType::f32);
    std::fill_n(ch_big.f32(), ch_big.numel(), kPoison);
    Tensor cd_big = bf().from_host(ch_big);
    Tensor cd = cd_big.slice(1, 1, 1 + n);
    const Tensor offs_h = host_offsets(rows);
    const Tensor offs_d = offsets_d ? *offsets_d : bf().from_host(offs_h);
    bf().grouped_matmul_dev(ad, bd, cd, offs_d);
    const Tensor got = bf().to_host(cd_big);
    Tensor cd2_big = bf().from_host(ch_big);
    Tensor cd2 = cd2_big.slice(1, 1, 1 + n);
    bf().grouped_matmul_dev(ad, bd, cd2, offs_d);
    const Tensor again = bf().to_host(cd2_big);
    int64_t differ = 0;
    for (int64_t i = 0; i < got.numel(); ++i)
      differ += std::memcmp(got.f32() + i, again.f32() + i, sizeof(float)) != 0;

    Tensor ref = Tensor::zeros({total, n}, DType::f32), mag = Tensor::zeros({total, n}, DType::f32);
    cpu().grouped_matmul_dev(bf16_rounded(ah), bf16_rounded(bh), ref, offs_h);
    cpu().grouped_matmul_dev(abs_of(bf16_rounded(ah)), abs_of(bf16_rounded(bh)), mag, offs_h);
    int64_t bad = 0;
    double worst = 0;
    for (int64_t r = 0; r < total; ++r)
      for (int64_t j = 0; j < n + 2; ++j) {
        const float g = got.f32()[r * (n + 2) + j];
        if (j == 0 || j == n + 1) {
          bad += g != kPoison;
          continue;
        }
        const double e = std::fabs(double(g) - double(ref.f32()[r * n + j - 1]));
        const double b = bf16_accumulation_bound(double(mag.f32()[r * n + j - 1]), k);
        if (!(e <= b)) ++bad;
        worst = std::max(worst, e / b);
      }
    const std::string named = what + " " + plan_of(total, n, k, groups);
    std::printf(
        "[ %-24s] %-58s worst error / bound %-9.3g bad=%lld of %lld, %lld differ on a "
        "second call %s\n",
        "grouped_matmul_dev", named.c_str(), worst, static_cast<long long>(bad),
        static_cast<long long>(total * (n + 2)), static_cast<long long>(differ),
        bad + differ == 0 ? "PASS" : "FAIL");
    return bad + differ;
  }
};

TEST_F(GroupedMatmulDev, MatchesTheCpuReferenceOnOddShapes) {
  struct Case {
    std::vector<int64_t> rows;
    int64_t n, k;
    bool strided;
  };
  const Case cases[] = {
      {{0, 1, 5, 0, 3, 17, 1}, 24, 70, true},   // k % 4 != 0: scalar loads of both operands
      {{0, 1, 5, 0, 3, 17, 1}, 24, 72, false},  // vector loads of both
      {{3, 0, 70}, 40, 68, false},              // k % 8 != 0: vector a, scalar b
      {{0, 0, 0}, 8, 16, false},                // no rows
      {{40}, 100, 72, true},                    // scalar a (misaligned), vector b
      {{33, 0, 64, 1, 2}, 65, 128, false},
      {{65, 0, 129, 1}, 130, 136, false},
      {{1}, 1, 1, false},
      {{0, 0, 1, 0}, 64, 64, false},
      {{200, 3}, 7, 9, true},
  };
  for (const Case& c : cases)
    for (int b_param = 0; b_param < 2; ++b_param) {
      const std::string what =
          fmt::format("groups={} rows={} n={} k={}{} b {}", c.rows.size(),
                      std::accumulate(c.rows.begin(), c.rows.end(), int64_t(0)), c.n, c.k,
                      c.strided ? " strided" : "", b_param ? "parameter" : "activation");
      EXPECT_EQ(check(what, c.rows, c.n, c.k, c.strided, b_param != 0), 0) << what;
    }
}

// Each plan of grouped_gemm_plan (the rows of a tile from the average group, the k split from the
// work there is) on shapes that also take its edges: one row per group among many empty ones (a
// batch of 1), a few rows, groups longer than a tile, more groups than a block scans at once (256),
// n not a multiple of a warp's 16 columns, k not a multiple of a step (128), of 8 (element-wise
// weight loads) or of 4 (element-wise activation loads), strided and misaligned views.
TEST_F(GroupedMatmulDev, MatchesTheCpuReferenceOnEachPlan) {
  struct Case {
    std::vector<int64_t> rows;
    int64_t n, k;
    bool strided;
  };
  // 64 groups, rows only in `at` (a decode batch's shape with few tokens).
  auto sparse = [](int64_t groups, std::initializer_list<std::pair<int64_t, int64_t>> at) {
    std::vector<int64_t> r(static_cast<size_t>(groups), 0);
    for (const auto& [g, rows] : at) r[size_t(g)] = rows;
    return r;
  };
  const std::vector<int64_t> one_each =
      sparse(64, {{3, 1}, {9, 1}, {10, 1}, {31, 1}, {50, 1}, {63, 1}});
  const Case cases[] = {
      {one_each, 512, 1024, false},  // batch 1: 8-row tiles, k split 8
      {one_each, 40, 1100, false},   // k % 8 == 4: element-wise weights; 9 steps over 8 k parts
      {one_each, 40, 1101, true},    // element-wise both, strided
      {one_each, 200, 256, true},    // k split 2, 4 warps along n, n % 16 == 8
      {sparse(64, {{0, 3}, {2, 2}, {5, 5}, {6, 1}, {40, 4}, {63, 9}}), 100, 264, false},
      {sparse(64, {{1, 2}, {7, 11}, {8, 3}}), 33, 70, true},  // a group of two 8-row tiles
      {{7, 9, 12, 0, 3, 16}, 33, 200, false},                 // 16-row tiles
      {{7, 9, 12, 0, 3, 16}, 50, 520, true},
      {{24, 40, 0, 17, 33, 64}, 70, 136, false},    // 32-row tiles, groups of 1 and 2 tiles
      {{24, 40, 0, 17, 33, 64}, 48, 517, true},     // ... element-wise, strided
      {{24, 40, 0, 17, 33, 64}, 3000, 300, false},  // enough blocks: no k split
      {{7, 9, 12, 0, 3, 16}, 8200, 136, false},
      {{2, 1}, 17, 1, false},                                                // k = 1
      {sparse(300, {{5, 2}, {255, 1}, {256, 3}, {299, 1}}), 24, 40, false},  // 2 chunks of groups
      {sparse(300, {{0, 40}, {150, 30}, {299, 20}}), 24, 136, true},
  };
  for (const Case& c : cases)
    for (int b_param = 0; b_param < 2; ++b_param) {
      const std::string what =
          fmt::format("groups={} rows={} n={} k={}{} b {}", c.rows.size(),
                      std::accumulate(c.rows.begin(), c.rows.end(), int64_t(0)), c.n, c.k,
                      c.strided ? " strided" : "", b_param ? "param" : "activation");
      EXPECT_EQ(check(what, c.rows, c.n, c.k, c.strided, b_param != 0), 0) << what;
    }
}

// moe-2b's decode step: B tokens routed to 6 of 64 experts, the boundaries sorted on the device.
TEST_F(GroupedMatmulDev, MatchesTheCpuReferenceAtMoe2bDecodeShapes) {
  std::mt19937 rng(5);
  const int64_t experts = 64, top_k = 6, d = 2048, inter = 256;
  for (int64_t batch : {1, 32, 256}) {
    const Tensor idx = route(batch, experts, top_k, rng);
    // The sort on the device against the CPU's: the same order and offsets.
    Tensor order_h = Tensor::empty({batch * top_k}, DType::i32);
    Tensor offs_h = Tensor::empty({experts + 1}, DType::i32);
    cpu().moe_sort_offsets(idx, experts, order_h, offs_h);
    Tensor order_d = bf().empty({batch * top_k}, DType::i32);
    Tensor offs_d = bf().empty({experts + 1}, DType::i32);
    bf().moe_sort_offsets(bf().from_host(idx), experts, order_d, offs_d);
    const Tensor order_back = bf().to_host(order_d), offs_back = bf().to_host(offs_d);
    int64_t sort_bad = 0;
    for (int64_t i = 0; i < batch * top_k; ++i) sort_bad += order_back.i32()[i] != order_h.i32()[i];
    for (int64_t e = 0; e <= experts; ++e) sort_bad += offs_back.i32()[e] != offs_h.i32()[e];
    EXPECT_EQ(sort_bad, 0) << "moe_sort_offsets, batch " << batch;
    std::vector<int64_t> rows(static_cast<size_t>(experts));
    for (int64_t e = 0; e < experts; ++e) rows[size_t(e)] = offs_h.i32()[e + 1] - offs_h.i32()[e];
    const int64_t empty = std::count(rows.begin(), rows.end(), int64_t(0));
    const std::string tag = fmt::format("batch {} ({} empty groups)", batch, empty);
    EXPECT_EQ(check("x W_gu^T " + tag, rows, 2 * inter, d, false, true, &offs_d), 0) << tag;
    EXPECT_EQ(check("h W_d^T " + tag, rows, d, inter, false, true, &offs_d), 0) << tag;
  }
  if (perf_enabled()) time_decode_shapes();
}

// Offsets that are not 0 = o_0 <= ... <= o_G = rows are found on the device and reported at the
// next synchronisation (and the kernel stays in bounds: compute-sanitizer runs this test too);
// the backend works on afterwards. The host checks refuse bad shapes at once.
TEST_F(GroupedMatmulDev, BadOffsetsAreReportedAtTheNextSynchronisation) {
  Tensor x = bf().from_host(rand_host({5, 16})), w = bf().from_host(rand_host({2, 8, 16}));
  Tensor y = bf().zeros({5, 8});
  auto offs = [&](std::vector<int32_t> v) {
    Tensor o = Tensor::empty({int64_t(v.size())}, DType::i32);
    for (size_t i = 0; i < v.size(); ++i) o.i32()[i] = v[i];
    return bf().from_host(o);
  };
  for (const std::vector<int32_t>& bad :
       {std::vector<int32_t>{1, 2, 5}, {0, 3, 2}, {0, 7, 5}, {0, 2, 4}, {0, -2, 5}, {0, 2, 9}}) {
    bf().grouped_matmul_dev(x, w, y, offs(bad));
    EXPECT_THROW(bf().to_host(y), Error) << bad[0] << " " << bad[1] << " " << bad[2];
  }
  EXPECT_THROW(bf().grouped_matmul_dev(x, w, y, offs({0, 1, 2, 5})), Error);  // 3 groups, 2 W
  Tensor host = Tensor::empty({3}, DType::i32);
  EXPECT_THROW(bf().grouped_matmul_dev(x, w, y, host), Error);  // offsets on the host
  bf().grouped_matmul_dev(x, w, y, offs({0, 2, 5}));
  EXPECT_NO_THROW(bf().to_host(y));
  // A bad expert id in the sort surfaces too.
  Tensor order = bf().empty({4}, DType::i32), o = bf().empty({5}, DType::i32);
  Tensor idx = Tensor::empty({4}, DType::i32);
  for (int i = 0; i < 4; ++i) idx.i32()[i] = i == 2 ? 4 : i;
  bf().moe_sort_offsets(bf().from_host(idx), 4, order, o);
  EXPECT_THROW(bf().to_host(o), Error);
}

// The f32 mode runs the reference (host offsets, grouped_matmul in f32): f32 accuracy, bound
// (2k + 4) 2^-24 |A||B| as MatmulTensorCoreModes derives it for f32 operands.
TEST_F(GroupedMatmulDev, F32ModeFallsBackToTheReference) {
  const std::vector<int64_t> rows = {0, 3, 0, 20, 1};
  const int64_t n = 33, k = 70, total = 24, groups = int64_t(rows.size());
  Tensor ah = rand_host({total, k}), bh = rand_host({groups, n, k});
  Tensor c = gpu().empty({total, n});
  const Tensor offs_h = host_offsets(rows);
  gpu().grouped_matmul_dev(gpu().from_host(ah), gpu().from_host(bh), c, gpu().from_host(offs_h));
  Tensor ref = Tensor::zeros({total, n}, DType::f32), mag = Tensor::zeros({total, n}, DType::f32);
  cpu().grouped_matmul_dev(ah, bh, ref, offs_h);
  cpu().grouped_matmul_dev(abs_of(ah), abs_of(bh), mag, offs_h);
  const Tensor got = gpu().to_host(c);
  int64_t bad = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double e = std::fabs(double(got.f32()[i]) - double(ref.f32()[i]));
    bad += !(e <= double(2 * k + 4) * std::ldexp(1.0, -24) * double(mag.f32()[i]) + 1e-30);
  }
  EXPECT_EQ(bad, 0);
}

// Moe::forward as the cached forward calls it (count_load false, no balance loss) takes the
// device path (moe_sort_offsets, grouped_matmul_dev) at decode sizes on every CUDA mode, and
// backward works from its offsets. Above 64 rows per expert, and as training calls it, the f32
// mode takes the host path, the bf16 mode (whose grouped GEMMs read the offsets on the device)
// the device path still; a bf16 backend with device_grouped_gemms off is its host-path twin. In
// f32 mode both paths run the same cuBLAS GEMMs on the same rows, so the experts' outputs are bit
// for bit the same; in bf16 mode the experts' first GEMM (its input xs is the same gather in
// both) agrees within twice the accumulation bound (each side against the exact product of the
// rounded operands), and the layer's output stays finite.
TEST_F(GroupedMatmulDev, MoeForwardTakesTheDevicePathForInference) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 72;
  c.num_hidden_layers = 1;
  c.layer_is_moe = {true};
  c.num_attention_heads = 1;
  c.kv_lora_rank = 4;
  c.qk_nope_head_dim = 2;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 2;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 3;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 40;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.validate("grouped_matmul_dev moe config");
  const int64_t n = 37, d = c.hidden_size, e = c.n_routed_experts, k = c.num_experts_per_tok;
  auto bf_host = make_cuda_backend(
      0, CudaBackendOptions{.gemm = CudaGemm::bf16, .device_grouped_gemms = false});
  for (bool bf16 : {false, true}) {
    Backend& be = bf16 ? bf() : gpu();
    Backend& host_be = bf16 ? *bf_host : gpu();  // keeps host counts in training
    ParamSet ps(be);
    Moe moe(c, ps, "model.layers.0.mlp.");
    for (auto& p : ps) be.copy(rand_host(p.value.shape(), -0.3f, 0.3f), p.value);
    const Tensor x = be.from_host(rand_host({n, d}));
    Tensor y_dev = be.empty({n, d}), y_host = be.empty({n, d});
    MoeSaved s_dev, s_host;
    moe.forward(be, x, {0, n}, y_dev, s_dev, nullptr, 0.0, /*count_load=*/false);
    EXPECT_TRUE(s_dev.counts.empty() && s_dev.offsets.defined());
    Tensor dx = be.empty({n, d});
    EXPECT_NO_THROW(moe.backward(be, s_dev, y_dev, dx));
    moe.forward(host_be, x, {0, n}, y_host, s_host, nullptr, 0.0, /*count_load=*/true);
    ASSERT_EQ(int64_t(s_host.counts.size()), e);
    {  // above 64 rows per expert on average (prefill-sized)
      const int64_t big = 64 * e / k + 1;
      const Tensor xb = be.from_host(rand_host({big, d}));
      Tensor yb = be.empty({big, d});
      MoeSaved sb;
      moe.forward(be, xb, {0, big}, yb, sb, nullptr, 0.0, /*count_load=*/false);
      EXPECT_EQ(sb.counts.empty(), bf16);
      EXPECT_EQ(sb.offsets.defined(), bf16);
    }
    const Tensor offs = be.to_host(s_dev.offsets);
    for (int64_t g = 0; g < e; ++g)
      EXPECT_EQ(offs.i32()[g + 1] - offs.i32()[g], s_host.counts[size_t(g)]) << "expert " << g;
    const Tensor yd = be.to_host(y_dev);
    for (int64_t i = 0; i < yd.numel(); ++i) ASSERT_TRUE(std::isfinite(yd.f32()[i]));
    if (!bf16) {
      // The experts' outputs before the scatter (whose atomic adds make y itself vary in the
      // last bits from call to call).
      int64_t differ = 0;
      for (const auto& [dev, host] :
           {std::pair{&s_dev.gate_up, &s_host.gate_up}, std::pair{&s_dev.ys, &s_host.ys}}) {
        const Tensor a = be.to_host(*dev), b = be.to_host(*host);
        for (int64_t i = 0; i < a.numel(); ++i) differ += a.f32()[i] != b.f32()[i];
      }
      EXPECT_EQ(differ, 0) << "f32: the device path's expert GEMMs differ from the host path's";
      continue;
    }
    const Tensor xs = be.to_host(s_dev.xs), w = be.to_host(moe_weight(ps, "experts.gate_up_proj"));
    Tensor mag = Tensor::zeros({n * k, w.size(1)}, DType::f32);
    cpu().grouped_matmul(abs_of(bf16_rounded(xs)), false, abs_of(bf16_rounded(w)), true, mag,
                         s_host.counts);
    const Tensor gd = be.to_host(s_dev.gate_up), gh = be.to_host(s_host.gate_up);
    int64_t bad = 0;
    for (int64_t i = 0; i < gd.numel(); ++i)
      bad += !(std::fabs(double(gd.f32()[i]) - double(gh.f32()[i])) <=
               2 * bf16_accumulation_bound(double(mag.f32()[i]), d));
    EXPECT_EQ(bad, 0) << "bf16: the experts' first GEMM, device path against host path";
  }
}

// The decode step's MoE GEMMs with the sort before them, as Moe::forward runs them: host counts
// (a synchronisation, then one cuBLAS GEMM per active expert) against device offsets (no
// synchronisation, one launch per GEMM); mean of 10 calls after a warm-up. Then each device GEMM
// alone: microseconds per call (10 calls recorded into one graph, replayed) and the GB/s of the
// weights it reads (the targets: batch 1 <= 8 us, 32 <= 30 us, 256 <= 50 us per call on average).
void GroupedMatmulDev::time_decode_shapes() {
  std::mt19937 rng(9);
  const int64_t experts = 64, top_k = 6, d = 2048, inter = 256;
  Tensor gu = bf().zeros({experts, 2 * inter, d}), dn = bf().zeros({experts, d, inter});
  for (Tensor* w : {&gu, &dn}) {
    w->storage()->parameter = true;
    bf().copy(bf().from_host(rand_host(w->shape())), *w);
  }
  for (int64_t batch : {1, 32, 256}) {
    const Tensor idx = route(batch, experts, top_k, rng);
    const int64_t rows_total = batch * top_k;
    Tensor order = bf().empty({rows_total}, DType::i32),
           offs = bf().empty({experts + 1}, DType::i32);
    std::vector<int64_t> counts;
    const Tensor idx_d = bf().from_host(idx);
    bf().moe_sort(idx_d, experts, order, counts);
    const int64_t active = experts - std::count(counts.begin(), counts.end(), int64_t(0));
    Tensor xs = bf().from_host(rand_host({rows_total, d})),
           h = bf().from_host(rand_host({rows_total, inter}));
    Tensor gate_up = bf().empty({rows_total, 2 * inter}), ys = bf().empty({rows_total, d});
    const double flops = 2.0 * double(rows_total) * double(2 * inter) * double(d) * 2;
    const double bytes = double(active) * double(2 * inter * d + d * inter) * 2;  // bf16 weights
    const std::string what = fmt::format("batch {} ({} experts active)", batch, active);
    const double host_us = time_us([&] {
      std::vector<int64_t> c;
      bf().moe_sort(idx_d, experts, order, c);
      bf().grouped_matmul(xs, false, gu, true, gate_up, c);
      bf().grouped_matmul(h, false, dn, true, ys, c);
    });
    const double dev_us = time_us([&] {
      bf().moe_sort_offsets(idx_d, experts, order, offs);
      bf().grouped_matmul_dev(xs, gu, gate_up, offs);
      bf().grouped_matmul_dev(h, dn, ys, offs);
    });
    perf_flops("sort + 2 GEMMs, host", what, host_us, flops);
    perf_flops("sort + 2 GEMMs, dev", what, dev_us, flops);
    perf_bytes("sort + 2 GEMMs, dev", what + " weights", dev_us, bytes);
    // Each GEMM alone, per call, as the decode step's graph runs it (offs: the last sort's), and
    // the GB/s of its active experts' weights (the bytes that bound it).
    const double gu_bytes = double(active) * double(2 * inter * d) * 2;
    const double dn_bytes = double(active) * double(d * inter) * 2;
    const double gu_us = recorded_us([&] { bf().grouped_matmul_dev(xs, gu, gate_up, offs); });
    const double dn_us = recorded_us([&] { bf().grouped_matmul_dev(h, dn, ys, offs); });
    perf_bytes(
        "grouped_gemm, call",
        fmt::format("batch {} x W_gu^T {}", batch, plan_of(rows_total, 2 * inter, d, experts)),
        gu_us, gu_bytes);
    perf_bytes("grouped_gemm, call",
               fmt::format("batch {} h W_d^T {}", batch, plan_of(rows_total, d, inter, experts)),
               dn_us, dn_bytes);
    perf_bytes("grouped_gemm, call", fmt::format("batch {} mean of the two", batch),
               (gu_us + dn_us) / 2, (gu_bytes + dn_bytes) / 2);
  }
}

}  // namespace
}  // namespace shoal
