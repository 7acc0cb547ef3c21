// The OpenAI chat-completions API over the chat format (openai.h).
#include "serve/openai.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "actors/agent_loop.h"
#include "base/error.h"
#include "engine/tokenizer/chat_format.h"

namespace shoal::serve {

using nlohmann::json;

namespace {

const char* type_name(int status) {
  switch (status) {
    case 400:
    case 404:
    case 405:
    case 413:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    default:
      return "server_error";
  }
}

const char* json_type(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

[[noreturn]] void wrong_type(const std::string& param, const char* want, const json& got) {
  bad_request(
      param,
      fmt::format("Invalid type for '{}': expected {}, but got {}.", param, want, json_type(got)),
      "invalid_type");
}

// Field readers: a null value reads as absent (as OpenAI treats it).
const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> get_bool(const json& j, const char* key) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(key, "a boolean", *v);
  return v->get<bool>();
}

std::optional<int64_t> get_int(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  int64_t x = 0;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
      bad_request(key, fmt::format("'{}' is too large.", key));
    x = v->get<int64_t>();
  } else if (v->is_number_float() && std::isfinite(v->get<double>()) &&
             v->get<double>() == std::floor(v->get<double>()) &&
             std::fabs(v->get<double>()) < 9e15) {
    x = int64_t(v->get<double>());  // 2.0 is an integer in JSON Schema terms
  } else {
    wrong_type(key, "an integer", *v);
  }
  if (x < lo || x > hi)
    bad_request(key, fmt::format("Invalid value for '{}': {} is not in [{}, {}].", key, x, lo, hi));
  return x;
}

std::optional<double> get_number(const json& j, const char* key, double lo, double hi) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(key, "a number", *v);
  double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    bad_request(key, fmt::format("Invalid value for '{}': {} is not in [{}, {}].", key, x, lo, hi));
  return x;
}

std::optional<std::string> get_string(const json& j, const char* key) {
  const json* v = field(j, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(key, "a string", *v);
  return v->get<std::string>();
}

bool valid_function_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
}

void check_tools(const json& tools) {
  if (!tools.is_array()) wrong_type("tools", "an array", tools);
  std::set<std::string> names;
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string p = fmt::format("tools[{}]", i);
    const json& t = tools[i];
    if (!t.is_object()) wrong_type(p, "an object", t);
    for (auto& [k, v] : t.items())
      if (k != "type" && k != "function")
        bad_request(p + "." + k, fmt::format("Unrecognized argument '{}' in {}.", k, p),
                    "unknown_parameter");
    if (!t.contains("type") || !t["type"].is_string() || t["type"] != "function")
      bad_request(p + ".type", "Only tools of type 'function' are supported.");
    const json* fn = field(t, "function");
    if (!fn)
      bad_request(p + ".function", "Missing required parameter: '" + p + ".function'.",
                  "missing_required_parameter");
    if (!fn->is_object()) wrong_type(p + ".function", "an object", *fn);
    for (auto& [k, v] : fn->items())
      if (k != "name" && k != "description" && k != "parameters" && k != "strict")
        bad_request(p + ".function." + k,
                    fmt::format("Unrecognized argument '{}' in {}.function.", k, p),
                    "unknown_parameter");
    const json* name = field(*fn, "name");
    if (!name)
      bad_request(p + ".function.name", "Missing required parameter: '" + p + ".function.name'.",
                  "missing_required_parameter");
    if (!name->is_string()) wrong_type(p + ".function.name", "a string", *name);
    if (!valid_function_name(name->get<std::string>()))
      bad_request(p + ".function.name",
                  "Invalid function name: use 1 to 64 letters, digits, '_', '-' or '.'.");
    if (!names.insert(name->get<std::string>()).second)
      bad_request(p + ".function.name",
                  fmt::format("Duplicate function name '{}'.", name->get<std::string>()));
    if (const json* d = field(*fn, "description"); d && !d->is_string())
      wrong_type(p + ".function.description", "a string", *d);
    if (const json* ps = field(*fn, "parameters"); ps && !ps->is_object())
      wrong_type(p + ".function.parameters", "an object", *ps);
    if (const json* s = field(*fn, "strict"); s && !s->is_boolean())
      wrong_type(p + ".function.strict", "a boolean", *s);
  }
}

