// The daemon's side of the same-host data path (docs/protocol.md, "Shared
// memory"): each worker's shared-memory segment, mapped once it is handed
// over (AttachSegment), found by lease for PushSegment and PullSegment, and
// unmapped when the lease ends.
#ifndef WEIGHTD_SERVER_SERVICE_SEGMENTS_H_
#define WEIGHTD_SERVER_SERVICE_SEGMENTS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace weightd::service {

// One worker's segment, mapped read-write into the daemon. The worker
// sealed its size (F_SEAL_SHRINK, F_SEAL_GROW), so no access inside size()
// can fault; what the worker writes while the daemon reads is its own
// contribution only. Unmapped by the destructor. Thread-safe (immutable).
class Segment {
 public:
  // The token's length: the segment's first bytes.
  static constexpr std::size_t kTokenBytes = 16;

  // Opens the memfd `fd` of process `pid` (/proc/<pid>/fd/<fd>), checks
  // that it is a sealed memfd of `size` bytes starting with `token`, and
  // maps it. FAILED_PRECONDITION, saying why, when it cannot be used (no
  // such process or descriptor here, another host or pid namespace, no
  // permission, not sealed, another size or token); INVALID_ARGUMENT for
  // a size or token that cannot be right.
  static absl::StatusOr<std::shared_ptr<Segment>> Open(std::uint32_t pid,
                                                       std::uint32_t fd,
                                                       std::uint64_t size,
                                                       absl::string_view token);
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  std::uint64_t size() const { return size_; }
  // `bytes` bytes at `offset`, or null if that range is not inside the
  // segment (or overlaps its token).
  char* Range(std::uint64_t offset, std::uint64_t bytes) const;

 private:
  Segment(char* base, std::uint64_t size) : base_(base), size_(size) {}

  char* const base_;
  const std::uint64_t size_;
};

// The segments of the workers, by lease. Thread-safe.
class SegmentTable {
 public:
  // Makes `segment` the one of `lease_id`, replacing (and releasing) any
  // before it.
  void Attach(std::uint64_t lease_id, std::shared_ptr<Segment> segment);
  // The segment of `lease_id`, or null.
  std::shared_ptr<Segment> Find(std::uint64_t lease_id) const;
  // Releases the segment of every lease for which `live` is false; a
  // segment is unmapped once the calls using it end. Returns how many.
  int Sweep(absl::FunctionRef<bool(std::uint64_t lease_id)> live);
  // Segments held (for tests and status).
  std::size_t size() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::uint64_t, std::shared_ptr<Segment>> segments_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_SEGMENTS_H_
