#include "server/core/tensor_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/duration.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/core/kernels.h"

namespace weightd::core {
namespace {

std::string ShapeString(const std::vector<std::int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::Status Closed() {
  return absl::UnavailableError("the server is shutting down");
}

}  // namespace

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
// PushSession

PushSession::PushSession(TensorStore* store, std::string worker,
                         PushHeader header,
                         std::vector<std::shared_ptr<SharedTensor>> tensors)
    : store_(store),
      worker_(std::move(worker)),
      header_(std::move(header)),
      tensors_(std::move(tensors)),
      next_offset_(tensors_.size(), 0) {
  if (store_->options().mode == Mode::kAsync) staged_.resize(tensors_.size());
}

absl::Status PushSession::AddChunk(std::uint32_t index, std::uint64_t offset,
                                   Pieces data) {
  if (!error_.ok()) return error_;
  auto fail = [this](absl::Status status) {
    error_ = status;
    return status;
  };
  if (store_->closed()) return fail(Closed());
  if (index >= tensors_.size()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("chunk names tensor index ", index, "; the push lists ",
                     tensors_.size(), " tensors")));
  }
  SharedTensor& tensor = *tensors_[index];
  if (offset >= tensor.bytes()) {
    return fail(absl::OutOfRangeError(
        absl::StrCat("chunk offset ", offset, " is past the end of tensor ",
                     tensor.name(), " (", tensor.bytes(), " bytes)")));
  }
  if (offset != next_offset_[index]) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "chunk of tensor ", tensor.name(), " at offset ", offset,
        "; expected offset ", next_offset_[index],
        " (a tensor's chunks arrive in order, each chunk_bytes long)")));
  }
  const std::uint64_t expected =
      ChunkLength(tensor.bytes(), store_->options().chunk_bytes, offset);
  const WireFormat format = header_.format;
  const std::uint64_t payload = expected / kFloatBytes * ElementBytes(format);
  if (const std::uint64_t size = PiecesSize(data); size != payload) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "chunk of tensor ", tensor.name(), " at offset ", offset, " carries ",
        size, " bytes; expected ", payload, " (", expected / kFloatBytes,
        " values in ", WireFormatName(format), ")")));
  }
  if (!store_->options().allow_non_finite && !AllFinite(data, format)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("chunk of tensor ", tensor.name(), " at offset ", offset,
                     " contains NaN or Inf; nothing of it was applied")));
  }
  if (!staged_.empty()) {
    // Async: staged whole, applied by Finish().
    std::vector<float>& staged = staged_[index];
    staged.resize((offset + expected) / kFloatBytes);
    DecodePieces(data, format, staged.data() + offset / kFloatBytes);
  } else {
    const ContributionKey key{worker_, header_.sequence,
                              header_.entries[index].round, header_.kind};
    if (absl::Status s = tensor.AddChunk(key, header_.weight, offset, data,
                                         format, expected);
        !s.ok()) {
      return fail(s);
    }
  }
  next_offset_[index] += expected;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PushResult>> PushSession::Finish() {
  if (!error_.ok()) return error_;
  if (store_->closed()) return error_ = Closed();
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    if (next_offset_[i] != tensors_[i]->bytes()) {
      error_ = absl::InvalidArgumentError(absl::StrCat(
          "push ended after ", next_offset_[i], " of ", tensors_[i]->bytes(),
          " bytes of tensor ", tensors_[i]->name(),
          "; every listed tensor must be sent whole"));
      return error_;
    }
  }
  Deferred deferred;
  std::vector<PushResult> results;
  results.reserve(tensors_.size());
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    const auto& tensor = tensors_[i];
    absl::StatusOr<ContributionResult> outcome =
        staged_.empty()
            ? tensor->Complete(worker_, header_.sequence, deferred)
            : tensor->ApplyPush(
                  ContributionKey{worker_, header_.sequence,
                                  header_.entries[i].round, header_.kind},
                  staged_[i], deferred);
    if (!outcome.ok()) {
      error_ = outcome.status();
      return error_;
    }
    results.push_back(PushResult{tensor->name(), *outcome});
  }
  return results;
}

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
  return std::unique_ptr<TensorStore>(new TensorStore(std::move(options)));
}

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::Restore(
    StoreOptions options, StoreState state) {
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<TensorStore> store,
                           Create(std::move(options)));
  absl::MutexLock lock(&store->mu_);
  for (SavedTensor& t : state.tensors) {
    WEIGHTD_RETURN_IF_ERROR(ValidateName("tensor name", t.name));
    WEIGHTD_ASSIGN_OR_RETURN(
        std::uint64_t count,
        ElementCount(t.shape, store->options_.max_tensor_bytes));
    if (t.value == nullptr || t.value->size() != count) {
      return absl::InvalidArgumentError(absl::StrCat(
          "saved tensor ", t.name, " has a value of the wrong size"));
    }
    auto& slot = store->tensors_[t.name];
    if (slot != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, " is saved twice"));
    }
    // The value is immutable once published, so the copy here is the one
    // place a restored value is duplicated.
    store->tensor_bytes_ += count * kFloatBytes;
    slot = std::make_shared<SharedTensor>(t.name, t.shape, *t.value,
                                          &store->options_, t.whole_shape);
    slot->Restore(t.version, t.contributions);
  }
  const absl::Time now = store->options_.now();
  for (SavedWorker& w : state.workers) {
    WEIGHTD_RETURN_IF_ERROR(ValidateName("worker id", w.id));
    Worker& worker = store->workers_[w.id];
    worker.id = w.id;
    worker.max_sequence = w.max_sequence;
    worker.last_seen = now;  // A full lease period to come back.
    if (w.lease_id == 0) continue;
    worker.restored = true;  // The next Join of this id claims it.
    worker.peer = "(restored from a snapshot)";
    if (!store->leases_.emplace(w.lease_id, w.id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("lease of worker ", w.id, " is saved twice"));
    }
    worker.lease_id = w.lease_id;
    for (const std::string& name : w.tensors) {
      auto it = store->tensors_.find(name);
      if (it == store->tensors_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "saved worker ", w.id, " holds unknown tensor ", name));
      }
      it->second->AddParticipant(w.id);
    }
    worker.tensors = std::move(w.tensors);
    std::sort(worker.tensors.begin(), worker.tensors.end());
  }
  return store;
}

