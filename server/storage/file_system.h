// FileSystem: the file operations snapshots need, behind one seam (as
// LevelDB's Env), so that a test can stage any failure with a fake
// (tests/testing/fault_file_system.h) and the daemon can arm a crash point
// (server/storage/crash_point_file_system.h) without the snapshot code
// knowing.
//
// Errors: every failure is an absl::Status whose message is
// "<what> <path>: <strerror(errno)>" (e.g. "cannot fsync /s/x.tmp: No space
// left on device"), with the code ErrnoToStatus gives the errno.
#ifndef WEIGHTD_SERVER_STORAGE_FILE_SYSTEM_H_
#define WEIGHTD_SERVER_STORAGE_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd::storage {

// The status of an operation that failed with `error` (an errno): NOT_FOUND
// for ENOENT, RESOURCE_EXHAUSTED for ENOSPC and EDQUOT, INTERNAL otherwise;
// the message is "<what> <path>: <strerror(error)>".
absl::Status ErrnoToStatus(int error, absl::string_view what,
                           absl::string_view path);

// A file open for writing, from FileSystem::NewWritableFile. Not
// thread-safe: one user at a time.
class WritableFile {
 public:
  virtual ~WritableFile() = default;  // Closes it if Close() was not called.

  // Appends all of `data` ("cannot write"). After an error, part of it may
  // have been written.
  virtual absl::Status Append(absl::string_view data) = 0;
  // Flushes the file's data to stable storage: fsync ("cannot fsync").
  virtual absl::Status Sync() = 0;
  // Closes the file ("cannot close"). Call at most once; nothing else after.
  virtual absl::Status Close() = 0;
};

// A file open for reading from its start, from FileSystem::NewReadableFile.
// Not thread-safe: one user at a time.
class ReadableFile {
 public:
  virtual ~ReadableFile() = default;  // Closes it.

  // The file's size in bytes when it was opened.
  virtual std::uint64_t size() const = 0;
  // Reads up to `n` bytes into `out` (which holds at least `n`); returns how
  // many, 0 at the end of the file ("cannot read").
  virtual absl::StatusOr<std::size_t> Read(char* out, std::size_t n) = 0;
};

// Implementations are thread-safe: any method may be called from any
// thread. Paths are plain strings, absolute or relative to the working
// directory.
class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // Creates `path`, or truncates it if it exists, for writing ("cannot
  // create"). The caller owns the file.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) = 0;
  // Opens `path` for reading ("cannot open", NOT_FOUND if it does not
  // exist; "cannot stat"). The caller owns the file.
  virtual absl::StatusOr<std::unique_ptr<ReadableFile>> NewReadableFile(
      const std::string& path) = 0;
  // Renames `from` to `to` atomically, replacing `to` ("cannot rename to",
  // naming `to`).
  virtual absl::Status RenameFile(const std::string& from,
                                  const std::string& to) = 0;
  // Deletes the file `path` ("cannot remove").
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  // Flushes the directory `dir` (its entries: creations, renames) to stable
  // storage ("cannot open directory", "cannot fsync directory").
  virtual absl::Status SyncDirectory(const std::string& dir) = 0;
  // The names of the entries of `dir`, without "." and "..", in no
  // particular order ("cannot list directory").
  virtual absl::StatusOr<std::vector<std::string>> ListDirectory(
      const std::string& dir) = 0;
  // Creates the directory `dir` (mode 0755); OK if it exists already
  // ("cannot create directory").
  virtual absl::Status CreateDirectory(const std::string& dir) = 0;
};

// The operating system's files, through POSIX calls. Stateless.
class PosixFileSystem final : public FileSystem {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) override;
  absl::StatusOr<std::unique_ptr<ReadableFile>> NewReadableFile(
      const std::string& path) override;
  absl::Status RenameFile(const std::string& from,
                          const std::string& to) override;
  absl::Status RemoveFile(const std::string& path) override;
  absl::Status SyncDirectory(const std::string& dir) override;
  absl::StatusOr<std::vector<std::string>> ListDirectory(
      const std::string& dir) override;
  absl::Status CreateDirectory(const std::string& dir) override;
};

// The process-wide PosixFileSystem: never null, never destroyed.
FileSystem* DefaultFileSystem();

}  // namespace weightd::storage

#endif  // WEIGHTD_SERVER_STORAGE_FILE_SYSTEM_H_
