// Random Unicode strings through the DeepSeek-V3 tokenizer: round trip, streaming decode, valid
// ids, and BPE merges checked against a plain reference (GPT-2's loop over string pairs) written
// here. Also invalid UTF-8 input and lossy decoding, whose behaviour tokenizer.h defines.
#include <fstream>
#include <map>
#include <random>

#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace shoal {
namespace {

using test::deepseek_v3;

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

// A random string mixing the classes the pre-tokenizer regexes care about.
std::string random_text(std::mt19937& rng) {
  auto pick = [&](char32_t lo, char32_t hi) { return lo + char32_t(rng() % (hi - lo + 1)); };
  static const char32_t spaces[] = {' ',    '\t',   '\n',   '\r',   0x0B,   0x0C,
                                    0x85,   0xA0,   0x1680, 0x2000, 0x2009, 0x200B,
                                    0x2028, 0x202F, 0x3000, 0xFEFF, 0x180E};
  static const char* fragments[] = {"<｜User｜>",
                                    "<｜Assistant｜>",
                                    "<｜end▁of▁sentence｜>",
                                    "<｜",
                                    "｜>",
                                    "<｜tool▁sep｜",
                                    "'s",
                                    "'ll",
                                    "\r\n",
                                    "...",
                                    "```json\n"};
  std::string s;
  int n = int(rng() % 40);
  for (int i = 0; i < n; ++i) {
    switch (rng() % 16) {
      case 0:
        append_utf8(pick(0x20, 0x7E), s);
        break;
      case 1:
        append_utf8(pick('a', 'z'), s);
        break;
      case 2:
        append_utf8(spaces[rng() % std::size(spaces)], s);
        break;
      case 3:
        append_utf8(pick('0', '9'), s);
        break;
      case 4:
        append_utf8(rng() % 2 ? pick(0x660, 0x669) : pick(0xFF10, 0xFF19), s);
        break;
      case 5:
        append_utf8(pick(0x4E00, 0x9FFF), s);
        break;
      case 6:
        append_utf8(pick(0x3040, 0x30FF), s);
        break;
      case 7:
        append_utf8(pick(0xAC00, 0xD7A3), s);
        break;
      case 8:
        append_utf8(pick(0x1F300, 0x1FAFF), s);
        break;
      case 9:
        append_utf8(rng() % 2 ? 0x200D : 0xFE0F, s);
        break;
      case 10:
        append_utf8(pick(0x300, 0x36F), s);
        break;
      case 11:
        append_utf8(pick(0x400, 0x4FF), s);
        break;
      case 12:
        append_utf8(pick(0x600, 0x6FF), s);
        break;
      case 13:
        s += fragments[rng() % std::size(fragments)];
        break;
      case 14:
        append_utf8(pick(0x2000, 0x2BFF), s);
        break;  // punctuation, symbols, arrows
      default: {
        char32_t c = pick(1, 0x10FFFF);
        if (c >= 0xD800 && c <= 0xDFFF) c = 0xFFFD;
        append_utf8(c, s);
      }
    }
  }
  return s;
}

TEST(TokenizerProperty, RandomUnicodeRoundTrips) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  std::mt19937 rng(20261128);
  for (int i = 0; i < 4000; ++i) {
    std::string text = random_text(rng);
    ASSERT_TRUE(utf8::is_valid(text));
    for (SpecialText mode : {SpecialText::parse, SpecialText::split_special, SpecialText::plain}) {
      std::vector<int32_t> ids = tok->encode(text, mode);
      for (int32_t id : ids) ASSERT_TRUE(tok->has_id(id)) << id;
      if (mode == SpecialText::plain) {
        for (int32_t id : ids) ASSERT_LT(id, 128000) << "an added token in plain mode: " << text;
      }
      ASSERT_EQ(tok->decode(ids), text) << "case " << i;
    }
    std::vector<int32_t> ids = tok->encode(text);
    StreamDecoder stream(*tok);
    std::string streamed;
    for (int32_t id : ids) {
      std::string piece = stream.push(id);
      ASSERT_TRUE(utf8::is_valid(piece));
      streamed += piece;
    }
    ASSERT_EQ(streamed + stream.finish(), text) << "case " << i;
  }
}

