#include "server/service/result_stream.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/chunk_codec.h"
#include "common/wire.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd::service {

ResultStream::ResultStream(Reactor* reactor, core::TensorStore* store,
                           PayloadCounters* payload, CallInfo call,
                           std::function<void()> before_finish)
    : reactor_(reactor),
      store_(store),
      payload_(payload),
      call_(call),
      before_finish_(std::move(before_finish)) {}

bool ResultStream::Applies(const core::TensorStore& store,
                           const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) {
    absl::StatusOr<core::TensorInfo> info =
        store.Describe(t.name, /*with_policy=*/false);
    if (!info.ok() || info->version != t.round ||
        info->consistency != core::Mode::kSync) {
      return false;
    }
  }
  return true;
}

void ResultStream::Start(std::vector<Tensor> tensors, WireFormat format,
                         bool batches, std::uint64_t lease_id) {
  tensors_ = std::move(tensors);
  lease_id_ = lease_id;
  format_ = format;
  absl::Status error;
  v1::PullResponse header;
  std::vector<OutgoingTensor> outgoing;
  for (const Tensor& t : tensors_) {
    absl::StatusOr<core::TensorInfo> info =
        store_->Describe(t.name, /*with_policy=*/false);
    absl::StatusOr<core::RoundResult> result =
        info.ok() ? store_->ReadResult(t.name, t.round) : info.status();
    if (!result.ok()) {
      error = result.status();
      break;
    }
    v1::TensorInfo* out = header.mutable_header()->add_tensors();
    out->set_name(t.name);
    for (std::int64_t d : info->shape) out->add_shape(d);
    out->set_version(result->version);
    const std::vector<float>& value = *result->value;
    if (format == WireFormat::kFloat32) {
      outgoing.push_back(
          OutgoingTensor::Shared(reinterpret_cast<const char*>(value.data()),
                                 value.size(), result->value));
    } else {
      // Encoded into each message: the result is not final when the
      // stream starts, so there is no encoding of it to share.
      outgoing.push_back(OutgoingTensor::Copied(value));
      outgoing.back().keep = result->value;
    }
    results_.push_back(*std::move(result));
  }
  if (error.ok()) {
    header_ = ToBytes(header);
    writer_.emplace(std::move(outgoing), store_->options().chunk_bytes, format,
                    batches);
  }
  Pump([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    started_ = true;
    if (!error.ok()) error_ = error;
  });
}

