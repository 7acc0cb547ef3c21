// MoE forward/backward. Token-expert assignments are sorted by expert so each expert runs its
// SwiGLU as dense GEMMs over a contiguous block of gathered rows (all experts' GEMMs in one
// Backend::grouped_matmul per projection, or one grouped_matmul_dev* with the group boundaries
// on the device); results are scattered back with the router weights.
// The router weight gradient is dot(dy_token, expert_output) per assignment.
#include "engine/model/moe.h"

#include <cmath>

namespace shoal {

Moe::Moe(const ModelConfig& c, ParamSet& ps, const std::string& prefix) : c_(c) {
  int64_t d = c.hidden_size, e = c.n_routed_experts, in = c.moe_intermediate_size;
  rp_.n_experts = e;
  rp_.top_k = c.num_experts_per_tok;
  rp_.n_group = c.n_group;
  rp_.topk_group = c.topk_group;
  rp_.norm_topk_prob = c.norm_topk_prob;
  rp_.routed_scaling_factor = float(c.routed_scaling_factor);
  auto& g = ps[ps.add(prefix + "gate.weight", {e, d})];
  gate_ = g.value, g_gate_ = g.grad;
  bias_ = ps[ps.add(prefix + "gate.e_score_correction_bias", {e}, false)].value;
  auto& gu = ps[ps.add(prefix + "experts.gate_up_proj", {e, 2 * in, d})];
  gate_up_ = gu.value, g_gate_up_ = gu.grad;
  auto& dn = ps[ps.add(prefix + "experts.down_proj", {e, d, in})];
  down_ = dn.value, g_down_ = dn.grad;
  if (c.n_shared_experts > 0) {
    int64_t is = in * c.n_shared_experts;
    auto& sgu = ps[ps.add(prefix + "shared_experts.gate_up_proj.weight", {2 * is, d})];
    auto& sd = ps[ps.add(prefix + "shared_experts.down_proj.weight", {d, is})];
    shared_ = {sgu.value, sd.value, sgu.grad, sd.grad};
    has_shared_ = true;
  }
  load_.assign(size_t(e), 0);
}

namespace {
// Without grouped GEMMs that read the offsets on the device, Moe::forward keeps the tokens per
// expert on the device for inference up to this many assignments per expert on average (the
// decode kernel's row tile, kernels/moe/grouped_gemm.h).
constexpr int64_t kDeviceGroupsMaxRowsPerExpert = 64;

// Sequence-wise balance loss (DeepSeek-V3 §2.1.2) on host copies of the router outputs:
// L = alpha * sum_i f_i P_i per sequence, averaged over sequences, with
// f_i = E / (K T) * #{t : i in topk_t}, P_i = mean_t s_it / sum_j s_jt.
double balance_loss(const Tensor& scores, const Tensor& idx, const std::vector<int64_t>& cu,
                    int64_t k, double alpha, Tensor& dlogits) {
  int64_t e = scores.size(1);
  const float* s = scores.f32();
  const int32_t* pi = idx.i32();
  float* d = dlogits.f32();
  double loss = 0;
  int64_t nseq = 0;
  for (size_t q = 0; q + 1 < cu.size(); ++q) nseq += cu[q + 1] > cu[q];
  for (size_t q = 0; q + 1 < cu.size(); ++q) {
    int64_t t0 = cu[q], t1 = cu[q + 1], len = t1 - t0;
    if (len == 0) continue;
    std::vector<double> f(size_t(e), 0.0), pm(size_t(e), 0.0);
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < k; ++j) f[size_t(pi[t * k + j])] += double(e) / double(k * len);
    for (int64_t t = t0; t < t1; ++t) {
      double z = 0;
      for (int64_t i = 0; i < e; ++i) z += s[t * e + i];
      for (int64_t i = 0; i < e; ++i) pm[size_t(i)] += s[t * e + i] / z / double(len);
    }
    double lq = 0;
    for (int64_t i = 0; i < e; ++i) lq += f[size_t(i)] * pm[size_t(i)];
    loss += alpha * lq / double(nseq);
    for (int64_t t = t0; t < t1; ++t) {
      double z = 0, gs = 0;
      for (int64_t i = 0; i < e; ++i) z += s[t * e + i];
      // g_i = dL/ds'_i; ds_j = (g_j - sum_i g_i s'_i) / z; dlogit = ds * s (1 - s).
      for (int64_t i = 0; i < e; ++i)
        gs += alpha * f[size_t(i)] / double(len * nseq) * s[t * e + i] / z;
      for (int64_t j = 0; j < e; ++j) {
        double g = alpha * f[size_t(j)] / double(len * nseq);
        double sj = s[t * e + j];
        d[t * e + j] = float((g - gs) / z * sj * (1.0 - sj));
      }
    }
  }
  return loss;
}
}  // namespace

