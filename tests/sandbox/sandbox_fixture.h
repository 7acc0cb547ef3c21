// Shared by the sandbox tests: a sandbox server running in this process (its own endpoint and
// state directory), a client, and the process count the hostile tests compare before and after.
// Not a mock: the server isolates with bubblewrap, seccomp and cgroups as in production.
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/client.h"
#include "sandbox/server.h"

namespace shoal::sandbox::testing {

inline std::string unique_name(const std::string& tag) {
  static int n = 0;
  return tag + "-" + std::to_string(getpid()) + "-" + std::to_string(n++);
}

// Processes below `root` in the process tree (the server's sandboxes when root is this process).
inline int count_descendants(pid_t root = getpid()) {
  std::map<pid_t, pid_t> parent;
  DIR* d = opendir("/proc");
  if (!d) return -1;
  while (dirent* e = readdir(d)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream f("/proc/" + std::string(e->d_name) + "/stat");
    std::string stat;
    std::getline(f, stat);
    auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
    if (state == 'Z') continue;
    parent[pid] = ppid;
  }
  closedir(d);
  int n = 0;
  for (auto& [pid, pp] : parent) {
    pid_t p = pp;
    for (int depth = 0; p > 1 && depth < 64; ++depth) {
      if (p == root) {
        ++n;
        break;
      }
      auto it = parent.find(p);
      if (it == parent.end()) break;
      p = it->second;
    }
  }
  return n;
}

// The processes below `root`, one per line ("pid ppid cmdline"), for failure messages.
inline std::string list_descendants(pid_t root = getpid()) {
  std::string out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    // Walk up from pid to see whether root is an ancestor.
    pid_t p = pid;
    bool below = false;
    pid_t ppid0 = 0;
    for (int depth = 0; p > 1 && depth < 64; ++depth) {
      std::ifstream f("/proc/" + std::to_string(p) + "/stat");
      std::string stat;
      std::getline(f, stat);
      auto close = stat.rfind(')');
      int pp = 0;
      char state = 0;
      if (close == std::string::npos ||
          std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &pp) != 2)
        break;
      if (depth == 0) ppid0 = pp;
      if (pp == root) {
        below = true;
        break;
      }
      p = pp;
    }
    if (!below) continue;
    std::ifstream c("/proc/" + std::string(e->d_name) + "/cmdline");
    std::string cmd((std::istreambuf_iterator<char>(c)), std::istreambuf_iterator<char>());
    for (char& ch : cmd)
      if (ch == '\0') ch = ' ';
    out += std::to_string(pid) + " " + std::to_string(ppid0) + " " + cmd.substr(0, 160) + "\n";
  }
  closedir(d);
  return out;
}

// The sandboxes below `root`: the size of each bubblewrap process tree (a live sandbox is
// bwrap, its init and one interpreter: 3 processes), and how many other direct children there
// are (the launcher's pre-forked "armed" children, which run no sandbox code yet).
struct Census {
  std::vector<int> sandboxes;
  int others = 0;
  bool within(int max_sandboxes) const {
    if (static_cast<int>(sandboxes.size()) > max_sandboxes) return false;
    for (int n : sandboxes)
      if (n > 3) return false;
    return true;
  }
};

inline Census census(pid_t root = getpid()) {
  std::map<pid_t, pid_t> parent;
  std::map<pid_t, std::string> comm;
  DIR* d = opendir("/proc");
  Census c;
  if (!d) return c;
  while (dirent* e = readdir(d)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream f("/proc/" + std::string(e->d_name) + "/stat");
    std::string stat;
    std::getline(f, stat);
    auto open = stat.find('(');
    auto close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
    if (state == 'Z') continue;
    parent[pid] = ppid;
    comm[pid] = stat.substr(open + 1, close - open - 1);
  }
  closedir(d);
  std::map<pid_t, int> tree;  // top-level bwrap pid -> processes in its tree
  for (auto& [pid, pp] : parent) {
    if (pp == root) {
      if (comm[pid] == "bwrap")
        tree[pid] += 1;
      else
        ++c.others;
      continue;
    }
    pid_t child = pid, p = pp;
    for (int depth = 0; p > 1 && depth < 64; ++depth) {
      if (p == root) {
        if (comm[child] == "bwrap") tree[child] += 1;
        break;
      }
      auto it = parent.find(p);
      if (it == parent.end()) break;
      child = p;
      p = it->second;
    }
  }
  for (auto& [pid, n] : tree) c.sandboxes.push_back(n);
  return c;
}

// Waits (bounded) until there are at most `max_sandboxes` sandboxes, none holding more than its
// own 3 processes; returns the last census.
inline Census settle_sandboxes(int max_sandboxes, int ms = 3000) {
  Census c = census();
  for (int i = 0; i < ms / 10 && !c.within(max_sandboxes); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    c = census();
  }
  return c;
}

// Waits (bounded) until count_descendants() drops to at most `target`; returns the last count.
inline int settle_descendants(int target, int ms = 2000) {
  int n = count_descendants();
  for (int i = 0; i < ms / 10 && n > target; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    n = count_descendants();
  }
  return n;
}

class LocalServer {
 public:
  explicit LocalServer(int workers = 2, const std::string& endpoint = "") {
    name_ = unique_name("sbx");
    state_dir_ = "/tmp/shoal-sandbox-tests/" + name_;
    endpoint_ = endpoint.empty() ? "ipc://" + state_dir_ + ".sock" : endpoint;
    start(workers);
  }
  ~LocalServer() { stop(); }

  void start(int workers = 2) {
    ServerOptions opt;
    opt.endpoint = endpoint_;
    opt.state_dir = state_dir_;
    opt.workers = workers;
    opt.exec.defaults.wall_ms = 5000;
    server_ = std::make_unique<Server>(opt);
    thread_ = std::thread([this] { server_->run(); });
  }
  void stop() {
    if (!server_) return;
    server_->stop();
    thread_.join();
    server_.reset();
    std::error_code ec;
    std::filesystem::remove_all(state_dir_, ec);
  }
  const std::string& endpoint() const { return endpoint_; }
  const std::string& state_dir() const { return state_dir_; }

 private:
  std::string name_, state_dir_, endpoint_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

inline Request make_call(const std::string& tool, json args, const std::string& session = "",
                         Mode mode = Mode::automatic, json limits = json::object()) {
  Request r;
  r.tool = tool;
  r.arguments = std::move(args);
  r.session = session;
  r.mode = mode;
  r.limits = std::move(limits);
  return r;
}

inline Reply python(Client& c, const std::string& code, const std::string& session = "",
                    Mode mode = Mode::automatic, json limits = json::object()) {
  return c.call(make_call("python", {{"code", code}}, session, mode, std::move(limits)));
}

inline Reply shell(Client& c, const std::string& command, const std::string& session = "",
                   Mode mode = Mode::automatic, json limits = json::object()) {
  return c.call(make_call("shell", {{"command", command}}, session, mode, std::move(limits)));
}

inline std::string describe(const Reply& r) {
  return dump(to_json(r)).substr(0, 2000);
}

// The server still answers and still runs code correctly.
inline void expect_healthy(Client& c) {
  Reply ping = c.admin("ping");
  EXPECT_EQ(ping.status, "ok") << describe(ping);
  Reply r = python(c, "print(6 * 7)");
  EXPECT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text, "42\n") << describe(r);
}

}  // namespace shoal::sandbox::testing
