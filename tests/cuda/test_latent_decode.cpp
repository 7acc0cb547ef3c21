// Generation on the CUDA backend: the latent-cache ops (scatter_rows, latent_attention) against
// the CPU backend's reference on random pools and page tables (page boundaries, pages shared by
// forked sequences, lengths 1 and beyond a page, DSA key lists with -1 padding, the split-KV path
// with its combine step, several head groups), the kernel's read bandwidth on long contexts; then
// Model::forward_cached through the CUDA backend against the CPU backend on the golden tiny models
// (prefill + decode steps, batched, forked), greedy generate() against the golden continuations,
// and the clear refusal of V3.2 (DSA) decoding on the device. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "engine/generate/generate.h"
#include "engine/generate/kv_cache.h"
#include "engine/model/model.h"
#include "tests/cuda/backend_ops_harness.h"

namespace shoal {
namespace {

using test::BackendOps;
using test::Pair;

// One latent_attention case: S sequences over a pool of `pages` pages; sequence s has len[s]
// tokens; sequence 1 (when there are several) shares sequence 0's first pages like a fork.
struct LatentCase {
  const char* name;
  int64_t heads, rank, dr, page_tokens;
  std::vector<int64_t> lens;  // per sequence
  int64_t rows_per_seq;       // query rows per sequence (positions at the end of it)
  int64_t topk;               // > 0: DSA key lists of this width (-1 padded)
};

// x rounded to TF32 as cvt.rna does (nearest, ties away from zero): 10 mantissa bits kept.
float tf32_rna(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b = (b + 0x1000u) & 0xFFFFE000u;
  std::memcpy(&x, &b, 4);
  return x;
}
Tensor tf32_rounded(const Tensor& t) {
  Tensor r = t.contiguous().clone();
  for (int64_t i = 0; i < r.numel(); ++i) r.f32()[i] = tf32_rna(r.f32()[i]);
  return r;
}

class LatentDecode : public BackendOps {
 protected:
  // tf32: the device backend opened with reduced attention precision, whose kernel rounds q, the
  // latents and the probabilities to TF32 and makes one MMA per product (LatentAttentionParams::
  // tf32); the reference then takes q and the latents rounded alike.
  void run_case(const LatentCase& c, bool tf32 = false) {
    const int64_t dim = c.rank + c.dr, pt = c.page_tokens, ns = int64_t(c.lens.size());
    // Page tables: distinct pages drawn at random from the pool (so page order != position
    // order); sequence 1 starts with sequence 0's first pages (shared, as after a fork).
    int64_t np = 0, total = 0;
    for (int64_t l : c.lens) np = std::max(np, (l + pt - 1) / pt), total += (l + pt - 1) / pt;
    const int64_t pages = total + 3;
    std::vector<int32_t> perm(static_cast<size_t>(pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng_);
    std::vector<int32_t> bt(size_t(ns * np), -1);
    size_t next = 0;
    for (int64_t s = 0; s < ns; ++s) {
      int64_t need = (c.lens[size_t(s)] + pt - 1) / pt;
      for (int64_t p = 0; p < need; ++p) {
        bool shared = s == 1 && p < need / 2 && p < (c.lens[0] + pt - 1) / pt;
        bt[size_t(s * np + p)] = shared ? bt[size_t(p)] : perm[next++];
      }
    }
    std::vector<int32_t> row_seq, row_len, keys;
    int64_t max_len = 0;
    for (int64_t s = 0; s < ns; ++s) {
      const int64_t l = c.lens[size_t(s)];
      for (int64_t r = 0; r < c.rows_per_seq && r < l; ++r) {
        const int64_t len = l - r;
        row_seq.push_back(int32_t(s));
        row_len.push_back(int32_t(len));
        max_len = std::max(max_len, len);
        if (c.topk > 0) {  // distinct random positions < len, shuffled, then -1 padding
          std::vector<int32_t> pos(static_cast<size_t>(len));
          std::iota(pos.begin(), pos.end(), 0);
          std::shuffle(pos.begin(), pos.end(), rng_);
          int64_t take = std::min<int64_t>(len, c.topk - int64_t(keys.size() % 3 == 0));
          for (int64_t j = 0; j < c.topk; ++j) keys.push_back(j < take ? pos[size_t(j)] : -1);
          std::shuffle(keys.end() - c.topk, keys.end(), rng_);
        }
      }
    }
    const int64_t n = int64_t(row_seq.size());
    Pair q = rand({n, c.heads, dim}), pool = rand({pages * pt, dim});
    Pair tbl = ints(bt, {ns, np}), rs = ints(row_seq, {n}), rl = ints(row_len, {n});
    Pair ki = c.topk > 0 ? ints(keys, {n, c.topk}) : Pair{};
    const float scale = 1.0f / std::sqrt(float(c.rank / 4 + c.dr));
    Tensor ref = Tensor::empty({n, c.heads, c.rank}, DType::f32);
    cpu().latent_attention(tf32 ? tf32_rounded(q.h) : q.h, tf32 ? tf32_rounded(pool.h) : pool.h, pt,
                           tbl.h, rs.h, rl.h, max_len, c.topk > 0 ? &ki.h : nullptr, scale, ref);
    if (tf32 && !tf32_)
      tf32_ = make_cuda_backend(0, CudaBackendOptions{CudaGemm::f32, false, CudaAttention::bf16});
    Backend& be = tf32 ? *tf32_ : gpu();
    Tensor got = be.empty({n, c.heads, c.rank});
    be.latent_attention(q.d, pool.d, pt, tbl.d, rs.d, rl.d, max_len, c.topk > 0 ? &ki.d : nullptr,
                        scale, got);
    // Tolerance from f32 arithmetic (u = 2^-24) against the f64 reference, inputs uniform in
    // [-1, 1]. A score sums dim products whose magnitudes add to about dim / 4; its rounding error
    // grows like sqrt(dim) * u times that (random-walk model of f32 summation), times the scale.
    // It perturbs each softmax weight by as much relative, so the output (a convex combination of
    // values in [-1, 1]) by as much absolute; the sum over L keys adds about sqrt(L) * u. A factor
    // 8 covers the model's tails and the split-KV rescaling. (One key dropped or counted twice
    // moves some output by up to ~1/L, above this for every L here.)
    const double u = std::ldexp(1.0, -24);
    const double score_err = std::sqrt(double(dim)) * u * scale * (double(dim) / 4);
    double atol = 8 * (score_err + std::sqrt(double(max_len)) * u);
    // With rounded q and latents in the reference too, what remains is the probabilities' TF32
    // rounding in P V: each weight off by at most 2^-11 of itself, so the output (values in
    // [-1, 1], weights summing to 1) by at most 2^-11 in all.
    if (tf32) atol += std::ldexp(1.0, -11);
    check(tf32 ? "latent_attention tf32" : "latent_attention", c.name, ref, got, atol, 0.0);
  }
  std::unique_ptr<Backend> tf32_;
};

TEST_F(LatentDecode, ScatterRowsWritesThePoolRows) {
  Pair pool = rand({40, 24}), src = rand({5, 24});
  Pair idx = ints({7, 0, 39, 16, 15}, {5});
  Tensor ref = pool.h.contiguous();
  cpu().scatter_rows(src.h, idx.h, ref);
  gpu().scatter_rows(src.d, idx.d, pool.d);
  check("scatter_rows", "5 rows into [40, 24]", ref, pool.d, 0.0, 0.0);
  // From a strided source (a column slice of a wider activation) and host indices.
  Pair wide = rand({3, 30});
  Tensor ref2 = ref.contiguous();
  cpu().scatter_rows(wide.h.slice(1, 2, 26), idx.h.slice(0, 0, 3), ref2);
  gpu().scatter_rows(wide.d.slice(1, 2, 26), idx.h.slice(0, 0, 3), pool.d);
  check("scatter_rows", "strided source, host indices", ref2, pool.d, 0.0, 0.0);
  // Index -1 leaves its row unwritten (the padding rows of a recorded decode step).
  Pair skip = ints({-1, 3, -1, 38, -1}, {5});
  Tensor ref3 = ref2.contiguous();
  cpu().scatter_rows(src.h, skip.h, ref3);
  gpu().scatter_rows(src.d, skip.d, pool.d);
  check("scatter_rows", "-1 rows skipped", ref3, pool.d, 0.0, 0.0);
}

TEST_F(LatentDecode, AttentionMatchesTheCpuReference) {
  const LatentCase cases[] = {
      // tiny golden dims: 4 heads (one padded group), rank 16
      {"tiny h4 r16 pt4 lens 1,5,4,9", 4, 16, 8, 4, {1, 5, 4, 9}, 3, 0},
      // moe-2b dims, one row per sequence (decode), page boundaries at 16
      {"h16 r512 dr64 pt16 decode", 16, 512, 64, 16, {1, 15, 16, 17, 33, 100}, 1, 0},
      // many rows per sequence (a prefill chunk), forked pages
      {"h16 r512 dr64 pt16 chunk rows", 16, 512, 64, 16, {40, 70}, 24, 0},
      // few rows, long contexts: the split-KV path and its combine
      {"h16 r512 dr64 pt64 split-KV 3000", 16, 512, 64, 64, {3000, 2048}, 1, 0},
      // 20 heads: two head groups, the second partly padded; rank between 256 and 512
      {"h20 r384 dr32 pt16", 20, 384, 32, 16, {50, 300}, 2, 0},
      // 128 heads (DeepSeek-V3): 8 head groups
      {"h128 r512 dr64 pt64", 128, 512, 64, 64, {200, 1}, 2, 0},
      // DSA key lists (-1 padded, shuffled), short and split
      {"DSA h16 r512 topk 32", 16, 512, 64, 16, {10, 90}, 3, 32},
      {"DSA h16 r512 topk 2048 split", 16, 512, 64, 64, {2500}, 2, 2048},
  };
  for (const LatentCase& c : cases) run_case(c);
  // The one-MMA TF32 path of DeepSeek's dims (rank 512, dim 576); the others have no TF32 path.
  for (const LatentCase& c : cases)
    if (c.rank == 512 && c.dr == 64) run_case(c, true);
}

TEST_F(LatentDecode, AttentionReadBandwidthOnLongContexts) {
  if (!perf_enabled()) GTEST_SKIP() << "SHOAL_NO_PERF";
  // moe-2b's attention: 16 heads, rank 512, dr 64; every sequence 4,096 tokens in pages of 64.
  for (int64_t batch : {1, 8, 64}) {
    const int64_t h = 16, rank = 512, dim = 576, len = 4096, pt = 64, np = len / pt;
    Tensor pool = gpu().empty({batch * len, dim});
    Tensor qq = gpu().empty({batch, h, dim});
    Tensor hq = rand_host({batch, h, dim}), hp = rand_host({1024, dim});
    gpu().copy(hq, qq);
    for (int64_t r = 0; r < batch * len; r += 1024) {
      Tensor dst = pool.slice(0, r, r + 1024);
      gpu().copy(hp, dst);
    }
    std::vector<int32_t> bt(static_cast<size_t>(batch * np)), rs(static_cast<size_t>(batch)),
        rl(static_cast<size_t>(batch), int32_t(len));
    std::iota(bt.begin(), bt.end(), 0);
    std::iota(rs.begin(), rs.end(), 0);
    Pair tbl = ints(bt, {batch, np}), rsq = ints(rs, {batch}), rln = ints(rl, {batch});
    Tensor out = gpu().empty({batch, h, rank});
    double us = time_us([&] {
      gpu().latent_attention(qq, pool, pt, tbl.d, rsq.d, rln.d, len, nullptr, 0.07f, out);
    });
    double bytes = double(batch) * len * dim * 4;
    perf_bytes("latent_attention",
               "batch " + std::to_string(batch) + " x 4096 (" +
                   std::to_string(int(100 * bytes / (us * 1e3) / 4200 + 0.5)) + "% of 4.2 TB/s)",
               us, bytes);
  }
}

// --- the model through the device cache ---

// As test_golden_cuda.cpp: SHOAL_TEST_DATA in the environment, the source tree, ./tests/data.
std::string data_dir() {
  if (const char* env = std::getenv("SHOAL_TEST_DATA")) return env;
  if (std::filesystem::exists(SHOAL_TEST_DATA "/tiny_v3")) return SHOAL_TEST_DATA;
  return "tests/data";
}

struct GoldenCase {
  std::vector<int32_t> prompt, want;
};

std::vector<GoldenCase> golden_cases(const std::string& name) {
  auto doc = nlohmann::json::parse(std::ifstream(data_dir() + "/" + name + "/generate.json"));
  std::vector<GoldenCase> out;
  for (auto& c : doc.at("cases"))
    out.push_back({c.at("prompt_ids").get<std::vector<int32_t>>(),
                   c.at("greedy_ids").get<std::vector<int32_t>>()});
  return out;
}

double rel_err(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double d = double(a.f32()[i]) - b.f32()[i];
    num += d * d;
    den += double(b.f32()[i]) * b.f32()[i];
  }
  return std::sqrt(num / den);
}

class CachedCuda : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    const std::string reason = cuda_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
    if (!std::filesystem::exists(data_dir() + "/tiny_v3")) GTEST_SKIP() << "no golden data";
    gpu_ = make_cuda_backend(0);
  }
  std::unique_ptr<Backend> gpu_;
};

