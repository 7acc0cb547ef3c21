// Byte-level BPE from an HF tokenizer.json (see tokenizer.h): loading and validation, added-token
// matching, BPE merges with a per-thread word cache, decoding. The pre-tokenizer regexes live in
// pretokenizer.cpp, the byte alphabet in byte_level.cpp, UTF-8 repair in utf8.cpp.
#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "base/error.h"
#include "engine/tokenizer/byte_level.h"
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace shoal {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Merge rules keyed by the pair of ids: open addressing, linear probing, ids are non-negative so
// an all-ones key marks an empty slot.
class MergeTable {
 public:
  struct Merge {
    int32_t rank, id;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    shift_ = 60;
    while (cap < 2 * n) {
      cap <<= 1;
      --shift_;
    }
    slots_.assign(cap, Slot{kEmpty, {0, 0}});
    mask_ = cap - 1;
  }
  // Returns false when the pair is already there (the first rank wins, as in HF).
  bool insert(int32_t a, int32_t b, Merge m) {
    uint64_t key = pack(a, b);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, m};
        return true;
      }
    }
  }
  const Merge* find(int32_t a, int32_t b) const {
    uint64_t key = pack(a, b);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].merge;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static uint64_t pack(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  // Fibonacci hashing: the top bits of the product depend on every bit of both ids.
  size_t slot_of(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 60;
};

// A byte trie over the added tokens' contents, for leftmost-longest matching.
class AddedTrie {
 public:
  void add(std::string_view s, int32_t token_index) {
    if (s.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    int32_t n = 0;
    for (unsigned char c : s) {
      int32_t next = child(n, c);
      if (next < 0) {
        next = int32_t(nodes_.size());
        nodes_[size_t(n)].children.push_back({c, next});
        nodes_.emplace_back();
      }
      n = next;
    }
    nodes_[size_t(n)].token = token_index;
    first_[static_cast<unsigned char>(s[0])] = true;
  }
  bool empty() const { return nodes_.empty(); }
  // The leftmost-longest match in text[from, n): sets start/len/token_index, or returns false.
  bool find(std::string_view text, size_t from, size_t& start, size_t& len, int32_t& token) const {
    auto* s = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t i = from, n = text.size(); i < n; ++i) {
      if (!first_[s[i]]) continue;
      int32_t node = 0, best = -1;
      size_t best_len = 0;
      for (size_t j = i; j < n; ++j) {
        node = child(node, s[j]);
        if (node < 0) break;
        if (nodes_[size_t(node)].token >= 0) {
          best = nodes_[size_t(node)].token;
          best_len = j + 1 - i;
        }
      }
      if (best >= 0) {
        start = i;
        len = best_len;
        token = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;
  };
  int32_t child(int32_t n, unsigned char c) const {
    for (auto& [b, next] : nodes_[size_t(n)].children)
      if (b == c) return next;
    return -1;
  }
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
};

// Unicode White_Space (what Rust's char::is_whitespace tests, for lstrip/rstrip).
bool is_white_space(char32_t c) {
  return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Decodes the valid UTF-8 character at s[i] (the text between added tokens may hold invalid bytes:
// those count as one non-space, non-word "character").
char32_t decode_at(std::string_view s, size_t i, size_t& len) {
  size_t l;
  auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (utf8::scan(p, s.size() - i, l) != utf8::Scan::valid) {
    len = 1;
    return 0xFFFD;
  }
  len = l;
  if (l == 1) return p[0];
  if (l == 2) return char32_t((p[0] & 0x1F) << 6 | (p[1] & 0x3F));
  if (l == 3) return char32_t((p[0] & 0x0F) << 12 | (p[1] & 0x3F) << 6 | (p[2] & 0x3F));
  return char32_t((p[0] & 0x07) << 18 | (p[1] & 0x3F) << 12 | (p[2] & 0x3F) << 6 | (p[3] & 0x3F));
}

// Start of the character that ends at s[end) (walks back over continuation bytes).
size_t char_start_before(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && end - i < 4 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// Letters, marks and numbers: an approximation of Rust's char::is_alphanumeric (Alphabetic or
// Numeric) for single_word added tokens; exact on ASCII. DeepSeek-V3 uses no single_word token.
bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
  return c != 0xFFFD && !is_white_space(c) && !(c >= 0x2000 && c <= 0x2BFF) &&
         !(c >= 0x3000 && c <= 0x303F) && !(c >= 0xFF00 && c <= 0xFF0F);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SHOAL_CHECK(in.good(), "{}: cannot open the file", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json(const std::string& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    SHOAL_FAIL("{}: malformed JSON: {}", path, e.what());
  }
}

const json& field(const json& j, const char* key, const std::string& where,
                  const std::string& file) {
  SHOAL_CHECK(j.is_object() && j.contains(key), "{}: missing field '{}{}'", file, where, key);
  return j[key];
}

std::string type_of(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>()
                                                                      : std::string();
}

std::atomic<uint64_t> next_instance{1};

}  // namespace

struct Tokenizer::Impl {
  std::string path;
  uint64_t instance = next_instance++;

  // Ids: token strings, the bytes each decodes to, flags.
  std::vector<std::string> id_token;   // "" for holes
  std::vector<uint32_t> bytes_off{0};  // token_bytes(id) = bytes[bytes_off[id], [id + 1])
  std::string bytes;
  std::vector<uint8_t> flags;  // kAssigned | kSpecial
  static constexpr uint8_t kAssigned = 1, kSpecial = 2;
  std::unordered_map<std::string, int32_t> vocab;  // the model's vocabulary
  std::unordered_map<std::string, int32_t> added_by_content;

  // BPE.
  std::array<int32_t, 256> byte_id{};  // the id of each single byte's token (-1: none)
  MergeTable merges;
  bool ignore_merges = false;
  std::optional<PreTokenizer> pre;
  bool add_prefix_space = false;

  // Added tokens, matched before pre-tokenization: those with normalized=false first over the
  // whole text, then those with normalized=true in what is left (HF's two passes).
  std::vector<AddedToken> added;
  AddedTrie trie_raw, trie_normalized;

  std::optional<int32_t> bos, eos, pad;
  std::string chat_template;

  std::string_view token_bytes(int32_t id) const {
    if (id < 0 || size_t(id) + 1 >= bytes_off.size()) return {};
    return std::string_view(bytes).substr(bytes_off[size_t(id)],
                                          bytes_off[size_t(id) + 1] - bytes_off[size_t(id)]);
  }
  bool keep(int32_t id, bool skip_special) const {
    if (id < 0 || size_t(id) >= flags.size() || !(flags[size_t(id)] & kAssigned)) return false;
    return !(skip_special && (flags[size_t(id)] & kSpecial));
  }

  void encode(std::string_view text, std::vector<int32_t>& out, SpecialText mode) const;
  void encode_added_pass(std::string_view text, const AddedTrie& trie, SpecialText mode,
                         std::vector<int32_t>& out, bool last_pass) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
};

namespace {

// The per-thread BPE word cache: raw word bytes -> ids, bounded (cleared when full). Keyed by the
// tokenizer instance so that two tokenizers used on one thread never see each other's words.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 128;
  static constexpr size_t kSlots = size_t(1) << 17;
  static constexpr size_t kMaxEntries = kSlots / 2;

  static WordCache& for_instance(uint64_t instance) {
    thread_local std::array<WordCache, 2> caches;
    thread_local size_t next_victim = 0;
    for (auto& c : caches)
      if (c.owner_ == instance) return c;
    WordCache& c = caches[next_victim];
    next_victim = (next_victim + 1) % caches.size();
    c.reset(instance);
    return c;
  }

  // Appends the cached ids of `word` to out; false on a miss.
  bool lookup(std::string_view word, uint64_t h, std::vector<int32_t>& out) const {
    if (slots_.empty()) return false;
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return false;
      if (s.hash == h && s.key_len == word.size() &&
          std::memcmp(keys_.data() + s.key_off, word.data(), word.size()) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.ids_len);
        return true;
      }
    }
  }

  void store(std::string_view word, uint64_t h, const int32_t* ids, size_t n) {
    if (slots_.empty() || entries_ >= kMaxEntries) reset(owner_);
    size_t i = h & (kSlots - 1);
    while (slots_[i].hash != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = {h, uint32_t(keys_.size()), uint32_t(word.size()), uint32_t(ids_.size()),
                 uint32_t(n)};
    keys_.append(word);
    ids_.insert(ids_.end(), ids, ids + n);
    ++entries_;
  }

  static uint64_t hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 29;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, s.data() + i, s.size() - i);
    h = (h ^ tail) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h | 1;  // 0 marks an empty slot
  }

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, ids_len;
  };
  void reset(uint64_t owner) {
    owner_ = owner;
    slots_.assign(kSlots, Slot{0, 0, 0, 0, 0});
    keys_.clear();
    ids_.clear();
    entries_ = 0;
  }
  uint64_t owner_ = 0;
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t entries_ = 0;
};

}  // namespace

