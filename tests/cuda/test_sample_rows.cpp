// Backend::sample_rows on the CUDA backend against the CPU backend (kernels/sampling's reference,
// which is sample_token) on random logits of several shapes up to [256, 129280]: greedy,
// temperature, top-k, top-p, min-p and their combinations, rows with ties (rounded logits, all
// equal, +0/-0), several draws of one row, a strided logits view. Ids must be equal; log-probs
// within what the kernel's 2^-45 fixed-point mass and one float rounding allow. Prints the op's
// time and the rate it reads the logits at. Then the scheduler on the CUDA backend against the
// CPU backend on tiny_v3 with requests drawn on the device and requests whose rows come to the
// host (kept sets, top log-probs) in the same steps. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "engine/generate/scheduler.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;

TokenDraw draw_with(int64_t row, bool greedy, float t, int64_t k, float p, float m, double u) {
  TokenDraw d;
  d.row = row;
  d.greedy = greedy;
  d.temperature = t;
  d.top_k = k;
  d.top_p = p;
  d.min_p = m;
  d.u = u;
  return d;
}

// Parameter sets cycled over the draws: {greedy, temperature, top_k, top_p, min_p}. No top_p of
// exactly 0.5: on an all-equal row of even width the reference's f64 running sum would meet it
// exactly at half the row, where the order of summation decides the cut.
struct Set {
  bool greedy;
  float t;
  int64_t k;
  float p, m;
};
const std::vector<Set> kSets = {
    {true, 1, 0, 1, 0},
    {false, 1, 0, 1, 0},
    {false, 0.3f, 0, 1, 0},
    {false, 2.5f, 0, 1, 0},
    {false, 1, 1, 1, 0},
    {false, 1, 5, 1, 0},
    {false, 0.8f, 50, 1, 0},
    {false, 1, 0, 0.9f, 0},
    {false, 1, 0, 0.55f, 0},
    {false, 1, 0, 0.001f, 0},
    {false, 1, 0, 1, 0.05f},
    {false, 0.7f, 40, 0.95f, 0},
    {false, 1.3f, 0, 0.8f, 0.02f},
    {false, 0.6f, 20, 0.9f, 0.1f},
};

class SampleRowsCuda : public BackendOps {
 protected:
  // Row kinds: 0 normal logits (sd 3), 1 rounded to halves (ties), 2 all equal, 3 values {+0,
  // -0, -2}, 4 one dominant logit. Kinds cycle over rows, the first row always kind 0.
  Tensor logits_host(int64_t b, int64_t v, int64_t ld, bool ties) {
    Tensor h = Tensor::empty({b, ld}, DType::f32);
    std::normal_distribution<float> n(0.0f, 3.0f);
    for (int64_t r = 0; r < b; ++r) {
      float* x = h.f32() + r * ld;
      for (int64_t i = 0; i < ld; ++i) x[i] = n(rng_);
      const int kind = ties ? int(r % 5) : 0;
      if (kind == 1)
        for (int64_t i = 0; i < v; ++i) x[i] = std::round(x[i] * 2) / 2;
      if (kind == 2) std::fill(x, x + v, 1.25f);
      if (kind == 3)
        for (int64_t i = 0; i < v; ++i) x[i] = i % 3 == 0 ? 0.0f : (i % 3 == 1 ? -0.0f : -2.0f);
      if (kind == 4) x[rng_() % uint64_t(v)] = 40.0f;
    }
    return h;
  }

