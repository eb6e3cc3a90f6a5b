#include "server/storage/snapshot.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/policy_spec.h"
#include "common/status_macros.h"

namespace weightd::storage {
namespace {

// "WDSNAP0" and the format's version: 2 adds each tensor's whole shape, 3
// each membership's principal, 4 each tensor's version records, 5 each
// tensor's policy and optimizer state; files of versions 1 to 4 still load
// (their tensors get the server's default policy).
constexpr char kMagicPrefix[7] = {'W', 'D', 'S', 'N', 'A', 'P', '0'};
constexpr char kFormatVersion = '5';
// More optimizer state slots than any rule has: a corrupt count.
constexpr std::uint32_t kMaxStateSlots = 16;
constexpr char kTrailer[8] = {'W', 'D', 'S', 'N', 'E', 'N', 'D', '1'};
constexpr std::size_t kBufferBytes = 1 << 20;

// Buffered appends to a file, with a running CRC-32.
class Writer {
 public:
  explicit Writer(WritableFile* file) : file_(file) {
    buffer_.reserve(kBufferBytes);
  }

  void Bytes(const void* data, std::size_t n) {
    if (!status_.ok()) return;
    crc_ = crc32_z(crc_, static_cast<const Bytef*>(data), n);
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const std::size_t take = std::min(n, kBufferBytes - buffer_.size());
      buffer_.append(p, take);
      p += take;
      n -= take;
      if (buffer_.size() == kBufferBytes) (void)Flush();  // Error sticks.
    }
  }
  template <typename T>
  void Pod(T value) {
    Bytes(&value, sizeof(value));
  }
  void Str(const std::string& s) {
    Pod(static_cast<std::uint32_t>(s.size()));
    Bytes(s.data(), s.size());
  }
  std::uint32_t crc() const { return static_cast<std::uint32_t>(crc_); }

  // Writes out the buffer; the first error sticks.
  absl::Status Flush() {
    if (status_.ok() && !buffer_.empty()) status_ = file_->Append(buffer_);
    buffer_.clear();
    return status_;
  }

 private:
  WritableFile* const file_;
  std::string buffer_;
  uLong crc_ = crc32_z(0L, Z_NULL, 0);
  absl::Status status_;
};

// Buffered reads that never go past the end of the file.
class Reader {
 public:
  Reader(ReadableFile* file, std::string path)
      : file_(file), remaining_(file->size()), path_(std::move(path)) {}

