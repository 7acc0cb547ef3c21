// shoal tokenize: JSON lines on stdin -> JSON lines on stdout. Encodes {"text": ...} into
// {"text": ..., "ids": [...]}, or with --decode turns {"ids": [...]} into {"ids": ..., "text":
// ...}. Added-token text (<｜User｜>, ...) becomes its id, as in HF. Not a server: one pass over
// stdin.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli/commands.h"
#include "engine/tokenizer/tokenizer.h"

namespace shoal::cli {
namespace {

// Where scripts/fetch-tokenizer puts the DeepSeek-V3 tokenizer.
std::string default_tokenizer() {
  const char* env = std::getenv("SHOAL_DATA_DIR");
  std::string data = env && *env ? env : std::string(SHOAL_SOURCE_DIR) + "/data/cache";
  return data + "/tokenizers/deepseek_v3";
}

}  // namespace

Run add_tokenize(CLI::App& app) {
  struct Opts {
    std::string tokenizer;
    bool decode = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--tokenizer", o->tokenizer,
                 "tokenizer.json or its directory (default: the fetched DeepSeek-V3 one, "
                 "$SHOAL_DATA_DIR/tokenizers/deepseek_v3)");
  app.add_flag("--decode", o->decode, "read {\"ids\": [...]} lines and add the decoded \"text\"");
  app.footer(
      "Reads JSON lines on stdin, writes one JSON line per input line on stdout. Blank lines are "
      "skipped; a malformed line stops with an error naming its line number (exit 1).");
  return [o]() {
    std::string path = o->tokenizer;
    if (path.empty()) {
      path = default_tokenizer();
      SHOAL_CHECK(std::filesystem::exists(path + "/tokenizer.json"),
                  "the DeepSeek-V3 tokenizer is not at {} (run scripts/install-deps, which fetches "
                  "it, or pass --tokenizer)",
                  path);
    }
    Tokenizer tok = Tokenizer::load(path);
    std::ios::sync_with_stdio(false);
    std::string line, out;
    std::vector<int32_t> ids;
    for (size_t n = 1; std::getline(std::cin, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json in;
      try {
        in = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        SHOAL_FAIL("stdin line {}: malformed JSON: {}", n, e.what());
      }
      nlohmann::ordered_json res;
      if (o->decode) {
        SHOAL_CHECK(in.is_object() && in.contains("ids") && in["ids"].is_array(),
                    "stdin line {}: expected an object with an \"ids\" array", n);
        ids.clear();
        for (const auto& v : in["ids"]) {
          SHOAL_CHECK(v.is_number_integer(), "stdin line {}: \"ids\" holds a non-integer ({})", n,
                      v.dump());
          int64_t id = v.get<int64_t>();
          SHOAL_CHECK(id >= 0 && id < tok.vocab_size() && tok.has_id(int32_t(id)),
                      "stdin line {}: id {} is not a token (vocabulary size {})", n, id,
                      tok.vocab_size());
          ids.push_back(int32_t(id));
        }
        res["ids"] = ids;
        res["text"] = tok.decode(ids);
      } else {
        SHOAL_CHECK(in.is_object() && in.contains("text") && in["text"].is_string(),
                    "stdin line {}: expected an object with a \"text\" string", n);
        const std::string& text = in["text"].get_ref<const std::string&>();
        ids.clear();
        tok.encode_append(text, ids);
        res["text"] = text;
        res["ids"] = ids;
      }
      out = res.dump();
      out += '\n';
      std::fwrite(out.data(), 1, out.size(), stdout);
    }
    std::fflush(stdout);
    return 0;
  };
}

}  // namespace shoal::cli
