// TensorStore: the shared tensors of one weightd server, the workers that
// share them, and the rounds that average their contributions.
//
// Free of gRPC: the service layer converts wire messages into these calls.
// Every method is thread-safe. Callbacks the store invokes (round observers,
// version waits) run outside its locks, on the thread whose call caused them.
//
// One class, defined by concern: join.cc (Join and its admission),
// leases.cc (renewal, holds, Leave, expiry), push_session.cc (BeginPush and
// PushSession), barriers.cc (EnterBarrier over Barriers), store_state.cc
// (Save, Restore) and tensor_store.cc (creation, reads, waits, status).
#ifndef WEIGHTD_SERVER_CORE_TENSOR_STORE_H_
#define WEIGHTD_SERVER_CORE_TENSOR_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/core/barriers.h"
#include "server/core/kernels.h"
#include "server/core/options.h"
#include "server/core/policy.h"
#include "server/core/shared_tensor.h"

namespace weightd::core {

// A tensor as a worker declares it at Join.
struct Declaration {
  std::string name;
  std::vector<std::int64_t> shape;
  // Exactly the shape's element count; becomes the value if the tensor is
  // new. May be empty for a tensor that exists (its value is kept anyway),
  // or if the value comes in chunks (JoinSession::AddChunk).
  std::vector<float> initial_value;
  // Of the whole tensor, if this is one shard's part of it; else empty.
  std::vector<std::int64_t> whole_shape = {};
  // How its pushes are to be combined (server/core/policy.h). A new tensor
  // gets it over the server's default for its name; for one that exists,
  // each field it names must be the tensor's.
  PolicySpec policy = {};
};

struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> shape;
  std::uint64_t version = 0;
  std::uint32_t participants = 0;
  std::uint32_t contributed = 0;
  // Status() only: of the whole tensor if this is a shard's part (else
  // empty), and the participants the open round still waits for.
  std::vector<std::int64_t> whole_shape = {};
  std::vector<std::string> waiting_for = {};
  // Its policy's consistency; the whole policy and the bytes it holds
  // beside the value (the optimizer's state, a buffered aggregator's
  // copies of the round's contributions) unless asked without.
  Mode consistency = Mode::kSync;
  TensorPolicy policy = {};
  std::uint64_t policy_bytes = 0;
};

struct JoinedTensor {
  TensorInfo info;
  bool created = false;
};

// Who asks to Join: which process, and from where (for messages only).
struct Claimant {
  // Drawn at random once per client process; tells a process re-joining its
  // own membership from another process using the same worker id. 0 matches
  // no instance, not even 0.
  std::uint64_t instance = 0;
  // Where the Join came from, e.g. "ipv4:10.0.0.3:41234"; may be empty.
  std::string peer;
  // The authenticated principal joining (server/service/auth_policy.h);
  // empty on a server without a policy. The membership's lease belongs to
  // it (TensorStore::HolderOf).
  std::string principal = {};
};

// What a Join replaced.
enum class Takeover {
  kNone,         // The worker id had no membership.
  kSameProcess,  // A live membership of the same instance (a network cut).
  kRestored,     // A membership restored from a snapshot, not yet claimed.
  kLapsed,       // A membership that had left or whose lease had expired.
};

struct JoinResult {
  std::uint64_t lease_id = 0;
  std::uint64_t next_sequence = 1;
  std::vector<JoinedTensor> tensors;  // In declaration order.
  Takeover takeover = Takeover::kNone;
};

// What a Join declares (TensorStore::BeginJoin).
struct JoinHeader {
  std::string worker_id;
  Claimant claimant;
  // In the order the result lists them. A declaration's initial value comes
  // either here (a caller holding it in memory) or through
  // JoinSession::AddChunk, never both.
  std::vector<Declaration> declarations;
};

struct PushHeader {
  std::uint64_t lease_id = 0;
  std::uint64_t sequence = 0;
  UpdateKind kind = UpdateKind::kWeights;
  double weight = 1.0;
  struct Entry {
    std::string name;
    std::uint64_t round = 0;
    // A resend: the first held_bytes (float32 bytes) of the tensor must be
    // held from this push already (see ContributionKey::held_bytes).
    std::uint64_t held_bytes = 0;
  };
  std::vector<Entry> entries;
  // Of the chunks' payloads (their offsets are float32 bytes regardless).
  WireFormat format = WireFormat::kFloat32;
};

