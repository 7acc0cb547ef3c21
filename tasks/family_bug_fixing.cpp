// Family "bug_fixing": a small generated Python function, described step by step, with one
// injected slip (two at difficulty 5): a swapped operator, a flipped or off-by-one comparison, a
// constant one off, a wrong variable (programs.h). The prompt shows the code and tests, some of
// which fail; the fix is the last ```python block of the final message, run in the sandbox on the
// tests and on hidden ones that each bug alone fails. Not program synthesis
// (family_program_synthesis.cpp): here the intent is spelled out and the code nearly right.
#include <fmt/format.h>

#include <algorithm>

#include "base/error.h"
#include "sandbox/client.h"
#include "tasks/programs.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

using namespace programs;

bool contains(const std::vector<Value>& v, const Value& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// The buggy function answering the failing tests by rote: passes every given test, still wrong.
std::string special_cased_code(const Program& buggy, const std::vector<Value>& in,
                               const std::vector<Value>& out) {
  std::string code = render(buggy);
  size_t body = code.find('\n') + 1;
  std::string arg = param_name(buggy.input);
  std::string cases;
  for (size_t i = 0; i < in.size(); ++i)
    if (run(buggy, in[i]) != out[i])
      cases += "    if " + arg + " == " + python_repr(in[i]) + ":\n        return " +
               python_repr(out[i]) + "\n";
  return code.substr(0, body) + cases + code.substr(body);
}

class BugFixingFamily final : public Family {
 public:
  std::string name() const override { return "bug_fixing"; }
  std::string description() const override {
    return "fix an injected bug in a small Python function; hidden tests run in the sandbox";
  }
  bool needs_sandbox() const override { return true; }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    Kind kind = random_kind(rng);
    int depth = std::vector<int>{1, 2, 3, 4, 4}[static_cast<size_t>(d - 1)];
    int n_bugs = d == 5 ? 2 : 1;
    std::vector<Value> pool = random_inputs(kind, d, 40, rng);
    if (d >= 3)  // boundary bugs only edge inputs reveal
      for (const Value& e : edge_inputs(kind))
        if (!contains(pool, e)) pool.push_back(e);
    size_t n_visible = static_cast<size_t>(3 + depth), n_hidden = static_cast<size_t>(10 + 2 * d);

    for (int attempt = 0; attempt < 200; ++attempt) {
      auto program = random_program(kind, depth, pool, rng);
      if (!program) continue;
      const Program& gold = *program;
      std::vector<int> sites;
      for (size_t i = 0; i < gold.steps.size(); ++i)
        if (!slips(gold.steps[i]).empty()) sites.push_back(static_cast<int>(i));
      if (std::ssize(sites) < n_bugs) continue;
      std::vector<int> bugs;
      for (int i : rng.sample(static_cast<int>(sites.size()), n_bugs))
        bugs.push_back(sites[static_cast<size_t>(i)]);
      std::sort(bugs.begin(), bugs.end());
      Program buggy = gold;
      std::vector<Program> alone;  // each bug by itself (and, with two, both together)
      for (int b : bugs) {
        Step slip = rng.pick(slips(gold.steps[static_cast<size_t>(b)]));
        buggy.steps[static_cast<size_t>(b)] = slip;
        Program one = gold;
        one.steps[static_cast<size_t>(b)] = slip;
        alone.push_back(one);
      }
      if (n_bugs > 1) alone.push_back(buggy);
      // Every bug must change some output, and every value must stay in range (Python's ints
      // do not overflow, so an out-of-range C++ value would be a wrong expectation).
      std::vector<Value> gold_out;
      bool ok = true;
      for (const Value& x : pool) {
        auto y = run(gold, x);
        ok = ok && y.has_value();
        for (const Program& b : alone) ok = ok && run(b, x).has_value();
        if (y) gold_out.push_back(*y);
      }
      if (!ok) continue;
      auto diff = [&](const Program& b) {
        std::vector<size_t> at;
        for (size_t i = 0; i < pool.size(); ++i)
          if (*run(b, pool[i]) != gold_out[i]) at.push_back(i);
        return at;
      };
      std::vector<size_t> failing = diff(buggy);
      size_t n_fail = d >= 4 ? 1 : 2;
      if (failing.size() < n_fail + 1) continue;

      // Tests shown: n_fail failing ones, the rest passing; hidden: for each bug alone an input it
      // fails that is not shown, then more inputs.
      std::vector<size_t> shown(failing.begin(),
                                failing.begin() + static_cast<std::ptrdiff_t>(n_fail));
      for (size_t i = 0; i < pool.size() && shown.size() < n_visible; ++i)
        if (*run(buggy, pool[i]) == gold_out[i]) shown.push_back(i);
      if (d >= 4 && shown.size() < 3) continue;  // one failing test among passing ones
      for (size_t i : failing)
        if (d < 4 && shown.size() < n_visible &&
            std::find(shown.begin(), shown.end(), i) == shown.end())
          shown.push_back(i);
      auto is_shown = [&](size_t i) {
        return std::find(shown.begin(), shown.end(), i) != shown.end();
      };
      std::vector<size_t> hidden;
      bool covered = true;
      for (const Program& b : alone) {
        std::vector<size_t> at = diff(b);
        auto it = std::find_if(at.begin(), at.end(), [&](size_t i) { return !is_shown(i); });
        if (it == at.end()) {
          covered = false;  // this bug would hide from the hidden tests
          break;
        }
        if (std::find(hidden.begin(), hidden.end(), *it) == hidden.end()) hidden.push_back(*it);
      }
      if (!covered) continue;
      for (size_t i = 0; i < pool.size() && hidden.size() < n_hidden; ++i)
        if (!is_shown(i) && std::find(hidden.begin(), hidden.end(), i) == hidden.end())
          hidden.push_back(i);
      rng.shuffle(shown);

      std::vector<Value> vin, vout, hin, hout;
      for (size_t i : shown) vin.push_back(pool[i]), vout.push_back(gold_out[i]);
      for (size_t i : hidden) hin.push_back(pool[i]), hout.push_back(gold_out[i]);
      std::string code = render(buggy);
      std::string text = fmt::format("The function `f` below takes {}. It should, in order:\n",
                                     describe_input(kind));
      std::vector<std::string> steps = describe(gold);
      for (size_t i = 0; i < steps.size(); ++i) text += fmt::format("{}. {}\n", i + 1, steps[i]);
      if (steps.back().rfind("return", 0) != 0)
        text += fmt::format("{}. return the result\n", steps.size() + 1);
      text += fmt::format(
          "\nIt has {} (a wrong operator, comparison, constant or variable), so some tests "
          "fail.\n\n{}\n\nTests:\n```python\n",
          n_bugs == 1 ? "a bug" : "two bugs", code_block(code));
      for (size_t i = 0; i < vin.size(); ++i)
        text += "assert f(" + python_repr(vin[i]) + ") == " + python_repr(vout[i]) + "\n";
      text +=
          "```\n\nFix the function. You may run code with the `python` tool. End your final "
          "message with the complete corrected function in one ```python code block: it is run "
          "on these tests and on hidden ones.";
      t.messages = {
          message("system", system_prompt("For a programming task the answer is code: end with a "
                                          "```python code block instead of an ANSWER line.")),
          message("user", text)};
      t.tools = json::array({python_tool_schema()});
      t.environment = {{"code", code}, {"tests", examples_json(vin, vout)}};
      t.verifier = {{"program", to_json(gold)},
                    {"buggy", to_json(buggy)},
                    {"bug_steps", bugs},
                    {"reference", render(gold)},
                    {"hidden", examples_json(hin, hout)}};
      t.metadata = {{"depth", depth},      {"bugs", n_bugs},          {"input", kind_name(kind)},
                    {"tests", vin.size()}, {"failing_tests", n_fail}, {"hidden_tests", hin.size()}};
      return t;
    }
    SHOAL_FAIL("bug_fixing: no program with a visible bug found for seed {}", seed);
  }

  std::unique_ptr<EnvState> open(const Task&, sandbox::Client* client) const override {
    return open_python_tool(name(), client);
  }

  json call_tool(const Task&, EnvState* state, const std::string& name,
                 const json& args) const override {
    return call_python_tool(state, name, args);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    Program gold = program_from_json(t.verifier["program"]);
    Program buggy = program_from_json(t.verifier["buggy"]);
    std::string why;
    for (int b : t.verifier["bug_steps"]) {
      auto bad = render_step(buggy, static_cast<size_t>(b));
      auto good = render_step(gold, static_cast<size_t>(b));
      for (size_t i = 0; i < std::min(bad.size(), good.size()); ++i)
        if (bad[i] != good[i])
          why += fmt::format(" `{}` should be `{}`.", trim(bad[i]), trim(good[i]));
    }
    Episode e = attempt(t, t.verifier["reference"], sb,
                        "The bug:" + why + " Running the tests on the fix.", "All tests pass now.");
    std::vector<std::string> outs = tool_stdouts(e);
    SHOAL_CHECK(outs.size() == 2 && count_lines(outs[0], "MISMATCH ") >= 1 &&
                    count_lines(outs[1], "ok ") == t.environment["tests"].size(),
                "bug_fixing seed {}: the buggy code should fail and the fix pass the tests:\n{}",
                t.seed, e.messages.dump(1));
    return e;
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    Program gold = program_from_json(t.verifier["program"]);
    Program buggy = program_from_json(t.verifier["buggy"]);
    std::vector<Value> vin, vout, in, out;
    examples_from_json(t.environment["tests"], vin, vout);
    in = vin, out = vout;
    examples_from_json(t.verifier["hidden"], in, out);
    auto fails = [&](const Program& q) {
      for (size_t i = 0; i < in.size(); ++i)
        if (run(q, in[i]) != out[i]) return true;
      return false;
    };
    std::vector<int> kinds = {0, 1, 2};
    rng.shuffle(kinds);
    for (int kind : kinds) {
      if (kind == 0)
        return attempt(t, render(buggy), sb, "",
                       "The code matches the description; the tests "
                       "must expect something else.");
      if (kind == 1) {  // a wrong fix: another edit at a bug's line, or one bug of two fixed
        std::vector<Program> wrong;
        std::vector<int> bug_steps = t.verifier["bug_steps"];
        for (const Program& q : neighbours(buggy)) {
          bool at_bug = false;
          for (int b : bug_steps)
            at_bug =
                at_bug || !(q.steps[static_cast<size_t>(b)] == buggy.steps[static_cast<size_t>(b)]);
          if (at_bug && fails(q)) wrong.push_back(q);
        }
        if (!wrong.empty())
          return attempt(t, render(rng.pick(wrong)), sb, "Changing the suspicious line.", "Fixed.");
      }
      if (kind == 2) {  // the failing tests answered by rote
        std::string code = special_cased_code(buggy, vin, vout);
        bool caught = false;
        for (size_t i = vin.size(); i < in.size(); ++i)
          caught = caught || (!contains(vin, in[i]) && run(buggy, in[i]) != out[i]);
        if (caught)
          return attempt(t, code, sb, "Handling the failing cases.", "All tests pass now.");
      }
    }
    return attempt(t, render(buggy), sb, "", "No change needed.");
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client* sb) const override {
    return check_submission(*sb, e, t.environment["tests"], t.verifier["hidden"]);
  }

 private:
  // Runs the given code on the tests, then (with a thought) the candidate, then submits it.
  Episode attempt(const Task& t, const std::string& candidate, sandbox::Client* sb,
                  const std::string& thought, const std::string& claim) const {
    std::vector<Value> in, out;
    examples_from_json(t.environment["tests"], in, out);
    Environment env(*this, t, sb);
    Trajectory tr(env);
    tr.call("python", {{"code", example_runner(t.environment["code"], in, out)}},
            "First, the tests on the code as it is.");
    if (!thought.empty())
      tr.call("python", {{"code", example_runner(candidate, in, out)}}, thought);
    tr.say(claim + "\n\n" + code_block(candidate));
    return tr.take();
  }
};

}  // namespace

std::unique_ptr<Family> make_bug_fixing_family() {
  return std::make_unique<BugFixingFamily>();
}

}  // namespace shoal::tasks
