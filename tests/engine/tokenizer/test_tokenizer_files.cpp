// Tokenizer files other than DeepSeek-V3's: a tiny hand-built byte-level BPE exercising what that
// file does not (added-token lstrip/rstrip/single_word, merges as pairs, ignore_merges, a config
// with string tokens), the Split behaviours, and bad files: each gives a shoal::Error naming the
// file and what is wrong.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A byte-level BPE over the 256 bytes (ids 0..255) plus a few merges and added tokens.
json tiny_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::encode(std::string(1, char(b)))] = b;
  json merges = json::array();
  int next = 256;
  for (auto [a, b] : std::vector<std::pair<std::string, std::string>>{
           {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"}, {"o", "r"}}) {
    vocab[a + b] = next++;
    merges.push_back(a + " " + b);
  }
  vocab["xyz"] = next++;  // reachable only through ignore_merges
  json added = json::array({
      {{"id", 300}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}},
      {{"id", 301}, {"content", "[X]"}, {"special", false}, {"lstrip", true}, {"rstrip", true}},
      {{"id", 302}, {"content", "<w>"}, {"special", false}, {"single_word", true}},
  });
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"},
               {"pattern", {{"Regex", R"(\p{N}{1,3})"}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}})}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
  };
}

class TempDir {
 public:
  TempDir() {
    static int n = 0;
    path_ = fs::temp_directory_path() /
            ("shoal_tok_" + std::to_string(getpid()) + "_" + std::to_string(n++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
    return (path_ / name).string();
  }
  std::string write(const json& j) const { return write("tokenizer.json", j.dump()); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Loads `path` and expects a shoal::Error whose message holds every one of `parts`.
void expect_load_error(const std::string& path, std::vector<std::string> parts) {
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << "loading " << path << " did not fail";
  } catch (const Error& e) {
    for (auto& p : parts)
      EXPECT_NE(e.message().find(p), std::string::npos) << "'" << p << "' not in: " << e.message();
  }
}

TEST(TokenizerFiles, TinyTokenizerEncodesAndDecodes) {
  TempDir dir;
  dir.write(tiny_tokenizer());
  Tokenizer tok = Tokenizer::load(dir.path().string());  // a directory holding tokenizer.json
  int32_t hello = tok.token_to_id("hello").value(), w = tok.token_to_id("Ġw").value();
  int32_t o = tok.token_to_id("o").value(), r = tok.token_to_id("r").value();
  EXPECT_EQ(tok.encode("hello world"),
            (std::vector<int32_t>{hello, w, tok.token_to_id("or").value(),
                                  tok.token_to_id("l").value(), tok.token_to_id("d").value()}));
  (void)o, (void)r;
  EXPECT_EQ(tok.decode(tok.encode("hello world")), "hello world");
  EXPECT_EQ(tok.vocab_size(), 303);
  EXPECT_FALSE(tok.has_id(290));            // a hole between the vocabulary and the added tokens
  EXPECT_FALSE(tok.bos_id().has_value());   // no tokenizer_config.json
  EXPECT_EQ(tok.encode("xyz").size(), 3u);  // merges do not reach "xyz"
  // Digits split in runs of 1-3 before the GPT-2 regex.
  EXPECT_EQ(tok.decode(tok.encode("12345")), "12345");
  EXPECT_EQ(tok.encode("12345").size(), 5u);
}

TEST(TokenizerFiles, AddedTokenOptions) {
  TempDir dir;
  Tokenizer tok = Tokenizer::load(dir.write(tiny_tokenizer()));
  auto enc = [&](const std::string& s) { return tok.encode(s); };
  auto cat = [](std::vector<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  // lstrip + rstrip: the whitespace around [X] is swallowed by the match.
  EXPECT_EQ(enc("a  [X]  b"), cat({enc("a"), {301}, enc("b")}));
  // single_word: <w> matches only when not inside a word.
  EXPECT_EQ(enc("a <w> b"), cat({enc("a "), {302}, enc(" b")}));
  std::vector<int32_t> inside = enc("a<w>b");
  EXPECT_EQ(std::count(inside.begin(), inside.end(), 302), 0);
  EXPECT_EQ(tok.decode(inside), "a<w>b");
  // special: recognized by default, plain text under split_special, dropped by skip_special.
  EXPECT_EQ(enc("hello<|end|>"), cat({enc("hello"), {300}}));
  std::vector<int32_t> split = tok.encode("hello<|end|>", SpecialText::split_special);
  EXPECT_EQ(std::count(split.begin(), split.end(), 300), 0);
  EXPECT_EQ(tok.decode(enc("hello<|end|>"), true), "hello");
  EXPECT_TRUE(tok.is_special(300));
  EXPECT_FALSE(tok.is_special(301));
}

TEST(TokenizerFiles, MergePairsIgnoreMergesAndConfig) {
  json j = tiny_tokenizer();
  json pairs = json::array();
  for (auto& m : j["model"]["merges"]) {
    std::string s = m.get<std::string>();
    pairs.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  TempDir a, b;
  Tokenizer strings = Tokenizer::load(a.write(j));
  j["model"]["merges"] = pairs;
  j["model"]["ignore_merges"] = true;
  b.write("tokenizer_config.json",
          R"({"bos_token": "<|end|>", "eos_token": {"content": "[X]"}, "chat_template": "T"})");
  Tokenizer tok = Tokenizer::load(b.write(j));
  EXPECT_EQ(tok.encode("hello world"), strings.encode("hello world"));
  EXPECT_EQ(tok.encode("xyz"), std::vector<int32_t>{tok.token_to_id("xyz").value()});
  EXPECT_EQ(tok.bos_id(), 300);
  EXPECT_EQ(tok.eos_id(), 301);
  EXPECT_FALSE(tok.pad_id().has_value());
  EXPECT_EQ(tok.chat_template(), "T");
}

TEST(TokenizerFiles, SplitBehaviours) {
  auto split = [](SplitBehavior b, bool invert = false) {
    PreTokenizer pre({{"-", true, b, invert}});
    std::vector<std::string> out;
    for (auto p : pre.split("the-final--countdown")) out.emplace_back(p);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split(SplitBehavior::removed), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split(SplitBehavior::isolated), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split(SplitBehavior::merged_with_previous), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split(SplitBehavior::merged_with_next), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split(SplitBehavior::contiguous), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split(SplitBehavior::removed, true), (V{"-", "-", "-"}));
  // The lookahead sees only its piece: "\s+(?!\S)" keeps the last space for the next word.
  PreTokenizer gpt2({{gpt2_pattern()}});
  EXPECT_EQ(gpt2.split("a   b"), (std::vector<std::string_view>{"a", "  ", " b"}));
  // \s is Unicode White_Space as in Oniguruma and JS: U+180E is not (PCRE2's own \s says it is).
  PreTokenizer ds(deepseek_v3_split_rules());
  EXPECT_EQ(ds.split("\u180E\n"), (std::vector<std::string_view>{"\u180E", "\n"}));
  EXPECT_EQ(ds.split("\u3000\n"), (std::vector<std::string_view>{"\u3000\n"}));
  EXPECT_EQ(gpt2.split("a\u180E b"), (std::vector<std::string_view>{"a", "\u180E", " b"}));
  EXPECT_THROW(PreTokenizer({{"(unclosed"}}, "x.json"), Error);
}

TEST(TokenizerFiles, BadFilesNameTheFileAndTheProblem) {
  TempDir dir;
  std::string missing = (dir.path() / "nope.json").string();
  expect_load_error(missing, {missing, "not found"});
  expect_load_error(dir.path().string(), {"tokenizer.json", "not found"});
  expect_load_error(dir.write("bad.json", "{\"model\": "), {"bad.json", "malformed JSON"});
  expect_load_error(dir.write("arr.json", "[1, 2]"), {"arr.json", "not a tokenizer.json"});

  auto with = [&](const std::string& name, auto edit) {
    json j = tiny_tokenizer();
    edit(j);
    return dir.write(name, j.dump());
  };
  std::string p = with("unigram.json", [](json& j) { j["model"] = {{"type", "Unigram"}}; });
  expect_load_error(p, {p + ": model type 'Unigram' is not supported (byte-level BPE only)"});
  p = with("wordpiece.json", [](json& j) { j["model"]["type"] = "WordPiece"; });
  expect_load_error(p, {"wordpiece.json", "model type 'WordPiece' is not supported"});
  p = with("nomodel.json", [](json& j) { j.erase("model"); });
  expect_load_error(p, {"nomodel.json", "missing field 'model'"});
  p = with("novocab.json", [](json& j) { j["model"].erase("vocab"); });
  expect_load_error(p, {"novocab.json", "missing field 'model.vocab'"});
  p = with("nomerges.json", [](json& j) { j["model"].erase("merges"); });
  expect_load_error(p, {"nomerges.json", "missing field 'model.merges'"});
  p = with("badmerge.json", [](json& j) { j["model"]["merges"].push_back("q nosuchtoken"); });
  expect_load_error(p, {"badmerge.json", "merges[6]", "not in the vocabulary"});
  p = with("badmerge2.json", [](json& j) { j["model"]["merges"].push_back("abc"); });
  expect_load_error(p, {"badmerge2.json", "not two tokens"});
  p = with("nfc.json", [](json& j) { j["normalizer"] = {{"type", "NFC"}}; });
  expect_load_error(p, {"nfc.json", "normalizer type 'NFC' is not supported"});
  p = with("ws.json", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; });
  expect_load_error(p, {"ws.json", "pre_tokenizer type 'Whitespace' is not supported"});
  p = with("nobl.json", [](json& j) { j["pre_tokenizer"]["pretokenizers"].erase(1); });
  expect_load_error(p, {"nobl.json", "no ByteLevel"});
  p = with("nopre.json", [](json& j) { j.erase("pre_tokenizer"); });
  expect_load_error(p, {"nopre.json", "missing field 'pre_tokenizer'"});
  p = with("regex.json",
           [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{N}"; });
  expect_load_error(p, {"regex.json", "does not compile"});
  p = with("behavior.json",
           [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways"; });
  expect_load_error(p, {"behavior.json", "behavior 'Sideways' is not supported"});
  p = with("decoder.json", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; });
  expect_load_error(p, {"decoder.json", "decoder type 'WordPiece' is not supported"});
  p = with("addedid.json", [](json& j) { j["added_tokens"][1].erase("id"); });
  expect_load_error(p, {"addedid.json", "missing field 'added_tokens[1].id'"});
  p = with("dropout.json", [](json& j) { j["model"]["dropout"] = 0.1; });
  expect_load_error(p, {"dropout.json", "dropout"});

  TempDir cfg;
  cfg.write(tiny_tokenizer());
  std::string c = cfg.write("tokenizer_config.json", "{not json");
  expect_load_error(cfg.path().string(), {c, "malformed JSON"});
  c = cfg.write("tokenizer_config.json", R"({"bos_token": "<nope>"})");
  expect_load_error(cfg.path().string(), {c, "bos_token '<nope>' is not a token"});
}

}  // namespace
}  // namespace shoal