// BPE on one pre-tokenized word: start from one symbol per byte, repeatedly merge the adjacent
// pair with the lowest rank (leftmost first on ties), exactly as HF's Word::merge_all without
// dropout. A min-heap of candidate pairs, checked lazily, keeps long words O(n log n).
void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Sym> syms;
  thread_local std::vector<Cand> heap;
  syms.clear();
  heap.clear();
  for (unsigned char b : word) {
    int32_t id = byte_id[b];
    if (id < 0) continue;  // a byte with no token (never in a complete byte-level vocabulary)
    int32_t i = int32_t(syms.size());
    syms.push_back({id, i - 1, -1});
    if (i > 0) syms[size_t(i) - 1].next = i;
  }
  auto push_pair = [&](int32_t pos) {
    int32_t nx = syms[size_t(pos)].next;
    if (nx < 0) return;
    int32_t l = syms[size_t(pos)].id, r = syms[size_t(nx)].id;
    if (const MergeTable::Merge* m = merges.find(l, r)) {
      heap.push_back({m->rank, pos, l, r});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (int32_t i = 0; i + 1 < int32_t(syms.size()); ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Cand c = heap.back();
    heap.pop_back();
    Sym& s = syms[size_t(c.pos)];
    if (s.id != c.left || s.next < 0 || syms[size_t(s.next)].id != c.right) continue;  // stale
    const MergeTable::Merge* m = merges.find(c.left, c.right);
    int32_t gone = s.next;
    s.id = m->id;
    s.next = syms[size_t(gone)].next;
    syms[size_t(gone)].id = -1;
    if (s.next >= 0) syms[size_t(s.next)].prev = c.pos;
    if (s.prev >= 0) push_pair(s.prev);
    push_pair(c.pos);
  }
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[size_t(i)].next)
    out.push_back(syms[size_t(i)].id);
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1) {
    int32_t id = byte_id[static_cast<unsigned char>(word[0])];
    if (id >= 0) out.push_back(id);
    return;
  }
  bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  uint64_t h = 0;
  WordCache* cache = nullptr;
  if (cacheable) {
    cache = &WordCache::for_instance(instance);
    h = WordCache::hash(word);
    if (cache->lookup(word, h, out)) return;
  }
  size_t first = out.size();
  bool done = false;
  if (ignore_merges) {  // a word that is a vocabulary entry is taken whole
    auto it = vocab.find(byte_level::encode(word));
    if (it != vocab.end()) {
      out.push_back(it->second);
      done = true;
    }
  }
  if (!done) bpe(word, out);
  if (cacheable) cache->store(word, h, out.data() + first, out.size() - first);
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (add_prefix_space && text[0] != ' ') {
    std::string spaced = " " + std::string(text);
    pre->split(spaced, [&](std::string_view w) { encode_word(w, out); });
    return;
  }
  pre->split(text, [&](std::string_view w) { encode_word(w, out); });
}