void ResultStream::PushEnded(
    absl::StatusOr<std::vector<core::PushResult>> results) {
  absl::Status status = results.status();
  if (status.ok()) {
    for (std::size_t i = 0; i < results->size(); ++i) {
      const core::PushResult& r = (*results)[i];
      if (r.outcome.ready_version != tensors_[i].round + 1) {
        status = absl::AbortedError(absl::StrCat(
            "the push to tensor ", r.name, " counted in round ",
            r.outcome.ready_version - 1, ", not in round ", tensors_[i].round,
            " whose result was streamed: pull the current value"));
        break;
      }
    }
  }
  Pump([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { push_status_ = status; });
}

void ResultStream::OnWriteDone(bool ok) {
  Pump([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = false;
    if (!ok && !error_.has_value()) {
      error_ = absl::CancelledError("the client went away");
    }
  });
}

void ResultStream::OnCancel() {
  Pump([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { cancelled_ = true; });
}

template <typename Change>
void ResultStream::Pump(Change change) {
  {
    absl::MutexLock lock(&mu_);
    change();
    if (pumping_) return;  // The pumping thread sees the change.
    pumping_ = true;
  }
  for (;;) {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      step = DecideLocked();
      if (step == Step::kNone) {
        pumping_ = false;
        return;
      }
    }
    switch (step) {
      case Step::kWrite:
        Write();
        break;
      case Step::kWait: {
        std::size_t tensor = 0;
        std::uint64_t bytes = 0;
        if (NextReady(&tensor, &bytes)) {
          Write();
        } else if (bytes != 0) {
          StartWait(tensor, bytes);
        }
        break;
      }
      case Step::kCancelWait: {
        core::Wait* wait;
        {
          absl::MutexLock lock(&mu_);
          cancelling_ = true;
          wait = wait_.get();
        }
        if (wait->Cancel()) {
          absl::MutexLock lock(&mu_);
          waiting_ = false;
        }  // Else its callback comes, and pumps.
        break;
      }
      case Step::kFinish:
        return Finish();  // The last touch.
      case Step::kNone:
        break;
    }
  }
}

ResultStream::Step ResultStream::DecideLocked() {
  if (!started_ || finished_ || writing_) return Step::kNone;
  const bool failed = cancelled_ || error_.has_value() ||
                      (push_status_.has_value() && !push_status_->ok());
  if (waiting_) return failed && !cancelling_ ? Step::kCancelWait : Step::kNone;
  if (failed) return Step::kFinish;
  if (!header_sent_) return Step::kWrite;
  if (sent_all_) return push_status_.has_value() ? Step::kFinish : Step::kNone;
  return Step::kWait;
}

bool ResultStream::ChunkReady(const PlannedChunk& c) {
  const std::uint64_t needed = c.offset + c.covers;
  core::RoundResult& result = results_[c.tensor_index];
  if (result.ready_bytes >= needed) return true;
  const Tensor& t = tensors_[c.tensor_index];
  absl::StatusOr<core::RoundResult> now = store_->ReadResult(t.name, t.round);
  if (!now.ok()) {
    absl::MutexLock lock(&mu_);
    if (!error_.has_value()) error_ = now.status();
    return false;
  }
  result.ready_bytes = now->ready_bytes;
  return result.ready_bytes >= needed;
}

bool ResultStream::NextReady(std::size_t* wait_tensor,
                             std::uint64_t* wait_bytes) {
  // A message goes out whole, so a batch waits for its last chunk first:
  // one wait per message rather than one per tensor, and the chunks before
  // ready_chunks_ are not looked at again (a batch of 4096 one-float
  // tensors, rescanned after each tensor's round, cost a fifth of the
  // daemon's CPU).
  const std::vector<PlannedChunk>& chunks = writer_->Peek();
  for (; ready_chunks_ < chunks.size(); ++ready_chunks_) {
    if (ChunkReady(chunks[ready_chunks_])) continue;
    const PlannedChunk& last = chunks.back();
    const PlannedChunk& wait = ChunkReady(last) ? chunks[ready_chunks_] : last;
    absl::MutexLock lock(&mu_);
    if (error_.has_value()) {
      *wait_bytes = 0;
      return false;
    }
    *wait_tensor = wait.tensor_index;
    *wait_bytes = wait.offset + wait.covers;
    return false;
  }
  return true;
}

void ResultStream::Write() {
  bool header;
  {
    absl::MutexLock lock(&mu_);
    header = !header_sent_;
    header_sent_ = true;
  }
  std::uint64_t bytes = 0;
  if (header) {
    message_ = std::move(header_);
  } else {
    bytes = writer_->Next(&message_).value_or(0);
    ready_chunks_ = 0;
    payload_->Sent(format_, PayloadPath::kStream, bytes);
  }
  {
    absl::MutexLock lock(&mu_);
    writing_ = true;
    sent_all_ = writer_->finished();
  }
  reactor_->StartWrite(&message_);
}

void ResultStream::StartWait(std::size_t tensor, std::uint64_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    waiting_ = true;
    cancelling_ = false;
  }
  const Tensor& t = tensors_[tensor];
  absl::StatusOr<std::unique_ptr<core::Wait>> wait = store_->WaitForResult(
      t.name, t.round + 1, bytes,
      [this](absl::Status status) {
        Pump([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          waiting_ = false;
          if (!status.ok() && !error_.has_value()) error_ = status;
        });
      },
      lease_id_);
  std::unique_ptr<core::Wait> done;  // The previous wait: fired.
  {
    absl::MutexLock lock(&mu_);
    if (!wait.ok()) {
      waiting_ = false;
      error_ = wait.status();
      return;
    }
    done = std::exchange(wait_, *std::move(wait));
  }
}

void ResultStream::Finish() {
  if (before_finish_) before_finish_();
  absl::Status status;
  std::unique_ptr<core::Wait> done;  // Releases its hold on the lease.
  {
    absl::MutexLock lock(&mu_);
    finished_ = true;
    done = std::move(wait_);
    if (cancelled_) {
      status = absl::CancelledError("cancelled");
    } else if (error_.has_value()) {
      status = *error_;
    } else {
      status = *push_status_;
    }
  }
  done.reset();
  reactor_->Finish(call_.Answer(status));
}

}  // namespace weightd::service
