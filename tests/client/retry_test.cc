#include "client/retry.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::weightd::testing::StatusIs;

// Time passes only when the schedule sleeps; every sleep is recorded.
class FakeRetryEnv final : public RetryEnv {
 public:
  absl::Time Now() override { return now_; }
  bool Sleep(absl::Duration d) override {
    sleeps.push_back(d);
    now_ += d;
    if (cancel_in_sleep == static_cast<int>(sleeps.size())) {
      cancelled = true;
      return false;
    }
    return true;
  }
  bool Cancelled() override { return cancelled; }
  double Jitter() override {
    if (jitter.empty()) return 1.0;
    const double j = jitter.front();
    jitter.erase(jitter.begin());
    return j;
  }
  void Log(absl::string_view message) override { logs.emplace_back(message); }

  // The time an attempt takes.
  void Spend(absl::Duration d) { now_ += d; }

  std::vector<absl::Duration> sleeps;
  std::vector<double> jitter;  // Handed out in order, then 1.0.
  std::vector<std::string> logs;
  bool cancelled = false;
  int cancel_in_sleep = 0;  // 1-based; 0: never.

 private:
  absl::Time now_ = absl::UnixEpoch() + absl::Hours(1000);
};

RetryPolicy Policy() {
  RetryPolicy p;
  p.budget = absl::Seconds(60);
  p.initial_backoff = absl::Milliseconds(100);
  p.max_backoff = absl::Seconds(1);
  p.progress_interval = absl::Seconds(10);
  return p;
}

// An attempt failing with `failures` in turn, then succeeding.
struct Attempts {
  std::vector<absl::Status> failures;
  int calls = 0;
  absl::Status operator()() {
    return calls < static_cast<int>(failures.size())
               ? failures[calls++]
               : (++calls, absl::OkStatus());
  }
};

std::vector<absl::Status> Unavailable(int n) {
  return std::vector<absl::Status>(n, absl::UnavailableError("Push: down"));
}

TEST(RetryTest, PausesDoubleUpToTheCap) {
  FakeRetryEnv env;
  Attempts attempts{Unavailable(6)};
  EXPECT_TRUE(RetryWithBackoff(Policy(), env, "Push", "host:1", [&] {
                return attempts();
              }).ok());
  EXPECT_EQ(attempts.calls, 7);
  EXPECT_THAT(env.sleeps,
              ElementsAre(absl::Milliseconds(100), absl::Milliseconds(200),
                          absl::Milliseconds(400), absl::Milliseconds(800),
                          absl::Seconds(1), absl::Seconds(1)));
  ASSERT_FALSE(env.logs.empty());
  EXPECT_EQ(env.logs.back(),
            "Push to host:1 went through again after 7 attempts in 3s");
}

