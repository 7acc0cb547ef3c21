// The CPU backend's grouped_matmul (the reference the CUDA backend is checked against) against
// products summed in double here, on random inputs: the MoE layer's three forms and a 3-D left
// operand, with empty groups, groups of one row, no groups, strided views, beta 0 / 0.5 / 1; and
// the refusal of inconsistent group counts. Not a test of the MoE layer (the golden tests are).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "base/error.h"
#include "engine/backend.h"
#include "tests/engine/random_tensor.h"

namespace shoal {
namespace {

using testing::randn;

// Element (i, j) of a 2-D view.
double at(const Tensor& t, int64_t i, int64_t j) {
  return double(t.f32()[i * t.stride(0) + j * t.stride(1)]);
}

// Group g's matrix of an operand, as Backend::grouped_matmul defines it.
Tensor part(const Tensor& t, const std::vector<int64_t>& rows, size_t g) {
  if (t.ndim() == 3) return t.select(0, int64_t(g));
  const int64_t off = std::accumulate(rows.begin(), rows.begin() + int64_t(g), int64_t(0));
  return t.slice(0, off, off + rows[g]);
}

struct Operand {
  bool grouped3d;
  int64_t rows, cols;  // rows only for 3-D (2-D operands have the groups' total)
};

TEST(GroupedMatmul, CpuMatchesProductsInDouble) {
  std::mt19937 rng(7);
  const int64_t K = 19, N = 6, M = 5;
  struct Form {
    const char* name;
    Operand a;
    bool ta;
    Operand b;
    bool tb;
    Operand c;
  };
  const Form forms[] = {
      {"x W^T", {false, 0, K}, false, {true, N, K}, true, {false, 0, N}},
      {"dy W", {false, 0, N}, false, {true, N, K}, false, {false, 0, K}},
      {"dy^T x", {false, 0, N}, true, {false, 0, K}, false, {true, N, K}},
      {"A_g x_g^T", {true, M, K}, false, {false, 0, K}, true, {true, M, 0}},
  };
  const std::vector<std::vector<int64_t>> row_sets = {{0, 1, 4, 0, 9, 1}, {0, 0}, {12}, {}};
  int checked = 0;
  for (const Form& f : forms)
    for (const auto& rows : row_sets)
      for (float beta : {0.0f, 0.5f, 1.0f}) {
        const int64_t groups = int64_t(rows.size());
        const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
        // "A_g x_g^T": c_g is [M, rows_g], which differs per group, so c is 3-D with the widest
        // group's columns and each group uses a column slice of it; only meaningful with rows
        // all equal, so that form runs on single-group sets alone.
        if (f.c.cols == 0 && groups > 1) continue;
        auto make = [&](const Operand& o) {
          const int64_t cols = o.cols == 0 ? total : o.cols;
          Tensor big =
              o.grouped3d ? randn({groups, o.rows, cols + 2}, rng) : randn({total, cols + 2}, rng);
          return big.slice(big.ndim() - 1, 1, 1 + cols);  // strided rows
        };
        Tensor a = make(f.a), b = make(f.b), c = make(f.c);
        Tensor c0 = c.contiguous();
        const float alpha = 0.75f;
        cpu_backend().grouped_matmul(a, f.ta, b, f.tb, c, rows, alpha, beta);
        for (size_t g = 0; g < rows.size(); ++g) {
          Tensor ag = part(a, rows, g), bg = part(b, rows, g), cg = part(c, rows, g),
                 c0g = part(c0, rows, g);
          const int64_t m = cg.size(0), n = cg.size(1), k = f.ta ? ag.size(0) : ag.size(1);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double s = 0, mag = 0;
              for (int64_t l = 0; l < k; ++l) {
                const double p =
                    (f.ta ? at(ag, l, i) : at(ag, i, l)) * (f.tb ? at(bg, j, l) : at(bg, l, j));
                s += p;
                mag += std::fabs(p);
              }
              const double want = double(alpha) * s + double(beta) * at(c0g, i, j);
              // f32: a k-term sum errs by <= k 2^-24 sum|p| (first order), the scaling by alpha
              // and beta and the final add by 2^-24 each; 1 more 2^-24 covers second order.
              const double bound = double(k + 3) * std::ldexp(1.0, -24) * double(alpha) * mag +
                                   3.0 * std::ldexp(1.0, -24) * std::fabs(beta * at(c0g, i, j));
              ASSERT_LE(std::fabs(at(cg, i, j) - want), bound)
                  << f.name << " group " << g << " (" << i << ", " << j << ") beta " << beta;
              ++checked;
            }
        }
      }
  EXPECT_GT(checked, 1000);
}

TEST(GroupedMatmul, RefusesInconsistentGroups) {
  Tensor x = Tensor::zeros({5, 8}, DType::f32), w = Tensor::zeros({2, 4, 8}, DType::f32);
  Tensor y = Tensor::zeros({5, 4}, DType::f32);
  Backend& be = cpu_backend();
  EXPECT_THROW(be.grouped_matmul(x, false, w, true, y, {2, 2}), Error);     // 4 rows, not 5
  EXPECT_THROW(be.grouped_matmul(x, false, w, true, y, {6, -1}), Error);    // negative
  EXPECT_THROW(be.grouped_matmul(x, false, w, true, y, {2, 2, 1}), Error);  // 3 groups, 2 W
  Tensor bad = Tensor::zeros({5, 3}, DType::f32);                           // wrong width
  EXPECT_THROW(be.grouped_matmul(x, false, w, true, bad, {2, 3}), Error);
  be.grouped_matmul(x, false, w, true, y, {2, 3});  // consistent: accepted
}

}  // namespace
}  // namespace shoal
