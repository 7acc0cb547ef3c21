// `shoal eval`: the unbiased pass@k estimator against hand-computed values, the paired bootstrap
// interval on constructed cases, the suite summary on constructed episodes, then the command on a
// tiny model (tests/cli/chat_model_fixture.h): results.json's structure and the consistency of its
// numbers (counts, per-family and per-difficulty sums, pass@1 equal to the observed fraction,
// pass@k recomputed from the per-task counts and monotone in k), the same tasks and results on a
// second run, --baseline side by side with a paired interval, and the bad-input errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "actors/eval.h"
#include "base/error.h"
#include "tests/cli/chat_model_fixture.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using shoal::actors::pass_at_k;
using shoal::test::has;
using shoal::test::run_shoal;

// ---- the estimator ----

TEST(PassAtK, MatchesHandComputedValues) {
  // n = 5 samples, c = 2 passed: 1 - C(3,k)/C(5,k).
  EXPECT_NEAR(pass_at_k(5, 2, 1), 0.4, 1e-12);                  // 1 - 3/5
  EXPECT_NEAR(pass_at_k(5, 2, 2), 0.7, 1e-12);                  // 1 - 3/10
  EXPECT_NEAR(pass_at_k(5, 2, 3), 0.9, 1e-12);                  // 1 - 1/10
  EXPECT_NEAR(pass_at_k(5, 2, 4), 1.0, 1e-12);                  // every 4-subset holds a pass
  EXPECT_NEAR(pass_at_k(4, 1, 2), 0.5, 1e-12);                  // 1 - 3/6
  EXPECT_NEAR(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0, 1e-12);  // 1 - C(7,5)/C(10,5)
  EXPECT_EQ(pass_at_k(8, 0, 3), 0.0);
  EXPECT_EQ(pass_at_k(8, 8, 1), 1.0);
  EXPECT_NEAR(pass_at_k(200, 13, 1), 13.0 / 200.0, 1e-12);  // pass@1 is the fraction
  // Large n stays finite and in [0, 1] (the product form, no factorials).
  double big = pass_at_k(1000, 10, 100);
  EXPECT_GT(big, 0.6);
  EXPECT_LT(big, 1.0);
}

TEST(PassAtK, RejectsImpossibleCounts) {
  EXPECT_THROW(pass_at_k(3, 4, 1), shoal::Error);  // c > n
  EXPECT_THROW(pass_at_k(3, 1, 4), shoal::Error);  // k > n
  EXPECT_THROW(pass_at_k(3, 1, 0), shoal::Error);  // k < 1
  EXPECT_THROW(pass_at_k(0, 0, 1), shoal::Error);
}

// ---- the paired interval ----

TEST(PairedBootstrap, ConstantDifferenceHasAZeroWidthInterval) {
  std::vector<double> a = {0, 1, 0.5, 0.25, 1, 0}, b;
  for (double x : a) b.push_back(x + 0.25);
  auto d = shoal::actors::paired_bootstrap(a, b);
  EXPECT_NEAR(d.mean, 0.25, 1e-12);
  EXPECT_NEAR(d.low, 0.25, 1e-12);
  EXPECT_NEAR(d.high, 0.25, 1e-12);
  EXPECT_EQ(d.pairs, 6);
}

TEST(PairedBootstrap, SmallCaseMatchesTheBinomialPercentiles) {
  // Differences {1, 0, 0, 0}: a resampled mean is Binomial(4, 1/4) / 4, whose 2.5th percentile is
  // 0 (P(0) = 0.316) and 97.5th is 0.75 (P(<= 0.5) = 0.949, P(<= 0.75) = 0.996).
  auto d = shoal::actors::paired_bootstrap({0, 0, 0, 0}, {1, 0, 0, 0});
  EXPECT_NEAR(d.mean, 0.25, 1e-12);
  EXPECT_NEAR(d.low, 0.0, 1e-12);
  EXPECT_NEAR(d.high, 0.75, 1e-12);
  // Swapping the models negates the interval.
  auto r = shoal::actors::paired_bootstrap({1, 0, 0, 0}, {0, 0, 0, 0});
  EXPECT_NEAR(r.mean, -0.25, 1e-12);
  EXPECT_NEAR(r.low, -0.75, 1e-12);
  EXPECT_NEAR(r.high, 0.0, 1e-12);
}

