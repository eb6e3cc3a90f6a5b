// Per-tensor policies (server/core/policy.h, server/core/rules/): the text
// form, how a declaration resolves over the server's defaults, and what
// each rule computes, against numbers worked out by hand. The store-wide
// behaviour of policies (the staleness bound, Save/Restore, mixed policies,
// the memory cap) is in policy_store_test.cc.
#include "server/core/policy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/policy_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/core/policy_fixture.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatEq;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

TensorPolicy Base() {
  TensorPolicy base;
  base.params = {{"lr", 1.0}, {"mix", 0.5}};
  return base;
}

TEST(PolicySpecTest, TextRoundTrips) {
  const PolicySpec spec = Spec(
      "aggregator=median, lr=0.01 optimizer=adam consistency=bounded "
      "staleness=2");
  EXPECT_EQ(PolicySpecText(spec),
            "consistency=bounded optimizer=adam aggregator=median lr=0.01 "
            "staleness=2");
  EXPECT_EQ(Spec(PolicySpecText(spec)), spec);
  EXPECT_TRUE(Spec("").empty());
}

TEST(PolicySpecTest, RefusesWhatIsNotKeyValue) {
  EXPECT_THAT(
      ParsePolicySpec("adam"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not key=value")));
  EXPECT_THAT(
      ParsePolicySpec("lr=fast"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a number")));
  EXPECT_THAT(ParsePolicySpec("lr=nan"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParsePolicySpec("lr=1 lr=2"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
  // A misspelt consistency is refused where it is written, not sent as
  // "unspecified" (which would give the tensor the default).
  EXPECT_THAT(ParsePolicySpec("consistency=asnyc"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("not one of sync, async, bounded")));
  EXPECT_THAT(ParsePolicySpec("optimizer=Adam"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ApplyPolicySpecTest, FillsTheChosenRulesDefaults) {
  absl::StatusOr<TensorPolicy> p =
      ApplyPolicySpec(Base(), Spec("optimizer=adam aggregator=trimmed_mean"));
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(PolicyText(*p),
            "consistency=sync optimizer=adam aggregator=trimmed_mean "
            "beta1=0.9 beta2=0.99 lr=0.01 tau=0.001 trim=0.1");
}

TEST(ApplyPolicySpecTest, RefusesWhatCannotBe) {
  EXPECT_THAT(ApplyPolicySpec(Base(), Spec("optimizer=sgd")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("is not one of plain, momentum")));
  EXPECT_THAT(ApplyPolicySpec(Base(), Spec("optimizer=adam trim=0.2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("trim is a parameter of none of its rules")));
  EXPECT_THAT(
      ApplyPolicySpec(Base(), Spec("optimizer=adam beta1=1")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out of range")));
  EXPECT_THAT(
      ApplyPolicySpec(Base(), Spec("consistency=bounded staleness=1.5")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("integer")));
  EXPECT_THAT(ApplyPolicySpec(Base(), Spec("consistency=async "
                                           "aggregator=median")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("needs the contributions of a round")));
}

// Policy resolution.

TEST(PolicyDefaultsTest, CreateRefusesAnInvalidDefault) {
  StoreOptions options;
  options.default_policy = Spec("optimizer=sgd");
  EXPECT_THAT(TensorStore::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("optimizer=sgd is not one of")));
  options.default_policy = Spec("optimizer=adam lr=0");
  EXPECT_THAT(
      TensorStore::Create(options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out of range")));
  options.default_policy = Spec("consistency=async aggregator=median");
  EXPECT_THAT(TensorStore::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("needs the contributions of a round")));
  // A pattern's policy is over the default: median on an async server.
  options.default_policy = Spec("consistency=async");
  options.policy_patterns = {{"enc/*", Spec("aggregator=median")}};
  EXPECT_THAT(TensorStore::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the policy of pattern enc/*")));
}

// FedAdam, one round of two workers on one element, by hand:
// mean = (3 + 5) / 2 = 4, u = 4 - 1 = 3; m = 0.1 * 3 = 0.3;
// v = 0.99 * tau^2 + 0.01 * 9 = 0.99e-6 + 0.09 = 0.09000099;
// value = 1 + 0.01 * 0.3 / (sqrt(0.09000099) + 0.001)
//       = 1 + 0.003 / 0.30100165 = 1.0099667.
TEST_F(PolicyStoreTest, FedAdamStepsFromTheRoundsMean) {
  MakeStore();
  const std::uint64_t a = JoinWith("a", "w", {1.0f}, "optimizer=adam");
  const std::uint64_t b = JoinWith("b", "w", {0.0f}, "");  // Kept: 1.
  ASSERT_THAT(Push(a, 1, {{"w", 0, {3.0f}}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {5.0f}}}), IsOk());
  EXPECT_FLOAT_EQ(Value("w")[0], 1.0099667f);
}

TEST_F(PolicyStoreTest, ADeclarationOfAnotherPolicyIsRefused) {
  MakeStore();
  JoinWith("a", "w", {1.0f}, "optimizer=adam lr=0.02");
  Declaration d{"w", {1}, {}};
  d.policy = Spec("optimizer=adam lr=0.03");
  EXPECT_THAT(store_->Join("b", {d}),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("exists with policy")));
  d.policy = Spec("optimizer=adam lr=0.02");  // The same: taken.
  EXPECT_THAT(store_->Join("b", {d}), IsOk());
}

TEST_F(PolicyStoreTest, ADeclarationNamingNoneTakesTheServersDefault) {
  StoreOptions options = TestOptions();
  options.server_lr = 0.25;  // plain's lr in the base.
  options.default_policy = Spec("optimizer=momentum lr=0.5");
  // The first pattern that matches wins; each is over default_policy.
  options.policy_patterns = {{"enc/*", Spec("aggregator=median")},
                             {"enc/*", Spec("aggregator=trimmed_mean")},
                             {"*/head", Spec("optimizer=adam")}};
  MakeStoreWith(options);
  JoinAll("a", {Decl("x", {0}), Decl("enc/w", {0}), Decl("enc/head", {0}),
                Decl("b/head", {0})});
  EXPECT_EQ(PolicyText(PolicyOf("x")),
            "consistency=sync optimizer=momentum aggregator=mean lr=0.5 "
            "momentum=0.9");
  EXPECT_EQ(PolicyText(PolicyOf("enc/w")),
            "consistency=sync optimizer=momentum aggregator=median lr=0.5 "
            "momentum=0.9");
  EXPECT_EQ(PolicyOf("enc/head"), PolicyOf("enc/w"));  // Not */head.
  EXPECT_EQ(PolicyText(PolicyOf("b/head")),
            "consistency=sync optimizer=adam aggregator=mean beta1=0.9 "
            "beta2=0.99 lr=0.01 tau=0.001");
  // A declaration over the pattern's: trim is not median's.
  EXPECT_THAT(store_->Join("b", {Decl("enc/new", {0}, "trim=0.25")}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("trim is a parameter of none")));
  // A declaration of plain over a momentum default: plain's parameters are
  // the server's flags (--server_lr 0.25, --async_mix 0.5), not the rule's.
  JoinAll("c", {Decl("p", {0}, "optimizer=plain")});
  EXPECT_EQ(PolicyText(PolicyOf("p")),
            "consistency=sync optimizer=plain aggregator=mean lr=0.25 "
            "mix=0.5");
  // Without defaults: plain with --server_lr, the mean, --mode.
  MakeStoreWith(TestOptions());
  JoinAll("a", {Decl("x", {0})});
  EXPECT_EQ(PolicyText(PolicyOf("x")),
            "consistency=sync optimizer=plain aggregator=mean lr=1 mix=0.5");
}

TEST_F(PolicyStoreTest, APartialDeclarationMatchesATensorOfOtherFields) {
  MakeStore();  // Default: sync, plain, mean.
  JoinAll("a", {Decl("w", {0}, "optimizer=adam lr=0.02 aggregator=median"),
                Decl("s", {0}, "consistency=bounded staleness=3")});
  const TensorPolicy w = PolicyOf("w");
  const TensorPolicy s = PolicyOf("s");
  int n = 0;
  for (const char* declared : {"", "optimizer=adam", "aggregator=median",
                               "lr=0.02", "consistency=sync beta2=0.99"}) {
    SCOPED_TRACE(declared);
    EXPECT_THAT(
        store_->Join(absl::StrCat("w", ++n), {Decl("w", {0}, declared)}),
        IsOk());
  }
  EXPECT_THAT(store_->Join("s1", {Decl("s", {0}, "consistency=bounded")}),
              IsOk());
  EXPECT_THAT(store_->Join("s2", {Decl("s", {0}, "staleness=3")}), IsOk());
  for (const char* declared :
       {"optimizer=plain", "aggregator=mean", "lr=0.01", "beta1=0.5"}) {
    SCOPED_TRACE(declared);
    EXPECT_THAT(store_->Join("x", {Decl("w", {0}, declared)}),
                StatusIs(absl::StatusCode::kAlreadyExists,
                         HasSubstr("exists with policy")));
  }
  EXPECT_THAT(store_->Join("x", {Decl("s", {0}, "staleness=1")}),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(PolicyOf("w"), w);
  EXPECT_EQ(PolicyOf("s"), s);
  EXPECT_EQ(store_->Describe("w")->participants, 6u);
  EXPECT_EQ(store_->Describe("s")->participants, 3u);
}

// Optimizers. Each runs two rounds (TwoRounds: value 1, the round's mean
// update u1 then u2), once with weights pushes and once with deltas: the
// update is the mean minus the value, or the mean delta, so both give the
// same values. Numbers chosen so every step is exact in float32.

class OptimizerTest : public PolicyStoreTest {
 protected:
  // Two sync rounds of "w" (initial value 1) under `policy`, shared by a
  // and b: round r's mean update is u[r] (as a delta; as weights, the value
  // plus it), a pushing it minus 1 and b plus 1. The value after each.
  std::vector<float> TwoRounds(const std::string& policy, UpdateKind kind,
                               float u1, float u2) {
    MakeStore();
    const std::uint64_t a = JoinWith("a", "w", {1.0f}, policy);
    const std::uint64_t b = JoinWith("b", "w", {1.0f}, "");
    std::vector<float> after;
    for (const float u : {u1, u2}) {
      const std::uint64_t round = after.size();
      const float mean = kind == UpdateKind::kWeights ? Value("w")[0] + u : u;
      EXPECT_THAT(Push(a, round + 1, {{"w", round, {mean - 1}}}, 1.0, kind),
                  IsOk());
      EXPECT_THAT(Push(b, round + 1, {{"w", round, {mean + 1}}}, 1.0, kind),
                  IsOk());
      after.push_back(Value("w")[0]);
    }
    return after;
  }
};

// FedAvg, weights: the round's mean weighted by the pushes' weights, every
// contribution counted: (2*1 + 6*3 + 38*4) / 8 = 172 / 8 = 21.5 and
// (0*1 + 4*3 + -1*4) / 8 = 1; the value (7) plays no part.
TEST_F(OptimizerTest, PlainWeightsRoundIsTheWeightedMean) {
  MakeStore();
  const std::uint64_t a = JoinWith("a", "w", {7, 7}, "optimizer=plain");
  const std::uint64_t b = JoinWith("b", "w", {7, 7}, "");
  const std::uint64_t c = JoinWith("c", "w", {7, 7}, "");
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2, 0}}}, 1.0), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {6, 4}}}, 3.0), IsOk());
  ASSERT_THAT(Push(c, 1, {{"w", 0, {38, -1}}}, 4.0), IsOk());
  EXPECT_THAT(Value("w"), ElementsAre(21.5f, 1.0f));
}

// FedAvg, deltas, lr=0.5: mean delta (2*1 + 6*3) / 4 = 5; 1 + 0.5*5 = 3.5.
TEST_F(OptimizerTest, PlainDeltaAddsLrTimesTheMeanDelta) {
  MakeStore();
  const std::uint64_t a = JoinWith("a", "w", {1}, "lr=0.5");
  const std::uint64_t b = JoinWith("b", "w", {1}, "");
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2}}}, 1.0, UpdateKind::kDelta), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {6}}}, 3.0, UpdateKind::kDelta), IsOk());
  EXPECT_EQ(Value("w")[0], 3.5f);
}