StoreState TensorStore::Save() const {
  StoreState state;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, tensor] : tensors_) {
    auto [snapshot, pushes] = tensor->Save();
    state.tensors.push_back(SavedTensor{
        name, std::move(snapshot.shape), snapshot.version,
        std::move(snapshot.value), std::move(pushes), tensor->whole_shape()});
  }
  std::sort(state.tensors.begin(), state.tensors.end(),
            [](const SavedTensor& a, const SavedTensor& b) {
              return a.name < b.name;
            });
  for (const auto& [id, worker] : workers_) {
    state.workers.push_back(
        SavedWorker{id, worker.lease_id, worker.max_sequence, worker.tensors});
  }
  std::sort(
      state.workers.begin(), state.workers.end(),
      [](const SavedWorker& a, const SavedWorker& b) { return a.id < b.id; });
  return state;
}

TensorStore::TensorStore(StoreOptions options) : options_(std::move(options)) {
  // Count closed rounds ahead of the caller's observer.
  options_.on_round_closed = [this, user = std::move(options_.on_round_closed)](
                                 const RoundClosed& closed) {
    rounds_closed_.fetch_add(1, std::memory_order_relaxed);
    if (user) user(closed);
  };
}

TensorStore::~TensorStore() = default;

absl::StatusOr<TensorStore::Worker*> TensorStore::WorkerForLeaseLocked(
    std::uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (lease_id == 0 || it == leases_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease ", lease_id,
                     " is not held by any joined worker; call Join first"));
  }
  Worker* worker = &workers_.at(it->second);
  worker->last_seen = options_.now();
  return worker;
}

void TensorStore::EndMembershipLocked(Worker& worker, Deferred& deferred) {
  for (const std::string& name : worker.tensors) {
    tensors_.at(name)->RemoveParticipant(worker.id, deferred);
  }
  // The worker entry stays (without a lease) so that a re-join continues
  // its push sequence; each tensor keeps its push history for dedupe.
  leases_.erase(worker.lease_id);
  worker.lease_id = 0;
  worker.tensors.clear();
}

