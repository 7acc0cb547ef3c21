// Family "zebra": Einstein-style logic grids — 3-4 houses in a row, 3-4 attributes (name, colour,
// pet, drink, fruit), clues (same house, next to, directly left of, somewhere left of, an end
// house, house k or not) added until a backtracking solver finds exactly one arrangement, then
// one attribute asked; every clue is needed. Difficulty: a bigger grid, direct placements ("lives
// in house k") fading out for relations, and none at all at 5. No tools. Not knights-and-knaves or
// sudoku (family_puzzles.cpp).
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <set>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/rng.h"

namespace shoal::tasks {
namespace {

struct Attribute {
  const char* name;
  std::array<const char*, 4> values;
  const char* phrase;    // the holder of {v}: "the {v} owner"
  const char* question;  // asks this attribute of {e}
};

// Attribute 0 (names) is in every puzzle.
const std::array<Attribute, 5> kAttributes = {{
    {"name", {"Ada", "Bo", "Cy", "Dot"}, "{v}", "What is the name of {e}?"},
    {"colour",
     {"red", "green", "blue", "white"},
     "the person in the {v} house",
     "What colour is the house of {e}?"},
    {"pet", {"cat", "dog", "fish", "bird"}, "the {v} owner", "Which pet does {e} own?"},
    {"drink", {"tea", "coffee", "milk", "juice"}, "the {v} drinker", "What does {e} drink?"},
    {"fruit",
     {"apple", "pear", "plum", "fig"},
     "the person who eats the {v}s",
     "Which fruit does {e} eat?"},
}};

enum ClueType { kAt, kSame, kApart, kLeftOf, kNextTo, kBefore, kEnd, kNotAt, kClueTypes };

// pos[a][v]: the house (0-based) of value v of attribute a.
using Grid = std::vector<std::array<int, 4>>;

struct Clue {
  int type, a1, v1, a2 = 0, v2 = 0, k = 0;
  bool holds(const Grid& pos, int houses) const {
    int p = pos[static_cast<size_t>(a1)][static_cast<size_t>(v1)];
    int q = pos[static_cast<size_t>(a2)][static_cast<size_t>(v2)];
    switch (type) {
      case kAt:
        return p == k;
      case kSame:
        return p == q;
      case kApart:
        return p != q;
      case kLeftOf:
        return p + 1 == q;
      case kNextTo:
        return p - q == 1 || q - p == 1;
      case kBefore:
        return p < q;
      case kEnd:
        return p == 0 || p == houses - 1;
      default:
        return p != k;
    }
  }
  bool two_entities() const { return type != kAt && type != kEnd && type != kNotAt; }
  int last_attribute() const { return two_entities() ? std::max(a1, a2) : a1; }
  json to_json() const { return {type, a1, v1, a2, v2, k}; }
};

std::string entity(int a, int v) {
  std::string p = kAttributes[static_cast<size_t>(a)].phrase;
  return p.replace(p.find("{v}"), 3,
                   kAttributes[static_cast<size_t>(a)].values[static_cast<size_t>(v)]);
}

std::string sentence(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string clue_text(const Clue& c) {
  std::string e1 = entity(c.a1, c.v1), e2 = entity(c.a2, c.v2);
  switch (c.type) {
    case kAt:
      return sentence(fmt::format("{} lives in house {}.", e1, c.k + 1));
    case kSame:
      return sentence(fmt::format("{} and {} live in the same house.", e1, e2));
    case kApart:
      return sentence(fmt::format("{} and {} live in different houses.", e1, e2));
    case kLeftOf:
      return sentence(fmt::format("{} lives directly left of {}.", e1, e2));
    case kNextTo:
      return sentence(fmt::format("{} lives next to {}.", e1, e2));
    case kBefore:
      return sentence(fmt::format("{} lives somewhere left of {}.", e1, e2));
    case kEnd:
      return sentence(fmt::format("{} lives in one of the two end houses.", e1));
    default:
      return sentence(fmt::format("{} does not live in house {}.", e1, c.k + 1));
  }
}

// Every arrangement consistent with the clues, up to `limit` (attributes assigned one at a time,
// each clue checked as soon as its attributes are placed).
class Solver {
 public:
  Solver(int houses, int attributes, const std::vector<Clue>& clues)
      : houses_(houses), attributes_(attributes), by_attribute_(static_cast<size_t>(attributes)) {
    std::array<int, 4> perm = {0, 1, 2, 3};
    do perms_.push_back(perm);
    while (std::next_permutation(perm.begin(), perm.begin() + houses));
    for (const Clue& c : clues) by_attribute_[static_cast<size_t>(c.last_attribute())].push_back(c);
  }
  std::vector<Grid> solve(size_t limit) {
    std::vector<Grid> out;
    Grid pos(static_cast<size_t>(attributes_));
    place(0, pos, limit, out);
    return out;
  }

 private:
  void place(int a, Grid& pos, size_t limit, std::vector<Grid>& out) {
    if (a == attributes_) {
      out.push_back(pos);
      return;
    }
    for (const auto& perm : perms_) {
      if (out.size() >= limit) return;
      pos[static_cast<size_t>(a)] = perm;
      bool ok = true;
      for (const Clue& c : by_attribute_[static_cast<size_t>(a)]) ok = ok && c.holds(pos, houses_);
      if (ok) place(a + 1, pos, limit, out);
    }
  }
  int houses_, attributes_;
  std::vector<std::array<int, 4>> perms_;
  std::vector<std::vector<Clue>> by_attribute_;
};

// The question: attribute `ask` (-1: the house number) of the holder of (about_a, about_v).
struct Question {
  int ask, about_a, about_v;
};

std::string answer_of(const Grid& pos, int houses, const Question& q) {
  int house = pos[static_cast<size_t>(q.about_a)][static_cast<size_t>(q.about_v)];
  if (q.ask < 0) return std::to_string(house + 1);
  for (int v = 0; v < houses; ++v)
    if (pos[static_cast<size_t>(q.ask)][static_cast<size_t>(v)] == house)
      return kAttributes[static_cast<size_t>(q.ask)].values[static_cast<size_t>(v)];
  SHOAL_FAIL("zebra: a house without a value");
}

// One line per house; `pos` over the puzzle's attributes, `chosen` their kAttributes indices.
std::string grid_text(const Grid& pos, const std::vector<int>& chosen, int houses) {
  std::string s;
  for (int h = 0; h < houses; ++h) {
    s += fmt::format("House {}:", h + 1);
    for (size_t a = 0; a < pos.size(); ++a)
      for (int v = 0; v < houses; ++v)
        if (pos[a][static_cast<size_t>(v)] == h)
          s += fmt::format(
              "{} {}", a ? "," : "",
              kAttributes[static_cast<size_t>(chosen[a])].values[static_cast<size_t>(v)]);
    s += "\n";
  }
  return s;
}

// The candidates of the asked attribute an answer names (as words; "cats" counts for "cat").
std::set<std::string> named(const std::string& answer, int ask, int houses) {
  static const std::array<std::array<const char*, 4>, 4> numbers = {
      {{"1", "one", "first", "1st"},
       {"2", "two", "second", "2nd"},
       {"3", "three", "third", "3rd"},
       {"4", "four", "fourth", "4th"}}};
  std::set<std::string> words, out;
  std::string w = normalize_words(answer);
  for (size_t at = 0; at <= w.size();) {
    size_t sp = w.find(' ', at);
    std::string word = w.substr(at, sp == std::string::npos ? sp : sp - at);
    words.insert(word);
    if (word.size() > 1 && word.back() == 's') words.insert(word.substr(0, word.size() - 1));
    if (sp == std::string::npos) break;
    at = sp + 1;
  }
  for (int v = 0; v < houses; ++v) {
    if (ask < 0) {
      for (const char* n : numbers[static_cast<size_t>(v)])
        if (words.count(n)) out.insert(std::to_string(v + 1));
    } else {
      std::string value =
          lower(kAttributes[static_cast<size_t>(ask)].values[static_cast<size_t>(v)]);
      if (words.count(value)) out.insert(value);
    }
  }
  return out;
}

class ZebraFamily final : public Family {
 public:
  std::string name() const override { return "zebra"; }
  std::string description() const override {
    return "zebra logic grids (3-4 houses, 3-4 attributes) with one solution, checked by a solver";
  }

  Task make(uint64_t seed, int d) const override {
    Rng rng(name(), seed, d);
    Task t = blank(seed, d);
    int houses = d <= 2 ? 3 : 4;
    int attributes = d == 1 || d == 3 ? 3 : 4;
    // Clue-type weights (kAt ... kNotAt): direct placements fade out, relations take over.
    static const std::array<std::array<int, kClueTypes>, 5> weights = {{
        {4, 4, 1, 1, 1, 0, 0, 1},
        {3, 4, 1, 1, 1, 1, 1, 1},
        {2, 3, 2, 2, 2, 1, 1, 1},
        {1, 3, 2, 2, 2, 2, 1, 1},
        {0, 2, 2, 3, 3, 2, 1, 2},
    }};
    const auto& w = weights[static_cast<size_t>(d - 1)];
    int total = 0;
    for (int x : w) total += x;

    // The attributes: names plus a random choice of the others, each a random arrangement.
    std::vector<int> chosen = {0};
    for (int a : rng.sample(4, attributes - 1)) chosen.push_back(a + 1);
    std::sort(chosen.begin(), chosen.end());
    Grid truth(static_cast<size_t>(attributes));
    for (auto& row : truth) {
      std::vector<int> p = rng.sample(houses, houses);
      for (int v = 0; v < houses; ++v) row[static_cast<size_t>(v)] = p[static_cast<size_t>(v)];
    }
    // While generating, clues index the chosen attributes (0..attributes-1); remap() below turns
    // them into kAttributes indices for the text and the stored puzzle.
    auto random_clue = [&]() {
      int r = static_cast<int>(rng.uniform(0, total - 1)), type = 0;
      while (r >= w[static_cast<size_t>(type)]) r -= w[static_cast<size_t>(type++)];
      Clue c{type, rng.index(static_cast<size_t>(attributes)),
             rng.index(static_cast<size_t>(houses))};
      c.a2 = rng.index(static_cast<size_t>(attributes));
      c.v2 = rng.index(static_cast<size_t>(houses));
      c.k = rng.index(static_cast<size_t>(houses));
      return c;
    };
    auto useful = [&](Clue& c) {
      if (!c.two_entities()) c.a2 = c.v2 = 0;  // unused: fixed, so duplicates are seen
      if (c.type != kAt && c.type != kNotAt) c.k = 0;
      if (c.two_entities() && c.a1 == c.a2) return false;  // within one attribute: no news
      return c.holds(truth, houses);
    };
    std::vector<Clue> clues;
    std::set<std::string> seen;
    for (int guard = 0; guard < 5000; ++guard) {
      Clue c = random_clue();
      if (!useful(c) || !seen.insert(c.to_json().dump()).second) continue;
      clues.push_back(c);
      if (Solver(houses, attributes, clues).solve(2).size() == 1) break;
    }
    SHOAL_CHECK(Solver(houses, attributes, clues).solve(2).size() == 1,
                "zebra: no unique clue set for seed {}", seed);
    // Minimal: every clue needed (redundant ones dropped, tried in random order).
    rng.shuffle(clues);
    for (size_t i = clues.size(); i-- > 0;) {
      std::vector<Clue> fewer = clues;
      fewer.erase(fewer.begin() + static_cast<std::ptrdiff_t>(i));
      if (Solver(houses, attributes, fewer).solve(2).size() == 1) clues = fewer;
    }
    rng.shuffle(clues);

    // The question: from difficulty 3, preferably one no single clue answers.
    Question q{};
    for (int guard = 0; guard < 100; ++guard) {
      q.about_a = rng.index(static_cast<size_t>(attributes));
      q.about_v = rng.index(static_cast<size_t>(houses));
      q.ask = static_cast<int>(rng.uniform(-1, attributes - 2));  // -1: the house number
      if (q.ask >= q.about_a) ++q.ask;                            // never the attribute given
      bool direct = false;
      for (const Clue& c : clues) {
        bool first = c.a1 == q.about_a && c.v1 == q.about_v;
        bool second = c.a2 == q.about_a && c.v2 == q.about_v;
        direct = direct || (q.ask < 0 && c.type == kAt && first) ||
                 (c.type == kSame && ((first && c.a2 == q.ask) || (second && c.a1 == q.ask)));
      }
      if (d < 3 || !direct) break;
    }

    // Remap attribute indices to the chosen attributes for the text and the stored puzzle.
    auto remap = [&](Clue c) {
      c.a1 = chosen[static_cast<size_t>(c.a1)];
      c.a2 = chosen[static_cast<size_t>(c.a2)];
      return c;
    };
    Grid full(kAttributes.size(), std::array<int, 4>{0, 0, 0, 0});
    for (size_t a = 0; a < chosen.size(); ++a) full[static_cast<size_t>(chosen[a])] = truth[a];
    Question asked{q.ask < 0 ? -1 : chosen[static_cast<size_t>(q.ask)],
                   chosen[static_cast<size_t>(q.about_a)], q.about_v};

    std::string text = fmt::format(
        "{} houses stand in a row, numbered 1 to {} from left to right, one person in each. The "
        "houses all differ in each of these:",
        houses == 3 ? "Three" : "Four", houses);
    for (int a : chosen) {
      const Attribute& attr = kAttributes[static_cast<size_t>(a)];
      text += fmt::format(" {} (", attr.name);
      for (int v = 0; v < houses; ++v)
        text += fmt::format("{}{}", v ? ", " : "", attr.values[static_cast<size_t>(v)]);
      text += a == chosen.back() ? ")." : "),";
    }
    text += "\n\nClues:\n";
    json stored = json::array();
    for (size_t i = 0; i < clues.size(); ++i) {
      Clue c = remap(clues[i]);
      text += fmt::format("{}. {}\n", i + 1, clue_text(c));
      stored.push_back(c.to_json());
    }
    std::string e = entity(asked.about_a, asked.about_v);
    std::string ask_text =
        asked.ask < 0 ? fmt::format("In which house does {} live? Answer with the house number.", e)
                      : [&] {
                          std::string s = kAttributes[static_cast<size_t>(asked.ask)].question;
                          return s.replace(s.find("{e}"), 3, e);
                        }();
    text += "\n" + ask_text;
    std::string answer = answer_of(full, houses, asked);

    json attrs = json::array();
    for (int a : chosen) attrs.push_back(a);
    t.messages = {message("system", system_prompt()), message("user", text)};
    t.environment = {{"houses", houses},
                     {"attributes", attrs},
                     {"clues", stored},
                     {"question", {asked.ask, asked.about_a, asked.about_v}}};
    t.verifier = {{"answer", answer}};
    t.metadata = {{"houses", houses}, {"attributes", attributes}, {"clues", clues.size()}};
    return t;
  }

  Episode demonstrate(const Task& t, sandbox::Client*) const override {
    Puzzle p = puzzle(t);
    auto sols = p.solve(2);
    SHOAL_CHECK(sols.size() == 1, "zebra seed {}: {} solutions", t.seed, sols.size());
    Episode e;
    e.messages.push_back(
        message("assistant", "Working through the clues leaves one arrangement:\n" +
                                 grid_text(sols[0], p.chosen, p.houses) +
                                 answer_line(answer_of(p.full(sols[0]), p.houses, p.question))));
    return e;
  }

  Episode perturb(const Task& t, const Episode&, uint64_t seed, sandbox::Client*) const override {
    Rng rng(name() + "/perturb", seed, t.difficulty);
    Puzzle p = puzzle(t);
    Grid sol = p.full(p.solve(1).at(0));
    std::string gold = answer_of(sol, p.houses, p.question);
    std::vector<int> kinds = {0, 1, 2, 3};
    rng.shuffle(kinds);
    std::string wrong;
    for (int kind : kinds) {
      if (!wrong.empty()) break;
      if (kind == 0) {  // the neighbouring house's value
        int house =
            sol[static_cast<size_t>(p.question.about_a)][static_cast<size_t>(p.question.about_v)];
        int next = house + 1 < p.houses ? house + 1 : house - 1;
        for (int v = 0; v < p.houses; ++v)
          if (p.question.ask >= 0 &&
              sol[static_cast<size_t>(p.question.ask)][static_cast<size_t>(v)] == next)
            wrong = kAttributes[static_cast<size_t>(p.question.ask)].values[static_cast<size_t>(v)];
        if (p.question.ask < 0) wrong = std::to_string(next + 1);
      } else if (kind == 1) {  // the answer about someone else
        Question other = p.question;
        other.about_v =
            (other.about_v + 1 + rng.index(static_cast<size_t>(p.houses - 1))) % p.houses;
        wrong = answer_of(sol, p.houses, other);
      } else if (kind == 2) {  // one clue overlooked: another arrangement it allows
        for (int i :
             rng.sample(static_cast<int>(p.clues.size()), static_cast<int>(p.clues.size()))) {
          Puzzle fewer = p;
          fewer.clues.erase(fewer.clues.begin() + i);
          for (const Grid& g : fewer.solve(24)) {
            std::string a = answer_of(p.full(g), p.houses, p.question);
            if (a != gold) {
              wrong = a;
              break;
            }
          }
          if (!wrong.empty()) break;
        }
      } else {  // hedging between two candidates
        Question other = p.question;
        other.about_v = (other.about_v + 1) % p.houses;
        wrong = gold + " or " + answer_of(sol, p.houses, other);
      }
    }
    Episode e;
    e.messages.push_back(message("assistant", "Working through the clues.\n" + answer_line(wrong)));
    return e;
  }

 protected:
  Reward check(const Task& t, const Episode& e, sandbox::Client*) const override {
    auto ans = final_answer(e);
    if (!ans) return fail("no final ANSWER line", {{"answer", 0}});
    if (ans->size() > 200) return fail("the answer is over 200 characters", {{"answer", 0}});
    const json& q = t.environment["question"];
    std::string gold = lower(t.verifier["answer"].get<std::string>());
    std::set<std::string> got = named(*ans, q[0].get<int>(), t.environment["houses"].get<int>());
    if (got.empty()) return fail("the answer names no candidate", {{"answer", 0}});
    if (got.size() > 1) return fail("the answer names more than one candidate", {{"answer", 0}});
    if (*got.begin() != gold)
      return fail("wrong answer '" + ans->substr(0, 60) + "'", {{"answer", 0}});
    return pass("the right answer", {{"answer", 1}});
  }

 private:
  // A stored puzzle, solved over the chosen attributes only.
  struct Puzzle {
    int houses = 3;
    std::vector<int> chosen;  // attribute indices into kAttributes
    std::vector<Clue> clues;  // over positions in `chosen`
    Question question{};      // over kAttributes indices
    std::vector<Grid> solve(size_t limit) const {
      return Solver(houses, static_cast<int>(chosen.size()), clues).solve(limit);
    }
    Grid full(const Grid& g) const {
      Grid out(kAttributes.size(), std::array<int, 4>{0, 0, 0, 0});
      for (size_t a = 0; a < chosen.size(); ++a) out[static_cast<size_t>(chosen[a])] = g[a];
      return out;
    }
  };

  static Puzzle puzzle(const Task& t) {
    Puzzle p;
    p.houses = t.environment["houses"];
    p.chosen = t.environment["attributes"].get<std::vector<int>>();
    auto local = [&](int a) {
      auto it = std::find(p.chosen.begin(), p.chosen.end(), a);
      SHOAL_CHECK(it != p.chosen.end(), "zebra: attribute {} is not in the puzzle", a);
      return static_cast<int>(it - p.chosen.begin());
    };
    for (const auto& c : t.environment["clues"])
      p.clues.push_back({c[0], local(c[1]), c[2], local(c[3]), c[4], c[5]});
    const json& q = t.environment["question"];
    p.question = {q[0], q[1], q[2]};
    return p;
  }
};

}  // namespace

std::unique_ptr<Family> make_zebra_family() {
  return std::make_unique<ZebraFamily>();
}

}  // namespace shoal::tasks
