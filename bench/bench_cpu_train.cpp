// bench_cpu_train: full CPU training steps (zero_grads + forward + backward + AdamW) of two
// DeepSeek-V3-architecture models, against this machine's OpenBLAS sgemm rate measured in the same
// run. Prints tokens/s, step time and the "GEMM share": the step's GEMM FLOPs (counted from the
// config, as the CPU backend actually computes them) / step time / sgemm rate at 1024^3.
// A profiling step through a timing Backend wrapper gives the per-op breakdown.
//
//   bench_cpu_train [--config tiny|50m|all] [--steps N] [--warmup W] [--profile-steps P]
//                   [--no-profile] [--json]
// With --json the human-readable report goes to stderr and one JSON object to stdout.
#include <cblas.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "bench/op_flops.h"
#include "engine/backend.h"
#include "engine/model/config.h"
#include "engine/model/model.h"
#include "engine/optim/adamw.h"

namespace shoal {
namespace {

using bench::batched_matmul_flops;
using bench::GemmKey;
using bench::grouped_matmul_flops;

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
double median(std::vector<double> v) {
  SHOAL_CHECK(!v.empty(), "median of nothing");
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

FILE* out = stdout;  // the human-readable report (stderr under --json)
template <class... A>
void say(fmt::format_string<A...> f, A&&... a) {
  fmt::print(out, f, std::forward<A>(a)...);
}

// ---------------------------------------------------------------------------------------------
// sgemm baseline

struct GemmRate {
  std::string label;
  int64_t m, n, k;
  bool ta, tb;
  double gflops = 0, sec = 0;  // median over samples; sec per call
};

// Median GFLOP/s of cblas_sgemm (row-major, contiguous operands) at one shape. Each sample repeats
// the call until it lasts >= 20 ms so small shapes are not timer noise.
void measure_sgemm(GemmRate& g, int samples) {
  int64_t m = g.m, n = g.n, k = g.k;
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n)),
      c(static_cast<size_t>(m * n));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& x : a) x = u(rng);
  for (auto& x : b) x = u(rng);
  int lda = int(g.ta ? m : k), ldb = int(g.tb ? k : n);
  auto call = [&] {
    cblas_sgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans, g.tb ? CblasTrans : CblasNoTrans,
                int(m), int(n), int(k), 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), int(n));
  };
  // Warm-up (threads started, pages touched), then calibrate the repeat count.
  auto t0 = Clock::now();
  int warm = 0;
  while (warm < 3 || since(t0) < 0.2) {
    call();
    ++warm;
  }
  double per_call = since(t0) / warm;
  int reps = std::max(1, int(0.02 / per_call));
  std::vector<double> s;
  for (int i = 0; i < samples; ++i) {
    auto t = Clock::now();
    for (int r = 0; r < reps; ++r) call();
    s.push_back(since(t) / reps);
  }
  g.sec = median(s);
  g.gflops = 2.0 * double(m) * double(n) * double(k) / g.sec * 1e-9;
}

// ---------------------------------------------------------------------------------------------
// A Backend that forwards to the CPU backend and, when enabled, times every op (and buckets the
// matmuls by shape and transposition). Disabled, it only forwards.

struct OpStat {
  double sec = 0, flops = 0;
  int64_t calls = 0;
};

// FLOPs of the CPU attention as implemented: the full L x L score matrix per head (no causal
// skipping), P V; backward recomputes S, then dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q.
double attention_flops(int64_t heads, int64_t dk, int64_t dv, const std::vector<int64_t>& cu,
                       bool backward) {
  double f = 0;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    double l = double(cu[s + 1] - cu[s]);
    f += 2.0 * l * l * double(heads) * (backward ? double(3 * dk + 2 * dv) : double(dk + dv));
  }
  return f;
}

