// Snapshotter: takes snapshots of a TensorStore into a SnapshotDir on a
// background thread: every N closed rounds, every T seconds, on request, and
// once more at shutdown.
#ifndef WEIGHTD_SERVER_STORAGE_SNAPSHOTTER_H_
#define WEIGHTD_SERVER_STORAGE_SNAPSHOTTER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/tensor_store.h"
#include "server/storage/snapshot.h"

namespace weightd::storage {

struct SnapshotterOptions {
  // Take a snapshot once the job moved this many rounds on since the last
  // one (0: off). Rounds of the job, not of each tensor: the count is how
  // far the most advanced tensor's version moved, whatever the number of
  // tensors. A kill -9 then loses at most this many rounds (and the open
  // one).
  std::uint64_t every_rounds = 0;
  // Take a snapshot at this interval if any round closed since (0: off):
  // as soon as a round closes once `every` has passed since the last one.
  absl::Duration every = absl::ZeroDuration();
  // The clock `every` is measured on (as StoreOptions::now). Must be
  // thread-safe and never block (it is read with the Snapshotter's lock
  // held). Tests inject their own; the Snapshotter looks at it again
  // whenever its state changes (OnRoundClosed, Request, Stop) and at least
  // once per `every` of real time.
  std::function<absl::Time()> now = [] { return absl::Now(); };
};

// One attempt to write a snapshot: the file written, or the error.
struct SnapshotAttempt {
  absl::StatusOr<std::string> file;
  absl::Duration took;      // Saving the state and writing it.
  std::uint64_t bytes = 0;  // The file's size, once written.
};

class Snapshotter {
 public:
  using Done = std::function<void(absl::StatusOr<std::string>)>;
  using Attempted = std::function<void(const SnapshotAttempt&)>;

  // `store` and `dir` must outlive the Snapshotter. `on_attempt` is called
  // (on the snapshot thread) after each attempt. Thread-safe.
  Snapshotter(core::TensorStore* store, SnapshotDir* dir,
              SnapshotterOptions options, Attempted on_attempt);
  ~Snapshotter();  // Stop().
  Snapshotter(const Snapshotter&) = delete;
  Snapshotter& operator=(const Snapshotter&) = delete;

  // Counts a closed round (wire to StoreOptions::on_round_closed).
  void OnRoundClosed(const core::RoundClosed& closed);

  // Takes a snapshot soon, on the snapshot thread; `done` gets the file or
  // the error (UNAVAILABLE once stopping). Does not block.
  void Request(Done done);

  // Stops the thread, then writes one last snapshot on the calling thread
  // and returns it. Idempotent: later calls return the first result.
  absl::StatusOr<std::string> Stop();

  std::uint64_t written() const { return written_.load(); }
  std::uint64_t failed() const { return failed_.load(); }

 private:
  void Loop();
  absl::StatusOr<std::string> WriteOnce();
  bool DueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IntervalDueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool FinalWrittenLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  core::TensorStore* const store_;
  SnapshotDir* const dir_;
  const SnapshotterOptions options_;
  const Attempted on_attempt_;
  std::atomic<std::uint64_t> written_{0};
  std::atomic<std::uint64_t> failed_{0};

  mutable absl::Mutex mu_;
  std::uint64_t rounds_since_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;  // Most advanced tensor's.
  absl::Time last_ ABSL_GUARDED_BY(mu_);  // Of the last snapshot, by now().
  std::vector<Done> requests_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::StatusOr<std::string>> final_ ABSL_GUARDED_BY(mu_);
  absl::Mutex write_mu_;  // One writer at a time (thread and Stop()).
  std::thread thread_;
};

}  // namespace weightd::storage

#endif  // WEIGHTD_SERVER_STORAGE_SNAPSHOTTER_H_
