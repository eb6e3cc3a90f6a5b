#include "server/core/barriers.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "server/core/errors.h"
#include "server/core/tensor_store.h"

namespace weightd::core {

absl::StatusOr<std::uint64_t> Barriers::Enter(
    const std::string& worker, std::uint64_t lease_id, const Members& members,
    absl::string_view name, std::uint32_t count,
    std::function<void(absl::Status)> done, BarrierPass* pass) {
  std::vector<std::function<void(absl::Status)>> release;
  std::function<void(absl::Status)> superseded;
  std::function<void(absl::Status)> late;
  std::uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (!closed_.ok()) return closed_;
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
    id = next_id_++;
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
  return id;
}

bool Barriers::Cancel(const std::string& name, std::uint64_t id) {
  absl::MutexLock lock(&mu_);
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

void Barriers::Close(const absl::Status& status) {
  std::vector<std::function<void(absl::Status)>> fail;
  {
    absl::MutexLock lock(&mu_);
    if (!closed_.ok()) return;
    closed_ = status;
    for (auto& [name, barrier] : barriers_) {
      for (auto& [worker, entry] : barrier.waiting) {
        fail.push_back(std::move(entry.done));
      }
    }
    barriers_.clear();
  }
  for (auto& fn : fail) fn(status);
}

std::vector<BarrierInfo> Barriers::Waiting() const {
  std::vector<BarrierInfo> waiting;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, barrier] : barriers_) {
      if (barrier.waiting.empty()) continue;
      BarrierInfo info{name, barrier.count,
                       static_cast<std::uint32_t>(barrier.waiting.size()),
                       barrier.released};
      for (const auto& [worker, entry] : barrier.waiting) {
        info.waiting_workers.push_back(worker);
      }
      std::sort(info.waiting_workers.begin(), info.waiting_workers.end());
      waiting.push_back(std::move(info));
    }
  }
  std::sort(waiting.begin(), waiting.end(),
            [](const BarrierInfo& a, const BarrierInfo& b) {
              return a.name < b.name;
            });
  return waiting;
}

// ---------------------------------------------------------------------------
// TensorStore: a worker enters with its lease.

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
  Barriers::Members members;
  {
    absl::MutexLock lock(&mu_);
    if (closed()) return ClosedError();
    WEIGHTD_ASSIGN_OR_RETURN(Worker * w, WorkerForLeaseLocked(lease_id));
    worker = w->id;
    for (const auto& [lease, id] : leases_) members.emplace(id, lease);
    release_lease = HoldLeaseLocked(*w);
  }
  WEIGHTD_ASSIGN_OR_RETURN(
      std::uint64_t id, barriers_.Enter(worker, lease_id, members, name, count,
                                        std::move(done), pass));
  return std::make_unique<Wait>(
      [barriers = &barriers_, name = std::string(name), id] {
        return barriers->Cancel(name, id);
      },
      std::move(release_lease));
}

}  // namespace weightd::core
