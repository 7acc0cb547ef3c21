// A synthetic training run for the `shoal runs` tests, written through the RunStore API the way
// the trainer writes one: an eval before, an SFT stage (4 steps), an eval, a GRPO stage (6 steps,
// 4 episodes each with tool calls), an eval, checkpoints and events. Also runs the shoal binary
// (cli_runner.h). Test support only.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "actors/run_store.h"
#include "tests/cli/cli_runner.h"

namespace shoal::test {

namespace fs = std::filesystem;
using json = nlohmann::json;

// What the synthetic run holds (the tests check the commands' outputs against these).
struct SyntheticRun {
  static constexpr int kSteps = 10, kSftSteps = 4, kGrpoSteps = 6, kEpisodesPerStep = 4;
  static constexpr int kEvalEpisodes = 2, kEvals = 3;
  static constexpr int kEpisodes = kGrpoSteps * kEpisodesPerStep + kEvals * kEvalEpisodes;
  static constexpr int kSftMetrics = 7, kGrpoMetrics = 16;
  static constexpr int kMetricRows = kSftSteps * kSftMetrics + kGrpoSteps * kGrpoMetrics;
  // reward, pass_rate, kl, entropy, response_tokens, loss, tokens/s, grad_norm, clip_frac, lr,
  // time shares, tokens (an "other" metric), eval pass rate.
  static constexpr int kCharts = 13;
  static constexpr int kEvents = 4;
};

inline actors::EpisodeRecord synthetic_episode(int64_t gstep, const std::string& stage, int i) {
  actors::EpisodeRecord e;
  e.gstep = gstep;
  e.stage = stage;
  e.task_id = "arithmetic-" + std::to_string(100 + i);
  e.family = i % 2 ? "countdown" : "arithmetic";
  e.difficulty = 1 + i % 3;
  e.group = i / 2;
  e.sample = i % 2;
  e.weight_version = gstep;
  e.tokens = {10, 11, 12, 13, 14, 15};
  e.loss_mask = {0, 0, 1, 1, 0, 1};
  e.logprobs = {0, 0, -0.5f, -0.25f, 0, -1};
  e.messages = json::array(
      {{{"role", "system"}, {"content", "You can call tools."}},
       {{"role", "user"}, {"content", "What is 6 * 7?"}},
       {{"role", "assistant"},
        {"content", nullptr},
        {"tool_calls",
         {{{"type", "function"},
           {"function", {{"name", "calculator"}, {"arguments", "{\"expression\": \"6 * 7\"}"}}}}}}},
       {{"role", "tool"},
        {"tool_call_id", "call_0_0"},
        {"content", "42 <script>alert('x')</script>"}},
       {{"role", "assistant"}, {"content", "ANSWER: 42"}}});
  e.reward = (i + gstep) % 2 ? 1.0 : 0.25 * i;
  e.components = {{"correct", e.reward > 0.9 ? 1 : 0}, {"format", 1}};
  e.reason = e.reward > 0.9 ? "answer 42 matches" : "answer differs";
  e.status = i == 3 ? "truncated" : "ok";
  e.turns = 2;
  e.tool_calls = 1;
  return e;
}

inline json synthetic_eval(double pass_rate) {
  return {{"pass_rate", pass_rate},
          {"mean_reward", pass_rate + 0.05},
          {"count", 8},
          {"families",
           {{"arithmetic", {{"pass_rate", pass_rate + 0.1}, {"count", 4}}},
            {"countdown", {{"pass_rate", pass_rate - 0.1}, {"count", 4}}}}},
          {"difficulties", {{"1", {{"pass_rate", pass_rate}, {"count", 8}}}}}};
}

// Writes runs_dir/NAME/run.sqlite with the contents SyntheticRun describes.
inline void write_synthetic_run(const fs::path& runs_dir, const std::string& name) {
  fs::create_directories(runs_dir / name);
  json config = {{"seed", 7},
                 {"model", {{"preset", "tiny"}}},
                 {"stages",
                  {{{"type", "sft"}, {"steps", SyntheticRun::kSftSteps}},
                   {{"type", "grpo"}, {"steps", SyntheticRun::kGrpoSteps}, {"group_size", 2}}}},
                 {"eval", {{{"name", "arith"}, {"tasks", {{{"family", "arithmetic"}}}}}}}};
  auto store = actors::RunStore::create((runs_dir / name / "run.sqlite").string(), name, config);
  store->event("start", "run started");
  auto eval = [&](const std::string& label, int64_t gstep, double pass_rate) {
    store->write_eval("arith", label, gstep, synthetic_eval(pass_rate));
    std::vector<actors::EpisodeRecord> eps;
    for (int i = 0; i < SyntheticRun::kEvalEpisodes; ++i)
      eps.push_back(synthetic_episode(gstep, "eval:arith@" + label, i));
    store->write_episodes(eps);
  };
  eval("before", 0, 0.25);
  int64_t gstep = 0;
  for (int s = 1; s <= SyntheticRun::kSftSteps; ++s) {
    actors::StepRecord st;
    st.gstep = ++gstep;
    st.stage = "sft";
    st.stage_step = s;
    st.metrics = {{"loss", 2.0 / s},
                  {"lr", 1e-3},
                  {"grad_norm", 1.5},
                  {"tokens", 4096},
                  {"train_tokens_per_s", 900 + s},
                  {"time_train", 4.5},
                  {"time_store", 0.5}};
    store->write_step(st);
  }
  store->write_checkpoint({gstep, "sft", SyntheticRun::kSftSteps, "runs/ckpt/step_4", json{}});
  eval("after sft", gstep, 0.5);
  store->event("stage", "sft finished");
  for (int s = 1; s <= SyntheticRun::kGrpoSteps; ++s) {
    actors::StepRecord st;
    st.gstep = ++gstep;
    st.stage = "grpo";
    st.stage_step = s;
    st.metrics = {{"loss", -0.01 * s},
                  {"lr", 1e-4},
                  {"grad_norm", 0.7},
                  {"reward", 0.3 + 0.1 * s},
                  {"pass_rate", 0.25 + 0.1 * s},
                  {"kl", s == 3 ? std::nan("") : 0.01 * s},  // a gap in the KL curve
                  {"entropy", 1.2 - 0.05 * s},
                  {"response_tokens", 40.0 + s},
                  {"clip_frac", 0.02},
                  {"tokens", 2048},
                  {"rollout_tokens_per_s", 300 + 10 * s},
                  {"train_tokens_per_s", 800},
                  {"time_rollout", 6},
                  {"time_reward", 0.5},
                  {"time_train", 3},
                  {"time_store", 0.2}};
    for (int i = 0; i < SyntheticRun::kEpisodesPerStep; ++i)
      st.episodes.push_back(synthetic_episode(gstep, "grpo", i));
    store->write_step(st);
  }
  store->write_checkpoint({gstep, "grpo", SyntheticRun::kGrpoSteps, "runs/ckpt/step_10", json{}});
  eval("after grpo", gstep, 0.75);
  store->event("stage", "grpo finished");
  store->event("done", "run finished <ok>");
  store->set_status("finished");
}

inline int count_of(const std::string& text, const std::string& part) {
  int n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

}  // namespace shoal::test