// An attempt that reaches the server again but is refused (not retried)
// must not be logged as having gone through.
TEST(RetryTest, ARefusalAfterRetriesIsNotLoggedAsGoingThrough) {
  FakeRetryEnv env;
  Attempts attempts{Unavailable(2)};
  attempts.failures.push_back(absl::AbortedError("the round moved on"));
  EXPECT_THAT(RetryWithBackoff(Policy(), env, "PushPull", "host:1",
                               [&] { return attempts(); }),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(attempts.calls, 3);
  ASSERT_FALSE(env.logs.empty());
  EXPECT_EQ(env.logs.back(),
            "PushPull to host:1 reached weightd again after 3 attempts in "
            "300ms, and was refused: ABORTED: the round moved on");
}

TEST(RetryTest, JitterScalesEachPauseNotTheSchedule) {
  FakeRetryEnv env;
  env.jitter = {0.5, 1.5, 1.0};
  Attempts attempts{Unavailable(3)};
  EXPECT_TRUE(RetryWithBackoff(Policy(), env, "Pull", "h", [&] {
                return attempts();
              }).ok());
  EXPECT_THAT(env.sleeps,
              ElementsAre(absl::Milliseconds(50), absl::Milliseconds(300),
                          absl::Milliseconds(400)));
}

TEST(RetryTest, DeadlineExceededIsRetriedToo) {
  FakeRetryEnv env;
  Attempts attempts{{absl::DeadlineExceededError("slow")}};
  EXPECT_TRUE(RetryWithBackoff(Policy(), env, "Pull", "h", [&] {
                return attempts();
              }).ok());
  EXPECT_EQ(attempts.calls, 2);
}

TEST(RetryTest, OtherFailuresAreReturnedAtOnce) {
  FakeRetryEnv env;
  Attempts attempts{{absl::InvalidArgumentError("bad shape")}};
  EXPECT_EQ(
      RetryWithBackoff(Policy(), env, "Push", "h", [&] { return attempts(); }),
      absl::InvalidArgumentError("bad shape"));
  EXPECT_EQ(attempts.calls, 1);
  EXPECT_THAT(env.sleeps, IsEmpty());
  EXPECT_THAT(env.logs, IsEmpty());
}

// Gives up once the next pause would end past the budget: attempts of
// 100 ms each at 0, 0.2, 0.5, 1.0 and 1.9 s after pauses of 100, 200, 400
// and 800 ms; the next pause (1 s, the cap) would end at 3 s > 2 s.
TEST(RetryTest, GivesUpWhenTheNextPauseWouldOverrunTheBudget) {
  FakeRetryEnv env;
  RetryPolicy policy = Policy();
  policy.budget = absl::Seconds(2);
  int calls = 0;
  const absl::Status status =
      RetryWithBackoff(policy, env, "PushPull", "10.0.0.1:50051", [&] {
        ++calls;
        env.Spend(absl::Milliseconds(100));
        return absl::UnavailableError("PushPull: Connection refused");
      });
  EXPECT_EQ(calls, 5);
  EXPECT_THAT(env.sleeps,
              ElementsAre(absl::Milliseconds(100), absl::Milliseconds(200),
                          absl::Milliseconds(400), absl::Milliseconds(800)));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(status.message(),
            "could not reach weightd at 10.0.0.1:50051 for 2s (5 "
            "attempts, the client's retry budget); last error: PushPull: "
            "Connection refused");
}

TEST(RetryTest, GivingUpKeepsTheLastFailuresCode) {
  FakeRetryEnv env;
  RetryPolicy policy = Policy();
  policy.budget = absl::Milliseconds(50);  // Not even one pause fits.
  Attempts attempts{{absl::DeadlineExceededError("Pull: Deadline Exceeded")}};
  EXPECT_THAT(
      RetryWithBackoff(policy, env, "Pull", "h", [&] { return attempts(); }),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(attempts.calls, 1);
  EXPECT_THAT(env.sleeps, IsEmpty());
}

TEST(RetryTest, LogsTheRetriesOncePerProgressInterval) {
  FakeRetryEnv env;
  RetryPolicy policy = Policy();
  policy.progress_interval = absl::Milliseconds(1500);
  Attempts attempts{Unavailable(6)};
  ASSERT_TRUE(RetryWithBackoff(policy, env, "Push", "h", [&] {
                return attempts();
              }).ok());
  // Failures at 0, 0.1, 0.3, 0.7, 1.5, 2.5 s: logged at 0 and 1.5 s.
  EXPECT_THAT(env.logs,
              ElementsAre("Push: down; retrying for up to 1m more",
                          "Push: down; retrying for up to 58s more",
                          HasSubstr("went through again after 7 attempts")));
}

TEST(RetryTest, CancellationDuringAPauseStopsTheRetries) {
  FakeRetryEnv env;
  env.cancel_in_sleep = 2;
  Attempts attempts{Unavailable(10)};
  EXPECT_THAT(RetryWithBackoff(Policy(), env, "Barrier", "h",
                               [&] { return attempts(); }),
              StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(attempts.calls, 2);
  EXPECT_EQ(env.sleeps.size(), 2u);
}

TEST(RetryTest, CancelledBeforehandMakesNoAttempt) {
  FakeRetryEnv env;
  env.cancelled = true;
  Attempts attempts;
  EXPECT_THAT(
      RetryWithBackoff(Policy(), env, "Pull", "h", [&] { return attempts(); }),
      StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(attempts.calls, 0);
}

// A failure caused by the cancellation (the call was cut) reads CANCELLED,
// not as the transport error; a success that raced it stands.
TEST(RetryTest, AFailureAfterCancellationIsCancelled) {
  FakeRetryEnv env;
  EXPECT_THAT(RetryWithBackoff(Policy(), env, "Push", "h",
                               [&] {
                                 env.cancelled = true;
                                 return absl::InvalidArgumentError("cut");
                               }),
              StatusIs(absl::StatusCode::kCancelled));
  FakeRetryEnv env2;
  EXPECT_TRUE(RetryWithBackoff(Policy(), env2, "Push", "h", [&] {
                env2.cancelled = true;
                return absl::OkStatus();
              }).ok());
  EXPECT_THAT(env2.sleeps, IsEmpty());
}

}  // namespace
}  // namespace weightd
