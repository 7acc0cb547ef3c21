// Every Backend op on the CUDA backend against the CPU backend (the oracle) on random inputs of
// several shapes: odd sizes, strided views where the interface allows them, packed sequences
// (cu_seqlens, with an empty one), DSA selections with -1 padding, gradients included. Each check
// prints op, case, max abs / rel error and tolerance with PASS/FAIL; each op then prints its
// kernel time and GB/s or TFLOP/s on a larger shape. Plus bad input: device OOM and bad indices
// must be clear shoal::Errors. Skips with the reason when no CUDA device is present.
//
// Tolerances (f32 on both sides; the CPU accumulates in f64 where the GPU may use f32):
//   exact ops (copies, gathers, conversions, selections, integer outputs): 0;
//   element-wise (rope, swiglu, adamw, scale): rtol 1e-5 (expf differs from glibc by <= 2 ulp,
//     nvcc contracts a*b+c into FMAs);
//   reductions over <= 4096 terms (norms, matmul, attention, softmax losses): atol 1e-4..2e-4 with
//     rtol 1e-4: f32 sums of O(1) terms in a different order differ by ~sqrt(n) * 6e-8 * |sum|,
//     i.e. ~1e-6..1e-5 here; an indexing or formula bug gives O(0.1..1).
//   host scalars summed in f64 (sum_squares, cross_entropy, indexer_kl): rtol 1e-6.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <set>

#include <fmt/ranges.h>

