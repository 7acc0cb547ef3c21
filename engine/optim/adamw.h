// AdamW over a model's trainable parameters, with f32 master weights (on the CPU backend the
// parameters are f32 already, so they are their own master copy) and f32 moments. The state can be
// saved and restored so a run resumes exactly.
#pragma once

#include <string>
#include <vector>

#include "engine/model/params.h"

namespace shoal {

struct AdamWConfig {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
  double grad_clip = 1.0;  // global-norm clip; <= 0 disables
};

class AdamW {
 public:
  AdamW(ParamSet& params, Backend& backend, const AdamWConfig& config);
  // Clips gradients (when configured) and applies one update at learning rate lr (the schedule is
  // the caller's). Returns the gradient norm before clipping. 1-D parameters (norm weights) get no
  // weight decay. One multi-tensor update (Backend::adamw_multi) with the clip factor computed on
  // the backend's device (grad_clip_factor); the gradients are left unscaled, and the norm read
  // back after the update is enqueued is the step's only host round trip.
  double step(float lr);
  int64_t steps() const { return step_; }
  // Forgets the moments and the step count (a new training stage starts afresh).
  void reset();
  void save(const std::string& path);  // safetensors: m.<name>, v.<name>, metadata step
  void load(const std::string& path);

 private:
  ParamSet* params_;
  Backend* be_;
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;  // per parameter (undefined for buffers)
  Tensor clip_;                // f64 [2] on the device: the gradient norm and the clip factor
  int64_t step_ = 0;
};

}  // namespace shoal
