// A safe parser and exact evaluator for the arithmetic expressions of the countdown family:
// integers, + - * /, unary minus and parentheses over exact 64-bit rationals (overflow is an
// error, not a wrap). Not the calculator tool (sandbox/calculator.h): no functions, no powers,
// and it reports which numbers an expression used.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shoal::tasks {

struct Rational {
  int64_t num = 0, den = 1;  // den > 0, gcd(num, den) = 1
  bool operator==(const Rational&) const = default;
  std::string str() const;
};

struct Evaluation {
  bool ok = false;
  std::string error;  // why not, when !ok (syntax, division by zero, overflow)
  Rational value;
  std::vector<int64_t> numbers;  // the integer literals, in order of appearance
};

// At most 512 characters and nesting depth 64; anything else is an error in the result (never
// throws).
Evaluation evaluate_expression(std::string_view text);

}  // namespace shoal::tasks
