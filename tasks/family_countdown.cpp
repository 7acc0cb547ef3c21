// Family "countdown": reach a target with + - * / over given numbers (the 24 game at low
// difficulty, Countdown's numbers round above). Any expression that evaluates exactly to the
// target with the allowed numbers is right, checked by a safe exact-rational parser
// (expression.h). Not a search benchmark: the generator builds or finds one solution to show.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>

#include "base/error.h"
#include "tasks/expression.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

struct Term {
  Rational value;
  std::string text;
  bool leaf = true;
};

// All ways of combining two terms (each result parenthesised unless a leaf).
std::vector<Term> combine(const Term& a, const Term& b) {
  auto wrap = [](const Term& t) { return t.leaf ? t.text : "(" + t.text + ")"; };
  std::vector<Term> out;
  auto push = [&](const std::string& op, const Term& x, const Term& y) {
    Evaluation e = evaluate_expression(wrap(x) + " " + op + " " + wrap(y));
    if (e.ok) out.push_back({e.value, wrap(x) + " " + op + " " + wrap(y), false});
  };
  push("+", a, b);
  push("*", a, b);
  push("-", a, b);
  push("-", b, a);
  if (b.value.num != 0) push("/", a, b);
  if (a.value.num != 0) push("/", b, a);
  return out;
}

// Exhaustive search using all terms (for 4 numbers: a few thousand combinations).
bool solve_all(std::vector<Term> terms, const Rational& target, std::string& found) {
  if (terms.size() == 1) {
    if (terms[0].value == target) return found = terms[0].text, true;
    return false;
  }
  for (size_t i = 0; i < terms.size(); ++i)
    for (size_t j = i + 1; j < terms.size(); ++j) {
      std::vector<Term> rest;
      for (size_t k = 0; k < terms.size(); ++k)
        if (k != i && k != j) rest.push_back(terms[k]);
      for (Term& c : combine(terms[i], terms[j])) {
        rest.push_back(c);
        if (solve_all(rest, target, found)) return true;
        rest.pop_back();
      }
    }
  return false;
}

// Checks an answer against the rules; "" when it is right, else why not.
std::string judge(const std::string& answer, const std::vector<int64_t>& numbers, int64_t target,
                  bool use_all) {
  std::string expr = answer;
  // "expr = 24" restates the target: allowed, but only with the right target.
  size_t eq = expr.find('=');
  if (eq != std::string::npos) {
    std::string rhs = trim(expr.substr(eq + 1));
    if (rhs != std::to_string(target))
      return "the expression is claimed to equal " + rhs.substr(0, 20);
    expr = expr.substr(0, eq);
  }
  Evaluation e = evaluate_expression(expr);
  if (!e.ok) return "not a valid expression: " + e.error;
  std::map<int64_t, int> have, used;
  for (int64_t n : numbers) ++have[n];
  for (int64_t n : e.numbers) ++used[n];
  for (auto [n, k] : used) {
    if (have[n] == 0) return fmt::format("uses {}, which is not one of the numbers", n);
    if (k > have[n]) return fmt::format("uses {} more often than given", n);
  }
  if (use_all && e.numbers.size() != numbers.size()) return "does not use every number";
  if (!(e.value == Rational{target, 1}))
    return "evaluates to " + e.value.str() + ", not " + std::to_string(target);
  return "";
}

class CountdownFamily final : public Family {
 public:
  std::string name() const override { return "countdown"; }
  std::string description() const override {
    return "reach a target number with + - * / over given numbers (24 game, Countdown)";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    std::vector<int64_t> numbers;
    int64_t target = 24;
    std::string solution;
    bool use_all = d <= 2 || d == 5;
    if (d <= 2) {
      // The 24 game: resample until solvable.
      for (int attempt = 0; solution.empty(); ++attempt) {
        SHOAL_CHECK(attempt < 1000, "countdown: no solvable 24 set found");
        numbers.clear();
        std::vector<Term> terms;
        for (int i = 0; i < 4; ++i) {
          numbers.push_back(rng.uniform(1, d == 1 ? 9 : 13));
          terms.push_back({{numbers.back(), 1}, std::to_string(numbers.back()), true});
        }
        solve_all(terms, {24, 1}, solution);
      }
    } else {
      int n = d == 3 ? 5 : 6;
      int large = d == 3 ? 1 : 2;
      std::vector<int64_t> bigs = {25, 50, 75, 100};
      rng.shuffle(bigs);
      for (;;) {
        numbers.clear();
        for (int i = 0; i < large; ++i) numbers.push_back(bigs[static_cast<size_t>(i)]);
        while (static_cast<int>(numbers.size()) < n) numbers.push_back(rng.uniform(1, 10));
        // A random expression over all numbers (difficulty 5) or a random subset of 3+ of them.
        int k = use_all ? n : static_cast<int>(rng.uniform(3, n));
        std::vector<int> pick = rng.sample(n, k);
        std::vector<Term> terms;
        for (int i : pick) {
          int64_t v = numbers[static_cast<size_t>(i)];
          terms.push_back({{v, 1}, std::to_string(v), true});
        }
        while (terms.size() > 1) {
          int i = rng.index(terms.size());
          Term a = terms[static_cast<size_t>(i)];
          terms.erase(terms.begin() + i);
          int j = rng.index(terms.size());
          Term b = terms[static_cast<size_t>(j)];
          terms.erase(terms.begin() + j);
          std::vector<Term> options = combine(a, b);
          terms.push_back(options[static_cast<size_t>(rng.index(options.size()))]);
        }
        const Term& r = terms[0];
        bool in_set = std::find(numbers.begin(), numbers.end(), r.value.num) != numbers.end();
        if (r.value.den == 1 && r.value.num >= 100 && r.value.num <= 999 && !in_set) {
          target = r.value.num;
          solution = r.text;
          break;
        }
      }
      rng.shuffle(numbers);
    }
    std::string list;
    for (size_t i = 0; i < numbers.size(); ++i)
      list += (i ? ", " : "") + std::to_string(numbers[i]);
    std::string rule = use_all ? "Use every number exactly once"
                               : "Use each number at most once (you need not use all)";
    t.messages = {
        message("system",
                system_prompt("The answer is the expression itself, e.g. `ANSWER: (8 - 4) * 6`.")),
        message("user", fmt::format("Numbers: {}. Target: {}. {}, with + - * / and parentheses, "
                                    "to make exactly {}. Fractions along the way are fine.",
                                    list, target, rule, target))};
    t.tools = json::array({function_tool(
        "calculator", "Exact arithmetic on integers and fractions: + - * / ^ and parentheses.",
        {{"expression", {{"type", "string"}, {"description", "e.g. (8 - 4) * 6"}}}},
        {"expression"})});
    t.environment = {{"numbers", numbers}, {"target", target}, {"use_all", use_all}};
    t.verifier = {
        {"numbers", numbers}, {"target", target}, {"use_all", use_all}, {"solution", solution}};
    t.metadata = {{"count", numbers.size()}};
    return t;
  }

