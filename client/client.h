// weightd::Client: a worker's connection to weightd, one server or several
// shards.
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
// Buffers: every call reads from and writes into the caller's spans. Spans
// must stay valid for the duration of the call only. On the stream path the
// client keeps no copy of a tensor; on the same-host path
// (ClientOptions::shared_memory) its segment holds one, unless the caller
// keeps the tensor there (SharedBufferFor).
//
// Shards: given several servers (ClientOptions::address), the client places
// each tensor, or each row range of a large one, on one shard
// (client/shard_plan.h) and issues the per-shard calls of Join, Push, Pull
// and PushPull in parallel; the caller still pushes and pulls whole
// tensors. Every shard runs its rounds independently. The worker joins
// every shard (with no tensors where it holds none) and Barrier runs on
// shard 0. Each shard's calls are retried and re-joined on their own, so a
// restarted shard costs only its own part. A call that fails on one shard
// (the error names it) may have taken effect on the others: e.g. a Push
// refused by one shard was counted by the rest, whose rounds then close
// without needing it again.
//
// Thread safety: a Client is not thread-safe; use one per thread (they may
// share nothing but the servers). Its heartbeat threads are internal.
#ifndef WEIGHTD_CLIENT_CLIENT_H_
#define WEIGHTD_CLIENT_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/shard_plan.h"
#include "client/types.h"

namespace weightd {

class ShardClient;

class Client {
 public:
  // Connects to every server of `options.address`, waiting up to
  // `options.connect_timeout` for each, and checks that they form one
  // shard layout. UNAVAILABLE if a server cannot be reached;
  // INVALID_ARGUMENT for a bad worker id or address; FAILED_PRECONDITION if
  // the servers do not form one layout (a missing shard, two servers with
  // one index, a server started with another --shard_count).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Declares `tensors` and starts membership. For each tensor the server
  // did not hold yet, the caller's buffer becomes its initial value; for
  // each it held, the shared value is pulled into the caller's buffer.
  // Errors: INVALID_ARGUMENT (bad name/shape/size), ALREADY_EXISTS (a tensor
  // of that name exists with another shape), UNAVAILABLE,
  // FAILED_PRECONDITION (a shard now reports another layout). A Join that
  // every shard refused changes nothing; one refused by some shards only
  // is left on the others, and the client must Join again.
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
  // averages every worker. A worker that comes after `count` others were
  // released (one more than the job expected, or one restarted) passes at
  // once. `*arrival`, if given, gets the order this worker passed in
  // (v1::BarrierResponse.arrival: distinct among the workers of a job, so a
  // rank). DEADLINE_EXCEEDED, saying how many entered, if fewer than
  // `count` did within `timeout` (and call_timeout). FAILED_PRECONDITION
  // before Join; INVALID_ARGUMENT for a bad name or a count other than the
  // waiting workers'; CANCELLED.
  absl::Status Barrier(absl::string_view name, int count,
                       std::uint32_t* arrival = nullptr,
                       absl::Duration timeout = absl::InfiniteDuration());

  // Ends membership on every shard; later calls need a new Join.
  absl::Status Leave();

  // Traffic and round counters, summed over the shards.
  absl::StatusOr<ServerStatus> GetStatus();

  // Version of the value of `name` the caller last received or created (of
  // its first part, for a tensor split over shards: the parts' rounds close
  // independently). NOT_FOUND if this client has not joined with it.
  absl::StatusOr<std::uint64_t> Version(const std::string& name) const;

  // Tensor `name`'s place in this worker's shared-memory segment (see
  // ClientOptions::shared_memory), to keep its values in: Push, Pull and
  // PushPull of a TensorRef whose data is this span copy nothing in this
  // process (the daemon reads the values there and writes the result
  // there). It holds what last moved through it (zeros at first): copy the
  // values in before the first push. If the client later falls back to
  // the stream calls (the daemon restarted and cannot map it), it is an
  // ordinary buffer. FAILED_PRECONDITION when there is none: the worker
  // uses the stream path to that tensor's server, a 16-bit wire format
  // (the segment holds encoded values), or a tensor split over shards.
  // NOT_FOUND if not declared in Join.
  absl::StatusOr<SharedBuffer> SharedBufferFor(const std::string& name);

  // True once a heartbeat was refused on any shard: it dropped this
  // worker's lease (silent too long, or restarted). Join again.
  bool lease_lost() const;

  // Summed over the shards.
  ClientStats stats() const;
  const std::string& worker_id() const { return options_.worker_id; }
  // Servers in shard order (one for an unsharded deployment).
  std::vector<std::string> servers() const;

 private:
  Client(ClientOptions options,
         std::vector<std::unique_ptr<ShardClient>> shards);

  // The calls of one client call, one list per shard (parts of the caller's
  // tensors); INVALID_ARGUMENT / NOT_FOUND as ShardClient's for buffers
  // that do not match their declaration.
  absl::StatusOr<std::vector<std::vector<TensorRef>>> Split(
      absl::Span<const TensorRef> tensors) const {
    return Split(placements_, tensors);
  }
  absl::StatusOr<std::vector<std::vector<TensorRef>>> Split(
      const absl::flat_hash_map<std::string, std::vector<Placement>>&
          placements,
      absl::Span<const TensorRef> tensors) const;
  // Runs `call` for every shard with a non-empty list (every shard if
  // `all`), in parallel; the first error in shard order, naming its shard.
  // `results`, if given, gets each shard's status (OK where not called).
  absl::Status OnShards(const std::vector<std::vector<TensorRef>>& lists,
                        bool all,
                        absl::FunctionRef<absl::Status(
                            std::size_t shard, absl::Span<const TensorRef>)>
                            call,
                        std::vector<absl::Status>* results = nullptr);

  ClientOptions options_;
  std::vector<std::unique_ptr<ShardClient>> shards_;  // In shard order.
  // Each joined tensor's parts, from Join.
  absl::flat_hash_map<std::string, std::vector<Placement>> placements_;
};

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_CLIENT_H_
