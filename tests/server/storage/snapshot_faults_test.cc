// Snapshot writes under disk faults and crashes, staged with
// FaultFileSystem (tests/testing/fault_file_system.h) over a temporary
// directory, and the crash points of --crash_at (CrashPointFileSystem).
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/crash_point.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/storage/crash_point_file_system.h"
#include "server/storage/file_system.h"
#include "server/storage/snapshot.h"
#include "tests/testing/fault_file_system.h"
#include "tests/testing/status_matchers.h"

namespace weightd::storage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::weightd::testing::CrashWhen;
using ::weightd::testing::FaultFileSystem;
using ::weightd::testing::FileOp;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

// One tensor whose values and version are `version`. 400,000 floats: more
// than one write buffer (1 MiB), so a write takes several appends.
core::StoreState StateAt(std::uint64_t version) {
  constexpr std::int64_t kElements = 400000;
  core::StoreState state;
  core::SavedTensor t;
  t.name = "w";
  t.shape = {kElements};
  t.version = version;
  t.value = std::make_shared<std::vector<float>>(kElements,
                                                 static_cast<float>(version));
  state.tensors.push_back(std::move(t));
  return state;
}

class SnapshotFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/weightd-snapshot-faults-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/snaps";
  }
  void TearDown() override { std::system(("rm -rf '" + root_ + "'").c_str()); }

  std::string Numbered(int n) const {
    return dir_ + "/snapshot-00000000000" + std::to_string(n) + ".wds";
  }

  // The directory's entries, sorted, read with the real file system.
  std::vector<std::string> Files() const {
    auto names = DefaultFileSystem()->ListDirectory(dir_);
    EXPECT_THAT(names, IsOk());
    if (!names.ok()) return {};
    std::sort(names->begin(), names->end());
    return *names;
  }

  static std::string Bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream bytes;  // In one copy, not a call per character.
    bytes << in.rdbuf();
    return bytes.str();
  }

  // Snapshot 1, at version 1, written with a healthy file system.
  void WriteOld() {
    auto healthy = SnapshotDir::Open(dir_);
    ASSERT_THAT(healthy, IsOk());
    auto written = (*healthy)->Write(StateAt(1));
    ASSERT_THAT(written, IsOk());
    ASSERT_EQ(*written, Numbered(1));
    old_bytes_ = Bytes(Numbered(1));
  }

  // Re-opens the directory as a restarted daemon would (removing temporary
  // files) and expects the newest snapshot to be whole and at `version`,
  // with no file skipped, and snapshot 1 byte for byte as written.
  void ExpectReloads(std::uint64_t version) {
    auto reopened = SnapshotDir::Open(dir_);
    ASSERT_THAT(reopened, IsOk());
    for (const std::string& name : Files()) {
      EXPECT_FALSE(absl::EndsWith(name, ".tmp")) << name;
    }
    auto loaded = (*reopened)->LoadNewest();
    ASSERT_THAT(loaded, IsOk());
    EXPECT_THAT(loaded->skipped, IsEmpty());
    ASSERT_EQ(loaded->state.tensors.size(), 1u);
    const core::SavedTensor& t = loaded->state.tensors[0];
    EXPECT_EQ(t.version, version);
    ASSERT_EQ(t.value->size(), 400000u);
    EXPECT_TRUE(std::all_of(t.value->begin(), t.value->end(), [&](float v) {
      return v == static_cast<float>(version);
    }));
    EXPECT_EQ(Bytes(Numbered(1)), old_bytes_) << "snapshot 1 changed";
  }

  std::string root_;
  std::string dir_;
  std::string old_bytes_;
};

// --- I/O errors at each step of a write ----------------------------------

struct WriteFault {
  std::string name;
  std::function<void(FaultFileSystem&)> arm;
  absl::StatusCode code;
  // The whole error message; "%d" stands for the snapshot directory.
  std::string message;
  // Whether the new snapshot is in place although the write failed (only
  // the directory's fsync, after the rename, failed).
  bool new_in_place = false;
};
void PrintTo(const WriteFault& fault, std::ostream* os) { *os << fault.name; }

class SnapshotWriteFaultTest
    : public SnapshotFaultTest,
      public ::testing::WithParamInterface<WriteFault> {};

