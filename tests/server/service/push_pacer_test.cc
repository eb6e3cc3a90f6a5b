#include "server/service/push_pacer.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace weightd::service {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::uint64_t kLead = 2 * kMiB;
constexpr absl::Duration kStall = absl::Milliseconds(500);

class PushPacerTest : public ::testing::Test {
 protected:
  // Stream `id` received `bytes`; true if it may read on now. A parked
  // stream's resume appends it to resumed_.
  bool Receive(PushPacer::Id id, std::uint64_t bytes) {
    return pacer_.Received(id, bytes, [this, id] { resumed_.push_back(id); });
  }

  // Streams a, b, c of group "g": a and b 3 MiB in, so parked; c nothing.
  std::vector<PushPacer::Id> TwoParkedAheadOfAThird() {
    std::vector<PushPacer::Id> ids;
    for (int i = 0; i < 3; ++i) ids.push_back(pacer_.Add("g"));
    EXPECT_FALSE(Receive(ids[0], 3 * kMiB));
    EXPECT_FALSE(Receive(ids[1], 3 * kMiB));
    return ids;
  }

  absl::Time now_ = absl::FromUnixSeconds(1000);
  PushPacer pacer_{kLead, kStall, [this] { return now_; }};
  std::vector<PushPacer::Id> resumed_;
};

TEST_F(PushPacerTest, AStreamAheadOfTheSlowestWaitsUntilItCatchesUp) {
  const PushPacer::Id a = pacer_.Add("round 1");
  const PushPacer::Id b = pacer_.Add("round 1");
  EXPECT_TRUE(Receive(a, kMiB));
  EXPECT_TRUE(Receive(a, kMiB));   // 2 MiB ahead of b: still within.
  EXPECT_FALSE(Receive(a, kMiB));  // 3 MiB ahead: parked.
  EXPECT_EQ(pacer_.parked(), 1);
  EXPECT_TRUE(Receive(b, kMiB / 2));  // 2.5 MiB behind a: a stays.
  EXPECT_TRUE(resumed_.empty());
  EXPECT_TRUE(Receive(b, kMiB / 2));  // 2 MiB behind: a reads on.
  EXPECT_EQ(resumed_, std::vector<PushPacer::Id>{a});
  EXPECT_EQ(pacer_.parked(), 0);
  EXPECT_EQ(pacer_.parks(), 1u);
}

TEST_F(PushPacerTest, TheSlowestStreamIsNeverHeldBack) {
  const PushPacer::Id c = TwoParkedAheadOfAThird()[2];
  EXPECT_TRUE(Receive(c, kMiB / 2));  // 2.5 MiB behind both.
  EXPECT_TRUE(resumed_.empty());
  EXPECT_TRUE(Receive(c, kMiB / 2));  // 2 MiB behind both.
  EXPECT_EQ(resumed_.size(), 2u);
}

TEST_F(PushPacerTest,
       AStalledStreamHoldsTheOthersBackOnlyUntilItCountsAsStalled) {
  const PushPacer::Id a = pacer_.Add("g");
  pacer_.Add("g");  // Never sends anything.
  EXPECT_FALSE(Receive(a, 3 * kMiB));
  now_ += kStall - absl::Milliseconds(1);
  pacer_.Tick();
  EXPECT_TRUE(resumed_.empty());
  now_ += absl::Milliseconds(1);
  pacer_.Tick();
  EXPECT_EQ(resumed_, std::vector<PushPacer::Id>{a});
  // From then on the stalled stream holds nobody back.
  EXPECT_TRUE(Receive(a, 10 * kMiB));
}

TEST_F(PushPacerTest, AStreamThatEndsReleasesTheOthersAndHandsBackItsResume) {
  const std::vector<PushPacer::Id> ids = TwoParkedAheadOfAThird();
  EXPECT_EQ(pacer_.Remove(ids[2]), nullptr);  // The slowest ends: a, b level.
  EXPECT_EQ(resumed_, (std::vector<PushPacer::Id>{ids[0], ids[1]}));
  resumed_.clear();

  // Removing a parked stream hands back its resume.
  const PushPacer::Id d = pacer_.Add("h");
  pacer_.Add("h");
  EXPECT_FALSE(Receive(d, 3 * kMiB));
  PushPacer::Resume resume = pacer_.Remove(d);
  ASSERT_NE(resume, nullptr);  // For the caller to call (or to drop).
  EXPECT_TRUE(resumed_.empty());
  std::move(resume)();
  EXPECT_EQ(resumed_, std::vector<PushPacer::Id>{d});
  EXPECT_EQ(pacer_.parked(), 0);
  EXPECT_EQ(pacer_.Remove(d), nullptr);  // Twice: nothing.
  EXPECT_TRUE(Receive(d, 100 * kMiB));   // Unknown: reads on.
}

TEST_F(PushPacerTest, GroupsArePacedApart) {
  const PushPacer::Id a = pacer_.Add("round 3 encoder");
  pacer_.Add("round 7 other-job");
  EXPECT_TRUE(Receive(a, 100 * kMiB));
}

TEST(PushPacer, ALeadOfZeroTurnsPacingOff) {
  PushPacer pacer(0, kStall);
  const PushPacer::Id a = pacer.Add("g");
  pacer.Add("g");
  EXPECT_TRUE(pacer.Received(a, 100 * kMiB, [] { FAIL(); }));
  EXPECT_EQ(pacer.parked(), 0);
}

}  // namespace
}  // namespace weightd::service
