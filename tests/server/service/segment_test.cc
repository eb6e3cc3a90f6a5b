// The same-host data path (docs/protocol.md, "Shared memory") against a
// real server on 127.0.0.1: what AttachSegment maps and refuses, bad
// places, resends, and when the daemon lets go of a segment. The data path
// as a whole (rounds, leases, formats, restarts) runs through every test of
// service_test and sharding_test, whose clients use shared memory (and
// again on the stream calls as the *_stream tests).
#include "client/segment.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/server.h"
#include "tests/testing/client_options.h"
#include "tests/testing/eventually.h"
#include "tests/testing/status_matchers.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

using ::testing::Each;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

constexpr std::uint64_t kFloats = 3000;  // 3 chunks of 4 KiB, one partial.

// Segments mapped in this process (client and server share it here): the
// lines of /proc/self/maps that map a weightd memfd.
int MappedSegments() {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    n += absl::StrContains(line, "memfd:weightd-segment");
  }
  return n;
}

class SegmentTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(absl::Seconds(30)); }

  void Start(absl::Duration lease_timeout, bool shared_memory = true) {
    server_.reset();
    service::ServerOptions options;
    options.shared_memory = shared_memory;
    options.listen_address = "127.0.0.1:0";
    options.store.chunk_bytes = kMinChunkBytes;
    options.store.lease_timeout = lease_timeout;
    auto server = service::Server::Start(std::move(options));
    ASSERT_THAT(server, IsOk());
    server_ = std::move(*server);
    stub_ = v1::Weightd::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
  }

  // Joins `worker` to tensor "w" of kFloats `value`s through the store.
  std::uint64_t Join(const std::string& worker, float value) {
    auto joined = server_->store().Join(
        worker, {core::Declaration{"w",
                                   {static_cast<std::int64_t>(kFloats)},
                                   std::vector<float>(kFloats, value)}});
    EXPECT_THAT(joined, IsOk());
    return joined.ok() ? joined->lease_id : 0;
  }

  std::unique_ptr<Segment> NewSegment() {
    auto segment = Segment::Create({{"w", kFloats * kFloatBytes}});
    EXPECT_THAT(segment, IsOk());
    return segment.ok() ? std::move(*segment) : nullptr;
  }

  absl::Status Attach(std::uint64_t lease, std::uint32_t pid, int fd,
                      std::uint64_t size, const std::string& token) {
    v1::AttachSegmentRequest request;
    request.set_lease_id(lease);
    request.set_pid(pid);
    request.set_fd(static_cast<std::uint32_t>(fd));
    request.set_size(size);
    request.set_token(token);
    v1::AttachSegmentResponse response;
    grpc::ClientContext context;
    return FromGrpcStatus(stub_->AttachSegment(&context, request, &response));
  }
  absl::Status Attach(std::uint64_t lease, const Segment& segment) {
    return Attach(lease, getpid(), segment.fd(), segment.size(),
                  std::string(segment.token()));
  }

  // A PushPull-less push of tensor "w" from `segment` at `offset`.
  absl::StatusOr<v1::PushSegmentResponse> Push(std::uint64_t lease,
                                               std::uint64_t sequence,
                                               std::uint64_t offset,
                                               int places = 1,
                                               std::uint64_t round = 0) {
    v1::PushSegmentRequest request;
    v1::PushHeader* header = request.mutable_header();
    header->set_lease_id(lease);
    header->set_sequence(sequence);
    header->set_kind(v1::UPDATE_KIND_WEIGHTS);
    header->set_weight(1.0);
    v1::PushedTensor* t = header->add_tensors();
    t->set_name("w");
    t->set_round(round);
    for (int i = 0; i < places; ++i) request.add_places()->set_offset(offset);
    v1::PushSegmentResponse response;
    grpc::ClientContext context;
    absl::Status status =
        FromGrpcStatus(stub_->PushSegment(&context, request, &response));
    if (!status.ok()) return status;
    return response;
  }

  std::vector<float> Value() {
    auto read = server_->store().Read({"w"});
    EXPECT_THAT(read, IsOk());
    return *read->at(0).value;
  }

  std::unique_ptr<service::Server> server_;
  std::unique_ptr<v1::Weightd::Stub> stub_;
};

