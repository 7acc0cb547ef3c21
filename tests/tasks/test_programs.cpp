// The program pipelines of the code families (tasks/programs.h), without a sandbox: Python's
// semantics in the C++ twins (floor division, split vs split(' ')), the rendered Python, typed
// values, code-block extraction, slips and generation invariants, and the examples' power to
// rule out near-miss programs. Running the Python itself: test_code_families.cpp.
#include <gtest/gtest.h>

#include "base/error.h"
#include "tasks/programs.h"
#include "tasks/registry.h"

namespace shoal::tasks::programs {
namespace {

Value run_one(const std::string& op, int64_t k, const Value& in) {
  Program p{in.kind, {{op, k}}};
  auto out = run(p, in);
  EXPECT_TRUE(out.has_value()) << op;
  return out.value_or(Value{});
}

TEST(TasksPrograms, CppTwinsFollowPythonSemantics) {
  // Floor division and modulo as Python does them on negatives.
  EXPECT_EQ(run_one("floordiv", 2, list({-7, 7})), list({-4, 3}));
  EXPECT_EQ(run_one("mod", 3, list({-7, 7})), list({2, 1}));
  EXPECT_EQ(run_one("n_mod", 4, integer(-1)), integer(3));
  EXPECT_EQ(run_one("keep_odd", 0, list({-3, -2, 5})), list({-3, 5}));
  // split() drops empty words, split(' ') keeps them.
  EXPECT_EQ(run_one("word_lengths", 0, text(" ab  c ")), list({2, 1}));
  EXPECT_EQ(run_one("word_lengths_slip", 0, text(" ab  c ")), list({0, 2, 0, 1, 0}));
  EXPECT_EQ(run_one("count_words", 0, text("")), integer(0));
  EXPECT_EQ(run_one("count_spaces", 0, text("")), integer(1));
  EXPECT_EQ(run_one("digits", 0, integer(-408)), list({4, 0, 8}));
  EXPECT_EQ(run_one("digit_sum", 0, integer(0)), integer(0));
  EXPECT_EQ(run_one("max", 0, list({})), integer(0));
  EXPECT_EQ(run_one("dedupe", 0, list({3, 1, 3, 2, 1})), list({3, 1, 2}));
  EXPECT_EQ(run_one("unique_sorted", 0, list({3, 1, 3, 2, 1})), list({1, 2, 3}));
  EXPECT_EQ(run_one("differences", 0, list({4})), list({}));
  EXPECT_EQ(run_one("running_total", 0, list({1, -2, 5})), list({1, -1, 4}));
  EXPECT_EQ(run_one("swapcase", 0, text("aB c")), text("Ab C"));
  EXPECT_EQ(run_one("sort_chars", 0, text("ba A")), text(" Aab"));
  EXPECT_EQ(run_one("take", 9, list({1, 2})), list({1, 2}));
  EXPECT_EQ(run_one("s_drop", 3, text("ab")), text(""));
  // Out of range is "no value", never a wrapped-around one.
  Program big{Kind::integer, {{"n_square", 0}, {"n_square", 0}, {"n_square", 0}}};
  EXPECT_FALSE(run(big, integer(99999)).has_value());
  EXPECT_THROW(run(Program{Kind::text, {{"sort", 0}}}, text("x")), Error) << "ill-typed";
}

TEST(TasksPrograms, RendersPython) {
  Program p{Kind::list, {{"sort", 0}, {"keep_gt", 3}, {"count_gt", 5}}};
  EXPECT_EQ(render(p),
            "def f(xs):\n"
            "    xs = sorted(xs)\n"
            "    xs = [x for x in xs if x > 3]\n"
            "    count = 0\n"
            "    for x in xs:\n"
            "        if x > 5:\n"
            "            count += 1\n"
            "    n = count\n"
            "    return n\n");
  EXPECT_EQ(describe(p)[1], "keep only the numbers greater than 3");
  EXPECT_EQ(render_step(p, 1), std::vector<std::string>{"    xs = [x for x in xs if x > 3]"});
  Program back = program_from_json(to_json(p));
  EXPECT_EQ(back, p);
  EXPECT_THROW(program_from_json(json::parse(R"({"input": "list", "steps": [["nosuch", 0]]})")),
               Error);
  EXPECT_THROW(program_from_json(json::parse(R"({"input": "str", "steps": [["sort", 0]]})")),
               Error);
  EXPECT_THROW(program_from_json(json::parse(R"({"input": "list", "steps": {"sort": 0}})")), Error);
}

TEST(TasksPrograms, ValuesHaveOnePythonFormAndOneTypedForm) {
  EXPECT_EQ(python_repr(list({1, -2})), "[1, -2]");
  EXPECT_EQ(python_repr(text("it's")), "\"it's\"");
  EXPECT_EQ(python_repr(text("'\"")), "'\\'\"'");
  EXPECT_EQ(python_repr(integer(-5)), "-5");
  for (const Value& v : {list({}), list({3, 4}), text(""), text("a b"), integer(7)})
    EXPECT_EQ(value_from_typed(typed(v)), v);
  EXPECT_EQ(typed(integer(1)), json::parse(R"(["int", 1])"));
  EXPECT_NE(typed(integer(1)), json::parse(R"(["bool", true])"));
  EXPECT_THROW(value_from_typed(json::parse(R"(["tuple", [1]])")), Error);
}

TEST(TasksPrograms, SubmittedCodeIsTheLastPythonBlockOfTheFinalMessage) {
  auto final_message = [](const std::string& content) {
    Episode e;
    e.messages.push_back({{"role", "assistant"}, {"content", content}});
    return e;
  };
  EXPECT_EQ(submitted_code(final_message("x\n```python\ndef f(n):\n    return 1\n```\n")),
            "def f(n):\n    return 1\n");
  EXPECT_EQ(submitted_code(final_message("```py\nA\n```\ntext\n```\nB\n```")), "B\n");
  EXPECT_EQ(submitted_code(final_message("```python\nA\n```\n```text\nB\n```")), "A\n")
      << "other languages are not code";
  EXPECT_FALSE(submitted_code(final_message("def f(n): return 1")));
  EXPECT_FALSE(submitted_code(final_message("```python\ndef f(n): return 1\n")))
      << "an unclosed block";
  Episode with_call = final_message("```python\nA\n```");
  with_call.messages.back()["tool_calls"] = json::array({{{"id", "1"}}});
  EXPECT_FALSE(submitted_code(with_call));
  EXPECT_FALSE(submitted_code(Episode{json::array({"junk"})}));
}

TEST(TasksPrograms, SlipsAndNeighboursAreOneEditAway) {
  Program p{Kind::list, {{"keep_ge", 4}, {"take", 2}, {"sum", 0}}};
  auto s = slips(p.steps[0]);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0], (Step{"keep_gt", 4}));
  EXPECT_EQ(slips(p.steps[1])[0], (Step{"take", 3}));
  for (const Program& q : neighbours(p)) {
    EXPECT_NE(q, p);
    int edits = 0;
    for (size_t i = 0; i < p.steps.size(); ++i) edits += !(q.steps[i] == p.steps[i]);
    EXPECT_EQ(edits, 1);
    EXPECT_TRUE(well_typed(q));
  }
}

