#include "client/shard_plan.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/model_shapes.h"
#include "client/types.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

constexpr std::uint64_t kSplit = 4 << 20;

TEST(StableNameHash, IsFnv1a64) {
  // The published FNV-1a test vectors: every worker, in any language,
  // must place a name on the same shard.
  EXPECT_EQ(StableNameHash(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(StableNameHash("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(StableNameHash("foobar"), 0x85944171f73967e8ULL);
}

TEST(PlaceTensor, OneShardHoldsEverythingWhole) {
  auto p = PlaceTensor("w", {10000, 1000}, 1, kSplit);  // 40 MB.
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].shard, 0u);
  EXPECT_EQ(p[0].elements, 10000u * 1000u);
  EXPECT_THAT(p[0].shape, ElementsAre(10000, 1000));
}

TEST(PlaceTensor, SmallTensorsGoWholeToTheirHashedShardAndSpread) {
  std::vector<int> per_shard(4, 0);
  for (int i = 0; i < 400; ++i) {
    const std::string name = "layer" + std::to_string(i) + ".w";
    auto p = PlaceTensor(name, {1024}, 4, kSplit);
    ASSERT_EQ(p.size(), 1u);
    EXPECT_EQ(p[0].shard, StableNameHash(name) % 4);
    EXPECT_EQ(p[0].first, 0u);
    EXPECT_EQ(p[0].elements, 1024u);
    ++per_shard[p[0].shard];
  }
  for (int n : per_shard) EXPECT_GT(n, 50);  // Not all on one shard.
}

TEST(PlaceTensor, AtTheThresholdStaysWholeAboveItSplitsByRows) {
  EXPECT_EQ(PlaceTensor("w", {1 << 20}, 2, kSplit).size(), 1u);  // 4 MiB.
  auto p = PlaceTensor("w", {(1 << 20) + 3}, 2, kSplit);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].first, 0u);
  EXPECT_EQ(p[0].elements + p[1].elements, (1u << 20) + 3);
  EXPECT_EQ(p[1].first, p[0].elements);
  EXPECT_NE(p[0].shard, p[1].shard);
}

TEST(PlaceTensor, RowRangesAreContiguousAndCoverTheTensor) {
  auto p = PlaceTensor("encoder.w", {1001, 3, 1000}, 4, kSplit);
  ASSERT_EQ(p.size(), 4u);
  std::uint64_t next = 0, rows = 0;
  std::vector<bool> used(4, false);
  for (const Placement& part : p) {
    EXPECT_EQ(part.first, next);
    EXPECT_EQ(part.shape.size(), 3u);
    EXPECT_EQ(part.shape[1], 3);
    EXPECT_EQ(part.shape[2], 1000);
    EXPECT_EQ(part.elements, static_cast<std::uint64_t>(part.shape[0]) * 3000);
    next += part.elements;
    rows += part.shape[0];
    EXPECT_FALSE(used[part.shard]) << "two parts on shard " << part.shard;
    used[part.shard] = true;
  }
  EXPECT_EQ(next, 1001u * 3000u);
  EXPECT_EQ(rows, 1001u);
}

TEST(PlaceTensor, FewerRowsThanShardsUseFewerShards) {
  auto p = PlaceTensor("wide", {2, 4 << 20}, 4, kSplit);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].shape[0], 1);
  EXPECT_EQ(p[1].shape[0], 1);
  // A scalar or one row cannot split: whole on its shard.
  EXPECT_EQ(PlaceTensor("row", {1, 4 << 20}, 4, kSplit).size(), 1u);
  // Nor can a shape the server will refuse: it goes whole, to be refused.
  auto bad = PlaceTensor("bad", {-3, 4 << 20}, 4, kSplit);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(bad[0].elements, 0u);
}

TEST(PlaceTensor, AnotherShapeOfTheSameSizeGivesAnotherPartShape) {
  // So that a shard refuses a worker declaring a different shape, as a
  // single server would.
  auto a = PlaceTensor("w", {2000, 1000}, 2, kSplit);
  auto b = PlaceTensor("w", {1000, 2000}, 2, kSplit);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_NE(a[0].shape, b[0].shape);
}

// A round lasts as long as its busiest shard's link is busy, so the default
// split must spread a real model's bytes evenly. At the old default, 4 MiB,
// ResNet-50's busiest shard held 12.6 %, 20 % and 61 % over an equal share
// at 2, 4 and 8 shards.
TEST(PlaceTensor, TheDefaultSplitSpreadsResNet50Evenly) {
  const std::uint64_t split = ClientOptions{}.split_bytes;
  const auto shapes = bench::ResNet50Shapes();
  for (std::uint32_t shards : {2u, 4u, 8u}) {
    std::vector<std::uint64_t> bytes(shards, 0);
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      for (const Placement& p :
           PlaceTensor("t" + std::to_string(i), shapes[i], shards, split)) {
        bytes[p.shard] += 4 * p.elements;
        total += 4 * p.elements;
      }
    }
    ASSERT_EQ(total, 25557032u * 4);
    const double busiest =
        static_cast<double>(*std::max_element(bytes.begin(), bytes.end()));
    EXPECT_LE(busiest / (static_cast<double>(total) / shards), 1.03)
        << shards << " shards";
  }
}

TEST(SplitTargets, SplitsAndTrims) {
  EXPECT_THAT(SplitTargets("a:1"), IsOk());
  auto t = SplitTargets("a:1, b:2 ,c:3");
  ASSERT_THAT(t, IsOk());
  EXPECT_THAT(*t, ElementsAre("a:1", "b:2", "c:3"));
  EXPECT_THAT(SplitTargets(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      SplitTargets("a:1,,b:2"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty entry")));
}

TEST(OrderShards, OrdersByReportedIndex) {
  auto order = OrderShards({"x:1", "y:1", "z:1"}, {{2, 3}, {0, 3}, {1, 3}});
  ASSERT_THAT(order, IsOk());
  EXPECT_THAT(*order, ElementsAre(1u, 2u, 0u));
}

TEST(OrderShards, RefusesEveryInconsistentLayout) {
  // A shard missing from the list.
  EXPECT_THAT(OrderShards({"x:1"}, {{0, 2}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("is shard 0 of 2, but this worker was given "
                                 "1 server(s)")));
  // Two servers with one index (or one server listed twice).
  EXPECT_THAT(OrderShards({"x:1", "y:1"}, {{1, 2}, {1, 2}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("both say they are shard 1 of 2")));
  // Servers started with different counts.
  EXPECT_THAT(OrderShards({"x:1", "y:1"}, {{0, 2}, {1, 3}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("--shard_count=2")));
  // An index outside the count (a bad server) is refused, not used.
  EXPECT_THAT(OrderShards({"x:1", "y:1"}, {{0, 2}, {7, 2}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // Unsharded servers given as a list.
  EXPECT_THAT(OrderShards({"x:1", "y:1"}, {{0, 1}, {0, 1}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace weightd
