// The tools the sandbox offers, as the model sees them: OpenAI function descriptions (JSON Schema
// parameters), plus the argument checks and the run_tests report parser. Not their execution
// (executor.h).
#pragma once

#include <string>
#include <vector>

#include "sandbox/protocol.h"

namespace shoal::sandbox {

// [{"type":"function","function":{"name","description","parameters"}}, ...]
const json& tool_schemas();
// One OpenAI function description: {"type":"function","function":{"name","description",
// "parameters":{"type":"object","properties","required","additionalProperties":false}}}.
json function_schema(const std::string& name, const std::string& description, json properties,
                     const std::vector<std::string>& required);
bool is_known_tool(const std::string& name);
// Checks `args` against the tool's schema (required fields, types, no unknown fields); returns an
// empty string when valid, else a message naming the field.
std::string check_arguments(const std::string& tool, const json& args);
// Per-test outcomes from unittest -v or pytest -v output: {"tests": [{"name","outcome"}],
// "passed", "failed", "errors", "skipped"}.
json parse_test_report(const std::string& output);

}  // namespace shoal::sandbox