struct PushResult {
  std::string name;
  ContributionResult outcome;
};

struct WorkerInfo {
  std::string worker_id;
  std::uint64_t lease_id = 0;
  std::vector<std::string> tensors;  // Sorted.
  std::string peer;                  // Of its last Join (Claimant::peer).
  absl::Duration member_for;         // Since its last Join (or restore).
  absl::Duration idle;               // Since its last call renewed the lease.
};

// Everything a restarted server needs to continue where a snapshot was
// taken: published values with their versions, the push history of closed
// rounds (so a resent push is still recognised), and the memberships.
// Contributions to a round still open are not part of it: after a restore
// their pushes are new pushes.
struct SavedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::uint64_t version = 0;
  TensorValue value;  // Shared with the live store: no copy is made.
  std::vector<SavedContribution> contributions;
  std::vector<std::int64_t> whole_shape = {};  // See Declaration.
  std::vector<VersionRecord> history = {};     // Ascending versions.
  // Every field named (empty: a snapshot of before policies, restored with
  // the server's default for the name).
  PolicySpec policy = {};
  // The optimizer's state slots, each of the value's size (empty: none,
  // or restored as the optimizer's initial state).
  std::vector<std::vector<float>> optimizer_state = {};
};

struct SavedWorker {
  std::string id;
  std::uint64_t lease_id = 0;  // 0: not a member (left or expired).
  std::uint64_t max_sequence = 0;
  std::vector<std::string> tensors;  // Sorted.
  std::string principal = {};        // Claimant::principal of its Join.
};

// Who holds a lease (TensorStore::LeaseHolder).
struct LeaseHolder {
  std::string worker_id;
  std::string principal;  // Claimant::principal of the worker's Join.
};

struct StoreState {
  std::vector<SavedTensor> tensors;
  std::vector<SavedWorker> workers;
};

// The records of a tensor's versions (TensorStore::History).
struct TensorHistory {
  std::vector<VersionRecord> records;  // Ascending versions.
  std::uint64_t oldest_kept = 0;       // 0: none kept.
  std::uint64_t version = 0;           // The tensor's current version.
};

// What TensorStore::Drop did.
struct DropResult {
  std::vector<std::string> removed_workers;  // Left its group; sorted.
  std::uint64_t freed_bytes = 0;             // Value, accumulator, encodings.
};

struct StoreStatus {
  std::vector<TensorInfo> tensors;    // Sorted by name.
  std::vector<WorkerInfo> workers;    // Sorted by id.
  std::vector<BarrierInfo> barriers;  // With waiting workers; by name.
  std::uint64_t rounds_closed = 0;
};

// Limits on what one Join may declare.
inline constexpr std::size_t kMaxRank = 32;
inline constexpr std::size_t kMaxTensorsPerCall = 1 << 16;
// Push weights a float32 sum can carry without under- or overflow.
inline constexpr double kMinPushWeight = 1e-6;
inline constexpr double kMaxPushWeight = 1e15;

// Computes the element count of `shape`: INVALID_ARGUMENT for a dimension
// < 1 or more than kMaxRank dimensions, RESOURCE_EXHAUSTED if it exceeds
// `max_bytes` as float32.
absl::StatusOr<std::uint64_t> ElementCount(
    const std::vector<std::int64_t>& shape, std::uint64_t max_bytes);

class TensorStore;
class Wait;

// One Join in flight: created by TensorStore::BeginJoin, fed the initial
// values of the declared tensors chunk by chunk, then finished. Nothing in
// the store changes before Finish(). Not thread-safe (one stream drives it);
// the store must outlive it.
class JoinSession {
 public:
  JoinSession(const JoinSession&) = delete;
  JoinSession& operator=(const JoinSession&) = delete;

  // The worker that joins (also after Finish()).
  const std::string& worker_id() const { return header_.worker_id; }

