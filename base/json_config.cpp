// Config loading, extends/--set, and the path-tracking reader (json_config.h).
#include "base/json_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/error.h"

namespace shoal {

namespace fs = std::filesystem;
using nlohmann::json;

std::string json_type_phrase(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return std::string("a boolean (") + v.dump() + ")";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer (" + v.dump() + ")";
    case json::value_t::number_float:
      return "a number (" + v.dump() + ")";
    case json::value_t::string: {
      std::string s = v.dump();
      if (s.size() > 60) s = s.substr(0, 57) + "...";
      return "a string (" + s + ")";
    }
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "a value of another type";
  }
}

namespace {

std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

// Records `file` as the origin of every path under `v`.
void mark_origins(const json& v, const std::string& path, const std::string& file,
                  std::map<std::string, std::string>& origins) {
  origins[path] = file;
  if (v.is_object())
    for (auto& [k, child] : v.items()) mark_origins(child, join_path(path, k), file, origins);
  else if (v.is_array())
    for (size_t i = 0; i < v.size(); ++i)
      mark_origins(v[i], path + "[" + std::to_string(i) + "]", file, origins);
}

// base <- over, objects merged key by key; anything else replaced.
void merge_into(json& base, const json& over, const std::string& path, const std::string& file,
                std::map<std::string, std::string>& origins) {
  for (auto& [k, v] : over.items()) {
    std::string p = join_path(path, k);
    if (v.is_object() && base.contains(k) && base[k].is_object()) {
      origins[p] = file;
      merge_into(base[k], v, p, file, origins);
    } else {
      // Forget what the base said below this path.
      for (auto it = origins.lower_bound(p); it != origins.end() && it->first.rfind(p, 0) == 0;)
        it = origins.erase(it);
      base[k] = v;
      mark_origins(v, p, file, origins);
    }
  }
}

LoadedConfig load_rec(const std::string& file, std::vector<std::string>& chain) {
  std::string canon = fs::weakly_canonical(fs::path(file)).string();
  for (auto& c : chain)
    SHOAL_CHECK(c != canon, "config {}: \"extends\" forms a cycle through {}", chain.front(), file);
  chain.push_back(canon);
  std::ifstream in(file);
  SHOAL_CHECK(in.good(), "config {}: cannot open the file", file);
  std::stringstream ss;
  ss << in.rdbuf();
  json doc;
  try {
    doc = json::parse(ss.str(), nullptr, true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    SHOAL_FAIL("config {}: not valid JSON: {}", file, e.what());
  }
  SHOAL_CHECK(doc.is_object(), "config {}: expected a JSON object at the top, found {}", file,
              json_type_phrase(doc));
  LoadedConfig out;
  out.file = file;
  if (doc.contains("extends")) {
    const json& ext = doc["extends"];
    SHOAL_CHECK(ext.is_string(), "config {}: extends: expected a string (a file path), found {}",
                file, json_type_phrase(ext));
    fs::path base_path = ext.get<std::string>();
    if (base_path.is_relative()) base_path = fs::path(file).parent_path() / base_path;
    LoadedConfig base = load_rec(base_path.string(), chain);
    doc.erase("extends");
    out.value = std::move(base.value);
    out.origins = std::move(base.origins);
    merge_into(out.value, doc, "", file, out.origins);
  } else {
    out.value = std::move(doc);
    mark_origins(out.value, "", file, out.origins);
  }
  out.origins[""] = file;
  chain.pop_back();
  return out;
}

}  // namespace

LoadedConfig load_config_file(const std::string& file) {
  std::vector<std::string> chain;
  LoadedConfig c = load_rec(file, chain);
  c.file = file;
  return c;
}

void apply_override(LoadedConfig& config, const std::string& assignment) {
  auto eq = assignment.find('=');
  SHOAL_CHECK(eq != std::string::npos && eq > 0,
              "--set {}: expected KEY.PATH=VALUE (e.g. stages.0.steps=10)", assignment);
  std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value;
  try {
    value = json::parse(text);
  } catch (const json::parse_error&) {
    value = text;  // a bare word: a string
  }
  std::vector<std::string> parts;
  std::stringstream ks(key);
  for (std::string p; std::getline(ks, p, '.');) {
    SHOAL_CHECK(!p.empty(), "--set {}: empty key in the path", assignment);
    parts.push_back(p);
  }
  json* cur = &config.value;
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    bool last = i + 1 == parts.size();
    if (cur->is_array()) {
      size_t idx = 0;
      bool numeric = !p.empty() && p.find_first_not_of("0123456789") == std::string::npos;
      SHOAL_CHECK(numeric, "--set {}: {} is an array: expected an index, found \"{}\"", assignment,
                  path, p);
      idx = std::stoul(p);
      SHOAL_CHECK(idx < cur->size(), "--set {}: {} has {} elements, index {} is out of range",
                  assignment, path, cur->size(), idx);
      path += "[" + p + "]";
      cur = &(*cur)[idx];
    } else {
      SHOAL_CHECK(cur->is_object(), "--set {}: {} is {}, not an object", assignment, path,
                  json_type_phrase(*cur));
      path = join_path(path, p);
      if (!last && !cur->contains(p)) (*cur)[p] = json::object();
      cur = &(*cur)[p];
    }
    if (last) {
      *cur = value;
      config.origins[path] = "--set " + assignment;
    }
  }
}

