// The eval report (eval_report.h).
#include "cli/eval_report.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "cli/svg_chart.h"

namespace shoal::cli {

namespace {

using nlohmann::json;

const char* kStyle = R"css(
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 20px 40px;color:#222}
h1{margin:18px 0 4px}h2{margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#777}.pos{color:#1a7f37}.neg{color:#b42318}
svg.chart{border:1px solid #e4e4e4;background:#fff;max-width:100%;height:auto}
svg.chart text{font:11px system-ui,sans-serif;fill:#333}svg.chart .title{font-weight:600;font-size:13px}
svg.chart .tick{fill:#666;font-size:10px}svg.chart .grid{stroke:#eee}svg.chart .axis{stroke:#999}
svg.chart .frame{fill:none;stroke:#ccc}svg.chart .series{fill:none;stroke-width:1.6}
)css";

const json& at(const json& j, const std::string& k) {
  static const json null;
  return j.is_object() && j.contains(k) ? j[k] : null;
}

std::string td(const std::string& text, bool num = true) {
  return std::string(num ? "<td class=\"num\">" : "<td>") + html_escape(text) + "</td>";
}
std::string pct(const json& v) {
  return v.is_number() ? fmt::format("{:.1f}%", 100 * v.get<double>()) : "—";
}
std::string num(const json& v) {
  return v.is_number() ? compact_number(v.get<double>()) : "—";
}

// One table: rows of (name, value in the model, value in the baseline).
std::string metrics_table(const json& a, const json& b, bool has_b) {
  std::string out = "<table><tr><th>metric</th><th>model</th>";
  if (has_b) out += "<th>baseline</th><th>model − baseline</th>";
  out += "</tr>";
  auto row = [&](const std::string& name, const json& va, const json& vb, bool percent) {
    out += "<tr>" + td(name, false) + td(percent ? pct(va) : num(va));
    if (has_b) {
      out += td(percent ? pct(vb) : num(vb));
      if (va.is_number() && vb.is_number()) {
        double d = va.get<double>() - vb.get<double>();
        out += td(percent ? fmt::format("{:+.1f} pts", 100 * d) : fmt::format("{:+.3g}", d));
      } else {
        out += td("—");
      }
    }
    out += "</tr>";
  };
  row("pass@1", at(a, "pass_rate"), at(b, "pass_rate"), true);
  for (auto& [k, v] : at(a, "pass_at_k").items())
    if (k != "1") row("pass@" + k, v, at(at(b, "pass_at_k"), k), true);
  row("mean reward", at(a, "mean_reward"), at(b, "mean_reward"), false);
  row("valid tool-call rate", at(a, "valid_tool_call_rate"), at(b, "valid_tool_call_rate"), true);
  row("tool calls", at(a, "tool_calls"), at(b, "tool_calls"), false);
  row("turns per episode", at(a, "turns_per_episode"), at(b, "turns_per_episode"), false);
  row("generated tokens per episode", at(a, "tokens_per_episode"), at(b, "tokens_per_episode"),
      false);
  row("episodes", at(a, "count"), at(b, "count"), false);
  row("failed rollouts", at(a, "failed"), at(b, "failed"), false);
  return out + "</table>";
}

// Per family or per difficulty: count, pass@1, pass@K, mean reward, valid calls (and baseline).
std::string group_table(const json& a, const json& b, bool has_b, const std::string& key,
                        const std::string& title) {
  const json& ga = at(a, key);
  if (!ga.is_object() || ga.empty()) return "";
  int64_t k_max = at(a, "samples").is_number() ? at(a, "samples").get<int64_t>() : 1;
  std::string kk = std::to_string(k_max);
  std::string out = "<h3>By " + html_escape(title) + "</h3><table><tr><th>" + html_escape(title) +
                    "</th><th>episodes</th><th>pass@1</th>";
  if (k_max > 1) out += "<th>pass@" + kk + "</th>";
  out += "<th>mean reward</th><th>valid tool calls</th>";
  if (has_b) out += "<th>baseline pass@1</th><th>Δ pass@1</th>";
  out += "</tr>";
  for (auto& [name, v] : ga.items()) {
    out += "<tr>" + td(name, false) + td(num(at(v, "count"))) + td(pct(at(v, "pass_rate")));
    if (k_max > 1) out += td(pct(at(at(v, "pass_at_k"), kk)));
    out += td(num(at(v, "mean_reward"))) + td(pct(at(v, "valid_tool_call_rate")));
    if (has_b) {
      const json& pb = at(at(at(b, key), name), "pass_rate");
      const json& pa = at(v, "pass_rate");
      out += td(pct(pb));
      out += td(pa.is_number() && pb.is_number()
                    ? fmt::format("{:+.1f} pts", 100 * (pa.get<double>() - pb.get<double>()))
                    : "—");
    }
    out += "</tr>";
  }
  return out + "</table>";
}

std::string pass_at_k_chart(const json& a, const json& b, bool has_b) {
  auto series = [](const std::string& name, const json& r) {
    ChartSeries s;
    s.name = name;
    for (auto& [k, v] : at(r, "pass_at_k").items()) {
      s.x.push_back(std::stod(k));
      s.y.push_back(v.is_number() ? v.get<double>() : std::nan(""));
    }
    // JSON object keys sort as text ("10" < "2"): order by k.
    std::vector<size_t> idx(s.x.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](size_t p, size_t q) { return s.x[p] < s.x[q]; });
    ChartSeries sorted{s.name, {}, {}};
    for (size_t i : idx) {
      sorted.x.push_back(s.x[i]);
      sorted.y.push_back(s.y[i]);
    }
    return sorted;
  };
  ChartSpec spec;
  spec.id = "pass-at-k";
  spec.title = "pass@k";
  spec.percent = true;
  spec.points = true;
  spec.series.push_back(series("model", a));
  if (has_b) spec.series.push_back(series("baseline", b));
  return svg_chart(spec);
}

}  // namespace

std::string eval_report_html(const json& res) {
  const json& suite = at(res, "suite");
  const json& a = at(res, "results");
  bool has_b = res.contains("baseline");
  const json& b = has_b ? at(res["baseline"], "results") : at(res, "none");
  std::string title = fmt::format("shoal eval {} — {}", suite.value("name", "?"),
                                  at(res, "model").value("name", "?"));
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  out +=
      "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
      "style-src 'unsafe-inline'; img-src data:\">";
  out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
  out += "<title>" + html_escape(title) + "</title><style>" + kStyle + "</style></head><body>";
  out += "<h1>" + html_escape(title) + "</h1>";
  if (res.value("interrupted", false))
    out += "<p><strong>Interrupted:</strong> the numbers cover the episodes that finished.</p>";
  const json& sampling = at(suite, "sampling");
  out += fmt::format(
      "<p>Suite <b>{}</b> ({}): {} tasks × {} samples, {}, at most {} turns of {} tokens. Seed {}. "
      "Written {}.</p>",
      html_escape(suite.value("name", "")), html_escape(suite.value("file", "")),
      a.value("tasks", 0), suite.value("samples", 0),
      sampling.value("greedy", false)
          ? std::string("greedy")
          : fmt::format("sampled at temperature {:g} (top-p {:g}, top-k {})",
                        sampling.value("temperature", 1.0), sampling.value("top_p", 1.0),
                        sampling.value("top_k", 0)),
      suite.value("max_turns", 0), suite.value("max_new_tokens", 0), res.value("seed", 0),
      html_escape(res.value("created", "")));
  auto model_row = [](const std::string& who, const json& m) {
    const json& ps = at(m, "prompt_settings");
    return "<tr>" + td(who, false) + td(m.value("dir", ""), false) +
           td(m.value("tokenizer", ""), false) + td(num(at(m, "parameters"))) +
           td(at(ps, "from").is_string() ? ps["from"].get<std::string>() : "defaults", false) +
           "</tr>";
  };
  out +=
      "<table><tr><th></th><th>directory</th><th>tokenizer</th><th>parameters</th><th>prompt "
      "settings from</th></tr>";
  out += model_row("model", at(res, "model"));
  if (has_b) out += model_row("baseline", at(res["baseline"], "model"));
  out += "</table>";

  out += "<h2>Results</h2>" + metrics_table(a, b, has_b);
  if (res.contains("comparison")) {
    const json& c = res["comparison"];
    out +=
        "<h3>Paired difference (model − baseline)</h3><table><tr><th>metric</th><th>model</th>"
        "<th>baseline</th><th>difference</th><th>95% CI</th><th>tasks</th></tr>";
    for (const char* m : {"pass_rate", "mean_reward"}) {
      const json& r = at(c, m);
      bool p = std::string(m) == "pass_rate";
      auto f = [p](const json& v) {
        return v.is_number() ? (p ? fmt::format("{:+.1f} pts", 100 * v.get<double>())
                                  : fmt::format("{:+.3f}", v.get<double>()))
                             : std::string("—");
      };
      out += "<tr>" + td(p ? "pass@1" : "mean reward", false) +
             td(p ? pct(at(r, "model")) : num(at(r, "model"))) +
             td(p ? pct(at(r, "baseline")) : num(at(r, "baseline"))) + td(f(at(r, "difference"))) +
             td("[" + f(at(r, "ci95_low")) + ", " + f(at(r, "ci95_high")) + "]") +
             td(num(at(r, "tasks"))) + "</tr>";
    }
    out += "</table><p class=\"note\">" + html_escape(c.value("method", "")) + "</p>";
  }
  if (at(a, "pass_at_k").size() > 1) out += pass_at_k_chart(a, b, has_b);
  out += group_table(a, b, has_b, "families", "family");
  out += group_table(a, b, has_b, "difficulties", "difficulty");

  out +=
      "<h2>Throughput</h2><table><tr><th></th><th>episodes</th><th>seconds</th>"
      "<th>episodes/s</th><th>generated tokens/s</th></tr>";
  auto tp = [](const std::string& who, const json& r) {
    const json& t = at(r, "throughput");
    return "<tr>" + td(who, false) + td(num(at(t, "episodes"))) + td(num(at(t, "seconds"))) +
           td(num(at(t, "episodes_per_s"))) + td(num(at(t, "generated_tokens_per_s"))) + "</tr>";
  };
  out += tp("model", a);
  if (has_b) out += tp("baseline", b);
  out += "</table></body></html>\n";
  return out;
}

void write_eval_report(const json& results, const std::string& path) {
  std::string html = eval_report_html(results);
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    SHOAL_CHECK(f.good(), "cannot write {}", tmp);
    f << html;
    SHOAL_CHECK(f.good(), "cannot write {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  SHOAL_CHECK(!ec, "cannot write {}: {}", path, ec.message());
}

}  // namespace shoal::cli
