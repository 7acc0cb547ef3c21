// What `shoal runs` and the run report read from a run store beyond RunStore's own reads: finding
// the store a RUN argument names, opening it read-only with a clear error, and the aggregates over
// steps and episodes (per stage) that the listing, `show` and the report print. Read-only; not the
// store (actors/run_store.h) and not any output format.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "actors/run_store.h"

namespace shoal::cli {

// The run.sqlite that RUN names: a run.sqlite file, a directory holding one, or NAME under
// `runs_dir`. Throws naming what was looked for when none exists.
std::string find_run_store(const std::string& run, const std::string& runs_dir);

// Opens read-only; a file that is not a shoal run store is an error saying so.
std::unique_ptr<actors::RunStore> open_run_store(const std::string& path);

// A meta value ("updated", ...) or "" when the store has none.
std::string run_meta(actors::RunStore& store, const std::string& key);

struct StageSteps {
  std::string stage;
  int64_t steps = 0, first_gstep = 0, last_gstep = 0;
  double first_time = 0, last_time = 0;  // when its first and last steps were written (unix s)
};
// The training stages in the order they ran, from the steps table.
std::vector<StageSteps> stage_steps(actors::RunStore& store);

struct StageEpisodes {
  std::string stage;  // a training stage, or "eval:SUITE@LABEL"
  int64_t count = 0;
  double mean_reward = 0, mean_turns = 0, mean_tool_calls = 0, mean_tokens = 0;
  int64_t invalid_tool_calls = 0, not_ok = 0;  // status other than "ok"
};
// Episode counts and means per stage, in the order the stages first wrote episodes.
std::vector<StageEpisodes> stage_episodes(actors::RunStore& store);

// What the report shows of one episode (no token ids or log-probs).
struct EpisodeView {
  int64_t gstep = 0, difficulty = 0, turns = 0, tool_calls = 0, invalid_tool_calls = 0;
  int64_t tokens = 0, generated_tokens = 0;
  std::string stage, task_id, family, reason, status;
  double reward = 0;
  nlohmann::json messages, components;
};
// Up to `n` episodes of the stage's last step, from the best reward to the worst (the best, the
// worst, then ones between).
std::vector<EpisodeView> sample_episodes(actors::RunStore& store, const std::string& stage, int n);

// An episode as one export line: OpenAI-form messages, reward, components, token counts (keys
// in this order).
nlohmann::ordered_json episode_json(const actors::EpisodeRecord& e);

// "2025-03-01 14:02:11" in local time.
std::string format_time(double unix_seconds);
// "1h 02m", "3m 12s", "8.4 s".
std::string format_duration(double seconds);

}  // namespace shoal::cli
