// Recursive-descent parsing and exact rational evaluation (expression.h). Errors travel as a
// thrown local type caught at the top, so evaluate_expression itself never throws.
#include "tasks/expression.h"

#include <cctype>
#include <numeric>

namespace shoal::tasks {
namespace {

struct ParseError {
  std::string message;
};

int64_t checked(__int128 v) {
  if (v > INT64_MAX || v < -INT64_MAX) throw ParseError{"number too large"};
  return static_cast<int64_t>(v);
}

Rational make(__int128 num, __int128 den) {
  if (den == 0) throw ParseError{"division by zero"};
  if (den < 0) num = -num, den = -den;
  __int128 a = num < 0 ? -num : num, b = den;
  while (b != 0) {
    __int128 r = a % b;
    a = b;
    b = r;
  }
  __int128 g = a == 0 ? 1 : a;
  return {checked(num / g), checked(den / g)};
}

Rational add(Rational a, Rational b) {
  return make(static_cast<__int128>(a.num) * b.den + static_cast<__int128>(b.num) * a.den,
              static_cast<__int128>(a.den) * b.den);
}
Rational sub(Rational a, Rational b) {
  return add(a, {-b.num, b.den});
}
Rational mul(Rational a, Rational b) {
  return make(static_cast<__int128>(a.num) * b.num, static_cast<__int128>(a.den) * b.den);
}
Rational div(Rational a, Rational b) {
  return make(static_cast<__int128>(a.num) * b.den, static_cast<__int128>(a.den) * b.num);
}

class Parser {
 public:
  Parser(std::string_view text, std::vector<int64_t>& numbers) : s_(text), numbers_(numbers) {}
  Rational parse() {
    Rational v = sum(0);
    skip();
    if (i_ != s_.size()) throw ParseError{"unexpected '" + std::string(1, s_[i_]) + "'"};
    return v;
  }

 private:
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) return ++i_, true;
    return false;
  }
  // Unicode multiplication and division signs are common in model output: accept them.
  bool eat_times() {
    skip();
    if (eat('*') || eat('x') || eat('X')) return true;
    if (s_.substr(i_, 2) == "\xc3\x97") return i_ += 2, true;  // ×
    return false;
  }
  bool eat_divide() {
    skip();
    if (eat('/')) return true;
    if (s_.substr(i_, 2) == "\xc3\xb7") return i_ += 2, true;  // ÷
    return false;
  }
  Rational sum(int depth) {
    Rational v = product(depth);
    for (;;) {
      if (eat('+'))
        v = add(v, product(depth));
      else if (eat('-'))
        v = sub(v, product(depth));
      else
        return v;
    }
  }
  Rational product(int depth) {
    Rational v = unary(depth);
    for (;;) {
      if (eat_times())
        v = mul(v, unary(depth));
      else if (eat_divide())
        v = div(v, unary(depth));
      else
        return v;
    }
  }
  Rational unary(int depth) {
    if (eat('-')) {
      Rational v = unary(depth);
      return {-v.num, v.den};
    }
    return atom(depth);
  }
  Rational atom(int depth) {
    if (depth > 64) throw ParseError{"nested too deeply"};
    if (eat('(') || eat('[')) {
      char close = s_[i_ - 1] == '(' ? ')' : ']';
      Rational v = sum(depth + 1);
      if (!eat(close)) throw ParseError{std::string("missing '") + close + "'"};
      return v;
    }
    skip();
    size_t start = i_;
    __int128 n = 0;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
      n = n * 10 + (s_[i_++] - '0');
      if (n > INT64_MAX) throw ParseError{"number too large"};
    }
    if (i_ == start)
      throw ParseError{i_ < s_.size() ? "unexpected '" + std::string(1, s_[i_]) + "'"
                                      : "unexpected end"};
    if (i_ < s_.size() && (s_[i_] == '.' || std::isalpha(static_cast<unsigned char>(s_[i_]))))
      throw ParseError{"only whole numbers are allowed"};
    numbers_.push_back(static_cast<int64_t>(n));
    return {static_cast<int64_t>(n), 1};
  }

  std::string_view s_;
  size_t i_ = 0;
  std::vector<int64_t>& numbers_;
};

}  // namespace

std::string Rational::str() const {
  return den == 1 ? std::to_string(num) : std::to_string(num) + "/" + std::to_string(den);
}

Evaluation evaluate_expression(std::string_view text) {
  Evaluation e;
  if (text.size() > 512) {
    e.error = "expression longer than 512 characters";
    return e;
  }
  try {
    e.value = Parser(text, e.numbers).parse();
    e.ok = true;
  } catch (const ParseError& p) {
    e.error = p.message;
  }
  return e;
}

}  // namespace shoal::tasks