// Async, each push alone: weights mix=0.25: 1 + 0.25*(5 - 1) = 2, then
// 2 + 0.25*(6 - 2) = 3; a delta, lr=0.5: 3 + 0.5*4 = 5. b never pushes.
TEST_F(OptimizerTest, PlainAsyncWeightsMixAndDeltasAddLrTimesThem) {
  MakeStore();
  const std::uint64_t a =
      JoinWith("a", "w", {1}, "consistency=async mix=0.25 lr=0.5");
  JoinWith("b", "w", {1}, "");
  ASSERT_THAT(Push(a, 1, {{"w", 0, {5}}}, 3.0), IsOk());
  EXPECT_EQ(Value("w")[0], 2.0f);
  ASSERT_THAT(Push(a, 2, {{"w", 0, {6}}}), IsOk());
  EXPECT_EQ(Value("w")[0], 3.0f);
  ASSERT_THAT(Push(a, 3, {{"w", 0, {4}}}, 1.0, UpdateKind::kDelta), IsOk());
  EXPECT_EQ(Value("w")[0], 5.0f);
  EXPECT_EQ(Version("w"), 3u);
}

// FedAvgM, lr=0.5 momentum=0.5, u = 2, 2:
// round 1: m = 0.5*0 + 2 = 2, value = 1 + 0.5*2 = 2;
// round 2: m = 0.5*2 + 2 = 3 (the momentum carries), value = 2 + 1.5 = 3.5.
TEST_F(OptimizerTest, MomentumCarriesAcrossRounds) {
  for (UpdateKind kind : {UpdateKind::kWeights, UpdateKind::kDelta}) {
    SCOPED_TRACE(kind == UpdateKind::kWeights ? "weights" : "delta");
    EXPECT_THAT(TwoRounds("optimizer=momentum lr=0.5 momentum=0.5", kind, 2, 2),
                ElementsAre(2.0f, 3.5f));
  }
}

