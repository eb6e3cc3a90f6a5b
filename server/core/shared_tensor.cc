#include "server/core/shared_tensor.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/core/kernels.h"

namespace weightd::core {
namespace {

absl::string_view KindName(UpdateKind kind) {
  return kind == UpdateKind::kWeights ? "weights" : "delta";
}

// The aggregator's noise: from StoreOptions::random_seed and the tensor's
// name if a seed is set (tests), else from the system.
absl::BitGen NoiseSource(std::uint64_t seed, const std::string& name) {
  if (seed == 0) return absl::BitGen();
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a: stable across runs.
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  std::seed_seq seq{
      static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
      static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(h >> 32)};
  return absl::BitGen(seq);
}

}  // namespace

TensorStorage ValueRecycler::Publish(std::vector<float> value) {
  return TensorStorage(new std::vector<float>(std::move(value)),
                       [self = shared_from_this()](std::vector<float>* v) {
                         std::unique_ptr<std::vector<float>> owned(v);
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
                           std::vector<std::int64_t> whole_shape,
                           TensorPolicy policy)
    : name_(std::move(name)),
      shape_(std::move(shape)),
      whole_shape_(std::move(whole_shape)),
      elements_(initial.size()),
      options_(options),
      chunk_elements_(options->chunk_bytes / 4),
      policy_(Compile(std::move(policy))),
      recycler_(std::make_shared<ValueRecycler>()),
      value_(recycler_->Publish(std::move(initial))),
      rng_(NoiseSource(options->random_seed, name_)) {
  if (sync()) acc_ = recycler_->Publish(std::vector<float>(elements_));
  const Optimizer& optimizer = *policy_->optimizer;
  for (int slot = 0; slot < optimizer.state_slots(); ++slot) {
    state_.emplace_back(elements_, optimizer.initial_state(slot));
  }
}

void SharedTensor::AddParticipant(absl::string_view worker) {
  absl::MutexLock lock(&mu_);
  if (participants_.emplace(worker).second &&
      policy_->policy.consistency == Mode::kBounded) {
    // A newcomer starts level with the slowest: no one waits for it to
    // catch up, and it is not ahead of anyone.
    clocks_.emplace(worker, clocks_.empty() ? 0 : MinClockLocked());
  }
}

void SharedTensor::RemoveParticipant(absl::string_view worker, ClosedOn why,
                                     Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  participants_.erase(std::string(worker));
  if (clocks_.erase(std::string(worker)) > 0) {
    // Its own pushes waiting for their turn end here: without a clock it
    // would be its turn at once, and its push applied after it left.
    auto own = std::stable_partition(
        turn_waiters_.begin(), turn_waiters_.end(),
        [worker](const TurnWaiter& w) { return w.worker != worker; });
    if (own != turn_waiters_.end()) {
      const absl::Status status = absl::AbortedError(absl::StrCat(
          "worker ", worker,
          why == ClosedOn::kLeaseExpiry ? "'s lease expired" : " left",
          " while its push to tensor ", name_,
          " waited for its turn (consistency=bounded staleness=",
          policy_->policy.staleness(),
          "); the push was not applied: join again to push"));
      for (auto it = own; it != turn_waiters_.end(); ++it) {
        deferred.Add([done = std::move(it->done), status] { done(status); });
      }
      turn_waiters_.erase(own, turn_waiters_.end());
    }
    WakeTurnWaitersLocked(deferred);  // It may have been the slowest.
  }
  if (!sync()) return;
  AwaitNoSumsLocked();
  // The round stops waiting for it: published chunks may no longer hold
  // its copy, so if it comes back it takes part from the next round.
  // Whether the round waited for it: if not, its departure is not what
  // closes the round (the quorum is).
  const bool waited = WaitedForLocked(std::string(worker));
  if (members_.has_value()) members_->erase(std::string(worker));
  // Its copy of a push is needed only if the open round holds chunks of it.
  if (auto it = contributions_.find(worker); it == contributions_.end() ||
                                             it->second.round != version_ ||
                                             it->second.progress == 0) {
    buffers_.erase(std::string(worker));
  }
  if (RoundCanCloseLocked()) {
    CloseRoundLocked(waited ? why : ClosedOn::kQuorum, waited ? worker : "",
                     deferred);
  } else {
    PublishReadyChunksLocked(deferred);  // It may have been the slowest.
  }
}

absl::Status SharedTensor::CheckResendLocked(
    const ContributionKey& key, const Contribution& previous) const {
  if (previous.kind == key.kind &&
      (!sync() || previous.named_round == key.round)) {
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
  if (!sync()) return absl::OkStatus();
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
  const bool in_round = previous != nullptr && previous->round == version_;
  if (!in_round && members_.has_value() && !members_->contains(key.worker)) {
    return absl::AbortedError(absl::StrCat(
        "round ", version_, " of tensor ", name_,
        " was already publishing its result when worker ", key.worker,
        " joined it; the worker takes part from round ", version_ + 1,
        ": pull the current value and continue"));
  }
  if (in_round && previous->complete) {
    return absl::AlreadyExistsError(absl::StrCat(
        "worker ", key.worker, " already contributed to round ", version_,
        " of tensor ", name_, " (push sequence ", previous->sequence, ")"));
  }
  // An unfinished contribution of this worker to the round is resumed.
  return absl::OkStatus();
}

std::uint64_t SharedTensor::HeldLocked(const ContributionKey& key,
                                       const Contribution* previous) const {
  if (previous == nullptr) return 0;
  if (previous->sequence == key.sequence) return previous->progress;
  const bool resumed =
      sync() && previous->round == version_ && !previous->complete;
  return resumed ? previous->progress : 0;
}

absl::Status SharedTensor::CheckNotDroppedLocked() const {
  if (!dropped_) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat(
      "tensor ", name_,
      " was dropped by an admin (weightctl drop); it no longer exists on "
      "this server"));
}

absl::Status SharedTensor::CheckPushLocked(const ContributionKey& key,
                                           const Contribution* previous) const {
  WEIGHTD_RETURN_IF_ERROR(CheckNotDroppedLocked());
  if (key.held_bytes > bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("push says the server holds ", key.held_bytes,
                     " bytes of it already, past the end of tensor ", name_,
                     " (", bytes(), " bytes)"));
  }
  const bool resend = previous != nullptr && previous->sequence == key.sequence;
  if (absl::Status s = resend ? CheckResendLocked(key, *previous)
                              : CheckNewLocked(key, previous);
      !s.ok()) {
    return s;
  }
  if (key.held_bytes == 0) return absl::OkStatus();
  const std::uint64_t held = HeldLocked(key, previous);
  if (held >= key.held_bytes) return absl::OkStatus();
  // The client wrote a result over these values: resent, they would count
  // as its update (e.g. new weights summed as a delta).
  return absl::AbortedError(absl::StrCat(
      "tensor ", name_, ": this push's first ", key.held_bytes,
      " bytes were delivered to a server that no longer holds them (it holds ",
      held,
      "; did it restart?); the update cannot be resent: pull the "
      "current value and continue"));
}

absl::Status SharedTensor::CheckContribution(const ContributionKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = contributions_.find(key.worker);
  return CheckPushLocked(key,
                         it == contributions_.end() ? nullptr : &it->second);
}

absl::Status SharedTensor::AddChunk(const ContributionKey& key,
                                    std::uint64_t offset, Pieces data,
                                    WireFormat format, std::uint64_t length,
                                    Deferred& deferred) {
  const double weight = key.weight;
  const std::uint64_t first = offset / 4;
  const std::uint64_t k = first / chunk_elements_;
  float* into;  // Chunk k of the accumulator, once this push may sum it.
  bool store;   // The chunk's first contribution: stored, not added.
  {
    absl::MutexLock lock(&mu_);
    // Another push summing into this chunk (outside the lock) ends first:
    // then this one sees its progress (a resend of it skips the chunk) and
    // the chunk's weight.
    auto chunk_free = [this, k]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !summing_.contains(k);
    };
    mu_.Await(absl::Condition(&chunk_free));
    absl::StatusOr<bool> claimed = ClaimChunkLocked(key, offset, k);
    if (!claimed.ok()) return claimed.status();
    if (!*claimed) return absl::OkStatus();  // Delivered before.
    if (buffered()) {
      // Each contribution kept whole (heap storage: stable while the map
      // grows), as pushed.
      std::vector<float>& buffer = buffers_[key.worker];
      buffer.resize(elements_);
      into = buffer.data() + first;
      store = true;
    } else {
      into = acc_->data() + first;
      store = chunk_weight_[k] == 0.0;
    }
    contributions_.at(key.worker).weight = weight;
  }
  // The sum, outside the lock: pushes of different workers sum different
  // chunks in parallel. Nothing else touches chunk k meanwhile: it is not
  // published and the round does not close while it is in summing_.
  if (store) {
    StoreScaled(data, format, buffered() ? 1.0f : static_cast<float>(weight),
                into);
  } else {
    AccumulateScaled(data, format, static_cast<float>(weight), into);
  }
  absl::MutexLock lock(&mu_);
  summing_.erase(k);
  chunk_weight_[k] += weight;
  // The contribution is still this push's (a resend of it waited for this
  // chunk; the round cannot have closed).
  contributions_.at(key.worker).progress += length;
  round_bytes_ += length;
  PublishReadyChunksLocked(deferred);
  return absl::OkStatus();
}

absl::StatusOr<bool> SharedTensor::ClaimChunkLocked(const ContributionKey& key,
                                                    std::uint64_t offset,
                                                    std::uint64_t k) {
  auto it = contributions_.find(key.worker);
  const Contribution* previous =
      it == contributions_.end() ? nullptr : &it->second;
  if (absl::Status s = CheckPushLocked(key, previous); !s.ok()) return s;
  if (previous == nullptr || previous->sequence != key.sequence) {
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
  if (offset < c.progress) return false;  // Delivered before.
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
  if (offset < result_bytes_) {
    // Only a worker the round stopped waiting for (it left, and came back)
    // can be behind what was published; the published part stays final.
    return absl::AbortedError(
        absl::StrCat("the result of round ", version_, " of tensor ", name_,
                     " was published up to byte ", result_bytes_,
                     " without this worker's chunk at byte ", offset,
                     "; pull the current value and continue"));
  }
  if (!round_started_) {
    round_started_ = true;
    chunk_weight_.assign((elements_ + chunk_elements_ - 1) / chunk_elements_,
                         0.0);
    round_start_ = options_->now();
    round_latest_done_ = round_start_;
    round_previous_done_ = round_start_;
  }
  acc_kind_ = key.kind;  // The round collects this kind from now on.
  summing_.insert(k);
  return true;
}

absl::StatusOr<ContributionResult> SharedTensor::Complete(
    absl::string_view worker, std::uint64_t sequence, Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  AwaitNoSumsLocked();  // It may close the round.
  WEIGHTD_RETURN_IF_ERROR(CheckNotDroppedLocked());
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
    round_previous_done_ = round_latest_done_;
    round_latest_done_ = options_->now();
    if (options_->on_contribution) {
      deferred.Add([cb = options_->on_contribution,
                    counted = ContributionCounted{
                        name_, std::string(worker), c.round,
                        round_contributors_}] { cb(counted); });
    }
    if (RoundCanCloseLocked()) {
      CloseRoundLocked(ClosedOn::kAll, "", deferred);
    }
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
  if (absl::Status s = CheckPushLocked(key, previous); !s.ok()) return s;

  if (policy_->policy.consistency == Mode::kBounded &&
      !participants_.contains(key.worker)) {
    // It left (or its lease expired) after its push began: it has no
    // clock, so no turn to take.
    return absl::AbortedError(absl::StrCat(
        "worker ", key.worker, " is no longer a participant of tensor ", name_,
        " (consistency=bounded): it left or its lease expired after this "
        "push began; the push was not applied: join again to push"));
  }
  if (!TurnLocked(std::string(key.worker))) {
    return absl::AbortedError(absl::StrCat(
        "worker ", key.worker, " is already ", policy_->policy.staleness(),
        " push(es) ahead of the slowest participant of tensor ", name_,
        " (consistency=bounded); this push was not applied: push again"));
  }
  const absl::Time start = options_->now();
  // The current value stays intact for the pulls streaming it: the result
  // goes to other storage (recycled from an earlier value if possible).
  std::vector<float> target = recycler_->Take();
  target.resize(elements_);
  const float* values = payload.data();
  const double weight = key.weight;
  AggregateInput one{absl::MakeConstSpan(&values, 1),
                     absl::MakeConstSpan(&weight, 1),
                     {},
                     value_->data(),
                     elements_,
                     key.kind};
  std::vector<double> scales;
  if (policy_->aggregator->scales_whole()) {
    scales = policy_->aggregator->Scales(one);
    one.scales = scales;
  }
  policy_->aggregator->Combine(one, target.data(), rng_);
  // Checked before anything is published: the push applies whole or not.
  if (!StepLocked(0, elements_, key.kind, /*single_push=*/true,
                  target.data())) {
    return absl::InvalidArgumentError(
        absl::StrCat("applying this push to tensor ", name_,
                     " would overflow float32; nothing was applied"));
  }
  recycler_->Retire(
      std::exchange(value_, recycler_->Publish(std::move(target))));

  Contribution& c = contributions_[key.worker];
  c.sequence = key.sequence;
  c.kind = key.kind;
  c.progress = bytes();
  c.complete = true;
  c.weight = key.weight;
  const absl::Time now = options_->now();
  RecordLocked(
      VersionRecord{version_ + 1,
                    ClosedOn::kPush,
                    {HistoryContribution{std::string(key.worker), key.sequence,
                                         key.weight, key.kind, true}},
                    {},
                    start,
                    now});
  PublishLocked(RoundClosed{name_, version_, 1, bytes(), now - start, 0, 0,
                            absl::ZeroDuration()},
                deferred);
  c.round = version_;
  c.ready_version = version_;
  if (auto clock = clocks_.find(key.worker); clock != clocks_.end()) {
    ++clock->second;
    WakeTurnWaitersLocked(deferred);  // It may have been the slowest.
  }
  return ContributionResult{c.round, c.ready_version, version_, false};
}

bool SharedTensor::WaitedForLocked(const std::string& worker) const {
  return !members_.has_value() || members_->contains(worker);
}

std::uint32_t SharedTensor::WaitedForCountLocked() const {
  std::uint32_t n = 0;
  for (const std::string& p : participants_) n += WaitedForLocked(p);
  return n;
}

std::uint32_t SharedTensor::CompleteParticipantsLocked() const {
  std::uint32_t n = 0;
  for (const std::string& p : participants_) {
    if (!WaitedForLocked(p)) continue;
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
  const std::uint32_t group = WaitedForCountLocked();
  const std::uint32_t complete = CompleteParticipantsLocked();
  if (complete == group) return true;
  return options_->now() - round_start_ >= options_->round_timeout &&
         complete >= options_->round_quorum.Needed(group);
}

bool SharedTensor::CloseIfOverdue(Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  if (!sync() || dropped_) return false;
  AwaitNoSumsLocked();
  if (!RoundCanCloseLocked()) return false;
  CloseRoundLocked(ClosedOn::kQuorum, "", deferred);
  return true;
}

void SharedTensor::FinishChunkLocked(std::uint64_t k, bool before_close) {
  const float* old = value_->data();
  float* acc = acc_->data();
  const std::uint64_t begin = k * chunk_elements_;
  const std::uint64_t n = std::min(elements_, begin + chunk_elements_) - begin;
  if (before_close && !state_.empty()) {
    // Published before the round closes: the state from before its step,
    // for a snapshot taken meanwhile (Save).
    round_state_.resize(state_.size() * elements_);
    for (std::size_t s = 0; s < state_.size(); ++s) {
      std::copy(state_[s].begin() + begin, state_[s].begin() + begin + n,
                round_state_.begin() + s * elements_ + begin);
    }
  }
  if (!AggregateChunkLocked(k, begin, n, acc + begin)) {
    std::copy(old + begin, old + begin + n, acc + begin);  // Nobody's chunk.
    return;
  }
  // Finite inputs can still overflow in the sum or the step: such a chunk
  // keeps its old value rather than publishing Inf or NaN.
  if (!StepLocked(begin, n, *acc_kind_, /*single_push=*/false, acc + begin)) {
    std::copy(old + begin, old + begin + n, acc + begin);
    ++round_non_finite_chunks_;
  }
}

bool SharedTensor::AggregateChunkLocked(std::uint64_t k, std::uint64_t begin,
                                        std::uint64_t n, float* out) {
  if (!buffered()) {
    const double w = chunk_weight_[k];
    if (w == 0.0) return false;
    MeanInPlace(out, n, w);
    return true;
  }
  const Aggregator& aggregator = *policy_->aggregator;
  if (aggregator.scales_whole() && !scales_.has_value()) {
    // Over the complete contributions, sorted by worker: the same result
    // whatever order they came in.
    std::vector<std::string> workers;
    for (const auto& [worker, c] : contributions_) {
      if (c.round == version_ && c.complete && buffers_.contains(worker)) {
        workers.push_back(worker);
      }
    }
    std::sort(workers.begin(), workers.end());
    std::vector<const float*> values;
    std::vector<double> weights;
    for (const std::string& worker : workers) {
      values.push_back(buffers_.at(worker).data());
      weights.push_back(contributions_.at(worker).weight);
    }
    const std::vector<double> scales = aggregator.Scales(AggregateInput{
        values, weights, {}, value_->data(), elements_, *acc_kind_});
    scales_.emplace();
    for (std::size_t j = 0; j < workers.size(); ++j) {
      scales_->emplace(workers[j], scales[j]);
    }
  }
  // The contributions that delivered these elements (complete ones only if
  // the aggregator scales them whole), sorted by worker.
  const std::uint64_t end_byte = (begin + n) * 4;
  std::vector<std::pair<absl::string_view, const Contribution*>> in;
  for (const auto& [worker, c] : contributions_) {
    if (c.round != version_ || c.progress < end_byte ||
        !buffers_.contains(worker) ||
        (scales_.has_value() && !scales_->contains(worker))) {
      continue;
    }
    in.emplace_back(worker, &c);
  }
  if (in.empty()) return false;
  std::sort(in.begin(), in.end());
  std::vector<const float*> values;
  std::vector<double> weights;
  std::vector<double> scales;
  for (const auto& [worker, c] : in) {
    values.push_back(buffers_.find(worker)->second.data() + begin);
    weights.push_back(c->weight);
    if (scales_.has_value()) scales.push_back(scales_->find(worker)->second);
  }
  aggregator.Combine(AggregateInput{values, weights, scales,
                                    value_->data() + begin, n, *acc_kind_},
                     out, rng_);
  return true;
}

bool SharedTensor::StepLocked(std::uint64_t begin, std::uint64_t n,
                              UpdateKind kind, bool single_push, float* out) {
  std::vector<float*> state;
  for (std::vector<float>& slot : state_) state.push_back(slot.data() + begin);
  // The state before the step: put back if the step is thrown away.
  state_backup_.resize(state.size() * n);
  for (std::size_t s = 0; s < state.size(); ++s) {
    std::copy(state[s], state[s] + n, state_backup_.data() + s * n);
  }
  policy_->optimizer->Step(
      OptimizerStep{value_->data() + begin, out, state, n, kind, single_push});
  // The state too: a finite push can overflow it (u * u) and leave a
  // finite value that never moves again.
  bool finite = AllFinite(reinterpret_cast<const char*>(out), n);
  for (float* slot : state) {
    finite = finite && AllFinite(reinterpret_cast<const char*>(slot), n);
  }
  if (!finite && !options_->allow_non_finite) {
    for (std::size_t s = 0; s < state.size(); ++s) {
      std::copy(state_backup_.data() + s * n,
                state_backup_.data() + (s + 1) * n, state[s]);
    }
    return false;
  }
  return true;
}

bool SharedTensor::TurnLocked(const std::string& worker) const {
  if (policy_->policy.consistency != Mode::kBounded) return true;
  auto it = clocks_.find(worker);
  return it == clocks_.end() ||
         it->second < MinClockLocked() + policy_->policy.staleness();
}

std::uint64_t SharedTensor::MinClockLocked() const {
  std::uint64_t least = ~std::uint64_t{0};
  for (const auto& [worker, clock] : clocks_) least = std::min(least, clock);
  return least;
}

void SharedTensor::WakeTurnWaitersLocked(Deferred& deferred) {
  auto ready = std::stable_partition(
      turn_waiters_.begin(), turn_waiters_.end(),
      [this](const TurnWaiter& w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return !TurnLocked(w.worker);  // Under mu_, as every caller.
      });
  for (auto it = ready; it != turn_waiters_.end(); ++it) {
    deferred.Add([done = std::move(it->done)] { done(absl::OkStatus()); });
  }
  turn_waiters_.erase(ready, turn_waiters_.end());
}

std::optional<std::uint64_t> SharedTensor::WaitForTurn(absl::string_view worker,
                                                       std::uint64_t sequence,
                                                       WaitCallback done) {
  absl::MutexLock lock(&mu_);
  if (dropped_ || TurnLocked(std::string(worker))) return std::nullopt;
  auto it = contributions_.find(worker);
  if (it != contributions_.end() && it->second.sequence == sequence) {
    return std::nullopt;  // A resend: a duplicate, applied already.
  }
  turn_waiters_.push_back(
      TurnWaiter{next_waiter_id_++, std::string(worker), std::move(done)});
  return turn_waiters_.back().id;
}

void SharedTensor::AwaitNoSumsLocked() {
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return summing_.empty();
  };
  mu_.Await(absl::Condition(&none));
}

void SharedTensor::PublishReadyChunksLocked(Deferred& deferred) {
  if (!round_started_) return;
  // The prefix every participant the round waits for has delivered.
  std::uint64_t ready = bytes();
  bool anyone = false;
  // An aggregator that scales each contribution by its whole update makes
  // nothing before every contribution is complete.
  const bool whole = policy_->aggregator->scales_whole() && buffered();
  for (const std::string& p : participants_) {
    if (!WaitedForLocked(p)) continue;
    anyone = true;
    auto it = contributions_.find(p);
    const bool in_round = it != contributions_.end() &&
                          it->second.round == version_ &&
                          (!whole || it->second.complete);
    ready = std::min(ready, in_round ? it->second.progress : 0);
  }
  // Not past a chunk still being summed: it is not final yet.
  const std::uint64_t chunk_bytes = chunk_elements_ * 4;
  for (std::uint64_t k : summing_) ready = std::min(ready, k * chunk_bytes);
  if (!anyone || ready <= result_bytes_) return;
  if (!members_.has_value()) {
    members_.emplace(participants_.begin(), participants_.end());
  }
  for (std::uint64_t k = result_bytes_ / chunk_bytes; k * chunk_bytes < ready;
       ++k) {
    FinishChunkLocked(k, /*before_close=*/true);
  }
  result_bytes_ = ready;  // A chunk boundary, or the end: chunks go whole.
  WakeWaitersLocked(deferred);
}

void SharedTensor::CloseRoundLocked(ClosedOn cause, absl::string_view departed,
                                    Deferred& deferred) {
  // The chunks not published yet (result_bytes_ is a chunk boundary or the
  // end).
  const std::uint64_t chunk_bytes = chunk_elements_ * 4;
  for (std::uint64_t k = (result_bytes_ + chunk_bytes - 1) / chunk_bytes;
       k < chunk_weight_.size(); ++k) {
    FinishChunkLocked(k, /*before_close=*/false);
  }
  // The accumulator is the result; the old value's storage comes back as
  // the next accumulator once the pulls still streaming it are done (at
  // once if there are none), else the next one is new storage.
  recycler_->Retire(std::exchange(value_, std::move(acc_)));
  std::vector<float> storage = recycler_->Take();
  storage.resize(elements_);
  acc_ = recycler_->Publish(std::move(storage));

  const absl::Time now = options_->now();
  const std::uint32_t missing =
      WaitedForCountLocked() - CompleteParticipantsLocked();
  const bool by_contribution = cause == ClosedOn::kAll;
  VersionRecord record{
      version_ + 1, by_contribution && missing > 0 ? ClosedOn::kQuorum : cause,
      {},           {},
      round_start_, now};
  for (const auto& [worker, c] : contributions_) {
    if (c.round != version_ || (!c.complete && c.progress == 0)) continue;
    record.contributions.push_back(
        HistoryContribution{worker, c.sequence, c.weight, c.kind, c.complete});
  }
  std::sort(record.contributions.begin(), record.contributions.end(),
            [](const HistoryContribution& a, const HistoryContribution& b) {
              return a.worker < b.worker;
            });
  auto contributed = [this](const std::string& worker)
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                           auto it = contributions_.find(worker);
                           return it != contributions_.end() &&
                                  it->second.round == version_ &&
                                  it->second.complete;
                         };
  if (!departed.empty() && !contributed(std::string(departed))) {
    record.dropped.emplace_back(departed);
  }
  for (const std::string& p : participants_) {
    if (WaitedForLocked(p) && !contributed(p)) record.dropped.push_back(p);
  }
  std::sort(record.dropped.begin(), record.dropped.end());
  RecordLocked(std::move(record));
  const RoundClosed closed{
      name_, version_, round_contributors_, round_bytes_, now - round_start_,
      round_non_finite_chunks_, missing,
      // Closed by its last contribution: the wait since the one before.
      // Else (a quorum at its timeout, a participant gone): the wait since
      // the latest contribution.
      now - (by_contribution ? round_previous_done_ : round_latest_done_)};
  round_started_ = false;
  result_bytes_ = 0;
  members_.reset();
  scales_.reset();
  // The values of workers that left are not needed again.
  absl::erase_if(buffers_,
                 [this](const auto& entry) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                   return !participants_.contains(entry.first);
                 });
  round_non_finite_chunks_ = 0;
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
  WakeWaitersLocked(deferred);
}

