// bench_baseline: the limits weightd's figures are compared with, measured
// on the same machine in the same run (scripts/bench.sh):
//   membw        single-thread acc[i] += x[i] over the bytes (averaging limit)
//   kernel       weightd's averaging kernel (core::AccumulateScaled) alone
//   tcp          a raw TCP sender/receiver pair (two processes) moving the
//                bytes over loopback with 1 MiB writes (the pipe's limit)
//   grpc_server  a plain gRPC sink (no averaging) for the two modes below
//   grpc_client  one client-streaming Put of the bytes in 1 MiB chunks per
//                round, started together with the other clients
//   ping         unary gRPC ping-pong of --bytes (latency)
//   round_server a gRPC sink whose Ping answers only once --workers calls
//                are waiting, all together, on the callback API as weightd:
//                the floor of a round of unary calls (docs/performance.md)
// Each measured repetition prints one JSON line: {"rep": i, "secs": s}.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "baseline.grpc.pb.h"
#include "server/core/kernels.h"

ABSL_FLAG(std::string, mode, "",
          "membw, kernel, tcp, grpc_server, grpc_client, ping or round_server");
ABSL_FLAG(uint64_t, bytes, 1 << 20, "Bytes per repetition.");
ABSL_FLAG(int, reps, 10, "Measured repetitions (after one warm-up).");
ABSL_FLAG(std::string, server, "", "grpc_client, ping: the sink's address.");
ABSL_FLAG(std::string, listen, "127.0.0.1:0", "grpc_server: listen address.");
ABSL_FLAG(std::string, ready_file, "", "grpc_server: write the address here.");
ABSL_FLAG(int, workers, 1,
          "grpc_client: clients streaming together; round_server: calls "
          "per round.");

namespace {

constexpr std::size_t kChunk = 1 << 20;

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Report(int rep, double secs) {
  std::printf("{\"rep\": %d, \"secs\": %.9f}\n", rep, secs);
  std::fflush(stdout);
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "bench_baseline: %s\n", why.c_str());
  return 1;
}

// Runs fn once to warm up, then --reps times, reporting each.
template <typename Fn>
void Repeat(Fn fn) {
  fn();
  for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    const double start = Now();
    fn();
    Report(rep, Now() - start);
  }
}

int MemBandwidth(bool kernel) {
  const std::size_t n = absl::GetFlag(FLAGS_bytes) / 4;
  std::vector<float> acc(n, 0.0f), x(n, 1.0f);
  Repeat([&] {
    if (kernel) {
      // What the server does with each pushed 1 MiB chunk: the finiteness
      // check, then the sum.
      const char* bytes = reinterpret_cast<const char*>(x.data());
      for (std::size_t first = 0; first < n; first += kChunk / 4) {
        const absl::string_view piece(bytes + first * 4,
                                      std::min(kChunk / 4, n - first) * 4);
        const weightd::core::Pieces pieces(&piece, 1);
        if (!weightd::core::AllFinite(pieces, weightd::WireFormat::kFloat32)) {
          std::abort();
        }
        weightd::core::AccumulateScaled(pieces, weightd::WireFormat::kFloat32,
                                        1.0f, acc.data() + first);
      }
    } else {
      float* a = acc.data();
      const float* b = x.data();
      for (std::size_t i = 0; i < n; ++i) a[i] += b[i];
    }
  });
  volatile float sink = acc[n / 2];  // Keep the sums alive.
  (void)sink;
  return 0;
}

bool WriteAll(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min(n, kChunk));
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

int Tcp() {
  const std::size_t bytes = absl::GetFlag(FLAGS_bytes);
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Fail("cannot listen on 127.0.0.1");
  }
  const pid_t child = ::fork();
  if (child == 0) {  // The receiver: reads each round whole, then acks.
    const int fd = ::accept(listener, nullptr, nullptr);
    std::vector<char> buffer(kChunk);
    for (int round = 0; round <= absl::GetFlag(FLAGS_reps); ++round) {
      std::size_t got = 0;
      while (got < bytes) {
        const ssize_t r = ::read(fd, buffer.data(), buffer.size());
        if (r <= 0) ::_exit(1);
        got += static_cast<std::size_t>(r);
      }
      if (::write(fd, "k", 1) != 1) ::_exit(1);
    }
    ::_exit(0);
  }
  ::close(listener);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Fail("cannot connect to the receiver");
  }
  std::vector<char> payload(bytes, 1);
  bool ok = true;
  Repeat([&] {
    char ack;
    ok = ok && WriteAll(fd, payload.data(), bytes) && ::read(fd, &ack, 1) == 1;
  });
  ::close(fd);
  int status = 0;
  ::waitpid(child, &status, 0);
  return ok && WIFEXITED(status) && WEXITSTATUS(status) == 0
             ? 0
             : Fail("the TCP transfer failed");
}

