// bench_cuda_decode: generation on the CUDA backend, and how fast.
//  - prefill: an uncached forward (no backward) over B prompts of P tokens (tokens/s), at each
//    batch size. A batch of more than --max-tokens tokens runs as several forwards of whole
//    prompts (the uncached forward keeps every layer's activations).
//  - generate: greedy generate() (the continuous-batching scheduler over the device KV cache) of
//    B random P-token prompts, --new tokens each: B * new / seconds, prefill included -- the shape
//    of shared/bench/baseline_hf.py's generate numbers. Then the decode step alone
//    (Model::forward_cached, one new token per sequence at about P + new/2 cached tokens) and the
//    [B, vocab] logits copy to the host that each step includes; the same steps with the logits
//    kept on the device and the tokens drawn there (Backend::sample_rows, what the scheduler
//    does now), and sample_rows alone (greedy and top-p) on the [B, vocab] logits.
//  - --profile N: N such device-sampled decode steps at each batch with every op synchronised
//    and timed (bench::CudaTimingBackend), printed op by op and the largest GEMM shapes.
//  - the absorbed decode attention kernel (Backend::latent_attention) on long contexts: achieved
//    read bandwidth of the latent cache against the H200's 4.2 TB/s.
//
//   bench_cuda_decode --config moe-2b.json [--prompt 256] [--new 128] [--batches 1,32,256]
//                     [--reps 3] [--max-tokens 16384] [--gemm f32,bf16]
//                     [--attention f32,tf32,bf16] [--seed 0] [--no-generate] [--profile 0]
//                     [--ncu]
// --ncu: one replayed decode step per batch between cudaProfilerStart and cudaProfilerStop, for
// `ncu --profile-from-start off` (each kernel's device time).
// One line "RESULT {json}" per precision on stdout (for bench/cuda_bench.sh).
#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "bench/cuda_bench_common.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/generate/generate.h"
#include "engine/generate/kv_cache.h"
#include "engine/model/config.h"
#include "engine/model/model.h"

namespace shoal {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p <= s.size()) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    out.push_back(s.substr(p, q - p));
    p = q + 1;
  }
  return out;
}

struct Options {
  std::string config;
  int64_t prompt = 256, new_tokens = 128, reps = 3, max_tokens = 16384, profile = 0;
  bool generate = true, ncu = false;
  uint64_t seed = 0;
  std::vector<int64_t> batches{1, 32, 256};
  std::vector<std::string> gemms{"f32"};
  std::vector<std::string> attentions{"f32"};  // f32 tiled kernels; tf32, bf16: tensor cores
};

std::vector<std::vector<int32_t>> random_prompts(int64_t b, int64_t len, int64_t vocab,
                                                 std::mt19937& rng) {
  std::vector<std::vector<int32_t>> p(static_cast<size_t>(b));
  for (auto& s : p)
    for (int64_t i = 0; i < len; ++i) s.push_back(3 + int32_t(rng() % uint32_t(vocab - 3)));
  return p;
}

