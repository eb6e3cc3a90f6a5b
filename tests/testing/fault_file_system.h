// FaultFileSystem: a storage::FileSystem for tests that stages the failures
// of a real disk (LevelDB's FaultInjectionTestEnv, smaller). It wraps
// another FileSystem (the POSIX one by default, over a test's temporary
// directory) and can
//   - fail any operation with a chosen errno (Fail), with the status and
//     message the POSIX implementation would give;
//   - run out of space after N more bytes (LimitSpace): the write that
//     crosses the limit writes what fits, then fails with ENOSPC;
//   - crash (Crash): at a chosen call of an operation, before it, half-way
//     through it (an append) or after it, the "process" dies: that call and
//     every later one fail with ABORTED and touch nothing, and the files stay
//     as the crash left them, as after kill -9 (the page cache survives; a
//     power loss is not modelled). Re-open the directory with a healthy
//     FileSystem to see what survived.
// It also counts the calls of each operation.
//
// Thread-safe.
#ifndef WEIGHTD_TESTS_TESTING_FAULT_FILE_SYSTEM_H_
#define WEIGHTD_TESTS_TESTING_FAULT_FILE_SYSTEM_H_

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/storage/file_system.h"

namespace weightd::testing {

// The operations of storage::FileSystem and its files.
enum class FileOp {
  kCreate,  // NewWritableFile
  kAppend,
  kSync,
  kClose,
  kOpen,  // NewReadableFile
  kRead,
  kRename,
  kRemove,
  kSyncDirectory,
  kList,
  kCreateDirectory,
};

// When, in the chosen call, a crash happens.
enum class CrashWhen {
  kBefore,  // The operation does nothing.
  kMidway,  // kAppend only: the first half of the bytes are written.
  kAfter,   // The operation is done, but its caller never learns it.
};

class FaultFileSystem final : public storage::FileSystem {
 public:
  // `base` is not owned and must outlive this.
  explicit FaultFileSystem(
      storage::FileSystem* base = storage::DefaultFileSystem())
      : base_(base) {}
  FaultFileSystem(const FaultFileSystem&) = delete;
  FaultFileSystem& operator=(const FaultFileSystem&) = delete;

  // After `skip` more calls of `op` succeed, every later one fails with
  // `error` (an errno) and does nothing, until Heal().
  void Fail(FileOp op, int error, int skip = 0) {
    absl::MutexLock lock(&mu_);
    failures_[op] = Failure{error, skip};
  }
  // Appends may write `bytes` more bytes in all; then ENOSPC, until Heal().
  void LimitSpace(std::uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    space_ = bytes;
  }
  // After `skip` more calls of `op`, the next one crashes, `when` in it.
  void Crash(FileOp op, CrashWhen when, int skip = 0) {
    absl::MutexLock lock(&mu_);
    crash_ = CrashPlan{op, when, skip};
  }
  // Forgets the failures, the space limit and a planned crash (not a crash
  // that happened: a dead process stays dead; use a new FaultFileSystem).
  void Heal() {
    absl::MutexLock lock(&mu_);
    failures_.clear();
    space_.reset();
    crash_.reset();
  }

  bool crashed() const {
    absl::MutexLock lock(&mu_);
    return crashed_;
  }
  // Calls of `op` so far, failed or not (not those after a crash).
  int calls(FileOp op) const {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(op);
    return it == calls_.end() ? 0 : it->second;
  }

  absl::StatusOr<std::unique_ptr<storage::WritableFile>> NewWritableFile(
      const std::string& path) override {
    Plan plan = Begin(FileOp::kCreate);
    if (plan.refuse) return Refused(plan, "cannot create", path);
    absl::StatusOr<std::unique_ptr<storage::WritableFile>> file =
        base_->NewWritableFile(path);
    if (plan.crash_after) return Dead();
    if (!file.ok()) return file.status();
    return std::unique_ptr<storage::WritableFile>(
        new File(this, std::move(*file), path));
  }
  absl::StatusOr<std::unique_ptr<storage::ReadableFile>> NewReadableFile(
      const std::string& path) override {
    Plan plan = Begin(FileOp::kOpen);
    if (plan.refuse) return Refused(plan, "cannot open", path);
    absl::StatusOr<std::unique_ptr<storage::ReadableFile>> file =
        base_->NewReadableFile(path);
    if (plan.crash_after) return Dead();
    if (!file.ok()) return file.status();
    return std::unique_ptr<storage::ReadableFile>(
        new Readable(this, std::move(*file), path));
  }
  absl::Status RenameFile(const std::string& from,
                          const std::string& to) override {
    return Simple(FileOp::kRename, "cannot rename to", to,
                  [&] { return base_->RenameFile(from, to); });
  }
  absl::Status RemoveFile(const std::string& path) override {
    return Simple(FileOp::kRemove, "cannot remove", path,
                  [&] { return base_->RemoveFile(path); });
  }
  absl::Status SyncDirectory(const std::string& dir) override {
    return Simple(FileOp::kSyncDirectory, "cannot fsync directory", dir,
                  [&] { return base_->SyncDirectory(dir); });
  }
  absl::StatusOr<std::vector<std::string>> ListDirectory(
      const std::string& dir) override {
    Plan plan = Begin(FileOp::kList);
    if (plan.refuse) return Refused(plan, "cannot list directory", dir);
    absl::StatusOr<std::vector<std::string>> names = base_->ListDirectory(dir);
    if (plan.crash_after) return Dead();
    return names;
  }
  absl::Status CreateDirectory(const std::string& dir) override {
    return Simple(FileOp::kCreateDirectory, "cannot create directory", dir,
                  [&] { return base_->CreateDirectory(dir); });
  }