TEST(PairedBootstrap, LargeSampleAgreesWithTheNormalApproximation) {
  // 400 paired tasks whose differences have mean 0.1 and a known spread: the percentile interval
  // is close to mean +- 1.96 sd / sqrt(n).
  std::mt19937_64 rng(7);
  std::bernoulli_distribution pa(0.4), pb(0.5);
  std::vector<double> a, b;
  for (int i = 0; i < 400; ++i) {
    a.push_back(pa(rng));
    b.push_back(pb(rng));
  }
  double mean = 0, sq = 0;
  for (size_t i = 0; i < a.size(); ++i) mean += b[i] - a[i];
  mean /= 400;
  for (size_t i = 0; i < a.size(); ++i) sq += std::pow(b[i] - a[i] - mean, 2);
  double se = std::sqrt(sq / 399) / std::sqrt(400.0);
  auto d = shoal::actors::paired_bootstrap(a, b);
  EXPECT_NEAR(d.mean, mean, 1e-12);
  EXPECT_NEAR(d.low, mean - 1.96 * se, 0.15 * 1.96 * se);
  EXPECT_NEAR(d.high, mean + 1.96 * se, 0.15 * 1.96 * se);
  // A fixed seed: the same interval every time.
  auto again = shoal::actors::paired_bootstrap(a, b);
  EXPECT_EQ(d.low, again.low);
  EXPECT_EQ(d.high, again.high);
}

// ---- the summary ----

shoal::actors::EpisodeResult episode(int64_t task, bool pass, int64_t calls, int64_t invalid,
                                     int64_t tokens, int64_t turns) {
  shoal::actors::EpisodeResult r;
  r.index = 0;
  r.record.group = task;
  r.record.reward = pass ? 1.0 : 0.25;
  r.record.tool_calls = calls;
  r.record.invalid_tool_calls = invalid;
  r.record.turns = turns;
  r.record.status = "ok";
  r.generated_tokens = tokens;
  return r;
}

TEST(EvalSummary, CountsPassAtKAndGroupsFromConstructedEpisodes) {
  std::vector<shoal::actors::EvalTask> tasks = {
      {"1", "{}", "arithmetic", 1}, {"2", "{}", "arithmetic", 2}, {"3", "{}", "countdown", 2}};
  // Task 0: 2 of 4 pass; task 1: none; task 2: all 4.
  std::vector<shoal::actors::EpisodeResult> eps;
  for (int s = 0; s < 4; ++s) eps.push_back(episode(0, s < 2, 2, s == 0 ? 1 : 0, 10, 2));
  for (int s = 0; s < 4; ++s) eps.push_back(episode(1, false, 1, 0, 20, 1));
  for (int s = 0; s < 4; ++s) eps.push_back(episode(2, true, 0, 0, 30, 1));
  json r = shoal::actors::summarize_eval(eps, tasks, 4, 2.0, true);
  EXPECT_EQ(r["count"], 12);
  EXPECT_EQ(r["passed"], 6);
  EXPECT_EQ(r["tasks"], 3);
  EXPECT_NEAR(r["pass_rate"].get<double>(), 0.5, 1e-12);
  EXPECT_NEAR(r["mean_reward"].get<double>(), (6 * 1.0 + 6 * 0.25) / 12, 1e-12);
  // pass@k averages the per-task estimator: (pass(4,2,k) + 0 + 1) / 3.
  for (int k = 1; k <= 4; ++k)
    EXPECT_NEAR(r["pass_at_k"][std::to_string(k)].get<double>(), (pass_at_k(4, 2, k) + 1) / 3,
                1e-12)
        << k;
  EXPECT_NEAR(r["pass_at_k"]["2"].get<double>(), (1 - 1.0 / 6 + 1) / 3, 1e-12);
  // 12 calls, 1 invalid.
  EXPECT_EQ(r["tool_calls"], 12);
  EXPECT_NEAR(r["valid_tool_call_rate"].get<double>(), 11.0 / 12, 1e-12);
  EXPECT_NEAR(r["tokens_per_episode"].get<double>(), 20.0, 1e-12);
  EXPECT_NEAR(r["turns_per_episode"].get<double>(), 16.0 / 12, 1e-12);
  EXPECT_EQ(r["families"]["arithmetic"]["count"], 8);
  EXPECT_NEAR(r["families"]["arithmetic"]["pass_rate"].get<double>(), 0.25, 1e-12);
  EXPECT_EQ(r["families"]["countdown"]["count"], 4);
  EXPECT_EQ(r["difficulties"]["1"]["count"], 4);
  EXPECT_EQ(r["difficulties"]["2"]["count"], 8);
  EXPECT_NEAR(r["difficulties"]["2"]["pass_rate"].get<double>(), 0.5, 1e-12);
  ASSERT_EQ(r["per_task"].size(), 3u);
  EXPECT_EQ(r["per_task"][0]["passed"], 2);
  EXPECT_EQ(r["per_task"][2]["n"], 4);
}