// GPT-2's reference BPE: repeatedly merge every occurrence of the lowest-ranked adjacent pair.
class ReferenceBpe {
 public:
  explicit ReferenceBpe(const std::string& tokenizer_json) {
    std::ifstream in(tokenizer_json);
    auto j = nlohmann::json::parse(in);
    for (auto& [tok, id] : j["model"]["vocab"].items()) vocab_[tok] = id.get<int32_t>();
    int rank = 0;
    for (auto& m : j["model"]["merges"]) {
      std::string s = m.get<std::string>();
      ranks_.emplace(s, rank++);
    }
    for (auto& p : j["pre_tokenizer"]["pretokenizers"])
      if (p["type"] == "Split") rules_.push_back({p["pattern"]["Regex"].get<std::string>()});
  }
  const std::vector<SplitRule>& rules() const { return rules_; }

  std::vector<int32_t> encode_word(std::string_view bytes) const {
    std::vector<std::string> parts;
    for (unsigned char b : bytes) parts.push_back(byte_level::encode(std::string(1, char(b))));
    while (parts.size() > 1) {
      int best = -1;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = ranks_.find(parts[i] + " " + parts[i + 1]);
        if (it != ranks_.end() && (best < 0 || it->second < best)) best = it->second;
      }
      if (best < 0) break;
      std::vector<std::string> merged;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (i + 1 < parts.size()) {
          auto it = ranks_.find(parts[i] + " " + parts[i + 1]);
          if (it != ranks_.end() && it->second == best) {
            merged.push_back(parts[i] + parts[i + 1]);
            ++i;
            continue;
          }
        }
        merged.push_back(parts[i]);
      }
      parts = std::move(merged);
    }
    std::vector<int32_t> ids;
    for (auto& p : parts) ids.push_back(vocab_.at(p));
    return ids;
  }

 private:
  std::map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int> ranks_;
  std::vector<SplitRule> rules_;
};

TEST(TokenizerProperty, MergesMatchAPlainReferenceBpe) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  ReferenceBpe ref(tok->path());
  ASSERT_EQ(ref.rules().size(), 3u);
  PreTokenizer pre(ref.rules());
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (const auto& c : test::golden_cases()) texts.push_back(c.text);
  for (int i = 0; i < 1500; ++i) texts.push_back(random_text(rng));
  // Long single words exercise the heap path (runs of letters, spaces, CJK).
  texts.push_back(std::string(3000, 'a'));
  texts.push_back(std::string(500, ' ') + "x");
  std::string cjk;
  for (int i = 0; i < 400; ++i) append_utf8(0x4E00 + char32_t(rng() % 3000), cjk);
  texts.push_back(cjk);
  for (const std::string& text : texts) {
    std::vector<int32_t> want;
    for (std::string_view piece : pre.split(text)) {
      auto ids = ref.encode_word(piece);
      want.insert(want.end(), ids.begin(), ids.end());
    }
    ASSERT_EQ(tok->encode(text, SpecialText::plain), want) << text.substr(0, 200);
  }
}

TEST(TokenizerProperty, DeepSeekRulesEqualTheFilesRules) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  ReferenceBpe ref(tok->path());
  PreTokenizer from_file(ref.rules()), built_in(deepseek_v3_split_rules());
  std::mt19937 rng(11);
  for (int i = 0; i < 3000; ++i) {
    std::string text = random_text(rng);
    ASSERT_EQ(from_file.split(text), built_in.split(text)) << text;
  }
  for (const auto& c : test::golden_cases())
    ASSERT_EQ(from_file.split(c.text), built_in.split(c.text));
}

