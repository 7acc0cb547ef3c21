// The local sandbox server (local_sandbox.h).
#include "actors/local_sandbox.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "base/error.h"
#include "sandbox/client.h"

namespace shoal::actors {

LocalSandbox::LocalSandbox(std::string exe, std::string endpoint, int64_t workers,
                           std::function<void(const std::string&)> on_restart, bool quiet)
    : exe_(std::move(exe)),
      endpoint_(std::move(endpoint)),
      workers_(workers),
      quiet_(quiet),
      on_restart_(std::move(on_restart)) {
  SHOAL_CHECK(!exe_.empty(), "no shoal binary to start a sandbox server with");
  start();
  try {
    wait_ready();
  } catch (...) {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    throw;
  }
  watcher_ = std::thread([this] { watch(); });
}

LocalSandbox::~LocalSandbox() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (pid_ > 0) kill(pid_, SIGTERM);
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void LocalSandbox::start() {
  std::string workers = std::to_string(workers_);
  pid_t pid = fork();
  SHOAL_CHECK(pid >= 0, "cannot start the sandbox server: fork failed");
  if (pid == 0) {
    // Its own process group, so a terminal's Ctrl-C reaches the parent first (it stops the
    // server); and it goes when the parent goes, even on kill -9.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1) _exit(1);  // the parent died before prctl took effect
    if (quiet_) {
      int null = open("/dev/null", O_WRONLY);
      if (null >= 0) dup2(null, STDERR_FILENO);
    }
    execl(exe_.c_str(), exe_.c_str(), "sandboxd", "--bind", endpoint_.c_str(), "--workers",
          workers.c_str(), "--log-level", "warn", static_cast<char*>(nullptr));
    _exit(127);
  }
  pid_ = pid;
}

void LocalSandbox::wait_ready() {
  sandbox::ClientOptions o;
  o.endpoint = endpoint_;
  o.timeout_ms = 2000;
  sandbox::Client c(o);
  for (int i = 0; i < 30; ++i) {
    sandbox::Reply r = c.admin("ping");
    if (r.status == "ok") return;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      SHOAL_FAIL(
          "the sandbox server ({} sandboxd --bind {}) exited at start (status {}); run it by "
          "hand to see why, or give a sandbox endpoint",
          exe_, endpoint_, status);
    }
  }
  SHOAL_FAIL("the sandbox server at {} did not answer a ping", endpoint_);
}

void LocalSandbox::watch() {
  for (;;) {
    int status = 0;
    pid_t got = waitpid(pid_, &status, 0);
    std::unique_lock lock(mu_);
    if (stopping_) return;
    if (got != pid_) continue;
    if (on_restart_)
      on_restart_(fmt::format("the sandbox server (pid {}) exited (status {}); restarting it", pid_,
                              status));
    lock.unlock();
    try {
      start();
    } catch (const std::exception& e) {
      if (on_restart_)
        on_restart_(std::string("could not restart the sandbox server: ") + e.what());
      return;
    }
  }
}

std::string local_sandbox_endpoint(const std::string& tag) {
  static std::atomic<int> counter{0};
  return fmt::format("ipc:///tmp/shoal-{}-{}-{}.sock", tag, getpid(), counter++);
}

}  // namespace shoal::actors