class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(Backend& inner) : be_(inner) {}
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
    auto t0 = Clock::now();
    be_.matmul(a, ta, b, tb, c, alpha, beta);
    double dt = since(t0);
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
    double f = attention_flops(q.size(1), q.size(2), v.size(2), cu, false);
    timed("attention_forward", f,
          [&] { be_.attention_forward(q, k, v, cu, scale, o, lse, sparse); });
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                          const Tensor& dout, const Tensor& lse, const std::vector<int64_t>& cu,
                          float scale, Tensor& dq, Tensor& dk, Tensor& dv,
                          const Tensor* sparse) override {
    double f = attention_flops(q.size(1), q.size(2), v.size(2), cu, true);
    timed("attention_backward", f,
          [&] { be_.attention_backward(q, k, v, o, dout, lse, cu, scale, dq, dk, dv, sparse); });
  }
  void token_logprobs(const Tensor& l, const Tensor& lab, const TokenSets* sets, Tensor& lp,
                      Tensor* ent) override {
    timed("token_logprobs", 0, [&] { be_.token_logprobs(l, lab, sets, lp, ent); });
  }
  void token_logprobs_backward(const Tensor& l, const Tensor& lab, const TokenSets* sets,
                               const Tensor& dlp, Tensor& dl) override {
    timed("token_logprobs", 0, [&] { be_.token_logprobs_backward(l, lab, sets, dlp, dl); });
  }
  // DSA ops (V3.2 configs; the benchmark's models are V3, so these only forward).
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

 private:
  template <class F>
  void timed(const char* op, double flops, F&& f) {
    if (!enabled) return f();
    auto t0 = Clock::now();
    f();
    record(op, since(t0), flops);
  }
  void record(const char* op, double sec, double flops) {
    OpStat& s = ops[op];
    s.sec += sec, s.flops += flops, ++s.calls;
  }
  Backend& be_;
};

// ---------------------------------------------------------------------------------------------
// Configs and analytical counts

struct BenchConfig {
  std::string name;
  ModelConfig model;
  int64_t batch = 0, seq = 0;
};

ModelConfig base_config() {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.first_k_dense_replace = 1;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rms_norm_eps = 1e-6;
  c.rope_interleave = true;
  c.rope.type = "default";
  c.rope.theta = 10000.0;
  c.tie_word_embeddings = false;
  return c;
}

BenchConfig tiny_config() {
  BenchConfig b;
  b.name = "tiny";
  ModelConfig c = base_config();
  c.vocab_size = 1024;
  c.hidden_size = 64;
  c.num_hidden_layers = 3;
  c.intermediate_size = 176;
  c.num_attention_heads = 4;
  c.q_lora_rank = 32;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 32;
  c.n_group = 2;
  c.topk_group = 1;
  c.max_position_embeddings = 256;
  c.layer_is_moe.assign(static_cast<size_t>(c.num_hidden_layers), true);
  c.layer_is_moe[0] = false;  // first_k_dense_replace = 1
  b.batch = 4;
  b.seq = 128;
  b.model = c;
  return b;
}

// ~50M parameters, DeepSeek-V2-Lite-like ratios: dense FFN 2.75x hidden on layer 0, then MoE
// layers of 8 routed experts (width 0.69x hidden) top-2 in 2 groups (top-1 group) + 1 shared.
BenchConfig config_50m() {
  BenchConfig b;
  b.name = "50m";
  ModelConfig c = base_config();
  c.vocab_size = 8192;
  c.hidden_size = 512;
  c.num_hidden_layers = 8;
  c.intermediate_size = 1408;
  c.num_attention_heads = 8;
  c.q_lora_rank = 192;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.moe_intermediate_size = 352;
  c.n_group = 2;
  c.topk_group = 1;
  c.max_position_embeddings = 4096;
  c.layer_is_moe.assign(static_cast<size_t>(c.num_hidden_layers), true);
  c.layer_is_moe[0] = false;  // first_k_dense_replace = 1
  b.batch = 4;
  b.seq = 256;
  b.model = c;
  return b;
}

struct Counts {
  int64_t params = 0, trainable = 0, active = 0, active_no_embed = 0;
  // Forward GEMM FLOPs per category; backward: 2x for linear layers, attention_core_bwd as counted.
  std::map<std::string, double> fwd;
  double attn_core_fwd = 0, attn_core_bwd = 0, attn_core_causal_fwd = 0;
  double linear_fwd = 0, total = 0;
};

