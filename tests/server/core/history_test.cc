// Version records (where each published version came from), what Status
// tells an operator about open rounds, workers and barriers, and Drop.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/tensor_store.h"
#include "tests/server/core/store_fixture.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

// A store on a clock the test moves.
class HistoryTest : public TensorStoreTest {
 protected:
  void MakeClockedStore(Mode mode = Mode::kSync,
                        std::uint32_t history_per_tensor = 64) {
    StoreOptions options = TestOptions();
    options.mode = mode;
    options.now = [this] { return now_; };
    options.lease_timeout = absl::Seconds(6);
    options.history_per_tensor = history_per_tensor;
    MakeStoreWith(std::move(options));
  }
  // Sync rounds that may close on one contribution, 1 s after their first.
  void MakeQuorumStore() {
    StoreOptions options = TestOptions();
    options.now = [this] { return now_; };
    options.round_quorum.count = 1;
    options.round_timeout = absl::Seconds(1);
    MakeStoreWith(std::move(options));
  }
  void Advance(absl::Duration d) { now_ += d; }
  std::vector<VersionRecord> Records(const std::string& name) {
    auto history = store_->History(name, 0, 0);
    EXPECT_THAT(history, IsOk());
    return history.ok() ? history->records : std::vector<VersionRecord>{};
  }
  static std::vector<std::string> Workers(const VersionRecord& r) {
    std::vector<std::string> workers;
    for (const HistoryContribution& c : r.contributions) {
      workers.push_back(c.worker);
    }
    return workers;
  }

  absl::Time now_ = absl::FromUnixSeconds(1700000000);
};

TEST_F(HistoryTest, ARoundOfEveryParticipantRecordsItsContributions) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0, 0}}});
  const auto b = Join("b", {{"w", {0, 0}}});
  const absl::Time first = now_;
  ASSERT_THAT(Push(b, 7, {{"w", 0, {1, 1}}}, /*weight=*/3.0), IsOk());
  Advance(absl::Milliseconds(250));
  ASSERT_THAT(Push(a, 2, {{"w", 0, {1, 1}}}, /*weight=*/64.0), IsOk());

  const std::vector<VersionRecord> records = Records("w");
  ASSERT_EQ(records.size(), 1u);
  const VersionRecord& r = records[0];
  EXPECT_EQ(r.version, 1u);
  EXPECT_EQ(r.closed_on, ClosedOn::kAll);
  EXPECT_THAT(Workers(r), ElementsAre("a", "b"));  // Sorted by worker.
  EXPECT_EQ(r.contributions[0].sequence, 2u);
  EXPECT_EQ(r.contributions[0].weight, 64.0);
  EXPECT_EQ(r.contributions[1].sequence, 7u);
  EXPECT_EQ(r.contributions[1].weight, 3.0);
  EXPECT_TRUE(r.contributions[0].complete);
  EXPECT_EQ(r.contributions[0].kind, UpdateKind::kWeights);
  EXPECT_THAT(r.dropped, IsEmpty());
  EXPECT_EQ(r.first_contribution, first);
  EXPECT_EQ(r.closed, first + absl::Milliseconds(250));
}

TEST_F(HistoryTest, AQuorumCloseNamesWhoItDidNotWaitFor) {
  MakeQuorumStore();
  const auto a = Join("a", {{"w", {0}}});
  Join("b", {{"w", {0}}});
  Join("c", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}, 1.0, UpdateKind::kDelta), IsOk());
  Advance(absl::Seconds(2));
  ASSERT_EQ(store_->CloseOverdueRounds(), 1);

  const std::vector<VersionRecord> records = Records("w");
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].closed_on, ClosedOn::kQuorum);
  EXPECT_THAT(Workers(records[0]), ElementsAre("a"));
  EXPECT_EQ(records[0].contributions[0].kind, UpdateKind::kDelta);
  EXPECT_THAT(records[0].dropped, ElementsAre("b", "c"));
}

