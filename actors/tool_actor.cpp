// The tool actor (tool_actor.h).
#include "actors/tool_actor.h"

#include <memory>

#include "sandbox/client.h"

namespace shoal::actors {

using nlohmann::json;

std::string tool_reply_text(const sandbox::Reply& r) {
  // As the in-process environment answers: the result, or {"error": message}.
  if (r.status != "ok")
    return json{{"error", r.error_message.empty() ? r.error_kind : r.error_message}}.dump();
  if (!r.result.is_null()) return r.result.dump();
  json out = {{"exit_code", r.exit_code}, {"stdout", r.stdout_text}};
  if (!r.stderr_text.empty()) out["stderr"] = r.stderr_text;
  return out.dump();
}

namespace {
struct ToolState {
  std::unique_ptr<sandbox::Client> client;
  static inline const char* name = "tool";
};
}  // namespace

tool_actor spawn_tool_actor(caf::actor_system& sys, const std::string& endpoint,
                            int64_t timeout_ms) {
  return sys.spawn<caf::detached>(  // arguments, not captures: see engine_owner.cpp
      [](tool_actor::stateful_pointer<ToolState> self, std::string endpoint,
         int64_t timeout_ms) -> tool_actor::behavior_type {
        sandbox::ClientOptions o;
        o.endpoint = endpoint;
        o.timeout_ms = timeout_ms;
        self->state.client = std::make_unique<sandbox::Client>(o);
        return {
            [self](tool_atom, const ToolCallMsg& call) -> std::string {
              json args;
              try {
                args = json::parse(call.args);
              } catch (const std::exception& e) {
                return json{{"error", std::string("arguments are not JSON: ") + e.what()}}.dump();
              }
              sandbox::Reply r = self->state.client->call(call.name, args, call.session);
              return tool_reply_text(r);
            },
        };
      },
      endpoint, timeout_ms);
}

}  // namespace shoal::actors
