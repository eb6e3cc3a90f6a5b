#include "server/core/tensor_store.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/core/store_fixture.h"
#include "tests/testing/bytes.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::FloatBytes;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

TEST_F(TensorStoreTest, FirstJoinCreatesLaterJoinKeepsSharedValue) {
  MakeStore();
  Join("a", {{"w", {1, 2}}});
  auto joined = store_->Join("b", {Declaration{"w", {2}, {7, 7}}});
  ASSERT_THAT(joined, IsOk());
  EXPECT_FALSE(joined->tensors[0].created);
  EXPECT_EQ(joined->tensors[0].info.participants, 2u);
  EXPECT_THAT(Value("w"), ElementsAre(1, 2));
}

TEST_F(TensorStoreTest, RoundClosesWhenEveryParticipantContributed) {
  MakeStore();
  const auto a = Join("a", {{"w", {0, 0}}});
  const auto b = Join("b", {{"w", {0, 0}}});
  auto first = Push(a, 1, {{"w", 0, {2, 4}}});
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ((*first)[0].outcome.version, 0u);  // Still waiting for b.
  EXPECT_EQ(Version("w"), 0u);
  ASSERT_THAT(Push(b, 1, {{"w", 0, {4, 8}}}), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ElementsAre(3, 6));
  const std::vector<RoundClosed> closed = Closed();
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].tensor, "w");
  EXPECT_EQ(closed[0].round, 0u);
  EXPECT_EQ(closed[0].contributors, 2u);
  EXPECT_EQ(closed[0].bytes, 16u);
}

TEST_F(TensorStoreTest, WeightedMeanIsExact) {
  MakeStore();
  const auto a = Join("a", {{"w", {0, 0, 0}}});
  const auto b = Join("b", {{"w", {0, 0, 0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1, 10, -4}}}, /*weight=*/3), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {5, 2, 4}}}, /*weight=*/1), IsOk());
  // (3*1 + 5)/4 = 2, (30 + 2)/4 = 8, (-12 + 4)/4 = -2.
  EXPECT_THAT(Value("w"), ElementsAre(2, 8, -2));
}

TEST_F(TensorStoreTest, DeltaRoundAppliesServerLearningRate) {
  MakeStore(Mode::kSync, /*server_lr=*/0.5);
  const auto a = Join("a", {{"w", {1, 1}}});
  const auto b = Join("b", {{"w", {1, 1}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2, 4}}}, 1, UpdateKind::kDelta), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {6, 0}}}, 1, UpdateKind::kDelta), IsOk());
  EXPECT_THAT(Value("w"), ElementsAre(1 + 0.5 * 4, 1 + 0.5 * 2));
}

TEST_F(TensorStoreTest, MixedUpdateKindsInOneRoundAreRefused) {
  MakeStore();
  const auto a = Join("a", {{"w", {1}}});
  const auto b = Join("b", {{"w", {1}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}, 1, UpdateKind::kDelta), IsOk());
  EXPECT_THAT(Push(b, 1, {{"w", 0, {2}}}, 1, UpdateKind::kWeights),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("collecting delta")));
}

TEST_F(TensorStoreTest, SharingGroupClosesWithoutNonHolders) {
  MakeStore();
  // Two classifiers share "enc"; each keeps a private head.
  const auto a = Join("a", {{"enc", {0, 0}}, {"head10", {0}}});
  const auto b = Join("b", {{"enc", {0, 0}}, {"head10", {0}}});
  const auto c = Join("c", {{"enc", {0, 0}}, {"head2", {0}}});
  ASSERT_THAT(Push(a, 1, {{"enc", 0, {3, 3}}, {"head10", 0, {1}}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"enc", 0, {6, 6}}, {"head10", 0, {3}}}), IsOk());
  // head10 is held by a and b only: it closed without c.
  EXPECT_EQ(Version("head10"), 1u);
  EXPECT_THAT(Value("head10"), ElementsAre(2));
  EXPECT_EQ(Version("enc"), 0u);  // enc still waits for c.
  ASSERT_THAT(Push(c, 1, {{"enc", 0, {0, 0}}, {"head2", 0, {5}}}), IsOk());
  EXPECT_THAT(Value("enc"), ElementsAre(3, 3));
  EXPECT_THAT(Value("head2"), ElementsAre(5));
}

TEST_F(TensorStoreTest, LeavingParticipantReleasesTheRound) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {4}}}), IsOk());
  EXPECT_EQ(Version("w"), 0u);
  ASSERT_THAT(store_->Leave(b), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ElementsAre(4));
}

TEST_F(TensorStoreTest, ShapeMismatchIsRefusedAndChangesNothing) {
  MakeStore();
  Join("a", {{"w", {1, 2}}});
  auto joined = store_->Join(
      "b", {Declaration{"v", {1}, {9}}, Declaration{"w", {3}, {0, 0, 0}}});
  EXPECT_THAT(joined, StatusIs(absl::StatusCode::kAlreadyExists,
                               HasSubstr("already exists with shape [2]")));
  EXPECT_THAT(store_->Describe("v"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(store_->Status().workers.size(), 1u);
  EXPECT_THAT(Value("w"), ElementsAre(1, 2));
}

TEST_F(TensorStoreTest, APartOfAnotherWholeShapeIsRefused) {
  // A shard holds one part of "w", a tensor of shape [2, 4] split by rows.
  MakeStore();
  ASSERT_THAT(
      store_->Join("a", {Declaration{"w", {1, 4}, {1, 2, 3, 4}, {2, 4}}}),
      IsOk());
  // The same part shape, from a whole [1, 4] or from a [4, 4] split.
  EXPECT_THAT(store_->Join("b", {Declaration{"w", {1, 4}, {}}}),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("exists here as a part of a tensor of shape "
                                 "[2,4] split over shards; worker b declared "
                                 "it as whole, shape [1,4]")));
  EXPECT_THAT(store_->Join("b", {Declaration{"w", {1, 4}, {}, {4, 4}}}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("[4,4]")));
  EXPECT_EQ(store_->Status().workers.size(), 1u);
  EXPECT_THAT(store_->Join("b", {Declaration{"w", {1, 4}, {}, {2, 4}}}),
              IsOk());
  // And a whole tensor refuses a part.
  ASSERT_THAT(store_->Join("c", {Declaration{"v", {1}, {5}}}), IsOk());
  EXPECT_THAT(store_->Join("d", {Declaration{"v", {1}, {}, {2}}}),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("exists here as whole")));
  EXPECT_THAT(store_->Join("d", {Declaration{"u", {1}, {0}, {0, 3}}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("whole shape [0,3]")));
}

TEST_F(TensorStoreTest, BadDeclarationsAreInvalid) {
  MakeStore();
  EXPECT_THAT(store_->Join("a", {Declaration{"", {1}, {0}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {0}, {}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      store_->Join("a", {Declaration{"w", {2}, {0}}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs 8")));
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1}, {NAN}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
  EXPECT_THAT(store_->Join("bad id", {Declaration{"w", {1}, {0}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1 << 30, 1 << 30}, {}}}),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(store_->Status().tensors.empty());
}

TEST_F(TensorStoreTest, DuplicatePushIsAppliedOnce) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}), IsOk());
  auto again = Push(a, 1, {{"w", 0, {2}}});
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE((*again)[0].outcome.duplicate);
  ASSERT_THAT(Push(b, 1, {{"w", 0, {4}}}), IsOk());
  EXPECT_THAT(Value("w"), ElementsAre(3));  // Not (2 + 2 + 4) / 3.
  // A resend after the round closed still answers OK with the outcome.
  auto late_resend = Push(a, 1, {{"w", 0, {2}}});
  ASSERT_THAT(late_resend, IsOk());
  EXPECT_TRUE((*late_resend)[0].outcome.duplicate);
  EXPECT_EQ((*late_resend)[0].outcome.ready_version, 1u);
  EXPECT_EQ(Version("w"), 1u);
}

TEST_F(TensorStoreTest, InterruptedPushResumesWithoutDoubleCounting) {
  MakeStore();
  std::vector<float> big(3000, 1.0f);  // 3 chunks.
  const auto a = Join("a", {{"w", std::vector<float>(3000, 0)}});
  {
    auto session = store_->BeginPush(
        PushHeader{a, 1, UpdateKind::kWeights, 1.0, {{"w", 0}}});
    ASSERT_THAT(session, IsOk());
    ASSERT_THAT((*session)->AddChunk(0, 0, FloatBytes(big, 0, kChunk)), IsOk());
    // The stream breaks here: the session is dropped unfinished.
  }
  std::vector<float> resent(3000, 1.0f);
  ASSERT_THAT(Push(a, 1, {{"w", 0, resent}}), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ::testing::Each(1.0f));
}

TEST_F(TensorStoreTest, LatePushIsAborted) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());
  ASSERT_EQ(Version("w"), 1u);
  EXPECT_THAT(
      Push(a, 2, {{"w", 0, {5}}}),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("current round is 1")));
  // A round this server never reached (it was not restored: its rounds
  // never went back).
  EXPECT_THAT(Push(a, 3, {{"w", 7, {5}}}),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("is not open (this server has not reached")));
  EXPECT_THAT(Value("w"), ElementsAre(1));
}

