// The DeepSeek-V3 chat format: OpenAI-style messages (system/user/assistant/tool, assistant
// tool_calls) rendered to prompt text, or to token ids with a mask of the assistant's own tokens.
// Not a Jinja engine: the shipped template's logic is written out here, and
// tests/engine/tokenizer/test_chat_format.cpp proves it against the golden renderings.
//
// The format (markers are added tokens of the DeepSeek-V3 tokenizer):
//   <｜begin▁of▁sentence｜>SYSTEM            every system message, wherever it is, joined by "\n\n"
//   <｜User｜>USER
//   <｜Assistant｜>CONTENT<｜end▁of▁sentence｜>
//   <｜Assistant｜>[CONTENT]<｜tool▁calls▁begin｜>CALL("\n"CALL)*<｜tool▁calls▁end｜><｜end▁of▁sentence｜>
//       CALL =
//       <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGUMENTS\n```<｜tool▁call▁end｜>
//   <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>OUT<｜tool▁output▁end｜>
//       ("\n"<｜tool▁output▁begin｜>OUT<｜tool▁output▁end｜>)*<｜tool▁outputs▁end｜>
// An assistant message right after tool outputs has no <｜Assistant｜>: its turn follows
// <｜tool▁outputs▁end｜> directly. The generation prompt is <｜Assistant｜>, or, after tool
// outputs, the <｜tool▁outputs▁end｜> that closes them. So for any history H ending in a user or
// tool message, render(H + [a]) == render(H, add_generation_prompt) + render_assistant_turn(a), and
// render_assistant_turn(a) is exactly what the model is expected to generate (and what
// chat_parser.h parses back).
//
// Deliberate deviations from the shipped Jinja template (tokenizer_config.json "chat_template"),
// each a defect of that template that the golden cases either do not exercise or record as such:
//  1. A SINGLE tool call is closed with <｜tool▁calls▁end｜><｜end▁of▁sentence｜> like several
//     calls are (the template omits the closing when there is exactly one call). The golden
//     single-call cases therefore differ from our rendering by exactly that inserted closing.
//  2. With three or more calls the closing comes once, after the last call (the template repeats
//     it after every call but the first).
//  3. Every assistant tool-call message opens its own <｜Assistant｜><｜tool▁calls▁begin｜>, and
//     every run of tool messages its own <｜tool▁outputs▁begin｜> (the template opens each only
//     once per conversation).
//  4. An assistant message with both content and tool_calls renders the content, then the calls
//     (the template drops the calls).
//  5. A user message or an assistant tool-call message right after tool outputs first closes them
//     with <｜tool▁outputs▁end｜> (the template leaves them open).
// All golden cases without a single tool call match byte for byte and id for id.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shoal {

class Tokenizer;

// The markers, spelled as the DeepSeek-V3 tokenizer's added tokens.
namespace chat_marker {
inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kPad = "<｜▁pad▁｜>";
inline constexpr std::string_view kUser = "<｜User｜>";
inline constexpr std::string_view kAssistant = "<｜Assistant｜>";
inline constexpr std::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
inline constexpr std::string_view kToolCallsEnd = "<｜tool▁calls▁end｜>";
inline constexpr std::string_view kToolCallBegin = "<｜tool▁call▁begin｜>";
inline constexpr std::string_view kToolCallEnd = "<｜tool▁call▁end｜>";
inline constexpr std::string_view kToolSep = "<｜tool▁sep｜>";
inline constexpr std::string_view kToolOutputsBegin = "<｜tool▁outputs▁begin｜>";
inline constexpr std::string_view kToolOutputsEnd = "<｜tool▁outputs▁end｜>";
inline constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
inline constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";
// Every marker above, BOS/EOS/pad first (the order bpe_trainer.h gives them ids in).
inline constexpr std::string_view kAll[] = {kBos,
                                            kEos,
                                            kPad,
                                            kUser,
                                            kAssistant,
                                            kToolCallsBegin,
                                            kToolCallsEnd,
                                            kToolCallBegin,
                                            kToolCallEnd,
                                            kToolSep,
                                            kToolOutputsBegin,
                                            kToolOutputsEnd,
                                            kToolOutputBegin,
                                            kToolOutputEnd};
}  // namespace chat_marker

