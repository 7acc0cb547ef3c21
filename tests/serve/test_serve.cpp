// shoal serve: the OpenAI translation on its own (request validation naming fields, prompts with
// tool_choice steering, streamed chunks equal to the whole reply), then the real `shoal serve`
// binary on a free port: the official `openai` npm package as the client (plain, streamed, tool
// calls from a fine-tuned model, n > 1, log-probs, 12 concurrent clients, errors), raw HTTP for
// every error status, a client that leaves mid-stream, and a few thousand mutated requests.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <random>

#include "serve/openai.h"
#include "tests/serve/serve_fixture.h"

namespace shoal::serve {
namespace {

using nlohmann::json;
using namespace shoal::serve::testing;

const Tokenizer& tokenizer() {
  static Tokenizer tok = Tokenizer::load(models().tools_dir);
  return tok;
}

json valid_body() {
  return {{"model", "tiny"},
          {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})},
          {"max_tokens", 3}};
}

// The ApiError a body gets (status 0 when it is accepted).
ApiError error_of(const std::string& body) {
  try {
    parse_chat_request(body);
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "accepted");
}

TEST(ServeRequest, ErrorsNameTheField) {
  auto with = [](const char* key, json v) {
    json b = valid_body();
    b[key] = v;
    return b.dump();
  };
  struct Case {
    std::string body, param, code;
  };
  std::vector<Case> cases = {
      {"{\"model\": ", "", "invalid_json"},
      {"[1, 2]", "", "invalid_json"},
      {with("frobnicate", 1), "frobnicate", "unknown_parameter"},
      {with("temperature", "hot"), "temperature", "invalid_type"},
      {with("temperature", 2.5), "temperature", "invalid_value"},
      {with("top_p", 0), "top_p", "invalid_value"},
      {with("n", 0), "n", "invalid_value"},
      {with("n", 1.5), "n", "invalid_type"},
      {with("max_tokens", -1), "max_tokens", "invalid_value"},
      {with("max_completion_tokens", "9"), "max_completion_tokens", "invalid_type"},
      {with("stop", json::array({"a", 3})), "stop", "invalid_type"},
      {with("stop", json::array({"a", "b", "c", "d", "e"})), "stop", "invalid_value"},
      {with("stop", ""), "stop", "invalid_value"},
      {with("seed", "7"), "seed", "invalid_type"},
      {with("logprobs", 1), "logprobs", "invalid_type"},
      {with("top_logprobs", 3), "top_logprobs", "invalid_value"},  // needs logprobs
      {with("stream_options", json{{"include_usage", true}}), "stream_options", "invalid_value"},
      {with("messages", json::array()), "messages", "invalid_value"},
      {with("messages", "hi"), "messages", "invalid_type"},
      {with("messages", json::array({{{"role", "wizard"}, {"content", "x"}}})), "messages",
       "invalid_value"},
      {with("tools", json::array({{{"type", "retrieval"}}})), "tools[0].type", "invalid_value"},
      {with("tool_choice", "required"), "tool_choice", "invalid_value"},  // no tools
      {with("tool_choice", "sometimes"), "tool_choice", "invalid_value"},
      {with("frequency_penalty", 0.5), "frequency_penalty", "unsupported_value"},
      {with("logit_bias", json{{"5", 10}}), "logit_bias", "unsupported_value"},
      {with("response_format", json{{"type", "json_object"}}), "response_format",
       "unsupported_value"},
      {with("user", 5), "user", "invalid_type"},
  };
  json no_model = valid_body();
  no_model.erase("model");
  cases.push_back({no_model.dump(), "model", "missing_required_parameter"});
  json named = valid_body();
  named["tools"] = weather_tools();
  named["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_time"}}}};
  cases.push_back({named.dump(), "tool_choice", "invalid_value"});
  for (const Case& c : cases) {
    ApiError e = error_of(c.body);
    EXPECT_EQ(e.status(), 400) << c.body;
    EXPECT_EQ(e.param(), c.param) << c.body << ": " << e.what();
    EXPECT_EQ(e.code(), c.code) << c.body << ": " << e.what();
    json body = e.body();
    EXPECT_TRUE(body["error"]["message"].is_string());
    EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  }
}

