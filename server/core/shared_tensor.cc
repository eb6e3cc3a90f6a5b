#include "server/core/shared_tensor.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/kernels.h"

namespace weightd::core {
namespace {

absl::string_view KindName(UpdateKind kind) {
  return kind == UpdateKind::kWeights ? "weights" : "delta";
}

}  // namespace

TensorValue ValueRecycler::Publish(std::vector<float> value) {
  return TensorValue(new std::vector<float>(std::move(value)),
                     [self = shared_from_this()](const std::vector<float>* v) {
                       std::unique_ptr<std::vector<float>> owned(
                           const_cast<std::vector<float>*>(v));
                       self->Give(std::move(*owned));
                     });
}

void ValueRecycler::Retire(TensorValue value) {
  {
    absl::MutexLock lock(&mu_);
    wanted_ = true;
  }
  value.reset();  // If it was the last reference, Give() keeps the storage.
}

std::vector<float> ValueRecycler::Take() {
  absl::MutexLock lock(&mu_);
  wanted_ = false;
  return std::move(spare_);  // Leaves spare_ empty.
}

std::size_t ValueRecycler::spare_floats() {
  absl::MutexLock lock(&mu_);
  return spare_.capacity();
}

void ValueRecycler::Give(std::vector<float> storage) {
  absl::MutexLock lock(&mu_);
  if (!wanted_ || !spare_.empty()) return;  // `storage` is freed.
  spare_ = std::move(storage);
  wanted_ = false;
}

SharedTensor::SharedTensor(std::string name, std::vector<std::int64_t> shape,
                           std::vector<float> initial,
                           const StoreOptions* options,
                           std::vector<std::int64_t> whole_shape)
    : name_(std::move(name)),
      shape_(std::move(shape)),
      whole_shape_(std::move(whole_shape)),
      elements_(initial.size()),
      options_(options),
      chunk_elements_(options->chunk_bytes / 4),
      recycler_(std::make_shared<ValueRecycler>()),
      value_(recycler_->Publish(std::move(initial))) {}

void SharedTensor::AddParticipant(absl::string_view worker) {
  absl::MutexLock lock(&mu_);
  participants_.emplace(worker);
}

void SharedTensor::RemoveParticipant(absl::string_view worker,
                                     Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  participants_.erase(std::string(worker));
  if (options_->mode == Mode::kSync && RoundCanCloseLocked()) {
    CloseRoundLocked(deferred);
  }
}

absl::Status SharedTensor::CheckResendLocked(
    const ContributionKey& key, const Contribution& previous) const {
  if (previous.kind == key.kind &&
      (options_->mode != Mode::kSync || previous.named_round == key.round)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "push sequence ", key.sequence, " of worker ", key.worker,
      " was already used for a different round or update kind of tensor ",
      name_));
}

absl::Status SharedTensor::CheckNewLocked(const ContributionKey& key,
                                          const Contribution* previous) const {
  if (previous != nullptr && key.sequence < previous->sequence) {
    return absl::AbortedError(
        absl::StrCat("push sequence ", key.sequence, " of worker ", key.worker,
                     " is older than its last push (sequence ",
                     previous->sequence, ") to tensor ", name_));
  }
  if (options_->mode == Mode::kAsync) return absl::OkStatus();
  if (acc_kind_.has_value() && *acc_kind_ != key.kind) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", name_, " is collecting ", KindName(*acc_kind_),
        " updates in its open round; this push is ", KindName(key.kind)));
  }
  if (key.round < version_) {
    return absl::AbortedError(
        absl::StrCat("round ", key.round, " of tensor ", name_,
                     " is already closed; the current round is ", version_,
                     ": pull the current value and continue"));
  }
  if (key.round > version_ && !restored_) {
    return absl::AbortedError(absl::StrCat(
        "round ", key.round, " of tensor ", name_,
        " is not open (this server has not reached it); the current round "
        "is ",
        version_, ": pull the current value and continue"));
  }
  // A round ahead of the open one of a restored tensor: the rounds went
  // back (a restore from an older snapshot) after the worker saw a later
  // one. The push counts in the open round; refused, it would leave the
  // workers still in that round waiting for a push that never comes.
  if (previous != nullptr && previous->round == version_ &&
      previous->complete) {
    return absl::AlreadyExistsError(absl::StrCat(
        "worker ", key.worker, " already contributed to round ", version_,
        " of tensor ", name_, " (push sequence ", previous->sequence, ")"));
  }
  // An unfinished contribution of this worker to the round is resumed.
  return absl::OkStatus();
}