// The request's top-level fields, by how this server treats them (docs/SERVE.md).
const std::set<std::string>& supported_fields() {
  static const std::set<std::string> s = {"model",
                                          "messages",
                                          "tools",
                                          "tool_choice",
                                          "stream",
                                          "stream_options",
                                          "n",
                                          "temperature",
                                          "top_p",
                                          "top_k",
                                          "min_p",
                                          "max_tokens",
                                          "max_completion_tokens",
                                          "stop",
                                          "seed",
                                          "logprobs",
                                          "top_logprobs"};
  return s;
}
// Accepted and without effect on the output.
const std::set<std::string>& ignored_fields() {
  static const std::set<std::string> s = {"user", "metadata", "store", "service_tier",
                                          "parallel_tool_calls"};
  return s;
}
// Accepted only at the value that means "off".
const std::set<std::string>& neutral_only_fields() {
  static const std::set<std::string> s = {"frequency_penalty", "presence_penalty", "logit_bias",
                                          "response_format"};
  return s;
}

void check_neutral(const json& j) {
  for (const char* k : {"frequency_penalty", "presence_penalty"}) {
    std::optional<double> v = get_number(j, k, -2.0, 2.0);
    if (v && *v != 0.0)
      bad_request(k, fmt::format("'{}' is not supported by this server (only 0).", k),
                  "unsupported_value");
  }
  if (const json* v = field(j, "logit_bias")) {
    if (!v->is_object()) wrong_type("logit_bias", "an object", *v);
    if (!v->empty())
      bad_request("logit_bias", "'logit_bias' is not supported by this server (only {}).",
                  "unsupported_value");
  }
  if (const json* v = field(j, "response_format")) {
    if (!v->is_object()) wrong_type("response_format", "an object", *v);
    const json* t = field(*v, "type");
    if (!t || !t->is_string())
      bad_request("response_format.type", "'response_format.type' must be a string.");
    if (*t != "text")
      bad_request("response_format", "Only response_format {\"type\": \"text\"} is supported.",
                  "unsupported_value");
  }
}

void ignore_typed(const json& j) {
  if (const json* v = field(j, "user"); v && !v->is_string()) wrong_type("user", "a string", *v);
  if (const json* v = field(j, "metadata"); v && !v->is_object())
    wrong_type("metadata", "an object", *v);
  get_bool(j, "store");
  get_bool(j, "parallel_tool_calls");
  get_string(j, "service_tier");
}

std::mt19937_64& thread_rng() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng;
}

int32_t marker_id(const Tokenizer& tok, std::string_view marker) {
  std::optional<int32_t> id = tok.token_to_id(marker);
  if (!id)
    throw ApiError(
        400,
        fmt::format("This model's tokenizer has no {} token, so it cannot call tools.", marker),
        "tool_choice", "tools_unsupported");
  return *id;
}

}  // namespace

ApiError::ApiError(int status, std::string message, std::string param, std::string code,
                   std::string type)
    : std::runtime_error(std::move(message)),
      status_(status),
      type_(type.empty() ? type_name(status) : std::move(type)),
      param_(std::move(param)),
      code_(std::move(code)) {}

json ApiError::body() const {
  return {{"error",
           {{"message", what()},
            {"type", type_},
            {"param", param_.empty() ? json(nullptr) : json(param_)},
            {"code", code_.empty() ? json(nullptr) : json(code_)}}}};
}

void bad_request(const std::string& param, const std::string& message, const std::string& code) {
  throw ApiError(400, message, param, code);
}

