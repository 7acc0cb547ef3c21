// The task store (store.h) on SQLite in WAL mode.
#include "tasks/store.h"

#include <filesystem>

#include "base/error.h"
#include "tasks/rng.h"

namespace shoal::tasks {

namespace {

constexpr const char* kSchemaTag = "shoal-tasks/1";

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments(
  id INTEGER PRIMARY KEY,
  family TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
  id INTEGER PRIMARY KEY,
  family TEXT NOT NULL,
  family_version INTEGER NOT NULL,
  seed INTEGER NOT NULL,
  difficulty INTEGER NOT NULL CHECK (difficulty BETWEEN 1 AND 5),
  split TEXT NOT NULL CHECK ((split = 'train' AND seed < 1099511627776) OR
                             (split = 'eval' AND seed >= 1099511627776)),
  prompt_hash TEXT NOT NULL UNIQUE,
  messages TEXT NOT NULL,
  tools TEXT NOT NULL,
  environment_id INTEGER NOT NULL REFERENCES environments(id),
  verifier TEXT NOT NULL,
  metadata TEXT NOT NULL,
  demonstration TEXT,
  rejected TEXT,
  rejected_reason TEXT,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
  UNIQUE (family, family_version, seed, difficulty));
CREATE INDEX IF NOT EXISTS tasks_by_family ON tasks(family, split, difficulty, seed);
)sql";

json parse_column(const json& v, const char* what) {
  SHOAL_CHECK(v.is_string(), "task store: column {} is not text", what);
  json j = json::parse(v.get<std::string>(), nullptr, false);
  SHOAL_CHECK(!j.is_discarded(), "task store: column {} holds malformed JSON", what);
  return j;
}

}  // namespace

uint64_t split_seed_base(const std::string& split) {
  if (split == "train") return 0;
  if (split == "eval") return kEvalSeedBase;
  SHOAL_FAIL("unknown split '{}' (train or eval)", split);
}

std::string prompt_hash(const Task& t) {
  return content_hash(t.family + "\n" + t.messages.dump() + "\n" + t.tools.dump() + "\n" +
                      content_hash(t.environment.dump()));
}

TaskStore::TaskStore(const std::string& path, bool create)
    : db_([&] {
        SHOAL_CHECK(create || std::filesystem::exists(path),
                    "task store {} does not exist (create one with shoal tasks synth)", path);
        try {
          return SqliteDb(path, create);
        } catch (const shoal::Error& e) {  // e.g. a file that is not a database
          SHOAL_FAIL("{} is not a shoal task store: {}", path, e.message());
        }
      }()) {
  try {
    json tables = db_.query("SELECT name FROM sqlite_master WHERE type = 'table'")["rows"];
    if (tables.empty()) {
      SqliteTransaction tx(db_);
      db_.exec(kSchema);
      db_.query("INSERT INTO meta(key, value) VALUES ('schema', ?)", {kSchemaTag});
      tx.commit();
    } else {
      json tag = db_.query("SELECT value FROM meta WHERE key = 'schema'")["rows"];
      SHOAL_CHECK(!tag.empty() && tag[0][0] == kSchemaTag, "schema is not {}", kSchemaTag);
    }
  } catch (const shoal::Error& e) {
    SHOAL_FAIL("{} is not a shoal task store: {}", path, e.message());
  }
  db_.exec("PRAGMA foreign_keys = ON");
}

bool TaskStore::contains_hash(const std::string& hash) {
  return !db_.query("SELECT 1 FROM tasks WHERE prompt_hash = ?", {hash})["rows"].empty();
}

