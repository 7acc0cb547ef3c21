// Family "arithmetic": a multi-step computation told as a short story, solved exactly with the
// calculator tool (the sandbox's in-process GMP calculator). Difficulty adds steps, larger
// operands, fractions and cubes. Not a word-problem generator with hidden reasoning: every step
// is stated; the skill is exact bookkeeping through tool calls.
#include <fmt/format.h>

#include "base/error.h"
#include "sandbox/calculator.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

struct Step {
  std::string op;  // add, subtract, multiply, divide, percent, cube
  int64_t operand = 0;
};

const std::vector<std::pair<std::string, std::string>> kThemes = {
    {"A warehouse holds {} crates.", "crates"},
    {"A reservoir contains {} litres of water.", "litres"},
    {"A research grant starts with {} credits.", "credits"},
    {"A seed bank stores {} seeds.", "seeds"},
    {"A rover has logged {} metres.", "metres"},
    {"A ledger opens at {} units.", "units"},
};

std::string describe(const Step& s) {
  if (s.op == "add") return fmt::format("{} more are added", s.operand);
  if (s.op == "subtract") return fmt::format("{} are taken away", s.operand);
  if (s.op == "multiply") return fmt::format("the amount is multiplied by {}", s.operand);
  if (s.op == "divide")
    return fmt::format("the amount is split into {} equal parts and one part is kept", s.operand);
  if (s.op == "percent") return fmt::format("only {}% of the amount is kept", s.operand);
  return "the amount is cubed";
}

// The calculator expression applying `s` to `value` (an exact "n" or "p/q").
std::string expression(const std::string& value, const Step& s) {
  std::string v = "(" + value + ")";
  if (s.op == "add") return fmt::format("{} + {}", v, s.operand);
  if (s.op == "subtract") return fmt::format("{} - {}", v, s.operand);
  if (s.op == "multiply") return fmt::format("{} * {}", v, s.operand);
  if (s.op == "divide") return fmt::format("{} / {}", v, s.operand);
  if (s.op == "percent") return fmt::format("{} * {} / 100", v, s.operand);
  return v + "^3";
}

json steps_to_json(const std::vector<Step>& steps) {
  json out = json::array();
  for (const auto& s : steps) out.push_back({{"op", s.op}, {"operand", s.operand}});
  return out;
}

std::vector<Step> steps_from_json(const json& j) {
  std::vector<Step> out;
  for (const auto& s : j)
    out.push_back({s.at("op").get<std::string>(), s.at("operand").get<int64_t>()});
  return out;
}

class ArithmeticFamily final : public Family {
 public:
  std::string name() const override { return "arithmetic"; }
  std::string description() const override {
    return "multi-step exact arithmetic told as a story, solved with the calculator tool";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    int64_t scale = 1;
    for (int i = 0; i < d + 1; ++i) scale *= 10;
    int64_t start = rng.uniform(scale / 10 + 1, scale * 9);
    int n_steps = d + 1 + rng.index(2);
    std::vector<std::string> ops = {"add", "subtract", "multiply"};
    if (d >= 2) ops.push_back("divide");
    if (d >= 3) ops.push_back("percent");
    std::vector<Step> steps;
    std::string value = std::to_string(start);
    bool cubed = false;
    for (int i = 0; i < n_steps; ++i) {
      Step s;
      s.op = rng.pick(ops);
      // One cube at difficulty >= 4, while the value is still small enough to read.
      if (d >= 4 && !cubed && i == n_steps - 2) {
        s.op = "cube";
        cubed = true;
      }
      if (s.op == "add" || s.op == "subtract") s.operand = rng.uniform(scale / 10 + 1, scale * 3);
      if (s.op == "multiply") s.operand = rng.uniform(2, d <= 2 ? 99 : 999);
      if (s.op == "divide") s.operand = rng.uniform(2, d <= 3 ? 12 : 97);
      if (s.op == "percent") s.operand = 5 * rng.uniform(1, 19);
      steps.push_back(s);
      value = sandbox::calculate(expression(value, s))["value"].get<std::string>();
    }
    const auto& theme = rng.pick(kThemes);
    std::string story = fmt::format(fmt::runtime(theme.first), start);
    for (size_t i = 0; i < steps.size(); ++i)
      story +=
          fmt::format(" {} {}.", i == 0 ? "First," : (i + 1 == steps.size() ? "Finally," : "Then"),
                      describe(steps[i]));
    story += fmt::format(
        " How many {} are there at the end? Give the exact value: a whole number, or a fraction "
        "p/q in lowest terms.",
        theme.second);
    t.messages = {message("system", system_prompt("Compute exactly; do not round.")),
                  message("user", story)};
    t.tools = json::array();
    for (const auto& tool : sandbox_calculator_schema()) t.tools.push_back(tool);
    t.environment = {{"start", start}, {"steps", steps_to_json(steps)}};
    t.verifier = {{"answer", value}};
    t.metadata = {{"steps", steps.size()}, {"theme", theme.second}};
    return t;
  }

