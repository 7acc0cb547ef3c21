// HF Split pre-tokenizer rules on PCRE2 (see pretokenizer.h). The split semantics follow
// tokenizers' NormalizedString::split: a pattern's find_matches gives alternating gap/match spans,
// the behaviour merges or drops them, empty pieces are dropped, and each rule sees one piece of the
// previous rule's output as its whole subject (a lookahead never sees past the piece).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/tokenizer/pretokenizer.h"

#include <pcre2.h>

#include <algorithm>

#include "base/error.h"
#include "engine/tokenizer/utf8.h"

namespace shoal {

std::vector<SplitRule> deepseek_v3_split_rules() {
  return {
      {R"(\p{N}{1,3})", false, SplitBehavior::isolated, false},
      {R"([\x{4e00}-\x{9fa5}\x{3040}-\x{309f}\x{30a0}-\x{30ff}]+)", false, SplitBehavior::isolated,
       false},
      {"[!\"#$%&'()*+,\\-./"
       ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]"
       "+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
       false, SplitBehavior::isolated, false},
  };
}

std::string gpt2_pattern() {
  return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
}

namespace {

struct Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
};

// One match-data block per thread, shared by every rule (only the whole-match span is read).
pcre2_match_data* thread_match_data() {
  struct Holder {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(md); }
  };
  thread_local Holder h;
  return h.md;
}

size_t char_len(const char* s, size_t n) {
  size_t len = 1;
  auto c = static_cast<unsigned char>(s[0]);
  if (c >= 0xF0)
    len = 4;
  else if (c >= 0xE0)
    len = 3;
  else if (c >= 0xC0)
    len = 2;
  return len < n ? len : n;
}

// Unicode White_Space, what \s means in Oniguruma (HF tokenizers' regex engine) and in JS. PCRE2's
// \s with UCP also matches U+180E (not White_Space since Unicode 6.3), which would split "\u180E\n"
// differently, so \s and \S are rewritten to this class before compiling.
constexpr std::string_view kWhiteSpace =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

