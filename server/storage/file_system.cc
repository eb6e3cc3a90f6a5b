#include "server/storage/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace weightd::storage {
namespace {

absl::Status LastError(absl::string_view what, absl::string_view path) {
  return ErrnoToStatus(errno, what, path);
}

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path)
      : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  PosixWritableFile(const PosixWritableFile&) = delete;
  PosixWritableFile& operator=(const PosixWritableFile&) = delete;

  absl::Status Append(absl::string_view data) override {
    const char* p = data.data();
    std::size_t n = data.size();
    while (n > 0) {
      const ssize_t wrote = ::write(fd_, p, n);
      if (wrote < 0 && errno == EINTR) continue;
      if (wrote < 0) return LastError("cannot write", path_);
      p += wrote;
      n -= static_cast<std::size_t>(wrote);
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (::fsync(fd_) != 0) return LastError("cannot fsync", path_);
    return absl::OkStatus();
  }

  absl::Status Close() override {
    const int fd = fd_;
    fd_ = -1;  // Closed even if close(2) fails: retrying is not safe.
    if (::close(fd) != 0) return LastError("cannot close", path_);
    return absl::OkStatus();
  }

 private:
  int fd_;
  const std::string path_;
};

class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(int fd, std::uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}
  ~PosixReadableFile() override { ::close(fd_); }
  PosixReadableFile(const PosixReadableFile&) = delete;
  PosixReadableFile& operator=(const PosixReadableFile&) = delete;

  std::uint64_t size() const override { return size_; }

  absl::StatusOr<std::size_t> Read(char* out, std::size_t n) override {
    for (;;) {
      const ssize_t got = ::read(fd_, out, n);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return LastError("cannot read", path_);
      return static_cast<std::size_t>(got);
    }
  }

 private:
  const int fd_;
  const std::uint64_t size_;
  const std::string path_;
};

}  // namespace

absl::Status ErrnoToStatus(int error, absl::string_view what,
                           absl::string_view path) {
  const std::string message =
      absl::StrCat(what, " ", path, ": ", std::strerror(error));
  if (error == ENOENT) return absl::NotFoundError(message);
  if (error == ENOSPC || error == EDQUOT) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::InternalError(message);
}

absl::StatusOr<std::unique_ptr<WritableFile>> PosixFileSystem::NewWritableFile(
    const std::string& path) {
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return LastError("cannot create", path);
  return std::make_unique<PosixWritableFile>(fd, path);
}

absl::StatusOr<std::unique_ptr<ReadableFile>> PosixFileSystem::NewReadableFile(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return LastError("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = LastError("cannot stat", path);
    ::close(fd);
    return s;
  }
  return std::make_unique<PosixReadableFile>(
      fd, static_cast<std::uint64_t>(st.st_size), path);
}

absl::Status PosixFileSystem::RenameFile(const std::string& from,
                                         const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return LastError("cannot rename to", to);
  }
  return absl::OkStatus();
}

absl::Status PosixFileSystem::RemoveFile(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return LastError("cannot remove", path);
  return absl::OkStatus();
}

absl::Status PosixFileSystem::SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return LastError("cannot open directory", dir);
  absl::Status status = ::fsync(fd) == 0
                            ? absl::OkStatus()
                            : LastError("cannot fsync directory", dir);
  ::close(fd);
  return status;
}

absl::StatusOr<std::vector<std::string>> PosixFileSystem::ListDirectory(
    const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return LastError("cannot list directory", dir);
  std::vector<std::string> names;
  errno = 0;
  while (const dirent* e = ::readdir(d)) {
    const absl::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  absl::Status status =
      errno == 0 ? absl::OkStatus() : LastError("cannot list directory", dir);
  ::closedir(d);
  if (!status.ok()) return status;
  return names;
}

absl::Status PosixFileSystem::CreateDirectory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return LastError("cannot create directory", dir);
  }
  return absl::OkStatus();
}

FileSystem* DefaultFileSystem() {
  static PosixFileSystem* const file_system = new PosixFileSystem;
  return file_system;
}

}  // namespace weightd::storage
