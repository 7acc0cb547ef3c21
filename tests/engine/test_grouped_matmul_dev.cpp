// The reference of the MoE ops with device-side group boundaries (engine/backend.cpp, what the
// CPU backend runs and the CUDA kernel is checked against): grouped_matmul_dev against products
// summed in double on random strided inputs, with empty groups, groups of one row, one group and
// no rows; moe_sort_offsets against moe_sort; and the refusal of bad offsets and shapes.
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

Tensor offsets_of(const std::vector<int64_t>& rows) {
  Tensor o = Tensor::empty({int64_t(rows.size()) + 1}, DType::i32);
  o.i32()[0] = 0;
  for (size_t g = 0; g < rows.size(); ++g) o.i32()[g + 1] = o.i32()[g] + int32_t(rows[g]);
  return o;
}

TEST(GroupedMatmulDev, CpuMatchesProductsInDouble) {
  std::mt19937 rng(11);
  const std::vector<std::vector<int64_t>> row_sets = {
      {0, 1, 4, 0, 9, 1}, {0, 0}, {12}, {3}, {0, 0, 0, 1}};
  int64_t checked = 0;
  for (const auto& rows : row_sets)
    for (int64_t k : {1, 19, 64})
      for (int64_t n : {1, 6, 33}) {
        const int64_t groups = int64_t(rows.size());
        const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
        // Column slices of wider tensors: row strides above the widths, as in the model's views.
        Tensor abig = randn({total, k + 3}, rng), bbig = randn({groups, n, k + 2}, rng);
        Tensor cbig = randn({total, n + 2}, rng);
        const Tensor c0 = cbig.clone();
        Tensor a = abig.slice(1, 1, 1 + k), b = bbig.slice(2, 2, 2 + k),
               c = cbig.slice(1, 1, 1 + n);
        cpu_backend().grouped_matmul_dev(a, b, c, offsets_of(rows));
        int64_t row = 0;
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t r = 0; r < rows[size_t(g)]; ++r, ++row)
            for (int64_t j = 0; j < n + 2; ++j) {
              const double got = cbig.f32()[row * (n + 2) + j];
              if (j == 0 || j == n + 1) {  // outside the view: untouched
                ASSERT_EQ(got, c0.f32()[row * (n + 2) + j]) << "row " << row << " col " << j;
                continue;
              }
              double s = 0, mag = 0;
              for (int64_t l = 0; l < k; ++l) {
                const double p = double(abig.f32()[row * (k + 3) + 1 + l]) *
                                 double(bbig.f32()[(g * n + (j - 1)) * (k + 2) + 2 + l]);
                s += p;
                mag += std::fabs(p);
              }
              // f32: a k-term sum errs by <= k 2^-24 sum|p| at first order; 2 more 2^-24 cover
              // the product rounding's share and second order (c is overwritten: no beta term).
              const double bound = double(k + 2) * std::ldexp(1.0, -24) * mag;
              ASSERT_LE(std::fabs(got - s), bound)
                  << "group " << g << " row " << row << " col " << j - 1 << " k " << k;
              ++checked;
            }
        ASSERT_EQ(row, total);
      }
  EXPECT_EQ(checked, 31 * (1 + 6 + 33) * 3);  // rows x columns x k values
}

TEST(GroupedMatmulDev, MoeSortOffsetsArePrefixSumsOfMoeSort) {
  std::mt19937 rng(3);
  for (int64_t experts : {1, 5, 64})
    for (int64_t m : {0, 1, 6, 257, 1536}) {
      Tensor idx = Tensor::empty({m}, DType::i32);
      // Even experts only: empty groups among full ones.
      std::uniform_int_distribution<int32_t> pick(0, int32_t(experts - 1));
      for (int64_t i = 0; i < m; ++i) idx.i32()[i] = pick(rng) & ~1;
      Tensor order_ref = Tensor::empty({m}, DType::i32), order = Tensor::empty({m}, DType::i32);
      std::vector<int64_t> counts;
      cpu_backend().moe_sort(idx, experts, order_ref, counts);
      Tensor offsets = Tensor::empty({experts + 1}, DType::i32);
      cpu_backend().moe_sort_offsets(idx, experts, order, offsets);
      int64_t run = 0;
      ASSERT_EQ(offsets.i32()[0], 0);
      for (int64_t e = 0; e < experts; ++e) {
        run += counts[size_t(e)];
        ASSERT_EQ(offsets.i32()[e + 1], run) << "expert " << e << " of " << experts << ", m " << m;
      }
      for (int64_t i = 0; i < m; ++i) ASSERT_EQ(order.i32()[i], order_ref.i32()[i]);
    }
}

TEST(GroupedMatmulDev, RefusesBadOffsetsAndShapes) {
  Backend& be = cpu_backend();
  Tensor x = Tensor::zeros({5, 8}, DType::f32), w = Tensor::zeros({2, 4, 8}, DType::f32);
  Tensor y = Tensor::zeros({5, 4}, DType::f32);
  auto offs = [](std::vector<int32_t> v) {
    Tensor o = Tensor::empty({int64_t(v.size())}, DType::i32);
    for (size_t i = 0; i < v.size(); ++i) o.i32()[i] = v[i];
    return o;
  };
  EXPECT_THROW(be.grouped_matmul_dev(x, w, y, offs({1, 2, 5})), Error);     // o_0 != 0
  EXPECT_THROW(be.grouped_matmul_dev(x, w, y, offs({0, 3, 2})), Error);     // decreasing, != 5
  EXPECT_THROW(be.grouped_matmul_dev(x, w, y, offs({0, 6, 5})), Error);     // decreasing
  EXPECT_THROW(be.grouped_matmul_dev(x, w, y, offs({0, 2, 4})), Error);     // ends before row 5
  EXPECT_THROW(be.grouped_matmul_dev(x, w, y, offs({0, 2, 3, 5})), Error);  // 3 groups, 2 W
  Tensor f32_offsets = Tensor::zeros({3}, DType::f32);
  EXPECT_THROW(be.grouped_matmul_dev(x, w, y, f32_offsets), Error);
  Tensor wide = Tensor::zeros({5, 5}, DType::f32);
  EXPECT_THROW(be.grouped_matmul_dev(x, w, wide, offs({0, 2, 5})), Error);  // c's width
  Tensor w2d = Tensor::zeros({4, 8}, DType::f32);
  EXPECT_THROW(be.grouped_matmul_dev(x, w2d, y, offs({0, 5})), Error);  // b not 3-D
  Tensor none = Tensor::zeros({0, 4, 8}, DType::f32);
  EXPECT_THROW(be.grouped_matmul_dev(x, none, y, offs({0})), Error);  // rows, no groups
  be.grouped_matmul_dev(x, w, y, offs({0, 2, 5}));                    // consistent: accepted
  Tensor order = Tensor::empty({4}, DType::i32), short_offsets = Tensor::empty({3}, DType::i32);
  Tensor idx = offs({0, 3, 1, 3});
  EXPECT_THROW(be.moe_sort_offsets(idx, 4, order, short_offsets), Error);  // 3 for 4 + 1
  Tensor bad_idx = offs({0, 4, 1, 3});
  Tensor ok_offsets = Tensor::empty({5}, DType::i32);
  EXPECT_THROW(be.moe_sort_offsets(bad_idx, 4, order, ok_offsets), Error);  // expert 4 of 4
}

}  // namespace
}  // namespace shoal
