#include "common/names.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

TEST(ValidateNameTest, AcceptsPathLikeNames) {
  EXPECT_THAT(ValidateName("tensor name", "encoder/layer.0:w-1_b"), IsOk());
  EXPECT_THAT(ValidateName("tensor name", std::string(kMaxNameBytes, 'a')),
              IsOk());
}

TEST(ValidateNameTest, RejectsEmptyLongAndOddCharacters) {
  EXPECT_THAT(ValidateName("worker id", ""),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("worker id is empty")));
  EXPECT_THAT(ValidateName("tensor name", std::string(kMaxNameBytes + 1, 'a')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("257")));
  EXPECT_THAT(ValidateName("tensor name", "a b"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("outside [A-Za-z0-9_.:/-]")));
  EXPECT_THAT(ValidateName("tensor name", std::string("a\0b", 3)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\\000")));
}

}  // namespace
}  // namespace weightd