// FedAdagrad, lr=1 beta1=0.5 tau=0.75 (v starts at tau^2 = 0.5625), u = 1, 3:
// round 1: m = 0.5*1 = 0.5, v = 0.5625 + 1 = 1.5625 (sqrt 1.25),
//   value = 1 + 0.5 / (1.25 + 0.75) = 1.25;
// round 2: m = 0.25 + 1.5 = 1.75, v = 1.5625 + 9 = 10.5625 (sqrt 3.25),
//   value = 1.25 + 1.75 / 4 = 1.6875.
TEST_F(OptimizerTest, FedAdagradSumsSquaredUpdates) {
  for (UpdateKind kind : {UpdateKind::kWeights, UpdateKind::kDelta}) {
    SCOPED_TRACE(kind == UpdateKind::kWeights ? "weights" : "delta");
    EXPECT_THAT(
        TwoRounds("optimizer=adagrad lr=1 beta1=0.5 tau=0.75", kind, 1, 3),
        ElementsAre(1.25f, 1.6875f));
  }
}

// FedAdam, lr=1 beta1=0.5 beta2=0.625 tau=0.5 (v starts at 0.25), u = 1.5, 3:
// round 1: m = 0.75, v = 0.625*0.25 + 0.375*2.25 = 1 (sqrt 1),
//   value = 1 + 0.75 / 1.5 = 1.5;
// round 2: m = 0.375 + 1.5 = 1.875, v = 0.625*1 + 0.375*9 = 4 (sqrt 2),
//   value = 1.5 + 1.875 / 2.5 = 2.25.
TEST_F(OptimizerTest, FedAdamTwoRounds) {
  for (UpdateKind kind : {UpdateKind::kWeights, UpdateKind::kDelta}) {
    SCOPED_TRACE(kind == UpdateKind::kWeights ? "weights" : "delta");
    EXPECT_THAT(TwoRounds("optimizer=adam lr=1 beta1=0.5 beta2=0.625 tau=0.5",
                          kind, 1.5, 3),
                ElementsAre(1.5f, 2.25f));
  }
}

