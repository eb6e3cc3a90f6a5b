// ResultStream: the write half of a sync-mode PushPull, which streams the
// result of the push's round while the round is still open: each message
// goes out as soon as the core has published the chunks it carries (every
// member of the round delivered its copy of them), so that the pulls
// overlap the pushes instead of following them.
#ifndef WEIGHTD_SERVER_SERVICE_RESULT_STREAM_H_
#define WEIGHTD_SERVER_SERVICE_RESULT_STREAM_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/tensor_stream.h"
#include "common/wire_format.h"
#include "server/core/tensor_store.h"
#include "server/service/reactor_wait.h"
#include "server/service/weightd_service.h"

namespace weightd::service {

// Drives the writes and the one Finish of a bidi reactor whose read half
// feeds a core::PushSession. Thread-safe: Start() and PushEnded() come from
// the read side, OnWriteDone() and OnCancel() from gRPC, a core wait's
// callback from the thread that publishes; one of them at a time does the
// work (writes, waits, the Finish), the others hand it over. The reactor
// must outlive it (a reactor owns its ResultStream).
class ResultStream {
 public:
  using Reactor = grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;

  // One tensor of the push: its name and the round the push counts in.
  struct Tensor {
    std::string name;
    std::uint64_t round = 0;
  };

  // `before_finish` (may be null) runs once, just before the call is
  // finished, on the thread that finishes it.
  ResultStream(Reactor* reactor, core::TensorStore* store,
               PayloadCounters* payload, CallInfo call,
               std::function<void()> before_finish = nullptr);
  ResultStream(const ResultStream&) = delete;
  ResultStream& operator=(const ResultStream&) = delete;

  // Whether a push of `tensors` can stream its result while its rounds are
  // open: a sync store, and every round named is the tensor's open one (a
  // resent push to a closed round, or one that a restored tensor counts in
  // an earlier round, waits for the round to close instead).
  static bool Applies(const core::TensorStore& store,
                      const std::vector<Tensor>& tensors);

  // Starts streaming the results, in `format`, small chunks in batches if
  // `batches`. Waits keep the lease `lease_id` alive.
  void Start(std::vector<Tensor> tensors, WireFormat format, bool batches,
             std::uint64_t lease_id);
  // The push ended: OK with its results (each must be the round streamed),
  // or its error, which ends the call once no write is in flight.
  void PushEnded(absl::StatusOr<std::vector<core::PushResult>> results);
  // From the reactor's OnWriteDone and OnCancel.
  void OnWriteDone(bool ok);
  void OnCancel();

 private:
  enum class Step { kNone, kWrite, kWait, kCancelWait, kFinish };

  // Does what the state calls for, unless another thread is doing it, in
  // which case that thread does it again after its current step. `change`
  // (may be null) updates the state first, under the lock.
  template <typename Change>
  void Pump(Change change);
  // Decides the next step, under the lock.
  Step DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True if every chunk of the next message is published; otherwise sets
  // what to wait for (`*wait_bytes` of tensor `*wait_tensor`), or sets
  // error_ and *wait_bytes = 0.
  bool NextReady(std::size_t* wait_tensor, std::uint64_t* wait_bytes);
  // Whether chunk `c` of the next message is published (asks the store
  // unless results_ says so already); false and error_ if the store
  // refuses.
  bool ChunkReady(const PlannedChunk& c);
  void Write();
  void StartWait(std::size_t tensor, std::uint64_t bytes);
  void Finish();

  Reactor* const reactor_;
  core::TensorStore* const store_;
  PayloadCounters* const payload_;
  const CallInfo call_;
  const std::function<void()> before_finish_;

  // Set by Start() before anything reads them; then only the pumping
  // thread touches them.
  std::vector<Tensor> tensors_;
  std::vector<core::RoundResult> results_;  // Each tensor's round result.
  std::optional<TensorStreamWriter> writer_;
  grpc::ByteBuffer header_;
  std::uint64_t lease_id_ = 0;
  WireFormat format_ = WireFormat::kFloat32;
  grpc::ByteBuffer message_;  // The write in flight.
  // How many chunks of the next message (writer_->Peek()) are known to be
  // published.
  std::size_t ready_chunks_ = 0;

  absl::Mutex mu_;
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool header_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;  // wait_ was cancelled.
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool sent_all_ ABSL_GUARDED_BY(mu_) = false;
  // Set when the push ended (its status), or when the call must end with
  // an error of the write half (a wait refused, the client went away).
  std::optional<absl::Status> push_status_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> error_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<core::Wait> wait_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_RESULT_STREAM_H_
