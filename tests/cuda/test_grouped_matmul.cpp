// Backend::grouped_matmul on the CUDA backend against the CPU backend's (one matmul per group) on
// random inputs, in each CudaGemm mode, for the three forms the MoE layer uses (x_g W_g^T,
// dy_g W_g, dW_g += dy_g^T x_g): empty groups, groups of one row, a single group, all groups
// empty, strided operands, beta 0 / 0.5 / 1. Then the time of the moe-2b experts' GEMMs grouped
// against one matmul per expert. Skips without a device. Not a test of the MoE layer itself
// (tests/cuda/test_golden_cuda.cpp runs the models).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "base/error.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;

// An operand of one case: 2-D (rows split by the groups) or 3-D (one matrix per group); `rows`
// x `cols` per group for 3-D, cols for 2-D (whose rows are the groups' total). Built as a column
// slice of a wider tensor, so that row strides exceed the width as in the model's views.
struct Operand {
  bool grouped3d;
  int64_t rows, cols;
};

// |x| element-wise (contiguous copy).
Tensor abs_of(const Tensor& t) {
  Tensor a = t.contiguous();
  for (int64_t i = 0; i < a.numel(); ++i) a.f32()[i] = std::fabs(a.f32()[i]);
  return a;
}

TEST_F(BackendOps, GroupedMatmul) {
  struct Form {
    const char* name;
    Operand a;
    bool ta;
    Operand b;
    bool tb;
    Operand c;
  };
  const int64_t K = 70, N = 24;  // the weights' two dims (odd-ish, not multiples of the tiles)
  const Form forms[] = {
      {"x W^T", {false, 0, K}, false, {true, N, K}, true, {false, 0, N}},
      {"dy W", {false, 0, N}, false, {true, N, K}, false, {false, 0, K}},
      {"dy^T x", {false, 0, N}, true, {false, 0, K}, false, {true, N, K}},
  };
  const std::vector<std::vector<int64_t>> row_sets = {
      {0, 1, 5, 0, 3, 17, 1}, {0, 0, 0}, {40}, {33, 0, 64, 1, 2}, {}};
  struct Mode {
    CudaGemm gemm;
    CudaGrouped grouped;
  };
  for (Mode md :
       {Mode{CudaGemm::f32, CudaGrouped::loop}, Mode{CudaGemm::tf32, CudaGrouped::loop},
        Mode{CudaGemm::tf32, CudaGrouped::batched}, Mode{CudaGemm::bf16, CudaGrouped::loop},
        Mode{CudaGemm::bf16, CudaGrouped::streams}, Mode{CudaGemm::bf16, CudaGrouped::batched}}) {
    const CudaGemm mode = md.gemm;
    auto be = make_cuda_backend(0, CudaBackendOptions{mode, false, CudaAttention::f32, md.grouped});
    // Operand rounding as MatmulTensorCoreModes derives it: u = 2^-7 (bf16), 2^-10 (TF32), 0 (f32);
    // batched runs TF32 operands in bf16 mode too.
    const bool tf32_ops = mode == CudaGemm::tf32 || md.grouped == CudaGrouped::batched;
    const double u = mode == CudaGemm::f32 ? 0.0
                     : tf32_ops            ? std::ldexp(1.0, -10)
                                           : std::ldexp(1.0, -7);
    const std::string mode_name =
        std::string(cuda_gemm_name(mode)) + " " + cuda_grouped_name(md.grouped);
    double worst_ratio = 0, worst_rel = 0;
    for (const Form& f : forms)
      for (const auto& rows : row_sets)
        for (float beta : {0.0f, 0.5f, 1.0f}) {
          const int64_t groups = int64_t(rows.size());
          const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
          auto make = [&](const Operand& o, Tensor& host, Tensor& view_h, Tensor& view_d,
                          Tensor& dev) {
            const Shape s =
                o.grouped3d ? Shape{groups, o.rows, o.cols + 3} : Shape{total, o.cols + 3};
            host = rand_host(s);
            dev = be->from_host(host);
            view_h = host.slice(host.ndim() - 1, 1, 1 + o.cols);
            view_d = dev.slice(dev.ndim() - 1, 1, 1 + o.cols);
          };
          Tensor ah, av, ad, adv, bh, bv, bd, bdv, ch, cv, cd, cdv;
          make(f.a, ah, av, adv, ad);
          make(f.b, bh, bv, bdv, bd);
          make(f.c, ch, cv, cdv, cd);
          const float alpha = 0.75f;
          Tensor ref = ch.clone();
          Tensor ref_v = ref.slice(ref.ndim() - 1, 1, 1 + f.c.cols);
          cpu().grouped_matmul(av, f.ta, bv, f.tb, ref_v, rows, alpha, beta);
          // alpha |A| |B| per element, for the bound.
          Tensor mag = Tensor::zeros(cv.shape(), DType::f32);
          cpu().grouped_matmul(abs_of(av), f.ta, abs_of(bv), f.tb, mag, rows, alpha, 0.0f);
          be->grouped_matmul(adv, f.ta, bdv, f.tb, cdv, rows, alpha, beta);
          Tensor got = be->to_host(cd);
          // The contraction length: the groups' rows for dy^T x, else the weights' dim.
          int64_t kmax = f.ta ? 0 : (f.tb ? K : N);
          if (f.ta)
            for (int64_t r : rows) kmax = std::max(kmax, r);
          const std::string what =
              fmt::format("{} groups={} rows={} beta={}", f.name, groups, total, beta);
          int64_t bad = 0;
          double max_abs = 0;
          const int64_t outer = got.numel() / got.size(-1), width = got.size(-1);
          for (int64_t r = 0; r < outer; ++r)
            for (int64_t j = 0; j < width; ++j) {
              const int64_t i = r * width + j;
              const double e = std::fabs(double(got.f32()[i]) - double(ref.f32()[i]));
              if (j < 1 || j >= 1 + f.c.cols) {  // outside the view: untouched
                if (got.f32()[i] != ch.f32()[i]) ++bad;
                continue;
              }
              const double prod = double(mag.f32()[r * f.c.cols + (j - 1)]);
              // MatmulTensorCoreModes' bound, with the f32 terms at first order in full: each
              // side's k-term sum (k 2^-24 each), its scaling by alpha and its final add (2 2^-24
              // each).
              const double bound =
                  prod * (2 * u + u * u + double(2 * kmax + 4) * std::ldexp(1.0, -24)) +
                  std::ldexp(1.0, -22) * std::fabs(beta * ch.f32()[i]) + 1e-30;
              if (!(e <= bound)) ++bad;
              max_abs = std::max(max_abs, e);
              worst_ratio = std::max(worst_ratio, e / bound);
              if (prod > 0) worst_rel = std::max(worst_rel, e / prod);
            }
          std::printf("[ %-24s] %-44s max_abs=%-10.3g bad=%lld of %lld %s\n",
                      ("grouped " + mode_name).c_str(), what.c_str(), max_abs,
                      static_cast<long long>(bad), static_cast<long long>(got.numel()),
                      bad == 0 ? "PASS" : "FAIL");
          EXPECT_EQ(bad, 0) << mode_name << " " << what;
        }
    std::printf("[ grouped %-16s] worst error / bound %.3g; worst error / (alpha |A||B|) %.3g\n",
                mode_name.c_str(), worst_ratio, worst_rel);
    // Operands rounded to 8 or 11 bits err by up to 2^-8 or 2^-11 per product: far above f32's
    // ~1e-7 (MatmulTensorCoreModes); a mode that skipped its rounding would stay near f32's.
    if (mode != CudaGemm::f32) {
      EXPECT_GT(worst_rel, 1e-5) << mode_name;
    }
  }

  // Bad calls are refused as on the CPU: counts that do not add up, a negative count, a 3-D
  // operand with the wrong number of matrices.
  Tensor x = gpu().zeros({5, 8}), w = gpu().zeros({2, 4, 8}), y = gpu().zeros({5, 4});
  EXPECT_THROW(gpu().grouped_matmul(x, false, w, true, y, {2, 2}), Error);
  EXPECT_THROW(gpu().grouped_matmul(x, false, w, true, y, {6, -1}), Error);
  EXPECT_THROW(gpu().grouped_matmul(x, false, w, true, y, {2, 2, 1}), Error);

  if (!perf_enabled()) return;
  // moe-2b's routed experts: 64 experts of 2 x 256 / 256 x 2048 over 16,384 tokens x top-6, the
  // rows per expert uneven (1,536 on average), in each CudaGrouped mode.
  const int64_t experts = 64, d = 2048, inter = 256;
  std::vector<int64_t> rows(static_cast<size_t>(experts));
  for (int64_t g = 0; g < experts; ++g) rows[size_t(g)] = 1536 + (g % 9 - 4) * 160;
  const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
  Tensor xs = gpu().from_host(rand_host({total, d}));
  Tensor gu = gpu().from_host(rand_host({experts, 2 * inter, d}));
  Tensor out = gpu().empty({total, 2 * inter}),
         dgu = gpu().from_host(rand_host({total, 2 * inter}));
  Tensor dw = gpu().zeros({experts, 2 * inter, d});
  const double flops = 2.0 * double(total) * double(2 * inter) * double(d);
  const std::string shape = fmt::format("{} x {} x {}, 64 groups", total, 2 * inter, d);
  for (CudaGrouped g : {CudaGrouped::loop, CudaGrouped::streams, CudaGrouped::batched}) {
    auto be =
        make_cuda_backend(0, CudaBackendOptions{CudaGemm::bf16, false, CudaAttention::f32, g});
    const std::string name = std::string("bf16 ") + cuda_grouped_name(g);
    perf_flops(name, "x W^T " + shape,
               time_us([&] { be->grouped_matmul(xs, false, gu, true, out, rows); }), flops);
    perf_flops(name, "dW += dy^T x " + shape,
               time_us([&] { be->grouped_matmul(dgu, true, xs, false, dw, rows, 1.0f, 1.0f); }),
               flops);
  }
}

}  // namespace
}  // namespace shoal
