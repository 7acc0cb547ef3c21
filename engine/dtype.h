// Element types the engine stores and converts between, with scalar conversions to and from f32.
// Compute on the CPU backend is f32 (f64 where a reference needs it); the narrow types are storage
// formats (checkpoints, KV cache, FP8 GEMM operands).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace shoal {

enum class DType : uint8_t { f32, f64, bf16, f16, f8e4m3, f8e5m2, i32, i64, u8, boolean };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);        // "f32", "bf16", ...
std::string_view safetensors_name(DType t);  // "F32", "BF16", "F8_E4M3", ...
// Parses a safetensors dtype name; returns false for names shoal does not support.
bool dtype_from_safetensors(std::string_view name, DType* out);
bool is_floating(DType t);

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bf16: the top 16 bits of an f32; rounding to nearest even, NaN kept quiet.
inline float bf16_to_f32(uint16_t h) {
  return f32_from_bits(uint32_t(h) << 16);
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// OCP FP8. e4m3 ("fn" variant: no infinities, max 448, 0x7f/0xff are NaN); e5m2 is IEEE-like
// (max 57344, has inf). f32 -> fp8 rounds to nearest even and saturates to the max finite value,
// as DeepSeek's quantization (which clamps before casting) expects.
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e5m2(float f);

// Converts n elements between any two floating/integer dtypes through double (exact for all
// supported pairs except narrowing, which rounds as above).
void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

}  // namespace shoal
