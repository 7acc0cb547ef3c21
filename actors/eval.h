// Evaluation: eval suites run through the same actors as a run's rollouts (engine owner, rollout
// actors driving the agent loop, tool actors on a sandbox server, the reward actor's verifiers),
// and what is computed from the episodes — pass rate, the unbiased pass@k, mean reward, the
// valid-tool-call rate, turns and tokens per episode, per family and per difficulty — and the
// paired comparison of two models on the same tasks (a bootstrap confidence interval).
// `shoal train` (runner.cpp) uses the pieces between stages; `run_eval` is `shoal eval` without
// its terminal (cli/eval.cpp). docs/EVAL.md defines every number.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "actors/messages.h"
#include "actors/run_config.h"

namespace shoal::sandbox {
class Client;
}
namespace shoal::tasks {
class TaskStore;
struct Task;
}  // namespace shoal::tasks

namespace shoal::actors {

// ---- the numbers ----

// The unbiased estimator of pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k)
// (computed as a product, stable for large n). Requires 0 <= c <= n and 1 <= k <= n.
double pass_at_k(int64_t n, int64_t c, int64_t k);

// The mean of b[i] - a[i] over paired observations, with a 95% percentile bootstrap interval:
// `resamples` resamples of the pairs (indices drawn with replacement, a fixed seed), the 2.5th and
// 97.5th percentiles of the resampled mean differences.
struct PairedDifference {
  double mean = 0, low = 0, high = 0;
  int64_t pairs = 0, resamples = 0;
};
PairedDifference paired_bootstrap(const std::vector<double>& a, const std::vector<double>& b,
                                  int64_t resamples = 10000, uint64_t seed = 20261129);

// ---- the tasks and their episodes ----

// How tasks are shown to the model: the run's prompt settings (a run config's system_prompt,
// replace_system_prompt, list_tools and max_seq_len).
struct PromptSettings {
  std::string system_prompt;
  bool replace_system_prompt = false;
  bool list_tools = true;
  int64_t max_episode_tokens = 512;
};
PromptSettings prompt_settings(const RunConfig& cfg);

// The task as JSON text with the system prompt prepended to (or replacing) its system message.
std::string task_prompt(const tasks::Task& task, const PromptSettings& settings);

struct EvalTask {
  std::string id;    // the task store's id
  std::string task;  // JSON text, prompt settings applied
  std::string family;
  int64_t difficulty = 1;
};

// The suite's tasks from the eval split of `store`, synthesizing what is missing (deterministic:
// consecutive seeds of the eval range). `info` (optional) hears what is being synthesized.
std::vector<EvalTask> eval_suite_tasks(tasks::TaskStore& store, const EvalSuiteSpec& suite,
                                       sandbox::Client* sandbox, const PromptSettings& settings,
                                       const std::function<void(const std::string&)>& info = {});

// One job per (task, sample): group = task index, sample = 0..samples-1, the suite's sampling and
// limits, the episode seed from (seed, gstep, task, sample).
std::vector<EpisodeJob> eval_jobs(const EvalSuiteSpec& suite, const std::vector<EvalTask>& tasks,
                                  const std::string& stage, int64_t gstep, uint64_t seed,
                                  const PromptSettings& settings);

// Whether an episode passed (its reward reached 1).
bool episode_passed(const EpisodeRecord& r);

// The results of a suite from its episodes (each with group = its task's index): pass_rate,
// mean_reward, count, tasks, samples, pass_at_k {"1": ..., "K": ...}, valid_tool_call_rate,
// tool_calls, invalid_tool_calls, tokens_per_episode (generated), turns_per_episode, failed
// (episodes whose rollout failed), seconds, and the same numbers under families / difficulties.
// pass@k averages the estimator over the tasks with at least k episodes. With `per_task`, a
// "per_task" array [{id, family, difficulty, n, passed, mean_reward}] (for paired comparisons).
nlohmann::json summarize_eval(const std::vector<EpisodeResult>& episodes,
                              const std::vector<EvalTask>& tasks, int64_t samples, double seconds,
                              bool per_task = false);

// Runs the jobs through the collector one request each (at most `window` outstanding), so
// results arrive as they finish: on_result hears each (in completion order). Returns them in job
// order. When `interrupt` turns true, no further episode starts; the ones in flight finish and are
// returned with the rest left default (index -1), and *interrupted is set.
std::vector<EpisodeResult> collect_each(caf::scoped_actor& self, const caf::actor& collector,
                                        std::vector<EpisodeJob> jobs, int64_t window,
                                        const std::function<void(const EpisodeResult&)>& on_result,
                                        const std::atomic<bool>* interrupt, bool* interrupted);

// ---- `shoal eval` ----

struct EvalOptions {
  std::string model_dir;           // an HF model directory or a run's checkpoint
  std::string device = "cpu";      // open_backend (engine/device.h): cpu, cuda, cuda:N
  std::string precision = "bf16";  // on a GPU: bf16 or f32 GEMMs and attention
  std::string tokenizer_file;      // default: MODEL/tokenizer.json
  std::string suite_file;          // configs/eval/*.json form
  int64_t samples = 0;             // 0: the suite's
  double temperature = -1;         // < 0: the suite's sampling; 0: greedy; > 0: sampled at T
  std::string baseline_dir, baseline_tokenizer_file;
  std::string out_dir;           // default evals/<model>-<suite>-<time>
  std::string shoal_exe;         // to start `shoal sandboxd`
  std::string sandbox_endpoint;  // a running server instead
  int64_t sandbox_workers = 2;
  int64_t rollouts = 64;  // episodes in flight at once
  uint64_t seed = 1;
  // {"event": "info"|"warning"|"progress"|"model"|"done", ...}
  std::function<void(const nlohmann::json&)> on_event;
  const std::atomic<bool>* interrupt = nullptr;
};

struct EvalOutcome {
  std::string out_dir;
  nlohmann::json results;  // what results.json holds
  bool interrupted = false;
};

// Validates everything before work (a missing model directory or tokenizer, a bad suite file
// with its JSON path, samples < 1, a temperature out of range throw shoal::Error), then evaluates
// the model (and the baseline) and writes out_dir/results.json. The HTML report is the CLI's.
EvalOutcome run_eval(const EvalOptions& options);

// The prompt settings of the run a checkpoint belongs to (RUN/checkpoints/step_N →
// RUN/config.json), if there is one; `found` says where they came from.
PromptSettings prompt_settings_for_model(const std::string& model_dir, std::string* found);

}  // namespace shoal::actors
