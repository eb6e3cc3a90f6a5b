#include "server/service/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "prometheus/exposer.h"
#include "server/service/weightd_service.h"
#include "spdlog/spdlog.h"

namespace weightd::service {
namespace {

// Room for a header listing thousands of tensors next to a full chunk.
constexpr int kHeaderSlackBytes = 8 << 20;

// A duration as a gRPC channel argument in milliseconds (INT_MAX: never).
int ArgMs(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return std::numeric_limits<int>::max();
  return static_cast<int>(std::clamp<std::int64_t>(
      absl::ToInt64Milliseconds(d), 1, std::numeric_limits<int>::max()));
}

// Limits that cannot work stop the server at start.
absl::Status CheckLimits(const ServerOptions& options) {
  const ServerLimits& l = options.limits;
  // A member of a sync round holds its push (or PushPull) while the round
  // waits, besides a heartbeat and a barrier: fewer places than that for
  // every worker admitted could leave a round waiting for pushes refused.
  const std::uint64_t workers = options.store.max_workers;
  if (l.max_calls > 0 && workers > 0 && l.max_calls < 3 * workers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_calls ", l.max_calls, " leaves fewer than 3 calls for each of ",
        "the ", workers,
        " workers max_workers admits (a push waiting for its round, a "
        "heartbeat, a barrier): a round could wait for pushes that are "
        "refused. Raise max_calls to at least 3 x max_workers, or lower "
        "max_workers"));
  }
  // Each stream may have two chunks in flight, and a message header room.
  const std::uint64_t stream_bytes =
      2 * options.store.chunk_bytes + kHeaderSlackBytes;
  if (l.max_receive_memory < 4 * stream_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_receive_memory ", l.max_receive_memory,
                     " is below what 4 streams may hold in flight (",
                     4 * stream_bytes, " bytes: two chunks of chunk_bytes and ",
                     kHeaderSlackBytes, " bytes of header room each)"));
  }
  if (l.max_streams_per_connection < 1) {
    return absl::InvalidArgumentError(
        "max_streams_per_connection must be at least 1: a worker needs a "
        "stream for each call it makes");
  }
  for (const auto& [name, d] :
       {std::pair{"stall_timeout", l.stall_timeout},
        std::pair{"min_client_ping_interval", l.min_client_ping_interval},
        std::pair{"max_connection_idle", l.max_connection_idle},
        std::pair{"handshake_timeout", l.handshake_timeout}}) {
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be positive"));
    }
  }
  if (l.min_client_ping_interval > absl::Milliseconds(kClientPingIntervalMs)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_client_ping_interval ",
        absl::FormatDuration(l.min_client_ping_interval),
        " is longer than the ",
        absl::FormatDuration(absl::Milliseconds(kClientPingIntervalMs)),
        " at which weightd's clients ping during a long wait: the server "
        "would close their connections"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  if (options.shard_count < 1 || options.shard_index >= options.shard_count) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard index ", options.shard_index, " is not in [0, ",
                     options.shard_count,
                     "): a deployment of N shards numbers them 0 to "
                     "N-1"));
  }
  // spdlog makes its default logger on first use. Made here, on the thread
  // that starts the server, before gRPC's threads log, it is made once and
  // visibly before them: TSan cannot see the guard of that lazy creation
  // inside (uninstrumented) libspdlog, and reported two gRPC threads that
  // logged first at once as a race (sharding_test, CI 2026-12-01).
  spdlog::default_logger_raw();
  std::unique_ptr<Server> server(new Server());
  if (!options.auth_policy.empty()) {
    Transport transport;
    transport.client_certificates =
        !options.tls.cert_file.empty() && !options.tls.client_ca_file.empty();
    transport.plaintext_tcp =
        options.tls.cert_file.empty() &&
        !absl::StartsWith(options.listen_address, "unix:");
    WEIGHTD_ASSIGN_OR_RETURN(
        server->authorizer_,
        Authorizer::Load(options.auth_policy, options.auth_reload_interval,
                         transport));
  } else {
    spdlog::info(
        "auth: no --auth_policy: every client that connects may make every "
        "call as any worker");
  }
  WEIGHTD_RETURN_IF_ERROR(CheckLimits(options));
  const ServerLimits& limits = options.limits;
  spdlog::info(
      "limits: {} calls at once (--max_calls), {} per connection "
      "(--max_streams_per_connection), {} MiB for incoming data "
      "(--max_receive_memory); a stream silent mid-push for {} is cut "
      "(--stall_timeout); idle connections close after {} "
      "(--max_connection_idle), handshakes after {} (--handshake_timeout)",
      limits.max_calls == 0 ? std::string("unlimited")
                            : absl::StrCat(limits.max_calls),
      limits.max_streams_per_connection, limits.max_receive_memory >> 20,
      absl::FormatDuration(limits.stall_timeout),
      absl::FormatDuration(limits.max_connection_idle),
      absl::FormatDuration(limits.handshake_timeout));
  ServiceOptions service;
  service.shard_index = options.shard_index;
  service.shard_count = options.shard_count;
  service.shared_memory = options.shared_memory;
  service.pace_pushes = options.pace_pushes;
  service.authorizer = server->authorizer_.get();
  service.max_calls = options.limits.max_calls;
  service.stall_timeout = options.limits.stall_timeout;
  server->metrics_ = std::make_unique<Metrics>(options.metrics);
  service.metrics = server->metrics_.get();
  // Before anything else binds or loads: a metrics port that cannot be had
  // stops the daemon before it serves (and snapshots) anything.
  if (!options.metrics_listen.empty()) {
    WEIGHTD_RETURN_IF_ERROR(server->ServeMetrics(options.metrics_listen));
  }
  server->service_ = std::make_unique<WeightdService>(service);
  EventLog* events = &server->service_->events();
  Metrics* metrics = server->metrics_.get();
  options.store.on_worker_expired =
      [events, metrics, user = std::move(options.store.on_worker_expired)](
          const core::WorkerExpired& e) {
        events->Expired(e);
        metrics->LeaseExpired();
        if (user) user(e);
      };
  options.store.on_round_closed =
      [s = server.get(), events, metrics, log = options.log_rounds,
       user = std::move(options.store.on_round_closed)](
          const core::RoundClosed& c) {
        metrics->RoundClosed(c);
        if (log) events->RoundClosed(c);
        if (storage::Snapshotter* sink = s->round_sink_.load()) {
          sink->OnRoundClosed(c);
        }
        if (user) user(c);
      };
  server->options_ = options;

  // Listen first: while a large snapshot loads, health says NOT_SERVING and
  // calls get UNAVAILABLE instead of "connection refused".
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  if (!options.tls.cert_file.empty()) {
    WEIGHTD_ASSIGN_OR_RETURN(server->tls_, ServerTls::Create(options.tls));
  } else if (!options.tls.key_file.empty() ||
             !options.tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "a TLS key or client CA needs the server's certificate too");
  }
  builder.AddListeningPort(options.listen_address,
                           server->tls_ != nullptr
                               ? server->tls_->credentials()
                               : grpc::InsecureServerCredentials(),
                           &port);
  if (options.unix_socket_mode > 0777) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Unix socket mode %#o is not a permission mode (0 to 0777)",
        options.unix_socket_mode));
  }
  if (!options.unix_socket.empty()) {
    struct stat st;
    if (::lstat(options.unix_socket.c_str(), &st) == 0 &&
        S_ISSOCK(st.st_mode)) {
      ::unlink(options.unix_socket.c_str());  // Left by a killed daemon.
    }
    builder.AddListeningPort("unix:" + options.unix_socket,
                             grpc::InsecureServerCredentials());
  }
  builder.RegisterService(server->service_.get());
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(server->metrics_->CallInterceptor());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.store.chunk_bytes) +
                                   kHeaderSlackBytes);
  builder.SetMaxSendMessageSize(static_cast<int>(options.store.chunk_bytes) +
                                kHeaderSlackBytes);
  // Each stream may have two chunks in flight towards the server, no more.
  // gRPC's default (windows grown by BDP probing) let 8 workers pushing a
  // 256 MiB tensor park ~600 MiB of received-but-unsummed chunks in the
  // server; with a fixed window the server's memory is the value and the
  // accumulator, and loopback throughput is the same (docs/performance.md).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  // A second daemon on the same port must fail to start, not share the
  // port and split the workers between two servers (gRPC sets SO_REUSEPORT
  // by default).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Notice a worker that vanished without closing its connection (a cut
  // link, a frozen host): its open calls, which keep its lease alive, end
  // within two keepalive periods.
  const int keepalive_ms = static_cast<int>(std::clamp<std::int64_t>(
      absl::ToInt64Milliseconds(options.store.lease_timeout) / 3, 1000, 60000));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_ms);
  // Keep pinging through a long wait in which no data flows (a barrier).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Clients ping too (client/channel.cc), every 20 s at the most; closer
  // pings are strikes, and two close the connection.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      ArgMs(options.limits.min_client_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // What callers may hold at once (ServerLimits, docs/security.md).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(std::min<std::uint32_t>(
                                 options.limits.max_streams_per_connection,
                                 std::numeric_limits<int>::max())));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             ArgMs(options.limits.max_connection_idle));
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             ArgMs(options.limits.handshake_timeout));
  grpc::ResourceQuota quota("weightd");
  quota.Resize(static_cast<std::size_t>(options.limits.max_receive_memory));
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                             static_cast<int>(2 * options.store.chunk_bytes));
  // The socket is made with the mode asked for, not opened wider first and
  // narrowed by the chmod below (the umask is the process's: restored at
  // once).
  const mode_t umask = options.unix_socket.empty()
                           ? 0
                           : ::umask(~options.unix_socket_mode & 0777);
  server->server_ = builder.BuildAndStart();
  if (!options.unix_socket.empty()) {
    ::umask(umask);
    if (server->server_ != nullptr &&
        ::chmod(options.unix_socket.c_str(), options.unix_socket_mode) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot set the mode of the Unix socket ",
                       options.unix_socket, ": ", std::strerror(errno)));
    }
  }
  const bool unix_socket = absl::StartsWith(options.listen_address, "unix:");
  if (server->server_ == nullptr || (!unix_socket && port == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address,
        options.unix_socket.empty() ? "" : " and unix:", options.unix_socket,
        " (address in use, not an address of this host, or a directory "
        "that does not exist?)"));
  }
  server->server_->GetHealthCheckService()->SetServingStatus(false);
  server->port_ = port;
  if (unix_socket) {
    server->address_ = options.listen_address;
  } else {
    // Dial the bound port on the listen host (loopback for wildcards).
    std::string host =
        options.listen_address.substr(0, options.listen_address.rfind(':'));
    if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
    server->address_ = absl::StrCat(host, ":", port);
  }
  if (options.on_listening) options.on_listening(server->address_);

  WEIGHTD_RETURN_IF_ERROR(server->BuildStore(options));
  if (server->snapshot_dir_ != nullptr && !server->unusable_snapshots_) {
    server->snapshotter_ = std::make_unique<storage::Snapshotter>(
        server->store_.get(), server->snapshot_dir_.get(),
        options.snapshot_every,
        [metrics](const storage::SnapshotAttempt& attempt) {
          if (attempt.file.ok()) {
            metrics->SnapshotWritten(attempt.took, attempt.bytes, absl::Now());
            spdlog::info("snapshot written ({} bytes in {}): {}", attempt.bytes,
                         absl::FormatDuration(attempt.took), *attempt.file);
          } else {
            metrics->SnapshotFailed(attempt.took);
            spdlog::error(
                "snapshot failed (earlier snapshots are untouched): {}",
                attempt.file.status().ToString());
          }
        });
    server->round_sink_ = server->snapshotter_.get();
  }
  server->service_->Attach(server->store_.get(), server->snapshotter_.get());
  server->ReadStateForMetrics();
  server->server_->GetHealthCheckService()->SetServingStatus(
      !server->unusable_snapshots_);
  server->housekeeper_ =
      std::thread([s = server.get()] { s->HousekeepingLoop(); });
  return server;
}

