// PushSession, and TensorStore::BeginPush that starts one.
#include <algorithm>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/core/errors.h"
#include "server/core/kernels.h"
#include "server/core/tensor_store.h"

namespace weightd::core {

PushSession::PushSession(TensorStore* store, std::string worker,
                         PushHeader header,
                         std::vector<std::shared_ptr<SharedTensor>> tensors)
    : store_(store),
      worker_(std::move(worker)),
      header_(std::move(header)),
      tensors_(std::move(tensors)),
      next_offset_(tensors_.size(), 0),
      staged_(tensors_.size()) {}

std::uint64_t PushSession::tensor_bytes(std::uint32_t index) const {
  return tensors_.at(index)->bytes();
}

absl::Status PushSession::AddChunk(std::uint32_t index, std::uint64_t offset,
                                   Pieces data) {
  if (!error_.ok()) return error_;
  auto fail = [this](absl::Status status) {
    error_ = status;
    return status;
  };
  if (store_->closed()) return fail(ClosedError());
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
  if (!tensor.sync()) {
    // Async, bounded: staged whole, applied by Finish().
    std::vector<float>& staged = staged_[index];
    staged.resize((offset + expected) / kFloatBytes);
    DecodePieces(data, format, staged.data() + offset / kFloatBytes);
  } else {
    const ContributionKey key{worker_,
                              header_.sequence,
                              header_.entries[index].round,
                              header_.kind,
                              header_.entries[index].held_bytes,
                              header_.weight};
    Deferred deferred;  // Wakes the pulls of published chunks, unlocked.
    if (absl::Status s =
            tensor.AddChunk(key, offset, data, format, expected, deferred);
        !s.ok()) {
      return fail(s);
    }
  }
  next_offset_[index] += expected;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<PushResult>> PushSession::Finish() {
  if (!error_.ok()) return error_;
  if (store_->closed()) return error_ = ClosedError();
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
        tensor->sync() ? tensor->Complete(worker_, header_.sequence, deferred)
                       : tensor->ApplyPush(
                             ContributionKey{
                                 worker_, header_.sequence,
                                 header_.entries[i].round, header_.kind,
                                 header_.entries[i].held_bytes, header_.weight},
                             staged_[i], deferred);
    if (!outcome.ok()) {
      error_ = outcome.status();
      return error_;
    }
    results.push_back(PushResult{tensor->name(), *outcome});
  }
  return results;
}

bool PushSession::waits_for_turn() const {
  return std::any_of(tensors_.begin(), tensors_.end(), [](const auto& t) {
    return t->policy().consistency == Mode::kBounded;
  });
}

absl::StatusOr<std::unique_ptr<Wait>> PushSession::AwaitTurn(
    std::function<void(absl::Status)> done) {
  std::vector<TensorStore::WaitTarget> targets;
  for (const auto& tensor : tensors_) {
    if (tensor->policy().consistency != Mode::kBounded) continue;
    TensorStore::WaitTarget target;
    target.name = tensor->name();
    target.turn_of = worker_;
    target.sequence = header_.sequence;
    targets.push_back(target);
  }
  return store_->WaitFor(targets, std::move(done), header_.lease_id);
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
  if (closed()) return ClosedError();
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
    WEIGHTD_RETURN_IF_ERROR(tensor->CheckContribution(ContributionKey{
        worker->id, header.sequence, e.round, header.kind, e.held_bytes}));
    tensors.push_back(std::move(tensor));
  }
  worker->max_sequence = std::max(worker->max_sequence, header.sequence);
  return std::unique_ptr<PushSession>(
      new PushSession(this, worker->id, std::move(header), std::move(tensors)));
}

}  // namespace weightd::core
