// The difficulty-adapting sampler for RL: picks the (family, difficulty) bucket of the next prompt,
// favouring buckets whose recent groups gave a learning signal (some episodes solved and some not,
// so group-relative advantages are non-zero), with a share of uniform draws so no bucket starves.
// Deterministic given its seed and the results recorded; its whole state is JSON, for resume.
// Not a task source: the caller generates (or loads) a task of the drawn bucket.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tasks/task.h"

namespace shoal::tasks {

struct Bucket {
  std::string family;
  int difficulty = 1;
  bool operator==(const Bucket&) const = default;
};

struct SamplerOptions {
  // Weight of the past in each bucket's moving averages, per recorded group (0.8: a group's
  // result counts a fifth; about ten groups make the past fade).
  double decay = 0.8;
  // Share of draws made uniformly over all buckets, whatever their signal.
  double explore = 0.1;
};

struct BucketStats {
  Bucket bucket;
  int64_t draws = 0;     // times next() chose it
  int64_t groups = 0;    // group results recorded
  double pass_rate = 0;  // moving average of the groups' pass rates (0 until a result)
  // Moving average of "the group's pass rate was strictly between 0 and 1", starting at 1 so that
  // an untried bucket is worth trying.
  double signal = 1;
};

class DifficultySampler {
 public:
  // Throws Error for no buckets, a repeated bucket, an unknown family, a difficulty out of range
  // or options outside (0, 1) (decay) and [0, 1] (explore).
  DifficultySampler(std::vector<Bucket> buckets, uint64_t seed, SamplerOptions options = {});
  // Every difficulty of each family, in order.
  static std::vector<Bucket> every_difficulty(const std::vector<std::string>& families);

  struct Draw {
    Bucket bucket;
    size_t index = 0;   // into stats()
    uint64_t seed = 0;  // a fresh task seed for the bucket: its draws so far (train split range)
  };
  Draw next();
  // One group's rewards for a task of `bucket`: an episode passes when its reward is 1 (solved).
  // Throws Error for an unknown bucket or an empty group.
  void record(const Bucket& bucket, const std::vector<double>& rewards);

  // What next() draws from: explore / buckets + (1 - explore) * signal / (sum of signals),
  // uniform when every signal is 0.
  std::vector<double> probabilities() const;
  const std::vector<BucketStats>& stats() const { return stats_; }
  const SamplerOptions& options() const { return options_; }

  json to_json() const;
  // Throws Error naming the bad field (wrong kind, missing or ill-typed values, bad buckets).
  static DifficultySampler from_json(const json& state);

 private:
  size_t find(const Bucket& bucket) const;
  std::vector<BucketStats> stats_;
  uint64_t seed_ = 0, draws_ = 0;
  SamplerOptions options_;
};

}  // namespace shoal::tasks
