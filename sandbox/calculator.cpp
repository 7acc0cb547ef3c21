// The calculator tool (calculator.h): a recursive-descent parser over GMP rationals.
#include "sandbox/calculator.h"

#include <fmt/format.h>
#include <gmpxx.h>

#include <cctype>
#include <cstring>
#include <vector>

#include "sandbox/files.h"

namespace shoal::sandbox {

namespace {

constexpr size_t kMaxBits = 1000000;  // results (and operands) above this are refused
constexpr size_t kMaxInput = 10000;
constexpr int kMaxDepth = 200;

[[noreturn]] void fail(const std::string& message) {
  throw ToolError{error_kind::tool_error, message};
}

size_t bits(const mpq_class& q) {
  return mpz_sizeinbase(q.get_num_mpz_t(), 2) + mpz_sizeinbase(q.get_den_mpz_t(), 2);
}

mpq_class checked(mpq_class q) {
  q.canonicalize();
  if (bits(q) > kMaxBits) fail("result too large (over 1,000,000 bits)");
  return q;
}

bool is_int(const mpq_class& q) {
  return q.get_den() == 1;
}

mpz_class as_int(const mpq_class& q, const char* what) {
  if (!is_int(q)) fail(std::string(what) + " needs an integer, got " + q.get_str());
  return q.get_num();
}

long small_int(const mpq_class& q, const char* what, long lo, long hi) {
  mpz_class z = as_int(q, what);
  if (z < lo || z > hi)
    fail(fmt::format("{} must be between {} and {}, got {}", what, lo, hi, z.get_str()));
  return z.get_si();
}

mpz_class floor_div(const mpz_class& a, const mpz_class& b) {
  mpz_class q;
  mpz_fdiv_q(q.get_mpz_t(), a.get_mpz_t(), b.get_mpz_t());
  return q;
}

mpq_class power(const mpq_class& base, const mpq_class& exponent) {
  long e = small_int(exponent, "exponent", -1000000, 1000000);
  if (base == 0 && e < 0) fail("division by zero (0 to a negative power)");
  double est = static_cast<double>(bits(base)) * static_cast<double>(e < 0 ? -e : e);
  if (est > 2.0 * kMaxBits) fail("result too large (over 1,000,000 bits)");
  unsigned long ue = static_cast<unsigned long>(e < 0 ? -e : e);
  mpz_class num, den;
  mpz_pow_ui(num.get_mpz_t(), base.get_num().get_mpz_t(), ue);
  mpz_pow_ui(den.get_mpz_t(), base.get_den().get_mpz_t(), ue);
  mpq_class r = e >= 0 ? mpq_class(num, den) : mpq_class(den, num);
  return checked(r);
}

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}

  mpq_class parse() {
    mpq_class v = expr(0);
    skip();
    if (pos_ != s_.size()) fail(fmt::format("unexpected '{}' at position {}", s_[pos_], pos_));
    return v;
  }

