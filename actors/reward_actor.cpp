// The reward actor (reward_actor.h).
#include "actors/reward_actor.h"

#include <memory>

#include "sandbox/client.h"
#include "tasks/registry.h"

namespace shoal::actors {

using nlohmann::json;

RewardMsg score_episode(const VerifyRequest& request, sandbox::Client* client) {
  RewardMsg out;
  try {
    tasks::Task task = tasks::task_from_json(json::parse(request.task));
    tasks::Episode ep;
    ep.messages = json::parse(request.messages);
    tasks::Reward r = tasks::find_family(task.family).verify(task, ep, client);
    out.value = r.value;
    out.components = r.components.dump();
    out.reason = r.reason;
  } catch (const std::exception& e) {
    out.value = 0;
    out.reason = std::string("the verifier failed: ") + e.what();
    out.verifier_failed = true;
  }
  return out;
}

namespace {
struct RewardState {
  std::unique_ptr<sandbox::Client> client;
  static inline const char* name = "reward";
};
}  // namespace

reward_actor spawn_reward_actor(caf::actor_system& sys, const std::string& endpoint) {
  return sys.spawn<caf::detached>(  // arguments, not captures: see engine_owner.cpp
      [](reward_actor::stateful_pointer<RewardState> self,
         std::string endpoint) -> reward_actor::behavior_type {
        if (!endpoint.empty()) {
          sandbox::ClientOptions o;
          o.endpoint = endpoint;
          self->state.client = std::make_unique<sandbox::Client>(o);
        }
        return {
            [self](verify_atom, const VerifyRequest& r) -> RewardMsg {
              return score_episode(r, self->state.client.get());
            },
        };
      },
      endpoint);
}

}  // namespace shoal::actors