std::function<void()> TensorStore::HoldLeaseLocked(Worker& worker) {
  ++worker.holds;
  return [this, id = worker.id, lease = worker.lease_id] {
    ReleaseLease(id, lease);
  };
}

void TensorStore::ReleaseLease(const std::string& worker_id,
                               std::uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.lease_id != lease_id) return;
  Worker& worker = it->second;
  if (worker.holds > 0) --worker.holds;
  worker.last_seen = options_.now();  // The call ended just now.
}

absl::StatusOr<std::shared_ptr<SharedTensor>> TensorStore::FindLocked(
    absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "no tensor named \"", name, "\"; a worker must declare it in Join"));
  }
  return it->second;
}

TensorInfo TensorStore::InfoOf(const SharedTensor& tensor) {
  return TensorInfo{tensor.name(), tensor.shape(), tensor.version(),
                    tensor.participant_count(), tensor.contributed_count()};
}

absl::StatusOr<JoinResult> TensorStore::Join(
    absl::string_view worker_id, std::vector<Declaration> declarations,
    const Claimant& claimant) {
  WEIGHTD_RETURN_IF_ERROR(ValidateName("worker id", worker_id));
  if (declarations.size() > kMaxTensorsPerCall) {
    return absl::ResourceExhaustedError(
        absl::StrCat("worker ", worker_id, " declares ", declarations.size(),
                     " tensors; the limit is ", kMaxTensorsPerCall));
  }
  absl::flat_hash_set<absl::string_view> seen;
  for (const Declaration& d : declarations) {
    WEIGHTD_RETURN_IF_ERROR(ValidateName("tensor name", d.name));
    if (!seen.insert(d.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", d.name, " is declared twice"));
    }
    WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t count,
                             ElementCount(d.shape, options_.max_tensor_bytes));
    if (d.whole_shape.size() > kMaxRank ||
        std::any_of(d.whole_shape.begin(), d.whole_shape.end(),
                    [](std::int64_t dim) { return dim < 1; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "whole shape ", ShapeString(d.whole_shape), " of tensor ", d.name,
          " has a dimension < 1 or more than ", kMaxRank, " dimensions"));
    }
    if (!d.initial_value.empty() && d.initial_value.size() != count) {
      return absl::InvalidArgumentError(
          absl::StrCat("initial value of tensor ", d.name, " has ",
                       d.initial_value.size() * kFloatBytes, " bytes; shape ",
                       ShapeString(d.shape), " needs ", count * kFloatBytes));
    }
    if (!options_.allow_non_finite &&
        !AllFinite(reinterpret_cast<const char*>(d.initial_value.data()),
                   d.initial_value.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "initial value of tensor ", d.name, " contains NaN or Inf"));
    }
  }

  Deferred deferred;  // Runs after the lock is released.
  absl::MutexLock lock(&mu_);
  if (closed()) return Closed();
  const absl::Time now = options_.now();
  Takeover takeover = Takeover::kNone;
  if (auto it = workers_.find(worker_id); it != workers_.end()) {
    const Worker& held = it->second;
    const absl::Duration silent = now - held.last_seen;
    const bool live = held.lease_id != 0 &&
                      (held.holds > 0 || silent < options_.lease_timeout);
    if (!live) {
      takeover = Takeover::kLapsed;
    } else if (held.restored) {
      takeover = Takeover::kRestored;
    } else if (claimant.instance != 0 && claimant.instance == held.instance) {
      takeover = Takeover::kSameProcess;
    } else {
      const absl::Duration left = held.holds > 0
                                      ? options_.lease_timeout
                                      : options_.lease_timeout - silent;
      return absl::AbortedError(absl::StrCat(
          "worker id ", worker_id, " is held by another live process (",
          held.peer.empty() ? "peer unknown" : held.peer, ", last call ",
          HumanDuration(silent),
          " ago); give every worker its own id (weightd_worker: --worker_id "
          "or --rank). If that process is gone, its lease expires within ",
          absl::FormatDuration(absl::Ceil(left, absl::Milliseconds(100))),
          " and a Join then succeeds"));
    }
  }
  std::uint64_t new_bytes = 0;
  for (const Declaration& d : declarations) {
    if (!tensors_.contains(d.name)) {
      new_bytes += d.initial_value.size() * kFloatBytes;
    }
  }
  WEIGHTD_RETURN_IF_ERROR(AdmitJoinLocked(worker_id, new_bytes));
  for (const Declaration& d : declarations) {
    auto it = tensors_.find(d.name);
    if (it == tensors_.end() && d.initial_value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", d.name,
                       " does not exist yet; its declaration must "
                       "carry an initial value"));
    }
    if (it != tensors_.end() && it->second->shape() != d.shape) {
      return absl::AlreadyExistsError(
          absl::StrCat("tensor ", d.name, " already exists with shape ",
                       ShapeString(it->second->shape()), "; worker ", worker_id,
                       " declared ", ShapeString(d.shape)));
    }
    if (it != tensors_.end() && it->second->whole_shape() != d.whole_shape) {
      auto whole = [](const std::vector<std::int64_t>& w,
                      const std::vector<std::int64_t>& part) {
        return w.empty() ? absl::StrCat("whole, shape ", ShapeString(part))
                         : absl::StrCat("a part of a tensor of shape ",
                                        ShapeString(w), " split over shards");
      };
      return absl::AlreadyExistsError(absl::StrCat(
          "tensor ", d.name, " exists here as ",
          whole(it->second->whole_shape(), it->second->shape()), "; worker ",
          worker_id, " declared it as ", whole(d.whole_shape, d.shape)));
    }
  }

  Worker& worker = workers_[worker_id];
  if (!worker.id.empty()) {
    // A re-join replaces the old membership.
    leases_.erase(worker.lease_id);
    for (const std::string& name : worker.tensors) {
      if (!seen.contains(name)) {
        tensors_.at(name)->RemoveParticipant(worker_id, deferred);
      }
    }
  }
  worker.id = std::string(worker_id);
  worker.last_seen = now;
  worker.instance = claimant.instance;
  worker.peer = claimant.peer;
  worker.restored = false;
  worker.holds = 0;  // Holds of the old lease release nothing now.
  do {
    worker.lease_id = absl::Uniform<std::uint64_t>(bitgen_);
  } while (worker.lease_id == 0 || leases_.contains(worker.lease_id));
  leases_[worker.lease_id] = worker.id;
  worker.tensors.clear();

  JoinResult result;
  result.takeover = takeover;
  result.lease_id = worker.lease_id;
  result.next_sequence = worker.max_sequence + 1;
  for (Declaration& d : declarations) {
    auto& slot = tensors_[d.name];
    const bool created = slot == nullptr;
    if (created) {
      tensor_bytes_ += d.initial_value.size() * kFloatBytes;
      slot = std::make_shared<SharedTensor>(d.name, d.shape,
                                            std::move(d.initial_value),
                                            &options_, d.whole_shape);
    }
    slot->AddParticipant(worker.id);
    worker.tensors.push_back(d.name);
    result.tensors.push_back(JoinedTensor{InfoOf(*slot), created});
  }
  std::sort(worker.tensors.begin(), worker.tensors.end());
  return result;
}

