// The collector: turns a list of episode jobs into finished, scored episodes. It runs up to
// `max_in_flight` rollout actors at once (one per episode; several collections may be in flight
// together, which is how rollouts of the next steps overlap training under a staleness bound),
// supervises them — a rollout that crashes or fails is retried, up to `max_attempts` in all, then
// recorded as a failed episode with the reason — and answers each collection in job order.
// Not the rollout itself (rollout.h) and not the step protocol (grpo_driver.h).
#pragma once

#include "actors/rollout.h"

namespace shoal::actors {

struct CollectorConfig {
  int64_t max_in_flight = 64;
  int64_t max_attempts = 2;
};

// `collect_atom, std::vector<EpisodeJob>` → std::vector<EpisodeResult> (index order).
// `events` (optional) receives `event_atom, kind, message, data-json-text` for retries and drops.
caf::behavior collector_actor(caf::event_based_actor* self, RolloutDeps deps,
                              CollectorConfig config, caf::actor events);

// A rollout's recorded failure: status "failed", reward 0, the reason.
EpisodeResult failed_episode(const EpisodeJob& job, const std::string& reason);

}  // namespace shoal::actors
