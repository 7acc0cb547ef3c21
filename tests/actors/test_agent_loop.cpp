// The agent loop with a scripted generator: tokens are kept exactly as generated, the loss mask
// covers only generated tokens, tool outputs are appended as the chat format renders them, and
// malformed or unknown calls, the turn limit and the token budget end or steer the episode as
// documented.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "actors/agent_loop.h"
#include "base/error.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/chat_parser.h"

namespace shoal::actors {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const Tokenizer& small_tokenizer() {
  static Tokenizer tok = [] {
    BpeTrainer t;
    for (int i = 0; i < 50; ++i)
      t.add_text("What is 12 + 30? Use the calculator. ANSWER: 42 function add {\"a\": 1} result");
    fs::path p = fs::temp_directory_path() / ("shoal-agent-tok-" + std::to_string(::getpid()));
    fs::create_directories(p);
    write_json_atomic(t.train({.vocab_size = 320}), (p / "tokenizer.json").string());
    return Tokenizer::load((p / "tokenizer.json").string());
  }();
  return tok;
}

json calc_tools() {
  return json::array(
      {{{"type", "function"},
        {"function",
         {{"name", "add"},
          {"description", "Add two integers."},
          {"parameters",
           {{"type", "object"},
            {"properties", {{"a", {{"type", "integer"}}}, {"b", {{"type", "integer"}}}}},
            {"required", {"a", "b"}}}}}}}});
}

json task_messages() {
  return json::array({{{"role", "system"}, {"content", "Solve it."}},
                      {{"role", "user"}, {"content", "What is 12 + 30?"}}});
}

// Plays back assistant turns as text. Each turn is encoded byte by byte with the markers as
// their ids — a tokenization the tokenizer itself would never produce — so the test can see that
// the loop keeps generated ids instead of re-tokenizing the text.
struct Script {
  std::vector<std::string> turns;
  size_t next = 0;
  int64_t calls = 0;
  std::vector<std::vector<int32_t>> contexts;
  bool stop_at_eos = true;

  std::vector<int32_t> odd_ids(const std::string& text) const {
    const Tokenizer& tok = small_tokenizer();
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i < text.size()) {
      bool marker = false;
      for (std::string_view m : chat_marker::kAll) {
        if (text.compare(i, m.size(), m) == 0) {
          ids.push_back(*tok.token_to_id(m));
          i += m.size();
          marker = true;
          break;
        }
      }
      if (marker) continue;
      for (int32_t id : tok.encode(text.substr(i, 1), SpecialText::plain)) ids.push_back(id);
      ++i;
    }
    return ids;
  }

  GenerateFn fn() {
    return [this](const std::vector<int32_t>& context, const SamplingParams& opt) {
      contexts.push_back(context);
      ++calls;
      GenOutput out;
      std::vector<int32_t> ids = odd_ids(turns.at(next++));
      out.stopped = false;
      for (int32_t id : ids) {
        if (static_cast<int64_t>(out.ids.size()) == opt.max_tokens) break;
        out.ids.push_back(id);
        out.logprobs.push_back(-0.5f - 0.01f * static_cast<float>(out.ids.size()));
        if (stop_at_eos &&
            std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end()) {
          out.stopped = true;
          break;
        }
      }
      out.weight_version = static_cast<int64_t>(next);
      return out;
    };
  }
};

std::string call_turn(const std::string& name, const std::string& args) {
  return std::string(chat_marker::kToolCallsBegin) + std::string(chat_marker::kToolCallBegin) +
         "function" + std::string(chat_marker::kToolSep) + name + "\n```json\n" + args + "\n```" +
         std::string(chat_marker::kToolCallEnd) + std::string(chat_marker::kToolCallsEnd) +
         std::string(chat_marker::kEos);
}

