// Properties every in-process task family must have, over many seeds and all difficulties: the
// verifier accepts each demonstration and rejects each perturbation, generation is deterministic,
// difficulty is a real knob, demonstrations' tool results are what the tools really return, and
// garbage never makes a verifier throw. Sandbox families: test_sandbox_families.cpp.
#include <gtest/gtest.h>

#include <set>

#include "base/error.h"
#include "tasks/registry.h"
#include "tasks/store.h"

namespace shoal::tasks {
namespace {

std::vector<const Family*> in_process_families() {
  std::vector<const Family*> out;
  for (const Family* f : families())
    if (!f->needs_sandbox()) out.push_back(f);
  return out;
}

// Seeds per difficulty; every family runs 5 x kSeeds demonstrations and perturbations.
constexpr int kSeeds = 24;

TEST(TasksFamilies, EveryDemonstrationPassesAndEveryPerturbationFails) {
  for (const Family* f : in_process_families()) {
    for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d) {
      for (uint64_t seed = 0; seed < kSeeds; ++seed) {
        Task t = f->generate(seed * 7919 + 13, d);
        Episode demo = f->demonstrate(t);
        Reward good = f->verify(t, demo);
        EXPECT_TRUE(good.solved())
            << f->name() << " d" << d << " seed " << t.seed << ": " << good.reason << "\n"
            << demo.messages.dump(1);
        for (uint64_t p = 0; p < 3; ++p) {
          Episode bad = f->perturb(t, demo, seed * 31 + p);
          Reward r = f->verify(t, bad);
          EXPECT_FALSE(r.solved()) << f->name() << " d" << d << " seed " << t.seed
                                   << " perturbation " << p << " passed:\n"
                                   << bad.messages.dump(1);
          EXPECT_FALSE(r.reason.empty());
          EXPECT_NE(bad.messages, demo.messages);
        }
      }
    }
  }
}

TEST(TasksFamilies, GenerationIsDeterministicAndSeedsGiveDistinctTasks) {
  for (const Family* f : families()) {
    for (int d : {1, 3, 5}) {
      std::set<std::string> hashes;
      for (uint64_t seed = 0; seed < 40; ++seed) {
        Task a = f->generate(seed, d), b = f->generate(seed, d);
        EXPECT_EQ(to_json(a), to_json(b)) << f->name() << " seed " << seed;
        EXPECT_EQ(a.family, f->name());
        EXPECT_EQ(a.seed, seed);
        EXPECT_EQ(a.difficulty, d);
        hashes.insert(prompt_hash(a));
      }
      // Some families have few distinct easy tasks; none should be mostly repeats.
      EXPECT_GE(hashes.size(), 30u) << f->name() << " d" << d;
    }
  }
}

// A family-independent size of a task: tool calls in its demonstration, tools offered, and the
// size of its prompt, environment and verifier spec. Difficulty 5 must be clearly bigger than
// difficulty 1.
TEST(TasksFamilies, DifficultyMakesTasksBigger) {
  for (const Family* f : in_process_families()) {
    double size[2] = {0, 0};
    int i = 0;
    for (int d : {1, 5}) {
      for (uint64_t seed = 0; seed < 20; ++seed) {
        Task t = f->generate(seed, d);
        Episode demo = f->demonstrate(t);
        size[i] += static_cast<double>(tool_calls(demo).size()) * 100 +
                   static_cast<double>(t.tools.size()) * 50 +
                   static_cast<double>(t.messages.dump().size() + t.environment.dump().size() +
                                       t.verifier.dump().size()) /
                       10;
      }
      ++i;
    }
    // Countdown's knob is the search, not the size: more numbers and a larger target.
    if (f->name() == "countdown") {
      EXPECT_EQ(f->generate(1, 1).verifier["numbers"].size(), 4u);
      EXPECT_EQ(f->generate(1, 5).verifier["numbers"].size(), 6u);
      EXPECT_GE(f->generate(1, 5).verifier["target"].get<int>(), 100);
      continue;
    }
    EXPECT_GT(size[1], 1.3 * size[0]) << f->name();
  }
}

// Re-running a demonstration's calls in a fresh environment gives the recorded results: the
// demonstrations' tool messages come from the tools, not from the generator.
TEST(TasksFamilies, DemonstrationToolResultsAreReal) {
  for (const Family* f : in_process_families()) {
    for (int d = kMinDifficulty; d <= kMaxDifficulty; ++d) {
      Task t = f->generate(1000 + static_cast<uint64_t>(d), d);
      Episode demo = f->demonstrate(t);
      Environment env(*f, t);
      std::map<std::string, std::string> recorded;
      for (const auto& m : demo.messages)
        if (m["role"] == "tool") recorded[m["tool_call_id"]] = m["content"];
      for (const auto& c : tool_calls(demo)) {
        ASSERT_TRUE(c.error.empty()) << c.error;
        json r = env.call(c.name, c.args);
        EXPECT_EQ(recorded.at(c.id), r.is_string() ? r.get<std::string>() : r.dump())
            << f->name() << " " << c.name;
      }
    }
  }
}

TEST(TasksFamilies, GarbageEpisodesGetZeroWithAReason) {
  std::vector<json> garbage = {
      json::array(),
      json::array({"not a message"}),
      json::array({{{"role", "assistant"}, {"content", 42}}}),
      json::array({{{"role", "assistant"}, {"content", nullptr}}}),
      json::array({{{"role", "assistant"}, {"content", "ANSWER:"}}}),
      json::array({{{"role", "assistant"}, {"content", "ANSWER: " + std::string(5000, '9')}}}),
      json::array({{{"role", "assistant"}, {"content", "ANSWER: \xff\xfe garbage (((("}}}),
      json::array({{{"role", "assistant"},
                    {"content", nullptr},
                    {"tool_calls",
                     {{{"id", "x"},
                       {"type", "function"},
                       {"function", {{"name", "calculator"}, {"arguments", "{not json"}}}}}}}}),
      json::array({{{"role", "assistant"}, {"tool_calls", "nope"}},
                   {{"role", "assistant"}, {"content", "ANSWER: 1"}}}),
      json::array(
          {{{"role", "assistant"},
            {"content", nullptr},
            {"tool_calls", {{{"function", {{"name", 7}, {"arguments", json::array()}}}}}}}}),
      json::array({{{"role", "tool"}, {"content", "ANSWER: 5"}}}),
  };
  for (const Family* f : in_process_families()) {
    Task t = f->generate(5, 3);
    for (const auto& g : garbage) {
      Reward r;
      EXPECT_NO_THROW(r = f->verify(t, Episode{g})) << f->name() << " " << g.dump().substr(0, 100);
      EXPECT_FALSE(r.reason.empty());
      // Junk before a final answer that is right on its own (a house number 1) does not matter.
      if (!g.empty() && g.back().is_object() && g.back().value("role", "") == "assistant" &&
          f->verify(t, Episode{json::array({g.back()})}).solved())
        continue;
      EXPECT_EQ(r.value, 0.0) << f->name() << " " << g.dump().substr(0, 100);
    }
    Reward r = f->verify(t, Episode{json("a string, not a list")});
    EXPECT_EQ(r.value, 0.0);
  }
}

TEST(TasksFamilies, BadRequestsAreClearErrors) {
  const Family& f = find_family("arithmetic");
  EXPECT_THROW(f.generate(1, 0), Error);
  EXPECT_THROW(f.generate(1, 6), Error);
  try {
    find_family("nosuch");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("unknown task family 'nosuch'"), std::string::npos);
    EXPECT_NE(e.message().find("countdown"), std::string::npos) << "lists the known ones";
  }
  Task other = find_family("countdown").generate(1, 1);
  EXPECT_THROW(f.verify(other, Episode{}), Error);
  // Tool calls the model gets wrong come back as errors it can read, never as exceptions.
  Task t = f.generate(1, 1);
  Environment env(f, t);
  EXPECT_TRUE(env.call("python", {{"code", "1"}}).contains("error"));
  EXPECT_TRUE(env.call("calculator", {{"expr", "1+1"}}).contains("error"));
  EXPECT_TRUE(env.call("calculator", {{"expression", "1/0"}}).contains("error"));
  EXPECT_TRUE(env.call("calculator", json::array()).contains("error"));
  EXPECT_EQ(env.call("calculator", {{"expression", "2^10"}})["value"], "1024");
}

TEST(TasksFamilies, TaskJsonRoundTrips) {
  for (const Family* f : families()) {
    Task t = f->generate(77, 2);
    Task back = task_from_json(to_json(t));
    EXPECT_EQ(to_json(back), to_json(t));
  }
  EXPECT_THROW(task_from_json(json::object()), Error);
  json j = to_json(find_family("arithmetic").generate(1, 1));
  j["tools"] = "x";
  EXPECT_THROW(task_from_json(j), Error);
}

}  // namespace
}  // namespace shoal::tasks
