// The assistant-turn parser (see chat_parser.h for the grammar and the error policy). One state
// machine over the turn's text; a decision at any position depends only on the bytes from there
// on, and is deferred while they could still be the start of a marker, so any chunking of the
// input gives the same events (after concatenating content) and the same result.
#include "engine/tokenizer/chat_parser.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include <fmt/format.h>

namespace shoal {
namespace {

namespace mk = chat_marker;

constexpr std::string_view kOpen = "<｜";
constexpr std::string_view kClose = "｜>";
constexpr std::string_view kEot =
    "<|EOT|>";                     // an added token of DeepSeek-V3 that is no marker here
constexpr size_t kMaxMarker = 64;  // longest "<｜...｜>" taken as a marker, in bytes

enum class Match { none, partial, full };
struct MarkerAt {
  Match match = Match::none;
  size_t size = 0;
};

// What text[i...] (text[i] == '<') is. `partial`: it could still become a marker when more text
// comes; with at_end nothing more comes, so that reads as `none`.
MarkerAt marker_at(std::string_view text, size_t i, bool at_end) {
  const std::string_view rest = text.substr(i);
  if (rest.starts_with(kEot)) return {Match::full, kEot.size()};
  if (rest.starts_with(kOpen)) {
    const std::string_view window = rest.substr(0, kMaxMarker);
    const size_t close = window.find(kClose, kOpen.size());
    const size_t reopen = window.find(kOpen, kOpen.size());
    if (close != std::string_view::npos && (reopen == std::string_view::npos || close < reopen))
      return {Match::full, close + kClose.size()};
    if (reopen != std::string_view::npos) return {};
    if (rest.size() < kMaxMarker && !at_end) return {Match::partial, 0};
    return {};
  }
  if (!at_end && (kOpen.starts_with(rest) || kEot.starts_with(rest))) return {Match::partial, 0};
  return {};
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// A short quote of what was found, for error messages.
std::string quote(std::string_view s) {
  constexpr size_t kMax = 40;
  if (s.size() <= kMax) return fmt::format("'{}'", s);
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // whole chars
  return fmt::format("'{}...'", s.substr(0, cut));
}

// NAME\n```json\nARGUMENTS\n``` -> call, or an error message.
std::optional<std::string> parse_call_body(std::string_view body, ToolCall& call) {
  const size_t newline = body.find('\n');
  if (newline == std::string_view::npos)
    return fmt::format("tool call: expected the function name, a newline and ```json; found {}",
                       quote(body));
  const std::string_view name = trim(body.substr(0, newline));
  if (name.empty()) return std::string("tool call without a function name");
  if (std::any_of(name.begin(), name.end(), is_space))
    return fmt::format("tool call name {} contains whitespace", quote(name));
  call.name = std::string(name);
  std::string_view rest = body.substr(newline + 1);
  while (!rest.empty() && is_space(rest.front())) rest.remove_prefix(1);
  if (!rest.starts_with("```json"))
    return fmt::format("tool call '{}': expected ```json after the name; found {}", call.name,
                       quote(rest));
  rest.remove_prefix(7);
  if (rest.starts_with('\n')) rest.remove_prefix(1);
  while (!rest.empty() && is_space(rest.back())) rest.remove_suffix(1);
  if (!rest.ends_with("```"))
    return fmt::format(
        "tool call '{}': the arguments are not closed by ``` before "
        "<｜tool▁call▁end｜>",
        call.name);
  rest.remove_suffix(3);
  if (rest.ends_with('\n')) rest.remove_suffix(1);
  call.arguments = std::string(rest);
  try {
    const nlohmann::json args = nlohmann::json::parse(call.arguments);
    if (!args.is_object())
      return fmt::format("tool call '{}': the arguments must be a JSON object, got {} {}",
                         call.name, args.type_name(), quote(call.arguments));
  } catch (const nlohmann::json::exception& e) {
    return fmt::format("tool call '{}': the arguments are not valid JSON ({}): {}", call.name,
                       e.what(), quote(call.arguments));
  }
  return std::nullopt;
}

std::string describe_marker(std::string_view marker) {
  if (marker == mk::kEos) return "<｜end▁of▁sentence｜> (the output ended)";
  return std::string(marker);
}

}  // namespace

void ChatStreamParser::emit_content(std::vector<ChatParseEvent>& events, size_t begin, size_t end) {
  if (end <= begin) return;
  const std::string_view delta = std::string_view(text_).substr(begin, end - begin);
  content_ += delta;
  events.push_back(ChatParseEvent{ChatParseEvent::Kind::content, std::string(delta), {}, {}});
}

void ChatStreamParser::fail(std::vector<ChatParseEvent>& events, size_t offset,
                            std::string message) {
  error_ = ChatParseError{std::move(message), offset};
  events.push_back(ChatParseEvent{ChatParseEvent::Kind::error, {}, {}, *error_});
  // The text held back since the content stopped (the calls block so far) becomes content; the
  // scan goes on from `offset`, where the offending text is now plain content too.
  emit_content(events, content_.size(), offset);
  pos_ = offset;
  state_ = State::failed;
}

void ChatStreamParser::close_call(std::vector<ChatParseEvent>& events, size_t end) {
  ToolCall call;
  call.type = call_type_;
  if (auto err =
          parse_call_body(std::string_view(text_).substr(part_start_, end - part_start_), call)) {
    fail(events, call_start_, std::move(*err));
    return;
  }
  calls_.push_back(call);
  events.push_back(ChatParseEvent{ChatParseEvent::Kind::tool_call, {}, std::move(call), {}});
}

void ChatStreamParser::run(std::vector<ChatParseEvent>& events, bool at_end) {
  // Finds the next marker at or after `from`: its offset and size, or a partial one (wait), or
  // none (npos).
  auto next_marker = [&](size_t from, MarkerAt& found) {
    for (size_t lt = text_.find('<', from); lt != std::string::npos; lt = text_.find('<', lt + 1)) {
      found = marker_at(text_, lt, at_end);
      if (found.match != Match::none) return lt;
    }
    found = {};
    return std::string::npos;
  };
  auto end_turn = [&](size_t at, size_t size) {
    trailing_ = text_.substr(at + size);
    text_.resize(at);
    pos_ = at;
    state_ = State::done;
    events.push_back(ChatParseEvent{ChatParseEvent::Kind::end, {}, {}, {}});
  };

  while (true) {
    switch (state_) {
      case State::done:
        return;
      case State::content:
      case State::failed: {
        size_t from = pos_;
        while (true) {
          MarkerAt m;
          const size_t lt = next_marker(from, m);
          if (lt == std::string::npos || m.match == Match::partial) {
            const size_t stop = lt == std::string::npos ? text_.size() : lt;
            emit_content(events, pos_, stop);
            pos_ = stop;
            return;
          }
          const std::string_view marker = std::string_view(text_).substr(lt, m.size);
          if (marker == mk::kEos) {
            emit_content(events, pos_, lt);
            end_turn(lt, m.size);
            return;
          }
          if (state_ == State::failed) {  // after an error every other marker is text
            from = lt + m.size;
            continue;
          }
          emit_content(events, pos_, lt);
          pos_ = lt;
          if (marker == mk::kToolCallsBegin) {
            pos_ = lt + m.size;
            state_ = State::calls;
          } else {
            fail(events, lt,
                 fmt::format("unexpected marker {} in the assistant's content", marker));
          }
          break;
        }
        break;
      }
      case State::calls:
      case State::after_calls: {
        size_t j = pos_;
        while (j < text_.size() && is_space(text_[j])) ++j;
        const bool in_calls = state_ == State::calls;
        if (j == text_.size()) {
          if (at_end && in_calls) {
            fail(events, j,
                 "the output stopped inside the tool calls block (no "
                 "<｜tool▁calls▁end｜>): truncated?");
            break;  // the failed state flushes the rest as content
          }
          return;
        }
        const std::string_view expected =
            in_calls ? "<｜tool▁call▁begin｜> or <｜tool▁calls▁end｜>" : "<｜end▁of▁sentence｜>";
        const MarkerAt m = text_[j] == '<' ? marker_at(text_, j, at_end) : MarkerAt{};
        if (m.match == Match::partial) return;
        if (m.match == Match::none) {
          // Plain text, not quoted: how much of it has arrived depends on the chunking.
          fail(events, j,
               fmt::format("expected {}{}, found plain text", expected,
                           in_calls ? "" : " after <｜tool▁calls▁end｜>"));
          break;
        }
        const std::string_view marker = std::string_view(text_).substr(j, m.size);
        if (!in_calls && marker == mk::kEos) {
          end_turn(j, m.size);
          return;
        }
        if (in_calls && marker == mk::kToolCallBegin) {
          call_start_ = j;
          part_start_ = pos_ = j + m.size;
          state_ = State::call_type;
        } else if (in_calls && marker == mk::kToolCallsEnd && !calls_.empty()) {
          pos_ = j + m.size;
          state_ = State::after_calls;
        } else if (in_calls && marker == mk::kToolCallsEnd) {
          fail(events, j, "empty tool calls block");
        } else if (in_calls && marker == mk::kEos) {
          fail(events, j,
               "the output ended (<｜end▁of▁sentence｜>) inside the tool calls block: missing "
               "<｜tool▁calls▁end｜>");
        } else {
          fail(events, j, fmt::format("expected {}, found {}", expected, marker));
        }
        break;
      }
      case State::call_type:
      case State::call_body: {
        MarkerAt m;
        const size_t lt = next_marker(pos_, m);
        if (lt == std::string::npos) {
          pos_ = text_.size();
          if (at_end) {
            fail(events, call_start_,
                 "the output stopped inside a tool call (no <｜tool▁call▁end｜>): "
                 "truncated?");
            break;
          }
          return;
        }
        if (m.match == Match::partial) {
          pos_ = lt;
          return;
        }
        const std::string_view marker = std::string_view(text_).substr(lt, m.size);
        if (state_ == State::call_type && marker == mk::kToolSep) {
          call_type_ =
              std::string(trim(std::string_view(text_).substr(part_start_, lt - part_start_)));
          if (call_type_ != "function") {
            fail(events, part_start_,
                 fmt::format("tool call type must be 'function', found {}", quote(call_type_)));
            break;
          }
          part_start_ = pos_ = lt + m.size;
          state_ = State::call_body;
        } else if (state_ == State::call_body && marker == mk::kToolCallEnd) {
          state_ = State::calls;
          pos_ = lt + m.size;
          close_call(events, lt);
        } else {
          fail(events, lt,
               fmt::format("inside a tool call: expected {}, found {}",
                           state_ == State::call_type ? "<｜tool▁sep｜>" : "<｜tool▁call▁end｜>",
                           describe_marker(marker)));
        }
        break;
      }
    }
  }
}

void ChatStreamParser::feed(std::string_view chunk, std::vector<ChatParseEvent>& events) {
  if (finished_) return;
  if (state_ == State::done) {
    trailing_ += chunk;
    return;
  }
  text_ += chunk;
  run(events, /*at_end=*/false);
}

std::vector<ChatParseEvent> ChatStreamParser::feed(std::string_view chunk) {
  std::vector<ChatParseEvent> events;
  feed(chunk, events);
  return events;
}

ParsedAssistantTurn ChatStreamParser::finish(std::vector<ChatParseEvent>* events) {
  std::vector<ChatParseEvent> local;
  if (!finished_) run(events ? *events : local, /*at_end=*/true);
  finished_ = true;
  ParsedAssistantTurn out;
  out.message.role = ChatRole::assistant;
  out.message.content = content_;
  if (!error_) out.message.tool_calls = calls_;
  out.ended = state_ == State::done;
  out.error = error_;
  out.trailing = trailing_;
  return out;
}

ParsedAssistantTurn parse_assistant_turn(std::string_view text) {
  ChatStreamParser parser;
  std::vector<ChatParseEvent> events;
  parser.feed(text, events);
  return parser.finish();
}

}  // namespace shoal
