#include "server/storage/crash_point_file_system.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crash_point.h"

namespace weightd::storage {
namespace {

struct Named {
  CrashPoint point;
  absl::string_view name;
};
constexpr Named kPoints[] = {
    {CrashPoint::kMidWrite, "snapshot_mid_write"},
    {CrashPoint::kBeforeFsync, "snapshot_before_fsync"},
    {CrashPoint::kAfterFsync, "snapshot_after_fsync"},
    {CrashPoint::kAfterRename, "snapshot_after_rename"},
};

}  // namespace

absl::StatusOr<CrashPoint> ParseCrashPoint(absl::string_view name) {
  std::string names;
  for (const Named& p : kPoints) {
    if (p.name == name) return p.point;
    absl::StrAppend(&names, names.empty() ? "" : ", ", p.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown crash point \"", name, "\"; use one of ", names));
}

absl::string_view CrashPointName(CrashPoint point) {
  for (const Named& p : kPoints) {
    if (p.point == point) return p.name;
  }
  return "unknown";
}

class CrashPointFileSystem::File final : public WritableFile {
 public:
  File(CrashPointFileSystem* fs, std::unique_ptr<WritableFile> base)
      : fs_(fs), base_(std::move(base)) {}

  absl::Status Append(absl::string_view data) override {
    if (fs_->crashed()) return fs_->Dead();
    if (fs_->point_ == CrashPoint::kMidWrite && !data.empty()) {
      // A torn file: the crash comes in the middle of the bytes.
      absl::Status half = base_->Append(data.substr(0, (data.size() + 1) / 2));
      if (!half.ok()) return half;
      if (fs_->Reach(CrashPoint::kMidWrite)) return fs_->Dead();
      return base_->Append(data.substr((data.size() + 1) / 2));
    }
    return base_->Append(data);
  }

  absl::Status Sync() override {
    if (fs_->Reach(CrashPoint::kBeforeFsync)) return fs_->Dead();
    absl::Status synced = base_->Sync();
    if (fs_->Reach(CrashPoint::kAfterFsync)) return fs_->Dead();
    return synced;
  }

  absl::Status Close() override {
    if (fs_->crashed()) return fs_->Dead();  // A dead process closes nothing.
    return base_->Close();
  }

 private:
  CrashPointFileSystem* const fs_;
  const std::unique_ptr<WritableFile> base_;
};

absl::StatusOr<std::unique_ptr<CrashPointFileSystem>>
CrashPointFileSystem::Create(FileSystem* base, absl::string_view point,
                             Crash crash) {
  absl::StatusOr<CrashPoint> parsed = ParseCrashPoint(point);
  if (!parsed.ok()) return parsed.status();
  if (crash == nullptr)
    crash = [](absl::string_view name) { DieAtCrashPoint(name); };
  return std::unique_ptr<CrashPointFileSystem>(
      new CrashPointFileSystem(base, *parsed, std::move(crash)));
}

bool CrashPointFileSystem::Reach(CrashPoint at) {
  if (at == point_ && !crashed_.exchange(true)) crash_(CrashPointName(at));
  return crashed_.load();
}

absl::Status CrashPointFileSystem::Dead() const {
  return absl::AbortedError(absl::StrCat(
      "crashed at crash point ", CrashPointName(point_), " (fault injection)"));
}

absl::StatusOr<std::unique_ptr<WritableFile>>
CrashPointFileSystem::NewWritableFile(const std::string& path) {
  if (crashed()) return Dead();
  absl::StatusOr<std::unique_ptr<WritableFile>> file =
      base_->NewWritableFile(path);
  if (!file.ok()) return file.status();
  return std::make_unique<File>(this, std::move(*file));
}

absl::StatusOr<std::unique_ptr<ReadableFile>>
CrashPointFileSystem::NewReadableFile(const std::string& path) {
  if (crashed()) return Dead();
  return base_->NewReadableFile(path);
}

absl::Status CrashPointFileSystem::RenameFile(const std::string& from,
                                              const std::string& to) {
  if (crashed()) return Dead();
  absl::Status renamed = base_->RenameFile(from, to);
  if (renamed.ok() && Reach(CrashPoint::kAfterRename)) return Dead();
  return renamed;
}

absl::Status CrashPointFileSystem::RemoveFile(const std::string& path) {
  if (crashed()) return Dead();
  return base_->RemoveFile(path);
}

absl::Status CrashPointFileSystem::SyncDirectory(const std::string& dir) {
  if (crashed()) return Dead();
  return base_->SyncDirectory(dir);
}

absl::StatusOr<std::vector<std::string>> CrashPointFileSystem::ListDirectory(
    const std::string& dir) {
  if (crashed()) return Dead();
  return base_->ListDirectory(dir);
}

absl::Status CrashPointFileSystem::CreateDirectory(const std::string& dir) {
  if (crashed()) return Dead();
  return base_->CreateDirectory(dir);
}

}  // namespace weightd::storage
