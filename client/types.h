// The types of weightd's client API (client/client.h): tensors held by the
// caller, options, and figures.
#ifndef WEIGHTD_CLIENT_TYPES_H_
#define WEIGHTD_CLIENT_TYPES_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/cancellation.h"
#include "common/update_kind.h"
#include "common/wire_format.h"

namespace weightd {

// A named tensor held by the caller: its shape and its float32 storage.
// `data.size()` must equal the product of `shape` (1 for an empty shape).
struct TensorRef {
  std::string name;
  std::vector<std::int64_t> shape;
  absl::Span<float> data;
  // How the server combines the tensor's pushes (docs/algorithms.md), as
  // text: e.g. "consistency=bounded staleness=2 optimizer=adam lr=0.01
  // aggregator=median". Read at Join only. A field it leaves out is the
  // tensor's (if it exists) or the server's default; a field it names must
  // match an existing tensor's (else Join fails with ALREADY_EXISTS).
  std::string policy = {};
};

// TLS towards the servers (docs/security.md). TLS is on when `ca_file` is
// set; the other fields need it. A Unix-socket address ("unix:PATH") never
// uses TLS: the socket file's permissions decide who may connect.
struct TlsOptions {
  // PEM bundle of the CA(s) that signed the servers' certificates.
  std::string ca_file;
  // This worker's certificate chain and private key (PEM, the key
  // unencrypted), for servers that ask for client certificates (mutual
  // TLS). Both or neither. Re-read when they change on disk.
  std::string cert_file;
  std::string key_file;
  // The name the server's certificate must carry, when it is not the host
  // of the address dialled (an IP address, a tunnel). A headless-service
  // name resolved to its shards' addresses is checked against that name.
  std::string server_name;
};

struct ClientOptions {
  // Where weightd runs: one gRPC target ("127.0.0.1:7070",
  // "unix:/run/weightd.sock"), or the shards of a sharded deployment as a
  // comma-separated list ("10.0.0.1:7070,10.0.0.2:7070", in any order), or
  // one DNS name that resolves to every shard (a Kubernetes headless
  // service). The servers report their shard index and count; Connect checks
  // that they form one complete layout (see client/client.h).
  std::string address;
  // Stable worker name ([A-Za-z0-9_.:/-], at most 256 bytes).
  std::string worker_id;
  // Deadline of each call, including the wait for a sync round to close.
  absl::Duration call_timeout = absl::Minutes(10);
  // How long Connect waits for the server to become reachable.
  absl::Duration connect_timeout = absl::Seconds(30);
  // While joined, a background thread renews the lease every third of the
  // server's lease timeout, so that a worker busy training or waiting for a
  // round is not dropped. Off: only the worker's own calls renew it.
  bool heartbeat = true;
  // Calls failing with UNAVAILABLE (server down or restarting, network) or
  // DEADLINE_EXCEEDED are retried, after an exponential backoff with
  // jitter, for at most this long per call; a resent push keeps its
  // sequence, so the server applies it once. Zero: no retries.
  absl::Duration retry_budget = absl::Minutes(2);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  // Format of the values pushed and pulled (Join's initial values are always
  // float32). 16-bit formats halve the bytes on the wire; the server still
  // averages in float32. See common/wire_format.h.
  WireFormat wire_format = WireFormat::kFloat32;
  // Sharded deployments: a tensor larger than this is split by rows over
  // every shard; smaller ones live whole on one shard, chosen by a hash of
  // the name. Every worker of a job must use the same value. 256 KiB
  // spreads real models' bytes evenly: ResNet-50's busiest shard holds
  // 0.4 % over an equal share at 2 and 4 shards, 2.6 % at 8 (at 4 MiB:
  // 12.6 %, 20 % and 61 %, and the busiest shard's link sets the round).
  std::uint64_t split_bytes = std::uint64_t{256} << 10;
  // Lets another thread stop Connect and every call (client/cancellation.h).
  // Null: calls end only by themselves (each is bounded by the timeouts
  // above).
  std::shared_ptr<Cancellation> cancellation;
  // Where the client says what it waits for: a server that is not up yet, a
  // retry, a round or barrier taking longer than `progress_interval`, a
  // server that went back to an older snapshot. One line per message,
  // without a trailing newline. Null: standard error.
  std::function<void(absl::string_view)> log;
  absl::Duration progress_interval = absl::Seconds(10);
  // A Join refused because another process holds the worker id (ABORTED)
  // is retried for this long: long enough for the lease of this worker's
  // own previous process (restarted, killed) to lapse on the server.
  absl::Duration held_id_wait = absl::Seconds(20);
  // A worker on the daemon's host moves tensor values through a shared-
  // memory segment it hands the daemon, gRPC carrying only the calls
  // (docs/protocol.md, "Shared memory"); where the daemon cannot map it
  // (another host, a container without the same pid namespace, no
  // access), the stream calls carry them. Which one a worker uses is
  // logged at Join. Off: always the stream calls.
  bool shared_memory = true;
  TlsOptions tls = {};
  // A bearer token, sent with every call ("authorization: Bearer TOKEN")
  // to servers whose --auth_policy names principals by token. Empty: none
  // (a client certificate, or a server without a policy). Send it over TLS
  // or a Unix socket only.
  std::string token = {};
};

struct PushOptions {
  UpdateKind kind = UpdateKind::kWeights;
  // Weight of this contribution in the mean (e.g. samples seen). > 0.
  double weight = 1.0;
};

// Server-wide figures, from GetStatus.
struct ServerStatus {
  std::uint64_t bytes_received = 0;  // Payload bytes in joins and pushes.
  std::uint64_t bytes_sent = 0;      // Payload bytes in pulls.
  std::uint64_t rounds_closed = 0;   // Over all tensors.
};

// A tensor's place in a worker's shared-memory segment (Client::
// SharedBuffer): train in `values` and pass them to the calls, and no byte
// of the tensor is copied in this process. `keep` holds the segment mapped:
// the span stays valid while this object lives, also after the Client is
// gone.
struct SharedBuffer {
  absl::Span<float> values;
  std::vector<std::int64_t> shape;  // As declared in Join.
  std::shared_ptr<const void> keep;
};

// Traffic counters of one client (payload bytes only).
struct ClientStats {
  std::uint64_t bytes_pushed = 0;
  std::uint64_t bytes_pulled = 0;
  // PushPulls whose round moved on without them (answered with the current
  // value instead).
  std::uint64_t rounds_missed = 0;
  // Attempts made again after a call failed with UNAVAILABLE or
  // DEADLINE_EXCEEDED (a lost connection, a server restarting): each is
  // also a log line naming the error. A resent push counts its bytes again
  // in bytes_pushed.
  std::uint64_t retries = 0;
};

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_TYPES_H_
