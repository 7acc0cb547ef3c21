// Config loading: comments, extends (deep merge, relative paths), --set, and errors that name the
// file, the JSON path, what was expected and what was found.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "base/error.h"
#include "base/json_config.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

class JsonConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("shoal-json-config-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "sub");
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }
  std::string error_of(const std::function<void()>& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return e.message();
    }
    return "(no error)";
  }
  fs::path dir_;
};

TEST_F(JsonConfig, ExtendsMergesDeeplyAndTheExtendingFileWins) {
  write("sub/base.json", R"({
    // comments are allowed
    "a": 1, "nested": {"x": 1, "y": 2}, "data": "data.jsonl", "list": [1, 2]})");
  std::string top = write("top.json", R"({"extends": "sub/base.json", "nested": {"y": 3},
    "list": [9], "b": true})");
  LoadedConfig c = load_config_file(top);
  EXPECT_EQ(c.value["a"], 1);
  EXPECT_EQ(c.value["nested"]["x"], 1);
  EXPECT_EQ(c.value["nested"]["y"], 3);
  EXPECT_EQ(c.value["list"], nlohmann::json::array({9}));  // arrays are replaced, not merged
  EXPECT_FALSE(c.value.contains("extends"));
  ConfigReader r(c);
  // A relative path resolves against the file that set it: base.json lives in sub/.
  EXPECT_EQ(r.path_value("data"), (dir_ / "sub" / "data.jsonl").lexically_normal().string());
}

TEST_F(JsonConfig, OverridesSetNestedValuesAndArrayElements) {
  std::string f = write("c.json", R"({"stages": [{"steps": 5}, {"steps": 6}], "m": {}})");
  LoadedConfig c = load_config_file(f);
  apply_override(c, "stages.1.steps=10");
  apply_override(c, "m.preset=tiny-moe");  // a bare word is a string
  apply_override(c, "m.deep.flag=true");   // intermediate objects are created
  EXPECT_EQ(c.value["stages"][1]["steps"], 10);
  EXPECT_EQ(c.value["m"]["preset"], "tiny-moe");
  EXPECT_EQ(c.value["m"]["deep"]["flag"], true);
  EXPECT_NE(error_of([&] { apply_override(c, "stages.7.steps=1"); }).find("out of range"),
            std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "nothing"); }).find("KEY.PATH=VALUE"),
            std::string::npos);
}

TEST_F(JsonConfig, ErrorsNameFilePathExpectationAndFinding) {
  write("base.json", R"({"model": {"steps": "ten"}})");
  std::string top = write("top.json", R"({"extends": "base.json", "other": 1})");
  LoadedConfig c = load_config_file(top);
  ConfigReader r(c);
  ConfigReader m = r.child("model");
  std::string e = error_of([&] { m.integer("steps", 1); });
  // The bad value came from base.json, so the message names base.json, not top.json.
  EXPECT_NE(e.find("base.json"), std::string::npos) << e;
  EXPECT_NE(e.find("model.steps"), std::string::npos) << e;
  EXPECT_NE(e.find("expected an integer"), std::string::npos) << e;
  EXPECT_NE(e.find("\"ten\""), std::string::npos) << e;
  // "other" was never read: unknown key, named with the file that set it.
  std::string u = error_of([&] { r.finish(); });
  EXPECT_NE(u.find("top.json: other: unknown key"), std::string::npos) << u;
}

TEST_F(JsonConfig, RangesChoicesAndMissingKeys) {
  std::string f = write("c.json", R"({"n": 0, "mode": "fast", "x": 2.5})");
  LoadedConfig c = load_config_file(f);
  ConfigReader r(c);
  EXPECT_NE(error_of([&] { r.integer("n", 1, 1, 10); }).find("in [1, 10], found 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              r.choice("mode", {"slow", "exact"}, "slow");
            }).find("expected one of slow, exact, found \"fast\""),
            std::string::npos);
  EXPECT_NE(error_of([&] { r.str("absent"); }).find("absent: required"), std::string::npos);
  EXPECT_EQ(r.number("x", 0), 2.5);
  EXPECT_EQ(r.integer("missing", 7), 7);
}

TEST_F(JsonConfig, BadFilesAreClearErrors) {
  EXPECT_NE(error_of([&] { load_config_file((dir_ / "none.json").string()); }).find("cannot open"),
            std::string::npos);
  std::string bad = write("bad.json", "{\"a\": ");
  EXPECT_NE(error_of([&] { load_config_file(bad); }).find("not valid JSON"), std::string::npos);
  std::string arr = write("arr.json", "[1]");
  EXPECT_NE(error_of([&] { load_config_file(arr); }).find("expected a JSON object"),
            std::string::npos);
  write("x.json", R"({"extends": "y.json"})");
  std::string y = write("y.json", R"({"extends": "x.json"})");
  EXPECT_NE(error_of([&] { load_config_file(y); }).find("cycle"), std::string::npos);
}

}  // namespace
}  // namespace shoal
