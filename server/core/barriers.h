// Barriers: the named barriers of one TensorStore, where workers wait for
// each other. Internal to the core: workers enter through
// TensorStore::EnterBarrier, which checks their lease first.
#ifndef WEIGHTD_SERVER_CORE_BARRIERS_H_
#define WEIGHTD_SERVER_CORE_BARRIERS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace weightd::core {

// A barrier that workers are waiting in (for status reports).
struct BarrierInfo {
  std::string name;
  std::uint32_t count = 0;     // Workers it waits for.
  std::uint32_t waiting = 0;   // Workers waiting now.
  std::uint64_t released = 0;  // Generations released so far.
  std::vector<std::string> waiting_workers = {};  // Sorted.
};

// How a worker passed a barrier (TensorStore::EnterBarrier).
struct BarrierPass {
  // 0 .. count-1 for the workers released together, in the order they
  // entered; count, count+1, ... for late workers of that generation.
  std::uint32_t arrival = 0;
  std::uint64_t generation = 0;  // The generation passed, from 1.
};

// Thread-safe. Callbacks run outside its lock, on the thread whose call
// caused them. Its lock is never held together with TensorStore's.
class Barriers {
 public:
  Barriers() = default;
  Barriers(const Barriers&) = delete;
  Barriers& operator=(const Barriers&) = delete;

  // The worker ids holding a lease now, each with its lease.
  using Members = absl::flat_hash_map<std::string, std::uint64_t>;

  // Enters `worker`, holding `lease_id`, into barrier `name` of `count`
  // workers, by the rules of TensorStore::EnterBarrier (which validated
  // `name` and `count`). A pass recorded under a lease other than the one
  // `members` names for its worker no longer counts. Calls `done` (and those
  // of the workers it releases) before returning if the worker passes at
  // once. Returns the entry's id for Cancel(). INVALID_ARGUMENT for a count
  // other than that of the workers already waiting; after Close(), its
  // status.
  absl::StatusOr<std::uint64_t> Enter(
      const std::string& worker, std::uint64_t lease_id, const Members& members,
      absl::string_view name, std::uint32_t count,
      std::function<void(absl::Status)> done, BarrierPass* pass);

  // Removes entry `id` of barrier `name` if it still waits: true if its
  // callback had not been called and now never will be.
  bool Cancel(const std::string& name, std::uint64_t id);

  // Fails every waiting entry with `status` (not OK) and refuses every later
  // Enter() with it. Idempotent: the first status stays.
  void Close(const absl::Status& status);

  // The barriers with waiting workers, sorted by name.
  std::vector<BarrierInfo> Waiting() const;

 private:
  struct Barrier {
    std::uint32_t count = 0;
    struct Entry {
      std::uint64_t id;
      std::uint64_t lease_id;
      std::function<void(absl::Status)> done;
      BarrierPass* pass;
      std::uint32_t order;  // Of entry into this generation.
    };
    absl::flat_hash_map<std::string, Entry> waiting;  // By worker id.
    std::uint32_t entered = 0;   // Entries into this generation so far.
    std::uint64_t released = 0;  // Generations released.
    std::uint32_t late = 0;      // Late passes of the latest generation.
    // The latest generation each worker passed, with the lease it held.
    struct Passed {
      std::uint64_t lease_id;
      std::uint64_t generation;
    };
    absl::flat_hash_map<std::string, Passed> passed;  // By worker id.
  };

  mutable absl::Mutex mu_;
  absl::Status closed_ ABSL_GUARDED_BY(mu_);  // Not OK once closed.
  absl::flat_hash_map<std::string, Barrier> barriers_ ABSL_GUARDED_BY(mu_);
  std::uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_BARRIERS_H_
