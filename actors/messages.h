// The messages the run's actors exchange and the typed interfaces of the actors that serve
// requests. Every type here is serialisable (an `inspect` overload; JSON travels as text), so the
// same actors can later be published over CAF's network layer; message payloads are token ids,
// small records and JSON text — never tensors. Not the actors themselves (one file each).
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "actors/agent_loop.h"
#include "actors/run_store.h"
#include "engine/generate/generate.h"
#include "rl/batch.h"

namespace shoal::actors {

using generate_atom = caf::atom_constant<caf::atom("generate")>;
using gen_done_atom = caf::atom_constant<caf::atom("gen_done")>;
using train_atom = caf::atom_constant<caf::atom("train")>;
using save_atom = caf::atom_constant<caf::atom("save")>;
using load_atom = caf::atom_constant<caf::atom("load")>;
using tool_atom = caf::atom_constant<caf::atom("tool")>;
using verify_atom = caf::atom_constant<caf::atom("verify")>;
using run_atom = caf::atom_constant<caf::atom("run")>;
using collect_atom = caf::atom_constant<caf::atom("collect")>;
using progress_atom = caf::atom_constant<caf::atom("progress")>;
using done_atom = caf::atom_constant<caf::atom("done")>;
using write_atom = caf::atom_constant<caf::atom("write")>;
using event_atom = caf::atom_constant<caf::atom("event")>;
using ckpt_atom = caf::atom_constant<caf::atom("ckpt")>;
using eval_atom = caf::atom_constant<caf::atom("eval")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using reset_atom = caf::atom_constant<caf::atom("reset")>;

// One training step for the engine owner: kind sft | dpo | grpo. For grpo, per sample the
// sampling log-probs (per token), the advantage and whether its group is kept; `options` is the
// stage's objective options as JSON text.
struct TrainRequest {
  std::string kind;
  std::vector<rl::Sample> samples;
  std::vector<std::vector<float>> logprobs;
  std::vector<double> advantages;
  std::vector<uint8_t> keep;
  double lr = 0;
  std::string options = "{}";
};

// A step's numbers (loss, grad_norm, ...), by name.
struct StepMetrics {
  std::map<std::string, double> values;
};

// A tool call routed to the sandbox: the tool, its arguments (JSON text) and a sandbox session
// (empty: stateless).
struct ToolCallMsg {
  std::string name;
  std::string args = "{}";
  std::string session;
};

// A finished episode to score with its task's verifier (task and messages as JSON text).
struct VerifyRequest {
  std::string task;
  std::string messages;
};
struct RewardMsg {
  double value = 0;
  std::string components = "{}";
  std::string reason;
  bool verifier_failed = false;  // the verifier threw: value 0, reason says what happened
};

// One episode to roll out: the task (JSON text), where it belongs (stage, step, group, sample),
// its sampling and limits. `attempt` counts retries after a crashed rollout.
struct EpisodeJob {
  int64_t index = 0;  // position in the collection it belongs to
  std::string task_id, task;
  std::string stage;
  int64_t gstep = 0, group = 0, sample = 0;
  SamplingParams sampling;
  AgentLimits limits;
  int64_t attempt = 0;
};

struct EpisodeResult {
  int64_t index = 0;
  EpisodeRecord record;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double seconds_generate = 0, seconds_tools = 0, seconds_reward = 0;
};

// A GRPO step's episodes for the learner: it computes advantages per group and asks the engine
// owner for `updates` optimizer steps. `options` is the stage's objective options (JSON text).
struct GrpoBatch {
  std::vector<EpisodeRecord> episodes;
  double lr = 0;
  int64_t updates = 1;
  std::string options = "{}";
};

// The engine owner: generation (batched continuously across all requesters) and training steps,
// checkpoint save/load, optimizer reset. Replies to save/load/reset with the weight version.
using engine_actor = caf::typed_actor<
    caf::replies_to<generate_atom, std::vector<int32_t>, SamplingParams>::with<GenOutput>,
    caf::replies_to<train_atom, TrainRequest>::with<StepMetrics>,
    caf::replies_to<save_atom, std::string>::with<int64_t>,
    caf::replies_to<load_atom, std::string>::with<int64_t>,
    caf::replies_to<reset_atom>::with<int64_t>, caf::reacts_to<gen_done_atom, int64_t>>;

// Sandbox tool calls: replies with the result the model reads (JSON text).
using tool_actor = caf::typed_actor<caf::replies_to<tool_atom, ToolCallMsg>::with<std::string>>;

// Verifiers.
using reward_actor = caf::typed_actor<caf::replies_to<verify_atom, VerifyRequest>::with<RewardMsg>>;

// Registers every message type with the actor system (names for serialisation).
void add_message_types(caf::actor_system_config& cfg);

// ---- inspect overloads (CAF serialisation and printing) ----

namespace detail {
// JSON fields travel as text: dumped before saving, parsed after loading.
template <class Inspector, class... Fields>
typename Inspector::result_type inspect_with_json(Inspector& f, const char* name, nlohmann::json& a,
                                                  nlohmann::json& b, Fields&... fields) {
  std::string ta, tb;
  return f(caf::meta::type_name(name), caf::meta::save_callback([&]() -> caf::error {
             ta = a.dump();
             tb = b.dump();
             return caf::none;
           }),
           fields..., ta, tb, caf::meta::load_callback([&]() -> caf::error {
             a = nlohmann::json::parse(ta);
             b = nlohmann::json::parse(tb);
             return caf::none;
           }));
}
}  // namespace detail

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, GenOutput& x) {
  return f(caf::meta::type_name("GenOutput"), x.ids, x.logprobs, x.stopped, x.weight_version);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, AgentLimits& x) {
  return f(caf::meta::type_name("AgentLimits"), x.max_turns, x.max_new_tokens, x.max_episode_tokens,
           x.list_tools);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, TrainRequest& x) {
  return f(caf::meta::type_name("TrainRequest"), x.kind, x.samples, x.logprobs, x.advantages,
           x.keep, x.lr, x.options);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepMetrics& x) {
  return f(caf::meta::type_name("StepMetrics"), x.values);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ToolCallMsg& x) {
  return f(caf::meta::type_name("ToolCallMsg"), x.name, x.args, x.session);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, VerifyRequest& x) {
  return f(caf::meta::type_name("VerifyRequest"), x.task, x.messages);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, RewardMsg& x) {
  return f(caf::meta::type_name("RewardMsg"), x.value, x.components, x.reason, x.verifier_failed);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, EpisodeJob& x) {
  return f(caf::meta::type_name("EpisodeJob"), x.index, x.task_id, x.task, x.stage, x.gstep,
           x.group, x.sample, x.sampling, x.limits, x.attempt);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, EpisodeRecord& x) {
  return detail::inspect_with_json(f, "EpisodeRecord", x.messages, x.components, x.gstep, x.stage,
                                   x.task_id, x.family, x.difficulty, x.group, x.sample,
                                   x.weight_version, x.tokens, x.loss_mask, x.logprobs, x.reward,
                                   x.reason, x.status, x.turns, x.tool_calls, x.invalid_tool_calls);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, GrpoBatch& x) {
  return f(caf::meta::type_name("GrpoBatch"), x.episodes, x.lr, x.updates, x.options);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepRecord& x) {
  nlohmann::json unused;
  return detail::inspect_with_json(f, "StepRecord", x.state, unused, x.gstep, x.stage, x.stage_step,
                                   x.metrics, x.episodes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, CheckpointRecord& x) {
  nlohmann::json unused;
  return detail::inspect_with_json(f, "CheckpointRecord", x.state, unused, x.gstep, x.stage,
                                   x.stage_step, x.path);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, EpisodeResult& x) {
  return f(caf::meta::type_name("EpisodeResult"), x.index, x.record, x.prompt_tokens,
           x.generated_tokens, x.seconds_generate, x.seconds_tools, x.seconds_reward);
}

}  // namespace shoal::actors

namespace shoal {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, SamplingParams& x) {
  return f(caf::meta::type_name("SamplingParams"), x.greedy, x.temperature, x.top_k, x.top_p,
           x.min_p, x.seed, x.max_tokens, x.stop_ids);
}
}  // namespace shoal

namespace shoal::rl {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, Sample& x) {
  return f(caf::meta::type_name("Sample"), x.tokens, x.loss_mask);
}
}  // namespace shoal::rl
