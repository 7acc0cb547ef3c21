// Family "puzzles": constraint puzzles with exactly one solution, checked by a solver — knights
// and knaves (who is a knight, who a knave, from their statements) and 4x4 mini-sudoku. Difficulty
// adds people and statements, or removes givens. No tools: the skill is reasoning. Not zebra
// puzzles (family_zebra.cpp).
#include <fmt/format.h>

#include <array>
#include <cctype>
#include <functional>
#include <optional>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

// ---- knights and knaves ----

const std::vector<std::string> kPeople = {"Ada", "Bo", "Cy", "Dot", "Eve", "Fox"};

// A statement about the assignment (bit i set = person i is a knight).
struct Statement {
  int kind, x, y;  // 0: x is a knight, 1: x is a knave, 2: x and y are the same, 3: at least one of
                   // x, y is a knave, 4: exactly one of x, y is a knight
  bool holds(unsigned a) const {
    bool kx = a >> x & 1, ky = a >> y & 1;
    switch (kind) {
      case 0:
        return kx;
      case 1:
        return !kx;
      case 2:
        return kx == ky;
      case 3:
        return !kx || !ky;
      default:
        return kx != ky;
    }
  }
  std::string text(const std::vector<std::string>& n) const {
    const std::string &a = n[static_cast<size_t>(x)], &b = n[static_cast<size_t>(y)];
    switch (kind) {
      case 0:
        return a + " is a knight.";
      case 1:
        return a + " is a knave.";
      case 2:
        return a + " and " + b + " are of the same kind.";
      case 3:
        return "At least one of " + a + " and " + b + " is a knave.";
      default:
        return "Exactly one of " + a + " and " + b + " is a knight.";
    }
  }
};

// Assignments consistent with every (speaker, statement): knights say true things, knaves false.
std::vector<unsigned> kk_solutions(int n, const std::vector<std::pair<int, Statement>>& said) {
  std::vector<unsigned> out;
  for (unsigned a = 0; a < (1u << n); ++a) {
    bool ok = true;
    for (const auto& [who, s] : said) ok = ok && (s.holds(a) == static_cast<bool>(a >> who & 1));
    if (ok) out.push_back(a);
  }
  return out;
}

// "Ada: knight, Bo: knave" -> assignment; nullopt when a person is missing or named twice.
std::optional<unsigned> parse_roles(const std::string& answer, int n) {
  std::string a = lower(answer);
  unsigned out = 0;
  for (int i = 0; i < n; ++i) {
    std::string name = lower(kPeople[static_cast<size_t>(i)]);
    int found = 0;
    for (size_t at = a.find(name); at != std::string::npos; at = a.find(name, at + 1)) {
      bool left = at == 0 || !std::isalpha(static_cast<unsigned char>(a[at - 1]));
      bool right = at + name.size() >= a.size() ||
                   !std::isalpha(static_cast<unsigned char>(a[at + name.size()]));
      if (!left || !right) continue;
      // The first role word after the name.
      size_t kn = a.find("knight", at), kv = a.find("knave", at);
      if (kn == std::string::npos && kv == std::string::npos) return std::nullopt;
      if (kn < kv) out |= 1u << i;
      ++found;
    }
    if (found != 1) return std::nullopt;
  }
  return out;
}

std::string roles_text(unsigned a, int n) {
  std::string s;
  for (int i = 0; i < n; ++i)
    s += (i ? ", " : "") + kPeople[static_cast<size_t>(i)] + ": " +
         ((a >> i & 1) ? "knight" : "knave");
  return s;
}

// ---- 4x4 sudoku ----

using Grid = std::array<int, 16>;  // 0 = blank

bool placeable(const Grid& g, int cell, int v) {
  int r = cell / 4, c = cell % 4;
  for (int i = 0; i < 4; ++i)
    if (g[static_cast<size_t>(r * 4 + i)] == v || g[static_cast<size_t>(i * 4 + c)] == v)
      return false;
  int br = r / 2 * 2, bc = c / 2 * 2;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      if (g[static_cast<size_t>((br + i) * 4 + bc + j)] == v) return false;
  return true;
}

// Solutions counted up to `limit`; the first is left in `first`.
int count_solutions(Grid g, int limit, Grid* first) {
  int cell = -1;
  for (int i = 0; i < 16 && cell < 0; ++i)
    if (g[static_cast<size_t>(i)] == 0) cell = i;
  if (cell < 0) {
    if (first) *first = g;
    return 1;
  }
  int n = 0;
  for (int v = 1; v <= 4 && n < limit; ++v)
    if (placeable(g, cell, v)) {
      g[static_cast<size_t>(cell)] = v;
      n += count_solutions(g, limit - n, n == 0 ? first : nullptr);
      g[static_cast<size_t>(cell)] = 0;
    }
  return n;
}

