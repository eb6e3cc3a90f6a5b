// A hostile client for tests/security/abuse_test.sh, over TLS with a bearer
// token of its own:
//  1. opens --idle connections (each a channel of its own) and leaves them
//     idle;
//  2. joins --stalled workers (abuse-0, abuse-1, ...) to tensor abuse/t,
//     then sends, for each, a Push that carries its header and then
//     nothing, spread over 4 more connections;
//  3. waits (at most --wait) for the server to end those pushes and
//     prints how each ended:
//       stalled: N ended with DEADLINE_EXCEEDED after MIN..MAX s: <message>
//  4. says how many of the idle connections are still open, then holds
//     them until it is killed (or --hold passes).
// Prints "idle: N connected" and "stalled: N pushes open" as it goes, for
// the script to wait on. Exits 1 if a step could not be done.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "weightd/v1/weightd.grpc.pb.h"

ABSL_FLAG(std::string, server, "", "host:port of weightd (TLS).");
ABSL_FLAG(std::string, tls_ca, "", "CA that signed the server's certificate.");
ABSL_FLAG(std::string, token, "", "Bearer token of the abusing principal.");
ABSL_FLAG(int, idle, 1000, "Idle connections to open.");
ABSL_FLAG(int, stalled, 200, "Pushes that send a header, then nothing.");
ABSL_FLAG(absl::Duration, wait, absl::Seconds(120),
          "How long to wait for the server to end the stalled pushes.");
ABSL_FLAG(absl::Duration, hold, absl::Minutes(10),
          "How long to hold the idle connections at most.");

namespace {

using weightd::v1::Weightd;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A channel on a connection of its own: gRPC shares a connection between
// channels with equal arguments, so each gets a distinct one.
std::shared_ptr<grpc::Channel> OwnChannel(int index) {
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(absl::GetFlag(FLAGS_tls_ca));
  grpc::ChannelArguments args;
  args.SetInt("weightd.test.connection", index);
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server),
                                   grpc::SslCredentials(tls), args);
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(timeout));
  context->AddMetadata("authorization",
                       absl::StrCat("Bearer ", absl::GetFlag(FLAGS_token)));
  return context;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "abuse_client: %s\n", what.c_str());
  return 1;
}

// Joins `worker` to abuse/t (4 floats); its lease, or 0.
std::uint64_t Join(Weightd::Stub& stub, const std::string& worker,
                   std::string* error) {
  auto context = Context(absl::Seconds(30));
  weightd::v1::JoinResponse response;
  auto stream = stub.Join(context.get(), &response);
  weightd::v1::JoinRequest header;
  header.mutable_header()->set_worker_id(worker);
  weightd::v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
  d->set_name("abuse/t");
  d->add_shape(4);
  stream->Write(header);
  const float value[4] = {1, 2, 3, 4};
  weightd::v1::JoinRequest chunk;
  chunk.mutable_initial_value()->set_tensor_index(0);
  chunk.mutable_initial_value()->set_data(value, sizeof(value));
  stream->Write(chunk);
  stream->WritesDone();
  const grpc::Status status = stream->Finish();
  if (!status.ok()) *error = status.error_message();
  return status.ok() ? response.lease_id() : 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int idle = absl::GetFlag(FLAGS_idle);
  const int stalled = absl::GetFlag(FLAGS_stalled);

  // 1. Idle connections.
  std::vector<std::shared_ptr<grpc::Channel>> idle_channels;
  const auto connect_by =
      std::chrono::system_clock::now() + std::chrono::seconds(120);
  for (int i = 0; i < idle; ++i) {
    idle_channels.push_back(OwnChannel(i));
    if (!idle_channels.back()->WaitForConnected(connect_by)) {
      return Fail(absl::StrCat("idle connection ", i, " did not connect"));
    }
  }
  std::printf("idle: %d connected\n", idle);
  std::fflush(stdout);

  // 2. Stalled pushes, over 4 connections of their own.
  std::vector<std::unique_ptr<Weightd::Stub>> stubs;
  for (int i = 0; i < 4; ++i) {
    stubs.push_back(Weightd::NewStub(OwnChannel(idle + i)));
  }
  std::vector<std::uint64_t> leases;
  for (int i = 0; i < stalled; ++i) {
    std::string error;
    const std::uint64_t lease =
        Join(*stubs[i % 4], absl::StrCat("abuse-", i), &error);
    if (lease == 0) return Fail(absl::StrCat("abuse-", i, ": Join: ", error));
    leases.push_back(lease);
  }
  struct Ended {
    grpc::StatusCode code;
    std::string message;
    absl::Duration after;
  };
  absl::Mutex mu;
  std::vector<Ended> ended;
  int open = 0;
  std::vector<std::thread> pushes;
  const absl::Duration wait = absl::GetFlag(FLAGS_wait);
  for (int i = 0; i < stalled; ++i) {
    pushes.emplace_back([&, i] {
      auto context = Context(wait);
      weightd::v1::PushResponse response;
      auto stream = stubs[i % 4]->Push(context.get(), &response);
      weightd::v1::PushRequest header;
      auto* h = header.mutable_header();
      h->set_lease_id(leases[i]);
      h->set_sequence(1);
      h->set_kind(weightd::v1::UPDATE_KIND_WEIGHTS);
      h->add_tensors()->set_name("abuse/t");
      const bool sent = stream->Write(header);
      const absl::Time start = absl::Now();
      {
        absl::MutexLock lock(&mu);
        if (sent) ++open;
      }
      // No more writes, no WritesDone: the push stalls after its header.
      const grpc::Status status = stream->Finish();
      absl::MutexLock lock(&mu);
      ended.push_back(
          {status.error_code(), status.error_message(), absl::Now() - start});
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all_open = [&] { return open == stalled; };
    mu.AwaitWithTimeout(absl::Condition(&all_open), absl::Seconds(60));
    std::printf("stalled: %d pushes open\n", open);
    std::fflush(stdout);
  }

  // 3. How they ended.
  for (std::thread& t : pushes) t.join();
  std::map<std::pair<int, std::string>, std::vector<absl::Duration>> by_code;
  for (const Ended& e : ended) {
    // The message without its numbers, to group the pushes.
    std::string kind = e.message.substr(0, e.message.find(" for "));
    by_code[{static_cast<int>(e.code), kind}].push_back(e.after);
  }
  for (auto& [key, times] : by_code) {
    std::sort(times.begin(), times.end());
    const Ended* example = nullptr;
    for (const Ended& e : ended) {
      if (static_cast<int>(e.code) == key.first &&
          e.message.substr(0, e.message.find(" for ")) == key.second) {
        example = &e;
      }
    }
    std::printf("stalled: %zu ended with %s after %.1f..%.1f s: %s\n",
                times.size(),
                key.first == grpc::StatusCode::DEADLINE_EXCEEDED
                    ? "DEADLINE_EXCEEDED"
                    : absl::StrCat("code ", key.first).c_str(),
                absl::ToDoubleSeconds(times.front()),
                absl::ToDoubleSeconds(times.back()), example->message.c_str());
  }
  std::fflush(stdout);

  // 4. The idle connections: still open? Then hold them.
  int still = 0;
  for (auto& channel : idle_channels) {
    if (channel->GetState(false) == GRPC_CHANNEL_READY) ++still;
  }
  std::printf("idle: %d of %d still connected\n", still, idle);
  std::fflush(stdout);
  // Until killed (the script does), or --hold passes.
  absl::SleepFor(absl::GetFlag(FLAGS_hold));
  return 0;
}