bool SharedTensor::SatisfiedLocked(const Waiter& waiter) const {
  return version_ >= waiter.version ||
         (version_ + 1 == waiter.version && result_bytes_ >= waiter.bytes);
}

void SharedTensor::WakeWaitersLocked(Deferred& deferred) {
  auto ready = std::stable_partition(
      waiters_.begin(), waiters_.end(),
      [this](const Waiter& w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return !SatisfiedLocked(w);  // Under mu_, as every caller.
      });
  for (auto it = ready; it != waiters_.end(); ++it) {
    deferred.Add([done = std::move(it->done)] { done(absl::OkStatus()); });
  }
  waiters_.erase(ready, waiters_.end());
}

absl::Status SharedTensor::Restore(
    std::uint64_t version, const std::vector<SavedContribution>& pushes,
    std::vector<VersionRecord> history,
    std::vector<std::vector<float>> optimizer_state) {
  absl::MutexLock lock(&mu_);
  if (!optimizer_state.empty()) {
    if (optimizer_state.size() != state_.size() ||
        std::any_of(optimizer_state.begin(), optimizer_state.end(),
                    [this](const std::vector<float>& slot) {
                      return slot.size() != elements_;
                    })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name_, ": the snapshot holds ", optimizer_state.size(),
          " optimizer state slot(s) of the wrong size; optimizer=",
          policy_->policy.optimizer, " has ", state_.size(), " of ", elements_,
          " floats"));
    }
    state_ = std::move(optimizer_state);
  }
  version_ = version;
  restored_ = true;
  for (VersionRecord& record : history) RecordLocked(std::move(record));
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
  return absl::OkStatus();
}

