// Runs tool calls: picks the execution mode, owns the sessions (a workspace plus a persistent
// sandboxed interpreter each) and the fork-server pool (one warm sandbox per worker), applies the
// limits and turns every outcome — including a sandbox killed, timed out or out of memory — into a
// Reply. Thread-safe: the server's workers call it concurrently. Not the transport (server.h).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sandbox/launcher.h"
#include "sandbox/mcp.h"
#include "sandbox/protocol.h"

namespace shoal::sandbox {

struct ExecutorConfig {
  Limits defaults;                           // a request's limits start from these
  Limits max = default_max_limits();         // and are clamped to these
  int pool_slots = 2;                        // fork-server sandboxes (one per worker)
  int max_sessions = 64;                     // beyond it the least recently used idle one closes
  int64_t session_idle_ms = 30 * 60 * 1000;  // idle sessions close after this
  std::vector<McpServerConfig> mcp_servers;  // their tools join the built-in ones
};

class Executor {
 public:
  Executor(IsolationEnv& env, ExecutorConfig config);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Runs one op=call request; `received` is when the server got it (queue time counts against
  // the client's timeout_ms); `slot` picks the worker's fork-server. Never throws.
  Reply call(const Request& request, Clock::time_point received, int slot);
  // The built-in tools and those of the configured MCP servers (started if needed; a server that
  // fails to start is left out and logged).
  json tools();
  bool close_session(const std::string& name);
  void close_idle_sessions();
  // Kills every running sandbox (shutdown): calls in flight return promptly with an error.
  void cancel_all();
  json stats() const;

 private:
  struct Box;
  std::shared_ptr<Box> session_box(const std::string& name, const Limits& limits);
  void ensure_workspace(Box& box);
  void start_driver(Box& box);
  void stop_driver(Box& box);
  // One request to the box's driver; fills reply. Kills and forgets the driver when it died or
  // ran past the deadline.
  void driver_op(Box& box, json op, const Limits& limits, Clock::time_point deadline, Reply& reply);
  void fresh_run(const std::vector<std::string>& command, Box* session, const Limits& limits,
                 Clock::time_point deadline, Reply& reply);
  void run_code(const Request& request, const Limits& limits, Clock::time_point deadline, int slot,
                Reply& reply);
  std::unique_ptr<SandboxProcess> launch(Box& box, const LaunchSpec& spec);
  void retire(std::unique_ptr<SandboxProcess>& process);

  IsolationEnv& env_;
  ExecutorConfig config_;
  mutable std::mutex sessions_mu_;
  std::map<std::string, std::shared_ptr<Box>> sessions_;
  std::vector<std::shared_ptr<Box>> pool_;
  mutable std::mutex live_mu_;
  std::map<SandboxProcess*, std::string> live_;  // every running sandbox, for cancel and stats
  std::vector<std::unique_ptr<McpConnection>> mcp_;
  std::atomic<uint64_t> counter_{0};
  std::atomic<bool> cancelled_{false};
};

}  // namespace shoal::sandbox