ChatRequest parse_chat_request(std::string_view body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400,
                   fmt::format("We could not parse the JSON body of your request: {}", e.what()),
                   "", "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400,
                   fmt::format("The request body must be a JSON object, got {}.", json_type(j)), "",
                   "invalid_json");
  for (auto& [k, v] : j.items())
    if (!supported_fields().count(k) && !ignored_fields().count(k) &&
        !neutral_only_fields().count(k))
      bad_request(k, fmt::format("Unrecognized request argument supplied: {}", k),
                  "unknown_parameter");
  check_neutral(j);
  ignore_typed(j);

  ChatRequest r;
  std::optional<std::string> model = get_string(j, "model");
  if (!model)
    bad_request("model", "Missing required parameter: 'model'.", "missing_required_parameter");
  r.model = *model;
  const json* messages = field(j, "messages");
  if (!messages)
    bad_request("messages", "Missing required parameter: 'messages'.",
                "missing_required_parameter");
  if (!messages->is_array()) wrong_type("messages", "an array", *messages);
  if (messages->empty()) bad_request("messages", "'messages' must not be empty.");
  r.messages = *messages;
  // OpenAI's newer name for system instructions.
  for (json& m : r.messages)
    if (m.is_object() && m.contains("role") && m["role"] == "developer") m["role"] = "system";
  try {
    chat_messages_from_json(r.messages);
  } catch (const Error& e) {
    bad_request("messages", fmt::format("Invalid 'messages': {}", e.message()));
  }

  if (const json* tools = field(j, "tools")) {
    check_tools(*tools);
    r.tools = *tools;
  }
  if (const json* tc = field(j, "tool_choice")) {
    if (tc->is_string()) {
      std::string s = tc->get<std::string>();
      if (s == "none")
        r.tool_choice = ToolChoice::none;
      else if (s == "auto")
        r.tool_choice = ToolChoice::automatic;
      else if (s == "required")
        r.tool_choice = ToolChoice::required;
      else
        bad_request("tool_choice", fmt::format("Invalid value for 'tool_choice': '{}' (use 'none', "
                                               "'auto', 'required' or a function).",
                                               s));
    } else if (tc->is_object()) {
      const json* type = field(*tc, "type");
      const json* fn = field(*tc, "function");
      if (!type || *type != "function" || !fn || !fn->is_object() || !field(*fn, "name") ||
          !(*fn)["name"].is_string())
        bad_request("tool_choice",
                    "'tool_choice' as an object must be {\"type\": \"function\", \"function\": "
                    "{\"name\": ...}}.");
      r.tool_choice = ToolChoice::named;
      r.tool_name = (*fn)["name"].get<std::string>();
      bool offered = std::any_of(r.tools.begin(), r.tools.end(), [&](const json& t) {
        return t["function"]["name"] == r.tool_name;
      });
      if (!offered)
        bad_request("tool_choice",
                    fmt::format("'tool_choice' names the function '{}', which is not in 'tools'.",
                                r.tool_name));
    } else {
      wrong_type("tool_choice", "a string or an object", *tc);
    }
    if (r.tools.empty() &&
        (r.tool_choice == ToolChoice::required || r.tool_choice == ToolChoice::named))
      bad_request("tool_choice", "'tool_choice' requires 'tools' when it is not 'none' or 'auto'.");
  }
  r.stream = get_bool(j, "stream").value_or(false);
  if (const json* so = field(j, "stream_options")) {
    if (!r.stream)
      bad_request("stream_options", "'stream_options' is only allowed when 'stream' is true.");
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    for (auto& [k, v] : so->items())
      if (k != "include_usage")
        bad_request("stream_options." + k,
                    fmt::format("Unrecognized argument 'stream_options.{}'.", k),
                    "unknown_parameter");
    std::optional<bool> u = get_bool(*so, "include_usage");
    r.include_usage = u.value_or(false);
  }
  r.n = get_int(j, "n", 1, 128).value_or(1);
  r.temperature = get_number(j, "temperature", 0.0, 2.0).value_or(1.0);
  r.top_p = get_number(j, "top_p", 0.0, 1.0).value_or(1.0);
  if (r.top_p <= 0) bad_request("top_p", "Invalid value for 'top_p': it must be in (0, 1].");
  r.top_k = get_int(j, "top_k", 0, int64_t(1) << 31).value_or(0);
  r.min_p = get_number(j, "min_p", 0.0, 1.0).value_or(0.0);
  std::optional<int64_t> mt = get_int(j, "max_tokens", 1, int64_t(1) << 40);
  std::optional<int64_t> mct = get_int(j, "max_completion_tokens", 1, int64_t(1) << 40);
  r.max_tokens = mct ? mct : mt;
  if (const json* stop = field(j, "stop")) {
    if (stop->is_string()) {
      r.stop = {stop->get<std::string>()};
    } else if (stop->is_array()) {
      if (stop->size() > 4) bad_request("stop", "'stop' may hold at most 4 sequences.");
      for (const json& s : *stop) {
        if (!s.is_string()) wrong_type("stop", "a string or an array of strings", s);
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      wrong_type("stop", "a string or an array of strings", *stop);
    }
    for (const std::string& s : r.stop)
      if (s.empty()) bad_request("stop", "A stop sequence must not be empty.");
  }
  if (std::optional<int64_t> seed = get_int(j, "seed", INT64_MIN, INT64_MAX))
    r.seed = static_cast<uint64_t>(*seed);
  r.logprobs = get_bool(j, "logprobs").value_or(false);
  std::optional<int64_t> top = get_int(j, "top_logprobs", 0, 20);
  if (top && !r.logprobs)
    bad_request("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.");
  r.top_logprobs = top.value_or(0);
  return r;
}

