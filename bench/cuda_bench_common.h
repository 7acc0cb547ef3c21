// Shared by the CUDA benchmarks (bench_cuda_train, bench_cuda_decode): a fast random init, the
// device memory high-water mark, and a Backend wrapper that forwards every op to the CUDA backend
// and, when enabled, synchronises the device before and after each op and charges the wall time
// between to the op's name (matmuls also by shape), so a profiling step gives per-op device time.
// The synchronisations remove the overlap of host work with queued kernels, so a profiled step is
// slower than an unprofiled one; the per-op shares are what it is for. Disabled, it only forwards.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "bench/op_flops.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/model.h"

namespace shoal::bench {

// Model::init_random's rule (norm weights 1, biases 0, matrices Normal(0, std)) drawn on all host
// threads: each 1M-element chunk of a parameter has its own generator seeded from (seed,
// parameter index, chunk), so the values depend on the seed only. Model::init_random draws 2.3 B
// values on one thread, which takes minutes of device-machine time for moe-2b.
inline void init_random_parallel(Model& model, uint64_t seed, float std = 0.02f) {
  constexpr int64_t kChunk = 1 << 20;
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  Backend& be = model.backend();
  size_t index = 0;
  for (auto& p : model.params()) {
    Tensor h = Tensor::empty(p.value.shape(), DType::f32);
    float* v = h.f32();
    const int64_t n = h.numel();
    if (p.name.ends_with("norm.weight")) {
      std::fill(v, v + n, 1.0f);
    } else if (p.name.ends_with("e_score_correction_bias") || p.name.ends_with(".bias")) {
      std::fill(v, v + n, 0.0f);
    } else {
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          for (int64_t c = t; c < chunks; c += threads) {
            std::seed_seq ss{uint32_t(seed), uint32_t(seed >> 32), uint32_t(index), uint32_t(c)};
            std::mt19937 rng(ss);
            std::normal_distribution<float> normal(0.0f, std);
            for (int64_t i = c * kChunk, e = std::min(n, (c + 1) * kChunk); i < e; ++i)
              v[i] = normal(rng);
          }
        });
      for (auto& th : pool) th.join();
    }
    Tensor d = be.from_host(h);
    be.copy(d, p.value);
    ++index;
  }
  cuda_synchronize();
}

// The device memory pool's high-water mark of bytes in use (the backend allocates from the
// device's default pool), and its reset. cuBLAS workspaces and the CUDA context are not in it.
inline size_t pool_peak_bytes() {
  cudaMemPool_t pool = nullptr;
  SHOAL_CHECK(cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess, "no default memory pool");
  uint64_t v = 0;
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &v);
  return size_t(v);
}
inline void pool_reset_peak() {
  cudaMemPool_t pool = nullptr;
  SHOAL_CHECK(cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess, "no default memory pool");
  uint64_t zero = 0;
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero);
}
// Bytes in use on the whole device (cudaMemGetInfo: total - free), everything included.
inline size_t device_used_bytes() {
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  return total_b - free_b;
}
inline double gib(size_t b) {
  return double(b) / double(size_t(1) << 30);
}

struct OpStat {
  double sec = 0, flops = 0;
  int64_t calls = 0;
};

// Causal attention FLOPs (QK^T and PV over the lower triangle; backward: S recomputed, dP, dV,
// dQ, dK): what the work needs, not what a kernel that skips nothing would do.
inline double causal_attention_flops(int64_t heads, int64_t dk, int64_t dv,
                                     const std::vector<int64_t>& cu, bool backward) {
  double f = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    double l = double(cu[s + 1] - cu[s]), pairs = l * (l + 1) / 2;
    f += 2.0 * pairs * double(heads) * (backward ? double(3 * dk + 2 * dv) : double(dk + dv));
  }
  return f;
}

class CudaTimingBackend final : public Backend {
 public:
  using Clock = std::chrono::steady_clock;
  explicit CudaTimingBackend(Backend& inner) : be_(inner) {}
  bool enabled = false;
  std::map<std::string, OpStat> ops;
  std::map<GemmKey, OpStat> gemms;
  void reset() {
    ops.clear();
    gemms.clear();
  }

  Device device() const override { return be_.device(); }
  Allocator& allocator() override { return be_.allocator(); }
  Allocator& host_allocator() override { return be_.host_allocator(); }