// The decode attention kernel alone: B sequences of L cached tokens (pages of 64), one query row
// each, moe-2b's dims; GB/s of latent reads (each latent row once per row of queries).
void kernel_bandwidth(const ModelConfig& cfg, Backend& be, nlohmann::json& j) {
  const int64_t h = cfg.num_attention_heads, rank = cfg.kv_lora_rank,
                dim = rank + cfg.qk_rope_head_dim, pt = 64;
  for (auto [b, len] :
       {std::pair<int64_t, int64_t>{1, 4096}, {64, 4096}, {256, 1024}, {32, 16384}}) {
    const int64_t np = len / pt;
    Tensor pool = be.empty({b * len, dim}), q = be.empty({b, h, dim}), out = be.empty({b, h, rank});
    // Random latents: one random block of 1,024 rows repeated over the pool.
    Tensor hp = Tensor::empty({1024, dim}, DType::f32), hq = Tensor::empty({b, h, dim}, DType::f32);
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int64_t i = 0; i < hp.numel(); ++i) hp.f32()[i] = u(rng);
    for (int64_t i = 0; i < hq.numel(); ++i) hq.f32()[i] = u(rng);
    for (int64_t r = 0; r < b * len; r += 1024) {
      Tensor dst = pool.slice(0, r, r + 1024);
      be.copy(hp, dst);
    }
    be.copy(hq, q);
    Tensor bt = Tensor::empty({b, np}, DType::i32), rs = Tensor::empty({b}, DType::i32),
           rl = Tensor::empty({b}, DType::i32);
    for (int64_t i = 0; i < b * np; ++i) bt.i32()[i] = int32_t(i);
    for (int64_t i = 0; i < b; ++i) rs.i32()[i] = int32_t(i), rl.i32()[i] = int32_t(len);
    Tensor dbt = be.from_host(bt), drs = be.from_host(rs), drl = be.from_host(rl);
    const float scale = float(cfg.softmax_scale());
    auto call = [&] { be.latent_attention(q, pool, pt, dbt, drs, drl, len, nullptr, scale, out); };
    call();
    cuda_synchronize();
    const int iters = 20;
    auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) call();
    cuda_synchronize();
    const double dt = since(t0) / iters, gbs = double(b * len * dim * 4) / dt / 1e9;
    std::printf(
        "latent_attention batch %3lld x %5lld tokens: %8.1f us, %6.0f GB/s (%.0f%% of 4.2 "
        "TB/s)\n",
        (long long)b, (long long)len, dt * 1e6, gbs, 100 * gbs / 4200);
    j["attn_b" + std::to_string(b) + "_L" + std::to_string(len) + "_GBps"] = gbs;
  }
}

// The ops timed since be.reset(), per call of the profiled thing (`per` of them).
void print_profile(bench::CudaTimingBackend& be, double per) {
  double op_total = 0;
  for (auto& [name, st] : be.ops) op_total += st.sec;
  std::printf("%-20s %10s %7s %8s %10s   (ops %.2f ms)\n", "op", "ms", "share", "calls", "TFLOP/s",
              op_total / per * 1e3);
  for (auto& [name, st] : be.sorted_ops())
    std::printf("%-20s %10.3f %6.1f%% %8lld %10.2f\n", name.c_str(), st.sec / per * 1e3,
                100.0 * st.sec / op_total, (long long)(double(st.calls) / per),
                st.flops > 0 ? st.flops / st.sec * 1e-12 : 0.0);
  int shown = 0;
  for (auto& [k, st] : be.sorted_gemms()) {
    if (shown++ >= 12) break;
    std::printf("  matmul %6lld x %6lld x %6lld %s%s %8.3f ms %6lld calls %8.2f TFLOP/s\n",
                (long long)k.m, (long long)k.n, (long long)k.k, k.ta ? "T" : "N", k.tb ? "T" : "N",
                st.sec / per * 1e3, (long long)(double(st.calls) / per), st.flops / st.sec * 1e-12);
  }
  std::printf("\n");
}

