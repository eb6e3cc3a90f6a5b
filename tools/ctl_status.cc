// weightctl's commands that read and change a daemon's state: health,
// status, tensors, workers, barriers, history, snapshot, drop. Each asks
// every server of --server (the shards of a sharded deployment) and prints
// a table, or with --json one JSON document.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/ctl.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd::ctl {
namespace {

using nlohmann::json;

// Rows under a header, printed by PrintTable.
class Table {
 public:
  explicit Table(std::vector<std::string> header) {
    rows_.push_back(std::move(header));
  }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print() const { PrintTable(rows_); }

 private:
  std::vector<std::vector<std::string>> rows_;
};

void PrintJson(const json& document) {
  // Bytes that are not UTF-8 (a worker id from a crafted snapshot) are
  // replaced, not thrown over.
  std::printf(
      "%s\n",
      document.dump(2, ' ', false, json::error_handler_t::replace).c_str());
}

// The most records `history --last` asks for (the server answers at most
// 10000 at once).
constexpr std::int64_t kMaxLast = 10000;

std::string Shape(const google::protobuf::RepeatedField<std::int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

std::string Ago(std::uint64_t ms) {
  return absl::FormatDuration(absl::Milliseconds(ms));
}

std::string UtcTime(std::int64_t unix_us) {
  if (unix_us == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMicros(unix_us),
                          absl::UTCTimeZone());
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

std::vector<std::string> Strings(
    const google::protobuf::RepeatedPtrField<std::string>& list) {
  return {list.begin(), list.end()};
}

// The shard column: only for a sharded deployment.
bool Sharded(const Context& context) { return context.channels.size() > 1; }

// "sync", "async", "bounded" ("" from a server that predates policies).
std::string PolicyConsistency(const v1::TensorPolicy& p) {
  switch (p.consistency()) {
    case v1::MODE_SYNC:
      return "sync";
    case v1::MODE_ASYNC:
      return "async";
    case v1::MODE_BOUNDED:
      return "bounded";
    default:
      return "";
  }
}

// The table's short form: consistency (staleness), optimizer, aggregator,
// e.g. "bounded(2) adam median"; every parameter is in --json.
std::string PolicySummary(const v1::TensorPolicy& p) {
  std::string consistency = PolicyConsistency(p);
  if (consistency.empty()) return "-";
  if (auto it = p.params().find("staleness"); it != p.params().end()) {
    absl::StrAppend(&consistency, "(", it->second, ")");
  }
  return absl::StrCat(consistency, "/", p.optimizer(), "/", p.aggregator());
}

json TensorJson(const v1::TensorInfo& t) {
  json j = {
      {"name", t.name()},
      {"shape", std::vector<std::int64_t>(t.shape().begin(), t.shape().end())},
      {"version", t.version()},
      {"participants", t.participants()},
      {"contributed", t.contributed()},
      {"waiting_for", Strings(t.waiting_for())}};
  if (!t.whole_shape().empty()) {
    j["whole_shape"] = std::vector<std::int64_t>(t.whole_shape().begin(),
                                                 t.whole_shape().end());
  }
  const v1::TensorPolicy& p = t.policy();
  json params = json::object();
  for (const auto& [key, value] : p.params()) params[key] = value;
  j["policy"] = {{"consistency", PolicyConsistency(p)},
                 {"optimizer", p.optimizer()},
                 {"aggregator", p.aggregator()},
                 {"params", std::move(params)}};
  j["policy_bytes"] = t.policy_bytes();
  return j;
}

json WorkerJson(const v1::WorkerInfo& w) {
  return {{"worker_id", w.worker_id()},
          {"peer", w.peer()},
          {"member_for_ms", w.member_for_ms()},
          {"idle_ms", w.idle_ms()},
          {"tensors", Strings(w.tensors())}};
}

json BarrierJson(const v1::BarrierInfo& b) {
  return {{"name", b.name()},
          {"count", b.count()},
          {"waiting", b.waiting()},
          {"released", b.released()},
          {"waiting_workers", Strings(b.waiting_workers())}};
}

}  // namespace

int StatusOfAll(const Context& context, bool tensors, bool workers,
                std::vector<v1::GetStatusResponse>* responses) {
  for (std::size_t i = 0; i < context.channels.size(); ++i) {
    auto stub = v1::Weightd::NewStub(context.channels[i]);
    grpc::ClientContext call;
    call.set_deadline(context.Deadline());
    v1::GetStatusRequest request;
    request.set_include_tensors(tensors);
    request.set_include_workers(workers);
    v1::GetStatusResponse response;
    const grpc::Status status = stub->GetStatus(&call, request, &response);
    if (!status.ok()) {
      return Failed(context, absl::StrCat("status of ", context.targets[i]),
                    status);
    }
    // Never shown: a lease id is a worker's credential for its calls.
    for (v1::WorkerInfo& w : *response.mutable_workers()) w.clear_lease_id();
    responses->push_back(std::move(response));
  }
  return kExitOk;
}

int Health(const Context& context) {
  int result = kExitOk;
  json document = json::array();
  for (std::size_t i = 0; i < context.channels.size(); ++i) {
    auto stub = grpc::health::v1::Health::NewStub(context.channels[i]);
    grpc::ClientContext call;
    call.set_deadline(context.Deadline());
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = stub->Check(&call, {}, &response);
    // Always 1 when not healthy, unreachable included: a Docker HEALTHCHECK
    // command must exit 0 or 1 (2 is reserved).
    std::string state;
    if (!status.ok()) {
      Failed(context, absl::StrCat("health of ", context.targets[i]), status);
      state = "UNREACHABLE";
      result = kExitRefused;
    } else {
      state = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
          response.status());
      if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
        result = kExitRefused;
      }
    }
    if (context.json) {
      document.push_back({{"server", context.targets[i]}, {"status", state}});
    } else if (Sharded(context)) {
      std::printf("%s %s\n", context.targets[i].c_str(), state.c_str());
    } else if (status.ok()) {
      std::printf("%s\n", state.c_str());
    }
  }
  if (context.json) PrintJson(document);
  return result;
}

