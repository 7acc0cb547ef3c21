// Shared by the tokenizer tests: the fetched DeepSeek-V3 tokenizer (loaded once) and the golden
// cases. Setup (scripts/install-deps) always fetches the tokenizer, so a missing one is a failure
// with instructions, never a skip.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/error.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::test {

inline std::string deepseek_v3_dir() {
  return std::string(SHOAL_DATA_DIR) + "/tokenizers/deepseek_v3";
}

// Null (with a gtest failure recorded) when the tokenizer was not fetched.
inline const Tokenizer* deepseek_v3() {
  static const Tokenizer* tok = []() -> const Tokenizer* {
    if (!std::filesystem::exists(deepseek_v3_dir() + "/tokenizer.json")) return nullptr;
    return new Tokenizer(Tokenizer::load(deepseek_v3_dir()));
  }();
  if (!tok)
    ADD_FAILURE() << "the DeepSeek-V3 tokenizer is missing at " << deepseek_v3_dir()
                  << "/tokenizer.json: run scripts/install-deps (or scripts/fetch-tokenizer)";
  return tok;
}

struct GoldenCase {
  std::string text;
  std::vector<int32_t> ids;
};

inline const std::vector<GoldenCase>& golden_cases() {
  static const std::vector<GoldenCase> cases = [] {
    std::vector<GoldenCase> out;
    std::ifstream in(std::string(SHOAL_TEST_DATA) + "/tokenizer/deepseek_v3_cases.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      out.push_back({j["text"].get<std::string>(), j["ids"].get<std::vector<int32_t>>()});
    }
    return out;
  }();
  return cases;
}

}  // namespace shoal::test
