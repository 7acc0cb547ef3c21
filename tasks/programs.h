// Small generated programs for the code families (program_synthesis, bug_fixing): a typed pipeline
// of primitive steps over integers, strings and integer lists, evaluated exactly in C++ (the
// generator's ground truth) and rendered as Python (what the model reads and writes), plus the
// hidden-test check that runs submitted Python in the sandbox and compares its outputs with the
// C++ ones, and what both code families share (the python tool, the submission check, code
// blocks). Not a family and not a Python interpreter: only these primitives are evaluated here.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tasks/rng.h"
#include "tasks/task.h"

namespace shoal::tasks::programs {

enum class Kind { integer, text, list };  // int, str, list of int
std::string kind_name(Kind kind);         // "int", "str", "list"
std::string param_name(Kind kind);        // f's parameter in rendered code: "n", "s", "xs"

struct Value {
  Kind kind = Kind::integer;
  int64_t i = 0;
  std::string s;
  std::vector<int64_t> l;
  bool operator==(const Value&) const = default;
};
Value integer(int64_t i);
Value text(std::string s);
Value list(std::vector<int64_t> l);
// The value as Python source: 3, 'ab c', [1, -2].
std::string python_repr(const Value& v);
// The typed form the hidden-test harness prints: ["int", 3], ["str", "ab"],
// ["list", [["int", 1], ...]]. Comparing these (not Python's ==) keeps True apart from 1.
json typed(const Value& v);
Value value_from_typed(const json& j);  // throws Error for anything typed() does not make

// One step of a program: a primitive operation by name and its constant (when it takes one).
struct Step {
  std::string op;
  int64_t k = 0;
  bool operator==(const Step&) const = default;
};
struct Program {
  Kind input = Kind::list;
  std::vector<Step> steps;
  bool operator==(const Program&) const = default;
};
json to_json(const Program& p);
Program program_from_json(const json& j);  // throws Error naming an unknown op

Kind output_kind(const Program& p);
bool well_typed(const Program& p);  // each step takes what the one before gives
// Runs the program; nullopt when a value leaves the safe range (|n| > 10^12, a string over 4000
// characters), which generators treat as "pick another input".
std::optional<Value> run(const Program& p, const Value& input);
// The Python function `def f(<arg>):` with one statement (or short block) per step.
std::string render(const Program& p);
// The lines one step renders to (indented by four), for showing a bug and its fix.
std::vector<std::string> render_step(const Program& p, size_t step);
// The steps in words ("keep only the numbers greater than 3"), one per step.
std::vector<std::string> describe(const Program& p);
std::string describe_input(Kind kind);  // "a list of integers"

// ---- generation ----

// Every operation (slips included) as a one-step program, at its smallest and at its largest
// constant: what the tests run through Python to check the C++ twins.
std::vector<Program> one_step_programs();
// A random program of `depth` steps over `input`, every step needed (dropping one changes some
// output on `inputs`), no value out of range on `inputs`, at least three distinct outputs.
// nullopt after too many attempts.
std::optional<Program> random_program(Kind input, int depth, const std::vector<Value>& inputs,
                                      Rng& rng);
// The input kind of a code task: a list half the time, a string 30%, an integer 20% (one draw).
Kind random_kind(Rng& rng);
// `n` distinct random inputs of `kind` (bigger and with negatives as difficulty grows).
std::vector<Value> random_inputs(Kind kind, int difficulty, size_t n, Rng& rng);
// Inputs at the edges: empty list or string, zero, negatives, a single element, double spaces.
std::vector<Value> edge_inputs(Kind kind);
// Programs one edit away: a step replaced by another operation of the same types or by one of
// its slips, a constant one off.
std::vector<Program> neighbours(const Program& p);
// Slips of one step: the one-token bugs a person makes writing it (`>` for `>=`, `x - k` for
// `x + k`, `count += x` for `count += 1`, `split(' ')` for `split()`...).
std::vector<Step> slips(const Step& step);

// ---- what the model submits, and the checks ----

// The last ```python (or ```py, or bare ```) block of the final assistant message (one without
// tool calls); nullopt when there is none.
std::optional<std::string> submitted_code(const Episode& episode);
// Python that defines `code` and prints one line per example: "ok f(<in>) == <out>" or
// "MISMATCH f(<in>) returned <got>, expected <want>" (or the exception), for the python tool.
std::string example_runner(const std::string& code, const std::vector<Value>& inputs,
                           const std::vector<Value>& expected);
// The most characters a submission may have.
inline constexpr size_t kMaxSubmission = 20000;
// What the code families' check() does: the submission (submitted_code, at most kMaxSubmission
// characters) run by check_hidden_tests on the `shown` and then the `hidden` examples (each as
// examples_json makes them). No code block or an oversized one: 0 with the reason.
Reward check_submission(sandbox::Client& client, const Episode& episode, const json& shown,
                        const json& hidden);
// Runs `code` on `inputs` in the sandbox (a fresh forked interpreter, the submission loaded as
// module `solution`, each input deep-copied) and compares each output's typed form with
// `expected`. Reward 1 only when every output matches. The expected outputs never enter the
// sandbox, so printing or patching cannot fake a pass. Throws VerifierUnavailable when the
// sandbox could not run the check (unreachable, overloaded, failed to start).
Reward check_hidden_tests(sandbox::Client& client, const std::string& code,
                          const std::vector<Value>& inputs, const std::vector<Value>& expected);
// ```python, the code, ```: how the code families' prompts and answers show code.
std::string code_block(const std::string& code);
// The stdout of each python tool message of the episode, in order (the whole result when it has
// no stdout: an error).
std::vector<std::string> tool_stdouts(const Episode& episode);
// How many lines of `text` start with `prefix` (e.g. the example runner's "ok " lines).
size_t count_lines(const std::string& text, const std::string& prefix);
// The python tool for the code families: sandboxed, no session (each call starts fresh).
json python_tool_schema();
json run_python_tool(sandbox::Client& client, const json& args);
// The code families' per-episode state: only the client (the python tool keeps no session).
struct PythonToolState : EnvState {
  sandbox::Client* client = nullptr;
};
// The code families' Family::open and Family::call_tool: a state holding the client (an Error
// naming `family` without one), and the python tool as the only tool.
std::unique_ptr<EnvState> open_python_tool(const std::string& family, sandbox::Client* client);
json call_python_tool(EnvState* state, const std::string& name, const json& args);

// Examples as a task stores them: [{"input": typed, "output": typed}, ...].
json examples_json(const std::vector<Value>& inputs, const std::vector<Value>& outputs);
void examples_from_json(const json& j, std::vector<Value>& inputs, std::vector<Value>& outputs);

}  // namespace shoal::tasks::programs