TEST(TasksPrograms, GeneratedProgramsNeedEveryStep) {
  Rng rng(7);
  for (Kind k : {Kind::list, Kind::text, Kind::integer}) {
    for (int depth = 1; depth <= 4; ++depth) {
      std::vector<Value> inputs = random_inputs(k, 3, 30, rng);
      auto p = random_program(k, depth, inputs, rng);
      ASSERT_TRUE(p) << kind_name(k) << " depth " << depth;
      EXPECT_EQ(p->steps.size(), static_cast<size_t>(depth));
      for (size_t i = 0; i < p->steps.size(); ++i) {
        Program without = *p;
        without.steps.erase(without.steps.begin() + static_cast<std::ptrdiff_t>(i));
        if (!well_typed(without)) continue;
        bool differs = false;
        for (const Value& x : inputs) differs = differs || run(without, x) != run(*p, x);
        EXPECT_TRUE(differs) << render(*p) << "step " << i << " is not needed";
      }
    }
  }
}

// The examples shown for program synthesis rule out the near-miss programs: a neighbour of the
// reference that the hidden tests tell apart is, in nearly every task, already told apart by a
// visible example (so a consistent answer is rarely wrong for want of information).
TEST(TasksPrograms, ExamplesRuleOutNearMisses) {
  const Family& f = find_family("program_synthesis");
  int near = 0, unseen = 0;
  for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d)
    for (uint64_t seed = 0; seed < 30; ++seed) {
      Task t = f.generate(seed, d);
      Program p = program_from_json(t.verifier["program"]);
      std::vector<Value> vin, vout, hin, hout;
      examples_from_json(t.environment["examples"], vin, vout);
      examples_from_json(t.verifier["hidden"], hin, hout);
      for (size_t i = 0; i < vin.size(); ++i) EXPECT_EQ(run(p, vin[i]), vout[i]);
      for (size_t i = 0; i < hin.size(); ++i) EXPECT_EQ(run(p, hin[i]), hout[i]);
      EXPECT_GE(hin.size(), 10u);
      for (const Program& q : neighbours(p)) {
        bool hidden_differs = false, shown_differs = false;
        for (size_t i = 0; i < hin.size(); ++i) hidden_differs |= run(q, hin[i]) != hout[i];
        for (size_t i = 0; i < vin.size(); ++i) shown_differs |= run(q, vin[i]) != vout[i];
        if (!hidden_differs) continue;
        ++near;
        unseen += !shown_differs;
      }
    }
  EXPECT_GT(near, 1000);
  EXPECT_LT(unseen, near / 50) << unseen << " of " << near << " near misses fit every example";
}

