// The learner: turns a GRPO step's scored episodes into a training request — advantages per
// group (same task), the sampling log-probs recorded at rollout, the loss mask — and asks the
// engine owner for the step (or `updates` steps over the same episodes). Answers with the step's
// metrics plus the advantage statistics. Not the objective (rl/grpo.h) and not the engine.
#pragma once

#include "actors/messages.h"

namespace shoal::actors {

// `train_atom, GrpoBatch` → StepMetrics.
caf::behavior learner_actor(caf::event_based_actor* self, engine_actor engine);

// The request the learner sends (exposed for tests): groups are (stage, gstep, group).
TrainRequest grpo_request(const GrpoBatch& batch, StepMetrics& stats);

}  // namespace shoal::actors
