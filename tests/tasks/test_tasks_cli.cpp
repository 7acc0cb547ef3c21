// `shoal tasks` as a user runs it: families, synth with progress, list, show, export (JSONL in
// OpenAI message form with demonstrations or pairs), and the usage errors (exit 2) and failures
// (exit 1) for unknown families, bad counts and missing stores.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "tests/cli/cli_runner.h"

namespace {

using shoal::test::has;
using shoal::test::run_shoal;
using shoal::test::ShoalResult;

namespace fs = std::filesystem;
using json = nlohmann::json;

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() / ("shoal_tasks_cli_" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
};

TEST(TasksCli, FamiliesListsOneLinePerFamily) {
  ShoalResult r = run_shoal("tasks families");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* name : {"arithmetic", "function_calling", "countdown"})
    EXPECT_TRUE(has(r.out, name)) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line))
    EXPECT_GT(line.find(' '), 0u) << "name, then a description: " << line;
}

TEST(TasksCli, UsageErrorsExitTwo) {
  TempDir t;
  std::string store = " --store " + (t.dir / "s.sqlite").string();
  ShoalResult r = run_shoal("tasks synth --family nosuch --count 3" + store);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_TRUE(has(r.out, "nosuch")) << r.out;
  r = run_shoal("tasks synth --family arithmetic --count 0" + store);
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_shoal("tasks synth --family arithmetic --count many" + store);
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_shoal("tasks synth --family arithmetic --count 3 --difficulty 7" + store);
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_shoal("tasks synth --family arithmetic --count 3 --split test" + store);
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_shoal("tasks export --with everything" + store);
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_shoal("tasks");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_FALSE(fs::exists(t.dir / "s.sqlite")) << "no store is created by a usage error";
}

// `tasks check`: one line per family and difficulty, a total, exit 0 when no seed fails; no store.
TEST(TasksCli, CheckSweepsSeedsWithoutAStore) {
  ShoalResult r = run_shoal(
      "tasks check --family arithmetic --family api_world --difficulty 1 "
      "--difficulty 3 --seeds 15 --from 100",
      false);
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* line :
       {"arithmetic         d1: seeds 100..114, 0 failed",
        "arithmetic         d3: seeds 100..114, 0 failed",
        "api_world          d1: seeds 100..114, 0 failed",
        "api_world          d3: seeds 100..114, 0 failed", "0 of 60 seeds failed"})
    EXPECT_TRUE(has(r.out, line)) << line << " in:\n" << r.out;
  r = run_shoal("tasks check --family zebra --seeds 4 --generate-only", false);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "zebra              d5: seeds 0..3, 0 failed")) << r.out;
  EXPECT_TRUE(has(r.out, "0 of 20 seeds failed to generate")) << r.out;
  EXPECT_EQ(run_shoal("tasks check --family nosuch").code, 2);
  EXPECT_EQ(run_shoal("tasks check --seeds 0").code, 2);
  EXPECT_EQ(run_shoal("tasks check --difficulty 6").code, 2);
}

TEST(TasksCli, MissingOrCorruptStoreFailsWithOneMessage) {
  TempDir t;
  ShoalResult r = run_shoal("tasks list --store " + (t.dir / "none.sqlite").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "does not exist")) << r.out;
  std::ofstream(t.dir / "bad.sqlite")
      << "garbage garbage garbage garbage garbage garbage garbage garbage garbage";
  r = run_shoal("tasks export --store " + (t.dir / "bad.sqlite").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "not a shoal task store")) << r.out;
}

TEST(TasksCli, SynthListShowExport) {
  TempDir t;
  std::string store = " --store " + (t.dir / "tasks.sqlite").string();
  ShoalResult r =
      run_shoal("tasks synth --family countdown --count 12 --difficulty 3 --split train" + store);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "synth countdown: 12/12")) << "progress: " << r.out;
  EXPECT_TRUE(has(r.out, "added 12 countdown tasks")) << r.out;
  r = run_shoal("tasks synth --family arithmetic --count 5 --split eval" + store);
  ASSERT_EQ(r.code, 0) << r.out;

  r = run_shoal("tasks list" + store);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "countdown") && has(r.out, "arithmetic") && has(r.out, "eval")) << r.out;
  r = run_shoal("tasks list --limit 0" + store);
  EXPECT_TRUE(has(r.out, "12 tasks") && has(r.out, "5 tasks")) << r.out;

  r = run_shoal("tasks show 1" + store, false);
  ASSERT_EQ(r.code, 0) << r.out;
  json shown = json::parse(r.out);
  EXPECT_EQ(shown["family"], "countdown");
  EXPECT_TRUE(shown.contains("demonstration") && shown.contains("rejected"));
  EXPECT_EQ(run_shoal("tasks show 99" + store).code, 1);

  for (const char* with : {"none", "demos", "pairs"}) {
    r = run_shoal(std::string("tasks export --family countdown --with ") + with + store, false);
    ASSERT_EQ(r.code, 0) << r.out;
    std::istringstream lines(r.out);
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
      json j = json::parse(line);
      ++n;
      EXPECT_EQ(j["family"], "countdown");
      EXPECT_TRUE(j["tools"].is_array());
      if (std::string(with) == "pairs") {
        EXPECT_TRUE(j["prompt"].is_array() && j["chosen"].is_array() && j["rejected"].is_array());
        EXPECT_NE(j["chosen"], j["rejected"]);
        continue;
      }
      const json& m = j["messages"];
      EXPECT_EQ(m[0]["role"], "system");
      EXPECT_EQ(m[1]["role"], "user");
      if (std::string(with) == "demos") {
        // OpenAI form: calls carry ids and JSON-string arguments; each tool message answers one.
        std::set<std::string> ids;
        for (const auto& msg : m)
          if (msg.contains("tool_calls"))
            for (const auto& c : msg["tool_calls"]) {
              EXPECT_TRUE(c["function"]["arguments"].is_string());
              ids.insert(c["id"].get<std::string>());
            }
        int tools = 0;
        for (const auto& msg : m)
          if (msg["role"] == "tool") {
            ++tools;
            EXPECT_EQ(ids.count(msg["tool_call_id"].get<std::string>()), 1u);
          }
        EXPECT_GT(tools, 0);
        EXPECT_EQ(m.back()["role"], "assistant");
      }
    }
    EXPECT_EQ(n, 12) << with;
  }
  fs::path out = t.dir / "eval.jsonl";
  r = run_shoal("tasks export --split eval --with demos --out " + out.string() + store);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(out);
  int n = 0;
  for (std::string line; std::getline(f, line);) ++n;
  EXPECT_EQ(n, 5);
}

}  // namespace
