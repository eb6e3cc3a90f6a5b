// Service tests: a real weightd server on 127.0.0.1 (port 0), driven through
// the real client and through raw stubs for the malformed calls.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server/service/server.h"
#include "server/service/weightd_service.h"
#include "tests/testing/client_options.h"
#include "tests/testing/eventually.h"
#include "tests/testing/joining_thread.h"
#include "tests/testing/status_matchers.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(core::Mode::kSync); }

  void StartServer(core::Mode mode) {
    service::ServerOptions options;
    options.store.mode = mode;
    options.store.chunk_bytes = kMinChunkBytes;  // Many chunks on small data.
    options.shutdown_grace = absl::Seconds(2);
    Start(std::move(options));
  }

  // Replaces the running server (on 127.0.0.1:0 unless `options` says).
  void Start(service::ServerOptions options) {
    server_.reset();
    {
      absl::MutexLock lock(&counted_mu_);
      counted_.clear();
    }
    if (options.listen_address == service::ServerOptions().listen_address) {
      options.listen_address = "127.0.0.1:0";
    }
    options.store.on_contribution =
        [this, user = std::move(options.store.on_contribution)](
            const core::ContributionCounted& c) {
          {
            absl::MutexLock lock(&counted_mu_);
            // Reports may arrive out of order: keep the newest.
            auto& newest = counted_[c.tensor];
            newest = std::max(newest, std::make_pair(c.round, c.contributed));
          }
          if (user) user(c);
        };
    auto server = service::Server::Start(std::move(options));
    ASSERT_THAT(server, IsOk());
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Weightd::NewStub(channel_);
  }

  std::unique_ptr<Client> Connect(const std::string& worker) {
    ClientOptions options = testing::TestClientOptions();
    options.address = server_->address();
    options.worker_id = worker;
    options.call_timeout = absl::Seconds(60);
    options.retry_budget = absl::Seconds(1);
    auto client = Client::Connect(options);
    EXPECT_THAT(client, IsOk());
    return client.ok() ? std::move(*client) : nullptr;
  }

  // Waits (`timeout` at most) until `n` pushes to the open round of
  // `tensor` have completed on the server.
  bool AwaitContributions(const std::string& tensor, std::uint32_t n,
                          absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&counted_mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(counted_mu_) {
      auto it = counted_.find(tensor);
      return it != counted_.end() && it->second.second >= n;
    };
    return counted_mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  // Joins `worker` to tensor "w" of `floats` zeros through the store (not
  // the wire); returns its lease, 0 (and a test failure) if refused.
  std::uint64_t JoinZeros(const std::string& worker, std::uint64_t floats) {
    auto joined = server_->store().Join(
        worker, {core::Declaration{"w",
                                   {static_cast<std::int64_t>(floats)},
                                   std::vector<float>(floats, 0.0f)}});
    EXPECT_THAT(joined, IsOk());
    return joined.ok() ? joined->lease_id : 0;
  }

  // The stored value of `name`, read through the store (not the wire).
  std::vector<float> Stored(const std::string& name) {
    auto read = server_->store().Read({name});
    EXPECT_THAT(read, IsOk());
    return read.ok() ? *(*read)[0].value : std::vector<float>{};
  }

  // Sends `messages` as a raw Push stream; returns the final status.
  absl::Status RawPush(const std::vector<v1::PushRequest>& messages) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::PushResponse response;
    auto stream = stub_->Push(&context, &response);
    for (const auto& m : messages) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
    return FromGrpcStatus(stream->Finish());
  }

  // Calls the unary `method` ("Leave") with `request` as its bytes, whatever
  // they are: what a client not bound by the generated stubs may send.
  absl::Status RawUnary(const std::string& method, const std::string& request) {
    const std::string path = "/weightd.v1.Weightd/" + method;
    const grpc::internal::RpcMethod rpc(
        path.c_str(), grpc::internal::RpcMethod::NORMAL_RPC, channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    grpc::ByteBuffer response;
    return FromGrpcStatus(
        grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
            channel_.get(), rpc, &context, Bytes(request), &response));
  }

  // Sends `messages`, each as the bytes given, as a Join stream.
  absl::Status RawJoin(const std::vector<std::string>& messages) {
    const grpc::internal::RpcMethod rpc(
        "/weightd.v1.Weightd/Join", grpc::internal::RpcMethod::CLIENT_STREAMING,
        channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    grpc::ByteBuffer response;
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> stream(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(
            channel_.get(), rpc, &context, &response));
    for (const std::string& m : messages) {
      if (!stream->Write(Bytes(m))) break;
    }
    stream->WritesDone();
    return FromGrpcStatus(stream->Finish());
  }

  static grpc::ByteBuffer Bytes(const std::string& bytes) {
    grpc::Slice slice(bytes);
    return grpc::ByteBuffer(&slice, 1);
  }

  // Before server_, which reports to them until it is destroyed.
  absl::Mutex counted_mu_;
  // Per tensor: its newest round reported, and the complete pushes to it.
  std::map<std::string, std::pair<std::uint64_t, std::uint32_t>> counted_
      ABSL_GUARDED_BY(counted_mu_);
  std::unique_ptr<service::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Weightd::Stub> stub_;
};

v1::PushRequest Header(std::uint64_t lease, std::uint64_t sequence,
                       const std::string& name, std::uint64_t round = 0) {
  v1::PushRequest m;
  v1::PushHeader* h = m.mutable_header();
  h->set_lease_id(lease);
  h->set_sequence(sequence);
  h->set_kind(v1::UPDATE_KIND_WEIGHTS);
  v1::PushedTensor* t = h->add_tensors();
  t->set_name(name);
  t->set_round(round);
  return m;
}

v1::PushRequest Chunk(std::uint32_t index, std::uint64_t offset,
                      const std::vector<float>& values) {
  v1::PushRequest m;
  m.mutable_chunk()->set_tensor_index(index);
  m.mutable_chunk()->set_offset(offset);
  m.mutable_chunk()->set_data(
      std::string(reinterpret_cast<const char*>(values.data()),
                  values.size() * sizeof(float)));
  return m;
}

TEST_F(ServiceTest, ThreeWorkerSyncRoundThroughTheClient) {
  constexpr int kWorkers = 3;
  constexpr std::size_t kSize = 3000;  // 3 chunks of 4 KiB.
  std::vector<std::vector<float>> weights(kWorkers);
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < kWorkers; ++w) {
    weights[w].assign(kSize, 0.0f);
    clients.push_back(Connect(absl::StrCat("worker-", w)));
    ASSERT_NE(clients.back(), nullptr);
    ASSERT_THAT(clients[w]->Join({TensorRef{
                    "layer", {3, 1000}, absl::MakeSpan(weights[w])}}),
                IsOk());
  }
  std::vector<absl::Status> results(kWorkers);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      std::fill(weights[w].begin(), weights[w].end(), float(w + 1));
      // Weighted by samples: 1, 2, 3 -> (1 + 4 + 9) / 6.
      results[w] = clients[w]->PushPull(
          {TensorRef{"layer", {3, 1000}, absl::MakeSpan(weights[w])}},
          PushOptions{UpdateKind::kWeights, double(w + 1)});
    });
  }
  for (auto& t : threads) t.join();
  const float mean = 14.0f / 6.0f;
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_THAT(results[w], IsOk());
    EXPECT_THAT(weights[w], ::testing::Each(mean));
    EXPECT_EQ(*clients[w]->Version("layer"), 1u);
  }
  EXPECT_THAT(Stored("layer"), ::testing::Each(mean));
}

// A sync PushPull streams its round's result while the round is open: each
// chunk as soon as every worker delivered its copy, so that pulls overlap
// pushes. Here b has sent one chunk of three: a, which sent all of its
// chunks, receives the header and the first chunk of the result (the mean)
// before b sends more, then the rest once b does; both end OK.
TEST_F(ServiceTest, PushPullStreamsTheResultWhileTheRoundIsOpen) {
  constexpr std::uint64_t kFloats = 3 * kMinChunkBytes / 4;  // Three chunks.
  const std::uint64_t lease[2] = {JoinZeros("a", kFloats),
                                  JoinZeros("b", kFloats)};
  ASSERT_NE(lease[0], 0u);
  ASSERT_NE(lease[1], 0u);
  auto header = [&](int w) {
    v1::PushPullRequest m;
    *m.mutable_header() = Header(lease[w], 1, "w").header();
    return m;
  };
  auto chunk = [&](int k, float value) {
    v1::PushPullRequest m;
    *m.mutable_chunk() = Chunk(0, k * kMinChunkBytes,
                               std::vector<float>(kMinChunkBytes / 4, value))
                             .chunk();
    return m;
  };
  grpc::ClientContext ca, cb;
  for (grpc::ClientContext* c : {&ca, &cb}) {
    c->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(30));
  }
  auto a = stub_->PushPull(&ca);
  auto b = stub_->PushPull(&cb);
  ASSERT_TRUE(a->Write(header(0)));
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(a->Write(chunk(k, 2.0f)));
  ASSERT_TRUE(b->Write(header(1)));
  ASSERT_TRUE(b->Write(chunk(0, 4.0f)));

  v1::PushPullResponse m;
  ASSERT_TRUE(a->Read(&m));
  ASSERT_TRUE(m.has_header());
  ASSERT_EQ(m.header().tensors_size(), 1);
  EXPECT_EQ(m.header().tensors(0).version(), 1u);
  ASSERT_TRUE(a->Read(&m));
  ASSERT_TRUE(m.has_chunk());
  EXPECT_EQ(m.chunk().offset(), 0u);
  std::vector<float> values(kMinChunkBytes / 4);
  ASSERT_EQ(m.chunk().data().size(), kMinChunkBytes);
  std::memcpy(values.data(), m.chunk().data().data(), kMinChunkBytes);
  EXPECT_THAT(values, ::testing::Each(3.0f));
  EXPECT_EQ(server_->store().Describe("w")->version, 0u);  // Still open.

  ASSERT_TRUE(b->Write(chunk(1, 4.0f)));
  ASSERT_TRUE(b->Write(chunk(2, 4.0f)));
  for (auto* stream : {a.get(), b.get()}) ASSERT_TRUE(stream->WritesDone());
  std::uint64_t next = kMinChunkBytes;
  while (a->Read(&m)) {
    ASSERT_TRUE(m.has_chunk());
    EXPECT_EQ(m.chunk().offset(), next);
    next += m.chunk().data().size();
  }
  EXPECT_EQ(next, 3 * kMinChunkBytes);
  EXPECT_THAT(FromGrpcStatus(a->Finish()), IsOk());
  int b_messages = 0;
  while (b->Read(&m)) ++b_messages;
  EXPECT_EQ(b_messages, 4);  // The header and three chunks.
  EXPECT_THAT(FromGrpcStatus(b->Finish()), IsOk());
  EXPECT_THAT(Stored("w"), ::testing::Each(3.0f));
}