double Moe::forward(Backend& be, const Tensor& x, const std::vector<int64_t>& cu, Tensor& y,
                    MoeSaved& s, const Tensor* replay_idx, double balance_alpha, bool count_load) {
  int64_t n = x.size(0), e = c_.n_routed_experts, k = c_.num_experts_per_tok;
  s.x = x;
  s.logits = be.empty({n, e});
  be.matmul(x, false, gate_, true, s.logits);  // the router GEMM runs in f32
  s.scores = be.empty({n, e});
  s.topk_w = be.empty({n, k});
  if (replay_idx) {
    SHOAL_CHECK(replay_idx->numel() == n * k, "routing replay: {} expert ids for {} tokens x {}",
                replay_idx->numel(), n, k);
    s.topk_idx = be.from_host(replay_idx->contiguous()).view({n, k});
  } else {
    s.topk_idx = be.empty({n, k}, DType::i32);
  }
  be.route_noaux_tc(s.logits, bias_, rp_, s.scores, s.topk_idx, s.topk_w, replay_idx != nullptr);
  s.order = be.empty({n * k}, DType::i32);
  // The tokens per expert are needed as the expert GEMMs' group boundaries (forward and
  // backward) and, when counting, as the load counts. Reading them back would synchronise the
  // host with the GPU once per layer, which bounds the decode step and stalls the training step
  // (docs/PERFORMANCE.md), so where the backend's grouped GEMMs read boundaries on the device they
  // stay there (prefix sums), and the load counts are summed there too (read back at the bias
  // update). Without such GEMMs (f32 and tf32 CUDA modes: the reference reads the offsets on the
  // host, once per GEMM) this pays only for inference at decode sizes. The balance loss needs the
  // routing on the host anyway; the CPU keeps the host counts.
  const bool device_groups =
      balance_alpha <= 0 && be.device() != Device::cpu &&
      (be.device_grouped_gemms() || (!count_load && n * k <= kDeviceGroupsMaxRowsPerExpert * e));
  s.counts.clear();
  s.offsets = Tensor();
  if (device_groups) {
    s.offsets = be.empty({e + 1}, DType::i32);
    be.moe_sort_offsets(s.topk_idx, e, s.order, s.offsets);
    if (count_load) {
      if (!load_dev_.defined()) load_dev_ = be.zeros({e}, DType::i64);
      SHOAL_CHECK(load_dev_.device() == be.device(),
                  "Moe::forward: the load counts live on {}, the forward runs on {}",
                  device_name(load_dev_.device()), device_name(be.device()));
      be.add_group_sizes(s.offsets, load_dev_);
    }
  } else {
    be.moe_sort(s.topk_idx, e, s.order, s.counts);
    if (count_load)
      for (int64_t i = 0; i < e; ++i) load_[size_t(i)] += s.counts[size_t(i)];
  }

  s.xs = be.empty({n * k, x.size(1)});
  be.gather_rows(x, s.order, k, s.xs);
  s.ys = be.empty({n * k, x.size(1)});
  // swiglu_forward (ffn.cpp) per expert, each GEMM grouped over the experts.
  const int64_t inter = c_.moe_intermediate_size;
  s.gate_up = be.empty({n * k, 2 * inter});
  s.h = be.empty({n * k, inter});
  if (device_groups) {
    be.grouped_matmul_dev(s.xs, gate_up_, s.gate_up, s.offsets);
    be.swiglu_forward(s.gate_up, s.h);
    be.grouped_matmul_dev(s.h, down_, s.ys, s.offsets);
  } else {
    be.grouped_matmul(s.xs, false, gate_up_, true, s.gate_up, s.counts);
    be.swiglu_forward(s.gate_up, s.h);
    be.grouped_matmul(s.h, false, down_, true, s.ys, s.counts);
  }
  Tensor w_flat = s.topk_w.view({n * k});
  be.combine_rows(s.ys, s.order, k, &w_flat, false, y);
  if (has_shared_) swiglu_forward(be, shared_, x, y, s.shared, true);

  double loss = 0;
  s.balance_dlogits = Tensor();
  if (balance_alpha > 0) {
    Tensor scores_h = be.to_host(s.scores), idx_h = be.to_host(s.topk_idx);
    Tensor d = Tensor::zeros({n, e}, DType::f32);
    loss = balance_loss(scores_h, idx_h, cu, k, balance_alpha, d);
    s.balance_dlogits = be.from_host(d);
  }
  return loss;
}

