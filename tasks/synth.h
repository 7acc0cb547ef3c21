// The synthesis pipeline: generate tasks of one family from consecutive seeds of a split, check
// that the verifier accepts the family's demonstration and rejects its perturbation, and store
// the new (deduplicated) tasks in batches, each one transaction. Not the CLI (cli/tasks.cpp).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "tasks/store.h"
#include "tasks/task.h"

namespace shoal::tasks {

struct SynthOptions {
  std::string family, split = "train";
  int count = 1, difficulty = 1;
  int batch = 64;                      // tasks per transaction
  sandbox::Client* sandbox = nullptr;  // for families that need one
  // Called after each batch: (added so far, seeds tried so far).
  std::function<void(int added, int tried)> progress;
};

struct SynthReport {
  int added = 0, duplicates = 0, tried = 0;
  double seconds = 0;
};

// Throws Error for a bad family, split, count or difficulty, and when a demonstration fails its
// verifier or a perturbation passes it (a family bug, never stored). Stops early (added < count)
// when the family yields no new distinct tasks for many seeds in a row.
SynthReport synthesize(TaskStore& store, const SynthOptions& options);

// A sweep over seeds first_seed .. first_seed + seeds - 1 of one family at one difficulty, doing
// what synthesis checks for each seed (without a store): generate; unless generate_only,
// demonstrate and verify (must pass), perturb and verify (must fail). A failing seed is recorded,
// never thrown, so one sweep counts every failure.
struct CheckOptions {
  std::string family;
  int difficulty = 1;
  uint64_t first_seed = 0;
  int seeds = 100;
  bool generate_only = false;
  sandbox::Client* sandbox = nullptr;  // for families that need one (unless generate_only)
  size_t keep = 10;                    // failures kept with their message (all are counted)
};

struct CheckFailure {
  uint64_t seed = 0;
  std::string stage;  // generate, demonstrate, verify, perturb
  std::string message;
};

struct CheckReport {
  int tried = 0, failed = 0;
  std::vector<CheckFailure> failures;  // the first `keep`
  double seconds = 0;
};

// Throws Error only for a bad family or difficulty, seeds < 1, or a sandbox family without one.
CheckReport check_family(const CheckOptions& options);

}  // namespace shoal::tasks
