// Tool descriptions and argument checks (tools.h).
#include "sandbox/tools.h"

#include <algorithm>
#include <cctype>
#include <sstream>

namespace shoal::sandbox {

namespace {

json build_schemas() {
  json tools = json::array();
  tools.push_back(function_schema(
      "python",
      "Run Python 3 code in a sandbox (no network; files under /work persist for the session). "
      "With a session, variables persist between calls like a notebook; the value of a final "
      "expression is printed. Returns stdout, stderr and the exit code.",
      {{"code", {{"type", "string"}, {"description", "Python source to run"}}}}, {"code"}));
  tools.push_back(function_schema(
      "shell",
      "Run a shell command (/bin/sh -c) in the sandbox's workspace /work (no network). Returns "
      "stdout, stderr and the exit code.",
      {{"command", {{"type", "string"}, {"description", "the command line"}}}}, {"command"}));
  tools.push_back(function_schema(
      "files",
      "Read, write, list, patch or delete files in the workspace. Paths are relative to the "
      "workspace; paths leading outside it are refused.",
      {{"action",
        {{"type", "string"},
         {"enum", {"read", "write", "list", "patch", "delete"}},
         {"description", "what to do"}}},
       {"path", {{"type", "string"}, {"description", "file or directory, relative"}}},
       {"content", {{"type", "string"}, {"description", "for write: the new content"}}},
       {"append", {{"type", "boolean"}, {"description", "for write: append instead of replace"}}},
       {"offset", {{"type", "integer"}, {"description", "for read: first byte"}}},
       {"recursive", {{"type", "boolean"}, {"description", "for list: descend (default true)"}}},
       {"old", {{"type", "string"}, {"description", "for patch: exact text to replace, once"}}},
       {"new", {{"type", "string"}, {"description", "for patch: replacement text"}}}},
      {"action"}));
  tools.push_back(function_schema(
      "calculator",
      "Exact arithmetic on big integers and fractions: + - * / // % ^ ! and parentheses, "
      "decimals (exact), abs gcd lcm floor ceil round min max factorial comb pow(a,b[,m]) "
      "sqrt (exact squares). Returns the exact value and a 40-digit decimal.",
      {{"expression", {{"type", "string"}, {"description", "e.g. (2^100 + 1) / 3"}}}},
      {"expression"}));
  tools.push_back(function_schema(
      "run_tests",
      "Write files into the workspace, run a test command and report pass/fail per test "
      "(unittest -v and pytest -v output are understood).",
      {{"files",
        {{"type", "object"},
         {"additionalProperties", {{"type", "string"}}},
         {"description", "relative path -> content, written before the run"}}},
       {"command",
        {{"type", "string"},
         {"description", "test command (default: python3 -m unittest discover -v)"}}}},
      {}));
  return tools;
}

const json* find_schema(const std::string& tool) {
  for (const auto& t : tool_schemas())
    if (t["function"]["name"] == tool) return &t["function"]["parameters"];
  return nullptr;
}

bool type_matches(const json& value, const std::string& type) {
  if (type == "string") return value.is_string();
  if (type == "integer") return value.is_number_integer();
  if (type == "boolean") return value.is_boolean();
  if (type == "object") return value.is_object();
  return true;
}

}  // namespace

json function_schema(const std::string& name, const std::string& description, json properties,
                     const std::vector<std::string>& required) {
  return {{"type", "function"},
          {"function",
           {{"name", name},
            {"description", description},
            {"parameters",
             {{"type", "object"},
              {"properties", std::move(properties)},
              {"required", required},
              {"additionalProperties", false}}}}}};
}

const json& tool_schemas() {
  static const json schemas = build_schemas();
  return schemas;
}

bool is_known_tool(const std::string& name) {
  return find_schema(name) != nullptr;
}

std::string check_arguments(const std::string& tool, const json& args) {
  const json* schema = find_schema(tool);
  if (!schema) return "unknown tool '" + tool + "'";
  if (!args.is_object()) return "arguments must be an object";
  for (const auto& r : (*schema)["required"])
    if (!args.contains(r.get<std::string>()))
      return fmt::format("missing required argument '{}' for tool {}", r.get<std::string>(), tool);
  const json& props = (*schema)["properties"];
  for (auto it = args.begin(); it != args.end(); ++it) {
    if (!props.contains(it.key()))
      return fmt::format("unknown argument '{}' for tool {}", it.key(), tool);
    const json& p = props[it.key()];
    std::string type = p["type"];
    if (!type_matches(*it, type))
      return fmt::format("argument '{}' of tool {} must be a {}, got {}", it.key(), tool, type,
                         it->type_name());
    if (p.contains("enum") && std::find(p["enum"].begin(), p["enum"].end(), *it) == p["enum"].end())
      return fmt::format("argument '{}' of tool {} must be one of {}", it.key(), tool,
                         p["enum"].dump());
    if (type == "object" && p.contains("additionalProperties"))
      for (auto& v : *it)
        if (!v.is_string())
          return fmt::format("argument '{}' of tool {} must map names to strings", it.key(), tool);
  }
  return "";
}

json parse_test_report(const std::string& output) {
  // Parsed by hand: std::regex trips g++ 12's -Wmaybe-uninitialized under the sanitizer build.
  json tests = json::array();
  int passed = 0, failed = 0, errors = 0, skipped = 0;
  auto add = [&](const std::string& name, const std::string& outcome) {
    tests.push_back({{"name", name}, {"outcome", outcome}});
    passed += outcome == "passed";
    failed += outcome == "failed";
    errors += outcome == "error";
    skipped += outcome == "skipped";
  };
  auto is_word = [](const std::string& w, bool dots) {
    return !w.empty() && std::all_of(w.begin(), w.end(), [&](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (dots && c == '.');
    });
  };
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    // unittest -v: "test_add (test_math.MathTest.test_add) ... ok"
    size_t dots = line.find(" ... ");
    size_t paren = line.find(" (");
    if (dots != std::string::npos && paren != std::string::npos && paren < dots && dots > 0 &&
        line[dots - 1] == ')') {
      std::string method = line.substr(0, paren);
      std::string full = line.substr(paren + 2, dots - paren - 3);
      std::string o = line.substr(dots + 5);
      if (is_word(method, false) && is_word(full, true)) {
        if (o == "ok" || o == "expected failure")
          add(full, "passed");
        else if (o == "FAIL" || o == "unexpected success")
          add(full, "failed");
        else if (o == "ERROR")
          add(full, "error");
        else if (o.rfind("skipped", 0) == 0)
          add(full, "skipped");
        continue;
      }
    }
    // pytest -v: "tests/test_x.py::test_add PASSED  [ 50%]"
    std::istringstream words(line);
    std::string id, o;
    if (words >> id >> o && id.find("::") != std::string::npos) {
      if (o == "PASSED" || o == "XFAIL")
        add(id, "passed");
      else if (o == "FAILED" || o == "XPASS")
        add(id, "failed");
      else if (o == "ERROR")
        add(id, "error");
      else if (o == "SKIPPED")
        add(id, "skipped");
    }
  }
  return {{"tests", tests},
          {"passed", passed},
          {"failed", failed},
          {"errors", errors},
          {"skipped", skipped}};
}

}  // namespace shoal::sandbox
