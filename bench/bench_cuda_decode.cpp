// bench_cuda_decode: what of generation runs on the CUDA backend, and how fast. Cached decoding
// (Model::forward_cached over the latent KV cache) is CPU-only so far; the benchmark tries one
// cached forward on the device and prints the error it gets, so the report says so from a run.
// What it measures instead: prefill throughput, an uncached forward (no backward) over B prompts
// of P tokens (tokens/s), at each batch size -- the prompt half of a generate call. A batch of
// more than --max-tokens tokens runs as several forwards of whole prompts (the uncached forward
// keeps every layer's activations, which for 256 x 256 tokens of moe-2b would not fit).
//
//   bench_cuda_decode --config moe-2b.json [--prompt 256] [--batches 1,32,256] [--reps 3]
//                     [--max-tokens 16384]
//                     [--gemm f32,bf16] [--attention f32,tf32] [--seed 0]
// One line "RESULT {json}" per precision on stdout (for bench/cuda_bench.sh).
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
  int64_t prompt = 256, reps = 3, max_tokens = 16384;
  uint64_t seed = 0;
  std::vector<int64_t> batches{1, 32, 256};
  std::vector<std::string> gemms{"f32"};
  std::vector<std::string> attentions{"f32"};  // f32: tiled f32 kernels; tf32: tensor cores
};

nlohmann::json run(const Options& o, CudaGemm gemm, bool tf32_attention) {
  std::printf("\n=== gemm %s, attention %s: %s ===\n", cuda_gemm_name(gemm),
              tf32_attention ? "tf32" : "f32", o.config.c_str());
  ModelConfig cfg = ModelConfig::load(o.config);
  auto be = make_cuda_backend(0, CudaBackendOptions{gemm, tf32_attention});
  Model model(cfg, *be);
  auto t0 = Clock::now();
  bench::init_random_parallel(model, o.seed);
  std::printf("init %.1f s\n", since(t0));
  nlohmann::json j;
  j["gemm"] = cuda_gemm_name(gemm);
  j["attention"] = tf32_attention ? "tf32" : "f32";
  j["prompt"] = o.prompt;

  // Cached decoding on the device: expected to refuse (CPU-only so far); report what it says.
  {
    LatentKvCache cache(cfg, KvCacheConfig{16, 64});
    int64_t seq = cache.add_sequence();
    std::string status = "ran";
    try {
      model.forward_cached(cache, {seq}, {{5, 6, 7}});
    } catch (const std::exception& e) {
      status = e.what();
    }
    std::printf("cached forward (generation) on the CUDA backend: %s\n", status.c_str());
    j["cached_forward"] = status;
  }

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
      SHOAL_CHECK(a == "f32" || a == "tf32", "--attention takes f32 or tf32, not '{}'", a);
      run(o, parse_cuda_gemm(g), a == "tf32");
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
