// A worker's shared-memory segment for the same-host data path
// (docs/protocol.md, "Shared memory"): a sealed memfd the daemon maps, with
// a place for each tensor the worker shares through that daemon. Internal
// to the client library.
#ifndef WEIGHTD_CLIENT_SEGMENT_H_
#define WEIGHTD_CLIENT_SEGMENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

class Segment {
 public:
  // The first bytes: a random token only this process (and the daemon it
  // hands the segment to) knows.
  static constexpr std::size_t kTokenBytes = 16;

  // A segment with a place for each (name, float32 bytes) of `tensors`,
  // each large enough for the tensor in float32. The memfd is sealed
  // against resizing (the daemon relies on it). INTERNAL if the kernel
  // refuses (no memfd_create, out of memory).
  static absl::StatusOr<std::unique_ptr<Segment>> Create(
      const std::vector<std::pair<std::string, std::uint64_t>>& tensors);
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  int fd() const { return fd_; }
  std::uint64_t size() const { return size_; }
  absl::string_view token() const {
    return absl::string_view(base_, kTokenBytes);
  }
  // Whether the segment has a place for each of `tensors`, as sized.
  bool Fits(
      const std::vector<std::pair<std::string, std::uint64_t>>& tensors) const;
  // The offset of tensor `name`'s place, or -1 if it has none.
  std::int64_t Place(absl::string_view name) const;
  char* At(std::uint64_t offset) const { return base_ + offset; }

 private:
  Segment(
      int fd, char* base, std::uint64_t size,
      absl::flat_hash_map<std::string, std::pair<std::uint64_t, std::uint64_t>>
          places)
      : fd_(fd), base_(base), size_(size), places_(std::move(places)) {}

  const int fd_;
  char* const base_;
  const std::uint64_t size_;
  // name -> (offset, float32 bytes).
  const absl::flat_hash_map<std::string,
                            std::pair<std::uint64_t, std::uint64_t>>
      places_;
};

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_SEGMENT_H_