// A server restored from an older snapshot has its rounds go back: a worker
// that saw a later round pushes a round ahead of the open one. Its push
// counts in the open round, beside the pushes of workers still in it;
// refusing it would leave those waiting for a push that never comes (with
// the tensor split over shards, every worker then waits on another).
TEST_F(TensorStoreTest, PushAheadOfARestoredRoundCountsInTheOpenRound) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {4}}}), IsOk());
  StoreState saved = store_->Save();  // Version 1, w = 3.
  ASSERT_THAT(Push(a, 2, {{"w", 1, {5}}}), IsOk());
  ASSERT_THAT(Push(b, 2, {{"w", 1, {7}}}), IsOk());
  ASSERT_EQ(Version("w"), 2u);

  auto restored = TensorStore::Restore(TestOptions(), std::move(saved));
  ASSERT_THAT(restored, IsOk());
  store_ = std::move(*restored);
  ASSERT_EQ(Version("w"), 1u);
  // a lost the answer to its round-1 push with the server and resends it;
  // b had its round-1 result and pushes round 2.
  ASSERT_THAT(Push(a, 2, {{"w", 1, {5}}}), IsOk());
  auto ahead = Push(b, 3, {{"w", 2, {9}}});
  ASSERT_THAT(ahead, IsOk());
  EXPECT_EQ((*ahead)[0].outcome.round, 1u);
  EXPECT_EQ((*ahead)[0].outcome.ready_version, 2u);
  EXPECT_EQ(Version("w"), 2u);
  EXPECT_THAT(Value("w"), ElementsAre(7));  // (5 + 9) / 2
  // A resend of b's push is the same push, applied once.
  auto again = Push(b, 3, {{"w", 2, {9}}});
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE((*again)[0].outcome.duplicate);
  EXPECT_THAT(Value("w"), ElementsAre(7));
  // Once b's round is the open one again, the rounds are as before.
  EXPECT_THAT(
      Push(b, 4, {{"w", 1, {1}}}),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("current round is 2")));
}

// A PushPull's client writes the result into the buffers its push reads
// from: a resend after a failed call carries result values where the
// result arrived (held_bytes). A server that still holds that part of the
// push skips it; the resend completes the push with the caller's values.
TEST_F(TensorStoreTest, ResendIsAcceptedOnlyIfTheServerHoldsItsHeldBytes) {
  MakeStore();
  const std::vector<float> ones(2 * kChunk / 4, 1.0f);  // Two chunks.
  const auto a = Join("a", {{"w", ones}});
  const auto b = Join("b", {{"w", ones}});
  const std::vector<float> deltas(ones.size(), 0.5f);
  auto pa =
      store_->BeginPush(PushHeader{a, 1, UpdateKind::kDelta, 1.0, {{"w", 0}}});
  ASSERT_THAT(pa, IsOk());
  ASSERT_THAT((*pa)->AddChunk(0, 0, FloatBytes(deltas, 0, kChunk)), IsOk());
  pa->reset();  // a's call failed after its first chunk.

  EXPECT_THAT(Resend(a, 1, 0, 2 * kChunk + 4, deltas),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("past the end of tensor w")));
  // The server holds one chunk of a's push, not two.
  EXPECT_THAT(
      Resend(a, 1, 0, 2 * kChunk, deltas),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("no longer holds")));
  // Nor any chunk of a push it never saw.
  EXPECT_THAT(
      Resend(b, 1, 0, kChunk, deltas),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("no longer holds")));

  std::vector<float> overwritten = deltas;  // The result, in the first chunk.
  std::fill(overwritten.begin(), overwritten.begin() + kChunk / 4, 1.5f);
  ASSERT_THAT(Resend(a, 1, 0, kChunk, overwritten), IsOk());
  ASSERT_THAT(Resend(b, 1, 0, 0, deltas), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ::testing::Each(1.5f));  // 1 + (0.5 + 0.5) / 2.
}

// The defect this guards against: the server restarted from a snapshot
// taken before the round's chunks, so the round is open again with none of
// a's push. a's client had the first chunk of the result written over its
// update (a PushPull's result goes into the caller's buffers); resent as
// a's delta, it would be summed into the round as if a had computed it.
TEST_F(TensorStoreTest, ResendOfBytesARestoredServerNoLongerHoldsIsAborted) {
  MakeStore();
  const std::vector<float> ones(2 * kChunk / 4, 1.0f);  // Two chunks.
  const auto a = Join("a", {{"w", ones}});
  const auto b = Join("b", {{"w", ones}});
  const std::vector<float> zeros(ones.size(), 0.0f);
  ASSERT_THAT(Resend(a, 1, 0, 0, zeros), IsOk());
  ASSERT_THAT(Resend(b, 1, 0, 0, zeros), IsOk());
  // Version 1, w = 1; it keeps a's and b's completed pushes of round 0
  // (other sequences than the ones below).
  StoreState saved = store_->Save();
  const std::vector<float> deltas(ones.size(), 0.5f);
  auto pa =
      store_->BeginPush(PushHeader{a, 2, UpdateKind::kDelta, 1.0, {{"w", 1}}});
  auto pb =
      store_->BeginPush(PushHeader{b, 2, UpdateKind::kDelta, 1.0, {{"w", 1}}});
  ASSERT_THAT(pa, IsOk());
  ASSERT_THAT(pb, IsOk());
  ASSERT_THAT((*pa)->AddChunk(0, 0, FloatBytes(deltas, 0, kChunk)), IsOk());
  ASSERT_THAT((*pb)->AddChunk(0, 0, FloatBytes(deltas, 0, kChunk)), IsOk());
  ASSERT_EQ(store_->ReadResult("w", 1)->ready_bytes, kChunk);
  // a's client read that chunk of the result into its buffer; then the
  // server died and came back from the snapshot.
  std::vector<float> overwritten = deltas;
  std::fill(overwritten.begin(), overwritten.begin() + kChunk / 4,
            (*store_->ReadResult("w", 1)->value)[0]);
  pa->reset();
  pb->reset();
  auto restored = TensorStore::Restore(TestOptions(), std::move(saved));
  ASSERT_THAT(restored, IsOk());
  store_ = std::move(*restored);

  EXPECT_THAT(Resend(a, 2, 1, kChunk, overwritten),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("tensor w: this push's first 4096 bytes were "
                                 "delivered to a server that no longer holds "
                                 "them")));
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_EQ(store_->Describe("w")->contributed, 0u);
  EXPECT_THAT(Value("w"), ::testing::Each(1.0f));
  // a continues from the current value with a new push; b resends its
  // own, whose result it never read.
  EXPECT_THAT(Resend(a, 3, 1, 0, deltas), IsOk());
  EXPECT_THAT(Resend(b, 2, 1, 0, deltas), IsOk());
  EXPECT_EQ(Version("w"), 2u);
  EXPECT_THAT(Value("w"), ::testing::Each(1.5f));  // 1 + (0.5 + 0.5) / 2.
}

// Async: a PushPull's result arrives once the push was applied; a server
// restored from before it was applied never saw it.
TEST_F(TensorStoreTest,
       AsyncResendOfAPushARestoredServerNeverAppliedIsAborted) {
  MakeStore(Mode::kAsync);
  const auto a = Join("a", {{"w", {1}}});
  StoreState saved = store_->Save();  // Version 0, w = 1.
  ASSERT_THAT(Resend(a, 1, 0, 0, {0.5}), IsOk());
  ASSERT_THAT(Value("w"), ElementsAre(1.5f));
  // The result (1.5) is in a's buffer now. A resend to this server is a
  // duplicate; to the restored one it is refused.
  auto again = Resend(a, 1, 0, 4, {1.5});
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE((*again)[0].outcome.duplicate);
  StoreOptions options = TestOptions();
  options.mode = Mode::kAsync;
  auto restored = TensorStore::Restore(std::move(options), std::move(saved));
  ASSERT_THAT(restored, IsOk());
  store_ = std::move(*restored);
  EXPECT_THAT(
      Resend(a, 1, 0, 4, {1.5}),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("no longer holds")));
  EXPECT_THAT(Value("w"), ElementsAre(1.0f));
  EXPECT_EQ(Version("w"), 0u);
}

TEST_F(TensorStoreTest, EachCompletedPushIsReportedOnceBeforeItsRoundCloses) {
  std::vector<std::string> events;  // Appended outside every store lock.
  StoreOptions options = TestOptions();
  options.on_contribution = [&](const ContributionCounted& c) {
    events.push_back(absl::StrCat(c.tensor, " ", c.worker_id, " r", c.round,
                                  " n", c.contributed));
  };
  options.on_round_closed = [&](const RoundClosed& c) {
    events.push_back(absl::StrCat(c.tensor, " closed r", c.round));
  };
  MakeStoreWith(std::move(options));
  const auto a = Join("a", {{"w", std::vector<float>(3000)}});
  const auto b = Join("b", {{"w", std::vector<float>(3000)}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, std::vector<float>(3000, 1)}}), IsOk());
  // A resend of the same push is not counted, so not reported, again.
  ASSERT_THAT(Push(a, 1, {{"w", 0, std::vector<float>(3000, 1)}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, std::vector<float>(3000, 3)}}), IsOk());
  EXPECT_THAT(events, ElementsAre("w a r0 n1", "w b r0 n2", "w closed r0"));
}

