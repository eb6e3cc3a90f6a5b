// Server: a running weightd endpoint (store + gRPC service + health), as the
// daemon and the service tests use it.
#ifndef WEIGHTD_SERVER_SERVICE_SERVER_H_
#define WEIGHTD_SERVER_SERVICE_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/core/options.h"
#include "server/core/tensor_store.h"
#include "server/service/authorizer.h"
#include "server/service/metrics.h"
#include "server/service/server_tls.h"
#include "server/storage/file_system.h"
#include "server/storage/snapshot.h"
#include "server/storage/snapshotter.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace weightd::service {

class WeightdService;

// What callers may hold of the server at once, whoever they are
// (docs/security.md, "Limits"). Each is a weightd flag of the same name.
struct ServerLimits {
  // Calls served at once over all connections (0: no limit). Over it a new
  // call gets UNAVAILABLE, which clients retry with backoff. At least 3 x
  // store.max_workers (checked at start).
  std::uint32_t max_calls = 40000;
  // Calls one connection may have open at once (HTTP/2
  // SETTINGS_MAX_CONCURRENT_STREAMS: well-behaved clients queue beyond it;
  // a stream over it is refused, UNAVAILABLE).
  std::uint32_t max_streams_per_connection = 100;
  // Memory gRPC may hold for connections and the data they bring in before
  // the calls consume it (its resource quota). Under pressure gRPC stops
  // reading and then cancels streams with RESOURCE_EXHAUSTED. At least 4
  // streams' worth: 4 x (2 x chunk_bytes + 8 MiB), checked at start.
  std::uint64_t max_receive_memory = std::uint64_t{1} << 30;
  // How long a Join, Push or PushPull may leave a read of its stream
  // waiting for the client before the call is cut (DEADLINE_EXCEEDED; what
  // it delivered counts as for a push that ends early, and a resend
  // completes it). InfiniteDuration: never.
  absl::Duration stall_timeout = absl::Seconds(30);
  // Pings (without data) closer together than this are a strike; after
  // two, the connection is closed (GOAWAY ENHANCE_YOUR_CALM,
  // "too_many_pings"). weightd's clients ping every 20 s at most.
  absl::Duration min_client_ping_interval = absl::Seconds(5);
  // A connection with no call for this long is closed (GOAWAY; a client
  // reconnects for its next call). InfiniteDuration: never.
  absl::Duration max_connection_idle = absl::Minutes(10);
  // A new connection must finish its TLS and HTTP/2 handshakes within this.
  absl::Duration handshake_timeout = absl::Seconds(10);
};

struct ServerOptions {
  // gRPC listen address: "127.0.0.1:7070", "0.0.0.0:0" (any free port),
  // "unix:/path.sock".
  std::string listen_address = "127.0.0.1:7070";
  // Also listen on this Unix-domain socket (a path; empty: none), the fast
  // path for workers on the same host or sharing a volume with it. A stale
  // socket file from an earlier run is replaced.
  std::string unix_socket;
  // The Unix socket file's permission bits (who on this host may connect).
  std::uint32_t unix_socket_mode = 0660;
  // TLS on listen_address (server/service/server_tls.h); an empty
  // cert_file serves plaintext. The Unix socket never uses TLS: its file
  // permissions decide who may connect.
  TlsFiles tls;
  // The --auth_policy file (server/service/authorizer.h): who may make
  // which calls. Empty: every caller may make every call.
  std::string auth_policy;
  // How often the policy file is checked for changes.
  absl::Duration auth_reload_interval = absl::Seconds(10);
  // This server's place among the shards of a deployment: it holds the
  // tensors (or row ranges) that clients given all `shard_count` servers
  // send it. Index in [0, shard_count).
  std::uint32_t shard_index = 0;
  std::uint32_t shard_count = 1;
  // Workers on this host may move their values through shared memory
  // (docs/protocol.md, section 11). False: AttachSegment is refused and
  // every worker uses the stream calls.
  bool shared_memory = true;
  // Keep a sync round's pushes within kPushLeadBytes of each other, so that
  // its result streams at the link's rate (server/service/push_pacer.h).
  bool pace_pushes = true;
  core::StoreOptions store;
  ServerLimits limits;
  // Serve Prometheus metrics at http://<metrics_listen>/metrics ("HOST:PORT",
  // port 0: any free one); empty: none. Plaintext HTTP without
  // authentication: bind it to an address only the scraper reaches.
  std::string metrics_listen;
  MetricsOptions metrics;
  // How long Shutdown() lets in-flight calls finish before cancelling them.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // Log one info line per closed round.
  bool log_rounds = true;
  // Snapshots. With a directory, the server starts from the newest usable
  // snapshot in it (or empty if there is none), writes more at the cadence
  // below and a final one at shutdown. If the directory holds snapshots but
  // none is usable, the server starts with health NOT_SERVING and refuses
  // every call (UNAVAILABLE) rather than silently starting empty.
  std::string snapshot_dir;
  storage::SnapshotterOptions snapshot_every;
  // Start from this snapshot file instead (it must be usable).
  std::string restore_path;
  // Where snapshots are read and written (not owned; must outlive the
  // Server). weightd's --crash_at puts a storage::CrashPointFileSystem here.
  storage::FileSystem* file_system = storage::DefaultFileSystem();
  // Called with the dialable address once the server listens, before it
  // restores its state (until then calls get UNAVAILABLE, health is
  // NOT_SERVING).
  std::function<void(const std::string& address)> on_listening;
};