  void zero(Tensor& t) override {
    timed("zero", 0, [&] { be_.zero(t); });
  }
  void copy(const Tensor& src, Tensor& dst) override {
    timed("copy", 0, [&] { be_.copy(src, dst); });
  }
  Tensor to_host(const Tensor& t) override {
    Tensor r;
    timed("to_host", 0, [&] { r = be_.to_host(t); });
    return r;
  }
  Tensor from_host(const Tensor& t) override {
    Tensor r;
    timed("from_host", 0, [&] { r = be_.from_host(t); });
    return r;
  }
  void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
              float beta) override {
    int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1),
            n = tb ? b.size(0) : b.size(1);
    double f = 2.0 * double(m) * double(n) * double(k);
    if (!enabled) return be_.matmul(a, ta, b, tb, c, alpha, beta);
    cuda_synchronize();
    auto t0 = Clock::now();
    be_.matmul(a, ta, b, tb, c, alpha, beta);
    cuda_synchronize();
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    record("matmul", dt, f);
    OpStat& s = gemms[GemmKey{m, n, k, ta, tb}];
    s.sec += dt, s.flops += f, ++s.calls;
  }
  void grouped_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                      const std::vector<int64_t>& group_rows, float alpha, float beta) override {
    timed("grouped_matmul", grouped_matmul_flops(a, ta, b, tb, group_rows),
          [&] { be_.grouped_matmul(a, ta, b, tb, c, group_rows, alpha, beta); });
  }
  void batched_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
                      float beta) override {
    timed("batched_matmul", batched_matmul_flops(a, ta, c),
          [&] { be_.batched_matmul(a, ta, b, tb, c, alpha, beta); });
  }
  void add(Tensor& y, const Tensor& x, float alpha) override {
    timed("add", 0, [&] { be_.add(y, x, alpha); });
  }
  void scale(Tensor& y, float s) override {
    timed("scale", 0, [&] { be_.scale(y, s); });
  }
  double sum_squares(const Tensor& x) override {
    double r = 0;
    timed("sum_squares", 0, [&] { r = be_.sum_squares(x); });
    return r;
  }
  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y,
                       Tensor& rstd) override {
    timed("rmsnorm_forward", 0, [&] { be_.rmsnorm_forward(x, w, eps, y, rstd); });
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        Tensor& dx, Tensor& dw) override {
    timed("rmsnorm_backward", 0, [&] { be_.rmsnorm_backward(dy, x, w, rstd, dx, dw); });
  }
  void rope(Tensor& x, const Tensor& positions, const Tensor& cos_sin, bool interleaved,
            bool inverse) override {
    timed("rope", 0, [&] { be_.rope(x, positions, cos_sin, interleaved, inverse); });
  }
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                         const std::vector<int64_t>& cu, float scale, Tensor& o, Tensor& lse,
                         const Tensor* sparse) override {
    double f = causal_attention_flops(q.size(1), q.size(2), v.size(2), cu, false);
    timed("attention_forward", f,
          [&] { be_.attention_forward(q, k, v, cu, scale, o, lse, sparse); });
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& dout, const Tensor& lse, const std::vector<int64_t>& cu,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          const Tensor* sparse) override {
    double f = causal_attention_flops(q.size(1), q.size(2), v.size(2), cu, true);
    timed("attention_backward", f,
          [&] { be_.attention_backward(q, k, v, o, dout, lse, cu, scale, dq, dk, dv, sparse); });
  }
  void attention_head_sum_probs(const Tensor& q, const Tensor& k, const Tensor& lse,
                                const std::vector<int64_t>& cu, float scale, const Tensor* sparse,
                                Tensor& p) override {
    timed("dsa", 0, [&] { be_.attention_head_sum_probs(q, k, lse, cu, scale, sparse, p); });
  }
  void indexer_scores(const Tensor& q, const Tensor& k, const Tensor& w,
                      const std::vector<int64_t>& cu, float scale, Tensor& s) override {
    timed("dsa", 0, [&] { be_.indexer_scores(q, k, w, cu, scale, s); });
  }
  void indexer_scores_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                               const std::vector<int64_t>& cu, float scale, const Tensor& ds,
                               Tensor& dq, Tensor& dk, Tensor& dw) override {
    timed("dsa", 0, [&] { be_.indexer_scores_backward(q, k, w, cu, scale, ds, dq, dk, dw); });
  }
  void topk_rows(const Tensor& s, const std::vector<int64_t>& cu, int64_t k, Tensor& idx) override {
    timed("dsa", 0, [&] { be_.topk_rows(s, cu, k, idx); });
  }
  double indexer_kl(const Tensor& p, const Tensor& s, const std::vector<int64_t>& cu,
                    const Tensor* sparse, float gs, Tensor& ds) override {
    double r = 0;
    timed("dsa", 0, [&] { r = be_.indexer_kl(p, s, cu, sparse, gs, ds); });
    return r;
  }
  void hadamard_fp8(Tensor& x, bool hadamard, bool fp8) override {
    timed("dsa", 0, [&] { be_.hadamard_fp8(x, hadamard, fp8); });
  }
  void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y,
                         Tensor& mean, Tensor& rstd) override {
    timed("layernorm", 0, [&] { be_.layernorm_forward(x, w, b, eps, y, mean, rstd); });
  }
  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) override {
    timed("layernorm", 0, [&] { be_.layernorm_backward(dy, x, w, mean, rstd, dx, dw, db); });
  }
  void swiglu_forward(const Tensor& gu, Tensor& h) override {
    timed("swiglu_forward", 0, [&] { be_.swiglu_forward(gu, h); });
  }
  void swiglu_backward(const Tensor& dh, const Tensor& gu, Tensor& dgu) override {
    timed("swiglu_backward", 0, [&] { be_.swiglu_backward(dh, gu, dgu); });
  }
  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& o) override {
    timed("embedding_forward", 0, [&] { be_.embedding_forward(ids, table, o); });
  }
  void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) override {
    timed("embedding_backward", 0, [&] { be_.embedding_backward(ids, dout, dtable); });
  }
  double cross_entropy(const Tensor& logits, const Tensor& labels, float grad_scale,
                       Tensor* dlogits) override {
    double r = 0;
    timed("cross_entropy", 0, [&] { r = be_.cross_entropy(logits, labels, grad_scale, dlogits); });
    return r;
  }
  void token_logprobs(const Tensor& l, const Tensor& lab, const TokenSets* sets, Tensor& lp,
                      Tensor* ent) override {
    timed("token_logprobs", 0, [&] { be_.token_logprobs(l, lab, sets, lp, ent); });
  }
  void token_logprobs_backward(const Tensor& l, const Tensor& lab, const TokenSets* sets,
                               const Tensor& dlp, Tensor& dl) override {
    timed("token_logprobs", 0, [&] { be_.token_logprobs_backward(l, lab, sets, dlp, dl); });
  }
  void route_noaux_tc(const Tensor& logits, const Tensor& bias, const RouterParams& p,
                      Tensor& scores, Tensor& idx, Tensor& w, bool given) override {
    timed("route_noaux_tc", 0, [&] { be_.route_noaux_tc(logits, bias, p, scores, idx, w, given); });
  }
  void route_backward(const Tensor& dw, const Tensor& scores, const Tensor& idx,
                      const RouterParams& p, Tensor& dlogits) override {
    timed("route_backward", 0, [&] { be_.route_backward(dw, scores, idx, p, dlogits); });
  }
  void moe_sort(const Tensor& idx, int64_t e, Tensor& order,
                std::vector<int64_t>& counts) override {
    timed("moe_sort", 0, [&] { be_.moe_sort(idx, e, order, counts); });
  }
  void moe_sort_offsets(const Tensor& idx, int64_t e, Tensor& order, Tensor& offsets) override {
    timed("moe_sort_offsets", 0, [&] { be_.moe_sort_offsets(idx, e, order, offsets); });
  }
  void grouped_matmul_dev(const Tensor& a, const Tensor& b, Tensor& c,
                          const Tensor& offsets) override {
    timed("grouped_matmul_dev", 2.0 * double(a.size(0)) * double(b.size(1)) * double(b.size(2)),
          [&] { be_.grouped_matmul_dev(a, b, c, offsets); });
  }
  // The data- and weight-gradient layouts: 2 rows n k each (b is [G, k, n] / c is [G, n, k]).
  void grouped_matmul_dev_nn(const Tensor& a, const Tensor& b, Tensor& c,
                             const Tensor& offsets) override {
    timed("grouped_matmul_dev_nn", 2.0 * double(a.size(0)) * double(b.size(1)) * double(b.size(2)),
          [&] { be_.grouped_matmul_dev_nn(a, b, c, offsets); });
  }
  void grouped_matmul_dev_tn(const Tensor& a, const Tensor& b, Tensor& c, const Tensor& offsets,
                             float alpha, float beta) override {
    timed("grouped_matmul_dev_tn", 2.0 * double(a.size(0)) * double(c.size(1)) * double(c.size(2)),
          [&] { be_.grouped_matmul_dev_tn(a, b, c, offsets, alpha, beta); });
  }
  void add_group_sizes(const Tensor& offsets, Tensor& counts) override {
    timed("add_group_sizes", 0, [&] { be_.add_group_sizes(offsets, counts); });
  }
  // What the inner backend says of itself (the MoE layers choose their path by it, the model
  // checks its size against it).
  bool device_grouped_gemms() const override { return be_.device_grouped_gemms(); }
  bool memory_info(size_t& free, size_t& total) const override {
    return be_.memory_info(free, total);
  }
  size_t bytes_per_parameter() const override { return be_.bytes_per_parameter(); }
  void combine_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                    bool accumulate, Tensor& dst) override {
    timed("combine_rows", 0, [&] { be_.combine_rows(src, idx, div, w, accumulate, dst); });
  }
  void gather_rows(const Tensor& src, const Tensor& idx, int64_t div, Tensor& dst) override {
    timed("gather_rows", 0, [&] { be_.gather_rows(src, idx, div, dst); });
  }
  void scatter_add_rows(const Tensor& src, const Tensor& idx, int64_t div, const Tensor* w,
                        Tensor& dst) override {
    timed("scatter_add_rows", 0, [&] { be_.scatter_add_rows(src, idx, div, w, dst); });
  }
  void row_dot_scatter(const Tensor& a, const Tensor& b, const Tensor& idx, Tensor& o) override {
    timed("row_dot_scatter", 0, [&] { be_.row_dot_scatter(a, b, idx, o); });
  }
  void scale_rows(Tensor& x, const Tensor& idx, const Tensor& w) override {
    timed("scale_rows", 0, [&] { be_.scale_rows(x, idx, w); });
  }
  void scatter_rows(const Tensor& src, const Tensor& idx, Tensor& dst) override {
    timed("scatter_rows", 0, [&] { be_.scatter_rows(src, idx, dst); });
  }
  void latent_attention(const Tensor& q, const Tensor& pool, int64_t page_tokens,
                        const Tensor& block_table, const Tensor& row_seq, const Tensor& row_len,
                        int64_t max_len, const Tensor* key_idx, float scale, Tensor& out) override {
    timed("latent_attention", 0, [&] {
      be_.latent_attention(q, pool, page_tokens, block_table, row_seq, row_len, max_len, key_idx,
                           scale, out);
    });
  }
  // The body's ops come back through this backend; with timing enabled they synchronise, which a
  // recording refuses (the step then runs op by op).
  std::unique_ptr<OpGraph> record(const std::function<void()>& body, std::string& why) override {
    return be_.record(body, why);
  }
  void sample_rows(const Tensor& logits, const std::vector<TokenDraw>& draws,
                   std::vector<int32_t>& ids, std::vector<float>& logprobs) override {
    timed("sample_rows", 0, [&] { be_.sample_rows(logits, draws, ids, logprobs); });
  }
  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
             const AdamWParams& p) override {
    timed("adamw", 0, [&] { be_.adamw(param, grad, m, v, p); });
  }
  void grad_clip_factor(const std::vector<Tensor>& grads, double max_norm, Tensor& clip) override {
    timed("grad_clip_factor", 0, [&] { be_.grad_clip_factor(grads, max_norm, clip); });
  }
  void adamw_multi(const std::vector<AdamWTensor>& ts, const AdamWParams& p,
                   const Tensor* clip) override {
    timed("adamw_multi", 0, [&] { be_.adamw_multi(ts, p, clip); });
  }

  // The ops by total time, largest first.
  std::vector<std::pair<std::string, OpStat>> sorted_ops() const {
    std::vector<std::pair<std::string, OpStat>> v(ops.begin(), ops.end());
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.sec > b.second.sec; });
    return v;
  }
  std::vector<std::pair<GemmKey, OpStat>> sorted_gemms() const {
    std::vector<std::pair<GemmKey, OpStat>> v(gemms.begin(), gemms.end());
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.sec > b.second.sec; });
    return v;
  }

 private:
  template <class F>
  void timed(const char* op, double flops, F&& f) {
    if (!enabled) return f();
    cuda_synchronize();
    auto t0 = Clock::now();
    f();
    cuda_synchronize();
    record(op, std::chrono::duration<double>(Clock::now() - t0).count(), flops);
  }
  void record(const char* op, double sec, double flops) {
    OpStat& s = ops[op];
    s.sec += sec, s.flops += flops, ++s.calls;
  }
  Backend& be_;
};

}  // namespace shoal::bench
