// The reference of the MoE ops with device-side group boundaries (engine/backend.cpp, what the
// CPU backend runs and the CUDA kernels are checked against): grouped_matmul_dev and its data-
// and weight-gradient layouts (_nn, _tn with alpha and beta) against products summed in double
// on random strided inputs, with empty groups, groups of one row, one group and no rows;
// moe_sort_offsets against moe_sort; add_group_sizes; and the refusal of bad offsets and shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "base/error.h"
#include "engine/backend.h"
#include "kernels/moe/grouped_gemm.h"
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

// The row sets of the layout tests: empty groups among full ones, one group, no rows.
const std::vector<std::vector<int64_t>> kRowSets = {
    {0, 1, 4, 0, 9, 1}, {0, 0}, {12}, {3}, {0, 0, 0, 1}};

// The two layouts that write rows of c, on the CPU, against products summed in double: c_g =
// a_g b[g]^T (grouped_matmul_dev, b [G, n, k]) or, with nn, c_g = a_g b[g] (_nn, b [G, k, n]).
// Every operand is a column slice of a wider tensor (row strides above the widths, as in the
// model's views); columns of c outside its view stay untouched.
void check_row_layout(bool nn, uint32_t seed) {
  std::mt19937 rng(seed);
  int64_t checked = 0;
  for (const auto& rows : kRowSets)
    for (int64_t k : {1, 19, 64})
      for (int64_t n : {1, 6, 33}) {
        const int64_t groups = int64_t(rows.size());
        const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
        const int64_t bw = nn ? n + 2 : k + 2;  // b's padded row width
        Tensor abig = randn({total, k + 3}, rng);
        Tensor bbig = nn ? randn({groups, k, bw}, rng) : randn({groups, n, bw}, rng);
        Tensor cbig = randn({total, n + 2}, rng);
        const Tensor c0 = cbig.clone();
        Tensor a = abig.slice(1, 1, 1 + k), b = bbig.slice(2, 2, bw), c = cbig.slice(1, 1, 1 + n);
        if (nn)
          cpu_backend().grouped_matmul_dev_nn(a, b, c, offsets_of(rows));
        else
          cpu_backend().grouped_matmul_dev(a, b, c, offsets_of(rows));
        // b[g]'s element (row of c's column j, k index l) in bbig.
        auto b_at = [&](int64_t g, int64_t j, int64_t l) {
          return double(nn ? bbig.f32()[(g * k + l) * bw + 2 + j]
                           : bbig.f32()[(g * n + j) * bw + 2 + l]);
        };
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
                const double p = double(abig.f32()[row * (k + 3) + 1 + l]) * b_at(g, j - 1, l);
                s += p;
                mag += std::fabs(p);
              }
              // f32: a k-term sum errs by <= k 2^-24 sum|p| at first order; 2 more 2^-24 cover
              // the product rounding's share and second order (c is overwritten: no beta term).
              const double bound = double(k + 2) * std::ldexp(1.0, -24) * mag;
              ASSERT_LE(std::fabs(got - s), bound)
                  << (nn ? "nn" : "nt") << " group " << g << " row " << row << " col " << j - 1
                  << " k " << k;
              ++checked;
            }
        ASSERT_EQ(row, total);
      }
  EXPECT_EQ(checked, 31 * (1 + 6 + 33) * 3);  // rows x columns x k values
}

TEST(GroupedMatmulDev, CpuMatchesProductsInDouble) {
  check_row_layout(false, 11);
}

TEST(GroupedMatmulDev, NnCpuMatchesProductsInDouble) {
  check_row_layout(true, 12);
}

