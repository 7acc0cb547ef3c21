// A small deterministic random generator for task synthesis (xoshiro256** seeded by splitmix64)
// with its own integer and shuffle routines, so a seed gives the same task on every platform and
// standard library. Not for cryptography, not for statistics beyond "well mixed".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/error.h"

namespace shoal::tasks {

inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// FNV-1a, 64 bits: stable across runs and machines (std::hash is not).
inline uint64_t fnv1a(std::string_view s, uint64_t h = 0xcbf29ce484222325ULL) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t x = seed;
    for (auto& w : s_) w = splitmix64(x);
  }
  // A generator for (tag, seed, difficulty): families with the same seed still differ.
  Rng(std::string_view tag, uint64_t seed, int difficulty)
      : Rng(fnv1a(tag) ^ (seed * 0x9e3779b97f4a7c15ULL) ^
            (static_cast<uint64_t>(difficulty) << 56)) {}

  uint64_t next() {
    uint64_t result = rotl(s_[1] * 5, 7) * 9;
    uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [lo, hi], both included; unbiased (rejection).
  int64_t uniform(int64_t lo, int64_t hi) {
    SHOAL_CHECK(lo <= hi, "Rng::uniform: empty range [{}, {}]", lo, hi);
    uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;
    if (span == 0) return static_cast<int64_t>(next());  // the whole 64-bit range
    uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t r;
    do r = next();
    while (r >= limit);
    return static_cast<int64_t>(static_cast<uint64_t>(lo) + r % span);
  }
  int index(size_t n) { return static_cast<int>(uniform(0, static_cast<int64_t>(n) - 1)); }
  double real() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  bool chance(double p) { return real() < p; }
  template <class T>
  const T& pick(const std::vector<T>& v) {
    SHOAL_CHECK(!v.empty(), "Rng::pick from an empty list");
    return v[static_cast<size_t>(index(v.size()))];
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i)
      std::swap(v[i - 1], v[static_cast<size_t>(uniform(0, static_cast<int64_t>(i) - 1))]);
  }
  // k distinct indices of [0, n), in random order.
  std::vector<int> sample(int n, int k) {
    SHOAL_CHECK(k <= n, "Rng::sample: {} of {}", k, n);
    std::vector<int> all(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    shuffle(all);
    all.resize(static_cast<size_t>(k));
    return all;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace shoal::tasks

namespace shoal::tasks {

// A stable 128-bit content hash as 32 hex digits (two differently seeded FNV-1a passes, mixed):
// for deduplication, not for security.
inline std::string content_hash(std::string_view s) {
  uint64_t a = fnv1a(s), b = fnv1a(s, 0x84222325cbf29ce4ULL ^ s.size());
  uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ULL);
  uint64_t h1 = splitmix64(x), h2 = splitmix64(b);
  static const char* hex = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[static_cast<size_t>(i)] = hex[(h1 >> (60 - 4 * i)) & 15];
    out[static_cast<size_t>(16 + i)] = hex[(h2 >> (60 - 4 * i)) & 15];
  }
  return out;
}

}  // namespace shoal::tasks
