// weightd::ShardClient: a worker's connection to one weightd server (one
// shard), with its lease, retries, re-joins and heartbeat. weightd::Client
// (client/client.h) holds one per shard and splits each call over them;
// this class is internal to the client library.
//
// Its member definitions are spread by concern: client/shard_client.cc
// (push, pull, barriers, leave, retries), client/join.cc (join, re-join),
// client/channel.cc (connecting, per-call deadlines), client/heartbeat.cc
// (the heartbeat thread, progress reports). A call's stream goes through
// client/stream_io.h; the retry schedule is client/retry.h's.
#ifndef WEIGHTD_CLIENT_SHARD_CLIENT_H_
#define WEIGHTD_CLIENT_SHARD_CLIENT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/retry.h"
#include "client/shard_plan.h"
#include "client/types.h"
#include "common/policy_spec.h"
#include "common/wire_format.h"

namespace grpc {
class ClientContext;
class Status;
}  // namespace grpc

namespace weightd {
class Segment;
namespace v1 {
class JoinResponse;  // The wire types stay out of this header.
class PushHeader;
class PushResponse;
}  // namespace v1

class ShardClient {
 public:
  // Opens a channel to `address` (one gRPC target) and waits up to
  // `options.connect_timeout` for it to connect, saying so through
  // options.log while it waits. UNAVAILABLE if it does not; CANCELLED;
  // INVALID_ARGUMENT for a bad worker id. `instance` identifies the client
  // process to the server (v1::JoinHeader.instance); every shard of one
  // Client gets the same.
  static absl::StatusOr<std::unique_ptr<ShardClient>> Connect(
      const ClientOptions& options, const std::string& address,
      std::uint64_t instance);

  ~ShardClient();
  ShardClient(const ShardClient&) = delete;
  ShardClient& operator=(const ShardClient&) = delete;

  // The shard layout the server reported at Connect. Every later Join
  // checks that it still reports the same (FAILED_PRECONDITION if not: the
  // deployment changed under the job).
  const ShardLayout& layout() const { return layout_; }
  const std::string& address() const { return address_; }

  // The calls of weightd::Client (client/client.h documents each), on this
  // server alone. Join may declare no tensors: the worker then holds only
  // a lease, for barriers. `whole_shapes`, empty or one per tensor: the
  // shape of the whole tensor each one is a part of (empty: not a part).
  absl::Status Join(
      absl::Span<const TensorRef> tensors,
      absl::Span<const std::vector<std::int64_t>> whole_shapes = {});
  absl::Status Push(absl::Span<const TensorRef> tensors,
                    const PushOptions& options = {});
  absl::Status Pull(absl::Span<const TensorRef> tensors);
  absl::Status PushPull(absl::Span<const TensorRef> tensors,
                        const PushOptions& options = {});
  absl::Status Barrier(absl::string_view name, int count,
                       std::uint32_t* arrival = nullptr,
                       absl::Duration timeout = absl::InfiniteDuration());
  absl::Status Leave();
  absl::StatusOr<ServerStatus> GetStatus();
  absl::StatusOr<std::uint64_t> Version(const std::string& name) const;
  absl::StatusOr<SharedBuffer> SharedBufferFor(const std::string& name);
  bool lease_lost() const { return lease_lost_.load(); }
  const ClientStats& stats() const { return stats_; }
  const std::string& worker_id() const { return worker_id_; }

 private:
  struct Channel;
  struct Tracked {
    std::vector<std::int64_t> shape;
    std::vector<std::int64_t> whole_shape;  // If it is a part (see Join).
    PolicySpec policy;  // As declared (declared again by Rejoin).
    // Its policy's consistency is sync (rounds); else each push is applied
    // alone and its version counts pushes.
    bool sync = true;
    std::uint64_t elements = 0;
    std::uint64_t version = 0;       // Of the value the caller holds.
    std::uint64_t wait_version = 0;  // Pull waits for this (after a push).
  };