TEST(AgentLoop, ToolCallThenAnswerKeepsGeneratedIdsAndMasksOnlyThem) {
  const Tokenizer& tok = small_tokenizer();
  Script s;
  s.turns = {call_turn("add", R"({"a": 12, "b": 30})"),
             "ANSWER: 42" + std::string(chat_marker::kEos)};
  std::vector<std::pair<std::string, json>> tool_log;
  ToolFn tools = [&](const std::string& name, const json& args) -> json {
    tool_log.emplace_back(name, args);
    return json{{"result", args["a"].get<int>() + args["b"].get<int>()}};
  };
  SamplingParams sampling;
  sampling.seed = 100;
  AgentEpisode ep = run_agent(tok, task_messages(), calc_tools(), s.fn(), tools, sampling, {});
  EXPECT_EQ(ep.status, "ok");
  EXPECT_EQ(ep.turns, 2);
  EXPECT_EQ(ep.tool_calls, 1);
  EXPECT_EQ(ep.invalid_tool_calls, 0);
  ASSERT_EQ(tool_log.size(), 1u);
  EXPECT_EQ(tool_log[0].second, json({{"a", 12}, {"b", 30}}));

  // The prompt is the chat rendering with the tools listed in the system message.
  ChatTokens prompt = render_chat_tokens(
      tok, chat_messages_from_json(agent_prompt(task_messages(), calc_tools(), true)),
      {.add_generation_prompt = true});
  ASSERT_GE(ep.tokens.size(), prompt.ids.size());
  EXPECT_TRUE(std::equal(prompt.ids.begin(), prompt.ids.end(), ep.tokens.begin()));
  EXPECT_EQ(ep.prompt_tokens, static_cast<int64_t>(prompt.ids.size()));
  EXPECT_NE(ep.prompt[0]["content"].get<std::string>().find("### add"), std::string::npos);

  // Generated ids appear verbatim (the odd byte-wise tokenization survives), masked 1, with
  // their log-probs; everything else is masked 0 with log-prob 0.
  std::vector<int32_t> turn1 = s.odd_ids(s.turns[0]), turn2 = s.odd_ids(s.turns[1]);
  ASSERT_NE(turn1, tok.encode(s.turns[0]));  // the test's tokenization really is unusual
  size_t p = prompt.ids.size();
  EXPECT_TRUE(std::equal(turn1.begin(), turn1.end(), ep.tokens.begin() + static_cast<long>(p)));
  // The second generation request saw exactly the episode's tokens so far.
  ASSERT_EQ(s.contexts.size(), 2u);
  size_t tool_end = s.contexts[1].size();
  EXPECT_TRUE(std::equal(s.contexts[1].begin(), s.contexts[1].end(), ep.tokens.begin()));
  EXPECT_TRUE(
      std::equal(turn2.begin(), turn2.end(), ep.tokens.begin() + static_cast<long>(tool_end)));
  EXPECT_EQ(ep.tokens.size(), tool_end + turn2.size());
  int64_t generated = 0;
  for (size_t i = 0; i < ep.tokens.size(); ++i) {
    bool gen = (i >= p && i < p + turn1.size()) || i >= tool_end;
    EXPECT_EQ(ep.loss_mask[i], gen ? 1 : 0) << i;
    if (gen) {
      EXPECT_LT(ep.logprobs[i], 0.0f);
    } else {
      EXPECT_EQ(ep.logprobs[i], 0.0f);
    }
    generated += ep.loss_mask[i];
  }
  EXPECT_EQ(generated, static_cast<int64_t>(turn1.size() + turn2.size()));
  // The tool output between the turns is the chat format's rendering of the tool message.
  std::string between =
      tok.decode(std::vector<int32_t>(ep.tokens.begin() + static_cast<long>(p + turn1.size()),
                                      ep.tokens.begin() + static_cast<long>(tool_end)));
  EXPECT_EQ(between, std::string(chat_marker::kToolOutputsBegin) +
                         std::string(chat_marker::kToolOutputBegin) + R"({"result":42})" +
                         std::string(chat_marker::kToolOutputEnd) +
                         std::string(chat_marker::kToolOutputsEnd));
  // Messages: the call, the tool output, the answer.
  ASSERT_EQ(ep.messages.size(), 3u);
  EXPECT_EQ(ep.messages[0]["tool_calls"][0]["function"]["name"], "add");
  EXPECT_EQ(ep.messages[1]["role"], "tool");
  EXPECT_EQ(ep.messages[2]["content"], "ANSWER: 42");
  EXPECT_EQ(ep.min_weight_version, 1);
  EXPECT_EQ(ep.max_weight_version, 2);
}

