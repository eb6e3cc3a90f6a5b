#include "common/duration.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(HumanDurationTest, ShortWaitsKeepTheirMilliseconds) {
  EXPECT_EQ(HumanDuration(absl::ZeroDuration()), "0s");
  EXPECT_EQ(HumanDuration(absl::Microseconds(400)), "0s");
  EXPECT_EQ(HumanDuration(absl::Microseconds(350'700)), "350ms");
  EXPECT_EQ(HumanDuration(absl::Milliseconds(999)), "999ms");
}

TEST(HumanDurationTest, LongerOnesAreWholeSeconds) {
  EXPECT_EQ(HumanDuration(absl::Milliseconds(1'000)), "1s");
  EXPECT_EQ(HumanDuration(absl::Milliseconds(12'900)), "12s");
  EXPECT_EQ(HumanDuration(absl::Seconds(125)), "2m5s");
  EXPECT_EQ(HumanDuration(-absl::Milliseconds(1'500)), "-1s");
}

}  // namespace
}  // namespace weightd
