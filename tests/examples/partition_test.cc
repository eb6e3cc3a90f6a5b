// The experiment knobs of the Fashion-MNIST worker (examples/partition.h,
// examples/corruption.h), without data files: labels are made up here.
#include "examples/partition.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "examples/corruption.h"
#include "examples/fashion_mnist.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd::examples {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::weightd::testing::StatusIs;

// n labels of `classes` classes, as evenly as Fashion-MNIST's and in a
// scrambled order (so that index order says nothing about the class).
std::vector<std::uint8_t> Labels(int n, int classes) {
  std::vector<std::uint8_t> labels(n);
  for (int i = 0; i < n; ++i) {
    labels[i] = static_cast<std::uint8_t>((i * 7 + i / classes) % classes);
  }
  return labels;
}

// Fraction of a shard's examples in its most common class.
double TopClassShare(const std::vector<int>& shard,
                     const std::vector<std::uint8_t>& labels, int classes) {
  std::vector<int> counts(classes);
  for (int i : shard) ++counts[labels[i]];
  return static_cast<double>(*std::max_element(counts.begin(), counts.end())) /
         shard.size();
}

TEST(DirichletPartitionTest, EveryExampleIsInExactlyOneShard) {
  const std::vector<std::uint8_t> labels = Labels(60000, 10);
  for (double alpha : {0.05, 0.1, 1.0, 100.0}) {
    for (int workers : {1, 3, 8}) {
      auto shards = DirichletPartition(labels, 10, workers, alpha, 7, 64);
      ASSERT_TRUE(shards.ok()) << shards.status();
      ASSERT_EQ(shards->size(), workers);
      std::vector<int> all;
      for (const std::vector<int>& shard : *shards) {
        EXPECT_TRUE(std::is_sorted(shard.begin(), shard.end()));
        EXPECT_GE(shard.size(), 64) << "alpha " << alpha;
        all.insert(all.end(), shard.begin(), shard.end());
      }
      std::sort(all.begin(), all.end());
      std::vector<int> expected(labels.size());
      std::iota(expected.begin(), expected.end(), 0);
      EXPECT_EQ(all, expected) << "alpha " << alpha << " workers " << workers;
    }
  }
}

TEST(DirichletPartitionTest, SameSeedSamePartitionOtherSeedAnother) {
  const std::vector<std::uint8_t> labels = Labels(60000, 10);
  auto a = DirichletPartition(labels, 10, 8, 0.1, 1, 64);
  auto b = DirichletPartition(labels, 10, 8, 0.1, 1, 64);
  auto c = DirichletPartition(labels, 10, 8, 0.1, 2, 64);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
}

// Pins the draw itself: a change to the sampler or the cutting changes every
// experiment's shards, which would make runs before and after incomparable.
TEST(DirichletPartitionTest, ShardSizesOfAKnownSeedStayPut) {
  const std::vector<std::uint8_t> labels = Labels(1000, 4);
  auto shards = DirichletPartition(labels, 4, 3, 0.5, 42, 10);
  ASSERT_TRUE(shards.ok()) << shards.status();
  std::vector<int> sizes;
  for (const std::vector<int>& shard : *shards) sizes.push_back(shard.size());
  EXPECT_THAT(sizes, ElementsAre(451, 314, 235));
}

TEST(DirichletPartitionTest, SmallAlphaSkewsTheClassesLargeAlphaDoesNot) {
  const std::vector<std::uint8_t> labels = Labels(60000, 10);
  auto skewed = DirichletPartition(labels, 10, 8, 0.1, 3, 64);
  auto even = DirichletPartition(labels, 10, 8, 1000.0, 3, 64);
  ASSERT_TRUE(skewed.ok() && even.ok());
  double skewed_share = 0, even_share = 0;
  for (int j = 0; j < 8; ++j) {
    skewed_share += TopClassShare((*skewed)[j], labels, 10) / 8;
    even_share += TopClassShare((*even)[j], labels, 10) / 8;
    // Near 1/8 of every class each.
    EXPECT_NEAR((*even)[j].size(), 7500, 300);
  }
  // An even shard's top class holds about 1/10 of it; alpha 0.1 gives
  // mostly one or two classes.
  EXPECT_LT(even_share, 0.12);
  EXPECT_GT(skewed_share, 0.5);
}

