// `shoal runs` as a user runs it, on a synthetic run written through the RunStore API: list,
// show (text and JSON), export (JSON lines whose counts match the store), report (charts, eval
// tables, escaped conversations, nothing external), an empty run, and the errors for unknown
// runs, files that are not run stores and misplaced options.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "tests/cli/runs_fixture.h"

namespace shoal::test {
namespace {

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));  // throws (fails the test) when invalid
  return out;
}

std::string read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class RunsCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("shoal-runs-cli-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    write_synthetic_run(dir_, "r1");
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string runs(const std::string& args) const {
    return "runs " + args + " --dir " + dir_.string();
  }
  fs::path dir_;
};

TEST_F(RunsCli, ListShowsOneLinePerRun) {
  fs::create_directories(dir_ / "empty");
  actors::RunStore::create((dir_ / "empty" / "run.sqlite").string(), "empty", {});
  fs::create_directories(dir_ / "broken");
  std::ofstream(dir_ / "broken" / "run.sqlite") << "not a database";
  fs::create_directories(dir_ / "not-a-run");  // no run.sqlite: not listed
  ShoalResult r = run_shoal(runs("list"));
  ASSERT_EQ(r.code, 0) << r.out;
  std::istringstream lines(r.out);
  std::string header, broken, empty, r1;
  std::getline(lines, header);
  std::getline(lines, broken);
  std::getline(lines, empty);
  std::getline(lines, r1);
  EXPECT_TRUE(has(header, "STATUS")) << r.out;
  EXPECT_TRUE(has(broken, "unreadable") && has(broken, "not a shoal run store")) << broken;
  EXPECT_TRUE(has(empty, "running")) << empty;
  EXPECT_TRUE(has(r1, "r1") && has(r1, "finished") && has(r1, " 10 ") && has(r1, " 30 ") &&
              has(r1, "reward 0.9") && has(r1, "pass_rate 0.85") && has(r1, "loss -0.06"))
      << r1;
  EXPECT_FALSE(has(r.out, "not-a-run")) << r.out;
}

TEST_F(RunsCli, ShowPrintsStagesEvalsCheckpointsAndEvents) {
  ShoalResult r = run_shoal(runs("show r1"));
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* part :
       {"run r1 (finished)", "10 global steps, 30 episodes, 2 checkpoints", "sft", "4 steps",
        "grpo", "6 steps", "after sft", "50.0%", "75.0%", "runs/ckpt/step_10", "run finished <ok>"})
    EXPECT_TRUE(has(r.out, part)) << part << "\n" << r.out;

  // Also by directory, and by the file itself.
  EXPECT_EQ(run_shoal("runs show " + (dir_ / "r1").string()).code, 0);
  EXPECT_EQ(run_shoal("runs show " + (dir_ / "r1" / "run.sqlite").string()).code, 0);
}

TEST_F(RunsCli, ShowJsonIsOneObject) {
  ShoalResult r = run_shoal(runs("show r1 --json --events 2"), false);
  ASSERT_EQ(r.code, 0) << r.out;
  json j = json::parse(r.out);
  EXPECT_EQ(j["summary"]["steps"], SyntheticRun::kSteps);
  EXPECT_EQ(j["summary"]["episodes"], SyntheticRun::kEpisodes);
  ASSERT_EQ(j["stages"].size(), 2u);
  EXPECT_EQ(j["stages"][0]["stage"], "sft");
  EXPECT_EQ(j["stages"][0]["steps"], SyntheticRun::kSftSteps);
  EXPECT_EQ(j["stages"][1]["first_gstep"], SyntheticRun::kSftSteps + 1);
  EXPECT_EQ(j["evals"].size(), size_t(SyntheticRun::kEvals));
  EXPECT_EQ(j["evals"][2]["results"]["families"]["arithmetic"]["count"], 4);
  EXPECT_EQ(j["checkpoints"].size(), 2u);
  ASSERT_EQ(j["events"].size(), 2u);
  EXPECT_EQ(j["events"][1]["kind"], "done");
  EXPECT_EQ(j["config"]["seed"], 7);
}

TEST_F(RunsCli, ExportEpisodesAsOpenAiMessages) {
  ShoalResult r = run_shoal(runs("export r1"), false);
  ASSERT_EQ(r.code, 0) << r.out;
  auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), size_t(SyntheticRun::kEpisodes));
  for (const auto& e : lines) {
    ASSERT_TRUE(e["messages"].is_array());
    EXPECT_EQ(e["messages"][2]["tool_calls"][0]["function"]["name"], "calculator");
    EXPECT_EQ(e["tokens"], 6);
    EXPECT_EQ(e["generated_tokens"], 3);
    EXPECT_TRUE(e.contains("reward") && e["components"].contains("format")) << e.dump();
  }
  auto grpo = json_lines(run_shoal(runs("export r1 --stage grpo"), false).out);
  EXPECT_EQ(grpo.size(), size_t(SyntheticRun::kGrpoSteps * SyntheticRun::kEpisodesPerStep));
  auto eval = json_lines(run_shoal(runs("export r1 --stage 'eval:arith@after sft'"), false).out);
  ASSERT_EQ(eval.size(), size_t(SyntheticRun::kEvalEpisodes));
  EXPECT_EQ(eval[0]["gstep"], SyntheticRun::kSftSteps);
}

