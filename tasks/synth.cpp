// The synthesis pipeline (synth.h).
#include "tasks/synth.h"

#include <chrono>
#include <unordered_set>

#include "base/error.h"
#include "tasks/registry.h"

namespace shoal::tasks {

SynthReport synthesize(TaskStore& store, const SynthOptions& o) {
  const Family& family = find_family(o.family);
  split_seed_base(o.split);  // validates the split
  SHOAL_CHECK(o.count >= 1, "count must be at least 1, got {}", o.count);
  SHOAL_CHECK(o.difficulty >= kMinDifficulty && o.difficulty <= kMaxDifficulty,
              "difficulty must be in [{}, {}], got {}", kMinDifficulty, kMaxDifficulty,
              o.difficulty);
  SHOAL_CHECK(!family.needs_sandbox() || o.sandbox, "family {} needs a sandbox", family.name());
  auto start = std::chrono::steady_clock::now();
  SynthReport rep;
  uint64_t seed = store.next_seed(family.name(), o.split, o.difficulty);
  uint64_t limit = o.split == "train" ? kEvalSeedBase : UINT64_MAX / 2;
  int misses_in_a_row = 0;
  const int max_misses = 200 + o.count;
  std::vector<TaskStore::Entry> batch;
  std::unordered_set<std::string> pending;  // hashes in the batch not yet written
  auto flush = [&] {
    if (batch.empty()) return;
    int added = store.add(batch);
    rep.duplicates += static_cast<int>(batch.size()) - added;
    rep.added += added;
    batch.clear();
    pending.clear();
    if (o.progress) o.progress(rep.added, rep.tried);
  };
  while (rep.added + static_cast<int>(batch.size()) < o.count && misses_in_a_row < max_misses) {
    SHOAL_CHECK(seed < limit, "the {} split's seed range is used up", o.split);
    Task t = family.generate(seed, o.difficulty);
    ++rep.tried;
    ++seed;
    std::string hash = prompt_hash(t);
    if (pending.count(hash) || store.contains_hash(hash)) {
      ++rep.duplicates;
      ++misses_in_a_row;
      continue;
    }
    misses_in_a_row = 0;
    Episode demo = family.demonstrate(t, o.sandbox);
    Reward good = family.verify(t, demo, o.sandbox);
    SHOAL_CHECK(good.solved(),
                "family {}: the demonstration of seed {} (difficulty {}) fails its verifier: {}",
                family.name(), t.seed, t.difficulty, good.reason);
    Episode bad = family.perturb(t, demo, t.seed, o.sandbox);
    Reward wrong = family.verify(t, bad, o.sandbox);
    SHOAL_CHECK(!wrong.solved(),
                "family {}: the perturbation of seed {} (difficulty {}) passes its verifier",
                family.name(), t.seed, t.difficulty);
    pending.insert(hash);
    batch.push_back({std::move(t), o.split, std::move(demo), std::move(bad), wrong.reason});
    if (static_cast<int>(batch.size()) >= o.batch) flush();
  }
  flush();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return rep;
}

CheckReport check_family(const CheckOptions& o) {
  const Family& family = find_family(o.family);
  SHOAL_CHECK(o.difficulty >= kMinDifficulty && o.difficulty <= kMaxDifficulty,
              "difficulty must be in [{}, {}], got {}", kMinDifficulty, kMaxDifficulty,
              o.difficulty);
  SHOAL_CHECK(o.seeds >= 1, "seeds must be at least 1, got {}", o.seeds);
  SHOAL_CHECK(o.generate_only || !family.needs_sandbox() || o.sandbox, "family {} needs a sandbox",
              family.name());
  auto start = std::chrono::steady_clock::now();
  CheckReport rep;
  for (int i = 0; i < o.seeds; ++i) {
    uint64_t seed = o.first_seed + static_cast<uint64_t>(i);
    std::string stage = "generate", problem;
    try {
      Task t = family.generate(seed, o.difficulty);
      if (!o.generate_only) {
        stage = "demonstrate";
        Episode demo = family.demonstrate(t, o.sandbox);
        stage = "verify";
        Reward good = family.verify(t, demo, o.sandbox);
        if (!good.solved()) problem = "the demonstration fails its verifier: " + good.reason;
        if (problem.empty()) {
          stage = "perturb";
          Episode bad = family.perturb(t, demo, seed, o.sandbox);
          if (family.verify(t, bad, o.sandbox).solved())
            problem = "the perturbation passes the verifier";
        }
      }
    } catch (const Error& e) {
      problem = "error: " + e.message();
    } catch (const std::exception& e) {
      problem = std::string("error: ") + e.what();
    }
    ++rep.tried;
    if (problem.empty()) continue;
    ++rep.failed;
    if (rep.failures.size() < o.keep) rep.failures.push_back({seed, stage, problem});
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return rep;
}

}  // namespace shoal::tasks
