// Sharding: several real weightd servers on 127.0.0.1 (port 0), each told
// its shard index and count, driven through the real client given all of
// them.
#include <stdlib.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/shard_plan.h"
#include "common/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/server.h"
#include "server/storage/snapshot.h"
#include "tests/testing/client_options.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

// Small enough that a 120 KB tensor splits.
constexpr std::uint64_t kSplitBytes = 64 << 10;

std::unique_ptr<service::Server> StartShard(std::uint32_t index,
                                            std::uint32_t count,
                                            std::string listen = "127.0.0.1:0",
                                            std::string snapshot_dir = "") {
  service::ServerOptions options;
  options.listen_address = std::move(listen);
  options.snapshot_dir = std::move(snapshot_dir);
  options.shard_index = index;
  options.shard_count = count;
  options.store.chunk_bytes = kMinChunkBytes;  // Many chunks on small data.
  options.shutdown_grace = absl::Seconds(2);
  options.log_rounds = false;
  auto server = service::Server::Start(std::move(options));
  EXPECT_THAT(server, IsOk());
  return server.ok() ? std::move(*server) : nullptr;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectTo(
    const std::vector<std::string>& addresses, const std::string& worker,
    absl::Duration call_timeout = absl::Seconds(60),
    std::function<void(absl::string_view)> log = nullptr) {
  ClientOptions options = testing::TestClientOptions();
  options.address = absl::StrJoin(addresses, ",");
  options.worker_id = worker;
  options.log = std::move(log);
  options.call_timeout = call_timeout;
  options.connect_timeout = absl::Seconds(10);
  options.retry_budget = absl::Seconds(1);
  options.split_bytes = kSplitBytes;
  return Client::Connect(options);
}

// A name that hashes to `shard` of `count`.
std::string NameOnShard(std::uint32_t shard, std::uint32_t count) {
  for (int i = 0;; ++i) {
    std::string name = absl::StrCat("t", i);
    if (StableNameHash(name) % count == shard) return name;
  }
}

class ShardingTest : public ::testing::Test {
 protected:
  void StartShards(std::uint32_t count) {
    for (std::uint32_t i = 0; i < count; ++i) {
      shards_.push_back(StartShard(i, count));
      ASSERT_NE(shards_.back(), nullptr);
    }
  }
  // Addresses in reverse shard order: the client orders them itself.
  std::vector<std::string> Addresses() const {
    std::vector<std::string> out;
    for (const auto& s : shards_) out.push_back(s->address());
    std::reverse(out.begin(), out.end());
    return out;
  }
  std::unique_ptr<Client> Connect(
      const std::string& worker,
      absl::Duration call_timeout = absl::Seconds(60),
      std::function<void(absl::string_view)> log = nullptr) {
    auto client = ConnectTo(Addresses(), worker, call_timeout, std::move(log));
    EXPECT_THAT(client, IsOk());
    return client.ok() ? std::move(*client) : nullptr;
  }
  // What shard `i` holds: name -> shape.
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> Held(int i) {
    std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
    for (const core::TensorInfo& t : shards_[i]->store().Status().tensors) {
      out.emplace_back(t.name, t.shape);
    }
    return out;
  }

  std::vector<std::unique_ptr<service::Server>> shards_;
};

// One worker's model: a big tensor (split by rows) and 20 small ones.
struct Model {
  explicit Model(float offset)
      : big(300 * 100), small(20, std::vector<float>(16)) {
    for (std::size_t i = 0; i < big.size(); ++i)
      big[i] = float(i % 1000) + offset;
    for (std::size_t t = 0; t < small.size(); ++t) {
      for (std::size_t i = 0; i < 16; ++i)
        small[t][i] = float(t * 16 + i) + offset;
    }
  }
  std::vector<TensorRef> Refs() {
    std::vector<TensorRef> refs = {{"big", {300, 100}, absl::MakeSpan(big)}};
    for (std::size_t t = 0; t < small.size(); ++t) {
      refs.push_back(
          {absl::StrCat("small", t), {16}, absl::MakeSpan(small[t])});
    }
    return refs;
  }
  std::vector<float> big;
  std::vector<std::vector<float>> small;
};

TEST_F(ShardingTest, TensorsSpreadOverShardsAndAverageAsOnOneServer) {
  StartShards(2);
  constexpr int kWorkers = 3;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<Model> models;
  for (int w = 0; w < kWorkers; ++w) {
    clients.push_back(Connect(absl::StrCat("w", w)));
    ASSERT_NE(clients.back(), nullptr);
    // Offsets 0, 1, 2: the mean is the offset-1 model, exactly.
    models.emplace_back(float(w));
  }
  EXPECT_EQ(
      clients[0]->servers(),
      std::vector<std::string>({shards_[0]->address(), shards_[1]->address()}));
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_THAT(clients[w]->Join(models[w].Refs()), IsOk());
  }
  // Worker 0 created every tensor, so the others now hold its values.
  EXPECT_EQ(models[1].big, models[0].big);
  EXPECT_EQ(models[2].small[7], models[0].small[7]);
  for (int w = 0; w < kWorkers; ++w) models[w] = Model(float(w));

  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back(
        [&, w] { results[w] = clients[w]->PushPull(models[w].Refs()); });
  }
  for (auto& t : threads) t.join();
  const Model mean(1.0f);
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_THAT(results[w], IsOk());
    EXPECT_EQ(models[w].big, mean.big);
    EXPECT_EQ(models[w].small, mean.small);
    auto version = clients[w]->Version("big");
    ASSERT_THAT(version, IsOk());
    EXPECT_EQ(*version, 1u);
  }

  // Each shard holds half of "big" (its rows) and its share of the small
  // ones; together exactly the model.
  int small_held = 0;
  int big_rows = 0;
  for (int i = 0; i < 2; ++i) {
    for (const auto& [name, shape] : Held(i)) {
      if (name == "big") {
        EXPECT_EQ(shape, (std::vector<std::int64_t>{150, 100}));
        big_rows += shape[0];
      } else {
        EXPECT_EQ(StableNameHash(name) % 2, static_cast<std::uint64_t>(i))
            << name;
        ++small_held;
      }
    }
  }
  EXPECT_EQ(big_rows, 300);
  EXPECT_EQ(small_held, 20);
  EXPECT_GT(Held(0).size(), 1u);
  EXPECT_GT(Held(1).size(), 1u);
  auto status = clients[0]->GetStatus();
  ASSERT_THAT(status, IsOk());
  EXPECT_EQ(status->rounds_closed, 2u + 20u);  // big's two parts, 20 small.

  // A worker joining later starts from the shared value of every shard.
  auto late = Connect("late");
  ASSERT_NE(late, nullptr);
  Model fresh(100.0f);
  ASSERT_THAT(late->Join(fresh.Refs()), IsOk());
  EXPECT_EQ(fresh.big, mean.big);
  EXPECT_EQ(fresh.small, mean.small);
}

