// The task-family interface's shared parts (task.h): JSON forms, the Environment and Trajectory
// that execute tool calls, final-answer extraction and exact-number comparison. Not any family.
#include "tasks/task.h"

#include <cctype>

#include "base/error.h"
#include "sandbox/calculator.h"
#include "sandbox/files.h"
#include "sandbox/tools.h"

namespace shoal::tasks {

json to_json(const Task& t) {
  return {{"family", t.family},           {"version", t.version},   {"seed", t.seed},
          {"difficulty", t.difficulty},   {"messages", t.messages}, {"tools", t.tools},
          {"environment", t.environment}, {"verifier", t.verifier}, {"metadata", t.metadata}};
}

Task task_from_json(const json& j) {
  SHOAL_CHECK(j.is_object(), "task: expected an object, got {}", j.type_name());
  auto field = [&](const char* key, json::value_t type) -> const json& {
    SHOAL_CHECK(j.contains(key), "task: missing field '{}'", key);
    const json& v = j[key];
    bool ok = v.type() == type || (type == json::value_t::number_integer && v.is_number_integer());
    SHOAL_CHECK(ok, "task: field '{}' has type {}", key, v.type_name());
    return v;
  };
  Task t;
  t.family = field("family", json::value_t::string).get<std::string>();
  t.version = field("version", json::value_t::number_integer).get<int>();
  t.seed = field("seed", json::value_t::number_integer).get<uint64_t>();
  t.difficulty = field("difficulty", json::value_t::number_integer).get<int>();
  t.messages = field("messages", json::value_t::array);
  t.tools = field("tools", json::value_t::array);
  t.environment = field("environment", json::value_t::object);
  t.verifier = field("verifier", json::value_t::object);
  t.metadata = field("metadata", json::value_t::object);
  return t;
}

Task Family::generate(uint64_t seed, int difficulty) const {
  SHOAL_CHECK(difficulty >= kMinDifficulty && difficulty <= kMaxDifficulty,
              "family {}: difficulty {} is outside [{}, {}]", name(), difficulty, kMinDifficulty,
              kMaxDifficulty);
  return make(seed, difficulty);
}

Task Family::blank(uint64_t seed, int difficulty) const {
  Task t;
  t.family = name();
  t.version = version();
  t.seed = seed;
  t.difficulty = difficulty;
  return t;
}

Reward Family::verify(const Task& task, const Episode& episode, sandbox::Client* sandbox) const {
  SHOAL_CHECK(task.family == name(), "family {} asked to verify a task of family {}", name(),
              task.family);
  SHOAL_CHECK(!needs_sandbox() || sandbox, "family {} verifies in the sandbox: pass a client",
              name());
  try {
    if (!episode.messages.is_array()) return fail("the episode is not a list of messages");
    return check(task, episode, sandbox);
  } catch (const VerifierUnavailable&) {
    throw;
  } catch (const shoal::Error& e) {
    return fail("unreadable episode: " + e.message());
  } catch (const std::exception& e) {
    return fail(std::string("unreadable episode: ") + e.what());
  }
}

std::unique_ptr<EnvState> Family::open(const Task&, sandbox::Client*) const {
  return nullptr;
}

json Family::call_tool(const Task&, EnvState*, const std::string& name, const json&) const {
  SHOAL_FAIL("unknown tool '{}'", name);
}

// ---- Environment and Trajectory ----

Environment::Environment(const Family& family, const Task& task, sandbox::Client* sandbox)
    : family_(family), task_(task) {
  SHOAL_CHECK(!family.needs_sandbox() || sandbox,
              "family {} runs tools in the sandbox: pass a client", family.name());
  state_ = family.open(task, sandbox);
}

json Environment::call(const std::string& name, const json& args) {
  bool offered = false;
  for (const auto& t : task_.tools)
    offered = offered ||
              (t.is_object() && t.contains("function") && t["function"].value("name", "") == name);
  if (!offered) return {{"error", "unknown tool '" + name + "' (not offered in this task)"}};
  if (!args.is_object()) return {{"error", "arguments must be a JSON object"}};
  try {
    return family_.call_tool(task_, state_.get(), name, args);
  } catch (const shoal::Error& e) {
    return {{"error", e.message()}};
  } catch (const sandbox::ToolError& e) {
    return {{"error", e.message}};
  } catch (const std::exception& e) {
    return {{"error", e.what()}};
  }
}

namespace {
std::string result_text(const json& result) {
  return result.is_string() ? result.get<std::string>() : result.dump();
}
}  // namespace

json Trajectory::call(const std::string& name, const json& args, const std::string& thought) {
  std::string id = "call_" + std::to_string(next_id_++);
  json assistant = {{"role", "assistant"},
                    {"content", thought.empty() ? json(nullptr) : json(thought)},
                    {"tool_calls",
                     {{{"id", id},
                       {"type", "function"},
                       {"function", {{"name", name}, {"arguments", args.dump()}}}}}}};
  episode_.messages.push_back(std::move(assistant));
  json result = env_.call(name, args);
  episode_.messages.push_back(
      {{"role", "tool"}, {"tool_call_id", id}, {"content", result_text(result)}});
  return result;
}

std::vector<json> Trajectory::call_all(const std::vector<std::pair<std::string, json>>& calls) {
  json assistant = {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array()}};
  std::vector<std::string> ids;
  for (const auto& [name, args] : calls) {
    ids.push_back("call_" + std::to_string(next_id_++));
    assistant["tool_calls"].push_back({{"id", ids.back()},
                                       {"type", "function"},
                                       {"function", {{"name", name}, {"arguments", args.dump()}}}});
  }
  episode_.messages.push_back(std::move(assistant));
  std::vector<json> results;
  for (size_t i = 0; i < calls.size(); ++i) {
    results.push_back(env_.call(calls[i].first, calls[i].second));
    episode_.messages.push_back(
        {{"role", "tool"}, {"tool_call_id", ids[i]}, {"content", result_text(results.back())}});
  }
  return results;
}

