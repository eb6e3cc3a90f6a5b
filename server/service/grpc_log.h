// gRPC's own log lines (gpr_log: failed TLS handshakes, transport errors)
// through the daemon's logger, at most kLinesPerWindow per window: a flood
// of bad handshakes must not flood the log. What is held back is counted
// and said in one line when the next window begins.
#ifndef WEIGHTD_SERVER_SERVICE_GRPC_LOG_H_
#define WEIGHTD_SERVER_SERVICE_GRPC_LOG_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace weightd::service {

// Rate limit of one stream of log lines. Thread-safe.
class LogRateLimit {
 public:
  static constexpr int kLinesPerWindow = 20;

  explicit LogRateLimit(absl::Duration window) : window_(window) {}

  struct Decision {
    bool show = false;
    // Lines held back in the window that just ended (said before this
    // line), or 0.
    std::uint64_t held_back = 0;
  };
  // Whether a line logged at `now` is shown.
  Decision Admit(absl::Time now);

 private:
  const absl::Duration window_;
  absl::Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int shown_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t held_back_ ABSL_GUARDED_BY(mu_) = 0;
};

// From now on, gRPC's log lines go to spdlog as "grpc: MESSAGE (FILE:LINE)":
// gRPC's errors (about a peer, mostly) as warnings, the rest as debug; at
// most LogRateLimit::kLinesPerWindow per 10 s. Call once, before gRPC
// logs (gRPC keeps one log function per process).
void RouteGrpcLogs();

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_GRPC_LOG_H_
