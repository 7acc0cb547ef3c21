// Cgroup v1/v2 detection, creation, limits, killing and sweeping (cgroup.h).
#include "sandbox/cgroup.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "base/log.h"

namespace shoal::sandbox {

namespace fs = std::filesystem;

namespace {

bool write_file(const std::string& path, const std::string& value) {
  std::ofstream f(path);
  if (!f) return false;
  f << value;
  f.flush();
  return static_cast<bool>(f);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<pid_t> read_pids(const std::string& procs_file) {
  std::vector<pid_t> pids;
  std::ifstream f(procs_file);
  pid_t p;
  while (f >> p) pids.push_back(p);
  return pids;
}

int64_t field_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string k;
  int64_t v;
  while (in >> k >> v)
    if (k == key) return v;
  return 0;
}

// Kills every process in the cgroup directory and removes it (children first).
void kill_and_remove(const std::string& dir) {
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory()) kill_and_remove(entry.path());
  for (int i = 0; i < 400; ++i) {
    auto pids = read_pids(dir + "/cgroup.procs");
    if (pids.empty() && rmdir(dir.c_str()) == 0) return;
    if (pids.empty() && errno == ENOENT) return;
    for (pid_t p : pids) kill(p, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  log::warn("sandbox: could not remove cgroup {}", dir);
}

struct Mount {
  std::string path, type, options;
};

std::vector<Mount> cgroup_mounts() {
  std::vector<Mount> out;
  std::ifstream f("/proc/self/mounts");
  std::string dev, path, type, options, rest;
  while (f >> dev >> path >> type >> options) {
    std::getline(f, rest);
    if (type == "cgroup" || type == "cgroup2") out.push_back({path, type, options});
  }
  return out;
}

bool has_option(const std::string& options, const std::string& name) {
  std::stringstream ss(options);
  std::string o;
  while (std::getline(ss, o, ','))
    if (o == name) return true;
  return false;
}

// This process's path in a hierarchy, from /proc/self/cgroup ("4:memory:/a/b" or "0::/a/b").
std::string own_path(const std::string& controller) {
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line)) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (controller.empty() ? (line.substr(0, a) == "0" && ctrls.empty())
                           : has_option(ctrls, controller))
      return path == "/" ? "" : path;
  }
  return "";
}

bool make_dirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  return fs::is_directory(dir, ec);
}

}  // namespace

