// weightctl: talks to a running weightd.
//
//   weightctl health   [--server=ADDR]   exit 0 if SERVING, 1 if not
//   weightctl status   [--server=ADDR]   settings, counters, tensors, workers
//   weightctl snapshot [--server=ADDR]   write a snapshot now, print its file
//
// ADDR defaults to $WEIGHTD_SERVERS, then 127.0.0.1:7070. Exit codes: 0 ok,
// 1 the server answered with a failure (or is not serving), 2 usage or
// connection errors.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/credential_flags.h"
#include "client/credentials.h"
#include "common/startup.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "weightd/v1/weightd.grpc.pb.h"

ABSL_FLAG(std::string, server, "",
          "weightd address (default: $WEIGHTD_SERVERS, else 127.0.0.1:7070).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "Deadline of the call.");

namespace {

constexpr const char* kUsage =
    "weightctl COMMAND [--server=ADDR]\n"
    "  health    exit 0 if the daemon is SERVING, 1 if not\n"
    "  status    print settings, counters, tensors and workers\n"
    "  snapshot  write a snapshot now and print its file";

std::chrono::system_clock::time_point Deadline() {
  return std::chrono::system_clock::now() +
         absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_timeout));
}

int Failed(const char* what, const grpc::Status& status) {
  const bool unavailable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
  const std::string hint =
      unavailable ? "; " + weightd::ConnectHint(weightd::TlsOptionsFromFlags(),
                                                status.error_message())
                  : "";
  // The code's name (UNAUTHENTICATED, PERMISSION_DENIED, ...): what
  // docs/errors.md lists.
  const std::string code = absl::StatusCodeToString(
      static_cast<absl::StatusCode>(status.error_code()));
  std::fprintf(stderr, "weightctl: %s: %s: %s%s\n", what, code.c_str(),
               status.error_message().c_str(), hint.c_str());
  return unavailable ? 2 : 1;
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, {}, &response);
  // Always 1 when not healthy, unreachable included: a Docker HEALTHCHECK
  // command must exit 0 or 1 (2 is reserved).
  if (!status.ok()) {
    Failed("health", status);
    return 1;
  }
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                          response.status())
                          .c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
             ? 0
             : 1;
}

int Status(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = weightd::v1::Weightd::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  weightd::v1::GetStatusRequest request;
  request.set_include_tensors(true);
  request.set_include_workers(true);
  weightd::v1::GetStatusResponse r;
  const grpc::Status status = stub->GetStatus(&context, request, &r);
  if (!status.ok()) return Failed("status", status);
  std::printf("mode %s  chunk_bytes %llu  server_lr %g  shard %u of %u\n",
              weightd::v1::Mode_Name(r.mode()).c_str(),
              static_cast<unsigned long long>(r.chunk_bytes()), r.server_lr(),
              r.shard().index(), std::max(r.shard().count(), 1u));
  std::printf(
      "rounds_closed %llu  bytes_received %llu  bytes_sent %llu  "
      "snapshots_written %llu  snapshot_failures %llu\n",
      static_cast<unsigned long long>(r.rounds_closed()),
      static_cast<unsigned long long>(r.bytes_received()),
      static_cast<unsigned long long>(r.bytes_sent()),
      static_cast<unsigned long long>(r.snapshots_written()),
      static_cast<unsigned long long>(r.snapshot_failures()));
  std::printf("refused_unauthenticated %llu  refused_permission_denied %llu\n",
              static_cast<unsigned long long>(r.refused_unauthenticated()),
              static_cast<unsigned long long>(r.refused_permission_denied()));
  std::printf("refused_busy %llu  stalled_calls_cut %llu\n",
              static_cast<unsigned long long>(r.refused_busy()),
              static_cast<unsigned long long>(r.stalled_calls_cut()));
  std::printf("tensors %u\n", r.tensor_count());
  for (const auto& t : r.tensors()) {
    std::printf("  %s [%s] version %llu participants %u contributed %u\n",
                t.name().c_str(), absl::StrJoin(t.shape(), ",").c_str(),
                static_cast<unsigned long long>(t.version()), t.participants(),
                t.contributed());
  }
  std::printf("workers %u\n", r.worker_count());
  for (const auto& w : r.workers()) {
    std::printf("  %s from %s tensors %s\n", w.worker_id().c_str(),
                w.peer().empty() ? "?" : w.peer().c_str(),
                absl::StrJoin(w.tensors(), ",").c_str());
  }
  for (const auto& b : r.barriers()) {
    std::printf("barrier %s: %u of %u workers waiting (%llu released so far)\n",
                b.name().c_str(), b.waiting(), b.count(),
                static_cast<unsigned long long>(b.released()));
  }
  return 0;
}

int Snapshot(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = weightd::v1::Weightd::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  weightd::v1::TakeSnapshotResponse response;
  const grpc::Status status = stub->TakeSnapshot(&context, {}, &response);
  if (!status.ok()) return Failed("snapshot", status);
  std::printf("%s\n", response.path().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // WEIGHTD_SERVERS sets --server (common/startup.cc); a bad value, flag or
  // WEIGHTD_* variable exits 2 with one line.
  const weightd::Program program{
      "weightctl",
      kUsage,
      "tools/weightctl.cc",
      {{"timeout",
        [] {
          return absl::GetFlag(FLAGS_timeout) > absl::ZeroDuration()
                     ? std::string()
                     : std::string("must be > 0, e.g. 5s");
        }}},
      {weightd::kCredentialFlagsFile}};
  std::vector<char*> args = weightd::StartProgram(program, argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr,
                 "weightctl: give one command: health, status or snapshot "
                 "(see --help)\n");
    return 2;
  }
  std::string address = absl::GetFlag(FLAGS_server);
  if (address.empty()) address = "127.0.0.1:7070";
  absl::StatusOr<std::string> token = weightd::TokenFromFlags();
  absl::StatusOr<std::shared_ptr<grpc::Channel>> created =
      token.ok()
          ? weightd::CreateChannel(weightd::TlsOptionsFromFlags(), *token,
                                   address, grpc::ChannelArguments())
          : token.status();
  if (!created.ok()) {
    std::fprintf(stderr, "weightctl: %s\n",
                 std::string(created.status().message()).c_str());
    return 2;
  }
  const std::shared_ptr<grpc::Channel>& channel = *created;
  const std::string command = args[1];
  if (command == "health") return Health(channel);
  if (command == "status") return Status(channel);
  if (command == "snapshot") return Snapshot(channel);
  std::fprintf(stderr,
               "weightctl: unknown command %s: use health, status or snapshot "
               "(see --help)\n",
               command.c_str());
  return 2;
}
