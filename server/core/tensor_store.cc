#include "server/core/tensor_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/core/errors.h"
#include "server/core/kernels.h"

namespace weightd::core {

absl::StatusOr<std::uint64_t> ElementCount(
    const std::vector<std::int64_t>& shape, std::uint64_t max_bytes) {
  if (shape.size() > kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape has ", shape.size(), " dimensions; the limit is ", kMaxRank));
  }
  const std::uint64_t max_elements = max_bytes / kFloatBytes;
  std::uint64_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("dimension ", i, " of shape ", ShapeString(shape),
                       " is ", shape[i], "; dimensions must be >= 1"));
    }
    const auto dim = static_cast<std::uint64_t>(shape[i]);
    if (dim > max_elements || count > max_elements / dim) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "a tensor of shape ", ShapeString(shape), " exceeds the limit of ",
          max_bytes, " bytes per tensor (--max_tensor_bytes)"));
    }
    count *= dim;
  }
  return count;
}

// ---------------------------------------------------------------------------
// Version waits

namespace {

// Counts the tensors of one WaitForVersions still below their version.
struct VersionCountdown {
  absl::Mutex mu;
  bool finished ABSL_GUARDED_BY(mu) = false;
  std::size_t pending ABSL_GUARDED_BY(mu) = 0;
  std::function<void(absl::Status)> done ABSL_GUARDED_BY(mu);

  // One tensor reached its version (OK) or the store closed (not OK).
  void Arrive(const absl::Status& status) {
    std::function<void(absl::Status)> fire;
    {
      absl::MutexLock lock(&mu);
      if (finished) return;
      if (status.ok() && --pending > 0) return;
      finished = true;
      fire = std::move(done);
    }
    fire(status);
  }

  // True if `done` had not fired; it then never will.
  bool Cancel() {
    absl::MutexLock lock(&mu);
    if (finished) return false;
    finished = true;
    done = nullptr;
    return true;
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// TensorStore

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::Create(
    StoreOptions options) {
  const std::uint64_t chunk = options.chunk_bytes;
  if (chunk % kFloatBytes != 0 || chunk < kMinChunkBytes ||
      chunk > kMaxChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_bytes is ", chunk, "; it must be a multiple of 4 in [",
        kMinChunkBytes, ", ", kMaxChunkBytes, "]"));
  }
  if (!std::isfinite(options.server_lr) || options.server_lr <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "server_lr is ", options.server_lr, "; it must be finite and > 0"));
  }
  if (!(options.async_mix > 0 && options.async_mix <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "async_mix is ", options.async_mix, "; it must be in (0, 1]"));
  }
  if (options.lease_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease_timeout must be > 0");
  }
  if (options.max_tensor_bytes < kFloatBytes) {
    return absl::InvalidArgumentError("max_tensor_bytes must be >= 4");
  }
  if (!(options.round_quorum.fraction > 0 &&
        options.round_quorum.fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("round quorum fraction is ", options.round_quorum.fraction,
                     "; it must be in (0, 1]"));
  }
  if (options.round_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("round_timeout must be >= 0");
  }
  if (options.max_buffered_bytes != 0 &&
      options.max_buffered_bytes < kFloatBytes) {
    return absl::InvalidArgumentError("max_buffered_bytes must be 0 or >= 4");
  }
  // The base every policy is over: --mode, plain with --server_lr and
  // --async_mix, the weighted mean.
  TensorPolicy base;
  base.consistency = options.mode;
  base.params = {{"lr", options.server_lr}, {"mix", options.async_mix}};
  absl::StatusOr<PolicyDefaults> defaults = PolicyDefaults::Make(
      base, options.default_policy, options.policy_patterns);
  if (!defaults.ok()) return defaults.status();
  return std::unique_ptr<TensorStore>(
      new TensorStore(std::move(options), *std::move(defaults)));
}

TensorStore::TensorStore(StoreOptions options, PolicyDefaults defaults)
    : options_(std::move(options)), policy_defaults_(std::move(defaults)) {
  // Count closed rounds ahead of the caller's observer.
  options_.on_round_closed = [this, user = std::move(options_.on_round_closed)](
                                 const RoundClosed& closed) {
    rounds_closed_.fetch_add(1, std::memory_order_relaxed);
    if (user) user(closed);
  };
}

TensorStore::~TensorStore() = default;

absl::StatusOr<std::shared_ptr<SharedTensor>> TensorStore::FindLocked(
    absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    if (dropped_names_.contains(name)) {
      return absl::NotFoundError(absl::StrCat(
          "tensor \"", name,
          "\" was dropped by an admin (weightctl drop); a worker must declare "
          "it in Join to create it again"));
    }
    return absl::NotFoundError(absl::StrCat(
        "no tensor named \"", name, "\"; a worker must declare it in Join"));
  }
  return it->second;
}

