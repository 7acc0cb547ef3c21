// Run configs: a full pipeline parses with its defaults; every kind of mistake is an error that
// names the file, the JSON path, the expectation and the finding.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "actors/run_config.h"
#include "base/error.h"

namespace shoal::actors {
namespace {

namespace fs = std::filesystem;

class RunConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("shoal-run-config-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  std::string error_of(const std::string& file, std::vector<std::string> sets = {}) {
    try {
      load_run_config(file, sets);
    } catch (const Error& e) {
      return e.message();
    }
    return "(no error)";
  }
  fs::path dir_;
};

constexpr const char* kPipeline = R"({
  "seed": 7,
  "model": {"preset": "tiny-moe", "overrides": {"hidden_size": 32}},
  "tokenizer": {"train": {"vocab_size": 400}},
  "stages": [
    {"type": "sft", "steps": 20, "tasks": [{"family": "arithmetic", "count": 50}]},
    {"type": "grpo", "steps": 5, "group_size": 4, "prompts_per_step": 2,
     "sampling": {"temperature": 0.9, "top_p": 0.95}, "clip_high": 0.28,
     "tasks": [{"family": "arithmetic", "count": 100, "difficulty": 2}]}
  ],
  "eval": [{"name": "heldout", "tasks": [{"family": "arithmetic", "count": 20}], "samples": 4}],
  "checkpoint": {"every": 10}
})";

TEST_F(RunConfigTest, ParsesAPipelineWithDefaults) {
  RunConfig c = load_run_config(write("run.json", kPipeline));
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.model_preset, "tiny-moe");
  EXPECT_EQ(c.model_overrides["hidden_size"], 32);
  EXPECT_TRUE(c.train_tokenizer);
  EXPECT_EQ(c.tokenizer_vocab, 400);
  ASSERT_EQ(c.stages.size(), 2u);
  EXPECT_EQ(c.stages[0].type, "sft");
  EXPECT_EQ(c.stages[0].lr, 1e-3);  // the sft default
  EXPECT_EQ(c.stages[1].name, "grpo");
  EXPECT_EQ(c.stages[1].group_size, 4);
  EXPECT_DOUBLE_EQ(c.stages[1].sampling.top_p, 0.95);
  EXPECT_DOUBLE_EQ(c.stages[1].clip_low, 0.2);
  EXPECT_DOUBLE_EQ(c.stages[1].clip_high, 0.28);
  EXPECT_EQ(c.stages[1].tasks[0].difficulty, 2);
  ASSERT_EQ(c.evals.size(), 1u);
  EXPECT_EQ(c.evals[0].samples, 4);
  EXPECT_TRUE(c.evals[0].sampling.greedy);  // evals decode greedily unless told otherwise
  EXPECT_EQ(c.checkpoint_every, 10);
  EXPECT_EQ(c.staleness, 0);
  EXPECT_EQ(c.resolved["seed"], 7);
}

TEST_F(RunConfigTest, AnEvalWithATemperatureSamples) {
  std::string f = write("run.json", kPipeline);
  RunConfig c = load_run_config(f, {R"(eval.0.sampling={"temperature": 0.6})"});
  EXPECT_FALSE(c.evals[0].sampling.greedy);
  EXPECT_DOUBLE_EQ(c.evals[0].sampling.temperature, 0.6);
  c = load_run_config(f, {R"(eval.0.sampling={"temperature": 0.6, "greedy": true})"});
  EXPECT_TRUE(c.evals[0].sampling.greedy);
}

TEST_F(RunConfigTest, AnEvalSuiteCanComeFromItsOwnFile) {
  // A --set value's relative paths resolve against the working directory: use absolute ones.
  std::string suite = write("suite.json", R"({"name": "quick", "tasks": [{"family": "countdown",
                          "count": 7}], "sampling": {"temperature": 0.7}})");
  std::string f = write("run.json", kPipeline);
  RunConfig c = load_run_config(f, {R"(eval.0={"suite": ")" + suite + R"("})"});
  ASSERT_EQ(c.evals.size(), 1u);
  EXPECT_EQ(c.evals[0].name, "quick");
  EXPECT_EQ(c.evals[0].tasks[0].family, "countdown");
  EXPECT_EQ(c.evals[0].tasks[0].count, 7);
  EXPECT_FALSE(c.evals[0].sampling.greedy);
  EXPECT_NE(error_of(f, {R"(eval.0={"suite": "missing.json"})"}).find("no such file"),
            std::string::npos);
  std::string bad =
      write("bad.json", R"({"name": "x", "tasks": [{"family": "countdown"}], "tmperature": 1})");
  std::string err = error_of(f, {R"(eval.0={"suite": ")" + bad + R"("})"});
  EXPECT_NE(err.find("bad.json: tmperature: unknown key"), std::string::npos) << err;
}

