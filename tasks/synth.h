// The synthesis pipeline: generate tasks of one family from consecutive seeds of a split, check
// that the verifier accepts the family's demonstration and rejects its perturbation, and store
// the new (deduplicated) tasks in batches, each one transaction. Not the CLI (cli/tasks.cpp).
#pragma once

#include <functional>
#include <string>

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

}  // namespace shoal::tasks