  bool runs_in_sandbox(const std::string& tool) const override { return tool == "calculator"; }

  json call_tool(const Task&, EnvState*, const std::string& name, const json& args) const override {
    return call_calculator(name, args);
  }

  Episode demonstrate(const Task& t, sandbox::Client* sb) const override {
    return run(t, t.verifier["solution"], sb);
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed,
                  sandbox::Client* sb) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    std::string gold = t.verifier["solution"];
    auto numbers = t.verifier["numbers"].get<std::vector<int64_t>>();
    int64_t target = t.verifier["target"];
    bool use_all = t.verifier["use_all"];
    // Positions of operators and numbers in the solution text.
    std::vector<size_t> ops, leaves;
    for (size_t i = 0; i + 2 < gold.size(); ++i)
      if (gold[i] == ' ' && std::string("+-*/").find(gold[i + 1]) != std::string::npos &&
          gold[i + 2] == ' ')
        ops.push_back(i + 1);
    for (size_t i = 0; i < gold.size(); ++i)
      if (std::isdigit(static_cast<unsigned char>(gold[i])) &&
          (i == 0 || !std::isdigit(static_cast<unsigned char>(gold[i - 1]))))
        leaves.push_back(i);
    auto replace_leaf = [&](size_t at, int64_t v) {
      size_t end = at;
      while (end < gold.size() && std::isdigit(static_cast<unsigned char>(gold[end]))) ++end;
      return gold.substr(0, at) + std::to_string(v) + gold.substr(end);
    };
    for (int attempt = 0; attempt < 50; ++attempt) {
      std::string wrong;
      switch (rng.index(3)) {
        case 0: {  // one operator slipped; still claimed to hit the target
          std::string w = gold;
          char& c = w[ops[static_cast<size_t>(rng.index(ops.size()))]];
          std::string others;
          for (char o : std::string("+-*/"))
            if (o != c) others += o;
          c = others[static_cast<size_t>(rng.index(others.size()))];
          wrong = w + " = " + std::to_string(target);
          break;
        }
        case 1:  // a number reused in place of another
          wrong = replace_leaf(leaves[static_cast<size_t>(rng.index(leaves.size()))],
                               numbers[static_cast<size_t>(rng.index(numbers.size()))]);
          break;
        default: {  // hits the target, but only by bringing in a number not given
          std::string w = replace_leaf(leaves[static_cast<size_t>(rng.index(leaves.size()))],
                                       rng.uniform(1, 12));
          Evaluation e = evaluate_expression(w);
          if (!e.ok || e.value.den != 1 || e.value.num == target) continue;
          int64_t gap = target - e.value.num;
          wrong = "(" + w + ") " + (gap > 0 ? "+ " : "- ") + std::to_string(gap > 0 ? gap : -gap);
        }
      }
      if (!judge(wrong, numbers, target, use_all).empty()) return run(t, wrong, sb);
    }
    // Fallback: the right expression with a number dropped is either short of a number or off.
    return run(t, "(" + gold + ") + 1", sb);
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    std::string why = judge(*ans, t.verifier["numbers"].get<std::vector<int64_t>>(),
                            t.verifier["target"].get<int64_t>(), t.verifier["use_all"].get<bool>());
    if (!why.empty()) return fail(why, {{"answer", 0}});
    return pass("hits the target with the allowed numbers", {{"answer", 1}});
  }

 private:
  Episode run(const Task& t, const std::string& expr, sandbox::Client* sb) const {
    Environment env(*this, t, sb);
    Trajectory tr(env);
    std::string bare = expr.substr(0, expr.find('='));
    json r = tr.call("calculator", {{"expression", trim(bare)}}, "Let me check a candidate.");
    std::string value = r.value("value", "an error");
    tr.say(fmt::format("The calculator gives {}.\n{}", value, answer_line(expr)));
    return tr.take();
  }
};

}  // namespace

std::unique_ptr<Family> make_countdown_family() {
  return std::make_unique<CountdownFamily>();
}

}  // namespace shoal::tasks
