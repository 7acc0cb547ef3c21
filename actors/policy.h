// The policy the engine owner holds: the model, its optimizer, the frozen reference (for DPO and
// GRPO's KL), the continuous-batching scheduler for generation, and one method per kind of
// training step (SFT, DPO, GRPO) built from rl/'s objectives. Generation is thread-safe (many
// rollouts submit at once); training steps and checkpoints must not overlap generation — the
// engine owner runs them at step boundaries and pauses the scheduler around them.
// Not an actor (engine_owner.h wraps it) and not the run's control flow.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/agent_loop.h"
#include "engine/generate/scheduler.h"
#include "engine/model/model.h"
#include "engine/optim/adamw.h"
#include "rl/batch.h"
#include "rl/dpo.h"
#include "rl/grpo.h"
#include "rl/reference.h"

namespace shoal::actors {

struct PolicyConfig {
  AdamWConfig adam;
  double router_bias_gamma = 1e-3;
  int64_t max_batch_tokens = 512;  // scheduler: new tokens per forward
  int64_t max_sequences = 64;
  int64_t cache_pages = 512;
  int64_t page_tokens = 16;
};

// A GRPO sample: the episode's tokens and loss mask, the log-probs recorded when sampling (per
// token, 0 where not generated), its advantage and whether its group was kept.
struct GrpoSample {
  rl::Sample sample;
  std::vector<float> logprobs;
  double advantage = 0;
  bool keep = true;
};

using Metrics = std::map<std::string, double>;

class Policy {
 public:
  Policy(std::unique_ptr<Model> model, const PolicyConfig& config);
  ~Policy();

  Model& model() { return *model_; }
  int64_t weight_version() const { return version_; }

  // Generation through the scheduler (thread-safe; blocks until the completion is done).
  GenOutput generate(const std::vector<int32_t>& context, const SamplingParams& options);
  // The same, asynchronously: on_done runs on the engine thread once the completion is ready;
  // then output() returns it without blocking (tagged with the weights that sampled it).
  std::shared_ptr<RequestHandle> submit(const std::vector<int32_t>& context,
                                        const SamplingParams& options,
                                        std::function<void()> on_done);
  GenOutput output(RequestHandle& handle) const;
  // Stops the scheduler's thread (waiting for nothing: call when no request is in flight) and
  // restarts it; training steps run in between.
  void pause_generation();
  void resume_generation();

  // One optimizer step each, at learning rate lr. Samples are packed into one batch.
  Metrics sft_step(const std::vector<rl::Sample>& samples, double lr);
  // pairs: [chosen_0, rejected_0, chosen_1, ...], each with its prompt in the sample.
  Metrics dpo_step(const std::vector<rl::Sample>& pairs, const rl::DpoConfig& cfg, double lr);
  // surrogate_gain: after the update, a forward over the batch reports the advantage-weighted
  // change of the trained tokens' log-probs (metric surrogate_gain).
  Metrics grpo_step(const std::vector<GrpoSample>& samples, const rl::GrpoConfig& cfg, double lr,
                    bool surrogate_gain = false);
  // Mean log-prob of the masked tokens (for tests and eval metrics), no gradient.
  double mean_logprob(const std::vector<rl::Sample>& samples);

  // The frozen reference: a copy of the current weights, made once (first DPO or KL use) or
  // loaded with the policy's checkpoint.
  void snapshot_reference();
  // Fresh AdamW moments (each stage of a run starts with them).
  void reset_optimizer() { opt_.reset(); }

  // HF directory (config + weights) plus optimizer.safetensors and policy_state.json.
  void save(const std::string& dir);
  void load(const std::string& dir);

 private:
  Metrics finish_step(double loss, double lr, int64_t tokens, double seconds);
  Tensor reference_logprobs(const std::vector<rl::Sample>& samples, const Batch& b);

  std::unique_ptr<Model> model_;
  std::unique_ptr<Model> reference_;
  std::unique_ptr<rl::ReferenceLogprobs> ref_cache_;
  PolicyConfig cfg_;
  AdamW opt_;
  std::unique_ptr<Scheduler> scheduler_;
  bool running_ = false;
  int64_t version_ = 0;
};

}  // namespace shoal::actors