TEST(EvalSummary, AnInterruptedEvalCountsOnlyWhatRan) {
  std::vector<shoal::actors::EvalTask> tasks = {{"1", "{}", "arithmetic", 1},
                                                {"2", "{}", "arithmetic", 1}};
  std::vector<shoal::actors::EpisodeResult> eps = {
      episode(0, true, 1, 0, 5, 1), episode(0, false, 1, 0, 5, 1), episode(1, true, 1, 0, 5, 1)};
  eps.push_back({});
  eps.back().index = -1;  // never ran
  json r = shoal::actors::summarize_eval(eps, tasks, 2, 1.0, true);
  EXPECT_EQ(r["count"], 3);
  // pass@2 only over the task with 2 episodes; pass@1 over both.
  EXPECT_NEAR(r["pass_at_k"]["1"].get<double>(), (0.5 + 1.0) / 2, 1e-12);
  EXPECT_NEAR(r["pass_at_k"]["2"].get<double>(), 1.0, 1e-12);
}

// ---- the command ----

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() /
          ("shoal_eval_cli_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
};

fs::path write_suite(const fs::path& dir, const json& suite, const std::string& name = "suite") {
  fs::path p = dir / (name + ".json");
  std::ofstream(p) << suite.dump(2);
  return p;
}

json small_suite() {
  return {{"name", "tiny"},
          {"tasks",
           {{{"family", "arithmetic"}, {"count", 4}, {"difficulty", 1}},
            {{"family", "countdown"}, {"count", 2}, {"difficulty", 2}}}},
          {"samples", 1},
          {"sampling", {{"greedy", true}}},
          {"max_turns", 2},
          {"max_new_tokens", 24}};
}

json read_json(const fs::path& p) {
  std::ifstream f(p);
  return json::parse(f);
}