TEST_F(SegmentTest, AttachMapsOnlyTheWorkersSealedSegment) {
  const std::uint64_t lease = Join("a", 1.0f);
  std::unique_ptr<Segment> segment = NewSegment();
  const std::string token(segment->token());
  std::string wrong = token;
  wrong[0] ^= 1;
  const int before = MappedSegments();

  EXPECT_THAT(
      Attach(lease, getpid(), segment->fd(), segment->size(), wrong),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("token")));
  EXPECT_THAT(
      Attach(lease, getpid(), segment->fd(), segment->size() - 4096, token),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("bytes")));
  EXPECT_THAT(
      Attach(lease, getpid(), 987654, segment->size(), token),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("cannot see")));
  // A descriptor that is not a memfd is refused before it is opened.
  const int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  EXPECT_THAT(Attach(lease, getpid(), null_fd, segment->size(), token),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("not a memfd")));
  close(null_fd);
  // A memfd that could shrink under the daemon is refused.
  const int unsealed = memfd_create("weightd-segment", MFD_CLOEXEC);
  ASSERT_GE(unsealed, 0);
  ASSERT_EQ(ftruncate(unsealed, 8192), 0);
  EXPECT_THAT(
      Attach(lease, getpid(), unsealed, 8192, token),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("sealed")));
  close(unsealed);
  EXPECT_THAT(Attach(lease, getpid(), segment->fd(), segment->size(), "short"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      Attach(lease + 1, *segment),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("lease")));
  EXPECT_EQ(MappedSegments(), before);  // Nothing refused stays mapped.

  ASSERT_THAT(Attach(lease, *segment), IsOk());
  EXPECT_EQ(MappedSegments(), before + 1);
}

TEST_F(SegmentTest, BadPlacesAreRefusedAndChangeNothing) {
  const std::uint64_t lease = Join("a", 1.0f);
  Join("b", 1.0f);
  std::unique_ptr<Segment> segment = NewSegment();
  ASSERT_THAT(Attach(lease, *segment), IsOk());
  const std::int64_t place = segment->Place("w");
  std::vector<float> fives(kFloats, 5.0f);
  std::memcpy(segment->At(place), fives.data(), kFloats * kFloatBytes);

  EXPECT_THAT(
      Push(lease, 10, segment->size() - 100),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("inside the")));
  EXPECT_THAT(
      Push(lease, 11, place + 2),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("aligned")));
  EXPECT_THAT(Push(lease, 12, 0),  // Over the token.
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      Push(lease, 13, place, /*places=*/2),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("places")));
  EXPECT_THAT(Push(lease + 1, 14, place),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // Nothing was summed: b's push alone does not close the round.
  EXPECT_EQ(server_->store().Describe("w")->contributed, 0u);
  EXPECT_THAT(Value(), Each(1.0f));
}

TEST_F(SegmentTest, AResentPushIsAppliedOnce) {
  const std::uint64_t lease = Join("a", 1.0f);
  std::unique_ptr<Segment> segment = NewSegment();
  ASSERT_THAT(Attach(lease, *segment), IsOk());
  std::vector<float> threes(kFloats, 3.0f);
  std::memcpy(segment->At(segment->Place("w")), threes.data(),
              kFloats * kFloatBytes);
  auto first = Push(lease, 20, segment->Place("w"));
  ASSERT_THAT(first, IsOk());
  EXPECT_FALSE(first->tensors(0).duplicate());
  EXPECT_EQ(server_->store().Describe("w")->version, 1u);
  // The answer was lost; the client resends it (same sequence and round),
  // its values changed meanwhile: the daemon answers as before.
  std::vector<float> sevens(kFloats, 7.0f);
  std::memcpy(segment->At(segment->Place("w")), sevens.data(),
              kFloats * kFloatBytes);
  auto again = Push(lease, 20, segment->Place("w"));
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->tensors(0).duplicate());
  EXPECT_EQ(server_->store().Describe("w")->version, 1u);
  EXPECT_THAT(Value(), Each(3.0f));
}