Prompt build_prompt(const Tokenizer& tok, const ChatRequest& r) {
  Prompt p;
  json messages = r.messages;
  const bool offer = !r.tools.empty() && r.tool_choice != ToolChoice::none;
  try {
    if (offer) messages = actors::agent_prompt(messages, r.tools, /*list_tools=*/true);
    ChatRenderOptions ro;
    ro.add_generation_prompt = true;
    p.ids = render_chat_tokens(tok, chat_messages_from_json(messages), ro).ids;
  } catch (const Error& e) {
    bad_request(offer ? "tools" : "messages", e.message());
  }
  std::optional<int32_t> eos = tok.token_to_id(chat_marker::kEos);
  if (!eos) eos = tok.eos_id();
  if (eos) p.stop_ids.push_back(*eos);
  namespace mk = chat_marker;
  auto add_marker = [&](std::string_view m) {
    p.ids.push_back(marker_id(tok, m));
    p.prefill += m;
    ++p.prefill_tokens;
  };
  auto add_text = [&](const std::string& text) {
    std::vector<int32_t> ids = tok.encode(text, SpecialText::plain);
    p.ids.insert(p.ids.end(), ids.begin(), ids.end());
    p.prefill += text;
    p.prefill_tokens += int64_t(ids.size());
  };
  if (r.tool_choice == ToolChoice::none) {
    // Generation stops where a tool-calls block would begin; that marker is not part of the reply.
    if (std::optional<int32_t> id = tok.token_to_id(mk::kToolCallsBegin)) {
      p.stop_ids.push_back(*id);
      p.hidden_stop = *id;
    }
  } else if (r.tool_choice == ToolChoice::required) {
    add_marker(mk::kToolCallsBegin);
  } else if (r.tool_choice == ToolChoice::named) {
    add_marker(mk::kToolCallsBegin);
    add_marker(mk::kToolCallBegin);
    add_text("function");
    add_marker(mk::kToolSep);
    add_text(r.tool_name + "\n```json\n");
  }
  return p;
}