// Both backends compute the same f32 function (the CPU prefills in MHA mode, the device absorbed);
// the logits agree within the golden f32 tolerance (1e-4 relative, test_golden.cpp).
constexpr double kLogitsTol = 1e-4;

TEST_P(CachedCuda, PrefillAndDecodeMatchTheCpu) {
  const std::string name = GetParam(), dir = data_dir() + "/" + name;
  auto mc = Model::from_pretrained(dir, cpu_backend());
  auto mg = Model::from_pretrained(dir, *gpu_);
  auto cases = golden_cases(name);
  ASSERT_GE(cases.size(), 2u);
  // Two prompts prefilled in one forward, then a fork of the first: three sequences decoding
  // together (the fork's first write copies its shared last page on the device).
  LatentKvCache cc(mc->config(), {4, 64}), cg(mg->config(), {4, 64}, gpu_.get());
  std::vector<int64_t> sc = {cc.add_sequence(), cc.add_sequence()};
  std::vector<int64_t> sg = {cg.add_sequence(), cg.add_sequence()};
  std::vector<std::vector<int32_t>> feed = {cases[0].prompt, cases[1].prompt};
  Tensor lc = mc->forward_cached(cc, sc, feed), lg = mg->forward_cached(cg, sg, feed);
  double worst = rel_err(lg, lc);
  EXPECT_LT(worst, kLogitsTol) << name << " prefill";
  const int64_t v = lc.size(1), a = int64_t(feed[0].size()), b = int64_t(feed[1].size());
  auto argmax_row = [&](const Tensor& t, int64_t r) {
    const float* p = t.f32() + r * v;
    return int32_t(std::max_element(p, p + v) - p);
  };
  std::vector<int32_t> next = {argmax_row(lc, a - 1), argmax_row(lc, a + b - 1)};
  EXPECT_EQ(next[0], cases[0].want[0]) << name;
  EXPECT_EQ(next[1], cases[1].want[0]) << name;
  sc.push_back(cc.fork(sc[0]));
  sg.push_back(cg.fork(sg[0]));
  next.push_back((next[0] + 1) % int32_t(v));  // the fork diverges at once
  CachedForwardOptions last;
  last.last_logits_only = true;
  for (int step = 0; step < 12; ++step) {
    std::vector<std::vector<int32_t>> toks;
    for (int32_t t : next) toks.push_back({t});
    lc = mc->forward_cached(cc, sc, toks, last);
    lg = mg->forward_cached(cg, sg, toks, last);
    ASSERT_EQ(lg.shape(), lc.shape());
    double e = rel_err(lg, lc);
    worst = std::max(worst, e);
    EXPECT_LT(e, kLogitsTol) << name << " decode step " << step;
    for (size_t r = 0; r < next.size(); ++r) {
      next[r] = argmax_row(lc, int64_t(r));
      EXPECT_EQ(argmax_row(lg, int64_t(r)), next[r]) << name << " step " << step << " row " << r;
    }
  }
  for (size_t r = 0; r < sc.size(); ++r) EXPECT_EQ(cg.length(sg[r]), cc.length(sc[r]));
  std::printf(
      "[ cached cuda ] %-14s prefill + 12 decode steps of 3 sequences: worst logits rel "
      "err %.3g (tol %.0e)\n",
      name.c_str(), worst, kLogitsTol);
}