TensorSave SharedTensor::Save() const {
  absl::MutexLock lock(&mu_);
  std::vector<SavedContribution> pushes;
  for (const auto& [worker, c] : contributions_) {
    // Sync: a push to the open round lives in the accumulator, which a
    // snapshot does not keep; after a restore it is a new push.
    if (!c.complete || (sync() && c.round >= version_)) {
      continue;
    }
    pushes.push_back(SavedContribution{worker, c.sequence, c.round, c.kind,
                                       c.ready_version});
  }
  std::sort(pushes.begin(), pushes.end(),
            [](const SavedContribution& a, const SavedContribution& b) {
              return a.worker < b.worker;
            });
  // The open round's published chunks were stepped already; the snapshot
  // keeps the value from before the round, so their state from before too.
  std::vector<std::vector<float>> state = state_;
  const std::uint64_t stepped = sync() ? result_bytes_ / 4 : 0;
  if (stepped > 0 && round_state_.size() == state.size() * elements_) {
    for (std::size_t s = 0; s < state.size(); ++s) {
      const float* before = round_state_.data() + s * elements_;
      std::copy(before, before + stepped, state[s].begin());
    }
  }
  return {PublishedTensor{value_, version_, shape_, nullptr},
          policy_->policy,
          std::move(state),
          std::move(pushes),
          {history_.begin(), history_.end()}};
}

