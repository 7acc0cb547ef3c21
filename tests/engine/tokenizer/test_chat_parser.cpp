// The assistant-turn parser: well-formed turns, every kind of malformed turn (an error, the text
// kept, no throw), chunking independence, and render -> parse round trips over random messages.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/chat_parser.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal {
namespace {

namespace mk = chat_marker;
using nlohmann::json;

std::string S(std::string_view s) {
  return std::string(s);
}

std::string call_text(const std::string& name, const std::string& args) {
  return S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) + name + "\n```json\n" + args +
         "\n```" + S(mk::kToolCallEnd);
}
std::string calls_block(const std::vector<std::string>& calls) {
  std::string s = S(mk::kToolCallsBegin);
  for (size_t i = 0; i < calls.size(); ++i) s += (i ? "\n" : "") + calls[i];
  return s + S(mk::kToolCallsEnd);
}

// Everything one feed gives, checked against the invariants every result must satisfy.
struct Run {
  ParsedAssistantTurn result;
  std::string content_events;
  std::vector<ToolCall> call_events;
  int end_events = 0, error_events = 0;
};

Run parse_in_chunks(std::string_view text, const std::vector<size_t>& cuts) {
  ChatStreamParser parser;
  Run run;
  std::vector<ChatParseEvent> events;
  size_t prev = 0;
  for (size_t cut : cuts) {
    parser.feed(text.substr(prev, cut - prev), events);
    prev = cut;
  }
  parser.feed(text.substr(prev), events);
  run.result = parser.finish(&events);
  for (const ChatParseEvent& e : events) {
    switch (e.kind) {
      case ChatParseEvent::Kind::content:
        run.content_events += e.text;
        break;
      case ChatParseEvent::Kind::tool_call:
        run.call_events.push_back(e.call);
        break;
      case ChatParseEvent::Kind::end:
        ++run.end_events;
        break;
      case ChatParseEvent::Kind::error:
        ++run.error_events;
        EXPECT_EQ(e.error.message, run.result.error->message);
        break;
    }
  }
  EXPECT_EQ(run.content_events, run.result.message.content);
  EXPECT_EQ(run.end_events, run.result.ended ? 1 : 0);
  EXPECT_EQ(run.error_events, run.result.error ? 1 : 0);
  EXPECT_EQ(run.result.message.role, ChatRole::assistant);
  if (run.result.error) {
    EXPECT_TRUE(run.result.message.tool_calls.empty());
    const size_t eos = text.find(mk::kEos);  // the raw turn is kept as content
    EXPECT_EQ(run.result.message.content, text.substr(0, eos));
  } else {
    EXPECT_EQ(run.call_events, run.result.message.tool_calls);
  }
  return run;
}

// Parses in one piece, byte by byte and in random chunks; all must agree.
ParsedAssistantTurn parse_all_ways(std::string_view text, std::mt19937& rng) {
  const Run whole = parse_in_chunks(text, {});
  std::vector<size_t> bytes;
  for (size_t i = 1; i < text.size(); ++i) bytes.push_back(i);
  std::vector<size_t> random;
  for (size_t i = 1; i < text.size(); ++i)
    if (rng() % 4 == 0) random.push_back(i);
  for (const auto& cuts : {bytes, random}) {
    const Run r = parse_in_chunks(text, cuts);
    EXPECT_EQ(r.result.message, whole.result.message) << text;
    EXPECT_EQ(r.result.ended, whole.result.ended) << text;
    EXPECT_EQ(r.result.trailing, whole.result.trailing) << text;
    EXPECT_EQ(r.result.error.has_value(), whole.result.error.has_value()) << text;
    if (r.result.error && whole.result.error) {
      EXPECT_EQ(r.result.error->message, whole.result.error->message) << text;
      EXPECT_EQ(r.result.error->offset, whole.result.error->offset) << text;
    }
  }
  return whole.result;
}

