// The pre-tokenizer of a byte-level BPE tokenizer.json: a sequence of HF `Split` rules (a regex or
// literal, a delimiter behaviour, invert), each applied to every piece the previous one produced.
// Regexes run in PCRE2 (UTF + UCP, JIT-compiled). Not the byte-level mapping (byte_level.h) nor the
// BPE merges (tokenizer.h).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace shoal {

// HF's SplitDelimiterBehavior, on "the-final--countdown" split by "-":
enum class SplitBehavior {
  removed,               // the | final | countdown
  isolated,              // the | - | final | - | - | countdown
  merged_with_previous,  // the- | final- | - | countdown
  merged_with_next,      // the | -final | - | -countdown
  contiguous,            // the | - | final | -- | countdown
};

struct SplitRule {
  std::string pattern;  // a PCRE2 regex, or the literal text when `literal`
  bool literal = false;
  SplitBehavior behavior = SplitBehavior::isolated;
  bool invert = false;  // split on what the pattern does not match
};

// DeepSeek-V3's rules (digits in runs of 1-3; kana/CJK runs; the word/punctuation/space regex), all
// isolated. The BPE trainer uses these so trained tokenizers split text the same way.
std::vector<SplitRule> deepseek_v3_split_rules();
// GPT-2's regex, which HF's ByteLevel pre-tokenizer applies when use_regex is true.
std::string gpt2_pattern();

class PreTokenizer {
 public:
  // Compiles the regexes; throws shoal::Error naming the pattern and PCRE2's message when one does
  // not compile. `source` names where the rules came from, for that message.
  explicit PreTokenizer(std::vector<SplitRule> rules, const std::string& source = "");
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Splits `text` into pieces in order (empty pieces are dropped, as in HF). Any bytes are fine:
  // each byte that is not part of valid UTF-8 becomes a piece of its own, and the valid stretches
  // between are split on their own. Pieces are views into `text`.
  template <class Emit>
  void split(std::string_view text, Emit&& emit) const {
    split_impl(text, &call<Emit>, &emit);
  }
  std::vector<std::string_view> split(std::string_view text) const;

  const std::vector<SplitRule>& rules() const;

 private:
  using Sink = void (*)(void*, std::string_view);
  template <class Emit>
  static void call(void* f, std::string_view piece) {
    (*static_cast<Emit*>(f))(piece);
  }
  void split_impl(std::string_view text, Sink sink, void* ctx) const;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal
