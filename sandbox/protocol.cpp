// Parsing and serialization of the sandbox protocol (protocol.h).
#include "sandbox/protocol.h"

#include <algorithm>

#include "base/error.h"

namespace shoal::sandbox {

namespace {

struct LimitField {
  const char* name;
  int64_t Limits::*member;
};
constexpr LimitField kLimitFields[] = {
    {"wall_ms", &Limits::wall_ms},     {"cpu_ms", &Limits::cpu_ms},
    {"memory_mb", &Limits::memory_mb}, {"pids", &Limits::pids},
    {"file_mb", &Limits::file_mb},     {"disk_mb", &Limits::disk_mb},
    {"nofile", &Limits::nofile},       {"output_bytes", &Limits::output_bytes},
};

std::string string_field(const json& j, const char* key, const std::string& id) {
  if (!j.contains(key)) return "";
  if (!j[key].is_string())
    throw RequestError{error_kind::bad_request, fmt::format("'{}' must be a string", key), id};
  return j[key].get<std::string>();
}

}  // namespace

Limits default_max_limits() {
  Limits m;
  m.wall_ms = 600000;
  m.cpu_ms = 600000;
  m.memory_mb = 4096;
  m.pids = 256;
  m.file_mb = 1024;
  m.disk_mb = 2048;
  m.nofile = 4096;
  m.output_bytes = 1 << 20;
  return m;
}

json to_json(const Limits& limits) {
  json j = json::object();
  for (const auto& f : kLimitFields) j[f.name] = limits.*f.member;
  return j;
}

Limits apply_limits_json(const json& j, Limits base) {
  SHOAL_CHECK(j.is_object(), "limits must be an object, got {}", j.type_name());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const LimitField* field = nullptr;
    for (const auto& f : kLimitFields)
      if (it.key() == f.name) field = &f;
    SHOAL_CHECK(field != nullptr,
                "unknown limit '{}' (known: wall_ms, cpu_ms, memory_mb, pids, "
                "file_mb, disk_mb, nofile, output_bytes)",
                it.key());
    SHOAL_CHECK(it->is_number_integer() && it->get<int64_t>() > 0,
                "limit '{}' must be a positive integer, got {}", it.key(), it->dump());
    base.*(field->member) = it->get<int64_t>();
  }
  return base;
}

Limits clamp(const Limits& requested, const Limits& max_limits) {
  Limits out = requested;
  for (const auto& f : kLimitFields)
    out.*f.member = std::clamp<int64_t>(requested.*f.member, 1, max_limits.*f.member);
  return out;
}

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::automatic:
      return "auto";
    case Mode::session:
      return "session";
    case Mode::fork:
      return "fork";
    case Mode::fresh:
      return "fresh";
  }
  return "auto";
}

