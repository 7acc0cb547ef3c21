// Family-specific verifier checks for the arithmetic, function-calling and countdown families:
// answers that merely look right (rounded, off by one, an expression instead of a number, a
// number used twice, a foreign number that makes the target) are rejected; answers that are
// right in another form (any countdown solution, case of an argument) are accepted.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "base/error.h"
#include "sandbox/calculator.h"
#include "tasks/expression.h"
#include "tasks/registry.h"

namespace shoal::tasks {
namespace {

Episode answer(const std::string& text) {
  Episode e;
  e.messages.push_back({{"role", "assistant"}, {"content", "Working done.\nANSWER: " + text}});
  return e;
}

TEST(TasksAnswers, PlainNumbers) {
  for (const char* s : {"12", "-12", "3.75", "1,234", "1,234,567.5", "7/3", " 42 "})
    EXPECT_TRUE(is_plain_number(s)) << s;
  for (const char* s : {"", "1e5", "2*3", "1,23", "12,", ",12", "1.2.3", "7/", "about 5",
                        "5 apples", "--5", "0x10", "1/2/3"})
    EXPECT_FALSE(is_plain_number(s)) << s;
  EXPECT_TRUE(numbers_equal("1,234", "1234"));
  EXPECT_TRUE(numbers_equal("14/6", "7/3"));
  EXPECT_TRUE(numbers_equal("0.5", "1/2"));
  EXPECT_FALSE(numbers_equal("2.33", "7/3"));
  EXPECT_FALSE(numbers_equal("1/0", "1/0"));
}

TEST(TasksAnswers, FinalAnswerIsTheLastAnswerLineOfTheLastMessage) {
  Episode e = answer("5");
  EXPECT_EQ(final_answer(e), "5");
  e.messages.back()["content"] = "ANSWER: 4\nthinking again\n**ANSWER:** 6";
  EXPECT_EQ(final_answer(e), "6");
  e.messages.push_back(
      {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({json::object()})}});
  EXPECT_FALSE(final_answer(e).has_value()) << "a trailing tool call is not a final answer";
  EXPECT_EQ(final_answer(with_answer(answer("5"), "9")), "9");
}

TEST(TasksAnswers, ArithmeticRejectsLookalikes) {
  const Family& f = find_family("arithmetic");
  for (uint64_t seed = 0; seed < 40; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    std::string gold = t.verifier["answer"];
    json v = sandbox::calculate(gold);
    EXPECT_TRUE(f.verify(t, answer(gold)).solved());
    EXPECT_TRUE(f.verify(t, answer(v["value"].get<std::string>())).solved());
    EXPECT_FALSE(f.verify(t, answer(sandbox::calculate(gold + "+1")["value"])).solved());
    EXPECT_FALSE(f.verify(t, answer(sandbox::calculate(gold + "-1/1000")["value"])).solved());
    EXPECT_FALSE(f.verify(t, answer("(" + gold + ") * 1")).solved())
        << "an expression is not an answer";
    EXPECT_FALSE(f.verify(t, answer("about " + gold)).solved());
    EXPECT_FALSE(f.verify(t, answer(gold + " or " +
                                    sandbox::calculate(gold + "+1")["value"].get<std::string>()))
                     .solved());
    if (!v["is_integer"].get<bool>()) {
      std::string dec = v["decimal"];
      std::string rounded = dec.substr(0, dec.find('.') + 3);
      if (rounded != dec) {  // (a terminating decimal of two places is the exact value)
        EXPECT_FALSE(f.verify(t, answer(rounded)).solved()) << "rounded " << dec;
      }
      EXPECT_TRUE(f.verify(t, answer(dec.size() < 30 ? dec : gold)).solved()) << dec;
    }
    // The gold value in the text of an earlier line does not count without the answer line.
    Episode e;
    e.messages.push_back({{"role", "assistant"}, {"content", "I think it is " + gold}});
    EXPECT_FALSE(f.verify(t, e).solved());
  }
}

// Every solution of a 24-game set, by brute force here (independent of the generator).
std::vector<std::string> all_solutions(const std::vector<int64_t>& numbers, int64_t target) {
  std::vector<std::string> out;
  std::function<void(std::vector<std::pair<std::string, Rational>>)> go = [&](auto terms) {
    if (terms.size() == 1) {
      if (terms[0].second == Rational{target, 1}) out.push_back(terms[0].first);
      return;
    }
    for (size_t i = 0; i < terms.size(); ++i)
      for (size_t j = 0; j < terms.size(); ++j) {
        if (i == j) continue;
        for (const char* op : {"+", "-", "*", "/"}) {
          std::string text = "(" + terms[i].first + " " + op + " " + terms[j].first + ")";
          Evaluation e = evaluate_expression(text);
          if (!e.ok) continue;
          std::vector<std::pair<std::string, Rational>> rest;
          for (size_t k = 0; k < terms.size(); ++k)
            if (k != i && k != j) rest.push_back(terms[k]);
          rest.push_back({text, e.value});
          go(rest);
          if (out.size() > 40) return;
        }
      }
  };
  std::vector<std::pair<std::string, Rational>> terms;
  for (int64_t n : numbers) terms.push_back({std::to_string(n), {n, 1}});
  go(terms);
  return out;
}

TEST(TasksAnswers, CountdownAcceptsAnySolutionAndRejectsCheats) {
  const Family& f = find_family("countdown");
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 2));
    auto numbers = t.verifier["numbers"].get<std::vector<int64_t>>();
    int64_t target = t.verifier["target"];
    ASSERT_EQ(target, 24);
    auto sols = all_solutions(numbers, target);
    ASSERT_FALSE(sols.empty()) << "the generator gave an unsolvable set";
    for (const auto& s : sols) EXPECT_TRUE(f.verify(t, answer(s)).solved()) << s;
    EXPECT_TRUE(f.verify(t, answer(sols[0] + " = 24")).solved());
    EXPECT_FALSE(f.verify(t, answer(sols[0] + " = 25")).solved());
    EXPECT_FALSE(f.verify(t, answer("24")).solved()) << "no numbers used";
    // Three of the four numbers only.
    std::string three = std::to_string(numbers[0]) + " + " + std::to_string(numbers[1]) + " + " +
                        std::to_string(numbers[2]);
    Evaluation e3 = evaluate_expression(three);
    std::string fix = "(" + three + ") + " + std::to_string(24 - e3.value.num);
    if (24 - e3.value.num > 0 &&
        std::count(numbers.begin(), numbers.end(), 24 - e3.value.num) == 0) {
      EXPECT_FALSE(f.verify(t, answer(fix)).solved()) << fix << " uses a foreign number";
    }
    // A number used twice.
    std::string twice =
        "(" + sols[0] + ") + " + std::to_string(numbers[0]) + " - " + std::to_string(numbers[0]);
    EXPECT_FALSE(f.verify(t, answer(twice)).solved()) << twice;
    EXPECT_FALSE(f.verify(t, answer("2.4 * 10")).solved());
  }
  // Countdown rounds (difficulty 3): a subset is fine, but not a number twice.
  Task t = f.generate(3, 3);
  EXPECT_FALSE(t.verifier["use_all"].get<bool>());
  EXPECT_TRUE(f.verify(t, answer(t.verifier["solution"])).solved());
}

