// UTF-8 validity and lossy repair (see utf8.h).
#include "engine/tokenizer/utf8.h"

#include <cstring>

namespace shoal::utf8 {

Scan scan(const unsigned char* s, size_t n, size_t& len) {
  unsigned char c = s[0];
  if (c < 0x80) {
    len = 1;
    return Scan::valid;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    len = 1;
    return Scan::invalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= n) {
      len = i;
      return Scan::incomplete;
    }
    unsigned char b = s[i];
    bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      len = i;
      return Scan::invalid;
    }
  }
  len = need;
  return Scan::valid;
}

size_t valid_prefix(std::string_view text) {
  auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    // ASCII runs eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    size_t len;
    if (scan(s + i, n - i, len) != Scan::valid) return i;
    i += len;
  }
  return n;
}

size_t append_lossy_complete(std::string_view bytes, std::string& out) {
  auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0, run = 0;  // [run, i) is valid and not yet appended
  while (i < n) {
    size_t len;
    Scan r = scan(s + i, n - i, len);
    if (r == Scan::valid) {
      i += len;
      continue;
    }
    out.append(bytes.data() + run, i - run);
    if (r == Scan::incomplete) return i;
    out.append(replacement);
    i += len;
    run = i;
  }
  out.append(bytes.data() + run, n - run);
  return n;
}

void append_lossy(std::string_view bytes, std::string& out) {
  size_t used = append_lossy_complete(bytes, out);
  if (used < bytes.size()) out.append(replacement);  // an incomplete sequence at the end
}

}  // namespace shoal::utf8