  // Takes one chunk of the initial value of declaration `index`: float32
  // bytes at byte `offset`, chunks in order, each options().chunk_bytes long
  // but the last. The value is kept only for a tensor the store lacked at
  // BeginJoin; for one it holds, the chunk is checked and dropped, as that
  // tensor keeps its value. INVALID_ARGUMENT for
  // an index past the list, an offset out of order, a wrong length, or
  // NaN/Inf in a kept value; OUT_OF_RANGE for an offset past the tensor's
  // end. After an error the session is dead: every later call returns the
  // same error. `data` is the byte ranges the chunk arrived in.
  absl::Status AddChunk(std::uint32_t index, std::uint64_t offset, Pieces data);
  // The same for a payload in one piece.
  absl::Status AddChunk(std::uint32_t index, std::uint64_t offset,
                        absl::string_view data) {
    return AddChunk(index, offset, Pieces(&data, 1));
  }

  // Completes the Join (see TensorStore::Join for what it does and returns):
  // INVALID_ARGUMENT if a value arrived in part (a declaration that got no
  // chunk offers no value: its tensor must exist), plus the codes of
  // TensorStore::Join. Once only: a second call is FAILED_PRECONDITION.
  absl::StatusOr<JoinResult> Finish();

 private:
  friend class TensorStore;
  // `bytes`: each tensor's float32 size; `keep`: whether its value is kept.
  JoinSession(TensorStore* store, JoinHeader header,
              std::vector<std::uint64_t> bytes, std::vector<bool> keep);

  TensorStore* const store_;
  JoinHeader header_;
  const std::vector<std::uint64_t> bytes_;
  const std::vector<bool> keep_;
  std::vector<std::uint64_t> next_offset_;
  absl::Status error_;
};

// One push in flight: created by TensorStore::BeginPush, fed chunks in
// order, then finished. Not thread-safe (one stream drives it).
// A sync tensor's chunks are summed into the open round as they arrive; if
// the session ends unfinished, the chunks it delivered stay in the round and
// the worker's next push to that round continues after them (each chunk
// counts once). An async or bounded tensor's chunks are staged in the
// session and the push is applied whole by Finish(), or not at all; a
// bounded one's after AwaitTurn().
class PushSession {
 public:
  PushSession(const PushSession&) = delete;
  PushSession& operator=(const PushSession&) = delete;

  const PushHeader& header() const { return header_; }
  // The float32 size of header().entries[index]'s tensor.
  std::uint64_t tensor_bytes(std::uint32_t index) const;

  // Takes one chunk of header().entries[index], its payload in `data` (the
  // slices it arrived in, summed without a copy). UNAVAILABLE once the store
  // is closing; INVALID_ARGUMENT for an index past the list, an offset out of
  // order or unaligned, a wrong length, or NaN/Inf; OUT_OF_RANGE for an
  // offset past the tensor's end; plus the codes of
  // SharedTensor::CheckContribution. After an error the session is dead:
  // every later call returns the same error.
  absl::Status AddChunk(std::uint32_t index, std::uint64_t offset, Pieces data);
  // The same for a payload in one piece.
  absl::Status AddChunk(std::uint32_t index, std::uint64_t offset,
                        absl::string_view data) {
    return AddChunk(index, offset, Pieces(&data, 1));
  }

  // Completes the push for every tensor (sync: may close rounds; async:
  // applies it). INVALID_ARGUMENT if a tensor did not arrive whole or (async)
  // the result would overflow; ABORTED if superseded or its round closed
  // meanwhile, or (bounded) if the worker is not a participant any more
  // (it left, or its lease expired). Tensors are completed in order: on an
  // error the ones before it are completed.
  absl::StatusOr<std::vector<PushResult>> Finish();

  // Calls `done(OK)` once every bounded tensor of the push lets the worker
  // apply it (it is fewer than `staleness` pushes ahead of the tensor's
  // slowest participant), at once if they all do; `done(error)` if a
  // tensor is dropped (NOT_FOUND), the worker leaves (ABORTED, naming the
  // tensor: the push is not applied) or the store closes (UNAVAILABLE)
  // first. The wait keeps the worker's lease alive. Call before Finish().
  // UNAVAILABLE (closed).
  absl::StatusOr<std::unique_ptr<Wait>> AwaitTurn(
      std::function<void(absl::Status)> done);
  // Whether the push has a bounded tensor (AwaitTurn before Finish).
  bool waits_for_turn() const;