// FedYogi, lr=1 beta1=0.5 beta2=0.5 tau=0.75 (v starts at 0.5625), u = 3, 2:
// round 1: u^2 = 9 > v: v = 0.5625 + 0.5*9 = 5.0625 (sqrt 2.25; Adam's
//   rule would give 4.78125), m = 1.5, value = 1 + 1.5 / 3 = 1.5;
// round 2: u^2 = 4 < v: v = 5.0625 - 0.5*4 = 3.0625 (sqrt 1.75),
//   m = 0.75 + 1 = 1.75, value = 1.5 + 1.75 / 2.5 = 2.2.
TEST_F(OptimizerTest, FedYogiMovesVTowardUSquaredBothWays) {
  for (UpdateKind kind : {UpdateKind::kWeights, UpdateKind::kDelta}) {
    SCOPED_TRACE(kind == UpdateKind::kWeights ? "weights" : "delta");
    EXPECT_THAT(TwoRounds("optimizer=yogi lr=1 beta1=0.5 beta2=0.5 tau=0.75",
                          kind, 3, 2),
                ElementsAre(1.5f, FloatEq(2.2f)));
  }
}

// Async FedAdam: a push is stepped alone, at once (b never pushes); as in
// FedAdamTwoRounds' first round: weights 2.5 on value 1 (u = 1.5), or the
// delta 1.5: value 1.5.
TEST_F(OptimizerTest, AnAsyncPushStepsFedAdamAlone) {
  MakeStore();
  const std::string adam =
      "consistency=async optimizer=adam lr=1 beta1=0.5 beta2=0.625 tau=0.5";
  const std::uint64_t a =
      JoinAll("a", {Decl("w", {1}, adam), Decl("d", {1}, adam)});
  JoinAll("b", {Decl("w", {1}), Decl("d", {1})});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {2.5f}}}, 7.0), IsOk());
  ASSERT_THAT(Push(a, 2, {{"d", 0, {1.5f}}}, 1.0, UpdateKind::kDelta), IsOk());
  EXPECT_EQ(Value("w")[0], 1.5f);
  EXPECT_EQ(Value("d")[0], 1.5f);
  EXPECT_EQ(Version("w"), 1u);
}