absl::Status SharedTensor::CheckContribution(const ContributionKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(key.worker);
  const Contribution* previous =
      it == contributions_.end() ? nullptr : &it->second;
  if (previous != nullptr && previous->sequence == key.sequence) {
    return CheckResendLocked(key, *previous);  // Applied at most once.
  }
  return CheckNewLocked(key, previous);
}

absl::Status SharedTensor::AddChunk(const ContributionKey& key, double weight,
                                    std::uint64_t offset, Pieces data,
                                    WireFormat format, std::uint64_t length) {
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(key.worker);
  if (it != contributions_.end() && it->second.sequence == key.sequence) {
    if (absl::Status s = CheckResendLocked(key, it->second); !s.ok()) return s;
  } else {
    const Contribution* previous =
        it == contributions_.end() ? nullptr : &it->second;
    if (absl::Status s = CheckNewLocked(key, previous); !s.ok()) return s;
    if (previous != nullptr && previous->round == version_) {
      // Resume the unfinished contribution: the chunks it delivered stay
      // counted and are skipped below.
      it->second.sequence = key.sequence;
      it->second.named_round = key.round;
      it->second.kind = key.kind;
    } else {
      Contribution fresh;
      fresh.sequence = key.sequence;
      fresh.round = version_;
      fresh.named_round = key.round;
      fresh.kind = key.kind;
      it =
          contributions_.insert_or_assign(std::string(key.worker), fresh).first;
    }
  }
  Contribution& c = it->second;
  if (offset < c.progress) return absl::OkStatus();  // Delivered before.
  if (offset > c.progress) {
    return absl::InternalError(
        absl::StrCat("chunk at byte ", offset, " of tensor ", name_,
                     " arrived before byte ", c.progress));
  }
  if (c.round != version_) {
    return absl::AbortedError(absl::StrCat(
        "round ", c.round, " of tensor ", name_,
        " closed before this push completed; the current round is ", version_));
  }
  if (acc_kind_.has_value() && *acc_kind_ != key.kind) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", name_, " is collecting ", KindName(*acc_kind_),
        " updates in its open round; this push is ", KindName(key.kind)));
  }
  if (acc_.size() != elements_) acc_.resize(elements_);
  if (!round_started_) {
    round_started_ = true;
    chunk_weight_.assign((elements_ + chunk_elements_ - 1) / chunk_elements_,
                         0.0);
    round_start_ = options_->now();
  }
  const std::uint64_t first = offset / 4;
  double& chunk_weight = chunk_weight_[first / chunk_elements_];
  if (chunk_weight == 0.0) {
    StoreScaled(data, format, static_cast<float>(weight), acc_.data() + first);
  } else {
    AccumulateScaled(data, format, static_cast<float>(weight),
                     acc_.data() + first);
  }
  chunk_weight += weight;
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
    return absl::AbortedError(
        absl::StrCat("push sequence ", sequence, " of worker ", worker,
                     " to tensor ", name_, " was superseded by a newer push"));
  }
  Contribution& c = it->second;
  if (c.progress < bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("push ended after ", c.progress, " of ", bytes(),
                     " bytes of tensor ", name_, "; resend the whole tensor"));
  }
  ContributionResult result;
  if (c.complete) {
    result.duplicate = true;
  } else {
    if (c.round != version_) {
      return absl::AbortedError(absl::StrCat(
          "round ", c.round, " of tensor ", name_,
          " closed before this push completed; the current round is ",
          version_));
    }
    c.complete = true;
    c.ready_version = c.round + 1;
    ++round_contributors_;
    if (options_->on_contribution) {
      deferred.Add([cb = options_->on_contribution,
                    counted = ContributionCounted{
                        name_, std::string(worker), c.round,
                        round_contributors_}] { cb(counted); });
    }
    if (RoundCanCloseLocked()) CloseRoundLocked(deferred);
  }
  result.round = c.round;
  result.ready_version = c.ready_version;
  result.version = version_;
  return result;
}

