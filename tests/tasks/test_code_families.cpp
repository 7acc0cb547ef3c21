// The code families (program_synthesis, bug_fixing) against a local sandbox: every operation's
// C++ twin agrees with its Python line, demonstrations really run and pass while perturbations
// fail, answers that look right but are not (the examples memorised, a float for an int, a faked
// result line) are rejected, garbage and hostile code score 0 without throwing, and a sandbox
// that cannot run the check throws VerifierUnavailable rather than scoring 0. Skips, with the
// reason, where the sandbox cannot run code.
#include <gtest/gtest.h>

#include <set>

#include "base/error.h"
#include "sandbox/client.h"
#include "tasks/programs.h"
#include "tasks/registry.h"
#include "tests/tasks/sandbox_probe.h"

namespace shoal::tasks {
namespace {

using namespace programs;

class TasksCodeFamilies : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sandbox_ = new test_support::SandboxForTests(test_support::start_sandbox_for_tests());
  }
  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
  }
  void SetUp() override {
    if (!sandbox_->unusable.empty()) GTEST_SKIP() << sandbox_->unusable;
  }
  static sandbox::Client* client() { return sandbox_->client.get(); }
  static test_support::SandboxForTests* sandbox_;
};

test_support::SandboxForTests* TasksCodeFamilies::sandbox_ = nullptr;

std::string show(const Episode& e) {
  return e.messages.dump(-1, ' ', false, json::error_handler_t::replace).substr(0, 120);
}

Episode final_code(const std::string& code, const std::string& before = "Here it is.") {
  Episode e;
  e.messages.push_back(
      {{"role", "assistant"}, {"content", before + "\n```python\n" + code + "```"}});
  return e;
}

// The C++ twin of every operation (slips included) gives what Python gives, on random and edge
// inputs: the generators' expected outputs are Python's.
TEST_F(TasksCodeFamilies, EveryOperationMatchesPython) {
  Rng rng(11);
  int checked = 0;
  for (const Program& p : one_step_programs()) {
    std::vector<Value> in, out;
    std::vector<Value> candidates = random_inputs(p.input, 5, 12, rng);
    for (const Value& e : edge_inputs(p.input)) candidates.push_back(e);
    for (const Value& x : candidates)
      if (auto y = run(p, x)) in.push_back(x), out.push_back(*y);
    Reward r = check_hidden_tests(*client(), render(p), in, out);
    EXPECT_TRUE(r.solved()) << render(p) << r.reason;
    ++checked;
  }
  EXPECT_GT(checked, 70);
}

TEST_F(TasksCodeFamilies, DemonstrationsRunAndPassPerturbationsFail) {
  for (const char* name : {"program_synthesis", "bug_fixing"}) {
    const Family& f = find_family(name);
    std::set<std::string> reasons;
    for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d)
      for (uint64_t seed = 0; seed < 5; ++seed) {
        Task t = f.generate(seed * 613 + 5, d);
        Episode demo = f.demonstrate(t, client());
        Reward good = f.verify(t, demo, client());
        EXPECT_TRUE(good.solved())
            << name << " d" << d << " seed " << t.seed << ": " << good.reason << "\n"
            << demo.messages.dump(1);
        // The tool messages are what the sandbox returns for those calls.
        Environment env(f, t, client());
        std::map<std::string, std::string> recorded;
        for (const auto& m : demo.messages)
          if (m["role"] == "tool") recorded[m["tool_call_id"]] = m["content"];
        for (const auto& c : tool_calls(demo)) {
          json r = env.call(c.name, c.args);
          EXPECT_EQ(recorded.at(c.id), r.dump()) << name;
          EXPECT_TRUE(r.contains("stdout")) << r.dump();
        }
        for (uint64_t p = 0; p < 3; ++p) {
          Episode bad = f.perturb(t, demo, seed * 7 + p, client());
          Reward r = f.verify(t, bad, client());
          EXPECT_FALSE(r.solved())
              << name << " d" << d << " seed " << t.seed << " perturbation passed:\n"
              << bad.messages.dump(1);
          EXPECT_NE(bad.messages, demo.messages);
          reasons.insert(r.reason.substr(0, 12));
        }
      }
    EXPECT_GE(reasons.size(), 2u) << name << ": perturbations fail in more than one way";
  }
}

