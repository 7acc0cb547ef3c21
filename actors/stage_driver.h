// The stage driver: runs one stage of the pipeline (sft, dpo or grpo) step by step as the run's
// coordinator for that stage. For sft/dpo a step is one training request with the step's
// precomputed batch. For grpo a step is: pick the step's prompts, fan out prompts × group_size
// episodes to the collector, hand the scored episodes to the learner, write the step (metrics,
// episodes, resume state) to the store in one transaction, checkpoint when due. Under a staleness
// bound k the rollouts of steps n+1 … n+k are collected while step n trains; an episode sampled
// with weights older than (current version − k) is never trained on.
// Progress and the end of the stage are reported to `listener`: `progress_atom, json-text` after
// each step and `done_atom, bool ok, text` at the end. Not the run (runner.h) and not the
// episodes' logic (rollout.h).
#pragma once

#include <string>
#include <vector>

#include "actors/messages.h"
#include "actors/run_config.h"

namespace shoal::actors {

struct TaskRef {
  std::string id;    // the task store's id
  std::string task;  // tasks::Task as JSON text (system prompt already applied)
  std::string family;
  int difficulty = 1;
};

struct StageContext {
  StageSpec spec;
  int64_t stage_index = 0;
  int64_t gstep0 = 0;      // global steps before this stage
  int64_t start_step = 0;  // first stage step to run (> 0 on resume)
  int64_t weight_version = 0;
  uint64_t seed = 1;
  int64_t staleness = 0;
  std::string run_dir;
  int64_t checkpoint_every = 0, keep_checkpoints = 2;
  std::string tokenizer_file;  // copied into each checkpoint
  bool list_tools = true;      // the agent prompt describes the tools
  // sft / dpo: the samples of every step (dpo: chosen, rejected, chosen, ...)
  std::vector<std::vector<rl::Sample>> batches;
  // grpo
  std::vector<TaskRef> pool;
  // The adaptive sampler's state and the prompts of steps launched but not trained, from the
  // checkpoint resumed (null: a fresh stage).
  nlohmann::json sampler_state;
};

struct StageActors {
  engine_actor engine;
  caf::actor collector, learner, store, listener;
};

caf::behavior stage_driver(caf::event_based_actor* self, std::shared_ptr<const StageContext> ctx,
                           StageActors actors);

// The learning rate of stage step s (0-based): linear warm-up, then cosine to min_lr_ratio.
double stage_lr(const StageSpec& spec, int64_t step);
// The pool indices of grpo step s's prompts: successive slices of a per-epoch permutation.
std::vector<size_t> step_prompts(size_t pool_size, int64_t step, int64_t per_step, uint64_t seed);
// The seed of one episode's sampling, from the run seed and its place.
uint64_t episode_seed(uint64_t seed, int64_t gstep, int64_t group, int64_t sample);

}  // namespace shoal::actors
