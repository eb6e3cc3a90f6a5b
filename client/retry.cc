#include "client/retry.h"

#include <algorithm>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/duration.h"

namespace weightd {

SystemRetryEnv::SystemRetryEnv(Cancellation* cancellation,
                               std::function<void(absl::string_view)> log)
    : cancellation_(cancellation), log_(std::move(log)) {}

absl::Time SystemRetryEnv::Now() { return absl::Now(); }

bool SystemRetryEnv::Sleep(absl::Duration duration) {
  if (cancellation_ == nullptr) {
    absl::SleepFor(duration);
    return true;
  }
  return cancellation_->SleepFor(duration);
}

bool SystemRetryEnv::Cancelled() {
  return cancellation_ != nullptr && cancellation_->cancelled();
}

double SystemRetryEnv::Jitter() { return absl::Uniform(bitgen_, 0.5, 1.5); }

void SystemRetryEnv::Log(absl::string_view message) { log_(message); }

absl::Status RetryWithBackoff(const RetryPolicy& policy, RetryEnv& env,
                              absl::string_view what, absl::string_view address,
                              absl::FunctionRef<absl::Status()> attempt) {
  const absl::Time start = env.Now();
  const absl::Time give_up = start + policy.budget;
  absl::Time reported = absl::InfinitePast();
  absl::Duration backoff = policy.initial_backoff;
  for (int attempts = 1;; ++attempts) {
    if (env.Cancelled()) return Cancellation::Status(what);
    absl::Status status = attempt();
    if (env.Cancelled() && !status.ok()) return Cancellation::Status(what);
    if (status.ok() ||
        !(absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status))) {
      if (attempts > 1 && status.ok()) {
        env.Log(absl::StrCat(
            what, " to ", address, " went through again after ", attempts,
            " attempts in ", HumanDuration(env.Now() - start)));
      } else if (attempts > 1) {  // Reached, but refused: not retried.
        env.Log(absl::StrCat(what, " to ", address,
                             " reached weightd again after ", attempts,
                             " attempts in ", HumanDuration(env.Now() - start),
                             ", and was refused: ", status.ToString()));
      }
      return status;
    }
    const absl::Duration pause = backoff * env.Jitter();
    const absl::Time now = env.Now();
    if (now + pause > give_up) {
      return absl::Status(
          status.code(),
          absl::StrCat("could not reach weightd at ", address, " for ",
                       HumanDuration(now - start), " (", attempts,
                       " attempts, the client's retry budget); last error: ",
                       status.message()));
    }
    if (now - reported >= policy.progress_interval) {
      reported = now;
      env.Log(absl::StrCat(status.message(), "; retrying for up to ",
                           HumanDuration(give_up - now), " more"));
    }
    if (!env.Sleep(pause)) return Cancellation::Status(what);
    backoff = std::min(backoff * 2, policy.max_backoff);
  }
}

}  // namespace weightd