// One of HF's AddedVocabulary::find_matches passes: the gaps between matches go on to the next
// pass (or to the pre-tokenizer after the last one).
void Tokenizer::Impl::encode_added_pass(std::string_view text, const AddedTrie& trie,
                                        SpecialText mode, std::vector<int32_t>& out,
                                        bool last_pass) const {
  auto gap = [&](size_t a, size_t b) {
    if (b <= a) return;
    if (last_pass)
      encode_text(text.substr(a, b - a), out);
    else
      encode_added_pass(text.substr(a, b - a), trie_normalized, mode, out, true);
  };
  size_t start_offset = 0, from = 0, start, len;
  int32_t index;
  while (!trie.empty() && trie.find(text, from, start, len, index)) {
    from = start + len;
    const AddedToken& tok = added[size_t(index)];
    if (mode == SpecialText::split_special && tok.special) continue;
    size_t stop = start + len;
    if (tok.single_word) {
      size_t l;
      bool word_before =
          start > 0 && is_word_char(decode_at(text, char_start_before(text, start), l));
      bool word_after = stop < text.size() && is_word_char(decode_at(text, stop, l));
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) {
      size_t s = start, l;
      while (s > start_offset) {
        size_t p = char_start_before(text, s);
        if (!is_white_space(decode_at(text, p, l))) break;
        s = p;
      }
      start = s;
    }
    if (tok.rstrip) {
      size_t l;
      while (stop < text.size() && is_white_space(decode_at(text, stop, l))) stop += l;
      from = stop;
    }
    gap(start_offset, start);
    out.push_back(tok.id);
    start_offset = stop;
  }
  gap(start_offset, text.size());
}

