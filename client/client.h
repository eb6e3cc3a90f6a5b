// weightd::Client: a worker's connection to a weightd server.
//
// Typical worker loop (sync mode):
//   auto client = weightd::Client::Connect({.address = "127.0.0.1:7070",
//                                           .worker_id = "trainer-0"});
//   std::vector<weightd::TensorRef> tensors = {{"fc1.w", {784, 128}, w1}, ...};
//   (*client)->Join(tensors);            // creates or pulls the shared value
//   for (...) {
//     ... train locally, updating the buffers behind `tensors` ...
//     (*client)->PushPull(tensors, {.weight = samples});  // average in place
//   }
//   (*client)->Leave();
//
// Buffers: every call reads from and writes into the caller's spans; the
// client never keeps its own copy of a tensor. Spans must stay valid for the
// duration of the call only.
//
// Thread safety: a Client is not thread-safe; use one per thread (they may
// share nothing but the server). Its heartbeat thread is internal.
#ifndef WEIGHTD_CLIENT_CLIENT_H_
#define WEIGHTD_CLIENT_CLIENT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/wire_format.h"

namespace grpc {
class ClientContext;
class Status;
}  // namespace grpc

namespace weightd {
namespace v1 {
class JoinResponse;  // The wire types stay out of this header.
class PushHeader;
}  // namespace v1

// A named tensor held by the caller: its shape and its float32 storage.
// `data.size()` must equal the product of `shape` (1 for an empty shape).
struct TensorRef {
  std::string name;
  std::vector<std::int64_t> shape;
  absl::Span<float> data;
};

enum class UpdateKind {
  kWeights,  // The payload is the worker's weights (model averaging).
  kDelta,    // The payload is a change, applied with the server's lr.
};

struct ClientOptions {
  // gRPC target, e.g. "127.0.0.1:7070" or "unix:/run/weightd.sock".
  std::string address;
  // Stable worker name ([A-Za-z0-9_.:/-], at most 256 bytes).
  std::string worker_id;
  // Deadline of each call, including the wait for a sync round to close.
  absl::Duration call_timeout = absl::Minutes(10);
  // How long Connect waits for the server to become reachable.
  absl::Duration connect_timeout = absl::Seconds(30);
  // While joined, a background thread renews the lease every third of the
  // server's lease timeout, so that a worker busy training or waiting for a
  // round is not dropped. Off: only the worker's own calls renew it.
  bool heartbeat = true;
  // Calls failing with UNAVAILABLE (server down or restarting, network) or
  // DEADLINE_EXCEEDED are retried, after an exponential backoff with
  // jitter, for at most this long per call; a resent push keeps its
  // sequence, so the server applies it once. Zero: no retries.
  absl::Duration retry_budget = absl::Minutes(2);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  // Format of the values pushed and pulled (Join's initial values are always
  // float32). 16-bit formats halve the bytes on the wire; the server still
  // averages in float32. See common/wire_format.h.
  WireFormat wire_format = WireFormat::kFloat32;
};

struct PushOptions {
  UpdateKind kind = UpdateKind::kWeights;
  // Weight of this contribution in the mean (e.g. samples seen). > 0.
  double weight = 1.0;
};

// Server-wide figures, from GetStatus.
struct ServerStatus {
  std::uint64_t bytes_received = 0;  // Payload bytes in joins and pushes.
  std::uint64_t bytes_sent = 0;      // Payload bytes in pulls.
  std::uint64_t rounds_closed = 0;   // Over all tensors.
};

// Traffic counters of one client (payload bytes only).
struct ClientStats {
  std::uint64_t bytes_pushed = 0;
  std::uint64_t bytes_pulled = 0;
  // PushPulls whose round moved on without them (answered with the current
  // value instead).
  std::uint64_t rounds_missed = 0;
};

class Client {
 public:
  // Opens a channel to `options.address` and waits up to
  // `options.connect_timeout` for it to connect. UNAVAILABLE if it does not;
  // INVALID_ARGUMENT for a bad worker id.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Declares `tensors` and starts membership. For each tensor the server
  // did not hold yet, the caller's buffer becomes its initial value; for
  // each it held, the shared value is pulled into the caller's buffer.
  // Errors: INVALID_ARGUMENT (bad name/shape/size), ALREADY_EXISTS (a tensor
  // of that name exists with another shape), UNAVAILABLE.
  absl::Status Join(absl::Span<const TensorRef> tensors);

