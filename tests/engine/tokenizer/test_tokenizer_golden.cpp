// The DeepSeek-V3 tokenizer against HF tokenizers' own ids (tests/data/tokenizer, 298 cases):
// exact ids, round trip, streaming decode, and the ids/config facts other modules rely on.
#include <thread>

#include "tests/engine/tokenizer/tokenizer_test_util.h"

namespace shoal {
namespace {

using test::deepseek_v3;
using test::golden_cases;

TEST(TokenizerGolden, AllCasesMatchHfIds) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  ASSERT_EQ(golden_cases().size(), 298u);
  int mismatches = 0;
  for (size_t i = 0; i < golden_cases().size(); ++i) {
    const auto& c = golden_cases()[i];
    std::vector<int32_t> ids = tok->encode(c.text);
    if (ids != c.ids) {
      ++mismatches;
      if (mismatches <= 5) {
        size_t k = 0;
        while (k < ids.size() && k < c.ids.size() && ids[k] == c.ids[k]) ++k;
        ADD_FAILURE() << "case " << i << " differs at id " << k << " (got "
                      << (k < ids.size() ? ids[k] : -1) << ", HF "
                      << (k < c.ids.size() ? c.ids[k] : -1) << "): " << c.text.substr(0, 120);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerGolden, DecodeInvertsEncode) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  for (const auto& c : golden_cases()) {
    EXPECT_EQ(tok->decode(c.ids), c.text);
    EXPECT_EQ(tok->decode(tok->encode(c.text)), c.text);
  }
}

TEST(TokenizerGolden, StreamingDecodeEqualsFullDecode) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  for (bool skip : {false, true}) {
    StreamDecoder stream(*tok, skip);
    for (const auto& c : golden_cases()) {
      std::string text;
      for (int32_t id : c.ids) {
        std::string piece = stream.push(id);
        // Only complete UTF-8 comes out.
        std::string repaired;
        EXPECT_EQ(tok->decode(tok->encode(piece)), piece);
        text += piece;
      }
      text += stream.finish();
      EXPECT_EQ(text, tok->decode(c.ids, skip));
      EXPECT_EQ(stream.pending_bytes(), 0u);
    }
  }
}

// encode() from several threads at once (each has its own word cache) gives the same ids.
TEST(TokenizerGolden, ConcurrentEncodesAgree) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Tokenizer copy = *tok;  // copies share the loaded data
      for (int round = 0; round < 3; ++round)
        for (const auto& c : golden_cases()) mismatches[size_t(t)] += copy.encode(c.text) != c.ids;
    });
  }
  for (auto& th : threads) th.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

TEST(TokenizerGolden, VocabularyAndSpecialIds) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), 128815);
  EXPECT_EQ(tok->added_tokens().size(), 818u);
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->pad_id(), 1);
  EXPECT_FALSE(tok->chat_template().empty());
  EXPECT_EQ(tok->token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(tok->token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(tok->id_to_token(128803), "<｜User｜>");
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_FALSE(tok->is_special(128803));  // chat markers are added tokens, not special ones
  EXPECT_EQ(tok->token_to_id("hello").value_or(-1), 33310);
  EXPECT_EQ(tok->token_to_id("Ġworld").value_or(-1), 2058);
  EXPECT_EQ(tok->token_bytes(2058), " world");
  EXPECT_EQ(tok->token_bytes(128803), "<｜User｜>");
  EXPECT_FALSE(tok->token_to_id("no such token at all").has_value());
  EXPECT_THROW(tok->id_to_token(-1), Error);
  EXPECT_THROW(tok->id_to_token(129000), Error);
  EXPECT_FALSE(tok->has_id(128815));
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    ASSERT_TRUE(tok->has_id(id)) << id;
    ASSERT_EQ(tok->token_to_id(tok->id_to_token(id)), id);
  }
}

TEST(TokenizerGolden, SpecialTextModes) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  std::string text = "<｜begin▁of▁sentence｜>hi<｜User｜>x";
  std::vector<int32_t> hi = tok->encode("hi"), x = tok->encode("x");
  EXPECT_EQ(tok->encode(text), (std::vector<int32_t>{0, hi[0], 128803, x[0]}));
  // split_special: BOS (special) is plain text, <｜User｜> (not special) is still recognized.
  std::vector<int32_t> split = tok->encode(text, SpecialText::split_special);
  EXPECT_EQ(std::count(split.begin(), split.end(), 0), 0);
  EXPECT_EQ(std::count(split.begin(), split.end(), 128803), 1);
  EXPECT_EQ(tok->decode(split), text);
  // plain: no added token at all.
  std::vector<int32_t> plain = tok->encode(text, SpecialText::plain);
  for (int32_t id : plain) EXPECT_LT(id, 128000);
  EXPECT_EQ(tok->decode(plain), text);
  // decode(skip_special) drops BOS/EOS but keeps the chat markers.
  EXPECT_EQ(tok->decode(tok->encode(text), true), "hi<｜User｜>x");
}

TEST(TokenizerGolden, IdsThatNameNoTokenDecodeToNothing) {
  const Tokenizer* tok = deepseek_v3();
  ASSERT_TRUE(tok);
  std::vector<int32_t> ids = {33310, -5, 129279, 128815, 2058};
  EXPECT_EQ(tok->decode(ids), "hello world");
  StreamDecoder stream(*tok);
  std::string text;
  for (int32_t id : ids) text += stream.push(id);
  EXPECT_EQ(text + stream.finish(), "hello world");
}

}  // namespace
}  // namespace shoal