// c[g] = alpha a_g^T b_g + beta c[g]: every group's matrix, empty groups included (beta c[g]),
// for beta 0 (c not read: NaN there is overwritten), 1 (accumulation) and another value.
TEST(GroupedMatmulDev, TnCpuMatchesProductsInDouble) {
  std::mt19937 rng(13);
  int64_t checked = 0;
  for (const auto& rows : kRowSets)
    for (int64_t n : {1, 6, 33})
      for (int64_t k : {1, 19, 40})
        for (const auto& [alpha, beta] : {std::pair{1.0f, 1.0f}, {0.5f, 0.0f}, {1.5f, -0.75f}}) {
          const int64_t groups = int64_t(rows.size());
          const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t(0));
          Tensor abig = randn({total, n + 3}, rng), bbig = randn({total, k + 2}, rng);
          Tensor cbig = randn({groups, n, k + 2}, rng);
          if (beta == 0.0f)
            for (int64_t g = 0; g < groups; ++g) cbig.f32()[(g * n) * (k + 2) + 1] = NAN;
          const Tensor c0 = cbig.clone();
          Tensor a = abig.slice(1, 1, 1 + n), b = bbig.slice(1, 2, 2 + k),
                 c = cbig.slice(2, 1, 1 + k);
          cpu_backend().grouped_matmul_dev_tn(a, b, c, offsets_of(rows), alpha, beta);
          int64_t first = 0;
          for (int64_t g = 0; g < groups; ++g) {
            for (int64_t i = 0; i < n; ++i)
              for (int64_t j = 0; j < k + 2; ++j) {
                const int64_t at = (g * n + i) * (k + 2) + j;
                const double got = cbig.f32()[at];
                if (j == 0 || j == k + 1) {
                  ASSERT_EQ(got, c0.f32()[at]) << "group " << g << " outside the view";
                  continue;
                }
                double s = 0, mag = 0;
                for (int64_t r = first; r < first + rows[size_t(g)]; ++r) {
                  const double p = double(abig.f32()[r * (n + 3) + 1 + i]) *
                                   double(bbig.f32()[r * (k + 2) + 2 + (j - 1)]);
                  s += p;
                  mag += std::fabs(p);
                }
                const double bc = beta == 0.0f ? 0.0 : double(beta) * double(c0.f32()[at]);
                const double want = double(alpha) * s + bc;
                // The sum as above, then alpha's multiply and beta c's add (a few 2^-24 more).
                const double bound =
                    double(rows[size_t(g)] + 4) * std::ldexp(1.0, -24) * std::fabs(alpha) * mag +
                    std::ldexp(1.0, -22) * std::fabs(bc);
                ASSERT_LE(std::fabs(got - want), bound)
                    << "group " << g << " (" << rows[size_t(g)] << " rows) c[" << i << ", " << j - 1
                    << "] alpha " << alpha << " beta " << beta;
                ++checked;
              }
            first += rows[size_t(g)];
          }
        }
  // groups x n x k x 3 (alpha, beta) pairs: 14 groups over the row sets.
  EXPECT_EQ(checked, 14 * (1 + 6 + 33) * (1 + 19 + 40) * 3);
}

TEST(GroupedMatmulDev, AddGroupSizesAccumulatesTheOffsetsDifferences) {
  Tensor counts = Tensor::empty({4}, DType::i64);
  for (int64_t g = 0; g < 4; ++g) counts.i64()[g] = 10 * g;
  const Tensor o = offsets_of({3, 0, 5, 1});
  cpu_backend().add_group_sizes(o, counts);
  cpu_backend().add_group_sizes(o, counts);
  const int64_t want[4] = {6, 10, 30, 32};
  for (int64_t g = 0; g < 4; ++g) EXPECT_EQ(counts.i64()[g], want[g]) << "group " << g;
  Tensor bad = offsets_of({3, 0, 5, 1});
  bad.i32()[2] = 1;  // decreasing
  EXPECT_THROW(cpu_backend().add_group_sizes(bad, counts), Error);
  EXPECT_THROW(cpu_backend().add_group_sizes(offsets_of({3, 0, 5}), counts), Error);  // 3 + 1
  Tensor i32_counts = Tensor::zeros({4}, DType::i32);
  EXPECT_THROW(cpu_backend().add_group_sizes(o, i32_counts), Error);
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
  // The gradient layouts: nn takes b [G, k, n], tn a [rows, n], b [rows, k], c [G, n, k].
  Tensor wt = Tensor::zeros({2, 8, 4}, DType::f32);
  be.grouped_matmul_dev_nn(x, wt, y, offs({0, 2, 5}));                       // accepted
  EXPECT_THROW(be.grouped_matmul_dev_nn(x, w, y, offs({0, 2, 5})), Error);   // [G, n, k] given
  EXPECT_THROW(be.grouped_matmul_dev_nn(x, wt, y, offs({0, 2, 6})), Error);  // ends past 5
  EXPECT_THROW(be.grouped_matmul_dev_nn(x, wt, y, offs({0, 5})), Error);     // 1 group, 2 W
  Tensor dy = Tensor::zeros({5, 4}, DType::f32), dw = Tensor::zeros({2, 4, 8}, DType::f32);
  be.grouped_matmul_dev_tn(dy, x, dw, offs({0, 2, 5}), 1.0f, 1.0f);           // accepted
  EXPECT_THROW(be.grouped_matmul_dev_tn(dy, x, dw, offs({0, 3, 2})), Error);  // decreasing
  EXPECT_THROW(be.grouped_matmul_dev_tn(dy, x, dw, offs({1, 2, 5})), Error);  // o_0 != 0
  EXPECT_THROW(be.grouped_matmul_dev_tn(x, dy, dw, offs({0, 2, 5})), Error);  // a, b swapped
  Tensor dy6 = Tensor::zeros({6, 4}, DType::f32);
  EXPECT_THROW(be.grouped_matmul_dev_tn(dy6, x, dw, offs({0, 2, 5})), Error);  // rows differ
  EXPECT_THROW(be.grouped_matmul_dev_tn(dy, x, y, offs({0, 2, 5})), Error);    // c not 3-D
  Tensor none_c = Tensor::zeros({0, 4, 8}, DType::f32);
  EXPECT_THROW(be.grouped_matmul_dev_tn(dy, x, none_c, offs({0})), Error);  // rows, no groups
  Tensor order = Tensor::empty({4}, DType::i32), short_offsets = Tensor::empty({3}, DType::i32);
  Tensor idx = offs({0, 3, 1, 3});
  EXPECT_THROW(be.moe_sort_offsets(idx, 4, order, short_offsets), Error);  // 3 for 4 + 1
  Tensor bad_idx = offs({0, 4, 1, 3});
  Tensor ok_offsets = Tensor::empty({5}, DType::i32);
  EXPECT_THROW(be.moe_sort_offsets(bad_idx, 4, order, ok_offsets), Error);  // expert 4 of 4
}