Request parse_request(const std::string& bytes) {
  json j = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw RequestError{error_kind::bad_request, "request is not valid JSON", ""};
  if (!j.is_object())
    throw RequestError{error_kind::bad_request,
                       fmt::format("request must be a JSON object, got {}", j.type_name()), ""};
  Request r;
  if (j.contains("id")) {
    if (j["id"].is_string())
      r.id = j["id"].get<std::string>();
    else if (j["id"].is_number_integer())
      r.id = std::to_string(j["id"].get<int64_t>());
    else
      throw RequestError{error_kind::bad_request, "'id' must be a string or an integer", ""};
  }
  std::string op = string_field(j, "op", r.id);
  if (!op.empty()) r.op = op;
  static const char* kOps[] = {"call", "list_tools", "ping", "stats", "close_session"};
  if (std::none_of(std::begin(kOps), std::end(kOps), [&](const char* o) { return r.op == o; }))
    throw RequestError{
        error_kind::bad_request,
        fmt::format("unknown op '{}' (call, list_tools, ping, stats, close_session)", r.op), r.id};
  r.session = string_field(j, "session", r.id);
  if (r.session.size() > 128 ||
      !std::all_of(r.session.begin(), r.session.end(),
                   [](char c) {
                     return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ||
                            c == '.';
                   }) ||
      r.session == "." || r.session == "..")
    throw RequestError{error_kind::bad_request,
                       "'session' must be 1-128 characters of [A-Za-z0-9._-] (not . or ..)", r.id};
  r.tool = string_field(j, "tool", r.id);
  if (r.op == "call" && r.tool.empty())
    throw RequestError{error_kind::bad_request, "missing 'tool' (a string)", r.id};
  if (j.contains("arguments")) {
    // OpenAI tool calls carry arguments as a JSON-encoded string: accept both forms.
    if (j["arguments"].is_string()) {
      json a = json::parse(j["arguments"].get<std::string>(), nullptr, false);
      if (a.is_discarded())
        throw RequestError{error_kind::invalid_arguments, "'arguments' is a string but not JSON",
                           r.id};
      r.arguments = std::move(a);
    } else {
      r.arguments = j["arguments"];
    }
    if (!r.arguments.is_object())
      throw RequestError{
          error_kind::invalid_arguments,
          fmt::format("'arguments' must be an object, got {}", r.arguments.type_name()), r.id};
  }
  if (j.contains("limits")) {
    if (!j["limits"].is_object())
      throw RequestError{error_kind::bad_request, "'limits' must be an object", r.id};
    r.limits = j["limits"];
  }
  std::string mode = string_field(j, "mode", r.id);
  if (mode.empty() || mode == "auto")
    r.mode = Mode::automatic;
  else if (mode == "session")
    r.mode = Mode::session;
  else if (mode == "fork")
    r.mode = Mode::fork;
  else if (mode == "fresh")
    r.mode = Mode::fresh;
  else
    throw RequestError{error_kind::bad_request,
                       fmt::format("unknown mode '{}' (auto, session, fork, fresh)", mode), r.id};
  if (j.contains("timeout_ms")) {
    if (!j["timeout_ms"].is_number_integer() || j["timeout_ms"].get<int64_t>() < 0)
      throw RequestError{error_kind::bad_request, "'timeout_ms' must be a non-negative integer",
                         r.id};
    r.timeout_ms = j["timeout_ms"].get<int64_t>();
  }
  return r;
}

json to_json(const Request& r) {
  json j = {{"id", r.id}, {"op", r.op}};
  if (!r.session.empty()) j["session"] = r.session;
  if (!r.tool.empty()) j["tool"] = r.tool;
  if (r.op == "call") j["arguments"] = r.arguments;
  if (!r.limits.empty()) j["limits"] = r.limits;
  if (r.mode != Mode::automatic) j["mode"] = mode_name(r.mode);
  if (r.timeout_ms > 0) j["timeout_ms"] = r.timeout_ms;
  return j;
}

json to_json(const Reply& r) {
  json j = {{"id", r.id},
            {"status", r.status},
            {"exit_code", r.exit_code},
            {"stdout", r.stdout_text},
            {"stderr", r.stderr_text},
            {"stdout_truncated", r.stdout_truncated},
            {"stderr_truncated", r.stderr_truncated},
            {"wall_ms", r.wall_ms},
            {"cpu_ms", r.cpu_ms}};
  if (!r.mode.empty()) j["mode"] = r.mode;
  if (r.status != "ok") j["error"] = {{"kind", r.error_kind}, {"message", r.error_message}};
  if (r.session_reset) j["session_reset"] = true;
  if (!r.result.is_null()) j["result"] = r.result;
  return j;
}

Reply reply_from_json(const json& j) {
  Reply r;
  r.id = j.value("id", "");
  r.status = j.value("status", "error");
  r.exit_code = j.value("exit_code", 0);
  r.stdout_text = j.value("stdout", "");
  r.stderr_text = j.value("stderr", "");
  r.stdout_truncated = j.value("stdout_truncated", false);
  r.stderr_truncated = j.value("stderr_truncated", false);
  r.wall_ms = j.value("wall_ms", 0.0);
  r.cpu_ms = j.value("cpu_ms", 0.0);
  r.mode = j.value("mode", "");
  r.session_reset = j.value("session_reset", false);
  if (j.contains("error") && j["error"].is_object()) {
    r.error_kind = j["error"].value("kind", "");
    r.error_message = j["error"].value("message", "");
  }
  if (j.contains("result")) r.result = j["result"];
  return r;
}

Reply error_reply(const std::string& id, const std::string& kind, const std::string& message) {
  Reply r;
  r.id = id;
  r.status = "error";
  r.exit_code = -1;
  r.error_kind = kind;
  r.error_message = message;
  return r;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace shoal::sandbox