void Moe::backward(Backend& be, const MoeSaved& s, const Tensor& dy, Tensor& dx) {
  int64_t n = dy.size(0), e = c_.n_routed_experts, k = c_.num_experts_per_tok, d = dy.size(1);
  // Group boundaries: host counts, or the prefix sums the forward kept on the device.
  const bool dev = s.counts.empty();
  SHOAL_CHECK(int64_t(s.counts.size()) == e || (s.offsets.defined() && s.offsets.numel() == e + 1),
              "Moe::backward: the saved forward has neither {} expert counts nor their offsets", e);
  if (has_shared_)
    swiglu_backward(be, shared_, s.shared, dy, dx, false);
  else
    be.zero(dx);
  Tensor dys = be.empty({n * k, d});
  be.gather_rows(dy, s.order, k, dys);
  Tensor dw = be.empty({n * k});
  be.row_dot_scatter(dys, s.ys, s.order, dw);  // d(loss)/d(router weight) per assignment
  Tensor w_flat = s.topk_w.view({n * k});
  be.scale_rows(dys, s.order, w_flat);
  // swiglu_backward (ffn.cpp) per expert, each GEMM grouped over the experts.
  Tensor dxs = be.empty({n * k, d});
  Tensor dh = be.empty(s.h.shape());
  Tensor dgu = be.empty(s.gate_up.shape());
  if (dev) {
    be.grouped_matmul_dev_tn(dys, s.h, g_down_, s.offsets, 1.0f, 1.0f);  // dW_down += dy^T h
    be.grouped_matmul_dev_nn(dys, down_, dh, s.offsets);                 // dh = dy W_down
    be.swiglu_backward(dh, s.gate_up, dgu);
    be.grouped_matmul_dev_tn(dgu, s.xs, g_gate_up_, s.offsets, 1.0f, 1.0f);
    be.grouped_matmul_dev_nn(dgu, gate_up_, dxs, s.offsets);
  } else {
    be.grouped_matmul(dys, true, s.h, false, g_down_, s.counts, 1.0f, 1.0f);  // dW_down += dy^T h
    be.grouped_matmul(dys, false, down_, false, dh, s.counts);                // dh = dy W_down
    be.swiglu_backward(dh, s.gate_up, dgu);
    be.grouped_matmul(dgu, true, s.xs, false, g_gate_up_, s.counts, 1.0f, 1.0f);
    be.grouped_matmul(dgu, false, gate_up_, false, dxs, s.counts);
  }
  be.combine_rows(dxs, s.order, k, nullptr, true, dx);
  Tensor dlogits = be.empty({n, e});
  be.route_backward(dw.view({n, k}), s.scores, s.topk_idx, rp_, dlogits);
  if (s.balance_dlogits.defined()) be.add(dlogits, s.balance_dlogits);
  be.matmul(dlogits, true, s.x, false, g_gate_, 1.0f, 1.0f);
  be.matmul(dlogits, false, gate_, false, dx, 1.0f, 1.0f);
}

std::vector<int64_t> Moe::load(Backend& be) const {
  std::vector<int64_t> total = load_;
  if (load_dev_.defined()) {
    const Tensor h = be.to_host(load_dev_);
    for (size_t i = 0; i < total.size(); ++i) total[i] += h.i64()[i];
  }
  return total;
}

void Moe::update_bias(Backend& be, double gamma) {
  int64_t e = c_.n_routed_experts;
  const std::vector<int64_t> load = this->load(be);
  double mean = 0;
  for (auto l : load) mean += double(l);
  mean /= double(e);
  Tensor b = be.to_host(bias_);
  for (int64_t i = 0; i < e; ++i) {
    double diff = mean - double(load[size_t(i)]);
    b.f32()[i] += float(gamma * (diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0));
  }
  be.copy(be.from_host(b), bias_);
  load_.assign(size_t(e), 0);
  if (load_dev_.defined()) be.zero(load_dev_);
}

}  // namespace shoal
