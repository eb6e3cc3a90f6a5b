#include "server/service/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "server/service/weightd_service.h"
#include "spdlog/spdlog.h"

namespace weightd::service {
namespace {

// Room for a header listing thousands of tensors next to a full chunk.
constexpr int kHeaderSlackBytes = 8 << 20;

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  std::unique_ptr<Server> server(new Server());
  if (options.log_rounds) {
    options.store.on_round_closed =
        [user = std::move(options.store.on_round_closed)](
            const core::RoundClosed& c) {
          spdlog::info("round closed tensor={} round={} contributors={} "
                       "bytes={} ms={:.1f}",
                       c.tensor, c.round, c.contributors, c.bytes,
                       absl::ToDoubleMilliseconds(c.duration));
          if (c.non_finite_chunks > 0) {
            spdlog::warn("round {} of tensor {}: the mean of {} chunk(s) "
                         "overflowed float32; they kept their old value",
                         c.round, c.tensor, c.non_finite_chunks);
          }
          if (user) user(c);
        };
  }
  options.store.on_worker_expired =
      [user = std::move(options.store.on_worker_expired)](
          const core::WorkerExpired& e) {
        spdlog::warn("worker {} dropped: no call for {} (lease expired); it "
                     "left tensors {}",
                     e.worker_id, absl::FormatDuration(e.silent_for),
                     absl::StrJoin(e.tensors, ","));
        if (user) user(e);
      };
  WEIGHTD_ASSIGN_OR_RETURN(server->store_,
                           core::TensorStore::Create(options.store));
  server->service_ = std::make_unique<WeightdService>(server->store_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen_address,
                           grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(options.store.chunk_bytes) + kHeaderSlackBytes);
  builder.SetMaxSendMessageSize(
      static_cast<int>(options.store.chunk_bytes) + kHeaderSlackBytes);
  server->server_ = builder.BuildAndStart();
  const bool unix_socket = absl::StartsWith(options.listen_address, "unix:");
  if (server->server_ == nullptr || (!unix_socket && port == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address,
        " (address in use, or not an address of this host?)"));
  }
  server->port_ = port;
  if (unix_socket) {
    server->address_ = options.listen_address;
  } else {
    // Dial the bound port on the listen host (loopback for wildcards).
    std::string host = options.listen_address.substr(
        0, options.listen_address.rfind(':'));
    if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
    server->address_ = absl::StrCat(host, ":", port);
  }
  server->server_->GetHealthCheckService()->SetServingStatus(true);
  server->options_ = std::move(options);
  server->expirer_ = std::thread([s = server.get()] { s->ExpireLeasesLoop(); });
  return server;
}

void Server::ExpireLeasesLoop() {
  const absl::Duration period = std::max(
      absl::Milliseconds(10), store_->options().lease_timeout / 4);
  while (!stop_expiring_.WaitForNotificationWithTimeout(period)) {
    store_->ExpireLeases();
  }
}

Server::~Server() { Shutdown(); }

void Server::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    if (expirer_.joinable()) {
      stop_expiring_.Notify();
      expirer_.join();
    }
    if (server_ == nullptr) return;  // Start() failed.
    server_->GetHealthCheckService()->Shutdown();  // All NOT_SERVING.
    store_->Close();  // Waiters end with UNAVAILABLE; new work is refused.
    const auto deadline =
        std::chrono::system_clock::now() +
        absl::ToChronoMilliseconds(options_.shutdown_grace);
    server_->Shutdown(deadline);
    server_->Wait();
  });
}

}  // namespace weightd::service
