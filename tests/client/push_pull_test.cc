// The client's PushPull against a fake server on 127.0.0.1 (port 0) that
// answers in ways today's weightd does not: with the result while the push
// is still arriving, with a malformed result, or not at all. The client
// reads the result on a second thread while it writes the push
// (ShardClient::PushOnce); these tests fail (at the call deadline) if it
// reads only after its last write.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/cancellation.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

using ::testing::Each;
using ::testing::Not;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

constexpr std::uint64_t kChunkBytes = 64 << 10;
// Windows of 4 MiB each way (both sides fixed, as weightd's are): a push of
// 16 MiB cannot all be in flight while nobody reads the other direction.
constexpr int kWindowBytes = 4 << 20;
constexpr std::int64_t kElements = 4 << 20;  // 16 MiB of float32.
constexpr std::int64_t kSmallElements = kChunkBytes / sizeof(float);
constexpr float kPushed = 2.0f;   // The value every test pushes.
constexpr float kCurrent = 7.0f;  // The value kResultThenForget's Pull has.
constexpr std::uint64_t kResultChunks = 3;  // See kResultThenForget.

// What the fake's PushPull does after reading the push's header.
enum class Answer {
  // Reads each chunk and answers it at once with the pushed values plus
  // one, as a server streaming the result chunk by chunk would, and never
  // reads ahead of its answers.
  kEachChunkAtOnce,
  // Answers a header for no tensor, then reads nothing more until the
  // test releases it.
  kMalformedAtOnce,
  // Says and reads nothing until the test releases it.
  kNothing,
  // For a push of "w" and then "b" (kSmallElements, one chunk): sends the
  // result of "b" (the pushed values plus one) before reading anything of
  // the push, as weightd may for a resent push whose earlier attempt
  // delivered it; then reads the push, recording whether every value
  // pushed was the caller's; then sends the result of "w".
  kSmallResultFirst,
  // A PushPull that fails after part of its result arrived, to a server
  // that then forgets the push (it restarts from a snapshot taken before
  // it). The first call reads the whole push, sends the result's header
  // and first kResultChunks chunks (the pushed values plus one), then
  // fails with UNAVAILABLE. Later calls act as weightd after the restart: a
  // push whose header says the server holds part of it already
  // (held_bytes) is refused with ABORTED; any other is a new push,
  // recording whether every value pushed was the caller's, answered as
  // kEachChunkAtOnce does. Pull streams kCurrent.
  kResultThenForget,
};

