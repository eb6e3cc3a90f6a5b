// ReactorWait: a core wait (core::Wait: a round, versions, a barrier) run
// on behalf of a gRPC server reactor, finishing the reactor exactly once
// whichever comes first: the wait firing or the call being cancelled.
// CallInfo: which call a reactor serves, to answer and log it.
#ifndef WEIGHTD_SERVER_SERVICE_REACTOR_WAIT_H_
#define WEIGHTD_SERVER_SERVICE_REACTOR_WAIT_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "server/core/tensor_store.h"
#include "server/service/event_log.h"

namespace weightd::service {

// How a core wait reports that it fired.
using WaitDone = std::function<void(absl::Status)>;
// Registers a core wait that reports to the WaitDone given.
using RegisterWait =
    std::function<absl::StatusOr<std::unique_ptr<core::Wait>>(WaitDone)>;

// Which call a reactor serves, for the log of refused calls. The peer is
// looked up only for a refusal: a string per call is not for the push
// path. Copyable; `log` and `context` must outlive the call.
struct CallInfo {
  EventLog* log;
  const char* name;
  const grpc::CallbackServerContext* context;  // Lives until the call's end.

  // The wire status of a call that ends with `status`, logged if refused.
  // Call before finishing the call.
  grpc::Status Answer(const absl::Status& status) const {
    if (!status.ok()) log->Refused(name, context->peer(), status);
    return ToGrpcStatus(status);
  }
};

// Runs one core wait on behalf of a reactor whose Finish must be called
// exactly once, while the call's cancellation may race with the wait
// firing. `Reactor` is any server reactor (unary, write or bidi: it needs
// Finish(grpc::Status), and StartWriteAndFinish for WriteAndFinishOnce);
// `Call` turns the final absl::Status into the wire status (CallInfo; a
// fake in tests). Thread-safe: Start(), OnCancel() and the wait's callback
// may run on different threads; every Finish path goes through one
// mutex-guarded flag. Holds `reactor`, which must outlive it (a reactor
// owns its ReactorWait).
template <typename Reactor, typename Call = CallInfo>
class ReactorWait {
 public:
  ReactorWait(Reactor* reactor, Call call)
      : reactor_(reactor), call_(std::move(call)) {}
  ReactorWait(const ReactorWait&) = delete;
  ReactorWait& operator=(const ReactorWait&) = delete;

  // Registers the wait; an error finishes the call with it.
  using Register = RegisterWait;

  // Registers the wait through `start`; `ready` runs once it fires (also
  // when it fires inside `start`, but only after `start` returned), unless
  // the call was cancelled first, in which case the call finishes with
  // CANCELLED. `ready` must end in a Finish...Once() call, or Start the next
  // wait of a sequence (a push's turn, then its result's version).
  void Start(const Register& start, WaitDone ready) {
    {
      absl::MutexLock lock(&mu_);
      started_ = false;  // A new wait: the one before it fired.
      early_.reset();
    }
    ready_ = std::move(ready);
    auto wait = start([this](absl::Status s) { OnFired(std::move(s)); });
    if (!wait.ok()) return FinishOnce(wait.status());
    std::optional<absl::Status> fired;
    bool cancelled = false;
    std::unique_ptr<core::Wait> previous;  // Destroyed outside the lock.
    {
      absl::MutexLock lock(&mu_);
      previous = std::exchange(wait_, std::move(*wait));
      started_ = true;
      fired = std::move(early_);
      // Decided under the lock: once started_ is set another thread may
      // fire the wait and finish the call (the reactor is then deleted; a
      // later Start runs on a waker's thread, which holds no reference to
      // it). A wait cancelled here never fires, so only this thread
      // finishes.
      if (!fired.has_value() && cancelled_) cancelled = wait_->Cancel();
    }
    if (fired.has_value()) return std::exchange(ready_, nullptr)(*fired);
    if (cancelled) {
      FinishOnce(absl::CancelledError("the call was cancelled while waiting"));
    }
  }

  // From the reactor's OnCancel; any thread, before or after Start().
  void OnCancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!started_) return;  // Start() will see cancelled_.
    }
    CancelWait();
  }

  // Writes the last message and finishes with OK, unless the call was
  // finished already (a write reactor's). The last touch of this object.
  template <typename Message>
  void WriteAndFinishOnce(const Message* last) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    reactor_->StartWriteAndFinish(last, grpc::WriteOptions(), grpc::Status::OK);
  }

  // Finishes the call unless it already was. The last touch of this object.
  void FinishOnce(const absl::Status& status) {
    FinishOnce(status, [] {});
  }

  // The same, running `respond` first if the call was not finished yet (a
  // unary call's response is written there: never once gRPC may have
  // released it).
  void FinishOnce(const absl::Status& status,
                  absl::FunctionRef<void()> respond) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    respond();
    reactor_->Finish(call_.Answer(status));
  }

 private:
  // Cancels the current wait (core::Wait::Cancel calls nothing back, so it
  // may run under mu_).
  void CancelWait() {
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      cancelled = wait_ != nullptr && wait_->Cancel();
    }
    if (cancelled) {
      FinishOnce(absl::CancelledError("the call was cancelled while waiting"));
    }
  }

  void OnFired(absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (!started_) {  // Fired inside start(): Start() continues.
        early_ = std::move(status);
        return;
      }
    }
    // Taken out first: `ready` may Start the next wait, which sets ready_.
    std::exchange(ready_, nullptr)(status);
  }

  Reactor* const reactor_;
  const Call call_;
  WaitDone ready_;  // Set by Start() before its wait can fire.
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> early_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<core::Wait> wait_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_REACTOR_WAIT_H_