absl::StatusOr<ContributionResult> SharedTensor::ApplyPush(
    const ContributionKey& key, absl::Span<const float> payload,
    Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(key.worker);
  if (it != contributions_.end() && it->second.sequence == key.sequence) {
    if (absl::Status s = CheckResendLocked(key, it->second); !s.ok()) return s;
    return ContributionResult{it->second.round, it->second.ready_version,
                              version_, /*duplicate=*/true};
  }
  const Contribution* previous =
      it == contributions_.end() ? nullptr : &it->second;
  if (absl::Status s = CheckNewLocked(key, previous); !s.ok()) return s;

  const absl::Time start = options_->now();
  const float* old = value_->data();
  const float* x = payload.data();
  const bool delta = key.kind == UpdateKind::kDelta;
  const float step =
      static_cast<float>(delta ? options_->server_lr : options_->async_mix);
  auto updated = [&](std::uint64_t i) {
    return delta ? old[i] + step * x[i] : old[i] + step * (x[i] - old[i]);
  };
  if (!options_->allow_non_finite) {
    // Checked before anything is written: the push applies whole or not.
    for (std::uint64_t i = 0; i < elements_; ++i) {
      if (!std::isfinite(updated(i))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "applying this push to tensor ", name_,
            " would overflow float32 at element ", i, "; nothing was applied"));
      }
    }
  }
  // The current value stays intact for the pulls streaming it: the result
  // goes to other storage (recycled from an earlier value if possible).
  std::vector<float> target = recycler_->Take();
  target.resize(elements_);
  float* out = target.data();
  for (std::uint64_t i = 0; i < elements_; ++i) out[i] = updated(i);
  recycler_->Retire(
      std::exchange(value_, recycler_->Publish(std::move(target))));

  Contribution& c = contributions_[key.worker];
  c.sequence = key.sequence;
  c.kind = key.kind;
  c.progress = bytes();
  c.complete = true;
  PublishLocked(
      RoundClosed{name_, version_, 1, bytes(), options_->now() - start, 0},
      deferred);
  c.round = version_;
  c.ready_version = version_;
  return ContributionResult{c.round, c.ready_version, version_, false};
}