TEST_F(HistoryTest, AnExpiredLeaseClosesTheRoundAndItsPartialPushIsNamed) {
  // b delivers one chunk of two, then falls silent: its chunk stays in the
  // mean, so the record must name it, as partial.
  MakeClockedStore();
  const std::vector<float> ones(2 * kChunk / 4, 1.0f);
  const auto a = Join("a", {{"w", ones}});
  const auto b = Join("b", {{"w", ones}});
  auto partial = store_->BeginPush(
      PushHeader{b, 5, UpdateKind::kWeights, 2.0, {{"w", 0}}});
  ASSERT_THAT(partial, IsOk());
  ASSERT_THAT((*partial)->AddChunk(
                  0, 0, ::weightd::testing::FloatBytes(ones, 0, kChunk)),
              IsOk());
  Advance(absl::Seconds(5));
  ASSERT_THAT(Push(a, 1, {{"w", 0, ones}}), IsOk());
  Advance(absl::Seconds(2));  // b silent for 7 s, a for 2 s.
  ASSERT_EQ(store_->ExpireLeases(), 1);

  const std::vector<VersionRecord> records = Records("w");
  ASSERT_EQ(records.size(), 1u);
  const VersionRecord& r = records[0];
  EXPECT_EQ(r.closed_on, ClosedOn::kLeaseExpiry);
  EXPECT_THAT(Workers(r), ElementsAre("a", "b"));
  EXPECT_TRUE(r.contributions[0].complete);
  EXPECT_FALSE(r.contributions[1].complete);
  EXPECT_EQ(r.contributions[1].sequence, 5u);
  EXPECT_EQ(r.contributions[1].weight, 2.0);
  EXPECT_THAT(r.dropped, ElementsAre("b"));
}

TEST_F(HistoryTest, ALeaveThatClosesTheRoundIsRecordedAsSuch) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());
  Advance(absl::Seconds(1));
  ASSERT_THAT(store_->Leave(b), IsOk());
  const std::vector<VersionRecord> records = Records("w");
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].closed_on, ClosedOn::kLeave);
  EXPECT_THAT(Workers(records[0]), ElementsAre("a"));
  EXPECT_THAT(records[0].dropped, ElementsAre("b"));
  EXPECT_EQ(records[0].closed - records[0].first_contribution,
            absl::Seconds(1));
}

TEST_F(HistoryTest, AsyncRecordsEveryPush) {
  MakeClockedStore(Mode::kAsync);
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 3, {{"w", 0, {1}}}, 5.0), IsOk());
  ASSERT_THAT(Push(b, 9, {{"w", 0, {1}}}), IsOk());
  const std::vector<VersionRecord> records = Records("w");
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].version, 1u);
  EXPECT_EQ(records[0].closed_on, ClosedOn::kPush);
  EXPECT_THAT(Workers(records[0]), ElementsAre("a"));
  EXPECT_EQ(records[0].contributions[0].sequence, 3u);
  EXPECT_EQ(records[0].contributions[0].weight, 5.0);
  EXPECT_EQ(records[1].version, 2u);
  EXPECT_THAT(Workers(records[1]), ElementsAre("b"));
}

TEST_F(HistoryTest, KeepsTheNewestRecordsUpToTheLimitAndServesARange) {
  MakeClockedStore(Mode::kSync, /*history_per_tensor=*/3);
  const auto a = Join("a", {{"w", {0}}});
  for (std::uint64_t round = 0; round < 5; ++round) {
    ASSERT_THAT(Push(a, round + 1, {{"w", round, {1}}}), IsOk());
  }
  auto all = store_->History("w", 0, 0);
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->records.size(), 3u);
  EXPECT_EQ(all->records.front().version, 3u);
  EXPECT_EQ(all->records.back().version, 5u);
  EXPECT_EQ(all->oldest_kept, 3u);
  EXPECT_EQ(all->version, 5u);
  auto range = store_->History("w", 4, 4);
  ASSERT_THAT(range, IsOk());
  ASSERT_EQ(range->records.size(), 1u);
  EXPECT_EQ(range->records[0].version, 4u);
  EXPECT_THAT(store_->History("nope", 0, 0),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(HistoryTest, NoRecordsWhenTurnedOff) {
  MakeClockedStore(Mode::kSync, /*history_per_tensor=*/0);
  const auto a = Join("a", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());
  auto history = store_->History("w", 0, 0);
  ASSERT_THAT(history, IsOk());
  EXPECT_THAT(history->records, IsEmpty());
  EXPECT_EQ(history->oldest_kept, 0u);
  EXPECT_EQ(history->version, 1u);
}

TEST_F(HistoryTest, RecordsSurviveSaveAndRestore) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}, 2.0), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {1}}}, 3.0), IsOk());
  const std::vector<VersionRecord> before = Records("w");
  StoreState state = store_->Save();
  ASSERT_EQ(state.tensors.size(), 1u);
  ASSERT_EQ(state.tensors[0].history.size(), 1u);

  StoreOptions options = TestOptions();
  options.history_per_tensor = 64;
  auto restored = TensorStore::Restore(std::move(options), std::move(state));
  ASSERT_THAT(restored, IsOk());
  store_ = std::move(*restored);
  const std::vector<VersionRecord> after = Records("w");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].version, before[0].version);
  EXPECT_EQ(after[0].closed_on, before[0].closed_on);
  EXPECT_THAT(Workers(after[0]), ElementsAre("a", "b"));
  EXPECT_EQ(after[0].contributions[1].weight, 3.0);
  EXPECT_EQ(after[0].closed, before[0].closed);
}

