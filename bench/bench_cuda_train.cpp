// bench_cuda_train: training steps (zero_grads + forward + backward + AdamW with clipping) of a
// model config on the CUDA backend, random init, random token ids. Prints tokens/s, model FLOP/s,
// MFU against 753 TFLOP/s (the bf16 dense GEMM rate measured on the H200), peak device memory,
// the backend's own GEMM rate at 8192^3 in the chosen precision (measured in the same run), and,
// from a profiling step (every op synchronised and timed), where the step's time goes.
//
//   bench_cuda_train --config moe-2b.json [--batch 4] [--seq 4096] [--steps 3] [--warmup 1]
//                    [--gemm f32,bf16] [--attention f32,tf32,bf16] [--profile-steps 1] [--seed 0]
//                    [--top 25] [--grouped loop,streams,batched] [--device-groups 1,0]
// --device-groups: 1 = in bf16 mode the MoE layers keep their group boundaries and load counts on
// the device (CudaBackendOptions::device_grouped_gemms, the default); 0 = they read them back each
// layer and the experts run as --grouped says. A comma list, like the others.
// --gemm (CudaGemm) and --attention (CudaAttention: f32 tiled kernels, tf32 or bf16 on the tensor
// cores) take comma lists; each combination runs in turn on a freshly initialised model. One line
// "RESULT {json}" per combination on stdout (for bench/cuda_bench.sh). --grouped loop runs the MoE
// --grouped (CudaGrouped) is how the MoE experts' grouped_matmul runs, also a comma list.
//
// Model FLOPs per step: 6 x (matmul parameters a token uses: attention projections, the dense
// FFN, the router, the K routed + shared experts of each MoE layer, lm_head) x tokens, plus 3 x
// the causal attention forward (2 x (L(L+1)/2) x heads x (qk_head_dim + v_head_dim) per sequence
// and layer) -- the convention of the PyTorch baseline's numbers (shared/bench/README.md).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "bench/cuda_bench_common.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/config.h"
#include "engine/model/model.h"
#include "engine/optim/adamw.h"

namespace shoal {
namespace {

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

constexpr double kPeakFlops = 753e12;  // bf16 dense GEMM, H200 (shared/bench/README.md)

struct Options {
  std::string config;
  int64_t batch = 4, seq = 4096, steps = 3, warmup = 1, profile_steps = 1, top = 25;
  uint64_t seed = 0;
  std::vector<std::string> gemms{"f32"};
  std::vector<std::string> attentions{"f32"};  // f32 tiled kernels; tf32, bf16: tensor cores
  std::vector<std::string> grouped{"loop"};    // CudaGrouped
  std::vector<int> device_groups{1};
};

// Matmul parameters one token goes through (see the file comment).
double active_matmul_params(const ModelConfig& c) {
  const double d = double(c.hidden_size), h = double(c.num_attention_heads);
  const double dn = double(c.qk_nope_head_dim), dr = double(c.qk_rope_head_dim),
               dv = double(c.v_head_dim), rq = double(c.q_lora_rank), rkv = double(c.kv_lora_rank);
  const double attn = (rq > 0 ? rq * d + h * (dn + dr) * rq : h * (dn + dr) * d) + (rkv + dr) * d +
                      h * (dn + dv) * rkv + d * h * dv;
  double p = double(c.vocab_size) * d;  // lm_head
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    p += attn;
    if (c.layer_is_moe[size_t(l)])
      p += double(c.n_routed_experts) * d + double(c.num_experts_per_tok + c.n_shared_experts) * 3 *
                                                d * double(c.moe_intermediate_size);
    else
      p += 3 * d * double(c.intermediate_size);
  }
  return p;
}

double model_flops(const ModelConfig& c, int64_t batch, int64_t seq) {
  std::vector<int64_t> cu;
  for (int64_t b = 0; b <= batch; ++b) cu.push_back(b * seq);
  double attn =
      bench::causal_attention_flops(c.num_attention_heads, c.qk_nope_head_dim + c.qk_rope_head_dim,
                                    c.v_head_dim, cu, false) *
      double(c.num_hidden_layers);
  return 6.0 * active_matmul_params(c) * double(batch * seq) + 3.0 * attn;
}

// The backend's matmul at 8192^3 (random operands): its GEMM ceiling in this precision.
double gemm_rate(Backend& be) {
  const int64_t n = 8192;
  Tensor h = Tensor::empty({n, n}, DType::f32);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < n * n; ++i) h.f32()[i] = u(rng);
  Tensor a = be.from_host(h), b = be.from_host(h), c = be.empty({n, n});
  for (int i = 0; i < 2; ++i) be.matmul(a, false, b, true, c);
  cuda_synchronize();
  std::vector<double> s;
  for (int i = 0; i < 5; ++i) {
    auto t0 = Clock::now();
    be.matmul(a, false, b, true, c);
    cuda_synchronize();
    s.push_back(since(t0));
  }
  return 2.0 * double(n) * double(n) * double(n) / median(s);
}

