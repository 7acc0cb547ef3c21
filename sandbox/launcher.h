// Starts one sandbox: a bubblewrap process (new user, PID, mount, network, IPC and UTS namespaces;
// a read-only system; one writable workspace) under seccomp, rlimits, its own cgroup and, when the
// server runs as root, its own unprivileged host uid. Also the pump that feeds it input and
// collects capped output against a deadline. Not the policy of when to start one (executor.h).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/cgroup.h"
#include "sandbox/protocol.h"

namespace shoal::sandbox {

using Clock = std::chrono::steady_clock;

// Host uids handed to sandboxes one at a time (a flock per uid, so concurrent servers never share
// one): RLIMIT_NPROC then counts exactly one sandbox's processes, and sandboxes cannot signal each
// other even in principle.
class UidLease {
 public:
  UidLease(uid_t uid, int lock_fd) : uid_(uid), fd_(lock_fd) {}
  ~UidLease();
  UidLease(const UidLease&) = delete;
  UidLease& operator=(const UidLease&) = delete;
  uid_t uid() const { return uid_; }

 private:
  uid_t uid_;
  int fd_;
};

// A child forked ahead of need and already moved into its own cgroup (the slow part under cgroup
// v1: joining costs ~6 ms per hierarchy, an RCU grace period), blocked until it is handed a
// command to exec. SandboxProcess::launch takes one; the Armory keeps a stock ready.
struct Armed {
  pid_t pid = -1;
  int sock = -1;  // commands and file descriptors go over it
  std::unique_ptr<Cgroup> cgroup;
};

class Armory {
 public:
  Armory(Cgroups* cgroups, size_t stock);  // a background thread keeps `stock` children armed
  ~Armory();                               // disarms (the children exit) and reaps
  Armory(const Armory&) = delete;
  Armory& operator=(const Armory&) = delete;
  Armed take();  // from the stock, or armed now when it is empty

 private:
  Armed arm();
  static void disarm(Armed& armed);
  Cgroups* cgroups_;
  size_t target_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Armed> stock_;
  bool stop_ = false;
  std::atomic<uint64_t> counter_{0};
  std::thread thread_;
};

// Server-wide facts and prepared files: found once at startup.
struct IsolationEnv {
  std::string bwrap = "/usr/bin/bwrap";
  std::string python = "/usr/bin/python3";
  std::string state_dir;  // etc/ (the sandbox's /etc), driver/ (driver.py), ws/ (workspaces)
  bool root = false;      // running as root: per-sandbox uids and tmpfs workspaces
  std::unique_ptr<Cgroups> cgroups;
  std::unique_ptr<Armory> armory;               // after cgroups: destroyed first
  int swept_cgroups = 0, swept_workspaces = 0;  // an earlier instance's leftovers, removed

  // Prepares state_dir (etc files, the driver); detects cgroups; sweeps an earlier instance's
  // cgroups and workspaces; arms `armed_stock` children. Throws Error if bwrap or python is
  // missing.
  void prepare(const std::string& instance, size_t armed_stock = 2);
  // A uid for one sandbox or session (the server's own uid when not root).
  std::unique_ptr<UidLease> lease_uid();
  std::string describe() const;  // one line for logs and the stats op

 private:
  std::mutex uid_mu_;
  uint32_t next_uid_ = 0;
};

// A workspace directory on the host, bound at /work in the sandbox; a size-limited tmpfs when the
// server is root. Removed (unmounted) on destruction.
class Workspace {
 public:
  Workspace(const IsolationEnv& env, const std::string& name, uid_t owner, int64_t disk_mb);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  const std::string& path() const { return path_; }
  uid_t owner() const { return owner_; }

 private:
  std::string path_;
  uid_t owner_;
  bool mounted_ = false;
};

// Unmounts and removes every workspace under state_dir/ws (an earlier instance's leftovers).
int sweep_workspaces(const std::string& state_dir);

struct LaunchSpec {
  std::vector<std::string> command;  // run inside the sandbox
  std::string cwd = "/work";
  bool driver = false;         // bind the driver at /.shoal and open control pipes on fds 3 and 4
  bool stdio_control = false;  // control pipes on fds 0 and 1 instead (an MCP server's stdio)
  bool cpu_rlimit = false;  // RLIMIT_CPU from limits.cpu_ms (fresh runs; the driver sets its own)
  Limits limits;
};

// A running sandbox. Destruction kills everything in it and reaps it.
class SandboxProcess {
 public:
  static std::unique_ptr<SandboxProcess> launch(IsolationEnv& env, const Workspace& ws,
                                                const LaunchSpec& spec);
  ~SandboxProcess();
  SandboxProcess(const SandboxProcess&) = delete;
  SandboxProcess& operator=(const SandboxProcess&) = delete;

  pid_t pid() const { return pid_; }
  void kill_all();                 // the whole sandbox: bwrap (its PID namespace) and cgroup
  int wait(struct rusage* usage);  // reaps bwrap; returns the wait status
  int64_t oom_kills() const { return cgroup_ ? cgroup_->oom_kills() : 0; }
  int out_fd() const { return out_; }
  int err_fd() const { return err_; }
  int ctl_write_fd() const { return ctl_w_; }
  int ctl_read_fd() const { return ctl_r_; }
  std::vector<pid_t> cgroup_pids() const {
    return cgroup_ ? cgroup_->pids() : std::vector<pid_t>{};
  }

 private:
  SandboxProcess() = default;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int out_ = -1, err_ = -1, ctl_w_ = -1, ctl_r_ = -1;
  std::unique_ptr<Cgroup> cgroup_;
};

// Output of one call, capped per stream.
struct Capture {
  explicit Capture(size_t cap) : cap(cap) {}
  size_t cap;
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
};

enum class PumpEnd { line, eof, deadline };

// Writes `input` to the control pipe (driver) and reads stdout/stderr into `capture` until a
// control line arrives (until_line; the line goes to `line`, then pending output is drained) or,
// otherwise, until stdout and stderr both reach EOF. Stops at `deadline`.
PumpEnd pump(SandboxProcess& sb, const std::string& input, Capture& capture, std::string& line,
             Clock::time_point deadline, bool until_line);
// Reads and discards whatever output is pending (before a new call on a persistent sandbox).
void discard_pending(SandboxProcess& sb);

}  // namespace shoal::sandbox
