// ParamSet: registration, gradient zeroing, global-norm clipping.
#include "engine/model/params.h"

#include <cmath>

namespace shoal {

size_t ParamSet::add(const std::string& name, const Shape& shape, bool trainable) {
  SHOAL_CHECK(find(name) == nullptr, "parameter '{}' registered twice", name);
  Param p;
  p.name = name;
  p.value = backend_->zeros(shape);
  p.value.storage()->parameter = true;  // a backend may keep derived copies (bf16 GEMM operands)
  if (trainable) p.grad = backend_->zeros(shape);
  p.trainable = trainable;
  params_.push_back(std::move(p));
  return params_.size() - 1;
}

Param* ParamSet::find(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

Param& ParamSet::get(const std::string& name) {
  Param* p = find(name);
  SHOAL_CHECK(p != nullptr, "no parameter named '{}'", name);
  return *p;
}

int64_t ParamSet::trainable_numel() const {
  int64_t n = 0;
  for (auto& p : params_)
    if (p.trainable) n += p.value.numel();
  return n;
}

void ParamSet::zero_grads() {
  for (auto& p : params_)
    if (p.trainable) backend_->zero(p.grad);
}

double ParamSet::grad_norm() {
  double ss = 0;
  for (auto& p : params_)
    if (p.trainable && !p.frozen) ss += backend_->sum_squares(p.grad);
  return std::sqrt(ss);
}

double ParamSet::clip_grad_norm(double max_norm) {
  double norm = grad_norm();
  if (max_norm > 0 && norm > max_norm) {
    float s = float(max_norm / (norm + 1e-6));
    for (auto& p : params_)
      if (p.trainable && !p.frozen) backend_->scale(p.grad, s);
  }
  return norm;
}

}  // namespace shoal
