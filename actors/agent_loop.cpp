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

AgentEpisode run_agent(const Tokenizer& tok, const json& messages, const json& tools,
                       const GenerateFn& generate, const ToolFn& run_tool,
                       const SamplingParams& sampling, const AgentLimits& limits) {
  AgentEpisode ep;
  ep.prompt = agent_prompt(messages, tools, limits.list_tools);
  std::vector<ChatMessage> history = chat_messages_from_json(ep.prompt);
  ChatTokens prompt = render_chat_tokens(tok, history, {.add_generation_prompt = true});
  ep.tokens = prompt.ids;
  ep.prompt_tokens = static_cast<int64_t>(ep.tokens.size());
  ep.loss_mask.assign(ep.tokens.size(), 0);
  ep.logprobs.assign(ep.tokens.size(), 0.0f);
  SHOAL_CHECK(ep.prompt_tokens < limits.max_episode_tokens,
              "the prompt alone has {} tokens, over the episode budget of {}", ep.prompt_tokens,
              limits.max_episode_tokens);
  std::optional<int32_t> eos = tok.token_to_id(chat_marker::kEos);
  SHOAL_CHECK(eos.has_value(), "the tokenizer {} has no {} token", tok.path(), chat_marker::kEos);

  auto append = [&ep](const std::vector<int32_t>& ids, uint8_t mask) {
    ep.tokens.insert(ep.tokens.end(), ids.begin(), ids.end());
    ep.loss_mask.insert(ep.loss_mask.end(), ids.size(), mask);
    ep.logprobs.insert(ep.logprobs.end(), ids.size(), 0.0f);
  };
  bool first = true;
  for (int64_t turn = 0; turn < limits.max_turns; ++turn) {
    int64_t room = limits.max_episode_tokens - static_cast<int64_t>(ep.tokens.size());
    if (room <= 0) {
      ep.status = "truncated";
      break;
    }
    SamplingParams opt = sampling;
    opt.max_tokens = std::min(limits.max_new_tokens, room);
    opt.seed = sampling.seed + static_cast<uint64_t>(turn);
    opt.stop_ids = {*eos};
    GenOutput out = generate(ep.tokens, opt);
    SHOAL_CHECK(out.logprobs.size() == out.ids.size(),
                "generation returned {} ids but {} log-probs", out.ids.size(), out.logprobs.size());
    ep.min_weight_version =
        first ? out.weight_version : std::min(ep.min_weight_version, out.weight_version);
    ep.max_weight_version = std::max(ep.max_weight_version, out.weight_version);
    first = false;
    size_t at = ep.tokens.size();
    append(out.ids, 1);
    std::copy(out.logprobs.begin(), out.logprobs.end(),
              ep.logprobs.begin() + static_cast<std::ptrdiff_t>(at));
    ++ep.turns;

    std::string text = tok.decode(out.ids, /*skip_special=*/false);
    ParsedAssistantTurn parsed = parse_assistant_turn(text);
    if (!out.stopped) {  // ran out of tokens mid-turn: keep what was said, nothing runs
      ChatMessage partial;
      partial.role = ChatRole::assistant;
      partial.content = text;
      ep.messages.push_back(chat_message_to_json(partial));
      ep.status = "truncated";
      break;
    }
    std::vector<ChatMessage> before = history;
    history.push_back(parsed.message);
    ep.messages.push_back(chat_message_to_json(parsed.message));

    if (parsed.error) {
      // A malformed call: the model reads what was wrong, as a real agent runtime would say it.
      ++ep.invalid_tool_calls;
      ChatMessage note;
      note.role = ChatRole::user;
      note.content = "Your tool call could not be read: " + parsed.error->message +
                     ". Write each call in the tool-call format with JSON object arguments.";
      before = history;
      history.push_back(note);
      ep.messages.push_back(chat_message_to_json(note));
      std::vector<int32_t> tail = rendered_tail(tok, before, history);
      if (static_cast<int64_t>(ep.tokens.size() + tail.size()) >= limits.max_episode_tokens) {
        ep.status = "truncated";
        break;
      }
      append(tail, 0);
      if (turn + 1 == limits.max_turns) ep.status = "turn_limit";
      continue;
    }
    if (parsed.message.tool_calls.empty()) {
      ep.status = "ok";
      return ep;
    }
    before = history;
    for (size_t i = 0; i < parsed.message.tool_calls.size(); ++i) {
      const ToolCall& call = parsed.message.tool_calls[i];
      ++ep.tool_calls;
      json result;
      if (!offers_tool(tools, call.name)) {
        ++ep.invalid_tool_calls;
        result = json{{"error", "unknown tool '" + call.name + "'"}};
      } else {
        result = run_tool(call.name, call.arguments_json());
      }
      ChatMessage m;
      m.role = ChatRole::tool;
      m.tool_call_id = "call_" + std::to_string(turn) + "_" + std::to_string(i);
      m.content = result.is_string() ? result.get<std::string>() : result.dump();
      history.push_back(m);
      ep.messages.push_back(chat_message_to_json(m));
    }
    std::vector<int32_t> tail = rendered_tail(tok, before, history);
    if (static_cast<int64_t>(ep.tokens.size() + tail.size()) >= limits.max_episode_tokens) {
      ep.status = "truncated";  // the outputs do not fit: the episode ends before them
      break;
    }
    append(tail, 0);
    if (turn + 1 == limits.max_turns) ep.status = "turn_limit";
  }
  return ep;
}

}  // namespace shoal::actors
