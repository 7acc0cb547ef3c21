// The sandbox server and client end to end: each tool and mode, sessions, bad input answered with
// clear errors, load from 16 clients, a sandbox killed mid-call, a restarted server reconnected to,
// and `shoal sandboxd` shutting down on SIGTERM and sweeping a crashed instance's leftovers.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <zmq.hpp>

#include "sandbox/tools.h"
#include "tests/sandbox/sandbox_fixture.h"

extern char** environ;

namespace shoal::sandbox::testing {
namespace {

class SandboxServer : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<LocalServer>(2);
    client_ = std::make_unique<Client>(ClientOptions{server_->endpoint(), 30000, 3});
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    EXPECT_EQ(settle_descendants(0), 0);
  }
  Client& c() { return *client_; }
  std::unique_ptr<LocalServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(SandboxServer, ListsToolsInOpenAIForm) {
  Reply r = c().admin("list_tools");
  ASSERT_EQ(r.status, "ok") << describe(r);
  ASSERT_TRUE(r.result.is_array());
  std::vector<std::string> names;
  for (auto& t : r.result) {
    EXPECT_EQ(t["type"], "function");
    EXPECT_EQ(t["function"]["parameters"]["type"], "object");
    EXPECT_TRUE(t["function"]["description"].is_string());
    names.push_back(t["function"]["name"]);
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"python", "shell", "files", "calculator", "run_tests"}));
}

TEST_F(SandboxServer, PythonInEachMode) {
  for (Mode mode : {Mode::fork, Mode::fresh}) {
    Reply r = python(c(), "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)",
                     "", mode);
    EXPECT_EQ(r.status, "ok") << describe(r);
    EXPECT_EQ(r.stdout_text, "out\n");
    EXPECT_EQ(r.stderr_text, "err\n");
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_EQ(r.mode, mode_name(mode));
  }
  // A session keeps state, prints a trailing expression, and reports exceptions without the
  // driver's own frames.
  Reply a = python(c(), "x = 20", "s1");
  EXPECT_EQ(a.mode, "session");
  Reply b = python(c(), "x * 2 + 2", "s1");
  EXPECT_EQ(b.stdout_text, "42\n") << describe(b);
  Reply e = python(c(), "1 / 0", "s1");
  EXPECT_EQ(e.status, "ok");
  EXPECT_EQ(e.exit_code, 1);
  EXPECT_NE(e.stderr_text.find("ZeroDivisionError"), std::string::npos) << describe(e);
  EXPECT_EQ(e.stderr_text.find("driver.py"), std::string::npos) << describe(e);
  // fork mode in a session: the workspace is shared, the interpreter state is not.
  Reply f =
      python(c(), "print('x' in globals(), open('/work/f', 'w').write('hi'))", "s1", Mode::fork);
  EXPECT_EQ(f.stdout_text, "False 2\n") << describe(f);
  Reply g = python(c(), "print(open('f').read(), x)", "s1");
  EXPECT_EQ(g.stdout_text, "hi 20\n") << describe(g);
  // Sessions are separate.
  Reply h = python(c(), "print('x' in globals())", "s2");
  EXPECT_EQ(h.stdout_text, "False\n") << describe(h);
  Reply closed = c().admin("close_session", "s1");
  EXPECT_EQ(closed.result["closed"], true);
  Reply gone = python(c(), "print('x' in globals())", "s1");
  EXPECT_EQ(gone.stdout_text, "False\n");
}

