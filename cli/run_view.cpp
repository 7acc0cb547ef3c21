// Finding, opening and summarising a run store for `shoal runs` and the report (run_view.h).
#include "cli/run_view.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "base/sqlite.h"

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

std::string run_meta(actors::RunStore& store, const std::string& key) {
  auto s = store.db().prepare("SELECT value FROM meta WHERE key = ?");
  s.bind(1, key);
  return s.step() ? s.text(0) : "";
}

std::vector<StageSteps> stage_steps(actors::RunStore& store) {
  std::vector<StageSteps> out;
  auto s = store.db().prepare(
      "SELECT stage, COUNT(*), MIN(gstep), MAX(gstep), MIN(time), MAX(time) FROM steps "
      "GROUP BY stage ORDER BY MIN(gstep)");
  while (s.step())
    out.push_back({s.text(0), s.int64(1), s.int64(2), s.int64(3), s.real(4), s.real(5)});
  return out;
}

std::vector<StageEpisodes> stage_episodes(actors::RunStore& store) {
  std::vector<StageEpisodes> out;
  auto s = store.db().prepare(
      "SELECT stage, COUNT(*), AVG(reward), AVG(turns), AVG(tool_calls), AVG(length(tokens)) / "
      "4.0, "
      "SUM(invalid_tool_calls), SUM(status != 'ok') FROM episodes GROUP BY stage ORDER BY MIN(id)");
  while (s.step())
    out.push_back({s.text(0), s.int64(1), s.real(2), s.real(3), s.real(4), s.real(5), s.int64(6),
                   s.int64(7)});
  return out;
}

std::vector<EpisodeView> sample_episodes(actors::RunStore& store, const std::string& stage, int n) {
  std::vector<int64_t> ids;
  auto q = store.db().prepare(
      "SELECT id FROM episodes WHERE stage = ? AND gstep = "
      "(SELECT MAX(gstep) FROM episodes WHERE stage = ?) ORDER BY reward DESC, id");
  q.bind(1, stage).bind(2, stage);
  while (q.step()) ids.push_back(q.int64(0));
  std::vector<size_t> picks;
  if (static_cast<int>(ids.size()) <= n) {
    for (size_t i = 0; i < ids.size(); ++i) picks.push_back(i);
  } else if (n == 1) {
    picks = {0};
  } else if (n > 1) {
    for (int k = 0; k < n; ++k) picks.push_back(k * (ids.size() - 1) / (n - 1));
  }
  std::vector<EpisodeView> out;
  auto s = store.db().prepare(
      "SELECT gstep, stage, task_id, family, difficulty, turns, tool_calls, invalid_tool_calls, "
      "length(tokens) / 4, loss_mask, reason, status, reward, messages, components FROM episodes "
      "WHERE id = ?");
  for (size_t i : picks) {
    s.reset();
    s.bind(1, ids[i]);
    SHOAL_CHECK(s.step(), "episode {} vanished while reading", ids[i]);
    EpisodeView e;
    e.gstep = s.int64(0);
    e.stage = s.text(1);
    e.task_id = s.text(2);
    e.family = s.text(3);
    e.difficulty = s.int64(4);
    e.turns = s.int64(5);
    e.tool_calls = s.int64(6);
    e.invalid_tool_calls = s.int64(7);
    e.tokens = s.int64(8);
    for (uint8_t m : s.blob(9)) e.generated_tokens += m != 0;
    e.reason = s.text(10);
    e.status = s.text(11);
    e.reward = s.real(12);
    e.messages = json::parse(s.text(13), nullptr, false);
    e.components = json::parse(s.text(14), nullptr, false);
    out.push_back(std::move(e));
  }
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
