#include "server/service/metrics.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"
#include "grpc/health/v1/health.pb.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd::service {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Seconds, from a millisecond to five minutes: rounds, waits and calls.
const prometheus::Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
      1,     2.5,    5,     10,   25,    60,   120, 300};
  return *buckets;
}

const prometheus::Histogram::BucketBoundaries& SnapshotBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
  return *buckets;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

constexpr std::array<WireFormat, 3> kAllFormats = {
    WireFormat::kFloat32, WireFormat::kBfloat16, WireFormat::kFloat16};
constexpr std::array<PayloadPath, 2> kAllPaths = {PayloadPath::kStream,
                                                  PayloadPath::kSharedMemory};

const char* PathName(PayloadPath path) {
  return path == PayloadPath::kStream ? "stream" : "shared_memory";
}

// The calls weightd serves, as "/package.Service/Method": a call to any
// other name is counted under service and method "unknown", so that a
// client cannot grow the labels' values.
const absl::flat_hash_set<std::string>& KnownCalls() {
  static const auto* known = [] {
    auto* calls = new absl::flat_hash_set<std::string>;
    // Through a message of each file: that links the file's descriptors in.
    for (const google::protobuf::ServiceDescriptor* service :
         {v1::PushRequest::descriptor()->file()->FindServiceByName("Weightd"),
          grpc::health::v1::HealthCheckRequest::descriptor()
              ->file()
              ->FindServiceByName("Health")}) {
      for (int i = 0; i < service->method_count(); ++i) {
        calls->insert(absl::StrCat("/", service->full_name(), "/",
                                   service->method(i)->name()));
      }
    }
    return calls;
  }();
  return *known;
}

prometheus::Labels CallLabels(absl::string_view path, absl::StatusCode code) {
  std::string service = "unknown";
  std::string method = "unknown";
  if (KnownCalls().contains(path)) {
    const std::size_t slash = path.rfind('/');
    service = std::string(path.substr(1, slash - 1));
    method = std::string(path.substr(slash + 1));
  }
  return {{"service", service},
          {"method", method},
          {"code", absl::StatusCodeToString(code)}};
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

void AddGauge(MetricFamily& family, double value,
              std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.gauge.value = value;
  family.metric.push_back(std::move(metric));
}

void AddCounter(MetricFamily& family, double value,
                std::vector<ClientMetric::Label> labels) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.counter.value = value;
  family.metric.push_back(std::move(metric));
}

// A gauge family of one unlabelled value.
MetricFamily OneGauge(std::string name, std::string help, double value) {
  MetricFamily family =
      Family(std::move(name), std::move(help), MetricType::Gauge);
  AddGauge(family, value);
  return family;
}

// Times one call and reports it when its status is sent.
class CallTimer final : public grpc::experimental::Interceptor {
 public:
  CallTimer(Metrics* metrics, const char* method)
      : metrics_(metrics), method_(method), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* batch) override {
    if (batch->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->CallEnded(
          method_,
          static_cast<absl::StatusCode>(batch->GetSendStatus().error_code()),
          absl::Now() - start_);
    }
    batch->Proceed();
  }

 private:
  Metrics* const metrics_;
  const std::string method_;
  const absl::Time start_;
};

class CallTimerFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallTimerFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new CallTimer(metrics_, info->method());
  }

 private:
  Metrics* const metrics_;
};

}  // namespace

void PayloadCounters::Received(WireFormat format, PayloadPath path,
                               std::uint64_t bytes) {
  received_[static_cast<int>(format)][static_cast<int>(path)].fetch_add(
      bytes, std::memory_order_relaxed);
}

void PayloadCounters::Sent(WireFormat format, PayloadPath path,
                           std::uint64_t bytes) {
  sent_[static_cast<int>(format)][static_cast<int>(path)].fetch_add(
      bytes, std::memory_order_relaxed);
}

std::uint64_t PayloadCounters::received(WireFormat format,
                                        PayloadPath path) const {
  return received_[static_cast<int>(format)][static_cast<int>(path)].load(
      std::memory_order_relaxed);
}

std::uint64_t PayloadCounters::sent(WireFormat format, PayloadPath path) const {
  return sent_[static_cast<int>(format)][static_cast<int>(path)].load(
      std::memory_order_relaxed);
}

std::uint64_t PayloadCounters::total_received() const {
  std::uint64_t total = 0;
  for (WireFormat f : kAllFormats) {
    for (PayloadPath p : kAllPaths) total += received(f, p);
  }
  return total;
}

std::uint64_t PayloadCounters::total_sent() const {
  std::uint64_t total = 0;
  for (WireFormat f : kAllFormats) {
    for (PayloadPath p : kAllPaths) total += sent(f, p);
  }
  return total;
}

// The state families, built at each scrape from the state source.
class Metrics::StateCollector final : public prometheus::Collectable {
 public:
  explicit StateCollector(std::uint32_t tensor_series)
      : tensor_series_(tensor_series) {}

