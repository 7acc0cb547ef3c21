// shoal tokenize as a user runs it: JSON lines in, JSON lines out, HF's ids for the golden texts,
// --decode inverting them, and a malformed line stopping with its line number and exit code 1.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs `shoal tokenize ARGS < input`, capturing stdout and stderr apart.
Result tokenize(const std::string& args, const std::string& input, const std::string& env = "") {
  fs::path dir = fs::temp_directory_path() / ("shoal_tokenize_cli_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "in.jsonl", std::ios::binary) << input;
  std::string cmd = env + " " + SHOAL_BINARY + " tokenize " + args + " < " +
                    (dir / "in.jsonl").string() + " > " + (dir / "out").string() + " 2> " +
                    (dir / "err").string();
  Result r;
  int status = std::system(cmd.c_str());
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  r.out = slurp(dir / "out");
  r.err = slurp(dir / "err");
  fs::remove_all(dir);
  return r;
}

std::vector<nlohmann::ordered_json> lines(const std::string& s) {
  std::vector<nlohmann::ordered_json> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l)) out.push_back(nlohmann::ordered_json::parse(l));
  return out;
}

std::string tok_arg() {
  return "--tokenizer " + shoal::test::deepseek_v3_dir();
}

TEST(TokenizeCli, EncodesGoldenTextsAndDecodesThemBack) {
  ASSERT_TRUE(shoal::test::deepseek_v3());
  const auto& cases = shoal::test::golden_cases();
  std::string input;
  for (const auto& c : cases) input += json{{"text", c.text}}.dump() + "\n";
  input += "\n";  // blank lines are skipped
  Result enc = tokenize(tok_arg(), input);
  ASSERT_EQ(enc.code, 0) << enc.err;
  auto out = lines(enc.out);
  ASSERT_EQ(out.size(), cases.size());
  std::string ids_input;
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(out[i]["text"], cases[i].text);
    EXPECT_EQ(out[i]["ids"].get<std::vector<int32_t>>(), cases[i].ids) << i;
    EXPECT_EQ(out[i].begin().key(), "text");  // {"text": ..., "ids": ...}
    ids_input += json{{"ids", cases[i].ids}}.dump() + "\n";
  }
  Result dec = tokenize(tok_arg() + " --decode", ids_input);
  ASSERT_EQ(dec.code, 0) << dec.err;
  auto back = lines(dec.out);
  ASSERT_EQ(back.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(back[i]["text"], cases[i].text);
}

TEST(TokenizeCli, DefaultsToTheFetchedTokenizer) {
  ASSERT_TRUE(shoal::test::deepseek_v3());
  Result r = tokenize("", "{\"text\": \"hello world\"}\n",
                      std::string("SHOAL_DATA_DIR=") + SHOAL_DATA_DIR);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"text\":\"hello world\",\"ids\":[33310,2058]}\n");
  Result missing = tokenize("", "{\"text\": \"x\"}\n", "SHOAL_DATA_DIR=/nonexistent");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("scripts/install-deps"), std::string::npos) << missing.err;
}

TEST(TokenizeCli, MalformedLinesStopWithTheLineNumber) {
  ASSERT_TRUE(shoal::test::deepseek_v3());
  Result r =
      tokenize(tok_arg(), "{\"text\": \"ok\"}\n{\"text\": \"broken\n{\"text\": \"never\"}\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("stdin line 2: malformed JSON"), std::string::npos) << r.err;
  EXPECT_EQ(lines(r.out).size(), 1u);  // the lines before the bad one were written
  r = tokenize(tok_arg(), "\n{\"txt\": \"x\"}\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("stdin line 2: expected an object with a \"text\" string"),
            std::string::npos)
      << r.err;
  r = tokenize(tok_arg() + " --decode", "{\"ids\": [1, \"a\"]}\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("stdin line 1: \"ids\" holds a non-integer"), std::string::npos) << r.err;
  r = tokenize(tok_arg() + " --decode", "{\"ids\": [5]}\n{\"ids\": [999999]}\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("stdin line 2: id 999999 is not a token"), std::string::npos) << r.err;
  r = tokenize(tok_arg(), "{\"text\": \"\xff\"}\n");  // raw invalid UTF-8 is not JSON
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("stdin line 1: malformed JSON"), std::string::npos) << r.err;
}

TEST(TokenizeCli, BadTokenizerFileIsOneClearError) {
  Result r = tokenize("--tokenizer /nonexistent/tokenizer.json", "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(
      r.err.find("shoal tokenize: error: /nonexistent/tokenizer.json: tokenizer file not found"),
      std::string::npos)
      << r.err;
}

}  // namespace