absl::Status TensorStore::AdmitJoin(absl::string_view worker_id,
                                    std::uint64_t new_bytes) const {
  absl::ReaderMutexLock lock(&mu_);
  return AdmitJoinLocked(worker_id, new_bytes);
}

absl::Status TensorStore::AdmitJoinLocked(absl::string_view worker_id,
                                          std::uint64_t new_bytes) const {
  if (closed()) return Closed();
  if (options_.max_workers > 0 && leases_.size() >= options_.max_workers) {
    auto it = workers_.find(worker_id);
    if (it == workers_.end() || it->second.lease_id == 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "worker ", worker_id, " cannot join: ", leases_.size(),
          " workers are members, the server's limit (--max_workers)"));
    }
  }
  if (options_.max_total_bytes > 0 &&
      (tensor_bytes_ >= options_.max_total_bytes ||
       new_bytes > options_.max_total_bytes - tensor_bytes_) &&
      new_bytes > 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker ", worker_id, " would create ", new_bytes,
        " bytes of tensors; the server holds ", tensor_bytes_, " of at most ",
        options_.max_total_bytes, " (--max_total_bytes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TensorStore::Leave(std::uint64_t lease_id) {
  Deferred deferred;
  absl::MutexLock lock(&mu_);
  WEIGHTD_ASSIGN_OR_RETURN(Worker * worker, WorkerForLeaseLocked(lease_id));
  EndMembershipLocked(*worker, deferred);
  return worker->id;
}

