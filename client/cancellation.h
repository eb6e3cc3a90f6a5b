// weightd::Cancellation: stops a client's calls from another thread, e.g.
// one that waits for SIGINT/SIGTERM.
//
//   auto cancel = std::make_shared<weightd::Cancellation>();
//   options.cancellation = cancel;            // Connect and every call see it
//   ... on a signal, from any thread: cancel->Cancel();
//
// After Cancel() every wait of every client sharing the object (connecting,
// backing off between retries, a call in flight, a round or a barrier)
// ends within about 100 ms with CANCELLED; later calls fail with CANCELLED
// at once, except Leave, which makes one short attempt so that the server
// stops waiting for the worker. Thread-safe.
#ifndef WEIGHTD_CLIENT_CANCELLATION_H_
#define WEIGHTD_CLIENT_CANCELLATION_H_

#include <cstdint>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace weightd {

class Cancellation {
 public:
  Cancellation() = default;
  Cancellation(const Cancellation&) = delete;
  Cancellation& operator=(const Cancellation&) = delete;

  // Cancels every registered call and wakes every sleeper. Idempotent.
  void Cancel();
  bool cancelled() const;

  // Sleeps for `duration`; returns early, false, once cancelled.
  bool SleepFor(absl::Duration duration);

  // While it lives, Cancel() calls `on_cancel` (at most once; at once if
  // already cancelled). `on_cancel` must not call back into this object.
  class Registration {
   public:
    Registration(Cancellation* cancellation, std::function<void()> on_cancel);
    ~Registration();
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

   private:
    Cancellation* const cancellation_;  // May be null: nothing to do.
    std::uint64_t id_ = 0;
  };

  // The status of calls ended by Cancel().
  static absl::Status Status(absl::string_view what);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::uint64_t, std::function<void()>> calls_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_CANCELLATION_H_