TEST(ServeRequest, AcceptsEveryDocumentedField) {
  json b = valid_body();
  b["tools"] = weather_tools();
  b["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  b["n"] = 2;
  b["temperature"] = 0.7;
  b["top_p"] = 0.9;
  b["top_k"] = 40;
  b["min_p"] = 0.05;
  b["max_completion_tokens"] = 9;
  b["stop"] = "END";
  b["seed"] = -3;
  b["logprobs"] = true;
  b["top_logprobs"] = 2;
  b["user"] = "u";
  b["metadata"] = {{"k", "v"}};
  b["store"] = false;
  b["parallel_tool_calls"] = true;
  b["service_tier"] = "auto";
  b["frequency_penalty"] = 0;
  b["presence_penalty"] = 0.0;
  b["logit_bias"] = json::object();
  b["response_format"] = {{"type", "text"}};
  b["max_tokens"] = nullptr;  // null reads as absent
  ChatRequest r = parse_chat_request(b.dump());
  EXPECT_EQ(r.tool_choice, ToolChoice::named);
  EXPECT_EQ(r.tool_name, "get_weather");
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.max_tokens, 9);
  EXPECT_EQ(r.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(r.seed, static_cast<uint64_t>(int64_t(-3)));
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_EQ(r.top_k, 40);
}

TEST(ServePrompt, ToolChoiceSteersTheTurn) {
  const Tokenizer& tok = tokenizer();
  json b = valid_body();
  b["messages"] = weather_question("Paris");
  b["tools"] = weather_tools();
  ChatRequest r = parse_chat_request(b.dump());
  // auto: the tools are listed in a system message, nothing is prefilled.
  Prompt p = build_prompt(tok, r);
  std::string text = tok.decode(p.ids);
  EXPECT_NE(text.find("get_weather"), std::string::npos);
  EXPECT_TRUE(p.prefill.empty());
  EXPECT_EQ(p.stop_ids, std::vector<int32_t>{*tok.token_to_id(chat_marker::kEos)});
  // none: not listed, and generation stops where a tool call would begin.
  r.tool_choice = ToolChoice::none;
  p = build_prompt(tok, r);
  EXPECT_EQ(tok.decode(p.ids).find("get_weather"), std::string::npos);
  int32_t calls_begin = *tok.token_to_id(chat_marker::kToolCallsBegin);
  EXPECT_EQ(p.hidden_stop, calls_begin);
  EXPECT_EQ(p.stop_ids.size(), 2u);
  // required: the turn starts with the tool-calls marker.
  r.tool_choice = ToolChoice::required;
  p = build_prompt(tok, r);
  EXPECT_EQ(p.prefill, std::string(chat_marker::kToolCallsBegin));
  EXPECT_EQ(p.ids.back(), calls_begin);
  // named: the call is opened up to its arguments.
  r.tool_choice = ToolChoice::named;
  r.tool_name = "get_weather";
  p = build_prompt(tok, r);
  EXPECT_EQ(tok.decode(std::vector<int32_t>(p.ids.end() - p.prefill_tokens, p.ids.end())),
            p.prefill);
  EXPECT_NE(p.prefill.find("function"), std::string::npos);
  EXPECT_TRUE(p.prefill.ends_with("get_weather\n```json\n"));
  // A named call's prefill plus the arguments the model writes parses as that call.
  ParsedAssistantTurn turn = parse_assistant_turn(
      p.prefill + "{\"city\": \"Paris\"}\n```" + std::string(chat_marker::kToolCallEnd) +
      std::string(chat_marker::kToolCallsEnd) + std::string(chat_marker::kEos));
  ASSERT_FALSE(turn.error.has_value()) << turn.error->message;
  ASSERT_EQ(turn.message.tool_calls.size(), 1u);
  EXPECT_EQ(turn.message.tool_calls[0].name, "get_weather");
}

// A completion as the scheduler would give it for `text` (greedy-like records).
Completion completion_of(const Tokenizer& tok, const std::string& text, FinishReason finish) {
  Completion c;
  for (int32_t id : tok.encode(text)) {
    TokenRecord t;
    t.id = id;
    t.logprob = -0.5f;
    t.model_logprob = -0.25f;
    c.tokens.push_back(t);
  }
  c.text = tok.decode(c.ids());
  c.finish = finish;
  return c;
}

// Streams `c` through ChoiceStreamer; returns the concatenated content, the tool calls and the
// finish reason its chunks carried.
json streamed(const Tokenizer& tok, const ChatRequest& r, const Prompt& p, const Completion& c) {
  ChoiceStreamer s(tok, r, p, 0);
  std::vector<json> chunks = s.start();
  for (const TokenRecord& t : c.tokens)
    for (json& j : s.on_token(t)) chunks.push_back(j);
  for (json& j : s.finish(c)) chunks.push_back(j);
  std::string content;
  json calls = json::array();
  json finish = nullptr;
  for (const json& ch : chunks) {
    if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
    if (ch["delta"].contains("tool_calls"))
      for (const json& tc : ch["delta"]["tool_calls"]) calls.push_back(tc["function"]);
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  return {{"content", content}, {"calls", calls}, {"finish", finish}, {"chunks", chunks.size()}};
}

TEST(ServeStream, ChunksSayWhatTheWholeReplySays) {
  const Tokenizer& tok = tokenizer();
  const std::string eos(chat_marker::kEos);
  ChatRequest r = parse_chat_request(valid_body().dump());
  Prompt p = build_prompt(tok, r);
  ChatMessage call_msg;
  call_msg.role = ChatRole::assistant;
  call_msg.content = "Let me look.";
  call_msg.tool_calls = {{"function", "get_weather", "{\"city\": \"Oslo\"}"},
                         {"function", "get_weather", "{\"city\": \"Lima\"}"}};
  const std::vector<std::pair<std::string, FinishReason>> turns = {
      {"Hello there, ünïcödé ✓ text." + eos, FinishReason::stop_id},
      {"cut short without an end", FinishReason::length},
      {"bytes that are not UTF-8: \xE2\x82 and \xFF, then text" + eos, FinishReason::stop_id},
      {render_assistant_turn(call_msg), FinishReason::stop_id},
      {"broken " + std::string(chat_marker::kToolCallsBegin) + "garbage" + eos,
       FinishReason::stop_id},
  };
  for (const auto& [text, finish] : turns) {
    Completion c = completion_of(tok, text, finish);
    ChoiceResult whole = finish_choice(p, c);
    json s = streamed(tok, r, p, c);
    EXPECT_EQ(s["content"], whole.turn.message.content) << text;
    EXPECT_EQ(s["finish"], whole.finish_reason) << text;
    ASSERT_EQ(s["calls"].size(), whole.turn.message.tool_calls.size()) << text;
    for (size_t i = 0; i < s["calls"].size(); ++i) {
      EXPECT_EQ(s["calls"][i]["name"], whole.turn.message.tool_calls[i].name);
      EXPECT_EQ(s["calls"][i]["arguments"], whole.turn.message.tool_calls[i].arguments);
    }
  }
  Completion c = completion_of(tok, render_assistant_turn(call_msg), FinishReason::stop_id);
  ChoiceResult res = finish_choice(p, c);
  EXPECT_EQ(res.finish_reason, "tool_calls");
  EXPECT_EQ(res.turn.message.content, "Let me look.");
  // A stop string is never sent, not even its first bytes.
  r.stop = {"STOP"};
  Completion stopped = completion_of(tok, "abc STOP", FinishReason::stop_string);
  stopped.text = "abc ";
  json s = streamed(tok, r, p, stopped);
  EXPECT_EQ(s["content"], "abc ");
  EXPECT_EQ(s["finish"], "stop");
}

// ---------------------------------------------------------------------------------------------
// The real binary.

class ServeServer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    random_ = new ServerProcess(models().random_dir, {"--max-sequences", "16"});
    tools_ = new ServerProcess(models().tools_dir);
  }
  static void TearDownTestSuite() {
    delete random_;
    delete tools_;
    random_ = tools_ = nullptr;
  }
  static void require_openai() {
    if (!fs::exists(openai_module() + "/package.json"))
      FAIL() << "the openai npm package is missing at " << openai_module()
             << ": run scripts/install-deps";
  }
  static httplib::Result post(ServerProcess& s, const std::string& path, const std::string& body,
                              httplib::Headers headers = {}) {
    httplib::Client c("127.0.0.1", s.port());
    c.set_read_timeout(120, 0);
    return c.Post(path.c_str(), headers, body, "application/json");
  }
  static ServerProcess* random_;
  static ServerProcess* tools_;
};
ServerProcess* ServeServer::random_ = nullptr;
ServerProcess* ServeServer::tools_ = nullptr;

