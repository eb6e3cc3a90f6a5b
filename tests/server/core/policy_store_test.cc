// Per-tensor policies in the store: the staleness bound of
// consistency=bounded, optimizer state through Save and Restore, tensors of
// different policies in one job, and the memory cap of buffered
// aggregators (max_buffered_bytes, TensorInfo::policy_bytes). What each
// rule computes is in policy_test.cc.
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/policy.h"
#include "server/core/tensor_store.h"
#include "tests/server/core/policy_fixture.h"
#include "tests/testing/bytes.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

// Bounded staleness (s = 2; MakeATwoAhead: a applied 2 pushes, b none).

class BoundedStalenessTest : public PolicyStoreTest {
 protected:
  // Push `sequence` of `lease`: the delta `values` to tensor "w", delivered
  // whole (staged: "w" is not sync), not finished yet.
  std::unique_ptr<PushSession> Staged(std::uint64_t lease,
                                      std::uint64_t sequence,
                                      std::vector<float> values) {
    auto session = store_->BeginPush(
        PushHeader{lease, sequence, UpdateKind::kDelta, 1.0, {{"w", 0}}});
    EXPECT_THAT(session, IsOk());
    if (!session.ok()) return nullptr;
    EXPECT_THAT(
        (*session)->AddChunk(
            0, 0, ::weightd::testing::FloatBytes(values, 0, values.size() * 4)),
        IsOk());
    return std::move(*session);
  }
  // Bounded staleness 2 on "w" (value 0) shared by a and b (on the test's
  // clock); a pushes deltas of 1 twice: it is exactly 2 ahead of b.
  void MakeATwoAhead() {
    MakeStoreWith(ClockedOptions());
    a_ = JoinWith("a", "w", {0.0f}, "consistency=bounded staleness=2");
    b_ = JoinWith("b", "w", {0.0f}, "");
    for (std::uint64_t sequence : {1, 2}) {
      ASSERT_THAT(
          Push(a_, sequence, {{"w", 0, {1.0f}}}, 1.0, UpdateKind::kDelta),
          IsOk());
    }
    ASSERT_EQ(Value("w")[0], 2.0f);
  }
  std::vector<std::string> WaitingFor() {
    const StoreStatus status = store_->Status();
    return status.tensors.empty() ? std::vector<std::string>{}
                                  : status.tensors[0].waiting_for;
  }

  std::uint64_t a_ = 0;
  std::uint64_t b_ = 0;
};

// a's third push waits: its turn does not come, Finish() without it is
// ABORTED and applies nothing, and Status names b as what it waits for.
// b's push (10) puts a 1 ahead: the waiting push's turn comes, and it
// applies (2 + 10 + 1 = 13). a's next is 2 ahead again, and waits.
TEST_F(BoundedStalenessTest, StopsAWorkerExactlySAhead) {
  MakeATwoAhead();
  bool turn = false;
  auto refused = Staged(a_, 3, {1});
  auto wait = refused->AwaitTurn([&turn](absl::Status s) {
    EXPECT_THAT(s, IsOk());
    turn = true;
  });
  ASSERT_THAT(wait, IsOk());
  EXPECT_FALSE(turn);
  EXPECT_THAT(WaitingFor(), ElementsAre("b"));
  EXPECT_THAT(refused->Finish(),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("2 push(es) ahead of the slowest")));
  EXPECT_EQ(Value("w")[0], 2.0f);
  EXPECT_EQ(Version("w"), 2u);
  wait->reset();

  auto pending = Staged(a_, 3, {1});
  auto pending_wait = pending->AwaitTurn([&turn](absl::Status s) {
    EXPECT_THAT(s, IsOk());
    turn = true;
  });
  ASSERT_THAT(pending_wait, IsOk());
  EXPECT_FALSE(turn);
  ASSERT_THAT(Push(b_, 1, {{"w", 0, {10}}}, 1.0, UpdateKind::kDelta), IsOk());
  EXPECT_TRUE(turn);
  EXPECT_THAT(WaitingFor(), IsEmpty());
  ASSERT_THAT(pending->Finish(), IsOk());
  EXPECT_EQ(Value("w")[0], 13.0f);

  turn = false;
  auto next = Staged(a_, 4, {1});
  auto next_wait = next->AwaitTurn([&turn](absl::Status) { turn = true; });
  ASSERT_THAT(next_wait, IsOk());
  EXPECT_FALSE(turn);
  EXPECT_THAT(WaitingFor(), ElementsAre("b"));
}

