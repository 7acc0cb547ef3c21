// The harness behind tests/cuda/test_backend_ops.cpp: random host inputs mirrored onto the CUDA
// backend, element-wise comparison of a CUDA result with the CPU backend's (the oracle) printing
// one line per check (op, case, max abs / rel error, tolerance, PASS/FAIL), and kernel timing.
// Test-only; skips (GTEST_SKIP in the fixture) without a device.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"

namespace shoal::test {

// A tensor on the host and its copy on the device (same shape, dtype, contents).
struct Pair {
  Tensor h, d;
};

class BackendOps : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = cuda_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
    gpu_ = make_cuda_backend(0);
  }

  Backend& cpu() { return cpu_backend(); }
  Backend& gpu() { return *gpu_; }

  Tensor rand_host(const Shape& s, float lo = -1.0f, float hi = 1.0f) {
    Tensor t = Tensor::empty(s, DType::f32);
    std::uniform_real_distribution<float> u(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = u(rng_);
    return t;
  }
  Pair mirror(const Tensor& h) { return {h, gpu().from_host(h)}; }
  Pair rand(const Shape& s, float lo = -1.0f, float hi = 1.0f) {
    return mirror(rand_host(s, lo, hi));
  }
  Pair ints(const std::vector<int32_t>& v, const Shape& s) {
    Tensor t = Tensor::empty(s, DType::i32);
    for (size_t i = 0; i < v.size(); ++i) t.i32()[i] = v[i];
    return mirror(t);
  }

  // Compares `got` (either device) with `ref` (host): |got - ref| <= atol + rtol * |ref| for all
  // elements (equal infinities and NaN pairs count as equal). Prints one line; returns pass.
  bool check(const std::string& op, const std::string& what, const Tensor& ref, const Tensor& got,
             double atol, double rtol) {
    Tensor g = got.device() == Device::cuda ? gpu().to_host(got) : got.contiguous();
    Tensor r = ref.contiguous();
    bool pass = g.shape() == r.shape();
    double max_abs = 0, max_rel = 0;
    int64_t bad = 0, first_bad = -1;
    if (pass) {
      Tensor gd = g.to(DType::f64), rd = r.to(DType::f64);
      for (int64_t i = 0; i < r.numel(); ++i) {
        const double a = gd.f64()[i], b = rd.f64()[i];
        if ((std::isnan(a) && std::isnan(b)) || a == b) continue;
        const double e = std::fabs(a - b);
        const double rel = e / std::max(std::fabs(b), 1e-30);
        if (!(e <= atol + rtol * std::fabs(b))) {
          if (first_bad < 0) first_bad = i;
          ++bad;
        }
        if (std::isfinite(e)) {
          max_abs = std::max(max_abs, e);
          max_rel = std::max(max_rel, std::fabs(b) > 1e-3 ? rel : 0.0);
        } else {
          max_abs = INFINITY;
        }
      }
      pass = bad == 0;
    }
    std::printf(
        "[ %-24s] %-44s max_abs=%-10.3g max_rel(|ref|>1e-3)=%-10.3g atol=%-8.1g rtol=%-8.1g %s\n",
        op.c_str(), what.c_str(), max_abs, max_rel, atol, rtol, pass ? "PASS" : "FAIL");
    if (!pass && g.shape() == r.shape())
      std::printf(
          "    %lld of %lld elements out of tolerance, first at flat index %lld: got %.9g ref "
          "%.9g\n",
          static_cast<long long>(bad), static_cast<long long>(r.numel()),
          static_cast<long long>(first_bad), g.to(DType::f64).f64()[first_bad],
          r.to(DType::f64).f64()[first_bad]);
    EXPECT_TRUE(pass) << op << " " << what << (g.shape() == r.shape() ? "" : " (shape mismatch)");
    return pass;
  }
  bool check_scalar(const std::string& op, const std::string& what, double ref, double got,
                    double rtol) {
    const double e = std::fabs(got - ref), rel = e / std::max(std::fabs(ref), 1e-30);
    const bool pass = e <= rtol * std::max(std::fabs(ref), 1e-12);
    std::printf("[ %-24s] %-44s ref=%.12g got=%.12g rel=%.3g rtol=%.1g %s\n", op.c_str(),
                what.c_str(), ref, got, rel, rtol, pass ? "PASS" : "FAIL");
    EXPECT_TRUE(pass) << op << " " << what;
    return pass;
  }

  // Timing runs unless SHOAL_NO_PERF is set (e.g. under compute-sanitizer, which is slow).
  static bool perf_enabled() { return std::getenv("SHOAL_NO_PERF") == nullptr; }

  // Mean microseconds per call of fn (after warm-up), synchronised on the device.
  template <typename Fn>
  double time_us(Fn&& fn, int iters = 10) {
    fn();
    cuda_synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) fn();
    cuda_synchronize();
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::micro>(t1 - t0).count() / iters;
  }
  void perf_bytes(const std::string& op, const std::string& what, double us, double bytes) {
    std::printf("[ perf %-19s] %-44s %10.1f us  %8.1f GB/s\n", op.c_str(), what.c_str(), us,
                bytes / (us * 1e3));
  }
  void perf_flops(const std::string& op, const std::string& what, double us, double flops) {
    std::printf("[ perf %-19s] %-44s %10.1f us  %8.2f TFLOP/s\n", op.c_str(), what.c_str(), us,
                flops / (us * 1e6));
  }

  std::mt19937 rng_{12345};
  std::unique_ptr<Backend> gpu_;
};

