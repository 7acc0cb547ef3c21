// Backend::sample_rows on the CPU backend against sample_token, and sample_token against the
// sampler as it was before sample_rows existed (kept below verbatim), on random rows of several
// widths (ties, -0/+0 and all-equal rows included) under greedy, temperature, top-k, top-p and
// min-p and their combinations: the same ids, bit-equal log-probs, and the same generator state
// after, so moving the draw into a backend op changes no sampled token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "base/error.h"
#include "engine/backend.h"
#include "engine/generate/generate.h"

namespace shoal {
namespace {

// engine/generate/generate.cpp's sample_token before sample_rows (commit 40778c1), verbatim.
std::pair<int32_t, float> sample_token_before(const float* x, int64_t vocab,
                                              const SamplingParams& p, std::mt19937_64& rng,
                                              std::vector<int32_t>* kept) {
  if (kept) kept->clear();
  if (p.greedy) {
    int64_t best = std::max_element(x, x + vocab) - x;
    double mx = x[best], z = 0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(double(x[i]) - mx);
    return {int32_t(best), float(-std::log(z))};
  }
  std::vector<double> logit(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) logit[size_t(i)] = double(x[i]) / p.temperature;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logit[size_t(a)] > logit[size_t(b)]; });
  double mx = logit[size_t(order[0])], z = 0;
  for (double v : logit) z += std::exp(v - mx);
  size_t keep = p.top_k > 0 ? std::min<size_t>(size_t(p.top_k), order.size()) : order.size();
  if (p.top_p < 1) {
    double mass = 0;
    size_t i = 0;
    while (i < keep) {
      mass += std::exp(logit[size_t(order[i])] - mx) / z;
      ++i;
      if (mass >= p.top_p) break;
    }
    keep = i;
  }
  if (p.min_p > 0) {
    size_t i = 1;
    while (i < keep && std::exp(logit[size_t(order[i])] - mx) >= p.min_p) ++i;
    keep = i;
  }
  double zk = 0;
  for (size_t i = 0; i < keep; ++i) zk += std::exp(logit[size_t(order[i])] - mx);
  std::uniform_real_distribution<double> u(0.0, zk);
  double r = u(rng), acc = 0;
  size_t pick = keep - 1;
  for (size_t i = 0; i < keep; ++i) {
    acc += std::exp(logit[size_t(order[i])] - mx);
    if (r < acc) {
      pick = i;
      break;
    }
  }
  int32_t id = order[pick];
  if (kept && keep < order.size()) {
    kept->assign(order.begin(), order.begin() + int64_t(keep));
    std::sort(kept->begin(), kept->end());
  }
  return {id, float(logit[size_t(id)] - mx - std::log(zk))};
}

std::vector<SamplingParams> param_sets() {
  std::vector<SamplingParams> out;
  auto add = [&](bool greedy, float t, int64_t k, float p, float m) {
    SamplingParams s;
    s.greedy = greedy;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.min_p = m;
    out.push_back(s);
  };
  add(true, 1, 0, 1, 0);
  add(false, 1, 0, 1, 0);
  add(false, 0.3f, 0, 1, 0);
  add(false, 2.5f, 0, 1, 0);
  add(false, 1, 1, 1, 0);
  add(false, 1, 5, 1, 0);
  add(false, 0.8f, 50, 1, 0);
  add(false, 1, 100000, 1, 0);  // beyond the vocabulary: off
  add(false, 1, 0, 0.9f, 0);
  add(false, 1, 0, 0.5f, 0);
  add(false, 1, 0, 0.001f, 0);
  add(false, 1, 0, 1, 0.05f);
  add(false, 0.7f, 40, 0.95f, 0);
  add(false, 1.3f, 0, 0.8f, 0.02f);
  add(false, 0.6f, 20, 0.9f, 0.1f);
  return out;
}

// Row kinds: 0 normal logits, 1 logits rounded to halves (many ties), 2 all equal, 3 a few
// values only with +0 and -0 among them, 4 one dominant logit.
std::vector<float> make_row(int kind, int64_t v, std::mt19937_64& rng) {
  std::normal_distribution<float> n(0.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(v));
  for (auto& e : x) e = n(rng);
  if (kind == 1)
    for (auto& e : x) e = std::round(e * 2) / 2;
  if (kind == 2) std::fill(x.begin(), x.end(), 1.25f);
  if (kind == 3)
    for (size_t i = 0; i < x.size(); ++i) x[i] = (i % 3 == 0) ? 0.0f : (i % 3 == 1 ? -0.0f : -2.0f);
  if (kind == 4) x[size_t(rng() % uint64_t(v))] = 40.0f;
  return x;
}

