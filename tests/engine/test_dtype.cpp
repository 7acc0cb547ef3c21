// Tests for engine/dtype: exhaustive round trips over every code of the narrow formats, known
// values from the format definitions, round-to-nearest-even and FP8 saturation.
#include "engine/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace shoal {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::f8e4m3), 1u);
  EXPECT_EQ(dtype_size(DType::i64), 8u);
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::f8e4m3, DType::f8e5m2,
                  DType::i32, DType::i64, DType::u8, DType::boolean}) {
    DType back;
    ASSERT_TRUE(dtype_from_safetensors(safetensors_name(t), &back)) << dtype_name(t);
    EXPECT_EQ(back, t);
  }
  DType unused;
  EXPECT_FALSE(dtype_from_safetensors("F8_E4M3FNUZ", &unused));
  EXPECT_FALSE(dtype_from_safetensors("f32", &unused));  // names are case-sensitive
}

TEST(DTypeTest, Bf16RoundTripsEveryCode) {
  for (uint32_t c = 0; c < 65536; ++c) {
    float f = bf16_to_f32(uint16_t(c));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f)))) << c;
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f), c) << "code " << c << " value " << f;
  }
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even code (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above the halfway point rounds up.
  EXPECT_EQ(f32_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_bf16(kInf), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  // The largest f32 rounds past the largest bf16 to infinity (IEEE behaviour, no saturation).
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
}

TEST(DTypeTest, F16RoundTripsEveryCode) {
  int nan_codes = 0;
  for (uint32_t c = 0; c < 65536; ++c) {
    float f = f16_to_f32(uint16_t(c));
    if (std::isnan(f)) {
      ++nan_codes;
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), c) << "code " << c << " value " << f;
  }
  EXPECT_EQ(nan_codes, 2 * 1023);  // exponent 31 with a non-zero mantissa, both signs
}

TEST(DTypeTest, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(f16_to_f32(0x7c00), kInf);
  EXPECT_EQ(f16_to_f32(0xfc00), -kInf);
  // Rounding at the top: 65519 rounds down to 65504, 65520 (halfway to 2^16) to infinity.
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e9f), 0xfc00);
  // Ties to even: 1 + 2^-11 is halfway between 1 (even) and 1 + 2^-10.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Subnormals: half the smallest subnormal ties to 0; 1.5x of it rounds to 2 (even).
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(1.5f * std::ldexp(1.0f, -24)), 0x0002);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(DTypeTest, F8E4M3RoundTripsEveryCode) {
  for (uint32_t c = 0; c < 256; ++c) {
    float f = f8e4m3_to_f32(uint8_t(c));
    if ((c & 0x7f) == 0x7f) {  // the only NaN codes in e4m3fn
      EXPECT_TRUE(std::isnan(f)) << c;
      EXPECT_EQ(f32_to_f8e4m3(f) & 0x7f, 0x7f);
      continue;
    }
    ASSERT_TRUE(std::isfinite(f)) << c;  // no infinities in the fn variant
    ASSERT_EQ(f32_to_f8e4m3(f), c) << "code " << c << " value " << f;
  }
}

TEST(DTypeTest, F8E4M3KnownValuesAndSaturation) {
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(f8e4m3_to_f32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(f8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  // Saturation: everything beyond 448, infinities included, becomes +-448.
  EXPECT_EQ(f32_to_f8e4m3(464.0f), 0x7e);  // halfway to 480 would round up; saturates instead
  EXPECT_EQ(f32_to_f8e4m3(1e6f), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(kInf), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(-kInf), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(std::nanf("")), 0x7f);
  // Ties to even: 1.0625 between 1.0 (0x38, even) and 1.125; 1.1875 between 1.125 and 1.25 (even).
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3a);
  EXPECT_EQ(f32_to_f8e4m3(std::nextafter(1.0625f, 2.0f)), 0x39);
  // Subnormal ties: 2^-10 halfway between 0 and 2^-9 goes to 0; 3*2^-10 to 2*2^-9 (even).
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(f32_to_f8e4m3(3 * std::ldexp(1.0f, -10)), 0x02);
  // Largest subnormal + half a step rounds into the smallest normal.
  EXPECT_EQ(f32_to_f8e4m3(7.5f * std::ldexp(1.0f, -9)), 0x08);
  EXPECT_EQ(f32_to_f8e4m3(-0.0f), 0x80);
}

TEST(DTypeTest, F8E5M2RoundTripsEveryCode) {
  for (uint32_t c = 0; c < 256; ++c) {
    float f = f8e5m2_to_f32(uint8_t(c));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f8e5m2_to_f32(f32_to_f8e5m2(f))));
      continue;
    }
    if (std::isinf(f)) continue;  // infinities saturate (checked below)
    ASSERT_EQ(f32_to_f8e5m2(f), c) << "code " << c << " value " << f;
  }
}

