// The rollout actor: runs one episode of the agent loop asynchronously — asks the engine owner for
// each assistant turn, runs the turn's tool calls (sandbox tools through the tool actors, the
// task's own environment tools in-process), asks the reward actor for the score — and answers the
// request that started it with the whole episode, then quits. One actor per episode, so a crash
// loses only that episode (the collector retries it). Rollouts exchange token ids and records,
// never tensors, and never re-tokenize generated text.
// Not the agent loop's logic (agent_loop.h) and not the scheduling of many episodes (collector.h).
#pragma once

#include <memory>
#include <vector>

#include "actors/messages.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::sandbox {
class Client;
}

namespace shoal::actors {

struct RolloutDeps {
  std::shared_ptr<const Tokenizer> tokenizer;
  engine_actor engine;
  std::vector<tool_actor> tools;  // empty: sandbox tools run in-process through the environment
  reward_actor reward;
  // For families whose environment lives in the sandbox (files): a client, or null.
  std::shared_ptr<sandbox::Client> environment_sandbox;
  int64_t tool_timeout_ms = 30000;  // a tool call that takes longer is answered with an error
};

// Rollouts against the sandbox server at `endpoint`: `tool_actors` tool actors (30 s per call), a
// reward actor, and `environment` for the families whose environment lives in the sandbox.
RolloutDeps sandbox_rollout_deps(caf::actor_system& sys, std::shared_ptr<const Tokenizer> tokenizer,
                                 engine_actor engine, const std::string& endpoint,
                                 int64_t tool_actors, std::shared_ptr<sandbox::Client> environment);

// The rollout's behaviour: `run_atom, EpisodeJob` → EpisodeResult.
caf::behavior rollout_actor(caf::event_based_actor* self, RolloutDeps deps);

}  // namespace shoal::actors