TEST(ChatParser, PlainContent) {
  std::mt19937 rng(1);
  ParsedAssistantTurn r = parse_all_ways("Hello, 世界 <b>!" + S(mk::kEos) + "junk", rng);
  EXPECT_FALSE(r.error);
  EXPECT_TRUE(r.ended);
  EXPECT_EQ(r.message.content, "Hello, 世界 <b>!");
  EXPECT_TRUE(r.message.tool_calls.empty());
  EXPECT_EQ(r.trailing, "junk");
  // No EOS (a length stop, or the generator did not decode the EOS id): not an error.
  r = parse_all_ways("partial answer <", rng);
  EXPECT_FALSE(r.error);
  EXPECT_FALSE(r.ended);
  EXPECT_EQ(r.message.content, "partial answer <");
  // A "<｜" that never closes within a marker's length is text.
  const std::string lone = "a <｜" + std::string(80, 'x') + "｜> b";
  r = parse_all_ways(lone + S(mk::kEos), rng);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.message.content, lone);
}

TEST(ChatParser, ToolCalls) {
  std::mt19937 rng(2);
  const std::string one = call_text("calculator", R"({"expression": "17*23"})");
  ParsedAssistantTurn r = parse_all_ways(calls_block({one}) + S(mk::kEos), rng);
  ASSERT_FALSE(r.error) << r.error->message;
  EXPECT_TRUE(r.ended);
  EXPECT_EQ(r.message.content, "");
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].type, "function");
  EXPECT_EQ(r.message.tool_calls[0].name, "calculator");
  EXPECT_EQ(r.message.tool_calls[0].arguments_json()["expression"], "17*23");

  const std::string two = call_text("read_file", "{\n  \"path\": \"notes.txt\"\n}");
  r = parse_all_ways("Let me check.\n" + calls_block({one, two}) + S(mk::kEos), rng);
  ASSERT_FALSE(r.error) << r.error->message;
  EXPECT_EQ(r.message.content, "Let me check.\n");
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[1].arguments, "{\n  \"path\": \"notes.txt\"\n}");

  // Whitespace around calls and before EOS is allowed; a missing EOS after the block is not an
  // error (the generator may stop on the EOS id without decoding it).
  r = parse_all_ways(
      S(mk::kToolCallsBegin) + "\n" + one + " \n " + two + "\n" + S(mk::kToolCallsEnd) + "\n", rng);
  ASSERT_FALSE(r.error) << r.error->message;
  EXPECT_FALSE(r.ended);
  EXPECT_EQ(r.message.tool_calls.size(), 2u);
}

