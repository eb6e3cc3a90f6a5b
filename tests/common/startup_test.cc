#include "common/startup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "test: an address");
ABSL_FLAG(absl::Duration, lease_timeout, absl::Seconds(6), "test: a duration");
ABSL_FLAG(std::uint32_t, max_workers, 10000, "test: a count");
ABSL_FLAG(double, server_lr, 1.0, "test: a number");
ABSL_FLAG(bool, eval, false, "test: a switch");

namespace weightd {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

constexpr char kMainFile[] = "tests/common/startup_test.cc";

// The table the environment tests use: "prog" reads WEIGHTD_LISTEN and
// WEIGHTD_LEASE_TIMEOUT; "other" reads WEIGHTD_SERVERS itself.
constexpr EnvironmentVariable kVariables[] = {
    {"WEIGHTD_LISTEN", "prog", "listen"},
    {"WEIGHTD_LEASE_TIMEOUT", "prog", "lease_timeout"},
    {"WEIGHTD_SERVERS", "other", ""},
};

absl::Status Parse(std::vector<std::string> args, FlagSources* sources) {
  args.insert(args.begin(), "prog");
  return ParseFlags(args, kMainFile, sources);
}

absl::Status Apply(const std::vector<std::string>& environment,
                   FlagSources* sources) {
  return ApplyEnvironment("prog", environment, kVariables, sources);
}

TEST(StartupTest, ParsesEveryFlagSyntaxAndRecordsTheSource) {
  absl::FlagSaver saver;
  FlagSources sources;
  ASSERT_THAT(Parse({"--listen=10.0.0.1:1", "word", "-lease_timeout", "2m",
                     "--eval", "--max_workers", "7", "--", "--server_lr=x"},
                    &sources),
              IsOk());
  EXPECT_EQ(absl::GetFlag(FLAGS_listen), "10.0.0.1:1");
  EXPECT_EQ(absl::GetFlag(FLAGS_lease_timeout), absl::Minutes(2));
  EXPECT_TRUE(absl::GetFlag(FLAGS_eval));
  EXPECT_EQ(absl::GetFlag(FLAGS_max_workers), 7u);
  EXPECT_EQ(absl::GetFlag(FLAGS_server_lr), 1.0);  // After "--": positional.
  EXPECT_EQ(sources["lease_timeout"], "--lease_timeout=2m");
  EXPECT_EQ(sources.count("server_lr"), 0u);

  ASSERT_THAT(Parse({"--noeval"}, &sources), IsOk());
  EXPECT_FALSE(absl::GetFlag(FLAGS_eval));
}

TEST(StartupTest, DurationWithoutAUnitNamesTheFlagAndTheFix) {
  absl::FlagSaver saver;
  FlagSources sources;
  EXPECT_THAT(Parse({"--lease_timeout=5"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--lease_timeout=5: needs a unit, e.g. 5s"));
  EXPECT_THAT(Parse({"--lease_timeout", "5"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--lease_timeout=5: needs a unit, e.g. 5s"));
  EXPECT_THAT(Parse({"--lease_timeout=soon"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not a duration")));
  EXPECT_EQ(absl::GetFlag(FLAGS_lease_timeout), absl::Seconds(6));
}

TEST(StartupTest, BadValuesSayWhatTheFlagNeeds) {
  absl::FlagSaver saver;
  FlagSources sources;
  EXPECT_THAT(Parse({"--max_workers=many"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--max_workers=many: needs a whole number from 0 to "
                       "4294967295, e.g. 10000"));
  EXPECT_THAT(Parse({"--max_workers=-1"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--max_workers=-1: needs a whole number")));
  EXPECT_THAT(Parse({"--server_lr=fast"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--server_lr=fast: needs a number, e.g. 1"));
  EXPECT_THAT(Parse({"--eval=maybe"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--eval=maybe: use true or false"));
  EXPECT_THAT(Parse({"--noeval=true"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("takes no value")));
  EXPECT_THAT(Parse({"--nolisten"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--listen is not a true/false flag")));
  EXPECT_THAT(
      Parse({"--listen"}, &sources),
      StatusIs(absl::StatusCode::kInvalidArgument,
               "--listen: needs a value, e.g. --listen=127.0.0.1:7070"));
}

TEST(StartupTest, UnknownFlagNamesTheClosestOfTheProgram) {
  absl::FlagSaver saver;
  FlagSources sources;
  EXPECT_THAT(Parse({"--lisen=127.0.0.1:0"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--lisen: no such flag; did you mean --listen? See "
                       "--help."));
  EXPECT_THAT(Parse({"--lease_timout", "5s"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("did you mean --lease_timeout?")));
}

TEST(StartupTest, AbseilsOwnFlagsAreLeftToAbsl) {
  absl::FlagSaver saver;
  FlagSources sources;
  // --flagfile's value is skipped, not taken for a positional argument or
  // parsed here.
  EXPECT_THAT(
      Parse({"--flagfile", "/nonexistent", "--version", "--help", "--helpon=x"},
            &sources),
      IsOk());
  EXPECT_TRUE(sources.empty());
}

TEST(StartupTest, EnvironmentSetsTheProgramsFlagsAndNamesTheVariable) {
  absl::FlagSaver saver;
  FlagSources sources;
  ASSERT_THAT(Apply({"HOME=/root", "WEIGHTD_LISTEN=0.0.0.0:1",
                     "WEIGHTD_SERVERS=a:1,b:1"},
                    &sources),
              IsOk());
  EXPECT_EQ(absl::GetFlag(FLAGS_listen), "0.0.0.0:1");
  EXPECT_EQ(sources["listen"], "WEIGHTD_LISTEN=0.0.0.0:1");
  EXPECT_THAT(Apply({"WEIGHTD_LEASE_TIMEOUT=5"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "WEIGHTD_LEASE_TIMEOUT=5: needs a unit, e.g. 5s"));
}

TEST(StartupTest, MisspeltVariableNamesTheClosestRealOne) {
  absl::FlagSaver saver;
  FlagSources sources;
  EXPECT_THAT(Apply({"WEIGHTD_LISTNE=0.0.0.0:1"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "WEIGHTD_LISTNE is not a variable of prog; did you "
                       "mean WEIGHTD_LISTEN? Rename or unset it."));
  EXPECT_THAT(Apply({"WEIGHTD_SERVRES=a:1"}, &sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("did you mean WEIGHTD_SERVERS (read by "
                                 "other)?")));
  EXPECT_EQ(absl::GetFlag(FLAGS_listen), "127.0.0.1:7070");
}

TEST(StartupTest, ProjectTableNamesEachVariableOnceAndKeepsBothServerNames) {
  // One row per variable and program: several programs may read one.
  std::vector<std::string> rows;
  for (const EnvironmentVariable& v : ProjectEnvironment()) {
    EXPECT_TRUE(absl::StartsWith(v.name, "WEIGHTD_")) << v.name;
    const std::string row = absl::StrCat(v.name, " ", v.program);
    EXPECT_EQ(std::count(rows.begin(), rows.end(), row), 0) << row;
    rows.push_back(row);
  }
  // The servers' addresses have one name for every client program.
  EXPECT_THAT(rows, ::testing::Contains("WEIGHTD_SERVERS weightctl"));
  EXPECT_THAT(rows, ::testing::Contains("WEIGHTD_SERVERS weightd_worker"));
  EXPECT_THAT(rows, ::testing::Not(::testing::Contains(
                        ::testing::StartsWith("WEIGHTD_SERVER "))));
}

TEST(StartupTest, ChecksNameWhereTheFinalValueCameFrom) {
  absl::FlagSaver saver;
  FlagSources sources;
  Program program{
      "prog", "usage", kMainFile, {{"lease_timeout", [] {
                                      return absl::GetFlag(
                                                 FLAGS_lease_timeout) >
                                                     absl::ZeroDuration()
                                                 ? std::string()
                                                 : std::string("must be > 0");
                                    }}}};
  // The command line wins over the environment: only the final value counts.
  ASSERT_THAT(Apply({"WEIGHTD_LEASE_TIMEOUT=0s"}, &sources), IsOk());
  ASSERT_THAT(Parse({"--lease_timeout=3s"}, &sources), IsOk());
  EXPECT_THAT(CheckFlags(program, sources), IsOk());

  ASSERT_THAT(Parse({"--lease_timeout=0s"}, &sources), IsOk());
  EXPECT_THAT(CheckFlags(program, sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "--lease_timeout=0s: must be > 0"));

  sources.clear();
  absl::SetFlag(&FLAGS_lease_timeout, absl::Seconds(6));
  ASSERT_THAT(Apply({"WEIGHTD_LEASE_TIMEOUT=-2s"}, &sources), IsOk());
  EXPECT_THAT(CheckFlags(program, sources),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "WEIGHTD_LEASE_TIMEOUT=-2s: must not be negative, "
                       "e.g. 6s"));
}

TEST(StartupTest, ClosestCountsASwapOfNeighboursAsOne) {
  EXPECT_EQ(Closest("WEIGHTD_SERVRE", {"WEIGHTD_SERVERS", "WEIGHTD_SERVER"}),
            "WEIGHTD_SERVER");
  EXPECT_EQ(Closest("WEIGHTD_SERVRES", {"WEIGHTD_SERVER", "WEIGHTD_SERVERS"}),
            "WEIGHTD_SERVERS");
  EXPECT_EQ(Closest("x", {}), "");
}

TEST(StartupTest, VersionLineHasTheVersionAndBuildType) {
  const std::string line = VersionLine("prog");
  EXPECT_THAT(line, AllOf(HasSubstr("prog 0.5.0 ("), HasSubstr(" build)")));
  EXPECT_THAT(line, ::testing::Not(HasSubstr("Debug build (NDEBUG")));
}

class ProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/weightd-probe-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    std::system(absl::StrCat("rm -rf ", root_).c_str());
  }
  std::string root_;
};

TEST_F(ProbeTest, CreatesAMissingDirectoryAndLeavesNothingBehind) {
  const std::string dir = root_ + "/a/b/snapshots";
  ASSERT_THAT(ProbeWritableDirectory(dir, true), IsOk());
  struct stat st;
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(std::system(absl::StrCat("test -z \"$(ls -A ", dir, ")\"").c_str()),
            0);
}

TEST_F(ProbeTest, RefusesAMissingDirectoryWithoutCreate) {
  EXPECT_THAT(ProbeWritableDirectory(root_ + "/missing", false),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("No such file or directory")));
}

TEST_F(ProbeTest, RefusesAPathUnderARegularFile) {
  // Permission bits do not stop root; a path under a file stops everyone.
  std::ofstream(root_ + "/file") << "x";
  EXPECT_THAT(ProbeWritableDirectory(root_ + "/file/snaps", true),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("Not a directory")));
  EXPECT_THAT(ProbeWritableDirectory(root_ + "/file", true),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("is not a directory")));
}

TEST_F(ProbeTest, RefusesADirectoryWithoutWritePermissionUnlessRoot) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes regardless of the mode";
  const std::string dir = root_ + "/ro";
  ASSERT_EQ(::mkdir(dir.c_str(), 0555), 0);
  EXPECT_THAT(ProbeWritableDirectory(dir, true),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("Permission denied")));
}

}  // namespace
}  // namespace weightd