void decode(const Options& o, const ModelConfig& cfg, bench::CudaTimingBackend& be, Model& model,
            nlohmann::json& j) {
  std::mt19937 rng(uint32_t(o.seed) + 11);
  SamplingParams sp;
  sp.greedy = true;
  sp.max_tokens = o.new_tokens;
  j["new_tokens"] = o.new_tokens;
  for (int64_t b : o.batches) {
    auto prompts = random_prompts(b, o.prompt, cfg.vocab_size, rng);
    {  // warm-up (allocator pools, cuBLAS handles) on a short run
      SamplingParams w = sp;
      w.max_tokens = 2;
      generate(model, prompts, w);
      cuda_synchronize();
    }
    // With decode steps replayed from recorded graphs (the default), then op by op.
    for (bool graphs : {true, false}) {
      model.set_decode_graphs(graphs);
      const Model::DecodeGraphStats before = model.decode_graph_stats();
      auto t0 = Clock::now();
      auto gens = generate(model, prompts, sp);
      cuda_synchronize();
      const double dt = since(t0);
      int64_t produced = 0;
      for (auto& g : gens) produced += int64_t(g.ids.size());
      SHOAL_CHECK(produced == b * o.new_tokens, "generate produced {} tokens, not {}", produced,
                  b * o.new_tokens);
      const double tps = double(b * o.new_tokens) / dt;
      const Model::DecodeGraphStats& after = model.decode_graph_stats();
      std::printf(
          "generate batch %4lld: %lld prompt + %lld new tokens each, %.3f s, %.0f new "
          "tokens/s (prefill included); decode steps %s (%lld recorded, %lld replayed%s%s)\n",
          (long long)b, (long long)o.prompt, (long long)o.new_tokens, dt, tps,
          graphs ? "as graphs" : "op by op", (long long)(after.recorded - before.recorded),
          (long long)(after.replayed - before.replayed),
          after.refused.empty() ? "" : "; refused: ", after.refused.c_str());
      const std::string suffix = graphs ? "" : "_no_graphs";
      j["generate_b" + std::to_string(b) + "_tokens_per_s" + suffix] = tps;
      j["generate_b" + std::to_string(b) + "_s" + suffix] = dt;
    }
    model.set_decode_graphs(true);
    auto t0 = Clock::now();

    // The decode step alone, through forward_cached, and the logits copy inside it.
    const int64_t steps = 16;
    LatentKvCache cache(cfg, KvCacheConfig{16, b * ((o.prompt + o.new_tokens + 15) / 16 + 1)}, &be);
    std::vector<int64_t> seqs;
    for (int64_t i = 0; i < b; ++i) seqs.push_back(cache.add_sequence());
    CachedForwardOptions last;
    last.last_logits_only = true;
    Tensor logits;
    if (o.profile > 0) {  // the prompts' prefill through the cache, as generate() runs it
      be.reset();
      be.enabled = true;
      t0 = Clock::now();
      logits = model.forward_cached(cache, seqs, prompts, last);
      const double prof = since(t0);
      be.enabled = false;
      std::printf(
          "\nprofile: prefill of %lld x %lld tokens through the cache, every op "
          "synchronised: %.2f ms\n",
          (long long)b, (long long)o.prompt, prof * 1e3);
      print_profile(be, 1.0);
    } else {
      logits = model.forward_cached(cache, seqs, prompts, last);
    }
    for (int64_t s = 0; s < o.new_tokens / 2 - steps; ++s) {  // reach P + new/2 - steps tokens
      std::vector<std::vector<int32_t>> t(static_cast<size_t>(b), {5});
      model.forward_cached(cache, seqs, t, last);
    }
    cuda_synchronize();
    t0 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) {
      std::vector<std::vector<int32_t>> t;
      const int64_t v = logits.size(1);
      for (int64_t r = 0; r < b; ++r) {
        const float* row = logits.f32() + r * v;
        t.push_back({int32_t(std::max_element(row, row + v) - row)});
      }
      logits = model.forward_cached(cache, seqs, t, last);
    }
    const double step = since(t0) / steps;
    Tensor dev = be.empty({b, cfg.vocab_size});
    be.zero(dev);
    be.to_host(dev);
    cuda_synchronize();
    t0 = Clock::now();
    for (int r = 0; r < 5; ++r) be.to_host(dev);
    const double copy = since(t0) / 5;
    std::printf(
        "decode step batch %4lld at ~%lld cached tokens: %.2f ms/step (%.0f tokens/s), of "
        "which the [%lld, %lld] logits copy to the host %.2f ms\n",
        (long long)b, (long long)(o.prompt + o.new_tokens / 2), step * 1e3, double(b) / step,
        (long long)b, (long long)cfg.vocab_size, copy * 1e3);
    j["decode_step_b" + std::to_string(b) + "_ms"] = step * 1e3;
    j["decode_step_b" + std::to_string(b) + "_tokens_per_s"] = double(b) / step;
    j["logits_copy_b" + std::to_string(b) + "_ms"] = copy * 1e3;

    // The same steps with the logits left on the device and the greedy tokens drawn there: only
    // ids and log-probs come back.
    CachedForwardOptions on_device = last;
    on_device.device_logits = true;
    std::vector<TokenDraw> greedy(static_cast<size_t>(b));
    for (int64_t r = 0; r < b; ++r) greedy[size_t(r)].row = r, greedy[size_t(r)].greedy = true;
    std::vector<int32_t> ids(static_cast<size_t>(b), 5);
    std::vector<float> lps;
    Tensor dlogits;
    auto device_step = [&] {
      std::vector<std::vector<int32_t>> t;
      for (int32_t id : ids) t.push_back({id});
      dlogits = model.forward_cached(cache, seqs, t, on_device);
      be.sample_rows(dlogits, greedy, ids, lps);
    };
    // Two steps first: a new graph key runs op by op once, then is recorded.
    device_step();
    device_step();
    cuda_synchronize();
    t0 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) device_step();
    const double step_dev = since(t0) / steps;
    if (o.ncu) {
      cudaProfilerStart();
      device_step();
      cuda_synchronize();
      cudaProfilerStop();
    }
    model.set_decode_graphs(false);
    device_step();
    cuda_synchronize();
    t0 = Clock::now();
    for (int64_t s = 0; s < steps; ++s) device_step();
    const double step_eager = since(t0) / steps;
    // The host's share of a step op by op: the time to enqueue forward_cached (nothing waits on
    // the device inside it), against the whole step.
    cuda_synchronize();
    t0 = Clock::now();
    {
      std::vector<std::vector<int32_t>> t;
      for (int32_t id : ids) t.push_back({id});
      dlogits = model.forward_cached(cache, seqs, t, on_device);
    }
    const double enqueue = since(t0);
    be.sample_rows(dlogits, greedy, ids, lps);
    model.set_decode_graphs(true);
    // sample_rows alone on these logits: greedy, and top-p 0.9 at temperature 1.
    std::vector<TokenDraw> nucleus = greedy;
    for (auto& d : nucleus) d.greedy = false, d.top_p = 0.9f, d.u = 0.37;
    double sample_ms[2];
    for (int k = 0; k < 2; ++k) {
      be.sample_rows(dlogits, k ? nucleus : greedy, ids, lps);
      t0 = Clock::now();
      for (int r = 0; r < 10; ++r) be.sample_rows(dlogits, k ? nucleus : greedy, ids, lps);
      sample_ms[k] = since(t0) / 10 * 1e3;
    }
    std::printf(
        "decode step batch %4lld, tokens drawn on the device: %.2f ms/step (%.0f tokens/s) "
        "replayed from a graph, %.2f ms op by op (of which %.2f ms enqueueing the ops); "
        "sample_rows alone %.3f ms greedy, %.3f ms top-p 0.9\n",
        (long long)b, step_dev * 1e3, double(b) / step_dev, step_eager * 1e3, enqueue * 1e3,
        sample_ms[0], sample_ms[1]);
    j["decode_step_device_b" + std::to_string(b) + "_ms"] = step_dev * 1e3;
    j["decode_step_device_no_graphs_b" + std::to_string(b) + "_ms"] = step_eager * 1e3;
    j["decode_enqueue_no_graphs_b" + std::to_string(b) + "_ms"] = enqueue * 1e3;
    j["sample_rows_greedy_b" + std::to_string(b) + "_ms"] = sample_ms[0];
    j["sample_rows_top_p_b" + std::to_string(b) + "_ms"] = sample_ms[1];

    if (o.profile > 0) {  // op by op: a replayed graph is one launch
      model.set_decode_graphs(false);
      be.reset();
      be.enabled = true;
      t0 = Clock::now();
      for (int64_t s = 0; s < o.profile; ++s) device_step();
      const double prof = since(t0) / double(o.profile);
      be.enabled = false;
      std::printf(
          "\nprofile batch %lld (%lld decode step(s), every op synchronised: %.2f ms per "
          "step)\n",
          (long long)b, (long long)o.profile, prof * 1e3);
      print_profile(be, double(o.profile));
      model.set_decode_graphs(true);
    }
  }
}

