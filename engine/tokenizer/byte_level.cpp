// GPT-2's bytes_to_unicode table (see byte_level.h).
#include "engine/tokenizer/byte_level.h"

#include <array>

namespace shoal::byte_level {
namespace {

struct Tables {
  std::array<char32_t, 256> cp{};
  std::array<std::string, 256> utf8;
  std::array<int16_t, 324> byte_of{};  // code points used are all < 324
  Tables() {
    byte_of.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      cp[b] = printable ? char32_t(b) : char32_t(next++);
      char32_t c = cp[b];
      if (c < 0x80) {
        utf8[b] = std::string(1, char(c));
      } else {
        utf8[b] = {char(0xC0 | (c >> 6)), char(0x80 | (c & 0x3F))};
      }
      byte_of[c] = int16_t(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t codepoint_of(uint8_t b) {
  return tables().cp[b];
}

void encode_append(std::string_view bytes, std::string& out) {
  const Tables& t = tables();
  for (unsigned char b : bytes) out += t.utf8[b];
}

std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  encode_append(bytes, out);
  return out;
}

bool decode_append(std::string_view token, std::string& out) {
  const Tables& t = tables();
  size_t start = out.size();
  auto* s = reinterpret_cast<const unsigned char*>(token.data());
  for (size_t i = 0, n = token.size(); i < n;) {
    char32_t c;
    if (s[i] < 0x80) {
      c = s[i];
      i += 1;
    } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n) {
      c = char32_t((s[i] & 0x1F) << 6 | (s[i + 1] & 0x3F));
      i += 2;
    } else {
      c = 0x110000;  // three- and four-byte characters are never byte-level
      i = n;
    }
    int b = c < t.byte_of.size() ? t.byte_of[c] : -1;
    if (b < 0) {
      out.resize(start);
      return false;
    }
    out += char(b);
  }
  return true;
}

}  // namespace shoal::byte_level