  bool runs_in_sandbox(const std::string& tool) const override { return tool == "calculator"; }

  json call_tool(const Task&, EnvState*, const std::string& name, const json& args) const override {
    return call_calculator(name, args);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    return run(t, steps_from_json(t.environment["steps"]), -1, sb);
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    std::vector<Step> steps = steps_from_json(t.environment["steps"]);
    std::string gold = t.verifier["answer"];
    int kind = rng.index(4);
    Episode e;
    if (kind == 0) {  // a slip in one operand
      std::vector<int> with_operand;
      for (size_t i = 0; i < steps.size(); ++i)
        if (steps[i].op != "cube") with_operand.push_back(static_cast<int>(i));
      auto& s = steps[static_cast<size_t>(rng.pick(with_operand))];
      s.operand += s.op == "percent" ? 5 : 1;
      e = run(t, steps, -1, sb);
    } else if (kind == 1) {  // a step skipped
      steps.erase(steps.begin() + rng.index(steps.size()));
      e = run(t, steps, -1, sb);
    } else if (kind == 2) {  // stopped one step early
      e = run(t, steps, static_cast<int>(steps.size()) - 1, sb);
    } else {  // the right work, a rounded or mistyped answer
      e = run(t, steps, -1, sb);
      json v = sandbox::calculate(gold);
      std::string wrong = v["is_integer"].get<bool>()
                              ? sandbox::calculate(gold + " + 1")["value"].get<std::string>()
                              : rounded(v["decimal"].get<std::string>());
      e = with_answer(e, wrong);
    }
    // A change that happened to land on the gold value still must not pass as a perturbation.
    auto ans = final_answer(e);
    if (ans && numbers_equal(*ans, gold))
      e = with_answer(e, sandbox::calculate(gold + " - 1")["value"].get<std::string>());
    return e;
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    if (!is_plain_number(*ans))
      return fail("the answer is not a plain number: '" + ans->substr(0, 80) + "'",
                  {{"answer", 0}});
    if (!numbers_equal(*ans, t.verifier["answer"].get<std::string>()))
      return fail("wrong value " + ans->substr(0, 80), {{"answer", 0}});
    return pass("exact value", {{"answer", 1}});
  }

 private:
  static json sandbox_calculator_schema() {
    return json::array({function_tool(
        "calculator",
        "Exact arithmetic on big integers and fractions: + - * / // % ^ ! and parentheses. "
        "Returns the exact value (n or p/q) and a 40-digit decimal.",
        {{"expression", {{"type", "string"}, {"description", "e.g. (2^100 + 1) / 3"}}}},
        {"expression"})});
  }

  // Two decimals, the way a careless solver writes a fraction.
  static std::string rounded(const std::string& decimal) {
    size_t dot = decimal.find('.');
    if (dot == std::string::npos) return decimal;
    return decimal.substr(0, std::min(decimal.size(), dot + 3));
  }

  // Runs the steps through the calculator; answers after `stop_after` steps (-1: all).
  Episode run(const Task& t, const std::vector<Step>& steps, int stop_after,
              sandbox::Client* sb) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    std::string value = std::to_string(t.environment["start"].get<int64_t>());
    int n = stop_after < 0 ? static_cast<int>(steps.size()) : stop_after;
    for (int i = 0; i < n; ++i) {
      json r =
          tr.call("calculator", {{"expression", expression(value, steps[static_cast<size_t>(i)])}});
      SHOAL_CHECK(r.contains("value"), "calculator failed in a demonstration: {}", r.dump());
      value = r["value"].get<std::string>();
    }
    tr.say(
        fmt::format("After {} steps the amount is exactly {}.\n{}", n, value, answer_line(value)));
    return tr.take();
  }
};

}  // namespace

std::unique_ptr<Family> make_arithmetic_family() {
  return std::make_unique<ArithmeticFamily>();
}

}  // namespace shoal::tasks