class Server {
 public:
  // Binds, restores the state (snapshot), then serves and marks health
  // SERVING. INVALID_ARGUMENT for bad options; UNAVAILABLE if the address
  // cannot be bound; the snapshot's error if it cannot be restored.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();  // Shutdown() if still running.
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The port actually bound (useful with port 0); 0 for unix sockets.
  int port() const { return port_; }
  // An address clients can dial, e.g. "127.0.0.1:41234".
  const std::string& address() const { return address_; }
  core::TensorStore& store() { return *store_; }
  // What the server counts (served at metrics_listen, if any).
  Metrics& metrics() { return *metrics_; }
  // The metrics address actually bound ("127.0.0.1:9464"); empty without
  // metrics_listen.
  const std::string& metrics_address() const { return metrics_address_; }

  // Graceful stop: health NOT_SERVING, waiting calls end with UNAVAILABLE,
  // new calls are refused, in-flight streams get `shutdown_grace` to finish.
  // Idempotent; thread-safe.
  void Shutdown();
  // Reads the auth policy file again (SIGHUP): see Authorizer::Reload.
  absl::Status ReloadAuthPolicy();
  // After Shutdown(): whether the final snapshot was written (OK without a
  // snapshot directory).
  const absl::Status& final_snapshot() const { return final_snapshot_; }

 private:
  Server() = default;

  ServerOptions options_;
  int port_ = 0;
  std::string address_;
  absl::Status BuildStore(ServerOptions& options);

  std::unique_ptr<core::TensorStore> store_;
  bool unusable_snapshots_ = false;  // Serve NOT_SERVING, refuse all calls.
  std::unique_ptr<storage::SnapshotDir> snapshot_dir_;
  std::unique_ptr<storage::Snapshotter> snapshotter_;
  std::atomic<storage::Snapshotter*> round_sink_{nullptr};
  // Before the service and gRPC's server, which report to it.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Authorizer> authorizer_;  // Before the service using it.
  std::unique_ptr<WeightdService> service_;
  std::unique_ptr<ServerTls> tls_;  // Null: plaintext.
  std::unique_ptr<grpc::Server> server_;
  std::once_flag shutdown_once_;
  absl::Status final_snapshot_;

  // Until Shutdown(): expires leases and closes rounds past their timeout.
  void HousekeepingLoop();
  absl::Notification stop_housekeeping_;
  std::thread housekeeper_;

  // Last: stops serving metrics before what they read is destroyed.
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string metrics_address_;
  absl::Status ServeMetrics(const std::string& address);
  // Gives metrics_ the store and the service to read at each scrape (once
  // both exist; until then scrapes serve the event metrics only).
  void ReadStateForMetrics();
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_SERVER_H_
