// The HTML report of `shoal eval`: one self-contained page (inline CSS and SVG, a
// Content-Security-Policy that forbids loading anything) from results.json — the suite, the
// model (and baseline), the headline numbers side by side with the paired difference and its
// confidence interval, pass@k as a chart, per-family and per-difficulty tables, throughput.
// Not the run report (report.h).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace shoal::cli {

// The page for `results` (what actors::run_eval returns); written atomically to `path`.
void write_eval_report(const nlohmann::json& results, const std::string& path);
// The page as text.
std::string eval_report_html(const nlohmann::json& results);

}  // namespace shoal::cli