TEST_F(ServeServer, FixtureModelLearnedItsToolCalls) {
  // The fine-tuning fixture stays small: seconds, and it reached a low loss.
  EXPECT_LT(models().sft_seconds, 60.0);
  EXPECT_LT(models().final_loss, 0.05);
}

TEST_F(ServeServer, OpenaiPackagePlainRequest) {
  require_openai();
  NodeResult r = run_node("plain.cjs", *random_);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.result["models"], json::array({"tiny"}));
  EXPECT_GT(r.result["usage"]["prompt_tokens"].get<int>(), 3);
}

TEST_F(ServeServer, OpenaiPackageStreamingRequest) {
  require_openai();
  NodeResult r = run_node("stream.cjs", *random_);
  ASSERT_EQ(r.status, 0) << r.output;
  // Role chunk, content chunks, the finish chunk, the usage chunk.
  EXPECT_GE(r.result["chunks"].get<int>(), 4) << r.output;
}

TEST_F(ServeServer, OpenaiPackageToolCallsFromTheFineTunedModel) {
  require_openai();
  NodeResult r = run_node("tools.cjs", *tools_);
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_EQ(r.result["calls"].size(), cities().size()) << r.output;
  for (size_t i = 0; i < cities().size(); ++i) {
    const json& c = r.result["calls"][i];
    EXPECT_EQ(c["name"], "get_weather");
    EXPECT_EQ(c["args"], json({{"city", cities()[i]}})) << c;
    EXPECT_EQ(c["stream_name"], "get_weather");
    EXPECT_EQ(c["stream_args"], c["args"]);
    EXPECT_TRUE(c["content"].is_null()) << c;  // a pure tool-call turn: content null
  }
}