TEST(EvalCli, SuiteRunWritesConsistentResults) {
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  TempDir t;
  fs::path suite = write_suite(t.dir, small_suite());
  auto r = run_shoal("eval --model " + m.model.string() + " --suite " + suite.string() +
                     " --samples 3 --temperature 1 --out " + (t.dir / "out").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "episodes/s")) << r.out;
  EXPECT_TRUE(has(r.out, "pass@3")) << r.out;
  ASSERT_TRUE(fs::exists(t.dir / "out" / "results.json"));
  ASSERT_TRUE(fs::exists(t.dir / "out" / "report.html"));
  json res = read_json(t.dir / "out" / "results.json");
  EXPECT_EQ(res["suite"]["name"], "tiny");
  EXPECT_EQ(res["suite"]["samples"], 3);
  EXPECT_FALSE(res["suite"]["sampling"]["greedy"].get<bool>());
  EXPECT_FALSE(res["interrupted"].get<bool>());
  EXPECT_EQ(res["model"]["dir"], m.model.string());
  const json& a = res["results"];
  EXPECT_EQ(a["tasks"], 6);
  EXPECT_EQ(a["count"], 18);
  // Per-family and per-difficulty counts add up to the whole.
  int64_t fam = 0, diff = 0, passed_f = 0;
  for (auto& [k, v] : a["families"].items()) {
    fam += v["count"].get<int64_t>();
    passed_f += v["passed"].get<int64_t>();
  }
  for (auto& [k, v] : a["difficulties"].items()) diff += v["count"].get<int64_t>();
  EXPECT_EQ(fam, 18);
  EXPECT_EQ(diff, 18);
  EXPECT_EQ(a["families"]["arithmetic"]["count"], 12);
  EXPECT_EQ(a["families"]["countdown"]["count"], 6);
  EXPECT_EQ(a["difficulties"]["2"]["count"], 6);
  EXPECT_EQ(passed_f, a["passed"].get<int64_t>());
  // pass@1 is the observed fraction; pass@k recomputed from the per-task counts; monotone in k.
  ASSERT_EQ(a["per_task"].size(), 6u);
  int64_t passed = 0;
  for (const json& pt : a["per_task"]) {
    EXPECT_EQ(pt["n"], 3);
    passed += pt["passed"].get<int64_t>();
  }
  EXPECT_EQ(passed, a["passed"].get<int64_t>());
  EXPECT_NEAR(a["pass_rate"].get<double>(), static_cast<double>(passed) / 18, 1e-12);
  EXPECT_NEAR(a["pass_at_k"]["1"].get<double>(), a["pass_rate"].get<double>(), 1e-12);
  double prev = -1;
  for (int k = 1; k <= 3; ++k) {
    double want = 0;
    for (const json& pt : a["per_task"]) want += pass_at_k(3, pt["passed"].get<int64_t>(), k);
    double got = a["pass_at_k"][std::to_string(k)].get<double>();
    EXPECT_NEAR(got, want / 6, 1e-12) << k;
    EXPECT_GE(got, prev) << k;
    prev = got;
  }
  EXPECT_GE(a["valid_tool_call_rate"].get<double>(), 0.0);
  EXPECT_LE(a["valid_tool_call_rate"].get<double>(), 1.0);
  EXPECT_GT(a["tokens_per_episode"].get<double>(), 0.0);
  EXPECT_GE(a["turns_per_episode"].get<double>(), 1.0);
  // Throughput, measured over the whole suite.
  EXPECT_EQ(a["throughput"]["episodes"], 18);
  EXPECT_GT(a["throughput"]["episodes_per_s"].get<double>(), 0.0);
  EXPECT_GT(a["throughput"]["generated_tokens_per_s"].get<double>(), 0.0);
  std::ifstream html(t.dir / "out" / "report.html");
  std::string page((std::istreambuf_iterator<char>(html)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(has(page, "Content-Security-Policy"));
  EXPECT_TRUE(has(page, "<svg"));  // the pass@k chart
  EXPECT_TRUE(has(page, "countdown"));
}

TEST(EvalCli, SameTasksAndResultsOnASecondRun) {
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  TempDir t;
  fs::path suite = write_suite(t.dir, small_suite());
  std::string base = "eval --model " + m.model.string() + " --suite " + suite.string();
  auto r1 = run_shoal(base + " --out " + (t.dir / "a").string());
  auto r2 = run_shoal(base + " --out " + (t.dir / "b").string());
  ASSERT_EQ(r1.code, 0) << r1.out;
  ASSERT_EQ(r2.code, 0) << r2.out;
  json a = read_json(t.dir / "a" / "results.json")["results"];
  json b = read_json(t.dir / "b" / "results.json")["results"];
  EXPECT_EQ(a["per_task"], b["per_task"]);
  EXPECT_EQ(a["pass_rate"], b["pass_rate"]);
  EXPECT_EQ(a["tokens_per_episode"], b["tokens_per_episode"]);
}

TEST(EvalCli, BaselineIsComparedOnTheSameTasks) {
  const auto& m = shoal::test::tiny_chat_model();
  ASSERT_TRUE(m.error.empty()) << m.error;
  TempDir t;
  fs::path suite = write_suite(t.dir, small_suite());
  auto r = run_shoal("eval --model " + m.model.string() + " --baseline " + m.middle.string() +
                     " --suite " + suite.string() + " --samples 2 --temperature 1 --out " +
                     (t.dir / "out").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "baseline")) << r.out;
  EXPECT_TRUE(has(r.out, "95% CI")) << r.out;
  EXPECT_TRUE(has(r.out, "throughput (baseline)")) << r.out;
  json res = read_json(t.dir / "out" / "results.json");
  ASSERT_TRUE(res.contains("baseline"));
  ASSERT_TRUE(res.contains("comparison"));
  const json& a = res["results"];
  const json& b = res["baseline"]["results"];
  EXPECT_EQ(res["baseline"]["model"]["dir"], m.middle.string());
  EXPECT_EQ(b["count"], 12);
  // The same tasks, in the same order.
  ASSERT_EQ(a["per_task"].size(), b["per_task"].size());
  for (size_t i = 0; i < a["per_task"].size(); ++i)
    EXPECT_EQ(a["per_task"][i]["id"], b["per_task"][i]["id"]);
  const json& c = res["comparison"]["pass_rate"];
  EXPECT_NEAR(c["model"].get<double>(), a["pass_rate"].get<double>(), 1e-12);
  EXPECT_NEAR(c["baseline"].get<double>(), b["pass_rate"].get<double>(), 1e-12);
  EXPECT_NEAR(c["difference"].get<double>(),
              a["pass_rate"].get<double>() - b["pass_rate"].get<double>(), 1e-12);
  EXPECT_LE(c["ci95_low"].get<double>(), c["difference"].get<double>() + 1e-12);
  EXPECT_GE(c["ci95_high"].get<double>(), c["difference"].get<double>() - 1e-12);
  EXPECT_EQ(c["tasks"], 6);
  const json& mr = res["comparison"]["mean_reward"];
  EXPECT_NEAR(mr["difference"].get<double>(),
              a["mean_reward"].get<double>() - b["mean_reward"].get<double>(), 1e-9);
  EXPECT_TRUE(has(res["comparison"]["method"].get<std::string>(), "bootstrap"));
}