// Each malformed turn: an error naming the problem, the raw text kept as content, no tool calls.
TEST(ChatParser, MalformedTurnsAreErrorsKeptAsText) {
  std::mt19937 rng(3);
  const std::string good = call_text("f", R"({"a": 1})");
  const std::string eos = S(mk::kEos);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {calls_block({call_text("f", R"({"a": )")}) + eos, "not valid JSON"},
      {calls_block({call_text("f", "[1, 2]")}) + eos, "must be a JSON object"},
      {S(mk::kToolCallsBegin) + good + eos,
       "missing <｜tool▁calls▁end｜>"},  // the template's defect
      {S(mk::kToolCallsBegin) + good, "stopped inside the tool calls block"},
      {S(mk::kToolCallsBegin) + S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) +
           "f\n```json\n{",
       "stopped inside a tool call"},
      {S(mk::kToolCallsBegin) + S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) + "f\n" + eos,
       "expected <｜tool▁call▁end｜>, found <｜end▁of▁sentence｜>"},
      {"Sure" + S(mk::kUser) + "more" + eos, "unexpected marker <｜User｜>"},
      {"a<|EOT|>" + eos, "unexpected marker <|EOT|>"},
      {"x<｜made▁up｜>y" + eos, "unexpected marker <｜made▁up｜>"},
      {S(mk::kToolCallsBegin) + S(mk::kToolCallsEnd) + eos, "empty tool calls block"},
      {S(mk::kToolCallsBegin) + "oops" + good + S(mk::kToolCallsEnd) + eos, "found plain text"},
      {calls_block({good}) + "after" + eos, "after <｜tool▁calls▁end｜>, found plain text"},
      {calls_block({S(mk::kToolCallBegin) + "code" + S(mk::kToolSep) + "f\n```json\n{}\n```" +
                    S(mk::kToolCallEnd)}) +
           eos,
       "type must be 'function'"},
      {calls_block({call_text("", "{}")}) + eos, "without a function name"},
      {calls_block(
           {S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) + "f {}" + S(mk::kToolCallEnd)}) +
           eos,
       "expected the function name, a newline and ```json"},
      {calls_block(
           {S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) + "f\n{}" + S(mk::kToolCallEnd)}) +
           eos,
       "expected ```json"},
      {calls_block({S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) + "f\n```json\n{}" +
                    S(mk::kToolCallEnd)}) +
           eos,
       "not closed by ```"},
      {calls_block({S(mk::kToolCallBegin) + "function" + S(mk::kToolCallEnd)}) + eos,
       "expected <｜tool▁sep｜>"},
      {calls_block({good, S(mk::kToolCallBegin) + "function" + S(mk::kToolSep) + "g\n```json\n" +
                              S(mk::kToolOutputBegin) + "\n```" + S(mk::kToolCallEnd)}) +
           eos,
       "found <｜tool▁output▁begin｜>"},
  };
  for (const auto& [text, needle] : cases) {
    const ParsedAssistantTurn r = parse_all_ways(text, rng);
    ASSERT_TRUE(r.error) << text;
    EXPECT_NE(r.error->message.find(needle), std::string::npos)
        << "text: " << text << "\nerror: " << r.error->message;
    EXPECT_LE(r.error->offset, text.size());
    EXPECT_EQ(r.ended, text.find(mk::kEos) != std::string::npos) << text;
  }
  // The offset points at the problem.
  const std::string text = S("Sure") + S(mk::kUser) + S("x");
  EXPECT_EQ(parse_assistant_turn(text).error->offset, 4u);
}

TEST(ChatParser, FeedAfterFinishOrEndIsHarmless) {
  ChatStreamParser p;
  EXPECT_TRUE(p.feed(S("a") + S(mk::kEos)).size() == 2);
  EXPECT_TRUE(p.ended());
  EXPECT_TRUE(p.feed("b").empty());
  ParsedAssistantTurn r = p.finish();
  EXPECT_EQ(r.trailing, "b");
  EXPECT_TRUE(p.feed("c").empty());
  EXPECT_EQ(p.finish().message.content, "a");
}

// Random messages (content with look-alike fragments, 0-3 calls with random JSON arguments).
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> pieces = {
      "hello",   " ", "\n", "谢谢", "🙂",     "<",  "｜", ">",  "<b>", "```",
      "```json", "{", "}",  "é",    "function", "\t", "<|", "|>", "x"};
  std::string s;
  for (int n = static_cast<int>(rng() % 8); n > 0; --n) s += pieces[rng() % pieces.size()];
  // No "<｜": content that spells a marker's opening is not what render() is for.
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    out += s[i];
    if (s.compare(i, 4, "<｜") == 0) out += ' ';
  }
  return out;
}

json random_json(std::mt19937& rng, int depth) {
  switch (depth > 2 ? rng() % 4 : rng() % 6) {
    case 0:
      return static_cast<int>(rng() % 1000) - 500;
    case 1:
      return random_text(rng);
    case 2:
      return rng() % 2 == 0;
    case 3:
      return nullptr;
    case 4: {
      json a = json::array();
      for (int n = static_cast<int>(rng() % 3); n > 0; --n)
        a.push_back(random_json(rng, depth + 1));
      return a;
    }
    default: {
      json o = json::object();
      for (int n = static_cast<int>(rng() % 3); n > 0; --n)
        o[fmt::format("k{}", rng() % 100)] = random_json(rng, depth + 1);
      return o;
    }
  }
}