enum class ChatRole { system, user, assistant, tool };
std::string_view chat_role_name(ChatRole role);

struct ToolCall {
  std::string type = "function";  // the only type the format and the parser know
  std::string name;
  std::string arguments;  // the JSON text, rendered verbatim (OpenAI's JSON-string form)
  // The arguments parsed; throws shoal::Error when they are not valid JSON.
  nlohmann::json arguments_json() const;
  bool operator==(const ToolCall&) const = default;
};

struct ChatMessage {
  ChatRole role = ChatRole::user;
  std::string content;               // null content (assistant tool-call turns) reads as ""
  std::vector<ToolCall> tool_calls;  // assistant only
  std::string tool_call_id;          // tool only: kept through JSON, not rendered (the format has
                                     // no place for it: outputs follow the calls' order)
  bool operator==(const ChatMessage&) const = default;
};

// OpenAI-form JSON <-> messages. Accepts content as a string, null, or an array of
// {"type":"text","text":...} parts (concatenated); tool_calls[i].function.arguments as a JSON
// string or as a JSON object/array (serialized with dump()). Throws shoal::Error naming the message
// index and key on anything else (unknown role, missing content, tool_calls on a non-assistant,
// ...).
ChatMessage chat_message_from_json(const nlohmann::json& message);
std::vector<ChatMessage> chat_messages_from_json(const nlohmann::json& messages);
// Assistant messages with tool calls and no content get "content": null, as OpenAI writes them.
nlohmann::json chat_message_to_json(const ChatMessage& message);
nlohmann::json chat_messages_to_json(const std::vector<ChatMessage>& messages);

struct ChatRenderOptions {
  bool add_generation_prompt = false;  // end with the prompt for the assistant's next turn
};

// Messages -> prompt text (starts with <｜begin▁of▁sentence｜>).
std::string render_chat(const std::vector<ChatMessage>& messages,
                        const ChatRenderOptions& options = {});
std::string render_chat(const nlohmann::json& messages, const ChatRenderOptions& options = {});

// What the model generates for `message` (an assistant message) after the generation prompt:
// [CONTENT][<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>]<｜end▁of▁sentence｜>.
std::string render_assistant_turn(const ChatMessage& message);

// Messages -> token ids. Markers become their added-token ids; every text (system, user, tool
// outputs, assistant content, tool names and arguments) is encoded with SpecialText::plain, so a
// marker spelled inside a message stays ordinary text and cannot forge a turn. (The golden ids,
// from HF's apply_chat_template, equal these: none of their texts spells a marker. For HF's
// behaviour, markers inside messages recognized, use tokenizer.encode(render_chat(...)).)
// assistant_mask[i] is 1 where ids[i] belongs to an assistant turn as render_assistant_turn()
// spells it (content, tool calls, the closing <｜end▁of▁sentence｜>): the tokens an SFT loss
// trains on. Throws shoal::Error when the tokenizer lacks one of the markers.
struct ChatTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant_mask;
};
ChatTokens render_chat_tokens(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                              const ChatRenderOptions& options = {});

// Optional and not part of the DeepSeek-V3 template (which has no tools section): a shoal
// convention for telling the model which functions it may call. Put the returned text in a system
// message. `tools` is an OpenAI "tools" array ([{"type":"function","function":{"name",
// "description","parameters"}}]); the text is
//   ## Tools
//   You can call the functions below. ...how to call them, in the format above...
//   ### NAME
//   DESCRIPTION
//   Parameters (JSON Schema): {...}
// one ### section per function, in order. Throws shoal::Error on a malformed entry.
std::string render_tools_system_prompt(const nlohmann::json& tools);

}  // namespace shoal
