// Metrics: what weightd serves to Prometheus on --metrics_listen, in the
// Prometheus text format (docs/operations.md, "Metrics", lists them).
//
// Events (rounds, pushes, joins, snapshots, calls) update counters and
// histograms as they happen; the state (members, tensors, bytes held, open
// rounds, payload bytes) is read from the daemon when Prometheus scrapes,
// so it always agrees with what GetStatus reports. Labels take a bounded set
// of values: per-tensor series only for the first `tensor_series` tensors
// by name (MetricsOptions), method labels only for the calls weightd
// serves. Thread-safe.
#ifndef WEIGHTD_SERVER_SERVICE_METRICS_H_
#define WEIGHTD_SERVER_SERVICE_METRICS_H_

#include <grpcpp/support/server_interceptor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/wire_format.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/core/options.h"
#include "server/core/tensor_store.h"

namespace weightd::service {

struct MetricsOptions {
  // Series per tensor (weightd_tensor_*{tensor="..."}) for at most this
  // many tensors, the first by name; 0: none. Bounds the labels' values.
  std::uint32_t tensor_series = 0;
};

// How a tensor's bytes travelled.
enum class PayloadPath { kStream, kSharedMemory };

// Payload bytes in and out since start, by wire format and path. Updated
// by the calls that move tensors; read by GetStatus and by Metrics.
class PayloadCounters {
 public:
  void Received(WireFormat format, PayloadPath path, std::uint64_t bytes);
  void Sent(WireFormat format, PayloadPath path, std::uint64_t bytes);
  std::uint64_t received(WireFormat format, PayloadPath path) const;
  std::uint64_t sent(WireFormat format, PayloadPath path) const;
  std::uint64_t total_received() const;
  std::uint64_t total_sent() const;

 private:
  static constexpr int kFormats = 3;  // WireFormat's values.
  static constexpr int kPaths = 2;
  std::atomic<std::uint64_t> received_[kFormats][kPaths] = {};
  std::atomic<std::uint64_t> sent_[kFormats][kPaths] = {};
};

// What a scrape reads of the daemon's state.
struct MetricsState {
  core::StoreStatus store;              // Tensors (by name) and workers.
  std::uint64_t value_bytes = 0;        // Published values, all tensors.
  std::uint64_t accumulator_bytes = 0;  // Sync tensors' accumulators.
  // Optimizer state and buffered contributions (TensorInfo::policy_bytes).
  std::uint64_t policy_bytes = 0;
  const PayloadCounters* payload = nullptr;
};

class Metrics {
 public:
  explicit Metrics(MetricsOptions options = {});
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // What to serve: each goes to prometheus::Exposer::RegisterCollectable.
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables() const;
  // How a scrape reads the state; set before serving. Called on the
  // exposer's thread, outside every lock of Metrics.
  void SetStateSource(std::function<MetricsState()> source);

  void RoundClosed(const core::RoundClosed& closed);
  void Joined();
  void Left();
  void LeaseExpired();
  // A push (Push, PushPull, PushFromSegment) ended with `code`; for OK,
  // `duplicate` if every tensor of it had been applied before (a resend).
  void PushEnded(absl::StatusCode code, bool duplicate);
  // A call of `method` ("/weightd.v1.Weightd/Push") ended with `code`
  // after `took`.
  void CallEnded(absl::string_view method, absl::StatusCode code,
                 absl::Duration took);
  // A snapshot attempt took `took`; on success it wrote `bytes` at `at`.
  void SnapshotWritten(absl::Duration took, std::uint64_t bytes, absl::Time at);
  void SnapshotFailed(absl::Duration took);

  // Records every call's method, code and latency (CallEnded) from inside
  // gRPC: for grpc::ServerBuilder::experimental().SetInterceptorCreators.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  CallInterceptor();

 private:
  class StateCollector;

  const MetricsOptions options_;
  const std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<StateCollector> state_;

  prometheus::Family<prometheus::Counter>& rounds_closed_;
  prometheus::Counter& rounds_closed_all_;
  prometheus::Counter& rounds_closed_quorum_;
  prometheus::Histogram& round_duration_;
  prometheus::Histogram& round_last_wait_;
  prometheus::Counter& joins_;
  prometheus::Counter& leaves_;
  prometheus::Counter& lease_expiries_;
  prometheus::Family<prometheus::Counter>& pushes_;
  prometheus::Family<prometheus::Histogram>& calls_;
  prometheus::Histogram& snapshot_duration_;
  prometheus::Counter& snapshot_failures_;
  prometheus::Gauge& snapshot_bytes_;
  prometheus::Gauge& snapshot_last_success_;
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_METRICS_H_
