// GPU RMSNorm forward (kernels/norm/rmsnorm.cu) against the C++ reference on random inputs: shapes
// covering the warp-per-row, block-per-row and re-read-tail paths, float4 and scalar loads, strided
// and misaligned rows; plus µs and GB/s versus a device-to-device copy (printed, not asserted).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/norm/rmsnorm.h"
#include "tests/cuda/cuda_test_util.h"

namespace shoal::kernels {
namespace {

using test::DeviceBuffer;

// f32 tolerance. The kernel sums <= 7168 squares in f32: a short serial sum per thread (<= 8 terms
// cached, more only past the cache) then a 5-10 level tree, so the sum's relative error is about
// (8 + 10) * 2^-24 ~ 1e-6 worst case; rstd halves that and adds ~2 ulp (sqrt, divide); y adds two
// more roundings. 1e-5 leaves ~5x margin while an indexing or reduction bug shows up as O(1).
constexpr double kRelTol = 1e-5;
// Marks output the kernel must not touch (row padding, the slot past the last rstd).
constexpr float kSentinel = -777.25f;

struct Case {
  int64_t rows, dim;
  int64_t x_stride = 0, y_stride = 0;  // 0 = dim (contiguous)
  int64_t x_offset = 0;                // elements to shift x by (misaligns it when not % 4)
  bool with_rstd = true;
};

class RmsNormCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = test::cuda_device_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  }
};

// Runs the kernel and the reference on the same random input; asserts y and rstd agree within
// kRelTol and that padding columns and the slot after the last rstd are left untouched.
void expect_matches_reference(Case c, uint32_t seed) {
  if (c.x_stride == 0) c.x_stride = c.dim;
  if (c.y_stride == 0) c.y_stride = c.dim;
  SCOPED_TRACE(testing::Message() << "rows=" << c.rows << " dim=" << c.dim
                                  << " x_stride=" << c.x_stride << " y_stride=" << c.y_stride
                                  << " x_offset=" << c.x_offset << " rstd=" << c.with_rstd);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(-1.5f, 1.5f);
  const float row_scales[] = {1.f, 1e-3f, 1e3f, 0.1f};

  const size_t x_count = size_t(c.x_offset + (c.rows - 1) * c.x_stride + c.dim);
  const size_t y_count = size_t((c.rows - 1) * c.y_stride + c.dim);
  std::vector<float> x(x_count, 0.f), w(size_t(c.dim)), y_init(y_count, kSentinel);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t i = 0; i < c.dim; ++i)
      x[size_t(c.x_offset + r * c.x_stride + i)] = normal(rng) * row_scales[r % 4];
  for (float& v : w) v = uniform(rng);
  const std::vector<float> rstd_init(size_t(c.rows) + 1, kSentinel);

  std::vector<float> y_ref = y_init, rstd_ref = rstd_init;
  RmsNormParams ref;
  ref.x = x.data() + c.x_offset;
  ref.w = w.data();
  ref.y = y_ref.data();
  ref.rstd = c.with_rstd ? rstd_ref.data() : nullptr;
  ref.rows = c.rows;
  ref.dim = c.dim;
  ref.x_stride = c.x_stride;
  ref.y_stride = c.y_stride;
  rmsnorm_forward_ref(ref);

  DeviceBuffer<float> dx(x_count), dw(w.size()), dy(y_count), drstd(rstd_init.size());
  ASSERT_TRUE(dx.ok() && dw.ok() && dy.ok() && drstd.ok()) << "cudaMalloc failed";
  SHOAL_ASSERT_CUDA(dx.upload(x));
  SHOAL_ASSERT_CUDA(dw.upload(w));
  SHOAL_ASSERT_CUDA(dy.upload(y_init));
  SHOAL_ASSERT_CUDA(drstd.upload(rstd_init));
  RmsNormParams gpu = ref;
  gpu.x = dx.get() + c.x_offset;
  gpu.w = dw.get();
  gpu.y = dy.get();
  gpu.rstd = c.with_rstd ? drstd.get() : nullptr;
  SHOAL_ASSERT_CUDA(rmsnorm_forward_cuda(gpu, nullptr));
  SHOAL_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> y_gpu, rstd_gpu;
  SHOAL_ASSERT_CUDA(dy.download(y_gpu));
  SHOAL_ASSERT_CUDA(drstd.download(rstd_gpu));

  double max_diff = 0, max_ref = 0;
  int64_t untouched_violations = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t i = 0; i < c.y_stride && r * c.y_stride + i < int64_t(y_count); ++i) {
      const size_t k = size_t(r * c.y_stride + i);
      if (i >= c.dim) {
        untouched_violations += y_gpu[k] != kSentinel;
        continue;
      }
      ASSERT_TRUE(std::isfinite(y_gpu[k])) << "y[" << r << "][" << i << "] = " << y_gpu[k];
      max_diff = std::max(max_diff, std::fabs(double(y_gpu[k]) - y_ref[k]));
      max_ref = std::max(max_ref, std::fabs(double(y_ref[k])));
    }
  }
  EXPECT_EQ(untouched_violations, 0) << "kernel wrote into y's row padding";
  EXPECT_LE(max_diff, kRelTol * max_ref)
      << "y: max |gpu - ref| = " << max_diff << ", max |ref| = " << max_ref;

  if (c.with_rstd) {
    double max_rel = 0;
    for (int64_t r = 0; r < c.rows; ++r)
      max_rel = std::max(max_rel, std::fabs(double(rstd_gpu[size_t(r)]) - rstd_ref[size_t(r)]) /
                                      std::fabs(double(rstd_ref[size_t(r)])));
    EXPECT_LE(max_rel, kRelTol) << "rstd: max relative difference";
  }
  EXPECT_EQ(rstd_gpu[size_t(c.rows)], kSentinel) << "kernel wrote past the last rstd";
  if (!c.with_rstd) {
    EXPECT_EQ(rstd_gpu[0], kSentinel) << "rstd written although null";
  }
}

