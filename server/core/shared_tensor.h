// SharedTensor: one named tensor, its sharing group and its open round.
// Internal to the core; the service talks to TensorStore.
#ifndef WEIGHTD_SERVER_CORE_SHARED_TENSOR_H_
#define WEIGHTD_SERVER_CORE_SHARED_TENSOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "server/core/kernels.h"
#include "server/core/options.h"
#include "server/core/policy.h"

namespace weightd::core {

// Work to run once every lock is released: waiter callbacks and round
// observers must never run under a tensor's lock.
class Deferred {
 public:
  Deferred() = default;
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;
  ~Deferred() { Run(); }

  void Add(std::function<void()> fn) { fns_.push_back(std::move(fn)); }
  void Run() {
    std::vector<std::function<void()>> fns;
    fns.swap(fns_);
    for (auto& fn : fns) fn();
  }

 private:
  std::vector<std::function<void()>> fns_;
};

// An immutable published value, shared with the pulls streaming it.
using TensorValue = std::shared_ptr<const std::vector<float>>;
// Storage that becomes a TensorValue: a sync round's accumulator, which
// turns into the round's result in place.
using TensorStorage = std::shared_ptr<std::vector<float>>;

// Recycles the storage of a tensor's published values. A published value is
// shared with the pulls and snapshots reading it; when the last of them lets
// go, its storage comes back here, under this object's lock (a hand-off TSan
// can see, unlike a check of use_count()), to become the next accumulator
// or async result instead of a fresh allocation. Thread-safe.
class ValueRecycler : public std::enable_shared_from_this<ValueRecycler> {
 public:
  // Publishes `value` (a TensorValue, or a TensorStorage still written).
  TensorStorage Publish(std::vector<float> value);
  // `value` is published no more: its storage is kept for the next Take()
  // once the last reader lets go of it.
  void Retire(TensorValue value);
  // The retired storage if it came back (contents unspecified), else an
  // empty vector; storage that comes back later is then freed.
  std::vector<float> Take();
  // Capacity of the storage kept for the next Take() (memory accounting).
  std::size_t spare_floats();

 private:
  void Give(std::vector<float> storage);

