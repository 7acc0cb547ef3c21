// The engine owner: the one actor that touches the model. Generation requests from every rollout
// go into the policy's continuous-batching scheduler as they arrive (the scheduler thread reports
// each completion back as a message); training steps and checkpoint save/load are exclusive: they
// wait until the running generations have finished, hold new ones, run, and then let generation
// continue with the new weights. Spawned detached (its own thread: a training step blocks it).
// Not the learner (which turns episodes into a TrainRequest) and not the policy's math.
#pragma once

#include <memory>

#include "actors/messages.h"
#include "actors/policy.h"

namespace shoal::actors {

engine_actor spawn_engine_owner(caf::actor_system& sys, std::shared_ptr<Policy> policy);

}  // namespace shoal::actors
