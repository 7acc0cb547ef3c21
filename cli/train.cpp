// `shoal train CONFIG [--set a.b=c]... [--name NAME]` and `shoal train --resume runs/NAME`: runs
// a pipeline of stages from a config (actors/runner.h), showing progress as it goes (a line per
// step with a bar, ETA and the step's numbers; `--log-json` prints one JSON object per event
// instead), then writes the run's HTML report. Not the run itself.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "actors/run_store.h"
#include "actors/runner.h"
#include "base/error.h"
#include "cli/commands.h"
#include "cli/report.h"

namespace shoal::cli {

namespace {

using nlohmann::json;

std::string duration_text(double s) {
  if (s < 0 || s > 1e7) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// Prints events for a person: one line per step (a bar with ETA and the numbers that matter),
// eval tables, warnings.
class Progress {
 public:
  explicit Progress(bool json_lines) : json_(json_lines), tty_(isatty(fileno(stderr))) {}
  void operator()(const json& e) {
    if (json_) {
      std::printf("%s\n", e.dump().c_str());
      std::fflush(stdout);
      return;
    }
    std::string kind = e.value("event", "");
    if (kind == "step") return step(e);
    end_line();
    if (kind == "eval") return eval(e);
    if (kind == "stage") {
      std::fprintf(stderr, "== stage %s (%s): %lld steps%s\n", e.value("stage", "").c_str(),
                   e.value("type", "").c_str(), static_cast<long long>(e.value("steps", 0)),
                   e.value("from", 0) > 0
                       ? fmt::format(", resuming at step {}", e.value("from", 0)).c_str()
                       : "");
      return;
    }
    std::fprintf(stderr, "%s%s\n", kind == "warning" ? "warning: " : "",
                 e.value("message", "").c_str());
  }
  void end_line() {
    if (open_) std::fprintf(stderr, "\n");
    open_ = false;
  }

 private:
  void step(const json& e) {
    int64_t step = e.value("step", 0), steps = std::max<int64_t>(e.value("steps", 1), 1);
    double elapsed = e.value("elapsed", 0.0);
    int64_t done_here = std::max<int64_t>(e.value("steps_this_run", 1), 1);
    double eta = elapsed / static_cast<double>(done_here) * static_cast<double>(steps - step);
    const json& m = e.contains("metrics") ? e["metrics"] : json::object();
    int width = 20;
    int fill = static_cast<int>(width * step / steps);
    std::string bar = std::string(static_cast<size_t>(fill), '#') +
                      std::string(static_cast<size_t>(width - fill), '.');
    std::string nums;
    auto add = [&](const char* key, const char* label, const char* fmt_) {
      if (m.contains(key) && m[key].is_number())
        nums += fmt::format(" {} ", label) +
                fmt::vformat(fmt_, fmt::make_format_args(m[key].get_ref<const double&>()));
    };
    add("loss", "loss", "{:.4f}");
    add("reward", "reward", "{:.3f}");
    if (m.contains("pass_rate"))
      nums += fmt::format(" pass {:.0f}%", 100 * m["pass_rate"].get<double>());
    add("kl", "kl", "{:.4f}");
    if (m.contains("rollout_tokens_per_s"))
      nums += fmt::format(" gen {:.0f} tok/s", m["rollout_tokens_per_s"].get<double>());
    if (m.contains("train_tokens_per_s"))
      nums += fmt::format(" train {:.0f} tok/s", m["train_tokens_per_s"].get<double>());
    std::string line = fmt::format("{:<6} step {:>4}/{:<4} [{}] ETA {:>6}{}", e.value("stage", ""),
                                   step, steps, bar, duration_text(eta), nums);
    bool last = step == steps;
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      open_ = true;
      if (last) end_line();
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }
  void eval(const json& e) {
    const json& r = e["results"];
    std::fprintf(stderr, "eval %s @ %s (step %lld): pass %.1f%% of %lld, mean reward %.3f",
                 e.value("suite", "").c_str(), e.value("label", "").c_str(),
                 static_cast<long long>(e.value("gstep", 0)), 100 * r.value("pass_rate", 0.0),
                 static_cast<long long>(r.value("count", 0)), r.value("mean_reward", 0.0));
    std::string fams;
    for (auto& [f, v] : r["families"].items())
      fams +=
          fmt::format("{}{} {:.1f}%", fams.empty() ? "" : ", ", f, 100 * v.value("pass_rate", 0.0));
    std::fprintf(stderr, "%s%s%s\n", fams.empty() ? "" : " (", fams.c_str(),
                 fams.empty() ? "" : ")");
  }

  bool json_, tty_, open_ = false;
};

}  // namespace

Run add_train(CLI::App& app) {
  struct Options {
    std::string config, name, resume, runs_dir = "runs";
    std::vector<std::string> set;
    bool log_json = false, no_report = false;
    int64_t threads = 0;
  };
  auto o = std::make_shared<Options>();
  app.add_option("config", o->config, "the run config (JSON; docs/TRAIN.md)");
  app.add_option("--set", o->set, "override a config key: --set stages.1.steps=20 (repeatable)");
  app.add_option("--name", o->name, "the run's name: it is written to RUNS/NAME");
  app.add_option("--runs-dir", o->runs_dir, "where runs are written")->capture_default_str();
  app.add_option("--resume", o->resume, "continue the run in this directory (runs/NAME)");
  app.add_option("--rollouts", o->threads, "episodes in flight at once (default 64)");
  app.add_flag("--log-json", o->log_json, "print one JSON object per event on stdout");
  app.add_flag("--no-report", o->no_report, "do not write runs/NAME/report.html at the end");
  return [o]() {
    namespace fs = std::filesystem;
    SHOAL_CHECK(o->config.empty() != o->resume.empty(),
                "give a config file (shoal train CONFIG) or --resume runs/NAME, not {}",
                o->config.empty() ? "neither" : "both");
    SHOAL_CHECK(o->resume.empty() || o->set.empty(),
                "--set cannot change a run being resumed (its config is fixed)");
    actors::TrainOptions t;
    t.config_file = o->config;
    t.overrides = o->set;
    t.name = o->name;
    t.runs_dir = o->runs_dir;
    t.resume_dir = o->resume;
    t.threads = o->threads;
    t.shoal_exe = fs::read_symlink("/proc/self/exe").string();
    t.presets_dir = "configs/models";
    if (!fs::exists(t.presets_dir) && fs::exists(fs::path(SHOAL_SOURCE_DIR) / "configs/models"))
      t.presets_dir = (fs::path(SHOAL_SOURCE_DIR) / "configs/models").string();
    static std::atomic<bool> interrupted{false};
    interrupted = false;
    t.interrupt = &interrupted;
    // The first Ctrl-C stops after the current step with a checkpoint; a second one kills.
    std::signal(SIGINT, [](int) {
      interrupted = true;
      std::signal(SIGINT, SIG_DFL);
    });
    auto progress = std::make_shared<Progress>(o->log_json);
    t.on_event = [progress](const nlohmann::json& e) { (*progress)(e); };
    actors::TrainResult r = actors::run_training(t);
    std::signal(SIGINT, SIG_DFL);
    progress->end_line();
    if (r.interrupted) {
      std::fprintf(stderr, "interrupted: continue with `shoal train --resume %s`\n",
                   r.run_dir.c_str());
      return 130;
    }
    if (!o->no_report) {
      std::string out = (fs::path(r.run_dir) / "report.html").string();
      auto store = actors::RunStore::open((fs::path(r.run_dir) / "run.sqlite").string(), true);
      write_run_report(*store, out);
      std::fprintf(stderr, "report: %s\n", out.c_str());
    }
    std::fprintf(stderr, "run: %s\n", r.run_dir.c_str());
    return 0;
  };
}

}  // namespace shoal::cli
