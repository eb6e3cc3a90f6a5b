#include "server/core/kernels.h"

#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace weightd::core {
namespace {

using ::testing::ElementsAreArray;

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(KernelsTest, PiecesSplittingValuesSumLikeOneBuffer) {
  std::vector<float> x(37);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * i - 3.0f;
  const std::string bytes = FloatBytes(x);
  // Cuts at 1, 2 and 3 bytes into values, and an empty piece.
  const std::vector<absl::string_view> pieces = {
      absl::string_view(bytes).substr(0, 5),
      absl::string_view(bytes).substr(5, 0),
      absl::string_view(bytes).substr(5, 14),
      absl::string_view(bytes).substr(19, 1),
      absl::string_view(bytes).substr(20)};
  ASSERT_EQ(PiecesSize(pieces), bytes.size());
  EXPECT_TRUE(AllFinite(pieces));

  std::vector<float> acc(x.size(), 1.0f), expected(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) expected[i] = 1.0f + 2.0f * x[i];
  AccumulateScaled(pieces, 2.0f, acc.data());
  EXPECT_THAT(acc, ElementsAreArray(expected));

  StoreScaled(pieces, 2.0f, acc.data());
  for (std::size_t i = 0; i < x.size(); ++i) expected[i] = 2.0f * x[i];
  EXPECT_THAT(acc, ElementsAreArray(expected));

  std::string copy(bytes.size(), '\0');
  CopyPieces(pieces, copy.data());
  EXPECT_EQ(copy, bytes);
}

TEST(KernelsTest, NonFiniteValueStraddlingPiecesIsFound) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(9, 1.0f);
    x[4] = bad;
    const std::string bytes = FloatBytes(x);
    for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
      const std::vector<absl::string_view> pieces = {
          absl::string_view(bytes).substr(0, cut),
          absl::string_view(bytes).substr(cut)};
      EXPECT_FALSE(AllFinite(pieces)) << bad << " cut " << cut;
    }
  }
}

TEST(KernelsTest, FinishMeanDividesAndReportsOverflow) {
  std::vector<float> acc = {2.0f, 4.0f, 6.0f};
  const std::vector<float> old = {10.0f, 20.0f, 30.0f};
  EXPECT_TRUE(FinishMean(acc.data(), old.data(), 3, 2.0, false, 0.5f));
  EXPECT_THAT(acc, ElementsAreArray({1.0f, 2.0f, 3.0f}));
  EXPECT_TRUE(FinishMean(acc.data(), old.data(), 3, 1.0, true, 0.5f));
  EXPECT_THAT(acc, ElementsAreArray({10.5f, 21.0f, 31.5f}));
  acc = {std::numeric_limits<float>::max(), 1.0f, 1.0f};
  EXPECT_FALSE(FinishMean(acc.data(), old.data(), 3, 0.5, false, 1.0f));
}

}  // namespace
}  // namespace weightd::core