// The CUDA kernel's launch plan (kernels/moe/grouped_gemm.h, a host function: tested here,
// where no device is needed). Its grid must hold every row tile however the rows fall into the
// groups (the host never sees the offsets): slots >= sum_g ceil(rows_g / tile) for random, skewed
// and one-group distributions; the warps cover n and k; moe-2b's decode shapes take the plans
// the kernel was built for (a batch of 1: 8-row tiles, k split 8 ways for x W_gu^T; 256: 32-row
// tiles, no split).
TEST(GroupedMatmulDev, CudaPlanHoldsEveryRowTile) {
  std::mt19937 rng(21);
  int64_t plans = 0;
  for (int64_t groups : {1, 3, 64, 300})
    for (int64_t rows : {1, 2, 6, 37, 192, 1536, 4096}) {
      if (rows > 64 * groups) continue;  // larger groups take expert_gemm
      for (int trial = 0; trial < 20; ++trial) {
        // Random groups: uniform, everything in one group, or a few heavy ones.
        std::vector<int64_t> per(static_cast<size_t>(groups), 0);
        std::uniform_int_distribution<int64_t> pick(0, groups - 1);
        const int64_t heavy = trial % 3 == 1   ? 1
                              : trial % 3 == 2 ? std::min<int64_t>(groups, 3)
                                               : groups;
        for (int64_t r = 0; r < rows; ++r) ++per[size_t(pick(rng) % heavy)];
        for (int64_t n : {1, 17, 512, 2048})
          for (int64_t k : {1, 100, 256, 2048}) {
            const kernels::GroupedGemmPlan pl = kernels::grouped_gemm_plan(rows, n, k, groups);
            const int64_t tile = 8 * pl.row_tiles;
            int64_t tiles = 0;
            for (int64_t r : per) tiles += (r + tile - 1) / tile;
            ASSERT_GE(pl.slots, tiles) << rows << " rows in " << groups << " groups";
            ASSERT_LE(pl.slots, rows);
            ASSERT_EQ(pl.n_warps * pl.k_split, 8);
            ASSERT_LE(pl.k_split, std::max<int64_t>(1, (k + 127) / 128));
            ASSERT_GE(pl.col_blocks * 16 * pl.n_warps, n);
            ASSERT_LT((pl.col_blocks - 1) * 16 * pl.n_warps, n);
            ++plans;
          }
      }
    }
  EXPECT_GT(plans, 0);
  const auto b1 = kernels::grouped_gemm_plan(6, 512, 2048, 64);
  EXPECT_EQ(b1.row_tiles, 1);
  EXPECT_EQ(b1.k_split, 8);
  EXPECT_EQ(b1.slots, 6);  // exactly the 6 experts' single rows
  const auto b256 = kernels::grouped_gemm_plan(1536, 512, 2048, 64);
  EXPECT_EQ(b256.row_tiles, 4);
  EXPECT_EQ(b256.k_split, 1);
}

}  // namespace
}  // namespace shoal