// Invalid UTF-8 in encode(): each stray byte is its own piece and its byte-level token.
TEST(TokenizerProperty, InvalidUtf8EncodesBytewise) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  auto byte_token = [&](unsigned char b) {
    return tok->token_to_id(byte_level::encode(std::string(1, char(b)))).value();
  };
  EXPECT_EQ(tok->encode("\xFF"), std::vector<int32_t>{byte_token(0xFF)});
  // A truncated 3-byte character (E4 B8 of U+4E2D) before a word: two byte tokens, then the word.
  std::vector<int32_t> ids = tok->encode("\xE4\xB8hello");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], byte_token(0xE4));
  EXPECT_EQ(ids[1], byte_token(0xB8));
  EXPECT_EQ(std::vector<int32_t>(ids.begin() + 2, ids.end()), tok->encode("hello"));
  // decode() repairs (one U+FFFD per maximal invalid subpart); decode_bytes() gives the bytes back.
  EXPECT_EQ(tok->decode(ids), "\xEF\xBF\xBDhello");
  EXPECT_EQ(tok->decode_bytes(ids), "\xE4\xB8hello");
  std::mt19937 rng(3);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes = random_text(rng);
    for (int k = 0, n = int(rng() % 4); k < n && !bytes.empty(); ++k)
      bytes[rng() % bytes.size()] = char(rng() % 256);  // corrupt a few bytes
    std::vector<int32_t> enc = tok->encode(bytes);
    ASSERT_EQ(tok->decode_bytes(enc), bytes);
    std::string text = tok->decode(enc);
    ASSERT_TRUE(utf8::is_valid(text));
    std::string lossy;
    utf8::append_lossy(bytes, lossy);
    ASSERT_EQ(text, lossy);
    StreamDecoder stream(*tok);
    std::string streamed;
    for (int32_t id : enc) streamed += stream.push(id);
    ASSERT_EQ(streamed + stream.finish(), text);
  }
}

TEST(TokenizerProperty, StreamingHoldsSplitCharacters) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  // "👩‍👩‍👧‍👦" is encoded as byte-level pieces of its code points: nothing comes
  // out mid-character.
  std::string family = "👩‍👩‍👧‍👦";
  std::vector<int32_t> ids = tok->encode(family);
  ASSERT_GT(ids.size(), 4u);
  StreamDecoder stream(*tok);
  std::string out;
  size_t held = 0;
  for (int32_t id : ids) {
    std::string piece = stream.push(id);
    held += piece.empty();
    EXPECT_TRUE(utf8::is_valid(piece));
    out += piece;
  }
  EXPECT_GT(held, 0u);
  EXPECT_EQ(out + stream.finish(), family);
  // A sequence that stops mid-character: finish() repairs the rest to U+FFFD, as decode() does.
  std::vector<int32_t> cut(ids.begin(), ids.begin() + 1);
  StreamDecoder s2(*tok);
  std::string partial = s2.push(cut[0]);
  EXPECT_EQ(partial + s2.finish(), tok->decode(cut));
  EXPECT_NE(tok->decode(cut).find("\xEF\xBF\xBD"), std::string::npos);
}

TEST(Utf8, MaximalSubpartsBecomeOneReplacementEach) {
  auto lossy = [](std::string_view s) {
    std::string out;
    utf8::append_lossy(s, out);
    return out;
  };
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("a\x80z"), "a" + r + "z");
  EXPECT_EQ(lossy("\xE0\xA0z"), r + "z");               // a truncated 3-byte sequence: one
  EXPECT_EQ(lossy("\xE0\x80"), r + r);                  // E0 80 is never valid: two
  EXPECT_EQ(lossy("\xED\xA0\x80"), r + r + r);          // a surrogate
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), r + r + r + r);  // past U+10FFFF
  EXPECT_EQ(lossy("\xC0\xAF"), r + r);                  // overlong
  EXPECT_EQ(lossy("\xF0\x9F\x98"), r);                  // truncated at the end
  EXPECT_EQ(lossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
  std::string out;
  EXPECT_EQ(utf8::append_lossy_complete("ab\xF0\x9F", out), 2u);  // holds the incomplete tail
  EXPECT_EQ(out, "ab");
}

}  // namespace
}  // namespace shoal