TEST_F(SegmentTest, TheDaemonLetsGoOfASegmentWhenItsLeaseEnds) {
  // Long enough that b's lease outlives the checks before it goes silent
  // on a loaded machine.
  Start(absl::Seconds(2));
  const int before = MappedSegments();
  ClientOptions options = testing::TestClientOptions();
  options.shared_memory = true;
  options.address = server_->address();
  std::vector<std::string> said;
  absl::Mutex said_mu;
  options.log = [&](absl::string_view line) {
    absl::MutexLock lock(&said_mu);
    said.emplace_back(line);
  };
  std::vector<float> a(kFloats, 1.0f), b(kFloats, 3.0f);
  options.worker_id = "a";
  auto client_a = std::move(Client::Connect(options)).value();
  options.worker_id = "b";
  options.heartbeat = false;  // So that b's lease can lapse; a's cannot.
  auto client_b = std::move(Client::Connect(options)).value();
  ASSERT_THAT(client_a->Join({TensorRef{"w", {kFloats}, absl::MakeSpan(a)}}),
              IsOk());
  ASSERT_THAT(client_b->Join({TensorRef{"w", {kFloats}, absl::MakeSpan(b)}}),
              IsOk());
  {
    absl::MutexLock lock(&said_mu);
    ASSERT_EQ(said.size(), 2u);
    EXPECT_THAT(said[0], HasSubstr("worker a moves its tensors through "
                                   "shared memory"));
  }
  // Each client's mapping and the daemon's.
  EXPECT_EQ(MappedSegments(), before + 4);
  ASSERT_THAT(client_a->Leave(), IsOk());
  EXPECT_EQ(MappedSegments(), before + 3);
  // b goes silent; housekeeping drops its lease, then its segment.
  testing::Eventually([&] { return MappedSegments() <= before + 2; });
  EXPECT_EQ(MappedSegments(), before + 2);
}

TEST_F(SegmentTest, WorkersTrainInTheirSegmentsAndCopyNothing) {
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<SharedBuffer> shared;
  for (int w = 0; w < 2; ++w) {
    ClientOptions options = testing::TestClientOptions();
    options.shared_memory = true;
    options.address = server_->address();
    options.worker_id = absl::StrCat("w", w);
    clients.push_back(std::move(Client::Connect(options)).value());
    std::vector<float> initial(kFloats, 1.0f);
    ASSERT_THAT(
        clients[w]->Join({TensorRef{"w", {kFloats}, absl::MakeSpan(initial)}}),
        IsOk());
    auto buffer = clients[w]->SharedBufferFor("w");
    ASSERT_THAT(buffer, IsOk());
    EXPECT_EQ(buffer->shape, std::vector<std::int64_t>{kFloats});
    ASSERT_EQ(buffer->values.size(), kFloats);
    std::fill(buffer->values.begin(), buffer->values.end(), 2.0f * w + 1);
    shared.push_back(*std::move(buffer));
  }
  for (int round = 0; round < 3; ++round) {
    absl::Status second;
    std::thread t([&] {
      second =
          clients[1]->PushPull({TensorRef{"w", {kFloats}, shared[1].values}});
    });
    ASSERT_THAT(
        clients[0]->PushPull({TensorRef{"w", {kFloats}, shared[0].values}}),
        IsOk());
    t.join();
    ASSERT_THAT(second, IsOk());
    // The mean of 1 and 3, written by the daemon where each worker keeps it.
    EXPECT_THAT(shared[0].values, Each(2.0f));
    EXPECT_THAT(shared[1].values, Each(2.0f));
    EXPECT_EQ(*clients[0]->Version("w"), static_cast<std::uint64_t>(round + 1));
    std::fill(shared[0].values.begin(), shared[0].values.end(), 1.0f);
    std::fill(shared[1].values.begin(), shared[1].values.end(), 3.0f);
  }
  EXPECT_THAT(Value(), Each(2.0f));
  // The buffers stay mapped while they live, after their clients are gone.
  clients.clear();
  std::fill(shared[0].values.begin(), shared[0].values.end(), 5.0f);
  EXPECT_THAT(shared[0].values, Each(5.0f));
}