void Trajectory::say(const std::string& content) {
  episode_.messages.push_back(message("assistant", content));
}

// ---- helpers ----

std::string system_prompt(const std::string& extra) {
  std::string s =
      "You are a careful assistant that solves tasks, calling the tools offered when they help. "
      "When you are done, end your final message with one line of the form `ANSWER: <answer>`.";
  if (!extra.empty()) s += " " + extra;
  return s;
}

json message(const std::string& role, const std::string& content) {
  return {{"role", role}, {"content", content}};
}

json function_tool(const std::string& name, const std::string& description, json properties,
                   const std::vector<std::string>& required) {
  return sandbox::function_schema(name, description, std::move(properties), required);
}

json call_calculator(const std::string& name, const json& args) {
  SHOAL_CHECK(name == "calculator", "unknown tool '{}'", name);
  SHOAL_CHECK(args.contains("expression") && args["expression"].is_string(),
              "calculator needs a string argument 'expression'");
  return sandbox::calculate(args["expression"].get<std::string>());
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string normalize_words(std::string_view s) {
  std::string out;
  bool space = false;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c >= 0x80) {
      if (space && !out.empty()) out += ' ';
      space = false;
      out += static_cast<char>(std::tolower(c));
    } else {
      space = true;
    }
  }
  return out;
}

const std::string* final_message_text(const Episode& episode) {
  const json& m = episode.messages;
  if (!m.is_array() || m.empty()) return nullptr;
  const json& last = m.back();
  if (!last.is_object() || last.value("role", "") != "assistant") return nullptr;
  if (last.contains("tool_calls") && last["tool_calls"].is_array() && !last["tool_calls"].empty())
    return nullptr;
  if (!last.contains("content") || !last["content"].is_string()) return nullptr;
  return &last["content"].get_ref<const std::string&>();
}

std::optional<std::string> final_answer(const Episode& episode) {
  const std::string* final_text = final_message_text(episode);
  if (!final_text) return std::nullopt;
  const std::string& text = *final_text;
  std::optional<std::string> found;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = trim(
        std::string_view(text).substr(pos, nl == std::string::npos ? std::string::npos : nl - pos));
    // Markdown emphasis around the marker is tolerated ("**ANSWER:** 42", "`ANSWER: 42`"); '*'
    // inside the answer is kept (it may be a product).
    auto emphasis = [](char c) { return c == '*' || c == '`' || c == '_'; };
    size_t b = 0;
    while (b < line.size() && emphasis(line[b])) ++b;
    if (line.compare(b, 7, "ANSWER:") == 0) {
      size_t a = b + 7;
      while (a < line.size() && (emphasis(line[a]) || line[a] == ' ')) ++a;
      size_t e = line.size();
      while (e > a && (line[e - 1] == '*' || line[e - 1] == '`')) --e;
      found = trim(std::string_view(line).substr(a, e - a));
    }
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return found;
}