constexpr int64_t kDims[] = {1, 7, 64, 576, 4096, 7168};

TEST_F(RmsNormCuda, MatchesReferenceContiguous) {
  uint32_t seed = 1;
  for (int64_t dim : kDims)
    for (int64_t rows : {1, 5, 33, 300}) expect_matches_reference({rows, dim}, seed++);
}

TEST_F(RmsNormCuda, MatchesReferenceStridedRows) {
  uint32_t seed = 100;
  for (int64_t dim : kDims) {
    // Padding by 4/8 keeps float4 loads possible (when dim % 4 == 0); by 3/1 forces scalar loads.
    expect_matches_reference({37, dim, dim + 4, dim + 8}, seed++);
    expect_matches_reference({37, dim, dim + 3, dim + 1}, seed++);
  }
}

TEST_F(RmsNormCuda, MatchesReferenceMisalignedWithoutRstd) {
  uint32_t seed = 200;
  for (int64_t dim : {64, 4096, 7168}) {
    Case misaligned{19, dim};
    misaligned.x_offset = 1;  // dim % 4 == 0 but x is not 16-byte aligned: scalar path
    expect_matches_reference(misaligned, seed++);
    Case no_rstd{19, dim};
    no_rstd.with_rstd = false;
    expect_matches_reference(no_rstd, seed++);
  }
}

// Rows longer than the per-thread register cache: the tail is re-read in the second pass.
TEST_F(RmsNormCuda, MatchesReferenceBeyondRegisterCache) {
  expect_matches_reference({3, 20480}, 300);  // float4, 1024 threads/row, 5120 units > 4096 cached
  expect_matches_reference({3, 20483}, 301);  // scalar, 1024 threads/row
}

TEST_F(RmsNormCuda, ZeroRowsLaunchesNothing) {
  RmsNormParams p;  // all pointers null: nothing may be dereferenced
  p.rows = 0;
  p.dim = 4096;
  EXPECT_EQ(rmsnorm_forward_cuda(p, nullptr), int(cudaSuccess));
  SHOAL_ASSERT_CUDA(cudaDeviceSynchronize());
}