  absl::Status Bytes(void* out, std::size_t n) {
    if (n > remaining_) return Truncated();
    char* p = static_cast<char*>(out);
    std::size_t left = n;
    while (left > 0) {
      WEIGHTD_ASSIGN_OR_RETURN(const std::size_t got, file_->Read(p, left));
      if (got == 0) return Truncated();
      p += got;
      left -= got;
    }
    remaining_ -= n;
    crc_ = crc32_z(crc_, static_cast<const Bytef*>(out), n);
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Pod(T* value) {
    return Bytes(value, sizeof(*value));
  }
  // A count of items of at least `min_item_bytes` each: more than the rest
  // of the file could hold means the file is corrupt.
  absl::StatusOr<std::uint64_t> Count(std::uint64_t min_item_bytes) {
    std::uint64_t n;
    WEIGHTD_RETURN_IF_ERROR(Pod(&n));
    if (min_item_bytes > 0 && n > remaining_ / min_item_bytes) {
      return Corrupt("a count larger than the rest of the file (truncated?)");
    }
    return n;
  }
  absl::StatusOr<std::string> Str() {
    std::uint32_t n;
    WEIGHTD_RETURN_IF_ERROR(Pod(&n));
    if (n > remaining_) return Truncated();
    std::string s(n, '\0');
    WEIGHTD_RETURN_IF_ERROR(Bytes(s.data(), n));
    return s;
  }
  std::uint32_t crc() const { return static_cast<std::uint32_t>(crc_); }
  std::uint64_t remaining() const { return remaining_; }

  absl::Status Truncated() const {
    return absl::DataLossError(
        absl::StrCat("snapshot ", path_, " is truncated"));
  }
  absl::Status Corrupt(absl::string_view what) const {
    return absl::DataLossError(
        absl::StrCat("snapshot ", path_, " is corrupt: ", what));
  }

 private:
  ReadableFile* const file_;
  std::uint64_t remaining_;
  const std::string path_;
  uLong crc_ = crc32_z(0L, Z_NULL, 0);
};

constexpr std::uint8_t kClosedOnCount =
    static_cast<std::uint8_t>(core::ClosedOn::kPush) + 1;
static_assert(
    static_cast<int>(core::ClosedOn::kPush) == 4,
    "ClosedOn values are stored in snapshots: append, never renumber");

void EncodeHistory(const std::vector<core::VersionRecord>& history, Writer& w) {
  w.Pod<std::uint64_t>(history.size());
  for (const core::VersionRecord& r : history) {
    w.Pod<std::uint64_t>(r.version);
    w.Pod<std::uint8_t>(static_cast<std::uint8_t>(r.closed_on));
    w.Pod<std::int64_t>(absl::ToUnixMicros(r.first_contribution));
    w.Pod<std::int64_t>(absl::ToUnixMicros(r.closed));
    w.Pod<std::uint64_t>(r.contributions.size());
    for (const core::HistoryContribution& c : r.contributions) {
      w.Str(c.worker);
      w.Pod<std::uint64_t>(c.sequence);
      w.Pod<double>(c.weight);
      w.Pod<std::uint8_t>(c.kind == core::UpdateKind::kWeights ? 0 : 1);
      w.Pod<std::uint8_t>(c.complete ? 1 : 0);
    }
    w.Pod<std::uint64_t>(r.dropped.size());
    for (const std::string& worker : r.dropped) w.Str(worker);
  }
}

absl::StatusOr<std::vector<core::VersionRecord>> DecodeHistory(Reader& r) {
  std::vector<core::VersionRecord> history;
  WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t records, r.Count(41));
  for (std::uint64_t i = 0; i < records; ++i) {
    core::VersionRecord record;
    std::uint8_t closed_on;
    std::int64_t first_us, closed_us;
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&record.version));
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&closed_on));
    if (closed_on >= kClosedOnCount) {
      return r.Corrupt("a version record closed in an unknown way");
    }
    record.closed_on = static_cast<core::ClosedOn>(closed_on);
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&first_us));
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&closed_us));
    record.first_contribution = absl::FromUnixMicros(first_us);
    record.closed = absl::FromUnixMicros(closed_us);
    WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t contributions, r.Count(22));
    for (std::uint64_t k = 0; k < contributions; ++k) {
      core::HistoryContribution c;
      std::uint8_t kind, complete;
      WEIGHTD_ASSIGN_OR_RETURN(c.worker, r.Str());
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&c.sequence));
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&c.weight));
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&kind));
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&complete));
      if (kind > 1 || complete > 1) {
        return r.Corrupt("an unknown update kind in a version record");
      }
      c.kind =
          kind == 0 ? core::UpdateKind::kWeights : core::UpdateKind::kDelta;
      c.complete = complete == 1;
      record.contributions.push_back(std::move(c));
    }
    WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t dropped, r.Count(4));
    for (std::uint64_t k = 0; k < dropped; ++k) {
      WEIGHTD_ASSIGN_OR_RETURN(std::string worker, r.Str());
      record.dropped.push_back(std::move(worker));
    }
    history.push_back(std::move(record));
  }
  return history;
}