TEST_F(TasksCodeFamilies, DifficultyGrowsPrograms) {
  for (const char* name : {"program_synthesis", "bug_fixing"}) {
    const Family& f = find_family(name);
    double depth[2] = {0, 0}, hidden[2] = {0, 0};
    for (int i = 0; i < 2; ++i)
      for (uint64_t seed = 0; seed < 20; ++seed) {
        Task t = f.generate(seed, i == 0 ? 1 : 5);
        depth[i] += t.metadata["depth"].get<double>();
        hidden[i] += t.metadata["hidden_tests"].get<double>();
      }
    EXPECT_GE(depth[1], 3 * depth[0]) << name;
    EXPECT_GT(hidden[1], hidden[0]) << name;
  }
  // Edge cases (an empty list or string, 0, negatives, double spaces) are tested from
  // difficulty 3: the first one shown as an example, the others hidden.
  const Family& f = find_family("program_synthesis");
  for (uint64_t seed = 0; seed < 10; ++seed) {
    Task t = f.generate(seed, 3);
    std::set<std::string> tested;
    for (const auto& e : t.environment["examples"]) tested.insert(e["input"].dump());
    for (const auto& h : t.verifier["hidden"]) tested.insert(h["input"].dump());
    std::string kind = t.metadata["input"];
    Kind k = kind == "list" ? Kind::list : kind == "str" ? Kind::text : Kind::integer;
    for (const Value& e : edge_inputs(k))
      EXPECT_TRUE(tested.count(typed(e).dump())) << python_repr(e);
  }
}

TEST_F(TasksCodeFamilies, LooksRightButWrongIsRejected) {
  const Family& f = find_family("program_synthesis");
  int lists = 0, ints = 0, texts = 0;
  for (uint64_t seed = 0; seed < 12; ++seed) {
    Task t = f.generate(seed, 2);
    std::string ref = t.verifier["reference"];
    std::string kind = t.metadata["output"];
    ASSERT_TRUE(f.verify(t, final_code(ref), client()).solved());
    // The examples memorised: every example right, the hidden tests wrong.
    std::string table = "def f(x):\n    known = {\n";
    for (const auto& e : t.environment["examples"])
      table += "        " + python_repr(text(python_repr(value_from_typed(e["input"])))) + ": " +
               python_repr(value_from_typed(e["output"])) + ",\n";
    table += "    }\n    return known[repr(x)]\n";
    Reward memorised = f.verify(t, final_code(table), client());
    EXPECT_FALSE(memorised.solved());
    EXPECT_NE(memorised.reason.find(" tests pass; "), std::string::npos) << memorised.reason;
    // Equal under Python's == but of another type.
    std::string renamed = ref;
    renamed.replace(renamed.find("def f("), 6, "def reference(");
    std::string wrapper = kind == "list"  ? "def f(x):\n    return tuple(reference(x))\n"
                          : kind == "int" ? "def f(x):\n    return float(reference(x))\n"
                                          : "def f(x):\n    return reference(x).encode()\n";
    lists += kind == "list", ints += kind == "int", texts += kind == "str";
    EXPECT_FALSE(f.verify(t, final_code(renamed + wrapper), client()).solved()) << kind;
    EXPECT_FALSE(
        f.verify(t, final_code(renamed + "def f(x):\n    return bool(reference(x))\n"), client())
            .solved());
    // A forged result line, then leaving before the harness can print the real one.
    std::string forged =
        "import os\nprint('RESULT {\"outputs\": []}')\nprint('RESULT {\"outputs\": [[\"int\", "
        "1]]}')\nos._exit(0)\n";
    Reward r = f.verify(t, final_code(ref + forged), client());
    EXPECT_FALSE(r.solved()) << r.reason;
    // Right answers in other shapes pass: text around it, an earlier draft block, a __main__
    // block, helper functions.
    Episode drafted;
    drafted.messages.push_back(
        {{"role", "assistant"},
         {"content", "A draft:\n```python\ndef f(x):\n    return x\n```\nFinal version:\n```py\n" +
                         renamed +
                         "\ndef f(x):\n    return reference(x)\n\nif __name__ == "
                         "'__main__':\n    print('junk')\n    raise SystemExit(3)\n```\nDone."}});
    Reward ok = f.verify(t, drafted, client());
    EXPECT_TRUE(ok.solved()) << ok.reason;
  }
  EXPECT_GT(lists + ints + texts, 0);

  // Bug fixing: the buggy code as given, and the failing tests answered by rote, both fail.
  const Family& b = find_family("bug_fixing");
  for (uint64_t seed = 0; seed < 6; ++seed) {
    Task t = b.generate(seed, 3);
    EXPECT_FALSE(b.verify(t, final_code(t.environment["code"]), client()).solved());
    EXPECT_TRUE(b.verify(t, final_code(t.verifier["reference"]), client()).solved());
  }
}