TEST_F(RmsNormCuda, RejectsUnsupportedParams) {
  DeviceBuffer<float> buf(64);
  ASSERT_TRUE(buf.ok());
  RmsNormParams p;
  p.x = p.w = buf.get();
  p.y = buf.get();
  p.rows = 2;
  p.dim = 0;
  p.x_stride = p.y_stride = 16;
  EXPECT_EQ(rmsnorm_forward_cuda(p, nullptr), int(cudaErrorInvalidValue)) << "dim == 0";
  p.dim = 16;
  p.x_stride = 8;
  EXPECT_EQ(rmsnorm_forward_cuda(p, nullptr), int(cudaErrorInvalidValue)) << "x_stride < dim";
  p.x_stride = 16;
  p.w = nullptr;
  EXPECT_EQ(rmsnorm_forward_cuda(p, nullptr), int(cudaErrorInvalidValue)) << "w == nullptr";
  SHOAL_ASSERT_CUDA(cudaDeviceSynchronize());
}

// Mean µs per call of `launch` over `iters` calls on the default stream, after warm-up.
template <typename Launch>
double time_us(Launch&& launch, int iters) {
  for (int i = 0; i < 3; ++i) launch();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, nullptr);
  for (int i = 0; i < iters; ++i) launch();
  cudaEventRecord(stop, nullptr);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1e3 * double(ms) / iters;
}

// Informational: kernel time and effective bandwidth next to a D2D copy of the same rows*dim floats
// (a copy moves read + write bytes, like the norm), measured in the same process.
void print_timing(int64_t rows, int64_t dim) {
  const size_t n = size_t(rows * dim);
  DeviceBuffer<float> dx(n), dw(static_cast<size_t>(dim)), dy(n), drstd(static_cast<size_t>(rows));
  ASSERT_TRUE(dx.ok() && dw.ok() && dy.ok() && drstd.ok()) << "cudaMalloc failed";
  std::vector<float> x(n), w(static_cast<size_t>(dim));
  for (size_t i = 0; i < n; ++i) x[i] = float((i * 2654435761u) % 2001u) * 1e-3f - 1.f;
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.5f + float(i % 7) * 0.1f;
  SHOAL_ASSERT_CUDA(dx.upload(x));
  SHOAL_ASSERT_CUDA(dw.upload(w));

  RmsNormParams p;
  p.x = dx.get();
  p.w = dw.get();
  p.y = dy.get();
  p.rstd = drstd.get();
  p.rows = rows;
  p.dim = dim;
  p.x_stride = p.y_stride = dim;
  SHOAL_ASSERT_CUDA(rmsnorm_forward_cuda(p, nullptr));
  const int iters = n > (size_t(1) << 22) ? 50 : 200;
  const double norm_us = time_us([&] { rmsnorm_forward_cuda(p, nullptr); }, iters);
  const double copy_us = time_us(
      [&] { cudaMemcpyAsync(dy.get(), dx.get(), dx.bytes(), cudaMemcpyDeviceToDevice, nullptr); },
      iters);
  SHOAL_ASSERT_CUDA(cudaDeviceSynchronize());
  SHOAL_ASSERT_CUDA(cudaGetLastError());

  const double norm_bytes = 2.0 * double(dx.bytes()) + double(dw.bytes() + drstd.bytes());
  const double copy_bytes = 2.0 * double(dx.bytes());
  const double norm_gbs = norm_bytes / (norm_us * 1e3), copy_gbs = copy_bytes / (copy_us * 1e3);
  std::printf(
      "[ rmsnorm  ] rows=%lld dim=%lld: %.2f us/call, %.0f GB/s | D2D copy %.2f us, %.0f GB/s | "
      "norm/copy bandwidth %.2f\n",
      static_cast<long long>(rows), static_cast<long long>(dim), norm_us, norm_gbs, copy_us,
      copy_gbs, norm_gbs / copy_gbs);
}

TEST_F(RmsNormCuda, TimingLargestShapeVersusDeviceCopy) {
  // The largest shape checked above (launch-latency bound) and a bandwidth-bound batch of it,
  // itself checked against the reference first so the timed configuration is a correct one.
  expect_matches_reference({4096, 7168}, 400);
  print_timing(300, 7168);
  print_timing(4096, 7168);
}

}  // namespace
}  // namespace shoal::kernels