 private:
  struct Failure {
    int error;
    int skip;
  };
  struct CrashPlan {
    FileOp op;
    CrashWhen when;
    int skip;
  };
  // What to do with one call.
  struct Plan {
    bool refuse = false;        // Do nothing; return `status`.
    absl::Status status;        // If refuse and error == 0.
    int error = 0;              // If refuse: fail with this errno.
    bool crash_midway = false;  // An append: write half, then die.
    bool crash_after = false;   // Do it, then die.
  };

  class File final : public storage::WritableFile {
   public:
    File(FaultFileSystem* fs, std::unique_ptr<storage::WritableFile> base,
         std::string path)
        : fs_(fs), base_(std::move(base)), path_(std::move(path)) {}

    absl::Status Append(absl::string_view data) override {
      Plan plan = fs_->Begin(FileOp::kAppend);
      if (plan.refuse) return fs_->Refused(plan, "cannot write", path_);
      if (plan.crash_midway) {
        (void)base_->Append(data.substr(0, data.size() / 2));
        return fs_->Dead();
      }
      // What the disk has room for.
      std::size_t fits = data.size();
      {
        absl::MutexLock lock(&fs_->mu_);
        if (fs_->space_.has_value()) {
          fits = static_cast<std::size_t>(
              std::min<std::uint64_t>(fits, *fs_->space_));
          *fs_->space_ -= fits;
        }
      }
      absl::Status status = base_->Append(data.substr(0, fits));
      if (plan.crash_after) return fs_->Dead();
      if (status.ok() && fits < data.size()) {
        status = storage::ErrnoToStatus(ENOSPC, "cannot write", path_);
      }
      return status;
    }
    absl::Status Sync() override {
      return fs_->Simple(FileOp::kSync, "cannot fsync", path_,
                         [&] { return base_->Sync(); });
    }
    absl::Status Close() override {
      return fs_->Simple(FileOp::kClose, "cannot close", path_,
                         [&] { return base_->Close(); });
    }

   private:
    FaultFileSystem* const fs_;
    const std::unique_ptr<storage::WritableFile> base_;
    const std::string path_;
  };

  class Readable final : public storage::ReadableFile {
   public:
    Readable(FaultFileSystem* fs, std::unique_ptr<storage::ReadableFile> base,
             std::string path)
        : fs_(fs), base_(std::move(base)), path_(std::move(path)) {}

    std::uint64_t size() const override { return base_->size(); }
    absl::StatusOr<std::size_t> Read(char* out, std::size_t n) override {
      Plan plan = fs_->Begin(FileOp::kRead);
      if (plan.refuse) return fs_->Refused(plan, "cannot read", path_);
      absl::StatusOr<std::size_t> got = base_->Read(out, n);
      if (plan.crash_after) return fs_->Dead();
      return got;
    }

   private:
    FaultFileSystem* const fs_;
    const std::unique_ptr<storage::ReadableFile> base_;
    const std::string path_;
  };

  // Counts the call and decides its fate.
  Plan Begin(FileOp op) {
    absl::MutexLock lock(&mu_);
    Plan plan;
    if (crashed_) {
      plan.refuse = true;
      plan.status = DeadStatus();
      return plan;
    }
    ++calls_[op];
    if (crash_.has_value() && crash_->op == op && crash_->skip-- == 0) {
      crashed_ = true;
      const CrashWhen when = crash_->when;
      crash_.reset();
      if (when == CrashWhen::kBefore) {
        plan.refuse = true;
        plan.status = DeadStatus();
      } else if (when == CrashWhen::kMidway && op == FileOp::kAppend) {
        plan.crash_midway = true;
      } else {
        plan.crash_after = true;
      }
      return plan;
    }
    auto failure = failures_.find(op);
    if (failure != failures_.end()) {
      if (failure->second.skip > 0) {
        --failure->second.skip;
      } else {
        plan.refuse = true;
        plan.error = failure->second.error;
      }
    }
    return plan;
  }

  static absl::Status DeadStatus() {
    return absl::AbortedError("the process crashed (FaultFileSystem)");
  }
  absl::Status Dead() const { return DeadStatus(); }
  static absl::Status Refused(const Plan& plan, absl::string_view what,
                              absl::string_view path) {
    if (plan.error == 0) return plan.status;
    return storage::ErrnoToStatus(plan.error, what, path);
  }

  template <typename Op>
  absl::Status Simple(FileOp op, absl::string_view what, absl::string_view path,
                      Op run) {
    Plan plan = Begin(op);
    if (plan.refuse) return Refused(plan, what, path);
    absl::Status status = run();
    if (plan.crash_after || plan.crash_midway) return Dead();
    return status;
  }

  storage::FileSystem* const base_;
  mutable absl::Mutex mu_;
  std::map<FileOp, Failure> failures_ ABSL_GUARDED_BY(mu_);
  std::optional<std::uint64_t> space_ ABSL_GUARDED_BY(mu_);
  std::optional<CrashPlan> crash_ ABSL_GUARDED_BY(mu_);
  bool crashed_ ABSL_GUARDED_BY(mu_) = false;
  std::map<FileOp, int> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_FAULT_FILE_SYSTEM_H_