nlohmann::json run(const Options& o, CudaGemm gemm, CudaAttention attention, CudaGrouped grouped,
                   bool device_groups) {
  std::printf(
      "\n=== gemm %s, attention %s, grouped %s, device groups %d: %s, batch %lld x %lld tokens "
      "===\n",
      cuda_gemm_name(gemm), cuda_attention_name(attention), cuda_grouped_name(grouped),
      int(device_groups), o.config.c_str(), (long long)o.batch, (long long)o.seq);
  ModelConfig cfg = ModelConfig::load(o.config);
  CudaBackendOptions bo{gemm, false, attention, grouped};
  bo.device_grouped_gemms = device_groups;
  auto inner = make_cuda_backend(0, bo);
  bench::CudaTimingBackend be(*inner);
  const double ceiling = gemm_rate(be);
  std::printf("backend matmul 8192^3 (%s): %.1f TFLOP/s\n", cuda_gemm_name(gemm), ceiling * 1e-12);

  auto t0 = Clock::now();
  Model model(cfg, be);
  bench::init_random_parallel(model, o.seed);
  int64_t params = 0;
  for (auto& p : model.params()) params += p.value.numel();
  std::printf("model: %.3f B parameters, %.3f B matmul parameters per token; init %.1f s\n",
              double(params) * 1e-9, active_matmul_params(cfg) * 1e-9, since(t0));
  AdamWConfig ac;
  ac.lr = 1e-4f;
  AdamW opt(model.params(), be, ac);

  std::mt19937 rng(uint32_t(o.seed) + 1);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(o.batch));
  for (auto& s : seqs)
    for (int64_t i = 0; i < o.seq; ++i)
      s.push_back(3 + int32_t(rng() % uint32_t(cfg.vocab_size - 3)));
  Batch batch = Batch::next_token(seqs);

  struct Phase {
    double fwd, bwd, opt, total;
  };
  auto step = [&]() {
    Phase ph{};
    auto s0 = Clock::now();
    model.params().zero_grads();
    ForwardResult r = model.forward(batch);
    cuda_synchronize();
    ph.fwd = since(s0);
    auto s1 = Clock::now();
    model.backward();
    cuda_synchronize();
    ph.bwd = since(s1);
    auto s2 = Clock::now();
    opt.step(1e-4f);
    cuda_synchronize();
    ph.opt = since(s2);
    ph.total = since(s0);
    return std::make_pair(ph, r.loss);
  };
  bench::pool_reset_peak();
  for (int64_t i = 0; i < o.warmup; ++i) {
    auto [ph, loss] = step();
    std::printf("warm-up step: %.3f s (loss %.4f)\n", ph.total, loss);
  }
  std::vector<double> tot, fw, bw, op;
  double last_loss = 0;
  for (int64_t i = 0; i < o.steps; ++i) {
    auto [ph, loss] = step();
    tot.push_back(ph.total), fw.push_back(ph.fwd), bw.push_back(ph.bwd), op.push_back(ph.opt);
    last_loss = loss;
    std::printf("step %lld: %.3f s (forward %.3f, backward %.3f, AdamW %.3f), loss %.4f\n",
                (long long)i, ph.total, ph.fwd, ph.bwd, ph.opt, loss);
  }
  const size_t peak = bench::pool_peak_bytes(), used = bench::device_used_bytes();
  const double dt = median(tot), tokens = double(o.batch * o.seq);
  const double flops = model_flops(cfg, o.batch, o.seq);

  nlohmann::json j;
  j["gemm"] = cuda_gemm_name(gemm);
  j["attention"] = cuda_attention_name(attention);
  j["grouped"] = cuda_grouped_name(grouped);
  j["device_groups"] = device_groups && gemm == CudaGemm::bf16;
  j["batch"] = o.batch;
  j["seq"] = o.seq;
  j["params_B"] = double(params) * 1e-9;
  j["step_s"] = dt;
  j["forward_s"] = median(fw);
  j["backward_s"] = median(bw);
  j["adamw_s"] = median(op);
  j["tokens_per_s"] = tokens / dt;
  j["model_tflops_per_step"] = flops * 1e-12;
  j["model_tflop_per_s"] = flops / dt * 1e-12;
  j["mfu"] = flops / dt / kPeakFlops;
  j["peak_pool_GiB"] = bench::gib(peak);
  j["device_used_GiB"] = bench::gib(used);
  j["gemm_8192_tflop_per_s"] = ceiling * 1e-12;
  j["loss"] = last_loss;

  if (o.profile_steps > 0) {
    be.reset();
    be.enabled = true;
    double prof = 0;
    for (int64_t i = 0; i < o.profile_steps; ++i) prof += step().first.total;
    be.enabled = false;
    double op_total = 0;
    for (auto& [name, st] : be.ops) op_total += st.sec;
    std::printf("\nprofile (%lld step(s), every op synchronised: %.3f s per step, ops %.3f s)\n",
                (long long)o.profile_steps, prof / double(o.profile_steps),
                op_total / double(o.profile_steps));
    std::printf("%-20s %10s %7s %8s %10s\n", "op", "s/step", "share", "calls", "TFLOP/s");
    nlohmann::json pj = nlohmann::json::array();
    for (auto& [name, st] : be.sorted_ops()) {
      double s = st.sec / double(o.profile_steps);
      std::printf("%-20s %10.4f %6.1f%% %8lld %10.2f\n", name.c_str(), s, 100.0 * st.sec / op_total,
                  (long long)(st.calls / o.profile_steps),
                  st.flops > 0 ? st.flops / st.sec * 1e-12 : 0.0);
      pj.push_back({{"op", name}, {"s", s}, {"share", st.sec / op_total}});
    }
    j["profile"] = pj;
    std::printf("\nmatmul shapes by time (m x n x k, op(a), op(b))\n");
    int shown = 0;
    for (auto& [k, st] : be.sorted_gemms()) {
      if (shown++ >= o.top) break;
      std::printf("%6lld x %6lld x %6lld %s%s %9.4f s/step %6lld calls %8.2f TFLOP/s\n",
                  (long long)k.m, (long long)k.n, (long long)k.k, k.ta ? "T" : "N",
                  k.tb ? "T" : "N", st.sec / double(o.profile_steps),
                  (long long)(st.calls / o.profile_steps), st.flops / st.sec * 1e-12);
    }
  }
  std::printf(
      "\n%s GEMMs, %s attention: step %.3f s, %.0f tokens/s, %.1f TFLOP/s model FLOPs, MFU "
      "%.1f%% of 753, peak pool %.1f GiB (device %.1f GiB)\n",
      cuda_gemm_name(gemm), cuda_attention_name(attention), dt, tokens / dt, flops / dt * 1e-12,
      100.0 * flops / dt / kPeakFlops, bench::gib(peak), bench::gib(used));
  std::printf("RESULT %s\n", j.dump().c_str());
  std::fflush(stdout);
  return j;
}

