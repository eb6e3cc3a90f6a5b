#include "server/service/reactor_wait.h"

#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace weightd::service {
namespace {

// Counts how the call was finished; the real ones are gRPC's.
struct FakeReactor {
  void Finish(const grpc::Status& status) {
    code = status.error_code();
    finishes.fetch_add(1);
  }
  void StartWriteAndFinish(const int* last, grpc::WriteOptions,
                           const grpc::Status& status) {
    written = *last;
    Finish(status);
  }
  std::atomic<int> finishes{0};
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  int written = 0;
};

struct FakeCall {
  grpc::Status Answer(const absl::Status& status) const {
    return ToGrpcStatus(status);
  }
};

using Wait = ReactorWait<FakeReactor, FakeCall>;

// A wait as the store keeps it: it fires once unless cancelled first, and
// Cancel() is false once it fired (or is firing).
class FakeWait {
 public:
  std::unique_ptr<core::Wait> Register(WaitDone done) {
    done_ = std::move(done);
    return std::make_unique<core::Wait>([this] { return Claim(); });
  }
  // Fires with `status` unless cancelled; true if it did.
  bool Fire(const absl::Status& status) {
    if (!Claim()) return false;
    done_(status);
    return true;
  }

 private:
  bool Claim() { return !claimed_.exchange(true); }
  std::atomic<bool> claimed_{false};
  WaitDone done_;
};

TEST(ReactorWaitTest, FiringFinishesThroughReady) {
  FakeReactor reactor;
  FakeWait store;  // Outlives the wait, as the store outlives a call.
  Wait wait(&reactor, FakeCall{});
  wait.Start([&](WaitDone done) { return store.Register(std::move(done)); },
             [&](absl::Status s) { wait.FinishOnce(s); });
  EXPECT_EQ(reactor.finishes, 0);
  EXPECT_TRUE(store.Fire(absl::OkStatus()));
  EXPECT_EQ(reactor.finishes, 1);
  EXPECT_EQ(reactor.code, grpc::StatusCode::OK);
  wait.OnCancel();  // Too late: nothing more.
  EXPECT_EQ(reactor.finishes, 1);
}

TEST(ReactorWaitTest, FiringInsideRegistrationRunsReadyAfterIt) {
  FakeReactor reactor;
  FakeWait store;  // Outlives the wait, as the store outlives a call.
  Wait wait(&reactor, FakeCall{});
  bool registered = false;
  wait.Start(
      [&](WaitDone done) {
        auto w = store.Register(std::move(done));
        EXPECT_TRUE(store.Fire(absl::AbortedError("round closed")));
        registered = true;
        return w;
      },
      [&](absl::Status s) {
        EXPECT_TRUE(registered);
        wait.FinishOnce(s);
      });
  EXPECT_EQ(reactor.finishes, 1);
  EXPECT_EQ(reactor.code, grpc::StatusCode::ABORTED);
}

TEST(ReactorWaitTest, CancelBeforeStartCancelsTheWait) {
  FakeReactor reactor;
  FakeWait store;  // Outlives the wait, as the store outlives a call.
  Wait wait(&reactor, FakeCall{});
  wait.OnCancel();
  wait.Start([&](WaitDone done) { return store.Register(std::move(done)); },
             [&](absl::Status s) { wait.FinishOnce(s); });
  EXPECT_EQ(reactor.finishes, 1);
  EXPECT_EQ(reactor.code, grpc::StatusCode::CANCELLED);
  EXPECT_FALSE(store.Fire(absl::OkStatus()));  // It was cancelled.
  EXPECT_EQ(reactor.finishes, 1);
}

TEST(ReactorWaitTest, RegistrationErrorFinishesOnce) {
  FakeReactor reactor;
  Wait wait(&reactor, FakeCall{});
  wait.Start(
      [](WaitDone) -> absl::StatusOr<std::unique_ptr<core::Wait>> {
        return absl::FailedPreconditionError("no lease");
      },
      [](absl::Status) { ADD_FAILURE() << "ready ran"; });
  wait.OnCancel();
  EXPECT_EQ(reactor.finishes, 1);
  EXPECT_EQ(reactor.code, grpc::StatusCode::FAILED_PRECONDITION);
}

// The call's cancellation races the wait firing (and the registration):
// whichever wins, the call is finished exactly once, with the winner's
// status. Many rounds, so that every interleaving comes up.
TEST(ReactorWaitTest, CancelRacingTheWaitFinishesExactlyOnce) {
  constexpr int kRounds = 3000;
  int fired_won = 0, cancel_won = 0;
  for (int round = 0; round < kRounds; ++round) {
    FakeReactor reactor;
    const int last = round;
    FakeWait store;  // Outlives the wait, as the store outlives a call.
    auto wait = std::make_unique<Wait>(&reactor, FakeCall{});
    absl::Notification go, registered;
    bool fired = false;
    std::thread firer([&] {
      registered.WaitForNotification();
      fired = store.Fire(absl::OkStatus());
    });
    std::thread canceller([&] {
      go.WaitForNotification();
      wait->OnCancel();
    });
    go.Notify();
    // Half the rounds end with a write (a Pull's last message).
    wait->Start(
        [&](WaitDone done) {
          auto w = store.Register(std::move(done));
          registered.Notify();
          return w;
        },
        [&](absl::Status s) {
          if (round % 2 == 0) return wait->WriteAndFinishOnce(&last);
          wait->FinishOnce(s);
        });
    firer.join();
    canceller.join();
    ASSERT_EQ(reactor.finishes.load(), 1) << "round " << round;
    if (fired) {
      ++fired_won;
      EXPECT_EQ(reactor.code, grpc::StatusCode::OK) << "round " << round;
      if (round % 2 == 0) {
        EXPECT_EQ(reactor.written, round);
      }
    } else {
      ++cancel_won;
      EXPECT_EQ(reactor.code, grpc::StatusCode::CANCELLED) << "round " << round;
    }
  }
  EXPECT_EQ(fired_won + cancel_won, kRounds);
}

// A cancellation racing the registration alone (the wait never fires) is
// never lost: the call still finishes, once, with CANCELLED.
TEST(ReactorWaitTest, CancelRacingRegistrationIsNeverLost) {
  constexpr int kRounds = 3000;
  for (int round = 0; round < kRounds; ++round) {
    FakeReactor reactor;
    FakeWait store;  // Outlives the wait, as the store outlives a call.
    Wait wait(&reactor, FakeCall{});
    absl::Notification go;
    std::thread canceller([&] {
      go.WaitForNotification();
      wait.OnCancel();
    });
    go.Notify();
    wait.Start([&](WaitDone done) { return store.Register(std::move(done)); },
               [&](absl::Status s) { wait.FinishOnce(s); });
    canceller.join();
    ASSERT_EQ(reactor.finishes.load(), 1) << "round " << round;
    EXPECT_EQ(reactor.code, grpc::StatusCode::CANCELLED) << "round " << round;
  }
}

}  // namespace
}  // namespace weightd::service
