// The tool actor: forwards a tool call to a sandbox server over ZeroMQ and answers with what the
// model reads — the tool's result, its output, or a clear error — never failing the request
// (a lost server, a timeout, a hung tool all become {"error": ...}). Spawned detached: each call
// blocks its thread until the reply or the client's timeout; spawn several for concurrency.
// Not the sandbox client (sandbox/client.h) and not the per-task environment tools.
#pragma once

#include <string>

#include "actors/messages.h"
#include "sandbox/protocol.h"

namespace shoal::actors {

tool_actor spawn_tool_actor(caf::actor_system& sys, const std::string& endpoint,
                            int64_t timeout_ms);

// The text the model reads for a sandbox reply (shared with eval and chat).
std::string tool_reply_text(const sandbox::Reply& reply);

}  // namespace shoal::actors