// Two raw PushPulls of one tensor "w" of kBytes, for the pacing tests: b
// sends its header and one chunk, then nothing (its worker froze); a sends
// all of its push from a thread (its writes block while the server does
// not read them).
class PacedPushes {
 public:
  static constexpr std::uint64_t kBytes = service::kPushLeadBytes + (1 << 20);

  // Starts b, waits until the server accepted b's header, then starts a.
  void Start(v1::Weightd::Stub* stub, std::uint64_t lease_a,
             std::uint64_t lease_b) {
    for (grpc::ClientContext* c : {&ca_, &cb_}) {
      c->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(30));
    }
    const std::vector<float> values(kMinChunkBytes / 4, 2.0f);
    b_ = stub->PushPull(&cb_);
    ASSERT_TRUE(b_->Write(Message(Header(lease_b, 1, "w"))));
    ASSERT_TRUE(b_->Write(Message(Chunk(0, 0, values))));
    v1::PushPullResponse r;
    ASSERT_TRUE(b_->Read(&r));  // The result's header: b's push is paced.
    ASSERT_TRUE(r.has_header());
    a_ = stub->PushPull(&ca_);
    writer_ = std::thread([this, lease_a, values] {
      a_->Write(Message(Header(lease_a, 1, "w")));
      for (std::uint64_t off = 0; off < kBytes; off += kMinChunkBytes) {
        if (!a_->Write(Message(Chunk(0, off, values)))) return;
      }
      a_->WritesDone();
    });
  }

  // Cancels both calls unless `cancel` is false, drains them and returns
  // their final statuses (a's, then b's).
  std::pair<absl::Status, absl::Status> End(bool cancel) {
    if (cancel) {
      cb_.TryCancel();
      ca_.TryCancel();
    }
    v1::PushPullResponse r;
    while (a_ != nullptr && a_->Read(&r)) {
    }
    while (b_ != nullptr && b_->Read(&r)) {
    }
    if (writer_.joinable()) writer_.join();
    return {a_ ? FromGrpcStatus(a_->Finish()) : absl::UnknownError("no a"),
            b_ ? FromGrpcStatus(b_->Finish()) : absl::UnknownError("no b")};
  }

  ~PacedPushes() {
    if (writer_.joinable()) End(true);
  }

 private:
  static v1::PushPullRequest Message(const v1::PushRequest& m) {
    v1::PushPullRequest out;
    out.ParseFromString(m.SerializeAsString());
    return out;
  }

  grpc::ClientContext ca_, cb_;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::PushPullRequest, v1::PushPullResponse>>
      a_, b_;
  std::thread writer_;
};

// The service stops reading a round's push that runs more than
// kPushLeadBytes ahead of the round's slowest push (PushPacer), but a push
// that stalled holds it back only briefly, not until a timeout.
TEST_F(ServiceTest, APushPullIsPacedBehindAStalledPeerOnlyBriefly) {
  constexpr std::uint64_t kFloats = PacedPushes::kBytes / 4;
  const std::uint64_t lease[2] = {JoinZeros("a", kFloats),
                                  JoinZeros("b", kFloats)};
  ASSERT_NE(lease[0], 0u);
  ASSERT_NE(lease[1], 0u);
  PacedPushes pushes;
  ASSERT_NO_FATAL_FAILURE(pushes.Start(stub_.get(), lease[0], lease[1]));
  // Held back while b counts as live (it sent within the last 500 ms),
  EXPECT_FALSE(AwaitContributions("w", 1, absl::Milliseconds(300)));
  // then let on: a's whole push arrives although b's never does.
  EXPECT_TRUE(AwaitContributions("w", 1, absl::Seconds(10)));
  pushes.End(/*cancel=*/true);
}

// A daemon that stops while a push is paced ends every call, the parked
// one's too, at once: not at the calls' 30 s deadline.
TEST_F(ServiceTest, AServerStoppingWhileAPushIsPacedEndsEveryCall) {
  constexpr std::uint64_t kFloats = PacedPushes::kBytes / 4;
  const std::uint64_t lease[2] = {JoinZeros("a", kFloats),
                                  JoinZeros("b", kFloats)};
  ASSERT_NE(lease[0], 0u);
  ASSERT_NE(lease[1], 0u);
  PacedPushes pushes;
  ASSERT_NO_FATAL_FAILURE(pushes.Start(stub_.get(), lease[0], lease[1]));
  // a is parked behind b for 500 ms; the server stops meanwhile.
  absl::SleepFor(absl::Milliseconds(100));
  server_.reset();
  auto [a, b] = pushes.End(/*cancel=*/false);
  for (const absl::Status& s : {a, b}) {
    EXPECT_FALSE(s.ok()) << s;
    EXPECT_FALSE(absl::IsDeadlineExceeded(s)) << s;
  }
}

// A push that fails after its result began to stream ends the call with
// the push's error (not OK), and the round stays open for a resend.
TEST_F(ServiceTest, PushPullWhosePushFailsMidStreamEndsWithItsError) {
  constexpr std::uint64_t kFloats = 2 * kMinChunkBytes / 4;
  const std::uint64_t lease[2] = {JoinZeros("a", kFloats),
                                  JoinZeros("b", kFloats)};
  ASSERT_NE(lease[0], 0u);
  ASSERT_NE(lease[1], 0u);
  ASSERT_THAT(
      RawPush({Header(lease[1], 1, "w"),
               Chunk(0, 0, std::vector<float>(kMinChunkBytes / 4, 4.0f)),
               Chunk(0, kMinChunkBytes,
                     std::vector<float>(kMinChunkBytes / 4, 4.0f))}),
      IsOk());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  auto a = stub_->PushPull(&context);
  v1::PushPullRequest m;
  *m.mutable_header() = Header(lease[0], 1, "w").header();
  ASSERT_TRUE(a->Write(m));
  *m.mutable_chunk() =
      Chunk(0, 0, std::vector<float>(kMinChunkBytes / 4, 2.0f)).chunk();
  ASSERT_TRUE(a->Write(m));
  v1::PushPullResponse r;
  ASSERT_TRUE(a->Read(&r));  // The header,
  ASSERT_TRUE(r.has_header());
  ASSERT_TRUE(a->Read(&r));  // and the first chunk: both copies arrived.
  ASSERT_TRUE(r.has_chunk());
  // The second chunk at a wrong offset.
  *m.mutable_chunk() =
      Chunk(0, 0, std::vector<float>(kMinChunkBytes / 4, 2.0f)).chunk();
  a->Write(m);
  a->WritesDone();
  while (a->Read(&r)) {
  }
  EXPECT_THAT(FromGrpcStatus(a->Finish()),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("expected offset")));
  EXPECT_EQ(server_->store().Describe("w")->version, 0u);
}

TEST_F(ServiceTest, LateJoinerStartsFromSharedWeights) {
  std::vector<float> a(10, 1.5f), b(10, -7.0f);
  auto ca = Connect("a");
  ASSERT_THAT(ca->Join({TensorRef{"enc", {10}, absl::MakeSpan(a)}}), IsOk());
  a.assign(10, 4.0f);
  ASSERT_THAT(ca->PushPull({TensorRef{"enc", {10}, absl::MakeSpan(a)}}),
              IsOk());
  auto cb = Connect("b");
  ASSERT_THAT(cb->Join({TensorRef{"enc", {10}, absl::MakeSpan(b)}}), IsOk());
  EXPECT_THAT(b, ::testing::Each(4.0f));
  EXPECT_EQ(*cb->Version("enc"), 1u);
}

TEST_F(ServiceTest, PullWaitsForVersionWithinDeadline) {
  std::vector<float> a(4, 0.0f), b(4, 0.0f);
  auto ca = Connect("a");
  auto cb = Connect("b");
  ASSERT_THAT(ca->Join({TensorRef{"w", {4}, absl::MakeSpan(a)}}), IsOk());
  ASSERT_THAT(cb->Join({TensorRef{"w", {4}, absl::MakeSpan(b)}}), IsOk());

  // Version 1 does not exist: the wait ends at the call's deadline.
  v1::PullRequest request;
  v1::PulledTensor* t = request.add_tensors();
  t->set_name("w");
  t->set_min_version(1);
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(300));
    auto stream = stub_->Pull(&context, request);
    v1::PullResponse msg;
    EXPECT_FALSE(stream->Read(&msg));
    EXPECT_EQ(stream->Finish().error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }

  // A waiting pull returns once the round closes.
  std::vector<float> pulled(4, -1.0f);
  std::uint64_t pulled_version = 0;
  grpc::Status pull_status;
  testing::JoiningThread waiter([&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    auto stream = stub_->Pull(&context, request);
    v1::PullResponse msg;
    if (stream->Read(&msg) && msg.has_header()) {
      pulled_version = msg.header().tensors(0).version();
    }
    while (stream->Read(&msg)) {
      std::memcpy(pulled.data(), msg.chunk().data().data(), 16);
    }
    pull_status = stream->Finish();
  });
  a.assign(4, 2.0f);
  b.assign(4, 6.0f);
  ASSERT_THAT(ca->Push({TensorRef{"w", {4}, absl::MakeSpan(a)}}), IsOk());
  ASSERT_THAT(cb->Push({TensorRef{"w", {4}, absl::MakeSpan(b)}}), IsOk());
  waiter.join();
  EXPECT_TRUE(pull_status.ok()) << pull_status.error_message();
  EXPECT_EQ(pulled_version, 1u);
  EXPECT_THAT(pulled, ::testing::Each(4.0f));
  // The client's Pull after its Push waits for that round, too.
  ASSERT_THAT(ca->Pull({TensorRef{"w", {4}, absl::MakeSpan(a)}}), IsOk());
  EXPECT_THAT(a, ::testing::Each(4.0f));
}

TEST_F(ServiceTest, HugeTensorRoundTripIsBitExact) {
  constexpr std::size_t kElements = (256u << 20) / sizeof(float);  // 256 MiB.
  std::vector<float> original(kElements);
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (float& f : original) {
    // Random finite floats across every exponent, sign and mantissa.
    std::uint32_t u = bits(rng);
    if ((u & 0x7f800000u) == 0x7f800000u) u &= ~0x00800000u;
    std::memcpy(&f, &u, 4);
  }
  Start(service::ServerOptions());  // Default: 1 MiB chunks, as in production.

  std::vector<float> mine = original;
  auto a = Connect("a");
  const std::vector<std::int64_t> shape = {
      static_cast<std::int64_t>(kElements)};
  ASSERT_THAT(a->Join({TensorRef{"big", shape, absl::MakeSpan(mine)}}), IsOk());
  // One participant: the round's mean is its own push, bit for bit.
  ASSERT_THAT(a->PushPull({TensorRef{"big", shape, absl::MakeSpan(mine)}}),
              IsOk());
  EXPECT_EQ(std::memcmp(mine.data(), original.data(), kElements * 4), 0);
  std::vector<float> other(kElements, 0.0f);
  auto b = Connect("b");
  ASSERT_THAT(b->Join({TensorRef{"big", shape, absl::MakeSpan(other)}}),
              IsOk());
  EXPECT_EQ(std::memcmp(other.data(), original.data(), kElements * 4), 0);
  // Join and PushPull, once each, unless a call was made again (a lost
  // connection on a busy machine: logged above with its error).
  if (a->stats().retries == 0) {
    EXPECT_EQ(a->stats().bytes_pushed, 2 * kElements * 4);
  } else {
    EXPECT_GE(a->stats().bytes_pushed, 2 * kElements * 4);
  }
}