 private:
  void skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(const char* tok) {
    skip();
    size_t n = std::strlen(tok);
    if (s_.compare(pos_, n, tok) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  void depth_check(int depth) {
    if (depth > kMaxDepth) fail("expression nested too deeply");
  }

  mpq_class expr(int depth) {
    depth_check(depth);
    mpq_class v = term(depth + 1);
    for (;;) {
      if (eat("+"))
        v = checked(v + term(depth + 1));
      else if (eat("-"))
        v = checked(v - term(depth + 1));
      else
        return v;
    }
  }

  mpq_class term(int depth) {
    mpq_class v = unary(depth + 1);
    for (;;) {
      skip();
      if (s_.compare(pos_, 2, "**") == 0) return v;  // handled in power()
      if (eat("//")) {
        mpq_class d = unary(depth + 1);
        if (d == 0) fail("division by zero");
        mpq_class q = v / d;
        v = mpq_class(floor_div(q.get_num(), q.get_den()));
      } else if (eat("*")) {
        v = checked(v * unary(depth + 1));
      } else if (eat("/")) {
        mpq_class d = unary(depth + 1);
        if (d == 0) fail("division by zero");
        v = checked(v / d);
      } else if (eat("%")) {
        mpq_class d = unary(depth + 1);
        if (d == 0) fail("modulo by zero");
        mpq_class q = v / d;
        v = checked(v - d * mpq_class(floor_div(q.get_num(), q.get_den())));
      } else {
        return v;
      }
    }
  }

  mpq_class unary(int depth) {
    depth_check(depth);
    if (eat("-")) return -unary(depth + 1);
    if (eat("+")) return unary(depth + 1);
    return pow_expr(depth + 1);
  }

  mpq_class pow_expr(int depth) {
    mpq_class base = postfix(depth + 1);
    if (eat("**") || eat("^")) return power(base, unary(depth + 1));  // right-associative
    return base;
  }

  mpq_class postfix(int depth) {
    mpq_class v = primary(depth + 1);
    for (;;) {
      skip();
      // "!" but not "!=" (not an operator here, but give the parser's message for it)
      if (pos_ < s_.size() && s_[pos_] == '!') {
        ++pos_;
        v = factorial(v);
      } else {
        return v;
      }
    }
  }

  static mpq_class factorial(const mpq_class& v) {
    long n = small_int(v, "factorial", 0, 20000);
    mpz_class r;
    mpz_fac_ui(r.get_mpz_t(), static_cast<unsigned long>(n));
    return checked(mpq_class(r));
  }

  mpq_class number() {
    size_t start = pos_;
    std::string digits, frac;
    while (pos_ < s_.size() &&
           (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
      if (s_[pos_++] != '_') digits += s_[pos_ - 1];
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_])))
        frac += s_[pos_++];
    }
    if (digits.empty() && frac.empty())
      fail(fmt::format("expected a number at position {}", start));
    long exp10 = 0;
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      size_t save = pos_++;
      bool neg = false;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) neg = s_[pos_++] == '-';
      std::string e;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_])))
        e += s_[pos_++];
      if (e.empty() || e.size() > 6) {
        if (e.empty())
          pos_ = save;
        else
          fail("exponent too large");
      } else {
        exp10 = std::stol(e) * (neg ? -1 : 1);
      }
    }
    mpz_class num((digits.empty() ? "0" : digits) + frac, 10);
    exp10 -= static_cast<long>(frac.size());
    mpq_class v(num);
    if (exp10 != 0) v = checked(v * power(mpq_class(10), mpq_class(exp10)));
    return v;
  }

  std::vector<mpq_class> args(int depth) {
    std::vector<mpq_class> out;
    if (!eat("(")) fail(fmt::format("expected '(' at position {}", pos_));
    if (eat(")")) return out;
    for (;;) {
      out.push_back(expr(depth + 1));
      if (eat(")")) return out;
      if (!eat(",")) fail(fmt::format("expected ',' or ')' at position {}", pos_));
    }
  }

  mpq_class call(const std::string& name, int depth) {
    auto a = args(depth);
    auto need = [&](size_t lo, size_t hi) {
      if (a.size() < lo || a.size() > hi)
        fail(fmt::format("{}() takes {} argument(s), got {}", name,
                         lo == hi ? std::to_string(lo) : fmt::format("{} to {}", lo, hi),
                         a.size()));
    };
    if (name == "abs") {
      need(1, 1);
      return abs(a[0]);
    }
    if (name == "floor" || name == "ceil" || name == "round") {
      need(1, 1);
      mpz_class r;
      if (name == "floor") mpz_fdiv_q(r.get_mpz_t(), a[0].get_num_mpz_t(), a[0].get_den_mpz_t());
      if (name == "ceil") mpz_cdiv_q(r.get_mpz_t(), a[0].get_num_mpz_t(), a[0].get_den_mpz_t());
      if (name == "round") {  // half away from zero
        mpq_class h = abs(a[0]) + mpq_class(1, 2);
        mpz_fdiv_q(r.get_mpz_t(), h.get_num_mpz_t(), h.get_den_mpz_t());
        if (a[0] < 0) r = -r;
      }
      return mpq_class(r);
    }
    if (name == "gcd" || name == "lcm") {
      if (a.empty()) fail(name + "() needs at least one argument");
      mpz_class r = as_int(a[0], name.c_str());
      for (size_t i = 1; i < a.size(); ++i) {
        mpz_class b = as_int(a[i], name.c_str());
        if (name == "gcd")
          mpz_gcd(r.get_mpz_t(), r.get_mpz_t(), b.get_mpz_t());
        else
          mpz_lcm(r.get_mpz_t(), r.get_mpz_t(), b.get_mpz_t());
      }
      return checked(mpq_class(abs(r)));
    }
    if (name == "min" || name == "max") {
      if (a.empty()) fail(name + "() needs at least one argument");
      mpq_class r = a[0];
      for (auto& v : a) r = name == "min" ? (v < r ? v : r) : (v > r ? v : r);
      return r;
    }
    if (name == "factorial") {
      need(1, 1);
      return factorial(a[0]);
    }
    if (name == "comb") {
      need(2, 2);
      long n = small_int(a[0], "comb n", 0, 1000000), k = small_int(a[1], "comb k", 0, 1000000);
      mpz_class r;
      mpz_bin_uiui(r.get_mpz_t(), static_cast<unsigned long>(n), static_cast<unsigned long>(k));
      return checked(mpq_class(r));
    }
    if (name == "pow") {
      need(2, 3);
      if (a.size() == 2) return power(a[0], a[1]);
      mpz_class b = as_int(a[0], "pow"), e = as_int(a[1], "pow"), m = as_int(a[2], "pow");
      if (m == 0) fail("pow(): modulus is zero");
      if (e < 0) fail("pow(): negative exponent with a modulus");
      if (mpz_sizeinbase(e.get_mpz_t(), 2) > 100000) fail("pow(): exponent too large");
      mpz_class r;
      mpz_powm(r.get_mpz_t(), b.get_mpz_t(), e.get_mpz_t(), m.get_mpz_t());
      return mpq_class(r);
    }
    if (name == "sqrt") {
      need(1, 1);
      if (a[0] < 0) fail("sqrt() of a negative number");
      mpz_class n = a[0].get_num(), d = a[0].get_den();
      if (!mpz_perfect_square_p(n.get_mpz_t()) || !mpz_perfect_square_p(d.get_mpz_t()))
        fail("sqrt(" + a[0].get_str() + ") is irrational: only exact square roots are computed");
      mpz_class rn, rd;
      mpz_sqrt(rn.get_mpz_t(), n.get_mpz_t());
      mpz_sqrt(rd.get_mpz_t(), d.get_mpz_t());
      return mpq_class(rn, rd);
    }
    fail("unknown function '" + name +
         "' (abs, gcd, lcm, floor, ceil, round, min, max, factorial, comb, pow, sqrt)");
  }

  mpq_class primary(int depth) {
    depth_check(depth);
    skip();
    if (pos_ >= s_.size()) fail("unexpected end of expression");
    char c = s_[pos_];
    if (c == '(') {
      ++pos_;
      mpq_class v = expr(depth + 1);
      if (!eat(")")) fail(fmt::format("expected ')' at position {}", pos_));
      return v;
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') return number();
    if (std::isalpha(static_cast<unsigned char>(c))) {
      std::string name;
      while (pos_ < s_.size() &&
             (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
        name += s_[pos_++];
      return call(name, depth + 1);
    }
    fail(fmt::format("unexpected '{}' at position {}", c, pos_));
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// 40 significant digits, rounded toward zero, with an exponent when needed.
std::string decimal(const mpq_class& q) {
  if (q == 0) return "0";
  mpf_class f(q, 256);
  mp_exp_t exp;
  std::string digits = f.get_str(exp, 10, 40);
  bool neg = !digits.empty() && digits[0] == '-';
  if (neg) digits.erase(0, 1);
  // Built with append (g++ 12 reports a false -Wrestrict on chained operator+ here).
  std::string out = neg ? "-" : "";
  size_t e = static_cast<size_t>(exp > 0 ? exp : -exp);
  if (exp > 0 && exp <= 40) {
    if (digits.size() < e) digits.append(e - digits.size(), '0');
    out.append(digits, 0, e);
    if (digits.size() > e) out.append(".").append(digits, e, std::string::npos);
  } else if (exp <= 0 && exp > -10) {
    out.append("0.").append(e, '0').append(digits);
  } else {
    out.append(digits, 0, 1);
    if (digits.size() > 1) out.append(".").append(digits, 1, std::string::npos);
    out.append("e").append(std::to_string(exp - 1));
  }
  return out;
}

}  // namespace

json calculate(const std::string& expression) {
  if (expression.size() > kMaxInput) fail("expression longer than 10000 characters");
  mpq_class v = Parser(expression).parse();
  v.canonicalize();
  return {{"value", v.get_str()}, {"decimal", decimal(v)}, {"is_integer", is_int(v)}};
}

}  // namespace shoal::sandbox