// Aggregators. The robust ones (median, trimmed mean, clipped mean) count
// each contribution once and ignore the pushes' weights, which a bad worker
// chooses: the weights below would move a weighted mean far.

using AggregatorTest = PolicyStoreTest;

// Odd count (3), column by column: {1, 7, 3} -> 3; ties {2, 5, 2} -> 2;
// all equal -> 4; {-1, -5, 0} -> -1. Deltas (lr=0.5): value 10 + 0.5 *
// median{1, 7, 3} = 11.5.
TEST_F(AggregatorTest, MedianOfAnOddCountIsTheMiddleValue) {
  MakeStore();
  const std::string median = "aggregator=median lr=0.5";
  std::vector<std::uint64_t> leases;
  for (const char* w : {"a", "b", "c"}) {
    leases.push_back(
        JoinAll(w, {Decl("w", {0, 0, 0, 0}, median), Decl("d", {10}, median)}));
  }
  const std::vector<std::vector<float>> pushed = {
      {1, 2, 4, -1}, {7, 5, 4, -5}, {3, 2, 4, 0}};
  const std::vector<float> deltas = {1, 7, 3};
  const std::vector<double> weights = {1, 100, 1};
  for (std::size_t j = 0; j < leases.size(); ++j) {
    ASSERT_THAT(Push(leases[j], 1, {{"w", 0, pushed[j]}}, weights[j]), IsOk());
    ASSERT_THAT(Push(leases[j], 2, {{"d", 0, {deltas[j]}}}, weights[j],
                     UpdateKind::kDelta),
                IsOk());
  }
  EXPECT_THAT(Value("w"), ElementsAre(3.0f, 2.0f, 4.0f, -1.0f));
  EXPECT_EQ(Value("d")[0], 11.5f);
}