TEST_F(TensorStoreTest, SecondContributionToSameRoundIsRefused) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());
  EXPECT_THAT(Push(a, 2, {{"w", 0, {9}}}),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(Push(a, 0, {{"w", 0, {9}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TensorStoreTest, BadChunksAreRefusedAndChangeNothing) {
  MakeStore();
  std::vector<float> value(2000, 0.5f);
  const auto a = Join("a", {{"w", value}});
  auto begin = [&] {
    return store_->BeginPush(
        PushHeader{a, 1, UpdateKind::kWeights, 1.0, {{"w", 0}}});
  };
  std::vector<float> payload(2000, 3.0f);
  {
    auto s = begin();
    ASSERT_THAT(s, IsOk());
    EXPECT_THAT((*s)->AddChunk(1, 0, FloatBytes(payload, 0, kChunk)),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    auto s = begin();
    EXPECT_THAT((*s)->AddChunk(0, kChunk, FloatBytes(payload, kChunk, 3808)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("expected offset 0")));
  }
  {
    auto s = begin();
    EXPECT_THAT((*s)->AddChunk(0, 8000, FloatBytes(payload, 0, 4)),
                StatusIs(absl::StatusCode::kOutOfRange));
  }
  {
    auto s = begin();
    EXPECT_THAT((*s)->AddChunk(0, 0, FloatBytes(payload, 0, 100)),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("expected 4096")));
  }
  {
    auto s = begin();
    std::vector<float> nan = payload;
    nan[5] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THAT((*s)->AddChunk(0, 0, FloatBytes(nan, 0, kChunk)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
    // The session is dead after an error.
    EXPECT_THAT((*s)->Finish(), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    auto s = begin();
    EXPECT_THAT((*s)->Finish(), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("after 0 of 8000")));
  }
  EXPECT_EQ(Version("w"), 0u);
  EXPECT_THAT(Value("w"), ::testing::Each(0.5f));
}

TEST_F(TensorStoreTest, RejectedPushDoesNotBlockTheNextOne) {
  MakeStore();
  const auto a = Join("a", {{"w", {0, 0}}});
  EXPECT_THAT(Push(a, 1, {{"w", 0, {1, NAN}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Nothing of sequence 1 was applied: a fresh sequence may take the round.
  ASSERT_THAT(Push(a, 2, {{"w", 0, {1, 2}}}), IsOk());
  EXPECT_THAT(Value("w"), ElementsAre(1, 2));
}

TEST_F(TensorStoreTest, InterruptedContributionResumesWithNewSequence) {
  MakeStore();
  const auto a = Join("a", {{"x", std::vector<float>(2000, 0)},
                            {"y", std::vector<float>(2000, 0)}});
  const auto b = Join("b", {{"x", std::vector<float>(2000, 0)},
                            {"y", std::vector<float>(2000, 0)}});
  std::vector<float> bad(2000, 1.0f);
  bad[1500] = NAN;  // In y's second chunk: x and y's first chunk are in.
  EXPECT_THAT(
      Push(a, 1, {{"x", 0, std::vector<float>(2000, 1)}, {"y", 0, bad}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
  // The client moves to a new sequence; the round resumes where it stopped.
  ASSERT_THAT(Push(a, 2,
                   {{"x", 0, std::vector<float>(2000, 1)},
                    {"y", 0, std::vector<float>(2000, 1)}}),
              IsOk());
  ASSERT_THAT(Push(b, 1,
                   {{"x", 0, std::vector<float>(2000, 3)},
                    {"y", 0, std::vector<float>(2000, 3)}}),
              IsOk());
  EXPECT_EQ(Version("x"), 1u);
  EXPECT_EQ(Version("y"), 1u);
  EXPECT_THAT(Value("x"), ::testing::Each(2.0f));  // Each chunk counted once.
  EXPECT_THAT(Value("y"), ::testing::Each(2.0f));
}

TEST_F(TensorStoreTest, PushSupersededByANewerOneIsAborted) {
  MakeStore();
  const auto a = Join("a", {{"w", {0, 0}}});
  Join("b", {{"w", {0, 0}}});
  const std::vector<float> value = {4, 4};
  auto first = store_->BeginPush({a, 1, UpdateKind::kWeights, 1, {{"w", 0}}});
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT((*first)->AddChunk(0, 0, FloatBytes(value, 0, 8)), IsOk());
  // A newer push of the same worker takes over the contribution (its chunk
  // was delivered already, so it is not counted again) and completes it.
  auto second = store_->BeginPush({a, 2, UpdateKind::kWeights, 1, {{"w", 0}}});
  ASSERT_THAT(second, IsOk());
  ASSERT_THAT((*second)->AddChunk(0, 0, FloatBytes(value, 0, 8)), IsOk());
  ASSERT_THAT((*second)->Finish(), IsOk());
  EXPECT_THAT((*first)->Finish(),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("superseded")));
  EXPECT_EQ(store_->Describe("w")->contributed, 1u);
}

TEST_F(TensorStoreTest, SequenceReusedForAnotherKindIsRefused) {
  MakeStore();
  const auto a = Join("a", {{"w", std::vector<float>(2000, 0)}});
  Join("b", {{"w", std::vector<float>(2000, 0)}});
  auto first = store_->BeginPush({a, 1, UpdateKind::kWeights, 1, {{"w", 0}}});
  ASSERT_THAT(first, IsOk());
  std::vector<float> ones(2000, 1.0f);
  ASSERT_THAT((*first)->AddChunk(0, 0, FloatBytes(ones, 0, kChunk)), IsOk());
  auto other = store_->BeginPush({a, 1, UpdateKind::kDelta, 1, {{"w", 0}}});
  EXPECT_THAT(other, StatusIs(absl::StatusCode::kInvalidArgument,
                              HasSubstr("different round or update kind")));
}

TEST_F(TensorStoreTest, WeightOutsideFloatRangeIsRefused) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  EXPECT_THAT(Push(a, 1, {{"w", 0, {1}}}, /*weight=*/1e39),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("[")));
  EXPECT_THAT(Push(a, 2, {{"w", 0, {1}}}, /*weight=*/1e-46),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Value("w"), ElementsAre(0));
}

TEST_F(TensorStoreTest, OverflowingMeanKeepsTheOldChunk) {
  MakeStore();
  const auto a = Join("a", {{"w", {1, 2}}});
  const auto b = Join("b", {{"w", {1, 2}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {3e38f, 4}}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {3e38f, 6}}}), IsOk());
  // 3e38 + 3e38 overflows float32: the chunk keeps its value, reported.
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ElementsAre(1, 2));
  absl::MutexLock lock(&closed_mu_);
  ASSERT_EQ(closed_.size(), 1u);
  EXPECT_EQ(closed_[0].non_finite_chunks, 1u);
}

TEST_F(TensorStoreTest, JoinLimitsRankAndNeedsAValueForNewTensors) {
  MakeStore();
  EXPECT_THAT(
      store_->Join("a",
                   {Declaration{"w", std::vector<std::int64_t>(33, 1), {0}}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("33 dimensions")));
  EXPECT_THAT(
      store_->Join("a", {Declaration{"w", {2}, {}}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("initial value")));
  Join("a", {{"w", {5, 6}}});
  // An existing tensor needs no value (the server ignores it anyway).
  auto joined = store_->Join("b", {Declaration{"w", {2}, {}}});
  ASSERT_THAT(joined, IsOk());
  EXPECT_THAT(Value("w"), ElementsAre(5, 6));
}

TEST_F(TensorStoreTest, BadHeadersAreRefused) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  Join("b", {{"v", {0}}});
  using E = PushHeader::Entry;
  EXPECT_THAT(store_->BeginPush({0, 1, UpdateKind::kWeights, 1, {E{"w", 0}}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("call Join first")));
  EXPECT_THAT(store_->BeginPush({a, 1, UpdateKind::kWeights, 1, {E{"x", 0}}}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->BeginPush({a, 1, UpdateKind::kWeights, 1, {E{"v", 0}}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("did not declare")));
  EXPECT_THAT(store_->BeginPush({a, 1, UpdateKind::kWeights, -1, {E{"w", 0}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->BeginPush(
                  {a, 1, UpdateKind::kWeights, 1, {E{"w", 0}, E{"w", 0}}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
  std::vector<E> too_many(kMaxTensorsPerCall + 1, E{"w", 0});
  EXPECT_THAT(store_->BeginPush({a, 1, UpdateKind::kWeights, 1, too_many}),
              StatusIs(absl::StatusCode::kResourceExhausted));
  std::vector<Declaration> declarations(kMaxTensorsPerCall + 1,
                                        Declaration{"w", {1}, {}});
  EXPECT_THAT(store_->Join("c", std::move(declarations)),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(TensorStoreTest, AsyncAppliesEveryPushOnArrival) {
  MakeStore(Mode::kAsync, /*server_lr=*/0.1);
  const auto a = Join("a", {{"w", {0, 0}}});
  Join("b", {{"w", {0, 0}}});
  auto pushed = Push(a, 1, {{"w", 0, {4, 8}}});
  ASSERT_THAT(pushed, IsOk());
  EXPECT_EQ((*pushed)[0].outcome.ready_version, 1u);
  EXPECT_THAT(Value("w"), ElementsAre(2, 4));  // Halfway toward the push.
  ASSERT_THAT(Push(a, 2, {{"w", 0, {10, 20}}}, 1, UpdateKind::kDelta), IsOk());
  EXPECT_THAT(Value("w"), ElementsAre(3, 6));  // += 0.1 * delta.
  EXPECT_EQ(Version("w"), 2u);
  // A resend is a duplicate; a stale sequence is aborted.
  auto again = Push(a, 2, {{"w", 0, {10, 20}}}, 1, UpdateKind::kDelta);
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE((*again)[0].outcome.duplicate);
  EXPECT_THAT(Push(a, 1, {{"w", 0, {1, 1}}}),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(Value("w"), ElementsAre(3, 6));
}

TEST_F(TensorStoreTest, AsyncPushAppliesWholeOrNotAtAll) {
  MakeStore(Mode::kAsync);
  std::vector<float> initial(3000, 1.0f);
  const auto a = Join("a", {{"w", initial}});
  const auto b = Join("b", {{"w", initial}});
  // a's push breaks after one chunk; b's push completes meanwhile.
  auto partial = store_->BeginPush({a, 1, UpdateKind::kWeights, 1, {{"w", 0}}});
  ASSERT_THAT(partial, IsOk());
  std::vector<float> big(3000, 101.0f);
  ASSERT_THAT((*partial)->AddChunk(0, 0, FloatBytes(big, 0, kChunk)), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, std::vector<float>(3000, 3.0f)}}), IsOk());
  EXPECT_THAT(Value("w"), ::testing::Each(2.0f));  // Only b's push.
  partial->reset();
  // A push with NaN in its last chunk applies nothing.
  std::vector<float> nan(3000, 5.0f);
  nan[2999] = NAN;
  EXPECT_THAT(Push(a, 2, {{"w", 0, nan}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Value("w"), ::testing::Each(2.0f));
  EXPECT_EQ(Version("w"), 1u);
  // A delta in flight does not block weights pushes.
  auto delta = store_->BeginPush({a, 3, UpdateKind::kDelta, 1, {{"w", 0}}});
  ASSERT_THAT(delta, IsOk());
  ASSERT_THAT((*delta)->AddChunk(0, 0, FloatBytes(big, 0, kChunk)), IsOk());
  EXPECT_THAT(Push(b, 2, {{"w", 0, std::vector<float>(3000, 2.0f)}}), IsOk());
}

TEST_F(TensorStoreTest, AsyncOverflowIsRefusedWhole) {
  MakeStore(Mode::kAsync, /*server_lr=*/1.0);
  const auto a = Join("a", {{"w", {3e38f, 1}}});
  EXPECT_THAT(
      Push(a, 1, {{"w", 0, {3e38f, 1}}}, 1, UpdateKind::kDelta),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")));
  EXPECT_THAT(Value("w"), ElementsAre(3e38f, 1));
}

// Workers push and pull concurrently in async mode while pulls hold old
// values; every pushed value is a constant, so every value ever published
// must be constant too (no torn or half-applied pushes).
TEST_F(TensorStoreTest, ConcurrentAsyncPushesNeverTear) {
  MakeStore(Mode::kAsync);
  constexpr int kWorkers = 4;
  constexpr int kPushes = 50;
  const std::vector<float> zero(2500, 0.0f);
  std::vector<std::uint64_t> leases;
  for (int w = 0; w < kWorkers; ++w) {
    leases.push_back(Join("w" + std::to_string(w), {{"t", zero}}));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      for (int p = 0; p < kPushes; ++p) {
        std::vector<float> mine(zero.size(), static_cast<float>(w + p));
        if (!Push(leases[w], p + 1, {{"t", 0, mine}}).ok()) ++failures;
        auto read = store_->Read({"t"});
        if (!read.ok()) {
          ++failures;
          continue;
        }
        const std::vector<float>& v = *(*read)[0].value;
        for (float f : v) {
          if (f != v[0]) {
            ++failures;
            break;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(Version("t"), static_cast<std::uint64_t>(kWorkers * kPushes));
}

TEST_F(TensorStoreTest, RoundKeepsNoPerWorkerBuffers) {
  MakeStore();
  constexpr int kWorkers = 8;
  const std::vector<float> zero(64 * 1024, 0.0f);  // 256 KiB, 64 chunks.
  std::vector<std::uint64_t> leases;
  for (int w = 0; w < kWorkers; ++w) {
    leases.push_back(Join("w" + std::to_string(w), {{"t", zero}}));
  }
  std::vector<std::unique_ptr<PushSession>> sessions;
  const std::vector<float> ones(zero.size(), 1.0f);
  for (int w = 0; w < kWorkers; ++w) {
    auto s = store_->BeginPush(
        PushHeader{leases[w], 1, UpdateKind::kWeights, 1.0, {{"t", 0}}});
    ASSERT_THAT(s, IsOk());
    // Every worker has half its payload in flight at once.
    for (std::uint64_t off = 0; off < zero.size() * 2; off += kChunk) {
      ASSERT_THAT((*s)->AddChunk(0, off, FloatBytes(ones, off, kChunk)),
                  IsOk());
    }
    sessions.push_back(std::move(*s));
  }
  const std::uint64_t tensor_bytes = zero.size() * 4;
  // Value plus one accumulator (and per-chunk weights), whatever W is.
  EXPECT_LE(store_->AllocatedBytes(), 2 * tensor_bytes + 4096);
  EXPECT_GE(store_->AllocatedBytes(), 2 * tensor_bytes);
}

// A value a reader holds is never written again, in either mode: a round
// or async push writes new storage, and the old storage is reused only once
// nobody holds it.
TEST_F(TensorStoreTest, HeldValueStaysIntactAcrossRounds) {
  for (Mode mode : {Mode::kSync, Mode::kAsync}) {
    MakeStore(mode);
    const auto a = Join("a", {{"w", std::vector<float>(3000, 1.0f)}});
    auto held = store_->Read({"w"});
    ASSERT_THAT(held, IsOk());
    for (std::uint64_t r = 0; r < 3; ++r) {
      ASSERT_THAT(Push(a, r + 1, {{"w", r, std::vector<float>(3000, 9.0f)}}),
                  IsOk());
    }
    EXPECT_THAT(*(*held)[0].value, ::testing::Each(1.0f));
    EXPECT_NE(Value("w")[0], 1.0f);
    held->clear();
    // value + accumulator (or one recycled buffer), chunk weights: no more.
    EXPECT_LE(store_->AllocatedBytes(), 2 * 3000 * 4 + 1024);
  }
}

TEST_F(TensorStoreTest, WaitForVersionsFiresWhenAllArrive) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}, {"y", {0}}});
  std::vector<absl::Status> fired;
  auto wait = store_->WaitForVersions(
      {{"x", 1}, {"y", 1}}, [&](absl::Status s) { fired.push_back(s); });
  ASSERT_THAT(wait, IsOk());
  ASSERT_THAT(Push(a, 1, {{"x", 0, {1}}}), IsOk());
  EXPECT_TRUE(fired.empty());
  ASSERT_THAT(Push(a, 2, {{"y", 0, {1}}}), IsOk());
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_THAT(fired[0], IsOk());
  EXPECT_FALSE((*wait)->Cancel());
}

TEST_F(TensorStoreTest, WaitAlreadySatisfiedFiresImmediately) {
  MakeStore();
  Join("a", {{"x", {0}}});
  int fired = 0;
  auto wait =
      store_->WaitForVersions({{"x", 0}}, [&](absl::Status) { ++fired; });
  ASSERT_THAT(wait, IsOk());
  EXPECT_EQ(fired, 1);
  EXPECT_THAT(store_->WaitForVersions({{"nope", 0}}, [](absl::Status) {}),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(TensorStoreTest, CancelledWaitNeverFires) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}});
  int fired = 0;
  auto wait =
      store_->WaitForVersions({{"x", 1}}, [&](absl::Status) { ++fired; });
  ASSERT_THAT(wait, IsOk());
  EXPECT_TRUE((*wait)->Cancel());
  ASSERT_THAT(Push(a, 1, {{"x", 0, {1}}}), IsOk());
  EXPECT_EQ(fired, 0);
}

TEST_F(TensorStoreTest, CloseFailsWaitersAndRefusesWork) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}});
  std::vector<absl::Status> fired;
  auto wait = store_->WaitForVersions(
      {{"x", 5}}, [&](absl::Status s) { fired.push_back(s); });
  ASSERT_THAT(wait, IsOk());
  store_->Close();
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_THAT(fired[0], StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Push(a, 1, {{"x", 0, {1}}}),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store_->Join("b", {Declaration{"x", {1}, {0}}}),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TensorStoreTest, BarrierReleasesWhenCountArrivesAndResets) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}});
  const auto b = Join("b", {{"x", {0}}});
  std::vector<std::string> released;
  auto wa = store_->EnterBarrier(a, "start", 2, [&](absl::Status s) {
    EXPECT_THAT(s, IsOk());
    released.push_back("a");
  });
  ASSERT_THAT(wa, IsOk());
  EXPECT_TRUE(released.empty());
  EXPECT_THAT(
      store_->EnterBarrier(b, "start", 3, [](absl::Status) {}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("waiting for 2")));
  auto wb = store_->EnterBarrier(
      b, "start", 2, [&](absl::Status) { released.push_back("b"); });
  ASSERT_THAT(wb, IsOk());
  EXPECT_THAT(released, ::testing::UnorderedElementsAre("a", "b"));
  // The next generation starts empty.
  int next = 0;
  auto again =
      store_->EnterBarrier(a, "start", 2, [&](absl::Status) { ++next; });
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(next, 0);
  EXPECT_TRUE((*again)->Cancel());
  EXPECT_THAT(store_->EnterBarrier(0, "start", 2, [](absl::Status) {}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->EnterBarrier(a, "", 2, [](absl::Status) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->EnterBarrier(a, "s", 0, [](absl::Status) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->EnterBarrier(a, "s", (1u << 20) + 1, [](absl::Status) {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TensorStoreTest, BarrierReentryAbortsTheEarlierCall) {
  MakeStore();
  const auto a = Join("a", {{"w", {0}}});
  std::vector<absl::Status> first;
  auto w1 = store_->EnterBarrier(a, "s", 2,
                                 [&](absl::Status s) { first.push_back(s); });
  ASSERT_THAT(w1, IsOk());
  auto w2 = store_->EnterBarrier(a, "s", 2, [](absl::Status) {});
  ASSERT_THAT(w2, IsOk());
  ASSERT_EQ(first.size(), 1u);
  EXPECT_THAT(first[0], StatusIs(absl::StatusCode::kAborted,
                                 HasSubstr("entered barrier s again")));
  EXPECT_TRUE((*w2)->Cancel());  // Still one waiter, not two.
}

TEST_F(TensorStoreTest, CancelledBarrierEntryDoesNotCount) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}});
  const auto b = Join("b", {{"x", {0}}});
  const auto c = Join("c", {{"x", {0}}});
  int fired = 0;
  auto wa = store_->EnterBarrier(a, "s", 2, [&](absl::Status) { ++fired; });
  ASSERT_THAT(wa, IsOk());
  EXPECT_TRUE((*wa)->Cancel());
  auto wb = store_->EnterBarrier(b, "s", 2, [&](absl::Status) { ++fired; });
  EXPECT_EQ(fired, 0);  // a's cancelled entry is gone.
  auto wc = store_->EnterBarrier(c, "s", 2, [&](absl::Status) { ++fired; });
  EXPECT_EQ(fired, 2);
}

TEST_F(TensorStoreTest, CloseFailsBarrierWaiters) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}});
  std::vector<absl::Status> fired;
  auto wait = store_->EnterBarrier(a, "s", 2,
                                   [&](absl::Status s) { fired.push_back(s); });
  ASSERT_THAT(wait, IsOk());
  store_->Close();
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_THAT(fired[0], StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store_->EnterBarrier(a, "s", 1, [](absl::Status) {}),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TensorStoreTest, BarrierLetsWorkersBeyondItsCountPass) {
  MakeStore();
  std::vector<std::uint64_t> leases;
  for (int i = 0; i < 6; ++i) {
    leases.push_back(Join(absl::StrCat("w", i), {{"x", {0}}}));
  }
  int passed = 0;
  std::vector<std::unique_ptr<Wait>> waits;
  for (int i = 0; i < 6; ++i) {
    auto wait =
        store_->EnterBarrier(leases[i], "start", 4, [&](absl::Status s) {
          EXPECT_THAT(s, IsOk());
          ++passed;
        });
    ASSERT_THAT(wait, IsOk());
    waits.push_back(std::move(*wait));
    // The first 4 are released together; the 5th and 6th are late for that
    // release and pass at once instead of waiting for 2 more forever.
    EXPECT_EQ(passed, i < 3 ? 0 : i + 1) << "after entry " << i;
  }
}

TEST_F(TensorStoreTest, BarrierNumbersArrivalsAndLateWorkers) {
  MakeStore();
  const auto a = Join("a", {{"x", {0}}});
  const auto b = Join("b", {{"x", {0}}});
  BarrierPass pa, pb, pc;
  auto wb = store_->EnterBarrier(
      b, "s", 2, [](absl::Status) {}, &pb);
  auto wa = store_->EnterBarrier(
      a, "s", 2, [](absl::Status) {}, &pa);
  ASSERT_THAT(wa, IsOk());
  EXPECT_EQ(pb.arrival, 0u);
  EXPECT_EQ(pa.arrival, 1u);
  EXPECT_EQ(pa.generation, 1u);
  // c joins after the release: late, it passes at once as the third.
  const auto c = Join("c", {{"x", {0}}});
  int fired = 0;
  auto wc = store_->EnterBarrier(
      c, "s", 2, [&](absl::Status) { ++fired; }, &pc);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(pc.arrival, 2u);
  EXPECT_EQ(pc.generation, 1u);
  // a took part in release 1: it waits for generation 2.
  fired = 0;
  auto again = store_->EnterBarrier(a, "s", 2, [&](absl::Status) { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_EQ(store_->Status().barriers.size(), 1u);
  EXPECT_EQ(store_->Status().barriers[0].waiting, 1u);
  EXPECT_EQ(store_->Status().barriers[0].released, 1u);
  // Once every member that passed has left, the barrier starts afresh: a
  // second job's workers wait for each other again.
  ASSERT_TRUE((*again)->Cancel());
  for (auto lease : {a, b, c}) ASSERT_THAT(store_->Leave(lease), IsOk());
  const auto d = Join("d", {{"x", {0}}});
  fired = 0;
  auto wd = store_->EnterBarrier(d, "s", 2, [&](absl::Status) { ++fired; });
  EXPECT_EQ(fired, 0);
}

TEST_F(TensorStoreTest, JoinOfAnIdHeldByAnotherProcessIsRefused) {
  MakeStore();
  const auto first = Join("a", {{"w", {1}}});
  // Another process (no instance, or another one) takes the same id: refused
  // while the first one's lease is live, naming the holder; nothing changes.
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1}, {5}}}),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("held by another live process")));
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1}, {5}}},
                           Claimant{7, "ipv4:10.0.0.9:1234"}),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(store_->Heartbeat(first), IsOk());
  EXPECT_EQ(store_->Describe("w")->participants, 1u);
  EXPECT_THAT(Value("w"), ElementsAre(1));
}

TEST_F(TensorStoreTest, SameProcessRejoinTakesItsMembershipBack) {
  MakeStore();
  auto first = store_->Join("a", {Declaration{"w", {1}, {1}}},
                            Claimant{42, "ipv4:127.0.0.1:5000"});
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->takeover, Takeover::kNone);
  EXPECT_THAT(
      store_->Join("a", {Declaration{"w", {1}, {1}}}, Claimant{43, ""}),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("127.0.0.1:5000")));
  auto again = store_->Join("a", {Declaration{"w", {1}, {1}}},
                            Claimant{42, "ipv4:127.0.0.1:5001"});
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->takeover, Takeover::kSameProcess);
  EXPECT_THAT(store_->Heartbeat(first->lease_id),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(store_->Status().workers[0].peer, "ipv4:127.0.0.1:5001");
}

