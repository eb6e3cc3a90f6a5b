// PolicyStoreTest: TensorStoreTest with the declarations, joins and reads
// the per-tensor policy tests make (policy_test.cc, policy_store_test.cc),
// and a clock the test moves.
#ifndef WEIGHTD_TESTS_SERVER_CORE_POLICY_FIXTURE_H_
#define WEIGHTD_TESTS_SERVER_CORE_POLICY_FIXTURE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "common/policy_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/policy.h"
#include "server/core/tensor_store.h"
#include "tests/server/core/store_fixture.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {

// The spec of a policy's text; a test failure (and an empty spec) if it
// does not parse.
inline PolicySpec Spec(const std::string& text) {
  absl::StatusOr<PolicySpec> spec = ParsePolicySpec(text);
  EXPECT_THAT(spec, ::weightd::testing::IsOk()) << text;
  return spec.ok() ? *spec : PolicySpec{};
}

class PolicyStoreTest : public TensorStoreTest {
 protected:
  // TestOptions() on the test's clock (now_).
  StoreOptions ClockedOptions() {
    StoreOptions options = TestOptions();
    options.now = [this] { return now_; };
    return options;
  }
  // A 1-D tensor declared with `value` and the policy of text `policy`.
  static Declaration Decl(const std::string& name, std::vector<float> value,
                          const std::string& policy = "") {
    Declaration d{name, {static_cast<std::int64_t>(value.size())}, value};
    d.policy = Spec(policy);
    return d;
  }
  // Joins `worker` declaring `declarations`; its lease (0 and a test
  // failure if refused).
  std::uint64_t JoinAll(const std::string& worker,
                        std::vector<Declaration> declarations) {
    auto joined = store_->Join(worker, std::move(declarations));
    EXPECT_THAT(joined, ::weightd::testing::IsOk()) << worker;
    return joined.ok() ? joined->lease_id : 0;
  }
  std::uint64_t JoinWith(const std::string& worker, const std::string& name,
                         std::vector<float> value, const std::string& policy) {
    return JoinAll(worker, {Decl(name, std::move(value), policy)});
  }
  TensorPolicy PolicyOf(const std::string& name) {
    auto info = store_->Describe(name);
    EXPECT_THAT(info, ::weightd::testing::IsOk());
    return info.ok() ? info->policy : TensorPolicy{};
  }
  std::uint64_t PolicyBytes(const std::string& name) {
    auto info = store_->Describe(name);
    EXPECT_THAT(info, ::weightd::testing::IsOk());
    return info.ok() ? info->policy_bytes : 0;
  }

  absl::Time now_ = absl::FromUnixSeconds(1700000000);
};

}  // namespace weightd::core

#endif  // WEIGHTD_TESTS_SERVER_CORE_POLICY_FIXTURE_H_