TEST_F(SegmentTest, ThereIsNoSharedBufferWithoutASegmentOfFloats) {
  ClientOptions options = testing::TestClientOptions();
  options.address = server_->address();
  std::vector<float> initial(kFloats, 1.0f);
  const TensorRef w{"w", {kFloats}, absl::MakeSpan(initial)};

  options.worker_id = "stream";
  options.shared_memory = false;
  auto stream = std::move(Client::Connect(options)).value();
  ASSERT_THAT(stream->Join({w}), IsOk());
  EXPECT_THAT(stream->SharedBufferFor("w"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("stream path")));
  EXPECT_THAT(stream->SharedBufferFor("nope"),
              StatusIs(absl::StatusCode::kNotFound));

  options.worker_id = "bf16";
  options.shared_memory = true;
  options.wire_format = WireFormat::kBfloat16;
  auto bf16 = std::move(Client::Connect(options)).value();
  ASSERT_THAT(bf16->Join({w}), IsOk());
  EXPECT_THAT(
      bf16->SharedBufferFor("w"),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("bfloat16")));
}

TEST_F(SegmentTest, ADaemonStartedWithoutSharedMemoryMapsNothing) {
  Start(absl::Seconds(30), /*shared_memory=*/false);
  const std::uint64_t lease = Join("a", 1.0f);
  std::unique_ptr<Segment> segment = NewSegment();
  const int before = MappedSegments();
  EXPECT_THAT(Attach(lease, *segment),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("--shared_memory=false")));
  EXPECT_EQ(MappedSegments(), before);
}

// A worker whose lease lapsed (silent, no heartbeat) joins again on its
// next call; the buffer it trains in stays its place in the segment the
// daemon maps, so its calls still copy nothing.
TEST_F(SegmentTest, ALentBufferStaysInPlaceWhenTheLeaseLapsesAndComesBack) {
  Start(absl::Milliseconds(300));
  ClientOptions options = testing::TestClientOptions();
  options.shared_memory = true;
  options.address = server_->address();
  options.worker_id = "a";
  options.heartbeat = false;
  auto client = std::move(Client::Connect(options)).value();
  std::vector<float> initial(kFloats, 1.0f);
  ASSERT_THAT(
      client->Join({TensorRef{"w", {kFloats}, absl::MakeSpan(initial)}}),
      IsOk());
  auto buffer = client->SharedBufferFor("w");
  ASSERT_THAT(buffer, IsOk());
  std::fill(buffer->values.begin(), buffer->values.end(), 4.0f);
  // The lease lapses and the daemon lets go of the segment (this process
  // maps it twice: the client and the daemon).
  const int mapped = MappedSegments();
  testing::Eventually([&] { return MappedSegments() != mapped; });
  ASSERT_EQ(MappedSegments(), mapped - 1);
  ASSERT_THAT(client->PushPull({TensorRef{"w", {kFloats}, buffer->values}}),
              IsOk());
  EXPECT_THAT(buffer->values, Each(4.0f));
  auto again = client->SharedBufferFor("w");
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->values.data(), buffer->values.data())
      << "the re-join handed the daemon a new segment: the lent buffer is "
         "no longer where the worker's values move";
}

}  // namespace
}  // namespace weightd
