// Family "program_synthesis": write a Python function from input/output examples. The generator
// composes a small pipeline of primitives (programs.h); the prompt shows examples chosen to rule
// out the programs one edit away, and hidden tests (more inputs, edge cases from difficulty 3) run
// the submission in the sandbox. The submission is the last
// ```python block of the final message. Not bug fixing (family_bug_fixing.cpp).
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

std::string describe_output(Kind k) {
  return k == Kind::list ? "a list of integers" : k == Kind::text ? "a string" : "an integer";
}

// A lookup table of the visible examples with a default for everything else: passes the
// examples, fails the hidden tests.
std::string lookup_table_code(const Program& p, const std::vector<Value>& in,
                              const std::vector<Value>& out) {
  std::string arg = param_name(p.input);
  Kind ok = output_kind(p);
  std::string fallback = ok == Kind::list ? "[]" : ok == Kind::text ? "''" : "0";
  std::string s = "def f(" + arg + "):\n    table = {\n";
  for (size_t i = 0; i < in.size(); ++i)
    s += "        " + python_repr(text(python_repr(in[i]))) + ": " + python_repr(out[i]) + ",\n";
  return s + "    }\n    return table.get(repr(" + arg + "), " + fallback + ")\n";
}

class ProgramSynthesisFamily final : public Family {
 public:
  std::string name() const override { return "program_synthesis"; }
  std::string description() const override {
    return "write a Python function from input/output examples; hidden tests run in the sandbox";
  }
  bool needs_sandbox() const override { return true; }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    Kind kind = random_kind(rng);
    int depth = std::vector<int>{1, 2, 3, 3, 4}[static_cast<size_t>(d - 1)];
    bool edges = d >= 3;
    std::vector<Value> pool = random_inputs(kind, d, 48, rng);
    SHOAL_CHECK(pool.size() == 48, "program_synthesis: too few distinct inputs for seed {}", seed);
    std::vector<Value> checked = pool;
    if (edges)
      for (const Value& e : edge_inputs(kind)) checked.push_back(e);
    auto program = random_program(kind, depth, checked, rng);
    SHOAL_CHECK(program, "program_synthesis: no program found for seed {}", seed);
    const Program& p = *program;

    // Visible examples: the first few, then one for each near-miss program they do not yet rule
    // out (when the spare inputs can); hidden tests: the other inputs, plus the edge cases.
    size_t n_visible = static_cast<size_t>(3 + depth);
    std::vector<Value> visible(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(n_visible));
    std::vector<Value> spare(pool.begin() + static_cast<std::ptrdiff_t>(n_visible),
                             pool.begin() + 24);
    if (edges) visible.push_back(edge_inputs(kind)[0]);
    for (const Program& q : neighbours(p)) {
      if (visible.size() >= n_visible + 4) break;
      auto differs = [&](const Value& x) { return run(q, x) != run(p, x); };
      if (std::any_of(visible.begin(), visible.end(), differs)) continue;
      auto it = std::find_if(spare.begin(), spare.end(), differs);
      if (it == spare.end()) continue;
      visible.push_back(*it);
      spare.erase(it);
    }
    std::vector<Value> hidden(pool.begin() + 24,
                              pool.begin() + 24 + static_cast<std::ptrdiff_t>(8 + 2 * d));
    if (edges)
      for (const Value& e : edge_inputs(kind))
        if (std::find(visible.begin(), visible.end(), e) == visible.end()) hidden.push_back(e);
    auto outputs = [&](const std::vector<Value>& in) {
      std::vector<Value> out;
      for (const Value& x : in) out.push_back(*run(p, x));
      return out;
    };

