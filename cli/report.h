// The run report: one self-contained HTML file (inline CSS, inline SVG charts drawn here, a few
// lines of inline script for value read-outs; nothing fetched from the network) with the run's
// header and config, training curves over global steps, eval tables before and after each stage,
// throughput, sample episodes with their conversations, checkpoints and events. `shoal runs
// report` writes it, and `shoal train` at the end of a run. Not a live dashboard: it is a snapshot
// of the store when written.
#pragma once

#include <string>

#include "actors/run_store.h"

namespace shoal::cli {

// Writes the report of `store` to `out_path` (a temporary file, then renamed). Works on an empty
// run and on one still being written; every section copes with missing metrics and evals.
void write_run_report(actors::RunStore& store, const std::string& out_path);

// The report's HTML (what write_run_report writes).
std::string run_report_html(actors::RunStore& store);

}  // namespace shoal::cli