class Sink final : public weightd::bench::Sink::Service {
 public:
  grpc::Status Put(grpc::ServerContext*,
                   grpc::ServerReader<weightd::bench::Chunk>* reader,
                   weightd::bench::Ack* ack) override {
    weightd::bench::Chunk chunk;
    std::uint64_t bytes = 0;
    while (reader->Read(&chunk)) bytes += chunk.data().size();
    ack->set_bytes(bytes);
    return grpc::Status::OK;
  }
  grpc::Status Ping(grpc::ServerContext*, const weightd::bench::Chunk* in,
                    weightd::bench::Chunk* out) override {
    *out = *in;
    return grpc::Status::OK;
  }
  grpc::Status Barrier(grpc::ServerContext*, const weightd::bench::Arrive* in,
                       weightd::bench::Ack*) override {
    std::unique_lock<std::mutex> lock(mu_);
    int& arrived = arrived_[in->name()];
    if (++arrived >= static_cast<int>(in->count())) cv_.notify_all();
    cv_.wait(lock, [&] { return arrived >= static_cast<int>(in->count()); });
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> arrived_;
};

// Ping answers once --workers calls wait: a round with nothing to average.
class RoundSink final : public weightd::bench::Sink::CallbackService {
 public:
  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* context,
                                 const weightd::bench::Chunk* in,
                                 weightd::bench::Chunk* out) override {
    *out = *in;
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    std::vector<grpc::ServerUnaryReactor*> release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      waiting_.push_back(reactor);
      if (static_cast<int>(waiting_.size()) == absl::GetFlag(FLAGS_workers)) {
        release.swap(waiting_);
      }
    }
    for (grpc::ServerUnaryReactor* r : release) r->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  std::mutex mu_;
  std::vector<grpc::ServerUnaryReactor*> waiting_;
};

int GrpcServer(bool round) {
  Sink sink;
  RoundSink round_sink;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen),
                           grpc::InsecureServerCredentials(), &port);
  if (round) {
    builder.RegisterService(&round_sink);
  } else {
    builder.RegisterService(&sink);
  }
  builder.SetMaxReceiveMessageSize(kChunk + 4096);
  // Many clients wait in Barrier at once: enough threads for all.
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 64);
  auto server = builder.BuildAndStart();
  if (server == nullptr) return Fail("cannot listen");
  const std::string listen = absl::GetFlag(FLAGS_listen);
  const std::string address = absl::StartsWith(listen, "unix:")
                                  ? listen
                                  : absl::StrCat("127.0.0.1:", port);
  if (!absl::GetFlag(FLAGS_ready_file).empty()) {
    const std::string tmp = absl::GetFlag(FLAGS_ready_file) + ".tmp";
    std::ofstream(tmp) << address << "\n";
    std::rename(tmp.c_str(), absl::GetFlag(FLAGS_ready_file).c_str());
  }
  server->Wait();  // Until killed.
  return 0;
}

std::unique_ptr<weightd::bench::Sink::Stub> Connect() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kChunk + 4096);
  return weightd::bench::Sink::NewStub(grpc::CreateCustomChannel(
      absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials(), args));
}

int GrpcClient() {
  auto stub = Connect();
  const std::size_t bytes = absl::GetFlag(FLAGS_bytes);
  std::vector<char> payload(bytes, 1);
  const int workers = absl::GetFlag(FLAGS_workers);
  bool ok = true;
  int round = 0;
  for (int rep = -1; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    {
      grpc::ClientContext context;
      weightd::bench::Arrive arrive;
      arrive.set_name(absl::StrCat("round-", round++));
      arrive.set_count(workers);
      weightd::bench::Ack ack;
      ok = ok && stub->Barrier(&context, arrive, &ack).ok();
    }
    const double start = Now();
    grpc::ClientContext context;
    weightd::bench::Ack ack;
    auto writer = stub->Put(&context, &ack);
    weightd::bench::Chunk chunk;
    for (std::size_t off = 0; off < bytes; off += kChunk) {
      chunk.set_data(payload.data() + off, std::min(kChunk, bytes - off));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    ok = ok && writer->Finish().ok() && ack.bytes() == bytes;
    if (rep >= 0) Report(rep, Now() - start);
  }
  return ok ? 0 : Fail("the gRPC stream failed");
}

int Ping() {
  auto stub = Connect();
  weightd::bench::Chunk ping;
  ping.set_data(std::string(absl::GetFlag(FLAGS_bytes), 'p'));
  bool ok = true;
  Repeat([&] {
    grpc::ClientContext context;
    weightd::bench::Chunk pong;
    ok = ok && stub->Ping(&context, ping, &pong).ok() &&
         pong.data().size() == ping.data().size();
  });
  return ok ? 0 : Fail("ping failed");
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "membw") return MemBandwidth(false);
  if (mode == "kernel") return MemBandwidth(true);
  if (mode == "tcp") return Tcp();
  if (mode == "grpc_server") return GrpcServer(false);
  if (mode == "round_server") return GrpcServer(true);
  if (mode == "grpc_client") return GrpcClient();
  if (mode == "ping") return Ping();
  return Fail(absl::StrCat("unknown --mode=", mode));
}