// The slowest worker leaving, or its lease expiring, releases the wait (a's
// own lease is held by its waiting push).
TEST_F(BoundedStalenessTest, TheWaitEndsWhenTheSlowestLeavesOrExpires) {
  for (const bool expire : {false, true}) {
    SCOPED_TRACE(expire ? "expires" : "leaves");
    MakeATwoAhead();
    bool turn = false;
    auto push = Staged(a_, 3, {1});
    auto wait = push->AwaitTurn([&turn](absl::Status) { turn = true; });
    ASSERT_THAT(wait, IsOk());
    EXPECT_FALSE(turn);
    if (expire) {
      now_ += absl::Seconds(7);  // lease_timeout: 6 s.
      EXPECT_EQ(store_->ExpireLeases(), 1);
    } else {
      ASSERT_THAT(store_->Leave(b_), IsOk());
    }
    EXPECT_TRUE(turn);
    ASSERT_THAT(push->Finish(), IsOk());
    EXPECT_EQ(Value("w")[0], 3.0f);
    EXPECT_THAT(store_->Describe("w")->participants, 1u);
  }
}

// a leaves while its own third push waits for its turn: the wait ends
// ABORTED naming the tensor and the departure, and the push applies
// nothing. A push begun before a leaves or its lease expires, whose turn
// is asked for only then, is refused as well (a's lease is not held yet:
// b heartbeats, a does not).
TEST_F(BoundedStalenessTest, AWorkerThatLeavesWhileItsPushWaitsIsAborted) {
  MakeATwoAhead();
  absl::Status waited = absl::UnknownError("not called");
  auto push = Staged(a_, 3, {1});
  auto wait = push->AwaitTurn([&waited](absl::Status s) { waited = s; });
  ASSERT_THAT(wait, IsOk());
  EXPECT_THAT(waited, StatusIs(absl::StatusCode::kUnknown));
  ASSERT_THAT(store_->Leave(a_), IsOk());
  EXPECT_THAT(waited, StatusIs(absl::StatusCode::kAborted,
                               AllOf(HasSubstr("tensor w"), HasSubstr("left"),
                                     HasSubstr("not applied"))));
  EXPECT_THAT(push->Finish(),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("tensor w")));
  EXPECT_EQ(Value("w")[0], 2.0f);
  EXPECT_EQ(Version("w"), 2u);
  EXPECT_THAT(WaitingFor(), IsEmpty());
  wait->reset();  // Before its store goes.

  for (const bool expire : {false, true}) {
    SCOPED_TRACE(expire ? "expires" : "leaves");
    MakeATwoAhead();
    auto late = Staged(a_, 3, {1});
    if (expire) {
      now_ += absl::Seconds(7);  // lease_timeout: 6 s.
      ASSERT_THAT(store_->Heartbeat(b_), IsOk());
      EXPECT_EQ(store_->ExpireLeases(), 1);
    } else {
      ASSERT_THAT(store_->Leave(a_), IsOk());
    }
    absl::Status turn = absl::UnknownError("not called");
    auto late_wait = late->AwaitTurn([&turn](absl::Status s) { turn = s; });
    ASSERT_THAT(late_wait, IsOk());
    EXPECT_THAT(turn, IsOk());  // No clock, no wait: Finish refuses it.
    EXPECT_THAT(late->Finish(), StatusIs(absl::StatusCode::kAborted,
                                         AllOf(HasSubstr("tensor w"),
                                               HasSubstr("not applied"))));
    EXPECT_EQ(Value("w")[0], 2.0f);
    EXPECT_EQ(Version("w"), 2u);
  }
}

