// The run store (run_store.h): schema, writes in transactions, reads for reports.
#include "actors/run_store.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "base/error.h"

namespace shoal::actors {

using nlohmann::json;

namespace {

constexpr int kSchemaVersion = 1;

const char* kSchema = R"sql(
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE steps (
  gstep INTEGER PRIMARY KEY, stage TEXT NOT NULL, stage_step INTEGER NOT NULL,
  state TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE metrics (
  gstep INTEGER NOT NULL, stage TEXT NOT NULL, stage_step INTEGER NOT NULL, name TEXT NOT NULL,
  value REAL, PRIMARY KEY (gstep, name));
CREATE TABLE episodes (
  id INTEGER PRIMARY KEY, gstep INTEGER NOT NULL, stage TEXT NOT NULL, task_id TEXT NOT NULL,
  family TEXT NOT NULL, difficulty INTEGER NOT NULL, grp INTEGER NOT NULL, sample INTEGER NOT NULL,
  weight_version INTEGER NOT NULL, tokens BLOB NOT NULL, loss_mask BLOB NOT NULL,
  logprobs BLOB NOT NULL, messages TEXT NOT NULL, reward REAL NOT NULL, components TEXT NOT NULL,
  reason TEXT NOT NULL, status TEXT NOT NULL, turns INTEGER NOT NULL, tool_calls INTEGER NOT NULL,
  invalid_tool_calls INTEGER NOT NULL);
CREATE INDEX episodes_by_step ON episodes (gstep);
CREATE TABLE evals (
  id INTEGER PRIMARY KEY, suite TEXT NOT NULL, label TEXT NOT NULL, gstep INTEGER NOT NULL,
  results TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE checkpoints (
  gstep INTEGER PRIMARY KEY, stage TEXT NOT NULL, stage_step INTEGER NOT NULL, path TEXT NOT NULL,
  state TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE events (
  id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
  data TEXT NOT NULL);
)sql";

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string parent_dir(const std::string& file) {
  std::filesystem::path dir = std::filesystem::path(file).parent_path();
  return dir.empty() ? std::string(".") : dir.string();
}

std::string meta(SqliteDb& db, const std::string& key) {
  auto s = db.prepare("SELECT value FROM meta WHERE key = ?");
  s.bind(1, key);
  SHOAL_CHECK(s.step(), "run store {}: no '{}' in meta (not a shoal run store?)", db.path(), key);
  return s.text(0);
}

void set_meta(SqliteDb& db, const std::string& key, const std::string& value) {
  db.prepare(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
        "value = excluded.value")
      .bind(1, key)
      .bind(2, value)
      .run();
}

}  // namespace

std::unique_ptr<RunStore> RunStore::create(const std::string& path, const std::string& name,
                                           const json& config) {
  SHOAL_CHECK(!std::filesystem::exists(path), "run store {} already exists", path);
  auto db = std::make_unique<SqliteDb>(path, true);
  SqliteTransaction tx(*db);
  db->exec(kSchema);
  set_meta(*db, "schema_version", std::to_string(kSchemaVersion));
  set_meta(*db, "name", name);
  set_meta(*db, "config", config.dump());
  set_meta(*db, "status", "running");
  set_meta(*db, "created", std::to_string(now_s()));
  tx.commit();
  return std::unique_ptr<RunStore>(new RunStore(std::move(db), parent_dir(path)));
}

std::unique_ptr<RunStore> RunStore::open(const std::string& path, bool read_only) {
  SHOAL_CHECK(std::filesystem::exists(path), "no run store at {}", path);
  auto db = std::make_unique<SqliteDb>(path, false, read_only);
  auto t = db->prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'");
  t.step();
  SHOAL_CHECK(t.int64(0) == 1, "{} is not a shoal run store (no meta table)", path);
  std::string v = meta(*db, "schema_version");
  SHOAL_CHECK(v == std::to_string(kSchemaVersion),
              "run store {}: schema version {} (this shoal reads version {})", path, v,
              kSchemaVersion);
  return std::unique_ptr<RunStore>(new RunStore(std::move(db), parent_dir(path)));
}

std::string RunStore::name() {
  return meta(*db_, "name");
}
json RunStore::config() {
  return json::parse(meta(*db_, "config"));
}

void RunStore::set_status(const std::string& status) {
  set_meta(*db_, "status", status);
  set_meta(*db_, "updated", std::to_string(now_s()));
}

void RunStore::insert_episode(const EpisodeRecord& e) {
  SHOAL_CHECK(e.loss_mask.size() == e.tokens.size() && e.logprobs.size() == e.tokens.size(),
              "episode of task {}: tokens ({}), loss mask ({}) and log-probs ({}) differ in length",
              e.task_id, e.tokens.size(), e.loss_mask.size(), e.logprobs.size());
  auto s = db_->prepare(
      "INSERT INTO episodes (gstep, stage, task_id, family, difficulty, grp, sample, "
      "weight_version, tokens, loss_mask, logprobs, messages, reward, components, reason, status, "
      "turns, tool_calls, invalid_tool_calls) VALUES "
      "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  s.bind(1, e.gstep)
      .bind(2, e.stage)
      .bind(3, e.task_id)
      .bind(4, e.family)
      .bind(5, e.difficulty)
      .bind(6, e.group)
      .bind(7, e.sample)
      .bind(8, e.weight_version)
      .bind_vector(9, e.tokens)
      .bind_vector(10, e.loss_mask)
      .bind_vector(11, e.logprobs)
      .bind(12, e.messages.dump())
      .bind(13, e.reward)
      .bind(14, e.components.dump())
      .bind(15, e.reason)
      .bind(16, e.status)
      .bind(17, e.turns)
      .bind(18, e.tool_calls)
      .bind(19, e.invalid_tool_calls);
  s.run();
}

void RunStore::write_step(const StepRecord& step) {
  SqliteTransaction tx(*db_);
  db_->prepare("INSERT INTO steps (gstep, stage, stage_step, state, time) VALUES (?,?,?,?,?)")
      .bind(1, step.gstep)
      .bind(2, step.stage)
      .bind(3, step.stage_step)
      .bind(4, step.state.dump())
      .bind(5, now_s())
      .run();
  auto m = db_->prepare(
      "INSERT INTO metrics (gstep, stage, stage_step, name, value) VALUES (?,?,?,?,?)");
  for (auto& [k, v] : step.metrics) {
    m.reset();
    m.bind(1, step.gstep).bind(2, step.stage).bind(3, step.stage_step).bind(4, k);
    if (std::isfinite(v))
      m.bind(5, v);
    else
      m.bind_null(5);
    m.run();
  }
  for (auto& e : step.episodes) insert_episode(e);
  tx.commit();
}

void RunStore::write_episodes(const std::vector<EpisodeRecord>& episodes) {
  SqliteTransaction tx(*db_);
  for (auto& e : episodes) insert_episode(e);
  tx.commit();
}

void RunStore::write_eval(const std::string& suite, const std::string& label, int64_t gstep,
                          const json& results) {
  db_->prepare("INSERT INTO evals (suite, label, gstep, results, time) VALUES (?,?,?,?,?)")
      .bind(1, suite)
      .bind(2, label)
      .bind(3, gstep)
      .bind(4, results.dump())
      .bind(5, now_s())
      .run();
}

void RunStore::write_checkpoint(const CheckpointRecord& c) {
  db_->prepare(
         "INSERT OR REPLACE INTO checkpoints (gstep, stage, stage_step, path, state, time) "
         "VALUES (?,?,?,?,?,?)")
      .bind(1, c.gstep)
      .bind(2, c.stage)
      .bind(3, c.stage_step)
      .bind(4, c.path)
      .bind(5, c.state.dump())
      .bind(6, now_s())
      .run();
}

std::optional<CheckpointRecord> RunStore::last_checkpoint() {
  auto s = db_->prepare(
      "SELECT gstep, stage, stage_step, path, state FROM checkpoints ORDER BY gstep DESC LIMIT 1");
  if (!s.step()) return std::nullopt;
  CheckpointRecord c;
  c.gstep = s.int64(0);
  c.stage = s.text(1);
  c.stage_step = s.int64(2);
  c.path = s.text(3);
  c.state = json::parse(s.text(4));
  return c;
}

void RunStore::event(const std::string& kind, const std::string& message, const json& data) {
  db_->prepare("INSERT INTO events (time, kind, message, data) VALUES (?,?,?,?)")
      .bind(1, now_s())
      .bind(2, kind)
      .bind(3, message)
      .bind(4, data.dump())
      .run();
}

void RunStore::truncate_after(int64_t gstep) {
  SqliteTransaction tx(*db_);
  int64_t dropped = 0;
  for (const char* table : {"steps", "metrics", "checkpoints"}) {
    db_->prepare(std::string("DELETE FROM ") + table + " WHERE gstep > ?").bind(1, gstep).run();
    dropped += db_->changes();
  }
  db_->prepare("DELETE FROM episodes WHERE gstep > ? OR (gstep = ? AND stage LIKE 'eval:%')")
      .bind(1, gstep)
      .bind(2, gstep)
      .run();
  int64_t episodes = db_->changes();
  // Evals recorded at or after the resumed step are redone (an eval at the checkpoint's step
  // runs after it was written).
  db_->prepare("DELETE FROM evals WHERE gstep >= ?").bind(1, gstep).run();
  tx.commit();
  event("resume",
        "resumed from step " + std::to_string(gstep) + "; dropped " + std::to_string(dropped) +
            " rows and " + std::to_string(episodes) + " episodes written after it",
        {{"gstep", gstep}});
}

std::vector<RunStore::MetricRow> RunStore::metrics() {
  std::vector<MetricRow> out;
  auto s = db_->prepare(
      "SELECT gstep, stage, stage_step, name, value FROM metrics ORDER BY gstep, name");
  while (s.step())
    out.push_back(
        {s.int64(0), s.text(1), s.int64(2), s.text(3), s.is_null(4) ? std::nan("") : s.real(4)});
  return out;
}

json RunStore::evals() {
  json out = json::array();
  auto s = db_->prepare("SELECT suite, label, gstep, results FROM evals ORDER BY id");
  while (s.step())
    out.push_back({{"suite", s.text(0)},
                   {"label", s.text(1)},
                   {"gstep", s.int64(2)},
                   {"results", json::parse(s.text(3))}});
  return out;
}

json RunStore::events() {
  json out = json::array();
  auto s = db_->prepare("SELECT time, kind, message, data FROM events ORDER BY id");
  while (s.step())
    out.push_back({{"time", s.real(0)},
                   {"kind", s.text(1)},
                   {"message", s.text(2)},
                   {"data", json::parse(s.text(3))}});
  return out;
}

json RunStore::checkpoints() {
  json out = json::array();
  auto s = db_->prepare("SELECT gstep, stage, stage_step, path FROM checkpoints ORDER BY gstep");
  while (s.step()) {
    std::filesystem::path dir =
        std::filesystem::path(dir_) / "checkpoints" / std::filesystem::path(s.text(3)).filename();
    std::error_code ec;
    out.push_back({{"gstep", s.int64(0)},
                   {"stage", s.text(1)},
                   {"stage_step", s.int64(2)},
                   {"path", s.text(3)},
                   {"on_disk", std::filesystem::is_directory(dir, ec)}});
  }
  return out;
}

int64_t RunStore::episode_count() {
  auto s = db_->prepare("SELECT COUNT(*) FROM episodes");
  s.step();
  return s.int64(0);
}

std::vector<EpisodeRecord> RunStore::episodes(const std::string& stage_filter, int64_t limit) {
  std::vector<EpisodeRecord> out;
  auto s = db_->prepare(
      "SELECT gstep, stage, task_id, family, difficulty, grp, sample, weight_version, tokens, "
      "loss_mask, logprobs, messages, reward, components, reason, status, turns, tool_calls, "
      "invalid_tool_calls FROM episodes WHERE (? = '' OR stage = ?) ORDER BY id LIMIT ?");
  s.bind(1, stage_filter).bind(2, stage_filter).bind(3, limit);
  while (s.step()) {
    EpisodeRecord e;
    e.gstep = s.int64(0);
    e.stage = s.text(1);
    e.task_id = s.text(2);
    e.family = s.text(3);
    e.difficulty = s.int64(4);
    e.group = s.int64(5);
    e.sample = s.int64(6);
    e.weight_version = s.int64(7);
    e.tokens = s.blob_vector<int32_t>(8);
    e.loss_mask = s.blob_vector<uint8_t>(9);
    e.logprobs = s.blob_vector<float>(10);
    e.messages = json::parse(s.text(11));
    e.reward = s.real(12);
    e.components = json::parse(s.text(13));
    e.reason = s.text(14);
    e.status = s.text(15);
    e.turns = s.int64(16);
    e.tool_calls = s.int64(17);
    e.invalid_tool_calls = s.int64(18);
    out.push_back(std::move(e));
  }
  return out;
}

json RunStore::summary() {
  json out;
  out["name"] = name();
  out["status"] = meta(*db_, "status");
  out["created"] = std::stod(meta(*db_, "created"));
  auto s = db_->prepare("SELECT COUNT(*), COALESCE(MAX(gstep), 0) FROM steps");
  s.step();
  out["steps"] = s.int64(1);
  out["episodes"] = episode_count();
  auto c = db_->prepare("SELECT COUNT(*) FROM checkpoints");
  c.step();
  out["checkpoints"] = c.int64(0);
  json last = json::object();
  auto m = db_->prepare(
      "SELECT name, value, stage FROM metrics WHERE gstep = (SELECT MAX(gstep) FROM metrics)");
  while (m.step()) {
    last[m.text(0)] = m.is_null(1) ? json(nullptr) : json(m.real(1));
    out["stage"] = m.text(2);
  }
  out["last_metrics"] = last;
  return out;
}

std::string RunStore::meta_value(const std::string& key) {
  auto s = db_->prepare("SELECT value FROM meta WHERE key = ?");
  s.bind(1, key);
  return s.step() ? s.text(0) : "";
}

std::vector<StageSteps> RunStore::stage_steps() {
  std::vector<StageSteps> out;
  auto s = db_->prepare(
      "SELECT stage, COUNT(*), MIN(gstep), MAX(gstep), MIN(time), MAX(time) FROM steps "
      "GROUP BY stage ORDER BY MIN(gstep)");
  while (s.step())
    out.push_back({s.text(0), s.int64(1), s.int64(2), s.int64(3), s.real(4), s.real(5)});
  return out;
}

std::vector<StageEpisodes> RunStore::stage_episodes() {
  std::vector<StageEpisodes> out;
  auto s = db_->prepare(
      "SELECT stage, COUNT(*), AVG(reward), AVG(turns), AVG(tool_calls), AVG(length(tokens)) / "
      "4.0, "
      "SUM(invalid_tool_calls), SUM(status != 'ok') FROM episodes GROUP BY stage ORDER BY MIN(id)");
  while (s.step())
    out.push_back({s.text(0), s.int64(1), s.real(2), s.real(3), s.real(4), s.real(5), s.int64(6),
                   s.int64(7)});
  return out;
}

std::vector<int64_t> RunStore::last_step_episode_ids(const std::string& stage) {
  std::vector<int64_t> ids;
  auto q = db_->prepare(
      "SELECT id FROM episodes WHERE stage = ? AND gstep = "
      "(SELECT MAX(gstep) FROM episodes WHERE stage = ?) ORDER BY reward DESC, id");
  q.bind(1, stage).bind(2, stage);
  while (q.step()) ids.push_back(q.int64(0));
  return ids;
}

EpisodeSummary RunStore::episode_summary(int64_t id) {
  auto s = db_->prepare(
      "SELECT gstep, stage, task_id, family, difficulty, turns, tool_calls, invalid_tool_calls, "
      "length(tokens) / 4, loss_mask, reason, status, reward, messages, components FROM episodes "
      "WHERE id = ?");
  s.bind(1, id);
  SHOAL_CHECK(s.step(), "run store {}: no episode {}", db_->path(), id);
  EpisodeSummary e;
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
  return e;
}

}  // namespace shoal::actors
