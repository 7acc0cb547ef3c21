// Config files as JSON: loading (comments allowed), `"extends": "other.json"` (deep merge, the
// extending file wins, paths relative to the file that names them), `--set a.b=c` overrides, and
// a reader that walks the result with the JSON path in hand, so every error names the file, the
// path, what was expected and what was found, and keys nobody read are reported as unknown.
// Not a schema language: each config's own parser says what it expects, in code.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace shoal {

// Reads `file` (comments allowed), resolving `extends` chains (cycles are an error). Each object
// that came from a file records it in `origins` (JSON pointer -> file) for error messages.
struct LoadedConfig {
  nlohmann::json value;
  std::string file;                            // the file given
  std::map<std::string, std::string> origins;  // JSON path -> the file that set it last
};
LoadedConfig load_config_file(const std::string& file);

// Applies "a.b.c=VALUE": VALUE is parsed as JSON when it is valid JSON, otherwise taken as a
// string (so --set model.preset=tiny-moe works unquoted). Intermediate objects are created;
// array elements are addressed by index (stages.1.steps=10). Errors name the override.
void apply_override(LoadedConfig& config, const std::string& assignment);

// A view of one JSON object inside a loaded config. Accessors check types and record the keys
// read; finish() throws for keys that were never read (typos). Child views share the record.
class ConfigReader {
 public:
  ConfigReader(const LoadedConfig& root);            // the whole document; must be an object
  ConfigReader child(const std::string& key) const;  // a required object member
  std::optional<ConfigReader> optional_child(const std::string& key) const;
  // Array of objects: one reader per element.
  std::vector<ConfigReader> children(const std::string& key) const;

  bool has(const std::string& key) const;
  const nlohmann::json& raw(const std::string& key) const;  // required, any type (marks it read)
  std::string str(const std::string& key) const;
  std::string str(const std::string& key, const std::string& fallback) const;
  // One of `allowed`.
  std::string choice(const std::string& key, const std::vector<std::string>& allowed,
                     const std::string& fallback) const;
  int64_t integer(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback, int64_t min = INT64_MIN,
                  int64_t max = INT64_MAX) const;
  double number(const std::string& key, double fallback, double min = -1e300,
                double max = 1e300) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::vector<std::string> strings(const std::string& key) const;  // [] when absent
  // A path relative to the config file that set this key (absolute paths stay).
  std::string path_value(const std::string& key) const;
  std::string path_value(const std::string& key, const std::string& fallback) const;

  const std::string& path() const { return path_; }  // e.g. "stages[1].sampling"
  const std::string& file() const;                   // the file that set this object
  // Throws naming an unread key of this object (and, recursively, of children read through this
  // reader tree). Call once on the root after parsing.
  void finish() const;
  // "FILE: PATH.KEY: MESSAGE" error for this object.
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  struct Shared {
    const LoadedConfig* root;
    std::set<std::string> read;  // "path.key" of every key read
  };
  ConfigReader(std::shared_ptr<Shared> shared, const nlohmann::json* value, std::string path);
  const nlohmann::json* get(const std::string& key) const;  // marks read; nullptr when absent
  std::string key_path(const std::string& key) const;
  void finish_rec(const nlohmann::json& v, const std::string& path) const;

  std::shared_ptr<Shared> shared_;
  const nlohmann::json* value_;
  std::string path_;  // e.g. "stages[1].sampling": messages and origins
};

// The JSON type name of a value as a user would say it ("a string", "an integer", ...).
std::string json_type_phrase(const nlohmann::json& v);

}  // namespace shoal
