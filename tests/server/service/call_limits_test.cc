#include "server/service/call_limits.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd::service {
namespace {

using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

TEST(CallCounterTest, RefusesOverTheLimitUntilASlotIsReleased) {
  CallCounter calls(2);
  auto a = calls.Acquire();
  auto b = calls.Acquire();
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(calls.in_flight(), 2u);
  EXPECT_THAT(calls.Acquire(), StatusIs(absl::StatusCode::kUnavailable,
                                        HasSubstr("--max_calls")));
  EXPECT_EQ(calls.refused(), 1u);
  EXPECT_EQ(calls.in_flight(), 2u);  // The refusal holds no place.
  *a = CallCounter::Slot();          // Released by assignment.
  EXPECT_EQ(calls.in_flight(), 1u);
  auto c = calls.Acquire();
  EXPECT_THAT(c, IsOk());
  CallCounter::Slot moved = std::move(*c);  // Moving does not release.
  EXPECT_EQ(calls.in_flight(), 2u);
}

TEST(CallCounterTest, ZeroMeansNoLimit) {
  CallCounter calls(0);
  std::vector<CallCounter::Slot> slots;
  for (int i = 0; i < 1000; ++i) {
    auto slot = calls.Acquire();
    ASSERT_THAT(slot, IsOk());
    slots.push_back(std::move(*slot));
  }
  EXPECT_EQ(calls.in_flight(), 1000u);
  slots.clear();
  EXPECT_EQ(calls.in_flight(), 0u);
}

// Many threads acquire and release at once: the count never passes the
// limit and returns to zero.
TEST(CallCounterTest, ConcurrentCallsNeverPassTheLimit) {
  CallCounter calls(8);
  std::atomic<int> held{0};
  std::atomic<int> most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        auto slot = calls.Acquire();
        if (!slot.ok()) continue;
        const int now = held.fetch_add(1) + 1;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        held.fetch_sub(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(most.load(), 8);
  EXPECT_EQ(calls.in_flight(), 0u);
}

TEST(StallWatchTest, CutsOnlyAReadWaitingLongerThanTheTimeout) {
  StallWatch watch(absl::Seconds(10));
  std::vector<absl::Duration> cut_a, cut_b, cut_c;
  auto a = watch.Watch([&](absl::Duration d) { cut_a.push_back(d); });
  auto b = watch.Watch([&](absl::Duration d) { cut_b.push_back(d); });
  auto c = watch.Watch([&](absl::Duration d) { cut_c.push_back(d); });
  ASSERT_NE(a, nullptr);
  const absl::Time start = absl::Now();
  a->Reading();  // Waits for its client.
  b->Reading();
  b->Idle();  // Its message came: the server works on it.
  // c never started a read (parked by the pacer): not the client's stall.
  watch.Check(start + absl::Seconds(5));
  EXPECT_TRUE(cut_a.empty());
  watch.Check(start + absl::Seconds(11));
  ASSERT_EQ(cut_a.size(), 1u);
  EXPECT_GE(cut_a[0], absl::Seconds(10));
  EXPECT_TRUE(cut_b.empty());
  EXPECT_TRUE(cut_c.empty());
  EXPECT_EQ(watch.cut(), 1u);
  // Cut once: no longer watched.
  watch.Check(start + absl::Seconds(30));
  EXPECT_EQ(cut_a.size(), 1u);
  EXPECT_EQ(watch.cut(), 1u);
}

// A cut ends its call, and the client may ask GetStatus at once: the count
// already includes the cut when the call hears of it.
TEST(StallWatchTest, ACutIsCountedBeforeItsCallHearsOfIt) {
  StallWatch watch(absl::Seconds(1));
  std::vector<std::uint64_t> counted_when_cut;
  auto reader = watch.Watch(
      [&](absl::Duration) { counted_when_cut.push_back(watch.cut()); });
  ASSERT_NE(reader, nullptr);
  reader->Reading();
  watch.Check(absl::Now() + absl::Seconds(2));
  EXPECT_THAT(counted_when_cut, ::testing::ElementsAre(1u));
}

TEST(StallWatchTest, AReaderGoneIsNeverCut) {
  StallWatch watch(absl::Seconds(1));
  int cuts = 0;
  {
    auto a = watch.Watch([&](absl::Duration) { ++cuts; });
    a->Reading();
  }
  watch.Check(absl::Now() + absl::Hours(1));
  EXPECT_EQ(cuts, 0);
}

TEST(StallWatchTest, OffWatchesNothing) {
  StallWatch watch(absl::InfiniteDuration());
  EXPECT_EQ(watch.Watch([](absl::Duration) {}), nullptr);
}

// The cut runs without the watch's lock: it may end the call, whose end
// destroys its reader (on this very thread, as gRPC may do).
TEST(StallWatchTest, ACutMayDestroyItsReader) {
  StallWatch watch(absl::Seconds(1));
  std::unique_ptr<StallWatch::Reader> a;
  int cuts = 0;
  a = watch.Watch([&](absl::Duration) {
    ++cuts;
    a.reset();
  });
  a->Reading();
  watch.Check(absl::Now() + absl::Seconds(5));
  EXPECT_EQ(cuts, 1);
  EXPECT_EQ(a, nullptr);
}

// Readers come and go on many threads while Check runs (TSan checks the
// locking): a reader is cut at most once, and every reader left waiting is
// cut. (A cut may run just after its reader is gone: it holds what it
// needs itself.)
TEST(StallWatchTest, ConcurrentReadersAndChecks) {
  StallWatch watch(absl::Milliseconds(1));
  constexpr int kThreads = 4;
  constexpr int kReaders = 300;
  std::vector<std::atomic<int>> cuts(kThreads * kReaders);  // Per reader.
  std::atomic<bool> done{false};
  std::thread checker([&] {
    while (!done.load()) watch.Check(absl::Now() + absl::Seconds(1));
  });
  std::vector<std::unique_ptr<StallWatch::Reader>> kept(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kReaders; ++i) {
        const int id = t * kReaders + i;
        auto r =
            watch.Watch([&, id](absl::Duration) { cuts[id].fetch_add(1); });
        r->Reading();
        r->Idle();
        r->Reading();
        if (i + 1 == kReaders) kept[t] = std::move(r);  // Left waiting.
      }
    });
  }
  for (std::thread& t : threads) t.join();
  watch.Check(absl::Now() + absl::Seconds(1));  // The kept ones, surely.
  done.store(true);
  checker.join();
  for (auto& c : cuts) EXPECT_LE(c.load(), 1);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(cuts[t * kReaders + kReaders - 1].load(), 1);
    EXPECT_TRUE(kept[t]->was_cut());
  }
}

}  // namespace
}  // namespace weightd::service
