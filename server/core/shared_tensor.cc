#include "server/core/shared_tensor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/kernels.h"

namespace weightd::core {
namespace {

absl::string_view KindName(UpdateKind kind) {
  return kind == UpdateKind::kWeights ? "weights" : "delta";
}

}  // namespace

SharedTensor::SharedTensor(std::string name, std::vector<std::int64_t> shape,
                           std::vector<float> initial,
                           const StoreOptions* options)
    : name_(std::move(name)),
      shape_(std::move(shape)),
      elements_(initial.size()),
      options_(options),
      chunk_elements_(options->chunk_bytes / 4),
      value_(std::make_shared<std::vector<float>>(std::move(initial))) {}

void SharedTensor::AddParticipant(absl::string_view worker) {
  absl::MutexLock lock(&mu_);
  participants_.emplace(worker);
}

void SharedTensor::RemoveParticipant(absl::string_view worker,
                                     Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  participants_.erase(std::string(worker));
  if (options_->mode == Mode::kSync && RoundCompleteLocked()) {
    CloseRoundLocked(deferred);
  }
}

absl::Status SharedTensor::CheckNewLocked(const ContributionKey& key,
                                          const Contribution* previous) const {
  if (previous != nullptr && key.sequence < previous->sequence) {
    return absl::AbortedError(absl::StrCat(
        "push sequence ", key.sequence, " of worker ", key.worker,
        " is older than its last push (sequence ", previous->sequence,
        ") to tensor ", name_));
  }
  if (acc_kind_.has_value() && *acc_kind_ != key.kind) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", name_, " is collecting ", KindName(*acc_kind_),
        " updates in its open round; this push is ", KindName(key.kind)));
  }
  if (options_->mode == Mode::kAsync) return absl::OkStatus();
  if (key.round < version_) {
    return absl::AbortedError(absl::StrCat(
        "round ", key.round, " of tensor ", name_,
        " is already closed; the current round is ", version_,
        ": pull the current value and continue"));
  }
  if (key.round > version_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", key.round, " of tensor ", name_,
        " is not open; the current round is ", version_));
  }
  if (previous != nullptr && previous->round == version_ &&
      (previous->complete || previous->progress > 0)) {
    if (previous->complete) {
      return absl::AlreadyExistsError(absl::StrCat(
          "worker ", key.worker, " already contributed to round ", version_,
          " of tensor ", name_, " (push sequence ", previous->sequence, ")"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "push sequence ", previous->sequence, " of worker ", key.worker,
        " to round ", version_, " of tensor ", name_,
        " is unfinished; resend it with that sequence"));
  }
  return absl::OkStatus();
}

absl::Status SharedTensor::CheckContribution(const ContributionKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(key.worker);
  const Contribution* previous =
      it == contributions_.end() ? nullptr : &it->second;
  if (previous != nullptr && previous->sequence == key.sequence) {
    if (previous->kind != key.kind ||
        (options_->mode == Mode::kSync && previous->round != key.round)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "push sequence ", key.sequence, " of worker ", key.worker,
          " was already used for a different round or update kind of tensor ",
          name_));
    }
    return absl::OkStatus();  // A resend: applied at most once.
  }
  return CheckNewLocked(key, previous);
}

absl::Status SharedTensor::AddChunk(const ContributionKey& key, double weight,
                                    std::uint64_t offset, const char* data,
                                    std::uint64_t length) {
  const std::uint64_t count = length / 4;
  // Checked before the lock and before any state changes.
  if (!options_->allow_non_finite && !AllFinite(data, count)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk at byte ", offset, " of tensor ", name_,
        " contains NaN or Inf; nothing of it was applied"));
  }
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(key.worker);
  if (it == contributions_.end() || it->second.sequence != key.sequence) {
    const Contribution* previous =
        it == contributions_.end() ? nullptr : &it->second;
    if (absl::Status s = CheckNewLocked(key, previous); !s.ok()) return s;
    Contribution fresh;
    fresh.sequence = key.sequence;
    fresh.round = options_->mode == Mode::kSync ? version_ : key.round;
    fresh.kind = key.kind;
    it = contributions_.insert_or_assign(std::string(key.worker), fresh).first;
  }
  Contribution& c = it->second;
  if (offset < c.progress) return absl::OkStatus();  // Resent: applied once.
  if (offset > c.progress) {
    return absl::InternalError(absl::StrCat(
        "chunk at byte ", offset, " of tensor ", name_, " arrived before byte ",
        c.progress));
  }
  if (options_->mode == Mode::kSync && c.round != version_) {
    return absl::AbortedError(absl::StrCat(
        "round ", c.round, " of tensor ", name_,
        " closed before this push completed; the current round is ",
        version_));
  }
  if (acc_.size() != elements_) {
    acc_.assign(elements_, 0.0f);
  } else if (!acc_zeroed_) {
    std::fill(acc_.begin(), acc_.end(), 0.0f);
  }
  if (!acc_zeroed_) {
    acc_zeroed_ = true;
    chunk_weight_.assign((elements_ + chunk_elements_ - 1) / chunk_elements_,
                         0.0);
    round_start_ = options_->now();
  }
  // Async deltas are summed (each applied whole); everything else is a
  // weighted mean.
  const bool summed =
      options_->mode == Mode::kAsync && key.kind == UpdateKind::kDelta;
  const double w = summed ? 1.0 : weight;
  const std::uint64_t first = offset / 4;
  AccumulateScaled(data, count, static_cast<float>(w), acc_.data() + first);
  chunk_weight_[first / chunk_elements_] += w;
  acc_kind_ = key.kind;
  c.progress += length;
  round_bytes_ += length;
  return absl::OkStatus();
}

