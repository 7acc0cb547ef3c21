// Parameters of a model: named value tensors with their gradient buffers, in a stable order (the
// optimizer, gradient clipping and checkpoints iterate it). Packed internal layouts (experts
// stacked as [E, ...], gate and up projections stacked as one [2I, D] matrix) are exposed to
// checkpoints as per-tensor views under their Hugging Face names; see CheckpointTensor.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace shoal {

struct Param {
  std::string name;  // internal name (HF names, except packed experts: mlp.experts.gate_up_proj)
  Tensor value;
  Tensor grad;            // undefined for buffers
  bool trainable = true;  // false for buffers such as the router's e_score_correction_bias
  bool lm_grad = true;    // false when the LM loss does not reach it (the DSA indexer: KL only)
  bool frozen = false;    // the optimizer leaves it (and its moments) alone; not in the grad norm
};

// One tensor as it appears in a Hugging Face checkpoint, viewing (not copying) a parameter.
struct CheckpointTensor {
  std::string name;
  Tensor view;
};

class ParamSet {
 public:
  explicit ParamSet(Backend& backend) : backend_(&backend) {}
  // Adds a zero-initialised parameter (and zero gradient when trainable). Returns its index;
  // references to earlier parameters stay valid.
  size_t add(const std::string& name, const Shape& shape, bool trainable = true);
  Param& operator[](size_t i) { return params_[i]; }
  const Param& operator[](size_t i) const { return params_[i]; }
  Param* find(const std::string& name);
  Param& get(const std::string& name);  // throws naming the parameter when absent
  size_t size() const { return params_.size(); }
  auto begin() { return params_.begin(); }
  auto end() { return params_.end(); }
  auto begin() const { return params_.begin(); }
  auto end() const { return params_.end(); }
  int64_t trainable_numel() const;
  void zero_grads();
  double grad_norm();                      // global L2 norm over all gradients
  double clip_grad_norm(double max_norm);  // scales grads when above max; returns the norm before

 private:
  Backend* backend_;
  std::deque<Param> params_;  // a deque: references returned by add()/operator[] stay valid
};

}  // namespace shoal
