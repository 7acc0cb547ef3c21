// Parses what a DeepSeek-V3 model generates for its turn (the text after the generation prompt,
// as render_assistant_turn() in chat_format.h spells it) back into an assistant message: content,
// tool calls, and whether <｜end▁of▁sentence｜> was reached. Whole text or streamed in chunks.
// Not a renderer, and not a tokenizer: feed it decoded text with the markers kept
// (Tokenizer::decode / StreamDecoder with skip_special = false).
//
// Grammar (whitespace between calls, around the calls block and before the closing EOS is allowed):
//   TURN  = CONTENT [<｜tool▁calls▁begin｜> CALL ("\n" CALL)* <｜tool▁calls▁end｜>]
//   <｜end▁of▁sentence｜> CALL  =
//   <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGUMENTS\n```<｜tool▁call▁end｜>
// ARGUMENTS must be a JSON object. A marker is "<｜...｜>" (at most 64 bytes) or "<|EOT|>".
//
// Model output is untrusted: nothing here throws on any input. A turn that breaks the grammar (a
// marker out of place, an unclosed call, EOS inside the calls block, bad JSON arguments, a type
// other than "function", no function name) yields a ChatParseError, and the whole turn is kept as
// plain content (the raw text up to EOS, markers included) with no tool calls: a caller never runs
// part of a malformed batch. Input that ends without EOS is not an error when it ends in content
// or right after <｜tool▁calls▁end｜> (the generator may stop on the EOS id and not decode it);
// it is an error inside the calls block (truncated). Text after EOS is not parsed (`trailing`).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/chat_format.h"

namespace shoal {

struct ChatParseError {
  std::string message;  // says what was expected and what was found
  size_t offset = 0;    // byte offset in the turn's text where the problem starts
};

struct ParsedAssistantTurn {
  ChatMessage message;  // role assistant; on error: content = the raw turn text, no tool calls
  bool ended = false;   // <｜end▁of▁sentence｜> was reached
  std::optional<ChatParseError> error;
  std::string trailing;  // text after <｜end▁of▁sentence｜>, ignored
};

// One-shot: equals feeding `text` to a ChatStreamParser in any chunks, then finish().
ParsedAssistantTurn parse_assistant_turn(std::string_view text);

struct ChatParseEvent {
  enum class Kind {
    content,    // `text` is more of the message's content
    tool_call,  // `call` just closed and is valid (a preview: see ChatStreamParser)
    end,        // <｜end▁of▁sentence｜> reached
    error,      // `error` happened; from now on everything up to EOS is content
  };
  Kind kind = Kind::content;
  std::string text;
  ToolCall call;
  ChatParseError error;
};

// Feed chunks as they are decoded (split anywhere, even inside a marker or a UTF-8 character);
// get content deltas as soon as they cannot be the start of a marker, and each tool call when its
// <｜tool▁call▁end｜> arrives. The concatenation of the content events always equals the final
// message's content: on an error the text held back so far (the calls block) is sent as content.
// Tool-call events are previews: a later error in the same block turns the whole turn into text,
// so run tools from finish()'s result (or only after the end event without an error event).
class ChatStreamParser {
 public:
  std::vector<ChatParseEvent> feed(std::string_view chunk);
  void feed(std::string_view chunk, std::vector<ChatParseEvent>& events);  // appends
  // Ends the input: flushes held-back text, reports truncation. Call once; feed() after it is a
  // no-op. `events` (optional) receives what finishing emits.
  ParsedAssistantTurn finish(std::vector<ChatParseEvent>* events = nullptr);
  bool ended() const { return state_ == State::done; }
  bool failed() const { return error_.has_value(); }

 private:
  enum class State { content, calls, call_type, call_body, after_calls, done, failed };
  void run(std::vector<ChatParseEvent>& events, bool at_end);
  void fail(std::vector<ChatParseEvent>& events, size_t offset, std::string message);
  void emit_content(std::vector<ChatParseEvent>& events, size_t begin, size_t end);
  void close_call(std::vector<ChatParseEvent>& events, size_t end);

  std::string text_;  // the turn so far (up to EOS)
  size_t pos_ = 0;    // text_[0, pos_) is processed
  State state_ = State::content;
  std::string content_;          // content emitted so far
  std::vector<ToolCall> calls_;  // closed, valid calls
  size_t call_start_ = 0;        // offset of the current <｜tool▁call▁begin｜>
  size_t part_start_ = 0;        // where the type / body text of the current call starts
  std::string call_type_;
  std::optional<ChatParseError> error_;
  std::string trailing_;
  bool finished_ = false;
};

}  // namespace shoal