int main_impl(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      SHOAL_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--config") {
      o.config = next();
    } else if (a == "--batch") {
      o.batch = std::stoll(next());
    } else if (a == "--seq") {
      o.seq = std::stoll(next());
    } else if (a == "--steps") {
      o.steps = std::stoll(next());
    } else if (a == "--warmup") {
      o.warmup = std::stoll(next());
    } else if (a == "--profile-steps") {
      o.profile_steps = std::stoll(next());
    } else if (a == "--top") {
      o.top = std::stoll(next());
    } else if (a == "--seed") {
      o.seed = std::stoull(next());
    } else if (a == "--attention") {
      o.attentions.clear();
      std::string s = next();
      size_t p = 0;
      while (p <= s.size()) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        o.attentions.push_back(s.substr(p, q - p));
        p = q + 1;
      }
    } else if (a == "--grouped") {
      o.grouped.clear();
      std::string s = next();
      size_t p = 0;
      while (p <= s.size()) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        o.grouped.push_back(s.substr(p, q - p));
        p = q + 1;
      }
    } else if (a == "--device-groups") {
      o.device_groups.clear();
      std::string s = next();
      for (char ch : s)
        if (ch == '0' || ch == '1') o.device_groups.push_back(ch - '0');
    } else if (a == "--gemm") {
      o.gemms.clear();
      std::string s = next();
      size_t p = 0;
      while (p <= s.size()) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        o.gemms.push_back(s.substr(p, q - p));
        p = q + 1;
      }
    } else {
      SHOAL_FAIL("unknown option {} (see the comment at the top of bench_cuda_train.cpp)", a);
    }
  }
  SHOAL_CHECK(!o.config.empty(), "--config PATH is required (e.g. shared/bench/moe-2b.json)");
  SHOAL_CHECK(o.batch > 0 && o.seq > 1 && o.steps > 0, "batch, seq and steps must be positive");
  std::string why = cuda_unavailable_reason();
  SHOAL_CHECK(why.empty(), "no CUDA device: {}", why);
  for (const std::string& g : o.gemms)
    for (const std::string& a : o.attentions)
      for (const std::string& m : o.grouped)
        for (int dg : o.device_groups)
          run(o, parse_cuda_gemm(g), parse_cuda_attention(a), parse_cuda_grouped(m), dg != 0);
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  try {
    return shoal::main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_train: %s\n", e.what());
    return 1;
  }
}