TEST_F(TensorStoreTest, ARefusedHeaderDoesNotUseUpItsSequence) {
  MakeStore();
  const Claimant process{3, ""};
  auto joined = store_->Join("a", {Declaration{"w", {2}, {0, 0}}}, process);
  ASSERT_THAT(joined, IsOk());
  ASSERT_EQ(joined->next_sequence, 1u);
  // Refused at its header (unknown tensor, bad weight): nothing is used.
  EXPECT_THAT(Push(joined->lease_id, 5, {{"nope", 0, {1, 1}}}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Push(joined->lease_id, 6, {{"w", 0, {1, 1}}}, /*weight=*/0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto again = store_->Join("a", {Declaration{"w", {2}, {}}}, process);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->next_sequence, 1u);
  // Accepted header, then a bad chunk: the number is used.
  auto session = store_->BeginPush(
      PushHeader{again->lease_id, 3, UpdateKind::kWeights, 1.0, {{"w", 0}}});
  ASSERT_THAT(session, IsOk());
  EXPECT_THAT((*session)->AddChunk(0, 0, absl::string_view("xyz")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto third = store_->Join("a", {Declaration{"w", {2}, {}}}, process);
  ASSERT_THAT(third, IsOk());
  EXPECT_EQ(third->next_sequence, 4u);
}

TEST_F(TensorStoreTest, RejoinIsNeverCountedTwice) {
  MakeStore();
  const Claimant process{1, ""};
  auto joined = store_->Join("a", {Declaration{"w", {1}, {0}}}, process);
  ASSERT_THAT(joined, IsOk());
  const auto a = joined->lease_id;
  Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}), IsOk());
  // a re-joins (a network cut): its old lease dies, its contribution stays.
  auto rejoined = store_->Join("a", {Declaration{"w", {1}, {0}}}, process);
  ASSERT_THAT(rejoined, IsOk());
  EXPECT_EQ(rejoined->next_sequence, 2u);
  EXPECT_THAT(Push(a, 2, {{"w", 0, {2}}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Push(rejoined->lease_id, 2, {{"w", 0, {2}}}),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(store_->Describe("w")->participants, 2u);
}

// The pipelined round: a chunk of the result is published (final) once
// every member delivered its copy, before the round closes, and a wait for
// the first bytes of the result fires then.
TEST_F(TensorStoreTest, ResultChunksArePublishedOnceEveryMemberDeliveredThem) {
  MakeStore();
  const std::vector<float> zero(3 * kChunk / 4, 0.0f);  // Three chunks.
  const auto a = Join("a", {{"w", zero}});
  const auto b = Join("b", {{"w", zero}});
  const std::vector<float> twos(zero.size(), 2.0f), fours(zero.size(), 4.0f);
  auto pa = BeginRoundZero(a);
  auto pb = BeginRoundZero(b);
  ASSERT_NE(pa, nullptr);
  ASSERT_NE(pb, nullptr);
  for (std::uint64_t off = 0; off < 3 * kChunk; off += kChunk) {
    ASSERT_THAT(pa->AddChunk(0, off, FloatBytes(twos, off, kChunk)), IsOk());
  }
  auto result = store_->ReadResult("w", 0);
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->version, 1u);
  EXPECT_EQ(result->ready_bytes, 0u);  // b delivered nothing yet.

  std::vector<absl::Status> fired;
  auto wait = store_->WaitForResult(
      "w", 1, 2 * kChunk, [&](absl::Status s) { fired.push_back(s); });
  ASSERT_THAT(wait, IsOk());
  ASSERT_THAT(pb->AddChunk(0, 0, FloatBytes(fours, 0, kChunk)), IsOk());
  result = store_->ReadResult("w", 0);
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->ready_bytes, kChunk);
  EXPECT_EQ((*result->value)[0], 3.0f);  // Averaged, before the round closed.
  EXPECT_EQ((*result->value)[kChunk / 4 - 1], 3.0f);
  EXPECT_TRUE(fired.empty());  // It waits for two chunks.
  EXPECT_EQ(Version("w"), 0u);

  ASSERT_THAT(pb->AddChunk(0, kChunk, FloatBytes(fours, kChunk, kChunk)),
              IsOk());
  EXPECT_THAT(fired, ElementsAre(IsOk()));
  ASSERT_THAT(
      pb->AddChunk(0, 2 * kChunk, FloatBytes(fours, 2 * kChunk, kChunk)),
      IsOk());
  EXPECT_EQ(store_->ReadResult("w", 0)->ready_bytes, 3 * kChunk);
  EXPECT_EQ(Version("w"), 0u);  // Closed by the pushes' Finish only.
  ASSERT_THAT(pa->Finish(), IsOk());
  ASSERT_THAT(pb->Finish(), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  // The published value is the storage the result was read from.
  auto read = store_->Read({"w"});
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ((*read)[0].value.get(), result->value.get());
  EXPECT_THAT(*(*read)[0].value, ::testing::Each(3.0f));
  // The closed round's result is still readable whole; older ones are not.
  EXPECT_EQ(store_->ReadResult("w", 0)->ready_bytes, 3 * kChunk);
  EXPECT_THAT(
      store_->ReadResult("w", 5),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("not being made")));
}

// A worker that joins once the open round publishes its result is not
// waited for: its push to that round is refused, the round closes without
// it, and it takes part from the next one.
TEST_F(TensorStoreTest,
       AWorkerJoiningWhileTheResultPublishesTakesTheNextRound) {
  MakeStore();
  const std::vector<float> zero(2 * kChunk / 4, 0.0f);
  const auto a = Join("a", {{"w", zero}});
  const auto b = Join("b", {{"w", zero}});
  const std::vector<float> ones(zero.size(), 1.0f);
  auto pa = BeginRoundZero(a);
  auto pb = BeginRoundZero(b);
  ASSERT_NE(pa, nullptr);
  ASSERT_NE(pb, nullptr);
  ASSERT_THAT(pa->AddChunk(0, 0, FloatBytes(ones, 0, kChunk)), IsOk());
  ASSERT_THAT(pb->AddChunk(0, 0, FloatBytes(ones, 0, kChunk)), IsOk());
  ASSERT_EQ(store_->ReadResult("w", 0)->ready_bytes, kChunk);

  const auto c = Join("c", {{"w", zero}});
  EXPECT_THAT(Push(c, 1, {{"w", 0, ones}}),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("takes part from round 1")));
  for (auto& p : {&pa, &pb}) {
    ASSERT_THAT((*p)->AddChunk(0, kChunk, FloatBytes(ones, kChunk, kChunk)),
                IsOk());
    ASSERT_THAT((*p)->Finish(), IsOk());
  }
  EXPECT_EQ(Version("w"), 1u);  // Not waiting for c.
  // Round 1 waits for all three.
  ASSERT_THAT(Push(a, 2, {{"w", 1, ones}}), IsOk());
  ASSERT_THAT(Push(b, 2, {{"w", 1, ones}}), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  ASSERT_THAT(Push(c, 2, {{"w", 1, ones}}), IsOk());
  EXPECT_EQ(Version("w"), 2u);
}

// A member that leaves stops being waited for; published chunks then lack
// its copy, so if it comes back its push to that round cannot add to them.
TEST_F(TensorStoreTest, AWorkerTheRoundStoppedWaitingForCannotRewriteIt) {
  MakeStore();
  const std::vector<float> zero(2 * kChunk / 4, 0.0f);
  const auto a = Join("a", {{"w", zero}});
  const auto b = Join("b", {{"w", zero}});
  const std::vector<float> ones(zero.size(), 1.0f), fives(zero.size(), 5.0f);
  auto pa = BeginRoundZero(a);
  auto pb = BeginRoundZero(b);
  ASSERT_NE(pa, nullptr);
  ASSERT_NE(pb, nullptr);
  ASSERT_THAT(pa->AddChunk(0, 0, FloatBytes(ones, 0, kChunk)), IsOk());
  ASSERT_THAT(pa->AddChunk(0, kChunk, FloatBytes(ones, kChunk, kChunk)),
              IsOk());
  ASSERT_THAT(pb->AddChunk(0, 0, FloatBytes(fives, 0, kChunk)), IsOk());
  ASSERT_EQ(store_->ReadResult("w", 0)->ready_bytes, kChunk);

  ASSERT_THAT(store_->Leave(b), IsOk());  // a's copy alone: published.
  EXPECT_EQ(store_->ReadResult("w", 0)->ready_bytes, 2 * kChunk);
  const auto b2 = Join("b", {{"w", zero}});
  auto resumed = store_->BeginPush(
      PushHeader{b2, 2, UpdateKind::kWeights, 1.0, {{"w", 0}}});
  ASSERT_THAT(resumed, IsOk());
  ASSERT_THAT((*resumed)->AddChunk(0, 0, FloatBytes(fives, 0, kChunk)),
              IsOk());  // Delivered before: skipped.
  EXPECT_THAT(
      (*resumed)->AddChunk(0, kChunk, FloatBytes(fives, kChunk, kChunk)),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("published up to byte")));
  ASSERT_THAT(pa->Finish(), IsOk());
  EXPECT_EQ(Version("w"), 1u);  // Not waiting for b.
  const std::vector<float> value = Value("w");
  EXPECT_EQ(value.front(), 3.0f);  // a and b's first chunk.
  EXPECT_EQ(value.back(), 1.0f);   // a's alone.
}

class LeaseTest : public TensorStoreTest {
 protected:
  void SetUp() override {
    StoreOptions options = TestOptions();
    options.lease_timeout = absl::Seconds(6);
    options.now = [this] { return now_; };
    options.on_worker_expired = [this](const WorkerExpired& e) {
      expired_.push_back(e);
    };
    MakeStoreWith(std::move(options));
  }
  void Advance(absl::Duration d) { now_ += d; }

  absl::Time now_ = absl::UnixEpoch();
  std::vector<WorkerExpired> expired_;
};

TEST_F(LeaseTest, SilentWorkerExpiresAndTheRoundClosesWithoutIt) {
  const auto a = Join("a", {{"w", {0}}, {"own", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  Advance(absl::Seconds(5));
  ASSERT_THAT(Push(a, 1, {{"w", 0, {4}}}), IsOk());  // Renews a.
  EXPECT_EQ(store_->ExpireLeases(), 0);
  Advance(absl::Seconds(2));  // b silent for 7 s, a for 2 s.
  EXPECT_EQ(store_->ExpireLeases(), 1);
  ASSERT_EQ(expired_.size(), 1u);
  EXPECT_EQ(expired_[0].worker_id, "b");
  EXPECT_THAT(expired_[0].tensors, ElementsAre("w"));
  EXPECT_EQ(expired_[0].silent_for, absl::Seconds(7));
  // The round waited only on b: it closed with a's contribution alone.
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ElementsAre(4));
  EXPECT_EQ(store_->Describe("w")->participants, 1u);
  // b's late push is refused until it re-joins; then it is in the group once.
  EXPECT_THAT(Push(b, 1, {{"w", 0, {100}}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store_->Heartbeat(b),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  auto rejoined = store_->Join("b", {Declaration{"w", {1}, {}}});
  ASSERT_THAT(rejoined, IsOk());
  EXPECT_EQ(rejoined->tensors[0].info.version, 1u);
  EXPECT_EQ(store_->Describe("w")->participants, 2u);
  // A push for the round that closed without it is aborted, not mixed in.
  EXPECT_THAT(Push(rejoined->lease_id, 2, {{"w", 0, {100}}}),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(Value("w"), ElementsAre(4));
}

TEST_F(LeaseTest, AnOpenWaitKeepsTheLeaseAlive) {
  const auto a = Join("a", {{"w", {0}}});
  Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {4}}}), IsOk());
  // a waits for the round (a PushPull) and makes no other call meanwhile;
  // b makes no call at all.
  bool fired = false;
  auto wait = store_->WaitForVersions(
      {{"w", 1}}, [&](absl::Status) { fired = true; }, a);
  ASSERT_THAT(wait, IsOk());
  Advance(absl::Seconds(7));
  EXPECT_EQ(store_->ExpireLeases(), 1);
  ASSERT_EQ(expired_.size(), 1u);
  EXPECT_EQ(expired_[0].worker_id, "b");
  EXPECT_TRUE(fired);  // The round closed without b.
  EXPECT_THAT(store_->Heartbeat(a), IsOk());
  // The call ends: that counts as a's last call.
  Advance(absl::Seconds(1));
  wait->reset();
  Advance(absl::Seconds(5));
  EXPECT_EQ(store_->ExpireLeases(), 0);
  Advance(absl::Seconds(2));
  EXPECT_EQ(store_->ExpireLeases(), 1);
}

TEST_F(LeaseTest, AWaitingBarrierKeepsTheLeaseAlive) {
  const auto a = Join("a", {{"w", {0}}});
  auto wait = store_->EnterBarrier(a, "s", 2, [](absl::Status) {});
  ASSERT_THAT(wait, IsOk());
  Advance(absl::Seconds(60));
  EXPECT_EQ(store_->ExpireLeases(), 0);
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1}, {}}}),
              StatusIs(absl::StatusCode::kAborted));
}