ConfigReader::ConfigReader(const LoadedConfig& root)
    : ConfigReader(std::make_shared<Shared>(Shared{&root, {}}), &root.value, "") {
  SHOAL_CHECK(root.value.is_object(), "config {}: expected a JSON object at the top", root.file);
}

ConfigReader::ConfigReader(std::shared_ptr<Shared> shared, const json* value, std::string path)
    : shared_(std::move(shared)), value_(value), path_(std::move(path)) {
  shared_->read.insert("walk:" + path_);
}

std::string ConfigReader::key_path(const std::string& key) const {
  return join_path(path_, key);
}

const std::string& ConfigReader::file() const {
  auto it = shared_->root->origins.find(path_);
  return it == shared_->root->origins.end() ? shared_->root->file : it->second;
}

void ConfigReader::fail(const std::string& key, const std::string& message) const {
  std::string p = key.empty() ? path_ : key_path(key);
  auto it = shared_->root->origins.find(p);
  const std::string& f = it != shared_->root->origins.end() ? it->second : file();
  SHOAL_FAIL("config {}: {}: {}", f, p.empty() ? "(top level)" : p, message);
}

const json* ConfigReader::get(const std::string& key) const {
  shared_->read.insert(key_path(key));
  auto it = value_->find(key);
  return it == value_->end() ? nullptr : &*it;
}

bool ConfigReader::has(const std::string& key) const {
  return value_->contains(key);
}

const json& ConfigReader::raw(const std::string& key) const {
  const json* v = get(key);
  if (!v) fail(key, "required, not given");
  // Everything below a raw value is accepted as read.
  shared_->read.insert("raw:" + key_path(key));
  return *v;
}

ConfigReader ConfigReader::child(const std::string& key) const {
  const json* v = get(key);
  if (!v) fail(key, "required, not given (expected an object)");
  if (!v->is_object()) fail(key, "expected an object, found " + json_type_phrase(*v));
  return ConfigReader(shared_, v, key_path(key));
}

std::optional<ConfigReader> ConfigReader::optional_child(const std::string& key) const {
  const json* v = get(key);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_object()) fail(key, "expected an object, found " + json_type_phrase(*v));
  return ConfigReader(shared_, v, key_path(key));
}

std::vector<ConfigReader> ConfigReader::children(const std::string& key) const {
  std::vector<ConfigReader> out;
  const json* v = get(key);
  if (!v) return out;
  if (!v->is_array()) fail(key, "expected an array of objects, found " + json_type_phrase(*v));
  for (size_t i = 0; i < v->size(); ++i) {
    std::string p = key_path(key) + "[" + std::to_string(i) + "]";
    if (!(*v)[i].is_object()) {
      auto it = shared_->root->origins.find(p);
      SHOAL_FAIL("config {}: {}: expected an object, found {}",
                 it != shared_->root->origins.end() ? it->second : file(), p,
                 json_type_phrase((*v)[i]));
    }
    out.push_back(ConfigReader(shared_, &(*v)[i], p));
  }
  return out;
}

std::string ConfigReader::str(const std::string& key) const {
  const json* v = get(key);
  if (!v) fail(key, "required, not given (expected a string)");
  if (!v->is_string()) fail(key, "expected a string, found " + json_type_phrase(*v));
  return v->get<std::string>();
}