  void SetSource(std::function<MetricsState()> source) {
    absl::MutexLock lock(&mu_);
    source_ = std::move(source);
  }

  std::vector<MetricFamily> Collect() const override {
    std::function<MetricsState()> source;
    {
      absl::MutexLock lock(&mu_);
      source = source_;
    }
    if (!source) return {};
    const MetricsState state = source();
    std::vector<MetricFamily> families;

    families.push_back(
        OneGauge("weightd_members", "Workers holding a lease.",
                 static_cast<double>(state.store.workers.size())));
    families.push_back(
        OneGauge("weightd_tensors", "Tensors held.",
                 static_cast<double>(state.store.tensors.size())));

    MetricFamily bytes = Family(
        "weightd_tensor_bytes",
        "Bytes of tensors held: published values, the accumulators of sync "
        "rounds, and what policies hold (optimizer state, buffered "
        "contributions).",
        MetricType::Gauge);
    AddGauge(bytes, static_cast<double>(state.value_bytes),
             {{"part", "value"}});
    AddGauge(bytes, static_cast<double>(state.accumulator_bytes),
             {{"part", "accumulator"}});
    AddGauge(bytes, static_cast<double>(state.policy_bytes),
             {{"part", "policy"}});
    families.push_back(std::move(bytes));

    // Open rounds: tensors whose round has contributions but has not closed.
    double open = 0, participants = 0, contributed = 0;
    for (const core::TensorInfo& t : state.store.tensors) {
      if (t.contributed == 0) continue;
      open += 1;
      participants += t.participants;
      contributed += t.contributed;
    }
    families.push_back(OneGauge("weightd_open_rounds",
                                "Tensors whose current round has "
                                "contributions and is not closed yet.",
                                open));
    families.push_back(OneGauge(
        "weightd_open_round_participants",
        "Participants of the open rounds, summed over them.", participants));
    families.push_back(
        OneGauge("weightd_open_round_contributions",
                 "Complete contributions to the open rounds, summed over them.",
                 contributed));

    if (state.payload != nullptr) {
      MetricFamily payload = Family(
          "weightd_payload_bytes_total",
          "Tensor payload bytes received (pushes, joins) and sent (pulls), "
          "by wire format and path.",
          MetricType::Counter);
      for (WireFormat f : kAllFormats) {
        for (PayloadPath p : kAllPaths) {
          AddCounter(payload,
                     static_cast<double>(state.payload->received(f, p)),
                     {{"direction", "in"},
                      {"format", WireFormatName(f)},
                      {"path", PathName(p)}});
          AddCounter(payload, static_cast<double>(state.payload->sent(f, p)),
                     {{"direction", "out"},
                      {"format", WireFormatName(f)},
                      {"path", PathName(p)}});
        }
      }
      families.push_back(std::move(payload));
    }

    if (tensor_series_ > 0) {
      MetricFamily version =
          Family("weightd_tensor_version", "A tensor's published version.",
                 MetricType::Gauge);
      MetricFamily tensor_participants =
          Family("weightd_tensor_participants", "Workers sharing a tensor.",
                 MetricType::Gauge);
      MetricFamily tensor_contributed =
          Family("weightd_tensor_round_contributions",
                 "Complete contributions to a tensor's open round.",
                 MetricType::Gauge);
      const std::size_t shown =
          std::min<std::size_t>(tensor_series_, state.store.tensors.size());
      for (std::size_t i = 0; i < shown; ++i) {
        const core::TensorInfo& t = state.store.tensors[i];
        AddGauge(version, static_cast<double>(t.version), {{"tensor", t.name}});
        AddGauge(tensor_participants, t.participants, {{"tensor", t.name}});
        AddGauge(tensor_contributed, t.contributed, {{"tensor", t.name}});
      }
      families.push_back(std::move(version));
      families.push_back(std::move(tensor_participants));
      families.push_back(std::move(tensor_contributed));
      families.push_back(OneGauge(
          "weightd_tensor_series_omitted",
          "Tensors without per-tensor series (over --metrics_tensor_series).",
          static_cast<double>(state.store.tensors.size() - shown)));
    }
    return families;
  }

 private:
  const std::uint32_t tensor_series_;
  mutable absl::Mutex mu_;
  std::function<MetricsState()> source_ ABSL_GUARDED_BY(mu_);
};

