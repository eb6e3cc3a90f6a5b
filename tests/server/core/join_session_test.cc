// Join's rules as the core enforces them, chunk by chunk: TensorStore::
// BeginJoin and JoinSession, with no gRPC in between.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/tensor_store.h"
#include "tests/testing/bytes.h"
#include "tests/testing/status_matchers.h"

namespace weightd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::FloatBytes;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

constexpr std::uint64_t kChunk = kMinChunkBytes;  // 1024 floats a chunk.

// 0, 1, 2, ...: a value whose every chunk differs from every other.
std::vector<float> Ramp(std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i);
  return v;
}

class JoinSessionTest : public ::testing::Test {
 protected:
  void MakeStore(StoreOptions options = {}) {
    options.chunk_bytes = kChunk;
    auto store = TensorStore::Create(std::move(options));
    ASSERT_THAT(store, IsOk());
    store_ = std::move(*store);
  }

  // A header declaring each (name, element count) as a 1-D tensor, without
  // values (they come as chunks).
  static JoinHeader Header(
      const std::string& worker,
      const std::vector<std::pair<std::string, std::int64_t>>& tensors,
      Claimant claimant = {}) {
    JoinHeader header;
    header.worker_id = worker;
    header.claimant = std::move(claimant);
    for (const auto& [name, elements] : tensors) {
      header.declarations.push_back(Declaration{name, {elements}, {}});
    }
    return header;
  }