int TaskStore::add(const std::vector<Entry>& entries) {
  SqliteTransaction tx(db_);
  int added = 0;
  for (const auto& e : entries) {
    const Task& t = e.task;
    uint64_t base = split_seed_base(e.split);
    SHOAL_CHECK(t.seed >= base && (e.split == "eval" || t.seed < kEvalSeedBase),
                "task seed {} is outside the {} split's range", t.seed, e.split);
    std::string hash = prompt_hash(t);
    json dup = db_.query(
        "SELECT 1 FROM tasks WHERE prompt_hash = ? OR (family = ? AND family_version = ? AND "
        "seed = ? AND difficulty = ?)",
        {hash, t.family, t.version, static_cast<int64_t>(t.seed), t.difficulty});
    if (!dup["rows"].empty()) continue;
    std::string env = t.environment.dump();
    std::string env_hash = content_hash(env);
    db_.query("INSERT OR IGNORE INTO environments(family, hash, state) VALUES (?, ?, ?)",
              {t.family, env_hash, env});
    int64_t env_id =
        db_.query("SELECT id FROM environments WHERE hash = ?", {env_hash})["rows"][0][0];
    db_.query(
        "INSERT INTO tasks(family, family_version, seed, difficulty, split, prompt_hash, messages, "
        "tools, environment_id, verifier, metadata, demonstration, rejected, rejected_reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        {t.family, t.version, static_cast<int64_t>(t.seed), t.difficulty, e.split, hash,
         t.messages.dump(), t.tools.dump(), env_id, t.verifier.dump(), t.metadata.dump(),
         e.demonstration ? json(e.demonstration->messages.dump()) : json(nullptr),
         e.rejected ? json(e.rejected->messages.dump()) : json(nullptr),
         e.rejected ? json(e.rejected_reason) : json(nullptr)});
    ++added;
  }
  tx.commit();
  return added;
}

namespace {

std::string where(const TaskQuery& q, json& params) {
  std::string w = " WHERE 1";
  if (!q.family.empty()) w += " AND t.family = ?", params.push_back(q.family);
  if (!q.split.empty()) w += " AND t.split = ?", params.push_back(q.split);
  if (q.difficulty > 0) w += " AND t.difficulty = ?", params.push_back(q.difficulty);
  return w;
}

constexpr const char* kSelect =
    "SELECT t.id, t.family, t.family_version, t.seed, t.difficulty, t.split, t.prompt_hash, "
    "t.messages, t.tools, e.state, t.verifier, t.metadata, t.demonstration, t.rejected, "
    "t.rejected_reason, t.created_at FROM tasks t JOIN environments e ON e.id = t.environment_id";

StoredTask row_to_task(const json& r) {
  StoredTask s;
  s.id = r[0];
  s.task.family = r[1];
  s.task.version = r[2];
  s.task.seed = r[3].get<uint64_t>();
  s.task.difficulty = r[4];
  s.split = r[5];
  s.prompt_hash = r[6];
  s.task.messages = parse_column(r[7], "messages");
  s.task.tools = parse_column(r[8], "tools");
  s.task.environment = parse_column(r[9], "environment");
  s.task.verifier = parse_column(r[10], "verifier");
  s.task.metadata = parse_column(r[11], "metadata");
  if (!r[12].is_null()) s.demonstration = Episode{parse_column(r[12], "demonstration")};
  if (!r[13].is_null()) s.rejected = Episode{parse_column(r[13], "rejected")};
  if (r[14].is_string()) s.rejected_reason = r[14];
  s.created_at = r[15];
  return s;
}

}  // namespace

std::vector<StoredTask> TaskStore::list(const TaskQuery& q) {
  json params = json::array();
  std::string sql = std::string(kSelect) + where(q, params) + " ORDER BY t.id LIMIT ? OFFSET ?";
  params.push_back(q.limit);
  params.push_back(q.offset);
  std::vector<StoredTask> out;
  json rows = db_.query(sql, params);  // named: a range-for over a temporary's member dangles
  for (const auto& r : rows["rows"]) out.push_back(row_to_task(r));
  return out;
}

StoredTask TaskStore::get(int64_t id) {
  json rows = db_.query(std::string(kSelect) + " WHERE t.id = ?", {id})["rows"];
  SHOAL_CHECK(!rows.empty(), "no task with id {} in {}", id, path());
  return row_to_task(rows[0]);
}

int64_t TaskStore::count(const TaskQuery& q) {
  json params = json::array();
  return db_.query("SELECT count(*) FROM tasks t" + where(q, params), params)["rows"][0][0];
}

uint64_t TaskStore::next_seed(const std::string& family, const std::string& split, int difficulty) {
  uint64_t base = split_seed_base(split);
  json r =
      db_.query("SELECT max(seed) FROM tasks WHERE family = ? AND split = ? AND difficulty = ?",
                {family, split, difficulty})["rows"][0][0];
  return r.is_null() ? base : r.get<uint64_t>() + 1;
}

json TaskStore::summary() {
  json out = json::array();
  json rows = db_.query(
      "SELECT family, split, difficulty, count(*) FROM tasks GROUP BY family, split, difficulty "
      "ORDER BY family, split, difficulty");
  for (const auto& r : rows["rows"])
    out.push_back({{"family", r[0]}, {"split", r[1]}, {"difficulty", r[2]}, {"tasks", r[3]}});
  return out;
}

}  // namespace shoal::tasks