// A resend of push 2 (applied) does not wait, and is not applied again.
TEST_F(BoundedStalenessTest, AResendOfAnAppliedPushDoesNotWait) {
  MakeATwoAhead();
  bool turn = false;
  auto resend = Staged(a_, 2, {1});
  auto wait = resend->AwaitTurn([&turn](absl::Status) { turn = true; });
  ASSERT_THAT(wait, IsOk());
  EXPECT_TRUE(turn);
  auto done = resend->Finish();
  ASSERT_THAT(done, IsOk());
  EXPECT_TRUE((*done)[0].outcome.duplicate);
  EXPECT_EQ(Value("w")[0], 2.0f);
}

// FedAdam's moments are saved and restored: after 3 rounds (default
// parameters, 5 elements), one more identical round on the store and on
// its restored copy gives bit-identical values and moments.
TEST_F(PolicyStoreTest, OptimizerStateSurvivesSaveAndRestoreBitIdentically) {
  MakeStore();
  const std::vector<float> initial = {0.5f, -1.25f, 3.0f, 0.1f, -0.3f};
  const std::uint64_t a = JoinWith("a", "w", initial, "optimizer=adam");
  const std::uint64_t b = JoinWith("b", "w", initial, "");
  auto round = [&](std::uint64_t r) {
    std::vector<float> pa;
    std::vector<float> pb;
    for (std::size_t i = 0; i < initial.size(); ++i) {
      pa.push_back(initial[i] + 0.37f * i - 0.11f * r);
      pb.push_back(initial[i] - 0.23f * i + 0.07f * r * r);
    }
    EXPECT_THAT(Push(a, r + 1, {{"w", r, pa}}), IsOk());
    EXPECT_THAT(Push(b, r + 1, {{"w", r, pb}}), IsOk());
  };
  for (std::uint64_t r = 0; r < 3; ++r) round(r);
  absl::StatusOr<std::unique_ptr<TensorStore>> restored =
      TensorStore::Restore(TestOptions(), store_->Save());
  ASSERT_THAT(restored, IsOk());
  round(3);
  std::swap(store_, *restored);  // The fixture's calls go to store_.
  EXPECT_EQ(PolicyOf("w"), (*restored)->Describe("w")->policy);
  round(3);
  const StoreState original = (*restored)->Save();
  const StoreState copy = store_->Save();
  ASSERT_EQ(original.tensors.size(), 1u);
  ASSERT_EQ(copy.tensors.size(), 1u);
  EXPECT_EQ(copy.tensors[0].version, 4u);
  const std::vector<float>& value = *original.tensors[0].value;
  ASSERT_EQ(copy.tensors[0].value->size(), value.size());
  EXPECT_EQ(std::memcmp(copy.tensors[0].value->data(), value.data(),
                        value.size() * 4),
            0);
  EXPECT_NE(value, initial);
  ASSERT_EQ(original.tensors[0].optimizer_state.size(), 2u);
  ASSERT_EQ(copy.tensors[0].optimizer_state.size(), 2u);
  for (int slot = 0; slot < 2; ++slot) {
    const std::vector<float>& m = original.tensors[0].optimizer_state[slot];
    ASSERT_EQ(copy.tensors[0].optimizer_state[slot].size(), m.size());
    EXPECT_EQ(std::memcmp(copy.tensors[0].optimizer_state[slot].data(),
                          m.data(), m.size() * 4),
              0)
        << "slot " << slot;
  }
}