// Even count (4): the mean of the two middle values. {1, 7, 3, 4} ->
// (3 + 4) / 2 = 3.5; ties in the middle {2, 2, 9, 1} -> 2; all equal -> 4;
// {1, 2, 10, 20} -> 6 (the lower middle alone would be 2, the upper 10).
TEST_F(AggregatorTest, MedianOfAnEvenCountIsTheMeanOfTheTwoMiddle) {
  MakeStore();
  std::vector<std::uint64_t> leases;
  for (const char* w : {"a", "b", "c", "d"}) {
    leases.push_back(JoinWith(w, "w", {0, 0, 0, 0}, "aggregator=median"));
  }
  const std::vector<std::vector<float>> pushed = {
      {1, 2, 4, 1}, {7, 2, 4, 2}, {3, 9, 4, 10}, {4, 1, 4, 20}};
  const std::vector<double> weights = {1, 50, 1, 1};
  for (std::size_t j = 0; j < leases.size(); ++j) {
    ASSERT_THAT(Push(leases[j], 1, {{"w", 0, pushed[j]}}, weights[j]), IsOk());
  }
  EXPECT_THAT(Value("w"), ElementsAre(3.5f, 2.0f, 4.0f, 6.0f));
}

// Trimmed mean of 4 contributions. trim=0.25 drops floor(0.25*4) = 1 per
// side: {1, 7, 3, 4} -> (3 + 4) / 2 = 3.5; {10, -10, 1, 2} -> 1.5; all
// equal -> 5. trim=0.2 drops floor(0.8) = 0: the unweighted mean,
// (1 + 7 + 3 + 4) / 4 = 3.75, (10 - 10 + 1 + 2) / 4 = 0.75, 5.
TEST_F(AggregatorTest, TrimmedMeanDropsFloorOfTrimTimesCountPerSide) {
  MakeStore();
  std::vector<std::uint64_t> leases;
  for (const char* w : {"a", "b", "c", "d"}) {
    leases.push_back(JoinAll(
        w, {Decl("t25", {0, 0, 0}, "aggregator=trimmed_mean trim=0.25"),
            Decl("t20", {0, 0, 0}, "aggregator=trimmed_mean trim=0.2")}));
  }
  const std::vector<std::vector<float>> pushed = {
      {1, 10, 5}, {7, -10, 5}, {3, 1, 5}, {4, 2, 5}};
  const std::vector<double> weights = {1, 50, 1, 1};
  for (std::size_t j = 0; j < leases.size(); ++j) {
    ASSERT_THAT(
        Push(leases[j], 1, {{"t25", 0, pushed[j]}, {"t20", 0, pushed[j]}},
             weights[j]),
        IsOk());
  }
  EXPECT_THAT(Value("t25"), ElementsAre(3.5f, 1.5f, 5.0f));
  EXPECT_THAT(Value("t20"), ElementsAre(3.75f, 0.75f, 5.0f));
}