TEST_F(SandboxServer, ShellFilesCalculatorRunTests) {
  Reply sh = shell(c(), "echo hello > a.txt && cat a.txt && pwd", "w");
  EXPECT_EQ(sh.stdout_text, "hello\n/work\n") << describe(sh);
  auto files = [&](json args) { return c().call(make_call("files", std::move(args), "w")); };
  Reply rd = files({{"action", "read"}, {"path", "a.txt"}});
  EXPECT_EQ(rd.result["content"], "hello\n") << describe(rd);
  Reply wr =
      files({{"action", "write"}, {"path", "src/m.py"}, {"content", "def f():\n  return 1\n"}});
  EXPECT_EQ(wr.status, "ok") << describe(wr);
  Reply pt =
      files({{"action", "patch"}, {"path", "src/m.py"}, {"old", "return 1"}, {"new", "return 2"}});
  EXPECT_EQ(pt.status, "ok") << describe(pt);
  Reply run = python(c(), "import sys; sys.path.insert(0, 'src'); import m; print(m.f())", "w");
  EXPECT_EQ(run.stdout_text, "2\n") << describe(run);
  Reply ls = files({{"action", "list"}});
  ASSERT_EQ(ls.status, "ok") << describe(ls);
  std::vector<std::string> paths;
  for (auto& e : ls.result["entries"]) paths.push_back(e["path"]);
  EXPECT_EQ(paths, (std::vector<std::string>{"a.txt", "src", "src/m.py"}));
  Reply missing = files({{"action", "patch"}, {"path", "src/m.py"}, {"old", "nope"}, {"new", "x"}});
  EXPECT_EQ(missing.error_kind, "tool_error");
  Reply nosession = c().call(make_call("files", {{"action", "list"}}));
  EXPECT_EQ(nosession.error_kind, "invalid_arguments");

  Reply calc = c().call(make_call("calculator", {{"expression", "(2^64 - 1) / 3"}}));
  EXPECT_EQ(calc.result["value"], "6148914691236517205") << describe(calc);
  Reply dec = c().call(make_call("calculator", {{"expression", "0.1 + 0.2"}}));
  EXPECT_EQ(dec.result["value"], "3/10");
  Reply div0 = c().call(make_call("calculator", {{"expression", "1/(3-3)"}}));
  EXPECT_EQ(div0.error_kind, "tool_error");

  json tests = {{"files",
                 {{"test_m.py",
                   "import unittest\nclass T(unittest.TestCase):\n  def test_ok(self): "
                   "self.assertEqual(1, 1)\n  def test_bad(self): self.assertEqual(1, 2)\n"}}}};
  for (std::string session : {"", "w"}) {
    Reply t = c().call(make_call("run_tests", tests, session));
    ASSERT_EQ(t.status, "ok") << describe(t);
    EXPECT_EQ(t.result["passed"], 1) << describe(t);
    EXPECT_EQ(t.result["failed"], 1);
    EXPECT_EQ(t.result["all_passed"], false);
    ASSERT_EQ(t.result["tests"].size(), 2u);
  }
}

TEST_F(SandboxServer, BadInputGetsClearErrors) {
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 10000);
  s.connect(server_->endpoint());
  auto ask = [&](const std::string& payload) {
    s.send(zmq::buffer(payload));
    zmq::message_t m;
    auto got = s.recv(m);
    EXPECT_TRUE(got.has_value()) << payload.substr(0, 100);
    return got ? json::parse(m.to_string()) : json();
  };
  struct Case {
    std::string payload, kind;
  };
  std::vector<Case> cases = {
      {"not json {", "bad_request"},
      {"[1, 2]", "bad_request"},
      {R"({"id": "a"})", "bad_request"},
      {R"({"id": "a", "tool": "nope"})", "unknown_tool"},
      {R"({"id": "a", "tool": "python", "arguments": {}})", "invalid_arguments"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": 5}})", "invalid_arguments"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": "1", "x": 1}})", "invalid_arguments"},
      {R"({"id": "a", "tool": "python", "arguments": "{not json"})", "invalid_arguments"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": "1"}, "limits": {"wall_ms": "x"}})",
       "invalid_arguments"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": "1"}, "limits": {"bogus": 1}})",
       "invalid_arguments"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": "1"}, "mode": "warp"})",
       "bad_request"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": "1"}, "session": "../etc"})",
       "bad_request"},
      {R"({"id": "a", "tool": "files", "session": "q", "arguments": {"action": "explode"}})",
       "invalid_arguments"},
      {R"({"id": "a", "op": "reboot"})", "bad_request"},
      {R"({"id": "a", "tool": "python", "arguments": {"code": ")" + std::string(2 << 20, 'x') +
           R"("}})",
       "too_large"},
  };
  for (auto& k : cases) {
    json r = ask(k.payload);
    EXPECT_EQ(r.value("status", ""), "error") << k.payload.substr(0, 100);
    ASSERT_TRUE(r.contains("error")) << k.payload.substr(0, 100);
    EXPECT_EQ(r["error"]["kind"], k.kind) << k.payload.substr(0, 100) << " " << r.dump();
    EXPECT_FALSE(r["error"]["message"].get<std::string>().empty());
  }
  // OpenAI-style string arguments are accepted, and an integer id is echoed as a string.
  json ok = ask(R"({"id": 7, "tool": "python", "arguments": "{\"code\": \"print(1)\"}"})");
  EXPECT_EQ(ok["status"], "ok") << ok.dump();
  EXPECT_EQ(ok["id"], "7");
  expect_healthy(c());
}