  // b rows of width v (row stride ld >= v); one draw per row plus `extra` more on row 0.
  void run_case(int64_t b, int64_t v, int64_t ld, bool ties, int64_t extra) {
    Tensor h = logits_host(b, v, ld, ties);
    Tensor d = gpu().from_host(h);
    Tensor hv = h.slice(1, 0, v), dv = d.slice(1, 0, v);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::vector<TokenDraw> draws;
    for (int64_t i = 0; i < b + extra; ++i) {
      const Set& s = kSets[size_t(i) % kSets.size()];
      draws.push_back(draw_with(i < b ? i : 0, s.greedy, s.t, s.k, s.p, s.m, uni(rng_)));
    }
    std::vector<int32_t> ic, ig;
    std::vector<float> lc, lg;
    cpu().sample_rows(hv, draws, ic, lc);
    gpu().sample_rows(dv, draws, ig, lg);
    int64_t bad = 0;
    for (size_t i = 0; i < draws.size(); ++i) {
      if (ic[i] == ig[i]) continue;
      if (bad++ < 5)
        std::printf("    draw %zu (row %lld, set %zu, u %.17g): cpu id %d, cuda id %d\n", i,
                    (long long)draws[i].row, i % kSets.size(), draws[i].u, ic[i], ig[i]);
    }
    const std::string what = test::shape_of({b, v}) + (ld != v ? " ld " + std::to_string(ld) : "") +
                             (ties ? " ties" : "") + " draws " + std::to_string(draws.size());
    std::printf("[ %-24s] %-44s ids differing: %lld of %zu %s\n", "sample_rows ids", what.c_str(),
                (long long)bad, draws.size(), bad == 0 ? "PASS" : "FAIL");
    EXPECT_EQ(bad, 0) << what;
    // Log-probs: the kept mass is a sum of values rounded to 2^-45 (relative error <= V * 2^-46
    // of a mass >= 1), then one rounding to float: 2^-23 relative (2 ulps) + 1e-8 absolute.
    Tensor rc = Tensor::empty({int64_t(lc.size())}, DType::f32);
    Tensor rg = Tensor::empty({int64_t(lg.size())}, DType::f32);
    std::copy(lc.begin(), lc.end(), rc.f32());
    std::copy(lg.begin(), lg.end(), rg.f32());
    check("sample_rows logprobs", what, rc, rg, 1e-8, 1.2e-7);
  }
};

TEST_F(SampleRowsCuda, EqualsTheCpuOnRandomRows) {
  run_case(1, 1, 1, false, 3);
  run_case(3, 2, 2, true, 0);
  run_case(14, 7, 9, true, 14);
  run_case(28, 1000, 1000, true, 5);
  run_case(14, 4097, 4100, true, 0);
  run_case(64, 32000, 32000, true, 0);
  run_case(28, 129280, 129280, true, 0);
  run_case(256, 129280, 129280, false, 0);
}

TEST_F(SampleRowsCuda, SpeedAtBatch256) {
  if (!perf_enabled()) GTEST_SKIP() << "SHOAL_NO_PERF";
  const int64_t v = 129280;
  for (int64_t b : {1, 32, 256}) {
    Tensor d = gpu().from_host(logits_host(b, v, v, false));
    for (const Set& s : {Set{true, 1, 0, 1, 0}, Set{false, 1, 0, 1, 0}, Set{false, 1, 50, 1, 0},
                         Set{false, 1, 0, 0.9f, 0}, Set{false, 0.7f, 50, 0.9f, 0.05f}}) {
      std::vector<TokenDraw> draws;
      for (int64_t i = 0; i < b; ++i)
        draws.push_back(draw_with(i, s.greedy, s.t, s.k, s.p, s.m, 0.37));
      std::vector<int32_t> ids;
      std::vector<float> lps;
      const double us = time_us([&] { gpu().sample_rows(d, draws, ids, lps); });
      char what[96];
      std::snprintf(what, sizeof what, "[%lld, %lld] %s t %.1f k %lld p %.2f min_p %.2f",
                    (long long)b, (long long)v, s.greedy ? "greedy" : "sampled", s.t,
                    (long long)s.k, s.p, s.m);
      perf_bytes("sample_rows", what, us, double(b * v * 4));
    }
  }
}

// SHOAL_TEST_DATA in the environment, the source tree, ./tests/data (as test_latent_decode.cpp).
std::string golden_dir() {
  if (const char* env = std::getenv("SHOAL_TEST_DATA")) return env;
  if (std::filesystem::exists(SHOAL_TEST_DATA "/tiny_v3")) return SHOAL_TEST_DATA;
  return "tests/data";
}

