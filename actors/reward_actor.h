// The reward actor: scores a finished episode with its task family's verifier. A verifier that
// throws does not fail the run: the episode gets reward 0 and the reason says what happened
// (verifier_failed is set so the run can record it). Families that verify in the sandbox get a
// client (`endpoint`; empty: none). Spawned detached (a sandbox verifier blocks its thread).
// Not the verifiers (tasks/).
#pragma once

#include <string>

#include "actors/messages.h"

namespace shoal::sandbox {
class Client;
}

namespace shoal::actors {

reward_actor spawn_reward_actor(caf::actor_system& sys, const std::string& endpoint);

// The same scoring, callable without an actor (eval and tests).
RewardMsg score_episode(const VerifyRequest& request, sandbox::Client* sandbox);

}  // namespace shoal::actors
