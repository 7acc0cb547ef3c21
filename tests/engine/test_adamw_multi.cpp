// The CPU backend's multi-tensor AdamW (grad_clip_factor + adamw_multi, what AdamW::step runs)
// against the per-tensor path it replaced (ParamSet::clip_grad_norm, then one adamw per tensor):
// bit for bit, over tensors of odd sizes, with clipping active and not. Not the CUDA kernels
// (tests/cuda/test_bf16_gemm.cpp compares those with this).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "engine/model/params.h"
#include "engine/optim/adamw.h"

namespace shoal {
namespace {

TEST(AdamWMulti, EqualsClipThenOneAdamWPerTensorBitForBit) {
  const std::vector<Shape> shapes = {{1}, {3, 5}, {17}, {70000}, {33, 31}, {2}, {8193}};
  ParamSet a(cpu_backend()), b(cpu_backend());
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string name = "p" + std::to_string(i);
    a.add(name, shapes[i]);
    b.add(name, shapes[i]);
    for (int64_t j = 0; j < a[i].value.numel(); ++j) a[i].value.f32()[j] = u(rng);
    b[i].value.copy_from(a[i].value);
  }
  a.add("buffer", {4}, /*trainable=*/false);
  b.add("buffer", {4}, /*trainable=*/false);
  a[1].frozen = b[1].frozen = true;  // left alone by both paths, and not in the norm
  std::vector<Tensor> m, v;
  for (size_t i = 0; i < shapes.size(); ++i) {
    m.push_back(Tensor::zeros(shapes[i], DType::f32));
    v.push_back(Tensor::zeros(shapes[i], DType::f32));
  }
  AdamWConfig cfg;
  cfg.lr = 0.01f;
  for (double max_norm : {0.5, 1e9, 0.0}) {  // clipping active, inactive, disabled
    cfg.grad_clip = max_norm;
    AdamW opt(a, cpu_backend(), cfg);
    for (int64_t step = 1; step <= 3; ++step) {
      for (size_t i = 0; i < shapes.size(); ++i) {
        for (int64_t j = 0; j < a[i].grad.numel(); ++j) a[i].grad.f32()[j] = 3.0f * u(rng);
        b[i].grad.copy_from(a[i].grad);
      }
      const double norm_a = opt.step(cfg.lr);
      // The per-tensor path, as AdamW::step ran before adamw_multi.
      const double norm_b = max_norm > 0 ? b.clip_grad_norm(max_norm) : b.grad_norm();
      for (size_t i = 0; i < shapes.size(); ++i) {
        if (b[i].frozen) continue;
        AdamWParams p;
        p.lr = cfg.lr;
        p.beta1 = cfg.beta1;
        p.beta2 = cfg.beta2;
        p.eps = cfg.eps;
        p.weight_decay = b[i].value.ndim() >= 2 ? cfg.weight_decay : 0.0f;
        p.step = step;
        cpu_backend().adamw(b[i].value, b[i].grad, m[i], v[i], p);
      }
      EXPECT_EQ(norm_a, norm_b) << "max_norm " << max_norm << " step " << step;
      for (size_t i = 0; i < shapes.size(); ++i)
        EXPECT_EQ(std::memcmp(a[i].value.raw(), b[i].value.raw(), a[i].value.nbytes()), 0)
            << "parameter " << i << " max_norm " << max_norm << " step " << step;
    }
    // The two paths restart their moments together.
    for (size_t i = 0; i < shapes.size(); ++i) {
      m[i].fill(0.0);
      v[i].fill(0.0);
    }
  }
}

TEST(AdamWMulti, ClipFactorAndBadClipTensor) {
  std::vector<Tensor> grads = {Tensor::zeros({2}, DType::f32), Tensor::zeros({1}, DType::f32)};
  grads[0].f32()[0] = 3.0f, grads[0].f32()[1] = 0.0f, grads[1].f32()[0] = 4.0f;  // norm 5
  Tensor clip = Tensor::zeros({2}, DType::f64);
  cpu_backend().grad_clip_factor(grads, 1.0, clip);
  EXPECT_EQ(clip.f64()[0], 5.0);
  EXPECT_EQ(clip.f64()[1], double(float(1.0 / (5.0 + 1e-6))));
  cpu_backend().grad_clip_factor(grads, 5.0, clip);  // not above the limit: no clipping
  EXPECT_EQ(clip.f64()[1], 1.0);
  cpu_backend().grad_clip_factor({}, 1.0, clip);
  EXPECT_EQ(clip.f64()[0], 0.0);
  EXPECT_EQ(clip.f64()[1], 1.0);
  Tensor wrong = Tensor::zeros({2}, DType::f32);
  EXPECT_THROW(cpu_backend().grad_clip_factor(grads, 1.0, wrong), Error);
  EXPECT_THROW(cpu_backend().adamw_multi({}, AdamWParams{}, &wrong), Error);
}

}  // namespace
}  // namespace shoal