TEST_F(ServeServer, OpenaiPackageNAndLogprobs) {
  require_openai();
  NodeResult r = run_node("n_logprobs.cjs", *random_);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_GE(r.result["distinct"].get<int>(), 2) << r.output;  // three samples, not one thrice
  // Every generated token but a closing end-of-sentence has its entry.
  int lp = r.result["logprob_tokens"], completion = r.result["completion_tokens"];
  EXPECT_EQ(lp + (r.result["finish"] == "stop" ? 1 : 0), completion) << r.output;
}

TEST_F(ServeServer, OpenaiPackageTwelveConcurrentClientsShareTheBatch) {
  require_openai();
  NodeResult r = run_node("concurrent.cjs", *random_);
  ASSERT_EQ(r.status, 0) << r.output;
  // Greedy replies do not depend on what else is in the batch.
  EXPECT_EQ(r.result["same"], 12) << r.output;
  httplib::Client c("127.0.0.1", random_->port());
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  json health = json::parse(h->body);
  // At least half of the clients were generating at the same time (one batch).
  EXPECT_GE(health["peak_generating"].get<int>(), 6) << health;
}

TEST_F(ServeServer, OpenaiPackageSeesOpenAIErrors) {
  require_openai();
  ServerProcess keyed(models().random_dir, {"--api-key", "sekrit"});
  NodeResult r = run_node("errors.cjs", keyed, "sekrit");
  ASSERT_EQ(r.status, 0) << r.output;
  const json& o = r.result;
  EXPECT_EQ(o["unknown_field"]["status"], 400);
  EXPECT_EQ(o["unknown_field"]["param"], "frobnicate");
  EXPECT_EQ(o["unknown_field"]["code"], "unknown_parameter");
  EXPECT_EQ(o["bad_temperature"]["status"], 400);
  EXPECT_EQ(o["bad_temperature"]["param"], "temperature");
  EXPECT_EQ(o["unknown_model"]["status"], 404);
  EXPECT_EQ(o["unknown_model"]["code"], "model_not_found");
  EXPECT_EQ(o["bad_key"]["status"], 401);
  EXPECT_EQ(o["bad_key"]["code"], "invalid_api_key");
}

