// The run report's training curves (report_sections.h): one chart per known metric that the run
// recorded, the phase time shares as stacked areas, the rest of the metrics after them, and the
// eval pass rates over steps. Not the chart drawing (svg_chart.h).
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <set>

#include "cli/report_sections.h"
#include "cli/svg_chart.h"

namespace shoal::cli {
namespace {

struct KnownChart {
  const char* id;
  const char* title;
  std::vector<const char*> metrics;  // the first present one for single-series charts
  bool all_series;                   // draw every metric listed, not just the first present
  bool smooth, percent;
};

const std::vector<KnownChart>& known_charts() {
  static const std::vector<KnownChart> charts = {
      {"reward", "Reward", {"reward"}, false, true, false},
      {"pass_rate", "Pass rate", {"pass_rate"}, false, true, true},
      {"kl", "KL to the reference", {"kl"}, false, true, false},
      {"entropy", "Entropy (nats per token)", {"entropy"}, false, true, false},
      {"response_tokens",
       "Response length (tokens)",
       {"response_tokens", "response_length"},
       false,
       true,
       false},
      {"loss", "Loss", {"loss"}, false, true, false},
      {"tokens_per_s",
       "Throughput (tokens/s)",
       {"rollout_tokens_per_s", "train_tokens_per_s"},
       true,
       false,
       false},
      {"grad_norm", "Gradient norm", {"grad_norm"}, false, true, false},
      {"clip_frac", "Clipped fraction", {"clip_frac"}, false, true, true},
      {"lr", "Learning rate", {"lr"}, false, false, false},
  };
  return charts;
}

using Series = std::map<std::string, ChartSeries>;  // by metric name, x ascending

}  // namespace

std::string report_curves(const std::vector<actors::RunStore::MetricRow>& metrics,
                          const nlohmann::json& evals,
                          const std::vector<actors::StageSteps>& stages, int* charts) {
  Series series;
  std::vector<double> steps;  // every gstep with a metric, ascending
  for (const auto& m : metrics) {
    ChartSeries& s = series[m.name];
    s.name = m.name;
    s.x.push_back(static_cast<double>(m.gstep));
    s.y.push_back(m.value);
    if (steps.empty() || steps.back() != static_cast<double>(m.gstep))
      steps.push_back(static_cast<double>(m.gstep));
  }
  std::vector<ChartMarker> markers;
  for (const auto& st : stages) markers.push_back({static_cast<double>(st.first_gstep), st.stage});

  std::string out;
  std::set<std::string> drawn;
  *charts = 0;
  auto emit = [&](ChartSpec spec) {
    spec.markers = markers;
    out += svg_chart(spec);
    ++*charts;
  };
  for (const auto& k : known_charts()) {
    ChartSpec spec{k.id, k.title, {}, {}, false, k.smooth, k.percent, false};
    for (const char* name : k.metrics) {
      auto it = series.find(name);
      if (it == series.end()) continue;
      spec.series.push_back(it->second);
      drawn.insert(name);
      if (!k.all_series) break;
    }
    if (!spec.series.empty()) emit(spec);
  }

  // Phase time shares: each time_* metric over their sum at that step.
  std::vector<std::string> phases;
  for (const auto& [name, s] : series)
    if (name.rfind("time_", 0) == 0) phases.push_back(name);
  if (!phases.empty()) {
    std::map<double, double> total;
    for (const auto& p : phases) {
      const ChartSeries& s = series[p];
      for (size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.y[i])) total[s.x[i]] += s.y[i];
    }
    ChartSpec spec{"time_share", "Share of step time by phase", {}, {}, true, false, true, false};
    for (const auto& p : phases) {
      ChartSeries share{p.substr(5), steps, std::vector<double>(steps.size(), std::nan(""))};
      const ChartSeries& s = series[p];
      std::map<double, double> by_step;
      for (size_t i = 0; i < s.x.size(); ++i) by_step[s.x[i]] = s.y[i];
      for (size_t i = 0; i < steps.size(); ++i) {
        auto v = by_step.find(steps[i]);
        double t = total.count(steps[i]) ? total[steps[i]] : 0;
        if (v != by_step.end() && std::isfinite(v->second) && t > 0) share.y[i] = v->second / t;
      }
      spec.series.push_back(std::move(share));
      drawn.insert(p);
    }
    emit(spec);
  }

  for (const auto& [name, s] : series)
    if (!drawn.count(name)) emit(ChartSpec{name, name, {s}, {}, false, true, false, false});

  // Eval pass rate per suite, at the steps the evals ran.
  std::map<std::string, ChartSeries> by_suite;
  std::vector<std::string> suites;
  for (const auto& e : evals) {
    const auto& r = e["results"];
    if (!r.is_object() || !r.contains("pass_rate") || !r["pass_rate"].is_number()) continue;
    std::string suite = e["suite"];
    if (!by_suite.count(suite)) suites.push_back(suite);
    ChartSeries& s = by_suite[suite];
    s.name = suite;
    s.x.push_back(e["gstep"].get<double>());
    s.y.push_back(r["pass_rate"].get<double>());
  }
  if (!suites.empty()) {
    ChartSpec spec{"eval_pass_rate", "Eval pass rate", {}, {}, false, false, true, true};
    for (const auto& s : suites) spec.series.push_back(by_suite[s]);
    emit(spec);
  }
  if (*charts == 0) return "<p class=\"empty\">No metrics recorded yet.</p>";
  return "<div class=\"charts\">" + out + "</div>";
}

}  // namespace shoal::cli
