// Leases: how a membership stays alive, is renewed, held, ended, expires.
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/core/errors.h"
#include "server/core/tensor_store.h"

namespace weightd::core {

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

void TensorStore::EndMembershipLocked(Worker& worker, ClosedOn why,
                                      Deferred& deferred) {
  for (const std::string& name : worker.tensors) {
    tensors_.at(name)->RemoveParticipant(worker.id, why, deferred);
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

absl::StatusOr<std::string> TensorStore::Leave(std::uint64_t lease_id) {
  Deferred deferred;
  absl::MutexLock lock(&mu_);
  WEIGHTD_ASSIGN_OR_RETURN(Worker * worker, WorkerForLeaseLocked(lease_id));
  EndMembershipLocked(*worker, ClosedOn::kLeave, deferred);
  return worker->id;
}

absl::Status TensorStore::Heartbeat(std::uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  if (closed()) return ClosedError();
  return WorkerForLeaseLocked(lease_id).status();
}

bool TensorStore::HoldsLease(std::uint64_t lease_id) const {
  absl::MutexLock lock(&mu_);
  return lease_id != 0 && leases_.contains(lease_id);
}

absl::StatusOr<LeaseHolder> TensorStore::HolderOf(
    std::uint64_t lease_id) const {
  absl::MutexLock lock(&mu_);
  auto it = lease_id == 0 ? leases_.end() : leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease ", lease_id, " is not held by any joined worker"));
  }
  const Worker& worker = workers_.at(it->second);
  return LeaseHolder{worker.id, worker.principal};
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
    EndMembershipLocked(worker, ClosedOn::kLeaseExpiry, deferred);
    ++expired;
  }
  return expired;
}

}  // namespace weightd::core
