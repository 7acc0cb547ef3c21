// The BPE trainer: a tokenizer trained on a small corpus reloads with Tokenizer::load, round-trips
// text, respects the vocabulary size, has the markers at the documented ids, compresses, and is
// written atomically.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "base/error.h"
#include "engine/tokenizer/bpe_trainer.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/cli/cli_runner.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
namespace mk = chat_marker;
using nlohmann::json;

// A deterministic corpus: Zipf-ish English, numbers, some Chinese, code and chat transcripts.
std::string corpus(uint32_t seed, size_t sentences) {
  static const std::vector<std::string> words = {
      "the",  "model", "reads",  "tokens",  "and",      "writes",    "answers", "to",   "a",
      "tool", "call",  "with",   "JSON",    "of",       "small",     "large",   "data", "training",
      "loss", "falls", "slowly", "when",    "learning", "rate",      "is",      "high", "we",
      "test", "every", "kernel", "against", "its",      "reference", "模型",    "训练", "数据",
      "谢谢", "def",   "return", "x",       "+",        "1",         "==",      "(",    ")"};
  std::mt19937 rng(seed);
  std::string text;
  for (size_t s = 0; s < sentences; ++s) {
    const int n = 3 + static_cast<int>(rng() % 10);
    for (int i = 0; i < n; ++i) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      const size_t w = static_cast<size_t>(u * u * static_cast<double>(words.size()));
      text += (i ? " " : "") + words[std::min(w, words.size() - 1)];
    }
    switch (rng() % 5) {
      case 0:
        text += " " + std::to_string(rng() % 100000) + ".\n";
        break;
      case 1:
        text += std::string(mk::kUser) + "hi" + std::string(mk::kAssistant) + "ok" +
                std::string(mk::kEos);
        break;
      default:
        text += ". ";
    }
  }
  return text;
}

std::string temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("shoal_bpe_" + name + "_" +
                        std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  fs::remove_all(dir);
  return dir.string();
}

struct Trained {
  json doc;
  Tokenizer tok;
};

Trained train_and_load(int32_t vocab_size, const std::string& name) {
  BpeTrainer trainer;
  trainer.add_text(corpus(1, 3000));
  json doc = trainer.train({vocab_size, 2});
  const std::string path = temp_dir(name) + "/tokenizer.json";
  write_json_atomic(doc, path);
  return {doc, Tokenizer::load(path)};
}

TEST(BpeTrainer, ReloadsWithTheDocumentedLayout) {
  const Trained t = train_and_load(600, "layout");
  const Tokenizer& tok = t.tok;
  EXPECT_EQ(tok.vocab_size(), 600);  // the corpus has enough pairs to fill it
  EXPECT_EQ(t.doc["model"]["vocab"].size(), 600u - 11u);
  EXPECT_EQ(t.doc["model"]["merges"].size(), 600u - 11u - 3u - 256u);  // no duplicate spellings
  EXPECT_EQ(tok.token_to_id(mk::kBos), 0);
  EXPECT_EQ(tok.token_to_id(mk::kEos), 1);
  EXPECT_EQ(tok.token_to_id(mk::kPad), 2);
  for (int32_t id = 0; id < 3; ++id) EXPECT_TRUE(tok.is_special(id));
  EXPECT_EQ(tok.token_to_id("!"), 3);  // the byte tokens follow, in byte-level code-point order
  int32_t id = 600 - 11;
  for (size_t m = 3; m < std::size(mk::kAll); ++m, ++id) {
    EXPECT_EQ(tok.token_to_id(mk::kAll[m]), id) << mk::kAll[m];
    EXPECT_FALSE(tok.is_special(id));
  }
  // The markers in the corpus were cut out, never learned.
  for (int32_t v = 3; v < 600 - 11; ++v)
    EXPECT_EQ(tok.token_bytes(v).find("｜"), std::string::npos) << tok.token_bytes(v);
  // The pre-tokenizer and decoder are DeepSeek-V3's, verbatim when its tokenizer.json is here.
  const std::string ds = std::string(SHOAL_DATA_DIR) + "/tokenizers/deepseek_v3/tokenizer.json";
  if (fs::exists(ds)) {
    std::ifstream in(ds);
    const json deepseek = json::parse(in);
    EXPECT_EQ(t.doc["pre_tokenizer"], deepseek["pre_tokenizer"]);
    EXPECT_EQ(t.doc["decoder"], deepseek["decoder"]);
    EXPECT_EQ(t.doc["post_processor"], deepseek["post_processor"]);
    EXPECT_EQ(t.doc["normalizer"], deepseek["normalizer"]);
  }
}