TEST_F(LeaseTest, LapsedOrRestoredMembershipIsTakenByAnyProcess) {
  const auto a = Join("a", {{"w", {0}}});
  Advance(absl::Seconds(7));
  // Expired but not yet swept: taken over, not refused.
  auto taken = store_->Join("a", {Declaration{"w", {1}, {}}}, Claimant{9, ""});
  ASSERT_THAT(taken, IsOk());
  EXPECT_EQ(taken->takeover, Takeover::kLapsed);
  EXPECT_THAT(store_->Heartbeat(a),
              StatusIs(absl::StatusCode::kFailedPrecondition));

  // After a restart from a snapshot the restored membership is claimed by
  // the first Join of that id, whatever its instance, at once.
  StoreOptions options = TestOptions();
  options.now = [this] { return now_; };
  auto restored = TensorStore::Restore(options, store_->Save());
  ASSERT_THAT(restored, IsOk());
  store_ = std::move(*restored);
  auto claimed =
      store_->Join("a", {Declaration{"w", {1}, {}}}, Claimant{5, ""});
  ASSERT_THAT(claimed, IsOk());
  EXPECT_EQ(claimed->takeover, Takeover::kRestored);
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1}, {}}}, Claimant{6, ""}),
              StatusIs(absl::StatusCode::kAborted));
}