int Status(const Context& context) {
  std::vector<v1::GetStatusResponse> all;
  if (int failed = StatusOfAll(context, true, true, &all)) return failed;
  if (context.json) {
    json document = json::array();
    for (std::size_t i = 0; i < all.size(); ++i) {
      const v1::GetStatusResponse& r = all[i];
      json tensors = json::array(), workers = json::array(),
           barriers = json::array();
      for (const auto& t : r.tensors()) tensors.push_back(TensorJson(t));
      for (const auto& w : r.workers()) workers.push_back(WorkerJson(w));
      for (const auto& b : r.barriers()) barriers.push_back(BarrierJson(b));
      document.push_back(
          {{"server", context.targets[i]},
           {"mode", v1::Mode_Name(r.mode())},
           {"chunk_bytes", r.chunk_bytes()},
           {"server_lr", r.server_lr()},
           {"shard",
            {{"index", r.shard().index()},
             {"count", std::max(r.shard().count(), 1u)}}},
           {"rounds_closed", r.rounds_closed()},
           {"bytes_received", r.bytes_received()},
           {"bytes_sent", r.bytes_sent()},
           {"snapshots_written", r.snapshots_written()},
           {"snapshot_failures", r.snapshot_failures()},
           {"refused_unauthenticated", r.refused_unauthenticated()},
           {"refused_permission_denied", r.refused_permission_denied()},
           {"refused_busy", r.refused_busy()},
           {"stalled_calls_cut", r.stalled_calls_cut()},
           {"tensor_count", r.tensor_count()},
           {"worker_count", r.worker_count()},
           {"tensors", tensors},
           {"workers", workers},
           {"barriers", barriers}});
    }
    PrintJson(document);
    return kExitOk;
  }
  for (std::size_t i = 0; i < all.size(); ++i) {
    const v1::GetStatusResponse& r = all[i];
    if (Sharded(context))
      std::printf("server %s\n", context.targets[i].c_str());
    std::printf("mode %s  chunk_bytes %llu  server_lr %g  shard %u of %u\n",
                v1::Mode_Name(r.mode()).c_str(),
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
    std::printf(
        "refused_unauthenticated %llu  refused_permission_denied %llu\n",
        static_cast<unsigned long long>(r.refused_unauthenticated()),
        static_cast<unsigned long long>(r.refused_permission_denied()));
    std::printf("refused_busy %llu  stalled_calls_cut %llu\n",
                static_cast<unsigned long long>(r.refused_busy()),
                static_cast<unsigned long long>(r.stalled_calls_cut()));
    std::printf("tensors %u\n", r.tensor_count());
    for (const auto& t : r.tensors()) {
      std::printf("  %s %s version %llu participants %u contributed %u\n",
                  t.name().c_str(), Shape(t.shape()).c_str(),
                  static_cast<unsigned long long>(t.version()),
                  t.participants(), t.contributed());
    }
    std::printf("workers %u\n", r.worker_count());
    for (const auto& w : r.workers()) {
      std::printf("  %s from %s tensors %s\n", w.worker_id().c_str(),
                  OrDash(w.peer()).c_str(),
                  absl::StrJoin(w.tensors(), ",").c_str());
    }
    for (const auto& b : r.barriers()) {
      std::printf(
          "barrier %s: %u of %u workers waiting (%llu released so far)\n",
          b.name().c_str(), b.waiting(), b.count(),
          static_cast<unsigned long long>(b.released()));
    }
  }
  return kExitOk;
}

int Tensors(const Context& context) {
  std::vector<v1::GetStatusResponse> all;
  if (int failed = StatusOfAll(context, true, false, &all)) return failed;
  if (context.json) {
    json document = json::array();
    for (std::size_t i = 0; i < all.size(); ++i) {
      for (const auto& t : all[i].tensors()) {
        json j = TensorJson(t);
        j["server"] = context.targets[i];
        document.push_back(std::move(j));
      }
    }
    PrintJson(document);
    return kExitOk;
  }
  std::vector<std::string> header = {"TENSOR",       "SHAPE",       "VERSION",
                                     "PARTICIPANTS", "CONTRIBUTED", "POLICY",
                                     "WAITING FOR"};
  if (Sharded(context)) header.insert(header.begin(), "SHARD");
  Table table(header);
  for (std::size_t i = 0; i < all.size(); ++i) {
    for (const auto& t : all[i].tensors()) {
      std::vector<std::string> row = {
          t.name(),
          t.whole_shape().empty()
              ? Shape(t.shape())
              : absl::StrCat(Shape(t.shape()), " of ", Shape(t.whole_shape())),
          absl::StrCat(t.version()),
          absl::StrCat(t.participants()),
          absl::StrCat(t.contributed()),
          PolicySummary(t.policy()),
          OrDash(absl::StrJoin(t.waiting_for(), ","))};
      if (Sharded(context)) {
        row.insert(row.begin(), absl::StrCat(all[i].shard().index()));
      }
      table.Add(std::move(row));
    }
  }
  table.Print();
  return kExitOk;
}

int Workers(const Context& context) {
  std::vector<v1::GetStatusResponse> all;
  if (int failed = StatusOfAll(context, false, true, &all)) return failed;
  if (context.json) {
    json document = json::array();
    for (std::size_t i = 0; i < all.size(); ++i) {
      for (const auto& w : all[i].workers()) {
        json j = WorkerJson(w);
        j["server"] = context.targets[i];
        document.push_back(std::move(j));
      }
    }
    PrintJson(document);
    return kExitOk;
  }
  std::vector<std::string> header = {"WORKER", "MEMBER FOR", "IDLE", "PEER",
                                     "TENSORS"};
  if (Sharded(context)) header.insert(header.begin(), "SHARD");
  Table table(header);
  for (std::size_t i = 0; i < all.size(); ++i) {
    for (const auto& w : all[i].workers()) {
      std::vector<std::string> row = {w.worker_id(), Ago(w.member_for_ms()),
                                      Ago(w.idle_ms()), OrDash(w.peer()),
                                      OrDash(absl::StrJoin(w.tensors(), ","))};
      if (Sharded(context)) {
        row.insert(row.begin(), absl::StrCat(all[i].shard().index()));
      }
      table.Add(std::move(row));
    }
  }
  table.Print();
  return kExitOk;
}

int Barriers(const Context& context) {
  std::vector<v1::GetStatusResponse> all;
  if (int failed = StatusOfAll(context, false, false, &all)) return failed;
  if (context.json) {
    json document = json::array();
    for (std::size_t i = 0; i < all.size(); ++i) {
      for (const auto& b : all[i].barriers()) {
        json j = BarrierJson(b);
        j["server"] = context.targets[i];
        document.push_back(std::move(j));
      }
    }
    PrintJson(document);
    return kExitOk;
  }
  Table table({"BARRIER", "WAITING", "RELEASED", "WORKERS WAITING"});
  for (const v1::GetStatusResponse& r : all) {
    for (const auto& b : r.barriers()) {
      table.Add({b.name(), absl::StrCat(b.waiting(), " of ", b.count()),
                 absl::StrCat(b.released()),
                 OrDash(absl::StrJoin(b.waiting_workers(), ","))});
    }
  }
  table.Print();
  return kExitOk;
}

int History(const Context& context) {
  const std::string& tensor = context.args[0];
  json document = json::array();
  std::vector<std::string> header = {
      "VERSION", "CLOSED ON", "CONTRIBUTIONS", "DROPPED", "FIRST CONTRIBUTION",
      "CLOSED",  "TOOK"};
  if (Sharded(context)) header.insert(header.begin(), "SERVER");
  Table table(header);
  int found = 0;
  for (std::size_t i = 0; i < context.channels.size(); ++i) {
    auto stub = v1::Weightd::NewStub(context.channels[i]);
    grpc::ClientContext call;
    call.set_deadline(context.Deadline());
    v1::GetHistoryRequest request;
    request.set_tensor(tensor);
    request.set_last(static_cast<std::uint32_t>(
        std::min<std::int64_t>(context.last, kMaxLast)));
    v1::GetHistoryResponse response;
    const grpc::Status status = stub->GetHistory(&call, request, &response);
    // A tensor lives on one shard, or in parts on several.
    if (status.error_code() == grpc::StatusCode::NOT_FOUND &&
        Sharded(context)) {
      continue;
    }
    if (!status.ok()) {
      return Failed(context, absl::StrCat("history of ", tensor), status);
    }
    ++found;
    for (const v1::VersionRecord& r : response.records()) {
      // CLOSED_ON_LEASE_EXPIRY -> lease_expiry
      const std::string closed_on = absl::AsciiStrToLower(
          absl::StripPrefix(v1::ClosedOn_Name(r.closed_on()), "CLOSED_ON_"));
      if (context.json) {
        json contributions = json::array();
        for (const auto& c : r.contributions()) {
          contributions.push_back({{"worker_id", c.worker_id()},
                                   {"sequence", c.sequence()},
                                   {"weight", c.weight()},
                                   {"kind", UpdateKind_Name(c.kind())},
                                   {"complete", c.complete()}});
        }
        document.push_back(
            {{"server", context.targets[i]},
             {"version", r.version()},
             {"closed_on", closed_on},
             {"contributions", contributions},
             {"dropped", Strings(r.dropped())},
             {"first_contribution", UtcTime(r.first_contribution_unix_us())},
             {"closed", UtcTime(r.closed_unix_us())}});
        continue;
      }
      std::vector<std::string> contributions;
      for (const auto& c : r.contributions()) {
        contributions.push_back(
            absl::StrCat(c.worker_id().empty() ? "(hidden)" : c.worker_id(),
                         " #", c.sequence(), " w=", c.weight(),
                         c.kind() == v1::UPDATE_KIND_DELTA ? " delta" : "",
                         c.complete() ? "" : " (partial)"));
      }
      const std::int64_t took_us =
          r.first_contribution_unix_us() == 0
              ? 0
              : r.closed_unix_us() - r.first_contribution_unix_us();
      std::vector<std::string> row = {
          absl::StrCat(r.version()),
          closed_on,
          OrDash(absl::StrJoin(contributions, ", ")),
          OrDash(absl::StrJoin(r.dropped(), ",")),
          UtcTime(r.first_contribution_unix_us()),
          UtcTime(r.closed_unix_us()),
          absl::FormatDuration(absl::Microseconds(took_us))};
      if (Sharded(context)) {
        row.insert(row.begin(), context.targets[i]);
      }
      table.Add(std::move(row));
    }
    if (!context.json && response.records().empty()) {
      std::printf(
          "%s: no version recorded on %s (--history_per_tensor=0, "
          "or none published since the records began)\n",
          tensor.c_str(), context.targets[i].c_str());
    }
  }
  if (found == 0) {
    return Failed(context, absl::StrCat("history of ", tensor),
                  grpc::Status(grpc::StatusCode::NOT_FOUND,
                               "no server of --server holds tensor " + tensor));
  }
  if (context.json) {
    PrintJson(document);
  } else {
    table.Print();
  }
  return kExitOk;
}

int Snapshot(const Context& context) {
  json document = json::array();
  for (std::size_t i = 0; i < context.channels.size(); ++i) {
    auto stub = v1::Weightd::NewStub(context.channels[i]);
    grpc::ClientContext call;
    call.set_deadline(context.Deadline());
    v1::TakeSnapshotResponse response;
    const grpc::Status status = stub->TakeSnapshot(&call, {}, &response);
    if (!status.ok()) {
      return Failed(context, absl::StrCat("snapshot of ", context.targets[i]),
                    status);
    }
    if (context.json) {
      document.push_back(
          {{"server", context.targets[i]}, {"path", response.path()}});
    } else {
      std::printf("%s\n", response.path().c_str());
    }
  }
  if (context.json) PrintJson(document);
  return kExitOk;
}

int Drop(const Context& context) {
  const std::string& tensor = context.args[0];
  if (Sharded(context) && !context.force) {
    // All or nothing: a split tensor shared on one shard must not lose its
    // parts on the others. The servers refuse on their own too; this only
    // keeps the shards that would agree from going first.
    std::vector<v1::GetStatusResponse> all;
    if (int failed = StatusOfAll(context, true, false, &all)) return failed;
    for (std::size_t i = 0; i < all.size(); ++i) {
      for (const v1::TensorInfo& t : all[i].tensors()) {
        if (t.name() != tensor || t.participants() == 0) continue;
        return Failed(
            context, absl::StrCat("drop ", tensor),
            grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                         absl::StrCat("tensor ", tensor, " is shared by ",
                                      t.participants(), " worker(s) on ",
                                      context.targets[i],
                                      "; nothing was dropped: stop them "
                                      "first, or drop with --force")));
      }
    }
  }
  json document = json::array();
  int found = 0;
  std::vector<std::string> dropped_on;
  for (std::size_t i = 0; i < context.channels.size(); ++i) {
    auto stub = v1::Weightd::NewStub(context.channels[i]);
    grpc::ClientContext call;
    call.set_deadline(context.Deadline());
    v1::DropTensorRequest request;
    request.set_tensor(tensor);
    request.set_force(context.force);
    v1::DropTensorResponse response;
    const grpc::Status status = stub->DropTensor(&call, request, &response);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND &&
        Sharded(context)) {
      continue;
    }
    if (!status.ok()) {
      // Say what is done already: the parts on earlier shards are gone.
      return Failed(context,
                    dropped_on.empty()
                        ? absl::StrCat("drop ", tensor)
                        : absl::StrCat("drop ", tensor, " (already dropped on ",
                                       absl::StrJoin(dropped_on, ", "),
                                       "; failed on ", context.targets[i], ")"),
                    status);
    }
    ++found;
    dropped_on.push_back(context.targets[i]);
    if (context.json) {
      document.push_back(
          {{"server", context.targets[i]},
           {"tensor", tensor},
           {"freed_bytes", response.freed_bytes()},
           {"removed_workers", Strings(response.removed_workers())}});
    } else {
      std::printf(
          "dropped %s%s: %llu bytes freed%s%s\n", tensor.c_str(),
          Sharded(context) ? absl::StrCat(" on ", context.targets[i]).c_str()
                           : "",
          static_cast<unsigned long long>(response.freed_bytes()),
          response.removed_workers().empty() ? "" : "; left its group: ",
          absl::StrJoin(response.removed_workers(), ",").c_str());
    }
  }
  if (found == 0) {
    return Failed(context, absl::StrCat("drop ", tensor),
                  grpc::Status(grpc::StatusCode::NOT_FOUND,
                               "no server of --server holds tensor " + tensor));
  }
  if (context.json) PrintJson(document);
  return kExitOk;
}

}  // namespace weightd::ctl
