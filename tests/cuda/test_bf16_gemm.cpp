// The bf16 GEMM mode on real bf16 operands (CudaGemm::bf16) and the multi-tensor AdamW, against
// the CPU backend on random inputs: matmul / grouped_matmul equal the CPU's product of the
// operands rounded to bf16 up to f32 accumulation (so both operands were rounded exactly once, to
// nearest); a parameter's kept bf16 copy follows every way its weights can change (copy, scale,
// add, zero, adamw, adamw_multi's fused refresh, a raw pointer, another backend), and a write that
// bypasses the version is shown to be caught; adamw_multi and grad_clip_factor equal the CPU's
// over many tensors of odd sizes. Skips without a device. Not the models (test_golden_cuda.cpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "engine/model/params.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;

using test::abs_of;
using test::bf16_accumulation_bound;
using test::bf16_rounded;

// Compares got with ref element-wise under bf16_accumulation_bound; prints one line. Returns the
// number of elements out of bound.
int64_t compare_rounded(const std::string& what, const Tensor& got, const Tensor& ref,
                        const Tensor& mag, const Tensor& c0, float beta, int64_t k) {
  int64_t bad = 0;
  double worst = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double e = std::fabs(double(got.f32()[i]) - double(ref.f32()[i]));
    const double b = bf16_accumulation_bound(double(mag.f32()[i]), k, double(beta) * c0.f32()[i]);
    if (!(e <= b)) ++bad;
    worst = std::max(worst, e / b);
  }
  std::printf("[ %-24s] %-52s worst error / bound %-9.3g bad=%lld of %lld %s\n", "bf16 gemm",
              what.c_str(), worst, static_cast<long long>(bad), static_cast<long long>(ref.numel()),
              bad == 0 ? "PASS" : "FAIL");
  return bad;
}

class Bf16Gemm : public test::Bf16BackendOps {
 protected:
  // A device parameter (its storage marked as ParamSet marks it) holding `h`, loaded by copy.
  Tensor parameter(const Tensor& h) {
    Tensor p = bf().zeros(h.shape());
    p.storage()->parameter = true;
    bf().copy(bf().from_host(h), p);
    return p;
  }
  // y = x W^T through the bf16 backend against the CPU on rounded operands, W's current values
  // given on the host. Returns the elements out of bound.
  int64_t check_xwt(const std::string& what, const Tensor& xh, const Tensor& xd, const Tensor& wh,
                    const Tensor& wd) {
    Tensor yd = bf().zeros({xh.size(0), wh.size(0)});
    bf().matmul(xd, false, wd, true, yd);
    Tensor ref = Tensor::zeros(yd.shape(), DType::f32), mag = Tensor::zeros(yd.shape(), DType::f32);
    cpu().matmul(bf16_rounded(xh), false, bf16_rounded(wh), true, ref);
    cpu().matmul(abs_of(bf16_rounded(xh)), false, abs_of(bf16_rounded(wh)), true, mag);
    return compare_rounded(what, bf().to_host(yd), ref, mag, ref, 0.0f, xh.size(1));
  }
};