void expect_error(const httplib::Result& res, int status, const std::string& code,
                  const std::string& what) {
  ASSERT_TRUE(res) << what << ": no response";
  EXPECT_EQ(res->status, status) << what << ": " << res->body;
  json j = json::parse(res->body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << res->body;
  EXPECT_EQ(j["error"]["code"], code) << what << ": " << res->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_TRUE(j["error"].contains("param") && j["error"].contains("type"));
}

TEST_F(ServeServer, EveryErrorStatusInOpenAIForm) {
  ServerProcess keyed(models().random_dir, {"--api-key", "sekrit", "--max-body-bytes", "4096"});
  httplib::Headers auth = {{"Authorization", "Bearer sekrit"}};
  const std::string chat = "/v1/chat/completions";
  expect_error(post(keyed, chat, valid_body().dump()), 401, "missing_api_key", "no key");
  expect_error(post(keyed, chat, valid_body().dump(), {{"Authorization", "Bearer nope"}}), 401,
               "invalid_api_key", "wrong key");
  expect_error(post(keyed, chat, "{not json", auth), 400, "invalid_json", "malformed JSON");
  expect_error(post(keyed, "/v1/completions", valid_body().dump(), auth), 404, "unknown_url",
               "unknown route");
  json other = valid_body();
  other["model"] = "gpt-9";
  expect_error(post(keyed, chat, other.dump(), auth), 404, "model_not_found", "unknown model");
  httplib::Client c("127.0.0.1", keyed.port());
  expect_error(c.Get(chat.c_str(), auth), 405, "method_not_allowed", "GET on chat");
  expect_error(c.Delete("/v1/models", auth), 405, "method_not_allowed", "DELETE on models");
  std::string huge = valid_body().dump();
  huge.insert(huge.size() - 1, ", \"user\": \"" + std::string(8000, 'x') + "\"");
  expect_error(post(keyed, chat, huge, auth), 413, "request_too_large", "oversize body");
  // Context: the model has 1024 positions.
  json longer = valid_body();
  longer["max_tokens"] = 2000;
  auto res = post(keyed, chat, longer.dump(), auth);
  expect_error(res, 400, "context_length_exceeded", "max_tokens beyond the context");
  EXPECT_NE(res->body.find("1024"), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("2000 in the completion"), std::string::npos) << res->body;
  json long_prompt = valid_body();
  std::string words;
  for (int i = 0; i < 900; ++i) words += "zq" + std::to_string(i) + " ";
  long_prompt["messages"][0]["content"] = words;
  ServerProcess big(models().random_dir);  // (the keyed one refuses bodies over 4 KiB)
  res = post(big, chat, long_prompt.dump());
  expect_error(res, 400, "context_length_exceeded", "prompt beyond the context");
  // And the servers still serve.
  auto ok = post(keyed, chat, valid_body().dump(), auth);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  auto models_list = c.Get("/v1/models", auth);
  ASSERT_TRUE(models_list);
  EXPECT_EQ(json::parse(models_list->body)["data"][0]["id"], "tiny");
  // One access-log line per request, with status and tokens (complete once the server has
  // stopped: a line is written after its response).
  EXPECT_EQ(keyed.terminate(), 0);
  std::string log = keyed.stderr_text();
  EXPECT_NE(log.find("POST /v1/chat/completions 401"), std::string::npos) << log;
  EXPECT_NE(log.find("POST /v1/chat/completions 413"), std::string::npos) << log;
  EXPECT_NE(log.find("POST /v1/chat/completions 200 prompt_tokens="), std::string::npos) << log;
}

// Opens a raw connection, sends a streamed request, reads until `events` SSE events arrived, then
// closes the socket (the client leaves mid-stream).
void leave_mid_stream(int port, const json& body, int events) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string b = body.dump();
  std::string req =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(b.size()) + "\r\n\r\n" + b;
  ASSERT_EQ(send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
  std::string got;
  char buf[1024];
  while (true) {
    size_t count = 0;
    for (size_t at = got.find("data: "); at != std::string::npos; at = got.find("data: ", at + 1))
      ++count;
    if (int(count) >= events) break;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0) << got;
    got.append(buf, size_t(n));
  }
  close(fd);
}

