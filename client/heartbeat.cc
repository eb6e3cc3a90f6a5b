// ShardClient's heartbeat thread: it keeps the lease alive, notices a lease
// the server dropped, and reports what a long wait waits for.
#include <grpcpp/grpcpp.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/channel.h"
#include "client/shard_client.h"
#include "common/duration.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {

void ShardClient::StartHeartbeat(std::uint64_t lease, absl::Duration interval) {
  StopHeartbeat();
  {
    absl::MutexLock lock(&heartbeat_mu_);
    heartbeat_stop_ = false;
  }
  lease_lost_ = false;
  heartbeat_ = std::thread([this, lease, interval] {
    v1::HeartbeatRequest request;
    request.set_lease_id(lease);
    for (;;) {
      {
        absl::MutexLock lock(&heartbeat_mu_);
        if (heartbeat_mu_.AwaitWithTimeout(absl::Condition(&heartbeat_stop_),
                                           interval)) {
          return;
        }
      }
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           absl::ToChronoMilliseconds(interval));
      // A cancelled client stops at once, not after a beat to a frozen
      // server.
      const Cancellation::Registration cancel = CancelsOnCancel(context);
      v1::HeartbeatResponse response;
      const grpc::Status status =
          channel_->stub->Heartbeat(&context, request, &response);
      if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        lease_lost_ = true;
        return;
      }
      // Other failures (server restarting, network) are retried next beat.
      ReportProgress();
    }
  });
}

void ShardClient::StopHeartbeat() {
  if (!heartbeat_.joinable()) return;
  {
    absl::MutexLock lock(&heartbeat_mu_);
    heartbeat_stop_ = true;
  }
  heartbeat_.join();
}

void ShardClient::ReportProgress() {
  Watch watch;
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&watch_mu_);
    if (!watch_.active ||
        now - watch_.last_report < options_.progress_interval) {
      return;
    }
    watch_.last_report = now;
    watch = watch_;
  }
  const std::string waited = HumanDuration(now - watch.since);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  v1::GetStatusRequest request;
  request.set_include_tensors(!watch.rounds.empty());
  v1::GetStatusResponse status;
  const bool known = channel_->stub->GetStatus(&context, request, &status).ok();
  if (!watch.barrier.empty()) {
    std::string entered = "?";
    for (const v1::BarrierInfo& b : status.barriers()) {
      if (b.name() == watch.barrier) entered = absl::StrCat(b.waiting());
    }
    return Log(absl::StrCat("waiting at barrier ", watch.barrier, " on ",
                            address_, ": ", known ? entered : "?", " of ",
                            watch.barrier_count, " workers have entered (",
                            waited, " so far)"));
  }
  for (const auto& [name, round] : watch.rounds) {
    for (const v1::TensorInfo& t : status.tensors()) {
      if (t.name() != name || t.version() > round) continue;
      return Log(absl::StrCat(watch.what, " waiting for round ", round,
                              " of tensor ", name, " on ", address_, ": ",
                              t.contributed(), " of ", t.participants(),
                              " workers have pushed (", waited, " so far)"));
    }
  }
  Log(absl::StrCat(watch.what, " waiting on ", address_, " (", waited,
                   " so far)"));
}

bool ShardClient::LeaseLost() {
  if (lease_lost_) return true;
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  v1::HeartbeatRequest request;
  request.set_lease_id(lease_id_);
  v1::HeartbeatResponse response;
  return channel_->stub->Heartbeat(&context, request, &response).error_code() ==
         grpc::StatusCode::FAILED_PRECONDITION;
}

}  // namespace weightd