std::string grid_text(const Grid& g, char blank) {
  std::string s;
  for (int r = 0; r < 4; ++r) {
    if (r) s += ' ';
    for (int c = 0; c < 4; ++c) {
      int v = g[static_cast<size_t>(r * 4 + c)];
      s += v ? static_cast<char>('0' + v) : blank;
    }
  }
  return s;
}

// Exactly 16 digits 1-4 (separators allowed, nothing else).
std::optional<Grid> parse_grid(const std::string& answer) {
  Grid g{};
  size_t n = 0;
  for (char c : answer) {
    if (c >= '1' && c <= '4') {
      if (n == 16) return std::nullopt;
      g[n++] = c - '0';
    } else if (!(c == ' ' || c == ',' || c == '/' || c == '|' || c == '\n')) {
      return std::nullopt;
    }
  }
  if (n != 16) return std::nullopt;
  return g;
}

class PuzzlesFamily final : public Family {
 public:
  std::string name() const override { return "puzzles"; }
  std::string description() const override {
    return "constraint puzzles with one solution (knights and knaves, 4x4 sudoku), checked by a "
           "solver";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    if (rng.chance(0.5)) {
      int n = std::min(2 + d / 2 + (d >= 4 ? 1 : 0), 6);  // 2,3,3,5,5 people
      unsigned truth = static_cast<unsigned>(rng.uniform(0, (1 << n) - 1));
      std::vector<std::pair<int, Statement>> said;
      for (int guard = 0; guard < 500; ++guard) {
        Statement s{rng.index(5), rng.index(static_cast<size_t>(n)),
                    rng.index(static_cast<size_t>(n))};
        if (s.kind >= 2 && s.x == s.y) continue;
        int who = rng.index(static_cast<size_t>(n));
        if (s.holds(truth) != static_cast<bool>(truth >> who & 1))
          continue;  // a knight says what holds
        said.push_back({who, s});
        if (static_cast<int>(said.size()) >= n && kk_solutions(n, said).size() == 1) break;
      }
      SHOAL_CHECK(kk_solutions(n, said).size() == 1,
                  "puzzles: no unique knights-and-knaves set for seed {}", seed);
      std::vector<std::string> names(kPeople.begin(), kPeople.begin() + n);
      std::string text = fmt::format(
          "On an island every inhabitant is a knight (always tells the truth) or a knave "
          "(always lies). You meet {}.",
          n);
      for (const auto& [who, s] : said)
        text += fmt::format(" {} says: \"{}\"", names[static_cast<size_t>(who)], s.text(names));
      text += " Who is a knight and who is a knave? Answer like `Ada: knight, Bo: knave`.";
      json statements = json::array();
      for (const auto& [who, s] : said) statements.push_back({who, s.kind, s.x, s.y});
      t.messages = {message("system", system_prompt()), message("user", text)};
      t.environment = {{"puzzle", "knights_knaves"}, {"people", n}, {"statements", statements}};
      t.verifier = {{"solution", roles_text(truth, n)}};
      t.metadata = {{"puzzle", "knights_knaves"}, {"people", n}, {"statements", said.size()}};
      return t;
    }
    // Sudoku: a shuffled solved grid, then blanks while the solution stays unique.
    Grid g{};
    std::vector<int> digits = {1, 2, 3, 4};
    rng.shuffle(digits);
    const int base[16] = {0, 1, 2, 3, 2, 3, 0, 1, 1, 0, 3, 2, 3, 2, 1, 0};
    for (int i = 0; i < 16; ++i) g[static_cast<size_t>(i)] = digits[static_cast<size_t>(base[i])];
    if (rng.chance(0.5))  // swap the two row bands
      for (int i = 0; i < 8; ++i)
        std::swap(g[static_cast<size_t>(i)], g[static_cast<size_t>(i + 8)]);
    Grid solution = g;
    int blanks = std::vector<int>{5, 7, 9, 10, 11}[static_cast<size_t>(d - 1)];
    int made = 0;
    for (int cell : rng.sample(16, 16)) {
      if (made == blanks) break;
      int keep = g[static_cast<size_t>(cell)];
      g[static_cast<size_t>(cell)] = 0;
      if (count_solutions(g, 2, nullptr) == 1)
        ++made;
      else
        g[static_cast<size_t>(cell)] = keep;
    }
    t.messages = {
        message("system", system_prompt()),
        message("user",
                fmt::format("Solve this 4x4 sudoku (each row, column and 2x2 box holds 1-4 once). "
                            "Rows, top to bottom, '.' for a blank: {}. Answer with the four rows "
                            "as digits, e.g. `1234 3412 2143 4321`.",
                            grid_text(g, '.')))};
    t.environment = {{"puzzle", "sudoku"}, {"grid", grid_text(g, '0')}};
    t.verifier = {{"solution", grid_text(solution, '0')}};
    t.metadata = {{"puzzle", "sudoku"}, {"blanks", made}};
    return t;
  }

