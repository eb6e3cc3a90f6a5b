#include "server/service/grpc_log.h"

#include "gtest/gtest.h"

namespace weightd::service {
namespace {

TEST(LogRateLimitTest, ShowsSoManyLinesPerWindowAndCountsTheRest) {
  LogRateLimit limit(absl::Seconds(10));
  const absl::Time start = absl::FromUnixSeconds(1000);
  int shown = 0;
  for (int i = 0; i < LogRateLimit::kLinesPerWindow + 5; ++i) {
    const LogRateLimit::Decision d = limit.Admit(start + absl::Seconds(1));
    EXPECT_EQ(d.held_back, 0u);
    shown += d.show;
  }
  EXPECT_EQ(shown, LogRateLimit::kLinesPerWindow);
  // The next window says what was held back, and shows its first line.
  const LogRateLimit::Decision next = limit.Admit(start + absl::Seconds(12));
  EXPECT_TRUE(next.show);
  EXPECT_EQ(next.held_back, 5u);
  EXPECT_EQ(limit.Admit(start + absl::Seconds(13)).held_back, 0u);
}

}  // namespace
}  // namespace weightd::service