Counts count(const ModelConfig& c, int64_t batch, int64_t seq) {
  Counts r;
  const double n = double(batch * seq), d = double(c.hidden_size),
               h = double(c.num_attention_heads);
  const double dn = double(c.qk_nope_head_dim), dr = double(c.qk_rope_head_dim),
               dv = double(c.v_head_dim), dq = dn + dr, rq = double(c.q_lora_rank),
               rkv = double(c.kv_lora_rank), e = double(c.n_routed_experts),
               k = double(c.num_experts_per_tok), im = double(c.moe_intermediate_size),
               is = im * double(c.n_shared_experts), id = double(c.intermediate_size),
               v = double(c.vocab_size), l = double(seq), b = double(batch);
  // Parameters (matrices + norms), per layer.
  double attn_p = (rq > 0 ? rq * d + rq + h * dq * rq : h * dq * d) + (rkv + dr) * d + rkv +
                  h * (dn + dv) * rkv + d * h * dv;
  double total = 2 * v * d + d, active = 2 * v * d + d;  // embed, lm_head, final norm
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    total += attn_p + 2 * d;
    active += attn_p + 2 * d;
    if (c.is_moe_layer(layer)) {
      double expert = 3 * d * im;
      total += e * d + e + e * expert + 3 * d * is;  // router weight + bias buffer
      active += e * d + k * expert + 3 * d * is;
    } else {
      total += 3 * d * id;
      active += 3 * d * id;
    }
  }
  r.params = int64_t(total);
  r.active = int64_t(active);
  r.active_no_embed = int64_t(active - v * d);
  // Forward GEMMs.
  double attn_proj = 2 * n *
                     ((rq > 0 ? rq * d + h * dq * rq : h * dq * d) + (rkv + dr) * d +
                      h * (dn + dv) * rkv + d * h * dv);
  int64_t n_moe = 0;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) n_moe += c.is_moe_layer(layer);
  double layers = double(c.num_hidden_layers), moe = double(n_moe), dense = layers - moe;
  r.fwd["attn projections (q_a,q_b,kv_a,kv_b,o)"] = layers * attn_proj;
  r.fwd["dense SwiGLU"] = dense * 6 * n * d * id;
  r.fwd["router"] = moe * 2 * n * e * d;
  r.fwd["routed experts (N*K rows)"] = moe * 6 * (n * k) * d * im;
  r.fwd["shared experts"] = moe * 6 * n * d * is;
  r.fwd["lm_head"] = 2 * n * v * d;
  for (auto& [name, f] : r.fwd) r.linear_fwd += f;
  r.attn_core_fwd = layers * b * 2 * l * l * h * (dq + dv);
  r.attn_core_bwd = layers * b * 2 * l * l * h * (3 * dq + 2 * dv);
  r.attn_core_causal_fwd = layers * b * 2 * (l * (l + 1) / 2) * h * (dq + dv);
  r.total = 3 * r.linear_fwd + r.attn_core_fwd + r.attn_core_bwd;
  return r;
}

// Weight shape -> parameter names (layer index stripped), to label the matmul shape buckets.
std::map<std::pair<int64_t, int64_t>, std::string> weight_names(Model& m) {
  std::map<std::pair<int64_t, int64_t>, std::vector<std::string>> names;
  for (auto& p : m.params()) {
    if (!p.trainable || p.value.ndim() < 2) continue;
    std::string s = p.name;
    if (s.rfind("model.layers.", 0) == 0) s = s.substr(s.find('.', 13) + 1);
    if (s.rfind("self_attn.", 0) == 0) s = s.substr(10);
    if (s.ends_with(".weight")) s = s.substr(0, s.size() - 7);
    if (s == "model.embed_tokens") continue;  // not a GEMM operand
    int64_t r = p.value.size(-2), c = p.value.size(-1);
    auto& v = names[{r, c}];
    if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
  }
  std::map<std::pair<int64_t, int64_t>, std::string> out;
  for (auto& [shape, v] : names) {
    std::string s;
    for (auto& x : v) s += (s.empty() ? "" : "|") + x;
    out[shape] = s;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

struct Options {
  std::string config = "all";
  int steps = 5, warmup = 1, profile_steps = 1, sgemm_samples = 7;
  bool profile = true, json = false;
};

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}
std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::vector<std::vector<int32_t>> random_sequences(int64_t batch, int64_t seq, int64_t vocab,
                                                   uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, int32_t(vocab - 1));
  std::vector<std::vector<int32_t>> s(static_cast<size_t>(batch));
  for (auto& x : s) {
    x.resize(static_cast<size_t>(seq));
    for (auto& t : x) t = u(rng);
  }
  return s;
}

