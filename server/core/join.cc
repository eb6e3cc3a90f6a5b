// Join: who may become a member with which tensors, the admission limits,
// and JoinSession, which gathers a Join's initial values chunk by chunk.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/duration.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/core/errors.h"
#include "server/core/kernels.h"
#include "server/core/tensor_store.h"

namespace weightd::core {

// ---------------------------------------------------------------------------
// JoinSession

JoinSession::JoinSession(TensorStore* store, JoinHeader header,
                         std::vector<std::uint64_t> bytes,
                         std::vector<bool> keep)
    : store_(store),
      header_(std::move(header)),
      bytes_(std::move(bytes)),
      keep_(std::move(keep)),
      next_offset_(header_.declarations.size(), 0) {
  // A value that came with the header is complete.
  for (std::size_t i = 0; i < header_.declarations.size(); ++i) {
    if (!header_.declarations[i].initial_value.empty()) {
      next_offset_[i] = bytes_[i];
    }
  }
}

absl::Status JoinSession::AddChunk(std::uint32_t index, std::uint64_t offset,
                                   Pieces data) {
  if (!error_.ok()) return error_;
  auto fail = [this](absl::Status status) {
    error_ = status;
    return status;
  };
  std::vector<Declaration>& declarations = header_.declarations;
  if (index >= declarations.size()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("chunk names tensor index ", index, "; the Join declares ",
                     declarations.size(), " tensors")));
  }
  Declaration& d = declarations[index];
  const std::uint64_t bytes = bytes_[index];
  if (offset >= bytes) {
    return fail(absl::OutOfRangeError(
        absl::StrCat("chunk offset ", offset, " is past the end of tensor ",
                     d.name, " (", bytes, " bytes)")));
  }
  if (offset != next_offset_[index]) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("chunk of tensor ", d.name, " at offset ", offset,
                     "; expected offset ", next_offset_[index])));
  }
  const std::uint64_t expected =
      ChunkLength(bytes, store_->options().chunk_bytes, offset);
  const std::uint64_t size = PiecesSize(data);
  if (size != expected) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("chunk of tensor ", d.name, " at offset ", offset,
                     " carries ", size, " bytes; expected ", expected)));
  }
  if (keep_[index]) {
    if (!store_->options().allow_non_finite &&
        !AllFinite(data, WireFormat::kFloat32)) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "initial value of tensor ", d.name, " contains NaN or Inf")));
    }
    // Grows with the bytes received: a header alone allocates nothing.
    d.initial_value.resize((offset + expected) / kFloatBytes);
    char* out = reinterpret_cast<char*>(d.initial_value.data()) + offset;
    for (absl::string_view piece : data) {
      std::memcpy(out, piece.data(), piece.size());
      out += piece.size();
    }
  }
  next_offset_[index] += expected;
  return absl::OkStatus();
}

absl::StatusOr<JoinResult> JoinSession::Finish() {
  if (!error_.ok()) return error_;
  const std::vector<Declaration>& declarations = header_.declarations;
  for (std::size_t i = 0; i < declarations.size(); ++i) {
    // No bytes at all: no value offered (the tensor must exist).
    if (next_offset_[i] != 0 && next_offset_[i] != bytes_[i]) {
      error_ = absl::InvalidArgumentError(absl::StrCat(
          "Join ended after ", next_offset_[i], " of ", bytes_[i],
          " bytes of the initial value of ", declarations[i].name));
      return error_;
    }
  }
  absl::StatusOr<JoinResult> result = store_->CommitJoin(
      header_.worker_id, header_.claimant, std::move(header_.declarations));
  error_ = result.ok() ? absl::FailedPreconditionError("the Join is finished")
                       : result.status();
  return result;
}

// ---------------------------------------------------------------------------
// TensorStore