TEST_F(ShardingTest, BarrierWorksForWorkersWithNothingOnShardZero) {
  StartShards(2);
  const std::string name = NameOnShard(1, 2);
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::vector<float>> values(2, std::vector<float>(8, 1.0f));
  for (int w = 0; w < 2; ++w) {
    clients.push_back(Connect(absl::StrCat("w", w)));
    ASSERT_NE(clients.back(), nullptr);
    ASSERT_THAT(clients[w]->Join({{name, {8}, absl::MakeSpan(values[w])}}),
                IsOk());
  }
  EXPECT_THAT(Held(0), ::testing::IsEmpty());
  ASSERT_EQ(Held(1).size(), 1u);
  std::vector<absl::Status> results(2);
  std::thread other([&] { results[1] = clients[1]->Barrier("start", 2); });
  results[0] = clients[0]->Barrier("start", 2);
  other.join();
  EXPECT_THAT(results[0], IsOk());
  EXPECT_THAT(results[1], IsOk());
  EXPECT_THAT(clients[0]->Leave(), IsOk());
}

TEST_F(ShardingTest, InconsistentLayoutsAreRefusedWithTheReason) {
  StartShards(2);
  // One shard of two given.
  EXPECT_THAT(ConnectTo({shards_[1]->address()}, "a"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("is shard 1 of 2")));
  // Two servers that both claim index 0.
  auto twin = StartShard(0, 2);
  ASSERT_NE(twin, nullptr);
  EXPECT_THAT(ConnectTo({shards_[0]->address(), twin->address()}, "a"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("both say they are shard 0 of 2")));
  // A server that is not sharded beside a shard.
  auto single = StartShard(0, 1);
  ASSERT_NE(single, nullptr);
  EXPECT_THAT(ConnectTo({single->address(), shards_[1]->address()}, "a"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("shard 0 of 1")));
  // A server cannot be started outside its count.
  service::ServerOptions bad;
  bad.listen_address = "127.0.0.1:0";
  bad.shard_index = 2;
  bad.shard_count = 2;
  EXPECT_THAT(service::Server::Start(bad),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("shard index 2 is not in [0, 2)")));
  // And a consistent list in any order works.
  EXPECT_THAT(ConnectTo(Addresses(), "a"), IsOk());
}

