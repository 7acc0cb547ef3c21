// The task-family interface: a family generates tasks from (seed, difficulty), runs its
// environment's tools, verifies an episode, demonstrates a correct one and perturbs it into a
// plausible wrong one. Everything is OpenAI-form JSON messages, never tokens. Not the store
// (store.h) and not the agent loop (actors/), which calls Environment::call for each tool call.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace shoal::sandbox {
class Client;
}

namespace shoal::tasks {

using json = nlohmann::json;

inline constexpr int kMinDifficulty = 1;
inline constexpr int kMaxDifficulty = 5;

struct Task {
  std::string family;
  int version = 1;
  uint64_t seed = 0;
  int difficulty = 1;
  json messages = json::array();      // the prompt: system and user messages
  json tools = json::array();         // offered tools, OpenAI function descriptions
  json environment = json::object();  // the world the tools act on (a DB script, a corpus, files)
  json verifier = json::object();     // what verify() checks against (gold answer, gold query...)
  json metadata = json::object();     // anything else worth keeping (template, sizes)
};
json to_json(const Task& task);
Task task_from_json(const json& j);  // throws Error naming a missing or ill-typed field

// What the agent did after the prompt: assistant messages (content and/or tool_calls, with
// arguments as a JSON string) and tool messages (tool_call_id, content).
struct Episode {
  json messages = json::array();
};

// A reward in [0, 1] (1 = solved), its named components and a short reason a person can read.
struct Reward {
  double value = 0;
  json components = json::object();
  std::string reason;
  bool solved() const { return value >= 1.0; }
};

// Thrown by a verifier whose check could not run (the sandbox unreachable, overloaded, or unable
// to start one): not the model's doing, so Family::verify lets it through instead of scoring 0.
class VerifierUnavailable : public Error {
 public:
  using Error::Error;
};

// Per-episode state of a family's environment (an open database, a search index, a sandbox
// session). Families that keep none leave it null.
struct EnvState {
  virtual ~EnvState() = default;
};

class Family {
 public:
  virtual ~Family() = default;
  virtual std::string name() const = 0;
  virtual std::string description() const = 0;  // one line
  virtual int version() const { return 1; }
  // Families whose tools or verifier run code need a sandbox client (demonstrate, verify).
  virtual bool needs_sandbox() const { return false; }

  // Deterministic in (seed, difficulty); difficulty in [kMinDifficulty, kMaxDifficulty].
  Task generate(uint64_t seed, int difficulty) const;
  // Never throws on what the model wrote: garbage gives reward 0 with a reason. Throws only for
  // a task of another family, a missing sandbox, or VerifierUnavailable (the check could not run).
  Reward verify(const Task& task, const Episode& episode, sandbox::Client* sandbox = nullptr) const;
  // A correct trajectory whose tool calls were really executed.
  virtual Episode demonstrate(const Task& task, sandbox::Client* sandbox = nullptr) const = 0;
  // A plausible wrong trajectory derived from `episode` (a slip, a skipped step, a wrong tool...),
  // its tool calls executed again where they changed. Deterministic in seed.
  virtual Episode perturb(const Task& task, const Episode& episode, uint64_t seed,
                          sandbox::Client* sandbox = nullptr) const = 0;

  // The environment's tools, for the agent loop: a fresh state per episode, then one call per
  // tool call. call_tool throws Error for a bad call (unknown tool, bad arguments); the
  // Environment wrapper turns that into {"error": ...} for the model.
  virtual std::unique_ptr<EnvState> open(const Task& task, sandbox::Client* sandbox) const;
  virtual json call_tool(const Task& task, EnvState* state, const std::string& name,
                         const json& args) const;
  // True when `tool` is the sandbox server's tool of that name with no per-episode state here
  // (the calculator of arithmetic and countdown): an agent runtime may then run it on the
  // sandbox server instead of through call_tool, with the same result.
  virtual bool runs_in_sandbox(const std::string& tool) const {
    (void)tool;
    return false;
  }

 protected:
  virtual Task make(uint64_t seed, int difficulty) const = 0;
  virtual Reward check(const Task& task, const Episode& episode,
                       sandbox::Client* sandbox) const = 0;
  Task blank(uint64_t seed, int difficulty) const;  // family, version, seed, difficulty filled
};

// One episode's live environment: owns the family's state and runs tool calls, never throwing
// for a bad call (the error is the result the model reads).
class Environment {
 public:
  Environment(const Family& family, const Task& task, sandbox::Client* sandbox = nullptr);
  json call(const std::string& name, const json& args);
  EnvState* state() { return state_.get(); }

 private:
  const Family& family_;
  const Task& task_;
  std::unique_ptr<EnvState> state_;
};

// Builds an episode by executing tool calls through an Environment.
class Trajectory {
 public:
  explicit Trajectory(Environment& env) : env_(env) {}
  // One assistant turn calling `name`, then the tool message; returns the tool's result.
  json call(const std::string& name, const json& args, const std::string& thought = "");
  // One assistant turn with several calls (parallel), then one tool message each.
  std::vector<json> call_all(const std::vector<std::pair<std::string, json>>& calls);
  void say(const std::string& content);  // an assistant message without tool calls
  Episode take() { return std::move(episode_); }
  const Episode& episode() const { return episode_; }

 private:
  Environment& env_;
  Episode episode_;
  int next_id_ = 1;
};

// ---- helpers families share ----

// The system prompt every family starts with, plus `extra`.
std::string system_prompt(const std::string& extra = "");
json message(const std::string& role, const std::string& content);
// {"type":"function","function":{"name","description","parameters":{object schema}}}
json function_tool(const std::string& name, const std::string& description, json properties,
                   const std::vector<std::string>& required);

// The calculator tool of the families whose only tool it is (arithmetic, countdown): the sandbox
// server's exact calculator, run in-process. Throws Error for another tool name or arguments
// without a string 'expression'.
json call_calculator(const std::string& name, const json& args);

// The content of the episode's final message: the last message when it is an assistant message
// without tool calls whose content is a string; null otherwise. Points into the episode.
const std::string* final_message_text(const Episode& episode);
// The final answer: the last message must be an assistant message without tool calls whose
// content has a line "ANSWER: ..." (the last such line wins); nullopt otherwise.
std::optional<std::string> final_answer(const Episode& episode);
std::string answer_line(const std::string& answer);  // "ANSWER: " + answer

// One tool call the agent made, as found in the episode (garbage tolerated and flagged).
struct ToolCallRecord {
  std::string id, name;
  json args;          // parsed arguments (an object) when valid
  std::string error;  // non-empty when the call is malformed (no name, arguments not an object)
};
std::vector<ToolCallRecord> tool_calls(const Episode& episode);

// Reward helpers.
Reward pass(std::string reason, json components = json::object());
Reward fail(std::string reason, json components = json::object());

// Replaces the final answer (the last "ANSWER:" line of the last message), or appends a final
// message when there is none.
Episode with_answer(const Episode& episode, const std::string& answer);

// Text helpers.
std::string trim(std::string_view s);
std::string lower(std::string_view s);
// Lower-case, punctuation dropped, runs of spaces collapsed: "The  Tarn-Hold." -> "the tarn hold"
std::string normalize_words(std::string_view s);
// Exact numbers: "-12", "3.75", "1,234", "7/3" (no expressions, no exponents). GMP-backed
// comparison through the sandbox's calculator; false for anything that is not a plain number.
bool is_plain_number(std::string_view s);
bool numbers_equal(const std::string& a, const std::string& b);  // both plain numbers, equal

}  // namespace shoal::tasks
