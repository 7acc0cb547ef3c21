// Finding, opening and summarising a run store for `shoal runs` and the report (run_view.h).
#include "cli/run_view.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "base/error.h"

namespace shoal::cli {

namespace fs = std::filesystem;
using nlohmann::json;

std::string find_run_store(const std::string& run, const std::string& runs_dir) {
  SHOAL_CHECK(!run.empty(), "no run given");
  fs::path p(run);
  if (fs::is_regular_file(p)) return p.string();
  if (fs::is_regular_file(p / "run.sqlite")) return (p / "run.sqlite").string();
  fs::path named = fs::path(runs_dir) / run / "run.sqlite";
  if (fs::is_regular_file(named)) return named.string();
  SHOAL_CHECK(!fs::is_directory(p), "{} is a directory without a run.sqlite (not a run directory)",
              run);
  SHOAL_FAIL("no run '{}': neither {} nor {} exists (shoal runs list --dir {} lists the runs)", run,
             (p / "run.sqlite").string(), named.string(), runs_dir);
}

std::unique_ptr<actors::RunStore> open_run_store(const std::string& path) {
  // SQLite would open any file and fail later with "file is not a database": say it up front.
  char header[16] = {};
  std::ifstream f(path, std::ios::binary);
  SHOAL_CHECK(f.good(), "cannot read {}", path);
  f.read(header, sizeof header);
  SHOAL_CHECK(f.gcount() == sizeof header && std::string(header, 15) == "SQLite format 3",
              "{} is not a shoal run store (not an SQLite database)", path);
  return actors::RunStore::open(path, /*read_only=*/true);
}

std::vector<actors::EpisodeSummary> sample_episodes(actors::RunStore& store,
                                                    const std::string& stage, int n) {
  std::vector<int64_t> ids = store.last_step_episode_ids(stage);
  std::vector<size_t> picks;
  if (static_cast<int>(ids.size()) <= n) {
    for (size_t i = 0; i < ids.size(); ++i) picks.push_back(i);
  } else if (n == 1) {
    picks = {0};
  } else if (n > 1) {
    for (int k = 0; k < n; ++k) picks.push_back(k * (ids.size() - 1) / (n - 1));
  }
  std::vector<actors::EpisodeSummary> out;
  for (size_t i : picks) out.push_back(store.episode_summary(ids[i]));
  return out;
}

nlohmann::ordered_json episode_json(const actors::EpisodeRecord& e) {
  int64_t generated =
      std::count_if(e.loss_mask.begin(), e.loss_mask.end(), [](uint8_t m) { return m != 0; });
  return {{"gstep", e.gstep},
          {"stage", e.stage},
          {"task_id", e.task_id},
          {"family", e.family},
          {"difficulty", e.difficulty},
          {"group", e.group},
          {"sample", e.sample},
          {"weight_version", e.weight_version},
          {"messages", e.messages},
          {"reward", e.reward},
          {"components", e.components},
          {"reason", e.reason},
          {"status", e.status},
          {"turns", e.turns},
          {"tool_calls", e.tool_calls},
          {"invalid_tool_calls", e.invalid_tool_calls},
          {"tokens", static_cast<int64_t>(e.tokens.size())},
          {"generated_tokens", generated}};
}

std::string format_time(double unix_seconds) {
  if (!std::isfinite(unix_seconds) || unix_seconds <= 0) return "—";
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "—";
  if (seconds < 60) return fmt::format("{:.1f} s", seconds);
  auto s = static_cast<int64_t>(seconds);
  if (s < 3600) return fmt::format("{}m {:02}s", s / 60, s % 60);
  return fmt::format("{}h {:02}m", s / 3600, (s % 3600) / 60);
}

}  // namespace shoal::cli