nlohmann::json run_config(const BenchConfig& bc, const Options& opt, double peak_gflops) {
  const ModelConfig& c = bc.model;
  Counts cnt = count(c, bc.batch, bc.seq);
  TimingBackend tb(cpu_backend());
  Model model(c, tb);
  model.init_random(1234);
  int64_t real_params = 0;
  for (auto& p : model.params()) real_params += p.value.numel();
  SHOAL_CHECK(real_params == cnt.params, "parameter count: model {} vs analytical {}", real_params,
              cnt.params);
  AdamWConfig ac;
  AdamW adam(model.params(), tb, ac);
  Batch batch = Batch::next_token(random_sequences(bc.batch, bc.seq, c.vocab_size, 42));
  int64_t tokens = batch.tokens();

  say("\n== config {}: hidden {}, {} layers ({} dense), {} heads, q_lora {}, kv_lora {}, "
      "qk {}+{}, v {}, experts {}x{} top-{} + {} shared, groups {}/{}, vocab {}; batch {} x {}\n",
      bc.name, c.hidden_size, c.num_hidden_layers, c.first_k_dense_replace, c.num_attention_heads,
      c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
      c.n_routed_experts, c.moe_intermediate_size, c.num_experts_per_tok, c.n_shared_experts,
      c.n_group, c.topk_group, c.vocab_size, bc.batch, bc.seq);
  say("params: {} total ({} trainable), active per token {} ({} without the embedding table)\n",
      cnt.params, model.params().trainable_numel(), cnt.active, cnt.active_no_embed);

  struct Phase {
    double zero = 0, fwd = 0, bwd = 0, opt = 0, total = 0;
    long faults = 0;
  };
  double loss0 = 0, loss_last = 0;
  auto step = [&](Phase& ph) {
    long f0 = minor_faults();
    auto t0 = Clock::now();
    model.params().zero_grads();
    auto t1 = Clock::now();
    ForwardResult r = model.forward(batch);
    auto t2 = Clock::now();
    model.backward();
    auto t3 = Clock::now();
    adam.step(1e-3f);
    auto t4 = Clock::now();
    auto s = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    ph = {s(t0, t1), s(t1, t2), s(t2, t3), s(t3, t4), s(t0, t4), minor_faults() - f0};
    if (loss0 == 0) loss0 = r.loss;
    loss_last = r.loss;
  };

  Phase ph;
  for (int i = 0; i < opt.warmup; ++i) step(ph);
  std::vector<double> zs, fs, bs, os, ts, faults;
  for (int i = 0; i < opt.steps; ++i) {
    step(ph);
    zs.push_back(ph.zero), fs.push_back(ph.fwd), bs.push_back(ph.bwd), os.push_back(ph.opt);
    ts.push_back(ph.total), faults.push_back(double(ph.faults));
  }
  double t = median(ts);
  double tps = double(tokens) / t;
  double share = cnt.total / t / (peak_gflops * 1e9);
  say("steps: {} warm-up + {} timed; loss {:.4f} -> {:.4f}\n", opt.warmup, opt.steps, loss0,
      loss_last);
  say("step time median {:.1f} ms (min {:.1f}, max {:.1f}); {:.0f} tokens/s\n", t * 1e3,
      *std::min_element(ts.begin(), ts.end()) * 1e3, *std::max_element(ts.begin(), ts.end()) * 1e3,
      tps);
  say("phases (median ms): zero_grads {:.1f}, forward {:.1f}, backward {:.1f}, "
      "AdamW (clip + update) {:.1f}; minor page faults/step {:.0f} ({:.0f} MiB first-touched)\n",
      median(zs) * 1e3, median(fs) * 1e3, median(bs) * 1e3, median(os) * 1e3, median(faults),
      median(faults) * 4096.0 / (1 << 20));
  say("GEMM FLOPs/step (as implemented): {:.2f} GFLOP = linear {:.2f} fwd x3 + attention "
      "core {:.2f} fwd + {:.2f} bwd\n",
      cnt.total * 1e-9, cnt.linear_fwd * 1e-9, cnt.attn_core_fwd * 1e-9, cnt.attn_core_bwd * 1e-9);
  for (auto& [name, f] : cnt.fwd)
    say("    {:<42} fwd {:8.3f} GFLOP  (x3 with backward: {:5.1f}% of the step's GEMM FLOPs)\n",
        name, f * 1e-9, 300.0 * f / cnt.total);
  say("    {:<42} fwd {:8.3f} + bwd {:.3f} GFLOP ({:.1f}%; the full LxL matrix: causal-only "
      "would be {:.3f} fwd)\n",
      "attention core (QK^T, PV; bwd recomputes S)", cnt.attn_core_fwd * 1e-9,
      cnt.attn_core_bwd * 1e-9, 100.0 * (cnt.attn_core_fwd + cnt.attn_core_bwd) / cnt.total,
      cnt.attn_core_causal_fwd * 1e-9);
  say("achieved {:.1f} GFLOP/s; GEMM share = GEMM FLOPs / step time / sgemm(1024^3) rate = "
      "{:.2f} / {:.4f} / {:.1f} = {:.1f}%\n",
      cnt.total / t * 1e-9, cnt.total * 1e-9, t, peak_gflops, 100.0 * share);

  // The same with attention counted causally (the useful lower triangle, L(L+1)/2 per head).
  double useful = 3 * cnt.linear_fwd + (cnt.attn_core_fwd + cnt.attn_core_bwd) *
                                           cnt.attn_core_causal_fwd / cnt.attn_core_fwd;
  say("(counting attention causally, i.e. only useful FLOPs: {:.2f} GFLOP, share {:.1f}%)\n",
      useful * 1e-9, 100.0 * useful / t / (peak_gflops * 1e9));

  nlohmann::json j;
  j["config"] = bc.name;
  j["model"] = c.to_json();
  j["batch"] = bc.batch;
  j["seq"] = bc.seq;
  j["tokens"] = tokens;
  j["params"] = cnt.params;
  j["active_params_per_token"] = cnt.active;
  j["active_params_per_token_without_embedding"] = cnt.active_no_embed;
  j["steps"] = opt.steps;
  j["step_s_median"] = t;
  j["step_s_all"] = ts;
  j["tokens_per_s"] = tps;
  j["phase_s_median"] = {{"zero_grads", median(zs)},
                         {"forward", median(fs)},
                         {"backward", median(bs)},
                         {"optimizer", median(os)}};
  j["minor_page_faults_per_step"] = median(faults);
  j["gemm_flops"] = cnt.total;
  nlohmann::json cats;
  for (auto& [name, f] : cnt.fwd) cats[name] = 3 * f;
  cats["attention core"] = cnt.attn_core_fwd + cnt.attn_core_bwd;
  j["gemm_flops_by_category"] = cats;
  j["achieved_gflops"] = cnt.total / t * 1e-9;
  j["gemm_share"] = share;
  j["gemm_flops_causal_attention"] = useful;
  j["gemm_share_causal_attention"] = useful / t / (peak_gflops * 1e9);
  j["loss_first"] = loss0;
  j["loss_last"] = loss_last;

  if (opt.profile && opt.profile_steps > 0) {
    // Profiling steps: every backend op timed (the wrapper's cost is a clock read per op).
    tb.reset();
    tb.enabled = true;
    std::vector<double> pt;
    for (int i = 0; i < opt.profile_steps; ++i) {
      step(ph);
      pt.push_back(ph.total);
    }
    tb.enabled = false;
    double ps = double(opt.profile_steps);
    double prof_step = 0;
    for (double x : pt) prof_step += x;
    prof_step /= ps;
    double in_ops = 0, op_flops = 0;
    std::vector<std::pair<std::string, OpStat>> rows(tb.ops.begin(), tb.ops.end());
    std::sort(rows.begin(), rows.end(),
              [](auto& a, auto& b) { return a.second.sec > b.second.sec; });
    say("per-op breakdown over {} profiled step(s), {:.1f} ms/step (GFLOP/s and % of the "
        "sgemm 1024^3 rate for GEMM-bearing ops):\n",
        opt.profile_steps, prof_step * 1e3);
    say("    {:<20} {:>7} {:>9} {:>6} {:>9} {:>9} {:>6}\n", "op", "calls", "ms/step", "%step",
        "GFLOP", "GFLOP/s", "%peak");
    nlohmann::json jops = nlohmann::json::array();
    for (auto& [name, s] : rows) {
      in_ops += s.sec;
      op_flops += s.flops;
      double ms = s.sec / ps * 1e3;
      if (s.flops > 0)
        say("    {:<20} {:>7} {:>9.2f} {:>5.1f}% {:>9.3f} {:>9.1f} {:>5.1f}%\n", name,
            s.calls / int64_t(ps), ms, 100 * s.sec / ps / prof_step, s.flops / ps * 1e-9,
            s.flops / s.sec * 1e-9, 100 * s.flops / s.sec * 1e-9 / peak_gflops);
      else
        say("    {:<20} {:>7} {:>9.2f} {:>5.1f}%\n", name, s.calls / int64_t(ps), ms,
            100 * s.sec / ps / prof_step);
      jops.push_back({{"op", name},
                      {"calls_per_step", double(s.calls) / ps},
                      {"s_per_step", s.sec / ps},
                      {"flops_per_step", s.flops / ps}});
    }
    double other = prof_step - in_ops / ps;
    say("    {:<20} {:>7} {:>9.2f} {:>5.1f}%   (model/optimizer host code between ops)\n",
        "(outside ops)", "", other * 1e3, 100 * other / prof_step);
    say("    counted GEMM FLOPs seen by the profiler: {:.3f} GFLOP/step (analytical {:.3f})\n",
        op_flops / ps * 1e-9, cnt.total * 1e-9);

    // Matmul buckets, labelled by the weight they multiply: NT = forward y = x W^T,
    // NN = input gradient dx = dy W, TN = weight gradient dW = dy^T x.
    auto names = weight_names(model);
    struct Bucket {
      std::string label;
      OpStat s;
      int64_t rows_min = INT64_MAX, rows_max = 0;  // rows: the token dimension
    };
    std::map<std::string, Bucket> buckets;
    for (auto& [key, s] : tb.gemms) {
      std::pair<int64_t, int64_t> w;
      std::string mode;
      int64_t rows = key.m;
      if (!key.ta && key.tb)
        w = {key.n, key.k}, mode = "fwd (NT)";
      else if (!key.ta && !key.tb)
        w = {key.k, key.n}, mode = "dX (NN)";
      else if (key.ta && !key.tb)
        w = {key.m, key.n}, mode = "dW (TN)", rows = key.k;
      else
        mode = "TT";
      auto it = names.find(w);
      std::string label = fmt::format("{} [{}x{}] {}", it != names.end() ? it->second : "?",
                                      w.first, w.second, mode);
      Bucket& b = buckets[label];
      b.label = label;
      b.s.sec += s.sec, b.s.flops += s.flops, b.s.calls += s.calls;
      b.rows_min = std::min(b.rows_min, rows);
      b.rows_max = std::max(b.rows_max, rows);
    }
    std::vector<Bucket> bl;
    for (auto& [k, b] : buckets) bl.push_back(b);
    std::sort(bl.begin(), bl.end(), [](auto& a, auto& b) { return a.s.sec > b.s.sec; });
    say("matmul by weight [out x in] and pass (fwd y = x W^T, dX = dy W, dW = dy^T x); rows = "
        "token rows per call:\n");
    say("    {:<70} {:>6} {:>8} {:>8} {:>6}  {}\n", "weight / pass", "calls", "ms/step", "GFLOP/s",
        "%peak", "rows");
    nlohmann::json jg = nlohmann::json::array();
    for (auto& b : bl) {
      say("    {:<70} {:>6} {:>8.2f} {:>8.1f} {:>5.1f}%  {}\n", b.label, b.s.calls / int64_t(ps),
          b.s.sec / ps * 1e3, b.s.flops / b.s.sec * 1e-9,
          100 * b.s.flops / b.s.sec * 1e-9 / peak_gflops,
          b.rows_min == b.rows_max ? fmt::format("{}", b.rows_min)
                                   : fmt::format("{}..{}", b.rows_min, b.rows_max));
      jg.push_back({{"gemm", b.label},
                    {"calls_per_step", double(b.s.calls) / ps},
                    {"s_per_step", b.s.sec / ps},
                    {"flops_per_step", b.s.flops / ps},
                    {"rows_min", b.rows_min},
                    {"rows_max", b.rows_max}});
    }
    j["profile"] = {{"step_s", prof_step}, {"ops", jops}, {"matmul", jg}, {"outside_ops_s", other}};
  }
  return j;
}