TEST_F(LeaseTest, HeartbeatsKeepALeaseAlive) {
  const auto a = Join("a", {{"w", {0}}});
  for (int i = 0; i < 5; ++i) {
    Advance(absl::Seconds(5));
    ASSERT_THAT(store_->Heartbeat(a), IsOk());
    EXPECT_EQ(store_->ExpireLeases(), 0);
  }
  Advance(absl::Seconds(6));
  EXPECT_EQ(store_->ExpireLeases(), 1);
  EXPECT_TRUE(store_->Status().workers.empty());
}

class QuorumTest : public TensorStoreTest {
 protected:
  void MakeQuorumStore(RoundQuorum quorum, absl::Duration timeout) {
    StoreOptions options = TestOptions();
    options.round_quorum = quorum;
    options.round_timeout = timeout;
    options.now = [this] { return now_; };
    MakeStoreWith(std::move(options));
  }
  absl::Time now_ = absl::UnixEpoch();
};

TEST_F(QuorumTest, RoundClosesOnItsQuorumOnceTheTimeoutPassed) {
  MakeQuorumStore(RoundQuorum{.count = 2}, absl::Seconds(5));
  const auto a = Join("a", {{"w", {0, 0}}});
  const auto b = Join("b", {{"w", {0, 0}}});
  const auto c = Join("c", {{"w", {0, 0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1, 2}}}), IsOk());
  now_ += absl::Seconds(1);
  ASSERT_THAT(Push(b, 1, {{"w", 0, {3, 6}}}, /*weight=*/3.0), IsOk());
  // Quorum met, but the timeout (from the round's first chunk) has not
  // passed: the round still waits for c.
  now_ += absl::Seconds(3);
  EXPECT_EQ(store_->CloseOverdueRounds(), 0);
  EXPECT_EQ(Version("w"), 0u);
  now_ += absl::Seconds(1);
  EXPECT_EQ(store_->CloseOverdueRounds(), 1);
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_THAT(Value("w"), ElementsAre(2.5, 5));  // (1 + 3*3) / 4, (2 + 3*6) / 4
  {
    absl::MutexLock lock(&closed_mu_);
    ASSERT_EQ(closed_.size(), 1u);
    EXPECT_EQ(closed_[0].contributors, 2u);
    EXPECT_EQ(closed_[0].missing, 1u);
    EXPECT_EQ(closed_[0].duration, absl::Seconds(5));
    // It waited for c from b's contribution (at 1 s) to the close.
    EXPECT_EQ(closed_[0].last_wait, absl::Seconds(4));
  }
  // c's push to the closed round is aborted, naming the current round, and
  // changes nothing; c is still a participant of the next round.
  EXPECT_THAT(Push(c, 1, {{"w", 0, {100, 100}}}),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("the current round is 1")));
  EXPECT_THAT(Value("w"), ElementsAre(2.5, 5));
  EXPECT_EQ(store_->Describe("w")->participants, 3u);
  EXPECT_EQ(store_->CloseOverdueRounds(), 0);  // Round 1 has no push yet.
}

