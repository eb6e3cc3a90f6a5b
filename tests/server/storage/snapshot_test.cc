#include "server/storage/snapshot.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/policy_spec.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd::storage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/weightd-snapshot-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  // A store with two workers, one closed round and one open round.
  std::unique_ptr<core::TensorStore> MakeStore() {
    core::StoreOptions options;
    options.chunk_bytes = kMinChunkBytes;
    auto store = std::move(core::TensorStore::Create(options)).value();
    auto a = store->Join("a", {core::Declaration{"w", {2, 2}, {1, 2, 3, 4}},
                               core::Declaration{"own", {1}, {7}}});
    auto b = store->Join("b", {core::Declaration{"w", {2, 2}, {}}});
    EXPECT_THAT(a, IsOk());
    EXPECT_THAT(b, IsOk());
    lease_a_ = a->lease_id;
    lease_b_ = b->lease_id;
    EXPECT_THAT(Push(*store, lease_a_, 1, 0, {3, 3, 3, 3}), IsOk());
    EXPECT_THAT(Push(*store, lease_b_, 1, 0, {5, 5, 5, 5}), IsOk());  // v1.
    EXPECT_THAT(Push(*store, lease_a_, 2, 1, {9, 9, 9, 9}), IsOk());  // Open.
    return store;
  }

  static absl::Status Push(core::TensorStore& store, std::uint64_t lease,
                           std::uint64_t sequence, std::uint64_t round,
                           std::vector<float> value) {
    auto session = store.BeginPush(
        {lease, sequence, core::UpdateKind::kWeights, 1.0, {{"w", round}}});
    if (!session.ok()) return session.status();
    WEIGHTD_RETURN_IF_ERROR((*session)->AddChunk(
        0, 0,
        absl::string_view(reinterpret_cast<const char*>(value.data()),
                          value.size() * 4)));
    return (*session)->Finish().status();
  }

  std::string dir_;
  std::uint64_t lease_a_ = 0;
  std::uint64_t lease_b_ = 0;
};

TEST_F(SnapshotTest, RoundTripRestoresValuesVersionsMembersAndDedupe) {
  auto store = MakeStore();
  const std::string path = dir_ + "/one.wds";
  ASSERT_THAT(WriteSnapshotFile(path, store->Save()), IsOk());
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  core::StoreOptions options;
  options.chunk_bytes = kMinChunkBytes;
  auto restored = core::TensorStore::Restore(options, std::move(*state));
  ASSERT_THAT(restored, IsOk());
  auto& r = **restored;
  EXPECT_EQ(r.Describe("w")->version, 1u);
  EXPECT_EQ(r.Describe("w")->participants, 2u);
  EXPECT_THAT(*(*r.Read({"w"}))[0].value, ElementsAre(4, 4, 4, 4));
  EXPECT_THAT(*(*r.Read({"own"}))[0].value, ElementsAre(7));
  // Leases survive: the workers continue without re-joining.
  // b's push of round 0 is remembered: a resend is a duplicate...
  auto again =
      r.BeginPush({lease_b_, 1, core::UpdateKind::kWeights, 1.0, {{"w", 0}}});
  ASSERT_THAT(again, IsOk());
  std::vector<float> five(4, 5.0f);
  ASSERT_THAT(
      (*again)->AddChunk(
          0, 0,
          absl::string_view(reinterpret_cast<const char*>(five.data()), 16)),
      IsOk());
  auto results = (*again)->Finish();
  ASSERT_THAT(results, IsOk());
  EXPECT_TRUE((*results)[0].outcome.duplicate);
  // ...while a's push to the open round was not saved: its resend counts.
  ASSERT_THAT(Push(r, lease_a_, 2, 1, {9, 9, 9, 9}), IsOk());
  ASSERT_THAT(Push(r, lease_b_, 2, 1, {1, 1, 1, 1}), IsOk());
  EXPECT_EQ(r.Describe("w")->version, 2u);
  EXPECT_THAT(*(*r.Read({"w"}))[0].value, ElementsAre(5, 5, 5, 5));
}