absl::Status TensorStore::Heartbeat(std::uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  if (closed()) return Closed();
  return WorkerForLeaseLocked(lease_id).status();
}

int TensorStore::ExpireLeases() {
  Deferred deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.now();
  int expired = 0;
  for (auto& [id, worker] : workers_) {
    if (worker.lease_id == 0 || worker.holds > 0 ||
        now - worker.last_seen < options_.lease_timeout) {
      continue;
    }
    if (options_.on_worker_expired) {
      deferred.Add(
          [cb = options_.on_worker_expired,
           info = WorkerExpired{worker.id, worker.tensors,
                                now - worker.last_seen}] { cb(info); });
    }
    EndMembershipLocked(worker, deferred);
    ++expired;
  }
  return expired;
}

int TensorStore::CloseOverdueRounds() {
  const RoundQuorum& quorum = options_.round_quorum;
  if (options_.mode != Mode::kSync ||
      (quorum.count == 0 && quorum.fraction >= 1.0)) {
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

absl::StatusOr<std::unique_ptr<PushSession>> TensorStore::BeginPush(
    PushHeader header) {
  if (header.sequence == 0) {
    return absl::InvalidArgumentError("push sequence must be >= 1");
  }
  if (!(header.weight >= kMinPushWeight && header.weight <= kMaxPushWeight)) {
    return absl::InvalidArgumentError(
        absl::StrCat("push weight is ", header.weight, "; it must be in [",
                     kMinPushWeight, ", ", kMaxPushWeight, "]"));
  }
  if (header.entries.size() > kMaxTensorsPerCall) {
    return absl::ResourceExhaustedError(
        absl::StrCat("push lists ", header.entries.size(),
                     " tensors; the limit is ", kMaxTensorsPerCall));
  }
  if (header.entries.empty()) {
    return absl::InvalidArgumentError("push lists no tensors");
  }
  absl::flat_hash_set<absl::string_view> seen;
  for (const PushHeader::Entry& e : header.entries) {
    if (!seen.insert(e.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("push lists tensor ", e.name, " twice"));
    }
  }

  absl::MutexLock lock(&mu_);
  if (closed()) return Closed();
  WEIGHTD_ASSIGN_OR_RETURN(Worker * worker,
                           WorkerForLeaseLocked(header.lease_id));
  std::vector<std::shared_ptr<SharedTensor>> tensors;
  tensors.reserve(header.entries.size());
  for (const PushHeader::Entry& e : header.entries) {
    WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                             FindLocked(e.name));
    if (!std::binary_search(worker->tensors.begin(), worker->tensors.end(),
                            e.name)) {
      return absl::FailedPreconditionError(
          absl::StrCat("worker ", worker->id, " did not declare tensor ",
                       e.name, " in its Join"));
    }
    WEIGHTD_RETURN_IF_ERROR(tensor->CheckContribution(
        ContributionKey{worker->id, header.sequence, e.round, header.kind}));
    tensors.push_back(std::move(tensor));
  }
  worker->max_sequence = std::max(worker->max_sequence, header.sequence);
  return std::unique_ptr<PushSession>(
      new PushSession(this, worker->id, std::move(header), std::move(tensors)));
}

absl::StatusOr<std::unique_ptr<Wait>> TensorStore::WaitForVersions(
    const VersionRequest& request, std::function<void(absl::Status)> done,
    std::uint64_t lease_id) {
  absl::flat_hash_set<absl::string_view> seen;
  for (const auto& [name, version] : request) {
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " is requested twice"));
    }
  }
  auto countdown = std::make_shared<VersionCountdown>();
  {
    absl::MutexLock lock(&countdown->mu);
    countdown->pending = request.size() + 1;  // +1: released below.
    countdown->done = std::move(done);
  }
  std::vector<std::pair<std::shared_ptr<SharedTensor>, std::uint64_t>> ids;
  std::function<void()> release;
  {
    // Exclusive: a lease hold changes the worker.
    absl::MutexLock lock(&mu_);
    if (closed()) return Closed();
    Worker* worker = nullptr;  // A lease no worker holds holds nothing.
    if (auto it = leases_.find(lease_id);
        lease_id != 0 && it != leases_.end()) {
      worker = &workers_.at(it->second);
      worker->last_seen = options_.now();
    }
    std::vector<std::shared_ptr<SharedTensor>> tensors;
    for (const auto& [name, version] : request) {
      WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                               FindLocked(name));
      tensors.push_back(std::move(tensor));
    }
    // Registered under mu_ so that Close() either sees every waiter or
    // happened before (and we returned UNAVAILABLE above).
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      std::optional<std::uint64_t> id = tensors[i]->WaitForVersion(
          request[i].second,
          [countdown](absl::Status s) { countdown->Arrive(s); });
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
        if (!countdown->Cancel()) return false;
        for (const auto& [tensor, id] : ids) tensor->CancelWait(id);
        return true;
      },
      std::move(release));
}