// trim < 0.5 (0.5 is refused) drops fewer than half of each side, so at
// least one stays: trim=0.499999 of 3 drops floor(1.499997) = 1 per side
// and keeps the middle one, {1, 7, 3} -> 3.
TEST_F(AggregatorTest, ATrimKeepsAtLeastOneContribution) {
  MakeStore();
  EXPECT_THAT(
      store_->Join("a", {Decl("t", {0}, "aggregator=trimmed_mean trim=0.5")}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out of range")));
  std::vector<std::uint64_t> leases;
  for (const char* w : {"a", "b", "c"}) {
    leases.push_back(
        JoinWith(w, "t", {0}, "aggregator=trimmed_mean trim=0.499999"));
  }
  const std::vector<float> pushed = {1, 7, 3};
  for (std::size_t j = 0; j < leases.size(); ++j) {
    ASSERT_THAT(Push(leases[j], 1, {{"t", 0, {pushed[j]}}}), IsOk());
  }
  EXPECT_EQ(Value("t")[0], 3.0f);
}

// clip_norm=1, value {1, 1}. a's update {3, 4} (norm 5) is scaled to
// {0.6, 0.8}; b's {0.5, 0} (norm 0.5) is kept as it is. Their mean, each
// once (weights 1 and 9 ignored): {0.55, 0.4}; value {1.55, 1.4}. As weights
// the update is relative to the value: a pushes {4, 5} (whose own norm,
// 6.4, plays no part) and b {1.5, 1}; as deltas, the updates themselves.
TEST_F(AggregatorTest, ClippedMeanScalesOnlyUpdatesOverTheNorm) {
  MakeStore();
  const std::string clipped = "aggregator=clipped_mean clip_norm=1";
  const std::uint64_t a =
      JoinAll("a", {Decl("w", {1, 1}, clipped), Decl("d", {1, 1}, clipped)});
  const std::uint64_t b = JoinAll("b", {Decl("w", {1, 1}), Decl("d", {1, 1})});
  ASSERT_THAT(Push(a, 1, {{"w", 0, {4, 5}}}, 1.0), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, {1.5f, 1}}}, 9.0), IsOk());
  ASSERT_THAT(Push(a, 2, {{"d", 0, {3, 4}}}, 1.0, UpdateKind::kDelta), IsOk());
  ASSERT_THAT(Push(b, 2, {{"d", 0, {0.5f, 0}}}, 9.0, UpdateKind::kDelta),
              IsOk());
  for (const char* name : {"w", "d"}) {
    SCOPED_TRACE(name);
    EXPECT_THAT(Value(name), ElementsAre(FloatEq(1.55f), FloatEq(1.4f)));
  }
}

// noise_multiplier=3, clip_norm=0.5, 2 contributions: Gaussian noise of
// standard deviation 3 * 0.5 / 2 = 0.75 on each element. Both push the
// value (0), so the new value is the noise alone: over 8192 elements its
// sample standard deviation is 0.75 within 0.04 (its standard error is
// 0.75 / sqrt(2 * 8192) = 0.006), its mean 0 within 0.05. The same seed
// gives the same noise, another seed other noise.
TEST_F(AggregatorTest, ClippedMeanNoiseIsSeededWithTheStatedSpread) {
  auto noisy_round = [this](std::uint64_t seed) {
    StoreOptions options = TestOptions();
    options.random_seed = seed;
    MakeStoreWith(options);
    const std::vector<float> zeros(8192, 0.0f);
    const std::uint64_t a =
        JoinWith("a", "w", zeros,
                 "aggregator=clipped_mean clip_norm=0.5 noise_multiplier=3");
    const std::uint64_t b = JoinWith("b", "w", zeros, "");
    EXPECT_THAT(Push(a, 1, {{"w", 0, zeros}}), IsOk());
    EXPECT_THAT(Push(b, 1, {{"w", 0, zeros}}), IsOk());
    EXPECT_EQ(Version("w"), 1u);
    return Value("w");
  };
  const std::vector<float> first = noisy_round(7);
  const std::vector<float> again = noisy_round(7);
  const std::vector<float> other = noisy_round(8);
  ASSERT_EQ(first.size(), 8192u);
  ASSERT_EQ(again.size(), first.size());
  EXPECT_EQ(std::memcmp(first.data(), again.data(), first.size() * 4), 0);
  EXPECT_NE(first, other);
  double sum = 0;
  double squares = 0;
  for (float x : first) sum += x;
  const double mean = sum / first.size();
  for (float x : first) squares += (x - mean) * (x - mean);
  EXPECT_NEAR(std::sqrt(squares / (first.size() - 1)), 0.75, 0.04);
  EXPECT_NEAR(mean, 0.0, 0.05);
}

