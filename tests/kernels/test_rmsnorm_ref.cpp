// Tests for the RMSNorm reference (kernels/norm/rmsnorm_ref.cpp), the specification the CUDA kernel
// is held to: a direct double-precision computation on random rows, hand-checked values, strided
// rows, and the saved rstd. The GPU kernel itself is tested in tests/cuda/.
#include "kernels/norm/rmsnorm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace shoal::kernels {
namespace {

// The reference accumulates in double and then rounds: rstd once (<= 2^-24 relative), y three
// times (rstd, x * rstd, w * ...), so 2^-22 relative bounds y and 2^-23 bounds rstd with margin.
const double kYRelTol = std::ldexp(1.0, -22);
const double kRstdRelTol = std::ldexp(1.0, -23);

struct Rows {
  int64_t rows, dim, x_stride, y_stride;
  std::vector<float> x, w, y, rstd;

  Rows(int64_t rows_, int64_t dim_, int64_t x_stride_, int64_t y_stride_, float pad)
      : rows(rows_),
        dim(dim_),
        x_stride(x_stride_),
        y_stride(y_stride_),
        x(size_t(rows_ * x_stride_), pad),
        w(size_t(dim_)),
        y(size_t(rows_ * y_stride_), pad),
        rstd(size_t(rows_), pad) {}

  RmsNormParams params(float eps, bool with_rstd = true) {
    RmsNormParams p;
    p.x = x.data();
    p.w = w.data();
    p.y = y.data();
    p.rstd = with_rstd ? rstd.data() : nullptr;
    p.rows = rows;
    p.dim = dim;
    p.x_stride = x_stride;
    p.y_stride = y_stride;
    p.eps = eps;
    return p;
  }
};

TEST(RmsNormRef, MatchesDoublePrecisionOnRandomRows) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(-2.f, 2.f);
  for (int64_t dim : {1, 7, 64, 576, 4096}) {
    const float eps = 1e-6f;
    Rows t(9, dim, dim, dim, 0.f);
    for (int64_t r = 0; r < t.rows; ++r) {
      const float scale = std::pow(10.f, float(r % 5) - 2.f);  // 1e-2 .. 1e2
      for (int64_t i = 0; i < dim; ++i) t.x[size_t(r * dim + i)] = normal(rng) * scale;
    }
    for (float& v : t.w) v = uniform(rng);
    rmsnorm_forward_ref(t.params(eps));

    for (int64_t r = 0; r < t.rows; ++r) {
      const float* x = &t.x[size_t(r * dim)];
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += double(x[i]) * double(x[i]);
      const double rstd = 1.0 / std::sqrt(ss / double(dim) + double(eps));
      EXPECT_NEAR(t.rstd[size_t(r)], rstd, kRstdRelTol * rstd) << "dim=" << dim << " row=" << r;
      for (int64_t i = 0; i < dim; ++i) {
        const double want = double(t.w[size_t(i)]) * double(x[i]) * rstd;
        ASSERT_NEAR(t.y[size_t(r * dim + i)], want, kYRelTol * std::fabs(want))
            << "dim=" << dim << " row=" << r << " i=" << i;
      }
    }
  }
}

TEST(RmsNormRef, HandCheckedValues) {
  Rows t(3, 4, 4, 4, 0.f);
  t.w = {1.f, 2.f, -1.f, 0.5f};
  // Row 0: all ones, eps 0 -> rms 1, y = w exactly.
  // Row 1: {3, 4, 0, 0}: mean(x^2) = 25 / 4 -> rstd = 0.4, y = w * {1.2, 1.6, 0, 0}.
  // Row 2: zeros -> rstd = 1 / sqrt(eps) is finite only because of eps; y = 0.
  t.x = {1, 1, 1, 1, 3, 4, 0, 0, 0, 0, 0, 0};
  rmsnorm_forward_ref(t.params(0.f));
  EXPECT_EQ(t.rstd[0], 1.f);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(t.y[size_t(i)], t.w[size_t(i)]);
  EXPECT_FLOAT_EQ(t.rstd[1], 0.4f);
  EXPECT_FLOAT_EQ(t.y[4], 1.2f);
  EXPECT_FLOAT_EQ(t.y[5], 3.2f);
  EXPECT_EQ(t.y[6], 0.f);
  EXPECT_EQ(t.y[7], 0.f);
  EXPECT_TRUE(std::isinf(t.rstd[2])) << "eps = 0 on a zero row: 1 / sqrt(0)";

  rmsnorm_forward_ref(t.params(1e-4f));
  EXPECT_NEAR(t.rstd[2], 100.0, 100.0 * kRstdRelTol);
  for (int i = 8; i < 12; ++i) EXPECT_EQ(t.y[size_t(i)], 0.f);
}

TEST(RmsNormRef, StridedRowsLeavePaddingAndNullRstdAlone) {
  const float pad = -777.25f;
  const int64_t dim = 5;
  Rows strided(4, dim, dim + 3, dim + 2, pad);
  Rows dense(4, dim, dim, dim, pad);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t i = 0; i < dim; ++i)
      strided.x[size_t(r * strided.x_stride + i)] = dense.x[size_t(r * dim + i)] = normal(rng);
  for (int64_t i = 0; i < dim; ++i) strided.w[size_t(i)] = dense.w[size_t(i)] = 1.f + 0.1f * i;

  rmsnorm_forward_ref(strided.params(1e-6f, /*with_rstd=*/false));
  rmsnorm_forward_ref(dense.params(1e-6f));
  for (int64_t r = 0; r < 4; ++r) {
    EXPECT_EQ(strided.rstd[size_t(r)], pad) << "rstd written although null";
    for (int64_t i = 0; i < strided.y_stride; ++i) {
      const float got = strided.y[size_t(r * strided.y_stride + i)];
      if (i < dim) {
        EXPECT_EQ(got, dense.y[size_t(r * dim + i)]) << "row " << r << " col " << i;
      } else {
        EXPECT_EQ(got, pad) << "padding written at row " << r << " col " << i;
      }
    }
  }
}

}  // namespace
}  // namespace shoal::kernels