TEST(EvalCli, BadInputsGiveOneClearError) {
  TempDir t;
  // A directory that looks like a model (the checks come before anything is loaded).
  fs::path model = t.dir / "model";
  fs::create_directories(model);
  std::ofstream(model / "config.json") << "{}";
  std::ofstream(model / "tokenizer.json") << "{}";
  fs::path good = write_suite(t.dir, small_suite());
  auto run = [&](const std::string& args) { return run_shoal("eval " + args); };
  auto one_line = [](const std::string& out) {
    return std::count(out.begin(), out.end(), '\n') == 1;
  };

  auto r = run("--model " + (t.dir / "nope").string() + " --suite " + good.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "nope: no such directory")) << r.out;
  EXPECT_TRUE(one_line(r.out)) << r.out;

  fs::path bare = t.dir / "bare";
  fs::create_directories(bare);
  std::ofstream(bare / "config.json") << "{}";
  r = run("--model " + bare.string() + " --suite " + good.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "has no tokenizer.json: give --tokenizer FILE")) << r.out;

  r = run("--model " + model.string() + " --suite " + (t.dir / "missing.json").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "missing.json: no such file")) << r.out;

  json bad = small_suite();
  bad["samples"] = "two";
  fs::path bad_type = write_suite(t.dir, bad, "bad_type");
  r = run("--model " + model.string() + " --suite " + bad_type.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "bad_type.json")) << r.out;
  EXPECT_TRUE(has(r.out, "samples: expected an integer")) << r.out;
  EXPECT_TRUE(one_line(r.out)) << r.out;

  json typo = small_suite();
  typo["tasks"][1]["difficuly"] = 2;
  fs::path typo_file = write_suite(t.dir, typo, "typo");
  r = run("--model " + model.string() + " --suite " + typo_file.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "typo.json")) << r.out;
  EXPECT_TRUE(has(r.out, "tasks[1].difficuly: unknown key")) << r.out;

  json family = small_suite();
  family["tasks"][0]["family"] = "alchemy";
  fs::path family_file = write_suite(t.dir, family, "family");
  r = run("--model " + model.string() + " --suite " + family_file.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "tasks[0].family")) << r.out;
  EXPECT_TRUE(has(r.out, "alchemy")) << r.out;

  fs::path not_json = t.dir / "not.json";
  std::ofstream(not_json) << "{\"name\": ";
  r = run("--model " + model.string() + " --suite " + not_json.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "not.json")) << r.out;

  r = run("--model " + model.string() + " --suite " + good.string() + " --samples 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "--samples must be at least 1 (got 0)")) << r.out;
  EXPECT_TRUE(one_line(r.out)) << r.out;

  r = run("--model " + model.string() + " --suite " + good.string() + " --temperature 1000");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "--temperature must be between 0")) << r.out;

  r = run("--suite " + good.string());
  EXPECT_EQ(r.code, 2);  // a usage error: --model is required
  EXPECT_TRUE(has(r.out, "--model")) << r.out;
}

}  // namespace