TEST_P(CachedCuda, GreedyGenerateGivesTheGoldenContinuations) {
  const std::string name = GetParam(), dir = data_dir() + "/" + name;
  auto mg = Model::from_pretrained(dir, *gpu_);
  auto mc = Model::from_pretrained(dir, cpu_backend());
  auto cases = golden_cases(name);
  std::vector<std::vector<int32_t>> prompts;
  size_t want_len = cases[0].want.size();
  for (auto& c : cases) prompts.push_back(c.prompt), want_len = std::min(want_len, c.want.size());
  SamplingParams sp;
  sp.greedy = true;
  sp.max_tokens = int64_t(want_len);
  auto gen_g = generate(*mg, prompts, sp);
  auto gen_c = generate(*mc, prompts, sp);
  ASSERT_EQ(gen_g.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int32_t> want(cases[i].want.begin(), cases[i].want.begin() + int64_t(want_len));
    EXPECT_EQ(gen_g[i].ids, want) << name << " prompt " << i;
    EXPECT_EQ(gen_g[i].ids, gen_c[i].ids) << name << " prompt " << i;
  }
  std::printf("[ cached cuda ] %-14s greedy generate(): %zu prompts x %zu tokens as golden\n",
              name.c_str(), cases.size(), want_len);
}

// Decode steps replayed from recorded graphs (Model::set_decode_graphs) against the same steps op
// by op, with bf16 GEMMs (the mode whose MoE experts keep their groups on the device; f32 mode is
// below): three sequences (rows padded to 4 in the recording), then two after one finishes (a
// new key, recorded exactly). The two paths multiply the same bf16 operands; only the GEMMs' row
// counts and the attention's work split differ, so they may differ in f32 summation order (and
// in bf16 roundings that order flips): checked at 1e-3 relative, 30x under the bf16 golden
// tolerance (2^-5), with the same greedy tokens.
TEST_P(CachedCuda, DecodeStepsReplayedAsGraphsMatchOpByOp) {
  const std::string name = GetParam(), dir = data_dir() + "/" + name;
  auto bf16 = make_cuda_backend(0, CudaBackendOptions{CudaGemm::bf16});
  auto mg = Model::from_pretrained(dir, *bf16);
  auto me = Model::from_pretrained(dir, *bf16);
  mg->set_decode_graphs(true);
  me->set_decode_graphs(false);
  auto cases = golden_cases(name);
  LatentKvCache cg(mg->config(), {4, 96}, bf16.get()), ce(me->config(), {4, 96}, bf16.get());
  std::vector<std::vector<int32_t>> feed = {cases[0].prompt, cases[1].prompt, cases[0].prompt};
  std::vector<int64_t> sg, se;
  for (size_t i = 0; i < feed.size(); ++i)
    sg.push_back(cg.add_sequence()), se.push_back(ce.add_sequence());
  CachedForwardOptions last;
  last.last_logits_only = true;
  Tensor lg = mg->forward_cached(cg, sg, feed, last), le = me->forward_cached(ce, se, feed, last);
  const int64_t v = le.size(1);
  auto argmax_row = [&](const Tensor& t, int64_t r) {
    const float* p = t.f32() + r * v;
    return int32_t(std::max_element(p, p + v) - p);
  };
  std::vector<int32_t> next;
  for (int64_t r = 0; r < le.size(0); ++r) next.push_back(argmax_row(le, r));
  double worst = 0;
  for (int step = 0; step < 16; ++step) {
    if (step == 8) {  // the third sequence finishes: two rows from here on
      cg.release(sg.back()), ce.release(se.back());
      sg.pop_back(), se.pop_back(), next.pop_back();
    }
    std::vector<std::vector<int32_t>> toks;
    for (int32_t t : next) toks.push_back({t});
    lg = mg->forward_cached(cg, sg, toks, last);
    le = me->forward_cached(ce, se, toks, last);
    ASSERT_EQ(lg.shape(), le.shape());
    const double e = rel_err(lg, le);
    worst = std::max(worst, e);
    EXPECT_LT(e, 1e-3) << name << " decode step " << step;
    for (size_t r = 0; r < next.size(); ++r) {
      next[r] = argmax_row(le, int64_t(r));
      EXPECT_EQ(argmax_row(lg, int64_t(r)), next[r]) << name << " step " << step << " row " << r;
    }
  }
  for (size_t r = 0; r < sg.size(); ++r) EXPECT_EQ(cg.length(sg[r]), ce.length(se[r]));
  // Per key: one step op by op, then recorded and replayed (8 steps with 3 rows, 8 with 2).
  const auto& st = mg->decode_graph_stats();
  EXPECT_EQ(st.recorded, 2) << st.refused;
  EXPECT_EQ(st.replayed, 14) << st.refused;
  EXPECT_EQ(me->decode_graph_stats().replayed, 0);
  std::printf(
      "[ cached cuda ] %-14s 16 decode steps replayed from %lld graphs (%lld replays) vs op by "
      "op (bf16 GEMMs): worst logits rel err %.3g (tol 1e-3)\n",
      name.c_str(), (long long)st.recorded, (long long)st.replayed, worst);
}