void Encode(const core::StoreState& state, Writer& w) {
  w.Bytes(kMagicPrefix, sizeof(kMagicPrefix));
  w.Pod<char>(kFormatVersion);
  w.Pod<std::uint64_t>(state.tensors.size());
  for (const core::SavedTensor& t : state.tensors) {
    w.Str(t.name);
    w.Pod<std::uint32_t>(static_cast<std::uint32_t>(t.shape.size()));
    for (std::int64_t d : t.shape) w.Pod<std::int64_t>(d);
    w.Pod<std::uint32_t>(static_cast<std::uint32_t>(t.whole_shape.size()));
    for (std::int64_t d : t.whole_shape) w.Pod<std::int64_t>(d);
    w.Pod<std::uint64_t>(t.version);
    w.Pod<std::uint64_t>(t.value->size());
    w.Bytes(t.value->data(), t.value->size() * sizeof(float));
    w.Pod<std::uint64_t>(t.contributions.size());
    for (const core::SavedContribution& c : t.contributions) {
      w.Str(c.worker);
      w.Pod<std::uint64_t>(c.sequence);
      w.Pod<std::uint64_t>(c.round);
      w.Pod<std::uint8_t>(c.kind == core::UpdateKind::kWeights ? 0 : 1);
      w.Pod<std::uint64_t>(c.ready_version);
    }
    EncodeHistory(t.history, w);
    w.Str(PolicySpecText(t.policy));
    w.Pod<std::uint32_t>(static_cast<std::uint32_t>(t.optimizer_state.size()));
    for (const std::vector<float>& slot : t.optimizer_state) {
      w.Pod<std::uint64_t>(slot.size());
      w.Bytes(slot.data(), slot.size() * sizeof(float));
    }
  }
  w.Pod<std::uint64_t>(state.workers.size());
  for (const core::SavedWorker& worker : state.workers) {
    w.Str(worker.id);
    w.Pod<std::uint64_t>(worker.lease_id);
    w.Pod<std::uint64_t>(worker.max_sequence);
    w.Pod<std::uint32_t>(static_cast<std::uint32_t>(worker.tensors.size()));
    for (const std::string& name : worker.tensors) w.Str(name);
    w.Str(worker.principal);
  }
}

