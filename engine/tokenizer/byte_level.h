// GPT-2's byte-level alphabet: every byte is shown as one printable code point (' ' -> 'Ġ',
// '\n' -> 'Ċ', printable Latin-1 bytes as themselves), so BPE vocabularies are strings. Not the
// pre-tokenizer (pretokenizer.h) and not the BPE model (tokenizer.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shoal::byte_level {

// The code point that stands for byte b.
char32_t codepoint_of(uint8_t b);

// Appends the UTF-8 of the byte-level form of `bytes` ("Ġhello" for " hello").
void encode_append(std::string_view bytes, std::string& out);
std::string encode(std::string_view bytes);

// The inverse: appends the bytes a byte-level string stands for. Returns false (appending nothing)
// when some character of `token` is not in the byte-level alphabet.
bool decode_append(std::string_view token, std::string& out);

}  // namespace shoal::byte_level