TEST(SampleRows, CpuOpEqualsSampleTokenAndTheSamplerBefore) {
  std::mt19937_64 data(7);
  const auto sets = param_sets();
  int64_t draws_checked = 0;
  for (int64_t v : {1, 2, 3, 17, 256, 1000, 4099}) {
    for (int kind = 0; kind < 5; ++kind) {
      // One logits matrix per (width, kind): a row per parameter set, each drawn 8 times.
      const int64_t rows = int64_t(sets.size());
      Tensor logits = Tensor::empty({rows, v}, DType::f32);
      for (int64_t r = 0; r < rows; ++r) {
        auto x = make_row(kind, v, data);
        std::copy(x.begin(), x.end(), logits.f32() + r * v);
      }
      for (int rep = 0; rep < 8; ++rep) {
        std::vector<TokenDraw> draws;
        std::vector<std::mt19937_64> g_before, g_token, g_op;
        for (int64_t r = 0; r < rows; ++r) {
          const uint64_t seed = data();
          g_before.emplace_back(seed);
          g_token.emplace_back(seed);
          g_op.emplace_back(seed);
          draws.push_back(token_draw(r, sets[size_t(r)], g_op.back()));
        }
        std::vector<int32_t> ids;
        std::vector<float> lps;
        cpu_backend().sample_rows(logits, draws, ids, lps);
        ASSERT_EQ(ids.size(), size_t(rows));
        for (int64_t r = 0; r < rows; ++r) {
          const float* row = logits.f32() + r * v;
          std::vector<int32_t> kb, kt;
          auto [ib, lb] = sample_token_before(row, v, sets[size_t(r)], g_before[size_t(r)], &kb);
          auto [it, lt] = sample_token(row, v, sets[size_t(r)], g_token[size_t(r)], &kt);
          SCOPED_TRACE(testing::Message()
                       << "vocab " << v << " kind " << kind << " set " << r << " rep " << rep);
          EXPECT_EQ(it, ib);
          EXPECT_EQ(lt, lb);  // bit-equal
          EXPECT_EQ(kt, kb);
          EXPECT_EQ(ids[size_t(r)], ib);
          EXPECT_EQ(lps[size_t(r)], lb);
          EXPECT_TRUE(g_token[size_t(r)] == g_before[size_t(r)]);
          EXPECT_TRUE(g_op[size_t(r)] == g_before[size_t(r)]);
          ++draws_checked;
        }
      }
    }
  }
  EXPECT_EQ(draws_checked, 7 * 5 * 8 * int64_t(sets.size()));
}

TEST(SampleRows, DrawsFollowTheirRowsAndBadDrawsAreRefused) {
  // Two rows, each with one dominant id: draws pick from the row they name, in any order.
  Tensor logits = Tensor::empty({2, 5}, DType::f32);
  for (int64_t i = 0; i < 10; ++i) logits.f32()[i] = 0.0f;
  logits.f32()[3] = 50.0f;
  logits.f32()[5 + 1] = 50.0f;
  std::vector<TokenDraw> draws(3);
  draws[0].row = 1;
  draws[1].row = 0;
  draws[1].greedy = true;
  draws[2].row = 1;
  draws[2].u = 0.999;
  std::vector<int32_t> ids;
  std::vector<float> lps;
  cpu_backend().sample_rows(logits, draws, ids, lps);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 1}));
  draws[0].row = 2;
  EXPECT_THROW(cpu_backend().sample_rows(logits, draws, ids, lps), Error);
  draws[0].row = 0;
  draws[0].u = 1.0;
  EXPECT_THROW(cpu_backend().sample_rows(logits, draws, ids, lps), Error);
  draws[0].u = 0.5;
  draws[0].temperature = 0;
  EXPECT_THROW(cpu_backend().sample_rows(logits, draws, ids, lps), Error);
}

}  // namespace
}  // namespace shoal