TEST_F(QuorumTest, TheLastContributorsWaitIsFromTheOneBefore) {
  MakeQuorumStore(RoundQuorum{}, absl::ZeroDuration());
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  const auto c = Join("c", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1}}}), IsOk());
  now_ += absl::Seconds(1);
  ASSERT_THAT(Push(b, 1, {{"w", 0, {2}}}), IsOk());
  now_ += absl::Seconds(3);
  ASSERT_THAT(Push(c, 1, {{"w", 0, {3}}}), IsOk());  // Closes round 0.
  // Round 1: a and b contribute, c leaves 5 s after b: the round waited
  // for c from b's contribution.
  ASSERT_THAT(Push(a, 2, {{"w", 1, {5}}}), IsOk());
  now_ += absl::Seconds(2);
  ASSERT_THAT(Push(b, 2, {{"w", 1, {5}}}), IsOk());
  now_ += absl::Seconds(5);
  ASSERT_THAT(store_->Leave(c), IsOk());  // Closes round 1.
  // Round 2: a alone; its wait is from its first chunk.
  ASSERT_THAT(store_->Leave(b), IsOk());
  auto session = store_->BeginPush(
      PushHeader{a, 3, UpdateKind::kWeights, 1.0, {{"w", 2}}});
  ASSERT_THAT(session, IsOk());
  const std::vector<float> six = {6};
  ASSERT_THAT((*session)->AddChunk(0, 0, FloatBytes(six, 0, 4)), IsOk());
  now_ += absl::Seconds(1);
  ASSERT_THAT((*session)->Finish(), IsOk());
  absl::MutexLock lock(&closed_mu_);
  ASSERT_EQ(closed_.size(), 3u);
  EXPECT_EQ(closed_[0].duration, absl::Seconds(4));
  EXPECT_EQ(closed_[0].last_wait, absl::Seconds(3));  // c after b.
  EXPECT_EQ(closed_[0].missing, 0u);
  EXPECT_EQ(closed_[1].duration, absl::Seconds(7));
  EXPECT_EQ(closed_[1].last_wait, absl::Seconds(5));  // Since b's.
  EXPECT_EQ(closed_[2].last_wait, absl::Seconds(1));  // Its first chunk.
}

TEST_F(QuorumTest, LastQuorumPushClosesAnOverdueRound) {
  MakeQuorumStore(RoundQuorum{.fraction = 0.5}, absl::Seconds(2));
  std::vector<std::uint64_t> leases;
  for (const char* w : {"a", "b", "c", "d"})
    leases.push_back(Join(w, {{"w", {0}}}));
  ASSERT_THAT(Push(leases[0], 1, {{"w", 0, {4}}}), IsOk());
  now_ += absl::Seconds(3);
  // Timeout passed, but 1 of 4 is below half: no close.
  EXPECT_EQ(store_->CloseOverdueRounds(), 0);
  auto second = Push(leases[1], 1, {{"w", 0, {8}}});
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ((*second)[0].outcome.version, 1u);  // Closed by this push.
  EXPECT_THAT(Value("w"), ElementsAre(6));
}

TEST_F(QuorumTest, ZeroTimeoutClosesAsSoonAsTheQuorumPushed) {
  MakeQuorumStore(RoundQuorum{.count = 1}, absl::ZeroDuration());
  const auto a = Join("a", {{"w", {0}}});
  const auto b = Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {4}}}), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  ASSERT_THAT(Push(b, 1, {{"w", 0, {8}}}),
              StatusIs(absl::StatusCode::kAborted));
  ASSERT_THAT(Push(b, 2, {{"w", 1, {8}}}), IsOk());
  EXPECT_EQ(Version("w"), 2u);
  EXPECT_THAT(Value("w"), ElementsAre(8));
}

TEST_F(QuorumTest, DefaultQuorumWaitsForEveryone) {
  MakeQuorumStore(RoundQuorum{}, absl::ZeroDuration());
  const auto a = Join("a", {{"w", {0}}});
  Join("b", {{"w", {0}}});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {4}}}), IsOk());
  now_ += absl::Hours(1);
  EXPECT_EQ(store_->CloseOverdueRounds(), 0);
  EXPECT_EQ(Version("w"), 0u);
}