TEST_F(ServeServer, ClientLeavingMidStreamCancelsItsGeneration) {
  ServerProcess one(models().random_dir, {"--max-sequences", "1"});
  json body = valid_body();
  body["stream"] = true;
  body["max_tokens"] = 1000;
  body["seed"] = 5;
  body["temperature"] = 1.0;
  for (int i = 0; i < 3; ++i) leave_mid_stream(one.port(), body, 3);
  // A left stream is cancelled (logged with the few tokens it had), so the one batch slot is free.
  std::string log;
  for (int i = 0; i < 200; ++i) {
    log = one.stderr_text();
    size_t n = 0;
    for (size_t at = log.find("stream cancelled"); at != std::string::npos;
         at = log.find("stream cancelled", at + 1))
      ++n;
    if (n >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // A cancelled stream stopped after a few of its 1,000 tokens.
  size_t cancelled = 0;
  std::stringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("stream cancelled") == std::string::npos) continue;
    ++cancelled;
    size_t at = line.find("completion_tokens=");
    ASSERT_NE(at, std::string::npos) << line;
    EXPECT_LT(std::stoi(line.substr(at + 18)), 1000) << line;
  }
  // (A stream whose whole reply fit in the socket buffers before the client left ends normally:
  // the server only learns of a closed connection when a write fails. On this model at least
  // one of the three is always still generating.)
  EXPECT_GE(cancelled, 1u) << log;
  auto ok = post(one, "/v1/chat/completions", valid_body().dump());
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_TRUE(one.alive());
  // Nothing is left generating (the engine thread ends a request just after its reply is out).
  httplib::Client c("127.0.0.1", one.port());
  json health;
  for (int i = 0; i < 100; ++i) {
    health = json::parse(c.Get("/health")->body);
    if (health["generating"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(health["generating"], 0) << health;
}

// Valid bodies mutated at random (bytes flipped, cut short, values swapped for other types): every
// answer is a JSON reply with a 2xx or 4xx status, never a crash or a 5xx; a valid request then
// succeeds.
TEST_F(ServeServer, FuzzedRequestsGetErrorsAndTheServerKeepsServing) {
  std::mt19937_64 rng(20261129);
  std::vector<json> bases;
  // Both token limits: a swap must null both to ask for the whole context.
  bases.push_back(valid_body());
  bases.back()["max_completion_tokens"] = 3;
  json tools = valid_body();
  tools["tools"] = weather_tools();
  tools["tool_choice"] = "auto";
  tools["stop"] = json::array({"x", "y"});
  bases.push_back(tools);
  json streamed_body = valid_body();
  streamed_body["stream"] = true;
  streamed_body["stream_options"] = {{"include_usage", true}};
  streamed_body["logprobs"] = true;
  streamed_body["top_logprobs"] = 2;
  streamed_body["n"] = 2;
  bases.push_back(streamed_body);
  json history = valid_body();
  history["messages"] = json::parse(R"([{"role": "system", "content": "s"},
      {"role": "user", "content": "weather?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])");
  bases.push_back(history);
  const std::vector<json> swaps = {
      nullptr,  0, -1, 1.5, "s", true, json::array(), json::object(), json::array({1, "a"}),
      100000000};
  // Swap a random value anywhere in the document for one of another type.
  std::function<void(json&)> swap_one = [&](json& j) {
    if ((j.is_object() || j.is_array()) && !j.empty() && rng() % 3 != 0) {
      size_t k = rng() % j.size();
      auto it = j.begin();
      std::advance(it, k);
      swap_one(*it);
    } else {
      j = swaps[rng() % swaps.size()];
    }
  };
  httplib::Client c("127.0.0.1", random_->port());
  c.set_read_timeout(60, 0);
  int counts[6] = {0, 0, 0, 0, 0, 0};
  const int total = 3000;
  for (int i = 0; i < total; ++i) {
    json base = bases[rng() % bases.size()];
    std::string body;
    switch (rng() % 4) {
      case 0: {  // byte flips
        body = base.dump();
        for (int f = 0; f < 1 + int(rng() % 4); ++f) body[rng() % body.size()] = char(rng() % 256);
        break;
      }
      case 1:  // truncation
        body = base.dump();
        body.resize(rng() % body.size());
        break;
      case 2:  // type swap
        swap_one(base);
        body = base.dump(-1, ' ', false, json::error_handler_t::replace);
        break;
      default:  // a swap and a flip
        swap_one(base);
        body = base.dump(-1, ' ', false, json::error_handler_t::replace);
        body[rng() % body.size()] = char(rng() % 256);
    }
    auto res = c.Post("/v1/chat/completions", body, "application/json");
    ASSERT_TRUE(res) << "request " << i << " got no response: " << body;
    ASSERT_TRUE(res->status == 200 || (res->status >= 400 && res->status < 500))
        << res->status << " for " << body << ": " << res->body;
    counts[res->status / 100]++;
    if (res->status >= 400) {
      json j = json::parse(res->body, nullptr, false);
      ASSERT_TRUE(j.is_object() && j["error"]["message"].is_string()) << res->body;
    }
  }
  EXPECT_GT(counts[4], total / 2);  // most mutations are errors
  EXPECT_GT(counts[2], 0);          // and some still are valid requests
  auto ok = post(*random_, "/v1/chat/completions", valid_body().dump());
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_TRUE(random_->alive());
}

}  // namespace
}  // namespace shoal::serve
