// The table of primitive operations (program_ops.h). Each C++ twin follows Python: floor division
// and modulo, str.split() against str.split(' '), ASCII case mapping, sorted() by code point;
// values beyond 10^12 (or strings beyond 4000 characters) are out of range rather than wrapped.
#include "tasks/program_ops.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "base/error.h"

namespace shoal::tasks::programs {
namespace {

constexpr int64_t kLimit = 1'000'000'000'000;  // |n| beyond this is "out of range"
constexpr size_t kMaxText = 4000;

int64_t checked(__int128 v) {
  if (v > kLimit || v < -kLimit) throw OutOfRange{};
  return static_cast<int64_t>(v);
}
// Python's // and % (floor division) for k > 0.
int64_t floor_div(int64_t a, int64_t k) {
  int64_t q = a / k;
  if (a % k != 0 && (a < 0) != (k < 0)) --q;
  return q;
}
int64_t floor_mod(int64_t a, int64_t k) {
  return a - floor_div(a, k) * k;
}
std::string digits_of(int64_t n) {
  return std::to_string(n < 0 ? -n : n);
}
bool is_vowel(char c, bool either_case) {
  std::string_view v = either_case ? "aeiouAEIOU" : "aeiou";
  return v.find(c) != std::string_view::npos;
}
// Python's str.split() (runs of whitespace, no empty words) and str.split(' ') (every space).
std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::string w;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!w.empty()) out.push_back(w);
      w.clear();
    } else {
      w += c;
    }
  }
  if (!w.empty()) out.push_back(w);
  return out;
}
std::vector<std::string> split_spaces(const std::string& s) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == ' ')
      out.emplace_back();
    else
      out.back() += c;
  }
  return out;
}
Value text_checked(std::string s) {
  if (s.size() > kMaxText) throw OutOfRange{};
  return text(std::move(s));
}

template <class F>
Value map_each(const Value& v, F f) {
  std::vector<int64_t> out;
  for (int64_t x : v.l) out.push_back(checked(f(static_cast<__int128>(x))));
  return list(std::move(out));
}
template <class P>
Value keep_if(const Value& v, P p) {
  std::vector<int64_t> out;
  for (int64_t x : v.l)
    if (p(x)) out.push_back(x);
  return list(std::move(out));
}
template <class P>
Value count_if(const Value& v, P p) {
  int64_t n = 0;
  for (int64_t x : v.l) n += p(x) ? 1 : 0;
  return integer(n);
}
template <class F>
Value chars(const Value& v, F f) {  // f(char) -> string
  std::string out;
  for (char c : v.s) out += f(c);
  return text_checked(std::move(out));
}
char upper_char(char c) {
  return static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
}
char lower_char(char c) {
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

constexpr Kind L = Kind::list, S = Kind::text, N = Kind::integer;

}  // namespace

