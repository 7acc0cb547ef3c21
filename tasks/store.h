// The task store (tasks.sqlite): environments, tasks with their provenance (family, version,
// seed, difficulty), splits over disjoint seed ranges, deduplication by a hash of the prompt, and
// each task's demonstration and perturbed (rejected) episode. Writes are transactions. Not the
// synthesis loop (synth.h) and not the run store of training runs (actors/).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/sqlite.h"
#include "tasks/task.h"

namespace shoal::tasks {

// Seeds of the train split are below this, seeds of the eval split at or above it: a task's seed
// alone says which split it can belong to, so no generated task can appear in both.
inline constexpr uint64_t kEvalSeedBase = uint64_t{1} << 40;
uint64_t split_seed_base(const std::string& split);  // throws Error for a split that is not one
// The dedup key: a hash of the prompt messages, the offered tools and the environment.
std::string prompt_hash(const Task& task);

struct StoredTask {
  int64_t id = 0;
  std::string split, prompt_hash, created_at;
  Task task;
  std::optional<Episode> demonstration, rejected;
  std::string rejected_reason;  // the verifier's reason for rejecting the perturbed episode
};

struct TaskQuery {
  std::string family, split;  // empty: any
  int difficulty = 0;         // 0: any
  int64_t limit = -1, offset = 0;
};

class TaskStore {
 public:
  // create: make the file (and schema) when missing; otherwise the file must exist. Throws Error
  // for a file that is not a task store (not SQLite, or another schema).
  TaskStore(const std::string& path, bool create);

  // Adds tasks in one transaction; a task whose prompt hash is already stored (or whose family,
  // version, seed and difficulty are) is skipped. Returns how many were added.
  struct Entry {
    Task task;
    std::string split;
    std::optional<Episode> demonstration, rejected;
    std::string rejected_reason;
  };
  int add(const std::vector<Entry>& entries);
  bool contains_hash(const std::string& hash);

  std::vector<StoredTask> list(const TaskQuery& query);
  StoredTask get(int64_t id);  // throws Error naming the id when absent
  int64_t count(const TaskQuery& query);
  // The smallest unused seed of (family, split, difficulty), from the split's base.
  uint64_t next_seed(const std::string& family, const std::string& split, int difficulty);
  // Rows per (family, split, difficulty): [{"family", "split", "difficulty", "tasks"}].
  json summary();
  const std::string& path() const { return db_.path(); }

 private:
  SqliteDb db_;
};

}  // namespace shoal::tasks