json token_logprob_json(const Tokenizer& tok, const TokenRecord& t) {
  auto entry = [&](int32_t id, float lp) {
    std::string_view raw = tok.token_bytes(id);
    json bytes = json::array();
    for (char c : raw) bytes.push_back(int(static_cast<unsigned char>(c)));
    std::vector<int32_t> one = {id};
    return json{{"token", tok.decode(one)}, {"logprob", lp}, {"bytes", bytes}};
  };
  json e = entry(t.id, t.model_logprob);
  json top = json::array();
  for (auto& [id, lp] : t.top_logprobs) top.push_back(entry(id, lp));
  e["top_logprobs"] = top;
  return e;
}

std::string completion_text(const Prompt& prompt, const Completion& c) {
  std::string text = c.text;
  if (prompt.hidden_stop >= 0 && c.finish == FinishReason::stop_id && !c.tokens.empty() &&
      c.tokens.back().id == prompt.hidden_stop) {
    const std::string_view m = chat_marker::kToolCallsBegin;
    if (text.size() >= m.size() && text.compare(text.size() - m.size(), m.size(), m) == 0)
      text.resize(text.size() - m.size());
  }
  return text;
}

std::string finish_reason_of(const ParsedAssistantTurn& turn, const Completion& c) {
  if (!turn.message.tool_calls.empty()) return "tool_calls";
  if (c.finish == FinishReason::length) return "length";
  return "stop";
}

ChoiceResult finish_choice(const Prompt& prompt, const Completion& c) {
  ChoiceResult out;
  out.turn = parse_assistant_turn(prompt.prefill + completion_text(prompt, c));
  out.finish_reason = finish_reason_of(out.turn, c);
  return out;
}

json choice_message_json(const ParsedAssistantTurn& turn, const std::vector<std::string>& ids) {
  json m = {{"role", "assistant"}, {"refusal", nullptr}};
  const ChatMessage& msg = turn.message;
  m["content"] = msg.content.empty() && !msg.tool_calls.empty() ? json(nullptr) : json(msg.content);
  if (!msg.tool_calls.empty()) {
    json calls = json::array();
    for (size_t i = 0; i < msg.tool_calls.size(); ++i)
      calls.push_back(
          {{"id", ids[i]},
           {"type", "function"},
           {"function",
            {{"name", msg.tool_calls[i].name}, {"arguments", msg.tool_calls[i].arguments}}}});
    m["tool_calls"] = calls;
  }
  return m;
}

std::string random_id(std::string_view prefix) {
  static const char* hex = "0123456789abcdef";
  std::string s(prefix);
  std::uniform_int_distribution<int> d(0, 15);
  for (int i = 0; i < 24; ++i) s += hex[d(thread_rng())];
  return s;
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {

bool is_stop(const Prompt& p, int32_t id) {
  return std::find(p.stop_ids.begin(), p.stop_ids.end(), id) != p.stop_ids.end();
}

}  // namespace

json chat_completion_json(const Tokenizer& tok, const ChatRequest& r, const Prompt& p,
                          const std::vector<Completion>& samples, const std::string& id,
                          int64_t created, const std::string& model) {
  json choices = json::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Completion& c = samples[i];
    completion_tokens += int64_t(c.tokens.size());
    ChoiceResult res = finish_choice(p, c);
    std::vector<std::string> call_ids;
    for (size_t k = 0; k < res.turn.message.tool_calls.size(); ++k)
      call_ids.push_back(random_id("call_"));
    json lp = nullptr;
    if (r.logprobs) {
      json content = json::array();
      for (const TokenRecord& t : c.tokens)
        if (!is_stop(p, t.id)) content.push_back(token_logprob_json(tok, t));
      lp = {{"content", content}, {"refusal", nullptr}};
    }
    choices.push_back({{"index", i},
                       {"message", choice_message_json(res.turn, call_ids)},
                       {"logprobs", lp},
                       {"finish_reason", res.finish_reason}});
  }
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", model},
          {"system_fingerprint", nullptr},
          {"choices", choices},
          {"usage", usage_json(int64_t(p.ids.size()), completion_tokens)}};
}

