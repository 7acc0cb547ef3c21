// The C++ client of the sandbox server, used by the tool and reward actors and `shoal tool`: a
// DEALER socket run by one I/O thread, so many calls can be in flight from any thread
// (submit() returns a future). Timeouts count from submit, so time spent queued — in ZeroMQ while
// the server is away, or in the server's queue — counts; the server is told the remaining budget.
// A lost connection (server restarted) is retried transparently: calls in flight are sent again
// once it is back (at-least-once; a restarted server has no sessions, replies say so).
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>

#include "sandbox/protocol.h"

namespace shoal::sandbox {

struct ClientOptions {
  std::string endpoint;
  int64_t timeout_ms = 60000;  // per call, from submit to reply
  int retries = 3;             // resends of one call after a lost connection
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Never throws for server or transport trouble: the future's Reply then carries status
  // "error" (kind client_timeout when no reply came in time). An empty id gets a fresh one.
  std::future<Reply> submit(Request request);
  Reply call(Request request) { return submit(std::move(request)).get(); }
  Reply call(const std::string& tool, json arguments, const std::string& session = "");
  // op = ping, list_tools, stats, close_session.
  Reply admin(const std::string& op, const std::string& session = "");

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal::sandbox