absl::StatusOr<std::unique_ptr<Wait>> TensorStore::EnterBarrier(
    std::uint64_t lease_id, absl::string_view name, std::uint32_t count,
    std::function<void(absl::Status)> done, BarrierPass* pass) {
  WEIGHTD_RETURN_IF_ERROR(ValidateName("barrier name", name));
  if (count < 1 || count > kMaxBarrierCount) {
    return absl::InvalidArgumentError(absl::StrCat("barrier count is ", count,
                                                   "; it must be in [1, ",
                                                   kMaxBarrierCount, "]"));
  }
  std::string worker;
  std::function<void()> release_lease;
  // The leases held now: a pass recorded under another lease (a worker that
  // left, expired or re-joined since) no longer counts.
  absl::flat_hash_map<std::string, std::uint64_t> members;
  {
    absl::MutexLock lock(&mu_);
    if (closed()) return Closed();
    WEIGHTD_ASSIGN_OR_RETURN(Worker * w, WorkerForLeaseLocked(lease_id));
    worker = w->id;
    for (const auto& [lease, id] : leases_) members.emplace(id, lease);
    release_lease = HoldLeaseLocked(*w);
  }
  std::vector<std::function<void(absl::Status)>> release;
  std::function<void(absl::Status)> superseded;
  std::function<void(absl::Status)> late;
  std::uint64_t id;
  {
    absl::MutexLock lock(&barrier_mu_);
    // Close() sets closing_ before it fails the barriers under barrier_mu_.
    if (closed()) return Closed();
    Barrier& barrier = barriers_[name];
    // Forget the passes of memberships that ended.
    for (auto it = barrier.passed.begin(); it != barrier.passed.end();) {
      auto member = members.find(it->first);
      if (member == members.end() || member->second != it->second.lease_id) {
        barrier.passed.erase(it++);
      } else {
        ++it;
      }
    }
    std::uint64_t latest = 0;  // The latest generation a member passed.
    for (const auto& [w, p] : barrier.passed) {
      latest = std::max(latest, p.generation);
    }
    auto mine = barrier.passed.find(worker);
    const std::uint64_t passed =
        mine == barrier.passed.end() ? 0 : mine->second.generation;
    id = next_barrier_id_++;
    if (passed < latest) {
      // Late for generation `latest`: it passes at once.
      if (pass != nullptr) {
        *pass = BarrierPass{barrier.count + barrier.late, latest};
      }
      ++barrier.late;
      barrier.passed[worker] = Barrier::Passed{lease_id, latest};
      if (barrier.waiting.empty() && barrier.passed.empty()) {
        barriers_.erase(std::string(name));
      }
      late = std::move(done);
    } else {
      if (barrier.waiting.empty()) barrier.count = count;
      if (barrier.count != count) {
        return absl::InvalidArgumentError(
            absl::StrCat("barrier ", name, " is waiting for ", barrier.count,
                         " workers; this call asks for ", count));
      }
      auto [it, inserted] = barrier.waiting.try_emplace(
          worker, Barrier::Entry{id, lease_id, nullptr, nullptr, 0});
      if (!inserted) superseded = std::move(it->second.done);
      it->second = Barrier::Entry{id, lease_id, std::move(done), pass,
                                  barrier.entered++};
      if (barrier.waiting.size() == barrier.count) {
        const std::uint64_t generation = ++barrier.released;
        // Arrival order among the released: their order of entry.
        std::vector<Barrier::Entry*> entries;
        for (auto& [w, entry] : barrier.waiting) {
          entries.push_back(&entry);
          barrier.passed[w] = Barrier::Passed{entry.lease_id, generation};
        }
        std::sort(entries.begin(), entries.end(),
                  [](const Barrier::Entry* a, const Barrier::Entry* b) {
                    return a->order < b->order;
                  });
        for (std::uint32_t i = 0; i < entries.size(); ++i) {
          if (entries[i]->pass != nullptr) {
            *entries[i]->pass = BarrierPass{i, generation};
          }
          release.push_back(std::move(entries[i]->done));
        }
        barrier.waiting.clear();
        barrier.entered = 0;
        barrier.late = 0;
      }
    }
  }
  if (superseded) {
    superseded(absl::AbortedError(
        absl::StrCat("worker ", worker, " entered barrier ", name, " again")));
  }
  if (late) late(absl::OkStatus());
  for (auto& fn : release) fn(absl::OkStatus());
  return std::make_unique<Wait>(
      [this, name = std::string(name), id] { return CancelBarrier(name, id); },
      std::move(release_lease));
}

