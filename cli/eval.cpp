// `shoal eval --model DIR --suite FILE [--samples K] [--temperature T] [--baseline DIR] [--out
// DIR]`: evaluates a checkpoint on an eval suite through the run's actors (actors/eval.h), showing
// progress (episodes done, ETA, running pass rate), then prints the results (side by side with
// the baseline and the paired difference when one is given) and writes results.json and
// report.html. Ctrl-C stops cleanly: what finished is written, marked interrupted (exit 130).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "actors/eval.h"
#include "base/error.h"
#include "cli/commands.h"
#include "cli/eval_report.h"
#include "engine/device.h"

namespace shoal::cli {

namespace {

using nlohmann::json;

std::string eta_text(double s) {
  if (s < 0 || s > 1e7) return "?";
  auto t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

class EvalProgress {
 public:
  EvalProgress() : tty_(isatty(fileno(stderr))) {}
  void operator()(const json& e) {
    std::string kind = e.value("event", "");
    if (kind == "progress") return progress(e);
    end_line();
    std::fprintf(stderr, "%s%s\n", kind == "warning" ? "warning: " : "",
                 e.value("message", "").c_str());
  }
  void end_line() {
    if (open_) std::fprintf(stderr, "\n");
    open_ = false;
  }

 private:
  void progress(const json& e) {
    int64_t done = e.value("done", 0), total = std::max<int64_t>(1, e.value("total", 1));
    double elapsed = e.value("elapsed", 0.0);
    double eta =
        done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total - done) : -1;
    int width = 20;
    int fill = static_cast<int>(width * done / total);
    std::string bar = std::string(static_cast<size_t>(fill), '#') +
                      std::string(static_cast<size_t>(width - fill), '.');
    double pass =
        done > 0 ? 100.0 * static_cast<double>(e.value("passed", 0)) / static_cast<double>(done)
                 : 0.0;
    double tps = elapsed > 0 ? static_cast<double>(e.value("generated_tokens", 0)) / elapsed : 0;
    std::string line =
        fmt::format("{:<8} {:>5}/{:<5} [{}] ETA {:>6}  pass {:.1f}%  {:.0f} tok/s",
                    e.value("label", ""), done, total, bar, eta_text(eta), pass, tps);
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      open_ = true;
      if (done == total) end_line();
    } else if (done == total || elapsed - last_ >= 5.0) {
      last_ = elapsed;
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }

  bool tty_, open_ = false;
  double last_ = -1e9;
};

std::string pct(const json& v) {
  return v.is_number() ? fmt::format("{:.1f}%", 100 * v.get<double>()) : "-";
}
std::string num(const json& v, const char* f = "{:.3f}") {
  return v.is_number() ? fmt::vformat(f, fmt::make_format_args(v.get_ref<const double&>()))
                       : std::string("-");
}

// The results as a table on stdout: the model (and the baseline with the difference).
void print_results(const json& res) {
  const json& a = res["results"];
  bool has_b = res.contains("baseline");
  const json& b = has_b ? res["baseline"]["results"] : json::object();
  auto row = [&](const std::string& name, const json& va, const json& vb, bool percent) {
    std::string sa = percent ? pct(va) : num(va), sb = percent ? pct(vb) : num(vb);
    if (has_b)
      std::printf("  %-24s %12s %12s\n", name.c_str(), sa.c_str(), sb.c_str());
    else
      std::printf("  %-24s %12s\n", name.c_str(), sa.c_str());
  };
  auto field = [](const json& j, const std::string& k) -> json {
    return j.is_object() && j.contains(k) ? j[k] : json();
  };
  std::printf("suite %s: %lld tasks x %lld samples\n", res["suite"].value("name", "").c_str(),
              static_cast<long long>(a.value("tasks", 0)),
              static_cast<long long>(a.value("samples", 0)));
  if (has_b) std::printf("  %-24s %12s %12s\n", "", "model", "baseline");
  row("pass@1", field(a, "pass_rate"), field(b, "pass_rate"), true);
  for (auto& [k, v] : a["pass_at_k"].items())
    if (k != "1") row("pass@" + k, v, field(field(b, "pass_at_k"), k), true);
  row("mean reward", field(a, "mean_reward"), field(b, "mean_reward"), false);
  row("valid tool-call rate", field(a, "valid_tool_call_rate"), field(b, "valid_tool_call_rate"),
      true);
  row("turns / episode", field(a, "turns_per_episode"), field(b, "turns_per_episode"), false);
  row("tokens / episode", field(a, "tokens_per_episode"), field(b, "tokens_per_episode"), false);
  for (const char* group : {"families", "difficulties"})
    for (auto& [k, v] : a[group].items())
      row(fmt::format("{} {}", group[0] == 'f' ? "family" : "difficulty", k) + " pass@1",
          v["pass_rate"], field(field(field(b, group), k), "pass_rate"), true);
  if (res.contains("comparison")) {
    for (const char* m : {"pass_rate", "mean_reward"}) {
      const json& c = res["comparison"][m];
      bool p = std::string(m) == "pass_rate";
      double s = p ? 100.0 : 1.0;
      std::printf(
          "  difference in %s (model - baseline): %+.*f%s, 95%% CI [%+.*f, %+.*f] over %lld "
          "tasks (paired bootstrap)\n",
          p ? "pass@1" : "mean reward", p ? 1 : 3, s * c.value("difference", 0.0),
          p ? " points" : "", p ? 1 : 3, s * c.value("ci95_low", 0.0), p ? 1 : 3,
          s * c.value("ci95_high", 0.0), static_cast<long long>(c.value("tasks", 0)));
    }
  }
  auto tp = [](const char* who, const json& r) {
    const json& t = r["throughput"];
    std::printf(
        "throughput (%s): %lld episodes in %.1f s = %.2f episodes/s, %.0f generated "
        "tokens/s\n",
        who, static_cast<long long>(t.value("episodes", 0)), t.value("seconds", 0.0),
        t.value("episodes_per_s", 0.0), t.value("generated_tokens_per_s", 0.0));
  };
  tp("model", a);
  if (has_b) tp("baseline", b);
}

}  // namespace

Run add_eval(CLI::App& app) {
  auto o = std::make_shared<actors::EvalOptions>();
  o->samples = 0;
  o->temperature = -1;
  app.add_option("--model", o->model_dir,
                 "the model: an HF directory or runs/NAME/checkpoints/step_N")
      ->required();
  app.add_option("--device", o->device, kDeviceHelp)->capture_default_str();
  app.add_option("--precision", o->precision, kPrecisionHelp)->capture_default_str();
  app.add_option("--suite", o->suite_file, "the eval suite (configs/eval/*.json)")->required();
  CLI::Option* samples = app.add_option("--samples", o->samples,
                                        "samples per task K (pass@1..K; default: the suite's)");
  app.add_option("--temperature", o->temperature,
                 "sampling temperature (0 = greedy; default: the suite's sampling)");
  app.add_option("--baseline", o->baseline_dir, "a second model, evaluated on the same tasks");
  app.add_option("--tokenizer", o->tokenizer_file,
                 "tokenizer.json (default: MODEL/tokenizer.json)");
  app.add_option("--baseline-tokenizer", o->baseline_tokenizer_file,
                 "the baseline's tokenizer.json (default: BASELINE/tokenizer.json)");
  app.add_option("--out", o->out_dir,
                 "where results.json and report.html go (default evals/MODEL-SUITE-TIME)");
  app.add_option("--seed", o->seed, "sampling seeds derive from it")->capture_default_str();
  app.add_option("--rollouts", o->rollouts, "episodes in flight at once")->capture_default_str();
  app.add_option("--sandbox", o->sandbox_endpoint,
                 "a running shoal sandboxd (default: start a local one)");
  app.add_option("--sandbox-workers", o->sandbox_workers, "workers of the local sandbox server")
      ->capture_default_str();
  return [o, samples]() {
    namespace fs = std::filesystem;
    SHOAL_CHECK(samples->count() == 0 || o->samples >= 1, "--samples must be at least 1 (got {})",
                o->samples);
    o->shoal_exe = fs::read_symlink("/proc/self/exe").string();
    static std::atomic<bool> interrupted{false};
    interrupted = false;
    o->interrupt = &interrupted;
    std::signal(SIGINT, [](int) {
      interrupted = true;
      std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills
    });
    auto progress = std::make_shared<EvalProgress>();
    o->on_event = [progress](const json& e) { (*progress)(e); };
    actors::EvalOutcome r = actors::run_eval(*o);
    std::signal(SIGINT, SIG_DFL);
    progress->end_line();
    std::string report = (fs::path(r.out_dir) / "report.html").string();
    write_eval_report(r.results, report);
    print_results(r.results);
    std::fprintf(stderr, "results: %s\nreport: %s\n",
                 (fs::path(r.out_dir) / "results.json").string().c_str(), report.c_str());
    if (r.interrupted) {
      std::fprintf(stderr, "interrupted: the results cover the episodes that finished\n");
      return 130;
    }
    return 0;
  };
}

}  // namespace shoal::cli
