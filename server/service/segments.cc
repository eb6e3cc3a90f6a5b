#include "server/service/segments.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace weightd::service {
namespace {

// Closes a descriptor on every path out.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  const int fd_;
};

// A segment larger than this is refused (a bound on what one request can
// make the daemon map).
constexpr std::uint64_t kMaxSegmentBytes = std::uint64_t{1} << 40;

}  // namespace

absl::StatusOr<std::shared_ptr<Segment>> Segment::Open(
    std::uint32_t pid, std::uint32_t fd, std::uint64_t size,
    absl::string_view token) {
  if (token.size() != kTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment token has ", token.size(), " bytes; expected ", kTokenBytes));
  }
  if (size <= kTokenBytes || size > kMaxSegmentBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("segment size ", size, " is out of range"));
  }
  const std::string path = absl::StrCat("/proc/", pid, "/fd/", fd);
  // Only a memfd is opened (a descriptor of any other kind is refused
  // before open() could have an effect); the seals checked below make
  // sure of it.
  char target[64] = {};
  const ssize_t length = readlink(path.c_str(), target, sizeof(target) - 1);
  if (length < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot see the worker's segment ", path, ": ", std::strerror(errno),
        " (another host, another pid namespace, or no access)"));
  }
  if (!absl::StartsWith(absl::string_view(target, length), "/memfd:")) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a memfd"));
  }
  const Fd file(open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (file.get() < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot open the worker's segment ", path, ": ", std::strerror(errno),
        " (another host, another pid namespace, or no access)"));
  }
  const int seals = fcntl(file.get(), F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) !=
                       (F_SEAL_SHRINK | F_SEAL_GROW)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a memfd sealed against resizing"));
  }
  // Only shmem: a read of a hugetlbfs memfd's page that no huge page
  // backs raises SIGBUS, which would stop the daemon.
  struct statfs fs;
  if (fstatfs(file.get(), &fs) != 0 || fs.f_type != TMPFS_MAGIC) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " is not a memfd of ordinary shared memory (hugetlbfs?)"));
  }
  struct stat st;
  if (fstat(file.get(), &st) != 0 ||
      static_cast<std::uint64_t>(st.st_size) != size) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " has ", st.st_size, " bytes, not the ", size, " announced"));
  }
  void* base =
      mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.get(), 0);
  if (base == MAP_FAILED) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot map the worker's segment ", path, ": ", std::strerror(errno)));
  }
  std::shared_ptr<Segment> segment(new Segment(static_cast<char*>(base), size));
  if (std::memcmp(base, token.data(), kTokenBytes) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path,
                     " does not start with the token given: not this worker's "
                     "segment (another host?)"));
  }
  return segment;
}

Segment::~Segment() { munmap(base_, size_); }

char* Segment::Range(std::uint64_t offset, std::uint64_t bytes) const {
  if (offset < kTokenBytes || offset > size_ || bytes > size_ - offset) {
    return nullptr;
  }
  return base_ + offset;
}

void SegmentTable::Attach(std::uint64_t lease_id,
                          std::shared_ptr<Segment> segment) {
  std::shared_ptr<Segment> old;  // Unmapped outside the lock.
  absl::MutexLock lock(&mu_);
  old = std::exchange(segments_[lease_id], std::move(segment));
}

std::shared_ptr<Segment> SegmentTable::Find(std::uint64_t lease_id) const {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(lease_id);
  return it == segments_.end() ? nullptr : it->second;
}

int SegmentTable::Sweep(absl::FunctionRef<bool(std::uint64_t)> live) {
  std::vector<std::shared_ptr<Segment>> released;  // Unmapped after unlock.
  absl::MutexLock lock(&mu_);
  for (auto it = segments_.begin(); it != segments_.end();) {
    if (live(it->first)) {
      ++it;
      continue;
    }
    released.push_back(std::move(it->second));
    segments_.erase(it++);
  }
  return static_cast<int>(released.size());
}

std::size_t SegmentTable::size() const {
  absl::MutexLock lock(&mu_);
  return segments_.size();
}

}  // namespace weightd::service
