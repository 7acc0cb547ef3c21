// The eval suites in configs/eval/: each file is one entry of a run config's "eval" array, read
// here with the same keys and bounds as actors/run_config.cpp (unknown keys are errors), every
// family exists and every difficulty is one the families generate. Also what the standard suites
// promise: quick is 200 easy arithmetic and countdown tasks, all-families covers every family,
// tools only families that offer tools.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "base/error.h"
#include "base/json_config.h"
#include "tasks/registry.h"

namespace shoal::tasks {
namespace {

namespace fs = std::filesystem;

struct Suite {
  std::string name;
  std::vector<std::pair<std::string, int64_t>> family_difficulty;
  int64_t tasks = 0;
};

// Reads a suite as the run config reads an "eval" entry, plus the task-family checks.
Suite read_suite(const std::string& file) {
  LoadedConfig loaded = load_config_file(file);
  ConfigReader r(loaded);
  Suite s;
  s.name = r.str("name");
  SHOAL_CHECK(!s.name.empty(), "{}: an empty name", file);
  for (const ConfigReader& t : r.children("tasks")) {
    std::string family = t.str("family");
    find_family(family);  // throws naming the known families
    int64_t count = t.integer("count", 100, 1, 10'000'000);
    int64_t d = t.integer("difficulty", 1, kMinDifficulty, kMaxDifficulty);
    s.family_difficulty.push_back({family, d});
    s.tasks += count;
  }
  SHOAL_CHECK(!s.family_difficulty.empty(), "{}: no task sets", file);
  r.integer("samples", 1, 1, 1024);
  if (auto sm = r.optional_child("sampling")) {
    sm->boolean("greedy", true);
    sm->number("temperature", 1.0, 1e-3, 100.0);
    sm->integer("top_k", 0, 0, 1 << 30);
    sm->number("top_p", 1.0, 1e-6, 1.0);
    sm->number("min_p", 0.0, 0.0, 1.0);
  }
  r.integer("max_turns", 4, 1, 1000);
  r.integer("max_new_tokens", 64, 1, 1 << 20);
  r.finish();
  return s;
}

fs::path eval_dir() {
  return fs::path(SHOAL_TEST_DATA) / ".." / ".." / "configs" / "eval";
}

TEST(TasksEvalSuites, EverySuiteNamesKnownFamiliesAndValidDifficulties) {
  ASSERT_TRUE(fs::is_directory(eval_dir())) << eval_dir();
  std::map<std::string, Suite> suites;
  for (const auto& entry : fs::directory_iterator(eval_dir())) {
    if (entry.path().extension() != ".json") continue;
    Suite s;
    EXPECT_NO_THROW(s = read_suite(entry.path().string())) << entry.path();
    EXPECT_EQ(s.name, entry.path().stem().string()) << "a suite is named after its file";
    EXPECT_TRUE(suites.emplace(s.name, s).second) << "two suites named " << s.name;
  }
  ASSERT_TRUE(suites.count("quick") && suites.count("all-families") && suites.count("tools"));

  const Suite& quick = suites["quick"];
  EXPECT_EQ(quick.tasks, 200);
  for (const auto& [family, d] : quick.family_difficulty) {
    EXPECT_TRUE(family == "arithmetic" || family == "countdown") << family;
    EXPECT_EQ(d, 1);
  }
  std::set<std::string> covered;
  for (const auto& [family, d] : suites["all-families"].family_difficulty) covered.insert(family);
  for (const Family* f : families()) EXPECT_TRUE(covered.count(f->name())) << f->name();
  for (const auto& [family, d] : suites["tools"].family_difficulty)
    EXPECT_FALSE(find_family(family).generate(1, static_cast<int>(d)).tools.empty()) << family;
}

TEST(TasksEvalSuites, BadSuitesAreClearErrors) {
  fs::path dir = fs::temp_directory_path() / ("shoal-eval-suites-" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  };
  auto error_of = [](const std::string& file) -> std::string {
    try {
      read_suite(file);
    } catch (const Error& e) {
      return e.message();
    }
    return "";
  };
  EXPECT_NE(error_of(write("a.json", R"({"name": "a", "tasks": [{"family": "chess"}]})"))
                .find("unknown task family 'chess'"),
            std::string::npos);
  EXPECT_NE(error_of(write("b.json",
                           R"({"name": "b", "tasks": [{"family": "zebra", "difficulty": 6}]})")),
            "");
  EXPECT_NE(error_of(write("c.json", R"({"name": "c", "tasks": [{"family": "zebra"}],
                                         "max_tokens": 9})"))
                .find("max_tokens"),
            std::string::npos)
      << "an unknown key";
  EXPECT_NE(error_of(write("d.json", R"({"name": "d", "tasks": []})")), "");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shoal::tasks