// A push that sends its header and part of its tensor, then nothing, is
// cut once it has left the server's read waiting longer than the stall
// timeout: DEADLINE_EXCEEDED naming the flag, the round still open, and
// the push completed by a resend (the chunk the cut call delivered counts,
// as for any push that ends early).
TEST_F(ServiceTest, AStalledPushIsCutAfterTheStallTimeout) {
  service::ServerOptions options;
  options.store.chunk_bytes = kMinChunkBytes;
  options.limits.stall_timeout = absl::Seconds(2);
  Start(std::move(options));
  const std::uint64_t lease = JoinZeros("a", 2000);  // Two chunks.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  v1::PushResponse response;
  auto stream = stub_->Push(&context, &response);
  ASSERT_TRUE(stream->Write(Header(lease, 1, "w")));
  // The server's read waits from after the chunk arrived: later than this.
  const absl::Time start = absl::Now();
  ASSERT_TRUE(stream->Write(Chunk(0, 0, std::vector<float>(1024, 5.0f))));
  const grpc::Status cut = stream->Finish();  // Ended by the server.
  EXPECT_GE(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(cut.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << cut.error_message();
  EXPECT_THAT(cut.error_message(), HasSubstr("--stall_timeout"));
  EXPECT_THAT(Stored("w"), ::testing::Each(0.0f));

  // The same sequence again, whole: the round closes with the chunk the
  // cut call delivered and the rest of the resend.
  EXPECT_THAT(RawPush({Header(lease, 1, "w"),
                       Chunk(0, 0, std::vector<float>(1024, 2.0f)),
                       Chunk(0, 4096, std::vector<float>(976, 2.0f))}),
              IsOk());
  std::vector<float> expected(2000, 2.0f);
  std::fill(expected.begin(), expected.begin() + 1024, 5.0f);
  EXPECT_EQ(Stored("w"), expected);
  v1::GetStatusResponse status;
  {
    grpc::ClientContext status_context;
    ASSERT_TRUE(
        stub_->GetStatus(&status_context, v1::GetStatusRequest(), &status)
            .ok());
  }
  EXPECT_EQ(status.stalled_calls_cut(), 1u);
}

// A push whose messages keep coming, each within the stall timeout, is not
// cut however long it takes in all.
TEST_F(ServiceTest, ASlowPushThatKeepsSendingIsNotCut) {
  service::ServerOptions options;
  options.store.chunk_bytes = kMinChunkBytes;
  options.limits.stall_timeout = absl::Seconds(2);
  Start(std::move(options));
  const std::uint64_t lease = JoinZeros("a", 4096);  // Four chunks.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  v1::PushResponse response;
  auto stream = stub_->Push(&context, &response);
  ASSERT_TRUE(stream->Write(Header(lease, 1, "w")));
  for (std::uint64_t i = 0; i < 4; ++i) {
    absl::SleepFor(absl::Milliseconds(700));  // 2.8 s in all.
    ASSERT_TRUE(
        stream->Write(Chunk(0, i * 4096, std::vector<float>(1024, 3.0f))));
  }
  stream->WritesDone();
  EXPECT_THAT(FromGrpcStatus(stream->Finish()), IsOk());
  EXPECT_THAT(Stored("w"), ::testing::Each(3.0f));
}

// Over --max_calls calls at once, another call gets UNAVAILABLE (which
// clients retry), and goes through once a call ended. The calls that hold
// the places are two Barrier entries, seen waiting in the store before the
// third call is made.
TEST_F(ServiceTest, CallsOverTheLimitAreRefusedUntilOneEnds) {
  service::ServerOptions options;
  options.limits.max_calls = 2;
  Start(std::move(options));
  const std::uint64_t leases[2] = {JoinZeros("a", 1024), JoinZeros("b", 1024)};
  grpc::ClientContext contexts[2];
  std::vector<std::thread> waiting;
  for (int i = 0; i < 2; ++i) {
    waiting.emplace_back([&, i] {
      contexts[i].set_deadline(std::chrono::system_clock::now() +
                               std::chrono::seconds(30));
      v1::BarrierRequest request;
      request.set_lease_id(leases[i]);
      request.set_name("never");
      request.set_count(3);  // Never released: only two enter.
      v1::BarrierResponse response;
      stub_->Barrier(&contexts[i], request, &response);
    });
  }
  auto entered = [&] {
    for (const core::BarrierInfo& b : server_->store().Status().barriers) {
      if (b.name == "never") return b.waiting;
    }
    return std::uint32_t{0};
  };
  ASSERT_TRUE(testing::Eventually([&] { return entered() >= 2; }));
  ASSERT_EQ(entered(), 2u);
  v1::GetStatusResponse status;
  {
    grpc::ClientContext status_context;
    const grpc::Status refused =
        stub_->GetStatus(&status_context, v1::GetStatusRequest(), &status);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(refused.error_message(), HasSubstr("--max_calls"));
  }
  for (grpc::ClientContext& context : contexts) context.TryCancel();
  for (std::thread& t : waiting) t.join();
  // Their places are free once gRPC is done with them.
  grpc::Status answered;
  for (int attempt = 0; attempt < 100; ++attempt) {
    grpc::ClientContext status_context;
    answered =
        stub_->GetStatus(&status_context, v1::GetStatusRequest(), &status);
    if (answered.ok()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(answered.ok()) << answered.error_message();
  EXPECT_GE(status.refused_busy(), 1u);
}

// A call that fails with UNAVAILABLE is made again until the retry budget
// is spent, and each attempt after the first is counted.
TEST_F(ServiceTest, CallsMadeAgainAreCounted) {
  auto a = Connect("a");  // A retry budget of 1 s.
  std::vector<float> w(4, 1.0f);
  ASSERT_THAT(a->Join({TensorRef{"w", {4}, absl::MakeSpan(w)}}), IsOk());
  EXPECT_EQ(a->stats().retries, 0u);
  server_.reset();  // Nothing listens any more.
  EXPECT_THAT(a->Pull({TensorRef{"w", {4}, absl::MakeSpan(w)}}),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_GE(a->stats().retries, 1u);
}

// A unary call that ends its side without a request (a raw client, or one
// cancelled before its message went out) is refused for what it is, not
// as a request that does not parse.
TEST_F(ServiceTest, AUnaryCallWithoutItsRequestIsRefusedForWhatItIs) {
  grpc::GenericStub generic(channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  auto call =
      generic.PrepareCall(&context, "/weightd.v1.Weightd/Heartbeat", &cq);
  auto step = [&cq](int tag) {
    void* got = nullptr;
    bool ok = false;
    return cq.Next(&got, &ok) && got == reinterpret_cast<void*>(tag);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  call->WritesDone(reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(),
              HasSubstr("a Heartbeat call ended its side without a request"));
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
}

// Every malformed call gets its specific code and leaves the value alone.
TEST_F(ServiceTest, BadInputGetsSpecificCodesAndChangesNothing) {
  std::vector<float> initial(2000);
  for (std::size_t i = 0; i < initial.size(); ++i) initial[i] = float(i) / 7;
  std::vector<float> mine = initial;
  auto client = Connect("a");
  ASSERT_THAT(client->Join({TensorRef{"w", {2000}, absl::MakeSpan(mine)}}),
              IsOk());
  const std::uint64_t lease = server_->store().Status().workers.at(0).lease_id;
  std::vector<float> chunk(1024, 1.0f);

  EXPECT_THAT(RawPush({Header(lease, 11, "nope"), Chunk(0, 0, chunk)}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(RawPush({Header(0, 1, "w"), Chunk(0, 0, chunk)}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("call Join first")));
  EXPECT_THAT(RawPush({Header(lease, 12, ""), Chunk(0, 0, chunk)}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(RawPush({Chunk(0, 0, chunk)}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("must carry the header")));
  EXPECT_THAT(RawPush({Header(lease, 13, "w"), Header(lease, 14, "w")}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("exactly one header")));
  v1::PushRequest no_kind = Header(lease, 15, "w");
  no_kind.mutable_header()->set_kind(v1::UPDATE_KIND_UNSPECIFIED);
  EXPECT_THAT(RawPush({no_kind}), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("update kind")));
  // Chunk length, offset, index.
  EXPECT_THAT(
      RawPush({Header(lease, 16, "w"),
               Chunk(0, 0, std::vector<float>(1000, 1.0f))}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected 4096")));
  EXPECT_THAT(RawPush({Header(lease, 17, "w"), Chunk(0, 4096, chunk)}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("expected offset 0")));
  EXPECT_THAT(RawPush({Header(lease, 18, "w"), Chunk(0, 1 << 20, chunk)}),
              StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(RawPush({Header(lease, 19, "w"), Chunk(3, 0, chunk)}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor index 3")));
  // NaN (rejected by default), and a truncated stream.
  std::vector<float> nan = chunk;
  nan[17] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(RawPush({Header(lease, 20, "w"), Chunk(0, 0, nan)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
  std::vector<float> inf = chunk;
  inf[0] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(RawPush({Header(lease, 21, "w"), Chunk(0, 0, inf)}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Inf")));
  EXPECT_THAT(RawPush({Header(lease, 22, "w")}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("after 0 of 8000 bytes")));
  // A push to a round that is not open.
  EXPECT_THAT(
      RawPush({Header(lease, 23, "w", /*round=*/5), Chunk(0, 0, chunk)}),
      StatusIs(absl::StatusCode::kAborted, HasSubstr("not open")));

  // Join: empty name, shape mismatch, size mismatch.
  std::vector<float> small(3, 0.0f);
  auto other = Connect("b");
  EXPECT_THAT(other->Join({TensorRef{"", {3}, absl::MakeSpan(small)}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(other->Join({TensorRef{"w", {3}, absl::MakeSpan(small)}}),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("already exists with shape [2000]")));
  EXPECT_THAT(other->Join({TensorRef{"w", {4}, absl::MakeSpan(small)}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Pull of an unknown tensor, leave with a bogus lease.
  EXPECT_THAT(other->Pull({TensorRef{"w", {2000}, absl::MakeSpan(mine)}}),
              StatusIs(absl::StatusCode::kNotFound));  // Not joined here.
  {
    grpc::ClientContext context;
    v1::PullRequest request;
    request.add_tensors()->set_name("nope");
    auto stream = stub_->Pull(&context, request);
    v1::PullResponse msg;
    while (stream->Read(&msg)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    v1::LeaveRequest request;
    request.set_lease_id(12345);
    v1::LeaveResponse response;
    EXPECT_EQ(stub_->Leave(&context, request, &response).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }

  // Nothing changed, bit for bit, and the daemon still serves.
  const std::vector<float> stored = Stored("w");
  ASSERT_EQ(stored.size(), initial.size());
  EXPECT_EQ(std::memcmp(stored.data(), initial.data(), initial.size() * 4), 0);
  EXPECT_EQ(server_->store().Describe("w")->version, 0u);
  std::vector<float> pulled(2000, 0.0f);
  ASSERT_THAT(client->Pull({TensorRef{"w", {2000}, absl::MakeSpan(pulled)}}),
              IsOk());
  EXPECT_EQ(std::memcmp(pulled.data(), initial.data(), initial.size() * 4), 0);
}

TEST_F(ServiceTest, RejectedPushIsRetriedAndTheRoundCloses) {
  std::vector<float> ax(4, 0), ay(4, 0), bx(4, 0), by(4, 0);
  auto a = Connect("a");
  auto b = Connect("b");
  std::vector<TensorRef> at = {{"x", {4}, absl::MakeSpan(ax)},
                               {"y", {4}, absl::MakeSpan(ay)}};
  std::vector<TensorRef> bt = {{"x", {4}, absl::MakeSpan(bx)},
                               {"y", {4}, absl::MakeSpan(by)}};
  ASSERT_THAT(a->Join(at), IsOk());
  ASSERT_THAT(b->Join(bt), IsOk());
  ax.assign(4, 1);
  ay.assign(4, 1);
  ay[3] = std::numeric_limits<float>::quiet_NaN();
  // x arrived whole before y's NaN was found: rejected, nothing published.
  EXPECT_THAT(a->PushPull(at),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
  EXPECT_EQ(server_->store().Describe("x")->version, 0u);
  ay[3] = 1;
  absl::Status b_status;
  testing::JoiningThread tb([&] {
    bx.assign(4, 3);
    by.assign(4, 3);
    b_status = b->PushPull(bt);
  });
  EXPECT_THAT(a->PushPull(at), IsOk());  // The fixed retry joins the round.
  tb.join();
  EXPECT_THAT(b_status, IsOk());
  EXPECT_THAT(ax, ::testing::Each(2.0f));
  EXPECT_THAT(ay, ::testing::Each(2.0f));
  EXPECT_THAT(bx, ::testing::Each(2.0f));
}

// Refused at its first chunk, while the client still writes the rest and
// already waits for the result on its reading thread: the call ends (no
// hang) with the server's status, not the reader's "stream ended".
TEST_F(ServiceTest, PushPullRefusedMidwayEndsWithTheServersStatus) {
  constexpr std::int64_t kElements = 4 << 20;  // 16 MiB: 4096 chunks.
  std::vector<float> w(kElements, 1.0f);
  auto client = Connect("a");
  const TensorRef ref{"w", {kElements}, absl::MakeSpan(w)};
  ASSERT_THAT(client->Join({ref}), IsOk());
  w[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(client->PushPull({ref}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NaN")));
  EXPECT_EQ(server_->store().Describe("w")->version, 0u);
  EXPECT_THAT(Stored("w"), ::testing::Each(1.0f));
}

TEST_F(ServiceTest, JoinHeaderAloneAllocatesNothingAndIsRefused) {
  grpc::ClientContext context;
  v1::JoinResponse response;
  auto stream = stub_->Join(&context, &response);
  v1::JoinRequest header;
  header.mutable_header()->set_worker_id("greedy");
  for (int i = 0; i < 4; ++i) {
    v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
    d->set_name(absl::StrCat("t", i));
    d->add_shape(256 << 20);  // 1 GiB each, never sent.
  }
  ASSERT_TRUE(stream->Write(header));
  v1::JoinRequest chunk;
  chunk.mutable_initial_value()->set_data(std::string(kMinChunkBytes, '\0'));
  ASSERT_TRUE(stream->Write(chunk));
  stream->WritesDone();
  const absl::Status status = FromGrpcStatus(stream->Finish());
  EXPECT_THAT(status,
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("Join ended after 4096 of 1073741824")));
  EXPECT_LT(server_->store().AllocatedBytes(), 1u << 20);
  EXPECT_TRUE(server_->store().Status().tensors.empty());
}

TEST_F(ServiceTest, HealthIsServingAndShutdownReleasesWaiters) {
  {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, {}, &response).ok());
    EXPECT_EQ(response.status(),
              grpc::health::v1::HealthCheckResponse::SERVING);
  }

  std::vector<float> a(4, 0.0f), b(4, 0.0f);
  auto ca = Connect("a");
  auto cb = Connect("b");
  ASSERT_THAT(ca->Join({TensorRef{"w", {4}, absl::MakeSpan(a)}}), IsOk());
  ASSERT_THAT(cb->Join({TensorRef{"w", {4}, absl::MakeSpan(b)}}), IsOk());
  // a waits for a round b never joins; shutdown must release it.
  absl::Status waited;
  testing::JoiningThread waiter([&] {
    waited = ca->PushPull({TensorRef{"w", {4}, absl::MakeSpan(a)}});
  });
  // Shut down only once a's contribution is recorded (it is waiting).
  ASSERT_TRUE(AwaitContributions("w", 1));
  ASSERT_EQ(server_->store().Describe("w")->contributed, 1u);
  server_->Shutdown();
  waiter.join();
  EXPECT_THAT(waited, StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(ServiceTest, BarrierReleasesAllWorkersTogether) {
  constexpr int kWorkers = 3;
  std::vector<std::vector<float>> buffers(kWorkers, std::vector<float>(2));
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < kWorkers; ++w) {
    clients.push_back(Connect(absl::StrCat("w", w)));
    ASSERT_THAT(
        clients[w]->Join({TensorRef{"x", {2}, absl::MakeSpan(buffers[w])}}),
        IsOk());
  }
  std::vector<absl::Status> results(kWorkers);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back(
        [&, w] { results[w] = clients[w]->Barrier("start", kWorkers); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_THAT(r, IsOk());
  EXPECT_THAT(clients[0]->Barrier("start", 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Deadline-bounded: a barrier nobody else enters ends DEADLINE_EXCEEDED.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(200));
  v1::BarrierRequest request;
  request.set_lease_id(server_->store().Status().workers.at(0).lease_id);
  request.set_name("lonely");
  request.set_count(2);
  v1::BarrierResponse response;
  EXPECT_EQ(stub_->Barrier(&context, request, &response).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  // The barrier is reusable: a second generation releases together. (That
  // an expired entry is withdrawn is a core test: here the client may see
  // its deadline before the server does.)
  std::vector<absl::Status> pair(2);
  testing::JoiningThread t0([&] { pair[0] = clients[1]->Barrier("start", 2); });
  testing::JoiningThread t1([&] { pair[1] = clients[2]->Barrier("start", 2); });
  t0.join();
  t1.join();
  EXPECT_THAT(pair[0], IsOk());
  EXPECT_THAT(pair[1], IsOk());
}

// A worker that stops calling is dropped after the lease timeout and the
// round closes without it; a worker waiting in PushPull for longer than the
// lease timeout is kept alive by its client's heartbeat.
TEST_F(ServiceTest, SilentWorkerIsDroppedWhileWaitingWorkerHeartbeats) {
  service::ServerOptions options;
  options.store.lease_timeout = absl::Milliseconds(300);
  Start(std::move(options));

  std::vector<float> a(4, 0.0f), b(4, 0.0f);
  auto ca = Connect("a");
  ClientOptions silent = testing::TestClientOptions();
  silent.address = server_->address();
  silent.worker_id = "b";
  silent.heartbeat = false;
  auto cb = std::move(Client::Connect(silent)).value();
  ASSERT_THAT(ca->Join({TensorRef{"w", {4}, absl::MakeSpan(a)}}), IsOk());
  ASSERT_THAT(cb->Join({TensorRef{"w", {4}, absl::MakeSpan(b)}}), IsOk());
  a.assign(4, 5.0f);
  // Returns once b's lease expires and the round closes without it.
  ASSERT_THAT(ca->PushPull({TensorRef{"w", {4}, absl::MakeSpan(a)}}), IsOk());
  EXPECT_THAT(a, ::testing::Each(5.0f));
  EXPECT_EQ(server_->store().Describe("w")->participants, 1u);
  const core::StoreStatus status = server_->store().Status();
  ASSERT_EQ(status.workers.size(), 1u);
  EXPECT_EQ(status.workers[0].worker_id, "a");
  EXPECT_FALSE(ca->lease_lost());
  // b's late push finds its lease gone: the client joins again, sees the
  // round closed without it and reports ABORTED; its update is never mixed
  // into a later round.
  b.assign(4, 9.0f);
  EXPECT_THAT(cb->Push({TensorRef{"w", {4}, absl::MakeSpan(b)}}),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("moved on")));
  const core::TensorInfo info = *server_->store().Describe("w");
  EXPECT_EQ(info.version, 1u);
  EXPECT_EQ(info.contributed, 0u);
  EXPECT_THAT(Stored("w"), ::testing::Each(5.0f));
}

class SnapshotServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/weightd-service-snap.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    Restart();
  }
  void TearDown() override {
    server_.reset();
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  // The old server's shutdown writes its final snapshot.
  void Restart(std::string listen_address = "127.0.0.1:0") {
    service::ServerOptions options;
    options.listen_address = std::move(listen_address);
    options.snapshot_dir = dir_ + "/snaps";
    options.snapshot_every.every_rounds = 1;
    Start(std::move(options));
  }
  std::string dir_;
};

TEST_F(SnapshotServiceTest, RestartContinuesFromTheFinalSnapshot) {
  std::vector<float> w(3000, 1.0f);
  {
    auto client = Connect("a");
    ASSERT_THAT(client->Join({TensorRef{"w", {3000}, absl::MakeSpan(w)}}),
                IsOk());
    for (int round = 0; round < 3; ++round) {
      std::fill(w.begin(), w.end(), float(round + 10));
      ASSERT_THAT(client->PushPull({TensorRef{"w", {3000}, absl::MakeSpan(w)}}),
                  IsOk());
    }
    // An admin snapshot names its file.
    grpc::ClientContext context;
    v1::TakeSnapshotResponse response;
    ASSERT_TRUE(stub_->TakeSnapshot(&context, {}, &response).ok());
    EXPECT_THAT(response.path(), HasSubstr("/snaps/snapshot-"));
  }
  Restart();
  auto info = server_->store().Describe("w");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->version, 3u);
  EXPECT_THAT(*(*server_->store().Read({"w"}))[0].value,
              ::testing::Each(12.0f));
  // The worker comes back under its id and continues from the saved value.
  std::vector<float> back(3000, 0.0f);
  auto client = Connect("a");
  ASSERT_THAT(client->Join({TensorRef{"w", {3000}, absl::MakeSpan(back)}}),
              IsOk());
  EXPECT_THAT(back, ::testing::Each(12.0f));
  EXPECT_EQ(*client->Version("w"), 3u);
}

// kill -9 is staged in tests/fault; here the server restarts gracefully on
// the same port while a worker keeps calling: the client retries through
// the outage, the restored lease is still valid, and the round continues.
TEST_F(SnapshotServiceTest, ClientRidesThroughARestartOnTheSamePort) {
  std::vector<float> w(8, 1.0f);
  ClientOptions options = testing::TestClientOptions();
  options.address = server_->address();
  options.worker_id = "a";
  options.retry_budget = absl::Seconds(30);
  auto client = std::move(Client::Connect(options)).value();
  ASSERT_THAT(client->Join({TensorRef{"w", {8}, absl::MakeSpan(w)}}), IsOk());
  ASSERT_THAT(client->PushPull({TensorRef{"w", {8}, absl::MakeSpan(w)}}),
              IsOk());
  const int port = server_->port();
  server_.reset();  // Final snapshot written; the port is free.
  absl::Status pushed;
  testing::JoiningThread worker([&] {
    std::fill(w.begin(), w.end(), 3.0f);
    pushed = client->PushPull({TensorRef{"w", {8}, absl::MakeSpan(w)}});
  });
  Restart(absl::StrCat("127.0.0.1:", port));
  worker.join();
  EXPECT_THAT(pushed, IsOk());
  EXPECT_THAT(w, ::testing::Each(3.0f));
  EXPECT_EQ(*client->Version("w"), 2u);
}

TEST_F(SnapshotServiceTest, UnusableSnapshotsMeanNotServing) {
  std::vector<float> w(4, 1.0f);
  {
    auto client = Connect("a");
    ASSERT_THAT(client->Join({TensorRef{"w", {4}, absl::MakeSpan(w)}}), IsOk());
    ASSERT_THAT(client->PushPull({TensorRef{"w", {4}, absl::MakeSpan(w)}}),
                IsOk());
  }
  server_.reset();
  // Damage every snapshot in the directory.
  std::system(
      ("for f in '" + dir_ + "'/snaps/*.wds; do truncate -s 20 \"$f\"; done")
          .c_str());
  Restart();
  EXPECT_TRUE(server_->store().closed());
  ClientOptions options = testing::TestClientOptions();
  options.address = server_->address();
  options.worker_id = "a";
  options.retry_budget = absl::Milliseconds(300);
  auto client = Client::Connect(options);
  ASSERT_THAT(client, IsOk());  // It answers, but...
  EXPECT_THAT((*client)->Join({TensorRef{"w", {4}, absl::MakeSpan(w)}}),
              StatusIs(absl::StatusCode::kUnavailable));
}

// While a server restores its state it already listens: every call gets
// UNAVAILABLE with a reason, and health says NOT_SERVING.
TEST_F(SnapshotServiceTest, CallsGetUnavailableWhileRestoring) {
  std::vector<float> w(4, 5.0f);
  {
    auto client = Connect("a");
    ASSERT_THAT(client->Join({TensorRef{"w", {4}, absl::MakeSpan(w)}}), IsOk());
  }
  server_.reset();  // Final snapshot: there is something to restore.
  bool checked = false;
  service::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.snapshot_dir = dir_ + "/snaps";
  options.on_listening = [&](const std::string& address) {
    auto channel =
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    auto stub = v1::Weightd::NewStub(channel);
    {
      grpc::ClientContext context;
      v1::GetStatusResponse response;
      grpc::Status status = stub->GetStatus(&context, {}, &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
      EXPECT_THAT(status.error_message(), HasSubstr("restoring"));
    }
    {
      grpc::ClientContext context;
      v1::JoinResponse response;
      auto stream = stub->Join(&context, &response);
      v1::JoinRequest header;
      header.mutable_header()->set_worker_id("b");
      stream->Write(header);
      stream->WritesDone();
      grpc::Status status = stream->Finish();
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
      EXPECT_THAT(status.error_message(), HasSubstr("restoring"));
    }
    {
      grpc::ClientContext context;
      v1::PullRequest request;
      request.add_tensors()->set_name("w");
      auto reader = stub->Pull(&context, request);
      v1::PullResponse response;
      while (reader->Read(&response)) {
      }
      grpc::Status status = reader->Finish();
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
      EXPECT_THAT(status.error_message(), HasSubstr("restoring"));
    }
    auto health = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, {}, &response).ok());
    EXPECT_EQ(response.status(),
              grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    checked = true;
  };
  Start(std::move(options));
  EXPECT_TRUE(checked);
  // Restored, then serving.
  EXPECT_THAT(Stored("w"), ::testing::Each(5.0f));
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, {}, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

// --round_quorum: a straggler's PushPull to a round that closed without it
// returns OK with the current value (the training loop just continues), and
// it takes part in the next round.
TEST_F(ServiceTest, QuorumClosesWithoutStragglerWhoPullsAndContinues) {
  // The server's clock moves only when the test says: round 0 passes its
  // timeout once both fast workers are in, round 1 never does.
  struct Clock {
    absl::Mutex mu;
    absl::Time now = absl::UnixEpoch();
  };
  auto clock = std::make_shared<Clock>();
  service::ServerOptions options;
  options.store.chunk_bytes = kMinChunkBytes;
  options.store.round_quorum.count = 2;
  options.store.round_timeout = absl::Seconds(1);
  options.store.now = [clock] {
    absl::MutexLock lock(&clock->mu);
    return clock->now;
  };
  Start(std::move(options));
  std::vector<std::vector<float>> w(3, std::vector<float>(2000, 0.0f));
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(Connect(absl::StrCat("w", i)));
    ASSERT_THAT(
        clients[i]->Join({TensorRef{"t", {2000}, absl::MakeSpan(w[i])}}),
        IsOk());
  }
  auto ref = [&](int i) {
    return TensorRef{"t", {2000}, absl::MakeSpan(w[i])};
  };
  std::vector<absl::Status> results(2);
  std::vector<std::thread> fast;
  for (int i = 0; i < 2; ++i) {
    fast.emplace_back([&, i] {
      std::fill(w[i].begin(), w[i].end(), float(2 * i + 2));  // 2 and 4.
      results[i] = clients[i]->PushPull({ref(i)});
    });
  }
  ASSERT_TRUE(AwaitContributions("t", 2));
  ASSERT_EQ(server_->store().Describe("t")->contributed, 2u);
  {
    absl::MutexLock lock(&clock->mu);
    clock->now += absl::Seconds(2);  // The housekeeper closes the round.
  }
  for (auto& t : fast) t.join();
  ASSERT_THAT(results[0], IsOk());
  ASSERT_THAT(results[1], IsOk());
  EXPECT_THAT(w[0], ::testing::Each(3.0f));
  EXPECT_EQ(server_->store().Describe("t")->version, 1u);

  // The straggler pushes to round 0, which closed without it.
  std::fill(w[2].begin(), w[2].end(), 100.0f);
  ASSERT_THAT(clients[2]->PushPull({ref(2)}), IsOk());
  EXPECT_THAT(w[2], ::testing::Each(3.0f));  // The current value, not 100.
  EXPECT_EQ(clients[2]->stats().rounds_missed, 1u);
  EXPECT_THAT(Stored("t"), ::testing::Each(3.0f));

  // Next round: all three in time, all three averaged.
  std::vector<std::thread> all;
  std::vector<absl::Status> again(3);
  for (int i = 0; i < 3; ++i) {
    all.emplace_back([&, i] {
      std::fill(w[i].begin(), w[i].end(), float(i + 1));  // 1, 2, 3.
      again[i] = clients[i]->PushPull({ref(i)});
    });
  }
  for (auto& t : all) t.join();
  for (const absl::Status& s : again) EXPECT_THAT(s, IsOk());
  EXPECT_EQ(server_->store().Describe("t")->version, 2u);
  EXPECT_THAT(Stored("t"), ::testing::Each(2.0f));
}

// Limits: a Join over them gets RESOURCE_EXHAUSTED before any value is
// buffered, and the stored weights and members stay as they were.
TEST_F(ServiceTest, JoinsOverTheLimitsAreResourceExhausted) {
  service::ServerOptions options;
  options.store.chunk_bytes = kMinChunkBytes;
  options.store.max_workers = 1;
  options.store.max_total_bytes = 64 << 10;
  Start(std::move(options));
  std::vector<float> w(1000, 7.0f);
  auto a = Connect("a");
  ASSERT_THAT(a->Join({TensorRef{"w", {1000}, absl::MakeSpan(w)}}), IsOk());
  std::vector<float> other(1000, 1.0f);
  auto b = Connect("b");
  EXPECT_THAT(b->Join({TensorRef{"w", {1000}, absl::MakeSpan(other)}}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_workers")));
  std::vector<float> big(1 << 14, 1.0f);  // 64 KiB more than fits.
  EXPECT_THAT(a->Join({TensorRef{"w", {1000}, absl::MakeSpan(w)},
                       TensorRef{"big", {1 << 14}, absl::MakeSpan(big)}}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("--max_total_bytes")));
  EXPECT_THAT(server_->store().Describe("big"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Stored("w"), ::testing::Each(7.0f));
  EXPECT_EQ(server_->store().Status().workers.size(), 1u);
}

// The codes of docs/errors.md not shown by the tests above, over the wire;
// the stored value stays bit-identical through all of them.
TEST_F(ServiceTest, RemainingCodesOverTheWireChangeNothing) {
  service::ServerOptions options;
  options.store.chunk_bytes = kMinChunkBytes;
  options.store.max_tensor_bytes = 1 << 20;
  Start(std::move(options));
  std::vector<float> w(8, 1.5f);
  auto a = Connect("a");
  ASSERT_THAT(a->Join({TensorRef{"w", {8}, absl::MakeSpan(w)}}), IsOk());
  const std::uint64_t lease = server_->store().Status().workers.at(0).lease_id;
  const std::vector<float> before = Stored("w");

  // Join: a tensor over --max_tensor_bytes (refused at the header).
  std::vector<float> big(1 << 19);
  EXPECT_THAT(a->Join({TensorRef{"w", {8}, absl::MakeSpan(w)},
                       TensorRef{"huge", {1 << 19}, absl::MakeSpan(big)}}),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_tensor_bytes")));
  // Join: a chunk past the end of its tensor.
  {
    grpc::ClientContext context;
    v1::JoinResponse response;
    auto stream = stub_->Join(&context, &response);
    v1::JoinRequest header;
    header.mutable_header()->set_worker_id("c");
    v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
    d->set_name("fresh");
    d->add_shape(4);
    stream->Write(header);
    v1::JoinRequest chunk;
    chunk.mutable_initial_value()->set_offset(64);
    chunk.mutable_initial_value()->set_data(std::string(16, '\0'));
    stream->Write(chunk);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_THAT(server_->store().Describe("fresh"),
                StatusIs(absl::StatusCode::kNotFound));
  }
  // Pull: no tensors; one named twice.
  for (int names : {0, 2}) {
    grpc::ClientContext context;
    v1::PullRequest request;
    for (int i = 0; i < names; ++i) request.add_tensors()->set_name("w");
    auto reader = stub_->Pull(&context, request);
    v1::PullResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << names << " names";
  }
  // Heartbeat with an unknown lease.
  {
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    request.set_lease_id(lease + 1);
    v1::HeartbeatResponse response;
    EXPECT_EQ(stub_->Heartbeat(&context, request, &response).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  // Barrier: count 0; unknown lease.
  for (const auto& [lease_id, count, code] :
       {std::tuple{lease, 0u, grpc::StatusCode::INVALID_ARGUMENT},
        std::tuple{lease + 1, 1u, grpc::StatusCode::FAILED_PRECONDITION}}) {
    grpc::ClientContext context;
    v1::BarrierRequest request;
    request.set_lease_id(lease_id);
    request.set_name("start");
    request.set_count(count);
    v1::BarrierResponse response;
    EXPECT_EQ(stub_->Barrier(&context, request, &response).error_code(), code);
  }
  // Push: a second push to the same round (the round waits for b).
  std::vector<float> other(8, 0.0f);
  auto b = Connect("b");
  ASSERT_THAT(b->Join({TensorRef{"w", {8}, absl::MakeSpan(other)}}), IsOk());
  const std::vector<float> eight(8, 3.0f);
  auto push = [&](std::uint64_t sequence, v1::UpdateKind kind) {
    v1::PushRequest header = Header(lease, sequence, "w", 0);
    header.mutable_header()->set_kind(kind);
    return RawPush({header, Chunk(0, 0, eight)});
  };
  ASSERT_THAT(push(100, v1::UPDATE_KIND_WEIGHTS), IsOk());
  EXPECT_THAT(push(101, v1::UPDATE_KIND_WEIGHTS),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("already contributed")));
  // b's delta while the round collects weights.
  const std::uint64_t lease_b =
      server_->store().Status().workers.at(1).lease_id;
  v1::PushRequest delta = Header(lease_b, 1, "w", 0);
  delta.mutable_header()->set_kind(v1::UPDATE_KIND_DELTA);
  EXPECT_THAT(RawPush({delta, Chunk(0, 0, eight)}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("collecting weights")));
  // A push older than the worker's last one.
  EXPECT_THAT(push(50, v1::UPDATE_KIND_WEIGHTS),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("older")));
  EXPECT_EQ(Stored("w"), before);
  EXPECT_EQ(server_->store().Describe("w")->version, 0u);
}

// The same-host fast path: the daemon listens on TCP and on a Unix socket
// at once, and workers on either take part in the same round.
TEST_F(ServiceTest, WorkersOverTcpAndUnixSocketShareARound) {
  char tmpl[] = "/tmp/weightd-unix.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string socket = std::string(tmpl) + "/weightd.sock";
  service::ServerOptions options;
  options.store.chunk_bytes = kMinChunkBytes;
  options.unix_socket = socket;
  Start(std::move(options));
  auto over_tcp = Connect("tcp");
  ClientOptions unix_options = testing::TestClientOptions();
  unix_options.address = "unix:" + socket;
  unix_options.worker_id = "unix";
  auto over_unix = std::move(Client::Connect(unix_options)).value();
  std::vector<float> a(3000, 1.0f), b(3000, 3.0f);
  ASSERT_THAT(over_tcp->Join({TensorRef{"w", {3000}, absl::MakeSpan(a)}}),
              IsOk());
  ASSERT_THAT(over_unix->Join({TensorRef{"w", {3000}, absl::MakeSpan(b)}}),
              IsOk());
  b.assign(3000, 3.0f);
  absl::Status unix_result;
  testing::JoiningThread t([&] {
    unix_result =
        over_unix->PushPull({TensorRef{"w", {3000}, absl::MakeSpan(b)}});
  });
  ASSERT_THAT(over_tcp->PushPull({TensorRef{"w", {3000}, absl::MakeSpan(a)}}),
              IsOk());
  t.join();
  ASSERT_THAT(unix_result, IsOk());
  EXPECT_THAT(a, ::testing::Each(2.0f));
  EXPECT_THAT(b, ::testing::Each(2.0f));
  server_.reset();
  std::system(("rm -rf '" + std::string(tmpl) + "'").c_str());
}

TEST_F(ServiceTest, SixteenBitWireFormatsAverageInFloat32) {
  // Three workers, one per format, weights 1, 1, 2. The values have more
  // bits than 16-bit formats hold, so the result shows where rounding
  // happens: on the wire only, never in the sum.
  constexpr std::size_t kSize = 2500;  // 3 chunks of 4 KiB, one partial.
  const WireFormat formats[] = {WireFormat::kFloat32, WireFormat::kBfloat16,
                                WireFormat::kFloat16};
  std::vector<std::vector<float>> values(3, std::vector<float>(kSize));
  std::vector<std::unique_ptr<Client>> clients;
  for (int w = 0; w < 3; ++w) {
    ClientOptions options = testing::TestClientOptions();
    options.address = server_->address();
    options.worker_id = absl::StrCat("w", w);
    options.wire_format = formats[w];
    auto client = Client::Connect(options);
    ASSERT_THAT(client, IsOk());
    clients.push_back(std::move(*client));
    ASSERT_THAT(
        clients[w]->Join({TensorRef{"t", {kSize}, absl::MakeSpan(values[w])}}),
        IsOk());
  }
  const std::uint64_t pushed_before = clients[1]->stats().bytes_pushed;
  const std::uint64_t retries_before = clients[1]->stats().retries;
  auto value = [](int w, std::size_t i) {
    return 1.0f + 0.001f * static_cast<float>(i) + 0.1234567f * w;
  };
  // In a fixed order (float sums depend on it): 0 and 1 push, 2 closes
  // the round, 0 and 1 pull the result.
  for (int w = 0; w < 3; ++w) {
    for (std::size_t i = 0; i < kSize; ++i) values[w][i] = value(w, i);
    const std::vector<TensorRef> refs = {
        TensorRef{"t", {kSize}, absl::MakeSpan(values[w])}};
    const PushOptions push{UpdateKind::kWeights, w == 2 ? 2.0 : 1.0};
    ASSERT_THAT(
        w < 2 ? clients[w]->Push(refs, push) : clients[w]->PushPull(refs, push),
        IsOk())
        << w;
  }
  for (int w = 0; w < 2; ++w) {
    ASSERT_THAT(
        clients[w]->Pull({TensorRef{"t", {kSize}, absl::MakeSpan(values[w])}}),
        IsOk());
  }

  // What the server received: worker 1's values rounded to bfloat16,
  // worker 2's to float16; summed and divided in float32.
  std::vector<float> expected(kSize);
  for (std::size_t i = 0; i < kSize; ++i) {
    float sum = value(0, i);
    sum += 1.0f * Bfloat16ToFloat(FloatToBfloat16(value(1, i)));
    sum += 2.0f * Float16ToFloat(FloatToFloat16(value(2, i)));
    expected[i] = static_cast<float>(sum / 4.0);
  }
  const std::vector<float> stored = Stored("t");
  EXPECT_EQ(stored, expected);
  // Each worker gets it back in its own format.
  EXPECT_EQ(values[0], expected);
  for (std::size_t i = 0; i < kSize; ++i) {
    ASSERT_EQ(values[1][i], Bfloat16ToFloat(FloatToBfloat16(expected[i]))) << i;
    ASSERT_EQ(values[2][i], Float16ToFloat(FloatToFloat16(expected[i]))) << i;
  }
  // Half the bytes on the wire (once, unless the push was made again
  // after a lost connection on a busy machine).
  if (clients[1]->stats().retries == retries_before) {
    EXPECT_EQ(clients[1]->stats().bytes_pushed - pushed_before, kSize * 2);
  } else {
    EXPECT_GE(clients[1]->stats().bytes_pushed - pushed_before, kSize * 2);
  }

  // A format the server does not know: INVALID_ARGUMENT, nothing changes.
  const std::uint64_t lease = server_->store().Status().workers.at(0).lease_id;
  v1::PushRequest header = Header(lease, 100, "t", 1);
  header.mutable_header()->set_format(static_cast<v1::WireFormat>(7));
  EXPECT_THAT(
      RawPush({header, Chunk(0, 0, std::vector<float>(1024, 9.0f))}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("wire format 7")));
  // A chunk of float32 size in a bfloat16 push: a wrong length.
  header.mutable_header()->set_format(v1::WIRE_FORMAT_BFLOAT16);
  EXPECT_THAT(RawPush({header, Chunk(0, 0, std::vector<float>(1024, 9.0f))}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("values in bfloat16")));
  EXPECT_EQ(Stored("t"), stored);
}

// A result batch goes out once all of its chunks are published, whichever
// of them comes last: here y (held by a alone) is ready at once and x waits
// for b, which pushes later.
TEST_F(ServiceTest, AResultBatchWaitsForItsSlowestTensor) {
  std::vector<float> ax(8, 1.0f), ay(8, 5.0f), bx(8, 3.0f);
  auto ca = Connect("a");
  auto cb = Connect("b");
  ASSERT_THAT(ca->Join({{"x", {8}, absl::MakeSpan(ax)},
                        {"y", {8}, absl::MakeSpan(ay)}}),
              IsOk());
  ASSERT_THAT(cb->Join({{"x", {8}, absl::MakeSpan(bx)}}), IsOk());
  std::fill(bx.begin(), bx.end(), 3.0f);  // Join gave b the shared value.
  absl::Status sa;
  testing::JoiningThread t([&] {
    sa = ca->PushPull(
        {{"x", {8}, absl::MakeSpan(ax)}, {"y", {8}, absl::MakeSpan(ay)}});
  });
  ASSERT_TRUE(AwaitContributions("y", 1));  // a's push is in.
  ASSERT_THAT(cb->PushPull({{"x", {8}, absl::MakeSpan(bx)}}), IsOk());
  t.join();
  ASSERT_THAT(sa, IsOk());
  EXPECT_THAT(ax, ::testing::Each(2.0f));
  EXPECT_THAT(ay, ::testing::Each(5.0f));
  EXPECT_THAT(bx, ::testing::Each(2.0f));
}

TEST_F(ServiceTest, SmallTensorsTravelInBatchesAndOversizedBatchesAreRefused) {
  // 300 tensors of 8 floats each: one ChunkBatch message each way.
  constexpr int kTensors = 300;
  std::vector<std::vector<float>> a(kTensors, std::vector<float>(8)),
      b(kTensors, std::vector<float>(8));
  auto refs = [](std::vector<std::vector<float>>& v) {
    std::vector<TensorRef> r;
    for (int i = 0; i < kTensors; ++i) {
      r.push_back({absl::StrCat("t", i), {8}, absl::MakeSpan(v[i])});
    }
    return r;
  };
  auto ca = Connect("a");
  auto cb = Connect("b");
  ASSERT_THAT(ca->Join(refs(a)), IsOk());
  ASSERT_THAT(cb->Join(refs(b)), IsOk());
  for (int i = 0; i < kTensors; ++i) {
    std::fill(a[i].begin(), a[i].end(), float(i));
    std::fill(b[i].begin(), b[i].end(), float(i) + 2.0f);
  }
  absl::Status sa;
  testing::JoiningThread t([&] { sa = ca->PushPull(refs(a)); });
  ASSERT_THAT(cb->PushPull(refs(b)), IsOk());
  t.join();
  ASSERT_THAT(sa, IsOk());
  for (int i = 0; i < kTensors; ++i) {
    EXPECT_THAT(a[i], ::testing::Each(float(i) + 1.0f)) << i;
    EXPECT_THAT(b[i], ::testing::Each(float(i) + 1.0f)) << i;
  }

  // On the wire: a Pull that accepts batches gets the header, then the 300
  // chunks in ChunkBatches of at most chunk_bytes (4 KiB here: 128 chunks of
  // 32 bytes, so 3 batches); one that does not gets a message per chunk.
  for (bool accept : {true, false}) {
    v1::PullRequest request;
    for (int i = 0; i < kTensors; ++i) {
      request.add_tensors()->set_name(absl::StrCat("t", i));
    }
    request.set_accept_batches(accept);
    grpc::ClientContext context;
    auto stream = stub_->Pull(&context, request);
    v1::PullResponse message;
    std::vector<v1::PullResponse> messages;
    while (stream->Read(&message)) messages.push_back(message);
    ASSERT_TRUE(stream->Finish().ok());
    ASSERT_FALSE(messages.empty());
    EXPECT_TRUE(messages[0].has_header());
    if (accept) {
      ASSERT_EQ(messages.size(), 4u);
      int chunks = 0;
      for (std::size_t m = 1; m < messages.size(); ++m) {
        ASSERT_TRUE(messages[m].has_batch()) << m;
        for (const v1::TensorChunk& c : messages[m].batch().chunks()) {
          EXPECT_EQ(c.tensor_index(), static_cast<std::uint32_t>(chunks++));
          EXPECT_EQ(c.data().size(), 8 * sizeof(float));
        }
      }
      EXPECT_EQ(chunks, kTensors);
    } else {
      EXPECT_EQ(messages.size(), 1u + kTensors);
      EXPECT_TRUE(messages[1].has_chunk());
    }
  }

  // A batch of more chunks than the limit: INVALID_ARGUMENT, nothing
  // applied.
  const std::vector<float> before = Stored("t0");
  const std::uint64_t lease = server_->store().Status().workers.at(0).lease_id;
  v1::PushRequest batch;
  for (std::size_t i = 0; i <= kMaxBatchChunks; ++i) {
    v1::TensorChunk* c = batch.mutable_batch()->add_chunks();
    c->set_data(std::string(32, '\0'));
  }
  EXPECT_THAT(RawPush({Header(lease, 100, "t0", 1), batch}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("a batch of more than 4096 chunks")));
  EXPECT_EQ(Stored("t0"), before);
}

TEST_F(ServiceTest, TakeSnapshotWithoutDirectoryIsFailedPrecondition) {
  grpc::ClientContext context;
  v1::TakeSnapshotResponse response;
  EXPECT_EQ(stub_->TakeSnapshot(&context, {}, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceTest, AsyncModeAppliesPushesImmediately) {
  StartServer(core::Mode::kAsync);
  std::vector<float> a(8, 0.0f), b(8, 0.0f);
  auto ca = Connect("a");
  auto cb = Connect("b");
  ASSERT_THAT(ca->Join({TensorRef{"w", {8}, absl::MakeSpan(a)}}), IsOk());
  ASSERT_THAT(cb->Join({TensorRef{"w", {8}, absl::MakeSpan(b)}}), IsOk());
  a.assign(8, 2.0f);
  // b never pushes; a is not held back.
  ASSERT_THAT(ca->PushPull({TensorRef{"w", {8}, absl::MakeSpan(a)}}), IsOk());
  EXPECT_THAT(a, ::testing::Each(1.0f));  // Halfway (async_mix 0.5).
  EXPECT_EQ(*ca->Version("w"), 1u);
}

// Bounded staleness over the wire, through the gRPC stream and through a
// shared-memory segment: a push that would put its worker more than
// `staleness` pushes ahead of the slowest participant waits in the server
// (the call stays open) until the slowest pushes, then is applied.
TEST_F(ServiceTest, ABoundedPushWaitsForTheSlowestWorkersPush) {
  for (const bool shared_memory : {false, true}) {
    SCOPED_TRACE(shared_memory ? "segment" : "stream");
    StartServer(core::Mode::kSync);
    std::vector<std::string> said;
    absl::Mutex said_mu;
    auto connect = [&](const std::string& worker) {
      ClientOptions options = testing::TestClientOptions();
      options.address = server_->address();
      options.worker_id = worker;
      options.shared_memory = shared_memory;
      options.call_timeout = absl::Seconds(60);
      options.log = [&](absl::string_view line) {
        absl::MutexLock lock(&said_mu);
        said.emplace_back(line);
      };
      return std::move(Client::Connect(options)).value();
    };
    auto fast = connect("fast");
    auto slow = connect("slow");
    std::vector<float> f(4, 0.0f), w(4, 0.0f);
    const std::string policy = "consistency=bounded staleness=1";
    ASSERT_THAT(fast->Join({TensorRef{"w", {4}, absl::MakeSpan(f), policy}}),
                IsOk());
    ASSERT_THAT(slow->Join({TensorRef{"w", {4}, absl::MakeSpan(w)}}), IsOk());
    {
      absl::MutexLock lock(&said_mu);
      EXPECT_EQ(std::count_if(said.begin(), said.end(),
                              [](const std::string& line) {
                                return absl::StrContains(line, "shared memory");
                              }),
                shared_memory ? 2 : 0);
    }
    auto push = [](Client& c, std::vector<float>& v, float x) {
      v.assign(4, x);
      return c.PushPull({TensorRef{"w", {4}, absl::MakeSpan(v)}});
    };
    ASSERT_THAT(push(*fast, f, 2.0f), IsOk());  // 1 ahead: applied.
    EXPECT_EQ(server_->store().Describe("w")->version, 1u);
    absl::Status second;
    absl::Notification done;
    testing::JoiningThread waiting([&] {
      second = push(*fast, f, 4.0f);
      done.Notify();
    });
    // Until the push waits in the server (not a fixed time: on a loaded
    // machine it may take long to get there), then a while longer.
    auto waiting_for = [&] {
      return server_->store().Status().tensors.at(0).waiting_for;
    };
    EXPECT_TRUE(testing::Eventually([&] { return !waiting_for().empty(); },
                                    absl::Seconds(20)));
    EXPECT_THAT(waiting_for(), ElementsAre("slow"));
    EXPECT_FALSE(done.WaitForNotificationWithTimeout(absl::Milliseconds(500)));
    EXPECT_EQ(server_->store().Describe("w")->version, 1u);
    EXPECT_THAT(waiting_for(), ElementsAre("slow"));
    ASSERT_THAT(push(*slow, w, 8.0f), IsOk());  // The slowest moves: 1 ahead.
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    waiting.join();
    EXPECT_THAT(second, IsOk());
    // Three pushes applied alone (plain, mix 0.5): 0 -> 1 -> 4.5 -> 4.25,
    // the last two in either order of the slow and the fast push.
    EXPECT_EQ(server_->store().Describe("w")->version, 3u);
    const float v = server_->store().Read({"w"}).value()[0].value->at(0);
    EXPECT_TRUE(v == 4.25f || v == 3.25f) << v;  // 1->4.5->4.25 or 1->2.5->3.25
  }
}

// The weightd_pushes_total lines a scrape of `metrics` serves (the
// Prometheus text format), each ending in a newline.
std::string PushCounts(const service::Metrics& metrics) {
  std::ostringstream out;
  prometheus::TextSerializer serializer;
  for (const auto& weak : metrics.collectables()) {
    if (auto collectable = weak.lock()) {
      serializer.Serialize(out, collectable->Collect());
    }
  }
  std::string counts;
  for (absl::string_view line : absl::StrSplit(out.str(), '\n')) {
    if (absl::StartsWith(line, "weightd_pushes_total{")) {
      absl::StrAppend(&counts, line, "\n");
    }
  }
  return counts;
}

// The pushes PushCounts lists, summed.
int PushesIn(absl::string_view counts) {
  int pushes = 0;
  for (absl::string_view line :
       absl::StrSplit(counts, '\n', absl::SkipEmpty())) {
    int n = 0;
    if (absl::SimpleAtoi(line.substr(line.rfind(' ') + 1), &n)) pushes += n;
  }
  return pushes;
}

// A bounded push waiting in the server for its turn whose worker leaves
// meanwhile ends ABORTED naming the tensor, changes nothing, and is counted
// in weightd_pushes_total as ABORTED (not CANCELLED): through Push,
// PushPull and a shared-memory segment (PushSegment).
TEST_F(ServiceTest, ABoundedPushWhoseWorkerLeavesWhileItWaitsIsAborted) {
  for (const std::string call : {"Push", "PushPull", "PushSegment"}) {
    SCOPED_TRACE(call);
    StartServer(core::Mode::kSync);
    ClientOptions options = testing::TestClientOptions();
    options.address = server_->address();
    options.worker_id = "fast";
    options.shared_memory = call == "PushSegment";
    options.call_timeout = absl::Seconds(60);
    auto fast = std::move(Client::Connect(options)).value();
    std::vector<float> f(4, 0.0f);
    const TensorRef ref{
        "w", {4}, absl::MakeSpan(f), "consistency=bounded staleness=1"};
    ASSERT_THAT(fast->Join({ref}), IsOk());
    JoinZeros("slow", 4);
    f.assign(4, 2.0f);
    ASSERT_THAT(fast->Push({ref}), IsOk());  // 1 ahead of slow: applied.
    ASSERT_EQ(server_->store().Describe("w")->version, 1u);
    std::uint64_t lease = 0;
    for (const core::WorkerInfo& w : server_->store().Status().workers) {
      if (w.worker_id == "fast") lease = w.lease_id;
    }
    ASSERT_NE(lease, 0u);
    const std::vector<float> four(4, 4.0f);
    absl::Status second;
    testing::JoiningThread waiting([&] {
      if (call == "Push") {
        second = RawPush({Header(lease, 2, "w"), Chunk(0, 0, four)});
      } else if (call == "PushPull") {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::seconds(60));
        auto stream = stub_->PushPull(&context);
        v1::PushPullRequest m;
        *m.mutable_header() = Header(lease, 2, "w").header();
        stream->Write(m);
        *m.mutable_chunk() = Chunk(0, 0, four).chunk();
        stream->Write(m);
        stream->WritesDone();
        v1::PushPullResponse r;
        while (stream->Read(&r)) {
        }
        second = FromGrpcStatus(stream->Finish());
      } else {
        f = four;
        second = fast->Push({ref});
      }
    });
    // Until the push waits in the server for slow's.
    auto waits = [&] {
      return !server_->store().Status().tensors.at(0).waiting_for.empty();
    };
    EXPECT_TRUE(testing::Eventually(waits, absl::Seconds(20)));
    ASSERT_THAT(server_->store().Leave(lease), IsOk());
    waiting.join();
    EXPECT_THAT(second,
                StatusIs(absl::StatusCode::kAborted,
                         AllOf(HasSubstr("tensor w"), HasSubstr("left"))));
    EXPECT_EQ(server_->store().Describe("w")->version, 1u);
    EXPECT_THAT(Stored("w"), ::testing::Each(1.0f));  // 0 -> 1 (mix 0.5).
    // A push is counted once the server is done with its call, which may
    // be just after the client has the answer: until both are counted.
    std::string counts;
    testing::Eventually([&] {
      counts = PushCounts(server_->metrics());
      return PushesIn(counts) >= 2;
    });
    EXPECT_THAT(counts, HasSubstr("weightd_pushes_total{code=\"ABORTED\","
                                  "outcome=\"aborted\"} 1\n"));
    EXPECT_THAT(counts, Not(HasSubstr("code=\"CANCELLED\"")));
  }
}

TEST_F(ServiceTest, ADeclarationOfAnotherPolicyIsAlreadyExistsOverTheWire) {
  std::vector<float> a(4, 0.0f), b(4, 0.0f);
  auto ca = Connect("a");
  auto cb = Connect("b");
  ASSERT_THAT(
      ca->Join({TensorRef{
          "w", {4}, absl::MakeSpan(a), "optimizer=adam aggregator=median"}}),
      IsOk());
  EXPECT_THAT(
      cb->Join({TensorRef{"w", {4}, absl::MakeSpan(b), "aggregator=mean"}}),
      StatusIs(absl::StatusCode::kAlreadyExists,
               HasSubstr("exists with policy \"consistency=sync "
                         "optimizer=adam aggregator=median")));
  EXPECT_THAT(
      cb->Join({TensorRef{"w", {4}, absl::MakeSpan(b), "lr=oops"}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a number")));
  EXPECT_THAT(
      cb->Join({TensorRef{"w", {4}, absl::MakeSpan(b), "optimizer=adam"}}),
      IsOk());
  EXPECT_EQ(server_->store().Describe("w")->participants, 2u);
}

// Bytes that parse as no weightd message: a length-delimited field 1 whose
// length runs past the end.
const std::string kGarbage = std::string("\x0a\x7f") + "not a message";

// gRPC's generated reader takes a message that does not parse for the end of
// the stream; the server must see it for what it is, wherever it comes.
TEST_F(ServiceTest, JoinWithAnUndecodableMessageIsRefusedAndChangesNothing) {
  v1::JoinRequest header;
  header.mutable_header()->set_worker_id("c");
  header.mutable_header()->set_instance(7);
  v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
  d->set_name("fresh");
  d->add_shape(4);
  v1::JoinRequest value;
  value.mutable_initial_value()->set_data(std::string(16, '\0'));
  const std::string h = header.SerializeAsString();
  const std::string v = value.SerializeAsString();
  for (const std::vector<std::string>& messages :
       {std::vector<std::string>{h, v, kGarbage},  // Complete, then garbage.
        {h, kGarbage},
        {h, kGarbage, v},
        {kGarbage}}) {
    EXPECT_THAT(RawJoin(messages),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("a Join message is not a valid "
                                   "weightd.v1.JoinRequest")))
        << messages.size() << " messages";
  }
  auto status = [&] {
    grpc::ClientContext context;
    v1::GetStatusRequest request;
    request.set_include_tensors(true);
    request.set_include_workers(true);
    v1::GetStatusResponse response;
    EXPECT_TRUE(stub_->GetStatus(&context, request, &response).ok());
    return response;
  };
  v1::GetStatusResponse before = status();
  EXPECT_EQ(before.worker_count(), 0u);
  EXPECT_EQ(before.tensor_count(), 0u);
  EXPECT_EQ(before.workers_size(), 0);
  EXPECT_EQ(before.tensors_size(), 0);
  // Without the garbage, the same stream joins.
  EXPECT_THAT(RawJoin({h, v}), IsOk());
  v1::GetStatusResponse after = status();
  EXPECT_EQ(after.worker_count(), 1u);
  EXPECT_EQ(after.tensor_count(), 1u);
}

TEST_F(ServiceTest, UndecodableUnaryRequestsAreRefusedAndChangeNothing) {
  std::vector<float> w(8, 1.0f);
  auto a = Connect("a");
  ASSERT_THAT(a->Join({TensorRef{"w", {8}, absl::MakeSpan(w)}}), IsOk());
  const std::uint64_t lease = server_->store().Status().workers.at(0).lease_id;
  for (const std::string method :
       {"Leave", "Heartbeat", "Barrier", "GetStatus", "TakeSnapshot"}) {
    EXPECT_THAT(RawUnary(method, kGarbage),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(absl::StrCat("a ", method,
                                                " request is not a valid "
                                                "weightd.v1.",
                                                method, "Request"))))
        << method;
  }
  EXPECT_EQ(server_->store().Status().workers.size(), 1u);
  EXPECT_TRUE(server_->store().Status().barriers.empty());

  // Well-formed requests sent as bytes are served: an empty message is a
  // valid request (all defaults), and the typed response comes back.
  EXPECT_THAT(RawUnary("GetStatus", ""), IsOk());
  EXPECT_THAT(RawUnary("TakeSnapshot", ""),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("--snapshot_dir")));
  {
    grpc::ClientContext context;
    v1::BarrierRequest request;
    request.set_lease_id(lease);
    request.set_name("solo");
    request.set_count(1);
    v1::BarrierResponse response;
    ASSERT_TRUE(stub_->Barrier(&context, request, &response).ok());
    EXPECT_EQ(response.arrival(), 0u);
    EXPECT_EQ(response.generation(), 1u);
  }
  {
    grpc::ClientContext context;
    v1::GetStatusRequest request;
    request.set_include_workers(true);
    v1::GetStatusResponse response;
    ASSERT_TRUE(stub_->GetStatus(&context, request, &response).ok());
    EXPECT_EQ(response.chunk_bytes(), kMinChunkBytes);
    ASSERT_EQ(response.workers_size(), 1);
    EXPECT_EQ(response.workers(0).worker_id(), "a");
  }
  v1::LeaveRequest leave;
  leave.set_lease_id(lease);
  EXPECT_THAT(RawUnary("Heartbeat", leave.SerializeAsString()), IsOk());
  EXPECT_THAT(RawUnary("Leave", leave.SerializeAsString()), IsOk());
  EXPECT_TRUE(server_->store().Status().workers.empty());
}

// A ChunkBatch carries at most chunk_bytes of payload, whether the server
// reads it with its codec or (for an unusual encoding) with protobuf.
TEST_F(ServiceTest, BatchOverChunkBytesIsRefusedAndChangesNothing) {
  constexpr int kTensors = 200;  // 8 floats each: 6400 bytes in all.
  std::vector<std::vector<float>> values(kTensors, std::vector<float>(8, 1.0f));
  std::vector<TensorRef> refs;
  for (int i = 0; i < kTensors; ++i) {
    refs.push_back({absl::StrCat("t", i), {8}, absl::MakeSpan(values[i])});
  }
  auto a = Connect("a");
  ASSERT_THAT(a->Join(refs), IsOk());
  const std::uint64_t lease = server_->store().Status().workers.at(0).lease_id;
  auto header = [&](std::uint64_t sequence) {
    v1::PushRequest m;
    v1::PushHeader* h = m.mutable_header();
    h->set_lease_id(lease);
    h->set_sequence(sequence);
    h->set_kind(v1::UPDATE_KIND_WEIGHTS);
    for (int i = 0; i < kTensors; ++i) {
      h->add_tensors()->set_name(absl::StrCat("t", i));
    }
    return m;
  };
  auto batch = [](int from, int to) {
    const std::vector<float> five(8, 5.0f);
    v1::PushRequest m;
    for (int i = from; i < to; ++i) {
      v1::TensorChunk* c = m.mutable_batch()->add_chunks();
      c->set_tensor_index(i);
      c->set_data(std::string(reinterpret_cast<const char*>(five.data()),
                              five.size() * sizeof(float)));
    }
    return m;
  };
  const v1::PushRequest oversized = batch(0, kTensors);
  EXPECT_THAT(RawPush({header(1), oversized}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("6400 bytes of payload")));
  // An unknown field in a chunk: the codec leaves the message to protobuf.
  v1::PushRequest unusual = oversized;
  v1::TensorChunk* first = unusual.mutable_batch()->mutable_chunks(0);
  first->GetReflection()->MutableUnknownFields(first)->AddVarint(99, 1);
  EXPECT_THAT(RawPush({header(2), unusual}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("6400 bytes of payload")));
  for (int i = 0; i < kTensors; ++i) {
    const std::string name = absl::StrCat("t", i);
    ASSERT_THAT(Stored(name), ::testing::Each(1.0f)) << name;
    ASSERT_EQ(server_->store().Describe(name)->version, 0u) << name;
  }
  // The same chunks in two batches within the limit are applied.
  EXPECT_THAT(RawPush({header(3), batch(0, 128), batch(128, kTensors)}),
              IsOk());
  EXPECT_THAT(Stored("t0"), ::testing::Each(5.0f));
  EXPECT_THAT(Stored("t199"), ::testing::Each(5.0f));
  EXPECT_EQ(server_->store().Describe("t199")->version, 1u);
}

}  // namespace
}  // namespace weightd
