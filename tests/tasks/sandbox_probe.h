// Shared by the task tests that run code in the sandbox: a local sandbox server for the suite and
// the reason, if any, why it cannot run code on this machine (no bubblewrap, no user namespaces,
// no cgroups in a container), so those tests skip with that reason instead of failing.
#pragma once

#include <memory>
#include <string>

#include "base/error.h"
#include "sandbox/client.h"
#include "tests/sandbox/sandbox_fixture.h"

namespace shoal::tasks::test_support {

struct SandboxForTests {
  std::unique_ptr<sandbox::testing::LocalServer> server;
  std::unique_ptr<sandbox::Client> client;
  std::string unusable;  // empty when python runs; else why not
};

inline SandboxForTests start_sandbox_for_tests(int workers = 2) {
  SandboxForTests s;
  try {
    s.server = std::make_unique<sandbox::testing::LocalServer>(workers);
    s.client =
        std::make_unique<sandbox::Client>(sandbox::ClientOptions{s.server->endpoint(), 30000, 3});
    sandbox::Request r;
    r.tool = "python";
    r.arguments = {{"code", "print(6 * 7)"}};
    r.mode = sandbox::Mode::fork;
    sandbox::Reply reply = s.client->call(r);
    if (reply.status != "ok")
      s.unusable =
          "the sandbox cannot run python here: " + reply.error_kind + ": " + reply.error_message;
    else if (reply.stdout_text != "42\n")
      s.unusable = "the sandbox's python printed '" + reply.stdout_text + "'";
  } catch (const Error& e) {
    s.unusable = "no sandbox server here: " + e.message();
  } catch (const std::exception& e) {
    s.unusable = std::string("no sandbox server here: ") + e.what();
  }
  return s;
}

}  // namespace shoal::tasks::test_support