TEST_F(RunsCli, ExportMetricsEvalsEventsToFile) {
  fs::path out = dir_ / "metrics.jsonl";
  ShoalResult r = run_shoal(runs("export r1 --what metrics --out " + out.string()));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "exported " + std::to_string(SyntheticRun::kMetricRows) + " metrics"))
      << r.out;
  auto metrics = json_lines(read(out));
  ASSERT_EQ(metrics.size(), size_t(SyntheticRun::kMetricRows));
  std::set<std::string> keys;
  for (auto& [k, v] : metrics[0].items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"gstep", "stage", "stage_step", "name", "value"}));
  int nulls = 0;
  for (const auto& m : metrics) nulls += m["value"].is_null();
  EXPECT_EQ(nulls, 1);  // the NaN KL
  auto sft = json_lines(run_shoal(runs("export r1 --what metrics --stage sft"), false).out);
  EXPECT_EQ(sft.size(), size_t(SyntheticRun::kSftSteps * SyntheticRun::kSftMetrics));
  auto evals = json_lines(run_shoal(runs("export r1 --what evals"), false).out);
  ASSERT_EQ(evals.size(), size_t(SyntheticRun::kEvals));
  EXPECT_EQ(evals[1]["label"], "after sft");
  auto events = json_lines(run_shoal(runs("export r1 --what events"), false).out);
  EXPECT_EQ(events.size(), size_t(SyntheticRun::kEvents));
}

TEST_F(RunsCli, ReportIsOneSelfContainedPage) {
  ShoalResult r = run_shoal(runs("report r1"));
  ASSERT_EQ(r.code, 0) << r.out;
  fs::path path = dir_ / "r1" / "report.html";
  EXPECT_TRUE(has(r.out, path.string())) << r.out;
  std::string html = read(path);
  EXPECT_EQ(count_of(html, "<svg class=\"chart"), SyntheticRun::kCharts);
  for (const char* id : {"reward", "pass_rate", "kl", "entropy", "response_tokens", "loss",
                         "tokens_per_s", "time_share", "eval_pass_rate"})
    EXPECT_TRUE(has(html, std::string("id=\"") + id + "\"")) << id;
  // Eval tables: a row per eval, per-family and per-difficulty rows.
  for (const char* part :
       {"<table class=\"eval\">", "after grpo", "75.0%", "+50.0", "<table class=\"eval-families\">",
        "<td>countdown</td>", "<table class=\"eval-difficulties\">"})
    EXPECT_TRUE(has(html, part)) << part;
  // Conversations: tool call with its arguments, the tool's output escaped.
  EXPECT_TRUE(has(html, "<b>calculator</b>(<code>{&quot;expression&quot;:&quot;6 * 7&quot;}"));
  EXPECT_TRUE(has(html, "42 &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
  EXPECT_TRUE(has(html, "run finished &lt;ok&gt;"));
  EXPECT_EQ(count_of(html, "<script"), 1) << "only the report's own script";
  EXPECT_FALSE(has(html, " src=")) << "nothing loaded from elsewhere";
  EXPECT_FALSE(has(html, "href=\"http")) << "no external links";
  EXPECT_TRUE(has(html, "Content-Security-Policy"));

  fs::path other = dir_ / "elsewhere.html";
  ASSERT_EQ(run_shoal(runs("report r1 --out " + other.string())).code, 0);
  EXPECT_EQ(count_of(read(other), "<svg class=\"chart"), SyntheticRun::kCharts);
}

TEST_F(RunsCli, EmptyRunStillWorks) {
  { actors::RunStore::create((dir_ / "r1" / "empty.sqlite").string(), "bare", {}); }
  std::string run = (dir_ / "r1" / "empty.sqlite").string();
  ShoalResult show = run_shoal("runs show " + run);
  ASSERT_EQ(show.code, 0) << show.out;
  EXPECT_TRUE(has(show.out, "run bare (running)")) << show.out;
  EXPECT_TRUE(has(show.out, "(no steps yet)")) << show.out;
  ShoalResult exp = run_shoal("runs export " + run, false);
  EXPECT_EQ(exp.code, 0);
  EXPECT_EQ(exp.out, "");
  fs::path out = dir_ / "bare.html";
  ASSERT_EQ(run_shoal("runs report " + run + " --out " + out.string()).code, 0);
  std::string html = read(out);
  EXPECT_TRUE(has(html, "No metrics recorded yet.")) << html;
  EXPECT_TRUE(has(html, "No evals recorded yet."));
  EXPECT_TRUE(has(html, "No episodes recorded yet."));
  EXPECT_EQ(count_of(html, "<svg"), 0);
  EXPECT_TRUE(has(html, "</html>"));
}

TEST_F(RunsCli, ErrorsSayWhatIsWrong) {
  ShoalResult r = run_shoal(runs("show nosuch"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "no run 'nosuch'") && has(r.out, "shoal runs list")) << r.out;

  fs::path text = dir_ / "notes.txt";
  std::ofstream(text) << "hello, I am not a database\n";
  r = run_shoal("runs show " + text.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "is not a shoal run store (not an SQLite database)")) << r.out;

  fs::path other_db = dir_ / "other.sqlite";
  {
    SqliteDb db(other_db.string());
    db.exec("CREATE TABLE t (x INTEGER)");
  }
  r = run_shoal("runs export " + other_db.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "is not a shoal run store (no meta table)")) << r.out;

  fs::create_directories(dir_ / "plain");
  r = run_shoal("runs report " + (dir_ / "plain").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "without a run.sqlite")) << r.out;

  r = run_shoal(runs("export r1 --what evals --stage grpo"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "--stage applies to episodes and metrics")) << r.out;

  r = run_shoal("runs list --dir " + (dir_ / "missing").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "no runs directory")) << r.out;

  EXPECT_EQ(run_shoal("runs show").code, 2);  // RUN is required
  EXPECT_EQ(run_shoal(runs("export r1 --what tokens")).code, 2);
  EXPECT_EQ(run_shoal("runs").code, 2);
}

}  // namespace
}  // namespace shoal::test
