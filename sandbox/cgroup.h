// Control groups for sandboxes: one cgroup per sandbox under a per-server parent, with a memory
// limit and a process-count limit, so the whole sandbox can be limited, counted and killed at once.
// Detects cgroup v1 (memory and pids hierarchies) or v2 (a unified hierarchy with both
// controllers) and reports which; with neither, sandboxes run without cgroups (rlimits remain).
// Not the rlimits or namespaces (launcher.h).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shoal::sandbox {

class Cgroup {
 public:
  ~Cgroup();  // kills what is left and removes the directories
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;
  // The cgroup.procs files a child writes "0" to (to join before it execs).
  const std::vector<std::string>& procs_files() const { return procs_files_; }
  // Sets the memory (bytes) and process-count limits.
  void set_limits(int64_t memory_bytes, int64_t pids);
  // SIGKILLs every process in the cgroup until it is empty (bounded wait).
  void kill_all();
  // How many processes the memory limit has killed so far.
  int64_t oom_kills() const;
  std::vector<pid_t> pids() const;

 private:
  friend class Cgroups;
  Cgroup() = default;
  int version_ = 0;
  std::vector<std::string> dirs_;  // one per hierarchy (v1) or one (v2)
  std::vector<std::string> procs_files_;
  std::string memory_dir_;
};

class Cgroups {
 public:
  // Finds the hierarchies and creates the parent "shoal-sandbox/<instance>" under this process's
  // own cgroup. Never throws: on any failure the version is 0 and why() says what was missing.
  explicit Cgroups(const std::string& instance);
  int version() const { return version_; }
  std::string describe() const;  // "v1 (memory, pids)", "v2 (memory, pids)", "none: ..."
  // Kills and removes leftovers of an earlier instance with the same name; returns how many.
  int sweep();
  // A new cgroup with the limits (nullptr when cgroups are unavailable).
  std::unique_ptr<Cgroup> create(const std::string& name, int64_t memory_bytes, int64_t pids);
  // Removes the (empty) parent directories; called at shutdown.
  void remove_parent();

 private:
  int version_ = 0;
  std::string why_;
  std::vector<std::string> parents_;  // v1: memory parent, pids parent; v2: one
};

}  // namespace shoal::sandbox