#include "engine/cuda/cuda_backend.h"
#include "engine/model/reference_check.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal::test {
namespace {

constexpr double kReduceAtol = 2e-4, kReduceRtol = 1e-4;
constexpr double kElemRtol = 1e-5;

std::string cs(const std::vector<int64_t>& cu) {
  return fmt::format("cu{{{}}}", fmt::join(cu, ","));
}

// ------------------------------------------------------------------------------------- memory

TEST_F(BackendOps, ZeroCopyAndConversions) {
  // zero: contiguous and a strided column slice (the rest must stay untouched).
  Pair base = rand({7, 13});
  Tensor hv = base.h.slice(1, 2, 9), dv = base.d.slice(1, 2, 9);
  cpu().zero(hv);
  gpu().zero(dv);
  check("zero", "strided [7, 7] of [7, 13]", base.h, base.d, 0, 0);
  // strided copy: transpose, 3-D permutation, sliced views.
  Pair x = rand({5, 6, 7});
  for (auto [d0, d1] : {std::pair{0, 1}, {0, 2}, {1, 2}}) {
    Tensor hs = x.h.transpose(d0, d1), ds = x.d.transpose(d0, d1);
    Tensor hd = Tensor::empty(hs.shape(), DType::f32), dd = gpu().empty(ds.shape());
    cpu().copy(hs, hd);
    gpu().copy(ds, dd);
    check("copy", "transpose(" + std::to_string(d0) + "," + std::to_string(d1) + ") of [5, 6, 7]",
          hd, dd, 0, 0);
  }
  {
    Tensor hs = x.h.slice(2, 1, 6).slice(0, 1, 4), ds = x.d.slice(2, 1, 6).slice(0, 1, 4);
    Pair dst = rand({3, 6, 9});
    Tensor hd = dst.h.slice(2, 2, 7), dd = dst.d.slice(2, 2, 7);
    cpu().copy(hs, hd);
    gpu().copy(ds, dd);
    check("copy", "strided -> strided [3, 6, 5]", dst.h, dst.d, 0, 0);
  }
  // dtype conversions: bit-exact against the CPU's scalar conversions, both directions.
  Tensor wide = rand_host({257}, -500.0f, 500.0f);
  wide.f32()[0] = 0.0f;
  wide.f32()[1] = -0.0f;
  wide.f32()[2] = 1e-8f;    // subnormal in f16 / fp8
  wide.f32()[3] = 70000.f;  // inf in f16, saturates in e4m3
  wide.f32()[4] = NAN;
  Pair w = mirror(wide);
  for (DType t : {DType::bf16, DType::f16, DType::f8e4m3, DType::f64, DType::i32}) {
    Tensor hn = Tensor::empty({257}, t), dn = gpu().empty({257}, t);
    cpu().copy(w.h, hn);
    gpu().copy(w.d, dn);
    Tensor hb = Tensor::empty({257}, DType::f32), db = gpu().empty({257});
    cpu().copy(hn, hb);
    gpu().copy(dn, db);
    check("copy", std::string("f32 -> ") + std::string(dtype_name(t)) + " -> f32", hb, db, 0, 0);
  }
  // host <-> device through copy(), strided destination on the device.
  Pair dst = rand({4, 10});
  Tensor hsrc = rand_host({4, 6});
  Tensor hd = dst.h.slice(1, 3, 9), dd = dst.d.slice(1, 3, 9);
  cpu().copy(hsrc, hd);
  gpu().copy(hsrc, dd);
  check("copy", "host -> strided device view", dst.h, dst.d, 0, 0);
  Tensor back = Tensor::empty({4, 6}, DType::f32);
  gpu().copy(dd, back);
  check("copy", "strided device view -> host", hd, back, 0, 0);
  // i64 through from_host / to_host is exact beyond 2^53.
  Tensor big = Tensor::empty({3}, DType::i64);
  big.i64()[0] = (int64_t(1) << 60) + 1;
  big.i64()[1] = -7;
  big.i64()[2] = 0;
  Tensor bigd = gpu().from_host(big);
  Tensor bigc = gpu().empty({3}, DType::i64);
  gpu().copy(bigd, bigc);
  EXPECT_EQ(gpu().to_host(bigc).i64()[0], big.i64()[0]);

  if (!perf_enabled()) return;
  Pair big_x = rand({4096, 4096});
  Tensor big_t = gpu().empty({4096, 4096});
  Tensor big_bf = gpu().empty({4096, 4096}, DType::bf16);
  perf_bytes("copy", "f32 [4096, 4096] transposed",
             time_us([&] { gpu().copy(big_x.d.transpose(0, 1), big_t); }), 2.0 * 4 * 4096 * 4096);
  perf_bytes("copy", "f32 -> bf16 [4096, 4096]", time_us([&] { gpu().copy(big_x.d, big_bf); }),
             6.0 * 4096 * 4096);
}

// ------------------------------------------------------------------------------ dense algebra

TEST_F(BackendOps, Matmul) {
  struct Case {
    int64_t m, k, n;
  };
  for (Case c : {Case{1, 1, 1}, Case{7, 13, 5}, Case{64, 128, 96}, Case{129, 65, 33}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (float beta : {0.0f, 0.5f}) {
          // Operands are column slices of wider matrices (row stride > width), as head slices are.
          Pair abig = rand({ta ? c.k : c.m, (ta ? c.m : c.k) + 3});
          Pair bbig = rand({tb ? c.n : c.k, (tb ? c.k : c.n) + 5});
          Tensor ha = abig.h.slice(1, 1, 1 + (ta ? c.m : c.k)),
                 da = abig.d.slice(1, 1, 1 + (ta ? c.m : c.k));
          Tensor hb = bbig.h.slice(1, 2, 2 + (tb ? c.k : c.n)),
                 db = bbig.d.slice(1, 2, 2 + (tb ? c.k : c.n));
          Pair cbig = rand({c.m, c.n + 2});
          Tensor hc = cbig.h.slice(1, 0, c.n), dc = cbig.d.slice(1, 0, c.n);
          cpu().matmul(ha, ta, hb, tb, hc, 0.75f, beta);
          gpu().matmul(da, ta, db, tb, dc, 0.75f, beta);
          check("matmul", fmt::format("{}x{}x{} ta={} tb={} beta={}", c.m, c.k, c.n, ta, tb, beta),
                cbig.h, cbig.d, kReduceAtol, kReduceRtol);
        }
  // k = 0: c = beta * c.
  Pair a0 = rand({4, 0}), b0 = rand({0, 3}), c0 = rand({4, 3});
  cpu().matmul(a0.h, false, b0.h, false, c0.h, 1.0f, 0.5f);
  gpu().matmul(a0.d, false, b0.d, false, c0.d, 1.0f, 0.5f);
  check("matmul", "k = 0, beta = 0.5", c0.h, c0.d, 0, 0);

  if (!perf_enabled()) return;
  const int64_t s = 4096;
  Pair a = rand({s, s}), b = rand({s, s});
  Tensor c = gpu().empty({s, s});
  perf_flops("matmul", "f32 4096^3 (cuBLAS sgemm, no TF32)",
             time_us([&] { gpu().matmul(a.d, false, b.d, true, c); }, 5), 2.0 * s * s * s);
}

// The tensor-core GEMM modes (CudaGemm::tf32, ::bf16) against the CPU's f32 matmul, element by
// element under the worst-case bound of rounding each operand once: with p bits of significand
// a conversion errs by at most u = 2^(1-p) relative (truncation; round-to-nearest halves it), so
// |fl(a) fl(b) - a b| <= (2u + u^2) |a b| and, with both sides accumulating in f32 over k terms,
// |C - C_ref| <= alpha ((2u + u^2) + 2k 2^-24) (|A| |B|)_ij + 2^-23 |beta C_in|_ij. bf16: p = 8,
// u = 2^-7; tf32: p = 11, u = 2^-10. The bound is per element, so a wrong index or a missing
// term fails it. It must also be used: the worst error seen, relative to |A||B|, has to exceed
// f32's, or the mode did not run on the tensor cores.
TEST_F(BackendOps, MatmulTensorCoreModes) {
  struct Case {
    int64_t m, k, n;
  };
  for (CudaGemm mode : {CudaGemm::tf32, CudaGemm::bf16}) {
    auto be = make_cuda_backend(0, CudaBackendOptions{mode});
    const double u = mode == CudaGemm::bf16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -10);
    double worst_ratio = 0, worst_rel = 0;
    for (Case c : {Case{1, 1, 1}, Case{7, 13, 5}, Case{64, 128, 96}, Case{129, 1000, 33}})
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
          for (float beta : {0.0f, 0.5f}) {
            Tensor ha = rand_host({ta ? c.k : c.m, (ta ? c.m : c.k) + 3});
            Tensor hb = rand_host({tb ? c.n : c.k, (tb ? c.k : c.n) + 5});
            Tensor hc = rand_host({c.m, c.n});
            Tensor a = ha.slice(1, 1, 1 + (ta ? c.m : c.k));
            Tensor b = hb.slice(1, 2, 2 + (tb ? c.k : c.n));
            Tensor da = be->from_host(ha).slice(1, 1, 1 + (ta ? c.m : c.k));
            Tensor db = be->from_host(hb).slice(1, 2, 2 + (tb ? c.k : c.n));
            Tensor dc = be->from_host(hc);
            const float alpha = 0.75f;
            Tensor ref = hc.clone();
            cpu().matmul(a, ta, b, tb, ref, alpha, beta);
            // |A| |B| for the bound.
            Tensor aa = a.contiguous(), ab = b.contiguous();
            for (int64_t i = 0; i < aa.numel(); ++i) aa.f32()[i] = std::fabs(aa.f32()[i]);
            for (int64_t i = 0; i < ab.numel(); ++i) ab.f32()[i] = std::fabs(ab.f32()[i]);
            Tensor mag = Tensor::empty({c.m, c.n}, DType::f32);
            cpu().matmul(aa, ta, ab, tb, mag, 1.0f, 0.0f);
            be->matmul(da, ta, db, tb, dc, alpha, beta);
            Tensor got = be->to_host(dc);
            int64_t bad = 0;
            double max_abs = 0;
            for (int64_t i = 0; i < ref.numel(); ++i) {
              const double e = std::fabs(double(got.f32()[i]) - double(ref.f32()[i]));
              const double prod = double(alpha) * double(mag.f32()[i]);
              const double bound =
                  prod * (2 * u + u * u + 2.0 * double(c.k) * std::ldexp(1.0, -24)) +
                  std::ldexp(1.0, -23) * std::fabs(beta * hc.f32()[i]) + 1e-30;
              if (!(e <= bound)) ++bad;
              max_abs = std::max(max_abs, e);
              worst_ratio = std::max(worst_ratio, e / bound);
              if (prod > 0) worst_rel = std::max(worst_rel, e / prod);
            }
            std::printf(
                "[ %-24s] %-44s max_abs=%-10.3g bad=%lld of %lld (bound: (2u+u^2+2k 2^-24)|A||B|, "
                "u=2^%d) %s\n",
                (std::string("matmul ") + cuda_gemm_name(mode)).c_str(),
                fmt::format("{}x{}x{} ta={} tb={} beta={}", c.m, c.k, c.n, ta, tb, beta).c_str(),
                max_abs, static_cast<long long>(bad), static_cast<long long>(ref.numel()),
                mode == CudaGemm::bf16 ? -7 : -10, bad == 0 ? "PASS" : "FAIL");
            EXPECT_EQ(bad, 0) << cuda_gemm_name(mode) << " " << c.m << "x" << c.k << "x" << c.n;
          }
    std::printf("[ matmul %-17s] worst error / bound %.3g; worst error / (alpha |A||B|) %.3g\n",
                cuda_gemm_name(mode), worst_ratio, worst_rel);
    // In f32 the worst error / |A||B| here is ~1e-7 (sums of ~sqrt(k) roundings of 2^-24);
    // operands rounded to 8 or 11 bits err by up to 2^-8 or 2^-11 per product, so over ~10^5
    // elements the worst must be far above f32's.
    EXPECT_GT(worst_rel, 1e-5) << cuda_gemm_name(mode) << " did not round its operands";
    if (!perf_enabled()) continue;
    const int64_t s = 8192;
    Tensor da = be->from_host(rand_host({s, s})), db = be->from_host(rand_host({s, s}));
    Tensor dc = be->empty({s, s});
    perf_flops(std::string("matmul ") + cuda_gemm_name(mode), "8192^3, f32 in/out",
               time_us([&] { be->matmul(da, false, db, true, dc); }, 5), 2.0 * s * s * s);
  }
}

TEST_F(BackendOps, AddScaleSumSquares) {
  Pair y = rand({1001}), x = rand({1001});
  cpu().add(y.h, x.h, -0.3f);
  gpu().add(y.d, x.d, -0.3f);
  check("add", "contiguous [1001]", y.h, y.d, 0, kElemRtol);
  // 3-D strided: one head-dim slice of [N, H, d] (as MLA's q_pe slice).
  Pair y3 = rand({9, 3, 20}), x3 = rand({9, 3, 12});
  Tensor hy = y3.h.slice(2, 4, 12), dy = y3.d.slice(2, 4, 12);
  Tensor hx = x3.h.slice(2, 0, 8), dx = x3.d.slice(2, 0, 8);
  cpu().add(hy, hx, 2.0f);
  gpu().add(dy, dx, 2.0f);
  check("add", "3-D strided [9, 3, 8] views", y3.h, y3.d, 0, kElemRtol);
  Pair y2 = rand({6, 10}), x2 = rand({6, 7});
  Tensor hy2 = y2.h.slice(1, 1, 8), dy2 = y2.d.slice(1, 1, 8);
  cpu().add(hy2, x2.h, 1.0f);
  gpu().add(dy2, x2.d, 1.0f);
  check("add", "2-D strided [6, 7] += contiguous", y2.h, y2.d, 0, kElemRtol);
  // The float4 paths: contiguous with n % 4 == 0, and rows of 256 in strided 3-D views. With alpha
  // a power of two the product is exact, so fused or not both backends round the same sum once:
  // the results must be equal to the bit (with another alpha a result that cancels can differ by
  // an ulp of the operands, far more than 1e-5 of itself).
  Pair y4 = rand({1024}), x4 = rand({1024});
  cpu().add(y4.h, x4.h, 0.5f);
  gpu().add(y4.d, x4.d, 0.5f);
  check("add", "contiguous [1024] (float4)", y4.h, y4.d, 0, 0);
  Pair y5 = rand({20, 13, 260}), x5 = rand({20, 13, 256});
  Tensor hy5 = y5.h.slice(2, 4, 260), dy5 = y5.d.slice(2, 4, 260);
  cpu().add(hy5, x5.h, -2.0f);
  gpu().add(dy5, x5.d, -2.0f);
  check("add", "3-D strided, 260 rows of 256 (float4 rows)", y5.h, y5.d, 0, 0);

  cpu().scale(x.h, 1.7f);
  gpu().scale(x.d, 1.7f);
  check("scale", "[1001]", x.h, x.d, 0, 0);

  for (int64_t n : {0, 1, 1000, 1 << 20}) {
    Pair v = rand({n});
    check_scalar("sum_squares", "[" + std::to_string(n) + "]", cpu().sum_squares(v.h),
                 gpu().sum_squares(v.d), 1e-9);
  }
  if (!perf_enabled()) return;
  const int64_t big = int64_t(1) << 26;
  Tensor vy = gpu().zeros({big}), vx = gpu().zeros({big});
  perf_bytes("add", "[2^26]", time_us([&] { gpu().add(vy, vx, 0.5f); }), 12.0 * double(big));
  perf_bytes("sum_squares", "[2^26]", time_us([&] { gpu().sum_squares(vx); }), 4.0 * double(big));
}

// ------------------------------------------------------------------------------- normalization

TEST_F(BackendOps, RmsNormForwardBackward) {
  for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 1}, {5, 7}, {33, 64}, {130, 576}, {3, 7168}})
    for (bool strided : {false, true}) {
      Pair xb = rand({n, d + (strided ? 3 : 0)});
      Tensor hx = xb.h.slice(1, 0, d), dx_in = xb.d.slice(1, 0, d);
      Pair w = rand({d}, 0.3f, 1.2f);
      Pair y = rand({n, d}), rstd = rand({n});
      cpu().rmsnorm_forward(hx, w.h, 1e-6f, y.h, rstd.h);
      gpu().rmsnorm_forward(dx_in, w.d, 1e-6f, y.d, rstd.d);
      const std::string c = fmt::format("[{}, {}]{}", n, d, strided ? " strided x" : "");
      check("rmsnorm_forward y", c, y.h, y.d, 1e-5, 1e-5);
      check("rmsnorm_forward rstd", c, rstd.h, rstd.d, 0, 1e-5);
      Pair dy = rand({n, d}), dx = rand({n, d}), dw = rand({d});  // dw accumulates onto random
      cpu().rmsnorm_backward(dy.h, hx, w.h, rstd.h, dx.h, dw.h);
      gpu().rmsnorm_backward(dy.d, dx_in, w.d, rstd.d, dx.d, dw.d);
      check("rmsnorm_backward dx", c, dx.h, dx.d, 1e-5, 1e-4);
      check("rmsnorm_backward dw", c, dw.h, dw.d, kReduceAtol, kReduceRtol);
    }
  if (!perf_enabled()) return;
  Pair x = rand({4096, 7168}), w = rand({7168});
  Tensor y = gpu().empty({4096, 7168}), r = gpu().empty({4096}), dx = gpu().empty({4096, 7168}),
         dw = gpu().zeros({7168});
  perf_bytes("rmsnorm_forward", "[4096, 7168]",
             time_us([&] { gpu().rmsnorm_forward(x.d, w.d, 1e-6f, y, r); }), 8.0 * 4096 * 7168);
  perf_bytes("rmsnorm_backward", "[4096, 7168]",
             time_us([&] { gpu().rmsnorm_backward(y, x.d, w.d, r, dx, dw); }), 12.0 * 4096 * 7168);
}