 private:
  friend class TensorStore;
  PushSession(TensorStore* store, std::string worker, PushHeader header,
              std::vector<std::shared_ptr<SharedTensor>> tensors);

  TensorStore* const store_;
  const std::string worker_;
  const PushHeader header_;
  const std::vector<std::shared_ptr<SharedTensor>> tensors_;
  std::vector<std::uint64_t> next_offset_;
  // Async and bounded tensors' values (empty for a sync one's).
  std::vector<std::vector<float>> staged_;
  absl::Status error_;
};

// A pending wait registered with the store (for versions or a barrier).
// Destroying it cancels it. A wait made on behalf of a worker keeps that
// worker's lease alive until it is destroyed (the call is still open), and
// counts as a call of the worker when it is.
class Wait {
 public:
  explicit Wait(std::function<bool()> cancel,
                std::function<void()> on_destroy = nullptr)
      : cancel_(std::move(cancel)), on_destroy_(std::move(on_destroy)) {}
  ~Wait() {
    Cancel();
    if (on_destroy_) on_destroy_();
  }
  Wait(const Wait&) = delete;
  Wait& operator=(const Wait&) = delete;

  // Stops the wait. True if its callback had not been called and now never
  // will be; false if it has been or is being called. Idempotent.
  bool Cancel() {
    if (!cancel_) return false;
    return std::exchange(cancel_, nullptr)();
  }

 private:
  std::function<bool()> cancel_;
  std::function<void()> on_destroy_;
};

