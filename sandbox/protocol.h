// The sandbox wire protocol: one JSON object per ZeroMQ message, a request from a client and one
// reply from the server. Plain data plus parsing that names the offending field. Not the transport
// (server.h, client.h) and not the execution (executor.h).
#pragma once

#include <fmt/format.h>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace shoal::sandbox {

using json = nlohmann::json;

// Error kinds a reply can carry ("status": "error"). Clients and the model read them.
namespace error_kind {
inline constexpr const char* bad_request = "bad_request";              // malformed JSON, fields
inline constexpr const char* too_large = "too_large";                  // request over the size cap
inline constexpr const char* unknown_tool = "unknown_tool";            // no such tool
inline constexpr const char* invalid_arguments = "invalid_arguments";  // tool arguments ill-typed
inline constexpr const char* busy = "busy";                            // queue full
inline constexpr const char* queue_timeout = "queue_timeout";  // deadline passed while queued
inline constexpr const char* timeout = "timeout";            // wall-clock deadline; sandbox killed
inline constexpr const char* cpu_limit = "cpu_limit";        // CPU seconds exhausted
inline constexpr const char* memory_limit = "memory_limit";  // killed by the memory cgroup
inline constexpr const char* sandbox_died = "sandbox_died";  // the sandbox process went away
inline constexpr const char* sandbox_failed = "sandbox_failed";  // could not start a sandbox
inline constexpr const char* tool_error = "tool_error";          // the tool refused (e.g. a path)
inline constexpr const char* shutting_down = "shutting_down";
inline constexpr const char* internal = "internal";
// Client side only: no reply in time, or no server.
inline constexpr const char* client_timeout = "client_timeout";
}  // namespace error_kind

// Resource limits of one call. Per call: wall_ms, cpu_ms, output_bytes. Per sandbox (fixed when a
// session's sandbox starts): memory_mb, pids, file_mb, disk_mb, nofile.
struct Limits {
  int64_t wall_ms = 10000;       // wall-clock deadline; past it the whole sandbox is killed
  int64_t cpu_ms = 10000;        // CPU time (RLIMIT_CPU, rounded up to seconds)
  int64_t memory_mb = 512;       // memory cgroup limit (and RLIMIT_AS of fresh runs, ×4)
  int64_t pids = 64;             // pids cgroup limit and RLIMIT_NPROC
  int64_t file_mb = 64;          // largest file written (RLIMIT_FSIZE)
  int64_t disk_mb = 256;         // workspace size (a tmpfs when the server may mount)
  int64_t nofile = 256;          // open files (RLIMIT_NOFILE)
  int64_t output_bytes = 65536;  // stdout and stderr caps, each
};
// The ceilings a request may raise its limits to unless the server's limits file says otherwise:
// 10 min wall/CPU, 4 GiB memory, 256 processes, 1 GiB files, 2 GiB workspace, 1 MiB output.
Limits default_max_limits();
json to_json(const Limits& limits);
// Overrides the fields present in j (an object of integers); throws Error naming a bad key.
Limits apply_limits_json(const json& j, Limits base);
// Each field at most the one in max_limits (and at least 1).
Limits clamp(const Limits& requested, const Limits& max_limits);

// How a python/shell call runs: in the session's persistent sandbox (state kept), forked from a
// warm interpreter (fresh state, ~ms), or in a sandbox started for this call alone.
enum class Mode { automatic, session, fork, fresh };
const char* mode_name(Mode mode);

struct Request {
  std::string id;           // echoed in the reply
  std::string op = "call";  // call, list_tools, ping, stats, close_session
  std::string session;      // empty: no session (an ephemeral workspace)
  std::string tool;         // for op=call
  json arguments = json::object();
  json limits = json::object();  // partial Limits
  Mode mode = Mode::automatic;
  int64_t timeout_ms = 0;  // the client's remaining budget when sent; 0 = none (queue time counts)
};

// Thrown by parse_request: a reply of kind `kind` goes back.
struct RequestError {
  std::string kind, message, id;
};
Request parse_request(const std::string& bytes);
json to_json(const Request& request);

struct Reply {
  std::string id;
  std::string status = "ok";  // ok: the tool ran (exit_code may be non-zero); error: see error_*
  int exit_code = 0;
  std::string stdout_text, stderr_text;
  bool stdout_truncated = false, stderr_truncated = false;
  double wall_ms = 0, cpu_ms = 0;
  std::string error_kind, error_message;
  std::string mode;            // how it ran
  bool session_reset = false;  // the session's sandbox was killed (its state is gone)
  json result;                 // tool-specific structured result (files, run_tests, calculator)
};
json to_json(const Reply& reply);
Reply reply_from_json(const json& j);
Reply error_reply(const std::string& id, const std::string& kind, const std::string& message);
// Serializes with invalid UTF-8 replaced (tool output is arbitrary bytes).
std::string dump(const json& j);

}  // namespace shoal::sandbox