std::string random_unicode(std::mt19937& rng) {
  static const std::vector<char32_t> ranges = {0x20,    0x7e,    0xa0,   0x2ff,  0x4e00, 0x4fff,
                                               0x1f600, 0x1f64f, 0x3040, 0x30ff, 0x0a,   0x0d};
  std::string s;
  for (int n = static_cast<int>(rng() % 40); n > 0; --n) {
    const size_t r = 2 * (rng() % (ranges.size() / 2));
    const char32_t cp = ranges[r] + static_cast<char32_t>(rng() % (ranges[r + 1] - ranges[r] + 1));
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return s;
}

TEST(BpeTrainer, RoundTripsAndCompresses) {
  const Trained t = train_and_load(800, "roundtrip");
  const Tokenizer& tok = t.tok;
  std::mt19937 rng(11);
  for (int trial = 0; trial < 500; ++trial) {
    const std::string text = random_unicode(rng);
    const std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) EXPECT_LT(id, 800);
    EXPECT_EQ(tok.decode(ids), text);
  }
  // Held-out text of the same kind: well under one token per byte (bytes alone would be 1.0).
  const std::string held_out = corpus(2, 300);
  const std::vector<int32_t> ids = tok.encode(held_out);
  EXPECT_EQ(tok.decode(ids), held_out);
  const double tokens_per_byte = double(ids.size()) / double(held_out.size());
  EXPECT_LT(tokens_per_byte, 0.4) << ids.size() << " tokens for " << held_out.size() << " bytes";
  // A frequent word is one token.
  EXPECT_EQ(tok.encode(" model").size(), 1u);
  // The chat format renders with it: markers are single ids, text round-trips.
  const std::vector<ChatMessage> chat = {{ChatRole::user, "train the model", {}, {}},
                                         {ChatRole::assistant, "", {{"function", "f", "{}"}}, {}},
                                         {ChatRole::tool, "ok", {}, {}}};
  const ChatTokens tokens = render_chat_tokens(tok, chat, {true});
  EXPECT_EQ(tokens.ids.front(), 0);
  EXPECT_EQ(tok.decode(tokens.ids), render_chat(chat, {true}));
  EXPECT_EQ(tokens.ids, tok.encode(render_chat(chat, {true})));
}

TEST(BpeTrainer, StopsEarlyOnATinyCorpusAndIsDeterministic) {
  BpeTrainer a, b;
  a.add_text("ab ab ab cd");
  b.add_text("ab ab ab cd");
  const json doc = a.train({5000, 2});
  EXPECT_EQ(doc, b.train({5000, 2}));
  // Only (a, b) (3 times), then (Ġ, ab) (twice) reach the minimum frequency.
  EXPECT_LT(doc["model"]["vocab"].size(), 270u);
  const std::string path = temp_dir("tiny") + "/t.json";
  write_json_atomic(doc, path);
  const Tokenizer tok = Tokenizer::load(path);
  EXPECT_EQ(tok.vocab_size(), static_cast<int32_t>(doc["model"]["vocab"].size()) + 11);
  EXPECT_EQ(tok.encode("ab").size(), 1u);
  EXPECT_EQ(tok.decode(tok.encode("ab cd ef")), "ab cd ef");
}

