// The larger sections of the run report (cli/report.h), each an HTML fragment: the training curves
// (SVG charts from the metrics) and the sample episodes (conversations rendered as HTML). Internal
// to the report; report.cpp assembles the page.
#pragma once

#include <string>
#include <vector>

#include "actors/run_store.h"
#include "cli/run_view.h"

namespace shoal::cli {

// The charts over global steps for the metrics present (reward, pass rate, KL, entropy, response
// length, loss, throughput, time shares, then any other metric), plus eval pass rate over steps.
// `charts` receives how many <svg class="chart"> elements were emitted.
std::string report_curves(const std::vector<actors::RunStore::MetricRow>& metrics,
                          const nlohmann::json& evals,
                          const std::vector<actors::StageSteps>& stages, int* charts);

// Per-stage episode statistics and a few sample episodes of each stage's last step.
std::string report_episodes(actors::RunStore& store, int per_stage);

}  // namespace shoal::cli