TEST_F(SnapshotTest, APartKeepsItsWholeShapeAcrossARestore) {
  core::StoreOptions options;
  options.chunk_bytes = kMinChunkBytes;
  auto store = std::move(core::TensorStore::Create(options)).value();
  ASSERT_THAT(store->Join("a", {core::Declaration{"w", {1, 2}, {1, 2}, {3, 2}},
                                core::Declaration{"v", {1}, {7}}}),
              IsOk());
  const std::string path = dir_ + "/parts.wds";
  ASSERT_THAT(WriteSnapshotFile(path, store->Save()), IsOk());
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  auto restored = core::TensorStore::Restore(options, std::move(*state));
  ASSERT_THAT(restored, IsOk());
  // The restored part still refuses a whole declaration of its shape, and
  // takes one of its own whole shape.
  EXPECT_THAT((*restored)->Join("b", {core::Declaration{"w", {1, 2}, {}}}),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(
      (*restored)->Join("b", {core::Declaration{"w", {1, 2}, {}, {3, 2}},
                              core::Declaration{"v", {1}, {}}}),
      IsOk());
}

TEST_F(SnapshotTest, AVersionOneFileStillLoads) {
  // Format 1, byte by byte: one tensor "w" [2] = {1.5, -2}, version 5, no
  // pushes, no workers; then the CRC-32 of it all and the trailer.
  std::string body("WDSNAP01", 8);
  auto put = [&body](const auto& v) {
    body.append(reinterpret_cast<const char*>(&v), sizeof(v));
  };
  put(std::uint64_t{1});
  put(std::uint32_t{1});
  body += "w";
  put(std::uint32_t{1});  // Rank.
  put(std::int64_t{2});
  put(std::uint64_t{5});  // Version.
  put(std::uint64_t{2});  // Elements.
  put(1.5f);
  put(-2.0f);
  put(std::uint64_t{0});  // Pushes.
  put(std::uint64_t{0});  // Workers.
  put(static_cast<std::uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0),
              reinterpret_cast<const Bytef*>(body.data()), body.size())));
  body += std::string("WDSNEND1", 8);
  const std::string path = dir_ + "/v1.wds";
  std::ofstream(path, std::ios::binary) << body;
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  ASSERT_EQ(state->tensors.size(), 1u);
  EXPECT_EQ(state->tensors[0].name, "w");
  EXPECT_EQ(state->tensors[0].version, 5u);
  EXPECT_THAT(*state->tensors[0].value, ElementsAre(1.5f, -2.0f));
  EXPECT_TRUE(state->tensors[0].whole_shape.empty());
}

TEST_F(SnapshotTest, AMembershipKeepsItsPrincipalAcrossARestore) {
  core::StoreOptions options;
  options.chunk_bytes = kMinChunkBytes;
  auto store = std::move(core::TensorStore::Create(options)).value();
  auto joined = store->Join("a", {core::Declaration{"w", {1}, {7}}},
                            core::Claimant{1, "peer", "trainer-a"});
  ASSERT_THAT(joined, IsOk());
  const std::string path = dir_ + "/owned.wds";
  ASSERT_THAT(WriteSnapshotFile(path, store->Save()), IsOk());
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  auto restored = core::TensorStore::Restore(options, std::move(*state));
  ASSERT_THAT(restored, IsOk());
  auto holder = (*restored)->HolderOf(joined->lease_id);
  ASSERT_THAT(holder, IsOk());
  EXPECT_EQ(holder->worker_id, "a");
  EXPECT_EQ(holder->principal, "trainer-a");
}

TEST_F(SnapshotTest, AVersionTwoFileStillLoadsWithUnownedMemberships) {
  // Format 2, byte by byte: tensor "w" [1] = {3}, version 2, no pushes;
  // worker "a" with lease 7, sequence 4, holding "w"; CRC-32, trailer.
  std::string body("WDSNAP02", 8);
  auto put = [&body](const auto& v) {
    body.append(reinterpret_cast<const char*>(&v), sizeof(v));
  };
  auto str = [&](const std::string& text) {
    put(static_cast<std::uint32_t>(text.size()));
    body += text;
  };
  put(std::uint64_t{1});
  str("w");
  put(std::uint32_t{1});  // Rank.
  put(std::int64_t{1});
  put(std::uint32_t{0});  // Whole rank.
  put(std::uint64_t{2});  // Version.
  put(std::uint64_t{1});  // Elements.
  put(3.0f);
  put(std::uint64_t{0});  // Pushes.
  put(std::uint64_t{1});  // Workers.
  str("a");
  put(std::uint64_t{7});  // Lease.
  put(std::uint64_t{4});  // Sequence.
  put(std::uint32_t{1});  // Tensors.
  str("w");
  put(static_cast<std::uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0),
              reinterpret_cast<const Bytef*>(body.data()), body.size())));
  body += std::string("WDSNEND1", 8);
  const std::string path = dir_ + "/v2.wds";
  std::ofstream(path, std::ios::binary) << body;
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  ASSERT_EQ(state->workers.size(), 1u);
  EXPECT_EQ(state->workers[0].id, "a");
  EXPECT_EQ(state->workers[0].lease_id, 7u);
  EXPECT_EQ(state->workers[0].principal, "");
  EXPECT_THAT(*state->tensors[0].value, ElementsAre(3.0f));
}

