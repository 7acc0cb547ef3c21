// The zebra family, checked by a brute-force solver of its own (every arrangement tried): each
// puzzle has exactly one solution, the gold answer is that solution's, clue sets are minimal and
// difficulty 5 never places anyone directly; answers in other words pass, and
// every other candidate or a hedge between two fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>

#include "tasks/registry.h"

namespace shoal::tasks {
namespace {

// The clue types as the family stores them: [type, a1, v1, a2, v2, k].
enum { kAt, kSame, kApart, kLeftOf, kNextTo, kBefore, kEnd, kNotAt };

// pos[i][v]: the house of value v of the puzzle's i-th attribute.
using Arrangement = std::vector<std::vector<int>>;
struct Clue {
  int type, a1, v1, a2, v2, k;  // attributes as positions in the puzzle's list
};

std::vector<Clue> parse_clues(const Task& t, const json& clues) {
  std::vector<int> attrs = t.environment["attributes"];
  auto local = [&](int a) {
    auto it = std::find(attrs.begin(), attrs.end(), a);
    EXPECT_NE(it, attrs.end()) << "a clue about attribute " << a << ", not in the puzzle";
    return static_cast<int>(it - attrs.begin());
  };
  std::vector<Clue> out;
  for (const auto& c : clues) {
    int type = c[0];
    bool two = type != kAt && type != kEnd && type != kNotAt;
    out.push_back({type, local(c[1]), c[2], two ? local(c[3]) : 0, c[4], c[5]});
  }
  return out;
}

bool holds(const Clue& c, const Arrangement& pos, int houses) {
  int p = pos[static_cast<size_t>(c.a1)][static_cast<size_t>(c.v1)];
  int q = pos[static_cast<size_t>(c.a2)][static_cast<size_t>(c.v2)];
  switch (c.type) {
    case kAt:
      return p == c.k;
    case kSame:
      return p == q;
    case kApart:
      return p != q;
    case kLeftOf:
      return p + 1 == q;
    case kNextTo:
      return std::abs(p - q) == 1;
    case kBefore:
      return p < q;
    case kEnd:
      return p == 0 || p == houses - 1;
    case kNotAt:
      return p != c.k;
  }
  ADD_FAILURE() << "unknown clue type " << c.type;
  return false;
}

// Every arrangement (all permutations of every attribute) checked against every clue.
std::vector<Arrangement> brute_force(const Task& t, const std::vector<Clue>& clues) {
  int houses = t.environment["houses"];
  size_t n_attrs = t.environment["attributes"].size();
  std::vector<std::vector<int>> perms;
  std::vector<int> perm(static_cast<size_t>(houses));
  for (int i = 0; i < houses; ++i) perm[static_cast<size_t>(i)] = i;
  do perms.push_back(perm);
  while (std::next_permutation(perm.begin(), perm.end()));
  std::vector<Arrangement> out;
  std::vector<size_t> idx(n_attrs, 0);
  Arrangement a(n_attrs);
  while (true) {
    for (size_t i = 0; i < n_attrs; ++i) a[i] = perms[idx[i]];
    bool ok = true;
    for (const Clue& c : clues) ok = ok && holds(c, a, houses);
    if (ok) out.push_back(a);
    size_t i = 0;
    while (i < idx.size() && ++idx[i] == perms.size()) idx[i++] = 0;
    if (i == idx.size()) break;
  }
  return out;
}

Episode answer(const std::string& text) {
  Episode e;
  e.messages.push_back({{"role", "assistant"}, {"content", "ANSWER: " + text}});
  return e;
}

const std::vector<std::vector<std::string>> kValues = {{"Ada", "Bo", "Cy", "Dot"},
                                                       {"red", "green", "blue", "white"},
                                                       {"cat", "dog", "fish", "bird"},
                                                       {"tea", "coffee", "milk", "juice"},
                                                       {"apple", "pear", "plum", "fig"}};

TEST(TasksZebra, OneSolutionMinimalCluesAndTheRightAnswer) {
  const Family& f = find_family("zebra");
  for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d)
    for (uint64_t seed = 0; seed < 6; ++seed) {
      Task t = f.generate(seed, d);
      std::vector<Clue> clues = parse_clues(t, t.environment["clues"]);
      auto sols = brute_force(t, clues);
      ASSERT_EQ(sols.size(), 1u) << "d" << d << " seed " << seed;
      std::vector<int> attrs = t.environment["attributes"];
      EXPECT_EQ(attrs.size(), d == 1 || d == 3 ? 3u : 4u);
      EXPECT_EQ(t.environment["houses"], d <= 2 ? 3 : 4);
      // The gold answer is the solution's.
      const json& q = t.environment["question"];
      auto local = [&](int a) {
        return static_cast<size_t>(std::find(attrs.begin(), attrs.end(), a) - attrs.begin());
      };
      int house = sols[0][local(q[1])][q[2].get<size_t>()];
      std::string want;
      if (q[0].get<int>() < 0) {
        want = std::to_string(house + 1);
      } else {
        const auto& row = sols[0][local(q[0])];
        want = kValues[q[0].get<size_t>()]
                      [static_cast<size_t>(std::find(row.begin(), row.end(), house) - row.begin())];
      }
      EXPECT_EQ(t.verifier["answer"], want);
      // Minimal: without any one clue, more than one arrangement fits.
      for (size_t i = 0; i < clues.size(); ++i) {
        std::vector<Clue> fewer = clues;
        fewer.erase(fewer.begin() + static_cast<std::ptrdiff_t>(i));
        EXPECT_GT(brute_force(t, fewer).size(), 1u) << "clue " << i << " is redundant";
      }
      if (d == 5) {
        for (const Clue& c : clues) EXPECT_NE(c.type, kAt) << "a direct placement at d5";
      }
    }
}

TEST(TasksZebra, AnswersInOtherWordsPassAndEveryOtherCandidateFails) {
  const Family& f = find_family("zebra");
  int numbers = 0, values = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    Task t = f.generate(seed, 1 + static_cast<int>(seed % 5));
    std::string gold = t.verifier["answer"];
    int ask = t.environment["question"][0];
    int houses = t.environment["houses"];
    EXPECT_TRUE(f.verify(t, answer(gold)).solved()) << gold;
    std::vector<std::string> others;
    if (ask < 0) {
      ++numbers;
      const char* ordinal[] = {"first", "second", "third", "fourth"};
      EXPECT_TRUE(f.verify(t, answer("house " + gold)).solved());
      EXPECT_TRUE(f.verify(t, answer(std::string("the ") + ordinal[std::stoi(gold) - 1] + " house"))
                      .solved());
      for (int h = 1; h <= houses; ++h) others.push_back(std::to_string(h));
    } else {
      ++values;
      EXPECT_TRUE(f.verify(t, answer("The " + gold + ".")).solved());
      EXPECT_TRUE(f.verify(t, answer("**" + gold + "**")).solved());
      for (int v = 0; v < houses; ++v)
        others.push_back(kValues[static_cast<size_t>(ask)][static_cast<size_t>(v)]);
    }
    for (const auto& o : others) {
      EXPECT_EQ(f.verify(t, answer(o)).solved(), o == gold) << o;
      if (o != gold) {
        EXPECT_FALSE(f.verify(t, answer(gold + " or " + o)).solved()) << "a hedge";
      }
    }
    EXPECT_FALSE(f.verify(t, answer("I am not sure")).solved());
  }
  EXPECT_GT(numbers, 3);
  EXPECT_GT(values, 10);
}

}  // namespace
}  // namespace shoal::tasks