TensorInfo TensorStore::InfoOf(const SharedTensor& tensor, bool with_policy) {
  TensorInfo info{tensor.name(), tensor.shape(), tensor.version(),
                  tensor.participant_count(), tensor.contributed_count()};
  info.consistency = tensor.policy().consistency;
  if (with_policy) {
    info.policy = tensor.policy();
    info.policy_bytes = tensor.PolicyBytes();
  }
  return info;
}

int TensorStore::CloseOverdueRounds() {
  const RoundQuorum& quorum = options_.round_quorum;
  if (quorum.count == 0 && quorum.fraction >= 1.0) {
    return 0;  // Rounds close only when complete, as each push checks.
  }
  std::vector<std::shared_ptr<SharedTensor>> tensors;
  {
    absl::MutexLock lock(&mu_);
    tensors.reserve(tensors_.size());
    for (const auto& [name, tensor] : tensors_) tensors.push_back(tensor);
  }
  Deferred deferred;
  int closed = 0;
  for (const auto& tensor : tensors) closed += tensor->CloseIfOverdue(deferred);
  return closed;
}

absl::StatusOr<std::unique_ptr<Wait>> TensorStore::WaitForVersions(
    const VersionRequest& request, std::function<void(absl::Status)> done,
    std::uint64_t lease_id) {
  std::vector<WaitTarget> targets;
  targets.reserve(request.size());
  absl::flat_hash_set<absl::string_view> seen;
  for (const auto& [name, version] : request) {
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " is requested twice"));
    }
    targets.push_back(WaitTarget{name, version});
  }
  return WaitFor(targets, std::move(done), lease_id);
}

absl::StatusOr<std::unique_ptr<Wait>> TensorStore::WaitForResult(
    absl::string_view name, std::uint64_t version, std::uint64_t bytes,
    std::function<void(absl::Status)> done, std::uint64_t lease_id) {
  const WaitTarget target{name, version, bytes};
  return WaitFor(absl::MakeConstSpan(&target, 1), std::move(done), lease_id);
}

absl::StatusOr<std::unique_ptr<Wait>> TensorStore::WaitFor(
    absl::Span<const WaitTarget> targets,
    std::function<void(absl::Status)> done, std::uint64_t lease_id) {
  auto countdown = std::make_shared<VersionCountdown>();
  {
    absl::MutexLock lock(&countdown->mu);
    countdown->pending = targets.size() + 1;  // +1: released below.
    countdown->done = std::move(done);
  }
  std::vector<std::pair<std::shared_ptr<SharedTensor>, std::uint64_t>> ids;
  std::function<void()> release;
  {
    // Exclusive: a lease hold changes the worker.
    absl::MutexLock lock(&mu_);
    if (closed()) return ClosedError();
    Worker* worker = nullptr;  // A lease no worker holds holds nothing.
    if (auto it = leases_.find(lease_id);
        lease_id != 0 && it != leases_.end()) {
      worker = &workers_.at(it->second);
      worker->last_seen = options_.now();
    }
    std::vector<std::shared_ptr<SharedTensor>> tensors;
    for (const WaitTarget& target : targets) {
      WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                               FindLocked(target.name));
      tensors.push_back(std::move(tensor));
    }
    // Registered under mu_ so that Close() either sees every waiter or
    // happened before (and we returned UNAVAILABLE above).
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      auto arrive = [countdown](absl::Status s) { countdown->Arrive(s); };
      std::optional<std::uint64_t> id =
          targets[i].turn_of.empty()
              ? tensors[i]->WaitForResult(targets[i].version, targets[i].bytes,
                                          std::move(arrive))
              : tensors[i]->WaitForTurn(targets[i].turn_of, targets[i].sequence,
                                        std::move(arrive));
      if (id.has_value()) {
        ids.emplace_back(tensors[i], *id);
      } else {
        absl::MutexLock countdown_lock(&countdown->mu);
        --countdown->pending;  // Already there; never the last (+1 above).
      }
    }
    if (worker != nullptr) release = HoldLeaseLocked(*worker);
  }
  countdown->Arrive(absl::OkStatus());
  return std::make_unique<Wait>(
      [countdown, ids = std::move(ids)] {
        // Every tensor's waiter goes, also when the countdown ended (one
        // tensor failed it: the others' waiters are still registered).
        const bool cancelled = countdown->Cancel();
        for (const auto& [tensor, id] : ids) tensor->CancelWait(id);
        return cancelled;
      },
      std::move(release));
}

absl::StatusOr<RoundResult> TensorStore::ReadResult(absl::string_view name,
                                                    std::uint64_t round) const {
  std::shared_ptr<SharedTensor> tensor;
  {
    absl::ReaderMutexLock lock(&mu_);
    WEIGHTD_ASSIGN_OR_RETURN(tensor, FindLocked(name));
  }
  return tensor->ReadResult(round);
}