TEST_F(ShardingTest, AShardRestartedWithAnotherLayoutIsRefusedAtJoin) {
  StartShards(2);
  auto client = Connect("a");
  ASSERT_NE(client, nullptr);
  std::vector<float> value(8, 1.0f);
  const std::string name = NameOnShard(0, 2);
  ASSERT_THAT(client->Join({{name, {8}, absl::MakeSpan(value)}}), IsOk());
  // Shard 1 comes back on its port as shard 1 of 3.
  const std::string listen = absl::StrCat("127.0.0.1:", shards_[1]->port());
  shards_[1].reset();
  shards_[1] = StartShard(1, 3, listen);
  ASSERT_NE(shards_[1], nullptr);
  EXPECT_THAT(client->Join({{name, {8}, absl::MakeSpan(value)}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("this server is shard 1 of 3; the worker "
                                 "takes it for shard 1 of 2")));
  // Refused before anything changed there, and left on the shard that took
  // it: the worker is a member nowhere.
  EXPECT_THAT(shards_[1]->store().Status().workers, ::testing::IsEmpty());
  EXPECT_THAT(shards_[0]->store().Status().workers, ::testing::IsEmpty());
  EXPECT_THAT(client->Push({{name, {8}, absl::MakeSpan(value)}}),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ShardingTest, AnotherShapeIsRefusedEvenWherePartsLookAlike) {
  StartShards(4);
  constexpr std::int64_t kCols = 10000;  // A row: 40 KB, under the split.
  auto a = Connect("a");
  ASSERT_NE(a, nullptr);
  // [2, N]: two one-row parts, on the owner shard and the next.
  std::vector<float> two(2 * kCols, 1.0f);
  ASSERT_THAT(a->Join({{"w", {2, kCols}, absl::MakeSpan(two)}}), IsOk());
  auto b = Connect("b");
  ASSERT_NE(b, nullptr);
  // [1, N] stays whole on the owner shard: the shape of a's part 0.
  std::vector<float> one(kCols, 2.0f);
  EXPECT_THAT(b->Join({{"w", {1, kCols}, absl::MakeSpan(one)}}),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("a part of a tensor of shape [2,10000]")));
  // [4, N]: four one-row parts, two of them where a's are.
  std::vector<float> four(4 * kCols, 3.0f);
  EXPECT_THAT(
      b->Join({{"w", {4, kCols}, absl::MakeSpan(four)}}),
      StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("[4,10000]")));
  // b averaged with nothing: a's value is its own.
  ASSERT_THAT(a->PushPull({{"w", {2, kCols}, absl::MakeSpan(two)}}), IsOk());
  EXPECT_EQ(two, std::vector<float>(2 * kCols, 1.0f));
}

TEST_F(ShardingTest, AJoinOneShardRefusesIsUndoneOnTheOthers) {
  StartShards(2);
  const std::string on0 = NameOnShard(0, 2), on1 = NameOnShard(1, 2);
  std::vector<float> eight(8, 1.0f), four(4, 1.0f);
  auto a = Connect("a");
  ASSERT_NE(a, nullptr);
  ASSERT_THAT(a->Join({{on1, {8}, absl::MakeSpan(eight)}}), IsOk());
  auto b = Connect("b");
  ASSERT_NE(b, nullptr);
  // Shard 0 would take on0; shard 1 refuses on1's other shape.
  EXPECT_THAT(
      b->Join({{on0, {8}, absl::MakeSpan(eight)},
               {on1, {4}, absl::MakeSpan(four)}}),
      StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("shard 1 (")));
  for (int i = 0; i < 2; ++i) {
    for (const core::WorkerInfo& w : shards_[i]->store().Status().workers) {
      EXPECT_NE(w.worker_id, "b") << "b is still a member of shard " << i;
    }
  }
  // So a's rounds on shard 1 do not wait for b.
  EXPECT_THAT(a->PushPull({{on1, {8}, absl::MakeSpan(eight)}}), IsOk());
}

