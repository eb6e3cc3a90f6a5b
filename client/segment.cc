#include "client/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

// Places start on cache lines; the first follows the token's page.
constexpr std::uint64_t kFirstPlace = 4096;
constexpr std::uint64_t kAlign = 64;

std::uint64_t RoundUp(std::uint64_t n, std::uint64_t to) {
  return (n + to - 1) / to * to;
}

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat("shared-memory segment: ", what, ": ",
                                          std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Segment>> Segment::Create(
    const std::vector<std::pair<std::string, std::uint64_t>>& tensors) {
  absl::flat_hash_map<std::string, std::pair<std::uint64_t, std::uint64_t>>
      places;
  std::uint64_t end = kFirstPlace;
  for (const auto& [name, bytes] : tensors) {
    places[name] = {end, bytes};
    end = RoundUp(end + bytes, kAlign);
  }
  const std::uint64_t size = RoundUp(end, 4096);
  const int fd =
      memfd_create("weightd-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Errno("memfd_create");
  if (ftruncate(fd, static_cast<off_t>(size)) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    absl::Status status = Errno("sizing and sealing");
    close(fd);
    return status;
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    absl::Status status = Errno("mmap");
    close(fd);
    return status;
  }
  std::unique_ptr<Segment> segment(
      new Segment(fd, static_cast<char*>(base), size, std::move(places)));
  for (std::size_t have = 0; have < kTokenBytes;) {
    const ssize_t got = getrandom(segment->base_ + have, kTokenBytes - have, 0);
    if (got < 0 && errno != EINTR) return Errno("getrandom");
    if (got > 0) have += static_cast<std::size_t>(got);
  }
  return segment;
}

Segment::~Segment() {
  munmap(base_, size_);
  close(fd_);
}

bool Segment::Fits(
    const std::vector<std::pair<std::string, std::uint64_t>>& tensors) const {
  for (const auto& [name, bytes] : tensors) {
    auto it = places_.find(name);
    if (it == places_.end() || it->second.second != bytes) return false;
  }
  return true;
}

std::int64_t Segment::Place(absl::string_view name) const {
  auto it = places_.find(name);
  return it == places_.end() ? -1 : static_cast<std::int64_t>(it->second.first);
}

}  // namespace weightd