absl::StatusOr<core::StoreState> Decode(Reader& r) {
  char magic[sizeof(kMagicPrefix) + 1];
  WEIGHTD_RETURN_IF_ERROR(r.Bytes(magic, sizeof(magic)));
  const char format = magic[sizeof(kMagicPrefix)];
  if (std::memcmp(magic, kMagicPrefix, sizeof(kMagicPrefix)) != 0 ||
      format < '1' || format > kFormatVersion) {
    return r.Corrupt("not a weightd snapshot (bad magic)");
  }
  const bool v1 = format == '1';
  const bool v2 = format == '2';
  core::StoreState state;
  WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t tensors, r.Count(16));
  for (std::uint64_t i = 0; i < tensors; ++i) {
    core::SavedTensor t;
    WEIGHTD_ASSIGN_OR_RETURN(t.name, r.Str());
    std::uint32_t rank;
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&rank));
    if (rank > core::kMaxRank) return r.Corrupt("a tensor rank over the limit");
    t.shape.resize(rank);
    for (std::int64_t& d : t.shape) WEIGHTD_RETURN_IF_ERROR(r.Pod(&d));
    if (!v1) {
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&rank));
      if (rank > core::kMaxRank) {
        return r.Corrupt("a whole-tensor rank over the limit");
      }
      t.whole_shape.resize(rank);
      for (std::int64_t& d : t.whole_shape) WEIGHTD_RETURN_IF_ERROR(r.Pod(&d));
    }
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&t.version));
    WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t elements, r.Count(sizeof(float)));
    auto value = std::make_shared<std::vector<float>>(elements);
    WEIGHTD_RETURN_IF_ERROR(r.Bytes(value->data(), elements * sizeof(float)));
    t.value = std::move(value);
    WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t pushes, r.Count(29));
    for (std::uint64_t k = 0; k < pushes; ++k) {
      core::SavedContribution c;
      WEIGHTD_ASSIGN_OR_RETURN(c.worker, r.Str());
      std::uint8_t kind;
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&c.sequence));
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&c.round));
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&kind));
      if (kind > 1) return r.Corrupt("an unknown update kind");
      c.kind =
          kind == 0 ? core::UpdateKind::kWeights : core::UpdateKind::kDelta;
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&c.ready_version));
      t.contributions.push_back(std::move(c));
    }
    if (format >= '4') {
      WEIGHTD_ASSIGN_OR_RETURN(t.history, DecodeHistory(r));
    }
    if (format >= '5') {
      WEIGHTD_ASSIGN_OR_RETURN(std::string text, r.Str());
      absl::StatusOr<PolicySpec> policy = ParsePolicySpec(text);
      if (!policy.ok()) return r.Corrupt("a policy that does not parse");
      t.policy = *std::move(policy);
      std::uint32_t slots;
      WEIGHTD_RETURN_IF_ERROR(r.Pod(&slots));
      if (slots > kMaxStateSlots) {
        return r.Corrupt("more optimizer state slots than any optimizer has");
      }
      for (std::uint32_t k = 0; k < slots; ++k) {
        WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t n, r.Count(sizeof(float)));
        if (n != elements) {
          return r.Corrupt("optimizer state of another size than the value");
        }
        std::vector<float> slot(n);
        WEIGHTD_RETURN_IF_ERROR(r.Bytes(slot.data(), n * sizeof(float)));
        // The server never keeps a step whose state is not finite.
        if (!std::all_of(slot.begin(), slot.end(),
                         [](float x) { return std::isfinite(x); })) {
          return r.Corrupt("optimizer state that is not finite");
        }
        t.optimizer_state.push_back(std::move(slot));
      }
    }
    state.tensors.push_back(std::move(t));
  }
  WEIGHTD_ASSIGN_OR_RETURN(std::uint64_t workers, r.Count(24));
  for (std::uint64_t i = 0; i < workers; ++i) {
    core::SavedWorker w;
    WEIGHTD_ASSIGN_OR_RETURN(w.id, r.Str());
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&w.lease_id));
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&w.max_sequence));
    std::uint32_t n;
    WEIGHTD_RETURN_IF_ERROR(r.Pod(&n));
    if (n > r.remaining() / 4) {
      return r.Corrupt("a count larger than the rest of the file (truncated?)");
    }
    for (std::uint32_t k = 0; k < n; ++k) {
      WEIGHTD_ASSIGN_OR_RETURN(std::string name, r.Str());
      w.tensors.push_back(std::move(name));
    }
    if (!v1 && !v2) {
      WEIGHTD_ASSIGN_OR_RETURN(w.principal, r.Str());
    }
    state.workers.push_back(std::move(w));
  }
  const std::uint32_t computed = r.crc();
  std::uint32_t stored;
  WEIGHTD_RETURN_IF_ERROR(r.Pod(&stored));
  char trailer[sizeof(kTrailer)];
  WEIGHTD_RETURN_IF_ERROR(r.Bytes(trailer, sizeof(trailer)));
  if (stored != computed) return r.Corrupt("checksum mismatch");
  if (std::memcmp(trailer, kTrailer, sizeof(kTrailer)) != 0 ||
      r.remaining() != 0) {
    return r.Corrupt("bad trailer");
  }
  return state;
}

std::string DirectoryOf(const std::string& path) {
  const std::string::size_type slash = path.rfind('/');
  return slash == std::string::npos
             ? "."
             : path.substr(0, std::max<std::size_t>(slash, 1));
}

}  // namespace

absl::Status WriteSnapshotFile(const std::string& path,
                               const core::StoreState& state, FileSystem* fs) {
  const std::string tmp = path + ".tmp";
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file,
                           fs->NewWritableFile(tmp));
  Writer w(file.get());
  Encode(state, w);
  const std::uint32_t crc = w.crc();
  w.Pod<std::uint32_t>(crc);
  w.Bytes(kTrailer, sizeof(kTrailer));
  absl::Status status = w.Flush();
  if (status.ok()) status = file->Sync();
  const absl::Status closed = file->Close();
  if (status.ok()) status = closed;
  if (status.ok()) status = fs->RenameFile(tmp, path);
  if (!status.ok()) {
    (void)fs->RemoveFile(tmp);  // The write's error is the one to report.
    return status;
  }
  return fs->SyncDirectory(DirectoryOf(path));
}