  absl::Mutex mu_;
  std::vector<float> spare_ ABSL_GUARDED_BY(mu_);
  bool wanted_ ABSL_GUARDED_BY(mu_) = false;
};

// The value's bytes in a 16-bit WireFormat, for pulls in that format.
using EncodedValue = std::shared_ptr<const std::vector<char>>;

// A tensor as a read sees it: the value published at one version
// (SharedTensor::Read, TensorStore::Read).
struct PublishedTensor {
  TensorValue value;
  std::uint64_t version = 0;
  std::vector<std::int64_t> shape;
  // Set when asked for a 16-bit format: `value` encoded in it.
  EncodedValue encoded;
};

// The result of one sync round as far as it is published (see
// SharedTensor::ReadResult): its first `ready_bytes` (float32 bytes) are
// final and never change; the rest is still being summed.
struct RoundResult {
  TensorValue value;          // elements() values; the round's result.
  std::uint64_t version = 0;  // The version it becomes: the round + 1.
  std::uint64_t ready_bytes = 0;
};

// What a completed (or re-sent) push of one tensor produced.
struct ContributionResult {
  std::uint64_t round = 0;          // Sync: its round. Async: version produced.
  std::uint64_t ready_version = 0;  // The first version that includes it.
  std::uint64_t version = 0;        // The tensor's version now.
  bool duplicate = false;           // It had completed before; not re-applied.
};

// A completed push as a snapshot keeps it (for dedupe after a restart).
struct SavedContribution {
  std::string worker;
  std::uint64_t sequence = 0;
  std::uint64_t round = 0;  // Sync: its round. Async: the version it made.
  UpdateKind kind = UpdateKind::kWeights;
  std::uint64_t ready_version = 0;
};

// Identifies one push of one worker to this tensor.
struct ContributionKey {
  absl::string_view worker;
  std::uint64_t sequence = 0;
  std::uint64_t round = 0;
  UpdateKind kind = UpdateKind::kWeights;
  // A resend whose first held_bytes (float32 bytes) the client no longer
  // has (a PushPull's result was written over them): the tensor must hold
  // them from this push already, else the push is refused (ABORTED).
  std::uint64_t held_bytes = 0;
  // Of the push in the round's mean (sync); recorded in the history.
  double weight = 1.0;
};

// What a snapshot keeps of a tensor (SharedTensor::Save).
struct TensorSave {
  PublishedTensor published;
  TensorPolicy policy;
  // The optimizer's state slots, each elements() floats (a copy).
  std::vector<std::vector<float>> optimizer_state;
  // The completed pushes of closed rounds (for dedupe after a restart).
  std::vector<SavedContribution> pushes;
  std::vector<VersionRecord> history;  // Ascending versions.
};

// Thread-safe. Lock order: TensorStore::mu_ before SharedTensor::mu_.
class SharedTensor {
 public:
  // `initial` must hold exactly the element count of `shape`.
  // `whole_shape`: of the whole tensor if this is one shard's part of it.
  // `policy` decides how pushes are combined (server/core/policy.h).
  SharedTensor(std::string name, std::vector<std::int64_t> shape,
               std::vector<float> initial, const StoreOptions* options,
               std::vector<std::int64_t> whole_shape, TensorPolicy policy);
  SharedTensor(const SharedTensor&) = delete;
  SharedTensor& operator=(const SharedTensor&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  const std::vector<std::int64_t>& whole_shape() const { return whole_shape_; }
  std::uint64_t elements() const { return elements_; }
  std::uint64_t bytes() const { return elements_ * 4; }
  const TensorPolicy& policy() const { return policy_->policy; }
  // Sync rounds (else each push is applied alone: async, bounded).
  bool sync() const { return policy_->policy.consistency == Mode::kSync; }
  // Holds a copy of every contribution of a round (see Aggregator).
  bool buffered() const { return sync() && policy_->aggregator->buffered(); }

  // Sets the version, the push history, the version records and the
  // optimizer's state from a snapshot (see TensorStore::Restore); only
  // before the tensor is shared. Records past
  // StoreOptions::history_per_tensor are dropped, oldest first.
  // INVALID_ARGUMENT if `optimizer_state` is not the optimizer's slots of
  // elements() floats each (empty: the initial state).
  absl::Status Restore(std::uint64_t version,
                       const std::vector<SavedContribution>& pushes,
                       std::vector<VersionRecord> history,
                       std::vector<std::vector<float>> optimizer_state);
  // What a snapshot keeps of the tensor.
  TensorSave Save() const;

  // The newest `last` (0: all) records of versions `from` to `to`
  // (inclusive; 0: from the oldest kept, to the newest), ascending, and the
  // oldest version still kept (0: none).
  std::pair<std::vector<VersionRecord>, std::uint64_t> History(
      std::uint64_t from, std::uint64_t to, std::size_t last) const;

  void AddParticipant(absl::string_view worker);
  // The group shrinks; a sync round waiting only on `worker` closes, its
  // record saying `why` (kLeave or kLeaseExpiry). Bounded: the waits of
  // `worker`'s own pushes for their turn (WaitForTurn) end ABORTED, saying
  // it left or its lease expired.
  void RemoveParticipant(absl::string_view worker, ClosedOn why,
                         Deferred& deferred);
  // The participants, sorted.
  std::vector<std::string> Participants() const;
  // Sync: the participants the open round still waits for, sorted; empty
  // before its first chunk.
  std::vector<std::string> WaitingFor() const;
  // Marks the tensor dropped (TensorStore::Drop): every later push to it
  // fails with NOT_FOUND saying so, and so do the waits pending now. Its
  // open round never closes.
  void MarkDropped(Deferred& deferred);

  // Non-mutating check that `key` may start, resume or resend a push.
  // A round ahead of the open one counts in the open one if the tensor was
  // restored from a snapshot (its rounds went back), else is ABORTED.
  // ABORTED (stale sequence, round closed or not reached, or key.held_bytes
  // not held: see HeldLocked), FAILED_PRECONDITION (other update kind
  // collecting), ALREADY_EXISTS (the worker already contributed to the
  // round), INVALID_ARGUMENT (a sequence reused for another round or kind,
  // key.held_bytes past the end of the tensor).
  absl::Status CheckContribution(const ContributionKey& key) const;

  // Sync mode. Sums the chunk at byte `offset` (validated by the caller:
  // aligned, right length, finite) into the open round, with weight
  // key.weight. A chunk this
  // worker's contribution to the round already delivered is skipped, so a
  // resend, or a new push after an interrupted one, applies each chunk once.
  // Codes as CheckContribution, and ABORTED for a chunk whose part of the
  // round's result was already published (its worker was not waited for).
  // `length` is the chunk's float32 bytes; `data` holds its values in
  // `format`. Publishes the chunks of the result every member has now
  // delivered (see ReadResult), waking the waits for them.
  absl::Status AddChunk(const ContributionKey& key, std::uint64_t offset,
                        Pieces data, WireFormat format, std::uint64_t length,
                        Deferred& deferred);

  // Sync mode. Marks the push complete and closes the round if it was the
  // last one missing. INVALID_ARGUMENT if not all bytes arrived, ABORTED if
  // the push was superseded or its round closed meanwhile.
  absl::StatusOr<ContributionResult> Complete(absl::string_view worker,
                                              std::uint64_t sequence,
                                              Deferred& deferred);

  // Async and bounded. Applies a whole push (`payload` holds elements()
  // values) at once and publishes a new version; a resend of an applied push
  // is a duplicate. INVALID_ARGUMENT if the result would not be finite
  // (nothing applied), ABORTED if bounded and the worker is `staleness`
  // pushes ahead of the slowest participant (WaitForTurn first) or is not
  // a participant (it left, or its lease expired), plus the codes of
  // CheckContribution.
  absl::StatusOr<ContributionResult> ApplyPush(const ContributionKey& key,
                                               absl::Span<const float> payload,
                                               Deferred& deferred);

  // Sync mode: the result of round `round` as far as it is published. A
  // chunk of the open round's result is published (averaged, final) as
  // soon as every member of the round has delivered its copy of the chunk,
  // before the round closes, so that pulls of the result overlap the
  // pushes. The members are the participants when the first chunk was
  // published; a worker that joins later takes part from the next round.
  // For the round that closed last, its whole published value. ABORTED for
  // a round older than that (its result is no longer held) or not open yet.
  absl::StatusOr<RoundResult> ReadResult(std::uint64_t round) const;

  // The current value; for a 16-bit `format` also its encoding, made once
  // per version and format (by the first pull that asks) and shared by
  // every pull of that version.
  PublishedTensor Read(WireFormat format = WireFormat::kFloat32) const;
  std::uint64_t version() const;
  // Sync: closes the open round if its quorum contributed and its timeout
  // passed (see StoreOptions::round_quorum). True if it closed.
  bool CloseIfOverdue(Deferred& deferred);

  std::uint32_t participant_count() const;
  std::uint32_t contributed_count() const;
  // Bytes held by value, accumulator and 16-bit encodings, and PolicyBytes
  // (for memory accounting and tests).
  std::uint64_t AllocatedBytes() const;
  // Bytes the policy holds: the optimizer's state and a buffered
  // aggregator's copies of contributions.
  std::uint64_t PolicyBytes() const;
  // The most bytes the optimizer of `policy` holds beside a value of
  // `elements` floats stored in chunks of `chunk_elements`: its state
  // slots, as many again (a sync tensor's state from before the open round,
  // an async or bounded one's copy to undo a push's step), and a sync
  // step's undo copy of one chunk.
  static std::uint64_t MaxStateBytes(const CompiledPolicy& policy,
                                     std::uint64_t elements,
                                     std::uint64_t chunk_elements);
  // What StoreOptions::max_total_bytes counts for this tensor: bytes() and
  // the MaxStateBytes of its policy.
  std::uint64_t admitted_bytes() const {
    return bytes() + MaxStateBytes(*policy_, elements_, chunk_elements_);
  }
  // A buffered aggregator's copies, held or due: the larger of the
  // participants and the copies held, times bytes() (0 if not buffered).
  std::uint64_t BufferedBytes() const;

  using WaitCallback = std::function<void(absl::Status)>;
  // If the version is already >= `version`, or `bytes` of it are published
  // while its round is still open (see ReadResult), returns nullopt and does
  // not call `done`. Otherwise calls `done(OK)` once that is so, from the
  // thread that publishes it, outside the lock, and returns an id for
  // CancelWait. (bytes = ~0: the version only.)
  std::optional<std::uint64_t> WaitForResult(std::uint64_t version,
                                             std::uint64_t bytes,
                                             WaitCallback done);
  // Bounded: returns nullopt if `worker` may apply push `sequence` now (it
  // is fewer than `staleness` pushes ahead of the slowest participant, or
  // the push is a resend, or the tensor is not bounded) or never will (it
  // is not a participant: ApplyPush refuses it). Otherwise calls `done(OK)`
  // once it may, as WaitForResult, or `done(ABORTED)` if `worker` leaves
  // or its lease expires first (RemoveParticipant).
  std::optional<std::uint64_t> WaitForTurn(absl::string_view worker,
                                           std::uint64_t sequence,
                                           WaitCallback done);
  // True if the waiter (WaitForResult, WaitForTurn) was removed before being
  // called.
  bool CancelWait(std::uint64_t id);
  // Calls every waiter with `status` (the store is closing).
  void FailWaiters(const absl::Status& status, Deferred& deferred);

 private:
  struct Contribution {
    std::uint64_t sequence = 0;
    std::uint64_t round = 0;        // The round it counts in.
    std::uint64_t named_round = 0;  // The round the push named (sync).
    UpdateKind kind = UpdateKind::kWeights;
    std::uint64_t progress = 0;  // Bytes applied, a prefix of the tensor.
    bool complete = false;
    std::uint64_t ready_version = 0;  // Set when complete.
    double weight = 1.0;              // Of its latest push.
  };
  struct Waiter {
    std::uint64_t id;
    std::uint64_t version;  // Fires at this version,
    std::uint64_t bytes;    // or when this much of it is published.
    WaitCallback done;
  };
  struct TurnWaiter {
    std::uint64_t id;
    std::string worker;
    WaitCallback done;
  };

  // Checks of a resend of `previous` (the same sequence): the same update
  // kind and, in sync mode, the same round named.
  absl::Status CheckResendLocked(const ContributionKey& key,
                                 const Contribution& previous) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks of a push that is not a resend of `previous`.
  absl::Status CheckNewLocked(const ContributionKey& key,
                              const Contribution* previous) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The bytes of push `key` the tensor holds already, and would skip: a
  // resend's delivered prefix, or (sync) that of the unfinished
  // contribution to the open round a new sequence resumes; else 0.
  // `previous`: the worker's last contribution, or null.
  std::uint64_t HeldLocked(const ContributionKey& key,
                           const Contribution* previous) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CheckResendLocked or CheckNewLocked, then that the tensor holds
  // key.held_bytes of the push (ABORTED if not: the client no longer has
  // those values, so the push cannot be completed with its own).
  absl::Status CheckPushLocked(const ContributionKey& key,
                               const Contribution* previous) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Round closed / version published: observer and waiters.
  void PublishLocked(RoundClosed closed, Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands `deferred` the callbacks of the waiters that are satisfied now.
  void WakeWaitersLocked(Deferred& deferred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SatisfiedLocked(const Waiter& waiter) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: whether the open round waits for participant `worker` (every
  // participant until a chunk of the result is published; then the members).
  bool WaitedForLocked(const std::string& worker) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Participants the open round waits for, and those of them whose
  // contribution to it is complete.
  std::uint32_t WaitedForCountLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::uint32_t CompleteParticipantsLocked() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // AddChunk's checks and bookkeeping, under the lock: true if chunk `k`
  // (at byte `offset`) is now this push's to sum (it is in summing_);
  // false if the push delivered it before (skipped); or why not.
  absl::StatusOr<bool> ClaimChunkLocked(const ContributionKey& key,
                                        std::uint64_t offset, std::uint64_t k)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: waits (releasing mu_) until no chunk is being summed, so that
  // the caller may close the round or stop waiting for a worker. A sum is
  // short and takes no other lock, so the wait is too.
  void AwaitNoSumsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: publishes the chunks of the open round's result that every
  // participant it waits for has delivered (none from the first chunk
  // being summed on).
  void PublishReadyChunksLocked(Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: turns chunk `k` of the accumulator into the round's result.
  // `before_close`: published while the round is open (see round_state_).
  void FinishChunkLocked(std::uint64_t k, bool before_close)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: the aggregate of the round's contributions to the `n` elements
  // from `begin` (chunk `k`) into `out`; false if none delivered them.
  bool AggregateChunkLocked(std::uint64_t k, std::uint64_t begin,
                            std::uint64_t n, float* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The optimizer's step over the `n` elements from `begin`: `out` holds
  // the aggregate and gets the new value. False (state unchanged) if a
  // result or the new state is not finite and the server does not allow
  // that.
  bool StepLocked(std::uint64_t begin, std::uint64_t n, UpdateKind kind,
                  bool single_push, float* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bounded: whether `worker` may apply a push now.
  bool TurnLocked(const std::string& worker) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bounded: the fewest pushes any participant applied (since it joined).
  std::uint64_t MinClockLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bounded: hands `deferred` the turn waiters whose turn came.
  void WakeTurnWaitersLocked(Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: every participant contributed, or the quorum did and the round's
  // timeout passed.
  bool RoundCanCloseLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sync: folds the accumulator into a new published value; version += 1.
  // `cause`: kAll when a contribution closes it (kQuorum in the record if
  // some participant had not contributed), kQuorum at the round's timeout,
  // else the departure of `departed` (kLeave, kLeaseExpiry).
  void CloseRoundLocked(ClosedOn cause, absl::string_view departed,
                        Deferred& deferred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps `record`, forgetting the oldest beyond history_per_tensor.
  void RecordLocked(VersionRecord record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls every waiter (WaitForResult, WaitForTurn) with `status`.
  void FailWaitersLocked(const absl::Status& status, Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::uint64_t PolicyBytesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // NOT_FOUND once dropped, else OK.
  absl::Status CheckNotDroppedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string name_;
  const std::vector<std::int64_t> shape_;
  const std::vector<std::int64_t> whole_shape_;
  const std::uint64_t elements_;
  const StoreOptions* const options_;  // Owned by the store; outlives this.
  const std::uint64_t chunk_elements_;
  const std::shared_ptr<const CompiledPolicy> policy_;

  const std::shared_ptr<ValueRecycler> recycler_;

  mutable absl::Mutex mu_;
  // The latest encoding made per 16-bit format (index: WireFormat), and the
  // version it encodes. Its own lock: encoding never holds up pushes.
  mutable absl::Mutex encoded_mu_;
  mutable EncodedValue encoded_[3] ABSL_GUARDED_BY(encoded_mu_);
  mutable std::uint64_t encoded_version_[3] ABSL_GUARDED_BY(encoded_mu_) = {};
  TensorValue value_ ABSL_GUARDED_BY(mu_);
  std::uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  // Restored from a snapshot: its rounds may have gone back, so a push
  // naming a round ahead of the open one counts in the open one.
  bool restored_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<std::string> participants_ ABSL_GUARDED_BY(mu_);
  // Last push of every worker that ever pushed: dedupe and round state.
  absl::flat_hash_map<std::string, Contribution> contributions_
      ABSL_GUARDED_BY(mu_);

  // Sync: the open round's sum of weight * payload, and the weight summed
  // per chunk (a chunk the round received from nobody keeps its old value).
  // A chunk of acc_ holds garbage until its first contribution stores into
  // it, so a round needs no zeroing pass. Its first result_bytes_ are the
  // round's result already (published: pulls read them without the lock,
  // and nothing writes them again); at the close the whole of it becomes
  // the value. Allocated with the tensor and again at each close, so the
  // open round's result always has its storage.
  TensorStorage acc_ ABSL_GUARDED_BY(mu_);
  std::uint64_t result_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The participants the round waits for, set when it publishes its first
  // chunk (see ReadResult).
  std::optional<absl::flat_hash_set<std::string>> members_ ABSL_GUARDED_BY(mu_);
  bool round_started_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<double> chunk_weight_ ABSL_GUARDED_BY(mu_);
  // Chunks being summed into acc_ right now, outside mu_ (see AddChunk):
  // nothing else writes, publishes or closes them until they are done.
  absl::flat_hash_set<std::uint64_t> summing_ ABSL_GUARDED_BY(mu_);
  std::uint64_t round_non_finite_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<UpdateKind> acc_kind_ ABSL_GUARDED_BY(mu_);
  std::uint32_t round_contributors_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t round_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time round_start_ ABSL_GUARDED_BY(mu_);
  // When the round's latest complete contribution came, and the one
  // before it (round_start_ before there were two): RoundClosed::last_wait.
  absl::Time round_latest_done_ ABSL_GUARDED_BY(mu_);
  absl::Time round_previous_done_ ABSL_GUARDED_BY(mu_);

  // The optimizer's state: state_slots() arrays of elements_ floats, and
  // room to put a chunk's back if its step is thrown away.
  std::vector<std::vector<float>> state_ ABSL_GUARDED_BY(mu_);
  std::vector<float> state_backup_ ABSL_GUARDED_BY(mu_);
  // Sync: the state from before the open round's step of the chunks it
  // published before closing (its first result_bytes_), slot after slot of
  // elements_ floats: a snapshot keeps the value from before the round, and
  // so this state (Save). Allocated at the first such chunk, then kept.
  std::vector<float> round_state_ ABSL_GUARDED_BY(mu_);
  // Buffered aggregators: each worker's values pushed to the open round
  // (its first `progress` bytes are this round's), kept for its next
  // rounds while it is a participant.
  absl::flat_hash_map<std::string, std::vector<float>> buffers_
      ABSL_GUARDED_BY(mu_);
  // Aggregator::Scales of the open round's complete contributions, by
  // worker; made when the round's first chunk is finished.
  std::optional<absl::flat_hash_map<std::string, double>> scales_
      ABSL_GUARDED_BY(mu_);
  // Bounded: pushes each participant applied since it joined (a worker
  // joining starts at the slowest participant's count), and the pushes
  // waiting for their turn.
  absl::flat_hash_map<std::string, std::uint64_t> clocks_ ABSL_GUARDED_BY(mu_);
  std::vector<TurnWaiter> turn_waiters_ ABSL_GUARDED_BY(mu_);
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);  // Aggregator noise.

  // The records of the latest published versions, oldest first.
  std::deque<VersionRecord> history_ ABSL_GUARDED_BY(mu_);
  bool dropped_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  std::uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_SHARED_TENSOR_H_