TEST_F(SnapshotTest, VersionRecordsSurviveTheFile) {
  auto store = MakeStore();  // Version 1: a and b; round 1 open.
  const std::string path = dir_ + "/records.wds";
  ASSERT_THAT(WriteSnapshotFile(path, store->Save()), IsOk());
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  const core::SavedTensor& w = state->tensors[1];
  ASSERT_EQ(w.name, "w");
  const std::vector<core::VersionRecord> saved =
      store->Save().tensors[1].history;
  ASSERT_EQ(w.history.size(), 1u);
  ASSERT_EQ(saved.size(), 1u);
  const core::VersionRecord& r = w.history[0];
  EXPECT_EQ(r.version, 1u);
  EXPECT_EQ(r.closed_on, core::ClosedOn::kAll);
  ASSERT_EQ(r.contributions.size(), 2u);
  EXPECT_EQ(r.contributions[0].worker, "a");
  EXPECT_EQ(r.contributions[1].worker, "b");
  EXPECT_EQ(r.contributions[1].sequence, 1u);
  EXPECT_EQ(r.contributions[1].weight, 1.0);
  EXPECT_TRUE(r.contributions[1].complete);
  // Microseconds are what the file keeps.
  EXPECT_EQ(absl::ToUnixMicros(r.first_contribution),
            absl::ToUnixMicros(saved[0].first_contribution));
  EXPECT_EQ(absl::ToUnixMicros(r.closed), absl::ToUnixMicros(saved[0].closed));
  EXPECT_TRUE(state->tensors[0].history.empty());  // "own": never pushed.
}

TEST_F(SnapshotTest, AVersionThreeFileStillLoadsWithoutRecords) {
  // Format 3: format 2 plus each membership's principal.
  std::string body("WDSNAP03", 8);
  auto put = [&body](const auto& v) {
    body.append(reinterpret_cast<const char*>(&v), sizeof(v));
  };
  auto str = [&](const std::string& text) {
    put(static_cast<std::uint32_t>(text.size()));
    body += text;
  };
  put(std::uint64_t{1});
  str("w");
  put(std::uint32_t{1});  // Rank.
  put(std::int64_t{1});
  put(std::uint32_t{0});  // Whole rank.
  put(std::uint64_t{2});  // Version.
  put(std::uint64_t{1});  // Elements.
  put(3.0f);
  put(std::uint64_t{0});  // Pushes.
  put(std::uint64_t{1});  // Workers.
  str("a");
  put(std::uint64_t{7});  // Lease.
  put(std::uint64_t{4});  // Sequence.
  put(std::uint32_t{1});  // Tensors.
  str("w");
  str("workers");  // Principal.
  put(static_cast<std::uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0),
              reinterpret_cast<const Bytef*>(body.data()), body.size())));
  body += std::string("WDSNEND1", 8);
  const std::string path = dir_ + "/v3.wds";
  std::ofstream(path, std::ios::binary) << body;
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->workers[0].principal, "workers");
  EXPECT_EQ(state->tensors[0].version, 2u);
  EXPECT_TRUE(state->tensors[0].history.empty());
}