TEST_F(BackendOps, LayerNormForwardBackward) {
  for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 3}, {17, 128}, {70, 300}})
    for (bool strided : {false, true}) {
      Pair xb = rand({n, d + (strided ? 5 : 0)}, -2.0f, 3.0f);
      Tensor hx = xb.h.slice(1, 0, d), dx_in = xb.d.slice(1, 0, d);
      Pair w = rand({d}, 0.3f, 1.2f), b = rand({d});
      Pair y = rand({n, d}), mean = rand({n}), rstd = rand({n});
      cpu().layernorm_forward(hx, w.h, b.h, 1e-6f, y.h, mean.h, rstd.h);
      gpu().layernorm_forward(dx_in, w.d, b.d, 1e-6f, y.d, mean.d, rstd.d);
      const std::string c = fmt::format("[{}, {}]{}", n, d, strided ? " strided x" : "");
      check("layernorm_forward y", c, y.h, y.d, 1e-5, 1e-5);
      check("layernorm_forward mean", c, mean.h, mean.d, 1e-6, 1e-6);
      check("layernorm_forward rstd", c, rstd.h, rstd.d, 0, 1e-5);
      Pair dy = rand({n, d}), dx = rand({n, d}), dw = rand({d}), db = rand({d});
      cpu().layernorm_backward(dy.h, hx, w.h, mean.h, rstd.h, dx.h, dw.h, db.h);
      gpu().layernorm_backward(dy.d, dx_in, w.d, mean.d, rstd.d, dx.d, dw.d, db.d);
      check("layernorm_backward dx", c, dx.h, dx.d, 1e-5, 1e-4);
      check("layernorm_backward dw", c, dw.h, dw.d, kReduceAtol, kReduceRtol);
      check("layernorm_backward db", c, db.h, db.d, kReduceAtol, kReduceRtol);
    }
  if (!perf_enabled()) return;
  Pair x = rand({16384, 128}), w = rand({128}), b = rand({128});
  Tensor y = gpu().empty({16384, 128}), m = gpu().empty({16384}), r = gpu().empty({16384});
  perf_bytes("layernorm_forward", "[16384, 128]",
             time_us([&] { gpu().layernorm_forward(x.d, w.d, b.d, 1e-6f, y, m, r); }),
             8.0 * 16384 * 128);
}

// ---------------------------------------------------------------------------------------- RoPE

// A [P, half, 2] (cos, sin) table of random angles.
Tensor rope_table(int64_t positions, int64_t half, std::mt19937& rng) {
  Tensor t = Tensor::empty({positions, half, 2}, DType::f32);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t i = 0; i < positions * half; ++i) {
    const float a = u(rng);
    t.f32()[2 * i] = std::cos(a) * 1.1f;
    t.f32()[2 * i + 1] = std::sin(a) * 1.1f;
  }
  return t;
}

TEST_F(BackendOps, Rope) {
  const int64_t n = 11, h = 3, nope = 6, rd = 8, p = 40;
  Pair table = mirror(rope_table(p, rd / 2, rng_));
  std::vector<int32_t> pos(n);
  for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t((i * 7) % p);
  Pair positions = ints(pos, {n});
  for (bool interleaved : {true, false})
    for (bool inverse : {false, true}) {
      // The rope part of [N, H, nope + rd] (a strided view), as MLA rotates q_pe in place.
      Pair q = rand({n, h, nope + rd});
      Tensor hq = q.h.slice(2, nope, nope + rd), dq = q.d.slice(2, nope, nope + rd);
      cpu().rope(hq, positions.h, table.h, interleaved, inverse);
      gpu().rope(dq, positions.h, table.d, interleaved, inverse);  // host positions: uploaded
      check("rope",
            fmt::format("[{}, {}, {}] of {} interleaved={} inverse={}", n, h, rd, nope + rd,
                        interleaved, inverse),
            q.h, q.d, 1e-6, kElemRtol);
    }
  if (!perf_enabled()) return;
  Pair big = rand({16384, 128, 64});
  Pair bt = mirror(rope_table(16384, 32, rng_));
  std::vector<int32_t> bpos(16384);
  std::iota(bpos.begin(), bpos.end(), 0);
  Pair bp = ints(bpos, {16384});
  perf_bytes("rope", "[16384, 128, 64] interleaved",
             time_us([&] { gpu().rope(big.d, bp.d, bt.d, true, false); }), 8.0 * 16384 * 128 * 64);
}

// --------------------------------------------------------------------------------- attention

// A DSA-like selection: per token, up to k distinct keys at or before it (always itself), the rest
// of the row -1 (and some future / -1 entries mixed in, which must be ignored).
Tensor random_sparse(const std::vector<int64_t>& cu, int64_t k, std::mt19937& rng) {
  const int64_t n = cu.back();
  Tensor idx = Tensor::empty({n, k}, DType::i32);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      const int64_t pos = t - cu[s], len = cu[s + 1] - cu[s];
      std::vector<int32_t> keys(static_cast<size_t>(len));
      std::iota(keys.begin(), keys.end(), 0);
      std::shuffle(keys.begin(), keys.end(), rng);
      std::vector<int32_t> row;
      row.push_back(int32_t(pos));
      for (int32_t key : keys)
        if (int64_t(row.size()) < k && key != pos) row.push_back(key);  // future keys too
      while (int64_t(row.size()) < k) row.push_back(-1);
      std::shuffle(row.begin(), row.end(), rng);
      for (int64_t j = 0; j < k; ++j) idx.i32()[t * k + j] = row[size_t(j)];
    }
  return idx;
}

// Dense cases with dk <= 192 and dv <= 128 run the tiled kernels (64-query / 32-key tiles):
// {0, 70, 200} and {0, 130} straddle tile edges with several tiles per sequence; (192, 128) are
// MLA's head dims, (200, 136) exceed the tiled limits and take the general kernels, as DSA does.
TEST_F(BackendOps, AttentionForwardBackward) {
  const std::vector<std::vector<int64_t>> batches = {
      {0, 1}, {0, 5, 5, 17, 50}, {0, 130}, {0, 70, 200}};
  struct Dims {
    int64_t dk, dv;
  };
  for (Dims dims : {Dims{24, 16}, Dims{192, 128}, Dims{200, 136}}) {
    for (const auto& cu : batches)
      for (int sparse = 0; sparse < 2; ++sparse) {
        const int64_t n = cu.back(), h = 3, dk = dims.dk, dv = dims.dv;
        // q, k, v are views of one [N, H, dk + dv] buffer each (MLA's kv_b output layout).
        Pair qb = rand({n, h, dk + 4}), kvb = rand({n, h, dk + dv});
        Tensor hq = qb.h.slice(2, 0, dk), dq_in = qb.d.slice(2, 0, dk);
        Tensor hk = kvb.h.slice(2, 0, dk), dk_in = kvb.d.slice(2, 0, dk);
        Tensor hv = kvb.h.slice(2, dk, dk + dv), dv_in = kvb.d.slice(2, dk, dk + dv);
        Pair idx = mirror(random_sparse(cu, 7, rng_));
        const Tensor* hi = sparse ? &idx.h : nullptr;
        const Tensor* di = sparse ? &idx.d : nullptr;
        const float scale = 0.3f;
        Pair out = rand({n, h, dv}), lse = rand({h, n});
        cpu().attention_forward(hq, hk, hv, cu, scale, out.h, lse.h, hi);
        gpu().attention_forward(dq_in, dk_in, dv_in, cu, scale, out.d, lse.d, di);
        const std::string c =
            fmt::format("H={} dk={} dv={} {}{}", h, dk, dv, cs(cu), sparse ? " sparse k=7" : "");
        check("attention_forward out", c, out.h, out.d, 1e-5, 1e-4);
        check("attention_forward lse", c, lse.h, lse.d, 1e-5, 1e-5);
        Pair dout = rand({n, h, dv});
        Pair dq = rand({n, h, dk}), dkk = rand({n, h, dk}), dvv = rand({n, h, dv});
        cpu().attention_backward(hq, hk, hv, out.h, dout.h, lse.h, cu, scale, dq.h, dkk.h, dvv.h,
                                 hi);
        gpu().attention_backward(dq_in, dk_in, dv_in, out.d, dout.d, lse.d, cu, scale, dq.d, dkk.d,
                                 dvv.d, di);
        check("attention_backward dq", c, dq.h, dq.d, 1e-5, 1e-4);
        check("attention_backward dk", c, dkk.h, dkk.d, 1e-5, 1e-4);
        check("attention_backward dv", c, dvv.h, dvv.d, 1e-5, 1e-4);
        Pair probs = rand({[&] {
          int64_t t = 0;
          for (size_t s = 0; s + 1 < cu.size(); ++s) t += (cu[s + 1] - cu[s]) * (cu[s + 1] - cu[s]);
          return t;
        }()});
        cpu().attention_head_sum_probs(hq, hk, lse.h, cu, scale, hi, probs.h);
        gpu().attention_head_sum_probs(dq_in, dk_in, lse.d, cu, scale, di, probs.d);
        check("attention_head_sum_probs", c, probs.h, probs.d, 1e-6, 1e-4);
      }
  }
  if (!perf_enabled()) return;
  // DeepSeek-V3 head dims, one 2048-token sequence, 16 heads.
  const int64_t n = 2048, h = 16, dk = 192, dv = 128;
  Pair q = rand({n, h, dk}), k = rand({n, h, dk}), v = rand({n, h, dv});
  Tensor out = gpu().empty({n, h, dv}), lse = gpu().empty({h, n});
  const std::vector<int64_t> cu = {0, n};
  const double fwd_flops = 2.0 * h * (double(n) * (n + 1) / 2) * (dk + dv);
  perf_flops("attention_forward", "N=2048 H=16 dk=192 dv=128 causal",
             time_us([&] { gpu().attention_forward(q.d, k.d, v.d, cu, 0.07f, out, lse); }, 3),
             fwd_flops);
  Tensor dq = gpu().empty({n, h, dk}), dkk = gpu().empty({n, h, dk}), dvv = gpu().empty({n, h, dv});
  perf_flops(
      "attention_backward", "N=2048 H=16 dk=192 dv=128 causal",
      time_us(
          [&] { gpu().attention_backward(q.d, k.d, v.d, out, out, lse, cu, 0.07f, dq, dkk, dvv); },
          3),
      2.5 * fwd_flops);
}

