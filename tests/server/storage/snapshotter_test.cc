// The Snapshotter's triggers, its interval on an injected clock: no test
// waits for real time to pass.
#include "server/storage/snapshotter.h"

#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/tensor_store.h"
#include "server/storage/snapshot.h"
#include "tests/testing/status_matchers.h"

namespace weightd::storage {
namespace {

using ::weightd::testing::IsOk;

// A clock that moves only when told. Thread-safe.
class FakeClock {
 public:
  absl::Time Now() const {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  // Far from the real time, so that mixing the two clocks shows.
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::FromUnixSeconds(1000000000);
};

class SnapshotterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/weightd-snapshotter-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    auto store = core::TensorStore::Create(core::StoreOptions{});
    ASSERT_THAT(store, IsOk());
    store_ = std::move(*store);
    auto dir = SnapshotDir::Open(root_ + "/snaps");
    ASSERT_THAT(dir, IsOk());
    dir_ = std::move(*dir);
  }
  void TearDown() override {
    snapshotter_.reset();
    std::system(("rm -rf '" + root_ + "'").c_str());
  }

  // A Snapshotter on the fake clock that snapshots every `every` of it.
  void Start(absl::Duration every) {
    SnapshotterOptions options;
    options.every = every;
    options.now = [this] { return clock_.Now(); };
    snapshotter_ = std::make_unique<Snapshotter>(
        store_.get(), dir_.get(), options,
        [this](const SnapshotAttempt& attempt) {
          absl::MutexLock lock(&mu_);
          results_.push_back(attempt.file.status());
          if (attempt.file.ok()) sizes_.push_back(attempt.bytes);
        });
  }

  void CloseRound(std::uint64_t round) {
    core::RoundClosed closed;
    closed.tensor = "w";
    closed.round = round;
    snapshotter_->OnRoundClosed(closed);
  }

  // Waits until `n` snapshots were attempted; false after 60 s of real time
  // (a Snapshotter that reads the real clock would wait an hour).
  bool AwaitAttempts(std::size_t n) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return results_.size() >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(60));
  }

  std::string root_;
  FakeClock clock_;
  std::unique_ptr<core::TensorStore> store_;
  std::unique_ptr<SnapshotDir> dir_;
  std::unique_ptr<Snapshotter> snapshotter_;
  absl::Mutex mu_;
  std::vector<absl::Status> results_ ABSL_GUARDED_BY(mu_);
  std::vector<std::uint64_t> sizes_ ABSL_GUARDED_BY(mu_);  // Of the files.
};

TEST_F(SnapshotterTest, SnapshotsWhenARoundClosesOnceTheIntervalPassed) {
  Start(absl::Hours(1));
  CloseRound(0);
  clock_.Advance(absl::Minutes(59));
  CloseRound(1);  // Not yet due: the snapshotter looks at the clock.
  clock_.Advance(absl::Minutes(1));
  CloseRound(2);  // An hour since the start, and rounds closed: due.
  ASSERT_TRUE(AwaitAttempts(1)) << "no snapshot once the interval passed";
  EXPECT_EQ(snapshotter_->written(), 1u);

  // The next interval counts from this snapshot.
  clock_.Advance(absl::Minutes(30));
  CloseRound(3);
  clock_.Advance(absl::Minutes(30));
  CloseRound(4);
  ASSERT_TRUE(AwaitAttempts(2)) << "no second snapshot an hour later";
  EXPECT_THAT(snapshotter_->Stop(), IsOk());
  EXPECT_EQ(snapshotter_->written(), 3u);  // With the final one.
  absl::MutexLock lock(&mu_);
  for (const absl::Status& s : results_) EXPECT_THAT(s, IsOk());
  // Each attempt reports the size of the file it wrote.
  ASSERT_EQ(sizes_.size(), 3u);
  for (std::uint64_t size : sizes_) EXPECT_GT(size, 0u);
}

// With the interval long past but no round closed, the round that closes
// next is the one that brings the snapshot.
TEST_F(SnapshotterTest, AfterALongIdleTheNextRoundSnapshotsAtOnce) {
  Start(absl::Hours(1));
  clock_.Advance(absl::Hours(5));
  CloseRound(0);
  ASSERT_TRUE(AwaitAttempts(1));
  EXPECT_EQ(snapshotter_->written(), 1u);
}

// Without an interval (nor a count of rounds), only requests and the final
// snapshot are written, however far the clock moves.
TEST_F(SnapshotterTest, RequestsAreServedWithoutAnInterval) {
  Start(absl::ZeroDuration());
  clock_.Advance(absl::Hours(5));
  CloseRound(0);
  absl::Mutex done_mu;
  bool done = false;
  snapshotter_->Request([&](absl::StatusOr<std::string> written) {
    EXPECT_THAT(written, IsOk());
    absl::MutexLock lock(&done_mu);
    done = true;
  });
  {
    absl::MutexLock lock(&done_mu);
    done_mu.Await(absl::Condition(&done));
  }
  EXPECT_THAT(snapshotter_->Stop(), IsOk());
  EXPECT_EQ(snapshotter_->written(), 2u);
}

}  // namespace
}  // namespace weightd::storage
