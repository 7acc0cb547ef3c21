// `shoal train` as a user runs it: a shortened quickstart end to end (task synthesis, tokenizer
// training, SFT, evals, GRPO with calculator calls through a local sandbox server, checkpoints,
// the report), resume after kill -9 at random moments compared with an uninterrupted run of the
// same seed, and the bad-input errors (unknown key, wrong type, missing file, unwritable run
// directory, a run that already exists).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>

#include "actors/run_store.h"
#include "tests/cli/cli_runner.h"

namespace {

using shoal::test::has;
using shoal::test::run_shoal;
using shoal::test::ShoalResult;

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kQuickstart = std::string(SHOAL_TEST_DATA) + "/../../configs/quickstart.json";

// The quickstart, shortened: fewer tasks, steps and eval episodes, a smaller tokenizer.
std::string short_run(const std::string& extra = "") {
  return kQuickstart +
         " --set stages.0.steps=4 --set stages.0.tasks.0.count=48"
         " --set stages.1.steps=3 --set stages.1.prompts_per_step=2 --set stages.1.group_size=4"
         " --set stages.1.tasks.0.count=48 --set eval.0.tasks.0.count=12"
         " --set eval.1.tasks.0.count=12"
         " --set checkpoint.every=2 " +
         extra;
}

struct TempDir {
  fs::path dir;
  TempDir() {
    dir = fs::temp_directory_path() /
          ("shoal_train_cli_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
};

// Everything a run recorded that must not depend on interruptions: metrics (without timings),
// evals, the episodes' tokens, sampling log-probs and rewards.
json fingerprint(const fs::path& run) {
  auto store = shoal::actors::RunStore::open((run / "run.sqlite").string(), true);
  json out = {{"metrics", json::array()}, {"evals", json::array()}, {"episodes", json::array()}};
  for (const auto& m : store->metrics()) {
    bool timing = m.name.rfind("time_", 0) == 0 || m.name.rfind("share_", 0) == 0 ||
                  m.name.find("per_s") != std::string::npos;
    if (!timing) out["metrics"].push_back({m.gstep, m.stage, m.name, m.value});
  }
  for (json e : store->evals()) {
    for (const char* k : {"seconds"}) e["results"].erase(k);
    out["evals"].push_back(e);
  }
  for (const auto& e : store->episodes())
    out["episodes"].push_back(
        {e.gstep, e.stage, e.task_id, e.group, e.sample, e.reward, e.status, e.tokens, e.logprobs});
  return out;
}

TEST(TrainCli, ShortQuickstartRunsEndToEnd) {
  TempDir t;
  ShoalResult r =
      run_shoal("train " + short_run() + " --runs-dir " + t.dir.string() + " --name qs");
  ASSERT_EQ(r.code, 0) << r.out;
  fs::path run = t.dir / "qs";
  for (const char* f :
       {"config.json", "run.sqlite", "tasks.sqlite", "tokenizer.json", "report.html"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  EXPECT_TRUE(has(r.out, "== stage sft")) << r.out;
  EXPECT_TRUE(has(r.out, "== stage grpo")) << r.out;
  EXPECT_TRUE(has(r.out, "eval held-out @ after-grpo")) << r.out;

  auto store = shoal::actors::RunStore::open((run / "run.sqlite").string(), true);
  std::map<std::string, int> steps;
  for (const auto& m : store->metrics())
    if (m.name == "loss") steps[m.stage]++;
  EXPECT_EQ(steps["sft"], 4);
  EXPECT_EQ(steps["grpo"], 3);
  json evals = store->evals();
  // Two suites (sampled and greedy), after-sft and after-grpo (eval_before is false).
  ASSERT_EQ(evals.size(), 4u) << evals.dump();
  std::map<std::string, int> labels;
  for (const json& e : evals) {
    labels[e["label"].get<std::string>()]++;
    EXPECT_EQ(e["results"]["count"], 12);
  }
  EXPECT_EQ(labels["after-sft"], 2);
  EXPECT_EQ(labels["after-grpo"], 2);
  // GRPO episodes: 3 steps x 2 prompts x 4 samples, each with tokens, a loss mask over what the
  // model generated, and its conversation; calculator calls went through the sandbox.
  auto eps = store->episodes("grpo");
  ASSERT_EQ(eps.size(), 24u);
  int64_t calls = 0;
  for (const auto& e : eps) {
    EXPECT_EQ(e.tokens.size(), e.loss_mask.size());
    EXPECT_EQ(e.tokens.size(), e.logprobs.size());
    EXPECT_TRUE(e.messages.is_array() && e.messages.size() >= 3);
    calls += e.tool_calls;
  }
  // Checkpoints: every 2 steps and at each stage's end, the newest 2 kept.
  json cks = store->checkpoints();
  ASSERT_FALSE(cks.empty());
  EXPECT_EQ(cks.back()["gstep"], 7);
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step_7" / "config.json"));
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step_7" / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step_2"));
  // The store keeps the record of every checkpoint and says which are still on disk.
  int on_disk = 0;
  for (const json& c : cks) {
    bool there =
        fs::is_directory(run / "checkpoints" / ("step_" + std::to_string(c["gstep"].get<int>())));
    EXPECT_EQ(c["on_disk"].get<bool>(), there) << c.dump();
    on_disk += there;
  }
  EXPECT_EQ(on_disk, 2) << cks.dump();

  ShoalResult show = run_shoal("runs show " + run.string());
  EXPECT_EQ(show.code, 0) << show.out;
  EXPECT_TRUE(has(show.out, "step_2  (removed: checkpoint.keep)")) << show.out;
  (void)calls;
}

TEST(TrainCli, ResumeAfterKillMatchesAnUninterruptedRun) {
  TempDir t;
  // Longer than the other tests' run, so that kills land in every phase.
  std::string longer = short_run("--no-report --set stages.0.steps=12 --set stages.1.steps=6");
  auto t0 = std::chrono::steady_clock::now();
  ShoalResult a =
      run_shoal("train " + longer + " --runs-dir " + t.dir.string() + " --name straight");
  ASSERT_EQ(a.code, 0) << a.out;
  int run_ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count());
  json want = fingerprint(t.dir / "straight");

  // The same run, killed with SIGKILL at random moments, resumed each time until it finishes.
  std::mt19937 rng(static_cast<unsigned>(getpid()));
  std::string args = "train " + longer + " --runs-dir " + t.dir.string() + " --name killed";
  int kills = 0;
  for (int attempt = 0; attempt < 12; ++attempt) {
    std::string cmd = std::string(SHOAL_BINARY) + " " + args + " >/dev/null 2>&1";
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Up to 4 kills, each somewhere in the first 60% of what the whole run took (runs vary).
    int delay_ms = kills < 4 ? std::uniform_int_distribution<int>(run_ms / 20, run_ms * 6 / 10)(rng)
                             : 10 * run_ms;
    int status = 0;
    bool exited = false;
    for (int waited = 0; waited < delay_ms; waited += 20) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (exited) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "attempt " << attempt;
      break;
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ++kills;
    if (fs::exists(t.dir / "killed" / "run.sqlite"))
      args = "train --resume " + (t.dir / "killed").string() + " --no-report";
    else
      fs::remove_all(t.dir / "killed");  // killed before the store existed: start again
  }
  // Whatever is left, finish it.
  if (fs::exists(t.dir / "killed" / "run.sqlite")) {
    auto store = shoal::actors::RunStore::open((t.dir / "killed" / "run.sqlite").string(), true);
    if (store->summary().value("status", "") != "finished") {
      ShoalResult r = run_shoal("train --resume " + (t.dir / "killed").string() + " --no-report");
      ASSERT_EQ(r.code, 0) << r.out;
    }
  }
  EXPECT_GE(kills, 1);
  json got = fingerprint(t.dir / "killed");
  // Bit for bit: metrics, evals and episodes (tokens and the log-probs they were sampled with).
  // Which episodes share a decoding batch depends on timing, but generation on the CPU is batch
  // invariant (backend.h: BatchInvariance), so timing changes no bit.
  ASSERT_EQ(got["metrics"].size(), want["metrics"].size());
  for (size_t i = 0; i < got["metrics"].size(); ++i)
    if (got["metrics"][i] != want["metrics"][i]) {
      ADD_FAILURE() << "metric " << got["metrics"][i].dump() << " vs straight "
                    << want["metrics"][i].dump();
      break;
    }
  for (const char* part : {"evals", "episodes"})
    for (size_t i = 0; i < std::min(got[part].size(), want[part].size()); ++i)
      if (got[part][i] != want[part][i]) {
        ADD_FAILURE() << part << "[" << i << "]: resumed " << got[part][i].dump().substr(0, 300)
                      << " vs straight " << want[part][i].dump().substr(0, 300);
        break;
      }
  EXPECT_EQ(got["evals"], want["evals"]);
  EXPECT_EQ(got["episodes"].size(), want["episodes"].size());
  EXPECT_EQ(got["episodes"], want["episodes"]);
}

// The run's sandbox server killed mid-run: the run restarts it, records that, and finishes; tool
// calls made while it was away came back as errors the model read (not failures).
TEST(TrainCli, KilledSandboxServerIsRestartedAndTheRunFinishes) {
  TempDir t;
  std::string cmd = std::string(SHOAL_BINARY) + " train " +
                    short_run("--no-report --set stages.1.steps=6") + " --runs-dir " +
                    t.dir.string() + " --name sb >" + (t.dir / "log").string() + " 2>&1";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait for the GRPO stage (tool calls), then kill the run's sandbox server.
  bool killed = false;
  for (int i = 0; i < 1800 && !killed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream log(t.dir / "log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    if (!has(text, "== stage grpo")) continue;
    std::string find = "pgrep -P " + std::to_string(pid) + " -f sandboxd";
    FILE* p = popen(find.c_str(), "r");
    char buf[64] = {0};
    if (p && fgets(buf, sizeof buf, p)) {
      pid_t server = static_cast<pid_t>(std::atoi(buf));
      if (server > 0) killed = kill(server, SIGKILL) == 0;
    }
    if (p) pclose(p);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream log(t.dir / "log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(killed) << text;
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
  EXPECT_TRUE(has(text, "restarting it")) << text;
  auto store = shoal::actors::RunStore::open((t.dir / "sb" / "run.sqlite").string(), true);
  bool recorded = false;
  for (const json& e : store->events()) recorded = recorded || e["kind"] == "sandbox_restart";
  EXPECT_TRUE(recorded) << store->events().dump();
  EXPECT_EQ(store->summary()["status"], "finished");
}

TEST(TrainCli, BadConfigsAreClearErrors) {
  TempDir t;
  std::string runs = " --runs-dir " + t.dir.string();
  ShoalResult r = run_shoal("train " + kQuickstart + " --set stages.0.stpes=3" + runs);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "stages[0].stpes: unknown key")) << r.out;

  r = run_shoal("train " + kQuickstart + " --set seed='\"one\"'" + runs);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "seed: expected an integer")) << r.out;

  r = run_shoal("train " + (t.dir / "nope.json").string() + runs);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "nope.json")) << r.out;

  // A run directory that cannot be made: a regular file stands where a directory must go.
  std::ofstream(t.dir / "file") << "x";
  r = run_shoal("train " + kQuickstart + " --runs-dir " + (t.dir / "file").string() + " --name x");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "cannot create the run directory")) << r.out;
  EXPECT_FALSE(has(r.out, "synthesizing")) << "the error must come before any work";

  r = run_shoal("train --resume " + (t.dir / "missing").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "is not a run directory")) << r.out;

  r = run_shoal("train");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "give a config file")) << r.out;
}

}  // namespace