class TensorStore {
 public:
  // INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<TensorStore>> Create(
      StoreOptions options);
  // A store that continues from `state` (a snapshot): restored members get
  // a fresh lease period to come back. INVALID_ARGUMENT if `state` is
  // inconsistent (unknown tensors, sizes that do not match shapes, ...).
  static absl::StatusOr<std::unique_ptr<TensorStore>> Restore(
      StoreOptions options, StoreState state);

  // A consistent copy of the state to snapshot (values are shared, not
  // copied; cheap). Open rounds are left out, see StoreState.
  StoreState Save() const;
  ~TensorStore();
  TensorStore(const TensorStore&) = delete;
  TensorStore& operator=(const TensorStore&) = delete;

  const StoreOptions& options() const { return options_; }
  // The policies new tensors get unless their creator declares others.
  const PolicyDefaults& policy_defaults() const { return policy_defaults_; }

  // Starts a Join of `header.worker_id` (it starts or, for a known worker
  // id, replaces a membership; see Join). Checks the header before any
  // initial value is buffered: names, shapes, duplicates, the values given
  // in it, that the tensors the store holds are what is declared, and
  // whether the tensors it lacks fit its limits. Nothing changes until
  // JoinSession::Finish(), which checks everything that depends on the
  // store's state again. INVALID_ARGUMENT (names, shapes, value sizes,
  // duplicates, NaN), ALREADY_EXISTS (a tensor held with another shape, or
  // whole where this one is a part or the reverse), RESOURCE_EXHAUSTED (a
  // tensor too large, more than kMaxTensorsPerCall tensors, max_workers,
  // max_total_bytes), UNAVAILABLE (closed).
  absl::StatusOr<std::unique_ptr<JoinSession>> BeginJoin(JoinHeader header);

  // Starts (or replaces, for a known worker id) a membership, every initial
  // value in memory: BeginJoin and Finish at once. All-or-nothing: on error
  // nothing changed. The codes of BeginJoin, plus INVALID_ARGUMENT (a missing
  // value for a new tensor), ALREADY_EXISTS (a tensor of that name exists
  // with another shape, or whole where this one is a part or the reverse),
  // ABORTED (the worker id's lease is live and held by another instance: a
  // second process with the same id, or this process's previous life whose
  // lease has not expired yet; the message names the holder), UNAVAILABLE
  // (closed). A worker may declare no tensors (in a sharded job, all of its
  // tensors may live on other shards): it holds a lease and can enter
  // barriers. A tensor that exists keeps its value; a value declared for it
  // is ignored.
  absl::StatusOr<JoinResult> Join(absl::string_view worker_id,
                                  std::vector<Declaration> declarations,
                                  const Claimant& claimant = {});

  // Ends a membership and returns the id of the worker that left.
  // FAILED_PRECONDITION for an unknown lease.
  absl::StatusOr<std::string> Leave(std::uint64_t lease_id);

  // Renews a lease (every call that carries a lease renews it too).
  // FAILED_PRECONDITION if the lease is unknown or expired: re-join.
  absl::Status Heartbeat(std::uint64_t lease_id);

  // Ends every membership whose lease was not renewed for
  // options().lease_timeout, as Leave would (rounds waiting only on such a
  // worker close). Returns how many expired. The server calls it
  // periodically; tests call it after advancing their clock.
  int ExpireLeases();

  // Whether a joined worker holds `lease_id` now (without renewing it).
  bool HoldsLease(std::uint64_t lease_id) const;
  // The worker holding `lease_id` and the principal it joined as (without
  // renewing it). FAILED_PRECONDITION if no worker holds it.
  absl::StatusOr<LeaseHolder> HolderOf(std::uint64_t lease_id) const;

  // Closes every sync round whose quorum contributed and whose
  // options().round_timeout passed. Returns how many closed. The server
  // calls it periodically, beside ExpireLeases.
  int CloseOverdueRounds();

  // Validates a push header against the tensors' state; nothing changes
  // until chunks arrive. FAILED_PRECONDITION (unknown lease, tensor not
  // declared by this worker), NOT_FOUND (unknown tensor),
  // INVALID_ARGUMENT (weight outside [kMinPushWeight, kMaxPushWeight], kind,
  // duplicates), ABORTED (round closed or not reached, stale sequence; a
  // restored tensor counts a round ahead in its open one), ALREADY_EXISTS
  // (already contributed), UNAVAILABLE (closed).
  absl::StatusOr<std::unique_ptr<PushSession>> BeginPush(PushHeader header);

  // Calls `done(OK)` once every named tensor has reached its version, or
  // `done(UNAVAILABLE)` if the store closes first. If all are already
  // there, calls `done(OK)` before returning. NOT_FOUND for an unknown
  // tensor, INVALID_ARGUMENT for a repeated one. The wait keeps the lease
  // `lease_id` alive while it exists, if a worker holds that lease.
  using VersionRequest = std::vector<std::pair<std::string, std::uint64_t>>;
  absl::StatusOr<std::unique_ptr<Wait>> WaitForVersions(
      const VersionRequest& request, std::function<void(absl::Status)> done,
      std::uint64_t lease_id = 0);

  // As WaitForVersions for tensor `name` at `version`, but also fires once
  // the first `bytes` of that version are published while its round is
  // still open (see ReadResult).
  absl::StatusOr<std::unique_ptr<Wait>> WaitForResult(
      absl::string_view name, std::uint64_t version, std::uint64_t bytes,
      std::function<void(absl::Status)> done, std::uint64_t lease_id = 0);

  // Sync mode, the read path of a PushPull streaming its round's result
  // while the round is still open: the result of round `round` of tensor
  // `name` as far as it is published (SharedTensor::ReadResult). NOT_FOUND,
  // ABORTED.
  absl::StatusOr<RoundResult> ReadResult(absl::string_view name,
                                         std::uint64_t round) const;

  // Calls `done(OK)` once `count` distinct workers (this one included) have
  // entered barrier `name` (a generation is released); the barrier then
  // resets for its next generation. A worker that enters after a release
  // in which members still joined took part and it did not (it joined late,
  // or came back with a new lease) is late for that generation: it passes
  // at once. A worker entering again while it waits replaces its earlier
  // entry, whose callback gets ABORTED. Before `done(OK)`, `*pass` (if not
  // null) is set to how the worker passed; it must outlive the wait.
  // `done(UNAVAILABLE)` if the store closes first. Callbacks run outside the
  // store's locks, possibly before this returns. The wait keeps the
  // worker's lease alive while it exists. FAILED_PRECONDITION (unknown
  // lease), INVALID_ARGUMENT (name, count < 1 or > kMaxBarrierCount, or a
  // count other than that of the workers already waiting), UNAVAILABLE
  // (closed).
  static constexpr std::uint32_t kMaxBarrierCount = 1 << 20;
  absl::StatusOr<std::unique_ptr<Wait>> EnterBarrier(
      std::uint64_t lease_id, absl::string_view name, std::uint32_t count,
      std::function<void(absl::Status)> done, BarrierPass* pass = nullptr);

  // The read path of pulls: the current value and version of each named
  // tensor, and for a 16-bit `format` its encoding (SharedTensor::Read).
  // The values are shared, not copied. NOT_FOUND.
  absl::StatusOr<std::vector<PublishedTensor>> Read(
      const std::vector<std::string>& names,
      WireFormat format = WireFormat::kFloat32) const;

  // Tensor metadata (no payloads). `with_policy` false: without
  // TensorInfo::policy and policy_bytes (the push path's cheaper look).
  absl::StatusOr<TensorInfo> Describe(absl::string_view name,
                                      bool with_policy = true) const;

  // The newest `last` (0: all) records of versions `from` to `to` of
  // tensor `name` (inclusive; 0: from the oldest kept / to the newest).
  // NOT_FOUND.
  absl::StatusOr<TensorHistory> History(absl::string_view name,
                                        std::uint64_t from, std::uint64_t to,
                                        std::size_t last = 0) const;

  // Removes tensor `name` and frees its memory once the pulls streaming it
  // end. FAILED_PRECONDITION while it has participants, unless `force`:
  // they leave its group (its open round is abandoned), and their later
  // pushes and pulls of it get NOT_FOUND saying it was dropped, as do the
  // waits pending on it now. NOT_FOUND, UNAVAILABLE (closed).
  absl::StatusOr<DropResult> Drop(absl::string_view name, bool force);

  StoreStatus Status() const;

  // Bytes held by all tensors' values and accumulators.
  std::uint64_t AllocatedBytes() const;

  // True once Close() was called.
  bool closed() const { return closing_.load(std::memory_order_acquire); }

  // Refuses new work (UNAVAILABLE) and fails every pending version wait
  // with UNAVAILABLE. Idempotent.
  void Close();

 private:
  struct Worker {
    std::string id;
    std::uint64_t lease_id = 0;  // 0: not a member (left or expired).
    std::vector<std::string> tensors;
    std::uint64_t max_sequence = 0;
    absl::Time last_seen;
    std::uint64_t instance = 0;  // Claimant::instance of its last Join.
    std::string peer;            // Claimant::peer of its last Join.
    std::string principal;       // Claimant::principal of its last Join.
    absl::Time joined;           // Its last Join (or the restore).
    bool restored = false;  // Restored from a snapshot and not yet claimed.
    int holds = 0;          // Open waits keeping the lease alive.
  };

  friend class JoinSession;
  friend class PushSession;

  TensorStore(StoreOptions options, PolicyDefaults defaults);
  // The part of a Join that takes the lock: takeover, limits and the tensors'
  // state checked again, then the membership committed.
  absl::StatusOr<JoinResult> CommitJoin(const std::string& worker_id,
                                        const Claimant& claimant,
                                        std::vector<Declaration> declarations);
  // The worker holding `lease_id`, whose lease this renews.
  // FAILED_PRECONDITION if none does.
  absl::StatusOr<Worker*> WorkerForLeaseLocked(std::uint64_t lease_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends `worker`'s membership (Leave and expiry: `why`).
  void EndMembershipLocked(Worker& worker, ClosedOn why, Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps the lease of `worker` alive until the returned function is called
  // (by the Wait that holds it).
  std::function<void()> HoldLeaseLocked(Worker& worker)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLease(const std::string& worker_id, std::uint64_t lease_id);
  // Whether a join of `worker_id` by `principal` may create `new_tensors`
  // tensors of `new_bytes` whose optimizers hold `new_state_bytes` more
  // (counted against max_total_bytes, not the principal's quota):
  // RESOURCE_EXHAUSTED over a limit.
  absl::Status AdmitJoinLocked(absl::string_view worker_id,
                               absl::string_view principal,
                               std::uint32_t new_tensors,
                               std::uint64_t new_bytes,
                               std::uint64_t new_state_bytes) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<SharedTensor>> FindLocked(
      absl::string_view name) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  static TensorInfo InfoOf(const SharedTensor& tensor, bool with_policy = true);
  // What WaitForVersions and WaitForResult wait for, per tensor: `version`,
  // or its first `bytes` published. PushSession::AwaitTurn: if `turn_of` is
  // set, worker turn_of's turn to apply push `sequence`
  // (SharedTensor::WaitForTurn) instead.
  struct WaitTarget {
    absl::string_view name;
    std::uint64_t version = 0;
    std::uint64_t bytes = ~std::uint64_t{0};
    absl::string_view turn_of = {};
    std::uint64_t sequence = 0;
  };
  absl::StatusOr<std::unique_ptr<Wait>> WaitFor(
      absl::Span<const WaitTarget> targets,
      std::function<void(absl::Status)> done, std::uint64_t lease_id);

  // The policy a tensor whose declaration names none gets, and the
  // policy of a declaration: ApplyPolicySpec over the default for `name`.
  absl::StatusOr<TensorPolicy> PolicyFor(const Declaration& d) const;
  // What the policies of a Join's declarations cost (AdmitPolicyLocked).
  struct PolicyCost {
    // What buffered aggregators hold now plus what the join adds.
    std::uint64_t buffered = 0;
    // SharedTensor::MaxStateBytes of the tensors the join creates.
    std::uint64_t state = 0;
  };
  // Whether `d` may join or create its tensor (`held`, null if new) as to
  // its policy: INVALID_ARGUMENT (a policy that cannot be), ALREADY_EXISTS
  // (one that differs from the tensor's), RESOURCE_EXHAUSTED (a buffered
  // aggregator past max_buffered_bytes: `cost.buffered` counts the
  // declarations before `d`). Adds `d`'s to `cost`.
  absl::Status AdmitPolicyLocked(const Declaration& d, const SharedTensor* held,
                                 absl::string_view worker_id,
                                 PolicyCost& cost) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // What buffered aggregators hold: participants x bytes, summed.
  std::uint64_t BufferedBytesLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  StoreOptions options_;
  PolicyDefaults policy_defaults_;  // Made from options_ by Create().
  std::atomic<std::uint64_t> rounds_closed_{0};
  // Written under mu_ (so waits registered under mu_ see it), read anywhere.
  std::atomic<bool> closing_{false};

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<SharedTensor>> tensors_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::uint64_t, std::string> leases_ ABSL_GUARDED_BY(mu_);
  // What max_total_bytes counts: the tensors' SharedTensor::admitted_bytes
  // (values and the most their optimizers' state holds), summed.
  std::uint64_t total_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // What each principal's joins created since start (named principals).
  struct Created {
    std::uint32_t tensors = 0;
    std::uint64_t bytes = 0;
  };
  absl::flat_hash_map<std::string, Created> created_by_ ABSL_GUARDED_BY(mu_);
  // The principal whose join created each tensor (named principals only),
  // so that Drop gives its quota back.
  absl::flat_hash_map<std::string, std::string> creators_ ABSL_GUARDED_BY(mu_);
  // Names of tensors an admin dropped (Drop), for the NOT_FOUND of the
  // calls naming them; forgotten when the name is created again. Bounded:
  // cleared beyond kMaxDroppedNames.
  static constexpr std::size_t kMaxDroppedNames = 4096;
  absl::flat_hash_set<std::string> dropped_names_ ABSL_GUARDED_BY(mu_);
  absl::BitGen bitgen_ ABSL_GUARDED_BY(mu_);

  Barriers barriers_;  // Its lock is never held together with mu_.
};

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_TENSOR_STORE_H_