namespace {

// ALREADY_EXISTS if `held`, the store's tensor of `d`'s name, is not what
// `d` declares: another shape, or whole where `d` is a part or the reverse.
absl::Status CheckHeld(const SharedTensor& held, const Declaration& d,
                       absl::string_view worker_id) {
  if (held.shape() != d.shape) {
    return absl::AlreadyExistsError(
        absl::StrCat("tensor ", d.name, " already exists with shape ",
                     ShapeString(held.shape()), "; worker ", worker_id,
                     " declared ", ShapeString(d.shape)));
  }
  if (held.whole_shape() != d.whole_shape) {
    auto whole = [](const std::vector<std::int64_t>& w,
                    const std::vector<std::int64_t>& part) {
      return w.empty() ? absl::StrCat("whole, shape ", ShapeString(part))
                       : absl::StrCat("a part of a tensor of shape ",
                                      ShapeString(w), " split over shards");
    };
    return absl::AlreadyExistsError(absl::StrCat(
        "tensor ", d.name, " exists here as ",
        whole(held.whole_shape(), held.shape()), "; worker ", worker_id,
        " declared it as ", whole(d.whole_shape, d.shape)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<JoinSession>> TensorStore::BeginJoin(
    JoinHeader header) {
  const std::string& worker_id = header.worker_id;
  std::vector<Declaration>& declarations = header.declarations;
  if (declarations.size() > kMaxTensorsPerCall) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Join declares ", declarations.size(),
                     " tensors; the limit is ", kMaxTensorsPerCall));
  }
  WEIGHTD_RETURN_IF_ERROR(ValidateName("worker id", worker_id));
  std::vector<std::uint64_t> bytes;
  bytes.reserve(declarations.size());
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
    bytes.push_back(count * kFloatBytes);
  }
  // A tensor the store holds must be what is declared, and keeps its
  // value: chunks of an initial value for it are checked, not kept. One it
  // lacks counts against the limits now. Both before any value is buffered
  // (Finish checks again: the store may change meanwhile).
  std::vector<bool> keep;
  keep.reserve(declarations.size());
  {
    absl::ReaderMutexLock lock(&mu_);
    std::uint64_t new_bytes = 0;
    std::uint32_t new_tensors = 0;
    PolicyCost cost{BufferedBytesLocked()};
    for (std::size_t i = 0; i < declarations.size(); ++i) {
      auto it = tensors_.find(declarations[i].name);
      if (it != tensors_.end()) {
        WEIGHTD_RETURN_IF_ERROR(
            CheckHeld(*it->second, declarations[i], worker_id));
      }
      WEIGHTD_RETURN_IF_ERROR(AdmitPolicyLocked(
          declarations[i], it == tensors_.end() ? nullptr : it->second.get(),
          worker_id, cost));
      keep.push_back(it == tensors_.end());
      if (it == tensors_.end()) {
        new_bytes += bytes[i];
        ++new_tensors;
      }
    }
    WEIGHTD_RETURN_IF_ERROR(
        AdmitJoinLocked(worker_id, header.claimant.principal, new_tensors,
                        new_bytes, cost.state));
  }
  return std::unique_ptr<JoinSession>(new JoinSession(
      this, std::move(header), std::move(bytes), std::move(keep)));
}

absl::StatusOr<JoinResult> TensorStore::Join(
    absl::string_view worker_id, std::vector<Declaration> declarations,
    const Claimant& claimant) {
  WEIGHTD_ASSIGN_OR_RETURN(
      std::unique_ptr<JoinSession> session,
      BeginJoin(JoinHeader{std::string(worker_id), claimant,
                           std::move(declarations)}));
  return session->Finish();
}

absl::StatusOr<JoinResult> TensorStore::CommitJoin(
    const std::string& worker_id, const Claimant& claimant,
    std::vector<Declaration> declarations) {
  absl::flat_hash_set<absl::string_view> declared;
  for (const Declaration& d : declarations) declared.insert(d.name);

  Deferred deferred;  // Runs after the lock is released.
  absl::MutexLock lock(&mu_);
  if (closed()) return ClosedError();
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
  // A tensor it lacks needs a value (checked first: such a Join is
  // INVALID_ARGUMENT, not over a limit).
  std::uint64_t new_bytes = 0;
  std::uint32_t new_tensors = 0;
  PolicyCost cost{BufferedBytesLocked()};
  for (const Declaration& d : declarations) {
    auto it = tensors_.find(d.name);
    if (it == tensors_.end() && d.initial_value.empty() &&
        dropped_names_.contains(d.name)) {
      // It existed at BeginJoin (its value was not kept), and an admin
      // dropped it since.
      return absl::AbortedError(
          absl::StrCat("tensor ", d.name,
                       " was dropped by an admin while this Join was in "
                       "progress; join again to create it"));
    }
    if (it == tensors_.end() && d.initial_value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", d.name,
                       " does not exist yet; its declaration must "
                       "carry an initial value"));
    }
    if (it != tensors_.end()) {
      WEIGHTD_RETURN_IF_ERROR(CheckHeld(*it->second, d, worker_id));
    } else {
      new_bytes += d.initial_value.size() * kFloatBytes;
      ++new_tensors;
    }
    WEIGHTD_RETURN_IF_ERROR(AdmitPolicyLocked(
        d, it == tensors_.end() ? nullptr : it->second.get(), worker_id, cost));
  }
  WEIGHTD_RETURN_IF_ERROR(AdmitJoinLocked(worker_id, claimant.principal,
                                          new_tensors, new_bytes, cost.state));

  Worker& worker = workers_[worker_id];
  if (!worker.id.empty()) {
    // A re-join replaces the old membership.
    leases_.erase(worker.lease_id);
    for (const std::string& name : worker.tensors) {
      if (!declared.contains(name)) {
        tensors_.at(name)->RemoveParticipant(worker_id, ClosedOn::kLeave,
                                             deferred);
      }
    }
  }
  worker.id = std::string(worker_id);
  worker.last_seen = now;
  worker.joined = now;
  worker.instance = claimant.instance;
  worker.peer = claimant.peer;
  worker.principal = claimant.principal;
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
      const std::uint64_t bytes = d.initial_value.size() * kFloatBytes;
      if (!claimant.principal.empty()) {
        Created& by = created_by_[claimant.principal];
        ++by.tensors;
        by.bytes += bytes;
        creators_[d.name] = claimant.principal;
      }
      // Admitted above: its policy is valid.
      slot = std::make_shared<SharedTensor>(
          d.name, d.shape, std::move(d.initial_value), &options_, d.whole_shape,
          *PolicyFor(d));
      total_bytes_ += slot->admitted_bytes();
      dropped_names_.erase(d.name);
    }
    slot->AddParticipant(worker.id);
    worker.tensors.push_back(d.name);
    result.tensors.push_back(JoinedTensor{InfoOf(*slot), created});
  }
  std::sort(worker.tensors.begin(), worker.tensors.end());
  // The lease's clock starts now, not when the lock was taken: building a
  // large new tensor (its accumulator allocated and zeroed) takes a while
  // (a 256 MiB one took 6.8 s under TSan, and the lease had lapsed before
  // its worker got it).
  worker.last_seen = options_.now();
  return result;
}