void SharedTensor::RecordLocked(VersionRecord record) {
  if (options_->history_per_tensor == 0) return;
  while (history_.size() >= options_->history_per_tensor) {
    history_.pop_front();
  }
  history_.push_back(std::move(record));
}

std::pair<std::vector<VersionRecord>, std::uint64_t> SharedTensor::History(
    std::uint64_t from, std::uint64_t to, std::size_t last) const {
  absl::MutexLock lock(&mu_);
  std::vector<VersionRecord> records;
  // Newest first, then reversed: `last` stops the copy early.
  for (auto it = history_.rbegin(); it != history_.rend(); ++it) {
    if (last != 0 && records.size() == last) break;
    if (it->version >= from && (to == 0 || it->version <= to)) {
      records.push_back(*it);
    }
  }
  std::reverse(records.begin(), records.end());
  return {std::move(records), history_.empty() ? 0 : history_.front().version};
}

std::vector<std::string> SharedTensor::Participants() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> participants(participants_.begin(),
                                        participants_.end());
  std::sort(participants.begin(), participants.end());
  return participants;
}

std::vector<std::string> SharedTensor::WaitingFor() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> waiting;
  if (!turn_waiters_.empty()) {
    // Bounded: a push waits for the slowest participants.
    const std::uint64_t least = MinClockLocked();
    for (const auto& [worker, clock] : clocks_) {
      if (clock == least) waiting.push_back(worker);
    }
    std::sort(waiting.begin(), waiting.end());
    return waiting;
  }
  if (!sync() || !round_started_) return waiting;
  for (const std::string& p : participants_) {
    if (!WaitedForLocked(p)) continue;
    auto it = contributions_.find(p);
    if (it == contributions_.end() || it->second.round != version_ ||
        !it->second.complete) {
      waiting.push_back(p);
    }
  }
  std::sort(waiting.begin(), waiting.end());
  return waiting;
}