TEST_F(RunConfigTest, OverridesApplyBeforeValidation) {
  std::string f = write("run.json", kPipeline);
  RunConfig c = load_run_config(f, {"stages.1.steps=9", "staleness=1"});
  EXPECT_EQ(c.stages[1].steps, 9);
  EXPECT_EQ(c.staleness, 1);
  EXPECT_NE(error_of(f, {"stages.1.group_size=1"})
                .find("stages[1].group_size: expected an "
                      "integer in [2, 1024], found 1"),
            std::string::npos);
}

TEST_F(RunConfigTest, DemonstrationVariantsAndTheSamplerAreStageOptions) {
  std::string f = write("run.json", kPipeline);
  RunConfig c = load_run_config(f);
  EXPECT_EQ(c.stages[0].tool_free_demos, 0.0);
  EXPECT_EQ(c.stages[0].unformatted_demos, 0.0);
  EXPECT_EQ(c.stages[1].sampler, "uniform");
  c = load_run_config(f, {"stages.0.unformatted_demos=0.5", "stages.0.tool_free_demos=0.25",
                          "stages.1.sampler=\"adaptive\"", "stages.1.sampler_explore=0.2"});
  EXPECT_DOUBLE_EQ(c.stages[0].unformatted_demos, 0.5);
  EXPECT_DOUBLE_EQ(c.stages[0].tool_free_demos, 0.25);
  EXPECT_EQ(c.stages[1].sampler, "adaptive");
  EXPECT_DOUBLE_EQ(c.stages[1].sampler_explore, 0.2);
  EXPECT_DOUBLE_EQ(c.stages[1].sampler_decay, 0.8);
  std::string e = error_of(f, {"stages.0.unformatted_demos=0.7", "stages.0.tool_free_demos=0.5"});
  EXPECT_NE(e.find("stages[0].unformatted_demos: tool_free_demos + unformatted_demos must be at "
                   "most 1"),
            std::string::npos)
      << e;
  // Demonstration variants are sft options; the sampler is a grpo option.
  EXPECT_NE(error_of(f, {"stages.1.unformatted_demos=0.5"}).find("unknown key"), std::string::npos);
  EXPECT_NE(error_of(f, {"stages.0.sampler=\"adaptive\""}).find("unknown key"), std::string::npos);
  EXPECT_NE(error_of(f, {"stages.1.sampler=\"greedy\""}).find("expected one of uniform, adaptive"),
            std::string::npos);
}

TEST_F(RunConfigTest, MistakesNameFilePathAndWhatWasFound) {
  std::string base = write("base.json", kPipeline);
  auto expect_error = [&](const std::string& text, const std::string& needle) {
    std::string f = write("bad.json", text);
    std::string e = error_of(f);
    EXPECT_NE(e.find(needle), std::string::npos) << "config: " << text << "\nerror: " << e;
  };
  expect_error(R"({"extends": "base.json", "stages": [{"type": "sft", "stpes": 3,
                "tasks": [{"family": "arithmetic"}]}]})",
               "bad.json: stages[0].stpes: unknown key");
  expect_error(R"({"extends": "base.json", "seed": "one"})",
               "bad.json: seed: expected an integer, found a string (\"one\")");
  expect_error(R"({"extends": "base.json", "stages": [{"type": "ppo"}]})",
               "stages[0].type: expected one of sft, dpo, grpo, found \"ppo\"");
  expect_error(R"({"extends": "base.json", "model": {"checkpoint": "no/such/dir"}})",
               "give exactly one of");
  expect_error(R"({"extends": "base.json", "model": {"preset": null, "checkpoint": "nodir"}})",
               "model.checkpoint: not a model directory");
  expect_error(R"({"extends": "base.json", "tokenizer": {"train": null, "file": "missing.json"}})",
               "tokenizer.file: no such file: " + (dir_ / "missing.json").string());
  expect_error(R"({"extends": "base.json", "stages": [{"type": "sft",
                "jsonl": "nothere.jsonl"}]})",
               "stages[0].jsonl: no such file");
  expect_error(R"({"extends": "base.json", "stages": [{"type": "grpo"}]})",
               "stages[0].tasks: a grpo stage needs task sets");
  expect_error(R"({"extends": "base.json", "stages": []})", "stages: a run needs at least one");
  expect_error(R"({"extends": "base.json", "eval": [{"name": "x", "tasks": [{"count": 3}]}]})",
               "eval[0].tasks[0].family: required");
  expect_error(R"({"extends": "base.json", "stages": [3]})",
               "stages[0]: expected an object, found an integer (3)");
}

}  // namespace
}  // namespace shoal::actors