absl::StatusOr<TensorPolicy> TensorStore::PolicyFor(
    const Declaration& d) const {
  return policy_defaults_.Apply(d.name, d.policy);
}

std::uint64_t TensorStore::BufferedBytesLocked() const {
  std::uint64_t total = 0;
  for (const auto& [name, tensor] : tensors_) total += tensor->BufferedBytes();
  return total;
}

absl::Status TensorStore::AdmitPolicyLocked(const Declaration& d,
                                            const SharedTensor* held,
                                            absl::string_view worker_id,
                                            PolicyCost& cost) const {
  const std::uint64_t elements =
      ElementCount(d.shape, ~std::uint64_t{0}).value_or(0);
  TensorPolicy policy;
  std::shared_ptr<const CompiledPolicy> compiled;
  if (held == nullptr) {
    WEIGHTD_ASSIGN_OR_RETURN(policy, PolicyFor(d));
    compiled = Compile(policy);
    cost.state += SharedTensor::MaxStateBytes(
        *compiled, elements, options_.chunk_bytes / kFloatBytes);
  } else {
    policy = held->policy();
    WEIGHTD_ASSIGN_OR_RETURN(TensorPolicy declared,
                             policy_defaults_.Apply(policy, d.policy));
    if (declared != policy) {
      return absl::AlreadyExistsError(absl::StrCat(
          "tensor ", d.name, " exists with policy \"", PolicyText(policy),
          "\"; worker ", worker_id, " declared \"", PolicySpecText(d.policy),
          "\" (a policy is fixed when the tensor is created: declare none, "
          "or the same)"));
    }
    const std::vector<std::string> participants = held->Participants();
    if (std::binary_search(participants.begin(), participants.end(),
                           worker_id)) {
      return absl::OkStatus();  // A re-join: it holds its place already.
    }
  }
  if (policy.consistency != Mode::kSync) return absl::OkStatus();
  if (compiled == nullptr) compiled = Compile(policy);
  if (!compiled->aggregator->buffered()) return absl::OkStatus();
  const std::uint64_t bytes = elements * kFloatBytes;
  const std::uint64_t buffered = cost.buffered;
  const std::uint64_t cap = options_.max_buffered_bytes;
  if (cap != 0 && (buffered > cap || bytes > cap - buffered)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker ", worker_id, " cannot share tensor ", d.name, ": aggregator=",
        policy.aggregator, " holds a copy of every participant's push (", bytes,
        " bytes each), and the server's buffered aggregators hold ", buffered,
        " of at most ", cap,
        " bytes (--max_buffered_bytes); raise it, or use aggregator=mean"));
  }
  cost.buffered += bytes;
  return absl::OkStatus();
}

