// The OpenAI chat-completions API over shoal's chat format: request validation (each error names
// its field, in OpenAI's error form), the prompt a request renders to (tools listed in the system
// message as rollouts list them, tool_choice steering by prefilling the assistant turn), and the
// responses: whole completions, and the SSE chunks of a streamed one (content as it is decoded,
// tool calls once their block has parsed). Plain code, no sockets: serve/server.h does the HTTP.
// Not here: generation (engine/generate) and the parsing of the chat format itself
// (engine/tokenizer/chat_parser.h).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engine/generate/scheduler.h"
#include "engine/tokenizer/chat_parser.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::serve {

// An API error: HTTP status plus OpenAI's {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string code = {},
           std::string type = {});
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }  // empty = null
  const std::string& code() const { return code_; }    // empty = null
  nlohmann::json body() const;

 private:
  int status_;
  std::string type_, param_, code_;
};

// 400 invalid_request_error naming `param`.
[[noreturn]] void bad_request(const std::string& param, const std::string& message,
                              const std::string& code = "invalid_value");

enum class ToolChoice { none, automatic, required, named };

struct ChatRequest {
  std::string model;
  nlohmann::json messages;                         // OpenAI form, checked by the chat format
  nlohmann::json tools = nlohmann::json::array();  // [{"type":"function","function":{...}}]
  ToolChoice tool_choice = ToolChoice::automatic;
  std::string tool_name;  // ToolChoice::named
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int64_t n = 1;
  double temperature = 1.0;  // 0 = greedy
  double top_p = 1.0;
  int64_t top_k = 0;                  // extension (not OpenAI): 0 = off
  double min_p = 0.0;                 // extension (not OpenAI): 0 = off
  std::optional<int64_t> max_tokens;  // max_completion_tokens or max_tokens; none = the rest of
                                      // the context
  std::vector<std::string> stop;
  std::optional<uint64_t> seed;
  bool logprobs = false;
  int64_t top_logprobs = 0;
};

// Parses and validates a request body. Throws ApiError (400) naming the field: malformed JSON,
// a wrong type, a value out of range, or a field this server does not know (see
// docs/SERVE.md for the policy on unknown and unsupported fields).
ChatRequest parse_chat_request(std::string_view body);

// The prompt a request generates from.
struct Prompt {
  std::vector<int32_t> ids;       // the rendered conversation, then the prefill
  std::string prefill;            // assistant text forced before generation (tool_choice)
  int64_t prefill_tokens = 0;     // its tokens (the tail of ids)
  std::vector<int32_t> stop_ids;  // end of sentence; with tool_choice "none" also the tool-calls
                                  // marker (generation stops before a call could start)
  int32_t hidden_stop = -1;       // a stop id whose text is not part of the reply (-1: none)
};
// Throws ApiError (400) for messages the chat format refuses (param "messages") or tools it
// cannot list (param "tools").
Prompt build_prompt(const Tokenizer& tokenizer, const ChatRequest& request);

// The log-probs entry of one token in OpenAI's form ({"token","logprob","bytes","top_logprobs"}).
nlohmann::json token_logprob_json(const Tokenizer& tokenizer, const TokenRecord& token);

// One choice of a reply: the assistant message parsed from prefill + generated text.
struct ChoiceResult {
  ParsedAssistantTurn turn;
  std::string finish_reason;  // stop, length, tool_calls
};
// The generated text of a finished completion (markers kept, stop string cut, a hidden stop
// marker dropped).
std::string completion_text(const Prompt& prompt, const Completion& c);
// stop, length or tool_calls.
std::string finish_reason_of(const ParsedAssistantTurn& turn, const Completion& c);
// What a finished completion says, parsed (c.text is the decoded text, markers kept, stop string
// cut).
ChoiceResult finish_choice(const Prompt& prompt, const Completion& c);
// The message object of a choice (content null when there are tool calls and no text).
nlohmann::json choice_message_json(const ParsedAssistantTurn& turn,
                                   const std::vector<std::string>& call_ids);

// A random id with a prefix ("chatcmpl-", "call_").
std::string random_id(std::string_view prefix);

// The non-streamed reply.
nlohmann::json chat_completion_json(const Tokenizer& tokenizer, const ChatRequest& request,
                                    const Prompt& prompt, const std::vector<Completion>& samples,
                                    const std::string& id, int64_t created,
                                    const std::string& model);

// The streamed reply of one choice: feed it the sample's tokens as they come, then the finished
// completion; each call returns the choice objects ({"index","delta","logprobs",
// "finish_reason"}) to send, one chunk each. Content is sent as soon as it is complete UTF-8, is
// not the start of a stop string and cannot be the start of a chat marker; tool calls are sent
// once the whole turn has parsed (a later error in a calls block would turn it into text), each
// whole in one delta.
class ChoiceStreamer {
 public:
  ChoiceStreamer(const Tokenizer& tokenizer, const ChatRequest& request, const Prompt& prompt,
                 int64_t index);
  std::vector<nlohmann::json> start();  // the first delta: the role
  std::vector<nlohmann::json> on_token(const TokenRecord& token);
  std::vector<nlohmann::json> finish(const Completion& completion);

 private:
  nlohmann::json choice(nlohmann::json delta);
  void feed(std::string_view text, std::vector<nlohmann::json>& out);

  const Tokenizer& tok_;
  const Prompt& prompt_;
  int64_t index_;
  bool logprobs_;
  std::vector<std::string> stops_;
  size_t hold_ = 0;  // bytes held back: the longest stop string minus one
  StreamDecoder decoder_;
  std::string decoded_;  // the generated text so far (complete UTF-8, equal to a prefix of
                         // Tokenizer::decode of the ids)
  size_t fed_ = 0;       // bytes of decoded_ fed to the parser
  ChatStreamParser parser_;
  nlohmann::json pending_logprobs_ = nlohmann::json::array();
};

// {"prompt_tokens", "completion_tokens", "total_tokens"}.
nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens);

}  // namespace shoal::serve
