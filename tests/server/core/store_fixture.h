// TensorStoreTest: a store with small chunks whose closed rounds are
// recorded, and the joins, pushes and reads the core's tests make of it.
#ifndef WEIGHTD_TESTS_SERVER_CORE_STORE_FIXTURE_H_
#define WEIGHTD_TESTS_SERVER_CORE_STORE_FIXTURE_H_

#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/tensor_store.h"
#include "tests/testing/bytes.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {

constexpr std::uint64_t kChunk = kMinChunkBytes;  // 1024 floats a chunk.

class TensorStoreTest : public ::testing::Test {
 protected:
  // Small chunks (many per tensor), closed rounds recorded in closed_.
  StoreOptions TestOptions() {
    StoreOptions options;
    options.chunk_bytes = kChunk;
    options.on_round_closed = [this](const RoundClosed& c) {
      absl::MutexLock lock(&closed_mu_);
      closed_.push_back(c);
    };
    return options;
  }
  void MakeStoreWith(StoreOptions options) {
    auto store = TensorStore::Create(std::move(options));
    ASSERT_THAT(store, ::weightd::testing::IsOk());
    store_ = std::move(*store);
  }
  void MakeStore(Mode mode = Mode::kSync, double server_lr = 1.0) {
    StoreOptions options = TestOptions();
    options.mode = mode;
    options.server_lr = server_lr;
    options.async_mix = 0.5;
    MakeStoreWith(std::move(options));
  }

  // Joins `worker` declaring each (name, initial value) as a 1-D tensor.
  std::uint64_t Join(
      const std::string& worker,
      std::vector<std::pair<std::string, std::vector<float>>> tensors) {
    std::vector<Declaration> declarations;
    for (auto& [name, value] : tensors) {
      declarations.push_back(
          Declaration{name, {static_cast<std::int64_t>(value.size())}, value});
    }
    auto joined = store_->Join(worker, std::move(declarations));
    EXPECT_THAT(joined, ::weightd::testing::IsOk());
    return joined.ok() ? joined->lease_id : 0;
  }

  // Sends a whole push: header, every tensor's chunks in order, finish.
  absl::StatusOr<std::vector<PushResult>> Push(
      std::uint64_t lease, std::uint64_t sequence,
      std::vector<std::tuple<std::string, std::uint64_t, std::vector<float>>>
          tensors,
      double weight = 1.0, UpdateKind kind = UpdateKind::kWeights) {
    PushHeader header{lease, sequence, kind, weight, {}};
    for (auto& [name, round, value] : tensors) {
      header.entries.push_back({name, round});
    }
    auto session = store_->BeginPush(std::move(header));
    if (!session.ok()) return session.status();
    for (std::uint32_t i = 0; i < tensors.size(); ++i) {
      const std::vector<float>& value = std::get<2>(tensors[i]);
      const std::uint64_t bytes = value.size() * 4;
      for (std::uint64_t off = 0; off < bytes; off += kChunk) {
        absl::Status s = (*session)->AddChunk(
            i, off,
            ::weightd::testing::FloatBytes(value, off,
                                           ChunkLength(bytes, kChunk, off)));
        if (!s.ok()) return s;
      }
    }
    return (*session)->Finish();
  }

  // Begins push sequence 1 of `lease` to round 0 of tensor "w", weight 1,
  // to be fed chunk by chunk; null (and a test failure) if refused.
  std::unique_ptr<PushSession> BeginRoundZero(std::uint64_t lease) {
    auto session = store_->BeginPush(
        PushHeader{lease, 1, UpdateKind::kWeights, 1.0, {{"w", 0}}});
    EXPECT_THAT(session, ::weightd::testing::IsOk());
    return session.ok() ? std::move(*session) : nullptr;
  }

  // Sends push `sequence` of `lease` to round `round` of tensor "w", whole,
  // as a resend whose first `held_bytes` the server must hold already (a
  // PushPull's result was written over them in the client's buffer).
  absl::StatusOr<std::vector<PushResult>> Resend(
      std::uint64_t lease, std::uint64_t sequence, std::uint64_t round,
      std::uint64_t held_bytes, const std::vector<float>& value,
      UpdateKind kind = UpdateKind::kDelta) {
    auto session = store_->BeginPush(
        PushHeader{lease, sequence, kind, 1.0, {{"w", round, held_bytes}}});
    if (!session.ok()) return session.status();
    const std::uint64_t bytes = value.size() * 4;
    for (std::uint64_t off = 0; off < bytes; off += kChunk) {
      absl::Status s = (*session)->AddChunk(
          0, off,
          ::weightd::testing::FloatBytes(value, off,
                                         ChunkLength(bytes, kChunk, off)));
      if (!s.ok()) return s;
    }
    return (*session)->Finish();
  }

  std::vector<float> Value(const std::string& name) {
    auto read = store_->Read({name});
    EXPECT_THAT(read, ::weightd::testing::IsOk());
    return read.ok() ? *(*read)[0].value : std::vector<float>{};
  }
  std::uint64_t Version(const std::string& name) {
    auto info = store_->Describe(name);
    EXPECT_THAT(info, ::weightd::testing::IsOk());
    return info.ok() ? info->version : 0;
  }

  // The rounds closed so far, in the order the observer saw them.
  std::vector<RoundClosed> Closed() {
    absl::MutexLock lock(&closed_mu_);
    return closed_;
  }

  std::unique_ptr<TensorStore> store_;
  absl::Mutex closed_mu_;
  std::vector<RoundClosed> closed_ ABSL_GUARDED_BY(closed_mu_);
};

}  // namespace weightd::core

#endif  // WEIGHTD_TESTS_SERVER_CORE_STORE_FIXTURE_H_
