// The run config of `shoal train`: the model (a preset from scratch or a checkpoint), the
// tokenizer (a file, or train one on the task corpus), the task sets, the pipeline of stages
// (sft, dpo, grpo), eval suites, checkpoint cadence and the staleness bound. Parsed from JSON
// (comments, `extends`, `--set`) with every key validated; docs/TRAIN.md documents each key.
// Not the runner: this is data.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "base/json_config.h"

namespace shoal::actors {

// Tasks of one family: `count` tasks at `difficulty`, drawn from the train or eval seed range.
struct TaskSetSpec {
  std::string family;
  int64_t count = 0;
  int64_t difficulty = 1;
};

struct SamplingSpec {
  bool greedy = false;
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
};

struct StageSpec {
  std::string type;  // sft | dpo | grpo
  std::string name;  // defaults to type, made unique ("sft", "sft-2")
  int64_t steps = 100;
  double lr = 1e-3;
  int64_t warmup_steps = 10;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.0;
  double grad_clip = 1.0;
  int64_t batch_tokens = 4096;  // sft/dpo: tokens per optimizer step (packed)
  // Data: task sets (demonstrations for sft, preference pairs for dpo, prompts for grpo) and/or
  // a JSONL file (sft: {"messages": [...]} per line; dpo: {"prompt","chosen","rejected"}).
  std::vector<TaskSetSpec> tasks;
  std::string jsonl;
  // sft: the fraction of task demonstrations given as their final answer alone (tool calls and
  // their outputs left out), as from a teacher that solves those problems without tools.
  double tool_free_demos = 0.0;
  // sft: the fraction whose final message lacks its "ANSWER: ..." line, as from a teacher that
  // does not follow the answer format (drawn after tool_free_demos; the two add up to <= 1).
  double unformatted_demos = 0.0;
  // dpo
  double beta = 0.1;
  std::string dpo_variant = "sigmoid";
  double label_smoothing = 0.0;
  // grpo
  int64_t group_size = 8;
  int64_t prompts_per_step = 8;
  int64_t max_turns = 4;
  int64_t max_new_tokens = 64;  // per assistant turn
  int64_t max_episode_tokens = 512;
  SamplingSpec sampling;
  std::string advantage = "mean_centred";  // mean_centred | mean_std | rloo
  bool filter_equal = false;
  double clip_low = 0.2, clip_high = 0.2;
  std::string aggregation = "token_mean";  // token_mean | sequence_mean | length_unbiased
  std::string kl = "none";                 // none | k1 | k2 | k3 | k3_unbiased
  double kl_coef = 0.0;
  bool keep_sampling_mask = false;
  bool keep_routing = false;
  // After each update, one more forward over its batch to report surrogate_gain (costs about a
  // third of the update; a diagnostic: it changes nothing else).
  bool surrogate_gain = false;
  int64_t updates_per_step = 1;  // optimizer steps over one step's episodes
  // Which prompts a step trains on: "uniform" (successive slices of a shuffled pool) or
  // "adaptive" (tasks/sampler.h: favour the task sets whose recent groups were neither all
  // solved nor all failed, with a share `sampler_explore` of uniform draws).
  std::string sampler = "uniform";
  double sampler_explore = 0.1, sampler_decay = 0.8;
  bool reset_optimizer = true;  // the stage starts with fresh AdamW moments
};

struct EvalSuiteSpec {
  std::string name;
  std::vector<TaskSetSpec> tasks;
  int64_t samples = 1;  // per task (pass@k needs k <= samples)
  SamplingSpec sampling{true};
  int64_t max_turns = 4;
  int64_t max_new_tokens = 64;
};

struct RunConfig {
  uint64_t seed = 1;
  // Model: exactly one of preset (configs/models/NAME.json), config_file (an HF config.json) or
  // checkpoint (an HF directory with weights).
  std::string model_preset, model_config_file, model_checkpoint;
  nlohmann::json model_overrides = nlohmann::json::object();  // merged into the HF config
  double init_std = 0.02;
  // Tokenizer: a tokenizer.json file, or (train_tokenizer) one trained on the task corpus.
  std::string tokenizer_file;
  bool train_tokenizer = false;
  int64_t tokenizer_vocab = 512;
  bool tokenizer_split_digits = false;  // train: one pre-token per digit (BpeTrainer)
  // Sandbox: an endpoint, or empty to start a local server with `sandbox_workers` workers.
  std::string sandbox_endpoint;
  int64_t sandbox_workers = 2;
  std::vector<StageSpec> stages;
  std::vector<EvalSuiteSpec> evals;
  bool eval_before = true;        // run the suites before the first stage
  bool eval_after_stage = true;   // and after every stage
  int64_t checkpoint_every = 50;  // optimizer steps (and at the end of every stage)
  int64_t keep_checkpoints = 2;
  int64_t staleness = 0;  // GRPO: rollouts of step n + k may overlap training of step n
  int64_t max_seq_len = 512;
  std::string system_prompt;           // prepended to every task's system message
  bool replace_system_prompt = false;  // system_prompt replaces the task's system message
  bool list_tools = true;  // describe the offered tools in the system message (rollouts and SFT)

  nlohmann::json resolved;  // the config after extends/--set, as stored in runs/NAME/config.json
};

// An eval suite: an object with name, tasks, samples, sampling, max_turns, max_new_tokens (a
// run config's eval entry, or a file under configs/eval/). Errors name the file and JSON path.
EvalSuiteSpec read_eval_suite(const ConfigReader& reader);
EvalSuiteSpec load_eval_suite(const std::string& file);

// Reads and validates; `overrides` are --set assignments applied in order. Throws shoal::Error
// naming the file, JSON path, expectation and finding.
RunConfig load_run_config(const std::string& file, const std::vector<std::string>& overrides = {});
// The same from an already resolved JSON (runs/NAME/config.json on resume).
RunConfig parse_run_config(const LoadedConfig& loaded);

}  // namespace shoal::actors
