// Shared by the generation tests: the golden models in tests/data and their greedy continuations
// (generate.json: prompt ids and the ids a full uncached float64 recomputation chose).
#pragma once

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace shoal::testing {

inline std::unique_ptr<Model> load_golden(const std::string& name) {
  return Model::from_pretrained(std::string(SHOAL_TEST_DATA) + "/" + name, cpu_backend());
}

struct GoldenCase {
  std::vector<int32_t> prompt, want;
};

inline std::vector<GoldenCase> golden_cases(const std::string& name) {
  auto doc = nlohmann::json::parse(
      std::ifstream(std::string(SHOAL_TEST_DATA) + "/" + name + "/generate.json"));
  std::vector<GoldenCase> out;
  for (auto& c : doc.at("cases"))
    out.push_back({c.at("prompt_ids").get<std::vector<int32_t>>(),
                   c.at("greedy_ids").get<std::vector<int32_t>>()});
  return out;
}

}  // namespace shoal::testing