  Episode demonstrate(const Task& t, sandbox::Client*) const override {
    Episode e;
    std::string why = t.environment["puzzle"] == "sudoku"
                          ? "Filling each blank where only one digit fits."
                          : "Checking every assignment against the statements.";
    e.messages.push_back(message("assistant", why + "\n" + answer_line(solve(t))));
    return e;
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed, sandbox::Client*) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    std::string s = solve(t);
    std::string wrong;
    if (t.environment["puzzle"] == "sudoku") {
      auto g = *parse_grid(s);
      Grid given = *parse_grid_zeros(t.environment["grid"]);
      std::vector<int> blanks;
      for (int i = 0; i < 16; ++i)
        if (given[static_cast<size_t>(i)] == 0) blanks.push_back(i);
      int cell = rng.pick(blanks);
      if (rng.chance(0.5)) {  // one blank filled wrong
        g[static_cast<size_t>(cell)] = g[static_cast<size_t>(cell)] % 4 + 1;
      } else {  // two cells of a row swapped (a valid-looking row, broken columns)
        int r = cell / 4, other = r * 4 + (cell % 4 + 1 + rng.index(3)) % 4;
        std::swap(g[static_cast<size_t>(cell)], g[static_cast<size_t>(other)]);
        if (g == *parse_grid(s))
          g[static_cast<size_t>(cell)] = g[static_cast<size_t>(cell)] % 4 + 1;
      }
      wrong = grid_text(g, '0');
    } else {
      int n = t.environment["people"];
      unsigned a = *parse_roles(s, n);
      int kind = rng.index(3);
      if (kind == 0) a ^= 1u << rng.index(static_cast<size_t>(n));  // one role flipped
      if (kind == 1) a ^= (1u << n) - 1;                            // every role flipped
      wrong = roles_text(a, n);
      if (kind == 2) wrong = wrong.substr(0, wrong.rfind(','));  // one person left out
    }
    Episode e;
    e.messages.push_back(message("assistant", "Working it through.\n" + answer_line(wrong)));
    return e;
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    if (t.environment["puzzle"] == "sudoku") {
      auto g = parse_grid(*ans);
      if (!g) return fail("not 16 digits 1-4", {{"answer", 0}});
      Grid given = *parse_grid_zeros(t.environment["grid"]);
      for (int i = 0; i < 16; ++i)
        if (given[static_cast<size_t>(i)] &&
            given[static_cast<size_t>(i)] != (*g)[static_cast<size_t>(i)])
          return fail("changes a given digit", {{"answer", 0}});
      for (int i = 0; i < 16; ++i) {
        Grid h = *g;
        int v = h[static_cast<size_t>(i)];
        h[static_cast<size_t>(i)] = 0;
        if (!placeable(h, i, v)) return fail("breaks a row, column or box", {{"answer", 0}});
      }
      return pass("a valid completion", {{"answer", 1}});
    }
    int n = t.environment["people"];
    auto a = parse_roles(*ans, n);
    if (!a) return fail("does not name each person's role once", {{"answer", 0}});
    std::vector<std::pair<int, Statement>> said;
    for (const auto& s : t.environment["statements"]) said.push_back({s[0], {s[1], s[2], s[3]}});
    for (const auto& [who, s] : said)
      if (s.holds(*a) != static_cast<bool>(*a >> who & 1))
        return fail("contradicts " + kPeople[static_cast<size_t>(who)] + "'s statement",
                    {{"answer", 0}});
    return pass("consistent with every statement", {{"answer", 1}});
  }

 private:
  static std::optional<Grid> parse_grid_zeros(const std::string& s) {
    Grid g{};
    size_t n = 0;
    for (char c : s)
      if (c >= '0' && c <= '4' && n < 16) g[n++] = c - '0';
    if (n != 16) return std::nullopt;
    return g;
  }

  // Solves from the environment alone (the solver, not the stored solution).
  static std::string solve(const Task& t) {
    if (t.environment["puzzle"] == "sudoku") {
      Grid first{};
      SHOAL_CHECK(count_solutions(*parse_grid_zeros(t.environment["grid"]), 2, &first) == 1,
                  "puzzles: not unique");
      return grid_text(first, '0');
    }
    int n = t.environment["people"];
    std::vector<std::pair<int, Statement>> said;
    for (const auto& s : t.environment["statements"]) said.push_back({s[0], {s[1], s[2], s[3]}});
    auto sols = kk_solutions(n, said);
    SHOAL_CHECK(sols.size() == 1, "puzzles: not unique");
    return roles_text(sols[0], n);
  }
};

}  // namespace

std::unique_ptr<Family> make_puzzles_family() {
  return std::make_unique<PuzzlesFamily>();
}

}  // namespace shoal::tasks
