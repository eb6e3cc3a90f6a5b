// Fault scenario 5: 1,000 duplicated pushes (client-forced resends) against
// the real weightd binary: none is applied twice.
//
// Two workers share a 3-chunk tensor. Every round, worker A's push is sent
// again and again: whole, cut off after its first chunk, before and after
// worker B's push closes the round. Each round's value must be exactly the
// mean of one push of each, and every resend of a completed push must be
// answered OK and flagged duplicate.
//
// Usage: duplicate_push_test PATH_TO_WEIGHTD
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/daemon_process.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

std::string g_weightd;  // argv[1]

constexpr std::uint32_t kChunkBytes = 4096;
constexpr std::size_t kElements = 2500;  // 3 chunks.
constexpr int kRounds = 50;
constexpr int kResendsPerRound = 20;  // 1,000 in all.

class Worker {
 public:
  Worker(const std::string& address, const std::string& id)
      : stub_(v1::Weightd::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {
    grpc::ClientContext context;
    v1::JoinResponse response;
    auto stream = stub_->Join(&context, &response);
    v1::JoinRequest header;
    header.mutable_header()->set_worker_id(id);
    v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
    d->set_name("w");
    d->add_shape(kElements);
    stream->Write(header);
    const std::vector<float> zero(kElements, 0.0f);
    for (std::uint64_t off = 0; off < kElements * 4; off += kChunkBytes) {
      v1::JoinRequest chunk;
      chunk.mutable_initial_value()->set_offset(off);
      chunk.mutable_initial_value()->set_data(
          reinterpret_cast<const char*>(zero.data()) + off,
          std::min<std::uint64_t>(kChunkBytes, kElements * 4 - off));
      stream->Write(chunk);
    }
    stream->WritesDone();
    status_ = stream->Finish();
    lease_ = response.lease_id();
  }

  const grpc::Status& join_status() const { return status_; }

  // Sends push (sequence, round) of `value`; with `cut`, stops after the
  // first chunk and cancels (a broken stream). Returns the status and
  // whether the server called it a duplicate.
  std::pair<grpc::Status, bool> Push(std::uint64_t sequence,
                                     std::uint64_t round, float value,
                                     bool cut = false) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::PushResponse response;
    auto stream = stub_->Push(&context, &response);
    v1::PushRequest header;
    header.mutable_header()->set_lease_id(lease_);
    header.mutable_header()->set_sequence(sequence);
    header.mutable_header()->set_kind(v1::UPDATE_KIND_WEIGHTS);
    v1::PushedTensor* t = header.mutable_header()->add_tensors();
    t->set_name("w");
    t->set_round(round);
    stream->Write(header);
    const std::vector<float> payload(kElements, value);
    for (std::uint64_t off = 0; off < kElements * 4; off += kChunkBytes) {
      v1::PushRequest chunk;
      chunk.mutable_chunk()->set_offset(off);
      chunk.mutable_chunk()->set_data(
          reinterpret_cast<const char*>(payload.data()) + off,
          std::min<std::uint64_t>(kChunkBytes, kElements * 4 - off));
      stream->Write(chunk);
      if (cut) {
        context.TryCancel();
        return {stream->Finish(), false};
      }
    }
    stream->WritesDone();
    grpc::Status status = stream->Finish();
    return {status, status.ok() && response.tensors(0).duplicate()};
  }

  // The value once version `version` exists.
  std::vector<float> PullAt(std::uint64_t version, std::uint64_t* got) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::PullRequest request;
    v1::PulledTensor* t = request.add_tensors();
    t->set_name("w");
    t->set_min_version(version);
    auto stream = stub_->Pull(&context, request);
    std::vector<float> value(kElements);
    v1::PullResponse msg;
    while (stream->Read(&msg)) {
      if (msg.has_header()) *got = msg.header().tensors(0).version();
      if (msg.has_chunk()) {
        std::memcpy(
            reinterpret_cast<char*>(value.data()) + msg.chunk().offset(),
            msg.chunk().data().data(), msg.chunk().data().size());
      }
    }
    EXPECT_TRUE(stream->Finish().ok());
    return value;
  }

 private:
  std::unique_ptr<v1::Weightd::Stub> stub_;
  grpc::Status status_;
  std::uint64_t lease_ = 0;
};

TEST(DuplicatePushTest, ThousandResendsAreNeverAppliedTwice) {
  testing::DaemonProcess daemon(
      g_weightd, "fault5",
      {absl::StrCat("--chunk_bytes=", kChunkBytes), "--log_level=warn"});
  ASSERT_FALSE(daemon.address().empty()) << "weightd did not start";
  Worker a(daemon.address(), "a");
  Worker b(daemon.address(), "b");
  ASSERT_TRUE(a.join_status().ok()) << a.join_status().error_message();
  ASSERT_TRUE(b.join_status().ok()) << b.join_status().error_message();

  std::mt19937 rng(5);
  int resends = 0, duplicates_flagged = 0;
  for (int r = 0; r < kRounds; ++r) {
    const std::uint64_t round = r;
    const std::uint64_t sequence = r + 1;
    const float va = static_cast<float>(2 * r + 8);  // Exact means.
    const float vb = static_cast<float>(2 * r);
    const int before =
        std::uniform_int_distribution<int>(0, kResendsPerRound)(rng);
    // Broken and whole sends before B's push: the round must still count
    // A exactly once.
    for (int i = 0; i < before; ++i, ++resends) {
      const bool cut = i % 3 == 0;
      auto [status, duplicate] = a.Push(sequence, round, va, cut);
      if (!cut) {
        ASSERT_TRUE(status.ok()) << status.error_message();
        if (i > 0) duplicates_flagged += duplicate;
      }
    }
    auto [first, dup] = a.Push(sequence, round, va);
    ASSERT_TRUE(first.ok()) << first.error_message();
    ASSERT_TRUE(b.Push(sequence, round, vb).first.ok());
    // After the round closed: every resend is a duplicate.
    for (int i = before; i < kResendsPerRound; ++i, ++resends) {
      auto [status, duplicate] = a.Push(sequence, round, va);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_TRUE(duplicate) << "resend in round " << r << " applied again";
      ++duplicates_flagged;
    }
    std::uint64_t version = 0;
    const std::vector<float> value = a.PullAt(round + 1, &version);
    ASSERT_EQ(version, round + 1) << "a resend closed an extra round";
    const float mean = (va + vb) / 2;
    for (float v : value) ASSERT_EQ(v, mean) << "round " << r;
  }
  EXPECT_EQ(resends, kRounds * kResendsPerRound);
  std::printf("%d resends (%d flagged duplicate), 0 applied twice\n", resends,
              duplicates_flagged);
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: duplicate_push_test PATH_TO_WEIGHTD\n");
    return 2;
  }
  weightd::g_weightd = argv[1];
  return RUN_ALL_TESTS();
}
