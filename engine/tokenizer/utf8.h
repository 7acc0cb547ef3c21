// UTF-8 scanning for the tokenizer: validity per the Unicode standard (Table 3-7: no overlongs, no
// surrogates, nothing past U+10FFFF) and the lossy repair Rust's String::from_utf8_lossy does (one
// U+FFFD per maximal invalid subpart). Not a general Unicode library (no classes, no case).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace shoal::utf8 {

enum class Scan { valid, invalid, incomplete };

// Looks at the sequence starting at s[0] (n >= 1 bytes available). Sets `len` to the length of the
// valid sequence (valid), of the maximal invalid subpart (invalid, >= 1), or of the valid prefix
// cut short by the end of the buffer (incomplete).
Scan scan(const unsigned char* s, size_t n, size_t& len);

// Length of the longest prefix of `s` that is valid UTF-8.
size_t valid_prefix(std::string_view s);
inline bool is_valid(std::string_view s) {
  return valid_prefix(s) == s.size();
}

// Appends `bytes` to out with each maximal invalid subpart (and an incomplete sequence at the end)
// replaced by U+FFFD.
void append_lossy(std::string_view bytes, std::string& out);

// Streaming form: appends the complete part of `bytes` (repaired as above) and returns how many
// bytes it consumed; the rest (at most 3 bytes: an incomplete but so far valid sequence) is left
// for the caller to prepend to the next chunk.
size_t append_lossy_complete(std::string_view bytes, std::string& out);

inline constexpr std::string_view replacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace shoal::utf8
