// shoal runs list | show | export | report: looking at training runs (runs/NAME/run.sqlite) from
// the command line. list prints a line per run, show one run's summary, stages, evals, checkpoints
// and recent events (or JSON), export writes JSON lines, report the HTML page of cli/report.h.
// Read-only: works while a run is being written. Not the run store (actors/run_store.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "base/error.h"
#include "cli/commands.h"
#include "cli/report.h"
#include "cli/run_view.h"
#include "cli/svg_chart.h"

namespace shoal::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The last metrics worth a glance, in this order, as "reward 0.5  pass_rate 0.41  loss 0.12".
std::string metrics_of_note(const json& last) {
  std::string out;
  for (const char* k : {"reward", "pass_rate", "loss", "kl"})
    if (last.contains(k) && last[k].is_number())
      out +=
          fmt::format("{}{} {}", out.empty() ? "" : "  ", k, compact_number(last[k].get<double>()));
  return out;
}

int list_runs(const std::string& dir) {
  SHOAL_CHECK(fs::is_directory(dir), "no runs directory '{}' (use --dir)", dir);
  std::vector<fs::path> runs;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_directory() && fs::is_regular_file(entry.path() / "run.sqlite"))
      runs.push_back(entry.path());
  std::sort(runs.begin(), runs.end());
  if (runs.empty()) {
    std::printf("no runs in %s (a run is a directory with a run.sqlite)\n", dir.c_str());
    return 0;
  }
  size_t width = 4;
  for (const auto& r : runs) width = std::max(width, r.filename().string().size());
  std::printf("%-*s  %-11s  %-19s  %7s  %8s  %s\n", static_cast<int>(width), "NAME", "STATUS",
              "CREATED", "STEPS", "EPISODES", "LAST METRICS");
  for (const auto& r : runs) {
    std::string name = r.filename().string();
    try {  // one unreadable run must not hide the others
      auto store = open_run_store((r / "run.sqlite").string());
      json s = store->summary();
      std::printf("%-*s  %-11s  %-19s  %7lld  %8lld  %s\n", static_cast<int>(width), name.c_str(),
                  s["status"].get<std::string>().c_str(),
                  format_time(s["created"].get<double>()).c_str(),
                  static_cast<long long>(s["steps"].get<int64_t>()),
                  static_cast<long long>(s["episodes"].get<int64_t>()),
                  metrics_of_note(s["last_metrics"]).c_str());
    } catch (const Error& e) {
      std::printf("%-*s  unreadable: %s\n", static_cast<int>(width), name.c_str(),
                  e.message().c_str());
    } catch (const std::exception& e) {
      std::printf("%-*s  unreadable: %s\n", static_cast<int>(width), name.c_str(), e.what());
    }
  }
  return 0;
}

json show_json(actors::RunStore& store, size_t events) {
  json out;
  out["summary"] = store.summary();
  out["config"] = store.config();
  json stages = json::array();
  for (const auto& s : store.stage_steps())
    stages.push_back({{"stage", s.stage},
                      {"steps", s.steps},
                      {"first_gstep", s.first_gstep},
                      {"last_gstep", s.last_gstep}});
  out["stages"] = stages;
  out["evals"] = store.evals();
  out["checkpoints"] = store.checkpoints();
  json all = store.events(), recent = json::array();
  for (size_t i = all.size() > events ? all.size() - events : 0; i < all.size(); ++i)
    recent.push_back(all[i]);
  out["events"] = recent;
  return out;
}

std::string number_or_dash(const json& obj, const char* key) {
  return obj.is_object() && obj.contains(key) && obj[key].is_number()
             ? compact_number(obj[key].get<double>())
             : "—";
}