  // A tensor for Join: its value is sent only if not empty.
  struct Declared {
    std::string name;
    std::vector<std::int64_t> shape;
    absl::Span<const float> value;
    std::vector<std::int64_t> whole_shape;
    PolicySpec policy;
  };
  static constexpr int kMaxRejoins = 3;
  // How long one attempt of a call waits for the channel to connect
  // (AwaitConnection) before it is made anyway.
  static constexpr absl::Duration kAwaitConnection = absl::Seconds(5);

  // A call waiting for others (a round, a barrier), for progress reports.
  struct Watch {
    bool active = false;
    std::string what;
    absl::Time since;
    absl::Time last_report;
    std::vector<std::pair<std::string, std::uint64_t>> rounds;  // Awaited.
    std::string barrier;
    int barrier_count = 0;
  };
  class Watching;  // Sets and clears watch_.

  ShardClient(ClientOptions options, std::string address,
              std::unique_ptr<Channel> channel, std::uint64_t instance);
  // A channel to `address` (one gRPC target) with the client's message
  // sizes, reconnect pacing, keepalives and credentials (options.tls,
  // options.token). It connects lazily: Connect waits for it.
  // INVALID_ARGUMENT for credentials that cannot work
  // (client/credentials.h). (client/channel.cc)
  static absl::StatusOr<std::unique_ptr<Channel>> OpenChannel(
      const ClientOptions& options, const std::string& address);
  void Log(absl::string_view message) const;
  // While the channel fails to connect: gRPC's reason, from one quick call
  // that does not wait for the channel, ended by `deadline` at the latest
  // ("failed to connect to all addresses; last error: ...").
  // (client/channel.cc)
  std::string WhyUnreachable(absl::Time deadline) const;
  bool Cancelled() const {
    return options_.cancellation != nullptr &&
           options_.cancellation->cancelled();
  }
  // Join, retried for options_.held_id_wait while the server says another
  // process holds the worker id.
  absl::Status JoinRetrying(absl::Span<const Declared> declared,
                            v1::JoinResponse* response);
  // Logs a server that went back from version `before` to `now` of tensor
  // `name` (restored from an older snapshot).
  void ReportRollback(const std::string& name, std::uint64_t before,
                      std::uint64_t now) const;
  // While it lives, options_.cancellation cancels `context`.
  Cancellation::Registration CancelsOnCancel(
      grpc::ClientContext& context) const;
  // Sleeps for `duration`; false, early, once options_.cancellation is
  // cancelled.
  bool Sleep(absl::Duration duration);
  // From the heartbeat thread: says what a long wait waits for.
  void ReportProgress();
  // One attempt of each call; the public calls wrap them in Retrying().
  absl::Status JoinOnce(absl::Span<const Declared> declared,
                        v1::JoinResponse* response);
  // `held[i]`: the float32 bytes at the start of tensor i's buffer that an
  // earlier attempt of this push wrote its result over (sent as
  // v1::PushedTensor.held_bytes); raised to what this attempt's result
  // wrote, whether or not it succeeds.
  absl::Status PushOnce(absl::Span<const TensorRef> tensors,
                        const PushOptions& options, bool pull_result,
                        std::uint64_t sequence,
                        std::vector<std::uint64_t>& held);
  absl::Status PullOnce(absl::Span<const TensorRef> tensors);
  // The same through the segment (UsesSegment). (client/segment_calls.cc)
  // A PushPull of a tensor kept in the segment (SharedBufferFor) has the
  // result written over its values by the daemon: after a failed attempt,
  // held[i] becomes the whole tensor for it (see PushOnce).
  absl::Status PushOnceSegment(absl::Span<const TensorRef> tensors,
                               const PushOptions& options, bool pull_result,
                               std::uint64_t sequence,
                               std::vector<std::uint64_t>& held);
  absl::Status PullOnceSegment(absl::Span<const TensorRef> tensors);
  // Whether every one of `tensors` has a place in an attached segment.
  bool UsesSegment(absl::Span<const TensorRef> tensors) const;
  // After a Join: hands the daemon a segment for `declared` (reusing the
  // one it has if it fits), or goes without one; logs which path the
  // worker's values take. (client/segment_calls.cc)
  // `places`: (name, float32 bytes) of each tensor.
  void AttachSegment(
      const std::vector<std::pair<std::string, std::uint64_t>>& places);
  // After a segment call was refused FAILED_PRECONDITION: the daemon may
  // have lost the segment (it restarted and restored the lease from a
  // snapshot). Hands it over again; true if the daemon took it.
  bool Reattach();
  // Runs a segment call; refused FAILED_PRECONDITION, runs it once more if
  // Reattach() handed the segment over again.
  absl::Status OnSegment(absl::FunctionRef<absl::Status()> call);
  // Logs which path the worker's values take (`attached`: the outcome of
  // AttachSegment), when that changed.
  void LogPath(const absl::Status& attached);
  // The header of a push of `tensors` with `sequence` (`held`: as
  // PushOnce's).
  void FillPushHeader(absl::Span<const TensorRef> tensors,
                      const PushOptions& options, std::uint64_t sequence,
                      absl::Span<const std::uint64_t> held,
                      v1::PushHeader* header) const;
  // Takes in the server's answer to a Push of `count` tensors.
  absl::Status RecordPushed(const v1::PushResponse& response,
                            std::size_t count);
  // Returns once the channel is connected or `limit` passed; false once
  // options_.cancellation is cancelled. While it waits this thread polls
  // the channel, which is what lets gRPC see its connection attempts
  // complete.
  bool AwaitConnection(absl::Duration limit);
  // Runs `attempt` until it succeeds, fails for good, or the retry budget
  // is spent; CANCELLED once options_.cancellation is. `what` names the
  // call in messages. (RetryWithBackoff, client/retry.h, with options_.)
  absl::Status Retrying(absl::string_view what,
                        absl::FunctionRef<absl::Status()> attempt);
  // A unary call, each attempt with a fresh context and the call deadline;
  // errors are prefixed with `name`.
  absl::Status UnaryWithRetries(
      absl::string_view name,
      absl::FunctionRef<grpc::Status(grpc::ClientContext*)> call);
  // True if the server no longer knows this client's lease.
  bool LeaseLost();
  // Joins again with every tracked tensor (values from `in_hand`).
  absl::Status Rejoin(absl::Span<const TensorRef> in_hand);
  std::chrono::system_clock::time_point CallDeadline() const;
  // The tensors now hold `versions`; pulls need not wait for them. A
  // version below the tracked one plus `ahead` (1 for a push's result, 0
  // for a pull) means the server's rounds went back: reported.
  void RecordPulled(absl::Span<const TensorRef> tensors, std::uint64_t ahead,
                    const std::vector<std::uint64_t>& versions);
  absl::Status CheckRefs(absl::Span<const TensorRef> tensors) const;
  absl::Status DoPush(absl::Span<const TensorRef> tensors,
                      const PushOptions& options, bool pull_result);