const std::vector<Op>& ops() {
  static const std::vector<Op> table = {
      // list -> list
      {"sort",
       L,
       L,
       0,
       0,
       true,
       "sort it in ascending order",
       "{out} = sorted({in})",
       {{"sort_desc"}},
       [](const Value& v, int64_t) {
         auto l = v.l;
         std::sort(l.begin(), l.end());
         return list(l);
       }},
      {"sort_desc",
       L,
       L,
       0,
       0,
       true,
       "sort it in descending order",
       "{out} = sorted({in}, reverse=True)",
       {{"sort"}},
       [](const Value& v, int64_t) {
         auto l = v.l;
         std::sort(l.begin(), l.end(), std::greater<>());
         return list(l);
       }},
      {"reverse",
       L,
       L,
       0,
       0,
       true,
       "reverse its order",
       "{out} = {in}[::-1]",
       {},
       [](const Value& v, int64_t) {
         return list({v.l.rbegin(), v.l.rend()});
       }},
      {"add",
       L,
       L,
       1,
       9,
       true,
       "add {k} to each number",
       "{out} = [x + {k} for x in {in}]",
       {{"sub"}},
       [](const Value& v, int64_t k) { return map_each(v, [k](__int128 x) { return x + k; }); }},
      {"sub",
       L,
       L,
       1,
       9,
       true,
       "subtract {k} from each number",
       "{out} = [x - {k} for x in {in}]",
       {{"add"}},
       [](const Value& v, int64_t k) { return map_each(v, [k](__int128 x) { return x - k; }); }},
      {"mul",
       L,
       L,
       2,
       5,
       true,
       "multiply each number by {k}",
       "{out} = [x * {k} for x in {in}]",
       {{"add"}},
       [](const Value& v, int64_t k) { return map_each(v, [k](__int128 x) { return x * k; }); }},
      {"square",
       L,
       L,
       0,
       0,
       true,
       "square each number",
       "{out} = [x * x for x in {in}]",
       {{"double"}},
       [](const Value& v, int64_t) { return map_each(v, [](__int128 x) { return x * x; }); }},
      {"double",
       L,
       L,
       0,
       0,
       false,
       "double each number",
       "{out} = [x * 2 for x in {in}]",
       {},
       [](const Value& v, int64_t) { return map_each(v, [](__int128 x) { return x * 2; }); }},
      {"abs",
       L,
       L,
       0,
       0,
       true,
       "replace each number by its absolute value",
       "{out} = [abs(x) for x in {in}]",
       {{"negate"}},
       [](const Value& v, int64_t) {
         return map_each(v, [](__int128 x) { return x < 0 ? -x : x; });
       }},
      {"negate",
       L,
       L,
       0,
       0,
       true,
       "negate each number",
       "{out} = [-x for x in {in}]",
       {{"abs"}},
       [](const Value& v, int64_t) { return map_each(v, [](__int128 x) { return -x; }); }},
      {"keep_even",
       L,
       L,
       0,
       0,
       true,
       "keep only the even numbers",
       "{out} = [x for x in {in} if x % 2 == 0]",
       {{"keep_odd"}},
       [](const Value& v, int64_t) {
         return keep_if(v, [](int64_t x) { return floor_mod(x, 2) == 0; });
       }},
      {"keep_odd",
       L,
       L,
       0,
       0,
       true,
       "keep only the odd numbers",
       "{out} = [x for x in {in} if x % 2 == 1]",
       {{"keep_even"}},
       [](const Value& v, int64_t) {
         return keep_if(v, [](int64_t x) { return floor_mod(x, 2) == 1; });
       }},
      {"keep_gt",
       L,
       L,
       0,
       9,
       true,
       "keep only the numbers greater than {k}",
       "{out} = [x for x in {in} if x > {k}]",
       {{"keep_ge"}, {"keep_lt"}},
       [](const Value& v, int64_t k) { return keep_if(v, [k](int64_t x) { return x > k; }); }},
      {"keep_ge",
       L,
       L,
       0,
       9,
       true,
       "keep only the numbers that are at least {k}",
       "{out} = [x for x in {in} if x >= {k}]",
       {{"keep_gt"}, {"keep_le"}},
       [](const Value& v, int64_t k) { return keep_if(v, [k](int64_t x) { return x >= k; }); }},
      {"keep_lt",
       L,
       L,
       0,
       9,
       true,
       "keep only the numbers less than {k}",
       "{out} = [x for x in {in} if x < {k}]",
       {{"keep_le"}, {"keep_gt"}},
       [](const Value& v, int64_t k) { return keep_if(v, [k](int64_t x) { return x < k; }); }},
      {"keep_le",
       L,
       L,
       0,
       9,
       true,
       "keep only the numbers that are at most {k}",
       "{out} = [x for x in {in} if x <= {k}]",
       {{"keep_lt"}, {"keep_ge"}},
       [](const Value& v, int64_t k) { return keep_if(v, [k](int64_t x) { return x <= k; }); }},
      {"take",
       L,
       L,
       1,
       4,
       true,
       "keep only the first {k} numbers",
       "{out} = {in}[:{k}]",
       {{"take", 1}, {"drop"}},
       [](const Value& v, int64_t k) {
         return list({v.l.begin(), v.l.begin() + std::min<int64_t>(k, std::ssize(v.l))});
       }},
      {"drop",
       L,
       L,
       1,
       3,
       true,
       "drop the first {k} numbers",
       "{out} = {in}[{k}:]",
       {{"drop", 1}, {"take"}},
       [](const Value& v, int64_t k) {
         return list({v.l.begin() + std::min<int64_t>(k, std::ssize(v.l)), v.l.end()});
       }},
      {"dedupe",
       L,
       L,
       0,
       0,
       true,
       "remove repeated numbers, keeping the first of each in place",
       "{out} = list(dict.fromkeys({in}))",
       {{"unique_sorted"}},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         std::set<int64_t> seen;
         for (int64_t x : v.l)
           if (seen.insert(x).second) out.push_back(x);
         return list(out);
       }},
      {"unique_sorted",
       L,
       L,
       0,
       0,
       true,
       "remove repeated numbers and sort in ascending order",
       "{out} = sorted(set({in}))",
       {{"dedupe"}},
       [](const Value& v, int64_t) {
         std::set<int64_t> s(v.l.begin(), v.l.end());
         return list({s.begin(), s.end()});
       }},
      {"running_total",
       L,
       L,
       0,
       0,
       true,
       "replace each number by the running total (the sum of it and every number before it)",
       "total = 0\nacc = []\nfor x in {in}:\n    total += x\n    acc.append(total)\n{out} = acc",
       {{"running_total_slip"}},
       [](const Value& v, int64_t) {
         __int128 total = 0;
         std::vector<int64_t> out;
         for (int64_t x : v.l) out.push_back(checked(total += x));
         return list(out);
       }},
      {"running_total_slip",
       L,
       L,
       0,
       0,
       false,
       "",
       "total = 0\nacc = []\nfor x in {in}:\n    total += x\n    acc.append(x)\n{out} = acc",
       {},
       [](const Value& v, int64_t) { return v; }},
      {"differences",
       L,
       L,
       0,
       0,
       true,
       "replace the list by the differences of neighbours (each number minus the one before it)",
       "{out} = [{in}[i + 1] - {in}[i] for i in range(len({in}) - 1)]",
       {{"differences_slip"}},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (size_t i = 0; i + 1 < v.l.size(); ++i)
           out.push_back(checked(static_cast<__int128>(v.l[i + 1]) - v.l[i]));
         return list(out);
       }},
      {"differences_slip",
       L,
       L,
       0,
       0,
       false,
       "",
       "{out} = [{in}[i] - {in}[i + 1] for i in range(len({in}) - 1)]",
       {},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (size_t i = 0; i + 1 < v.l.size(); ++i)
           out.push_back(checked(static_cast<__int128>(v.l[i]) - v.l[i + 1]));
         return list(out);
       }},
      {"mod",
       L,
       L,
       2,
       5,
       true,
       "replace each number by its remainder modulo {k}",
       "{out} = [x % {k} for x in {in}]",
       {{"floordiv"}},
       [](const Value& v, int64_t k) {
         return map_each(v, [k](__int128 x) { return floor_mod(static_cast<int64_t>(x), k); });
       }},
      {"floordiv",
       L,
       L,
       2,
       5,
       true,
       "divide each number by {k}, rounding down",
       "{out} = [x // {k} for x in {in}]",
       {{"mod"}},
       [](const Value& v, int64_t k) {
         return map_each(v, [k](__int128 x) { return floor_div(static_cast<int64_t>(x), k); });
       }},
      // list -> int
      {"sum",
       L,
       N,
       0,
       0,
       true,
       "return the sum of the numbers",
       "{out} = sum({in})",
       {{"sum_tail"}},
       [](const Value& v, int64_t) {
         __int128 s = 0;
         for (int64_t x : v.l) s += x;
         return integer(checked(s));
       }},
      {"sum_tail",
       L,
       N,
       0,
       0,
       false,
       "",
       "{out} = sum({in}[1:])",
       {},
       [](const Value& v, int64_t) {
         __int128 s = 0;
         for (size_t i = 1; i < v.l.size(); ++i) s += v.l[i];
         return integer(checked(s));
       }},
      {"len",
       L,
       N,
       0,
       0,
       true,
       "return how many numbers there are",
       "{out} = len({in})",
       {},
       [](const Value& v, int64_t) { return integer(std::ssize(v.l)); }},
      {"max",
       L,
       N,
       0,
       0,
       true,
       "return the largest number (0 for an empty list)",
       "{out} = max({in}, default=0)",
       {{"min"}},
       [](const Value& v, int64_t) {
         return integer(v.l.empty() ? 0 : *std::max_element(v.l.begin(), v.l.end()));
       }},
      {"min",
       L,
       N,
       0,
       0,
       true,
       "return the smallest number (0 for an empty list)",
       "{out} = min({in}, default=0)",
       {{"max"}},
       [](const Value& v, int64_t) {
         return integer(v.l.empty() ? 0 : *std::min_element(v.l.begin(), v.l.end()));
       }},
      {"count_gt",
       L,
       N,
       0,
       9,
       true,
       "return how many numbers are greater than {k}",
       "count = 0\nfor x in {in}:\n    if x > {k}:\n        count += 1\n{out} = count",
       {{"count_ge"}, {"sum_gt"}},
       [](const Value& v, int64_t k) { return count_if(v, [k](int64_t x) { return x > k; }); }},
      {"count_ge",
       L,
       N,
       0,
       9,
       true,
       "return how many numbers are at least {k}",
       "count = 0\nfor x in {in}:\n    if x >= {k}:\n        count += 1\n{out} = count",
       {{"count_gt"}},
       [](const Value& v, int64_t k) { return count_if(v, [k](int64_t x) { return x >= k; }); }},
      {"sum_gt",
       L,
       N,
       0,
       9,
       false,
       "",
       "count = 0\nfor x in {in}:\n    if x > {k}:\n        count += x\n{out} = count",
       {},
       [](const Value& v, int64_t k) {
         __int128 s = 0;
         for (int64_t x : v.l)
           if (x > k) s += x;
         return integer(checked(s));
       }},
      {"first",
       L,
       N,
       0,
       0,
       true,
       "return the first number (0 for an empty list)",
       "{out} = {in}[0] if {in} else 0",
       {{"last"}},
       [](const Value& v, int64_t) { return integer(v.l.empty() ? 0 : v.l.front()); }},
      {"last",
       L,
       N,
       0,
       0,
       true,
       "return the last number (0 for an empty list)",
       "{out} = {in}[-1] if {in} else 0",
       {{"first"}},
       [](const Value& v, int64_t) { return integer(v.l.empty() ? 0 : v.l.back()); }},
      // int -> int
      {"n_add",
       N,
       N,
       1,
       9,
       true,
       "add {k}",
       "{out} = {in} + {k}",
       {{"n_sub"}},
       [](const Value& v, int64_t k) { return integer(checked(static_cast<__int128>(v.i) + k)); }},
      {"n_sub",
       N,
       N,
       1,
       9,
       true,
       "subtract {k}",
       "{out} = {in} - {k}",
       {{"n_add"}},
       [](const Value& v, int64_t k) { return integer(checked(static_cast<__int128>(v.i) - k)); }},
      {"n_mul",
       N,
       N,
       2,
       5,
       true,
       "multiply by {k}",
       "{out} = {in} * {k}",
       {{"n_add"}},
       [](const Value& v, int64_t k) { return integer(checked(static_cast<__int128>(v.i) * k)); }},
      {"n_square",
       N,
       N,
       0,
       0,
       true,
       "square it",
       "{out} = {in} * {in}",
       {{"n_double"}},
       [](const Value& v, int64_t) { return integer(checked(static_cast<__int128>(v.i) * v.i)); }},
      {"n_double",
       N,
       N,
       0,
       0,
       false,
       "",
       "{out} = {in} * 2",
       {},
       [](const Value& v, int64_t) { return integer(checked(static_cast<__int128>(v.i) * 2)); }},
      {"n_floordiv",
       N,
       N,
       2,
       5,
       true,
       "divide it by {k}, rounding down",
       "{out} = {in} // {k}",
       {{"n_mod"}},
       [](const Value& v, int64_t k) { return integer(floor_div(v.i, k)); }},
      {"n_mod",
       N,
       N,
       2,
       9,
       true,
       "take its remainder modulo {k}",
       "{out} = {in} % {k}",
       {{"n_floordiv"}},
       [](const Value& v, int64_t k) { return integer(floor_mod(v.i, k)); }},
      {"n_abs",
       N,
       N,
       0,
       0,
       true,
       "take its absolute value",
       "{out} = abs({in})",
       {{"n_negate"}},
       [](const Value& v, int64_t) { return integer(v.i < 0 ? -v.i : v.i); }},
      {"n_negate",
       N,
       N,
       0,
       0,
       true,
       "negate it",
       "{out} = -{in}",
       {{"n_abs"}},
       [](const Value& v, int64_t) { return integer(-v.i); }},
      {"digit_sum",
       N,
       N,
       0,
       0,
       true,
       "return the sum of its decimal digits (ignoring the sign)",
       "{out} = sum(int(c) for c in str(abs({in})))",
       {{"digit_count"}},
       [](const Value& v, int64_t) {
         int64_t s = 0;
         for (char c : digits_of(v.i)) s += c - '0';
         return integer(s);
       }},
      {"digit_count",
       N,
       N,
       0,
       0,
       true,
       "return how many decimal digits it has (ignoring the sign)",
       "{out} = len(str(abs({in})))",
       {{"digit_sum"}},
       [](const Value& v, int64_t) { return integer(std::ssize(digits_of(v.i))); }},
      // int -> list
      {"digits",
       N,
       L,
       0,
       0,
       true,
       "split it into the list of its decimal digits (ignoring the sign)",
       "{out} = [int(c) for c in str(abs({in}))]",
       {{"digits_slip"}},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (char c : digits_of(v.i)) out.push_back(c - '0');
         return list(out);
       }},
      {"digits_slip",
       N,
       L,
       0,
       0,
       false,
       "",
       "{out} = [int(c) for c in str(abs({in}))[::-1]]",
       {},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (char c : digits_of(v.i)) out.insert(out.begin(), c - '0');
         return list(out);
       }},
      // str -> str
      {"upper",
       S,
       S,
       0,
       0,
       true,
       "convert it to upper case",
       "{out} = {in}.upper()",
       {{"lower"}},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) { return std::string(1, upper_char(c)); });
       }},
      {"lower",
       S,
       S,
       0,
       0,
       true,
       "convert it to lower case",
       "{out} = {in}.lower()",
       {{"upper"}},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) { return std::string(1, lower_char(c)); });
       }},
      {"s_reverse",
       S,
       S,
       0,
       0,
       true,
       "reverse it",
       "{out} = {in}[::-1]",
       {},
       [](const Value& v, int64_t) {
         return text({v.s.rbegin(), v.s.rend()});
       }},
      {"no_vowels",
       S,
       S,
       0,
       0,
       true,
       "remove the vowels (a, e, i, o, u in either case)",
       "{out} = ''.join(c for c in {in} if c not in 'aeiouAEIOU')",
       {{"only_vowels"}, {"no_vowels_lower"}},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) { return is_vowel(c, true) ? "" : std::string(1, c); });
       }},
      {"only_vowels",
       S,
       S,
       0,
       0,
       false,
       "",
       "{out} = ''.join(c for c in {in} if c in 'aeiouAEIOU')",
       {},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) { return is_vowel(c, true) ? std::string(1, c) : ""; });
       }},
      {"no_vowels_lower",
       S,
       S,
       0,
       0,
       false,
       "",
       "{out} = ''.join(c for c in {in} if c not in 'aeiou')",
       {},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) { return is_vowel(c, false) ? "" : std::string(1, c); });
       }},
      {"swapcase",
       S,
       S,
       0,
       0,
       true,
       "swap the case of every letter",
       "{out} = {in}.swapcase()",
       {{"upper"}},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) {
           return std::string(
               1, std::isupper(static_cast<unsigned char>(c)) ? lower_char(c) : upper_char(c));
         });
       }},
      {"sort_chars",
       S,
       S,
       0,
       0,
       true,
       "sort its characters (by character code, ascending)",
       "{out} = ''.join(sorted({in}))",
       {{"sort_chars_desc"}},
       [](const Value& v, int64_t) {
         std::string s = v.s;
         std::sort(s.begin(), s.end());
         return text(s);
       }},
      {"sort_chars_desc",
       S,
       S,
       0,
       0,
       false,
       "",
       "{out} = ''.join(sorted({in}, reverse=True))",
       {},
       [](const Value& v, int64_t) {
         std::string s = v.s;
         std::sort(s.begin(), s.end(), std::greater<>());
         return text(s);
       }},
      {"double_chars",
       S,
       S,
       0,
       0,
       true,
       "write every character twice",
       "{out} = ''.join(c * 2 for c in {in})",
       {{"repeat"}},
       [](const Value& v, int64_t) { return chars(v, [](char c) { return std::string(2, c); }); }},
      {"repeat",
       S,
       S,
       0,
       0,
       false,
       "",
       "{out} = {in} * 2",
       {},
       [](const Value& v, int64_t) { return text_checked(v.s + v.s); }},
      {"s_take",
       S,
       S,
       1,
       4,
       true,
       "keep only the first {k} characters",
       "{out} = {in}[:{k}]",
       {{"s_take", 1}, {"s_drop"}},
       [](const Value& v, int64_t k) { return text(v.s.substr(0, static_cast<size_t>(k))); }},
      {"s_drop",
       S,
       S,
       1,
       3,
       true,
       "drop the first {k} characters",
       "{out} = {in}[{k}:]",
       {{"s_drop", 1}, {"s_take"}},
       [](const Value& v, int64_t k) {
         return text(v.s.substr(std::min(v.s.size(), static_cast<size_t>(k))));
       }},
      {"no_spaces",
       S,
       S,
       0,
       0,
       true,
       "remove every space",
       "{out} = {in}.replace(' ', '')",
       {{"strip"}},
       [](const Value& v, int64_t) {
         return chars(v, [](char c) { return c == ' ' ? "" : std::string(1, c); });
       }},
      {"strip",
       S,
       S,
       0,
       0,
       false,
       "",
       "{out} = {in}.strip()",
       {},
       [](const Value& v, int64_t) {
         size_t b = v.s.find_first_not_of(" \t\n\r\f\v");
         if (b == std::string::npos) return text("");
         size_t e = v.s.find_last_not_of(" \t\n\r\f\v");
         return text(v.s.substr(b, e - b + 1));
       }},
      // str -> int
      {"s_len",
       S,
       N,
       0,
       0,
       true,
       "return how many characters it has",
       "{out} = len({in})",
       {},
       [](const Value& v, int64_t) { return integer(std::ssize(v.s)); }},
      {"count_vowels",
       S,
       N,
       0,
       0,
       true,
       "return how many vowels it has (a, e, i, o, u in either case)",
       "{out} = sum(1 for c in {in} if c in 'aeiouAEIOU')",
       {{"count_vowels_lower"}},
       [](const Value& v, int64_t) {
         return integer(
             std::count_if(v.s.begin(), v.s.end(), [](char c) { return is_vowel(c, true); }));
       }},
      {"count_vowels_lower",
       S,
       N,
       0,
       0,
       false,
       "",
       "{out} = sum(1 for c in {in} if c in 'aeiou')",
       {},
       [](const Value& v, int64_t) {
         return integer(
             std::count_if(v.s.begin(), v.s.end(), [](char c) { return is_vowel(c, false); }));
       }},
      {"count_words",
       S,
       N,
       0,
       0,
       true,
       "return how many words it has (separated by spaces)",
       "{out} = len({in}.split())",
       {{"count_spaces"}},
       [](const Value& v, int64_t) { return integer(std::ssize(split_words(v.s))); }},
      {"count_spaces",
       S,
       N,
       0,
       0,
       false,
       "",
       "{out} = {in}.count(' ') + 1",
       {},
       [](const Value& v, int64_t) {
         return integer(std::count(v.s.begin(), v.s.end(), ' ') + 1);
       }},
      // str -> list
      {"word_lengths",
       S,
       L,
       0,
       0,
       true,
       "replace it by the list of its words' lengths",
       "{out} = [len(w) for w in {in}.split()]",
       {{"word_lengths_slip"}},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (const auto& w : split_words(v.s)) out.push_back(std::ssize(w));
         return list(out);
       }},
      {"word_lengths_slip",
       S,
       L,
       0,
       0,
       false,
       "",
       "{out} = [len(w) for w in {in}.split(' ')]",
       {},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (const auto& w : split_spaces(v.s)) out.push_back(std::ssize(w));
         return list(out);
       }},
      {"char_codes",
       S,
       L,
       0,
       0,
       true,
       "replace it by the list of its character codes (ord)",
       "{out} = [ord(c) for c in {in}]",
       {},
       [](const Value& v, int64_t) {
         std::vector<int64_t> out;
         for (unsigned char c : v.s) out.push_back(c);
         return list(out);
       }},
  };
  return table;
}

const Op& find_op(const std::string& name) {
  static const std::map<std::string, const Op*> by_name = [] {
    std::map<std::string, const Op*> m;
    for (const Op& op : ops()) m[op.name] = &op;
    return m;
  }();
  auto it = by_name.find(name);
  SHOAL_CHECK(it != by_name.end(), "programs: unknown operation '{}'", name);
  return *it->second;
}

bool takes_constant(const Op& op) {
  return op.kmax > 0;
}

}  // namespace shoal::tasks::programs