    std::string arg = param_name(kind);
    std::string text = fmt::format(
        "Write a Python function `f({})` that takes {} and returns {}, matching these "
        "examples:\n\n```python\n",
        arg, describe_input(kind), describe_output(output_kind(p)));
    std::vector<Value> visible_out = outputs(visible);
    for (size_t i = 0; i < visible.size(); ++i)
      text += "f(" + python_repr(visible[i]) + ") == " + python_repr(visible_out[i]) + "\n";
    text += fmt::format(
        "```\n\nHidden tests check it on more inputs of the same kind{}. You may run code with the "
        "`python` tool. End your final message with the complete function in one ```python code "
        "block: that block is what gets tested.",
        edges ? ", edge cases included" : "");
    t.messages = {message("system", system_prompt("For a programming task the answer is code: end "
                                                  "with a ```python code block instead of an "
                                                  "ANSWER line.")),
                  message("user", text)};
    t.tools = json::array({python_tool_schema()});
    t.environment = {{"examples", examples_json(visible, visible_out)}};
    t.verifier = {{"program", to_json(p)},
                  {"reference", render(p)},
                  {"hidden", examples_json(hidden, outputs(hidden))}};
    t.metadata = {{"depth", depth},
                  {"input", kind_name(kind)},
                  {"output", kind_name(output_kind(p))},
                  {"examples", visible.size()},
                  {"hidden_tests", hidden.size()}};
    return t;
  }

  std::unique_ptr<EnvState> open(const Task&, sandbox::Client* client) const override {
    return open_python_tool(name(), client);
  }

  json call_tool(const Task&, EnvState* state, const std::string& name,
                 const json& args) const override {
    return call_python_tool(state, name, args);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    std::string reference = t.verifier["reference"];
    Episode e = attempt(t, reference, sb, "Let me write the function and run it on the examples.");
    size_t examples = t.environment["examples"].size();
    std::vector<std::string> outs = tool_stdouts(e);
    std::string out = outs.empty() ? "" : outs[0];
    SHOAL_CHECK(count_lines(out, "ok ") == examples,
                "program_synthesis seed {}: the reference does not pass its examples:\n{}", t.seed,
                out);
    return e;
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    Program p = program_from_json(t.verifier["program"]);
    std::vector<Value> vin, vout, hin, hout;
    examples_from_json(t.environment["examples"], vin, vout);
    examples_from_json(t.verifier["hidden"], hin, hout);
    auto fails_hidden = [&](const Program& q) {
      for (size_t i = 0; i < hin.size(); ++i)
        if (run(q, hin[i]) != hout[i]) return true;
      return false;
    };
    std::vector<int> kinds = {0, 1, 2};
    rng.shuffle(kinds);
    for (int kind : kinds) {
      if (kind == 0) {  // the examples memorised
        Kind ok = output_kind(p);
        Value fallback = ok == Kind::list ? list({}) : ok == Kind::text ? text("") : integer(0);
        bool fails = false;
        for (size_t i = 0; i < hin.size(); ++i)
          fails = fails || (std::find(vin.begin(), vin.end(), hin[i]) == vin.end() &&
                            !(hout[i] == fallback));
        if (fails)
          return attempt(t, lookup_table_code(p, vin, vout), sb,
                         "The examples are all I know about f, so I will return exactly them.");
      } else if (kind == 1) {  // a program one edit away
        std::vector<Program> near;
        for (const Program& q : neighbours(p))
          if (fails_hidden(q)) near.push_back(q);
        if (!near.empty())
          return attempt(t, render(rng.pick(near)), sb,
                         "Let me write the function and run it on the examples.");
      } else if (p.steps.size() > 1) {  // a step left out (where the rest still chains)
        int n = static_cast<int>(p.steps.size());
        for (int i : rng.sample(n, n)) {
          Program q = p;
          q.steps.erase(q.steps.begin() + i);
          if (well_typed(q) && fails_hidden(q))
            return attempt(t, render(q), sb,
                           "Let me write the function and run it on the examples.");
        }
      }
    }
    // Nothing plausible differs on the tests: a function that returns nothing.
    return attempt(t, "def f(x):\n    pass\n", sb, "A first stub.");
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client* sb) const override {
    return check_submission(*sb, e, t.environment["examples"], t.verifier["hidden"]);
  }

 private:
  // One python call running `code` on the visible examples, then the final message with it.
  Episode attempt(const Task& t, const std::string& code, sandbox::Client* sb,
                  const std::string& thought) const {
    std::vector<Value> in, out;
    examples_from_json(t.environment["examples"], in, out);
    Environment env(*this, t, sb);
    Trajectory tr(env);
    tr.call("python", {{"code", example_runner(code, in, out)}}, thought);
    tr.say(fmt::format("The function passes the {} examples.\n\n{}", in.size(), code_block(code)));
    return tr.take();
  }
};

}  // namespace

std::unique_ptr<Family> make_program_synthesis_family() {
  return std::make_unique<ProgramSynthesisFamily>();
}

}  // namespace shoal::tasks