// The write fails with the error of the step, names what failed, removes
// its temporary file and leaves snapshot 1 as it was; once the disk is
// healthy again, the next write succeeds.
TEST_P(SnapshotWriteFaultTest, LeavesThePreviousSnapshotIntactAndNoTempFile) {
  const WriteFault& fault = GetParam();
  ASSERT_NO_FATAL_FAILURE(WriteOld());
  FaultFileSystem fs;
  auto snapshots = SnapshotDir::Open(dir_, &fs);
  ASSERT_THAT(snapshots, IsOk());
  fault.arm(fs);

  auto failed = (*snapshots)->Write(StateAt(2));
  std::string message = fault.message;
  message.replace(message.find("%d"), 2, dir_);
  EXPECT_THAT(failed, StatusIs(fault.code, message));
  // Cleaned up by the write itself, not by a later Open.
  if (fault.new_in_place) {
    EXPECT_THAT(Files(), ElementsAre("snapshot-000000000001.wds",
                                     "snapshot-000000000002.wds"));
  } else {
    EXPECT_THAT(Files(), ElementsAre("snapshot-000000000001.wds"));
  }
  ASSERT_NO_FATAL_FAILURE(ExpectReloads(fault.new_in_place ? 2 : 1));

  fs.Heal();
  auto next = (*snapshots)->Write(StateAt(3));
  ASSERT_THAT(next, IsOk());
  EXPECT_EQ(*next, Numbered(2));  // A failed write leaves its number free.
  ASSERT_NO_FATAL_FAILURE(ExpectReloads(3));
}

constexpr char kTmp[] = "%d/snapshot-000000000002.wds.tmp";

INSTANTIATE_TEST_SUITE_P(
    EachStep, SnapshotWriteFaultTest,
    ::testing::Values(
        WriteFault{
            "DiskFullAtCreate",
            [](FaultFileSystem& fs) { fs.Fail(FileOp::kCreate, ENOSPC); },
            absl::StatusCode::kResourceExhausted,
            std::string("cannot create ") + kTmp + ": No space left on device"},
        // The first 1 MiB buffer fits, the second does not.
        WriteFault{
            "DiskFullMidWrite",
            [](FaultFileSystem& fs) { fs.LimitSpace((1 << 20) + 1000); },
            absl::StatusCode::kResourceExhausted,
            std::string("cannot write ") + kTmp + ": No space left on device"},
        WriteFault{
            "DiskFullAtFsync",
            [](FaultFileSystem& fs) { fs.Fail(FileOp::kSync, ENOSPC); },
            absl::StatusCode::kResourceExhausted,
            std::string("cannot fsync ") + kTmp + ": No space left on device"},
        WriteFault{
            "DiskFullAtClose",
            [](FaultFileSystem& fs) { fs.Fail(FileOp::kClose, ENOSPC); },
            absl::StatusCode::kResourceExhausted,
            std::string("cannot close ") + kTmp + ": No space left on device"},
        WriteFault{
            "DiskFullAtRename",
            [](FaultFileSystem& fs) { fs.Fail(FileOp::kRename, ENOSPC); },
            absl::StatusCode::kResourceExhausted,
            "cannot rename to %d/snapshot-000000000002.wds: No space "
            "left on device"},
        WriteFault{"DiskFullAtDirectoryFsync",
                   [](FaultFileSystem& fs) {
                     fs.Fail(FileOp::kSyncDirectory, ENOSPC);
                   },
                   absl::StatusCode::kResourceExhausted,
                   "cannot fsync directory %d: No space left on device",
                   /*new_in_place=*/true},
        WriteFault{
            "FsyncIoError",
            [](FaultFileSystem& fs) { fs.Fail(FileOp::kSync, EIO); },
            absl::StatusCode::kInternal,
            std::string("cannot fsync ") + kTmp + ": Input/output error"},
        WriteFault{"RenameAcrossDevices",
                   [](FaultFileSystem& fs) { fs.Fail(FileOp::kRename, EXDEV); },
                   absl::StatusCode::kInternal,
                   "cannot rename to %d/snapshot-000000000002.wds: Invalid "
                   "cross-device link"},
        WriteFault{
            "RenameNotPermitted",
            [](FaultFileSystem& fs) { fs.Fail(FileOp::kRename, EACCES); },
            absl::StatusCode::kInternal,
            "cannot rename to %d/snapshot-000000000002.wds: Permission "
            "denied"}),
    [](const ::testing::TestParamInfo<WriteFault>& info) {
      return info.param.name;
    });

// --- Crashes at each step of a write -------------------------------------