// Dense attention on the tensor cores in TF32 (CudaBackendOptions::tf32_attention) against the
// CPU's f32. Every tile-product operand is rounded to nearest to TF32 once: relative error at
// most u = 2^-11. With q, k in [-1, 1] and scale = 1/sqrt(dk), a score errs by at most
// 2u scale sum|q||k| <= 2u sqrt(dk) (1.4e-2 at dk = 192), and lse, a soft maximum of the scores,
// by no more: checked element by element. out, dq, dk, dv are checked by relative L2 error: P
// inherits the scores' error (relative, ~2u sqrt(dk) at worst, far less on average), each product
// adds 2u; 2^-7 = 16u for out and dv (one softmax, one product), 2^-6 for dq and dk (dS = P (dP -
// D) subtracts nearly equal terms and then enters a second product). A one-token sequence is the
// exception: with one key P = 1 and D = dP, so dS, dq and dk are 0 in exact arithmetic and only
// rounding is left on either side, with no relative error to measure; there the check is
// absolute: the rounded dP and D err by at most 2u sum|v||dO| <= 2u dv each (inputs in [-1, 1]),
// and dS's own rounding adds 2u |dP - D|, so |dq|, |dk| <= scale (4u dv + 2u 2 dv) = 8u dv scale.
TEST_F(BackendOps, AttentionTf32TensorCores) {
  auto tc = make_cuda_backend(0, CudaBackendOptions{CudaGemm::f32, true});
  const std::vector<std::vector<int64_t>> batches = {
      {0, 1}, {0, 5, 5, 17, 50}, {0, 130}, {0, 70, 200}};
  struct Dims {
    int64_t dk, dv;
  };
  double seen = 0;
  for (Dims dims : {Dims{24, 16}, Dims{192, 128}, Dims{40, 24}}) {
    for (const auto& cu : batches) {
      const int64_t n = cu.back(), h = 3, dk = dims.dk, dv = dims.dv;
      Pair qb = rand({n, h, dk + 4}), kvb = rand({n, h, dk + dv});
      Tensor hq = qb.h.slice(2, 0, dk), hk = kvb.h.slice(2, 0, dk);
      Tensor hv = kvb.h.slice(2, dk, dk + dv);
      Tensor dq_in = tc->from_host(qb.h).slice(2, 0, dk);
      Tensor dkv = tc->from_host(kvb.h);
      Tensor dk_in = dkv.slice(2, 0, dk), dv_in = dkv.slice(2, dk, dk + dv);
      const float scale = 1.0f / std::sqrt(float(dk));
      Tensor out = Tensor::empty({n, h, dv}, DType::f32), lse = Tensor::empty({h, n}, DType::f32);
      Tensor out_d = tc->empty({n, h, dv}), dlse = tc->empty({h, n});
      cpu().attention_forward(hq, hk, hv, cu, scale, out, lse);
      tc->attention_forward(dq_in, dk_in, dv_in, cu, scale, out_d, dlse);
      Tensor got_out = tc->to_host(out_d), got_lse = tc->to_host(dlse);
      Tensor g = rand_host({n, h, dv});
      Tensor dq = Tensor::empty({n, h, dk}, DType::f32),
             dk_ = Tensor::empty({n, h, dk}, DType::f32),
             dv_ = Tensor::empty({n, h, dv}, DType::f32);
      cpu().attention_backward(hq, hk, hv, out, g, lse, cu, scale, dq, dk_, dv_);
      Tensor gq = tc->empty({n, h, dk}), gk = tc->empty({n, h, dk}), gv = tc->empty({n, h, dv});
      tc->attention_backward(dq_in, dk_in, dv_in, out_d, tc->from_host(g), dlse, cu, scale, gq, gk,
                             gv);
      const double lse_bound = 2.0 * std::ldexp(1.0, -11) * std::sqrt(double(dk)) + 1e-5;
      double lse_err = 0;
      for (int64_t i = 0; i < lse.numel(); ++i)
        lse_err = std::max(lse_err, std::fabs(double(got_lse.f32()[i]) - double(lse.f32()[i])));
      Tensor hgq = tc->to_host(gq), hgk = tc->to_host(gk);
      const double e_out = relative_l2(got_out, out), e_dq = relative_l2(hgq, dq),
                   e_dk = relative_l2(hgk, dk_), e_dv = relative_l2(tc->to_host(gv), dv_);
      const double t1 = std::ldexp(1.0, -7), t2 = std::ldexp(1.0, -6);
      bool grads_ok = e_dq <= t2 && e_dk <= t2;
      if (n == 1) {  // dq = dk = 0 exactly: absolute bound (see above)
        const double bound = 8.0 * std::ldexp(1.0, -11) * double(dv) * double(scale);
        double mx = 0;
        for (int64_t i = 0; i < hgq.numel(); ++i)
          mx = std::max({mx, std::fabs(double(hgq.f32()[i])), std::fabs(double(hgk.f32()[i]))});
        std::printf(
            "[ attention tf32          ] dk=%lld one token: max |dq|, |dk| %.3g (<= %.3g)\n",
            (long long)dk, mx, bound);
        grads_ok = mx <= bound;
      }
      const bool pass = lse_err <= lse_bound && e_out <= t1 && e_dv <= t1 && grads_ok;
      std::printf(
          "[ attention tf32          ] dk=%lld dv=%lld %-16s lse max_abs %.3g (<= %.3g) rel_l2 "
          "out %.3g dv %.3g (<= %.3g) dq %.3g dk %.3g (<= %.3g) %s\n",
          (long long)dk, (long long)dv, cs(cu).c_str(), lse_err, lse_bound, e_out, e_dv, t1, e_dq,
          e_dk, t2, pass ? "PASS" : "FAIL");
      EXPECT_TRUE(pass) << "tf32 attention dk=" << dk << " " << cs(cu);
      seen = std::max(seen, e_out);
    }
  }
  // f32 kernels land near 1e-7 here; TF32 operands must leave a visible trace.
  EXPECT_GT(seen, 1e-5) << "the TF32 path did not run";
  if (!perf_enabled()) return;
  const int64_t n = 2048, h = 16, dk = 192, dv = 128;
  Tensor q = tc->from_host(rand_host({n, h, dk})), k = tc->from_host(rand_host({n, h, dk})),
         v = tc->from_host(rand_host({n, h, dv}));
  Tensor out = tc->empty({n, h, dv}), lse = tc->empty({h, n});
  const std::vector<int64_t> cu = {0, n};
  const double fwd_flops = 2.0 * h * (double(n) * (n + 1) / 2) * (dk + dv);
  perf_flops("attention_forward", "tf32 N=2048 H=16 dk=192 dv=128 causal",
             time_us([&] { tc->attention_forward(q, k, v, cu, 0.07f, out, lse); }, 3), fwd_flops);
  Tensor dq = tc->empty({n, h, dk}), dkk = tc->empty({n, h, dk}), dvv = tc->empty({n, h, dv});
  perf_flops(
      "attention_backward", "tf32 N=2048 H=16 dk=192 dv=128 causal",
      time_us([&] { tc->attention_backward(q, k, v, out, out, lse, cu, 0.07f, dq, dkk, dvv); }, 3),
      2.5 * fwd_flops);
}

// Dense attention on the tensor cores with bf16 operands (CudaAttention::bf16, flash_bf16.cu)
// against the CPU, element by element, with bounds derived from where the kernel rounds. u = 2^-8
// is bf16's unit roundoff (8 significant bits, round to nearest). The kernel rounds q, k, v, dO
// (once, on entry) and P and dS (before their products) to bf16; every product accumulates in
// f32; lse, D = rowsum(dO * O) and the softmax are f32. The reference is the CPU's f32 attention
// on q, k, v, dO rounded to bf16 the same way, so the operand rounding cancels exactly (a product
// of two bf16 values is exact in f32) and what remains, to first order, is:
//   scores: f32 accumulation only, e_s <= dk 2^-24 scale sum|q||k| <= 2^-24 dk^1.5 (+ 1e-5 for
//     ex2.approx vs expf and the log-sum-exp); lse errs by at most e_s (a soft maximum);
//   P: relative error 2 e_s (score and lse), then rounded: u more before P V and P^T dO. The
//     forward divides P V by the sum of the rounded P (weights summing to 1), so each weight
//     errs by at most 2 (u + 2 e_s) relative to its exact value: |d out_ic| <= 2 (u + 2 e_s)
//     sum_j P_ij |v_jc|; the backward recomputes P from the lse: |d dv_jc| <= (u + 2 e_s) sum_i
//     P_ij |dO_ic|;
//   D: the kernel's uses the unrounded dO and its own out, summed in f32: |d D_i| <= sum_c
//     ((u + 2^-24 dv) |dO_ic| |o_ic| + |dO_ic| bound(out_ic)); dP = dO . v accumulates in f32:
//     |d dP_ij| <= 2^-24 dv sum_c |dO_ic| |v_jc|;
//   dS = P (dP - D), rounded: |d dS_ij| <= (u + 2 e_s) |dS_ij| + P_ij (|d D_i| + |d dP_ij|);
//   dk_jc = scale sum_i dS_ij q_ic: |d dk_jc| <= scale sum_i |d dS_ij| |q_ic| (dq likewise with k),
//     plus f32 accumulation over L terms, L 2^-24 scale sum_i |dS_ij| |q_ic|.
// Each bound is multiplied by 1.05 for second-order terms (products of two relative errors of
// at most ~0.05) and given 1e-6 absolute slack for values that cancel to ~0.
float round_bf16(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b += 0x7fffu + ((b >> 16) & 1u);  // round to nearest even (finite inputs)
  b &= 0xffff0000u;
  std::memcpy(&x, &b, 4);
  return x;
}

// A contiguous [n, h, d] copy of a strided host view, each element rounded to bf16.
Tensor rounded_bf16(const Tensor& t) {
  Tensor r = Tensor::empty(t.shape(), DType::f32);
  const int64_t n = t.size(0), h = t.size(1), d = t.size(2);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < h; ++j)
      for (int64_t c = 0; c < d; ++c)
        r.f32()[(i * h + j) * d + c] = round_bf16(t.f32()[i * t.stride(0) + j * t.stride(1) + c]);
  return r;
}

