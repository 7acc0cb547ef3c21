// Golden tests: the CPU engine against Hugging Face transformers 5.17 (float64) on the tiny
// DeepSeek-V3 models in tests/data (copied from shared/golden/models): logits, loss and every
// parameter gradient within the tolerances golden/README.md suggests for a float32 engine.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/model/reference_check.h"

namespace shoal {
namespace {

void expect_matches_golden(const std::string& name) {
  std::string dir = std::string(SHOAL_TEST_DATA) + "/" + name;
  auto model = Model::from_pretrained(dir, cpu_backend());
  CheckTolerances tol;  // logits 1e-4, gradients 1e-3, loss 1e-5 (relative)
  CheckReport rep = check_against_reference(*model, dir + "/reference.safetensors",
                                            dir + "/grads.safetensors", tol);
  // logits + loss + one row per reference gradient (every parameter must be covered: see missing).
  ASSERT_GT(rep.rows.size(), 2u);
  for (auto& r : rep.rows) EXPECT_LE(r.error, r.tolerance) << name << ": " << r.name;
  EXPECT_TRUE(rep.missing.empty())
      << "parameters without a reference gradient: " << rep.missing.size();
  EXPECT_TRUE(rep.ok());
}

TEST(Golden, TinyV3LogitsLossAndGradients) {
  expect_matches_golden("tiny_v3");
}
TEST(Golden, TinyV3YarnLogitsLossAndGradients) {
  expect_matches_golden("tiny_v3_yarn");
}

// Configurations beyond the shipped goldens, made by scripts/reference/make_reference.py with
// transformers 5.17.0 (see tests/data/varied/README.md): no q LoRA with 2 dense layers, 4 groups
// / top-2 groups, 3 experts per token, 2 shared experts and unnormalized weights; YaRN with
// mscale != mscale_all_dim (attention factor != 1), half-split RoPE and 3 groups; a
// transformers-4 style config (rope_theta + rope_scaling, factor 40) with every layer MoE.
TEST(Golden, VariedNoQLora) {
  expect_matches_golden("varied/noqlora");
}
TEST(Golden, VariedYarnMscale) {
  expect_matches_golden("varied/yarn_mscale");
}
TEST(Golden, VariedLegacyYarnConfig) {
  expect_matches_golden("varied/legacy_yarn");
}

// A checkpoint shoal wrote (bf16), loaded and run by transformers (tests/data/hf_readback).
TEST(Golden, TransformersReadsWhatShoalWrites) {
  expect_matches_golden("hf_readback/pretrained_bf16");
}

// DeepSeek-V3.2 with DSA: every layer's indexer keeps 8 of up to 24 tokens (really sparse). The
// indexer has no reference gradient (transformers runs it under no_grad; DSA trains it with its
// own KL loss), so its parameters are the ones check-model leaves out.
TEST(Golden, TinyV32LogitsLossAndGradients) {
  expect_matches_golden("tiny_v32");
}

TEST(Golden, GreedyContinuationsMatchTheUncachedReference) {
  // generate.json: for four prompts, 16 greedy ids from a full uncached float64 forward at every
  // step (min_margin, the smallest top-1/top-2 logit gap, is far above float32 rounding). For
  // tiny_v32 this needs the indexer's torch.topk tie-breaking: each step recomputes every row with
  // the new length, and exact ties are broken differently at different lengths (measured: one
  // more token changes the selection of 8 of 720 earlier rows).
  for (std::string name : {"tiny_v3", "tiny_v3_yarn", "tiny_v32"}) {
    std::string dir = std::string(SHOAL_TEST_DATA) + "/" + name;
    auto model = Model::from_pretrained(dir, cpu_backend());
    std::ifstream f(dir + "/generate.json");
    auto doc = nlohmann::json::parse(f);
    ASSERT_EQ(doc.at("cases").size(), 4u);
    ForwardOptions opt;
    opt.keep_logits = true;
    opt.need_backward = false;
    for (auto& c : doc.at("cases")) {
      auto seq = c.at("prompt_ids").get<std::vector<int32_t>>();
      auto want = c.at("greedy_ids").get<std::vector<int32_t>>();
      for (int32_t expected : want) {
        ForwardResult r = model->forward(Batch::next_token({seq}), opt);
        int64_t v = r.logits.size(1), last = r.logits.size(0) - 1;
        const float* row = r.logits.f32() + last * v;
        int32_t best = int32_t(std::max_element(row, row + v) - row);
        ASSERT_EQ(best, expected) << name << ": after " << seq.size() << " tokens";
        seq.push_back(best);
      }
    }
  }
}

}  // namespace
}  // namespace shoal