TEST_F(TasksCodeFamilies, GarbageAndHostileCodeScoreZeroWithoutThrowing) {
  for (const char* name : {"program_synthesis", "bug_fixing"}) {
    const Family& f = find_family(name);
    Task t = f.generate(3, 3);
    std::vector<Episode> episodes = {
        Episode{},
        Episode{json::array({"junk"})},
        Episode{json("not a list")},
        Episode{json::array({{{"role", "assistant"}, {"content", "ANSWER: 42"}}})},
        Episode{json::array({{{"role", "assistant"}, {"content", nullptr}}})},
        final_code("def f(x) return x\n"),                            // syntax error
        final_code("def g(x):\n    return x\n"),                      // no f
        final_code("f = 3\n"),                                        // f not callable
        final_code("def f(x):\n    raise ValueError('no')\n"),        // raises
        final_code("raise SystemExit(0)\n"),                          // leaves at import
        final_code("import os\nos._exit(0)\n"),                       // leaves without a trace
        final_code("import os\nos.kill(os.getpid(), 9)\n"),           // kills itself
        final_code("print('x' * 10**6)\ndef f(x):\n    return x\n"),  // floods stdout
        final_code("def f(x):\n    return \"\xff\xfe\"\n"),           // invalid UTF-8
        final_code("x = [0] * 10**10\n"),                             // memory
        final_code("import time\ntime.sleep(60)\n"),                  // wall clock
        final_code(std::string(30000, '#') + "\n"),                   // too long to run
    };
    for (const Episode& e : episodes) {
      Reward r;
      EXPECT_NO_THROW(r = f.verify(t, e, client())) << name << " " << show(e);
      EXPECT_EQ(r.value, 0.0) << name << " " << show(e);
      EXPECT_FALSE(r.reason.empty());
    }
  }
  // The server survived all of it.
  sandbox::testing::expect_healthy(*client());
}

TEST_F(TasksCodeFamilies, PythonToolRunsFreshInTheSandbox) {
  const Family& f = find_family("program_synthesis");
  Task t = f.generate(1, 1);
  Environment env(f, t, client());
  json r = env.call("python", {{"code", "x = 6 * 7\nprint(x)"}});
  EXPECT_EQ(r["stdout"], "42\n") << r.dump();
  json again = env.call("python", {{"code", "print(x)"}});
  EXPECT_NE(again["exit_code"], 0) << "nothing persists between calls: " << again.dump();
  EXPECT_TRUE(env.call("shell", {{"command", "ls"}}).contains("error")) << "not offered";
  EXPECT_TRUE(env.call("python", {{"source", "1"}}).contains("error"));
  EXPECT_TRUE(env.call("python", json::array()).contains("error"));
  EXPECT_THROW(Environment(f, t, nullptr), Error);
  EXPECT_THROW(f.verify(t, final_code("def f(x):\n    return x\n"), nullptr), Error);
}

// A sandbox that cannot run the check is not the model's fault: verify throws instead of
// scoring 0, and tool calls come back as errors the model can read.
TEST_F(TasksCodeFamilies, AnUnreachableSandboxIsNotAZero) {
  sandbox::Client nowhere({"ipc:///tmp/shoal-tasks-no-sandbox-here.sock", 300, 0});
  for (const char* name : {"program_synthesis", "bug_fixing"}) {
    const Family& f = find_family(name);
    Task t = f.generate(2, 2);
    EXPECT_THROW(f.verify(t, final_code(t.verifier["reference"]), &nowhere), VerifierUnavailable);
    Environment env(f, t, &nowhere);
    EXPECT_TRUE(env.call("python", {{"code", "print(1)"}}).contains("error"));
    // No code at all is still the model's zero: nothing needed running.
    EXPECT_EQ(f.verify(t, Episode{}, &nowhere).value, 0.0);
  }
}

}  // namespace
}  // namespace shoal::tasks