absl::Status TensorStore::AdmitJoinLocked(absl::string_view worker_id,
                                          absl::string_view principal,
                                          std::uint32_t new_tensors,
                                          std::uint64_t new_bytes,
                                          std::uint64_t new_state_bytes) const {
  if (closed()) return ClosedError();
  if (options_.max_workers > 0 && leases_.size() >= options_.max_workers) {
    auto it = workers_.find(worker_id);
    if (it == workers_.end() || it->second.lease_id == 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "worker ", worker_id, " cannot join: ", leases_.size(),
          " workers are members, the server's limit (--max_workers)"));
    }
  }
  const std::uint64_t adding = new_bytes + new_state_bytes;
  const std::uint64_t cap = options_.max_total_bytes;
  if (cap > 0 && adding > 0 &&
      (total_bytes_ >= cap || adding > cap - total_bytes_)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker ", worker_id, " would create ", adding, " bytes of tensors",
        new_state_bytes == 0
            ? ""
            : absl::StrCat(" (", new_bytes, " bytes of values and ",
                           new_state_bytes, " bytes of optimizer state)"),
        "; the server holds ", total_bytes_, " of at most ", cap,
        " (--max_total_bytes)"));
  }
  if (principal.empty() || new_tensors == 0) return absl::OkStatus();
  Created created;
  if (auto it = created_by_.find(principal); it != created_by_.end()) {
    created = it->second;
  }
  const std::uint32_t max_tensors = options_.max_tensors_per_principal;
  if (max_tensors > 0 && (created.tensors >= max_tensors ||
                          new_tensors > max_tensors - created.tensors)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker ", worker_id, " would create ", new_tensors,
        " tensor(s); principal ", principal, " created ", created.tensors,
        " of at most ", max_tensors, " (--max_tensors_per_principal)"));
  }
  const std::uint64_t max_bytes = options_.max_bytes_per_principal;
  if (max_bytes > 0 &&
      (created.bytes >= max_bytes || new_bytes > max_bytes - created.bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker ", worker_id, " would create ", new_bytes,
        " bytes of tensors; principal ", principal, " created ", created.bytes,
        " of at most ", max_bytes, " (--max_bytes_per_principal)"));
  }
  return absl::OkStatus();
}

}  // namespace weightd::core
