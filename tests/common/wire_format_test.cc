#include "common/wire_format.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(WireFormatTest, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBfloat16(1.0f), 0x3f80);
  EXPECT_EQ(Bfloat16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.
  EXPECT_EQ(Bfloat16ToFloat(FloatToBfloat16(1.0f + std::ldexp(1.0f, -8))),
            1.0f);
  // Just above halfway rounds up.
  EXPECT_EQ(Bfloat16ToFloat(FloatToBfloat16(1.0f + std::ldexp(1.0f, -8) +
                                            std::ldexp(1.0f, -20))),
            1.0f + std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(Bfloat16ToFloat(
      FloatToBfloat16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(Bfloat16ToFloat(
      FloatToBfloat16(std::numeric_limits<float>::max()))));  // Rounds up.
}

TEST(WireFormatTest, Float16RoundTripsAndSaturatesToInf) {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 0.333251953125f,
                  std::ldexp(1.0f, -24) /* smallest subnormal */}) {
    EXPECT_EQ(Float16ToFloat(FloatToFloat16(v)), v) << v;
  }
  EXPECT_EQ(FloatToFloat16(1.0f), 0x3c00);
  EXPECT_TRUE(std::isinf(Float16ToFloat(FloatToFloat16(70000.0f))));
  EXPECT_TRUE(std::isnan(
      Float16ToFloat(FloatToFloat16(std::numeric_limits<float>::quiet_NaN()))));
  // Relative error of a normal value is at most 2^-11.
  for (int i = 1; i < 1000; ++i) {
    const float v = 0.001f * i * i;
    EXPECT_LE(std::fabs(Float16ToFloat(FloatToFloat16(v)) - v),
              v * std::ldexp(1.0f, -11))
        << v;
  }
}

TEST(WireFormatTest, ParsesFlagNames) {
  WireFormat f;
  ASSERT_TRUE(ParseWireFormat("bf16", &f));
  EXPECT_EQ(f, WireFormat::kBfloat16);
  ASSERT_TRUE(ParseWireFormat("float16", &f));
  EXPECT_EQ(f, WireFormat::kFloat16);
  ASSERT_TRUE(ParseWireFormat("fp32", &f));
  EXPECT_EQ(f, WireFormat::kFloat32);
  EXPECT_FALSE(ParseWireFormat("int8", &f));
}

}  // namespace
}  // namespace weightd