TEST_F(HistoryTest, StatusNamesWhoTheOpenRoundWaitsForAndHowLongWorkersIdle) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}});
  Advance(absl::Seconds(1));
  Join("b", {{"w", {0}}});
  Join("c", {{"w", {0}}});
  StoreStatus status = store_->Status();
  ASSERT_EQ(status.tensors.size(), 1u);
  EXPECT_THAT(status.tensors[0].waiting_for, IsEmpty());  // No round yet.

  Advance(absl::Seconds(2));
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());
  Advance(absl::Seconds(1));
  status = store_->Status();
  EXPECT_THAT(status.tensors[0].waiting_for, ElementsAre("b", "c"));
  ASSERT_EQ(status.workers.size(), 3u);
  EXPECT_EQ(status.workers[0].worker_id, "a");
  EXPECT_EQ(status.workers[0].member_for, absl::Seconds(4));
  EXPECT_EQ(status.workers[0].idle, absl::Seconds(1));  // Its push renewed.
  EXPECT_EQ(status.workers[1].member_for, absl::Seconds(3));
  EXPECT_EQ(status.workers[1].idle, absl::Seconds(3));
}

TEST_F(HistoryTest, StatusNamesTheWorkersWaitingInABarrier) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}});
  const auto c = Join("c", {{"w", {0}}});
  std::vector<std::unique_ptr<Wait>> waits;
  for (std::uint64_t lease : {c, a}) {
    auto wait = store_->EnterBarrier(lease, "start", 3, [](absl::Status) {});
    ASSERT_THAT(wait, IsOk());
    waits.push_back(std::move(*wait));
  }
  const StoreStatus status = store_->Status();
  ASSERT_EQ(status.barriers.size(), 1u);
  EXPECT_EQ(status.barriers[0].waiting, 2u);
  EXPECT_THAT(status.barriers[0].waiting_workers, ElementsAre("a", "c"));
}

TEST_F(HistoryTest, DropIsRefusedWhileSharedAndChangesNothing) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {4}}});
  EXPECT_THAT(store_->Drop("w", /*force=*/false),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("shared by 1 worker(s) (a)")));
  EXPECT_THAT(Value("w"), ElementsAre(4));
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(store_->Drop("nope", true),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(HistoryTest, DropOfATensorNobodySharesFreesIt) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", std::vector<float>(1000, 1.0f)}});
  ASSERT_THAT(store_->Leave(a), IsOk());
  const std::uint64_t held = store_->AllocatedBytes();
  auto dropped = store_->Drop("w", /*force=*/false);
  ASSERT_THAT(dropped, IsOk());
  EXPECT_THAT(dropped->removed_workers, IsEmpty());
  EXPECT_EQ(dropped->freed_bytes, held);
  EXPECT_EQ(store_->AllocatedBytes(), 0u);
  EXPECT_THAT(store_->Status().tensors, IsEmpty());
  EXPECT_THAT(store_->Read({"w"}), StatusIs(absl::StatusCode::kNotFound,
                                            HasSubstr("dropped by an admin")));
  // The name can be created again, by a Join.
  Join("b", {{"w", {9}}});
  EXPECT_THAT(Value("w"), ElementsAre(9));
}