TEST(TasksAnswers, ExpressionEvaluatorIsExactAndSafe) {
  Evaluation e = evaluate_expression("8 / (3 - 8 / 3)");
  ASSERT_TRUE(e.ok) << e.error;
  EXPECT_EQ(e.value, (Rational{24, 1}));
  EXPECT_EQ(e.numbers, (std::vector<int64_t>{8, 3, 8, 3}));
  EXPECT_EQ(evaluate_expression("7/2").value, (Rational{7, 2}));
  EXPECT_EQ(evaluate_expression("3 × 8").value, (Rational{24, 1}));
  EXPECT_FALSE(evaluate_expression("1/(2-2)").ok);
  EXPECT_FALSE(evaluate_expression("2^3").ok);
  EXPECT_FALSE(evaluate_expression("1.5*16").ok);
  EXPECT_FALSE(evaluate_expression("(1+2").ok);
  EXPECT_FALSE(evaluate_expression("99999999999*99999999999*99999999999").ok)
      << "overflow is an error";
  EXPECT_FALSE(evaluate_expression(std::string(100000, '(')).ok);
  EXPECT_FALSE(evaluate_expression("__import__('os')").ok);
}

TEST(TasksAnswers, FunctionCallingChecksToolChoiceAndArguments) {
  const Family& f = find_family("function_calling");
  int with_calls = 0, without = 0;
  for (uint64_t seed = 0; seed < 60; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    const json& calls = t.verifier["calls"];
    if (calls.empty()) {
      ++without;
      EXPECT_TRUE(f.verify(t, answer(t.verifier["answer"])).solved());
      EXPECT_FALSE(f.verify(t, answer("no idea")).solved());
      continue;
    }
    ++with_calls;
    Episode demo = f.demonstrate(t);
    // Argument strings in another case are the same argument.
    Episode shouted = demo;
    for (auto& m : shouted.messages)
      if (m.contains("tool_calls"))
        for (auto& c : m["tool_calls"]) {
          json a = json::parse(c["function"]["arguments"].get<std::string>());
          for (auto& v : a)
            if (v.is_string()) v = lower(v.get<std::string>());
          c["function"]["arguments"] = a.dump();
        }
    EXPECT_TRUE(f.verify(t, shouted).solved()) << shouted.messages.dump();
    // The same call twice is one too many.
    Episode dup = demo;
    json first = dup.messages[0];
    dup.messages.insert(dup.messages.begin(), first);
    EXPECT_FALSE(f.verify(t, dup).solved());
    // Right calls, but a final message that hides the information asked for.
    bool info = false;
    for (const auto& c : calls)
      for (const char* n : {"get_weather", "convert_currency", "get_exchange_rate",
                            "translate_text", "get_stock_price"})
        info = info || c["name"] == n;
    if (info) {
      Episode vague = with_answer(demo, "done");
      EXPECT_FALSE(f.verify(t, vague).solved());
    }
  }
  EXPECT_GT(with_calls, 30);
  EXPECT_GT(without, 4);
}

}  // namespace
}  // namespace shoal::tasks
