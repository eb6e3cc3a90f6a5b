// Settings of the tensor store and the vocabulary they use.
#ifndef WEIGHTD_SERVER_CORE_OPTIONS_H_
#define WEIGHTD_SERVER_CORE_OPTIONS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/policy_spec.h"
#include "common/update_kind.h"
#include "common/wire.h"
#include "server/core/policy.h"

namespace weightd::core {

using ::weightd::UpdateKind;  // common/update_kind.h

// How a version came to be published (VersionRecord::closed_on).
enum class ClosedOn {
  kAll,          // Sync: every participant it waited for contributed.
  kQuorum,       // Sync: its quorum, at StoreOptions::round_timeout.
  kLeave,        // Sync: the last participant missing left.
  kLeaseExpiry,  // Sync: ... its lease expired.
  kPush,         // Async: one push applied.
};

// One contribution a published version was made of.
struct HistoryContribution {
  std::string worker;
  std::uint64_t sequence = 0;
  double weight = 1.0;
  UpdateKind kind = UpdateKind::kWeights;
  // False: the worker delivered part of the tensor, then the round closed
  // without it; the chunks it delivered are in the mean.
  bool complete = true;
};

// Where one published version of a tensor came from (its provenance).
struct VersionRecord {
  std::uint64_t version = 0;  // Published: the round that closed + 1.
  ClosedOn closed_on = ClosedOn::kAll;
  std::vector<HistoryContribution> contributions;  // Sorted by worker.
  // Participants the round closed without: those of a quorum that had not
  // contributed, or the worker whose departure closed it.
  std::vector<std::string> dropped;
  absl::Time first_contribution;  // The round's first chunk (async: push).
  absl::Time closed;
};

// Reported once per closed round (sync) or applied push (async).
struct RoundClosed {
  std::string tensor;
  std::uint64_t round = 0;  // The round that closed; version is round + 1.
  std::uint32_t contributors = 0;  // Complete contributions averaged.
  std::uint64_t bytes = 0;         // Payload bytes accumulated for the round.
  absl::Duration duration;         // From first accepted chunk to close.
  // Chunks whose mean was not finite (overflow): they kept their old value.
  std::uint64_t non_finite_chunks = 0;
  // Participants it closed without (on its quorum, at its timeout).
  std::uint32_t missing = 0;
  // How long the last contributor kept the round waiting: from the
  // contribution before the last to the close (from the first chunk if
  // there was one contribution). Closed otherwise (a quorum at its timeout,
  // a participant that left or expired): from the latest contribution to
  // the close. Zero in async mode.
  absl::Duration last_wait;
};

// Reported when a worker's push to a sync round completes (counted once;
// a resend of it is not reported again).
struct ContributionCounted {
  std::string tensor;
  std::string worker_id;
  std::uint64_t round = 0;
  std::uint32_t contributed = 0;  // Complete contributions to it so far.
};

// Reported when a worker's lease runs out.
struct WorkerExpired {
  std::string worker_id;
  std::vector<std::string> tensors;  // The sharing groups it left.
  absl::Duration silent_for;         // Since its last call.
};

// How many of a tensor's participants must have contributed before a sync
// round may close without the others (see StoreOptions::round_timeout).
struct RoundQuorum {
  // A count of participants if > 0 (capped at the group's size) ...
  std::uint32_t count = 0;
  // ... else this fraction of them, rounded up. 1: every participant.
  double fraction = 1.0;

  // The number of complete contributions that suffices for `participants`.
  std::uint32_t Needed(std::uint32_t participants) const {
    if (count > 0) return std::min(count, participants);
    const auto needed =
        static_cast<std::uint32_t>(std::ceil(fraction * participants - 1e-9));
    return std::clamp<std::uint32_t>(needed, participants > 0 ? 1 : 0,
                                     participants);
  }
};

struct StoreOptions {
  // The consistency of a tensor whose policy names none.
  Mode mode = Mode::kSync;
  // optimizer=plain's parameters where a policy names none: the step size
  // for delta updates (lr), and for async weights (mix: value += mix *
  // (pushed - value), in (0, 1]).
  double server_lr = 1.0;
  double async_mix = 0.5;
  // The policy of a tensor whose creator names none (docs/algorithms.md),
  // over the base above (mode, optimizer=plain, aggregator=mean); and
  // (name glob, policy) pairs, the first that matches a tensor's name
  // applying over `default_policy`. Checked by TensorStore::Create.
  PolicySpec default_policy;
  std::vector<std::pair<std::string, PolicySpec>> policy_patterns;
  // Aggregators that hold every contribution of a round (median, trimmed
  // mean, clipped mean) hold participants x tensor bytes per tensor; a Join
  // that would take the sum over all tensors past this is refused
  // (RESOURCE_EXHAUSTED). 0: no limit.
  std::uint64_t max_buffered_bytes = std::uint64_t{1} << 30;
  // Seeds the noise of clipped_mean (0: a random seed; tests set it).
  std::uint64_t random_seed = 0;
  // Storage and wire chunk size; a multiple of 4 in [kMinChunkBytes,
  // kMaxChunkBytes].
  std::uint64_t chunk_bytes = kDefaultChunkBytes;
  // Accept NaN / Inf in payloads (rejected with INVALID_ARGUMENT by default).
  bool allow_non_finite = false;
  // Largest tensor a Join may create.
  std::uint64_t max_tensor_bytes = std::uint64_t{4} << 30;
  // Largest sum of all tensors' sizes, each with the most its optimizer's
  // state can hold (SharedTensor::MaxStateBytes: adam 4 floats per element
  // and, on a sync tensor, 2 per element of one chunk; momentum half that;
  // plain none), 0: no limit. A sync tensor also holds its open round's
  // accumulator (one more value), and buffered aggregators their copies
  // (max_buffered_bytes).
  std::uint64_t max_total_bytes = 0;
  // Most workers that may be members at once (0: no limit).
  std::uint32_t max_workers = 0;
  // Most tensors, and bytes of tensors, the joins of one principal
  // (Claimant::principal; not the unnamed one of a server without a policy)
  // may create (0: no limit). Counted from the daemon's start: tensors
  // restored from a snapshot count for nobody.
  std::uint32_t max_tensors_per_principal = 0;
  std::uint64_t max_bytes_per_principal = 0;
  // A joined worker that makes no call for this long (pushes, barriers,
  // heartbeats) loses its lease and leaves every sharing group, so that sync
  // rounds stop waiting for it. Enforced by TensorStore::ExpireLeases().
  absl::Duration lease_timeout = absl::Seconds(6);
  // Sync rounds close when every participant contributed, or once the
  // quorum has contributed and `round_timeout` has passed since the round's
  // first chunk (checked by TensorStore::CloseOverdueRounds()). Pushes of
  // the others to the closed round are then ABORTED.
  RoundQuorum round_quorum;
  absl::Duration round_timeout = absl::ZeroDuration();
  // Each tensor keeps the VersionRecord of its last `history_per_tensor`
  // published versions (0: none), in snapshots too.
  std::uint32_t history_per_tensor = 64;
  // Time source (tests inject a fake).
  std::function<absl::Time()> now = [] { return absl::Now(); };
  // Called outside every lock, on the thread that completed the push,
  // before on_round_closed if the push closed the round.
  std::function<void(const ContributionCounted&)> on_contribution;
  // Called outside every lock, on the thread that closed the round.
  std::function<void(const RoundClosed&)> on_round_closed;
  // Called outside every lock for each expired lease.
  std::function<void(const WorkerExpired&)> on_worker_expired;
};

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_OPTIONS_H_
