// GoogleTest matchers for absl::Status and absl::StatusOr (Abseil 20220623
// ships none).
#ifndef WEIGHTD_TESTS_TESTING_STATUS_MATCHERS_H_
#define WEIGHTD_TESTS_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace weightd::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// EXPECT_THAT(store->Leave(7),
// StatusIs(absl::StatusCode::kFailedPrecondition)); EXPECT_THAT(result,
// StatusIs(kAborted, HasSubstr("current round is 3")));
MATCHER_P(StatusIs, code,
          std::string(negation ? "isn't" : "is") + " a status with code " +
              absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_matcher,
           std::string(negation ? "isn't" : "is") + " a status with code " +
               absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::ExplainMatchResult(
             message_matcher, std::string(s.message()), result_listener);
}

MATCHER(IsOk, negation ? "isn't OK" : "is OK") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.ok();
}

}  // namespace weightd::testing

#define WEIGHTD_ASSERT_OK(expr) ASSERT_THAT((expr), ::weightd::testing::IsOk())
#define WEIGHTD_EXPECT_OK(expr) EXPECT_THAT((expr), ::weightd::testing::IsOk())

// ASSERT_OK_AND_ASSIGN for tests: `lhs` receives the value of a StatusOr.
#define WEIGHTD_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  WEIGHTD_ASSERT_OK_AND_ASSIGN_IMPL_(            \
      WEIGHTD_TEST_CONCAT_(weightd_statusor_, __LINE__), lhs, rexpr)
#define WEIGHTD_TEST_CONCAT_INNER_(a, b) a##b
#define WEIGHTD_TEST_CONCAT_(a, b) WEIGHTD_TEST_CONCAT_INNER_(a, b)
#define WEIGHTD_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                       \
  ASSERT_THAT(statusor.status(), ::weightd::testing::IsOk());    \
  lhs = std::move(statusor).value()

#endif  // WEIGHTD_TESTS_TESTING_STATUS_MATCHERS_H_