  // Sends `value` as the initial value of declaration `index`, in order.
  static absl::Status SendValue(JoinSession& session, std::uint32_t index,
                                const std::vector<float>& value) {
    const std::uint64_t bytes = value.size() * 4;
    for (std::uint64_t off = 0; off < bytes; off += kChunk) {
      absl::Status s = session.AddChunk(
          index, off, FloatBytes(value, off, ChunkLength(bytes, kChunk, off)));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  std::unique_ptr<JoinSession> Begin(JoinHeader header) {
    auto session = store_->BeginJoin(std::move(header));
    EXPECT_THAT(session, IsOk());
    return session.ok() ? std::move(*session) : nullptr;
  }

  std::vector<float> Value(const std::string& name) {
    auto read = store_->Read({name});
    EXPECT_THAT(read, IsOk());
    return read.ok() ? *(*read)[0].value : std::vector<float>{};
  }

  std::unique_ptr<TensorStore> store_;
};

TEST_F(JoinSessionTest, ValueInChunksCreatesTheTensorBitForBit) {
  MakeStore();
  const std::vector<float> value = Ramp(2500);  // 3 chunks, the last short.
  auto session = Begin(Header("a", {{"w", 2500}}));
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(session->worker_id(), "a");
  ASSERT_THAT(SendValue(*session, 0, value), IsOk());
  // Nothing exists before Finish().
  EXPECT_THAT(store_->Describe("w"), StatusIs(absl::StatusCode::kNotFound));
  auto joined = session->Finish();
  ASSERT_THAT(joined, IsOk());
  ASSERT_EQ(joined->tensors.size(), 1u);
  EXPECT_TRUE(joined->tensors[0].created);
  EXPECT_EQ(joined->tensors[0].info.participants, 1u);
  EXPECT_NE(joined->lease_id, 0u);
  EXPECT_EQ(Value("w"), value);
  EXPECT_EQ(session->worker_id(), "a");  // For the event log, after Finish.
}

TEST_F(JoinSessionTest, TensorsPerCallLimitIsRefusedAtTheHeader) {
  MakeStore();
  JoinHeader header;
  header.worker_id = "a";
  for (std::size_t i = 0; i <= kMaxTensorsPerCall; ++i) {
    header.declarations.push_back(Declaration{absl::StrCat("t", i), {1}, {}});
  }
  EXPECT_THAT(store_->BeginJoin(std::move(header)),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr(absl::StrCat(
                           "Join declares ", kMaxTensorsPerCall + 1,
                           " tensors; the limit is ", kMaxTensorsPerCall))));
  EXPECT_TRUE(store_->Status().workers.empty());
}

TEST_F(JoinSessionTest, ChunksAreCheckedForIndexOffsetOrderAndLength) {
  MakeStore();
  const std::vector<float> value = Ramp(2500);  // 10000 bytes.
  struct Case {
    const char* what;
    std::uint32_t index;
    std::uint64_t offset;
    std::uint64_t length;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"index past the list", 1, 0, kChunk, absl::StatusCode::kInvalidArgument,
       "chunk names tensor index 1; the Join declares 1 tensors"},
      {"offset past the end", 0, 10000, 16, absl::StatusCode::kOutOfRange,
       "chunk offset 10000 is past the end of tensor w (10000 bytes)"},
      {"out of order", 0, kChunk, kChunk, absl::StatusCode::kInvalidArgument,
       "chunk of tensor w at offset 4096; expected offset 0"},
      {"too short", 0, 0, kChunk - 4, absl::StatusCode::kInvalidArgument,
       "chunk of tensor w at offset 0 carries 4092 bytes; expected 4096"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto session = Begin(Header("a", {{"w", 2500}}));
    ASSERT_NE(session, nullptr);
    const absl::Status refused =
        session->AddChunk(c.index, c.offset, FloatBytes(value, 0, c.length));
    EXPECT_THAT(refused, StatusIs(c.code, HasSubstr(c.message)));
    // The session is dead: a good chunk and Finish() get the same error.
    EXPECT_EQ(session->AddChunk(0, 0, FloatBytes(value, 0, kChunk)), refused);
    EXPECT_EQ(session->Finish().status(), refused);
    EXPECT_THAT(store_->Describe("w"), StatusIs(absl::StatusCode::kNotFound));
  }
  // A chunk sent twice is out of order the second time.
  auto session = Begin(Header("a", {{"w", 2500}}));
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(session->AddChunk(0, 0, FloatBytes(value, 0, kChunk)), IsOk());
  EXPECT_THAT(session->AddChunk(0, 0, FloatBytes(value, 0, kChunk)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("expected offset 4096")));
}

TEST_F(JoinSessionTest, AValueSentInPartIsRefusedAtFinish) {
  MakeStore();
  const std::vector<float> value = Ramp(2500);
  auto session = Begin(Header("a", {{"w", 2500}}));
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(session->AddChunk(0, 0, FloatBytes(value, 0, kChunk)), IsOk());
  EXPECT_THAT(session->Finish(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("Join ended after 4096 of 10000 bytes of "
                                 "the initial value of w")));
  EXPECT_THAT(store_->Describe("w"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(store_->Status().workers.empty());
}

TEST_F(JoinSessionTest, ADeclaredTensorWithoutValueMustExist) {
  MakeStore();
  auto session = Begin(Header("a", {{"w", 4}}));
  ASSERT_NE(session, nullptr);
  EXPECT_THAT(session->Finish(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor w does not exist yet; its "
                                 "declaration must carry an initial value")));
  EXPECT_TRUE(store_->Status().workers.empty());
  // Once it exists, a declaration without a value joins it.
  ASSERT_THAT(store_->Join("a", {Declaration{"w", {4}, {1, 2, 3, 4}}}), IsOk());
  session = Begin(Header("b", {{"w", 4}}));
  ASSERT_NE(session, nullptr);
  auto joined = session->Finish();
  ASSERT_THAT(joined, IsOk());
  EXPECT_FALSE(joined->tensors[0].created);
  EXPECT_EQ(joined->tensors[0].info.participants, 2u);
}

// A newcomer to an existing tensor gets the server's weights, not its own:
// its initial value is checked for framing but dropped.
TEST_F(JoinSessionTest, AnExistingTensorKeepsItsValueAndTheNewcomerGetsIt) {
  MakeStore();
  const std::vector<float> first = Ramp(2500);
  ASSERT_THAT(store_->Join("a", {Declaration{"w", {2500}, first}}), IsOk());
  std::vector<float> mine(2500, -1.0f);
  mine[5] = std::numeric_limits<float>::quiet_NaN();  // Never looked at.
  auto session = Begin(Header("b", {{"w", 2500}}));
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(SendValue(*session, 0, mine), IsOk());
  auto joined = session->Finish();
  ASSERT_THAT(joined, IsOk());
  EXPECT_FALSE(joined->tensors[0].created);
  EXPECT_EQ(joined->tensors[0].info.version, 0u);
  EXPECT_EQ(Value("w"), first);
  // Its chunks are still framed: a wrong length is refused.
  session = Begin(Header("c", {{"w", 2500}}));
  ASSERT_NE(session, nullptr);
  EXPECT_THAT(
      session->AddChunk(0, 0, FloatBytes(mine, 0, 8)),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected 4096")));
}

TEST_F(JoinSessionTest, NonFiniteValueOfANewTensorIsRefused) {
  MakeStore();
  std::vector<float> value = Ramp(2500);
  value[2000] = std::numeric_limits<float>::infinity();  // In the 2nd chunk.
  auto session = Begin(Header("a", {{"w", 2500}}));
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(session->AddChunk(0, 0, FloatBytes(value, 0, kChunk)), IsOk());
  EXPECT_THAT(session->AddChunk(0, kChunk, FloatBytes(value, kChunk, kChunk)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("initial value of tensor w contains NaN or "
                                 "Inf")));
  EXPECT_THAT(store_->Describe("w"), StatusIs(absl::StatusCode::kNotFound));
}

// All or nothing: a shape mismatch with a held tensor refuses the whole
// Join at its header, before any value is buffered, so another tensor of
// the same Join is not created and the worker is no member.
TEST_F(JoinSessionTest, ShapeMismatchIsRefusedAtTheHeaderAndChangesNothing) {
  MakeStore();
  const std::vector<float> first = Ramp(8);
  ASSERT_THAT(store_->Join("a", {Declaration{"w", {8}, first}}), IsOk());
  EXPECT_THAT(store_->BeginJoin(Header("b", {{"v", 4}, {"w", 4}})),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("tensor w already exists with shape [8]; "
                                 "worker b declared [4]")));
  EXPECT_THAT(store_->Describe("v"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(store_->Describe("w")->participants, 1u);
  EXPECT_EQ(store_->Status().workers.size(), 1u);
  EXPECT_EQ(Value("w"), first);
}

// The store's state is checked again at Finish(): what happened between
// the header and the last chunk counts.
TEST_F(JoinSessionTest, FinishChecksTheStoreAsItIsThen) {
  StoreOptions options;
  options.max_workers = 2;
  MakeStore(std::move(options));
  // Both admitted at their header: no member yet, no tensor.
  auto b = Begin(Header("b", {{"w", 4}}));
  auto c = Begin(Header("c", {{"v", 1}}));
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  ASSERT_THAT(store_->Join("a", {Declaration{"w", {2}, {1, 2}}}), IsOk());
  ASSERT_THAT(SendValue(*b, 0, {1, 2, 3, 4}), IsOk());
  EXPECT_THAT(b->Finish(),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("already exists with shape [2]")));
  ASSERT_THAT(store_->Join("d", {Declaration{"w", {2}, {}}}), IsOk());
  ASSERT_THAT(SendValue(*c, 0, {1}), IsOk());
  EXPECT_THAT(c->Finish(), StatusIs(absl::StatusCode::kResourceExhausted,
                                    HasSubstr("--max_workers")));
  EXPECT_EQ(store_->Status().workers.size(), 2u);
  EXPECT_THAT(store_->Describe("v"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Value("w"), ElementsAre(1, 2));
}

TEST_F(JoinSessionTest, AnIdHeldByAnotherLiveProcessIsRefusedTheSameIsNot) {
  MakeStore();
  auto first = store_->Join("a", {Declaration{"w", {1}, {1}}},
                            Claimant{42, "ipv4:127.0.0.1:5000"});
  ASSERT_THAT(first, IsOk());
  // Another process: the header passes, Finish() refuses, naming the holder.
  auto other = Begin(Header("a", {{"w", 1}}, Claimant{43, "elsewhere"}));
  ASSERT_NE(other, nullptr);
  EXPECT_THAT(other->Finish(),
              StatusIs(absl::StatusCode::kAborted,
                       HasSubstr("held by another live process "
                                 "(ipv4:127.0.0.1:5000")));
  EXPECT_THAT(store_->Heartbeat(first->lease_id), IsOk());
  // The same process (a network cut) takes its membership back.
  auto same = Begin(Header("a", {{"w", 1}}, Claimant{42, "ipv4:1.2.3.4:1"}));
  ASSERT_NE(same, nullptr);
  auto again = same->Finish();
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->takeover, Takeover::kSameProcess);
  EXPECT_THAT(store_->Heartbeat(first->lease_id),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(store_->Status().workers.at(0).peer, "ipv4:1.2.3.4:1");
}

TEST_F(JoinSessionTest, ClosingBetweenHeaderAndFinishRefusesTheJoin) {
  MakeStore();
  auto session = Begin(Header("a", {{"w", 4}}));
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(SendValue(*session, 0, {1, 2, 3, 4}), IsOk());
  store_->Close();
  EXPECT_THAT(session->Finish(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store_->BeginJoin(Header("b", {{"w", 4}})),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(JoinSessionTest, FinishIsOnceOnly) {
  MakeStore();
  auto session = Begin(Header("a", {{"w", 1}}));
  ASSERT_NE(session, nullptr);
  ASSERT_THAT(SendValue(*session, 0, {3}), IsOk());
  auto joined = session->Finish();
  ASSERT_THAT(joined, IsOk());
  EXPECT_THAT(session->Finish(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(store_->Status().workers.at(0).lease_id, joined->lease_id);
}

}  // namespace
}  // namespace weightd::core