void show_text(const json& j) {
  const json& s = j["summary"];
  std::printf("run %s (%s), created %s\n", s["name"].get<std::string>().c_str(),
              s["status"].get<std::string>().c_str(),
              format_time(s["created"].get<double>()).c_str());
  std::printf("%lld global steps, %lld episodes, %lld checkpoints\n",
              static_cast<long long>(s["steps"].get<int64_t>()),
              static_cast<long long>(s["episodes"].get<int64_t>()),
              static_cast<long long>(s["checkpoints"].get<int64_t>()));
  if (!s["last_metrics"].empty()) {
    std::string line = "last metrics";
    if (s.contains("stage")) line += " (" + s["stage"].get<std::string>() + ")";
    line += ":";
    for (const auto& [k, v] : s["last_metrics"].items()) {
      std::string item = k + " " + (v.is_number() ? compact_number(v.get<double>()) : "—");
      if (line.size() + item.size() + 1 > 100) {  // wrap, indented under the first line
        std::printf("%s\n", line.c_str());
        line = "   ";
      }
      line += " " + item;
    }
    std::printf("%s\n", line.c_str());
  }
  std::printf("\nstages:\n");
  if (j["stages"].empty()) std::printf("  (no steps yet)\n");
  for (const auto& st : j["stages"])
    std::printf("  %-16s %6lld steps  (global steps %lld-%lld)\n",
                st["stage"].get<std::string>().c_str(),
                static_cast<long long>(st["steps"].get<int64_t>()),
                static_cast<long long>(st["first_gstep"].get<int64_t>()),
                static_cast<long long>(st["last_gstep"].get<int64_t>()));
  std::printf("\nevals:\n");
  if (j["evals"].empty())
    std::printf("  (none yet)\n");
  else
    std::printf("  %-16s %-20s %6s  %9s  %11s  %6s\n", "SUITE", "LABEL", "STEP", "PASS RATE",
                "MEAN REWARD", "COUNT");
  for (const auto& e : j["evals"]) {
    const json& r = e["results"];
    std::string pass = r.is_object() && r.contains("pass_rate") && r["pass_rate"].is_number()
                           ? fmt::format("{:.1f}%", r["pass_rate"].get<double>() * 100)
                           : "—";
    std::printf("  %-16s %-20s %6lld  %9s  %11s  %6s\n", e["suite"].get<std::string>().c_str(),
                e["label"].get<std::string>().c_str(),
                static_cast<long long>(e["gstep"].get<int64_t>()), pass.c_str(),
                number_or_dash(r, "mean_reward").c_str(), number_or_dash(r, "count").c_str());
  }
  std::printf("\ncheckpoints:\n");
  if (j["checkpoints"].empty()) std::printf("  (none yet)\n");
  for (const auto& c : j["checkpoints"])
    std::printf("  step %-6lld %s step %lld  %s%s\n",
                static_cast<long long>(c["gstep"].get<int64_t>()),
                c["stage"].get<std::string>().c_str(),
                static_cast<long long>(c["stage_step"].get<int64_t>()),
                c["path"].get<std::string>().c_str(),
                c.value("on_disk", true) ? "" : "  (removed: checkpoint.keep)");
  std::printf("\nrecent events:\n");
  if (j["events"].empty()) std::printf("  (none)\n");
  for (const auto& e : j["events"])
    std::printf("  %s  %-10s %s\n", format_time(e["time"].get<double>()).c_str(),
                e["kind"].get<std::string>().c_str(), e["message"].get<std::string>().c_str());
}

// Writes the rows `what` names as JSON lines to `out`; returns how many.
int64_t export_lines(actors::RunStore& store, const std::string& what, const std::string& stage,
                     std::ostream& out) {
  int64_t n = 0;
  auto put = [&](const nlohmann::ordered_json& line) {
    out << line.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    ++n;
  };
  if (what == "episodes") {
    for (const auto& e : store.episodes(stage)) put(episode_json(e));
  } else if (what == "metrics") {
    for (const auto& m : store.metrics())
      if (stage.empty() || m.stage == stage)
        put({{"gstep", m.gstep},
             {"stage", m.stage},
             {"stage_step", m.stage_step},
             {"name", m.name},
             {"value", std::isfinite(m.value) ? nlohmann::ordered_json(m.value) : nullptr}});
  } else {
    for (const auto& row : what == "evals" ? store.evals() : store.events()) put(row);
  }
  if (n == 0 && !stage.empty()) {  // most likely a misspelt stage: say which ones exist
    std::string known;
    for (const auto& s : store.stage_episodes()) known += (known.empty() ? "" : ", ") + s.stage;
    for (const auto& s : store.stage_steps())
      if (known.find(s.stage) == std::string::npos) known += (known.empty() ? "" : ", ") + s.stage;
    std::fprintf(stderr, "no %s in stage '%s' (stages: %s)\n", what.c_str(), stage.c_str(),
                 known.empty() ? "none yet" : known.c_str());
  }
  return n;
}

}  // namespace