TEST(AgentLoop, MalformedAndUnknownCallsAreAnsweredWithErrors) {
  const Tokenizer& tok = small_tokenizer();
  Script s;
  s.turns = {call_turn("add", "{not json"), call_turn("mul", R"({"a": 1})"),
             "ANSWER: 42" + std::string(chat_marker::kEos)};
  int ran = 0;
  ToolFn tools = [&](const std::string&, const json&) -> json {
    ++ran;
    return "x";
  };
  AgentEpisode ep = run_agent(tok, task_messages(), calc_tools(), s.fn(), tools, {},
                              {.max_turns = 4, .max_new_tokens = 400, .max_episode_tokens = 8000});
  EXPECT_EQ(ep.status, "ok");
  EXPECT_EQ(ran, 0);  // neither call ran
  EXPECT_EQ(ep.invalid_tool_calls, 2);
  ASSERT_EQ(ep.messages.size(), 5u);
  EXPECT_EQ(ep.messages[1]["role"], "user");
  EXPECT_NE(ep.messages[1]["content"].get<std::string>().find("could not be read"),
            std::string::npos);
  EXPECT_EQ(ep.messages[3]["role"], "tool");
  EXPECT_NE(ep.messages[3]["content"].get<std::string>().find("unknown tool 'mul'"),
            std::string::npos);
}

TEST(AgentLoop, TurnLimitAndTokenBudget) {
  const Tokenizer& tok = small_tokenizer();
  {
    Script s;
    s.turns = {call_turn("add", R"({"a": 1, "b": 2})"), call_turn("add", R"({"a": 1, "b": 2})")};
    ToolFn tools = [](const std::string&, const json&) -> json { return "3"; };
    AgentEpisode ep =
        run_agent(tok, task_messages(), calc_tools(), s.fn(), tools, {},
                  {.max_turns = 2, .max_new_tokens = 200, .max_episode_tokens = 4000});
    EXPECT_EQ(ep.status, "turn_limit");
    EXPECT_EQ(ep.turns, 2);
    EXPECT_EQ(ep.tool_calls, 2);
  }
  {
    Script s;
    s.turns = {"ANSWER: 42 is the answer that takes many tokens" + std::string(chat_marker::kEos)};
    ToolFn tools = [](const std::string&, const json&) -> json { return "3"; };
    AgentEpisode ep = run_agent(tok, task_messages(), calc_tools(), s.fn(), tools, {},
                                {.max_turns = 4, .max_new_tokens = 5, .max_episode_tokens = 4000});
    EXPECT_EQ(ep.status, "truncated");  // the turn ran out of tokens before its EOS
    EXPECT_EQ(ep.turns, 1);
    int64_t gen = 0;
    for (uint8_t m : ep.loss_mask) gen += m;
    EXPECT_EQ(gen, 5);
  }
  {
    Script s;
    EXPECT_THROW(run_agent(tok, task_messages(), calc_tools(), s.fn(),
                           [](const std::string&, const json&) -> json { return ""; }, {},
                           {.max_turns = 4, .max_new_tokens = 5, .max_episode_tokens = 10}),
                 Error);  // the prompt alone is over the budget
  }
}

}  // namespace
}  // namespace shoal::actors
