// AdamW step loop and state (de)serialization.
#include "engine/optim/adamw.h"

#include "engine/safetensors.h"

namespace shoal {

AdamW::AdamW(ParamSet& params, Backend& backend, const AdamWConfig& config)
    : params_(&params), be_(&backend), cfg_(config) {
  for (auto& p : params) {
    m_.push_back(p.trainable ? backend.zeros(p.value.shape()) : Tensor());
    v_.push_back(p.trainable ? backend.zeros(p.value.shape()) : Tensor());
  }
}

void AdamW::reset() {
  for (size_t i = 0; i < m_.size(); ++i) {
    if (!(*params_)[i].trainable) continue;
    m_[i] = be_->zeros((*params_)[i].value.shape());
    v_[i] = be_->zeros((*params_)[i].value.shape());
  }
  step_ = 0;
}

double AdamW::step(float lr) {
  ++step_;
  std::vector<AdamWTensor> tensors;
  std::vector<Tensor> grads;
  for (size_t i = 0; i < params_->size(); ++i) {
    Param& p = (*params_)[i];
    if (!p.trainable || p.frozen) continue;
    grads.push_back(p.grad);
    tensors.push_back(
        {p.value, p.grad, m_[i], v_[i], p.value.ndim() >= 2 ? cfg_.weight_decay : 0.0f});
  }
  if (!clip_.defined()) clip_ = be_->empty({2}, DType::f64);
  be_->grad_clip_factor(grads, cfg_.grad_clip, clip_);
  AdamWParams a;
  a.lr = lr;
  a.beta1 = cfg_.beta1;
  a.beta2 = cfg_.beta2;
  a.eps = cfg_.eps;
  a.step = step_;
  be_->adamw_multi(tensors, a, &clip_);
  return be_->to_host(clip_).f64()[0];
}

void AdamW::save(const std::string& path) {
  std::vector<std::pair<std::string, Tensor>> t;
  for (size_t i = 0; i < params_->size(); ++i) {
    if (!m_[i].defined()) continue;
    const std::string& n = (*params_)[i].name;
    t.emplace_back("m." + n, be_->to_host(m_[i]));
    t.emplace_back("v." + n, be_->to_host(v_[i]));
  }
  write_safetensors(path, t, {{"step", std::to_string(step_)}, {"format", "shoal-adamw"}});
}

void AdamW::load(const std::string& path) {
  SafetensorsFile f = SafetensorsFile::open(path);
  auto meta = f.metadata();
  SHOAL_CHECK(meta.count("step"), "{}: optimizer state has no 'step' metadata", path);
  for (size_t i = 0; i < params_->size(); ++i) {
    if (!m_[i].defined()) continue;
    const std::string& n = (*params_)[i].name;
    for (auto [prefix, dst] : {std::pair{"m.", &m_[i]}, std::pair{"v.", &v_[i]}}) {
      std::string key = prefix + n;
      SHOAL_CHECK(f.has(key), "{}: optimizer state lacks '{}'", path, key);
      Tensor src = f.get(key);
      SHOAL_CHECK(src.shape() == dst->shape() && src.dtype() == DType::f32,
                  "{}: '{}' is {}, expected f32{}", path, key, src.describe(),
                  shape_str(dst->shape()));
      be_->copy(be_->from_host(src), *dst);
    }
  }
  try {
    step_ = std::stoll(meta.at("step"));
  } catch (const std::exception&) {
    SHOAL_FAIL("{}: optimizer step '{}' is not a number", path, meta.at("step"));
  }
}

}  // namespace shoal
