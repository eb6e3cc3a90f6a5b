// PushPacer: keeps the push halves of one sync round's PushPulls level, so
// that the round's result streams out at the link's rate.
//
// A chunk's result is published once every member of the round delivered
// its copy, so the result streams can go no faster than the slowest push.
// TCP flows that share a link are not fair over a round's seconds: on a
// shard's 1 Gbit/s link four pushes drifted 20 % apart, and the result
// stream, held to the slowest of them, ran at 70 % of the link until the
// pushes ended, then finished alone (docs/performance.md, Step 9). The
// service therefore stops reading a stream that is more than `lead_bytes`
// ahead of the slowest stream of its group: gRPC's flow control then stops
// that worker's sender, and the link's share goes to the streams behind.
//
// A group is the PushPulls whose push names the same first tensor in the
// same round: one job's workers. A stream counts only while it is live
// (received a message within `stall`), so a frozen or vanished worker holds
// the others back for at most `stall` (plus one Tick period), never until
// its lease or the round times out.
//
// No gRPC here: a stream is an id, and reading on is a callback.
#ifndef WEIGHTD_SERVER_SERVICE_PUSH_PACER_H_
#define WEIGHTD_SERVER_SERVICE_PUSH_PACER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace weightd::service {

class PushPacer {
 public:
  using Id = std::uint64_t;
  using Resume = absl::AnyInvocable<void() &&>;

  // `lead_bytes` 0 turns pacing off: Received() always says read on.
  PushPacer(std::uint64_t lead_bytes, absl::Duration stall,
            std::function<absl::Time()> now = absl::Now);
  PushPacer(const PushPacer&) = delete;
  PushPacer& operator=(const PushPacer&) = delete;

  // A stream of group `group` starts receiving. Thread-safe, as is all.
  Id Add(std::string group);
  // Stream `id` received a message of `bytes`. True: read the next one now.
  // False: the stream is parked, and `resume` will be called exactly once,
  // from another thread and without the pacer's lock, once it may read on
  // (or it is removed). Unknown ids (removed) always read on.
  bool Received(Id id, std::uint64_t bytes, Resume resume);
  // Stream `id` ended (its push is complete, failed or cancelled): it holds
  // nobody back any more. Returns its resume if it was parked, for the
  // caller to call (or to drop, if the call is over); null otherwise and
  // for unknown ids.
  [[nodiscard]] Resume Remove(Id id);
  // Resumes the parked streams that may read on because a stream they
  // waited for stalled. Called periodically (the server's housekeeping).
  void Tick();

  // For tests and the status line: streams parked now, and parks so far.
  int parked() const;
  std::uint64_t parks() const;

 private:
  struct Stream {
    std::string group;
    std::uint64_t received = 0;
    absl::Time last_message;
    Resume resume;  // Set while parked.
  };

  // The least any live stream of `group` received; UINT64_MAX if none is
  // live.
  std::uint64_t SlowestLocked(const std::string& group, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `s` is more than lead_bytes_ ahead of `slowest` (a group's
  // SlowestLocked; UINT64_MAX: no live stream, so nobody is ahead).
  bool Ahead(const Stream& s, std::uint64_t slowest) const;
  // Takes out the resumes of `group`'s parked streams that may read on;
  // returns the group's SlowestLocked.
  std::uint64_t ReleaseLocked(const std::string& group, absl::Time now,
                              std::vector<Resume>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::uint64_t lead_bytes_;
  const absl::Duration stall_;
  const std::function<absl::Time()> now_;
  mutable absl::Mutex mu_;
  Id next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<Id, Stream> streams_ ABSL_GUARDED_BY(mu_);
  // Each group's streams.
  absl::flat_hash_map<std::string, std::vector<Id>> groups_
      ABSL_GUARDED_BY(mu_);
  int parked_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t parks_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_PUSH_PACER_H_