TEST_F(SnapshotTest, APolicyAndItsOptimizerStateSurviveTheFileBitForBit) {
  core::StoreOptions options;
  options.chunk_bytes = kMinChunkBytes;
  auto store = std::move(core::TensorStore::Create(options)).value();
  core::Declaration d{"w", {3}, {1, 2, 3}};
  d.policy.optimizer = "adam";
  d.policy.params = {{"lr", 0.05}};
  auto joined = store->Join("a", {d});
  ASSERT_THAT(joined, IsOk());
  for (std::uint64_t round = 0; round < 3; ++round) {
    auto session = store->BeginPush({joined->lease_id,
                                     round + 1,
                                     core::UpdateKind::kWeights,
                                     1.0,
                                     {{"w", round}}});
    ASSERT_THAT(session, IsOk());
    const std::vector<float> pushed = {0.5f * round, -1.0f, 7.0f};
    ASSERT_THAT(
        (*session)->AddChunk(
            0, 0,
            absl::string_view(reinterpret_cast<const char*>(pushed.data()),
                              pushed.size() * 4)),
        IsOk());
    ASSERT_THAT((*session)->Finish(), IsOk());
  }
  const core::StoreState saved = store->Save();
  ASSERT_EQ(saved.tensors[0].optimizer_state.size(), 2u);  // m and v.
  const std::string path = dir_ + "/policy.wds";
  ASSERT_THAT(WriteSnapshotFile(path, saved), IsOk());
  auto loaded = ReadSnapshotFile(path);
  ASSERT_THAT(loaded, IsOk());
  const core::SavedTensor& w = loaded->tensors[0];
  EXPECT_EQ(PolicySpecText(w.policy),
            "consistency=sync optimizer=adam aggregator=mean beta1=0.9 "
            "beta2=0.99 lr=0.05 tau=0.001");
  ASSERT_EQ(w.optimizer_state.size(), 2u);
  for (std::size_t s = 0; s < 2; ++s) {
    const std::vector<float>& before = saved.tensors[0].optimizer_state[s];
    ASSERT_EQ(w.optimizer_state[s].size(), before.size());
    EXPECT_EQ(std::memcmp(w.optimizer_state[s].data(), before.data(),
                          before.size() * sizeof(float)),
              0);
  }
  auto restored = core::TensorStore::Restore(options, *std::move(loaded));
  ASSERT_THAT(restored, IsOk());
  auto info = (*restored)->Describe("w");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->policy, store->Describe("w")->policy);
  EXPECT_EQ(info->policy_bytes, 2u * 3u * sizeof(float));
}

TEST_F(SnapshotTest, AVersionFourFileLoadsWithTheServersDefaultPolicy) {
  // Format 4: format 3 plus each tensor's version records.
  std::string body("WDSNAP04", 8);
  auto put = [&body](const auto& v) {
    body.append(reinterpret_cast<const char*>(&v), sizeof(v));
  };
  auto str = [&](const std::string& text) {
    put(static_cast<std::uint32_t>(text.size()));
    body += text;
  };
  put(std::uint64_t{1});
  str("w");
  put(std::uint32_t{1});  // Rank.
  put(std::int64_t{1});
  put(std::uint32_t{0});  // Whole rank.
  put(std::uint64_t{2});  // Version.
  put(std::uint64_t{1});  // Elements.
  put(3.0f);
  put(std::uint64_t{0});  // Pushes.
  put(std::uint64_t{0});  // Version records.
  put(std::uint64_t{0});  // Workers.
  put(static_cast<std::uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0),
              reinterpret_cast<const Bytef*>(body.data()), body.size())));
  body += std::string("WDSNEND1", 8);
  const std::string path = dir_ + "/v4.wds";
  std::ofstream(path, std::ios::binary) << body;
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  EXPECT_TRUE(state->tensors[0].policy.empty());
  core::StoreOptions options;
  options.default_policy.optimizer = "momentum";
  auto restored = core::TensorStore::Restore(options, *std::move(state));
  ASSERT_THAT(restored, IsOk());
  EXPECT_EQ((*restored)->Describe("w")->policy.optimizer, "momentum");
}