absl::StatusOr<core::StoreState> ReadSnapshotFile(const std::string& path,
                                                  FileSystem* fs) {
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file,
                           fs->NewReadableFile(path));
  Reader r(file.get(), path);
  return Decode(r);
}

absl::StatusOr<std::unique_ptr<SnapshotDir>> SnapshotDir::Open(std::string dir,
                                                               FileSystem* fs) {
  const absl::Status created = fs->CreateDirectory(dir);
  if (!created.ok()) {
    // "cannot create directory D: why" -> "cannot create snapshot directory
    // D: why", with the code of a configuration that cannot work.
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create snapshot ",
                     absl::StripPrefix(created.message(), "cannot create ")));
  }
  std::unique_ptr<SnapshotDir> snapshots(new SnapshotDir(std::move(dir), fs));
  snapshots->RemoveUnfinished();
  const auto files = snapshots->List();
  if (!files.empty()) snapshots->next_number_ = files.front().first + 1;
  return snapshots;
}

std::vector<std::pair<std::uint64_t, std::string>> SnapshotDir::List() const {
  std::vector<std::pair<std::uint64_t, std::string>> files;
  absl::StatusOr<std::vector<std::string>> names = fs_->ListDirectory(dir_);
  if (!names.ok()) return files;  // As if empty: nothing to load or prune.
  for (const std::string& entry : *names) {
    absl::string_view name = entry;
    std::uint64_t number;
    if (absl::ConsumePrefix(&name, "snapshot-") &&
        absl::ConsumeSuffix(&name, ".wds") && absl::SimpleAtoi(name, &number)) {
      files.emplace_back(number, absl::StrCat(dir_, "/", entry));
    }
  }
  std::sort(files.rbegin(), files.rend());
  return files;
}

void SnapshotDir::RemoveUnfinished() const {
  absl::StatusOr<std::vector<std::string>> names = fs_->ListDirectory(dir_);
  if (!names.ok()) return;
  for (const std::string& name : *names) {
    if (absl::StartsWith(name, "snapshot-") &&
        absl::EndsWith(name, ".wds.tmp")) {
      (void)fs_->RemoveFile(absl::StrCat(dir_, "/", name));  // Best effort.
    }
  }
}

absl::StatusOr<std::uint64_t> SnapshotDir::FileSize(
    const std::string& path) const {
  WEIGHTD_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file,
                           fs_->NewReadableFile(path));
  return file->size();
}

absl::StatusOr<std::string> SnapshotDir::Write(const core::StoreState& state) {
  const std::string path =
      absl::StrFormat("%s/snapshot-%012d.wds", dir_, next_number_);
  WEIGHTD_RETURN_IF_ERROR(WriteSnapshotFile(path, state, fs_));
  ++next_number_;
  const auto files = List();
  for (std::size_t i = 2; i < files.size(); ++i) {
    (void)fs_->RemoveFile(files[i].second);  // Best effort; retried next time.
  }
  return path;
}

absl::StatusOr<SnapshotDir::Loaded> SnapshotDir::LoadNewest() const {
  Loaded loaded;
  for (const auto& [number, path] : List()) {
    absl::StatusOr<core::StoreState> state = ReadSnapshotFile(path, fs_);
    if (state.ok()) {
      loaded.path = path;
      loaded.state = std::move(*state);
      return loaded;
    }
    loaded.skipped.emplace_back(path, state.status());
  }
  if (loaded.skipped.empty()) {
    return absl::NotFoundError(absl::StrCat("no snapshot in ", dir_));
  }
  std::string why;
  for (const auto& [path, status] : loaded.skipped) {
    absl::StrAppend(&why, "; ", status.message());
  }
  return absl::DataLossError(absl::StrCat("no usable snapshot in ", dir_, why));
}

}  // namespace weightd::storage