TEST_F(BackendOps, AttentionBf16TensorCores) {
  auto tc = make_cuda_backend(0, CudaBackendOptions{CudaGemm::f32, false, CudaAttention::bf16});
  const double u = std::ldexp(1.0, -8), eps24 = std::ldexp(1.0, -24);
  // SHOAL_SMALL_SHAPES (for compute-sanitizer runs): fewer, shorter batches and two head dims.
  const bool small = std::getenv("SHOAL_SMALL_SHAPES") != nullptr;
  const std::vector<std::vector<int64_t>> batches =
      small ? std::vector<std::vector<int64_t>>{{0, 1}, {0, 5, 5, 17, 50}, {0, 3, 67, 80}}
            : std::vector<std::vector<int64_t>>{
                  {0, 1}, {0, 5, 5, 17, 50}, {0, 130}, {0, 70, 200}, {0, 3, 67, 140, 141, 300}};
  struct Dims {
    int64_t dk, dv;
  };
  // The golden models' dims too (12/12, 16/8: d not a multiple of 16, dv of 8).
  std::vector<Dims> dim_list = {Dims{24, 16}, Dims{192, 128}, Dims{40, 24},
                                Dims{64, 64}, Dims{12, 12},   Dims{16, 8}};
  if (small) dim_list.resize(2);
  double seen = 0;
  for (Dims dims : dim_list) {
    for (const auto& cu : batches) {
      const int64_t n = cu.back(), h = 3, dk = dims.dk, dv = dims.dv;
      // Strided views as the model passes them: q inside a wider row, k and v sharing rows.
      Pair qb = rand({n, h, dk + 4}), kvb = rand({n, h, dk + dv});
      Tensor hq = qb.h.slice(2, 0, dk), hk = kvb.h.slice(2, 0, dk);
      Tensor hv = kvb.h.slice(2, dk, dk + dv);
      Tensor dq_in = qb.d.slice(2, 0, dk);
      Tensor dk_in = kvb.d.slice(2, 0, dk), dv_in = kvb.d.slice(2, dk, dk + dv);
      Tensor g = rand_host({n, h, dv});
      Tensor rq = rounded_bf16(hq), rk = rounded_bf16(hk), rv = rounded_bf16(hv),
             rg = rounded_bf16(g);
      const float scale = 1.0f / std::sqrt(float(dk));
      // Reference: f32 CPU attention on the rounded operands.
      Tensor out = Tensor::empty({n, h, dv}, DType::f32), lse = Tensor::empty({h, n}, DType::f32);
      cpu().attention_forward(rq, rk, rv, cu, scale, out, lse);
      Tensor dq = Tensor::empty({n, h, dk}, DType::f32),
             dk_ = Tensor::empty({n, h, dk}, DType::f32),
             dv_ = Tensor::empty({n, h, dv}, DType::f32);
      cpu().attention_backward(rq, rk, rv, out, rg, lse, cu, scale, dq, dk_, dv_);
      // The kernels on the unrounded f32 operands.
      Tensor out_d = tc->empty({n, h, dv}), dlse = tc->empty({h, n});
      tc->attention_forward(dq_in, dk_in, dv_in, cu, scale, out_d, dlse);
      Tensor gq = tc->empty({n, h, dk}), gk = tc->empty({n, h, dk}), gv = tc->empty({n, h, dv});
      tc->attention_backward(dq_in, dk_in, dv_in, out_d, tc->from_host(g), dlse, cu, scale, gq, gk,
                             gv);
      Tensor got_out = tc->to_host(out_d), got_lse = tc->to_host(dlse);
      Tensor got_dq = tc->to_host(gq), got_dk = tc->to_host(gk), got_dv = tc->to_host(gv);

      // Bounds (see above), per head from the reference's P and dS.
      const double e_s = eps24 * double(dk) * std::sqrt(double(dk)) + 1e-5;
      const double rel = u + 2 * e_s, slack = 1e-6, second = 1.05;
      double worst_lse = 0, worst_out = 0, worst_dq = 0, worst_dk = 0, worst_dv = 0;  // err/bound
      auto at = [](const Tensor& t, int64_t i, int64_t j, int64_t c) {
        return double(t.f32()[(i * t.size(1) + j) * t.size(2) + c]);
      };
      auto ratio = [&](double got, double want, double bound) {
        return std::fabs(got - want) / (second * bound + slack);
      };
      std::vector<int64_t> start(n);
      for (size_t s = 0; s + 1 < cu.size(); ++s)
        for (int64_t t = cu[s]; t < cu[s + 1]; ++t) start[t] = cu[s];
      std::vector<double> P(n * n), dS(n * n), bS(n * n), bD(n);
      for (int64_t hh = 0; hh < h; ++hh) {
        std::fill(P.begin(), P.end(), 0.0);
        for (int64_t i = 0; i < n; ++i) {
          worst_lse =
              std::max(worst_lse, ratio(got_lse.f32()[hh * n + i], lse.f32()[hh * n + i], e_s));
          for (int64_t j = start[i]; j <= i; ++j) {
            double sc = 0;
            for (int64_t c = 0; c < dk; ++c) sc += at(rq, i, hh, c) * at(rk, j, hh, c);
            P[i * n + j] = std::exp(scale * sc - double(lse.f32()[hh * n + i]));
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          double d_row = 0, b_d = 0;
          for (int64_t c = 0; c < dv; ++c) {
            double b = 0;
            for (int64_t j = start[i]; j <= i; ++j) b += P[i * n + j] * std::fabs(at(rv, j, hh, c));
            b *= 2 * rel;
            worst_out = std::max(worst_out, ratio(at(got_out, i, hh, c), at(out, i, hh, c), b));
            const double o = at(out, i, hh, c),
                         go = std::fabs(double(g.f32()[(i * h + hh) * dv + c]));
            d_row += at(rg, i, hh, c) * o;
            b_d += (u + eps24 * double(dv)) * go * std::fabs(o) + go * b;
          }
          bD[i] = b_d;
          for (int64_t j = start[i]; j <= i; ++j) {
            double dp = 0, b_dp = 0;
            for (int64_t c = 0; c < dv; ++c) {
              dp += at(rg, i, hh, c) * at(rv, j, hh, c);
              b_dp += std::fabs(at(rg, i, hh, c) * at(rv, j, hh, c));
            }
            const double pij = P[i * n + j];
            dS[i * n + j] = pij * (dp - d_row);
            bS[i * n + j] = rel * std::fabs(dS[i * n + j]) + pij * (bD[i] + eps24 * dv * b_dp);
          }
        }
        const double acc = eps24 * double(n);  // f32 accumulation over at most n terms
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t c = 0; c < dk; ++c) {
            double b = 0, b2 = 0;
            for (int64_t i = j; i < n && start[i] <= j; ++i) {
              b += (bS[i * n + j] + acc * std::fabs(dS[i * n + j])) * std::fabs(at(rq, i, hh, c));
            }
            for (int64_t jj = start[j]; jj <= j; ++jj)
              b2 +=
                  (bS[j * n + jj] + acc * std::fabs(dS[j * n + jj])) * std::fabs(at(rk, jj, hh, c));
            worst_dk =
                std::max(worst_dk, ratio(at(got_dk, j, hh, c), at(dk_, j, hh, c), scale * b));
            worst_dq =
                std::max(worst_dq, ratio(at(got_dq, j, hh, c), at(dq, j, hh, c), scale * b2));
          }
          for (int64_t c = 0; c < dv; ++c) {
            double b = 0;
            for (int64_t i = j; i < n && start[i] <= j; ++i)
              b += P[i * n + j] * std::fabs(at(rg, i, hh, c));
            worst_dv = std::max(worst_dv, ratio(at(got_dv, j, hh, c), at(dv_, j, hh, c), rel * b));
          }
        }
      }
      const bool pass = std::max({worst_lse, worst_out, worst_dq, worst_dk, worst_dv}) <= 1.0;
      std::printf(
          "[ attention bf16          ] dk=%lld dv=%lld %-22s max err/bound lse %.3f out %.3f "
          "dq %.3f dk %.3f dv %.3f; rel_l2 out %.2g dq %.2g dk %.2g dv %.2g %s\n",
          (long long)dk, (long long)dv, cs(cu).c_str(), worst_lse, worst_out, worst_dq, worst_dk,
          worst_dv, relative_l2(got_out, out), relative_l2(got_dq, dq), relative_l2(got_dk, dk_),
          relative_l2(got_dv, dv_), pass ? "PASS" : "FAIL");
      EXPECT_TRUE(pass) << "bf16 attention dk=" << dk << " dv=" << dv << " " << cs(cu);
      // Against the f32 reference on the unrounded operands, bf16 must leave a visible trace.
      Tensor out32 = Tensor::empty({n, h, dv}, DType::f32),
             lse32 = Tensor::empty({h, n}, DType::f32);
      cpu().attention_forward(hq, hk, hv, cu, scale, out32, lse32);
      seen = std::max(seen, relative_l2(got_out, out32));
    }
  }
  EXPECT_GT(seen, 1e-4) << "the bf16 path did not run";
  if (!perf_enabled()) return;
  struct Shape {
    int64_t n, seqs;
  };
  for (Shape sh : {Shape{2048, 1}, Shape{16384, 4}}) {
    const int64_t n = sh.n, h = 16, dk = 192, dv = 128, len = n / sh.seqs;
    Tensor q = tc->from_host(rand_host({n, h, dk})), k = tc->from_host(rand_host({n, h, dk})),
           v = tc->from_host(rand_host({n, h, dv}));
    Tensor out = tc->empty({n, h, dv}), lse = tc->empty({h, n});
    std::vector<int64_t> cu;
    for (int64_t s = 0; s <= sh.seqs; ++s) cu.push_back(s * len);
    const double fwd_flops = double(sh.seqs) * 2.0 * h * (double(len) * (len + 1) / 2) * (dk + dv);
    const std::string what = fmt::format("bf16 N={}x{} H=16 dk=192 dv=128 causal", sh.seqs, len);
    perf_flops("attention_forward", what,
               time_us([&] { tc->attention_forward(q, k, v, cu, 0.07f, out, lse); }, 3), fwd_flops);
    Tensor dq = tc->empty({n, h, dk}), dkk = tc->empty({n, h, dk}), dvv = tc->empty({n, h, dv});
    perf_flops(
        "attention_backward", what,
        time_us([&] { tc->attention_backward(q, k, v, out, out, lse, cu, 0.07f, dq, dkk, dvv); },
                3),
        2.5 * fwd_flops);
  }
}