int main_impl(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      SHOAL_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--config")
      opt.config = next();
    else if (a == "--steps")
      opt.steps = std::stoi(next());
    else if (a == "--warmup")
      opt.warmup = std::stoi(next());
    else if (a == "--profile-steps")
      opt.profile_steps = std::stoi(next());
    else if (a == "--sgemm-samples")
      opt.sgemm_samples = std::stoi(next());
    else if (a == "--no-profile")
      opt.profile = false;
    else if (a == "--json")
      opt.json = true;
    else if (a == "-h" || a == "--help") {
      fmt::print(
          "usage: bench_cpu_train [--config tiny|50m|all] [--steps N (5)] [--warmup W (1)] "
          "[--profile-steps P (1)] [--no-profile] [--sgemm-samples S (7)] [--json]\n");
      return 0;
    } else {
      SHOAL_FAIL("unknown argument '{}' (see --help)", a);
    }
  }
  SHOAL_CHECK(opt.steps >= 1 && opt.warmup >= 0 && opt.sgemm_samples >= 1,
              "--steps must be >= 1, --warmup >= 0, --sgemm-samples >= 1");
  SHOAL_CHECK(opt.config == "tiny" || opt.config == "50m" || opt.config == "all",
              "--config must be tiny, 50m or all, got '{}'", opt.config);
  if (opt.json) out = stderr;
  auto t_start = Clock::now();

  std::string load_start = loadavg();
  auto env = [](const char* k) -> std::string {
    const char* v = std::getenv(k);
    return v ? v : "unset";
  };
  std::string envs = fmt::format(
      "OMP_NUM_THREADS={} OMP_WAIT_POLICY={} GOMP_SPINCOUNT={} "
      "OPENBLAS_NUM_THREADS={}",
      env("OMP_NUM_THREADS"), env("OMP_WAIT_POLICY"), env("GOMP_SPINCOUNT"),
      env("OPENBLAS_NUM_THREADS"));
  say("bench_cpu_train: {}, {} CPUs online; OpenBLAS {} threads ({})\nenv: {}\n", cpu_model(),
      sysconf(_SC_NPROCESSORS_ONLN), openblas_get_num_threads(), openblas_get_config(), envs);
  say("load average at start: {}\n", load_start);
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT"))
    say("note: libgomp's default spin-waiting competes with OpenBLAS's own threads for the cores; "
        "compare a run under OMP_WAIT_POLICY=passive (docs/PERFORMANCE.md)\n");

  std::vector<BenchConfig> configs;
  if (opt.config != "50m") configs.push_back(tiny_config());
  if (opt.config != "tiny") configs.push_back(config_50m());

  // sgemm: 1024^3 (the baseline of the GEMM share) and shapes of the 50M step.
  BenchConfig b50 = config_50m();
  const ModelConfig& c = b50.model;
  int64_t n = b50.batch * b50.seq, d = c.hidden_size;
  int64_t rows_per_expert = n * c.num_experts_per_tok / c.n_routed_experts;
  int64_t dq = c.qk_head_dim();
  std::vector<GemmRate> rates = {
      {"baseline 1024^3 (NN)", 1024, 1024, 1024, false, false},
      {"lm_head fwd", n, c.vocab_size, d, false, true},
      {"lm_head dW", c.vocab_size, d, n, true, false},
      {"lm_head dX", n, d, c.vocab_size, false, false},
      {"q_b fwd", n, c.num_attention_heads * dq, c.q_lora_rank, false, true},
      {"o_proj fwd", n, d, c.num_attention_heads * c.v_head_dim, false, true},
      {"dense gate_up fwd", n, 2 * c.intermediate_size, d, false, true},
      {"expert gate_up fwd (avg rows)", rows_per_expert, 2 * c.moe_intermediate_size, d, false,
       true},
      {"expert down fwd (avg rows)", rows_per_expert, d, c.moe_intermediate_size, false, true},
      {"expert gate_up dW (avg rows)", 2 * c.moe_intermediate_size, d, rows_per_expert, true,
       false},
      {"router fwd", n, c.n_routed_experts, d, false, true},
      {"attention QK^T (one head)", b50.seq, b50.seq, dq, false, true},
      {"attention PV (one head)", b50.seq, c.v_head_dim, b50.seq, false, false},
  };
  say("\nOpenBLAS sgemm (row-major, contiguous; median of {} samples after warm-up):\n",
      opt.sgemm_samples);
  for (auto& g : rates) {
    measure_sgemm(g, opt.sgemm_samples);
    say("    {:<32} {:>5} x {:>5} x {:>5} {}{}  {:8.1f} GFLOP/s  ({:5.1f}% of 1024^3)\n", g.label,
        g.m, g.n, g.k, g.ta ? "T" : "N", g.tb ? "T" : "N", g.gflops,
        100 * g.gflops / rates[0].gflops);
  }
  double peak = rates[0].gflops;
  say("baseline for the GEMM share: the 1024^3 rate, {:.1f} GFLOP/s\n", peak);

  nlohmann::json j;
  j["machine"] = {{"cpu", cpu_model()},
                  {"cpus", sysconf(_SC_NPROCESSORS_ONLN)},
                  {"openblas_threads", openblas_get_num_threads()},
                  {"openblas_config", openblas_get_config()}};
  j["env"] = envs;
  j["load_average_start"] = load_start;
  nlohmann::json jr = nlohmann::json::array();
  for (auto& g : rates)
    jr.push_back({{"label", g.label},
                  {"m", g.m},
                  {"n", g.n},
                  {"k", g.k},
                  {"trans_a", g.ta},
                  {"trans_b", g.tb},
                  {"gflops", g.gflops}});
  j["sgemm"] = jr;
  j["sgemm_baseline_gflops"] = peak;
  j["configs"] = nlohmann::json::array();
  for (auto& bc : configs) j["configs"].push_back(run_config(bc, opt, peak));

  std::string load_end = loadavg();
  j["load_average_end"] = load_end;
  j["wall_s"] = since(t_start);
  say("\n{:<6} {:>12} {:>14} {:>10} {:>12} {:>10} {:>11}\n", "config", "params", "active/token",
      "tokens/s", "step ms", "GFLOP/s", "GEMM share");
  for (auto& r : j["configs"])
    say("{:<6} {:>12} {:>14} {:>10.0f} {:>12.1f} {:>10.1f} {:>10.1f}%\n",
        r["config"].get<std::string>(), r["params"].get<int64_t>(),
        r["active_params_per_token"].get<int64_t>(), r["tokens_per_s"].get<double>(),
        r["step_s_median"].get<double>() * 1e3, r["achieved_gflops"].get<double>(),
        100 * r["gemm_share"].get<double>());
  say("(GEMM share = step GEMM FLOPs / step time / sgemm 1024^3 rate {:.1f} GFLOP/s; target for "
      "50m >= 50%)\nload average at end: {}; total {:.1f} s\n",
      peak, load_end, since(t_start));
  if (opt.json) fmt::print("{}\n", j.dump(2));
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  try {
    return shoal::main_impl(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_cpu_train: {}\n", e.what());
    return 1;
  }
}
