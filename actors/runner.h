// The run: what `shoal train` does. Resolves the config (or reopens runs/NAME to resume), makes
// the task sets (synthesised into runs/NAME/tasks.sqlite), the tokenizer (a file, or trained on
// the task corpus), the model and its policy, starts a local sandbox server when none is given
// (and restarts it if it dies), spawns the actors (engine owner, tool, reward, collector, learner,
// store writer) and runs the stages in order with the eval suites between them, checkpointing as
// it goes. On resume everything after the last checkpoint is dropped from the store and redone
// from the checkpoint's weights, optimizer, weight version and step; the task order and every
// sampling seed derive from the run seed and the step, so nothing else needs restoring.
// Not the command line (cli/train.cpp) and not the report (cli/report.h).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <functional>
#include <string>
#include <vector>

namespace shoal::actors {

struct TrainOptions {
  std::string config_file;             // a new run from this config...
  std::vector<std::string> overrides;  // --set a.b=c
  std::string name;                    // runs/NAME (default: the config's file name + time)
  std::string runs_dir = "runs";
  std::string resume_dir;  // ...or resume runs/NAME
  std::string shoal_exe;   // the shoal binary, to start `shoal sandboxd`
  std::string presets_dir = "configs/models";
  int64_t threads = 0;  // rollout concurrency (0: from the config)
  // Progress events: {"event": "info"|"step"|"eval"|"warning"|"stage", ...}.
  std::function<void(const nlohmann::json&)> on_event;
  // Polled while a stage runs: when it turns true the stage stops after its current step with a
  // checkpoint, and the run ends as "interrupted" (resume continues from there).
  const std::atomic<bool>* interrupt = nullptr;
};

struct TrainResult {
  std::string run_dir;
  bool interrupted = false;
  nlohmann::json evals;  // [{suite, label, gstep, results}]
};

TrainResult run_training(const TrainOptions& options);

}  // namespace shoal::actors
