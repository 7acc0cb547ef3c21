// The CPU backend's reductions across rows (the gradient norm's sum of squares, RMSNorm's weight
// gradient, the cross-entropy total) give bit-identical results for any number of OpenMP
// threads: they sum fixed blocks in a fixed order, so a run's clipping, updates and logged loss do
// not change with the core count. (OpenBLAS's GEMMs are outside this guarantee.)
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "tests/engine/random_tensor.h"

namespace shoal {
namespace {

using testing::randn;

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.f32(), b.f32(), size_t(a.numel()) * 4) == 0;
}

// Restores the thread count the test found.
struct ThreadCount {
  int saved = omp_get_max_threads();
  ~ThreadCount() { omp_set_num_threads(saved); }
};

TEST(ThreadInvariance, RowReductionsDoNotDependOnTheThreadCount) {
  ThreadCount guard;
  Backend& be = cpu_backend();
  std::mt19937 rng(7);
  // Sizes past the parallel thresholds, not multiples of the blocks.
  const int64_t n = 1000, d = 300, vocab = 517;
  Tensor big = randn({3 * 65536 + 123}, rng);
  Tensor x = randn({n, d}, rng), w = randn({d}, rng), dy = randn({n, d}, rng);
  Tensor logits = randn({n, vocab}, rng, 3.0f);
  Tensor labels = Tensor::empty({n}, DType::i32);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab) - 1);
  for (int64_t i = 0; i < n; ++i) labels.i32()[i] = i % 7 == 3 ? -100 : pick(rng);

  struct Result {
    double ss = 0, ce = 0;
    Tensor dw, dx, dlogits;
  };
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Result r;
    r.ss = be.sum_squares(big);
    Tensor y = Tensor::empty({n, d}, DType::f32), rstd = Tensor::empty({n}, DType::f32);
    be.rmsnorm_forward(x, w, 1e-6f, y, rstd);
    r.dx = Tensor::empty({n, d}, DType::f32);
    r.dw = Tensor::zeros({d}, DType::f32);
    be.rmsnorm_backward(dy, x, w, rstd, r.dx, r.dw);
    r.dlogits = Tensor::empty({n, vocab}, DType::f32);
    r.ce = be.cross_entropy(logits, labels, 0.01f, &r.dlogits);
    return r;
  };
  const Result one = run(1);
  EXPECT_GT(one.ss, 0.0);
  EXPECT_GT(one.ce, 0.0);
  for (int threads : {2, 3, 4, 7}) {
    const Result r = run(threads);
    EXPECT_EQ(r.ss, one.ss) << threads << " threads";
    EXPECT_EQ(r.ce, one.ce) << threads << " threads";
    EXPECT_TRUE(same_bits(r.dw, one.dw)) << "rmsnorm dw, " << threads << " threads";
    EXPECT_TRUE(same_bits(r.dx, one.dx)) << "rmsnorm dx, " << threads << " threads";
    EXPECT_TRUE(same_bits(r.dlogits, one.dlogits)) << "dlogits, " << threads << " threads";
  }
}

}  // namespace
}  // namespace shoal