TEST_F(HistoryTest, ForcedDropEndsTheMembershipsInItAndFailsWhatWaitsOnIt) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}, {"own", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());  // The round waits for b.
  absl::Status waited = absl::UnknownError("not called");
  auto wait =
      store_->WaitForVersions({{"w", 1}}, [&](absl::Status s) { waited = s; });
  ASSERT_THAT(wait, IsOk());

  auto dropped = store_->Drop("w", /*force=*/true);
  ASSERT_THAT(dropped, IsOk());
  EXPECT_THAT(dropped->removed_workers, ElementsAre("a", "b"));
  EXPECT_THAT(waited, StatusIs(absl::StatusCode::kNotFound,
                               HasSubstr("dropped by an admin")));
  // Their pushes naming it get NOT_FOUND saying why; their other tensors
  // and leases are untouched.
  EXPECT_THAT(
      Push(b, 2, {{"w", 0, {1}}}),
      StatusIs(absl::StatusCode::kNotFound, HasSubstr("dropped by an admin")));
  ASSERT_THAT(Push(a, 2, {{"own", 0, {5}}}), IsOk());
  EXPECT_THAT(Value("own"), ElementsAre(5));
  const StoreStatus status = store_->Status();
  ASSERT_EQ(status.workers.size(), 2u);
  EXPECT_THAT(status.workers[0].tensors, ElementsAre("own"));
  EXPECT_THAT(status.workers[1].tensors, IsEmpty());
}

TEST_F(HistoryTest, AForcedDropFailsAPushInFlight) {
  MakeClockedStore();
  const std::vector<float> ones(2 * kChunk / 4, 1.0f);
  const auto a = Join("a", {{"w", ones}});
  std::unique_ptr<PushSession> session = BeginRoundZero(a);
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(
      session->AddChunk(0, 0, ::weightd::testing::FloatBytes(ones, 0, kChunk)),
      IsOk());
  ASSERT_THAT(store_->Drop("w", /*force=*/true), IsOk());
  EXPECT_THAT(
      session->AddChunk(0, kChunk,
                        ::weightd::testing::FloatBytes(ones, kChunk, kChunk)),
      StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(HistoryTest, WorkersOfADroppedTensorLeaveExpireAndRejoinSafely) {
  // Their memberships no longer name the tensor: ending them must not
  // look it up.
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}, {"own", {0}}});
  Join("b", {{"w", {0}}});
  ASSERT_THAT(store_->Drop("w", /*force=*/true), IsOk());
  ASSERT_THAT(store_->Leave(a), IsOk());
  Advance(absl::Seconds(7));
  EXPECT_EQ(store_->ExpireLeases(), 1);  // b.
  auto rejoined = store_->Join("b", {Declaration{"w", {1}, {3}}});
  ASSERT_THAT(rejoined, IsOk());
  EXPECT_TRUE(rejoined->tensors[0].created);
  EXPECT_THAT(Value("w"), ElementsAre(3));
}

TEST_F(HistoryTest, ADroppedTensorsOpenRoundNeverCloses) {
  MakeQuorumStore();
  const auto a = Join("a", {{"w", {0}}});
  Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}), IsOk());
  ASSERT_THAT(store_->Drop("w", /*force=*/true), IsOk());
  Advance(absl::Seconds(2));
  EXPECT_EQ(store_->CloseOverdueRounds(), 0);
  EXPECT_THAT(Closed(), IsEmpty());
}

TEST_F(HistoryTest, DropGivesTheCreatorsQuotaBack) {
  StoreOptions options = TestOptions();
  options.max_tensors_per_principal = 1;
  MakeStoreWith(std::move(options));
  Claimant team{1, "peer", "team"};
  auto first = store_->Join("a", {Declaration{"w", {1}, {1}}}, team);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(store_->Leave(first->lease_id), IsOk());
  EXPECT_THAT(store_->Join("a", {Declaration{"v", {1}, {1}}}, team),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_THAT(store_->Drop("w", /*force=*/false), IsOk());
  EXPECT_THAT(store_->Join("a", {Declaration{"v", {1}, {1}}}, team), IsOk());
}

TEST_F(HistoryTest, AJoinThatADropOvertookIsAbortedNotBlamedOnTheCaller) {
  MakeClockedStore();
  const auto a = Join("a", {{"w", {0}}});
  ASSERT_THAT(store_->Leave(a), IsOk());
  // b's Join began while w existed: its value for w is not kept.
  auto session =
      store_->BeginJoin(JoinHeader{"b", {}, {Declaration{"w", {1}, {}}}});
  ASSERT_THAT(session, IsOk());
  ASSERT_THAT(store_->Drop("w", /*force=*/false), IsOk());
  EXPECT_THAT((*session)->Finish(),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("dropped by an admin while this Join")));
}

}  // namespace
}  // namespace weightd::core