namespace {

// One line saying what a restart brings back, and what the workers must do.
void LogRestored(const std::string& path, const core::StoreState& state) {
  std::uint64_t min_version = 0, max_version = 0;
  for (std::size_t i = 0; i < state.tensors.size(); ++i) {
    const std::uint64_t v = state.tensors[i].version;
    min_version = i == 0 ? v : std::min(min_version, v);
    max_version = std::max(max_version, v);
  }
  std::size_t members = 0;
  for (const core::SavedWorker& w : state.workers) members += w.lease_id != 0;
  spdlog::warn(
      "restored from {}: {} tensor(s) at version {}..{}, {} "
      "membership(s) kept for their workers to take back. Rounds "
      "closed after this snapshot are lost; a worker's push for a later "
      "round counts in the open one",
      path, state.tensors.size(), min_version, max_version, members);
}

}  // namespace

absl::Status Server::BuildStore(ServerOptions& options) {
  if (!options.restore_path.empty()) {
    WEIGHTD_ASSIGN_OR_RETURN(
        core::StoreState state,
        storage::ReadSnapshotFile(options.restore_path, options.file_system));
    LogRestored(options.restore_path, state);
    WEIGHTD_ASSIGN_OR_RETURN(
        store_, core::TensorStore::Restore(options.store, std::move(state)));
  }
  if (!options.snapshot_dir.empty()) {
    WEIGHTD_ASSIGN_OR_RETURN(
        snapshot_dir_,
        storage::SnapshotDir::Open(options.snapshot_dir, options.file_system));
  }
  if (store_ == nullptr && snapshot_dir_ != nullptr) {
    absl::StatusOr<storage::SnapshotDir::Loaded> loaded =
        snapshot_dir_->LoadNewest();
    if (loaded.ok()) {
      for (const auto& [path, why] : loaded->skipped) {
        spdlog::warn("snapshot {} skipped: {}", path, why.ToString());
      }
      LogRestored(loaded->path, loaded->state);
      WEIGHTD_ASSIGN_OR_RETURN(
          store_,
          core::TensorStore::Restore(options.store, std::move(loaded->state)));
    } else if (absl::IsDataLoss(loaded.status())) {
      spdlog::error(
          "{}; serving NOT_SERVING and refusing calls: repair or "
          "move the snapshots away and restart",
          loaded.status().ToString());
      unusable_snapshots_ = true;
    } else if (!absl::IsNotFound(loaded.status())) {
      return loaded.status();
    }
  }
  if (store_ == nullptr) {
    WEIGHTD_ASSIGN_OR_RETURN(store_, core::TensorStore::Create(options.store));
  }
  if (unusable_snapshots_) store_->Close();
  return absl::OkStatus();
}

