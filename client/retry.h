// The retry/backoff schedule of a client call: which failures are retried,
// how long to pause between attempts (doubling, capped, with jitter), when
// the retry budget is spent, and what is logged meanwhile. The clock, the
// sleeps, the jitter and the log come through RetryEnv, so that a test
// runs the schedule with no time passing.
#ifndef WEIGHTD_CLIENT_RETRY_H_
#define WEIGHTD_CLIENT_RETRY_H_

#include <functional>

#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cancellation.h"

namespace weightd {

// From ClientOptions (client/types.h documents each).
struct RetryPolicy {
  absl::Duration budget = absl::Minutes(2);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  absl::Duration progress_interval = absl::Seconds(10);  // Between logs.
};

// What the schedule needs from the world.
class RetryEnv {
 public:
  virtual ~RetryEnv() = default;
  virtual absl::Time Now() = 0;
  // Sleeps for `duration`; returns early, false, once cancelled.
  virtual bool Sleep(absl::Duration duration) = 0;
  virtual bool Cancelled() = 0;
  // A factor in [0.5, 1.5) that each pause is multiplied by.
  virtual double Jitter() = 0;
  virtual void Log(absl::string_view message) = 0;
};

// The real clock and sleeps; `cancellation` (may be null: never
// cancelled) ends a sleep early and must outlive this. Used by one call at
// a time (the jitter's generator is not thread-safe).
class SystemRetryEnv final : public RetryEnv {
 public:
  SystemRetryEnv(Cancellation* cancellation,
                 std::function<void(absl::string_view)> log);
  SystemRetryEnv(const SystemRetryEnv&) = delete;
  SystemRetryEnv& operator=(const SystemRetryEnv&) = delete;

  absl::Time Now() override;
  bool Sleep(absl::Duration duration) override;
  bool Cancelled() override;
  double Jitter() override;
  void Log(absl::string_view message) override;

 private:
  Cancellation* const cancellation_;
  const std::function<void(absl::string_view)> log_;
  absl::BitGen bitgen_;
};

// Runs `attempt` until it succeeds or fails for good, retrying UNAVAILABLE
// and DEADLINE_EXCEEDED: the pauses start at policy.initial_backoff, double
// up to policy.max_backoff, each times env.Jitter(). Returns the attempt's
// status (OK, or a failure that is not retried); the last failure's code
// with a message naming `address` and the budget once the next pause would
// end past policy.budget from the start; CANCELLED (naming `what`) once
// env.Cancelled(), before an attempt or after a failed one, or if a sleep
// was cut short. Logs, through env.Log, a retried call that went through,
// and the failures being retried once per policy.progress_interval.
absl::Status RetryWithBackoff(const RetryPolicy& policy, RetryEnv& env,
                              absl::string_view what, absl::string_view address,
                              absl::FunctionRef<absl::Status()> attempt);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_RETRY_H_