// In f32 GEMM mode the MoE experts' device-offset GEMM falls back to the reference, which reads
// the offsets on the host: a decode step cannot be recorded, says why once, and runs op by op with
// the results of a model that never records.
TEST_P(CachedCuda, UnrecordableDecodeStepsRunOpByOp) {
  const std::string name = GetParam(), dir = data_dir() + "/" + name;
  auto mg = Model::from_pretrained(dir, *gpu_);
  auto me = Model::from_pretrained(dir, *gpu_);
  me->set_decode_graphs(false);
  auto cases = golden_cases(name);
  LatentKvCache cg(mg->config(), {4, 64}, gpu_.get()), ce(me->config(), {4, 64}, gpu_.get());
  std::vector<int64_t> sg = {cg.add_sequence()}, se = {ce.add_sequence()};
  CachedForwardOptions last;
  last.last_logits_only = true;
  mg->forward_cached(cg, sg, {cases[0].prompt}, last);
  me->forward_cached(ce, se, {cases[0].prompt}, last);
  for (int step = 0; step < 4; ++step) {
    Tensor lg = mg->forward_cached(cg, sg, {{int32_t(5 + step)}}, last);
    Tensor le = me->forward_cached(ce, se, {{int32_t(5 + step)}}, last);
    EXPECT_EQ(rel_err(lg, le), 0.0) << name << " step " << step;
  }
  const auto& st = mg->decode_graph_stats();
  EXPECT_EQ(st.recorded, 0);
  EXPECT_EQ(st.replayed, 0);
  EXPECT_NE(st.refused.find("capturing"), std::string::npos) << st.refused;
}

