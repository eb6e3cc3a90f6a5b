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
  EXPECT_TRUE(AllFinite(pieces, WireFormat::kFloat32));

  std::vector<float> acc(x.size(), 1.0f), expected(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) expected[i] = 1.0f + 2.0f * x[i];
  AccumulateScaled(pieces, WireFormat::kFloat32, 2.0f, acc.data());
  EXPECT_THAT(acc, ElementsAreArray(expected));

  StoreScaled(pieces, WireFormat::kFloat32, 2.0f, acc.data());
  for (std::size_t i = 0; i < x.size(); ++i) expected[i] = 2.0f * x[i];
  EXPECT_THAT(acc, ElementsAreArray(expected));

  std::vector<float> decoded(x.size());
  DecodePieces(pieces, WireFormat::kFloat32, decoded.data());
  EXPECT_EQ(decoded, x);
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
      EXPECT_FALSE(AllFinite(pieces, WireFormat::kFloat32))
          << bad << " cut " << cut;
    }
  }
}

TEST(KernelsTest, SixteenBitPayloadsAcrossPieceCuts) {
  for (WireFormat f : {WireFormat::kBfloat16, WireFormat::kFloat16}) {
    // Values exact in both formats, 2500 of them (more than a decode block).
    std::vector<float> x(2500);
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = static_cast<float>(static_cast<int>(i % 64) - 32) * 0.25f;
    }
    std::string bytes(x.size() * 2, '\0');
    EncodeValues(x.data(), x.size(), f, bytes.data());
    for (std::size_t cut :
         {std::size_t{1}, std::size_t{2}, std::size_t{3001}}) {
      const std::vector<absl::string_view> pieces = {
          absl::string_view(bytes).substr(0, cut),
          absl::string_view(bytes).substr(cut)};
      EXPECT_TRUE(AllFinite(pieces, f));
      std::vector<float> acc(x.size(), 1.0f), expected(x.size());
      for (std::size_t i = 0; i < x.size(); ++i)
        expected[i] = 1.0f + 3.0f * x[i];
      AccumulateScaled(pieces, f, 3.0f, acc.data());
      EXPECT_EQ(acc, expected) << WireFormatName(f) << " cut " << cut;
      std::vector<float> decoded(x.size());
      DecodePieces(pieces, f, decoded.data());
      EXPECT_EQ(decoded, x);
    }
    // An Inf in the payload, straddling the cut.
    std::vector<float> bad(9, 1.0f);
    bad[4] = std::numeric_limits<float>::infinity();
    std::string bad_bytes(bad.size() * 2, '\0');
    EncodeValues(bad.data(), bad.size(), f, bad_bytes.data());
    const std::vector<absl::string_view> pieces = {
        absl::string_view(bad_bytes).substr(0, 9),
        absl::string_view(bad_bytes).substr(9)};
    EXPECT_FALSE(AllFinite(pieces, f)) << WireFormatName(f);
  }
}

TEST(KernelsTest, MeanInPlaceDivides) {
  std::vector<float> acc = {2.0f, 4.0f, 6.0f};
  MeanInPlace(acc.data(), 3, 2.0);
  EXPECT_THAT(acc, ElementsAreArray({1.0f, 2.0f, 3.0f}));
  acc = {std::numeric_limits<float>::max(), 1.0f, 1.0f};
  MeanInPlace(acc.data(), 3, 0.5);
  EXPECT_FALSE(AllFinite(reinterpret_cast<const char*>(acc.data()), 3));
}

}  // namespace
}  // namespace weightd::core
