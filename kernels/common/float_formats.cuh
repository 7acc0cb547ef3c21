// Narrow float formats on the device (bf16, f16, FP8 e4m3), each conversion a step-by-step twin of
// engine/dtype.cpp's scalar conversion so that device and host round bit for bit (RNE, e4m3
// saturating at 448). Device code only; not the hardware cvt instructions (whose NaN and
// saturation rules differ in corner cases).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace shoal::kernels {
namespace {

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
  return __uint_as_float(uint32_t(h) << 16);
}
// Round to nearest even, NaN kept quiet (engine/dtype.h f32_to_bf16).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

__device__ float f16_bits_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h >> 15) << 31;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) {
    float v = ldexpf(float(man), -24);
    return (h >> 15) ? -v : v;
  }
  if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
}

// engine/dtype.cpp encode_small_float, on the device.
__device__ uint32_t encode_small_float(float a, int man_bits, int bias, float max_finite,
                                       uint32_t max_code) {
  if (a >= max_finite) return max_code;
  if (a == 0.0f) return 0;
  int e;
  frexpf(a, &e);
  int exp = e - 1 + bias;
  int q_exp = (exp >= 1 ? e - 1 : 1 - bias) - man_bits;
  float scaled = ldexpf(a, -q_exp);
  uint32_t units = uint32_t(rintf(scaled));
  if (exp < 1) return units;
  uint32_t one = 1u << man_bits;
  if (units >= 2 * one) {
    units >>= 1;
    exp += 1;
  }
  uint32_t code = (uint32_t(exp) << man_bits) | (units - one);
  return code > max_code ? max_code : code;
}

__device__ uint16_t f32_to_f16_bits(float f) {
  uint32_t sign = (__float_as_uint(f) >> 16) & 0x8000u;
  if (isnan(f)) return uint16_t(sign | 0x7e00);
  float a = fabsf(f);
  if (a >= 65520.0f) return uint16_t(sign | 0x7c00);
  return uint16_t(sign | encode_small_float(a, 10, 15, 65520.0f, 0x7bff));
}

__device__ float f8e4m3_bits_to_f32(uint8_t v) {
  uint32_t exp = (v >> 3) & 0xf, man = v & 7;
  if (exp == 15 && man == 7) return __int_as_float(0x7fc00000);
  float mag = exp == 0 ? ldexpf(float(man), -9) : ldexpf(float(8 + man), int(exp) - 10);
  return (v & 0x80) ? -mag : mag;
}

__device__ uint8_t f32_to_f8e4m3_bits(float f) {
  uint8_t sign = (__float_as_uint(f) >> 24) & 0x80;
  if (isnan(f)) return 0x7f;
  return uint8_t(sign | encode_small_float(fabsf(f), 3, 7, 448.0f, 0x7e));
}

}  // namespace
}  // namespace shoal::kernels