// Just enough of weightd for a client to join one tensor and PushPull it.
class FakeWeightd final : public v1::Weightd::Service {
 public:
  explicit FakeWeightd(Answer answer) : answer_(answer) {}

  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* response) override {
    response->set_mode(v1::MODE_SYNC);
    response->set_chunk_bytes(kChunkBytes);
    return grpc::Status::OK;
  }

  grpc::Status Join(grpc::ServerContext*,
                    grpc::ServerReader<v1::JoinRequest>* reader,
                    v1::JoinResponse* response) override {
    v1::JoinRequest msg;
    v1::JoinHeader header;
    while (reader->Read(&msg)) {
      if (msg.has_header()) header = msg.header();
    }
    response->set_lease_id(1);
    response->set_chunk_bytes(kChunkBytes);
    response->set_mode(v1::MODE_SYNC);
    response->set_next_sequence(1);
    for (const v1::TensorDeclaration& d : header.tensors()) {
      v1::JoinedTensor* t = response->add_tensors();
      t->mutable_info()->set_name(d.name());
      *t->mutable_info()->mutable_shape() = d.shape();
      t->set_created(true);
    }
    return grpc::Status::OK;
  }

  grpc::Status PushPull(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::PushPullResponse, v1::PushPullRequest>*
          stream) override {
    v1::PushPullRequest in;
    if (!stream->Read(&in) || !in.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no header");
    }
    if (!header_seen_.HasBeenNotified()) header_seen_.Notify();
    v1::PushPullResponse out;
    if (answer_ == Answer::kSmallResultFirst) return SmallResultFirst(stream);
    if (answer_ == Answer::kResultThenForget && ++push_pulls_ == 1) {
      return ResultThenFail(stream);
    }
    if (answer_ == Answer::kResultThenForget) {
      held_bytes_ = in.header().tensors(0).held_bytes();
      if (held_bytes_ > 0) {
        return grpc::Status(grpc::StatusCode::ABORTED,
                            "this server no longer holds the push");
      }
    }
    if (answer_ == Answer::kMalformedAtOnce || answer_ == Answer::kNothing) {
      if (answer_ == Answer::kMalformedAtOnce) {
        out.mutable_header();  // Names no tensor: the client pushed one.
        stream->Write(out);
      }
      release_.WaitForNotification();
      while (stream->Read(&in)) {
      }
      return grpc::Status::OK;
    }
    v1::TensorInfo* info = out.mutable_header()->add_tensors();
    info->set_name(in.header().tensors(0).name());
    info->add_shape(kElements);
    info->set_version(1);
    stream->Write(out);
    while (stream->Read(&in)) {
      if (!in.has_chunk()) {  // A tensor this large is never batched.
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no chunk");
      }
      std::vector<float> values(in.chunk().data().size() / sizeof(float));
      std::memcpy(values.data(), in.chunk().data().data(),
                  in.chunk().data().size());
      for (float v : values) pushed_only_callers_ &= v == kPushed;
      for (float& v : values) v += 1;
      *out.mutable_chunk() = in.chunk();
      out.mutable_chunk()->set_data(
          reinterpret_cast<const char*>(values.data()),
          values.size() * sizeof(float));
      if (!stream->Write(out)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status Pull(grpc::ServerContext*, const v1::PullRequest*,
                    grpc::ServerWriter<v1::PullResponse>* writer) override {
    v1::PullResponse out;
    v1::TensorInfo* info = out.mutable_header()->add_tensors();
    info->set_name("w");
    info->add_shape(kElements);
    info->set_version(1);
    bool ok = writer->Write(out);
    const std::vector<float> value(kChunkBytes / sizeof(float), kCurrent);
    out.mutable_chunk()->set_data(reinterpret_cast<const char*>(value.data()),
                                  kChunkBytes);
    for (std::uint64_t offset = 0; ok && offset < kElements * sizeof(float);
         offset += kChunkBytes) {
      out.mutable_chunk()->set_offset(offset);
      ok = writer->Write(out);
    }
    return grpc::Status::OK;
  }

  // kSmallResultFirst, kEachChunkAtOnce, kResultThenForget (its pushes
  // after the first): whether every value pushed was `kPushed`.
  bool pushed_only_callers_values() const { return pushed_only_callers_; }
  // kResultThenForget: PushPull calls, and held_bytes of the last one's
  // only tensor.
  int push_pulls() const { return push_pulls_; }
  std::uint64_t held_bytes() const { return held_bytes_; }

  // Notified once a PushPull's header has arrived.
  absl::Notification& header_seen() { return header_seen_; }
  // Lets kMalformedAtOnce and kNothing read the rest and end.
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

 private:
  grpc::Status SmallResultFirst(
      grpc::ServerReaderWriter<v1::PushPullResponse, v1::PushPullRequest>*
          stream) {
    v1::PushPullResponse out;
    v1::TensorInfo* w = out.mutable_header()->add_tensors();
    w->set_name("w");
    w->add_shape(kElements);
    w->set_version(1);
    v1::TensorInfo* b = out.mutable_header()->add_tensors();
    b->set_name("b");
    b->add_shape(kSmallElements);
    b->set_version(1);
    const std::vector<float> result(kChunkBytes / sizeof(float), kPushed + 1);
    bool ok = stream->Write(out);
    out.mutable_chunk()->set_tensor_index(1);
    out.mutable_chunk()->set_data(reinterpret_cast<const char*>(result.data()),
                                  kChunkBytes);
    ok = ok && stream->Write(out);
    // The client's push is held up in "w" now (the windows are a fraction
    // of it) while the result of "b" is at the client.
    v1::PushPullRequest in;
    while (stream->Read(&in)) {
      if (!in.has_chunk()) {  // Chunks of 64 KiB are never batched.
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no chunk");
      }
      std::vector<float> values(in.chunk().data().size() / sizeof(float));
      std::memcpy(values.data(), in.chunk().data().data(),
                  in.chunk().data().size());
      for (float v : values) pushed_only_callers_ &= v == kPushed;
    }
    out.mutable_chunk()->set_tensor_index(0);
    for (std::uint64_t offset = 0; ok && offset < kElements * sizeof(float);
         offset += kChunkBytes) {
      out.mutable_chunk()->set_offset(offset);
      ok = stream->Write(out);
    }
    return grpc::Status::OK;
  }

  grpc::Status ResultThenFail(
      grpc::ServerReaderWriter<v1::PushPullResponse, v1::PushPullRequest>*
          stream) {
    v1::PushPullRequest in;
    while (stream->Read(&in)) {
    }
    v1::PushPullResponse out;
    v1::TensorInfo* info = out.mutable_header()->add_tensors();
    info->set_name("w");
    info->add_shape(kElements);
    info->set_version(1);
    bool ok = stream->Write(out);
    const std::vector<float> result(kChunkBytes / sizeof(float), kPushed + 1);
    out.mutable_chunk()->set_data(reinterpret_cast<const char*>(result.data()),
                                  kChunkBytes);
    for (std::uint64_t k = 0; ok && k < kResultChunks; ++k) {
      out.mutable_chunk()->set_offset(k * kChunkBytes);
      ok = stream->Write(out);
    }
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server killed");
  }

  const Answer answer_;
  absl::Notification header_seen_;
  absl::Notification release_;
  // Handlers run one at a time (the client makes one call at a time); the
  // test reads these once StopServer() waited for them.
  bool pushed_only_callers_ = true;
  std::atomic<int> push_pulls_{0};
  std::atomic<std::uint64_t> held_bytes_{0};
};

class PushPullTest : public ::testing::Test {
 protected:
  void TearDown() override { StopServer(); }

  // Stops the fake once its handlers returned.
  void StopServer() {
    if (server_ == nullptr) return;
    fake_->Release();  // Else Shutdown() would wait for its handler.
    server_->Shutdown();
    server_.reset();
  }

  // Starts a fake answering `answer`; returns a client joined to it with
  // `values` as tensor "w", or null.
  // Without `retries`, no call is retried (a hang stays a failure).
  std::unique_ptr<Client> Start(Answer answer, std::vector<float>& values,
                                ClientOptions options = {},
                                bool retries = false) {
    fake_ = std::make_unique<FakeWeightd>(answer);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(fake_.get());
    builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                               kWindowBytes);
    server_ = builder.BuildAndStart();
    EXPECT_NE(port, 0);
    options.address = absl::StrCat("127.0.0.1:", port);
    options.worker_id = "a";
    options.heartbeat = false;
    if (!retries) options.retry_budget = absl::ZeroDuration();
    options.call_timeout = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_THAT(client, IsOk());
    if (!client.ok()) return nullptr;
    values.assign(kElements, 0.5f);
    EXPECT_THAT((*client)->Join({Ref(values)}), IsOk());
    return std::move(*client);
  }

  static TensorRef Ref(std::vector<float>& values) {
    return TensorRef{"w", {kElements}, absl::MakeSpan(values)};
  }

  std::unique_ptr<FakeWeightd> fake_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(PushPullTest, ResultStreamedWhilePushingIsReadAsItArrives) {
  std::vector<float> values;
  std::unique_ptr<Client> client = Start(Answer::kEachChunkAtOnce, values);
  ASSERT_NE(client, nullptr);
  const ClientStats before = client->stats();
  values.assign(kElements, kPushed);
  ASSERT_THAT(client->PushPull({Ref(values)}), IsOk());
  EXPECT_THAT(values, Each(kPushed + 1));
  EXPECT_EQ(client->stats().bytes_pushed - before.bytes_pushed,
            kElements * sizeof(float));
  EXPECT_EQ(client->stats().bytes_pulled - before.bytes_pulled,
            kElements * sizeof(float));
}

// A result chunk that arrives before the push copied that part of the
// caller's buffers waits for the copy: the push carries the caller's
// values, not the result's.
TEST_F(PushPullTest, ResultArrivingBeforeThePushWaitsForItsCopy) {
  std::vector<float> values;
  std::unique_ptr<Client> client = Start(Answer::kSmallResultFirst, values);
  ASSERT_NE(client, nullptr);
  std::vector<float> small(kSmallElements, 0.5f);
  const TensorRef small_ref{"b", {kSmallElements}, absl::MakeSpan(small)};
  ASSERT_THAT(client->Join({Ref(values), small_ref}), IsOk());
  values.assign(kElements, kPushed);
  small.assign(kSmallElements, kPushed);
  ASSERT_THAT(client->PushPull({Ref(values), small_ref}), IsOk());
  EXPECT_THAT(values, Each(kPushed + 1));
  EXPECT_THAT(small, Each(kPushed + 1));
  StopServer();  // Waits for the fake's handler: its flag is final.
  EXPECT_TRUE(fake_->pushed_only_callers_values());
}

// A PushPull whose call fails after part of its result was written into
// the caller's buffers must not push those values again: they are the
// result, not the caller's update. Its resend says how much of the push
// the server must hold already (held_bytes); a server that forgot the push
// (restarted from an older snapshot) refuses it, and the client continues
// from the current value. A resend carrying the result as the caller's
// update would corrupt the round (a delta summed from the new weights).
TEST_F(PushPullTest, ResendAfterAPartialResultNeverPushesTheResult) {
  std::vector<float> values;
  ClientOptions options;
  options.initial_backoff = absl::Milliseconds(1);
  std::unique_ptr<Client> client =
      Start(Answer::kResultThenForget, values, options, /*retries=*/true);
  ASSERT_NE(client, nullptr);
  values.assign(kElements, kPushed);
  ASSERT_THAT(client->PushPull({Ref(values)}), IsOk());
  EXPECT_THAT(values, Each(kCurrent));  // Pulled once refused.
  EXPECT_EQ(client->stats().rounds_missed, 1u);
  StopServer();  // Waits for the fake's handlers: its fields are final.
  EXPECT_EQ(fake_->push_pulls(), 2);
  EXPECT_EQ(fake_->held_bytes(), kResultChunks * kChunkBytes);
  EXPECT_TRUE(fake_->pushed_only_callers_values());
}

TEST_F(PushPullTest, MalformedResultStopsThePushAndEndsTheCall) {
  std::vector<float> values;
  std::unique_ptr<Client> client = Start(Answer::kMalformedAtOnce, values);
  ASSERT_NE(client, nullptr);
  const absl::Status status = client->PushPull({Ref(values)});
  // CANCELLED today, the client's own cancel as Finish() reports it (Finish's
  // status comes before the reader's DATA_LOSS); not ended by the deadline:
  // the reader's cancel stopped the writer.
  EXPECT_THAT(status, Not(IsOk()));
  EXPECT_THAT(status, Not(StatusIs(absl::StatusCode::kDeadlineExceeded)));
}

TEST_F(PushPullTest, CancellationEndsAPushPullTheServerNeverAnswers) {
  std::vector<float> values;
  ClientOptions options;
  options.cancellation = std::make_shared<Cancellation>();
  std::unique_ptr<Client> client = Start(Answer::kNothing, values, options);
  ASSERT_NE(client, nullptr);
  std::thread canceller([&] {
    fake_->header_seen().WaitForNotification();
    options.cancellation->Cancel();
  });
  EXPECT_THAT(client->PushPull({Ref(values)}),
              StatusIs(absl::StatusCode::kCancelled));
  canceller.join();
}

}  // namespace
}  // namespace weightd