Cgroup::~Cgroup() {
  kill_all();
  for (const auto& d : dirs_)
    for (int i = 0; i < 100 && rmdir(d.c_str()) != 0 && errno == EBUSY; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
}

void Cgroup::kill_all() {
  if (procs_files_.empty()) return;
  for (int i = 0; i < 500; ++i) {
    auto pids = read_pids(procs_files_.front());
    if (pids.empty()) return;
    for (pid_t p : pids) kill(p, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(i < 10 ? 1 : 5));
  }
  log::warn("sandbox: processes left in cgroup {}", dirs_.front());
}

void Cgroup::set_limits(int64_t memory_bytes, int64_t pids) {
  std::string mem = dirs_[0], pid = dirs_.back();
  bool ok;
  if (version_ == 1) {
    // With swap accounting, memory+swap gets the same limit (no swapping out of the limit); the
    // order matters as memsw may never be below the memory limit.
    bool memsw = fs::exists(mem + "/memory.memsw.limit_in_bytes");
    if (memsw) write_file(mem + "/memory.memsw.limit_in_bytes", "-1");
    ok = write_file(mem + "/memory.limit_in_bytes", std::to_string(memory_bytes));
    if (memsw) write_file(mem + "/memory.memsw.limit_in_bytes", std::to_string(memory_bytes));
  } else {
    write_file(mem + "/memory.swap.max", "0");  // absent without swap accounting
    ok = write_file(mem + "/memory.max", std::to_string(memory_bytes));
  }
  ok = ok && write_file(pid + "/pids.max", std::to_string(pids));
  SHOAL_CHECK(ok, "setting the limits of cgroup {} failed", mem);
}

int64_t Cgroup::oom_kills() const {
  if (memory_dir_.empty()) return 0;
  if (version_ == 1) return field_value(read_file(memory_dir_ + "/memory.oom_control"), "oom_kill");
  return field_value(read_file(memory_dir_ + "/memory.events"), "oom_kill");
}

std::vector<pid_t> Cgroup::pids() const {
  return procs_files_.empty() ? std::vector<pid_t>{} : read_pids(procs_files_.front());
}

Cgroups::Cgroups(const std::string& instance) {
  std::string memory_root, pids_root, unified_root;
  for (const auto& m : cgroup_mounts()) {
    if (m.type == "cgroup" && has_option(m.options, "memory")) memory_root = m.path;
    if (m.type == "cgroup" && has_option(m.options, "pids")) pids_root = m.path;
    if (m.type == "cgroup2") unified_root = m.path;
  }
  // The server's pid in the name lets any later server recognise (and sweep) a dead one's cgroups.
  std::string me = instance + "-" + std::to_string(getpid());
  std::string leaf = "/shoal-sandbox/" + me;
  if (!memory_root.empty() && !pids_root.empty()) {
    std::string mem = memory_root + own_path("memory") + leaf;
    std::string pid = pids_root + own_path("pids") + leaf;
    if (make_dirs(mem) && make_dirs(pid) && access((mem + "/cgroup.procs").c_str(), W_OK) == 0) {
      version_ = 1;
      parents_ = {mem, pid};
      return;
    }
    why_ = "v1 hierarchies present but not writable";
  }
  if (!unified_root.empty()) {
    std::string controllers = read_file(unified_root + "/cgroup.controllers");
    if (controllers.find("memory") != std::string::npos &&
        controllers.find("pids") != std::string::npos) {
      // Controllers must be enabled on every level between our cgroup and the sandboxes'; our own
      // cgroup can only delegate if it holds no processes (the "no internal processes" rule), so
      // this works when the server runs in a delegated, otherwise empty subtree (systemd
      // Delegate=yes with the server in a child).
      std::string base = unified_root + own_path("");
      std::string mid = base + "/shoal-sandbox", dir = mid + "/" + me;
      write_file(base + "/cgroup.subtree_control", "+memory +pids");
      if (make_dirs(mid)) write_file(mid + "/cgroup.subtree_control", "+memory +pids");
      if (make_dirs(dir) && write_file(dir + "/cgroup.subtree_control", "+memory +pids") &&
          read_file(dir + "/cgroup.subtree_control").find("pids") != std::string::npos) {
        version_ = 2;
        parents_ = {dir};
        return;
      }
      why_ += (why_.empty() ? "" : "; ") + std::string("v2 controllers not delegated to us");
    } else {
      why_ += (why_.empty() ? "" : "; ") +
              std::string("v2 mounted without the memory and pids controllers");
    }
  }
  if (why_.empty()) why_ = "no cgroup hierarchy mounted";
}

std::string Cgroups::describe() const {
  if (version_ == 1) return "v1 (memory, pids)";
  if (version_ == 2) return "v2 (memory, pids)";
  return "none: " + why_;
}

int Cgroups::sweep() {
  // Sibling instance directories "<name>-<pid>" whose server is gone: kill what is left, remove.
  int n = 0;
  for (const auto& parent : parents_) {
    std::error_code ec;
    std::vector<std::string> dead;
    for (auto& entry : fs::directory_iterator(fs::path(parent).parent_path(), ec)) {
      std::string name = entry.path().filename().string();
      auto dash = name.rfind('-');
      if (!entry.is_directory() || dash == std::string::npos) continue;
      pid_t pid = static_cast<pid_t>(std::atoi(name.c_str() + dash + 1));
      if (pid <= 0 || pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH) continue;
      dead.push_back(entry.path());
    }
    for (const auto& d : dead) {
      for (auto& entry : fs::directory_iterator(d, ec))
        if (entry.is_directory()) ++n;
      kill_and_remove(d);
    }
  }
  return n;
}

std::unique_ptr<Cgroup> Cgroups::create(const std::string& name, int64_t memory_bytes,
                                        int64_t pids) {
  if (version_ == 0) return nullptr;
  std::unique_ptr<Cgroup> cg(new Cgroup());
  cg->version_ = version_;
  for (const auto& parent : parents_) {
    std::string dir = parent + "/" + name;
    SHOAL_CHECK(mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST, "mkdir {} failed: errno {}", dir,
                errno);
    cg->dirs_.push_back(dir);
    cg->procs_files_.push_back(dir + "/cgroup.procs");
  }
  cg->memory_dir_ = cg->dirs_[0];
  cg->set_limits(memory_bytes, pids);
  return cg;
}

void Cgroups::remove_parent() {
  for (const auto& parent : parents_) {
    rmdir(parent.c_str());
    rmdir(fs::path(parent).parent_path().c_str());  // shoal-sandbox, if no other instance uses it
  }
}

}  // namespace shoal::sandbox
