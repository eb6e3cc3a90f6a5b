// Save and Restore: the store's state for snapshots on disk.
#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/core/tensor_store.h"

namespace weightd::core {

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
    // The policy it was created with; a snapshot of before policies: the
    // server's default for its name.
    absl::StatusOr<TensorPolicy> policy =
        store->policy_defaults_.Apply(t.name, t.policy);
    if (!policy.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "saved tensor ", t.name, ": ", policy.status().message()));
    }
    slot = std::make_shared<SharedTensor>(t.name, t.shape, *t.value,
                                          &store->options_, t.whole_shape,
                                          *std::move(policy));
    store->total_bytes_ += slot->admitted_bytes();
    WEIGHTD_RETURN_IF_ERROR(slot->Restore(t.version, t.contributions,
                                          std::move(t.history),
                                          std::move(t.optimizer_state)));
  }
  const absl::Time now = store->options_.now();
  for (SavedWorker& w : state.workers) {
    WEIGHTD_RETURN_IF_ERROR(ValidateName("worker id", w.id));
    Worker& worker = store->workers_[w.id];
    worker.id = w.id;
    worker.max_sequence = w.max_sequence;
    worker.principal = w.principal;
    worker.last_seen = now;  // A full lease period to come back.
    worker.joined = now;
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
    TensorSave saved = tensor->Save();
    state.tensors.push_back(SavedTensor{
        name, std::move(saved.published.shape), saved.published.version,
        std::move(saved.published.value), std::move(saved.pushes),
        tensor->whole_shape(), std::move(saved.history), SpecOf(saved.policy),
        std::move(saved.optimizer_state)});
  }
  std::sort(state.tensors.begin(), state.tensors.end(),
            [](const SavedTensor& a, const SavedTensor& b) {
              return a.name < b.name;
            });
  for (const auto& [id, worker] : workers_) {
    state.workers.push_back(SavedWorker{id, worker.lease_id,
                                        worker.max_sequence, worker.tensors,
                                        worker.principal});
  }
  std::sort(
      state.workers.begin(), state.workers.end(),
      [](const SavedWorker& a, const SavedWorker& b) { return a.id < b.id; });
  return state;
}

}  // namespace weightd::core