nlohmann::json run(const Options& o, CudaGemm gemm, CudaAttention attention) {
  std::printf("\n=== gemm %s, attention %s: %s ===\n", cuda_gemm_name(gemm),
              cuda_attention_name(attention), o.config.c_str());
  ModelConfig cfg = ModelConfig::load(o.config);
  auto inner = make_cuda_backend(0, CudaBackendOptions{gemm, false, attention});
  bench::CudaTimingBackend timing(*inner);  // forwards only, unless --profile enables it
  Backend* be = &timing;
  Model model(cfg, timing);
  auto t0 = Clock::now();
  bench::init_random_parallel(model, o.seed);
  std::printf("init %.1f s\n", since(t0));
  nlohmann::json j;
  j["gemm"] = cuda_gemm_name(gemm);
  j["attention"] = cuda_attention_name(attention);
  j["prompt"] = o.prompt;

  std::mt19937 rng(uint32_t(o.seed) + 7);
  for (int64_t b : o.batches) {
    const int64_t per = std::max<int64_t>(1, std::min(b, o.max_tokens / o.prompt));
    std::vector<Batch> parts;
    for (int64_t first = 0; first < b; first += per) {
      std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(std::min(per, b - first)));
      for (auto& s : seqs)
        for (int64_t i = 0; i < o.prompt; ++i)
          s.push_back(3 + int32_t(rng() % uint32_t(cfg.vocab_size - 3)));
      parts.push_back(Batch::next_token(seqs));
    }
    ForwardOptions fo;
    fo.need_backward = false;
    bench::pool_reset_peak();
    model.forward(parts[0], fo);  // warm-up
    cuda_synchronize();
    std::vector<double> s;
    for (int64_t r = 0; r < o.reps; ++r) {
      auto t = Clock::now();
      for (const Batch& part : parts) model.forward(part, fo);
      cuda_synchronize();
      s.push_back(since(t));
    }
    std::sort(s.begin(), s.end());
    double dt = s[s.size() / 2], tps = double(b * o.prompt) / dt;
    std::printf(
        "prefill batch %4lld x %lld tokens (%zu forward(s)): %.4f s, %.0f tokens/s, peak pool "
        "%.1f GiB\n",
        (long long)b, (long long)o.prompt, parts.size(), dt, tps,
        bench::gib(bench::pool_peak_bytes()));
    j["prefill_b" + std::to_string(b) + "_tokens_per_s"] = tps;
    j["prefill_b" + std::to_string(b) + "_s"] = dt;
  }
  if (o.generate) decode(o, cfg, timing, model, j);
  kernel_bandwidth(cfg, *be, j);
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
    } else if (a == "--prompt") {
      o.prompt = std::stoll(next());
    } else if (a == "--max-tokens") {
      o.max_tokens = std::stoll(next());
    } else if (a == "--new") {
      o.new_tokens = std::stoll(next());
    } else if (a == "--ncu") {
      o.ncu = true;
    } else if (a == "--no-generate") {
      o.generate = false;
    } else if (a == "--profile") {
      o.profile = std::stoll(next());
    } else if (a == "--reps") {
      o.reps = std::stoll(next());
    } else if (a == "--seed") {
      o.seed = std::stoull(next());
    } else if (a == "--batches") {
      o.batches.clear();
      for (auto& s : split(next())) o.batches.push_back(std::stoll(s));
    } else if (a == "--gemm") {
      o.gemms = split(next());
    } else if (a == "--attention") {
      o.attentions = split(next());
    } else {
      SHOAL_FAIL("unknown option {} (see the comment at the top of bench_cuda_decode.cpp)", a);
    }
  }
  SHOAL_CHECK(!o.config.empty(), "--config PATH is required (e.g. shared/bench/moe-2b.json)");
  SHOAL_CHECK(o.prompt > 1 && o.reps > 0, "prompt must exceed 1 and reps be positive");
  std::string why = cuda_unavailable_reason();
  SHOAL_CHECK(why.empty(), "no CUDA device: {}", why);
  for (const std::string& g : o.gemms)
    for (const std::string& a : o.attentions) {
      run(o, parse_cuda_gemm(g), parse_cuda_attention(a));
    }
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  try {
    return shoal::main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_decode: %s\n", e.what());
    return 1;
  }
}