TEST_F(Bf16Gemm, MatmulOperandsAreRoundedOnceToNearest) {
  struct Case {
    int64_t m, k, n;
  };
  for (Case c : {Case{1, 1, 1}, Case{7, 13, 5}, Case{64, 128, 96}, Case{129, 1000, 33}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int b_param = 0; b_param < 2; ++b_param)
          for (float beta : {0.0f, 0.5f}) {
            // Column slices of wider tensors (row strides above the width), values spread over
            // several binades so that rounding differs element to element.
            Tensor ha = rand_host({ta ? c.k : c.m, (ta ? c.m : c.k) + 3}, -4.0f, 4.0f);
            Tensor hb = rand_host({tb ? c.n : c.k, (tb ? c.k : c.n) + 5}, -4.0f, 4.0f);
            Tensor hc = rand_host({c.m, c.n});
            Tensor a = ha.slice(1, 1, 1 + (ta ? c.m : c.k));
            Tensor b = hb.slice(1, 2, 2 + (tb ? c.k : c.n));
            Tensor da = bf().from_host(ha).slice(1, 1, 1 + (ta ? c.m : c.k));
            Tensor db = (b_param ? parameter(hb) : bf().from_host(hb)).slice(1, 2, 2 + b.size(1));
            Tensor dc = bf().from_host(hc);
            const float alpha = 0.75f;
            Tensor ref = hc.clone(), mag = Tensor::zeros({c.m, c.n}, DType::f32);
            cpu().matmul(bf16_rounded(a), ta, bf16_rounded(b), tb, ref, alpha, beta);
            cpu().matmul(abs_of(bf16_rounded(a)), ta, abs_of(bf16_rounded(b)), tb, mag, alpha,
                         0.0f);
            bf().matmul(da, ta, db, tb, dc, alpha, beta);
            const std::string what =
                fmt::format("{}x{}x{} ta={} tb={} b {} beta={}", c.m, c.k, c.n, ta, tb,
                            b_param ? "parameter" : "activation", beta);
            EXPECT_EQ(compare_rounded(what, bf().to_host(dc), ref, mag, hc, beta, c.k), 0) << what;
          }
}

TEST_F(Bf16Gemm, GroupedMatmulOperandsAreRoundedOnceToNearest) {
  const int64_t K = 70, N = 24;
  const std::vector<int64_t> rows = {0, 1, 5, 0, 33, 17, 1};
  const int64_t G = int64_t(rows.size()), T = std::accumulate(rows.begin(), rows.end(), int64_t(0));
  for (CudaGrouped grouped : {CudaGrouped::loop, CudaGrouped::streams}) {
    auto be = make_cuda_backend(
        0, CudaBackendOptions{CudaGemm::bf16, false, CudaAttention::f32, grouped});
    // x_g W_g^T with W a parameter [G, N, K] (a view of a wider one), then dy_g W_g, then
    // dW_g += dy_g^T x_g (both activations).
    Tensor wh = rand_host({G, N, K + 2}, -2.0f, 2.0f);
    Tensor wd = be->zeros(wh.shape());
    wd.storage()->parameter = true;
    be->copy(be->from_host(wh), wd);
    Tensor w = wh.slice(2, 1, 1 + K), wv = wd.slice(2, 1, 1 + K);
    Tensor xh = rand_host({T, K}, -2.0f, 2.0f), dyh = rand_host({T, N}, -2.0f, 2.0f);
    Tensor xd = be->from_host(xh), dyd = be->from_host(dyh);
    const std::string mode = cuda_grouped_name(grouped);
    {
      Tensor y = be->zeros({T, N}), ref = Tensor::zeros({T, N}, DType::f32);
      Tensor mag = Tensor::zeros({T, N}, DType::f32);
      be->grouped_matmul(xd, false, wv, true, y, rows);
      cpu().grouped_matmul(bf16_rounded(xh), false, bf16_rounded(w), true, ref, rows);
      cpu().grouped_matmul(abs_of(bf16_rounded(xh)), false, abs_of(bf16_rounded(w)), true, mag,
                           rows);
      EXPECT_EQ(compare_rounded(mode + " x W^T (W parameter)", be->to_host(y), ref, mag, ref, 0, K),
                0);
    }
    {
      Tensor y = be->zeros({T, K}), ref = Tensor::zeros({T, K}, DType::f32);
      Tensor mag = Tensor::zeros({T, K}, DType::f32);
      be->grouped_matmul(dyd, false, wv, false, y, rows);
      cpu().grouped_matmul(bf16_rounded(dyh), false, bf16_rounded(w), false, ref, rows);
      cpu().grouped_matmul(abs_of(bf16_rounded(dyh)), false, abs_of(bf16_rounded(w)), false, mag,
                           rows);
      EXPECT_EQ(compare_rounded(mode + " dy W (W parameter)", be->to_host(y), ref, mag, ref, 0, N),
                0);
    }
    {
      Tensor c0 = rand_host({G, N, K});
      Tensor dw = be->from_host(c0), ref = c0.clone(), mag = Tensor::zeros({G, N, K}, DType::f32);
      be->grouped_matmul(dyd, true, xd, false, dw, rows, 1.0f, 1.0f);
      cpu().grouped_matmul(bf16_rounded(dyh), true, bf16_rounded(xh), false, ref, rows, 1.0f, 1.0f);
      cpu().grouped_matmul(abs_of(bf16_rounded(dyh)), true, abs_of(bf16_rounded(xh)), false, mag,
                           rows);
      EXPECT_EQ(compare_rounded(mode + " dW += dy^T x", be->to_host(dw), ref, mag, c0, 1.0f,
                                *std::max_element(rows.begin(), rows.end())),
                0);
    }
  }
}

// Every way a parameter's values change must reach the bf16 GEMM: after each write, y = x W^T
// equals the CPU's product of the rounded operands with W's new values.
TEST_F(Bf16Gemm, KeptCopyFollowsEveryWrite) {
  const int64_t R = 37, K = 200, N = 45;
  Tensor xh = rand_host({R, K}), wh = rand_host({N, K});
  Tensor xd = bf().from_host(xh);
  Tensor wd = parameter(wh);
  EXPECT_EQ(check_xwt("loaded by copy", xh, xd, wh, wd), 0);
  EXPECT_EQ(check_xwt("unchanged (the kept copy reused)", xh, xd, wh, wd), 0);

  wh = rand_host({N, K});
  bf().copy(bf().from_host(wh), wd);
  EXPECT_EQ(check_xwt("after copy", xh, xd, wh, wd), 0);

  bf().scale(wd, 0.37f);
  cpu().scale(wh, 0.37f);
  EXPECT_EQ(check_xwt("after scale", xh, xd, wh, wd), 0);

  Tensor dh = rand_host({N, K});
  bf().add(wd, bf().from_host(dh), -0.5f);
  cpu().add(wh, dh, -0.5f);
  EXPECT_EQ(check_xwt("after add", xh, xd, wh, wd), 0);

  {  // zero some rows, then copy into a strided view (a column block)
    Tensor rows_d = wd.slice(0, 3, 9), rows_h = wh.slice(0, 3, 9);
    bf().zero(rows_d);
    cpu().zero(rows_h);
    EXPECT_EQ(check_xwt("after zero of rows 3..8", xh, xd, wh, wd), 0);
    Tensor blk = rand_host({N, 50});
    Tensor cols_d = wd.slice(1, 100, 150), cols_h = wh.slice(1, 100, 150);
    bf().copy(bf().from_host(blk), cols_d);
    cols_h.copy_from(blk);
    EXPECT_EQ(check_xwt("after copy into columns 100..149", xh, xd, wh, wd), 0);
  }

  AdamWParams ap;
  ap.lr = 0.05f;
  ap.weight_decay = 0.1f;
  Tensor gh = rand_host({N, K});
  Tensor mh = Tensor::zeros({N, K}, DType::f32), vh = Tensor::zeros({N, K}, DType::f32);
  Tensor gd = bf().from_host(gh), md = bf().from_host(mh), vd = bf().from_host(vh);
  bf().adamw(wd, gd, md, vd, ap);
  cpu().adamw(wh, gh, mh, vh, ap);
  // The device update may differ from the CPU's by an ulp: compare with the device's values.
  Tensor w_now = bf().to_host(wd);
  EXPECT_EQ(check_xwt("after adamw (one tensor)", xh, xd, w_now, wd), 0);

  {  // the multi-tensor step rewrites the kept copy in its own pass and leaves it current
    Tensor clip = bf().empty({2}, DType::f64);
    bf().grad_clip_factor({gd}, 0.5, clip);
    ap.step = 2;
    const uint64_t before = wd.storage()->version.load();
    bf().adamw_multi({AdamWTensor{wd, gd, md, vd, 0.1f}}, ap, &clip);
    EXPECT_NE(wd.storage()->version.load(), before) << "adamw_multi did not count as a write";
    EXPECT_EQ(wd.storage()->derived_version, wd.storage()->version.load())
        << "adamw_multi left the bf16 copy stale instead of rewriting it";
    // Exactly bf16(W), through the copy the update wrote (it is current, so the GEMM reads it as
    // it is): y = I W, every product and every sum exact.
    Tensor eye = Tensor::zeros({N, N}, DType::f32);
    for (int64_t i = 0; i < N; ++i) eye.f32()[i * N + i] = 1.0f;
    Tensor y = bf().zeros({N, K});
    bf().matmul(bf().from_host(eye), false, wd, false, y);
    EXPECT_EQ(wd.storage()->derived_version, wd.storage()->version.load());
    w_now = bf().to_host(wd);
    Tensor got = bf().to_host(y), want = bf16_rounded(w_now);
    int64_t differ = 0;
    for (int64_t i = 0; i < want.numel(); ++i) differ += got.f32()[i] != want.f32()[i];
    std::printf("[ %-24s] %-52s %lld of %lld elements differ from bf16(W) %s\n", "bf16 gemm",
                "I W after adamw_multi: the copy is bf16(W)", static_cast<long long>(differ),
                static_cast<long long>(want.numel()), differ == 0 ? "PASS" : "FAIL");
    EXPECT_EQ(differ, 0);
    EXPECT_EQ(check_xwt("after adamw_multi (fused refresh)", xh, xd, w_now, wd), 0);
  }

  {  // a write through a raw pointer (any pointer taken counts as a write)
    Tensor nh = rand_host({N, K});
    ASSERT_EQ(cudaMemcpy(wd.raw(), nh.raw(), nh.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(check_xwt("after cudaMemcpy through raw()", xh, xd, nh, wd), 0);
    wh = nh;
  }

  {  // a write by another backend (f32 GEMMs) on the same storage
    Tensor nh = rand_host({N, K});
    gpu().copy(gpu().from_host(nh), wd);
    EXPECT_EQ(check_xwt("after a copy by another backend", xh, xd, nh, wd), 0);
    wh = nh;
  }

  {  // the check catches a stale copy: a write that bypasses the version (through
     // Storage::data, as no code outside the backend's readers may) leaves the copy stale, and
     // the comparison with the new values fails
    Tensor nh = rand_host({N, K});
    ASSERT_EQ(cudaMemcpy(wd.storage()->data, nh.raw(), nh.nbytes(), cudaMemcpyHostToDevice),
              cudaSuccess);
    Tensor yd = bf().zeros({R, N});
    bf().matmul(xd, false, wd, true, yd);
    Tensor ref = Tensor::zeros({R, N}, DType::f32), mag = Tensor::zeros({R, N}, DType::f32);
    cpu().matmul(bf16_rounded(xh), false, bf16_rounded(nh), true, ref);
    cpu().matmul(abs_of(bf16_rounded(xh)), false, abs_of(bf16_rounded(nh)), true, mag);
    const int64_t stale = compare_rounded("stale on purpose (expected to fail)", bf().to_host(yd),
                                          ref, mag, ref, 0.0f, K);
    EXPECT_GT(stale, R * N / 2) << "a stale bf16 copy would go unnoticed by these checks";
  }
}

// adamw_multi and grad_clip_factor against the CPU's over many tensors of odd sizes (below, at
// and above the kernel's chunk of 8,192, and a view at an offset into a larger storage), with
// clipping active and not, three steps; parameters with kept bf16 copies get them rewritten.
TEST_F(Bf16Gemm, AdamWMultiMatchesCpuOverManyTensors) {
  const std::vector<int64_t> sizes = {1,     2,    3,      5,     17,   31,   32,    33,    255,
                                      257,   1000, 4099,   8191,  8192, 8193, 12345, 16384, 16385,
                                      65537, 7,    100003, 24577, 1,    9,    40961, 3};
  std::vector<AdamWTensor> dev, ref;
  // A bf16 GEMM reading one element of a parameter makes its storage's kept copy.
  auto make_copy = [&](const Tensor& pd) {
    Tensor y = bf().zeros({1, 1});
    bf().matmul(bf().from_host(rand_host({1, 1})), false, pd.view({pd.numel(), 1}).slice(0, 0, 1),
                false, y);
  };
  Tensor big_h = rand_host({3 * 1000});
  Tensor big_d = parameter(big_h);
  make_copy(big_d);
  for (size_t i = 0; i < sizes.size() + 1; ++i) {
    Tensor ph, pd;
    if (i == sizes.size()) {  // a contiguous view at an offset into a larger storage
      ph = big_h.slice(0, 1000, 2000);
      pd = big_d.slice(0, 1000, 2000);
    } else {
      ph = rand_host({sizes[i]});
      pd = bf().from_host(ph);
      if (i % 3 == 0) {  // a parameter with a kept bf16 copy
        pd.storage()->parameter = true;
        make_copy(pd);
      }
    }
    const int64_t n = ph.numel();
    Tensor mh = rand_host({n}, -0.1f, 0.1f), vh = rand_host({n}, 0.0f, 0.01f);
    Tensor gh = Tensor::zeros({n}, DType::f32);
    const float wd = i % 2 ? 0.1f : 0.0f;
    ref.push_back({ph, gh, mh, vh, wd});
    dev.push_back({pd, bf().from_host(gh), bf().from_host(mh), bf().from_host(vh), wd});
  }
  Tensor clip_h = Tensor::zeros({2}, DType::f64), clip_d = bf().empty({2}, DType::f64);
  int64_t total = 0;
  for (const auto& t : ref) total += t.param.numel();
  for (int64_t step = 1; step <= 3; ++step) {
    // Step 2 clips (gradients of norm ~ sqrt(total) * 2 against 1), steps 1 and 3 do not.
    const double max_norm = step == 2 ? 1.0 : 1e9;
    std::vector<Tensor> gh, gd;
    for (size_t i = 0; i < ref.size(); ++i) {
      Tensor g = rand_host({ref[i].param.numel()}, -3.0f, 3.0f);
      ref[i].grad = g;
      dev[i].grad = bf().from_host(g);
      gh.push_back(ref[i].grad);
      gd.push_back(dev[i].grad);
    }
    AdamWParams ap;
    ap.lr = 1e-2f;
    ap.step = step;
    cpu().grad_clip_factor(gh, max_norm, clip_h);
    bf().grad_clip_factor(gd, max_norm, clip_d);
    Tensor got = bf().to_host(clip_d);
    const std::string what =
        fmt::format("{} tensors, {} elements, step {}", ref.size(), total, step);
    check_scalar("grad_clip_factor norm", what, clip_h.f64()[0], got.f64()[0], 1e-12);
    // The factor is rounded to f32 from norms that differ in the last bits: within 2^-23.
    check_scalar("grad_clip_factor factor", what, clip_h.f64()[1], got.f64()[1], 2.4e-7);
    EXPECT_EQ(clip_h.f64()[1] == 1.0, step != 2);
    cpu().adamw_multi(ref, ap, &clip_h);
    bf().adamw_multi(dev, ap, &clip_d);
  }
  // Each kept copy is current (rewritten by the update, not rebuilt later) and exactly bf16 of
  // its parameter's storage: y = W 1 through the bf16 GEMM, every product and sum exact; the GEMMs
  // run before anything reads the parameters back.
  Tensor one_h = Tensor::zeros({1, 1}, DType::f32);
  one_h.f32()[0] = 1.0f;
  Tensor one = bf().from_host(one_h);
  std::vector<Tensor> kept = {big_d}, kept_y;
  for (size_t i = 0; i < sizes.size(); i += 3) kept.push_back(dev[i].param);
  for (const Tensor& pd : kept) {
    EXPECT_EQ(pd.storage()->derived_version, pd.storage()->version.load())
        << "the kept copy of a parameter of " << pd.numel() << " elements was left stale";
    kept_y.push_back(bf().zeros({pd.numel(), 1}));
    bf().matmul(pd.view({pd.numel(), 1}), false, one, false, kept_y.back());
  }
  int64_t differ = 0, copies = 0;
  for (size_t c = 0; c < kept.size(); ++c) {
    const int64_t n = kept[c].numel();
    Tensor got = bf().to_host(kept_y[c]), want = bf16_rounded(bf().to_host(kept[c]).view({n, 1}));
    for (int64_t j = 0; j < n; ++j) differ += got.f32()[j] != want.f32()[j];
    ++copies;
  }
  Tensor all_p = Tensor::zeros({total}, DType::f32), got_p = Tensor::zeros({total}, DType::f32);
  Tensor all_m = all_p.clone(), got_m = all_p.clone(), all_v = all_p.clone(), got_v = all_p.clone();
  int64_t o = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const int64_t n = ref[i].param.numel();
    all_p.slice(0, o, o + n).copy_from(ref[i].param);
    all_m.slice(0, o, o + n).copy_from(ref[i].m);
    all_v.slice(0, o, o + n).copy_from(ref[i].v);
    got_p.slice(0, o, o + n).copy_from(bf().to_host(dev[i].param));
    got_m.slice(0, o, o + n).copy_from(bf().to_host(dev[i].m));
    got_v.slice(0, o, o + n).copy_from(bf().to_host(dev[i].v));
    o += n;
  }
  // As BackendOps.AdamW: the device's f32 arithmetic (fused multiply-adds) differs from the CPU
  // loop by a few ulp per step.
  const std::string what = fmt::format("{} tensors, {} elements, 3 steps", ref.size(), total);
  check("adamw_multi param", what, all_p, got_p, 1e-7, 1e-5);
  // m = beta1 m + (1 - beta1) g: the device fuses it into one multiply-add, the CPU rounds the
  // product first, so they differ by up to a rounding of the larger term (<= 0.63 here: |g| <= 3,
  // |m| <= 0.7; 0.63 x 2^-24 = 3.8e-8) even where m is near 0, where rtol cannot cover it; each
  // step adds up to two such roundings and scales the earlier difference by beta1 < 1: over three
  // steps at most 6 x 3.8e-8 = 2.3e-7. atol 2.5e-7.
  check("adamw_multi m", what, all_m, got_m, 2.5e-7, 1e-5);
  check("adamw_multi v", what, all_v, got_v, 1e-10, 1e-5);
  // The untouched parts of the shared storage stay as they were.
  Tensor big_now = bf().to_host(big_d);
  int64_t moved = 0;
  for (int64_t i = 0; i < 3000; ++i)
    if ((i < 1000 || i >= 2000) && big_now.f32()[i] != big_h.f32()[i]) ++moved;
  EXPECT_EQ(moved, 0);
  std::printf("[ %-24s] %-52s %lld elements differ %s\n", "adamw_multi",
              fmt::format("{} kept bf16 copies after 3 steps", copies).c_str(),
              static_cast<long long>(differ), differ == 0 ? "PASS" : "FAIL");
  EXPECT_EQ(differ, 0);
  if (!perf_enabled()) return;
  // The moe-2b-sized step: 2^28 parameters in 200 tensors (28 bytes per parameter, +2 with the
  // bf16 copy) against 200 single-tensor launches.
  const int64_t per = (int64_t(1) << 28) / 200;
  std::vector<AdamWTensor> big;
  std::vector<Tensor> grads;
  for (int i = 0; i < 200; ++i) {
    big.push_back(
        {bf().zeros({per}), bf().zeros({per}), bf().zeros({per}), bf().zeros({per}), 0.1f});
    grads.push_back(big.back().grad);
  }
  AdamWParams ap;
  const double bytes = 28.0 * double(per) * 200;
  const double multi = time_us(
      [&] {
        bf().grad_clip_factor(grads, 1.0, clip_d);
        bf().adamw_multi(big, ap, &clip_d);
      },
      5);
  const double single = time_us(
      [&] {
        for (auto& t : big) bf().adamw(t.param, t.grad, t.m, t.v, ap);
      },
      5);
  std::printf(
      "[ %-24s] 2^28 params in 200 tensors: clip + adamw_multi %.0f us (%.2f TB/s of "
      "28 B/param + 4 B/param for the norm); 200 adamw launches %.0f us\n",
      "adamw_multi perf", multi, (bytes + 4.0 * double(per) * 200) / multi * 1e-6, single);
}

}  // namespace
}  // namespace shoal