// One store, one push per worker listing its tensors: "enc" (sync, median)
// shared by a, b, c; "head_a" (async, FedAdam as in policy_test.cc's
// FedAdamTwoRounds) by a;
// "head_b" (sync, plain) by b and c. head_a steps at a's push while enc's
// round is still open: 1 -> 1.5 (u = 1.5). enc: median{9, 1, 4} = 4 (b's
// weight 3 ignored). head_b: (2*3 + 6*1) / 4 = 3 (weighted).
TEST_F(PolicyStoreTest, MixedPoliciesInOneJobEachFollowTheirOwnRule) {
  MakeStore();
  const std::uint64_t a =
      JoinAll("a", {Decl("enc", {0}, "aggregator=median"),
                    Decl("head_a", {1},
                         "consistency=async optimizer=adam lr=1 beta1=0.5 "
                         "beta2=0.625 tau=0.5")});
  const std::uint64_t b =
      JoinAll("b", {Decl("enc", {0}), Decl("head_b", {0}, "optimizer=plain")});
  const std::uint64_t c = JoinAll("c", {Decl("enc", {0}), Decl("head_b", {0})});
  ASSERT_THAT(Push(a, 1, {{"enc", 0, {9}}, {"head_a", 0, {2.5f}}}), IsOk());
  EXPECT_EQ(Value("head_a")[0], 1.5f);
  EXPECT_EQ(Version("head_a"), 1u);
  EXPECT_EQ(Version("enc"), 0u);
  ASSERT_THAT(Push(b, 1, {{"enc", 0, {1}}, {"head_b", 0, {2}}}, 3.0), IsOk());
  ASSERT_THAT(Push(c, 1, {{"enc", 0, {4}}, {"head_b", 0, {6}}}, 1.0), IsOk());
  EXPECT_EQ(Value("enc")[0], 4.0f);
  EXPECT_EQ(Value("head_b")[0], 3.0f);
  EXPECT_EQ(Value("head_a")[0], 1.5f);
  EXPECT_EQ(Version("enc"), 1u);
  EXPECT_EQ(Version("head_b"), 1u);
  EXPECT_EQ(Version("head_a"), 1u);
  EXPECT_EQ(PolicyOf("head_b").aggregator, "mean");
  EXPECT_EQ(PolicyOf("head_a").consistency, Mode::kAsync);
}

// The memory cap.

// What Status() says of tensors and workers, as text to compare.
std::string Summary(const StoreStatus& status) {
  std::string out;
  for (const TensorInfo& t : status.tensors) {
    absl::StrAppend(&out, t.name, " v", t.version, " n", t.participants, " ",
                    PolicyText(t.policy), " ", t.policy_bytes, " [",
                    absl::StrJoin(t.waiting_for, ","), "]\n");
  }
  for (const WorkerInfo& w : status.workers) {
    absl::StrAppend(&out, w.worker_id, " ", w.lease_id, " [",
                    absl::StrJoin(w.tensors, ","), "]\n");
  }
  return out;
}