Metrics::Metrics(MetricsOptions options)
    : options_(options),
      registry_(std::make_shared<prometheus::Registry>()),
      state_(std::make_shared<StateCollector>(options.tensor_series)),
      rounds_closed_(
          prometheus::BuildCounter()
              .Name("weightd_rounds_closed_total")
              .Help("Rounds closed (sync) or pushes applied (async), over "
                    "all tensors; closed_on: all participants, or without "
                    "some (a quorum at its timeout).")
              .Register(*registry_)),
      rounds_closed_all_(rounds_closed_.Add({{"closed_on", "all"}})),
      rounds_closed_quorum_(rounds_closed_.Add({{"closed_on", "quorum"}})),
      round_duration_(
          prometheus::BuildHistogram()
              .Name("weightd_round_duration_seconds")
              .Help("From a round's first pushed chunk to its close.")
              .Register(*registry_)
              .Add({}, SecondsBuckets())),
      round_last_wait_(
          prometheus::BuildHistogram()
              .Name("weightd_round_last_wait_seconds")
              .Help("How long a round's last contributor kept it waiting "
                    "(from the contribution before; closed without some: "
                    "from the latest).")
              .Register(*registry_)
              .Add({}, SecondsBuckets())),
      joins_(prometheus::BuildCounter()
                 .Name("weightd_joins_total")
                 .Help("Joins accepted (new members and re-joins).")
                 .Register(*registry_)
                 .Add({})),
      leaves_(prometheus::BuildCounter()
                  .Name("weightd_leaves_total")
                  .Help("Workers that left.")
                  .Register(*registry_)
                  .Add({})),
      lease_expiries_(prometheus::BuildCounter()
                          .Name("weightd_lease_expiries_total")
                          .Help("Workers dropped because their lease ran out "
                                "(--lease_timeout without a call).")
                          .Register(*registry_)
                          .Add({})),
      pushes_(prometheus::BuildCounter()
                  .Name("weightd_pushes_total")
                  .Help("Push calls by outcome: applied, duplicate (a resend "
                        "of an applied push), aborted (its round closed "
                        "without it), cancelled, refused; code: the call's.")
                  .Register(*registry_)),
      calls_(prometheus::BuildHistogram()
                 .Name("weightd_call_duration_seconds")
                 .Help("Calls served, by service, method and status code, "
                       "and how long each took.")
                 .Register(*registry_)),
      snapshot_duration_(prometheus::BuildHistogram()
                             .Name("weightd_snapshot_duration_seconds")
                             .Help("How long writing a snapshot took "
                                   "(successful or not).")
                             .Register(*registry_)
                             .Add({}, SnapshotBuckets())),
      snapshot_failures_(prometheus::BuildCounter()
                             .Name("weightd_snapshot_failures_total")
                             .Help("Snapshots that could not be written.")
                             .Register(*registry_)
                             .Add({})),
      snapshot_bytes_(prometheus::BuildGauge()
                          .Name("weightd_snapshot_bytes")
                          .Help("Size of the last snapshot written.")
                          .Register(*registry_)
                          .Add({})),
      snapshot_last_success_(
          prometheus::BuildGauge()
              .Name("weightd_snapshot_last_success_timestamp_seconds")
              .Help("When the last snapshot was written (Unix time; 0: "
                    "none since start).")
              .Register(*registry_)
              .Add({})) {
  // The outcomes that follow from a normal run exist from the start, so
  // that rate() sees their first increase.
  pushes_.Add({{"outcome", "applied"}, {"code", "OK"}});
  pushes_.Add({{"outcome", "duplicate"}, {"code", "OK"}});
  pushes_.Add({{"outcome", "aborted"}, {"code", "ABORTED"}});
}

void Metrics::SetStateSource(std::function<MetricsState()> source) {
  state_->SetSource(std::move(source));
}

std::vector<std::weak_ptr<prometheus::Collectable>> Metrics::collectables()
    const {
  return {registry_, state_};
}

void Metrics::RoundClosed(const core::RoundClosed& closed) {
  (closed.missing > 0 ? rounds_closed_quorum_ : rounds_closed_all_).Increment();
  round_duration_.Observe(Seconds(closed.duration));
  round_last_wait_.Observe(Seconds(closed.last_wait));
}

void Metrics::Joined() { joins_.Increment(); }
void Metrics::Left() { leaves_.Increment(); }
void Metrics::LeaseExpired() { lease_expiries_.Increment(); }

void Metrics::PushEnded(absl::StatusCode code, bool duplicate) {
  const char* outcome = "refused";
  if (code == absl::StatusCode::kOk) {
    outcome = duplicate ? "duplicate" : "applied";
  } else if (code == absl::StatusCode::kAborted) {
    outcome = "aborted";
  } else if (code == absl::StatusCode::kCancelled) {
    outcome = "cancelled";
  }
  pushes_.Add({{"outcome", outcome}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void Metrics::CallEnded(absl::string_view method, absl::StatusCode code,
                        absl::Duration took) {
  calls_.Add(CallLabels(method, code), SecondsBuckets()).Observe(Seconds(took));
}

void Metrics::SnapshotWritten(absl::Duration took, std::uint64_t bytes,
                              absl::Time at) {
  snapshot_duration_.Observe(Seconds(took));
  snapshot_bytes_.Set(static_cast<double>(bytes));
  snapshot_last_success_.Set(absl::ToDoubleSeconds(at - absl::UnixEpoch()));
}

void Metrics::SnapshotFailed(absl::Duration took) {
  snapshot_duration_.Observe(Seconds(took));
  snapshot_failures_.Increment();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
Metrics::CallInterceptor() {
  return std::make_unique<CallTimerFactory>(this);
}

}  // namespace weightd::service