TEST_F(SnapshotTest, CorruptOrTruncatedFilesAreDataLoss) {
  auto store = MakeStore();
  const std::string path = dir_ + "/s.wds";
  ASSERT_THAT(WriteSnapshotFile(path, store->Save()), IsOk());
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_GT(bytes.size(), 60u);
  auto write = [&](const std::string& content) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  };
  // Every single flipped byte and every truncation is detected.
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::string flipped = bytes;
    flipped[i] ^= 0x20;
    write(flipped);
    EXPECT_THAT(ReadSnapshotFile(path), StatusIs(absl::StatusCode::kDataLoss))
        << "flipped byte " << i;
    write(bytes.substr(0, i));
    EXPECT_THAT(ReadSnapshotFile(path), StatusIs(absl::StatusCode::kDataLoss))
        << "truncated to " << i;
  }
  write(bytes + "x");
  EXPECT_THAT(ReadSnapshotFile(path), StatusIs(absl::StatusCode::kDataLoss));
  write(bytes);
  EXPECT_THAT(ReadSnapshotFile(path), IsOk());
  EXPECT_THAT(ReadSnapshotFile(dir_ + "/missing.wds"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SnapshotTest, DirectoryFallsBackToThePreviousGoodSnapshot) {
  auto store = MakeStore();
  auto snapshots = SnapshotDir::Open(dir_ + "/snaps");
  ASSERT_THAT(snapshots, IsOk());
  EXPECT_THAT((*snapshots)->LoadNewest(),
              StatusIs(absl::StatusCode::kNotFound));
  auto first = (*snapshots)->Write(store->Save());
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(Push(*store, lease_b_, 2, 1, {1, 1, 1, 1}), IsOk());  // v2.
  auto second = (*snapshots)->Write(store->Save());
  ASSERT_THAT(second, IsOk());
  auto third = (*snapshots)->Write(store->Save());
  ASSERT_THAT(third, IsOk());
  // Only the newest two are kept.
  EXPECT_NE(::access(first->c_str(), F_OK), 0);
  {
    auto loaded = (*snapshots)->LoadNewest();
    ASSERT_THAT(loaded, IsOk());
    EXPECT_EQ(loaded->path, *third);
    EXPECT_TRUE(loaded->skipped.empty());
  }
  // A torn newest file: the one before it is used, and the skip reported.
  ::truncate(third->c_str(), 30);
  auto loaded = (*snapshots)->LoadNewest();
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->path, *second);
  ASSERT_EQ(loaded->skipped.size(), 1u);
  EXPECT_EQ(loaded->skipped[0].first, *third);
  EXPECT_THAT(loaded->skipped[0].second,
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("truncated")));
  // Nothing usable left: DATA_LOSS names the files.
  ::truncate(second->c_str(), 10);
  EXPECT_THAT(
      (*snapshots)->LoadNewest(),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr("no usable snapshot")));
  // A reopened directory continues the numbering.
  auto reopened = SnapshotDir::Open(dir_ + "/snaps");
  auto fourth = (*reopened)->Write(store->Save());
  ASSERT_THAT(fourth, IsOk());
  EXPECT_GT(*fourth, *third);
}

// A crash mid-write leaves snapshot-N.wds.tmp: it is never loaded, and
// reopening the directory deletes it.
TEST_F(SnapshotTest, UnfinishedWritesAreIgnoredAndRemoved) {
  auto store = MakeStore();
  auto snapshots = SnapshotDir::Open(dir_ + "/snaps");
  ASSERT_THAT(snapshots, IsOk());
  auto good = (*snapshots)->Write(store->Save());
  ASSERT_THAT(good, IsOk());
  const std::string torn = dir_ + "/snaps/snapshot-000000000002.wds.tmp";
  ASSERT_EQ(
      std::system(("head -c 40 '" + *good + "' > '" + torn + "'").c_str()), 0);
  auto loaded = (*snapshots)->LoadNewest();
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->path, *good);
  EXPECT_TRUE(loaded->skipped.empty());
  ASSERT_THAT(SnapshotDir::Open(dir_ + "/snaps"), IsOk());
  EXPECT_NE(::access(torn.c_str(), F_OK), 0);
  EXPECT_EQ(::access(good->c_str(), F_OK), 0);
}

// Disk full, staged with the file-size limit: the write fails cleanly, the
// previous snapshot stays intact and no temporary file is left.
TEST_F(SnapshotTest, WriteErrorLeavesThePreviousSnapshotIntact) {
  auto store = MakeStore();
  const std::string path = dir_ + "/s.wds";
  ASSERT_THAT(WriteSnapshotFile(path, store->Save()), IsOk());
  core::StoreOptions options;
  auto big = std::move(core::TensorStore::Create(options)).value();
  ASSERT_THAT(
      big->Join("x", {core::Declaration{
                         "big", {1 << 20}, std::vector<float>(1 << 20)}}),
      IsOk());
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 64 << 10;
  ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::Status failed = WriteSnapshotFile(path, big->Save());
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(failed.message(), HasSubstr("cannot write"));
  EXPECT_NE(::access((path + ".tmp").c_str(), F_OK), 0);
  auto state = ReadSnapshotFile(path);
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->tensors.size(), 2u);  // The old one: w and own.
}

}  // namespace
}  // namespace weightd::storage
