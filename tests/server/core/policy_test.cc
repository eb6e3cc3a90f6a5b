// Per-tensor policies (server/core/policy.h, server/core/rules/): the text
// form, how a declaration resolves over the server's defaults, and what
// each rule computes, against numbers worked out by hand.
#include "server/core/policy.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/policy_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/core/store_fixture.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {
namespace {

using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

PolicySpec Spec(const std::string& text) {
  absl::StatusOr<PolicySpec> spec = ParsePolicySpec(text);
  EXPECT_THAT(spec, IsOk()) << text;
  return spec.ok() ? *spec : PolicySpec{};
}

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

class PolicyStoreTest : public TensorStoreTest {
 protected:
  std::uint64_t JoinWith(const std::string& worker, const std::string& name,
                         std::vector<float> value, const std::string& policy) {
    Declaration d{name, {static_cast<std::int64_t>(value.size())}, value};
    d.policy = Spec(policy);
    auto joined = store_->Join(worker, {std::move(d)});
    EXPECT_THAT(joined, IsOk());
    return joined.ok() ? joined->lease_id : 0;
  }
};

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

}  // namespace
}  // namespace weightd::core
