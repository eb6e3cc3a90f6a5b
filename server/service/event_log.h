// EventLog: what the daemon tells its operator about calls and rounds, at a
// volume that does not grow with the number of tensors or calls.
//
// Membership changes (join, re-join, takeover, leave, expiry) are logged one
// line each: there are as many as workers come and go. Refused calls are
// logged one line each up to kRefusalsPerWindow per window, then counted
// and summed up in one line. Closed rounds are summed up in one line per
// window, whatever the number of tensors. Thread-safe.
#ifndef WEIGHTD_SERVER_SERVICE_EVENT_LOG_H_
#define WEIGHTD_SERVER_SERVICE_EVENT_LOG_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/core/tensor_store.h"

namespace weightd::service {

class EventLog {
 public:
  static constexpr int kRefusalsPerWindow = 20;

  // `window`: how often summaries are written (by Flush()).
  explicit EventLog(
      absl::Duration window = absl::Seconds(10),
      std::function<absl::Time()> now = [] { return absl::Now(); });
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  void Joined(absl::string_view worker, absl::string_view peer,
              const core::JoinResult& result);
  void Left(absl::string_view worker);
  // An admin dropped a tensor (from `peer`).
  void Dropped(absl::string_view tensor, absl::string_view peer,
               const core::DropResult& dropped);
  // A worker (by lease) now moves its values through shared memory.
  void SegmentAttached(std::uint64_t lease_id, absl::string_view peer,
                       std::uint32_t pid, std::uint64_t bytes);
  void Expired(const core::WorkerExpired& expired);
  // A call that ended with `status` (not OK). CANCELLED by the client is
  // not a refusal and is not logged.
  void Refused(absl::string_view call, absl::string_view peer,
               const absl::Status& status);
  // Refusals since start with UNAUTHENTICATED, and PERMISSION_DENIED.
  std::uint64_t unauthenticated() const {
    return unauthenticated_.load(std::memory_order_relaxed);
  }
  std::uint64_t permission_denied() const {
    return permission_denied_.load(std::memory_order_relaxed);
  }
  void RoundClosed(const core::RoundClosed& closed);

  // Writes the summaries of the window if it is over (or `force`). Called
  // periodically by the server's housekeeping, and at shutdown.
  void Flush(bool force = false);

 private:
  const absl::Duration window_;
  const std::function<absl::Time()> now_;
  std::atomic<std::uint64_t> unauthenticated_{0};
  std::atomic<std::uint64_t> permission_denied_{0};

  absl::Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_);
  int refusals_logged_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t refusals_dropped_ ABSL_GUARDED_BY(mu_) = 0;
  // Rounds closed in the window.
  std::uint64_t rounds_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t quorum_rounds_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t overflow_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint32_t min_contributors_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint32_t max_contributors_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t first_round_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t last_round_ ABSL_GUARDED_BY(mu_) = 0;
  std::string example_tensor_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> tensors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_EVENT_LOG_H_