void SharedTensor::MarkDropped(Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  dropped_ = true;
  FailWaitersLocked(CheckNotDroppedLocked(), deferred);
  AwaitNoSumsLocked();
  buffers_.clear();
}

absl::StatusOr<RoundResult> SharedTensor::ReadResult(
    std::uint64_t round) const {
  absl::MutexLock lock(&mu_);
  if (sync() && round == version_) {
    return RoundResult{acc_, round + 1, result_bytes_};
  }
  if (round + 1 == version_) return RoundResult{value_, version_, bytes()};
  return absl::AbortedError(absl::StrCat(
      "the result of round ", round, " of tensor ", name_,
      round < version_ ? " is no longer held" : " is not being made",
      "; the tensor is at version ", version_));
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
    bytes = (value_->capacity() + (acc_ ? acc_->capacity() : 0) +
             recycler_->spare_floats()) *
                sizeof(float) +
            chunk_weight_.capacity() * sizeof(double);
    bytes += PolicyBytesLocked();
  }
  absl::MutexLock lock(&encoded_mu_);
  for (const EncodedValue& encoded : encoded_) {
    if (encoded != nullptr) bytes += encoded->capacity();
  }
  return bytes;
}

std::uint64_t SharedTensor::PolicyBytes() const {
  absl::MutexLock lock(&mu_);
  return PolicyBytesLocked();
}