// ------------------------------------------------------------------------------- DSA indexer

int64_t packed(const std::vector<int64_t>& cu) {
  int64_t t = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) t += (cu[s + 1] - cu[s]) * (cu[s + 1] - cu[s]);
  return t;
}

TEST_F(BackendOps, IndexerScoresAndBackward) {
  for (const auto& cu : std::vector<std::vector<int64_t>>{{0, 1}, {0, 9, 9, 40}, {0, 100}}) {
    const int64_t n = cu.back(), h = 4, d = 32;
    Pair qb = rand({n, h, d + 8}), k = rand({n, d}), w = rand({n, h});
    Tensor hq = qb.h.slice(2, 8, 8 + d), dq_in = qb.d.slice(2, 8, 8 + d);
    Pair sc = rand({packed(cu)});
    cpu().indexer_scores(hq, k.h, w.h, cu, 0.125f, sc.h);
    gpu().indexer_scores(dq_in, k.d, w.d, cu, 0.125f, sc.d);
    const std::string c = fmt::format("H={} D={} {}", h, d, cs(cu));
    check("indexer_scores", c, sc.h, sc.d, 1e-5, 1e-4);
    Pair dsc = rand({packed(cu)});
    Pair dq = rand({n, h, d}), dk = rand({n, d}), dw = rand({n, h});
    cpu().indexer_scores_backward(hq, k.h, w.h, cu, 0.125f, dsc.h, dq.h, dk.h, dw.h);
    gpu().indexer_scores_backward(dq_in, k.d, w.d, cu, 0.125f, dsc.d, dq.d, dk.d, dw.d);
    check("indexer_scores_backward dq", c, dq.h, dq.d, 1e-5, 1e-4);
    check("indexer_scores_backward dk", c, dk.h, dk.d, 1e-5, 1e-4);
    check("indexer_scores_backward dw", c, dw.h, dw.d, 1e-5, 1e-4);
  }
  if (!perf_enabled()) return;
  const int64_t n = 2048, h = 64, d = 128;
  Pair q = rand({n, h, d}), k = rand({n, d}), w = rand({n, h});
  Tensor sc = gpu().empty({n * n});
  const std::vector<int64_t> cu = {0, n};
  perf_flops("indexer_scores", "N=2048 H=64 D=128",
             time_us([&] { gpu().indexer_scores(q.d, k.d, w.d, cu, 0.1f, sc); }, 3),
             2.0 * h * d * double(n) * (n + 1) / 2);
}

// Scores with many exact ties (coarse values, runs of zeros), as ReLU'd indexer scores have.
Tensor tied_scores(const std::vector<int64_t>& cu, std::mt19937& rng) {
  Tensor t = Tensor::empty({packed(cu)}, DType::f32);
  std::uniform_int_distribution<int> u(-3, 4);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = std::max(0, u(rng)) * 0.5f;
  return t;
}

// The selected set of each row (sorted), for comparing selections regardless of order.
std::vector<std::vector<int32_t>> row_sets(const Tensor& idx, int64_t k) {
  std::vector<std::vector<int32_t>> rows(size_t(idx.numel() / k));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int64_t j = 0; j < k; ++j) rows[r].push_back(idx.i32()[int64_t(r) * k + j]);
    std::sort(rows[r].begin(), rows[r].end());
  }
  return rows;
}

TEST_F(BackendOps, TopkRowsReproducesReferenceTies) {
  // len >= 64 k takes the partial_sort branch, otherwise nth_element; k > len pads with -1.
  for (const auto& cu : std::vector<std::vector<int64_t>>{{0, 3, 3, 20}, {0, 300}, {0, 1000}})
    for (int64_t k : {1, 4, 13, 64, 2048}) {
      Pair sc = mirror(tied_scores(cu, rng_));
      const int64_t n = cu.back();
      Tensor hi = Tensor::empty({n, k}, DType::i32), di = gpu().empty({n, k}, DType::i32);
      cpu().topk_rows(sc.h, cu, k, hi);
      gpu().topk_rows(sc.d, cu, k, di);
      Tensor g = gpu().to_host(di);
      const auto a = row_sets(hi, k), b = row_sets(g, k);
      int64_t differing = 0;
      for (size_t r = 0; r < a.size(); ++r) differing += a[r] != b[r];
      std::printf("[ %-24s] %-44s rows with a different set: %lld of %lld %s\n", "topk_rows",
                  fmt::format("{} k={} (tied scores)", cs(cu), k).c_str(),
                  static_cast<long long>(differing), static_cast<long long>(n),
                  differing == 0 ? "PASS" : "FAIL");
      EXPECT_EQ(differing, 0) << cs(cu) << " k=" << k;
      // The device lists each row best first (ties by position).
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 1; j < k; ++j) {
          const int32_t p0 = g.i32()[r * k + j - 1], p1 = g.i32()[r * k + j];
          if (p1 < 0) break;
          ASSERT_GE(p0, 0);
        }
    }
  if (!perf_enabled()) return;
  const int64_t n = 4096;
  const std::vector<int64_t> cu = {0, n};
  Pair sc = rand({n * n});
  Tensor idx = gpu().empty({n, 2048}, DType::i32);
  perf_bytes("topk_rows", "N=4096 k=2048 (reference tie-break)",
             time_us([&] { gpu().topk_rows(sc.d, cu, 2048, idx); }, 2), 4.0 * double(n) * n);
}

TEST_F(BackendOps, IndexerKl) {
  for (const auto& cu : std::vector<std::vector<int64_t>>{{0, 1}, {0, 6, 6, 31}, {0, 90}})
    for (int sparse = 0; sparse < 2; ++sparse) {
      // p: a distribution over each row's attended set, as attention_head_sum_probs gives.
      Pair idx = mirror(random_sparse(cu, 5, rng_));
      Tensor ph = Tensor::zeros({packed(cu)}, DType::f32);
      int64_t off = 0;
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      for (size_t s = 0; s + 1 < cu.size(); ++s) {
        const int64_t len = cu[s + 1] - cu[s];
        for (int64_t i = 0; i < len; ++i) {
          std::vector<int64_t> keys;
          if (sparse) {
            for (int64_t j = 0; j < 5; ++j) {
              const int32_t v = idx.h.i32()[(cu[s] + i) * 5 + j];
              if (v >= 0 && v <= i) keys.push_back(v);
            }
          } else {
            for (int64_t j = 0; j <= i; ++j) keys.push_back(j);
          }
          double sum = 0;
          for (int64_t j : keys) sum += ph.f32()[off + i * len + j] = (j % 3 == 1) ? 0.0f : u(rng_);
          for (int64_t j : keys)
            ph.f32()[off + i * len + j] = sum > 0 ? float(ph.f32()[off + i * len + j] / sum) : 0.f;
        }
        off += len * len;
      }
      Pair p = mirror(ph), sc = rand({packed(cu)}, -3.0f, 3.0f), dsc = rand({packed(cu)});
      const double kh = cpu().indexer_kl(p.h, sc.h, cu, sparse ? &idx.h : nullptr, 0.25f, dsc.h);
      const double kd = gpu().indexer_kl(p.d, sc.d, cu, sparse ? &idx.d : nullptr, 0.25f, dsc.d);
      const std::string c = cs(cu) + (sparse ? " sparse k=5" : "");
      check_scalar("indexer_kl", c, kh, kd, 1e-6);
      check("indexer_kl dscores", c, dsc.h, dsc.d, 1e-7, 1e-5);
    }
}

TEST_F(BackendOps, HadamardFp8) {
  for (int64_t d : {1, 2, 64, 128})
    for (int mode = 1; mode < 4; ++mode) {
      const bool had = mode & 1, fp8 = mode & 2;
      Pair xb = rand({37, d + 3}, -4.0f, 4.0f);
      Tensor hx = xb.h.slice(1, 0, d), dx = xb.d.slice(1, 0, d);
      cpu().hadamard_fp8(hx, had, fp8);
      gpu().hadamard_fp8(dx, had, fp8);
      // The butterflies and the FP8 rounding replay the CPU's operations exactly.
      check("hadamard_fp8", fmt::format("[37, {}] hadamard={} fp8={}", d, had, fp8), xb.h, xb.d, 0,
            0);
    }
  if (!perf_enabled()) return;
  Pair x = rand({65536, 128});
  perf_bytes("hadamard_fp8", "[65536, 128] both",
             time_us([&] { gpu().hadamard_fp8(x.d, true, true); }), 8.0 * 65536 * 128);
}

// ------------------------------------------------------------------------------- MLP pieces

TEST_F(BackendOps, Swiglu) {
  for (auto [n, inter] : {std::pair<int64_t, int64_t>{1, 1}, {13, 37}, {64, 1408}}) {
    Pair gub = rand({n, 2 * inter + 2}, -4.0f, 4.0f);
    Tensor hg = gub.h.slice(1, 1, 1 + 2 * inter), dg = gub.d.slice(1, 1, 1 + 2 * inter);
    Pair h = rand({n, inter});
    cpu().swiglu_forward(hg, h.h);
    gpu().swiglu_forward(dg, h.d);
    const std::string c = fmt::format("[{}, 2x{}] strided", n, inter);
    check("swiglu_forward", c, h.h, h.d, 1e-6, kElemRtol);
    Pair dh = rand({n, inter}), dgu = rand({n, 2 * inter});
    cpu().swiglu_backward(dh.h, hg, dgu.h);
    gpu().swiglu_backward(dh.d, dg, dgu.d);
    check("swiglu_backward", c, dgu.h, dgu.d, 1e-6, kElemRtol);
  }
  if (!perf_enabled()) return;
  Pair gu = rand({8192, 2 * 2048});
  Tensor h = gpu().empty({8192, 2048});
  perf_bytes("swiglu_forward", "[8192, 2x2048]", time_us([&] { gpu().swiglu_forward(gu.d, h); }),
             12.0 * 8192 * 2048);
}

// ------------------------------------------------------------------------ embedding and losses