TEST_F(SandboxServer, SixteenClientsFiftyRequestsEach) {
  constexpr int kClients = 16, kRequests = 50;
  std::atomic<int> correct{0};
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      Client client({server_->endpoint(), 60000, 3});
      std::vector<std::future<Reply>> futures;
      for (int i = 0; i < kRequests; ++i) {
        std::string session = t % 4 == 0 ? "load-" + std::to_string(t) : "";
        futures.push_back(client.submit(make_call(
            "python",
            {{"code", "print(" + std::to_string(t) + " * 1000 + " + std::to_string(i) + ")"}},
            session)));
      }
      for (int i = 0; i < kRequests; ++i) {
        Reply r = futures[static_cast<size_t>(i)].get();
        if (r.status == "ok" && r.stdout_text == std::to_string(t * 1000 + i) + "\n") ++correct;
      }
    });
  }
  for (auto& th : threads) th.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(correct.load(), kClients * kRequests);
  std::printf("load: %d requests in %.2f s (%.0f/s)\n", kClients * kRequests, s,
              kClients * kRequests / s);
}

TEST_F(SandboxServer, KilledSandboxYieldsAClearErrorAndTheServerGoesOn) {
  auto fut = c().submit(make_call("python", {{"code", "import time\ntime.sleep(30)"}}, "victim",
                                  Mode::session, {{"wall_ms", 20000}}));
  pid_t victim = -1;
  for (int i = 0; i < 500 && victim < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    Reply st = c().admin("stats");
    for (auto& sb : st.result["sandboxes"])
      if (sb["name"] == "victim") victim = sb["pid"].get<pid_t>();
  }
  ASSERT_GT(victim, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the call is running
  auto killed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  Reply r = fut.get();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  EXPECT_EQ(r.status, "error") << describe(r);
  EXPECT_EQ(r.error_kind, "sandbox_died") << describe(r);
  EXPECT_TRUE(r.session_reset);
  EXPECT_LT(s, 3.0);
  expect_healthy(c());
  Reply again = python(c(), "print('new')", "victim");
  EXPECT_EQ(again.stdout_text, "new\n") << describe(again);
  // Killed while idle: the next call (whose request hits a closed pipe) says so, the one after
  // runs in a new interpreter.
  Reply st = c().admin("stats");
  for (auto& sb : st.result["sandboxes"])
    if (sb["name"] == "victim") kill(sb["pid"].get<pid_t>(), SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Reply dead = python(c(), "print('x')", "victim");
  EXPECT_EQ(dead.error_kind, "sandbox_died") << describe(dead);
  EXPECT_EQ(python(c(), "print('y')", "victim").stdout_text, "y\n");
}

TEST_F(SandboxServer, ClientTimeoutCountsQueueTime) {
  // One worker busy for 2 s; a call with a 500 ms budget queued behind it times out (client side
  // or, once it reaches a worker, as queue_timeout) without running.
  server_.reset();
  server_ = std::make_unique<LocalServer>(1);
  client_ = std::make_unique<Client>(ClientOptions{server_->endpoint(), 30000, 3});
  auto slow = c().submit(make_call("python", {{"code", "import time; time.sleep(2)"}}));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Request quick = make_call("python", {{"code", "open('/work/ran', 'w')"}});
  quick.timeout_ms = 500;
  auto t0 = std::chrono::steady_clock::now();
  Reply q = c().call(quick);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(q.status, "error");
  EXPECT_TRUE(q.error_kind == "client_timeout" || q.error_kind == "queue_timeout") << describe(q);
  EXPECT_LT(s, 1.5);
  EXPECT_EQ(slow.get().status, "ok");
}

TEST_F(SandboxServer, RestartedServerIsReconnectedTransparently) {
  EXPECT_EQ(python(c(), "print(1)").stdout_text, "1\n");
  std::string endpoint = server_->endpoint();
  server_.reset();  // the server goes away
  auto pending = c().submit(make_call("python", {{"code", "print(2)"}}));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server_ = std::make_unique<LocalServer>(2, endpoint);  // and comes back on the same endpoint
  Reply r = pending.get();
  EXPECT_EQ(r.status, "ok") << describe(r);
  EXPECT_EQ(r.stdout_text, "2\n");
  EXPECT_EQ(python(c(), "print(3)").stdout_text, "3\n");
}

pid_t spawn_sandboxd(const std::string& endpoint, const std::string& state_dir) {
  std::vector<std::string> args = {SHOAL_BINARY,  "sandboxd", "--bind",      endpoint,
                                   "--workers",   "2",        "--state-dir", state_dir,
                                   "--log-level", "warn"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  posix_spawn(&pid, SHOAL_BINARY, nullptr, nullptr, argv.data(), environ);
  return pid;
}

int mounts_under(const std::string& dir) {
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) n += line.find(" " + dir + "/") != std::string::npos;
  return n;
}

bool exits_cleanly(pid_t pid) {
  kill(pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 500 && waitpid(pid, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(SandboxDaemon, SigtermShutsDownCleanlyAndARestartSweepsLeftovers) {
  std::string name = unique_name("daemon");
  std::string state = "/tmp/shoal-sandbox-tests/" + name, endpoint = "ipc://" + state + ".sock";
  std::string other_state = state + "-other", other = "ipc://" + other_state + ".sock";
  pid_t first = spawn_sandboxd(endpoint, state);
  ASSERT_GT(first, 0);
  Client client({endpoint, 30000, 3});
  Reply a = python(client, "x = 1", "keep");
  ASSERT_EQ(a.status, "ok") << describe(a);
  EXPECT_EQ(mounts_under(state), 1);  // the session's workspace
  // Crash: SIGKILL leaves the workspace mount and the cgroups behind (the sandboxes themselves
  // die with their parent).
  kill(first, SIGKILL);
  waitpid(first, nullptr, 0);
  EXPECT_EQ(mounts_under(state), 1);
  // Any server that starts sweeps a dead server's leftovers, whatever its endpoint.
  pid_t second = spawn_sandboxd(other, other_state);
  {
    Client c2({other, 30000, 3});
    EXPECT_EQ(c2.admin("ping").status, "ok");
  }
  EXPECT_EQ(mounts_under(state), 0);
  // The same endpoint again: the first client reconnects by itself.
  pid_t third = spawn_sandboxd(endpoint, state);
  Reply b = python(client, "print('x' in globals())", "keep");
  EXPECT_EQ(b.status, "ok") << describe(b);
  EXPECT_EQ(b.stdout_text, "False\n");  // a new server: the session starts over
  EXPECT_EQ(mounts_under(state), 1);
  EXPECT_TRUE(exits_cleanly(third));
  EXPECT_TRUE(exits_cleanly(second));
  EXPECT_EQ(mounts_under(state), 0);
  EXPECT_EQ(settle_descendants(0), 0);
  std::error_code ec;
  std::filesystem::remove_all(state, ec);
  std::filesystem::remove_all(other_state, ec);
}

}  // namespace
}  // namespace shoal::sandbox::testing
