// The agent loop (agent_loop.h).
#include "actors/agent_loop.h"

#include <algorithm>

#include "base/error.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/chat_parser.h"

namespace shoal::actors {

using nlohmann::json;

json agent_prompt(const json& messages, const json& tools, bool list_tools) {
  SHOAL_CHECK(messages.is_array() && !messages.empty(),
              "a task's messages must be a non-empty array");
  json out = messages;
  if (!list_tools || !tools.is_array() || tools.empty()) return out;
  std::string listing = render_tools_system_prompt(tools);
  if (out[0].is_object() && out[0].value("role", "") == "system" && out[0]["content"].is_string())
    out[0]["content"] = out[0]["content"].get<std::string>() + "\n\n" + listing;
  else
    out.insert(out.begin(), json{{"role", "system"}, {"content", listing}});
  return out;
}

namespace {

// The tokens that `history` adds after `before` (the rendering of history minus its new tail).
// Every piece between markers is encoded on its own, so the old rendering is a prefix of the new.
std::vector<int32_t> rendered_tail(const Tokenizer& tok, const std::vector<ChatMessage>& before,
                                   const std::vector<ChatMessage>& after) {
  ChatTokens a = render_chat_tokens(tok, before);
  ChatTokens b = render_chat_tokens(tok, after, {.add_generation_prompt = true});
  SHOAL_CHECK(b.ids.size() >= a.ids.size() && std::equal(a.ids.begin(), a.ids.end(), b.ids.begin()),
              "chat rendering is not prefix-stable here (internal error)");
  return {b.ids.begin() + static_cast<std::ptrdiff_t>(a.ids.size()), b.ids.end()};
}

bool offers_tool(const json& tools, const std::string& name) {
  if (!tools.is_array()) return false;
  for (const json& t : tools)
    if (t.is_object() && t.contains("function") && t["function"].is_object() &&
        t["function"].value("name", "") == name)
      return true;
  return false;
}

}  // namespace

AgentSession::AgentSession(const Tokenizer& tok, const json& messages, const json& tools,
                           const SamplingParams& sampling, const AgentLimits& limits)
    : tok_(tok), tools_(tools), sampling_(sampling), limits_(limits) {
  ep_.prompt = agent_prompt(messages, tools, limits.list_tools);
  history_ = chat_messages_from_json(ep_.prompt);
  ChatTokens prompt = render_chat_tokens(tok, history_, {.add_generation_prompt = true});
  ep_.prompt_tokens = static_cast<int64_t>(prompt.ids.size());
  append(prompt.ids, 0);
  SHOAL_CHECK(ep_.prompt_tokens < limits.max_episode_tokens,
              "the prompt alone has {} tokens, over the episode budget of {}", ep_.prompt_tokens,
              limits.max_episode_tokens);
  std::optional<int32_t> eos = tok.token_to_id(chat_marker::kEos);
  SHOAL_CHECK(eos.has_value(), "the tokenizer {} has no {} token", tok.path(), chat_marker::kEos);
  eos_ = *eos;
  SHOAL_CHECK(limits.max_turns >= 1, "an episode needs at least one turn");
}

void AgentSession::append(const std::vector<int32_t>& ids, uint8_t mask) {
  ep_.tokens.insert(ep_.tokens.end(), ids.begin(), ids.end());
  ep_.loss_mask.insert(ep_.loss_mask.end(), ids.size(), mask);
  ep_.logprobs.insert(ep_.logprobs.end(), ids.size(), 0.0f);
}

bool AgentSession::append_tail(const std::vector<ChatMessage>& before) {
  std::vector<int32_t> tail = rendered_tail(tok_, before, history_);
  if (static_cast<int64_t>(ep_.tokens.size() + tail.size()) >= limits_.max_episode_tokens) {
    ep_.status = "truncated";  // what was said does not fit: the episode ends before it
    need_ = Need::done;
    return false;
  }
  append(tail, 0);
  return true;
}

SamplingParams AgentSession::sampling() const {
  SHOAL_CHECK(need_ == Need::generate, "the episode is not waiting for generation");
  SamplingParams opt = sampling_;
  int64_t room = limits_.max_episode_tokens - static_cast<int64_t>(ep_.tokens.size());
  opt.max_tokens = std::min(limits_.max_new_tokens, room);
  opt.seed = sampling_.seed + static_cast<uint64_t>(turn_);
  opt.stop_ids = {eos_};
  return opt;
}

void AgentSession::end_turn() {
  ++turn_;
  if (turn_ >= limits_.max_turns) {
    ep_.status = "turn_limit";
    need_ = Need::done;
  } else if (static_cast<int64_t>(ep_.tokens.size()) >= limits_.max_episode_tokens) {
    ep_.status = "truncated";
    need_ = Need::done;
  } else {
    need_ = Need::generate;
  }
}

void AgentSession::on_generated(const GenOutput& out) {
  SHOAL_CHECK(need_ == Need::generate, "the episode is not waiting for generation");
  SHOAL_CHECK(out.logprobs.size() == out.ids.size(), "generation returned {} ids but {} log-probs",
              out.ids.size(), out.logprobs.size());
  ep_.min_weight_version =
      first_ ? out.weight_version : std::min(ep_.min_weight_version, out.weight_version);
  ep_.max_weight_version = std::max(ep_.max_weight_version, out.weight_version);
  first_ = false;
  size_t at = ep_.tokens.size();
  append(out.ids, 1);
  std::copy(out.logprobs.begin(), out.logprobs.end(),
            ep_.logprobs.begin() + static_cast<std::ptrdiff_t>(at));
  ++ep_.turns;

  std::string text = tok_.decode(out.ids, /*skip_special=*/false);
  ParsedAssistantTurn parsed = parse_assistant_turn(text);
  if (!out.stopped) {  // ran out of tokens mid-turn: keep what was said, nothing runs
    ChatMessage partial;
    partial.role = ChatRole::assistant;
    partial.content = text;
    ep_.messages.push_back(chat_message_to_json(partial));
    ep_.status = "truncated";
    need_ = Need::done;
    return;
  }
  history_.push_back(parsed.message);
  ep_.messages.push_back(chat_message_to_json(parsed.message));

  if (parsed.error) {
    // A malformed call: the model reads what was wrong, as a real agent runtime would say it.
    ++ep_.invalid_tool_calls;
    ChatMessage note;
    note.role = ChatRole::user;
    note.content = "Your tool call could not be read: " + parsed.error->message +
                   ". Write each call in the tool-call format with JSON object arguments.";
    std::vector<ChatMessage> before = history_;
    history_.push_back(note);
    ep_.messages.push_back(chat_message_to_json(note));
    if (append_tail(before)) end_turn();
    return;
  }
  if (parsed.message.tool_calls.empty()) {
    ep_.status = "ok";
    need_ = Need::done;
    return;
  }
  before_tools_ = history_;
  pending_.clear();
  unknown_.clear();
  for (const ToolCall& call : parsed.message.tool_calls) {
    ++ep_.tool_calls;
    if (!offers_tool(tools_, call.name)) {
      ++ep_.invalid_tool_calls;
      unknown_.push_back(json{{"error", "unknown tool '" + call.name + "'"}});
    } else {
      unknown_.push_back(nullptr);
      pending_.push_back({call.name, call.arguments_json()});
    }
  }
  need_ = Need::tools;
  if (pending_.empty()) on_tool_results({});
}

void AgentSession::on_tool_results(const std::vector<json>& results) {
  SHOAL_CHECK(need_ == Need::tools, "the episode is not waiting for tool results");
  SHOAL_CHECK(results.size() == pending_.size(), "{} tool results for {} calls", results.size(),
              pending_.size());
  size_t next = 0;
  for (size_t i = 0; i < unknown_.size(); ++i) {
    const json& result = unknown_[i].is_null() ? results[next++] : unknown_[i];
    ChatMessage m;
    m.role = ChatRole::tool;
    m.tool_call_id = "call_" + std::to_string(turn_) + "_" + std::to_string(i);
    m.content = result.is_string() ? result.get<std::string>() : result.dump();
    history_.push_back(m);
    ep_.messages.push_back(chat_message_to_json(m));
  }
  pending_.clear();
  unknown_.clear();
  if (append_tail(before_tools_)) end_turn();
}

AgentEpisode run_agent(const Tokenizer& tok, const json& messages, const json& tools,
                       const GenerateFn& generate, const ToolFn& run_tool,
                       const SamplingParams& sampling, const AgentLimits& limits) {
  AgentSession s(tok, messages, tools, sampling, limits);
  while (s.need() != AgentSession::Need::done) {
    if (s.need() == AgentSession::Need::generate) {
      s.on_generated(generate(s.context(), s.sampling()));
    } else {
      std::vector<json> results;
      for (const PendingCall& c : s.pending()) results.push_back(run_tool(c.name, c.args));
      s.on_tool_results(results);
    }
  }
  return s.take();
}

}  // namespace shoal::actors