struct WriteCrash {
  std::string name;
  FileOp op;
  CrashWhen when;
  int skip;              // Calls of `op` in this write before the crash.
  bool temp_left;        // The crash leaves snapshot-2.wds.tmp behind.
  std::uint64_t reload;  // The version a restart finds: old 1 or new 2.
};
void PrintTo(const WriteCrash& crash, std::ostream* os) { *os << crash.name; }

class SnapshotCrashTest : public SnapshotFaultTest,
                          public ::testing::WithParamInterface<WriteCrash> {};

// After a kill -9 anywhere in a write, a restart loads the old or the new
// snapshot, whole, and removes the partial file.
TEST_P(SnapshotCrashTest, RestartLoadsTheOldOrTheNewSnapshotWhole) {
  const WriteCrash& crash = GetParam();
  ASSERT_NO_FATAL_FAILURE(WriteOld());
  {
    FaultFileSystem fs;
    auto snapshots = SnapshotDir::Open(dir_, &fs);
    ASSERT_THAT(snapshots, IsOk());
    fs.Crash(crash.op, crash.when, crash.skip);
    EXPECT_THAT((*snapshots)->Write(StateAt(2)),
                StatusIs(absl::StatusCode::kAborted));
    ASSERT_TRUE(fs.crashed()) << "the write never reached the crash";
    // The dead process touches nothing more.
    EXPECT_THAT(fs.ListDirectory(dir_), StatusIs(absl::StatusCode::kAborted));
  }
  const std::vector<std::string> files = Files();
  EXPECT_EQ(
      std::count(files.begin(), files.end(), "snapshot-000000000002.wds.tmp"),
      crash.temp_left ? 1 : 0);
  ASSERT_NO_FATAL_FAILURE(ExpectReloads(crash.reload));
}

INSTANTIATE_TEST_SUITE_P(
    EachStep, SnapshotCrashTest,
    ::testing::Values(
        WriteCrash{"BeforeCreate", FileOp::kCreate, CrashWhen::kBefore, 0,
                   false, 1},
        WriteCrash{"AfterCreate", FileOp::kCreate, CrashWhen::kAfter, 0, true,
                   1},
        WriteCrash{"BeforeTheFirstWrite", FileOp::kAppend, CrashWhen::kBefore,
                   0, true, 1},
        WriteCrash{"MidFirstWrite", FileOp::kAppend, CrashWhen::kMidway, 0,
                   true, 1},
        WriteCrash{"MidSecondWrite", FileOp::kAppend, CrashWhen::kMidway, 1,
                   true, 1},
        WriteCrash{"AfterTheLastWrite", FileOp::kAppend, CrashWhen::kAfter, 1,
                   true, 1},
        WriteCrash{"BeforeFsync", FileOp::kSync, CrashWhen::kBefore, 0, true,
                   1},
        WriteCrash{"AfterFsync", FileOp::kSync, CrashWhen::kAfter, 0, true, 1},
        WriteCrash{"AfterClose", FileOp::kClose, CrashWhen::kAfter, 0, true, 1},
        WriteCrash{"BeforeRename", FileOp::kRename, CrashWhen::kBefore, 0, true,
                   1},
        WriteCrash{"AfterRename", FileOp::kRename, CrashWhen::kAfter, 0, false,
                   2},
        WriteCrash{"BeforeDirectoryFsync", FileOp::kSyncDirectory,
                   CrashWhen::kBefore, 0, false, 2},
        WriteCrash{"AfterDirectoryFsync", FileOp::kSyncDirectory,
                   CrashWhen::kAfter, 0, false, 2}),
    [](const ::testing::TestParamInfo<WriteCrash>& info) {
      return info.param.name;
    });

// --- The crash points of --crash_at ---------------------------------------