TEST_F(BackendOps, Embedding) {
  const int64_t vocab = 50, d = 24, n = 77;
  std::vector<int32_t> ids(n);
  std::uniform_int_distribution<int32_t> u(0, int32_t(vocab - 1));
  for (auto& i : ids) i = u(rng_) % 10;  // many repeats: the backward's atomics meet
  Pair id = ints(ids, {n});
  Pair table = rand({vocab, d});
  Pair out = rand({n, d});
  cpu().embedding_forward(id.h, table.h, out.h);
  gpu().embedding_forward(id.d, table.d, out.d);
  check("embedding_forward", "V=50 D=24 N=77", out.h, out.d, 0, 0);
  Pair dout = rand({n, d}), dtable = rand({vocab, d});
  cpu().embedding_backward(id.h, dout.h, dtable.h);
  gpu().embedding_backward(id.d, dout.d, dtable.d);
  check("embedding_backward", "V=50 D=24 N=77 (repeated ids)", dtable.h, dtable.d, 1e-5, 1e-5);
  if (!perf_enabled()) return;
  Pair big_t = rand({129280, 1024});
  std::vector<int32_t> big_ids(16384);
  for (auto& i : big_ids) i = std::uniform_int_distribution<int32_t>(0, 129279)(rng_);
  Pair bid = ints(big_ids, {16384});
  Tensor bout = gpu().empty({16384, 1024});
  perf_bytes("embedding_forward", "V=129280 D=1024 N=16384",
             time_us([&] { gpu().embedding_forward(bid.d, big_t.d, bout); }), 8.0 * 16384 * 1024);
}

std::vector<int32_t> random_labels(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::vector<int32_t> l(static_cast<size_t>(n));
  std::uniform_int_distribution<int32_t> u(0, int32_t(vocab - 1));
  for (int64_t i = 0; i < n; ++i) l[size_t(i)] = (i % 5 == 3) ? -100 : u(rng);
  return l;
}

TEST_F(BackendOps, CrossEntropy) {
  for (auto [n, vocab] : {std::pair<int64_t, int64_t>{1, 2}, {13, 100}, {40, 5003}})
    for (int mode = 0; mode < 3; ++mode) {  // no gradient, separate gradient, in place
      Pair lb = rand({n, vocab + 1}, -8.0f, 8.0f);
      Tensor hl = lb.h.slice(1, 0, vocab), dl = lb.d.slice(1, 0, vocab);
      Pair labels = ints(random_labels(n, vocab, rng_), {n});
      Pair dlog = rand({n, vocab});
      Tensor* hd = mode == 0 ? nullptr : mode == 1 ? &dlog.h : &hl;
      Tensor* dd = mode == 0 ? nullptr : mode == 1 ? &dlog.d : &dl;
      const double lh = cpu().cross_entropy(hl, labels.h, 0.1f, hd);
      const double lg = gpu().cross_entropy(dl, labels.d, 0.1f, dd);
      const std::string c = fmt::format("[{}, {}] {}", n, vocab,
                                        mode == 0   ? "loss only"
                                        : mode == 1 ? "with dlogits"
                                                    : "dlogits in place");
      check_scalar("cross_entropy loss", c, lh, lg, 1e-6);
      if (mode == 1) check("cross_entropy dlogits", c, dlog.h, dlog.d, 1e-8, 1e-5);
      if (mode == 2) check("cross_entropy dlogits", c, lb.h, lb.d, 1e-8, 1e-5);
    }
  if (!perf_enabled()) return;
  Pair logits = rand({4096, 129280});
  Pair labels = ints(random_labels(4096, 129280, rng_), {4096});
  perf_bytes("cross_entropy", "[4096, 129280] in place",
             time_us([&] { gpu().cross_entropy(logits.d, labels.d, 1.0f, &logits.d); }, 3),
             3.0 * 4 * 4096 * 129280);
}

TEST_F(BackendOps, TokenLogprobs) {
  const int64_t n = 23, vocab = 301;
  for (int with_sets = 0; with_sets < 2; ++with_sets) {
    Pair lb = rand({n, vocab}, -6.0f, 6.0f);
    auto lab = random_labels(n, vocab, rng_);
    // Sets: each row's label plus some random ids (a duplicate or two included).
    Tensor off = Tensor::empty({n + 1}, DType::i64);
    std::vector<int32_t> ids;
    off.i64()[0] = 0;
    for (int64_t r = 0; r < n; ++r) {
      if (lab[size_t(r)] != -100) ids.push_back(lab[size_t(r)]);
      for (int j = 0; j < int(r % 7); ++j)
        ids.push_back(std::uniform_int_distribution<int32_t>(0, int32_t(vocab - 1))(rng_));
      off.i64()[r + 1] = int64_t(ids.size());
    }
    Tensor idt = Tensor::empty({int64_t(ids.size())}, DType::i32);
    std::copy(ids.begin(), ids.end(), idt.i32());
    TokenSets sets{off, idt};
    const TokenSets* ts = with_sets ? &sets : nullptr;
    Pair labels = ints(lab, {n});
    Pair logp = rand({n}), ent = rand({n});
    cpu().token_logprobs(lb.h, labels.h, ts, logp.h, &ent.h);
    gpu().token_logprobs(lb.d, labels.d, ts, logp.d, &ent.d);
    const std::string c = fmt::format("[{}, {}]{}", n, vocab, with_sets ? " token sets" : "");
    check("token_logprobs logp", c, logp.h, logp.d, 1e-5, 1e-5);
    check("token_logprobs entropy", c, ent.h, ent.d, 1e-5, 1e-5);
    Pair dlogp = rand({n});
    dlogp.h.f32()[1] = 0.0f;  // a zero upstream gradient gives a zero row
    dlogp.d = gpu().from_host(dlogp.h);
    Pair dl = rand({n, vocab});
    cpu().token_logprobs_backward(lb.h, labels.h, ts, dlogp.h, dl.h);
    gpu().token_logprobs_backward(lb.d, labels.d, ts, dlogp.d, dl.d);
    check("token_logprobs_backward", c, dl.h, dl.d, 1e-7, 1e-5);
    cpu().token_logprobs_backward(lb.h, labels.h, ts, dlogp.h, lb.h);  // in place
    gpu().token_logprobs_backward(lb.d, labels.d, ts, dlogp.d, lb.d);
    check("token_logprobs_backward", c + " in place", lb.h, lb.d, 1e-7, 1e-5);
  }
}

// ----------------------------------------------------------------------- mixture of experts

TEST_F(BackendOps, RouterForwardBackward) {
  struct Case {
    int64_t n, e, k, groups, topk_groups;
    bool norm;
    float rsf;
    bool ties = false;  // logits and bias on a grid of 0.5: many equal scores
  };
  // The warp kernel (up to 1,024 experts; groups on lanes g and g + 32) and the one-thread kernel
  // (2,048 experts); exact ties, broken by the lower index on both backends.
  for (Case c : {Case{1, 4, 1, 1, 1, true, 1.0f}, Case{37, 16, 4, 4, 2, true, 2.5f},
                 Case{64, 256, 8, 8, 4, true, 2.5f}, Case{20, 64, 6, 1, 1, false, 1.0f},
                 Case{9, 128, 8, 64, 16, true, 2.5f}, Case{5, 2048, 8, 64, 8, true, 2.5f},
                 Case{33, 64, 6, 8, 4, true, 2.5f, true}, Case{3, 1024, 32, 16, 3, true, 1.0f}})
    for (int replay = 0; replay < 2; ++replay) {
      RouterParams rp;
      rp.n_experts = c.e;
      rp.top_k = c.k;
      rp.n_group = c.groups;
      rp.topk_group = c.topk_groups;
      rp.norm_topk_prob = c.norm;
      rp.routed_scaling_factor = c.rsf;
      Tensor hl = rand({c.n, c.e}, -4.0f, 4.0f).h, hb = rand({c.e}, -0.5f, 0.5f).h;
      if (c.ties) {
        for (int64_t i = 0; i < hl.numel(); ++i) hl.f32()[i] = std::round(2 * hl.f32()[i]) / 2;
        for (int64_t i = 0; i < hb.numel(); ++i) hb.f32()[i] = 0.0f;
      }
      Pair logits = mirror(hl), bias = mirror(hb);
      Pair scores = rand({c.n, c.e}), w = rand({c.n, c.k});
      Tensor hidx = Tensor::empty({c.n, c.k}, DType::i32);
      if (replay)  // forced routing: any valid ids, repeats allowed
        for (int64_t i = 0; i < c.n * c.k; ++i) hidx.i32()[i] = int32_t((i * 7) % c.e);
      Pair idx = mirror(hidx);
      cpu().route_noaux_tc(logits.h, bias.h, rp, scores.h, idx.h, w.h, replay);
      gpu().route_noaux_tc(logits.d, bias.d, rp, scores.d, idx.d, w.d, replay);
      const std::string cs_ = fmt::format("N={} E={} K={} groups {}/{} norm={}{}", c.n, c.e, c.k,
                                          c.topk_groups, c.groups, c.norm, replay ? " replay" : "");
      check("route_noaux_tc scores", cs_, scores.h, scores.d, 1e-7, kElemRtol);
      check("route_noaux_tc topk_idx", cs_, idx.h, idx.d, 0, 0);
      check("route_noaux_tc topk_w", cs_, w.h, w.d, 1e-7, kElemRtol);
      Pair dw = rand({c.n, c.k}), dlogits = rand({c.n, c.e});
      cpu().route_backward(dw.h, scores.h, idx.h, rp, dlogits.h);
      gpu().route_backward(dw.d, scores.d, idx.d, rp, dlogits.d);
      check("route_backward", cs_, dlogits.h, dlogits.d, 1e-7, 1e-5);
    }
  if (!perf_enabled()) return;
  RouterParams rp;
  rp.n_experts = 256;
  rp.top_k = 8;
  rp.n_group = 8;
  rp.topk_group = 4;
  Pair logits = rand({16384, 256}), bias = rand({256});
  Tensor scores = gpu().empty({16384, 256}), w = gpu().empty({16384, 8}),
         idx = gpu().empty({16384, 8}, DType::i32);
  perf_bytes("route_noaux_tc", "N=16384 E=256 K=8 groups 4/8",
             time_us([&] { gpu().route_noaux_tc(logits.d, bias.d, rp, scores, idx, w); }),
             8.0 * 16384 * 256);
  rp.n_experts = 64;  // moe-2b's router at decode batches
  rp.top_k = 6;
  for (int64_t n : {1, 256}) {
    Pair l = rand({n, 64}), b = rand({64});
    Tensor sc = gpu().empty({n, 64}), wi = gpu().empty({n, 6}),
           ii = gpu().empty({n, 6}, DType::i32);
    perf_bytes("route_noaux_tc", fmt::format("N={} E=64 K=6 groups 4/8", n),
               time_us([&] { gpu().route_noaux_tc(l.d, b.d, rp, sc, ii, wi); }), 8.0 * n * 64);
  }
}