ChatMessage random_assistant(std::mt19937& rng) {
  ChatMessage m{ChatRole::assistant, random_text(rng), {}, {}};
  for (int n = static_cast<int>(rng() % 4); n > 0; --n) {
    json args = json::object();
    for (int k = static_cast<int>(rng() % 3); k > 0; --k)
      args[fmt::format("a{}", k)] = random_json(rng, 1);
    const std::string name =
        std::string(1, static_cast<char>('a' + rng() % 26)) + "_tool." + std::to_string(rng() % 10);
    m.tool_calls.push_back({"function", name, rng() % 2 ? args.dump() : args.dump(2)});
  }
  return m;
}

TEST(ChatParser, RenderThenParseRoundTrips) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 500; ++trial) {
    const ChatMessage m = random_assistant(rng);
    const ParsedAssistantTurn r = parse_all_ways(render_assistant_turn(m), rng);
    ASSERT_FALSE(r.error) << render_assistant_turn(m) << "\n" << r.error->message;
    EXPECT_TRUE(r.ended);
    EXPECT_EQ(r.message, m) << render_assistant_turn(m);
  }
}

// Random soup of markers and text: never throws, the invariants of parse_in_chunks hold, and the
// chunking never matters.
TEST(ChatParser, RandomSoupNeverCrashes) {
  std::mt19937 rng(5);
  std::vector<std::string> pieces = {"a",  " ",          "\n",       "```json\n", "\n```",
                                     "{}", "{\"x\": 1}", "function", "name",      "<",
                                     "｜", "<｜",        "｜>",      "<|EOT|>",   "谢"};
  for (std::string_view m : mk::kAll) pieces.emplace_back(m);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    for (int n = static_cast<int>(rng() % 12); n > 0; --n) text += pieces[rng() % pieces.size()];
    if (rng() % 3 == 0) text += std::string(1, static_cast<char>(rng() % 256));  // stray byte
    parse_all_ways(text, rng);
  }
}

// Well-formed turns broken in one place (truncated, a piece cut out, a marker or text inserted):
// never throws, the invariants of parse_in_chunks hold, and chunking never matters.
TEST(ChatParser, MutatedTurns) {
  std::mt19937 rng(8);
  std::vector<std::string> inserts = {"x", "\n", "{", "```", "<", "｜>", "<|EOT|>"};
  for (std::string_view m : mk::kAll) inserts.emplace_back(m);
  int errors = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const ChatMessage m = random_assistant(rng);
    std::string text = render_assistant_turn(m);
    const size_t at = rng() % (text.size() + 1);
    switch (rng() % 3) {
      case 0:
        text.resize(at);
        break;
      case 1:
        text.erase(at, 1 + rng() % 24);
        break;
      default:
        text.insert(at, inserts[rng() % inserts.size()]);
    }
    const ParsedAssistantTurn r = parse_all_ways(text, rng);
    errors += r.error.has_value();
  }
  EXPECT_GT(errors, 300);  // the mutations do reach the error paths
}

// Model output as it would stream: ids through the streaming decoder, text into the parser.
TEST(ChatParser, StreamsFromTheDecoder) {
  const std::string path = std::string(SHOAL_DATA_DIR) + "/tokenizers/deepseek_v3/tokenizer.json";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " is missing: run scripts/fetch-tokenizer";
  const Tokenizer tok = Tokenizer::load(path);
  std::mt19937 rng(6);
  for (int trial = 0; trial < 100; ++trial) {
    const ChatMessage m = random_assistant(rng);
    const std::vector<int32_t> ids = tok.encode(render_assistant_turn(m));
    StreamDecoder decoder(tok);
    ChatStreamParser parser;
    std::vector<ChatParseEvent> events;
    for (int32_t id : ids) parser.feed(decoder.push(id), events);
    parser.feed(decoder.finish(), events);
    const ParsedAssistantTurn r = parser.finish(&events);
    ASSERT_FALSE(r.error) << r.error->message;
    EXPECT_TRUE(r.ended);
    EXPECT_EQ(r.message, m);
  }
}

}  // namespace
}  // namespace shoal