std::uint32_t SharedTensor::CompleteParticipantsLocked() const {
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

bool SharedTensor::RoundCanCloseLocked() const {
  if (round_contributors_ == 0) return false;
  const auto group = static_cast<std::uint32_t>(participants_.size());
  const std::uint32_t complete = CompleteParticipantsLocked();
  if (complete == group) return true;
  return options_->now() - round_start_ >= options_->round_timeout &&
         complete >= options_->round_quorum.Needed(group);
}

bool SharedTensor::CloseIfOverdue(Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  if (options_->mode != Mode::kSync || !RoundCanCloseLocked()) return false;
  CloseRoundLocked(deferred);
  return true;
}

void SharedTensor::CloseRoundLocked(Deferred& deferred) {
  const float* old = value_->data();
  float* acc = acc_.data();
  const bool delta = acc_kind_ == UpdateKind::kDelta;
  const float lr = static_cast<float>(options_->server_lr);
  std::uint64_t non_finite_chunks = 0;
  for (std::size_t k = 0; k < chunk_weight_.size(); ++k) {
    const std::uint64_t begin = k * chunk_elements_;
    const std::uint64_t end = std::min(elements_, begin + chunk_elements_);
    const double w = chunk_weight_[k];
    if (w == 0.0) {
      std::copy(old + begin, old + end, acc + begin);
      continue;
    }
    // Finite inputs can still overflow in the sum: such a chunk keeps its
    // old value rather than publishing Inf or NaN.
    if (!FinishMean(acc + begin, old + begin, end - begin, w, delta, lr) &&
        !options_->allow_non_finite) {
      std::copy(old + begin, old + end, acc + begin);
      ++non_finite_chunks;
    }
  }
  // The old value's storage comes back as the next accumulator once the
  // pulls still streaming it are done (right away if there are none).
  recycler_->Retire(std::exchange(value_, recycler_->Publish(std::move(acc_))));
  acc_ = recycler_->Take();

  const RoundClosed closed{name_,
                           version_,
                           round_contributors_,
                           round_bytes_,
                           options_->now() - round_start_,
                           non_finite_chunks,
                           static_cast<std::uint32_t>(participants_.size()) -
                               CompleteParticipantsLocked()};
  round_started_ = false;
  acc_kind_.reset();
  round_contributors_ = 0;
  round_bytes_ = 0;
  PublishLocked(closed, deferred);
}

void SharedTensor::PublishLocked(RoundClosed closed, Deferred& deferred) {
  ++version_;
  if (options_->on_round_closed) {
    deferred.Add([cb = options_->on_round_closed, closed = std::move(closed)] {
      cb(closed);
    });
  }
  auto ready = std::stable_partition(waiters_.begin(), waiters_.end(),
                                     [version = version_](const Waiter& w) {
                                       return w.min_version > version;
                                     });
  for (auto it = ready; it != waiters_.end(); ++it) {
    deferred.Add([done = std::move(it->done)] { done(absl::OkStatus()); });
  }
  waiters_.erase(ready, waiters_.end());
}

void SharedTensor::Restore(std::uint64_t version,
                           const std::vector<SavedContribution>& pushes) {
  absl::MutexLock lock(&mu_);
  version_ = version;
  restored_ = true;
  for (const SavedContribution& p : pushes) {
    Contribution& c = contributions_[p.worker];
    c.sequence = p.sequence;
    c.round = p.round;
    c.named_round = p.round;
    c.kind = p.kind;
    c.progress = bytes();
    c.complete = true;
    c.ready_version = p.ready_version;
  }
}

std::pair<PublishedTensor, std::vector<SavedContribution>> SharedTensor::Save()
    const {
  absl::MutexLock lock(&mu_);
  std::vector<SavedContribution> pushes;
  for (const auto& [worker, c] : contributions_) {
    // Sync: a push to the open round lives in the accumulator, which a
    // snapshot does not keep; after a restore it is a new push.
    if (!c.complete || (options_->mode == Mode::kSync && c.round >= version_)) {
      continue;
    }
    pushes.push_back(SavedContribution{worker, c.sequence, c.round, c.kind,
                                       c.ready_version});
  }
  std::sort(pushes.begin(), pushes.end(),
            [](const SavedContribution& a, const SavedContribution& b) {
              return a.worker < b.worker;
            });
  return {PublishedTensor{value_, version_, shape_, nullptr},
          std::move(pushes)};
}

PublishedTensor SharedTensor::Read(WireFormat format) const {
  PublishedTensor published;
  {
    absl::MutexLock lock(&mu_);
    published = PublishedTensor{value_, version_, shape_, nullptr};
  }
  if (format == WireFormat::kFloat32) return published;
  const auto f = static_cast<std::size_t>(format);
  absl::MutexLock lock(&encoded_mu_);
  if (encoded_[f] == nullptr || encoded_version_[f] != published.version) {
    auto encoded = std::make_shared<std::vector<char>>();
    encoded->resize(published.value->size() * ElementBytes(format));
    EncodeValues(published.value->data(), published.value->size(), format,
                 encoded->data());
    encoded_[f] = std::move(encoded);
    encoded_version_[f] = published.version;
  }
  published.encoded = encoded_[f];
  return published;
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
  return CompleteParticipantsLocked();
}

std::uint64_t SharedTensor::AllocatedBytes() const {
  std::uint64_t bytes;
  {
    absl::MutexLock lock(&mu_);
    bytes = (value_->capacity() + acc_.capacity() + recycler_->spare_floats()) *
                sizeof(float) +
            chunk_weight_.capacity() * sizeof(double);
  }
  absl::MutexLock lock(&encoded_mu_);
  for (const EncodedValue& encoded : encoded_) {
    if (encoded != nullptr) bytes += encoded->capacity();
  }
  return bytes;
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