TEST(BpeTrainer, SplitDigitsSpellsNumbersDigitByDigit) {
  BpeTrainer plain, split(/*split_digits=*/true);
  const std::string text = corpus(1, 3000) + " 553 - 129 = 424. 771 + 107 = 878.";
  plain.add_text(text);
  split.add_text(text);
  const std::string dir = temp_dir("digits");
  const json plain_doc = plain.train({600, 2});
  write_json_atomic(plain_doc, dir + "/plain.json");
  const json doc = split.train({600, 2});
  EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], "\\p{N}");
  write_json_atomic(doc, dir + "/split.json");
  const Tokenizer p = Tokenizer::load(dir + "/plain.json");
  const Tokenizer s = Tokenizer::load(dir + "/split.json");  // the written rules reload
  // DeepSeek-V3's rules keep up to three digits together, so merges make multi-digit tokens;
  // split digits give one token per digit and no multi-digit token exists.
  EXPECT_EQ(s.encode("553").size(), 3u);
  EXPECT_EQ(s.encode("1234567").size(), 7u);
  EXPECT_LT(p.encode("553 771").size(), s.encode("553 771").size());
  auto multi_digit_tokens = [](const json& d) {
    int n = 0;
    for (const auto& [token, id] : d["model"]["vocab"].items()) {
      int digits = 0;
      for (char c : token) digits += c >= '0' && c <= '9';
      n += digits > 1;
    }
    return n;
  };
  EXPECT_GT(multi_digit_tokens(plain_doc), 0);
  EXPECT_EQ(multi_digit_tokens(doc), 0);
  EXPECT_EQ(s.decode(s.encode("The amount is 86856 now.")), "The amount is 86856 now.");
}

TEST(BpeTrainer, BadInputs) {
  BpeTrainer t;
  t.add_text("hello hello");
  EXPECT_THROW(t.train({269, 2}), Error);
  EXPECT_THROW(t.train({1000, 0}), Error);
  EXPECT_THROW(t.add_file("/nonexistent/corpus.txt"), Error);
  // The parent "directory" is a file: a clear error, nothing left behind.
  const std::string dir = temp_dir("bad");
  fs::create_directories(dir);
  std::ofstream(dir + "/file") << "x";
  EXPECT_THROW(write_json_atomic(json::object(), dir + "/file/tokenizer.json"), Error);
  // Overwriting replaces the file whole and leaves no temporary file.
  write_json_atomic(json{{"a", 1}}, dir + "/out.json");
  write_json_atomic(json{{"a", 2}}, dir + "/out.json");
  std::ifstream in(dir + "/out.json");
  EXPECT_EQ(json::parse(in)["a"], 2);
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 2u);  // "file" and "out.json"
}

// `shoal train-tokenizer` end to end (here rather than in tests/cli: it is this module's command).
TEST(BpeTrainer, Cli) {
  const std::string dir = temp_dir("cli");
  fs::create_directories(dir);
  std::ofstream(dir + "/a.txt") << corpus(3, 1000);
  std::ofstream(dir + "/b.txt") << corpus(4, 1000);
  test::ShoalResult r =
      test::run_shoal("train-tokenizer --input " + dir + "/a.txt " + dir +
                      "/b.txt --vocab-size 500 --out " + dir + "/tok/tokenizer.json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("500 ids"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bytes/token"), std::string::npos) << r.out;
  EXPECT_EQ(Tokenizer::load(dir + "/tok/tokenizer.json").vocab_size(), 500);
  r = test::run_shoal("train-tokenizer --input " + dir + "/a.txt --vocab-size 100 --out " + dir +
                      "/x.json");
  EXPECT_EQ(r.code, 2) << r.out;  // below the minimum: a usage error
  r = test::run_shoal("train-tokenizer --input " + dir + "/a.txt --vocab-size 300 --out " + dir +
                      "/a.txt/x.json");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("shoal train-tokenizer: error:"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/x.json"));
}

}  // namespace
}  // namespace shoal