void Server::HousekeepingLoop() {
  // Often enough that a round waiting on a dead worker, or past its
  // timeout, closes at most 250 ms late.
  const core::StoreOptions& o = store_->options();
  absl::Duration period = o.lease_timeout / 4;
  if (o.round_timeout > absl::ZeroDuration()) {
    period = std::min(period, o.round_timeout / 4);
  }
  period = std::clamp(period, absl::Milliseconds(10), absl::Milliseconds(250));
  while (!stop_housekeeping_.WaitForNotificationWithTimeout(period)) {
    store_->ExpireLeases();
    if (tls_ != nullptr) tls_->Poll(absl::Now());
    if (authorizer_ != nullptr) authorizer_->Poll(absl::Now());
    service_->SweepSegments();
    service_->TickPacer();
    service_->CutStalledReads();
    store_->CloseOverdueRounds();
    service_->events().Flush();
  }
}

void Server::ReadStateForMetrics() {
  metrics_->SetStateSource([this] {
    MetricsState state;
    state.store = store_->Status();
    for (const core::TensorInfo& t : state.store.tensors) {
      std::uint64_t elements = 1;
      for (std::int64_t d : t.shape) elements *= static_cast<std::uint64_t>(d);
      state.value_bytes += elements * sizeof(float);
      // A sync tensor sums its rounds into an accumulator of its size.
      if (t.policy.consistency == core::Mode::kSync) {
        state.accumulator_bytes += elements * sizeof(float);
      }
      state.policy_bytes += t.policy_bytes;
    }
    state.payload = &service_->payload();
    return state;
  });
}