void Tokenizer::Impl::encode(std::string_view text, std::vector<int32_t>& out,
                             SpecialText mode) const {
  if (mode == SpecialText::plain || added.empty())
    encode_text(text, out);
  else
    encode_added_pass(text, trie_raw, mode, out, false);
}

// ---- loading ----

namespace {

SplitBehavior parse_behavior(const std::string& b, const std::string& file) {
  if (b == "Isolated") return SplitBehavior::isolated;
  if (b == "Removed") return SplitBehavior::removed;
  if (b == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (b == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (b == "Contiguous") return SplitBehavior::contiguous;
  SHOAL_FAIL("{}: pre_tokenizer Split behavior '{}' is not supported", file, b);
}

// Flattens the pre_tokenizer into Split rules; ByteLevel must come last.
void parse_pre_tokenizer(const json& j, const std::string& file, std::vector<SplitRule>& rules,
                         bool& byte_level, bool& add_prefix_space) {
  std::string type = type_of(j);
  SHOAL_CHECK(!byte_level, "{}: pre_tokenizer has a '{}' step after ByteLevel (not supported)",
              file, type);
  if (type == "Sequence") {
    const json& list = field(j, "pretokenizers", "pre_tokenizer.", file);
    SHOAL_CHECK(list.is_array(), "{}: pre_tokenizer.pretokenizers is not an array", file);
    for (const json& p : list) parse_pre_tokenizer(p, file, rules, byte_level, add_prefix_space);
  } else if (type == "Split") {
    const json& pattern = field(j, "pattern", "pre_tokenizer Split.", file);
    SplitRule r;
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      r.pattern = pattern["Regex"].get<std::string>();
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      r.pattern = pattern["String"].get<std::string>();
      r.literal = true;
    } else {
      SHOAL_FAIL("{}: pre_tokenizer Split.pattern has neither 'Regex' nor 'String'", file);
    }
    const json& behavior = field(j, "behavior", "pre_tokenizer Split.", file);
    SHOAL_CHECK(behavior.is_string(), "{}: pre_tokenizer Split.behavior is not a string", file);
    r.behavior = parse_behavior(behavior.get<std::string>(), file);
    r.invert = j.value("invert", false);
    rules.push_back(std::move(r));
  } else if (type == "ByteLevel") {
    byte_level = true;
    add_prefix_space = j.value("add_prefix_space", false);
    SHOAL_CHECK(!add_prefix_space || rules.empty(),
                "{}: pre_tokenizer ByteLevel with add_prefix_space after Split rules is not "
                "supported",
                file);
    if (j.value("use_regex", true))
      rules.push_back({gpt2_pattern(), false, SplitBehavior::isolated, false});
  } else {
    SHOAL_FAIL("{}: pre_tokenizer type '{}' is not supported (byte-level BPE: Split and ByteLevel)",
               file, type.empty() ? "(none)" : type);
  }
}

void check_normalizer(const json& j, const std::string& file) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence" && j.contains("normalizers") && j["normalizers"].is_array()) {
    for (const json& n : j["normalizers"]) check_normalizer(n, file);
    return;
  }
  SHOAL_FAIL("{}: normalizer type '{}' is not supported (byte-level BPE with no normalizer only)",
             file, type.empty() ? "(none)" : type);
}

