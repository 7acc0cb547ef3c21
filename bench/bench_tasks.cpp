// Task synthesis and verifier throughput per family, at difficulties 1, 3 and 5: tasks generated
// per second, tasks synthesized per second (generate, demonstrate, verify, perturb, verify: what
// `shoal tasks synth` does per task, without the store), and verifications per second on
// demonstrations and on perturbations. The baseline, measured in the same run, is what the reward
// actor pays before any verifier runs: parsing the task from its JSON text; the last column is
// how many such parses one verification costs. Sandbox families run against an in-process sandbox
// server. Not a test: it prints a table; results go to docs/PERFORMANCE.md.
#include <unistd.h>

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
#include "tasks/registry.h"

namespace {

using namespace shoal;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Calls `one(i)` for i = 0, 1, ... until `budget` seconds have passed (and at least `min_n`
// times); returns calls per second.
template <typename F>
double rate(double budget, int min_n, F&& one) {
  auto t0 = Clock::now();
  int n = 0;
  while (n < min_n || seconds_since(t0) < budget) one(n++);
  return n / seconds_since(t0);
}

struct Sample {
  tasks::Task task;
  tasks::Episode demo, perturbed;
  std::string text;  // the task as the reward actor receives it
};

}  // namespace

int main(int argc, char** argv) {
  double scale = 1;
  std::string only;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--scale") == 0) scale = std::max(0.1, std::atof(argv[i + 1]));
    if (std::strcmp(argv[i], "--family") == 0) only = argv[i + 1];
  }
  log::set_level("warn");
  std::string dir = "/tmp/shoal-bench-tasks-" + std::to_string(getpid());
  sandbox::ServerOptions opt;
  opt.endpoint = "ipc://" + dir + "/sock";
  opt.state_dir = dir;
  opt.workers = 2;
  sandbox::Server server(opt);
  std::thread serving([&] { server.run(); });
  {
    sandbox::Client client({server.endpoint(), 60000, 3});
    std::printf("tasks: %u cores; sandbox: %s\n", std::thread::hardware_concurrency(),
                server.describe().c_str());
    std::printf("%-18s %2s %9s %9s %11s %11s %10s %12s\n", "family", "d", "gen/s", "synth/s",
                "verify ok/s", "verify bad/s", "parse/s", "verify/parse");
    std::fflush(stdout);
    for (const tasks::Family* f : tasks::families()) {
      if (!only.empty() && f->name() != only) continue;
      sandbox::Client* sb = f->needs_sandbox() ? &client : nullptr;
      for (int d : {1, 3, 5}) {
        uint64_t seed = 1000;
        int failures = 0, errors = 0;
        std::string first_error;
        auto error = [&](uint64_t at, const std::exception& e) {
          if (errors++ == 0) first_error = "seed " + std::to_string(at) + ": " + e.what();
        };
        double gen = rate(0.25 * scale, 3, [&](int) {
          try {  // a family bug (generation or demonstration throwing) is counted, not fatal
            f->generate(seed++, d);
          } catch (const std::exception& e) {
            error(seed - 1, e);
          }
        });
        std::vector<Sample> pool;
        double synth = rate(0.5 * scale, 2, [&](int i) {
          Sample s;
          try {
            s.task = f->generate(seed++, d);
            s.demo = f->demonstrate(s.task, sb);
          } catch (const std::exception& e) {
            return error(seed - 1, e);
          }
          failures += f->verify(s.task, s.demo, sb).solved() ? 0 : 1;
          s.perturbed = f->perturb(s.task, s.demo, static_cast<uint64_t>(i), sb);
          failures += f->verify(s.task, s.perturbed, sb).solved() ? 1 : 0;
          s.text = tasks::to_json(s.task).dump();
          if (pool.size() < 16) pool.push_back(std::move(s));
        });
        if (pool.empty()) {
          std::printf("%-18s %2d  no task synthesized: %s\n", f->name().c_str(), d,
                      first_error.c_str());
          continue;
        }
        double ok = rate(0.3 * scale, 2, [&](int i) {
          const Sample& s = pool[static_cast<size_t>(i) % pool.size()];
          f->verify(s.task, s.demo, sb);
        });
        double bad = rate(0.3 * scale, 2, [&](int i) {
          const Sample& s = pool[static_cast<size_t>(i) % pool.size()];
          f->verify(s.task, s.perturbed, sb);
        });
        double parse = rate(0.2 * scale, 10, [&](int i) {
          tasks::task_from_json(
              tasks::json::parse(pool[static_cast<size_t>(i) % pool.size()].text));
        });
        std::printf("%-18s %2d %9.0f %9.1f %11.0f %11.0f %10.0f %11.1fx%s\n", f->name().c_str(), d,
                    gen, synth, ok, bad, parse, parse / ok, failures ? "  (a check failed!)" : "");
        std::fflush(stdout);
      }
    }
  }
  server.stop();
  serving.join();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
