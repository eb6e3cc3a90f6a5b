// Snapshots of a TensorStore on disk: one file per snapshot, written
// atomically, checked by a CRC-32 on load.
//
// File format (little-endian), version 5; files of versions 1 to 4 still
// load (snapshot.cc says what each version added):
//   "WDSNAP05"                         magic
//   u64 tensor count, then per tensor:
//     str name, u32 rank, i64 dims[rank],
//     u32 whole rank, i64 whole dims[whole rank] (of the whole tensor if this
//       is one shard's part of it; 0 dims otherwise),
//     u64 version, u64 elements,
//     f32 values[elements], u64 push count, then per push:
//       str worker, u64 sequence, u64 round, u8 kind, u64 ready_version
//     (version 4) the tensor's version records (snapshot.cc),
//     (version 5) str policy (common/policy_spec.h text, every field),
//       u32 slots, per slot: u64 elements, f32 optimizer state[elements]
//   u64 worker count, then per worker:
//     str id, u64 lease, u64 max_sequence, u32 n, str tensors[n],
//     (version 3) str principal
//   u32 CRC-32 (zlib) of every byte above
//   "WDSNEND1"                         trailer
// where str is u32 length + bytes.
#ifndef WEIGHTD_SERVER_STORAGE_SNAPSHOT_H_
#define WEIGHTD_SERVER_STORAGE_SNAPSHOT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/tensor_store.h"
#include "server/storage/file_system.h"

namespace weightd::storage {

// Writes `state` to `path` through `fs` so that `path` holds either its old
// content or the complete new snapshot, whatever happens: the bytes go to
// `path`.tmp, which is fsynced, closed, renamed to `path`, and the directory
// fsynced. On an error before the rename (disk full, ...) `path` is
// untouched and the temporary file removed; if only the directory's fsync
// fails, `path` already holds the new snapshot. Returns the failed
// operation's status (file_system.h: RESOURCE_EXHAUSTED for a full disk,
// INTERNAL for other I/O errors; its message names the operation, the file
// and the reason). `fs` must outlive the call.
absl::Status WriteSnapshotFile(const std::string& path,
                               const core::StoreState& state,
                               FileSystem* fs = DefaultFileSystem());

// Reads a snapshot written by WriteSnapshotFile. NOT_FOUND if the file does
// not exist; DATA_LOSS if it is truncated, corrupt (checksum) or malformed;
// INTERNAL if it cannot be read. Never trusts a length in the file beyond
// the file's size.
absl::StatusOr<core::StoreState> ReadSnapshotFile(
    const std::string& path, FileSystem* fs = DefaultFileSystem());

// A directory of numbered snapshots (snapshot-<n>.wds). Keeps the newest
// two, so that a damaged newest one falls back to the one before.
class SnapshotDir {
 public:
  // Creates `dir` if needed and deletes the temporary files of writes a
  // crash interrupted. FAILED_PRECONDITION if it cannot be created. Every
  // file operation goes through `fs`, which must outlive the SnapshotDir.
  static absl::StatusOr<std::unique_ptr<SnapshotDir>> Open(
      std::string dir, FileSystem* fs = DefaultFileSystem());

  // Writes `state` as the next snapshot (WriteSnapshotFile), then removes
  // all but the newest two. Returns the file written, or the write's error
  // (then the earlier snapshots are untouched, and the next Write reuses the
  // number). Not thread-safe: one writer.
  absl::StatusOr<std::string> Write(const core::StoreState& state);
  // The size of a file Write() wrote, read through the FileSystem.
  absl::StatusOr<std::uint64_t> FileSize(const std::string& path) const;

  struct Loaded {
    std::string path;
    core::StoreState state;
    // Newer files that could not be used, each with the reason.
    std::vector<std::pair<std::string, absl::Status>> skipped;
  };
  // The newest snapshot that reads back whole. NOT_FOUND if the directory
  // holds no snapshot file; DATA_LOSS (naming each file and why) if it holds
  // some but none is usable.
  absl::StatusOr<Loaded> LoadNewest() const;

 private:
  SnapshotDir(std::string dir, FileSystem* fs)
      : dir_(std::move(dir)), fs_(fs) {}
  void RemoveUnfinished() const;
  // Snapshot files present, newest first, with their numbers.
  std::vector<std::pair<std::uint64_t, std::string>> List() const;

  const std::string dir_;
  FileSystem* const fs_;
  std::uint64_t next_number_ = 1;
};

}  // namespace weightd::storage

#endif  // WEIGHTD_SERVER_STORAGE_SNAPSHOT_H_