Run add_runs(CLI::App& app) {
  struct Opts {
    std::string dir = "runs", run, what = "episodes", stage, out;
    bool json = false;
    size_t events = 10;
  };
  auto o = std::make_shared<Opts>();
  app.require_subcommand(1);
  auto add_run = [&](CLI::App* sub) {
    sub->add_option("run", o->run, "a run directory, its run.sqlite, or a run name under --dir")
        ->required();
    sub->add_option("--dir", o->dir, "where named runs live")->capture_default_str();
  };
  CLI::App* list = app.add_subcommand("list", "One line per run: status, steps, last metrics");
  list->add_option("--dir", o->dir, "the directory holding runs/NAME/run.sqlite")
      ->capture_default_str();
  CLI::App* show = app.add_subcommand(
      "show", "One run: summary, stages, eval tables, checkpoints, recent events");
  add_run(show);
  show->add_flag("--json", o->json, "print one JSON object instead");
  show->add_option("--events", o->events, "how many recent events")->capture_default_str();
  CLI::App* exp = app.add_subcommand("export",
                                     "Write a run's episodes, metrics, evals or events "
                                     "as JSON lines");
  add_run(exp);
  exp->add_option("--what", o->what,
                  "episodes (OpenAI-form messages, reward, components, token counts), metrics "
                  "({gstep, stage, stage_step, name, value}), evals or events")
      ->check(CLI::IsMember({"episodes", "metrics", "evals", "events"}))
      ->capture_default_str();
  exp->add_option("--stage", o->stage,
                  "only this stage (episodes and metrics; eval episodes are eval:SUITE@LABEL)");
  exp->add_option("--out", o->out, "output file (default: stdout)");
  CLI::App* report = app.add_subcommand("report", "Write the run's self-contained HTML report");
  add_run(report);
  report->add_option("--out", o->out, "output file (default: report.html beside run.sqlite)");

  return [o, list, show, exp]() {
    if (list->parsed()) return list_runs(o->dir);
    std::string path = find_run_store(o->run, o->dir);
    auto store = open_run_store(path);
    if (show->parsed()) {
      json j = show_json(*store, o->events);
      if (o->json)
        std::printf("%s\n", j.dump(2, ' ', false, json::error_handler_t::replace).c_str());
      else
        show_text(j);
      return 0;
    }
    if (exp->parsed()) {
      SHOAL_CHECK(o->stage.empty() || o->what == "episodes" || o->what == "metrics",
                  "--stage applies to episodes and metrics, not {}", o->what);
      if (o->out.empty()) {
        int64_t n = export_lines(*store, o->what, o->stage, std::cout);
        std::fprintf(stderr, "exported %lld %s\n", static_cast<long long>(n), o->what.c_str());
        return 0;
      }
      std::string tmp = o->out + ".tmp";
      std::ofstream file(tmp);
      SHOAL_CHECK(file.good(), "cannot write {}", tmp);
      int64_t n = export_lines(*store, o->what, o->stage, file);
      file.close();
      SHOAL_CHECK(file.good(), "writing {} failed", tmp);
      fs::rename(tmp, o->out);
      std::fprintf(stderr, "exported %lld %s to %s\n", static_cast<long long>(n), o->what.c_str(),
                   o->out.c_str());
      return 0;
    }
    std::string out =
        o->out.empty() ? (fs::path(path).parent_path() / "report.html").string() : o->out;
    write_run_report(*store, out);
    std::printf("wrote %s\n", out.c_str());
    return 0;
  };
}

}  // namespace shoal::cli