TEST(DirichletPartitionTest, RefusesWhatCannotWork) {
  const std::vector<std::uint8_t> labels = Labels(400, 4);
  for (double alpha : {0.0, -1.0, std::numeric_limits<double>::infinity(),
                       std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_THAT(DirichletPartition(labels, 4, 2, alpha, 1, 0),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << alpha;
  }
  EXPECT_THAT(DirichletPartition(labels, 4, 0, 1.0, 1, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DirichletPartition(labels, 3, 2, 1.0, 1, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));  // Label 3.
  EXPECT_THAT(DirichletPartition(labels, 4, 4, 1.0, 1, 101),
              StatusIs(absl::StatusCode::kInvalidArgument));  // 4 * 101 > 400.
  // 4 classes, each going almost whole to one of 5 workers: some worker
  // always gets (nearly) nothing.
  EXPECT_THAT(DirichletPartition(labels, 4, 5, 0.01, 1, 80),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(SampleGammaTest, MeanAndVarianceAreTheShape) {
  for (double shape : {0.1, 1.0, 2.5}) {
    std::mt19937_64 rng(5);
    constexpr int kDraws = 200000;
    double sum = 0, sum_squares = 0;
    for (int i = 0; i < kDraws; ++i) {
      const double x = SampleGamma(shape, &rng);
      ASSERT_GE(x, 0);
      sum += x;
      sum_squares += x * x;
    }
    const double mean = sum / kDraws;
    const double variance = sum_squares / kDraws - mean * mean;
    // Gamma(k, 1): mean k, variance k. Tolerances are several standard
    // errors at this many draws.
    EXPECT_NEAR(mean, shape, 0.02 * shape + 0.005) << shape;
    EXPECT_NEAR(variance, shape, 0.06 * shape) << shape;
  }
}

TEST(SubsetTest, TakesTheExamplesAtTheIndicesAndCountsTheirClasses) {
  Dataset data;
  data.rows = 1;
  data.cols = 2;
  data.images = {0, 1, 10, 11, 20, 21, 30, 31};
  data.labels = {3, 1, 3, 0};
  const std::vector<int> indices = {2, 0, 3};
  Dataset subset = Subset(data, indices);
  EXPECT_EQ(subset.rows, 1);
  EXPECT_EQ(subset.cols, 2);
  EXPECT_THAT(subset.images, ElementsAre(20, 21, 0, 1, 30, 31));
  EXPECT_THAT(subset.labels, ElementsAre(3, 3, 0));
  EXPECT_THAT(ClassHistogram(subset, 4), ElementsAre(1, 0, 0, 2));
  EXPECT_EQ(HistogramText(ClassHistogram(subset, 4)),
            "3 examples; per class 0:1 1:0 2:0 3:2");
}

TEST(CorruptionTest, ParsesTheThreeNames) {
  Corruption corruption = Corruption::kNone;
  EXPECT_TRUE(ParseCorruption("signflip", &corruption));
  EXPECT_EQ(corruption, Corruption::kSignFlip);
  EXPECT_TRUE(ParseCorruption("noise", &corruption));
  EXPECT_EQ(corruption, Corruption::kNoise);
  EXPECT_TRUE(ParseCorruption("none", &corruption));
  EXPECT_EQ(corruption, Corruption::kNone);
  EXPECT_FALSE(ParseCorruption("flip", &corruption));
}

TEST(CorruptionTest, SignFlipScalesByMinusTheScaleNoneKeepsTheValues) {
  std::mt19937_64 rng(1);
  std::vector<float> values = {0.5f, -2.0f, 0.0f, 3.25f};
  Corrupt(Corruption::kNone, 10, &rng, absl::MakeSpan(values));
  EXPECT_THAT(values, ElementsAre(0.5f, -2.0f, 0.0f, 3.25f));
  Corrupt(Corruption::kSignFlip, 10, &rng, absl::MakeSpan(values));
  EXPECT_THAT(values, ElementsAre(-5.0f, 20.0f, 0.0f, -32.5f));
}

TEST(CorruptionTest, NoiseHasMeanZeroAndTheScaleAsStandardDeviation) {
  std::mt19937_64 rng(1);
  std::vector<float> values(100000, 0.25f);
  Corrupt(Corruption::kNoise, 10, &rng, absl::MakeSpan(values));
  double sum = 0, sum_squares = 0;
  for (float v : values) {
    sum += v;
    sum_squares += static_cast<double>(v) * v;
  }
  const double mean = sum / values.size();
  EXPECT_NEAR(mean, 0, 0.1);
  EXPECT_NEAR(std::sqrt(sum_squares / values.size() - mean * mean), 10, 0.1);
}

}  // namespace
}  // namespace weightd::examples