absl::StatusOr<std::vector<PublishedTensor>> TensorStore::Read(
    const std::vector<std::string>& names, WireFormat format) const {
  std::vector<std::shared_ptr<SharedTensor>> tensors;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const std::string& name : names) {
      WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                               FindLocked(name));
      tensors.push_back(std::move(tensor));
    }
  }
  std::vector<PublishedTensor> published;
  published.reserve(tensors.size());
  for (const auto& tensor : tensors) {
    published.push_back(tensor->Read(format));
  }
  return published;
}

absl::StatusOr<TensorInfo> TensorStore::Describe(absl::string_view name,
                                                 bool with_policy) const {
  absl::ReaderMutexLock lock(&mu_);
  WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                           FindLocked(name));
  return InfoOf(*tensor, with_policy);
}

absl::StatusOr<TensorHistory> TensorStore::History(absl::string_view name,
                                                   std::uint64_t from,
                                                   std::uint64_t to,
                                                   std::size_t last) const {
  std::shared_ptr<SharedTensor> tensor;
  {
    absl::ReaderMutexLock lock(&mu_);
    WEIGHTD_ASSIGN_OR_RETURN(tensor, FindLocked(name));
  }
  TensorHistory history;
  std::tie(history.records, history.oldest_kept) =
      tensor->History(from, to, last);
  history.version = tensor->version();
  return history;
}

absl::StatusOr<DropResult> TensorStore::Drop(absl::string_view name,
                                             bool force) {
  Deferred deferred;  // Runs after the lock: waiters, round observers.
  absl::MutexLock lock(&mu_);
  if (closed()) return ClosedError();
  WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                           FindLocked(name));
  DropResult result;
  result.removed_workers = tensor->Participants();
  if (!result.removed_workers.empty() && !force) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor ", name, " is shared by ", result.removed_workers.size(),
        " worker(s) (", absl::StrJoin(result.removed_workers, ", "),
        "); stop them first, or drop with force (weightctl drop --force), "
        "which takes the tensor out of their sharing"));
  }
  for (const std::string& id : result.removed_workers) {
    auto it = workers_.find(id);
    if (it != workers_.end()) {
      std::vector<std::string>& held = it->second.tensors;
      held.erase(std::remove(held.begin(), held.end(), name), held.end());
    }
  }
  tensor->MarkDropped(deferred);
  result.freed_bytes = tensor->AllocatedBytes();
  total_bytes_ -= tensor->admitted_bytes();
  if (auto it = creators_.find(name); it != creators_.end()) {
    Created& by = created_by_[it->second];
    by.tensors -= std::min<std::uint32_t>(by.tensors, 1);
    by.bytes -= std::min(by.bytes, tensor->bytes());
    creators_.erase(it);
  }
  tensors_.erase(tensors_.find(name));
  if (dropped_names_.size() >= kMaxDroppedNames) dropped_names_.clear();
  dropped_names_.emplace(name);
  return result;
}

StoreStatus TensorStore::Status() const {
  StoreStatus status;
  status.barriers = barriers_.Waiting();  // Its lock is never held with mu_.
  absl::ReaderMutexLock lock(&mu_);
  const absl::Time now = options_.now();
  for (const auto& [name, tensor] : tensors_) {
    TensorInfo info = InfoOf(*tensor);
    info.whole_shape = tensor->whole_shape();
    info.waiting_for = tensor->WaitingFor();
    status.tensors.push_back(std::move(info));
  }
  std::sort(
      status.tensors.begin(), status.tensors.end(),
      [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (const auto& [id, worker] : workers_) {
    if (worker.lease_id == 0) continue;  // Left.
    status.workers.push_back(WorkerInfo{id, worker.lease_id, worker.tensors,
                                        worker.peer, now - worker.joined,
                                        now - worker.last_seen});
  }
  std::sort(status.workers.begin(), status.workers.end(),
            [](const WorkerInfo& a, const WorkerInfo& b) {
              return a.worker_id < b.worker_id;
            });
  status.rounds_closed = rounds_closed_.load(std::memory_order_relaxed);
  return status;
}

std::uint64_t TensorStore::AllocatedBytes() const {
  absl::ReaderMutexLock lock(&mu_);
  std::uint64_t total = 0;
  for (const auto& [name, tensor] : tensors_) total += tensor->AllocatedBytes();
  return total;
}

void TensorStore::Close() {
  const absl::Status status = ClosedError();
  {
    Deferred deferred;
    absl::MutexLock lock(&mu_);
    if (closed()) return;
    closing_.store(true, std::memory_order_release);
    for (const auto& [name, tensor] : tensors_) {
      tensor->FailWaiters(status, deferred);
    }
  }
  barriers_.Close(status);
}

}  // namespace weightd::core
