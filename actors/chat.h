// An interactive conversation with a model, for `shoal chat`: the same agent loop as rollouts
// (AgentSession: the chat format, tool calls parsed from each turn, malformed calls answered with
// an error the model reads, tool outputs appended as the format renders them), with generation
// streamed token by token from a scheduler of its own and tool calls run in one sandbox session
// for the whole chat (Python variables and files persist between calls until reset()). Each user
// message starts an agent episode over the conversation so far; the episode's messages are
// appended to it. Not the terminal (cli/chat.cpp).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/generate/generate.h"

namespace shoal::actors {

struct ChatOptions {
  std::string model_dir;
  std::string device = "cpu";      // open_backend (engine/device.h): cpu, cuda, cuda:N
  std::string precision = "bf16";  // on a GPU: bf16 or f32 GEMMs and attention
  std::string tokenizer_file;      // default: MODEL/tokenizer.json
  std::vector<std::string> tools;  // sandbox tool names offered to the model
  std::string system_prompt;       // the conversation's system message ("" = none)
  bool list_tools = true;          // describe the tools in the system message
  float temperature = 0.7f;        // 0 = greedy
  uint64_t seed = 0;
  int64_t max_tokens = 512;      // per assistant turn
  int64_t max_turns = 8;         // assistant turns per user message (tool rounds + the answer)
  std::string sandbox_endpoint;  // a running server, or
  std::string shoal_exe;         // the binary to start a local one with
};

// What happens while a reply is produced, in order; every callback is optional.
struct ChatEvents {
  std::function<void(const std::string& text)> on_text;  // assistant content as it streams
  std::function<void()> on_turn_end;                     // an assistant turn finished
  std::function<void(const std::string& name, const std::string& arguments)> on_tool_call;
  std::function<void(const std::string& name, const std::string& output)> on_tool_result;
  // What the loop itself told the model (a malformed call) or the user (turn limit, cut off).
  std::function<void(const std::string& text)> on_notice;
};

class ChatSession {
 public:
  // Loads the model and tokenizer and starts (or connects to) the sandbox server. Throws
  // shoal::Error for a missing model directory or tokenizer, or an unknown tool name.
  explicit ChatSession(const ChatOptions& options);
  ~ChatSession();

  // One user message: generates (and runs tools) until the model answers without a tool call,
  // the turn limit, or `cancel` turns true (the current generation stops; what was said is kept).
  // Returns the episode's status: ok, turn_limit, truncated, cancelled.
  std::string send(const std::string& user_message, const ChatEvents& events,
                   const std::atomic<bool>* cancel = nullptr);

  void reset();  // forget the conversation and start a fresh sandbox session
  void set_system_prompt(const std::string& text);
  void set_temperature(float t);
  float temperature() const;
  const std::string& system_prompt() const;
  // The offered tools (OpenAI function descriptions) and the conversation (OpenAI messages).
  const nlohmann::json& tools() const;
  nlohmann::json messages() const;
  // {"model": DIR, "messages": [...], "tools": [...]} — an OpenAI chat request's shape.
  nlohmann::json to_openai_json() const;
  const std::string& sandbox_session() const;
  int64_t context_tokens() const;  // the model's context length

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The tool descriptions for `names` from the sandbox's tools; throws naming an unknown one and
// listing the known ones.
nlohmann::json sandbox_tool_descriptions(const std::vector<std::string>& names);
std::vector<std::string> sandbox_tool_names();

}  // namespace shoal::actors
