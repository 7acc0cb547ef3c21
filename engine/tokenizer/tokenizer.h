// A Hugging Face tokenizer.json with a byte-level BPE model (the DeepSeek-V3 one is the target):
// load, encode, decode and streaming decode, matching HF `tokenizers` ids exactly.
// Not a general HF tokenizer: no normalizers, no Unigram/WordPiece/WordLevel, no post-processing
// (encode has add_special_tokens=false semantics; callers add BOS themselves).
//
// Defined behaviour on odd input:
//  - Invalid UTF-8 in encode(): each byte that is not part of a valid UTF-8 sequence becomes its
//    own piece and is encoded as that byte's byte-level token; the valid stretches between such
//    bytes are pre-tokenized on their own. So decode_bytes(encode(x)) == x for any bytes x, and
//    decode(encode(x)) == x for valid UTF-8 x.
//  - decode() returns valid UTF-8: bytes that do not form valid UTF-8 (a token sequence may stop
//    in the middle of a character, or the ids may be arbitrary) are replaced by U+FFFD, one per
//    maximal invalid subpart, as Rust's String::from_utf8_lossy (what HF's ByteLevel decoder
//    uses) does. Ids that name no token (negative, past the end, holes) decode to nothing, as in
//    HF.
//  - Character classes (\p{L}, \p{N}, ...) come from PCRE2's Unicode tables (Debian 12: PCRE2
//    10.42, Unicode 14.0); \s is Unicode White_Space, as in HF's Oniguruma. Code points assigned
//    after Unicode 14 may split differently from a build with newer tables.
// Thread safety: a Tokenizer is immutable after load(); encode/decode may run concurrently from
// any number of threads (the BPE word cache is per thread). Copies are cheap and share the data.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shoal {

// An entry of tokenizer.json's "added_tokens": matched in the text before pre-tokenization.
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // a control token (BOS/EOS/...): decode(skip_special) drops it
  bool lstrip = false;       // the match also swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // matches only when not inside a word
  bool normalized = false;   // matched after normalization (no normalizer here: same text)
};

// Which added tokens are recognized when their text appears inside encode()'s input.
enum class SpecialText {
  parse,          // every added token (HF's default; what the golden cases record)
  split_special,  // only added tokens with special=false (HF's split_special_tokens=True)
  plain,          // none: the text is all ordinary BPE text (for untrusted content in prompts)
};

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory holding one. tokenizer_config.json next to it,
  // when present, gives the BOS/EOS/PAD tokens and the chat template. Throws shoal::Error naming
  // the file and what is wrong (missing, malformed JSON, unsupported model/normalizer/
  // pre-tokenizer/decoder type, missing field).
  static Tokenizer load(const std::string& path);

  // Text -> ids. Never throws on any input bytes (see the top of this file for invalid UTF-8).
  std::vector<int32_t> encode(std::string_view text, SpecialText mode = SpecialText::parse) const;
  // The same, appending to `out` (reuses its capacity).
  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     SpecialText mode = SpecialText::parse) const;

  // Ids -> valid UTF-8 text (invalid bytes -> U+FFFD). skip_special drops added tokens marked
  // special (not the non-special ones such as DeepSeek's <｜User｜>).
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // Ids -> the raw bytes, with no UTF-8 repair: decode_bytes(encode(x)) == x for any x.
  std::string decode_bytes(std::span<const int32_t> ids, bool skip_special = false) const;
  // The bytes one token decodes to (empty for ids that name no token).
  std::string_view token_bytes(int32_t id) const;

  // Token strings are as tokenizer.json spells them: byte-level form for the vocabulary ("Ġhello"
  // for " hello"), the content for added tokens ("<｜User｜>").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws shoal::Error for unassigned ids
  bool has_id(int32_t id) const;

  // One past the largest assigned id (vocabulary and added tokens); DeepSeek-V3: 128,815.
  int32_t vocab_size() const;
  bool is_special(int32_t id) const;  // an added token with special=true
  const std::vector<AddedToken>& added_tokens() const;

  // From tokenizer_config.json (bos_token/eos_token/pad_token), when present and in the vocabulary.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  const std::string& chat_template() const;  // empty when there is none

  const std::string& path() const;  // the tokenizer.json that was loaded

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Feed ids one at a time, get back only complete UTF-8: a character split across tokens is held
// until its last byte arrives. The concatenation of every push() and finish() equals
// tokenizer.decode(all ids, skip_special). The tokenizer must outlive the decoder.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  // Returns the text that became complete with this id (often empty or one token's text).
  std::string push(int32_t id);
  void push(int32_t id, std::string& out);  // appends to out
  // Ends the sequence: bytes still pending (an incomplete character) come back as U+FFFD.
  std::string finish();
  void reset();  // forget pending bytes, start a new sequence
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer::Impl* impl_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace shoal
