// The task store and the synthesis pipeline: splits over disjoint seed ranges (no eval task in
// train), deduplication, provenance, stored demonstrations that still verify, transactional
// writes, and clear errors for missing or corrupt stores.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/store.h"
#include "tasks/synth.h"

namespace shoal::tasks {
namespace {

namespace fs = std::filesystem;

struct TempStore {
  fs::path path;
  explicit TempStore(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("shoal_tasks_" + tag + "_" + std::to_string(getpid()) + ".sqlite");
    remove();
  }
  ~TempStore() { remove(); }
  void remove() {
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path.string() + suffix);
  }
};

SynthReport synth(TaskStore& s, const std::string& family, int count, int d,
                  const std::string& split) {
  SynthOptions o;
  o.family = family;
  o.count = count;
  o.difficulty = d;
  o.split = split;
  o.batch = 16;
  return synthesize(s, o);
}

TEST(TasksStore, SplitsAreDisjointAndNoEvalTaskAppearsInTrain) {
  TempStore tmp("splits");
  TaskStore store(tmp.path, true);
  for (const char* fam : {"arithmetic", "countdown", "function_calling"}) {
    EXPECT_EQ(synth(store, fam, 40, 2, "train").added, 40);
    EXPECT_EQ(synth(store, fam, 20, 2, "eval").added, 20);
  }
  auto train = store.list({"", "train", 0, -1, 0});
  auto eval = store.list({"", "eval", 0, -1, 0});
  ASSERT_EQ(train.size(), 120u);
  ASSERT_EQ(eval.size(), 60u);
  std::set<std::string> train_hashes, train_prompts;
  for (const auto& s : train) {
    EXPECT_LT(s.task.seed, kEvalSeedBase);
    train_hashes.insert(s.prompt_hash);
    train_prompts.insert(s.task.messages.dump() + s.task.tools.dump());
  }
  for (const auto& s : eval) {
    EXPECT_GE(s.task.seed, kEvalSeedBase);
    EXPECT_EQ(train_hashes.count(s.prompt_hash), 0u) << "eval task " << s.id << " is in train";
    EXPECT_EQ(train_prompts.count(s.task.messages.dump() + s.task.tools.dump()), 0u)
        << "eval prompt " << s.id << " is in train";
  }
  // A seed from the other split's range is refused by the store itself.
  Task t = find_family("arithmetic").generate(5, 1);
  EXPECT_THROW(store.add({{t, "eval", std::nullopt, std::nullopt, ""}}), Error);
  EXPECT_THROW(store.add({{t, "test", std::nullopt, std::nullopt, ""}}), Error);
}

TEST(TasksStore, StoredTasksKeepProvenanceAndTheirDemonstrationsVerify) {
  TempStore tmp("roundtrip");
  TaskStore store(tmp.path, true);
  synth(store, "countdown", 12, 4, "train");
  for (const auto& s : store.list({"countdown", "", 4, -1, 0})) {
    const Family& f = find_family(s.task.family);
    EXPECT_EQ(s.task.version, f.version());
    EXPECT_EQ(s.task.difficulty, 4);
    // The stored task is exactly what its seed generates.
    EXPECT_EQ(to_json(s.task), to_json(f.generate(s.task.seed, 4)));
    ASSERT_TRUE(s.demonstration && s.rejected);
    EXPECT_TRUE(f.verify(s.task, *s.demonstration).solved());
    EXPECT_FALSE(f.verify(s.task, *s.rejected).solved());
    EXPECT_FALSE(s.rejected_reason.empty());
    EXPECT_EQ(s.prompt_hash, prompt_hash(s.task));
  }
  EXPECT_EQ(store.get(1).id, 1);
  EXPECT_THROW(store.get(999999), Error);
}

TEST(TasksStore, DuplicatesAreSkippedAndSynthContinuesWithNewSeeds) {
  TempStore tmp("dedup");
  TaskStore store(tmp.path, true);
  EXPECT_EQ(synth(store, "arithmetic", 10, 1, "train").added, 10);
  auto first = store.list({"arithmetic", "train", 1, -1, 0});
  // The same tasks again: nothing added.
  std::vector<TaskStore::Entry> again;
  for (const auto& s : first) again.push_back({s.task, "train", std::nullopt, std::nullopt, ""});
  EXPECT_EQ(store.add(again), 0);
  // The same prompt under another seed is a duplicate too.
  Task copy = first[0].task;
  copy.seed = 123456;
  EXPECT_EQ(store.add({{copy, "train", std::nullopt, std::nullopt, ""}}), 0);
  // Another run continues after the seeds used.
  EXPECT_EQ(synth(store, "arithmetic", 10, 1, "train").added, 10);
  auto all = store.list({"arithmetic", "train", 1, -1, 0});
  ASSERT_EQ(all.size(), 20u);
  std::set<uint64_t> seeds;
  for (const auto& s : all) seeds.insert(s.task.seed);
  EXPECT_EQ(seeds.size(), 20u);
  EXPECT_EQ(store.count({"arithmetic", "", 0, -1, 0}), 20);
}

TEST(TasksStore, AFailedBatchWritesNothing) {
  TempStore tmp("tx");
  TaskStore store(tmp.path, true);
  const Family& f = find_family("arithmetic");
  std::vector<TaskStore::Entry> batch;
  for (uint64_t s = 0; s < 5; ++s)
    batch.push_back({f.generate(s, 1), "train", std::nullopt, std::nullopt, ""});
  batch.push_back(
      {f.generate(kEvalSeedBase + 1, 1), "train", std::nullopt, std::nullopt, ""});  // bad seed
  EXPECT_THROW(store.add(batch), Error);
  EXPECT_EQ(store.count({}), 0);
  batch.pop_back();
  EXPECT_EQ(store.add(batch), 5);
}

TEST(TasksStore, MissingAndCorruptStoresAreClearErrors) {
  TempStore tmp("corrupt");
  try {
    TaskStore s(tmp.path, false);
    ADD_FAILURE() << "opened a missing store";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("does not exist"), std::string::npos) << e.message();
  }
  {
    std::ofstream f(tmp.path);
    f << "this is not a database, just text that goes on for a while......................";
  }
  try {
    TaskStore s(tmp.path, true);
    ADD_FAILURE() << "opened a corrupt store";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("is not a shoal task store"), std::string::npos) << e.message();
  }
  tmp.remove();
  {
    SqliteDb other(tmp.path, true);
    other.exec("CREATE TABLE something(x)");
  }
  EXPECT_THROW(TaskStore(tmp.path, false), Error);
}

TEST(TasksStore, SynthRejectsBadOptions) {
  TempStore tmp("opts");
  TaskStore store(tmp.path, true);
  EXPECT_THROW(synth(store, "nosuch", 1, 1, "train"), Error);
  EXPECT_THROW(synth(store, "arithmetic", 0, 1, "train"), Error);
  EXPECT_THROW(synth(store, "arithmetic", 1, 9, "train"), Error);
  EXPECT_THROW(synth(store, "arithmetic", 1, 1, "validation"), Error);
  EXPECT_EQ(store.count({}), 0);
}

}  // namespace
}  // namespace shoal::tasks