std::string ConfigReader::str(const std::string& key, const std::string& fallback) const {
  const json* v = get(key);
  if (!v || v->is_null()) return fallback;
  if (!v->is_string()) fail(key, "expected a string, found " + json_type_phrase(*v));
  return v->get<std::string>();
}

std::string ConfigReader::choice(const std::string& key, const std::vector<std::string>& allowed,
                                 const std::string& fallback) const {
  std::string s = str(key, fallback);
  for (auto& a : allowed)
    if (a == s) return s;
  std::string list;
  for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  fail(key, "expected one of " + list + ", found \"" + s + "\"");
}

int64_t ConfigReader::integer(const std::string& key) const {
  const json* v = get(key);
  if (!v) fail(key, "required, not given (expected an integer)");
  if (!v->is_number_integer()) fail(key, "expected an integer, found " + json_type_phrase(*v));
  return v->get<int64_t>();
}

int64_t ConfigReader::integer(const std::string& key, int64_t fallback, int64_t min,
                              int64_t max) const {
  const json* v = get(key);
  if (!v || v->is_null()) return fallback;
  if (!v->is_number_integer()) fail(key, "expected an integer, found " + json_type_phrase(*v));
  int64_t x = v->get<int64_t>();
  if (x < min || x > max)
    fail(key, "expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                  "], found " + std::to_string(x));
  return x;
}

double ConfigReader::number(const std::string& key, double fallback, double min, double max) const {
  const json* v = get(key);
  if (!v || v->is_null()) return fallback;
  if (!v->is_number()) fail(key, "expected a number, found " + json_type_phrase(*v));
  double x = v->get<double>();
  if (!(x >= min && x <= max))
    fail(key, fmt::format("expected a number in [{}, {}], found {}", min, max, x));
  return x;
}

bool ConfigReader::boolean(const std::string& key, bool fallback) const {
  const json* v = get(key);
  if (!v || v->is_null()) return fallback;
  if (!v->is_boolean()) fail(key, "expected true or false, found " + json_type_phrase(*v));
  return v->get<bool>();
}

std::vector<std::string> ConfigReader::strings(const std::string& key) const {
  std::vector<std::string> out;
  const json* v = get(key);
  if (!v || v->is_null()) return out;
  if (!v->is_array()) fail(key, "expected an array of strings, found " + json_type_phrase(*v));
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string())
      fail(key, "element " + std::to_string(i) + ": expected a string, found " +
                    json_type_phrase((*v)[i]));
    out.push_back((*v)[i].get<std::string>());
  }
  return out;
}

std::string ConfigReader::path_value(const std::string& key) const {
  std::string s = str(key);
  if (s.empty()) fail(key, "expected a file path, found an empty string");
  fs::path p(s);
  if (p.is_absolute()) return s;
  auto it = shared_->root->origins.find(key_path(key));
  std::string origin = it != shared_->root->origins.end() ? it->second : file();
  if (origin.rfind("--set ", 0) == 0) return s;  // relative to the working directory
  return (fs::path(origin).parent_path() / p).lexically_normal().string();
}

std::string ConfigReader::path_value(const std::string& key, const std::string& fallback) const {
  if (!has(key) || (*value_)[key].is_null()) {
    get(key);
    return fallback;
  }
  return path_value(key);
}

void ConfigReader::finish_rec(const json& v, const std::string& path) const {
  if (shared_->read.count("raw:" + path)) return;
  if (v.is_object()) {
    if (!shared_->read.count("walk:" + path)) return;  // read whole (e.g. a raw value)
    for (auto& [k, child] : v.items()) {
      std::string p = join_path(path, k);
      if (!shared_->read.count(p)) {
        auto it = shared_->root->origins.find(p);
        SHOAL_FAIL("config {}: {}: unknown key (check its spelling and docs/TRAIN.md)",
                   it != shared_->root->origins.end() ? it->second : shared_->root->file, p);
      }
      finish_rec(child, p);
    }
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) finish_rec(v[i], path + "[" + std::to_string(i) + "]");
  }
}

void ConfigReader::finish() const {
  finish_rec(*value_, path_);
}

}  // namespace shoal
