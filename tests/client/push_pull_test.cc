// The client's PushPull against a fake server on 127.0.0.1 (port 0) that
// answers in ways today's weightd does not: with the result while the push
// is still arriving, with a malformed result, or not at all. The client
// reads the result on a second thread while it writes the push
// (ShardClient::PushOnce); these tests fail (at the call deadline) if it
// reads only after its last write.
#include <grpcpp/grpcpp.h>

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
    header_seen_.Notify();
    v1::PushPullResponse out;
    if (answer_ != Answer::kEachChunkAtOnce) {
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
      for (float& v : values) v += 1;
      *out.mutable_chunk() = in.chunk();
      out.mutable_chunk()->set_data(
          reinterpret_cast<const char*>(values.data()),
          values.size() * sizeof(float));
      if (!stream->Write(out)) break;
    }
    return grpc::Status::OK;
  }

  // Notified once a PushPull's header has arrived.
  absl::Notification& header_seen() { return header_seen_; }
  // Lets kMalformedAtOnce and kNothing read the rest and end.
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

 private:
  const Answer answer_;
  absl::Notification header_seen_;
  absl::Notification release_;
};

class PushPullTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (server_ != nullptr) {
      fake_->Release();  // Else Shutdown() would wait for its handler.
      server_->Shutdown();
    }
  }

  // Starts a fake answering `answer`; returns a client joined to it with
  // `values` as tensor "w", or null.
  std::unique_ptr<Client> Start(Answer answer, std::vector<float>& values,
                                ClientOptions options = {}) {
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
    options.retry_budget = absl::ZeroDuration();  // A hang stays a failure.
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
  values.assign(kElements, 2.0f);
  ASSERT_THAT(client->PushPull({Ref(values)}), IsOk());
  EXPECT_THAT(values, Each(3.0f));
  EXPECT_EQ(client->stats().bytes_pushed - before.bytes_pushed,
            kElements * sizeof(float));
  EXPECT_EQ(client->stats().bytes_pulled - before.bytes_pulled,
            kElements * sizeof(float));
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