// Shard 1 comes back from a snapshot older than the round its workers are
// in: a worker that lost the answer to its push resends it, another that had
// the round's result pushes the next round. Both count in the shard's open
// round. Refused, the second would wait on shard 0 for the first, which
// waits on shard 1 for the second: both stuck until their call timeout.
TEST_F(ShardingTest, AShardRestoredFromAnOlderSnapshotKeepsTheWorkersGoing) {
  StartShards(2);
  std::vector<float> wa(300 * 100, 1.0f), wb(300 * 100, 3.0f);
  const std::vector<TensorRef> ta = {{"big", {300, 100}, absl::MakeSpan(wa)}};
  const std::vector<TensorRef> tb = {{"big", {300, 100}, absl::MakeSpan(wb)}};
  // 10 s: a refused push shows as a failed call, not a hung test.
  auto a = Connect("a", absl::Seconds(10));
  absl::Mutex log_mu;
  std::vector<std::string> b_log;
  auto b = Connect("b", absl::Seconds(10), [&](absl::string_view line) {
    absl::MutexLock lock(&log_mu);
    b_log.emplace_back(line);
  });
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_THAT(a->Join(ta), IsOk());
  ASSERT_THAT(b->Join(tb), IsOk());
  absl::Status b_status;
  std::thread round0([&] { b_status = b->PushPull(tb); });
  ASSERT_THAT(a->PushPull(ta), IsOk());
  round0.join();
  ASSERT_THAT(b_status, IsOk());
  const core::StoreState older = shards_[1]->store().Save();  // Version 1.

  // Round 1: a pushes and, before it pulls, b closes the round.
  ASSERT_THAT(a->Push(ta), IsOk());
  ASSERT_THAT(b->PushPull(tb), IsOk());
  ASSERT_EQ(shards_[1]->store().Describe("big")->version, 2u);

  char tmpl[] = "/tmp/weightd-sharding.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    auto snapshots = storage::SnapshotDir::Open(dir);
    ASSERT_THAT(snapshots, IsOk());
    ASSERT_THAT((*snapshots)->Write(older), IsOk());
  }
  const std::string listen = absl::StrCat("127.0.0.1:", shards_[1]->port());
  shards_[1].reset();
  shards_[1] = StartShard(1, 2, listen, dir);
  ASSERT_NE(shards_[1], nullptr);
  ASSERT_EQ(shards_[1]->store().Describe("big")->version, 1u);

  // a pushes round 1 again (shard 0 had closed it: a pulls there); b, in
  // round 2, pushes it.
  std::fill(wa.begin(), wa.end(), 5.0f);
  std::fill(wb.begin(), wb.end(), 7.0f);
  std::thread ahead([&] { b_status = b->PushPull(tb); });
  EXPECT_THAT(a->PushPull(ta), IsOk());
  // Shard 0's round 2 waits for a; it closes without a once a leaves.
  EXPECT_THAT(a->Leave(), IsOk());
  ahead.join();
  EXPECT_THAT(b_status, IsOk());
  EXPECT_EQ(shards_[1]->store().Describe("big")->version, 2u);
  // Both pushes are in shard 1's round: its part is their mean.
  for (const Placement& p : PlaceTensor("big", {300, 100}, 2, kSplitBytes)) {
    if (p.shard != 1) continue;
    EXPECT_EQ(wa[p.first], 6.0f);
    EXPECT_EQ(wb[p.first + p.elements - 1], 6.0f);
  }
  {
    absl::MutexLock lock(&log_mu);
    EXPECT_THAT(b_log, ::testing::Contains(
                           HasSubstr("restored version 2 < 3 of tensor big")));
  }
  shards_[1].reset();
  std::system(("rm -rf '" + dir + "'").c_str());
}

}  // namespace
}  // namespace weightd
