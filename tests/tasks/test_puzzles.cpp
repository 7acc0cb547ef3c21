// The puzzles family: every generated puzzle has exactly one solution (the verifier checks the
// constraints, so uniqueness is what makes a consistent answer the right one), answers in other
// layouts pass, and near misses (a flipped role, a changed given, a digit too many) fail.
#include <gtest/gtest.h>

#include "tasks/registry.h"

namespace shoal::tasks {
namespace {

Episode answer(const std::string& text) {
  Episode e;
  e.messages.push_back({{"role", "assistant"}, {"content", "ANSWER: " + text}});
  return e;
}

TEST(TasksPuzzles, UniqueSolutionsAndNearMisses) {
  const Family& f = find_family("puzzles");
  int sudoku = 0, knights = 0;
  for (uint64_t seed = 0; seed < 60; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    std::string gold = t.verifier["solution"];
    EXPECT_TRUE(f.verify(t, answer(gold)).solved()) << gold;
    if (t.environment["puzzle"] == "sudoku") {
      ++sudoku;
      // Other layouts of the same grid.
      std::string slashed = gold;
      for (char& c : slashed)
        if (c == ' ') c = '/';
      EXPECT_TRUE(f.verify(t, answer(slashed)).solved());
      // Every single-cell change fails (a given changed, or a row/column/box broken): with the
      // givens' solution unique, no other grid passes.
      for (size_t i = 0; i < gold.size(); ++i) {
        if (gold[i] == ' ') continue;
        for (char d = '1'; d <= '4'; ++d) {
          if (d == gold[i]) continue;
          std::string w = gold;
          w[i] = d;
          EXPECT_FALSE(f.verify(t, answer(w)).solved()) << w;
        }
      }
      EXPECT_FALSE(f.verify(t, answer(gold + " 1")).solved());
      EXPECT_FALSE(f.verify(t, answer(gold.substr(0, gold.size() - 1))).solved());
      EXPECT_GE(t.metadata["blanks"].get<int>(), 4);
    } else {
      ++knights;
      int n = t.environment["people"];
      // "X is a knight; Y is a knave" reads the same.
      std::string prose = gold;
      for (size_t at; (at = prose.find(": ")) != std::string::npos;) prose.replace(at, 2, " is a ");
      EXPECT_TRUE(f.verify(t, answer(prose)).solved()) << prose;
      // Any other assignment contradicts a statement (the solution is unique).
      for (unsigned a = 0; a < (1u << n); ++a) {
        std::string s;
        for (int i = 0; i < n; ++i)
          s += std::string(i ? ", " : "") +
               std::vector<std::string>{
                   "Ada", "Bo", "Cy", "Dot", "Eve", "Fox"}[static_cast<size_t>(i)] +
               ": " + ((a >> i & 1) ? "knight" : "knave");
        EXPECT_EQ(f.verify(t, answer(s)).solved(), s == gold) << s;
      }
      EXPECT_FALSE(f.verify(t, answer("everyone is a knight")).solved());
      EXPECT_FALSE(f.verify(t, answer(gold + ", Ada: knave")).solved()) << "a person named twice";
    }
  }
  EXPECT_GT(sudoku, 10);
  EXPECT_GT(knights, 10);
}

}  // namespace
}  // namespace shoal::tasks
