// The multi-turn agent loop that rollouts, eval and chat share: render the conversation with the
// chat format (the task's tools listed in the system message), generate, parse the turn's tool
// calls, run them, append their outputs as tokens, continue until a final answer, the turn limit or
// the token budget. Generated ids are kept exactly as sampled (never re-tokenized); only prompts
// and tool outputs are tokenized. A malformed tool call is answered with an error the model reads.
// Not an actor: generation and tools are callbacks, so the loop is plain code and testable alone.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/generate/generate.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::actors {

struct GenOutput {
  std::vector<int32_t> ids;     // generated, including the stop id when one was hit
  std::vector<float> logprobs;  // one per id, under the sampling distribution
  bool stopped = false;         // ended on a stop id
  int64_t weight_version = 0;   // the weights that sampled it
};

// Continues `context` (token ids) with the given sampling (max_tokens and stop_ids included); may
// be called from any thread the caller chooses.
using GenerateFn =
    std::function<GenOutput(const std::vector<int32_t>& context, const SamplingParams&)>;
// Runs one tool call; returns what the model reads (a string is used as is, anything else as
// JSON text). Must not throw for bad calls (return {"error": ...}); a throw ends the episode as
// failed.
using ToolFn = std::function<nlohmann::json(const std::string& name, const nlohmann::json& args)>;

struct AgentLimits {
  int64_t max_turns = 4;             // assistant turns
  int64_t max_new_tokens = 64;       // per assistant turn
  int64_t max_episode_tokens = 512;  // prompt + everything after it
  bool list_tools = true;            // put the tools' descriptions in the system message
};

struct AgentEpisode {
  std::vector<int32_t> tokens;     // the whole sequence: prompt, turns, tool outputs
  std::vector<uint8_t> loss_mask;  // 1 where the model generated the token
  std::vector<float> logprobs;     // sampling log-prob where loss_mask is 1, else 0
  nlohmann::json prompt;           // the messages the episode started from (system with tools)
  nlohmann::json messages = nlohmann::json::array();  // what followed, OpenAI form
  int64_t prompt_tokens = 0;
  int64_t turns = 0, tool_calls = 0, invalid_tool_calls = 0;
  // ok: ended with an answer turn; turn_limit: still calling tools at max_turns; truncated: a turn
  // or the episode ran out of tokens.
  std::string status = "ok";
  int64_t min_weight_version = 0, max_weight_version = 0;
};

// The prompt as messages: `messages` with the tools' descriptions appended to (or forming) the
// system message when `list_tools`.
nlohmann::json agent_prompt(const nlohmann::json& messages, const nlohmann::json& tools,
                            bool list_tools);

// One tool call the episode is waiting for (offered tools only; calls of unknown tools are
// answered by the session itself).
struct PendingCall {
  std::string name;
  nlohmann::json args;
};

// One episode as a state machine, so that an actor can drive it with asynchronous generation and
// tool calls: ask need(); when `generate`, continue context() with sampling() and hand the result
// to on_generated(); when `tools`, run pending() and hand their results (same order) to
// on_tool_results(); when `done`, take() the episode. run_agent() drives it synchronously.
class AgentSession {
 public:
  enum class Need { generate, tools, done };
  AgentSession(const Tokenizer& tokenizer, const nlohmann::json& messages,
               const nlohmann::json& tools, const SamplingParams& sampling,
               const AgentLimits& limits);

  Need need() const { return need_; }
  const std::vector<int32_t>& context() const { return ep_.tokens; }
  SamplingParams sampling() const;  // for the next turn (its seed, token budget and stop id)
  void on_generated(const GenOutput& out);
  const std::vector<PendingCall>& pending() const { return pending_; }
  void on_tool_results(const std::vector<nlohmann::json>& results);
  const AgentEpisode& episode() const { return ep_; }
  AgentEpisode take() { return std::move(ep_); }

 private:
  void end_turn();  // the turn is over: stop at the turn limit or generate again
  void append(const std::vector<int32_t>& ids, uint8_t mask);
  bool append_tail(const std::vector<ChatMessage>& before);  // false: over budget (truncated)

  const Tokenizer& tok_;
  nlohmann::json tools_;
  SamplingParams sampling_;
  AgentLimits limits_;
  int32_t eos_ = 0;
  AgentEpisode ep_;
  std::vector<ChatMessage> history_;
  std::vector<PendingCall> pending_;
  std::vector<nlohmann::json> unknown_;  // per call of the turn: an error result, or null
  std::vector<ChatMessage> before_tools_;
  int64_t turn_ = 0;
  bool first_ = true;
  Need need_ = Need::generate;
};

// Runs one episode synchronously. The seed of turn t is sampling.seed + t.
AgentEpisode run_agent(const Tokenizer& tokenizer, const nlohmann::json& messages,
                       const nlohmann::json& tools, const GenerateFn& generate,
                       const ToolFn& run_tool, const SamplingParams& sampling,
                       const AgentLimits& limits);

}  // namespace shoal::actors