// One scheduler per backend, the same requests: sampled groups drawn by sample_rows, a request
// recording its kept sets and one recording top log-probs (their rows copied to the host and
// drawn there), greedy. The logits of the two backends agree to ~2e-6, so the draws are the same
// unless a uniform falls that close to a boundary of the sampling distribution.
TEST(SampleRowsScheduler, CudaEqualsCpuWithRowsDrawnOnBothSides) {
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  if (!std::filesystem::exists(golden_dir() + "/tiny_v3")) GTEST_SKIP() << "no golden data";
  auto gpu = make_cuda_backend(0);
  auto mc = Model::from_pretrained(golden_dir() + "/tiny_v3", cpu_backend());
  auto mg = Model::from_pretrained(golden_dir() + "/tiny_v3", *gpu);
  std::vector<GenerationRequest> reqs(4);
  reqs[0].prompt = {3, 1, 4, 1, 5};
  reqs[0].sampling.temperature = 0.8f;
  reqs[0].sampling.top_k = 20;
  reqs[0].sampling.top_p = 0.9f;
  reqs[0].sampling.seed = 3;
  reqs[0].samples = 2;
  reqs[1].prompt = {9, 2, 6};
  reqs[1].sampling.top_k = 20;
  reqs[1].sampling.top_p = 0.9f;
  reqs[1].sampling.seed = 9;
  reqs[1].record_sampling_mask = true;
  reqs[2].prompt = {7, 7, 8, 100, 42, 5, 6};
  reqs[2].sampling.min_p = 0.02f;
  reqs[2].sampling.seed = 11;
  reqs[2].top_logprobs = 5;
  reqs[3].prompt = {5, 9, 100};
  reqs[3].sampling.greedy = true;
  for (auto& r : reqs) r.sampling.max_tokens = 10;
  std::vector<std::vector<Completion>> out[2];
  for (int b = 0; b < 2; ++b) {
    Scheduler s(b ? *mg : *mc);
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (auto& r : reqs) hs.push_back(s.submit(r));
    s.run_until_idle();
    for (auto& h : hs) out[b].push_back(h->wait());
  }
  int64_t tokens = 0;
  for (size_t r = 0; r < reqs.size(); ++r)
    for (size_t i = 0; i < out[0][r].size(); ++i) {
      const Completion &c = out[0][r][i], &g = out[1][r][i];
      SCOPED_TRACE(testing::Message() << "request " << r << " sample " << i);
      ASSERT_EQ(g.finish, FinishReason::length) << g.error;
      ASSERT_EQ(g.ids(), c.ids());
      for (size_t t = 0; t < c.tokens.size(); ++t) {
        EXPECT_NEAR(g.tokens[t].logprob, c.tokens[t].logprob, 1e-4);
        EXPECT_EQ(g.tokens[t].sampling_mask, c.tokens[t].sampling_mask);
        if (reqs[r].record_sampling_mask) {
          EXPECT_FALSE(g.tokens[t].sampling_mask.empty());
        }
        EXPECT_NEAR(g.tokens[t].model_logprob, c.tokens[t].model_logprob, 1e-4);
        ASSERT_EQ(g.tokens[t].top_logprobs.size(), c.tokens[t].top_logprobs.size());
        if (reqs[r].top_logprobs > 0) {
          EXPECT_EQ(g.tokens[t].top_logprobs.size(), 5u);
        }
        for (size_t k = 0; k < c.tokens[t].top_logprobs.size(); ++k) {
          EXPECT_EQ(g.tokens[t].top_logprobs[k].first, c.tokens[t].top_logprobs[k].first);
          EXPECT_NEAR(g.tokens[t].top_logprobs[k].second, c.tokens[t].top_logprobs[k].second, 1e-4);
        }
        ++tokens;
      }
    }
  EXPECT_EQ(tokens, 5 * 10);
}

}  // namespace
}  // namespace shoal