absl::StatusOr<ContributionResult> SharedTensor::Complete(
    absl::string_view worker, std::uint64_t sequence, Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(worker);
  if (it == contributions_.end() || it->second.sequence != sequence) {
    return absl::AbortedError(absl::StrCat(
        "push sequence ", sequence, " of worker ", worker, " to tensor ",
        name_, " was superseded by a newer push"));
  }
  Contribution& c = it->second;
  if (c.progress < bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push ended after ", c.progress, " of ", bytes(), " bytes of tensor ",
        name_, "; resend the whole tensor with the same sequence"));
  }
  ContributionResult result;
  if (c.complete) {
    result.duplicate = true;
  } else {
    if (options_->mode == Mode::kSync && c.round != version_) {
      return absl::AbortedError(absl::StrCat(
          "round ", c.round, " of tensor ", name_,
          " closed before this push completed; the current round is ",
          version_));
    }
    c.complete = true;
    ++round_contributors_;
    if (options_->mode == Mode::kSync) {
      c.ready_version = c.round + 1;
      if (RoundCompleteLocked()) CloseRoundLocked(deferred);
    } else {
      CloseRoundLocked(deferred);
      c.round = version_;
      c.ready_version = version_;
    }
  }
  result.round = c.round;
  result.ready_version = c.ready_version;
  result.version = version_;
  return result;
}

bool SharedTensor::RoundCompleteLocked() const {
  if (round_contributors_ == 0) return false;
  for (const std::string& p : participants_) {
    auto it = contributions_.find(p);
    if (it == contributions_.end() || it->second.round != version_ ||
        !it->second.complete) {
      return false;
    }
  }
  return true;
}

void SharedTensor::CloseRoundLocked(Deferred& deferred) {
  const float* old = value_->data();
  float* acc = acc_.data();
  const bool async = options_->mode == Mode::kAsync;
  const bool delta = acc_kind_ == UpdateKind::kDelta;
  const float lr = static_cast<float>(options_->server_lr);
  const float mix = static_cast<float>(options_->async_mix);
  for (std::size_t k = 0; k < chunk_weight_.size(); ++k) {
    const std::uint64_t begin = k * chunk_elements_;
    const std::uint64_t end = std::min(elements_, begin + chunk_elements_);
    const double w = chunk_weight_[k];
    if (w == 0.0) {
      std::copy(old + begin, old + end, acc + begin);
    } else if (async && delta) {
      for (std::uint64_t i = begin; i < end; ++i) acc[i] = old[i] + lr * acc[i];
    } else if (delta) {
      for (std::uint64_t i = begin; i < end; ++i) {
        acc[i] = old[i] + lr * static_cast<float>(acc[i] / w);
      }
    } else if (async) {
      for (std::uint64_t i = begin; i < end; ++i) {
        acc[i] = old[i] + mix * (static_cast<float>(acc[i] / w) - old[i]);
      }
    } else {
      for (std::uint64_t i = begin; i < end; ++i) {
        acc[i] = static_cast<float>(acc[i] / w);
      }
    }
  }
  auto fresh = std::make_shared<std::vector<float>>(std::move(acc_));
  // Reuse the old value's storage for the next round unless a pull is still
  // streaming it.
  if (value_.use_count() == 1) {
    acc_ = std::move(*value_);
  } else {
    acc_ = std::vector<float>();
  }
  value_ = std::move(fresh);

  RoundClosed closed{name_, version_, round_contributors_, round_bytes_,
                     options_->now() - round_start_};
  ++version_;
  acc_zeroed_ = false;
  acc_kind_.reset();
  round_contributors_ = 0;
  round_bytes_ = 0;
  if (options_->on_round_closed) {
    deferred.Add([cb = options_->on_round_closed, closed] { cb(closed); });
  }
  auto ready = std::stable_partition(
      waiters_.begin(), waiters_.end(),
      [version = version_](const Waiter& w) { return w.min_version > version; });
  for (auto it = ready; it != waiters_.end(); ++it) {
    deferred.Add([done = std::move(it->done)] { done(absl::OkStatus()); });
  }
  waiters_.erase(ready, waiters_.end());
}

TensorSnapshot SharedTensor::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return TensorSnapshot{value_, version_, shape_};
}

std::uint64_t SharedTensor::version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

std::uint32_t SharedTensor::participant_count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<std::uint32_t>(participants_.size());
}

std::uint32_t SharedTensor::contributed_count() const {
  absl::MutexLock lock(&mu_);
  std::uint32_t n = 0;
  for (const std::string& p : participants_) {
    auto it = contributions_.find(p);
    if (it != contributions_.end() && it->second.round == version_ &&
        it->second.complete) {
      ++n;
    }
  }
  return n;
}

std::uint64_t SharedTensor::AllocatedBytes() const {
  absl::MutexLock lock(&mu_);
  return (value_->capacity() + acc_.capacity()) * sizeof(float) +
         chunk_weight_.capacity() * sizeof(double);
}

std::optional<std::uint64_t> SharedTensor::WaitForVersion(
    std::uint64_t min_version, WaitCallback done) {
  absl::MutexLock lock(&mu_);
  if (version_ >= min_version) return std::nullopt;
  const std::uint64_t id = next_waiter_id_++;
  waiters_.push_back(Waiter{id, min_version, std::move(done)});
  return id;
}

bool SharedTensor::CancelWait(std::uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = std::find_if(waiters_.begin(), waiters_.end(),
                         [id](const Waiter& w) { return w.id == id; });
  if (it == waiters_.end()) return false;
  waiters_.erase(it);
  return true;
}

void SharedTensor::FailWaiters(const absl::Status& status, Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  for (Waiter& w : waiters_) {
    deferred.Add([done = std::move(w.done), status] { done(status); });
  }
  waiters_.clear();
}

}  // namespace weightd::core
