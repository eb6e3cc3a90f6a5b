#ifndef WEIGHTD_TESTS_TESTING_EVENTUALLY_H_
#define WEIGHTD_TESTS_TESTING_EVENTUALLY_H_

// Bounded waits for a condition another thread or process makes true.

#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace weightd::testing {

// Waits until `ok` holds, checking every 10 ms for `timeout` at most;
// returns whether it held.
inline bool Eventually(const std::function<bool()>& ok,
                       absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!ok()) {
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_EVENTUALLY_H_