void check_decoder(const json& j, const std::string& file) {
  std::string type = type_of(j);
  if (type == "ByteLevel") return;
  if (type == "Sequence" && j.contains("decoders") && j["decoders"].is_array() &&
      j["decoders"].size() == 1) {
    check_decoder(j["decoders"][0], file);
    return;
  }
  SHOAL_FAIL("{}: decoder type '{}' is not supported (byte-level BPE needs a ByteLevel decoder)",
             file,
             j.is_null()    ? "null"
             : type.empty() ? "(none)"
                            : type);
}

// bos_token etc. in tokenizer_config.json: a string, an AddedToken object, or null.
std::optional<std::string> special_content(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path_in) {
  std::string path = path_in;
  std::error_code ec;
  if (fs::is_directory(path, ec)) path = (fs::path(path) / "tokenizer.json").string();
  SHOAL_CHECK(fs::exists(path, ec), "{}: tokenizer file not found", path);
  json j = parse_json(path);
  SHOAL_CHECK(j.is_object(), "{}: not a tokenizer.json (the top level is not an object)", path);

  auto impl = std::make_shared<Impl>();
  Impl& t = *impl;
  t.path = path;

  // The model.
  const json& model = field(j, "model", "", path);
  std::string model_type = type_of(model);
  if (model_type.empty() && model.is_object() && model.contains("merges")) model_type = "BPE";
  SHOAL_CHECK(model_type == "BPE", "{}: model type '{}' is not supported (byte-level BPE only)",
              path, model_type.empty() ? "(none)" : model_type);
  SHOAL_CHECK(!model.contains("dropout") || model["dropout"].is_null() ||
                  (model["dropout"].is_number() && model["dropout"].get<double>() == 0.0),
              "{}: model.dropout is not supported (encoding is deterministic)", path);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    SHOAL_CHECK(!model.contains(key) || model[key].is_null() ||
                    (model[key].is_string() && model[key].get<std::string>().empty()),
                "{}: model.{} is not supported (byte-level BPE)", path, key);
  }
  SHOAL_CHECK(!model.value("byte_fallback", false),
              "{}: model.byte_fallback is not supported (byte-level BPE needs no fallback)", path);
  t.ignore_merges = model.value("ignore_merges", false);

  const json& vocab = field(model, "vocab", "model.", path);
  SHOAL_CHECK(vocab.is_object(), "{}: model.vocab is not an object", path);
  int32_t max_id = -1;
  t.vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    SHOAL_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                    it.value().get<int64_t>() < (int64_t(1) << 30),
                "{}: model.vocab['{}'] is not a valid id", path, it.key());
    int32_t id = it.value().get<int32_t>();
    t.vocab.emplace(it.key(), id);
    max_id = std::max(max_id, id);
  }

  // Added tokens.
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    const json& list = j["added_tokens"];
    SHOAL_CHECK(list.is_array(), "{}: added_tokens is not an array", path);
    for (size_t i = 0; i < list.size(); ++i) {
      const json& a = list[i];
      std::string where = fmt::format("added_tokens[{}].", i);
      const json& id = field(a, "id", where, path);
      const json& content = field(a, "content", where, path);
      SHOAL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 &&
                      id.get<int64_t>() < (int64_t(1) << 30),
                  "{}: added_tokens[{}].id is not a valid id", path, i);
      SHOAL_CHECK(content.is_string() && !content.get<std::string>().empty(),
                  "{}: added_tokens[{}].content is not a non-empty string", path, i);
      AddedToken tok;
      tok.id = id.get<int32_t>();
      tok.content = content.get<std::string>();
      tok.special = a.value("special", false);
      tok.lstrip = a.value("lstrip", false);
      tok.rstrip = a.value("rstrip", false);
      tok.single_word = a.value("single_word", false);
      tok.normalized = a.value("normalized", !tok.special);
      max_id = std::max(max_id, tok.id);
      t.added_by_content[tok.content] = tok.id;
      t.added.push_back(std::move(tok));
    }
  }
  SHOAL_CHECK(max_id >= 0, "{}: model.vocab is empty", path);

  // Id tables: token strings, flags and the bytes each id decodes to. HF's ByteLevel decoder maps
  // a token's characters back to bytes when all of them are byte-level characters, and otherwise
  // keeps the token's own UTF-8 (added tokens such as <｜User｜>).
  size_t n = size_t(max_id) + 1;
  t.id_token.assign(n, std::string());
  t.flags.assign(n, 0);
  for (auto& [tok, id] : t.vocab) {
    t.id_token[size_t(id)] = tok;
    t.flags[size_t(id)] = Impl::kAssigned;
  }
  for (auto& a : t.added) {
    t.id_token[size_t(a.id)] = a.content;
    t.flags[size_t(a.id)] = Impl::kAssigned | (a.special ? Impl::kSpecial : 0);
  }
  t.bytes_off.assign(n + 1, 0);
  for (size_t id = 0; id < n; ++id) {
    t.bytes_off[id] = uint32_t(t.bytes.size());
    const std::string& s = t.id_token[id];
    if (!byte_level::decode_append(s, t.bytes)) t.bytes += s;
  }
  t.bytes_off[n] = uint32_t(t.bytes.size());

  // Single bytes and merges.
  for (int b = 0; b < 256; ++b) {
    auto it = t.vocab.find(byte_level::encode(std::string(1, char(b))));
    t.byte_id[size_t(b)] = it == t.vocab.end() ? -1 : it->second;
  }
  const json& merges = field(model, "merges", "model.", path);
  SHOAL_CHECK(merges.is_array(), "{}: model.merges is not an array", path);
  t.merges.reserve(merges.size());
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      SHOAL_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() &&
                      s.find(' ', sp + 1) == std::string::npos,
                  "{}: model.merges[{}] '{}' is not two tokens separated by a space", path, rank,
                  s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      SHOAL_FAIL("{}: model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]", path, rank);
    }
    auto ia = t.vocab.find(a), ib = t.vocab.find(b);
    SHOAL_CHECK(ia != t.vocab.end() && ib != t.vocab.end(),
                "{}: model.merges[{}] uses a token that is not in the vocabulary ('{}' '{}')", path,
                rank, a, b);
    merged = a + b;
    auto im = t.vocab.find(merged);
    SHOAL_CHECK(im != t.vocab.end(),
                "{}: model.merges[{}] makes '{}', which is not in the vocabulary", path, rank,
                merged);
    t.merges.insert(ia->second, ib->second, {int32_t(rank), im->second});
  }

  // Normalizer, pre-tokenizer, decoder.
  check_normalizer(j.value("normalizer", json()), path);
  const json& pre = field(j, "pre_tokenizer", "", path);
  SHOAL_CHECK(!pre.is_null(), "{}: pre_tokenizer is null (byte-level BPE needs ByteLevel)", path);
  std::vector<SplitRule> rules;
  bool byte_level = false;
  parse_pre_tokenizer(pre, path, rules, byte_level, t.add_prefix_space);
  SHOAL_CHECK(byte_level, "{}: pre_tokenizer has no ByteLevel step (byte-level BPE only)", path);
  t.pre.emplace(std::move(rules), path);
  check_decoder(j.value("decoder", json()), path);

  for (size_t i = 0; i < t.added.size(); ++i)
    (t.added[i].normalized ? t.trie_normalized : t.trie_raw).add(t.added[i].content, int32_t(i));

  // tokenizer_config.json beside it: BOS/EOS/PAD and the chat template.
  fs::path cfg_path = fs::path(path).parent_path() / "tokenizer_config.json";
  if (fs::exists(cfg_path, ec)) {
    json cfg = parse_json(cfg_path.string());
    SHOAL_CHECK(cfg.is_object(), "{}: the top level is not an object", cfg_path.string());
    auto resolve = [&](const char* key) -> std::optional<int32_t> {
      auto content = special_content(cfg, key);
      if (!content) return std::nullopt;
      auto it = t.added_by_content.find(*content);
      if (it != t.added_by_content.end()) return it->second;
      auto iv = t.vocab.find(*content);
      SHOAL_CHECK(iv != t.vocab.end(), "{}: {} '{}' is not a token of {}", cfg_path.string(), key,
                  *content, path);
      return iv->second;
    };
    t.bos = resolve("bos_token");
    t.eos = resolve("eos_token");
    t.pad = resolve("pad_token");
    if (cfg.contains("chat_template") && cfg["chat_template"].is_string())
      t.chat_template = cfg["chat_template"].get<std::string>();
  }
  return Tokenizer(std::move(impl));
}

