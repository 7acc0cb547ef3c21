// What `shoal runs` and the run report need around a run store: finding the store a RUN argument
// names, opening it read-only with a clear error, picking the episodes the report shows, and
// formatting. No SQL: the queries are RunStore's (actors/run_store.h), which owns the schema.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "actors/run_store.h"

namespace shoal::cli {

// The run.sqlite that RUN names: a run.sqlite file, a directory holding one, or NAME under
// `runs_dir`. Throws naming what was looked for when none exists.
std::string find_run_store(const std::string& run, const std::string& runs_dir);

// Opens read-only; a file that is not a shoal run store is an error saying so.
std::unique_ptr<actors::RunStore> open_run_store(const std::string& path);

// Up to `n` episodes of the stage's last step, from the best reward to the worst (the best, the
// worst, then ones between).
std::vector<actors::EpisodeSummary> sample_episodes(actors::RunStore& store,
                                                    const std::string& stage, int n);

// An episode as one export line: OpenAI-form messages, reward, components, token counts (keys
// in this order).
nlohmann::ordered_json episode_json(const actors::EpisodeRecord& e);

// "2025-03-01 14:02:11" in local time.
std::string format_time(double unix_seconds);
// "1h 02m", "3m 12s", "8.4 s".
std::string format_duration(double seconds);

}  // namespace shoal::cli