// A push with NaN or Inf is refused whole and changes nothing, in a round
// (median) or applied alone (async FedAdam); the round then closes on the
// finite pushes: median{5, 1, 3} = 3, median{5, 1, 9} = 5.
TEST_F(AggregatorTest, ANonFinitePushIsRefusedAndChangesNothing) {
  MakeStore();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::uint64_t a =
      JoinAll("a", {Decl("m", {1, 2}, "aggregator=median"),
                    Decl("h", {1}, "consistency=async optimizer=adam")});
  const std::uint64_t b = JoinWith("b", "m", {1, 2}, "");
  const std::uint64_t c = JoinWith("c", "m", {1, 2}, "");
  EXPECT_THAT(
      Push(a, 1, {{"m", 0, {nan, 1}}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN or Inf")));
  EXPECT_THAT(Push(a, 2, {{"h", 0, {inf}}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Value("m"), ElementsAre(1.0f, 2.0f));
  EXPECT_THAT(Value("h"), ElementsAre(1.0f));
  EXPECT_EQ(Version("m"), 0u);
  EXPECT_EQ(Version("h"), 0u);
  EXPECT_EQ(PolicyBytes("m"), 0u);  // Nothing of it was kept.
  ASSERT_THAT(Push(a, 3, {{"m", 0, {5, 5}}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"m", 0, {1, 1}}}), IsOk());
  ASSERT_THAT(Push(c, 1, {{"m", 0, {3, 9}}}), IsOk());
  EXPECT_THAT(Value("m"), ElementsAre(3.0f, 5.0f));
}

// Rounds close on 2 of 3 contributions 1 s after their first. a (1s) and b
// (5s) push the whole tensor (two chunks); c (2s) delivers the first chunk
// only. The first chunk is median{1, 5, 2} = 2; the second has a's and b's
// only: median{1, 5} = 3 (c's undelivered chunk would make it median{0, 1,
// 5} = 1 if it counted as zeros).
TEST_F(AggregatorTest, AQuorumCloseUnderMedianCountsOnlyDeliveredChunks) {
  StoreOptions options = ClockedOptions();
  options.round_quorum.count = 2;
  options.round_timeout = absl::Seconds(1);
  MakeStoreWith(options);
  const std::size_t n = 2 * kChunk / 4;
  const std::vector<float> zeros(n, 0.0f);
  const std::uint64_t a = JoinWith("a", "w", zeros, "aggregator=median");
  const std::uint64_t b = JoinWith("b", "w", zeros, "");
  const std::uint64_t c = JoinWith("c", "w", zeros, "");
  const std::vector<float> twos(n, 2.0f);
  auto partial = store_->BeginPush(
      PushHeader{c, 1, UpdateKind::kWeights, 1.0, {{"w", 0}}});
  ASSERT_THAT(partial, IsOk());
  ASSERT_THAT((*partial)->AddChunk(
                  0, 0, ::weightd::testing::FloatBytes(twos, 0, kChunk)),
              IsOk());
  ASSERT_THAT(Push(a, 1, {{"w", 0, std::vector<float>(n, 1.0f)}}), IsOk());
  ASSERT_THAT(Push(b, 1, {{"w", 0, std::vector<float>(n, 5.0f)}}), IsOk());
  EXPECT_EQ(Version("w"), 0u);
  now_ += absl::Seconds(2);
  ASSERT_EQ(store_->CloseOverdueRounds(), 1);
  const std::vector<float> value = Value("w");
  ASSERT_EQ(value.size(), n);
  EXPECT_EQ(value[0], 2.0f);
  EXPECT_EQ(value[n / 2 - 1], 2.0f);
  EXPECT_EQ(value[n / 2], 3.0f);
  EXPECT_EQ(value[n - 1], 3.0f);
  EXPECT_EQ(
      static_cast<std::size_t>(std::count(value.begin(), value.end(), 2.0f)),
      n / 2);
}
}  // namespace
}  // namespace weightd::core
