// Backend::batched_matmul on the CUDA backend against the CPU backend's (one matmul per batch
// index) on random inputs, in each CudaGemm mode: the MLA absorption's two forms on head-first
// views of [N, H, d] activations (q_nope W_UK and o_lat W_UV^T, the weight a parameter and an
// activation in bf16 mode), a batch-first form with both operands transposed, batch 1, one row,
// beta 0 and 1; the elements outside c's view untouched. Then the time of the decode shapes
// (moe-2b: 16 heads, 128 x 512 per head) batched against one matmul per head. Skips without a
// device. Not a test of the model (tests/cuda/test_latent_decode.cpp and the golden tests are).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;

// |x| element-wise (contiguous copy).
Tensor abs_of(const Tensor& t) {
  Tensor a = t.contiguous();
  for (int64_t i = 0; i < a.numel(); ++i) a.f32()[i] = std::fabs(a.f32()[i]);
  return a;
}

TEST_F(BackendOps, BatchedMatmul) {
  // An operand: a [outer, mid, cols + 3] tensor whose [.., 1 : 1 + cols] slice is viewed
  // [mid, outer, cols] (head-first: batch = mid) or [outer, mid, cols] (batch = outer).
  struct Operand {
    int64_t outer, mid, cols;
    bool head_first;
  };
  struct Form {
    const char* name;
    Operand a;
    bool ta;
    Operand b;
    bool tb;
    Operand c;
    int64_t k;
  };
  const int64_t h = 4, dn = 24, dv = 20, rkv = 40;
  std::vector<Form> forms;
  for (int64_t n : {1, 7, 33}) {
    // absorb_q: [h, n, dn] x [h, dn, rkv] -> [h, n, rkv]; expand_o: [h, n, rkv] x [h, dv, rkv]^T.
    const Operand q{n, h, dn, true}, w_uk{h, dn, rkv, false}, ql{n, h, rkv, true};
    const Operand ol{n, h, rkv, true}, w_uv{h, dv, rkv, false}, at{n, h, dv, true};
    forms.push_back({"q_nope W_UK", q, false, w_uk, false, ql, dn});
    forms.push_back({"o_lat W_UV^T", ol, false, w_uv, true, at, rkv});
  }
  const Operand a3{3, 9, 5, false}, b3{3, 6, 9, false}, c3{3, 5, 6, false};
  forms.push_back({"a^T b^T, batch 3", a3, true, b3, true, c3, 9});
  const Operand a1{1, 17, 30, false}, b1{1, 30, 11, false}, c1{1, 17, 11, false};
  forms.push_back({"batch 1", a1, false, b1, false, c1, 30});
  const auto view = [](const Tensor& base, const Operand& o) {
    Tensor s = base.slice(2, 1, 1 + o.cols);
    return o.head_first ? s.transpose(0, 1) : s;
  };
  for (CudaGemm mode : {CudaGemm::f32, CudaGemm::tf32, CudaGemm::bf16}) {
    auto be = make_cuda_backend(0, CudaBackendOptions{mode});
    // Operand rounding as MatmulTensorCoreModes derives it: u = 2^-7 (bf16), 2^-10 (TF32), 0.
    const double u = mode == CudaGemm::f32    ? 0.0
                     : mode == CudaGemm::tf32 ? std::ldexp(1.0, -10)
                                              : std::ldexp(1.0, -7);
    double worst_ratio = 0, worst_rel = 0;
    for (const Form& f : forms)
      for (bool b_param : {false, true})
        for (float beta : {0.0f, 1.0f}) {
          if (b_param && mode != CudaGemm::bf16) continue;
          const float alpha = 0.75f;
          auto host = [&](const Operand& o) { return rand_host({o.outer, o.mid, o.cols + 3}); };
          Tensor ah = host(f.a), bh = host(f.b), ch = host(f.c);
          Tensor ad = be->from_host(ah), cd = be->from_host(ch), bd;
          if (b_param) {  // the weight as the model holds it: a parameter with a kept bf16 copy
            bd = be->zeros(bh.shape());
            bd.storage()->parameter = true;
            be->copy(be->from_host(bh), bd);
          } else {
            bd = be->from_host(bh);
          }
          Tensor ref = ch.clone();
          Tensor ref_v = view(ref, f.c);
          cpu().batched_matmul(view(ah, f.a), f.ta, view(bh, f.b), f.tb, ref_v, alpha, beta);
          // alpha |A| |B| per element, for the bound.
          Tensor mag = Tensor::zeros(ref_v.shape(), DType::f32);
          cpu().batched_matmul(abs_of(view(ah, f.a)), f.ta, abs_of(view(bh, f.b)), f.tb, mag, alpha,
                               0.0f);
          Tensor cdv = view(cd, f.c);
          be->batched_matmul(view(ad, f.a), f.ta, view(bd, f.b), f.tb, cdv, alpha, beta);
          Tensor got = be->to_host(cd);
          const Tensor got_v = view(got, f.c), ch_v = view(ch, f.c);
          int64_t bad = 0;
          double max_abs = 0;
          for (int64_t g = 0; g < got_v.size(0); ++g)
            for (int64_t i = 0; i < got_v.size(1); ++i)
              for (int64_t j = 0; j < got_v.size(2); ++j) {
                const int64_t o = g * got_v.stride(0) + i * got_v.stride(1) + j;
                const double e = std::fabs(double(got_v.f32()[o]) - double(ref_v.f32()[o]));
                const double prod = double(mag.f32()[(g * got_v.size(1) + i) * got_v.size(2) + j]);
                // MatmulTensorCoreModes' bound with the f32 terms at first order in full (as in
                // test_grouped_matmul.cpp).
                const double bound =
                    prod * (2 * u + u * u + double(2 * f.k + 4) * std::ldexp(1.0, -24)) +
                    std::ldexp(1.0, -22) * std::fabs(beta * ch_v.f32()[o]) + 1e-30;
                if (!(e <= bound)) ++bad;
                max_abs = std::max(max_abs, e);
                worst_ratio = std::max(worst_ratio, e / bound);
                if (prod > 0) worst_rel = std::max(worst_rel, e / prod);
              }
          // Outside the view: untouched.
          const int64_t width = f.c.cols + 3;
          for (int64_t r = 0; r < got.numel() / width; ++r)
            for (int64_t j : {int64_t(0), width - 2, width - 1})
              if (got.f32()[r * width + j] != ch.f32()[r * width + j]) ++bad;
          const std::string what = fmt::format("{} {}{}beta={}", f.name, shape_str(cdv.shape()),
                                               b_param ? " param " : " ", beta);
          std::printf("[ batched %-15s] %-44s max_abs=%-10.3g bad=%lld %s\n", cuda_gemm_name(mode),
                      what.c_str(), max_abs, static_cast<long long>(bad),
                      bad == 0 ? "PASS" : "FAIL");
          EXPECT_EQ(bad, 0) << cuda_gemm_name(mode) << " " << what;
        }
    std::printf("[ batched %-15s] worst error / bound %.3g; worst error / (alpha |A||B|) %.3g\n",
                cuda_gemm_name(mode), worst_ratio, worst_rel);
    // A mode that skipped its operand rounding would stay near f32's ~1e-7.
    if (mode != CudaGemm::f32) {
      EXPECT_GT(worst_rel, 1e-5) << cuda_gemm_name(mode);
    }
  }

  // Bad calls are refused as on the CPU.
  Tensor xa = gpu().zeros({2, 3, 4}), xb = gpu().zeros({2, 4, 5}), xc = gpu().zeros({2, 3, 5});
  Tensor xb3 = gpu().zeros({3, 4, 5}), xc2 = gpu().zeros({3, 5});
  EXPECT_THROW(gpu().batched_matmul(xa, false, xb3, false, xc), Error);
  EXPECT_THROW(gpu().batched_matmul(xa, false, xb, true, xc), Error);
  EXPECT_THROW(gpu().batched_matmul(xa, false, xb, false, xc2), Error);

  if (!perf_enabled()) return;
  // moe-2b's decode absorption per layer: 16 heads, q_nope [n, 16, 192] -> [16, n, 128] times
  // W_UK [16, 128, 512], and o_lat [16, n, 512] times W_UV^T [16, 128, 512]^T, the weights a
  // parameter (bf16 mode uses its kept copy); batched against one matmul per head.
  const int64_t H = 16, DN = 128, DR = 64, DV = 128, R = 512;
  for (CudaGemm mode : {CudaGemm::f32, CudaGemm::tf32, CudaGemm::bf16}) {
    auto be = make_cuda_backend(0, CudaBackendOptions{mode});
    Tensor kvb = be->zeros({H, DN + DV, R});
    kvb.storage()->parameter = true;
    be->copy(be->from_host(rand_host({H, DN + DV, R})), kvb);
    const Tensor w_uk = kvb.slice(1, 0, DN), w_uv = kvb.slice(1, DN, DN + DV);
    for (int64_t n : {1, 32, 256}) {
      Tensor q = be->from_host(rand_host({n, H, DN + DR}));
      Tensor q_cat = be->empty({n, H, R + DR}), o_lat = be->from_host(rand_host({n, H, R}));
      Tensor attn = be->empty({n, H, DV});
      const Tensor qn = q.slice(2, 0, DN).transpose(0, 1), ol = o_lat.transpose(0, 1);
      Tensor ql = q_cat.slice(2, 0, R).transpose(0, 1), at = attn.transpose(0, 1);
      const double flops = 2.0 * double(H) * double(n) * double(DN) * double(R);
      const std::string name = std::string(cuda_gemm_name(mode));
      const std::string s1 = fmt::format("W_UK {}x[{}x{}x{}]", H, n, DN, R);
      const std::string s2 = fmt::format("W_UV {}x[{}x{}x{}]", H, n, R, DV);
      perf_flops(name + " batched", s1,
                 time_us([&] { be->batched_matmul(qn, false, w_uk, false, ql); }), flops);
      perf_flops(name + " per head", s1, time_us([&] {
                   for (int64_t hh = 0; hh < H; ++hh) {
                     Tensor c = ql.select(0, hh);
                     be->matmul(qn.select(0, hh), false, w_uk.select(0, hh), false, c);
                   }
                 }),
                 flops);
      perf_flops(name + " batched", s2,
                 time_us([&] { be->batched_matmul(ol, false, w_uv, true, at); }), flops);
      perf_flops(name + " per head", s2, time_us([&] {
                   for (int64_t hh = 0; hh < H; ++hh) {
                     Tensor c = at.select(0, hh);
                     be->matmul(ol.select(0, hh), false, w_uv.select(0, hh), true, c);
                   }
                 }),
                 flops);
    }
  }
}

}  // namespace
}  // namespace shoal