std::uint64_t SharedTensor::MaxStateBytes(const CompiledPolicy& policy,
                                          std::uint64_t elements,
                                          std::uint64_t chunk_elements) {
  // state_, then round_state_ (sync) or state_backup_ of a whole push
  // (async, bounded), then a sync chunk's state_backup_.
  const std::uint64_t slots = policy.optimizer->state_slots();
  const std::uint64_t copies =
      2 * elements + (policy.policy.consistency == Mode::kSync
                          ? std::min(elements, chunk_elements)
                          : 0);
  return slots * copies * sizeof(float);
}

std::uint64_t SharedTensor::BufferedBytes() const {
  if (!buffered()) return 0;
  absl::MutexLock lock(&mu_);
  return std::max(participants_.size(), buffers_.size()) * bytes();
}

std::uint64_t SharedTensor::PolicyBytesLocked() const {
  std::uint64_t bytes =
      (state_backup_.capacity() + round_state_.capacity()) * sizeof(float);
  for (const auto& slot : state_) bytes += slot.capacity() * sizeof(float);
  for (const auto& [worker, buffer] : buffers_) {
    bytes += buffer.capacity() * sizeof(float);
  }
  return bytes;
}

std::optional<std::uint64_t> SharedTensor::WaitForResult(std::uint64_t version,
                                                         std::uint64_t bytes,
                                                         WaitCallback done) {
  absl::MutexLock lock(&mu_);
  Waiter waiter{next_waiter_id_, version, bytes, std::move(done)};
  if (SatisfiedLocked(waiter)) return std::nullopt;
  ++next_waiter_id_;
  waiters_.push_back(std::move(waiter));
  return waiters_.back().id;
}

bool SharedTensor::CancelWait(std::uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = std::find_if(waiters_.begin(), waiters_.end(),
                         [id](const Waiter& w) { return w.id == id; });
  if (it != waiters_.end()) {
    waiters_.erase(it);
    return true;
  }
  auto turn = std::find_if(turn_waiters_.begin(), turn_waiters_.end(),
                           [id](const TurnWaiter& w) { return w.id == id; });
  if (turn == turn_waiters_.end()) return false;
  turn_waiters_.erase(turn);
  return true;
}

void SharedTensor::FailWaiters(const absl::Status& status, Deferred& deferred) {
  absl::MutexLock lock(&mu_);
  FailWaitersLocked(status, deferred);
}

void SharedTensor::FailWaitersLocked(const absl::Status& status,
                                     Deferred& deferred) {
  for (Waiter& w : waiters_) {
    deferred.Add([done = std::move(w.done), status] { done(status); });
  }
  waiters_.clear();
  for (TurnWaiter& w : turn_waiters_) {
    deferred.Add([done = std::move(w.done), status] { done(status); });
  }
  turn_waiters_.clear();
}

}  // namespace weightd::core