// Cap 48 bytes: "m" (median, 16 bytes) takes 3 participants (c's join
// reaches the cap exactly), the fourth is refused, as is a new trimmed-mean
// tensor; neither refused join changes anything. A mean tensor (256 bytes,
// over the cap alone) and an async clipped mean (each push applied alone)
// hold no copies and are never counted.
TEST_F(PolicyStoreTest, AJoinPastMaxBufferedBytesIsRefusedAndChangesNothing) {
  StoreOptions options = ClockedOptions();
  options.max_buffered_bytes = 48;
  MakeStoreWith(options);
  const std::vector<float> big(64, 0.0f);
  JoinAll("a",
          {Decl("big", big), Decl("m", {0, 0, 0, 0}, "aggregator=median")});
  JoinAll("b", {Decl("big", big), Decl("m", {0, 0, 0, 0})});
  JoinAll("c", {Decl("m", {0, 0, 0, 0})});
  const std::string before = Summary(store_->Status());
  EXPECT_THAT(store_->Join("d", {Decl("big", big), Decl("m", {0, 0, 0, 0})}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_buffered_bytes")));
  EXPECT_THAT(store_->Join("d", {Decl("t", {0}, "aggregator=trimmed_mean")}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_buffered_bytes")));
  const StoreStatus after = store_->Status();
  EXPECT_EQ(Summary(after), before);
  for (const WorkerInfo& w : after.workers) EXPECT_NE(w.worker_id, "d");
  EXPECT_THAT(store_->Describe("t"), StatusIs(absl::StatusCode::kNotFound));
  JoinAll("d",
          {Decl("big", big),
           Decl("async", big, "consistency=async aggregator=clipped_mean")});
  EXPECT_EQ(store_->Describe("big")->participants, 3u);
}

// --max_total_bytes counts, beside each value, the most its optimizer's
// state can hold: adam on a sync tensor of 4 floats holds its two moments
// (32 bytes), the state from before the open round (32) and the undo copy
// of a chunk's step (32): 16 + 96 = 112 bytes. Under a cap of 111 its Join
// is refused naming the bytes, and changes nothing (the same tensor under
// plain, 16 bytes, fits). Under 112 it fits exactly and a 1-float tensor
// more does not; after a round it holds what was counted; a restored store
// counts it too; dropping it gives all 112 bytes back.
TEST_F(PolicyStoreTest, MaxTotalBytesCountsOptimizerState) {
  StoreOptions options = ClockedOptions();
  options.max_total_bytes = 111;
  MakeStoreWith(options);
  const std::vector<float> four(4, 0.0f);
  EXPECT_THAT(store_->Join("a", {Decl("w", four, "optimizer=adam")}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("112 bytes"),
                             HasSubstr("96 bytes of optimizer state"),
                             HasSubstr("--max_total_bytes"))));
  EXPECT_THAT(store_->Describe("w"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Status().workers, IsEmpty());
  JoinAll("a", {Decl("w", four)});

  options.max_total_bytes = 112;
  MakeStoreWith(options);
  const std::uint64_t a = JoinAll("a", {Decl("w", four, "optimizer=adam")});
  EXPECT_THAT(store_->Join("b", {Decl("one", {0.0f})}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_total_bytes")));
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1, 2, 3, 4}}}), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_EQ(PolicyBytes("w"), 96u);
  auto restored = TensorStore::Restore(options, store_->Save());
  ASSERT_THAT(restored, IsOk());
  EXPECT_THAT((*restored)->Join("b", {Decl("one", {0.0f})}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_total_bytes")));
  ASSERT_THAT(store_->Drop("w", /*force=*/true), IsOk());
  JoinAll("b", {Decl("all", std::vector<float>(28, 0.0f))});
}

// policy_bytes: FedAdam 2 floats of state per element, FedAvgM 1, plain
// none; a median round holds each participant's push (4 elements: 16
// bytes), from its first chunk, and keeps them between rounds.
TEST_F(PolicyStoreTest, PolicyBytesReportStateAndBuffers) {
  MakeStore();
  const std::vector<float> four(4, 0.0f);
  const std::uint64_t a = JoinAll(
      "a", {Decl("adam", four, "optimizer=adam"),
            Decl("momentum", four, "optimizer=momentum"), Decl("plain", four),
            Decl("median", four, "optimizer=adam aggregator=median")});
  const std::uint64_t b = JoinWith("b", "median", four, "");
  EXPECT_EQ(PolicyBytes("adam"), 32u);
  EXPECT_EQ(PolicyBytes("momentum"), 16u);
  EXPECT_EQ(PolicyBytes("plain"), 0u);
  EXPECT_EQ(PolicyBytes("median"), 32u);
  ASSERT_THAT(Push(a, 1, {{"median", 0, four}}), IsOk());
  EXPECT_EQ(PolicyBytes("median"), 32u + 16u);
  ASSERT_THAT(Push(b, 1, {{"median", 0, four}}), IsOk());
  EXPECT_EQ(Version("median"), 1u);
  // State 32, two copies 2 x 16, the step's undo copy of its chunk 32, and
  // the state from before the round of the chunk it published before
  // closing (b's chunk completed it before b's push did) 32.
  EXPECT_EQ(PolicyBytes("median"), 32u + 2 * 16u + 32u + 32u);
  // A worker that leaves between rounds frees its copy.
  ASSERT_THAT(store_->Leave(b), IsOk());
  EXPECT_EQ(PolicyBytes("median"), 32u + 16u + 32u + 32u);
}

// A finite push can overflow the optimizer's state (u * u > FLT_MAX): the
// step is thrown away, state and value unchanged, and the tensor still
// moves in the next round, not frozen by an infinite v.
TEST_F(PolicyStoreTest, AStepThatOverflowsTheStateIsThrownAwayWithIt) {
  MakeStore();
  const std::uint64_t a = JoinWith("a", "w", {1.0f}, "optimizer=adam");
  ASSERT_THAT(Push(a, 1, {{"w", 0, {1e20f}}}, 1.0, UpdateKind::kDelta), IsOk());
  EXPECT_EQ(Version("w"), 1u);
  EXPECT_EQ(Value("w")[0], 1.0f);
  EXPECT_EQ(Closed().back().non_finite_chunks, 1u);
  // u = 3 from fresh state: m = 0.3, v = 0.99e-6 + 0.09, as the first
  // round of a fresh tensor: 1 + 0.01 * 0.3 / (0.30000165 + 0.001).
  ASSERT_THAT(Push(a, 2, {{"w", 1, {3.0f}}}, 1.0, UpdateKind::kDelta), IsOk());
  EXPECT_FLOAT_EQ(Value("w")[0], 1.0099667f);
}

// A snapshot taken while a round has published some chunks (stepped their
// state) keeps the value from before the round, and so the state from
// before the round: restored, the round is made again, and both stores
// end bit-identical.
TEST_F(PolicyStoreTest, ASnapshotMidRoundKeepsTheStateFromBeforeTheRound) {
  MakeStore();
  const std::vector<float> zeros(2 * 1024, 0.0f);  // Two chunks.
  const std::uint64_t a = JoinWith("a", "w", zeros, "optimizer=momentum");
  const std::uint64_t b = JoinWith("b", "w", zeros, "");
  const StoreState before = store_->Save();
  ASSERT_THAT(Push(a, 1, {{"w", 0, std::vector<float>(2048, 1.0f)}}), IsOk());
  // b delivers the first chunk only: it is published (stepped), the second
  // is not.
  auto session = store_->BeginPush(
      PushHeader{b, 1, UpdateKind::kWeights, 1.0, {{"w", 0}}});
  ASSERT_THAT(session, IsOk());
  const std::vector<float> threes(1024, 3.0f);
  ASSERT_THAT(
      (*session)->AddChunk(
          0, 0,
          absl::string_view(reinterpret_cast<const char*>(threes.data()),
                            threes.size() * 4)),
      IsOk());
  const StoreState mid = store_->Save();
  ASSERT_EQ(mid.tensors[0].version, 0u);
  ASSERT_EQ(mid.tensors[0].optimizer_state.size(), 1u);
  EXPECT_EQ(mid.tensors[0].optimizer_state, before.tensors[0].optimizer_state);
}

// Workers push a median tensor of several chunks at once, round after
// round: each sums into its own copy outside the tensor's lock while
// another's first chunk adds its copy to the map (under TSan in CI).
TEST_F(PolicyStoreTest, ConcurrentPushesToAMedianTensorGiveTheMedian) {
  MakeStore();
  constexpr int kWorkers = 4;
  constexpr std::uint64_t kRounds = 12;
  const std::vector<float> zeros(8 * 1024, 0.0f);  // Eight chunks.
  std::vector<std::uint64_t> leases;
  for (int w = 0; w < kWorkers; ++w) {
    leases.push_back(JoinWith(absl::StrCat("w", w), "w", zeros,
                              w == 0 ? "aggregator=median" : ""));
  }
  std::vector<std::thread> threads;
  std::vector<absl::Status> errors(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      for (std::uint64_t round = 0; round < kRounds; ++round) {
        // Worker w pushes round + w everywhere: the median of 4 is the mean
        // of the two middle values, round + 1.5.
        auto pushed =
            Push(leases[w], round + 1,
                 {{"w", round, std::vector<float>(8 * 1024, round + w)}});
        if (!pushed.ok()) {
          errors[w] = pushed.status();
          return;
        }
        // The next round opens when the others' pushes close this one.
        const absl::Time give_up = absl::Now() + absl::Seconds(30);
        while (store_->Describe("w", false)->version <= round &&
               absl::Now() < give_up) {
          absl::SleepFor(absl::Milliseconds(1));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& e : errors) EXPECT_THAT(e, IsOk());
  EXPECT_EQ(Version("w"), kRounds);
  EXPECT_THAT(Value("w"), ::testing::Each(kRounds - 1 + 1.5f));
}

}  // namespace
}  // namespace weightd::core
