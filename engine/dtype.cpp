// Scalar dtype conversions. The FP8 and f16 conversions are written out from the formats'
// definitions (sign, exponent bias, subnormals) rather than relying on compiler extensions.
#include "engine/dtype.h"

#include <cmath>

#include "base/error.h"

namespace shoal {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::bf16:
    case DType::f16:
      return 2;
    case DType::f8e4m3:
    case DType::f8e5m2:
    case DType::u8:
    case DType::boolean:
      return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::f8e4m3:
      return "f8e4m3";
    case DType::f8e5m2:
      return "f8e5m2";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
    case DType::boolean:
      return "bool";
  }
  return "?";
}

std::string_view safetensors_name(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::bf16:
      return "BF16";
    case DType::f16:
      return "F16";
    case DType::f8e4m3:
      return "F8_E4M3";
    case DType::f8e5m2:
      return "F8_E5M2";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::u8:
      return "U8";
    case DType::boolean:
      return "BOOL";
  }
  return "?";
}

bool dtype_from_safetensors(std::string_view n, DType* out) {
  static const std::pair<std::string_view, DType> table[] = {
      {"F32", DType::f32},     {"F64", DType::f64},        {"BF16", DType::bf16},
      {"F16", DType::f16},     {"F8_E4M3", DType::f8e4m3}, {"F8_E5M2", DType::f8e5m2},
      {"I32", DType::i32},     {"I64", DType::i64},        {"U8", DType::u8},
      {"BOOL", DType::boolean}};
  for (auto& [name, t] : table)
    if (name == n) {
      *out = t;
      return true;
    }
  return false;
}

bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16 ||
         t == DType::f8e4m3 || t == DType::f8e5m2;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h >> 15) << 31;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) {
    float v = std::ldexp(float(man), -24);
    return (h >> 15) ? -v : v;
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (man << 13));
  return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

namespace {
// Rounds |f| (finite, non-negative) to a float format with `man_bits` mantissa bits, exponent bias
// `bias` and largest finite value `max_finite`, returning the encoded magnitude bits.
// Values beyond max_finite saturate (callers handle inf/NaN before).
uint32_t encode_small_float(float a, int man_bits, int bias, float max_finite, uint32_t max_code) {
  if (a >= max_finite) return max_code;
  if (a == 0.0f) return 0;
  int e;
  std::frexp(a, &e);       // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1 + bias;  // biased exponent of a normal number
  int min_exp = 1;
  // Quantum (value of the last mantissa bit) for this binade, or the subnormal quantum.
  int q_exp = (exp >= min_exp ? e - 1 : 1 - bias) - man_bits;
  float scaled = std::ldexp(a, -q_exp);  // integer-valued at representable points
  float r = std::nearbyint(scaled);      // round to nearest even (default FP environment)
  uint32_t units = uint32_t(r);
  // Re-encode: units counts quanta of 2^q_exp.
  if (exp < min_exp) {  // subnormal range (units may round up into the first normal binade)
    return units;       // exponent field 0 + mantissa, or 1<<man_bits == smallest normal: same bits
  }
  uint32_t one = 1u << man_bits;
  if (units >= 2 * one) {  // rounded up to the next binade
    units >>= 1;
    exp += 1;
  }
  uint32_t code = (uint32_t(exp) << man_bits) | (units - one);
  return code > max_code ? max_code : code;
}
}  // namespace

uint16_t f32_to_f16(float f) {
  uint32_t sign = (f32_bits(f) >> 16) & 0x8000u;
  if (std::isnan(f)) return uint16_t(sign | 0x7e00);
  float a = std::fabs(f);
  if (a >= 65520.0f) return uint16_t(sign | 0x7c00);  // rounds to inf
  return uint16_t(sign | encode_small_float(a, 10, 15, 65520.0f, 0x7bff));
}

float f8e4m3_to_f32(uint8_t v) {
  uint32_t exp = (v >> 3) & 0xf, man = v & 7;
  if (exp == 15 && man == 7) return NAN;
  float mag = exp == 0 ? std::ldexp(float(man), -9) : std::ldexp(float(8 + man), int(exp) - 10);
  return (v & 0x80) ? -mag : mag;
}

uint8_t f32_to_f8e4m3(float f) {
  uint8_t sign = (f32_bits(f) >> 24) & 0x80;
  if (std::isnan(f)) return 0x7f;
  return uint8_t(sign | encode_small_float(std::fabs(f), 3, 7, 448.0f, 0x7e));
}

float f8e5m2_to_f32(uint8_t v) {
  return f16_to_f32(uint16_t(v) << 8);
}

uint8_t f32_to_f8e5m2(float f) {
  uint8_t sign = (f32_bits(f) >> 24) & 0x80;
  if (std::isnan(f)) return 0x7f;
  return uint8_t(sign | encode_small_float(std::fabs(f), 2, 15, 57344.0f, 0x7b));
}

namespace {
double load(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::f32:
      return static_cast<const float*>(p)[i];
    case DType::f64:
      return static_cast<const double*>(p)[i];
    case DType::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f8e4m3:
      return f8e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::f8e5m2:
      return f8e5m2_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::i32:
      return static_cast<const int32_t*>(p)[i];
    case DType::i64:
      return double(static_cast<const int64_t*>(p)[i]);
    case DType::u8:
    case DType::boolean:
      return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}
void store(void* p, DType t, size_t i, double v) {
  switch (t) {
    case DType::f32:
      static_cast<float*>(p)[i] = float(v);
      break;
    case DType::f64:
      static_cast<double*>(p)[i] = v;
      break;
    case DType::bf16:
      static_cast<uint16_t*>(p)[i] = f32_to_bf16(float(v));
      break;
    case DType::f16:
      static_cast<uint16_t*>(p)[i] = f32_to_f16(float(v));
      break;
    case DType::f8e4m3:
      static_cast<uint8_t*>(p)[i] = f32_to_f8e4m3(float(v));
      break;
    case DType::f8e5m2:
      static_cast<uint8_t*>(p)[i] = f32_to_f8e5m2(float(v));
      break;
    case DType::i32:
      static_cast<int32_t*>(p)[i] = int32_t(v);
      break;
    case DType::i64:
      static_cast<int64_t*>(p)[i] = int64_t(v);
      break;
    case DType::u8:
      static_cast<uint8_t*>(p)[i] = uint8_t(v);
      break;
    case DType::boolean:
      static_cast<uint8_t*>(p)[i] = v != 0;
      break;
  }
}
}  // namespace

void convert(const void* src, DType st, void* dst, DType dt, size_t n) {
  if (st == dt) {
    std::memcpy(dst, src, n * dtype_size(st));
    return;
  }
  if (st == DType::bf16 && dt == DType::f32) {  // the hot path when loading checkpoints
    auto* s = static_cast<const uint16_t*>(src);
    auto* d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
    return;
  }
  if (st == DType::i64 && dt == DType::i32) {
    auto* s = static_cast<const int64_t*>(src);
    auto* d = static_cast<int32_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = int32_t(s[i]);
    return;
  }
  for (size_t i = 0; i < n; ++i) store(dst, dt, i, load(src, st, i));
}

}  // namespace shoal