std::string answer_line(const std::string& answer) {
  return "ANSWER: " + answer;
}

std::vector<ToolCallRecord> tool_calls(const Episode& episode) {
  std::vector<ToolCallRecord> out;
  if (!episode.messages.is_array()) return out;
  for (const auto& m : episode.messages) {
    if (!m.is_object() || m.value("role", "") != "assistant" || !m.contains("tool_calls")) continue;
    const json& calls = m["tool_calls"];
    if (!calls.is_array()) {
      out.push_back({"", "", json(), "tool_calls is not a list"});
      continue;
    }
    for (const auto& c : calls) {
      ToolCallRecord r;
      if (!c.is_object() || !c.contains("function") || !c["function"].is_object()) {
        r.error = "a tool call without a function";
        out.push_back(std::move(r));
        continue;
      }
      if (c.contains("id") && c["id"].is_string()) r.id = c["id"];
      const json& f = c["function"];
      if (f.contains("name") && f["name"].is_string()) r.name = f["name"];
      if (r.name.empty()) r.error = "a tool call without a name";
      const json args = f.contains("arguments") ? f["arguments"] : json::object();
      if (args.is_string()) {
        r.args = json::parse(args.get<std::string>(), nullptr, false);
        if (r.args.is_discarded()) r.args = json();
      } else {
        r.args = args;
      }
      if (r.error.empty() && !r.args.is_object()) r.error = "arguments are not a JSON object";
      out.push_back(std::move(r));
    }
  }
  return out;
}

Reward pass(std::string reason, json components) {
  return {1.0, std::move(components), std::move(reason)};
}

Reward fail(std::string reason, json components) {
  return {0.0, std::move(components), std::move(reason)};
}

Episode with_answer(const Episode& episode, const std::string& answer) {
  Episode e = episode;
  json& m = e.messages;
  if (!m.empty() && m.back().value("role", "") == "assistant" && !m.back().contains("tool_calls") &&
      m.back()["content"].is_string()) {
    std::string text = m.back()["content"];
    size_t at = text.rfind("ANSWER:");
    if (at != std::string::npos) {
      size_t nl = text.find('\n', at);
      text = text.substr(0, at) + answer_line(answer) +
             (nl == std::string::npos ? "" : text.substr(nl));
    } else {
      text += (text.empty() ? "" : "\n") + answer_line(answer);
    }
    m.back()["content"] = text;
  } else {
    m.push_back(message("assistant", answer_line(answer)));
  }
  return e;
}

bool is_plain_number(std::string_view s) {
  std::string t = trim(s);
  if (t.empty() || t.size() > 400) return false;
  size_t i = 0;
  if (t[0] == '-') i = 1;
  auto digits = [&](bool commas) {
    size_t start = i, run = 0;
    bool grouped = false;
    while (i < t.size() &&
           (std::isdigit(static_cast<unsigned char>(t[i])) || (commas && t[i] == ','))) {
      if (t[i] == ',') {
        // Thousands separators only: "1,234,567" (first group 1-3 digits, then groups of 3).
        if (run == 0 || (grouped && run != 3) || (!grouped && run > 3)) return false;
        grouped = true;
        run = 0;
      } else {
        ++run;
      }
      ++i;
    }
    if (grouped && run != 3) return false;
    return i > start && t[i - 1] != ',';
  };
  if (!digits(true)) return false;
  if (i == t.size()) return true;
  if (t[i] == '.') {
    ++i;
    return digits(false) && i == t.size();
  }
  if (t[i] == '/') {
    ++i;
    return digits(false) && i == t.size();
  }
  return false;
}

bool numbers_equal(const std::string& a, const std::string& b) {
  if (!is_plain_number(a) || !is_plain_number(b)) return false;
  auto bare = [](const std::string& s) {
    std::string out;
    for (char c : trim(s))
      if (c != ',') out += c;
    return out;
  };
  try {
    json r = sandbox::calculate("(" + bare(a) + ") - (" + bare(b) + ")");
    return r.value("value", "") == "0";
  } catch (const sandbox::ToolError&) {
    return false;  // e.g. "1/0"
  }
}

}  // namespace shoal::tasks
