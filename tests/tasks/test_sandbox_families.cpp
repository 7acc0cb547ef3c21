// The families that run tools in the sandbox (files), against one local sandbox server shared by
// the suite: demonstrations pass their verifier over seeds and difficulties, perturbations fail,
// the demonstration's tool results come from the sandbox, and sessions are closed afterwards.
// Skips, with the reason, where the sandbox cannot run code.
#include <gtest/gtest.h>

#include "base/error.h"
#include "sandbox/client.h"
#include "tasks/registry.h"
#include "tests/tasks/sandbox_probe.h"

namespace shoal::tasks {
namespace {

class TasksSandboxFamilies : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sandbox_ = new test_support::SandboxForTests(test_support::start_sandbox_for_tests());
    client_ = sandbox_->client.get();
  }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
    client_ = nullptr;
  }
  void SetUp() override {
    if (!sandbox_->unusable.empty()) GTEST_SKIP() << sandbox_->unusable;
  }
  static test_support::SandboxForTests* sandbox_;
  static sandbox::Client* client_;
};

test_support::SandboxForTests* TasksSandboxFamilies::sandbox_ = nullptr;
sandbox::Client* TasksSandboxFamilies::client_ = nullptr;

TEST_F(TasksSandboxFamilies, DemonstrationsPassAndPerturbationsFail) {
  for (const Family* f : families()) {
    if (!f->needs_sandbox()) continue;
    for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d)
      for (uint64_t seed = 0; seed < 4; ++seed) {
        Task t = f->generate(seed * 101 + 7, d);
        Episode demo = f->demonstrate(t, client_);
        Reward good = f->verify(t, demo, client_);
        EXPECT_TRUE(good.solved())
            << f->name() << " d" << d << " seed " << t.seed << ": " << good.reason;
        Episode bad = f->perturb(t, demo, seed, client_);
        Reward r = f->verify(t, bad, client_);
        EXPECT_FALSE(r.solved()) << f->name() << " d" << d << " seed " << t.seed << ":\n"
                                 << bad.messages.dump(1);
        EXPECT_NE(bad.messages, demo.messages);
      }
  }
  // Each episode's session was closed when its environment went away.
  sandbox::Reply stats = client_->admin("stats");
  ASSERT_EQ(stats.status, "ok");
  EXPECT_TRUE(stats.result["sessions"].empty()) << stats.result.dump();
}

TEST_F(TasksSandboxFamilies, FilesToolsRunInTheTasksTree) {
  const Family& f = find_family("files");
  Task t = f.generate(3, 2);
  Environment env(f, t, client_);
  json listing = env.call("shell", {{"command", "ls logs | wc -l"}});
  ASSERT_TRUE(listing.contains("stdout")) << listing.dump();
  int logs = 0;
  for (auto& [path, content] : t.environment["files"].items()) logs += path.rfind("logs/", 0) == 0;
  EXPECT_EQ(std::stoi(listing["stdout"].get<std::string>()), logs);
  EXPECT_TRUE(env.call("shell", {{"cmd", "ls"}}).contains("error"));
  EXPECT_TRUE(env.call("python", {{"code", "1"}}).contains("error"))
      << "python is not offered here";
  json escape = env.call("files", {{"action", "read"}, {"path", "../../etc/passwd"}});
  EXPECT_TRUE(escape.contains("error")) << escape.dump();
  // The verifier needs no tool to judge the answer, but garbage still gets zero.
  Episode garbage{json::array({{{"role", "assistant"}, {"content", "ANSWER: ; rm -rf /"}}})};
  EXPECT_EQ(f.verify(t, garbage, client_).value, 0.0);
  EXPECT_THROW(Environment(f, t, nullptr), Error);
}

}  // namespace
}  // namespace shoal::tasks