bool TensorStore::CancelBarrier(const std::string& name, std::uint64_t id) {
  absl::MutexLock lock(&barrier_mu_);
  auto it = barriers_.find(name);
  if (it == barriers_.end()) return false;
  auto& waiting = it->second.waiting;
  for (auto entry = waiting.begin(); entry != waiting.end(); ++entry) {
    if (entry->second.id != id) continue;
    waiting.erase(entry);
    if (waiting.empty() && it->second.passed.empty()) barriers_.erase(it);
    return true;
  }
  return false;
}

void TensorStore::FailBarriers(const absl::Status& status) {
  std::vector<std::function<void(absl::Status)>> fail;
  {
    absl::MutexLock lock(&barrier_mu_);
    for (auto& [name, barrier] : barriers_) {
      for (auto& [worker, entry] : barrier.waiting) {
        fail.push_back(std::move(entry.done));
      }
    }
    barriers_.clear();
  }
  for (auto& fn : fail) fn(status);
}

absl::StatusOr<std::vector<TensorSnapshot>> TensorStore::Snapshot(
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
  std::vector<TensorSnapshot> snapshots;
  snapshots.reserve(tensors.size());
  for (const auto& tensor : tensors) {
    snapshots.push_back(tensor->Snapshot(format));
  }
  return snapshots;
}

absl::StatusOr<TensorInfo> TensorStore::Describe(absl::string_view name) const {
  absl::ReaderMutexLock lock(&mu_);
  WEIGHTD_ASSIGN_OR_RETURN(std::shared_ptr<SharedTensor> tensor,
                           FindLocked(name));
  return InfoOf(*tensor);
}

StoreStatus TensorStore::Status() const {
  StoreStatus status;
  {
    absl::MutexLock lock(&barrier_mu_);  // Never held with mu_.
    for (const auto& [name, barrier] : barriers_) {
      if (barrier.waiting.empty()) continue;
      status.barriers.push_back(
          BarrierInfo{name, barrier.count,
                      static_cast<std::uint32_t>(barrier.waiting.size()),
                      barrier.released});
    }
  }
  std::sort(status.barriers.begin(), status.barriers.end(),
            [](const BarrierInfo& a, const BarrierInfo& b) {
              return a.name < b.name;
            });
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, tensor] : tensors_) {
    status.tensors.push_back(InfoOf(*tensor));
  }
  std::sort(
      status.tensors.begin(), status.tensors.end(),
      [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (const auto& [id, worker] : workers_) {
    if (worker.lease_id == 0) continue;  // Left.
    status.workers.push_back(
        WorkerInfo{id, worker.lease_id, worker.tensors, worker.peer});
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
  const absl::Status status = Closed();
  {
    Deferred deferred;
    absl::MutexLock lock(&mu_);
    if (closed()) return;
    closing_.store(true, std::memory_order_release);
    for (const auto& [name, tensor] : tensors_) {
      tensor->FailWaiters(status, deferred);
    }
  }
  FailBarriers(status);
}

}  // namespace weightd::core