  // Heartbeats for `lease` every `interval` until StopHeartbeat().
  void StartHeartbeat(std::uint64_t lease, absl::Duration interval);
  void StopHeartbeat();

  ClientOptions options_;
  std::string address_;
  ShardLayout layout_;
  std::string worker_id_;
  std::unique_ptr<Channel> channel_;
  std::uint64_t lease_id_ = 0;
  std::uint64_t chunk_bytes_ = 0;
  std::uint64_t next_sequence_ = 1;
  absl::flat_hash_map<std::string, Tracked> tracked_;
  // The same-host data path, once attached (null: the stream calls).
  // Shared with the SharedBuffers lent out of it.
  std::shared_ptr<Segment> segment_;
  bool segment_attached_ = false;  // The daemon maps segment_ now.
  std::string logged_path_;        // The last LogPath line.
  ClientStats stats_;

  const std::uint64_t instance_;
  mutable absl::Mutex watch_mu_;
  Watch watch_ ABSL_GUARDED_BY(watch_mu_);

  std::thread heartbeat_;
  absl::Mutex heartbeat_mu_;
  bool heartbeat_stop_ ABSL_GUARDED_BY(heartbeat_mu_) = false;
  std::atomic<bool> lease_lost_{false};
  SystemRetryEnv retry_env_;  // Clock, sleeps and jitter of Retrying().
};

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_SHARD_CLIENT_H_