// With bf16 GEMMs a recording reads the weights' bf16 copies directly, so a write to a weight
// that the optimizer did not make (here: scaling the vocab projection) must not leave a replay on
// the stale copy: the model drops its recordings, runs a step op by op (rebuilding the copy) and
// records again. Compared with a model that never records, given the same write.
TEST_P(CachedCuda, RecordedDecodeStepsSeeWeightWrites) {
  const std::string name = GetParam(), dir = data_dir() + "/" + name;
  auto bf16 = make_cuda_backend(0, CudaBackendOptions{CudaGemm::bf16});
  auto mg = Model::from_pretrained(dir, *bf16);
  auto me = Model::from_pretrained(dir, *bf16);
  mg->set_decode_graphs(true);
  me->set_decode_graphs(false);
  auto cases = golden_cases(name);
  LatentKvCache cg(mg->config(), {4, 64}, bf16.get()), ce(me->config(), {4, 64}, bf16.get());
  std::vector<int64_t> sg = {cg.add_sequence(), cg.add_sequence()};
  std::vector<int64_t> se = {ce.add_sequence(), ce.add_sequence()};
  std::vector<std::vector<int32_t>> feed = {cases[0].prompt, cases[1].prompt};
  CachedForwardOptions last;
  last.last_logits_only = true;
  mg->forward_cached(cg, sg, feed, last);
  me->forward_cached(ce, se, feed, last);
  // Logits of bf16 operands: the two paths differ in accumulation order and in bf16 roundings
  // that order flips, well inside the golden bf16 tolerance (2^-5, test_golden_cuda.cpp).
  const double tol = 1.0 / 32;
  double worst = 0;
  for (int step = 0; step < 8; ++step) {
    if (step == 4)
      for (Model* m : {mg.get(), me.get()})
        bf16->scale(m->params().get("lm_head.weight").value, 2.0f);
    std::vector<std::vector<int32_t>> toks = {{int32_t(7 + step)}, {int32_t(11 + step)}};
    Tensor lg = mg->forward_cached(cg, sg, toks, last), le = me->forward_cached(ce, se, toks, last);
    const double e = rel_err(lg, le);
    worst = std::max(worst, e);
    EXPECT_LT(e, tol) << name << " step " << step;
  }
  // Recorded at step 1, dropped at step 4 (op by op), recorded again at step 5.
  EXPECT_EQ(mg->decode_graph_stats().recorded, 2) << mg->decode_graph_stats().refused;
  EXPECT_EQ(mg->decode_graph_stats().replayed, 6);
  std::printf("[ cached cuda ] %-14s bf16, weight written between replays: worst rel err %.3g\n",
              name.c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(Golden, CachedCuda, ::testing::Values("tiny_v3", "tiny_v3_yarn"));

// A model larger than the device's free memory is refused by the constructor, before any of its
// tensors is allocated (or a checkpoint read), with the sizes in the message.
TEST(CachedCudaMemory, AModelTooLargeForTheDeviceSaysSoBeforeAllocating) {
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  if (!std::filesystem::exists(data_dir() + "/tiny_v3")) GTEST_SKIP() << "no golden data";
  auto gpu = make_cuda_backend(0, CudaBackendOptions{CudaGemm::bf16});
  ModelConfig c = ModelConfig::load(data_dir() + "/tiny_v3");
  c.vocab_size = int64_t(1) << 30;  // embedding and head: 2^31 x hidden parameters
  const size_t live = cuda_live_bytes();
  try {
    Model m(c, *gpu);
    FAIL() << "a model of " << parameter_count(c).values << " parameters was built";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("does not fit on the cuda device"), std::string::npos) << what;
    EXPECT_NE(what.find("GiB free of"), std::string::npos) << what;
    std::printf("[ cached cuda ] too large: %s\n", what.c_str());
  }
  EXPECT_EQ(cuda_live_bytes(), live);
}

TEST(CachedCudaDsa, V32DecodingOnTheDeviceIsAClearError) {
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  if (!std::filesystem::exists(data_dir() + "/tiny_v32")) GTEST_SKIP() << "no golden data";
  auto gpu = make_cuda_backend(0);
  auto m = Model::from_pretrained(data_dir() + "/tiny_v32", *gpu);
  LatentKvCache cache(m->config(), {4, 16}, gpu.get());
  int64_t s = cache.add_sequence();
  try {
    m->forward_cached(cache, {s}, {{1, 2, 3}});
    FAIL() << "V3.2 forward_cached on the device did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Sparse Attention"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(s), 0);  // refused before touching the cache
  // A host pointer into a device cache is refused too.
  cache.reserve(s, 1);
  EXPECT_THROW(cache.latent(0, s, 0), Error);
}

}  // namespace
}  // namespace shoal