  // Contributes the values in the callers' buffers to the open round of each
  // tensor (sync) or applies them (async). Does not wait for the round.
  // The tensors must have been declared in Join. Transient failures are
  // retried (see ClientOptions); if the server lost this worker's lease
  // (expired, or a restart without snapshot), the client joins again and
  // pushes anew, unless the rounds moved on meanwhile. ABORTED: the round
  // moved on without this push.
  absl::Status Push(absl::Span<const TensorRef> tensors,
                    const PushOptions& options = {});

  // Writes each tensor's value into the caller's buffer. If this client
  // pushed a tensor since it last pulled it, waits (up to call_timeout) for
  // the round of that push to close, so the caller gets the averaged value.
  absl::Status Pull(absl::Span<const TensorRef> tensors);

  // Push, then overwrite the buffers with the result of that round (sync:
  // waits for it to close) in one call. Retries and re-joins as Push. If
  // the round moved on without this push (ABORTED: it closed without this
  // worker, or the server restarted from an older snapshot), the buffers
  // get the current shared value instead and the call returns OK, so a
  // training loop simply continues.
  absl::Status PushPull(absl::Span<const TensorRef> tensors,
                        const PushOptions& options = {});

  // Returns once `count` workers (this one included) have called Barrier
  // with the same `name`, or at call_timeout (DEADLINE_EXCEEDED). E.g. a sync
  // job calls Barrier("start", workers) after Join so that its first round
  // averages every worker. FAILED_PRECONDITION before Join; INVALID_ARGUMENT
  // for a bad name or a count other than the waiting workers'.
  absl::Status Barrier(absl::string_view name, int count);

  // Ends membership; later calls need a new Join.
  absl::Status Leave();

  // Server-wide traffic and round counters.
  absl::StatusOr<ServerStatus> GetStatus();

  // Version of the value of `name` the caller last received or created.
  // NOT_FOUND if this client has not joined with it.
  absl::StatusOr<std::uint64_t> Version(const std::string& name) const;

  // True once a heartbeat was refused: the server dropped this worker's
  // lease (it was silent too long, or the server restarted). Join again.
  bool lease_lost() const { return lease_lost_.load(); }

  const ClientStats& stats() const { return stats_; }
  const std::string& worker_id() const { return worker_id_; }

 private:
  struct Channel;
  struct Tracked {
    std::vector<std::int64_t> shape;
    std::uint64_t elements = 0;
    std::uint64_t version = 0;      // Of the value the caller holds.
    std::uint64_t wait_version = 0; // Pull waits for this (after a push).
  };

  // A tensor for Join: its value is sent only if not empty.
  struct Declared {
    std::string name;
    std::vector<std::int64_t> shape;
    absl::Span<const float> value;
  };
  static constexpr int kMaxRejoins = 3;

  Client(ClientOptions options, std::unique_ptr<Channel> channel);
  // One attempt of each call; the public calls wrap them in Retrying().
  absl::Status JoinOnce(absl::Span<const Declared> declared,
                        v1::JoinResponse* response);
  absl::Status PushOnce(absl::Span<const TensorRef> tensors,
                        const PushOptions& options, bool pull_result,
                        std::uint64_t sequence);
  absl::Status PullOnce(absl::Span<const TensorRef> tensors);
  // Runs `attempt` until it succeeds, fails for good, or the retry budget
  // is spent.
  absl::Status Retrying(absl::FunctionRef<absl::Status()> attempt);
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
  // The tensors now hold `versions`; pulls need not wait for them.
  void RecordPulled(absl::Span<const TensorRef> tensors,
                    const std::vector<std::uint64_t>& versions);
  absl::Status CheckRefs(absl::Span<const TensorRef> tensors) const;
  absl::Status DoPush(absl::Span<const TensorRef> tensors,
                      const PushOptions& options, bool pull_result);

  // Heartbeats for `lease` every `interval` until StopHeartbeat().
  void StartHeartbeat(std::uint64_t lease, absl::Duration interval);
  void StopHeartbeat();

  ClientOptions options_;
  std::string worker_id_;
  std::unique_ptr<Channel> channel_;
  std::uint64_t lease_id_ = 0;
  std::uint64_t chunk_bytes_ = 0;
  std::uint64_t next_sequence_ = 1;
  bool sync_mode_ = true;
  absl::flat_hash_map<std::string, Tracked> tracked_;
  ClientStats stats_;

  std::thread heartbeat_;
  absl::Mutex heartbeat_mu_;
  bool heartbeat_stop_ ABSL_GUARDED_BY(heartbeat_mu_) = false;
  std::atomic<bool> lease_lost_{false};
  absl::BitGen bitgen_;  // Backoff jitter.
};

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_CLIENT_H_
