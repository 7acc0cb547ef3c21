// DeepSeekMoE layer: noaux_tc router (sigmoid scores, bias for selection only, group-limited top-k,
// normalized and scaled weights), routed SwiGLU experts stacked as [E, ...] tensors, shared
// experts, the auxiliary-loss-free load counts for the router-bias update and the optional
// sequence-wise balance loss.
#pragma once

#include "engine/model/config.h"
#include "engine/model/ffn.h"
#include "engine/model/params.h"

namespace shoal {

struct MoeSaved {
  Tensor x, logits, scores, topk_idx, topk_w, order, xs, ys;
  // Tokens per expert, on the host; or, when the forward kept them on the device (Moe::forward),
  // their prefix sums there (i32 [E+1]) and counts empty. backward works from either.
  std::vector<int64_t> counts;
  Tensor offsets;
  // The routed experts' SwiGLU over all assignments (rows grouped by expert as in xs):
  // gate_up [N*K, 2I], h [N*K, I].
  Tensor gate_up, h;
  SwiGluSaved shared;
  Tensor balance_dlogits;  // gradient of the balance loss w.r.t. router logits (when enabled)
};

class Moe {
 public:
  Moe(const ModelConfig& c, ParamSet& params, const std::string& prefix);
  // y = moe(x). replay_idx (i32 [N, K]) forces the expert choice (routing replay); balance_alpha
  // > 0 adds the sequence-wise balance loss, returned (already weighted by alpha).
  // count_load = false leaves the load counts alone (inference). Without the balance loss, a
  // backend whose grouped GEMMs read their group boundaries on the device
  // (Backend::device_grouped_gemms: CUDA in bf16 mode) keeps the tokens per expert there, for
  // every batch size, in training too: no host round trip per layer, the load counts summed on
  // the device. Other device backends do so for inference at decode sizes only (at most 64 rows
  // per expert on average); the CPU, and the balance loss (which needs the routing on the host),
  // keep host counts.
  double forward(Backend& be, const Tensor& x, const std::vector<int64_t>& cu_seqlens, Tensor& y,
                 MoeSaved& s, const Tensor* replay_idx, double balance_alpha,
                 bool count_load = true);
  void backward(Backend& be, const MoeSaved& s, const Tensor& dy, Tensor& dx);

  // Tokens routed to each expert since the last bias update (summed over forwards). Reads the
  // counts kept on the device back to the host: a synchronisation when there are any.
  std::vector<int64_t> load(Backend& be) const;
  // bias_i += gamma * sign(mean_load - load_i); resets the counts.
  void update_bias(Backend& be, double gamma);
  Tensor bias() const { return bias_; }

 private:
  const ModelConfig& c_;
  RouterParams rp_;
  Tensor gate_, g_gate_, bias_;
  Tensor gate_up_, g_gate_up_, down_, g_down_;  // [E, 2I, D], [E, D, I]
  SwiGluWeights shared_;
  bool has_shared_ = false;
  std::vector<int64_t> load_;  // counted on the host (host-count forwards)
  Tensor load_dev_;            // i64 [E] on the device (device-offset forwards), made on first use
};

}  // namespace shoal
