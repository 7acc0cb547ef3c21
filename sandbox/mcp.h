// An MCP client over stdio (JSON-RPC 2.0, newline-delimited): the MCP server named in the
// configuration runs inside its own sandbox (started like any other, its stdin and stdout the
// control pipes), and its tools are offered to the model like the built-in ones, named
// "SERVER__TOOL". Not an MCP server, and no HTTP transport.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sandbox/launcher.h"
#include "sandbox/protocol.h"

namespace shoal::sandbox {

struct McpServerConfig {
  std::string name;                          // [A-Za-z0-9_-]+, prefixes its tools
  std::vector<std::string> command;          // run inside the sandbox, e.g. python3 server.py
  std::map<std::string, std::string> files;  // written to its workspace before it starts
};

// Reads {"servers": {"NAME": {"command": [...], "files": {...}}}} (comments allowed).
std::vector<McpServerConfig> load_mcp_config(const std::string& path);

// One MCP server in its sandbox. Thread-safe (one request at a time); restarts the server on the
// next use after it died or timed out.
class McpConnection {
 public:
  McpConnection(IsolationEnv& env, McpServerConfig config, Limits limits);
  ~McpConnection();
  const std::string& name() const { return config_.name; }
  // The server's tools as OpenAI functions named "NAME__TOOL" (starts the server if needed).
  json tools(Clock::time_point deadline);
  // tools/call; fills reply (text content to stdout, the whole result in reply.result).
  void call(const std::string& tool, const json& arguments, Clock::time_point deadline,
            Reply& reply);

 private:
  void ensure_started(Clock::time_point deadline);
  json request(const std::string& method, json params, Clock::time_point deadline);
  void notify(const std::string& method);
  void stop();
  std::string read_line(Clock::time_point deadline);

  IsolationEnv& env_;
  McpServerConfig config_;
  Limits limits_;
  std::mutex mu_;
  std::unique_ptr<UidLease> uid_;
  std::unique_ptr<Workspace> ws_;
  std::unique_ptr<SandboxProcess> proc_;
  std::string buffer_;  // bytes read after the last complete line
  std::string stderr_tail_;
  int64_t next_id_ = 1;
  json tools_;  // cached tools/list result
};

}  // namespace shoal::sandbox