TEST(CrashPointTest, NamesParseAndOthersAreRefused) {
  for (const char* name : {"snapshot_mid_write", "snapshot_before_fsync",
                           "snapshot_after_fsync", "snapshot_after_rename"}) {
    auto point = ParseCrashPoint(name);
    ASSERT_THAT(point, IsOk()) << name;
    EXPECT_EQ(CrashPointName(*point), name);
  }
  EXPECT_THAT(ParseCrashPoint("snapshot_mid_wirte"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown crash point \"snapshot_mid_wirte\"; "
                                 "use one of snapshot_mid_write, "
                                 "snapshot_before_fsync, snapshot_after_fsync, "
                                 "snapshot_after_rename")));
  EXPECT_THAT(ParseCrashPoint(""),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CrashPointFileSystem::Create(DefaultFileSystem(), "later"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

struct NamedCrash {
  std::string point;
  std::uint64_t reload;
};
void PrintTo(const NamedCrash& crash, std::ostream* os) { *os << crash.point; }

class CrashPointFileSystemTest
    : public SnapshotFaultTest,
      public ::testing::WithParamInterface<NamedCrash> {};

// Each crash point is reached at its step of the write (looked at from the
// crash hook, when the process would die), and a restart then finds the
// old or the new snapshot, whole.
TEST_P(CrashPointFileSystemTest, StopsTheWriteAtItsStep) {
  const NamedCrash& crash = GetParam();
  ASSERT_NO_FATAL_FAILURE(WriteOld());
  const std::string tmp = Numbered(2) + ".tmp";
  FaultFileSystem counting;  // Healthy; counts the calls.
  std::vector<std::string> reached;
  auto fs = CrashPointFileSystem::Create(
      &counting, crash.point, [&](absl::string_view name) {
        reached.emplace_back(name);
        const bool temp_exists = ::access(tmp.c_str(), F_OK) == 0;
        const bool new_exists = ::access(Numbered(2).c_str(), F_OK) == 0;
        if (crash.point == "snapshot_mid_write") {
          // A torn file: no fsync, and what is there does not load.
          EXPECT_TRUE(temp_exists);
          EXPECT_EQ(counting.calls(FileOp::kSync), 0);
          EXPECT_GT(Bytes(tmp).size(), 0u);
          EXPECT_THAT(ReadSnapshotFile(tmp),
                      StatusIs(absl::StatusCode::kDataLoss));
        } else if (crash.point == "snapshot_before_fsync") {
          // Every byte written, not yet synced.
          EXPECT_EQ(counting.calls(FileOp::kSync), 0);
          EXPECT_THAT(ReadSnapshotFile(tmp), IsOk());
        } else if (crash.point == "snapshot_after_fsync") {
          EXPECT_EQ(counting.calls(FileOp::kSync), 1);
          EXPECT_EQ(counting.calls(FileOp::kRename), 0);
          EXPECT_TRUE(temp_exists);
        } else {  // snapshot_after_rename
          EXPECT_FALSE(temp_exists);
          EXPECT_TRUE(new_exists);
          EXPECT_EQ(counting.calls(FileOp::kSyncDirectory), 0);
        }
      });
  ASSERT_THAT(fs, IsOk());
  auto snapshots = SnapshotDir::Open(dir_, fs->get());
  ASSERT_THAT(snapshots, IsOk());
  const int removes = counting.calls(FileOp::kRemove);
  EXPECT_THAT((*snapshots)->Write(StateAt(2)),
              StatusIs(absl::StatusCode::kAborted, HasSubstr(crash.point)));
  EXPECT_THAT(reached, ElementsAre(crash.point));
  EXPECT_TRUE((*fs)->crashed());
  // Dead: nothing more goes through, not even the removal of the temporary
  // file (a restart does that).
  EXPECT_THAT((*snapshots)->Write(StateAt(3)),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(counting.calls(FileOp::kRemove), removes);
  ASSERT_NO_FATAL_FAILURE(ExpectReloads(crash.reload));
}

INSTANTIATE_TEST_SUITE_P(
    EachPoint, CrashPointFileSystemTest,
    ::testing::Values(NamedCrash{"snapshot_mid_write", 1},
                      NamedCrash{"snapshot_before_fsync", 1},
                      NamedCrash{"snapshot_after_fsync", 1},
                      NamedCrash{"snapshot_after_rename", 2}),
    [](const ::testing::TestParamInfo<NamedCrash>& info) {
      return info.param.point;
    });

// Without a hook, a crash point kills the process as kill -9 does, saying
// where on stderr (what tests/fault/snapshot_crash_test.sh looks for).
TEST_F(SnapshotFaultTest, ACrashPointKillsTheProcess) {
  EXPECT_EXIT(DieAtCrashPoint("snapshot_after_fsync"),
              ::testing::KilledBySignal(SIGKILL),
              "crash point snapshot_after_fsync reached");
  EXPECT_EXIT(
      {
        auto fs = CrashPointFileSystem::Create(DefaultFileSystem(),
                                               "snapshot_before_fsync");
        if (!fs.ok()) std::exit(3);
        (void)WriteSnapshotFile(root_ + "/s.wds", StateAt(1), fs->get());
        std::exit(4);  // Not reached.
      },
      ::testing::KilledBySignal(SIGKILL),
      "crash point snapshot_before_fsync reached");
}

}  // namespace
}  // namespace weightd::storage
