// Trains a byte-level BPE tokenizer on text, in DeepSeek-V3's family (the same pre-tokenizer
// rules, ByteLevel, the chat and tool-call markers as added tokens), and writes it as a Hugging
// Face tokenizer.json that Tokenizer::load() and HF `tokenizers` read. For small models trained
// from scratch. Not the tokenizer itself (tokenizer.h) and not a general HF trainer (no Unigram,
// WordPiece, normalizers or dropout).
//
// Id layout, as DeepSeek-V3's: 0 <｜begin▁of▁sentence｜>, 1 <｜end▁of▁sentence｜>, 2 <｜▁pad▁｜>
// (special, in the vocabulary too); then the 256 byte tokens (in byte-level code-point order); then
// one token per merge, in merge order; then the 11 chat/tool markers of chat_format.h
// (<｜User｜>, <｜Assistant｜>, the tool-call and tool-output markers; non-special added tokens, as
// in DeepSeek-V3). So every id is below vocab_size, and the markers come last.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace shoal {

class PreTokenizer;

struct BpeTrainOptions {
  // Total number of ids, markers included: at least 3 + 256 + 11 = 270. An upper bound: training
  // stops early when no pair occurs min_frequency times, and the result is then smaller.
  int32_t vocab_size = 0;
  int64_t min_frequency = 2;  // a pair is merged only when it occurs at least this often
};

class BpeTrainer {
 public:
  // split_digits: every digit is its own pre-token (the written pre_tokenizer then splits with
  // \p{N} instead of DeepSeek-V3's \p{N}{1,3}), so numbers are spelled digit by digit and no
  // vocabulary goes to multi-digit numbers: a tiny model learns to copy and compare numbers far
  // sooner. Otherwise DeepSeek-V3's rules, exactly.
  explicit BpeTrainer(bool split_digits = false);
  ~BpeTrainer();

  // Counts the pre-tokenized words of `text` (any bytes; the chat markers in it are cut out as
  // separators, never learned).
  void add_text(std::string_view text);
  // The same for a file's contents; throws shoal::Error naming the file when it cannot be read.
  void add_file(const std::string& path);

  int64_t total_words() const { return total_words_; }
  size_t distinct_words() const { return words_.size(); }

  // Learns the merges and returns the tokenizer.json document. Throws shoal::Error when
  // options.vocab_size is too small. Deterministic: the same text and options give the same file.
  nlohmann::json train(const BpeTrainOptions& options) const;

  static constexpr int32_t kMinVocabSize = 270;

 private:
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // DeepSeek-V3's rules
  bool split_digits_ = false;
  std::unordered_map<std::string, int64_t> words_;  // pre-tokenized piece -> count
  int64_t total_words_ = 0;
};

// DeepSeek-V3's tokenizer.json "pre_tokenizer" (Split rules, then ByteLevel without its regex) and
// "decoder" entries, verbatim; trained tokenizers carry them.
nlohmann::json deepseek_v3_pre_tokenizer_json();
nlohmann::json deepseek_v3_decoder_json();

// Writes `tokenizer` to `path` atomically: a temporary file in the same directory, then a rename,
// so a reader sees the old file or the new one, never half of one. Creates the parent directory.
// Throws shoal::Error naming the path on failure (and removes the temporary file).
void write_json_atomic(const nlohmann::json& document, const std::string& path);

}  // namespace shoal
