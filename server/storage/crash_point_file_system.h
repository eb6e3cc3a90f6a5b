// CrashPointFileSystem: a FileSystem that dies at one named step of a
// snapshot write, for the crash tests (tests/fault/snapshot_crash_test.sh
// through weightd's --crash_at). It wraps another FileSystem and changes
// nothing else, so the snapshot code does not know about crash points.
#ifndef WEIGHTD_SERVER_STORAGE_CRASH_POINT_FILE_SYSTEM_H_
#define WEIGHTD_SERVER_STORAGE_CRASH_POINT_FILE_SYSTEM_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/storage/file_system.h"

namespace weightd::storage {

// The steps of WriteSnapshotFile a crash can be staged at, by name:
enum class CrashPoint {
  kMidWrite,     // "snapshot_mid_write": half of the first write's bytes
                 // are in the temporary file.
  kBeforeFsync,  // "snapshot_before_fsync": all bytes written, no fsync.
  kAfterFsync,   // "snapshot_after_fsync": the fsync returned (ok or not).
  kAfterRename,  // "snapshot_after_rename": renamed, directory not fsynced.
};

// The crash point called `name`. INVALID_ARGUMENT, listing the names, for
// any other.
absl::StatusOr<CrashPoint> ParseCrashPoint(absl::string_view name);
// "snapshot_mid_write", ...
absl::string_view CrashPointName(CrashPoint point);

class CrashPointFileSystem final : public FileSystem {
 public:
  // Called once, when the armed point is reached, with its name.
  using Crash = std::function<void(absl::string_view name)>;

  // Wraps `base` (not owned; must outlive this) and arms the crash point
  // called `point`; reaching it calls `crash`, which by default never
  // returns (DieAtCrashPoint: SIGKILL). If `crash` returns (tests), the file
  // system acts as a dead process's would: the operation that reached the
  // point and every later one, on it or on a file it opened for writing,
  // fail with ABORTED and touch nothing more.
  // INVALID_ARGUMENT for an unknown point. Thread-safe.
  static absl::StatusOr<std::unique_ptr<CrashPointFileSystem>> Create(
      FileSystem* base, absl::string_view point, Crash crash = nullptr);
  CrashPointFileSystem(const CrashPointFileSystem&) = delete;
  CrashPointFileSystem& operator=(const CrashPointFileSystem&) = delete;

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

  // Whether the armed point was reached (and `crash` returned).
  bool crashed() const { return crashed_.load(); }

 private:
  class File;

  CrashPointFileSystem(FileSystem* base, CrashPoint point, Crash crash)
      : base_(base), point_(point), crash_(std::move(crash)) {}
  // If `at` is the armed point and not reached yet: crash. Returns whether
  // the file system is dead (then the caller returns Dead()).
  bool Reach(CrashPoint at);
  absl::Status Dead() const;

  FileSystem* const base_;
  const CrashPoint point_;
  const Crash crash_;
  std::atomic<bool> crashed_{false};
};

}  // namespace weightd::storage

#endif  // WEIGHTD_SERVER_STORAGE_CRASH_POINT_FILE_SYSTEM_H_