// Bug fixing: the shown code is the reference with one slip (two at difficulty 5), it fails a
// shown test, and each slip alone fails some hidden test (so fixing one of two is not enough).
TEST(TasksPrograms, BugsAreVisibleAndEachOneIsTested) {
  const Family& f = find_family("bug_fixing");
  for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d)
    for (uint64_t seed = 0; seed < 30; ++seed) {
      Task t = f.generate(seed, d);
      Program gold = program_from_json(t.verifier["program"]);
      Program buggy = program_from_json(t.verifier["buggy"]);
      EXPECT_EQ(render(buggy), t.environment["code"]);
      std::vector<int> bugs = t.verifier["bug_steps"];
      EXPECT_EQ(bugs.size(), d == 5 ? 2u : 1u);
      std::vector<Value> vin, vout, hin, hout;
      examples_from_json(t.environment["tests"], vin, vout);
      examples_from_json(t.verifier["hidden"], hin, hout);
      int failing = 0;
      for (size_t i = 0; i < vin.size(); ++i) {
        EXPECT_EQ(run(gold, vin[i]), vout[i]);
        failing += run(buggy, vin[i]) != vout[i];
      }
      EXPECT_GE(failing, 1);
      if (d >= 4) {
        EXPECT_EQ(failing, 1);
      }
      for (size_t s = 0; s < gold.steps.size(); ++s) {
        bool is_bug = std::find(bugs.begin(), bugs.end(), static_cast<int>(s)) != bugs.end();
        EXPECT_EQ(!(gold.steps[s] == buggy.steps[s]), is_bug);
        if (!is_bug) continue;
        Program one = gold;
        one.steps[s] = buggy.steps[s];
        bool caught = false;
        for (size_t i = 0; i < hin.size(); ++i) caught = caught || run(one, hin[i]) != hout[i];
        EXPECT_TRUE(caught) << "seed " << seed << " d" << d << " bug at step " << s;
      }
      // The prompt describes the intended steps and shows the buggy code and the tests.
      std::string prompt = t.messages[1]["content"];
      EXPECT_NE(prompt.find(describe(gold)[0]), std::string::npos);
      EXPECT_NE(prompt.find(t.environment["code"].get<std::string>()), std::string::npos);
    }
}

}  // namespace
}  // namespace shoal::tasks::programs