std::string with_unicode_white_space(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpace) + "]";
      } else {  // any other escape, and \S inside a class (no rewrite: kept as PCRE2 reads it)
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

struct PreTokenizer::Impl {
  std::vector<SplitRule> rules;
  std::vector<Compiled> compiled;

  ~Impl() {
    for (auto& c : compiled) pcre2_code_free(c.code);
  }

  // The next match of rule r in s[from, n): [ms, me). False when there is none.
  bool find(const Compiled& r, const char* s, size_t n, size_t from, size_t& ms, size_t& me) const {
    pcre2_match_data* md = thread_match_data();
    auto subject = reinterpret_cast<PCRE2_SPTR>(s);
    int rc = r.jit ? pcre2_jit_match(r.code, subject, n, from, 0, md, nullptr)
                   : pcre2_match(r.code, subject, n, from, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) return false;  // PCRE2_ERROR_NOMATCH, or a limit: treated as no further match
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    ms = ov[0];
    me = ov[1];
    return true;
  }

  struct Span {
    size_t start, end;
    bool is_match;
  };

  // HF's find_matches: calls fn(start, end, is_match) for gap and match spans covering s[0, n),
  // in order. Empty matches split too; an empty match right where the previous match ended is
  // skipped and the search moves one character on (as onig's find_iter does).
  template <class Fn>
  void for_each_span(const Compiled& r, const char* s, size_t n, Fn&& fn) const {
    size_t prev = 0, from = 0, last_end = 0, ms, me;
    bool have_last = false;
    while (from <= n && find(r, s, n, from, ms, me)) {
      if (ms == me && have_last && me == last_end) {
        if (from >= n) break;
        from += char_len(s + from, n - from);
        continue;
      }
      if (prev != ms) fn(prev, ms, false);
      fn(ms, me, true);
      prev = last_end = from = me;
      have_last = true;
    }
    if (prev != n) fn(prev, n, false);
  }

  void run(size_t level, const char* s, size_t n, Sink sink, void* ctx) const {
    if (n == 0) return;
    if (level == rules.size()) {
      sink(ctx, std::string_view(s, n));
      return;
    }
    const SplitRule& rule = rules[level];
    const Compiled& r = compiled[level];
    if (rule.behavior == SplitBehavior::isolated) {
      // The hot path (every DeepSeek-V3 rule): gaps and matches are all pieces, so they are passed
      // on as they are found (invert changes nothing here).
      for_each_span(r, s, n, [&](size_t a, size_t b, bool) {
        if (b > a) run(level + 1, s + a, b - a, sink, ctx);
      });
      return;
    }
    std::vector<Span> spans;
    for_each_span(r, s, n, [&](size_t a, size_t b, bool m) { spans.push_back({a, b, m}); });
    if (rule.invert)
      for (auto& sp : spans) sp.is_match = !sp.is_match;
    if (rule.behavior == SplitBehavior::removed) {
      for (auto& sp : spans)
        if (!sp.is_match) run(level + 1, s + sp.start, sp.end - sp.start, sink, ctx);
      return;
    }
    std::vector<Span> pieces;
    switch (rule.behavior) {
      case SplitBehavior::isolated:
      case SplitBehavior::removed:
        break;
      case SplitBehavior::contiguous:
        for (auto& sp : spans) {
          if (sp.is_match && !pieces.empty() && pieces.back().is_match)
            pieces.back().end = sp.end;
          else
            pieces.push_back(sp);
        }
        for (auto& p : pieces) p.is_match = false;
        break;
      case SplitBehavior::merged_with_previous: {
        bool previous_match = false;
        for (auto& sp : spans) {
          if (sp.is_match && !previous_match && !pieces.empty())
            pieces.back().end = sp.end;
          else
            pieces.push_back({sp.start, sp.end, false});
          previous_match = sp.is_match;
        }
        break;
      }
      case SplitBehavior::merged_with_next: {
        bool previous_match = false;
        for (size_t i = spans.size(); i-- > 0;) {
          const Span& sp = spans[i];
          if (sp.is_match && !previous_match && !pieces.empty())
            pieces.back().start = sp.start;
          else
            pieces.push_back({sp.start, sp.end, false});
          previous_match = sp.is_match;
        }
        std::reverse(pieces.begin(), pieces.end());
        break;
      }
    }
    for (auto& p : pieces)
      if (p.end > p.start) run(level + 1, s + p.start, p.end - p.start, sink, ctx);
  }
};

PreTokenizer::PreTokenizer(std::vector<SplitRule> rules, const std::string& source)
    : impl_(std::make_unique<Impl>()) {
  impl_->rules = std::move(rules);
  std::string where = source.empty() ? "pre-tokenizer" : source;
  for (auto& rule : impl_->rules) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    uint32_t options = PCRE2_UTF | (rule.literal ? PCRE2_LITERAL : PCRE2_UCP);
    std::string pattern = rule.literal ? rule.pattern : with_unicode_white_space(rule.pattern);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &err, &offset, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      SHOAL_FAIL("{}: split pattern '{}' does not compile at offset {}: {}", where, rule.pattern,
                 offset, reinterpret_cast<const char*>(msg));
    }
    Compiled c;
    c.code = code;
    c.jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    impl_->compiled.push_back(c);
  }
}

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

const std::vector<SplitRule>& PreTokenizer::rules() const {
  return impl_->rules;
}

void PreTokenizer::split_impl(std::string_view text, Sink sink, void* ctx) const {
  // Invalid UTF-8: every byte that is not part of a valid sequence is a piece of its own; PCRE2
  // only ever sees valid UTF-8 (its matchers then run without re-checking the subject).
  while (!text.empty()) {
    size_t valid = utf8::valid_prefix(text);
    impl_->run(0, text.data(), valid, sink, ctx);
    if (valid == text.size()) break;
    sink(ctx, text.substr(valid, 1));
    text.remove_prefix(valid + 1);
  }
}

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string_view> out;
  split(text, [&](std::string_view piece) { out.push_back(piece); });
  return out;
}

}  // namespace shoal