// ---------------------------------------------------------------------------------------------
// ChoiceStreamer

ChoiceStreamer::ChoiceStreamer(const Tokenizer& tok, const ChatRequest& r, const Prompt& p,
                               int64_t index)
    : tok_(tok), prompt_(p), index_(index), logprobs_(r.logprobs), stops_(r.stop), decoder_(tok) {
  for (const std::string& s : stops_) hold_ = std::max(hold_, s.size() - 1);
  parser_.feed(p.prefill);  // the forced start of the turn: markers only, no content
}

json ChoiceStreamer::choice(json delta) {
  json lp = nullptr;
  if (logprobs_ && !pending_logprobs_.empty()) {
    lp = {{"content", pending_logprobs_}, {"refusal", nullptr}};
    pending_logprobs_ = json::array();
  }
  return {
      {"index", index_}, {"delta", std::move(delta)}, {"logprobs", lp}, {"finish_reason", nullptr}};
}

std::vector<json> ChoiceStreamer::start() {
  return {choice({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}})};
}

void ChoiceStreamer::feed(std::string_view text, std::vector<json>& out) {
  std::vector<ChatParseEvent> events;
  parser_.feed(text, events);
  std::string content;
  for (const ChatParseEvent& e : events)
    if (e.kind == ChatParseEvent::Kind::content) content += e.text;
  if (!content.empty()) out.push_back(choice({{"content", content}}));
}

std::vector<json> ChoiceStreamer::on_token(const TokenRecord& t) {
  std::vector<json> out;
  if (is_stop(prompt_, t.id)) {
    if (t.id == prompt_.hidden_stop) return out;
  } else if (logprobs_) {
    pending_logprobs_.push_back(token_logprob_json(tok_, t));
  }
  decoder_.push(t.id, decoded_);
  // What is safe to send: complete UTF-8 (the decoder holds a split character back), before any
  // stop string, and not the possible start of one.
  size_t safe = decoded_.size() > hold_ ? decoded_.size() - hold_ : 0;
  for (const std::string& s : stops_) safe = std::min(safe, decoded_.find(s));
  while (safe > fed_ && (static_cast<unsigned char>(decoded_[safe]) & 0xC0) == 0x80) --safe;
  if (safe > fed_) {
    feed(std::string_view(decoded_).substr(fed_, safe - fed_), out);
    fed_ = safe;
  }
  return out;
}

std::vector<json> ChoiceStreamer::finish(const Completion& c) {
  std::vector<json> out;
  // The final text (stop string cut, a hidden stop marker dropped) less what was fed already.
  std::string text = completion_text(prompt_, c);
  std::vector<ChatParseEvent> events;
  if (text.size() > fed_) parser_.feed(std::string_view(text).substr(fed_), events);
  ParsedAssistantTurn turn = parser_.finish(&events);
  std::string content;
  for (const ChatParseEvent& e : events)
    if (e.kind == ChatParseEvent::Kind::content) content += e.text;
  if (!content.empty()) out.push_back(choice({{"content", content}}));
  const std::vector<ToolCall>& tool_calls = turn.message.tool_calls;
  if (!tool_calls.empty()) {
    json calls = json::array();
    for (size_t i = 0; i < tool_calls.size(); ++i)
      calls.push_back(
          {{"index", i},
           {"id", random_id("call_")},
           {"type", "function"},
           {"function", {{"name", tool_calls[i].name}, {"arguments", tool_calls[i].arguments}}}});
    out.push_back(choice({{"tool_calls", calls}}));
  }
  json last = choice(json::object());
  last["finish_reason"] = finish_reason_of(turn, c);
  out.push_back(last);
  return out;
}

}  // namespace shoal::serve