inline std::string shape_of(std::initializer_list<int64_t> dims) {
  return shape_str(Shape(dims));
}

// A second CUDA backend whose GEMMs run on bf16 operands (CudaGemm::bf16), for the bf16 GEMM
// tests, beside BackendOps's f32 one.
class Bf16BackendOps : public BackendOps {
 protected:
  void SetUp() override {
    BackendOps::SetUp();
    if (IsSkipped()) return;
    bf16_ = make_cuda_backend(0, CudaBackendOptions{CudaGemm::bf16});
  }
  Backend& bf() { return *bf16_; }
  std::unique_ptr<Backend> bf16_;
};

// x rounded to bf16 (nearest even) and back: what a bf16 GEMM multiplies.
inline Tensor bf16_rounded(const Tensor& x) {
  return x.contiguous().to(DType::bf16).to(DType::f32);
}
inline Tensor abs_of(const Tensor& t) {
  Tensor a = t.contiguous();
  for (int64_t i = 0; i < a.numel(); ++i) a.f32()[i] = std::fabs(a.f32()[i]);
  return a;
}

// The error bound of a GEMM on operands that are already bf16, against the CPU's f32 GEMM on the
// same (rounded) values, per output with prod = alpha |A||B| there. The products of two bf16
// numbers are exact in f32; what remains is accumulation: at most k additions per output on each
// side, 2^-24 relative each on the CPU (round to nearest), 2^-23 on the tensor cores (whose adders
// may truncate); then alpha's multiply and beta c's add on each side (a few 2^-24). So
// (k (2^-23 + 2^-24) + 4 2^-24) prod + 2^-22 |beta c|. An operand that was not rounded, or rounded
// from stale values, errs by up to 2^-9 relative per product instead (~sqrt(k) 2^-9 of a typical
// |product| for random signs: far above this bound for the k of these tests).
inline double bf16_accumulation_bound(double prod, int64_t k, double beta_c = 0.0) {
  return prod * (double(k) * (std::ldexp(1.0, -23) + std::ldexp(1.0, -24)) + std::ldexp(1.0, -22)) +
         std::ldexp(1.0, -22) * std::fabs(beta_c) + 1e-30;
}

}  // namespace shoal::test
