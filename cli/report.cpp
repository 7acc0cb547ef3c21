// The run report's page (report.h): header and config summary, stages, eval tables, throughput,
// checkpoints and events, around the curves and episodes of report_sections.h; the style sheet and
// the read-out script are inline, and a Content-Security-Policy forbids loading anything else.
#include "cli/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "base/error.h"
#include "cli/report_sections.h"
#include "cli/run_view.h"
#include "cli/svg_chart.h"

namespace shoal::cli {
namespace {

using nlohmann::json;

constexpr int kSamplesPerStage = 3;
constexpr size_t kEvents = 30;  // the most recent ones

const char* kStyle = R"css(
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:0 20px 40px;color:#222}
h1{margin:18px 0 4px}h2{margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{padding:1px 8px;border-radius:9px;background:#eee;font-size:13px}
.status.finished{background:#d5f5d5}.status.failed{background:#f8d0d0}.status.running{background:#d8e8fb}
.note,.empty{color:#777}.charts{display:flex;flex-wrap:wrap;gap:10px}
svg.chart{border:1px solid #e4e4e4;background:#fff;max-width:100%;height:auto}
svg.chart text{font:11px system-ui,sans-serif;fill:#333}svg.chart .title{font-weight:600;font-size:13px}
svg.chart .tick,svg.chart .stage-label{fill:#666;font-size:10px}
svg.chart .grid{stroke:#eee}svg.chart .axis{stroke:#999}svg.chart .frame{fill:none;stroke:#ccc}
svg.chart .stage{stroke:#aaa;stroke-dasharray:4 3}svg.chart .series{fill:none;stroke-width:1.6}
svg.chart .series.raw{stroke-width:1;opacity:.35}svg.chart .band{opacity:.75}
svg.chart .cursor{stroke:#888}
details.episode{border:1px solid #ddd;border-radius:4px;margin:6px 0;padding:4px 8px}
details.episode summary{cursor:pointer}.msg{margin:6px 0 6px 8px;border-left:3px solid #ccc;padding-left:8px}
.msg .role{font-weight:600;font-size:12px;text-transform:uppercase;color:#555}
.msg .role .note{text-transform:none;font-weight:400}
.role-assistant{border-color:#1f77b4}.role-tool{border-color:#2ca02c}.role-user{border-color:#ff7f0e}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font-size:12.5px}
.call{font-family:monospace;font-size:12.5px;color:#1f4f7f}.verdict{margin:4px 0}
)css";

// Shows the values under the pointer: maps the pointer back through the chart's data-* frame and
// reads each series at the vertex nearest to it. Marks the body with how many charts it wired up.
const char* kScript = R"js(
(function () {
  var charts = document.querySelectorAll('svg.chart[data-px0]');
  charts.forEach(function (svg) {
    var d = svg.dataset, cursor = svg.querySelector('.cursor'), out = svg.querySelector('.readout');
    var lines = svg.querySelectorAll('polyline.series');
    function value(py) { return +d.y0 + (py - d.py0) / (d.py1 - d.py0) * (d.y1 - d.y0); }
    function step(px) { return +d.x0 + (px - d.px0) / (d.px1 - d.px0) * (d.x1 - d.x0); }
    function fmt(v) { return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(3); }
    svg.addEventListener('mousemove', function (ev) {
      var pt = svg.createSVGPoint();
      pt.x = ev.clientX; pt.y = ev.clientY;
      var p = pt.matrixTransform(svg.getScreenCTM().inverse());
      if (p.x < +d.px0 || p.x > +d.px1 || !lines.length) { svg.dispatchEvent(new Event('mouseleave')); return; }
      var at = null;  // the vertex nearest to the pointer, then every series' value there
      lines.forEach(function (line) {
        for (var i = 0; i < line.points.numberOfItems; ++i) {
          var x = line.points.getItem(i).x;
          if (at === null || Math.abs(x - p.x) < Math.abs(at - p.x)) at = x;
        }
      });
      if (at === null) { svg.dispatchEvent(new Event('mouseleave')); return; }
      var parts = [];
      lines.forEach(function (line) {
        for (var i = 0; i < line.points.numberOfItems; ++i) {
          var q = line.points.getItem(i);
          if (Math.abs(q.x - at) < 0.5) parts.push(line.dataset.name + ' ' + fmt(value(q.y)));
        }
      });
      cursor.setAttribute('x1', at); cursor.setAttribute('x2', at);
      cursor.setAttribute('visibility', 'visible');
      out.textContent = 'step ' + Math.round(step(at)) + ': ' + parts.join(', ');
    });
    svg.addEventListener('mouseleave', function () {
      cursor.setAttribute('visibility', 'hidden'); out.textContent = '';
    });
  });
  document.body.dataset.charts = charts.length;
})();
)js";

std::string cell(const json& v) {
  if (v.is_number()) return "<td class=\"num\">" + compact_number(v.get<double>()) + "</td>";
  if (v.is_null()) return "<td class=\"num\">—</td>";
  return "<td>" + html_escape(v.is_string() ? v.get<std::string>() : v.dump()) + "</td>";
}

std::string num_cell(double v) {
  return "<td class=\"num\">" + compact_number(v) + "</td>";
}

// A fraction as a percentage cell, with an optional note (a count) after it.
std::string pct(const json& v, const std::string& note = "") {
  std::string text = v.is_number() ? fmt::format("{:.1f}%", v.get<double>() * 100) : "—";
  if (!note.empty()) text += " <span class=\"note\">(" + html_escape(note) + ")</span>";
  return "<td class=\"num\">" + text + "</td>";
}

const json& field(const json& obj, const char* key) {
  static const json null;
  return obj.is_object() && obj.contains(key) ? obj[key] : null;
}

// The config keys worth a glance; the whole resolved config follows in a <details>.
std::string config_summary(const json& config) {
  std::string rows;
  auto row = [&](const std::string& k, const std::string& v) {
    if (!v.empty())
      rows += "<tr><th>" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>";
  };
  auto text = [](const json& v) {
    return v.is_null() ? "" : v.is_string() ? v.get<std::string>() : v.dump();
  };
  const json& model = field(config, "model");
  for (const char* k : {"preset", "config", "checkpoint"})
    if (!field(model, k).is_null()) row(std::string("model ") + k, text(model[k]));
  row("seed", text(field(config, "seed")));
  const json& tok = field(config, "tokenizer");
  if (!field(tok, "file").is_null()) row("tokenizer", text(tok["file"]));
  if (field(config, "stages").is_array())
    for (const auto& s : config["stages"]) {
      std::string type = text(field(s, "type")), name = text(field(s, "name"));
      std::string what =
          type + (field(s, "steps").is_null() ? "" : ", " + text(s["steps"]) + " steps");
      if (!field(s, "lr").is_null()) what += ", lr " + text(s["lr"]);
      if (type == "grpo" && !field(s, "group_size").is_null())
        what += ", groups of " + text(s["group_size"]);
      if (!field(s, "tasks").is_null()) what += ", tasks " + text(s["tasks"]);
      row("stage " + (name.empty() ? type : name), what);
    }
  if (field(config, "eval").is_array())
    for (const auto& e : config["eval"])
      row("eval " + text(field(e, "name")), text(field(e, "tasks")));
  std::string out = rows.empty() ? "" : "<table>" + rows + "</table>";
  return out + "<details><summary>resolved config</summary><pre>" + html_escape(config.dump(2)) +
         "</pre></details>";
}

std::string stages_table(const std::vector<actors::StageSteps>& stages, double created) {
  if (stages.empty()) return "<p class=\"empty\">No training steps recorded yet.</p>";
  std::string out =
      "<table><tr><th>stage</th><th>steps</th><th>global steps</th><th>finished</th><th>wall "
      "time</th></tr>";
  double start = created;
  for (const auto& s : stages) {
    out += fmt::format(
        "<tr><td>{}</td><td class=\"num\">{}</td><td>{} – {}</td><td>{}</td><td>{}</td></tr>",
        html_escape(s.stage), s.steps, s.first_gstep, s.last_gstep, format_time(s.last_time),
        format_duration(s.last_time - start));
    start = s.last_time;
  }
  return out +
         "</table><p class=\"note\">Wall time runs from the end of the previous stage (or "
         "the run's start) and includes evals.</p>";
}

// One table per suite (a row per eval), then pass rate by family and by difficulty across them.
std::string eval_tables(const json& evals) {
  if (evals.empty()) return "<p class=\"empty\">No evals recorded yet.</p>";
  std::vector<std::string> suites;
  std::map<std::string, std::vector<json>> by_suite;
  for (const auto& e : evals) {
    std::string s = e["suite"];
    if (!by_suite.count(s)) suites.push_back(s);
    by_suite[s].push_back(e);
  }
  std::string out;
  for (const auto& suite : suites) {
    const auto& rows = by_suite[suite];
    std::set<std::string> extra;  // other scalar results (pass@k, ...)
    for (const auto& e : rows)
      if (e["results"].is_object())
        for (const auto& [k, v] : e["results"].items())
          if ((v.is_number() || v.is_string()) && k != "pass_rate" && k != "mean_reward" &&
              k != "count")
            extra.insert(k);
    out += "<h3>" + html_escape(suite) +
           "</h3><table class=\"eval\"><tr><th>label</th>"
           "<th>step</th><th>pass rate</th><th>mean reward</th><th>count</th><th>Δ pass rate</th>";
    for (const auto& k : extra) out += "<th>" + html_escape(k) + "</th>";
    out += "</tr>";
    const json& first = field(rows[0]["results"], "pass_rate");
    for (const auto& e : rows) {
      const json& r = e["results"];
      out += "<tr>" + cell(e["label"]) + cell(e["gstep"]) + pct(field(r, "pass_rate")) +
             cell(field(r, "mean_reward")) + cell(field(r, "count"));
      const json& pr = field(r, "pass_rate");
      out += pr.is_number() && first.is_number()
                 ? fmt::format("<td class=\"num\">{:+.1f}</td>",
                               (pr.get<double>() - first.get<double>()) * 100)
                 : "<td class=\"num\">—</td>";
      for (const auto& k : extra) out += cell(field(r, k.c_str()));
      out += "</tr>";
    }
    out += "</table>";
    for (const char* group : {"families", "difficulties"}) {
      std::vector<std::string> keys;
      for (const auto& e : rows)
        if (field(e["results"], group).is_object())
          for (const auto& [k, v] : e["results"][group].items())
            if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
      if (keys.empty()) continue;
      out += fmt::format("<table class=\"eval-{}\"><tr><th>{}</th>", group,
                         group == std::string("families") ? "family" : "difficulty");
      for (const auto& e : rows)
        out += "<th>" + html_escape(e["label"].get<std::string>()) + " @" +
               std::to_string(e["gstep"].get<int64_t>()) + "</th>";
      out += "</tr>";
      for (const auto& k : keys) {
        out += "<tr><td>" + html_escape(k) + "</td>";
        for (const auto& e : rows) {
          const json& g = field(field(e["results"], group), k.c_str());
          const json& count = field(g, "count");
          out += pct(field(g, "pass_rate"), count.is_number() ? count.dump() : "");
        }
        out += "</tr>";
      }
      out += "</table>";
    }
  }
  return out +
         "<p class=\"note\">Pass rates by family and difficulty give the task count in "
         "brackets; Δ is in points against the suite's first eval.</p>";
}

struct MetricStats {
  double sum = 0;
  int64_t n = 0;
  double mean() const { return n ? sum / static_cast<double>(n) : std::nan(""); }
};

// Tokens and tokens/s per stage, and where a step's time goes (the time_* metrics).
std::string throughput(const std::vector<actors::RunStore::MetricRow>& metrics,
                       const std::vector<actors::StageSteps>& stages, double created) {
  std::map<std::string, std::map<std::string, MetricStats>> by_stage;  // stage -> metric -> stats
  std::map<std::string, MetricStats> phases;
  for (const auto& m : metrics) {
    if (!std::isfinite(m.value)) continue;
    auto& s = by_stage[m.stage][m.name];
    s.sum += m.value;
    ++s.n;
    if (m.name.rfind("time_", 0) == 0)
      phases[m.name.substr(5)].sum += m.value, ++phases[m.name.substr(5)].n;
  }
  std::string out;
  if (!stages.empty())
    out +=
        fmt::format("<p>{} global steps in {} (run start to last step).</p>",
                    stages.back().last_gstep, format_duration(stages.back().last_time - created));
  if (by_stage.empty()) return out + "<p class=\"empty\">No throughput metrics recorded yet.</p>";
  out +=
      "<table><tr><th>stage</th><th>steps</th><th>tokens</th><th>rollout tokens/s</th><th>train "
      "tokens/s</th><th>s per step (phases)</th></tr>";
  for (const auto& st : stages) {
    auto& ms = by_stage[st.stage];
    double step_time = 0;
    bool any_time = false;
    for (auto& [name, s] : ms)
      if (name.rfind("time_", 0) == 0) step_time += s.mean(), any_time = true;
    out += "<tr><td>" + html_escape(st.stage) + "</td><td class=\"num\">" +
           std::to_string(st.steps) + "</td>" +
           num_cell(ms.count("tokens") ? ms["tokens"].sum : std::nan("")) +
           num_cell(ms["rollout_tokens_per_s"].mean()) + num_cell(ms["train_tokens_per_s"].mean()) +
           num_cell(any_time ? step_time : std::nan("")) + "</tr>";
  }
  out += "</table>";
  if (!phases.empty()) {
    double total = 0;
    for (auto& [p, s] : phases) total += s.sum;
    out += "<table><tr><th>phase</th><th>mean s per step</th><th>total</th><th>share</th></tr>";
    for (auto& [p, s] : phases)
      out += "<tr><td>" + html_escape(p) + "</td>" + num_cell(s.mean()) + "<td>" +
             format_duration(s.sum) + "</td>" + pct(total > 0 ? json(s.sum / total) : json()) +
             "</tr>";
    out += "</table>";
  }
  return out + "<p class=\"note\">Per-stage means over steps; tokens is the stage's sum.</p>";
}

std::string checkpoints_and_events(actors::RunStore& store) {
  std::string out = "<h3>Checkpoints</h3>";
  json cps = store.checkpoints();
  if (cps.empty()) {
    out += "<p class=\"empty\">None.</p>";
  } else {
    out +=
        "<table><tr><th>step</th><th>stage</th><th>stage step</th><th>path</th><th>on disk</th>"
        "</tr>";
    for (const auto& c : cps)
      out += "<tr>" + cell(c["gstep"]) + cell(c["stage"]) + cell(c["stage_step"]) +
             cell(c["path"]) + cell(c.value("on_disk", true) ? "yes" : "removed (keep)") + "</tr>";
    out += "</table>";
  }
  json events = store.events();
  out += fmt::format("<h3>Events</h3><p class=\"note\">{} events{}.</p>", events.size(),
                     events.size() > kEvents ? fmt::format(", the last {}", kEvents) : "");
  if (!events.empty()) {
    out += "<table><tr><th>time</th><th>kind</th><th>message</th></tr>";
    for (size_t i = events.size() > kEvents ? events.size() - kEvents : 0; i < events.size(); ++i)
      out += "<tr><td>" + format_time(events[i]["time"].get<double>()) + "</td>" +
             cell(events[i]["kind"]) + cell(events[i]["message"]) + "</tr>";
    out += "</table>";
  }
  return out;
}

}  // namespace

std::string run_report_html(actors::RunStore& store) {
  json summary = store.summary();
  std::string name = summary["name"], status = summary["status"];
  double created = summary["created"];
  std::string updated = store.meta_value("updated");
  auto stages = store.stage_steps();
  auto metrics = store.metrics();
  json evals = store.evals();
  int charts = 0;
  std::string curves = report_curves(metrics, evals, stages, &charts);

  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  out +=
      "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
      "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">";
  out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
  out += "<title>shoal run " + html_escape(name) + "</title><style>" + kStyle + "</style></head>";
  out += "<body><header><h1>" + html_escape(name) + " <span class=\"status " + html_escape(status) +
         "\">" + html_escape(status) + "</span></h1>";
  out += fmt::format(
      "<p>Created {}{}; {} global steps, {} episodes, {} checkpoints. Report written {}.</p>",
      format_time(created), updated.empty() ? "" : ", updated " + format_time(std::stod(updated)),
      summary["steps"].get<int64_t>(), summary["episodes"].get<int64_t>(),
      summary["checkpoints"].get<int64_t>(), format_time(static_cast<double>(std::time(nullptr))));
  out += config_summary(store.config()) + "</header>";
  out +=
      "<nav><a href=\"#stages\">stages</a><a href=\"#curves\">curves</a><a "
      "href=\"#evals\">evals</a><a href=\"#throughput\">throughput</a><a "
      "href=\"#episodes\">episodes</a><a href=\"#events\">checkpoints and events</a></nav>";
  out += "<section id=\"stages\"><h2>Stages</h2>" + stages_table(stages, created) + "</section>";
  out += fmt::format("<section id=\"curves\" data-charts=\"{}\"><h2>Training curves</h2>", charts) +
         curves + "</section>";
  out += "<section id=\"evals\"><h2>Evals</h2>" + eval_tables(evals) + "</section>";
  out += "<section id=\"throughput\"><h2>Throughput</h2>" + throughput(metrics, stages, created) +
         "</section>";
  out += "<section id=\"episodes\"><h2>Sample episodes</h2>" +
         report_episodes(store, kSamplesPerStage) + "</section>";
  out += "<section id=\"events\"><h2>Checkpoints and events</h2>" + checkpoints_and_events(store) +
         "</section>";
  out += std::string("<script>") + kScript + "</script></body></html>\n";
  return out;
}

void write_run_report(actors::RunStore& store, const std::string& out_path) {
  std::string html = run_report_html(store);
  std::string tmp = out_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    SHOAL_CHECK(f.good(), "cannot write the report to {}", tmp);
    f << html;
    f.close();
    SHOAL_CHECK(f.good(), "writing the report to {} failed", tmp);
  }
  std::filesystem::rename(tmp, out_path);
}

}  // namespace shoal::cli