TEST(DTypeTest, F8E5M2KnownValuesAndSaturation) {
  EXPECT_EQ(f8e5m2_to_f32(0x7b), 57344.0f);
  EXPECT_EQ(f8e5m2_to_f32(0x3c), 1.0f);
  EXPECT_EQ(f8e5m2_to_f32(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(f8e5m2_to_f32(0x04), std::ldexp(1.0f, -14));
  EXPECT_EQ(f8e5m2_to_f32(0x7c), kInf);
  EXPECT_EQ(f32_to_f8e5m2(1e9f), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(kInf), 0x7b);
  EXPECT_EQ(f32_to_f8e5m2(-kInf), 0xfb);
  EXPECT_EQ(f32_to_f8e5m2(1.125f), 0x3c);  // halfway between 1.0 (even) and 1.25
  EXPECT_EQ(f32_to_f8e5m2(1.375f), 0x3e);  // halfway between 1.25 and 1.5 (even)
}

// For random inputs, the encoded value is a nearest representable value (ties: the even code).
template <typename Enc, typename Dec>
void check_nearest(Enc enc, Dec dec, int codes, float max_finite, uint32_t seed) {
  std::vector<float> finite;
  for (int c = 0; c < codes; ++c) {
    float v = dec(c);
    if (std::isfinite(v)) finite.push_back(v);
  }
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> exp_dist(-30.0f, std::log2(max_finite));
  std::uniform_int_distribution<int> sign(0, 1);
  for (int i = 0; i < 20000; ++i) {
    float x = std::exp2(exp_dist(rng)) * (sign(rng) ? -1.0f : 1.0f);
    float got = dec(enc(x));
    double best = std::numeric_limits<double>::infinity();
    for (float v : finite) best = std::min(best, std::fabs(double(v) - x));
    ASSERT_EQ(std::fabs(double(got) - x), best) << "x=" << x << " got " << got;
  }
}

TEST(DTypeTest, EncodersPickTheNearestValue) {
  check_nearest([](float x) { return f32_to_f8e4m3(x); },
                [](int c) { return f8e4m3_to_f32(uint8_t(c)); }, 256, 448.0f, 1);
  check_nearest([](float x) { return f32_to_f8e5m2(x); },
                [](int c) { return f8e5m2_to_f32(uint8_t(c)); }, 256, 57344.0f, 2);
}

TEST(DTypeTest, ConvertArrays) {
  std::vector<float> src = {1.0f, -2.5f, 448.0f, 1000.0f, 0.0f};
  std::vector<uint8_t> fp8(src.size());
  convert(src.data(), DType::f32, fp8.data(), DType::f8e4m3, src.size());
  std::vector<double> back(src.size());
  convert(fp8.data(), DType::f8e4m3, back.data(), DType::f64, src.size());
  EXPECT_EQ(back, (std::vector<double>{1.0, -2.5, 448.0, 448.0, 0.0}));

  std::vector<uint16_t> bf(src.size());
  convert(src.data(), DType::f32, bf.data(), DType::bf16, src.size());
  std::vector<float> f(src.size());
  convert(bf.data(), DType::bf16, f.data(), DType::f32, src.size());
  EXPECT_EQ(f, (std::vector<float>{1.0f, -2.5f, 448.0f, 1000.0f, 0.0f}));

  std::vector<int64_t> i64 = {3, -7, 1 << 20};
  std::vector<int32_t> i32(3);
  convert(i64.data(), DType::i64, i32.data(), DType::i32, 3);
  EXPECT_EQ(i32, (std::vector<int32_t>{3, -7, 1 << 20}));
}

}  // namespace
}  // namespace shoal