absl::Status Server::ServeMetrics(const std::string& address) {
  try {
    // Two threads (prometheus-cpp's default): an idle connection holds one.
    exposer_ = std::make_unique<prometheus::Exposer>(address, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address,
                     " (--metrics_listen): ", e.what()));
  }
  for (const std::weak_ptr<prometheus::Collectable>& c :
       metrics_->collectables()) {
    exposer_->RegisterCollectable(c);
  }
  const std::vector<int> ports = exposer_->GetListeningPorts();
  const std::string host = address.substr(0, address.rfind(':'));
  metrics_address_ = absl::StrCat(host, ":", ports.empty() ? 0 : ports.front());
  spdlog::info(
      "metrics: serving http://{}/metrics (Prometheus text format; plaintext, "
      "no authentication)",
      metrics_address_);
  return absl::OkStatus();
}

Server::~Server() { Shutdown(); }

absl::Status Server::ReloadAuthPolicy() {
  if (authorizer_ == nullptr) {
    spdlog::info("auth: SIGHUP, but this weightd runs without --auth_policy");
    return absl::OkStatus();
  }
  return authorizer_->Reload();
}

void Server::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    if (housekeeper_.joinable()) {
      stop_housekeeping_.Notify();
      housekeeper_.join();
    }
    if (server_ == nullptr) return;                // Start() failed.
    server_->GetHealthCheckService()->Shutdown();  // All NOT_SERVING.
    // Waiters end with UNAVAILABLE; new work is refused.
    if (store_ != nullptr) store_->Close();
    const auto deadline = std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(options_.shutdown_grace);
    server_->Shutdown(deadline);
    server_->Wait();
    service_->events().Flush(/*force=*/true);
    if (snapshotter_ != nullptr) {
      round_sink_ = nullptr;
      // The final snapshot; logged by its callback.
      final_snapshot_ = snapshotter_->Stop().status();
    }
  });
}

}  // namespace weightd::service
