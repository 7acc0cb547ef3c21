// Sandbox latency and throughput for a trivial Python snippet in each execution mode (persistent
// session, fork-server, fresh sandbox), measured through the real client and server (ZeroMQ ipc),
// beside plain `python3 -c` without any isolation in the same run. Not a test: it prints numbers
// and the ratio to the baseline; results go to docs/PERFORMANCE.md.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "base/log.h"
#include "sandbox/client.h"
#include "sandbox/server.h"

extern char** environ;

namespace {

using namespace shoal::sandbox;
using Clock = std::chrono::steady_clock;

constexpr const char* kSnippet = "x = 1 + 1";
thread_local std::string t_session;  // persistent mode: one session per calling thread

struct Stats {
  double p50_ms, p99_ms, per_s;  // per_s: with `concurrency` callers at once
  int n, failures, concurrency;
};

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

// Latency from `n` sequential calls; throughput from `threads` callers doing `n` calls in total.
template <typename F>
Stats measure(int n, int threads, F&& one) {
  for (int i = 0; i < std::max(3, n / 20); ++i) one();  // warm-up
  std::vector<double> lat;
  int failures = 0;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    failures += one() ? 0 : 1;
    lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < n / threads; ++i) one();
    });
  for (auto& t : ts) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return {percentile(lat, 0.5),
          percentile(lat, 0.99),
          (n / threads * threads) / secs,
          n,
          failures,
          threads};
}

bool plain_python() {
  // The same interpreter flags as the fresh sandbox's python (isolated, no site, no .pyc).
  std::vector<std::string> args = {"/usr/bin/python3", "-I", "-S", "-B", "-c", kSnippet};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return false;
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void print(const char* name, const Stats& s, const Stats& base, const char* target) {
  std::printf(
      "%-22s p50 %8.3f ms  p99 %8.3f ms  %7.0f runs/s (%d callers)  p50 / bare "
      "%6.3fx  failures %d  target %s\n",
      name, s.p50_ms, s.p99_ms, s.per_s, s.concurrency, s.p50_ms / base.p50_ms, s.failures, target);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int scale = 1;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--scale") == 0) scale = std::max(1, std::atoi(argv[i + 1]));
  shoal::log::set_level("warn");
  std::string dir = "/tmp/shoal-bench-sandbox-" + std::to_string(getpid());
  ServerOptions opt;
  opt.endpoint = "ipc://" + dir + "/sock";
  opt.state_dir = dir;
  opt.workers = 2;
  Server server(opt);
  std::thread serving([&] { server.run(); });
  std::printf("sandbox: %s\nsnippet: %s; %u cores\n", server.describe().c_str(), kSnippet,
              std::thread::hardware_concurrency());
  {
    Client client({server.endpoint(), 60000, 3});
    auto call = [&](Mode mode, const std::string& session) {
      Request r;
      r.tool = "python";
      r.arguments = {{"code", kSnippet}};
      r.mode = mode;
      r.session = session;
      return client.call(r).status == "ok";
    };
    Stats base = measure(60 * scale, 2, plain_python);
    print("python3 -I -S -c (bare)", base, base, "-");
    // Sessions: one per caller (calls on one session run one at a time).
    std::atomic<int> next{0};
    Stats persistent = measure(1000 * scale, 2, [&] {
      if (t_session.empty()) t_session = "bench-" + std::to_string(next++);
      return call(Mode::session, t_session);
    });
    print("persistent session", persistent, base, "p50 <= 1 ms");
    Stats fork = measure(300 * scale, 2, [&] { return call(Mode::fork, ""); });
    print("fork-server", fork, base, "p50 <= 5 ms, >= 300 runs/s");
    Stats fresh = measure(60 * scale, 2, [&] { return call(Mode::fresh, ""); });
    print("fresh sandbox", fresh, base, "p50 <= 25 ms");
  }
  server.stop();
  serving.join();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
