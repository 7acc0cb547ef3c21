// A local sandbox server for a command that needs one and was given no endpoint: a `shoal
// sandboxd` child in its own process group (a terminal's Ctrl-C reaches the parent first), killed
// with the parent even on kill -9 (PR_SET_PDEATHSIG), waited for until it answers a ping, and
// restarted by a watcher thread when it dies. Used by `shoal train` (the runner), `shoal eval` and
// `shoal chat`. Not the server itself (sandbox/server.h).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace shoal::actors {

class LocalSandbox {
 public:
  // Starts `exe sandboxd --bind endpoint --workers N` and waits until it answers; throws
  // shoal::Error when it exits at start or never answers. on_restart (any thread) is told about
  // restarts after a crash. quiet: the server's stderr goes to /dev/null (an interactive chat).
  LocalSandbox(std::string exe, std::string endpoint, int64_t workers,
               std::function<void(const std::string&)> on_restart = {}, bool quiet = false);
  ~LocalSandbox();  // SIGTERM, then waits for the watcher
  LocalSandbox(const LocalSandbox&) = delete;
  LocalSandbox& operator=(const LocalSandbox&) = delete;
  const std::string& endpoint() const { return endpoint_; }

 private:
  void start();
  void wait_ready();
  void watch();

  std::string exe_, endpoint_;
  int64_t workers_;
  bool quiet_;
  std::function<void(const std::string&)> on_restart_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  pid_t pid_ = -1;
  std::thread watcher_;
};

// A fresh IPC endpoint for a local server of this process: ipc:///tmp/shoal-TAG-PID-N.sock.
std::string local_sandbox_endpoint(const std::string& tag);

}  // namespace shoal::actors
