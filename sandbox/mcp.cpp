// The MCP stdio client (mcp.h): initialize, tools/list (with pagination), tools/call.
#include "sandbox/mcp.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "base/error.h"
#include "base/log.h"
#include "sandbox/files.h"

namespace shoal::sandbox {

namespace {

constexpr const char* kProtocolVersion = "2025-06-18";
constexpr size_t kMaxLine = 16 << 20;

bool valid_name(const std::string& n) {
  return !n.empty() && n.size() <= 32 && std::all_of(n.begin(), n.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

void write_all(int fd, const std::string& data, Clock::time_point deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) throw ToolError{error_kind::timeout, "MCP server is not reading"};
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, static_cast<int>(left.count()));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    throw ToolError{error_kind::sandbox_died, "MCP server closed its input"};
  }
}

}  // namespace

std::vector<McpServerConfig> load_mcp_config(const std::string& path) {
  std::ifstream f(path);
  SHOAL_CHECK(f, "cannot read MCP config {}", path);
  json j = json::parse(f, nullptr, false, /*ignore_comments=*/true);
  SHOAL_CHECK(
      !j.is_discarded() && j.is_object() && j.contains("servers") && j["servers"].is_object(),
      "MCP config {}: expected {{\"servers\": {{\"NAME\": {{\"command\": [...]}}}}}}", path);
  std::vector<McpServerConfig> out;
  for (auto& [name, s] : j["servers"].items()) {
    SHOAL_CHECK(valid_name(name), "MCP config {}: server name '{}' must be [A-Za-z0-9_-]{{1,32}}",
                path, name);
    SHOAL_CHECK(
        s.is_object() && s.contains("command") && s["command"].is_array() && !s["command"].empty(),
        "MCP config {}: servers.{}.command must be a non-empty array of strings", path, name);
    McpServerConfig c;
    c.name = name;
    for (auto& a : s["command"]) {
      SHOAL_CHECK(a.is_string(), "MCP config {}: servers.{}.command must hold strings", path, name);
      c.command.push_back(a.get<std::string>());
    }
    if (s.contains("files")) {
      SHOAL_CHECK(s["files"].is_object(), "MCP config {}: servers.{}.files must be an object", path,
                  name);
      for (auto& [p, content] : s["files"].items()) {
        SHOAL_CHECK(content.is_string(), "MCP config {}: servers.{}.files.{} must be a string",
                    path, name, p);
        c.files[p] = content.get<std::string>();
      }
    }
    out.push_back(std::move(c));
  }
  return out;
}

McpConnection::McpConnection(IsolationEnv& env, McpServerConfig config, Limits limits)
    : env_(env), config_(std::move(config)), limits_(limits) {
  SHOAL_CHECK(valid_name(config_.name), "MCP server name '{}' must be [A-Za-z0-9_-]{{1,32}}",
              config_.name);
}

McpConnection::~McpConnection() {
  stop();
}

void McpConnection::stop() {
  proc_.reset();
  buffer_.clear();
  tools_ = json();
}

std::string McpConnection::read_line(Clock::time_point deadline) {
  char buf[65536];
  for (;;) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    if (buffer_.size() > kMaxLine) throw ToolError{error_kind::tool_error, "MCP message too long"};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      throw ToolError{error_kind::timeout, "MCP server did not answer in time"};
    pollfd fds[2] = {{proc_->ctl_read_fd(), POLLIN, 0}, {proc_->err_fd(), POLLIN, 0}};
    if (poll(fds, 2, static_cast<int>(left.count()) + 1) <= 0) continue;
    if (fds[1].revents) {
      ssize_t n = read(proc_->err_fd(), buf, sizeof buf);  // its log: keep the tail
      if (n > 0) {
        stderr_tail_.append(buf, static_cast<size_t>(n));
        if (stderr_tail_.size() > 4096) stderr_tail_.erase(0, stderr_tail_.size() - 4096);
      }
    }
    if (fds[0].revents) {
      ssize_t n = read(proc_->ctl_read_fd(), buf, sizeof buf);
      if (n > 0) {
        buffer_.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        throw ToolError{
            error_kind::sandbox_died,
            "MCP server exited" + (stderr_tail_.empty() ? std::string() : ": " + stderr_tail_)};
      }
    }
  }
}

void McpConnection::notify(const std::string& method) {
  json msg = {{"jsonrpc", "2.0"}, {"method", method}};
  write_all(proc_->ctl_write_fd(), msg.dump() + "\n", Clock::now() + std::chrono::seconds(5));
}

