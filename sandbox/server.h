// The sandbox server behind `shoal sandboxd`: a ZeroMQ ROUTER socket that takes JSON requests from
// many clients, a queue, worker threads that run calls through the Executor, and replies that
// always come back as values (errors included). Startup sweeps what a crashed instance left
// (cgroups, workspace mounts); stop() is async-signal-safe, so SIGTERM shuts down cleanly. Not
// the isolation (launcher.h) and not the tools (executor.h).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "sandbox/executor.h"

namespace shoal::sandbox {

struct ServerOptions {
  std::string endpoint;  // ipc://PATH or tcp://HOST:PORT (PORT may be * for any free port)
  int workers = 2;
  ExecutorConfig exec;    // limits (defaults and maxima), session policy
  std::string state_dir;  // empty: default_state_dir(endpoint)
  size_t max_request_bytes = 1 << 20;
  size_t max_queue = 1024;
};

// Reads a limits file: {"defaults": {...}, "max": {...}} with Limits' keys (either part optional).
void load_limits_file(const std::string& path, ExecutorConfig& config);
// /tmp/shoal-sandboxd/<endpoint as a file name>: one per endpoint, so a restart finds its
// leftovers.
std::string default_state_dir(const std::string& endpoint);

class Server {
 public:
  // Prepares isolation, takes the state directory's lock (one live instance per directory),
  // sweeps leftovers and binds. Throws Error naming what is missing or taken.
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void run();   // serves until stop(); then cancels running calls, joins workers, cleans up
  void stop();  // thread-safe and async-signal-safe
  const std::string& endpoint() const { return endpoint_; }  // as bound (port resolved)
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string endpoint_;
  int stop_fd_ = -1;
};

}  // namespace shoal::sandbox
