// The CPU backend's batched_matmul (the reference the CUDA backend is checked against) against
// products summed in double here, on random strided inputs: head-first views of [N, H, d]
// activations (batch stride below the row stride) and padded contiguous batches, every ta / tb,
// beta 0 and 1, batch 1, a zero-length contraction; the elements outside c's view untouched; and
// the refusal of operands that are not 3-D or whose shapes do not multiply.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "base/error.h"
#include "engine/backend.h"
#include "tests/engine/random_tensor.h"

namespace shoal {
namespace {

using testing::randn;

// Element (b, i, j) of a 3-D view.
double at(const Tensor& t, int64_t b, int64_t i, int64_t j) {
  return double(t.f32()[b * t.stride(0) + i * t.stride(1) + j * t.stride(2)]);
}

// A [batch, rows, cols] view with unit last stride over a wider random tensor: head-first
// ([rows, batch, cols + 3] sliced and transposed, as mla.cpp views its activations) or
// batch-first with padded rows.
Tensor strided(int64_t batch, int64_t rows, int64_t cols, bool head_first, Tensor& base,
               std::mt19937& rng) {
  if (head_first) {
    base = randn({rows, batch, cols + 3}, rng);
    return base.slice(2, 2, 2 + cols).transpose(0, 1);
  }
  base = randn({batch, rows, cols + 3}, rng);
  return base.slice(2, 1, 1 + cols);
}

TEST(BatchedMatmul, MatchesDoubleSums) {
  std::mt19937 rng(7);
  Backend& be = cpu_backend();
  struct Case {
    int64_t batch, m, n, k;
  };
  const Case cases[] = {{1, 5, 7, 3}, {4, 1, 9, 6}, {3, 17, 33, 40}, {8, 16, 64, 32}, {2, 3, 4, 0}};
  int checked = 0;
  for (const Case& cs : cases)
    for (int form = 0; form < 4; ++form)
      for (float beta : {0.0f, 1.0f}) {
        const bool ta = form & 1, tb = form & 2, head_first = (form + int(beta)) % 2 == 0;
        Tensor ab, bb, cb;
        Tensor a = ta ? strided(cs.batch, cs.k, cs.m, head_first, ab, rng)
                      : strided(cs.batch, cs.m, cs.k, head_first, ab, rng);
        Tensor b = tb ? strided(cs.batch, cs.n, cs.k, !head_first, bb, rng)
                      : strided(cs.batch, cs.k, cs.n, !head_first, bb, rng);
        Tensor c = strided(cs.batch, cs.m, cs.n, head_first, cb, rng);
        const Tensor c0 = cb.clone();
        const float alpha = 0.75f;
        be.batched_matmul(a, ta, b, tb, c, alpha, beta);
        // c's view in the untouched copy, for beta * c.
        const Tensor c0v =
            head_first ? c0.slice(2, 2, 2 + cs.n).transpose(0, 1) : c0.slice(2, 1, 1 + cs.n);
        for (int64_t g = 0; g < cs.batch; ++g)
          for (int64_t i = 0; i < cs.m; ++i)
            for (int64_t j = 0; j < cs.n; ++j) {
              double s = 0, mag = 0;
              for (int64_t p = 0; p < cs.k; ++p) {
                const double x = ta ? at(a, g, p, i) : at(a, g, i, p);
                const double y = tb ? at(b, g, j, p) : at(b, g, p, j);
                s += x * y;
                mag += std::fabs(x * y);
              }
              const double ref = alpha * s + beta * at(c0v, g, i, j);
              const double tol = 1e-6 * (mag + std::fabs(at(c0v, g, i, j))) + 1e-30;
              EXPECT_NEAR(at(c, g, i, j), ref, tol)
                  << "batch " << cs.batch << " m " << cs.m << " n " << cs.n << " k " << cs.k
                  << " ta " << ta << " tb " << tb << " beta " << beta << " at " << g << "," << i
                  << "," << j;
              ++checked;
            }
        // The padding columns around c's view are left alone.
        const int64_t lo = head_first ? 2 : 1;
        for (int64_t r = 0; r < cb.size(0); ++r)
          for (int64_t q = 0; q < cb.size(1); ++q)
            for (int64_t j = 0; j < cs.n + 3; ++j) {
              if (j >= lo && j < lo + cs.n) continue;
              const int64_t o = (r * cb.size(1) + q) * (cs.n + 3) + j;
              EXPECT_EQ(cb.f32()[o], c0.f32()[o]);
            }
      }
  EXPECT_GT(checked, 1000);
}

TEST(BatchedMatmul, RefusesBadOperands) {
  Backend& be = cpu_backend();
  Tensor a = Tensor::zeros({2, 3, 4}, DType::f32), b = Tensor::zeros({2, 4, 5}, DType::f32);
  Tensor c = Tensor::zeros({2, 3, 5}, DType::f32);
  EXPECT_NO_THROW(be.batched_matmul(a, false, b, false, c));
  Tensor c2 = Tensor::zeros({3, 5}, DType::f32);
  EXPECT_THROW(be.batched_matmul(a, false, b, false, c2), Error);  // 2-D
  Tensor b3 = Tensor::zeros({3, 4, 5}, DType::f32);
  EXPECT_THROW(be.batched_matmul(a, false, b3, false, c), Error);     // batch sizes differ
  EXPECT_THROW(be.batched_matmul(a, false, b, true, c), Error);       // k does not match
  Tensor col = Tensor::zeros({2, 4, 3}, DType::f32).transpose(1, 2);  // last stride 3
  EXPECT_THROW(be.batched_matmul(col, false, b, false, c), Error);
}

}  // namespace
}  // namespace shoal