json McpConnection::request(const std::string& method, json params, Clock::time_point deadline) {
  int64_t id = next_id_++;
  json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
  write_all(proc_->ctl_write_fd(), msg.dump() + "\n", deadline);
  for (;;) {
    json r = json::parse(read_line(deadline), nullptr, false);
    if (!r.is_object()) continue;                      // not JSON-RPC: ignore (a stray print)
    if (!r.contains("id") || r["id"] != id) continue;  // a notification or a server request
    if (r.contains("error")) {
      const json& e = r["error"];
      throw ToolError{error_kind::tool_error,
                      fmt::format("MCP {} failed: {} ({})", method,
                                  e.is_object() ? e.value("message", std::string("?")) : e.dump(),
                                  e.is_object() ? e.value("code", 0) : 0)};
    }
    return r.value("result", json::object());
  }
}

void McpConnection::ensure_started(Clock::time_point deadline) {
  if (proc_) return;
  if (!uid_) uid_ = env_.lease_uid();
  if (!ws_) {
    ws_ = std::make_unique<Workspace>(env_, "mcp-" + config_.name, uid_->uid(), limits_.disk_mb);
    for (auto& [path, content] : config_.files)
      write_workspace_file(ws_->path(), uid_->uid(), path, content);
  }
  LaunchSpec spec;
  spec.command = config_.command;
  spec.stdio_control = true;
  spec.limits = limits_;
  proc_ = SandboxProcess::launch(env_, *ws_, spec);
  buffer_.clear();
  stderr_tail_.clear();
  try {
    json init = request("initialize",
                        {{"protocolVersion", kProtocolVersion},
                         {"capabilities", json::object()},
                         {"clientInfo", {{"name", "shoal"}, {"version", "0.1.0"}}}},
                        deadline);
    log::info("sandbox: MCP server {} started ({} {})", config_.name,
              init.contains("serverInfo") ? init["serverInfo"].value("name", "?") : "?",
              init.value("protocolVersion", "?"));
    notify("notifications/initialized");
  } catch (...) {
    stop();
    throw;
  }
}

json McpConnection::tools(Clock::time_point deadline) {
  std::lock_guard lock(mu_);
  if (!tools_.is_null()) return tools_;
  try {
    ensure_started(deadline);
    json out = json::array();
    json cursor;
    for (int page = 0; page < 100; ++page) {
      json params = json::object();
      if (!cursor.is_null()) params["cursor"] = cursor;
      json r = request("tools/list", params, deadline);
      if (r.contains("tools") && r["tools"].is_array())
        for (auto& t : r["tools"]) {
          if (!t.is_object() || !t.contains("name") || !t["name"].is_string()) continue;
          json parameters = t.value("inputSchema", json{{"type", "object"}});
          out.push_back({{"type", "function"},
                         {"function",
                          {{"name", config_.name + "__" + t["name"].get<std::string>()},
                           {"description",
                            "[MCP " + config_.name + "] " + t.value("description", std::string())},
                           {"parameters", parameters}}}});
        }
      if (!r.contains("nextCursor") || r["nextCursor"].is_null()) break;
      cursor = r["nextCursor"];
    }
    tools_ = out;
    return tools_;
  } catch (const ToolError&) {
    stop();
    throw;
  }
}

void McpConnection::call(const std::string& tool, const json& arguments, Clock::time_point deadline,
                         Reply& reply) {
  std::lock_guard lock(mu_);
  try {
    ensure_started(deadline);
    json r = request("tools/call", {{"name", tool}, {"arguments", arguments}}, deadline);
    std::string text;
    if (r.contains("content") && r["content"].is_array())
      for (auto& c : r["content"])
        if (c.is_object() && c.value("type", "") == "text" && c.contains("text") &&
            c["text"].is_string())
          text += c["text"].get<std::string>();
    size_t cap = static_cast<size_t>(limits_.output_bytes);
    reply.stdout_truncated = text.size() > cap;
    reply.stdout_text = text.substr(0, cap);
    reply.result = std::move(r);
    if (reply.result.value("isError", false)) {
      reply.status = "error";
      reply.error_kind = error_kind::tool_error;
      reply.error_message = "MCP tool " + tool + " reported an error: " + reply.stdout_text;
    }
  } catch (const ToolError& e) {
    // A dead or stuck server is restarted on the next use; a JSON-RPC error leaves it running.
    if (e.kind != error_kind::tool_error) stop();
    throw;
  }
}

}  // namespace shoal::sandbox
