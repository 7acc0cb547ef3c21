// Byte-level BPE training (see bpe_trainer.h): count pre-tokenized words, then repeatedly merge the
// most frequent adjacent pair, as HF `tokenizers`' BpeTrainer does (a max-heap of pair counts with
// lazy re-checking, ties broken towards the smaller ids; a merge that spells an existing token
// reuses its id).
#include "engine/tokenizer/bpe_trainer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <queue>
#include <unordered_set>

#include <unistd.h>

#include "base/error.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/chat_format.h"
#include "engine/tokenizer/pretokenizer.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// DeepSeek-V3's tokenizer.json entries, verbatim (its pre_tokenizer regexes are those of
// deepseek_v3_split_rules(), which spells the CJK class with \x{...} escapes for PCRE2).
constexpr const char* kPreTokenizerJson = R"json({"type": "Sequence", "pretokenizers": [
  {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
  {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated", "invert": false},
  {"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
  {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})json";
constexpr const char* kDecoderJson =
    R"json({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true})json";
constexpr const char* kPostProcessorJson =
    R"json({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})json";

constexpr int32_t kFirstByteId = 3;  // after BOS, EOS, pad
constexpr int32_t kNumMarkers = static_cast<int32_t>(std::size(chat_marker::kAll));  // 14

uint64_t pair_key(int32_t a, int32_t b) {
  return uint64_t(uint32_t(a)) << 32 | uint32_t(b);
}
int32_t pair_first(uint64_t key) {
  return static_cast<int32_t>(key >> 32);
}
int32_t pair_second(uint64_t key) {
  return static_cast<int32_t>(key & 0xffffffffu);
}

struct Word {
  std::vector<int32_t> symbols;
  int64_t count = 0;
};

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  // Max-heap on count; among equal counts the smaller pair (first id, then second) wins.
  bool operator<(const HeapEntry& o) const {
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

json added_token(int32_t id, std::string_view content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

}  // namespace

json deepseek_v3_pre_tokenizer_json() {
  return json::parse(kPreTokenizerJson);
}
json deepseek_v3_decoder_json() {
  return json::parse(kDecoderJson);
}

namespace {
std::vector<SplitRule> trainer_rules(bool split_digits) {
  std::vector<SplitRule> rules = deepseek_v3_split_rules();
  if (split_digits) rules[0].pattern = R"(\p{N})";
  return rules;
}
}  // namespace

BpeTrainer::BpeTrainer(bool split_digits)
    : pre_tokenizer_(std::make_unique<PreTokenizer>(
          trainer_rules(split_digits),
          split_digits ? "DeepSeek-V3 split rules, digits split" : "DeepSeek-V3 split rules")),
      split_digits_(split_digits) {}
BpeTrainer::~BpeTrainer() = default;

void BpeTrainer::add_text(std::string_view text) {
  auto count = [&](std::string_view part) {
    pre_tokenizer_->split(part, [&](std::string_view piece) {
      ++words_[std::string(piece)];
      ++total_words_;
    });
  };
  // Cut the markers out first (the loaded tokenizer matches them before pre-tokenizing). All of
  // them start with "<｜".
  size_t start = 0, from = 0;
  while (true) {
    const size_t at = text.find("<｜", from);
    if (at == std::string_view::npos) break;
    size_t size = 0;
    for (std::string_view m : chat_marker::kAll)
      if (text.substr(at).starts_with(m)) size = m.size();
    if (size == 0) {
      from = at + 1;
      continue;
    }
    count(text.substr(start, at - start));
    start = from = at + size;
  }
  count(text.substr(start));
}

void BpeTrainer::add_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SHOAL_CHECK(in.good(), "{}: cannot open the training text", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SHOAL_CHECK(!in.bad(), "{}: read error", path);
  add_text(text);
}

json BpeTrainer::train(const BpeTrainOptions& options) const {
  SHOAL_CHECK(options.vocab_size >= kMinVocabSize,
              "vocab_size {} is too small: a byte-level BPE with the chat markers needs at least "
              "{} ids (3 control tokens, 256 bytes, 11 markers)",
              options.vocab_size, kMinVocabSize);
  SHOAL_CHECK(options.min_frequency >= 1, "min_frequency must be at least 1 (got {})",
              options.min_frequency);
  const int32_t bpe_end = options.vocab_size - (kNumMarkers - kFirstByteId);  // ids < bpe_end

  // Token strings in byte-level form; ids 0-2 are the control tokens.
  std::vector<std::string> tokens = {std::string(chat_marker::kBos), std::string(chat_marker::kEos),
                                     std::string(chat_marker::kPad)};
  std::array<uint8_t, 256> bytes_by_codepoint;
  for (int b = 0; b < 256; ++b) bytes_by_codepoint[b] = static_cast<uint8_t>(b);
  std::sort(bytes_by_codepoint.begin(), bytes_by_codepoint.end(), [](uint8_t x, uint8_t y) {
    return byte_level::codepoint_of(x) < byte_level::codepoint_of(y);
  });
  std::array<int32_t, 256> byte_id{};
  for (uint8_t b : bytes_by_codepoint) {
    byte_id[b] = static_cast<int32_t>(tokens.size());
    tokens.push_back(byte_level::encode(std::string_view(reinterpret_cast<const char*>(&b), 1)));
  }
  std::unordered_map<std::string, int32_t> id_of;
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) id_of[tokens[i]] = i;

  // Words in a fixed order (sorted), so training does not depend on hash-map iteration.
  std::vector<const std::pair<const std::string, int64_t>*> sorted;
  sorted.reserve(words_.size());
  for (const auto& entry : words_) sorted.push_back(&entry);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->first < b->first; });
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto* entry : sorted) {
    Word w;
    w.count = entry->second;
    for (unsigned char c : entry->first) w.symbols.push_back(byte_id[c]);
    words.push_back(std::move(w));
  }

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;  // may hold stale entries
  for (uint32_t w = 0; w < words.size(); ++w) {
    const std::vector<int32_t>& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = pair_key(s[i], s[i + 1]);
      pair_count[key] += words[w].count;
      std::vector<uint32_t>& list = pair_words[key];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  std::priority_queue<HeapEntry> heap;
  for (const auto& [key, count] : pair_count) heap.push({count, key});

  std::vector<std::pair<int32_t, int32_t>> merges;
  int32_t next_id = static_cast<int32_t>(tokens.size());
  while (next_id < bpe_end && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.pair);
    const int64_t current = it == pair_count.end() ? 0 : it->second;
    if (current != top.count) {  // stale: counts only fall, except for pairs pushed fresh below
      if (current > 0) heap.push({current, top.pair});
      continue;
    }
    if (top.count < options.min_frequency) break;
    const int32_t a = pair_first(top.pair), b = pair_second(top.pair);
    const std::string merged = tokens[a] + tokens[b];
    int32_t id;
    if (auto found = id_of.find(merged); found != id_of.end()) {
      id = found->second;  // another merge already spells this token
    } else {
      id = next_id++;
      tokens.push_back(merged);
      id_of.emplace(merged, id);
    }
    merges.emplace_back(a, b);

    std::vector<uint32_t> affected = std::move(pair_words[top.pair]);
    pair_words.erase(top.pair);
    std::unordered_set<uint64_t> grown;
    for (uint32_t w : affected) {
      Word& word = words[w];
      std::vector<int32_t>& s = word.symbols;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;  // a stale entry
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_count[pair_key(s[i], s[i + 1])] -= word.count;
      std::vector<int32_t> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(id);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = std::move(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t key = pair_key(s[i], s[i + 1]);
        pair_count[key] += word.count;
        if (s[i] == id || s[i + 1] == id) {
          std::vector<uint32_t>& list = pair_words[key];
          if (list.empty() || list.back() != w) list.push_back(w);
          grown.insert(key);
        }
      }
    }
    pair_count.erase(top.pair);
    for (uint64_t key : grown)
      if (pair_count[key] > 0) heap.push({pair_count[key], key});
  }

  // The document, in DeepSeek-V3's layout.
  json vocab = json::object();
  for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) vocab[tokens[i]] = i;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) merge_list.push_back(tokens[a] + " " + tokens[b]);
  json added = json::array();
  for (int32_t i = 0; i < kFirstByteId; ++i) added.push_back(added_token(i, tokens[i], true));
  int32_t marker_id = next_id;
  for (size_t m = kFirstByteId; m < std::size(chat_marker::kAll); ++m)
    added.push_back(added_token(marker_id++, chat_marker::kAll[m], false));

  json doc;
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  doc["added_tokens"] = std::move(added);
  doc["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array()}};
  doc["pre_tokenizer"] = deepseek_v3_pre_tokenizer_json();
  if (split_digits_) doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}";
  doc["post_processor"] = json::parse(kPostProcessorJson);
  doc["decoder"] = deepseek_v3_decoder_json();
  doc["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"vocab", std::move(vocab)},
                  {"merges", std::move(merge_list)}};
  return doc;
}

void write_json_atomic(const json& document, const std::string& path) {
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) {
    fs::create_directories(target.parent_path(), ec);
    SHOAL_CHECK(!ec, "{}: cannot create the directory: {}", target.parent_path().string(),
                ec.message());
  }
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    SHOAL_CHECK(out.good(), "{}: cannot write (temporary file {})", path, temp);
    out << document.dump(2) << '\n';
    out.flush();
    if (!out.good()) {
      fs::remove(temp, ec);
      SHOAL_FAIL("{}: write failed (disk full?)", path);
    }
  }
  fs::rename(temp, target, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    SHOAL_FAIL("{}: cannot rename {} into place: {}", path, temp, ec.message());
  }
}

}  // namespace shoal