TEST_F(TensorStoreTest, BadQuorumOptionsAreRefused) {
  StoreOptions options;
  options.round_quorum.fraction = 0;
  EXPECT_THAT(TensorStore::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  options.round_quorum.fraction = 1.5;
  EXPECT_THAT(TensorStore::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  options.round_quorum.fraction = 1;
  options.round_timeout = absl::Seconds(-1);
  EXPECT_THAT(TensorStore::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TensorStoreTest, WorkerLimitRefusesNewMembersNotRejoins) {
  StoreOptions options = TestOptions();
  options.max_workers = 2;
  MakeStoreWith(std::move(options));
  ASSERT_THAT(store_->Join("a", {Declaration{"w", {1}, {1}}}, Claimant{1, ""}),
              IsOk());
  Join("b", {{"w", {1}}});
  EXPECT_THAT(store_->Join("c", {Declaration{"w", {1}, {}}}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_workers")));
  // Refused at the header, before any value could be buffered.
  JoinHeader header;
  header.worker_id = "c";
  header.declarations.push_back(Declaration{"w", {1}, {}});
  EXPECT_THAT(store_->BeginJoin(std::move(header)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {1}, {}}}, Claimant{1, ""}),
              IsOk());
  ASSERT_THAT(store_->Leave(store_->Status().workers[0].lease_id), IsOk());
  EXPECT_THAT(store_->Join("c", {Declaration{"w", {1}, {}}}), IsOk());
  EXPECT_EQ(store_->Describe("w")->participants, 2u);
}

TEST_F(TensorStoreTest, TotalBytesLimitRefusesNewTensorsAndChangesNothing) {
  StoreOptions options = TestOptions();
  options.max_total_bytes = 40;  // 10 floats.
  MakeStoreWith(std::move(options));
  Join("a", {{"w", std::vector<float>(8, 1.0f)}});
  EXPECT_THAT(store_->Join("b", {Declaration{"w", {8}, {}},
                                 Declaration{"v", {3}, {1, 2, 3}}}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_total_bytes")));
  EXPECT_THAT(store_->Describe("v"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(store_->Describe("w")->participants, 1u);
  EXPECT_THAT(Value("w"), ::testing::Each(1.0f));
  // What fits is still accepted, and a tensor that exists costs nothing.
  EXPECT_THAT(store_->Join("b", {Declaration{"w", {8}, {}},
                                 Declaration{"v", {2}, {1, 2}}}),
              IsOk());
  // A new tensor is counted at the header, before its value arrives.
  JoinHeader header;
  header.worker_id = "c";
  header.declarations.push_back(Declaration{"u", {1}, {}});
  EXPECT_THAT(store_->BeginJoin(std::move(header)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_total_bytes")));
}

// Each principal's joins may create so many tensors and bytes; joining
// tensors that exist costs nothing, another principal has its own count,
// and a refusal creates nothing.
TEST_F(TensorStoreTest, PerPrincipalLimitsCountWhatEachPrincipalCreated) {
  StoreOptions options = TestOptions();
  options.max_tensors_per_principal = 2;
  options.max_bytes_per_principal = 40;  // 10 floats.
  MakeStoreWith(std::move(options));
  const Claimant team_a{1, "", "team-a"};
  const Claimant team_b{2, "", "team-b"};
  ASSERT_THAT(
      store_->Join("a-0", {Declaration{"x", {4}, {1, 1, 1, 1}}}, team_a),
      IsOk());
  // Over the bytes: 4 + 8 floats.
  EXPECT_THAT(store_->Join("a-1",
                           {Declaration{"x", {4}, {}},
                            Declaration{"y", {8}, std::vector<float>(8)}},
                           team_a),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("principal team-a created 16 of at most 40 "
                                 "(--max_bytes_per_principal)")));
  EXPECT_THAT(store_->Describe("y"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT(
      store_->Join("a-1",
                   {Declaration{"x", {4}, {}}, Declaration{"y", {2}, {2, 2}}},
                   team_a),
      IsOk());
  // Over the count: a third tensor, even a small one.
  JoinHeader header;
  header.worker_id = "a-2";
  header.claimant = team_a;
  header.declarations.push_back(Declaration{"z", {1}, {}});
  EXPECT_THAT(store_->BeginJoin(std::move(header)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("principal team-a created 2 of at most 2 "
                                 "(--max_tensors_per_principal)")));
  // Joining what exists is free; team-b counts on its own.
  EXPECT_THAT(store_->Join(
                  "a-2", {Declaration{"x", {4}, {}}, Declaration{"y", {2}, {}}},
                  team_a),
              IsOk());
  EXPECT_THAT(
      store_->Join("b-0",
                   {Declaration{"x", {4}, {}}, Declaration{"z", {1}, {3}}},
                   team_b),
      IsOk());
  // No policy: no principal, no per-principal count.
  EXPECT_THAT(store_->Join("n-0", {Declaration{"n1", {1}, {1}},
                                   Declaration{"n2", {1}, {1}},
                                   Declaration{"n3", {1}, {1}}}),
              IsOk());
}

// A snapshot restored under a lower limit holds more than it allows: no new
// tensor fits (the unsigned room must not wrap around), members still join.
TEST_F(TensorStoreTest, RestoredStateOverTheLimitAdmitsNoNewTensor) {
  StoreOptions options = TestOptions();
  options.max_total_bytes = 20;
  StoreState state;
  state.tensors.push_back(SavedTensor{
      "w", {10}, 0, std::make_shared<std::vector<float>>(10, 1.0f), {}});
  store_ = std::move(TensorStore::Restore(options, std::move(state))).value();
  EXPECT_THAT(store_->Join("a", {Declaration{"v", {1}, {1}}}),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(store_->Join("a", {Declaration{"w", {10}, {}}}), IsOk());
}

// Many workers push many rounds concurrently while pullers read.
TEST_F(TensorStoreTest, ConcurrentRoundsAverageCorrectly) {
  MakeStore();
  constexpr int kWorkers = 4;
  constexpr int kRounds = 30;
  const std::vector<float> zero(2500, 0.0f);  // 3 chunks.
  std::vector<std::uint64_t> leases;
  for (int w = 0; w < kWorkers; ++w) {
    leases.push_back(Join("w" + std::to_string(w), {{"t", zero}}));
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      for (int r = 0; r < kRounds; ++r) {
        // Worker w pushes the value (w + 1); the mean is 2.5 every round.
        std::vector<float> mine(zero.size(), static_cast<float>(w + 1));
        if (!Push(leases[w], r + 1,
                  {{"t", static_cast<std::uint64_t>(r), mine}})
                 .ok()) {
          ++failures;
          return;
        }
        absl::Notification done;
        auto wait =
            store_->WaitForVersions({{"t", static_cast<std::uint64_t>(r + 1)}},
                                    [&](absl::Status) { done.Notify(); });
        if (!wait.ok() ||
            !done.WaitForNotificationWithTimeout(absl::Seconds(30))) {
          ++failures;
          return;
        }
        auto read = store_->Read({"t"});
        if (!read.ok() || (*(*read)[0].value)[0] != 2.5f) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(Version("t"), static_cast<std::uint64_t>(kRounds));
  EXPECT_EQ(Closed().size(), static_cast<std::size_t>(kRounds));
}

// Quorum rounds under contention: workers push whatever round is open (late
// ones are aborted and catch up), a housekeeping thread closes overdue
// rounds and expires leases, and a worker keeps leaving and re-joining.
// Every push carries a value of its own, so each chunk of each round's value
// is known exactly from the chunks delivered into that round: a
// contribution counted twice or lost, or a chunk applied twice, shows as a
// wrong element. (A push cut off by its round's close leaves the chunks it
// delivered in that round: PushSession's contract, checked here too.)
TEST_F(QuorumTest, ConcurrentQuorumRoundsWithHousekeepingAndChurn) {
  StoreOptions options = TestOptions();  // The real clock.
  options.round_quorum.count = 2;
  options.round_timeout = absl::Microseconds(200);
  MakeStoreWith(std::move(options));
  constexpr int kWorkers = 4;
  constexpr int kAccepted = 20;  // Pushes each worker gets accepted.
  constexpr int kAttempts = 50000;
  constexpr std::size_t kElements = 2500;  // 3 chunks.
  constexpr std::size_t kChunkElements = kChunk / 4;
  constexpr std::size_t kChunks =
      (kElements + kChunkElements - 1) / kChunkElements;
  std::vector<std::uint64_t> leases;
  for (int w = 0; w < kWorkers; ++w) {
    leases.push_back(
        Join("w" + std::to_string(w), {{"t", std::vector<float>(kElements)}}));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<int> done{0};  // Workers with kAccepted accepted pushes.
  absl::Mutex mu;
  // Under mu: (round, chunk) -> the values delivered into it, by complete
  // pushes and by pushes cut off after that chunk.
  std::map<std::pair<std::uint64_t, std::size_t>, std::vector<float>> delivered;
  std::map<std::uint64_t, std::uint32_t> complete;   // Round -> pushes.
  std::map<std::uint64_t, std::vector<float>> seen;  // Version -> value.
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      // Until every worker had kAccepted pushes accepted (a round needs two
      // contributions, so none stops early), at most kAttempts.
      int accepted_here = 0;
      std::uint64_t sequence = 1;
      for (int i = 0; i < kAttempts && done < kWorkers; ++i) {
        const std::uint64_t round = Version("t");
        // Distinct per push, and exact in float32.
        const float value = static_cast<float>(100000 * (w + 1) + i);
        const std::vector<float> mine(kElements, value);
        auto session = store_->BeginPush(PushHeader{
            leases[w], sequence++, UpdateKind::kWeights, 1.0, {{"t", round}}});
        std::size_t chunks = 0;
        absl::Status status = session.status();
        for (std::size_t k = 0; status.ok() && k < kChunks; ++k) {
          const std::uint64_t offset = k * kChunk;
          status = (*session)->AddChunk(
              0, offset,
              FloatBytes(mine, offset,
                         ChunkLength(kElements * 4, kChunk, offset)));
          if (status.ok()) ++chunks;
        }
        if (status.ok()) {
          auto finished = (*session)->Finish();
          status = finished.status();
          if (finished.ok() && ((*finished)[0].outcome.duplicate ||
                                (*finished)[0].outcome.round != round)) {
            ++bad;
          }
        }
        if (status.ok() && ++accepted_here == kAccepted) ++done;
        if (!status.ok() && !absl::IsAborted(status) &&
            !absl::IsAlreadyExists(status)) {
          ++bad;
        }
        {
          absl::MutexLock lock(&mu);
          if (status.ok()) ++complete[round];
          for (std::size_t k = 0; k < chunks; ++k) {
            delivered[{round, k}].push_back(value);
          }
        }
        if (!status.ok()) std::this_thread::yield();  // Its round is closing.
      }
      if (accepted_here < kAccepted) ++bad;
    });
  }
  std::thread housekeeper([&] {
    while (!stop) {
      store_->CloseOverdueRounds();
      store_->ExpireLeases();
    }
  });
  std::thread reader([&] {
    while (!stop) {
      auto read = store_->Read({"t"});
      if (!read.ok()) {
        ++bad;
        return;
      }
      absl::MutexLock lock(&mu);
      seen.try_emplace((*read)[0].version, *(*read)[0].value);
    }
  });
  std::thread churn([&] {
    for (int i = 0; i < 50; ++i) {
      auto joined = store_->Join("churn", {Declaration{"t", {2500}, {}}});
      if (!joined.ok() || !store_->Leave(joined->lease_id).ok()) ++bad;
    }
  });
  for (auto& t : threads) t.join();
  churn.join();
  stop = true;
  housekeeper.join();
  reader.join();
  EXPECT_EQ(bad.load(), 0);

  absl::MutexLock lock(&mu);
  seen.try_emplace(Version("t"), Value("t"));
  // Observers run outside the locks, so not necessarily in round order.
  std::vector<RoundClosed> closed = Closed();
  std::sort(closed.begin(), closed.end(),
            [](const RoundClosed& x, const RoundClosed& y) {
              return x.round < y.round;
            });
  ASSERT_EQ(closed.size(), Version("t"));
  ASSERT_GE(closed.size(), static_cast<std::size_t>(kAccepted));
  for (std::size_t i = 0; i < closed.size(); ++i) {
    EXPECT_EQ(closed[i].round, i);
    EXPECT_EQ(closed[i].contributors, complete[i]) << "round " << i;
  }
  for (const auto& [version, value] : seen) {
    if (version == 0) continue;
    ASSERT_EQ(value.size(), kElements);
    for (std::size_t k = 0; k < kChunks; ++k) {
      const std::vector<float>& values = delivered[{version - 1, k}];
      ASSERT_FALSE(values.empty()) << "version " << version << " chunk " << k;
      double sum = 0;
      for (float v : values) sum += v;
      const float mean = static_cast<float>(sum / values.size());
      const auto begin = value.begin() + k * kChunkElements;
      const auto end =
          value.begin() + std::min(kElements, (k + 1) * kChunkElements);
      EXPECT_THAT(std::vector<float>(begin, end),
                  ::testing::Each(::testing::FloatNear(mean, 1e-5f * mean)))
          << "version " << version << " chunk " << k << ": " << values.size()
          << " values";
    }
  }
}

}  // namespace
}  // namespace weightd::core