TEST_F(BackendOps, MoePermutation) {
  for (auto [n, k, e] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {37, 4, 16}, {300, 8, 64}}) {
    std::vector<int32_t> ti(size_t(n * k));
    for (auto& v : ti) v = std::uniform_int_distribution<int32_t>(0, int32_t(e - 1))(rng_);
    Pair idx = ints(ti, {n, k});
    Tensor ho = Tensor::empty({n * k}, DType::i32), dord = gpu().empty({n * k}, DType::i32);
    std::vector<int64_t> hc, dc;
    cpu().moe_sort(idx.h, e, ho, hc);
    gpu().moe_sort(idx.d, e, dord, dc);
    const std::string c = fmt::format("N={} K={} E={}", n, k, e);
    check("moe_sort order", c, ho, dord, 0, 0);
    EXPECT_EQ(hc, dc) << "moe_sort counts " << c;
    std::printf("[ %-24s] %-44s %s\n", "moe_sort counts", c.c_str(),
                hc == dc ? "PASS (equal)" : "FAIL");
    Pair order = mirror(ho);
    for (int64_t d : {33, 36}) {  // 36: rows of float4s (leading dimension 40)
      const std::string c = fmt::format("N={} K={} E={} d={}", n, k, e, d);
      Pair xb = rand({n, d + 4});
      Tensor hx = xb.h.slice(1, 0, d), dx = xb.d.slice(1, 0, d);
      Pair g = rand({n * k, d});
      cpu().gather_rows(hx, order.h, k, g.h);
      gpu().gather_rows(dx, order.d, k, g.d);
      check("gather_rows", c + " div=K", g.h, g.d, 0, 0);
      Pair w = rand({n * k});
      for (int with_w = 0; with_w < 2; ++with_w) {
        Pair out = rand({n, d});
        cpu().scatter_add_rows(g.h, order.h, k, with_w ? &w.h : nullptr, out.h);
        gpu().scatter_add_rows(g.d, order.d, k, with_w ? &w.d : nullptr, out.d);
        check("scatter_add_rows", c + (with_w ? " weighted" : ""), out.h, out.d, 1e-6, 1e-5);
      }
      // combine_rows: the same sums in a fixed order (no atomics), so a second call gives the
      // same bits; onto zeros and accumulating.
      for (int acc = 0; acc < 2; ++acc) {
        Pair out = rand({n, d});
        Tensor again = gpu().from_host(out.h);
        cpu().combine_rows(g.h, order.h, k, &w.h, acc, out.h);
        gpu().combine_rows(g.d, order.d, k, &w.d, acc, out.d);
        gpu().combine_rows(g.d, order.d, k, &w.d, acc, again);
        const std::string cc = c + (acc ? " accumulate" : " onto zeros");
        check("combine_rows", cc, out.h, out.d, 1e-6, 1e-5);
        check("combine_rows", cc + ", second call", gpu().to_host(out.d), again, 0, 0);
      }
      Pair b = rand({n * k, d}), dots = rand({n * k});
      cpu().row_dot_scatter(g.h, b.h, order.h, dots.h);
      gpu().row_dot_scatter(g.d, b.d, order.d, dots.d);
      check("row_dot_scatter", c, dots.h, dots.d, 1e-6, 1e-5);
      cpu().scale_rows(g.h, order.h, w.h);
      gpu().scale_rows(g.d, order.d, w.d);
      check("scale_rows", c, g.h, g.d, 0, 0);
    }
  }
  {  // an idx that is not a permutation (a slot twice, another never) is reported
    Pair src = rand({6, 8}), dst = rand({3, 8});
    Pair bad = ints({0, 1, 2, 3, 3, 5}, {6});
    gpu().combine_rows(src.d, bad.d, 2, nullptr, false, dst.d);
    EXPECT_THROW(cuda_synchronize(), Error);
    Pair good = ints({5, 4, 3, 2, 1, 0}, {6});
    gpu().combine_rows(src.d, good.d, 2, nullptr, false, dst.d);
    EXPECT_NO_THROW(cuda_synchronize());
  }
  if (!perf_enabled()) return;
  const int64_t n = 16384, k = 8, e = 256, d = 2048;
  std::vector<int32_t> ti(size_t(n * k));
  for (auto& v : ti) v = std::uniform_int_distribution<int32_t>(0, int32_t(e - 1))(rng_);
  Pair idx = ints(ti, {n, k});
  Tensor order = gpu().empty({n * k}, DType::i32);
  std::vector<int64_t> counts;
  perf_bytes("moe_sort", "N=16384 K=8 E=256 (incl. counts to host)",
             time_us([&] { gpu().moe_sort(idx.d, e, order, counts); }), 8.0 * n * k);
  Pair x = rand({n, d});
  Tensor g = gpu().empty({n * k, d});
  perf_bytes("gather_rows", "[16384 x 8, 2048]",
             time_us([&] { gpu().gather_rows(x.d, order, k, g); }, 3), 8.0 * n * k * d);
  perf_bytes("scatter_add_rows", "[16384 x 8, 2048] (atomics)",
             time_us([&] { gpu().scatter_add_rows(g, order, k, nullptr, x.d); }, 3),
             12.0 * n * k * d);
}

// ---------------------------------------------------------------------------------- optimizer

TEST_F(BackendOps, AdamW) {
  Pair p = rand({1000}), m = rand({1000}, -0.1f, 0.1f), v = rand({1000}, 0.0f, 0.01f);
  for (int64_t step = 1; step <= 3; ++step) {
    Pair g = rand({1000});
    AdamWParams ap;
    ap.lr = 1e-2f;
    ap.weight_decay = 0.1f;
    ap.step = step;
    cpu().adamw(p.h, g.h, m.h, v.h, ap);
    gpu().adamw(p.d, g.d, m.d, v.d, ap);
  }
  check("adamw param", "[1000] x 3 steps", p.h, p.d, 1e-7, kElemRtol);
  check("adamw m", "[1000] x 3 steps", m.h, m.d, 1e-8, kElemRtol);
  check("adamw v", "[1000] x 3 steps", v.h, v.d, 1e-10, kElemRtol);
  if (!perf_enabled()) return;
  const int64_t n = int64_t(1) << 26;
  Tensor pp = gpu().zeros({n}), gg = gpu().zeros({n}), mm = gpu().zeros({n}), vv = gpu().zeros({n});
  perf_bytes("adamw", "[2^26]", time_us([&] { gpu().adamw(pp, gg, mm, vv, AdamWParams{}); }),
             28.0 * double(n));
}

// ---------------------------------------------------------------------------------- bad input

TEST_F(BackendOps, OutOfMemoryIsAClearError) {
  const int64_t ten_tb = int64_t(10) << 40;
  try {
    Tensor t = gpu().empty({ten_tb / 4});
    ADD_FAILURE() << "allocating 10 TB succeeded";
  } catch (const Error& e) {
    const std::string msg = e.message();
    std::printf("[ %-24s] %s\n", "out of memory", msg.c_str());
    EXPECT_NE(msg.find("out of memory"), std::string::npos) << msg;
    EXPECT_NE(msg.find("10995116277760 bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("free of"), std::string::npos) << msg;
  }
  // The device still works afterwards.
  Pair x = rand({16});
  EXPECT_EQ(gpu().to_host(x.d).f32()[3], x.h.f32()[3]);
}

TEST_F(BackendOps, BadIndicesAreClearErrorsAtTheNextSync) {
  Pair table = rand({10, 4});
  Pair ids = ints({1, 2, 10, 3}, {4});
  Tensor out = gpu().empty({4, 4});
  gpu().embedding_forward(ids.d, table.d, out);
  try {
    cuda_synchronize();
    ADD_FAILURE() << "an out-of-range id was not reported";
  } catch (const Error& e) {
    std::printf("[ %-24s] %s\n", "bad embedding id", e.message().c_str());
    EXPECT_NE(e.message().find("embedding_forward: index 10 at position 2"), std::string::npos)
        << e.message();
  }
  // Cleared after the report: the next sync is clean.
  EXPECT_NO_THROW(cuda_synchronize());
  // A bad label fails the (synchronising) loss itself.
  Pair logits = rand({3, 5});
  Pair labels = ints({0, 7, -100}, {3});
  EXPECT_THROW(gpu().cross_entropy(logits.d, labels.d, 1.0f, nullptr), Error);
  // A sparse index outside its sequence.
  const std::vector<int64_t> cu = {0, 4};
  Pair q = rand({4, 1, 8}), k = rand({4, 1, 8}), v = rand({4, 1, 8});
  Pair bad = ints({0, -1, 1, 5, 2, -1, 3, -1}, {4, 2});
  Tensor o = gpu().empty({4, 1, 8}), lse = gpu().empty({1, 4});
  gpu().attention_forward(q.d, k.d, v.d, cu, 1.0f, o, lse, &bad.d);
  EXPECT_THROW(cuda_synchronize(), Error);
  // Host-side shape checks are immediate, as on the CPU.
  Tensor wrong = gpu().empty({3, 3});
  EXPECT_THROW(gpu().matmul(q.d.view({4, 8}), false, wrong, false, wrong), Error);
  Tensor host = Tensor::empty({4, 8}, DType::f32);
  EXPECT_THROW(gpu().scale(host, 2.0f), Error);
}

}  // namespace
}  // namespace shoal::test