// ---- queries ----

std::vector<int32_t> Tokenizer::encode(std::string_view text, SpecialText mode) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode(text, out, mode);
  return out;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              SpecialText mode) const {
  impl_->encode(text, out, mode);
}

std::string Tokenizer::decode_bytes(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids)
    if (impl_->keep(id, skip_special)) out += impl_->token_bytes(id);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string raw = decode_bytes(ids, skip_special);
  if (utf8::is_valid(raw)) return raw;
  std::string out;
  out.reserve(raw.size() + 8);
  utf8::append_lossy(raw, out);
  return out;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  return impl_->keep(id, false) ? impl_->token_bytes(id) : std::string_view();
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  if (auto it = impl_->added_by_content.find(key); it != impl_->added_by_content.end())
    return it->second;
  if (auto it = impl_->vocab.find(key); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  SHOAL_CHECK(has_id(id), "{}: token id {} is not assigned (vocabulary size {})", impl_->path, id,
              vocab_size());
  return impl_->id_token[size_t(id)];
}

bool Tokenizer::has_id(int32_t id) const {
  return impl_->keep(id, false);
}

int32_t Tokenizer::vocab_size() const {
  return int32_t(impl_->flags.size());
}

bool Tokenizer::is_special(int32_t id) const {
  return has_id(id) && (impl_->flags[size_t(id)] & Impl::kSpecial);
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}
std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->bos;
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->eos;
}
std::optional<int32_t> Tokenizer::pad_id() const {
  return impl_->pad;
}
const std::string& Tokenizer::chat_template() const {
  return impl_->chat_template;
}
const std::string& Tokenizer::path() const {
  return impl_->path;
}

// ---- streaming decode ----

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : impl_(tokenizer.impl_.get()), skip_special_(skip_special) {}

void StreamDecoder::push(int32_t id, std::string& out) {
  if (!impl_->keep(id, skip_special_)) return;
  std::string_view b = impl_->token_bytes(id);
  if (pending_.empty()) {
    size_t used = utf8::append_lossy_complete(b, out);
    pending_.assign(b.substr(used));
    return;
  }
  pending_ += b;
  size_t used = utf8::append_lossy_complete(pending_, out);
  pending_.erase(0, used);
}

std::string StreamDecoder::push(int32_t id) {
  std::string out;
  push(id, out);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  utf8::append_lossy(pending_, out);
  pending_.clear();
  return out;
}

void StreamDecoder::reset() {
  pending_.clear();
}

}  // namespace shoal
