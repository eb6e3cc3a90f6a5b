// libFuzzer target: random calls, message streams and chunk streams against
// a real weightd server in this process (127.0.0.1, port 0), built with
// ASan/UBSan. Besides crashes and hangs it checks one property after every
// call: a call the server refuses leaves every published value and version,
// sharing group, open-round count and membership exactly as it was.
//
// The server runs with an --auth_policy (tokens "admin", "worker" for the
// tensors t* and enc/*, "reader"); each call carries the admin's token most
// of the time, so that inputs reach the store, and otherwise another
// principal's, none, or a malformed or unknown authorization header.
//
// One server lives for the whole run (starting one per input would cost
// more than the input), so a crash may depend on the inputs before it:
// reproduce with the run's corpus, not only the crashing input.
//
//   build/asan/tests/service_fuzzer -max_total_time=60
#include <fuzzer/FuzzedDataProvider.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common/policy_proto.h"
#include "common/policy_spec.h"
#include "server/service/server.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

constexpr std::uint64_t kChunkBytes = 4096;

// What the calls got, by kind, printed at exit: shows how deep the inputs
// reach (successful joins and pushes, closed rounds), not just that they ran.
constexpr const char* kKinds[] = {"join",     "push", "push",
                                  "pushpull", "pull", "unary"};
struct Counts {
  std::map<std::string, std::map<int, long>> by_kind;  // kind -> code -> n.
};
Counts& Tally() {
  static Counts* counts = new Counts;
  return *counts;
}

struct Harness {
  std::unique_ptr<service::Server> server;
  std::unique_ptr<v1::Weightd::Stub> stub;
  std::vector<std::uint64_t> leases;  // Handed out by successful Joins.
  struct Member {
    std::uint64_t lease = 0;
    std::vector<std::string> tensors;
    std::uint64_t next_sequence = 1;
  };
  std::map<std::string, Member> members;  // By worker id, latest Join.
};

// Tensors with fixed shapes, so that well-formed calls agree with each
// other and reach the round logic.
struct Known {
  const char* name;
  std::vector<std::int64_t> shape;
  std::uint64_t bytes;
};
const std::vector<Known>& KnownTensors() {
  static const auto* known =
      new std::vector<Known>{{"t0", {8}, 32},
                             {"t1", {3000}, 12000},  // 3 chunks.
                             {"enc/w", {64, 64}, 16384},
                             {"head/b", {}, 4}};
  return *known;
}

Harness& Get() {
  static Harness* harness = [] {
    auto* h = new Harness;
    service::ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.log_rounds = false;
    options.store.chunk_bytes = kChunkBytes;
    options.store.max_tensor_bytes = 64 << 10;
    options.store.max_total_bytes = 16 << 20;
    options.store.max_workers = 64;
    // No background change: only the fuzzer's calls move the state.
    options.store.lease_timeout = absl::Hours(24);
    char policy[] = "/tmp/weightd-fuzz-policy.XXXXXX";
    const int fd = ::mkstemp(policy);
    if (fd < 0) std::abort();
    // sha256 of "admin", "worker" and "reader".
    const std::string json = R"({"principals": [
      {"name": "admin", "role": "ADMIN", "token_sha256": ["8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"]},
      {"name": "worker", "role": "WORKER", "tensors": ["t*", "enc/*"], "worker_ids": ["*"],
       "token_sha256": ["87eba76e7f3164534045ba922e7770fb58bbd14ad732bbf5ba6f11cc56989e6e"]},
      {"name": "reader", "role": "READER", "tensors": ["*"],
       "token_sha256": ["3d0941964aa3ebdcb00ccef58b1bb399f9f898465e9886d5aec7f31090a0fb30"]}]})";
    if (::write(fd, json.data(), json.size()) !=
        static_cast<ssize_t>(json.size())) {
      std::abort();
    }
    ::close(fd);
    options.auth_policy = policy;
    auto server = service::Server::Start(std::move(options));
    if (!server.ok()) {
      std::fprintf(stderr, "cannot start server: %s\n",
                   server.status().ToString().c_str());
      std::abort();
    }
    h->server = std::move(*server);
    h->stub = v1::Weightd::NewStub(grpc::CreateChannel(
        h->server->address(), grpc::InsecureChannelCredentials()));
    std::atexit([] {
      for (const auto& [kind, codes] : Tally().by_kind) {
        std::fprintf(stderr, "calls %-8s", kind.c_str());
        for (const auto& [code, n] : codes) {
          std::fprintf(stderr, " code%d=%ld", code, n);
        }
        std::fprintf(stderr, "\n");
      }
      std::fprintf(stderr, "rounds closed %lu, tensors %zu\n",
                   static_cast<unsigned long>(
                       Get().server->store().Status().rounds_closed),
                   Get().server->store().Status().tensors.size());
    });
    return h;
  }();
  return *harness;
}

void SetDeadline(grpc::ClientContext& context, int ms) {
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(ms));
}

// Printable ASCII (what a header value may hold) of random length.
std::string HeaderText(FuzzedDataProvider& in) {
  std::string text = in.ConsumeRandomLengthString(100);
  for (char& c : text) c = static_cast<char>(0x20 + (c & 0x7f) % 0x5f);
  return text;
}

// Who the call is (see the top of the file).
void Credentials(FuzzedDataProvider& in, grpc::ClientContext& context) {
  // 0 (what an exhausted input gives) is the admin: inputs reach the store.
  switch (in.ConsumeIntegralInRange(0, 11)) {
    case 7:
      return;  // No credentials.
    case 8:
      return context.AddMetadata("authorization", "Bearer worker");
    case 9:
      return context.AddMetadata("authorization", "Bearer reader");
    case 10:
      return context.AddMetadata("authorization", HeaderText(in));
    case 11:
      return context.AddMetadata("authorization", "Bearer " + HeaderText(in));
    default:
      return context.AddMetadata("authorization", "Bearer admin");
  }
}

std::string Name(FuzzedDataProvider& in) {
  static const char* const kNames[] = {"t0", "t1", "enc/w", "head/b", ""};
  if (in.ConsumeIntegralInRange(0, 7) == 0) {
    return in.ConsumeRandomLengthString(300);
  }
  return kNames[in.ConsumeIntegralInRange<int>(0, 4)];
}

// The chunks of a whole tensor of `bytes`, in order, finite values.
template <typename Request, typename SetChunk>
void WholeTensor(FuzzedDataProvider& in, std::uint32_t index,
                 std::uint64_t bytes, SetChunk set_chunk,
                 std::vector<Request>& out) {
  const float v = in.ConsumeFloatingPointInRange<float>(-1e3f, 1e3f);
  for (std::uint64_t offset = 0; offset < bytes; offset += kChunkBytes) {
    const std::uint64_t length = std::min(kChunkBytes, bytes - offset);
    std::vector<float> floats(length / 4, v);
    Request m;
    v1::TensorChunk* chunk = set_chunk(m);
    chunk->set_tensor_index(index);
    chunk->set_offset(offset);
    chunk->set_data(reinterpret_cast<const char*>(floats.data()), length);
    out.push_back(std::move(m));
  }
}

std::uint64_t Lease(FuzzedDataProvider& in, const Harness& h) {
  if (!h.leases.empty() && in.ConsumeIntegralInRange<int>(0, 3) != 0) {
    return h
        .leases[in.ConsumeIntegralInRange<std::size_t>(0, h.leases.size() - 1)];
  }
  return in.ConsumeIntegral<std::uint64_t>();
}

// Mostly well-formed chunks (right offset, right length), sometimes not.
void FillChunk(FuzzedDataProvider& in, std::uint32_t tensors,
               std::map<std::uint32_t, std::uint64_t>& next,
               v1::TensorChunk* chunk) {
  const std::uint32_t index =
      in.ConsumeIntegralInRange<std::uint32_t>(0, tensors + 1);
  chunk->set_tensor_index(index);
  std::uint64_t offset = next[index];
  std::size_t length = kChunkBytes;
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
      offset = in.ConsumeIntegral<std::uint64_t>();
      break;
    case 1:
      length = in.ConsumeIntegralInRange<std::size_t>(0, 9000);
      break;
    case 2:
      length = 4 * in.ConsumeIntegralInRange<std::size_t>(0, 1024);
      break;
    default:
      break;
  }
  chunk->set_offset(offset);
  std::string data;
  if (in.ConsumeBool()) {
    data = in.ConsumeBytesAsString(length);
  } else {
    // Finite floats of one value: the common case of real traffic.
    const float v = in.ConsumeFloatingPointInRange<float>(-1e3f, 1e3f);
    std::vector<float> floats(length / 4, v);
    data.assign(reinterpret_cast<const char*>(floats.data()),
                floats.size() * 4);
  }
  next[index] = offset + data.size();
  chunk->set_data(std::move(data));
}

// A well-formed Join of known tensors from a small pool of workers.
grpc::Status GoodJoin(FuzzedDataProvider& in, Harness& h) {
  grpc::ClientContext context;
  Credentials(in, context);
  SetDeadline(context, 2000);
  v1::JoinResponse response;
  auto stream = h.stub->Join(&context, &response);
  v1::JoinRequest header;
  const std::string worker =
      "w" + std::to_string(in.ConsumeIntegralInRange(0, 3));
  header.mutable_header()->set_worker_id(worker);
  std::vector<std::string> names;
  std::vector<v1::JoinRequest> chunks;
  const auto& known = KnownTensors();
  for (std::size_t k = 0; k < known.size(); ++k) {
    if (!in.ConsumeBool()) continue;
    v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
    d->set_name(known[k].name);
    for (std::int64_t dim : known[k].shape) d->add_shape(dim);
    // A policy the pushes then run through (the first Join creating the
    // tensor decides; another one later is ALREADY_EXISTS). No bounded
    // staleness: a push waiting for its turn would hold up the run.
    static const char* const kPolicies[] = {
        "",
        "aggregator=median",
        "optimizer=adam",
        "optimizer=yogi aggregator=trimmed_mean trim=0.25",
        "aggregator=clipped_mean clip_norm=1 noise_multiplier=0.5",
        "consistency=async optimizer=momentum"};
    PolicySpecToProto(
        *ParsePolicySpec(kPolicies[in.ConsumeIntegralInRange<std::size_t>(
            0, std::size(kPolicies) - 1)]),
        d->mutable_policy());
    names.push_back(known[k].name);
    WholeTensor<v1::JoinRequest>(
        in, names.size() - 1, known[k].bytes,
        [](v1::JoinRequest& m) { return m.mutable_initial_value(); }, chunks);
  }
  stream->Write(header);
  for (const v1::JoinRequest& m : chunks) {
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (status.ok()) {
    h.leases.push_back(response.lease_id());
    h.members[worker] = {response.lease_id(), names, response.next_sequence()};
  }
  return status;
}

// A well-formed push of a member's tensors to their open rounds.
template <typename Request>
std::vector<Request> GoodPush(FuzzedDataProvider& in, Harness& h) {
  std::vector<Request> messages;
  if (h.members.empty()) return messages;
  auto it = h.members.begin();
  std::advance(it,
               in.ConsumeIntegralInRange<std::size_t>(0, h.members.size() - 1));
  Request header;
  v1::PushHeader* ph = header.mutable_header();
  ph->set_lease_id(it->second.lease);
  ph->set_sequence(it->second.next_sequence++);
  ph->set_kind(in.ConsumeBool() ? v1::UPDATE_KIND_WEIGHTS
                                : v1::UPDATE_KIND_DELTA);
  ph->set_weight(in.ConsumeFloatingPointInRange<double>(0.5, 100));
  messages.push_back(header);
  std::uint32_t index = 0;
  for (const std::string& name : it->second.tensors) {
    auto info = h.server->store().Describe(name);
    if (!info.ok()) continue;
    v1::PushedTensor* t = ph->add_tensors();
    t->set_name(name);
    t->set_round(info->version);
    std::uint64_t bytes = 4;
    for (std::int64_t dim : info->shape) bytes *= dim;
    WholeTensor<Request>(
        in, index++, bytes, [](Request& m) { return m.mutable_chunk(); },
        messages);
  }
  *messages[0].mutable_header() = *ph;
  return messages;
}

grpc::Status Join(FuzzedDataProvider& in, Harness& h) {
  if (in.ConsumeBool()) return GoodJoin(in, h);
  grpc::ClientContext context;
  Credentials(in, context);
  SetDeadline(context, 500);
  v1::JoinResponse response;
  auto stream = h.stub->Join(&context, &response);
  v1::JoinRequest header;
  header.mutable_header()->set_worker_id(
      in.ConsumeBool()
          ? std::string("w") + std::to_string(in.ConsumeIntegralInRange(0, 5))
          : in.ConsumeRandomLengthString(40));
  const int tensors = in.ConsumeIntegralInRange(0, 3);
  for (int i = 0; i < tensors; ++i) {
    v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
    d->set_name(Name(in));
    if (in.ConsumeBool()) {  // Any policy, valid or not.
      v1::TensorPolicy* p = d->mutable_policy();
      p->set_consistency(
          static_cast<v1::Mode>(in.ConsumeIntegralInRange(0, 5)));
      p->set_optimizer(in.ConsumeBool() ? "adam"
                                        : in.ConsumeRandomLengthString(20));
      p->set_aggregator(in.ConsumeBool() ? "median"
                                         : in.ConsumeRandomLengthString(20));
      const int params = in.ConsumeIntegralInRange(0, 70);
      for (int k = 0; k < params; ++k) {
        (*p->mutable_params())[in.ConsumeBool()
                                   ? std::string("lr")
                                   : in.ConsumeRandomLengthString(70)] =
            in.ConsumeFloatingPoint<double>();
      }
    }
    const int rank = in.ConsumeIntegralInRange(0, 3);
    for (int r = 0; r < rank; ++r) {
      d->add_shape(in.ConsumeIntegralInRange(0, 7) != 0
                       ? in.ConsumeIntegralInRange<std::int64_t>(1, 64)
                       : in.ConsumeIntegral<std::int64_t>());
    }
  }
  if (in.ConsumeIntegralInRange(0, 9) != 0) stream->Write(header);
  std::map<std::uint32_t, std::uint64_t> next;
  const int chunks = in.ConsumeIntegralInRange(0, 6);
  for (int i = 0; i < chunks; ++i) {
    v1::JoinRequest m;
    if (in.ConsumeIntegralInRange(0, 9) == 0) {
      *m.mutable_header() = header.header();
    } else {
      FillChunk(in, tensors, next, m.mutable_initial_value());
    }
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (status.ok()) h.leases.push_back(response.lease_id());
  return status;
}

v1::PushHeader PushHeader(FuzzedDataProvider& in, Harness& h, int tensors) {
  v1::PushHeader header;
  header.set_lease_id(Lease(in, h));
  header.set_sequence(in.ConsumeIntegralInRange<std::uint64_t>(0, 40));
  header.set_kind(static_cast<v1::UpdateKind>(in.ConsumeIntegralInRange(0, 3)));
  if (in.ConsumeBool()) header.set_weight(in.ConsumeFloatingPoint<double>());
  for (int i = 0; i < tensors; ++i) {
    v1::PushedTensor* t = header.add_tensors();
    t->set_name(Name(in));
    t->set_round(in.ConsumeIntegralInRange<std::uint64_t>(0, 4));
  }
  return header;
}

// Mutates one message of a well-formed stream, or cuts the stream short.
template <typename Request>
void Mutate(FuzzedDataProvider& in, std::vector<Request>& messages) {
  if (messages.empty()) return;
  // An exhausted input reads as zeros: zero means well-formed.
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 3:
      messages.resize(
          in.ConsumeIntegralInRange<std::size_t>(0, messages.size() - 1));
      break;
    case 4: {
      Request& m = messages[in.ConsumeIntegralInRange<std::size_t>(
          0, messages.size() - 1)];
      if (m.has_chunk()) {
        std::string* data = m.mutable_chunk()->mutable_data();
        if (!data->empty()) {
          (*data)[in.ConsumeIntegralInRange<std::size_t>(0, data->size() - 1)] =
              in.ConsumeIntegral<char>();
        }
      }
      break;
    }
    case 5:
      messages.push_back(messages[in.ConsumeIntegralInRange<std::size_t>(
          0, messages.size() - 1)]);
      break;
    default:
      break;  // Left well-formed.
  }
}

grpc::Status Push(FuzzedDataProvider& in, Harness& h) {
  if (in.ConsumeBool()) {
    std::vector<v1::PushRequest> messages = GoodPush<v1::PushRequest>(in, h);
    Mutate(in, messages);
    grpc::ClientContext context;
    Credentials(in, context);
    SetDeadline(context, 2000);
    v1::PushResponse response;
    auto stream = h.stub->Push(&context, &response);
    for (const auto& m : messages) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
    return stream->Finish();
  }
  grpc::ClientContext context;
  Credentials(in, context);
  SetDeadline(context, 500);
  v1::PushResponse response;
  auto stream = h.stub->Push(&context, &response);
  const int tensors = in.ConsumeIntegralInRange(0, 3);
  v1::PushRequest header;
  *header.mutable_header() = PushHeader(in, h, tensors);
  if (in.ConsumeIntegralInRange(0, 9) != 0) stream->Write(header);
  std::map<std::uint32_t, std::uint64_t> next;
  const int chunks = in.ConsumeIntegralInRange(0, 8);
  for (int i = 0; i < chunks; ++i) {
    v1::PushRequest m;
    FillChunk(in, tensors, next, m.mutable_chunk());
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  return stream->Finish();
}

grpc::Status PushPull(FuzzedDataProvider& in, Harness& h) {
  grpc::ClientContext context;
  Credentials(in, context);
  SetDeadline(context, 100);
  auto stream = h.stub->PushPull(&context);
  if (in.ConsumeBool()) {
    std::vector<v1::PushPullRequest> messages =
        GoodPush<v1::PushPullRequest>(in, h);
    Mutate(in, messages);
    for (const auto& m : messages) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
    v1::PushPullResponse response;
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }
  const int tensors = in.ConsumeIntegralInRange(0, 2);
  v1::PushPullRequest header;
  *header.mutable_header() = PushHeader(in, h, tensors);
  stream->Write(header);
  std::map<std::uint32_t, std::uint64_t> next;
  const int chunks = in.ConsumeIntegralInRange(0, 4);
  for (int i = 0; i < chunks; ++i) {
    v1::PushPullRequest m;
    FillChunk(in, tensors, next, m.mutable_chunk());
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  v1::PushPullResponse response;
  while (stream->Read(&response)) {
  }
  return stream->Finish();
}

grpc::Status Pull(FuzzedDataProvider& in, Harness& h) {
  grpc::ClientContext context;
  Credentials(in, context);
  SetDeadline(context, 100);
  v1::PullRequest request;
  request.set_lease_id(Lease(in, h));
  const int tensors = in.ConsumeIntegralInRange(0, 3);
  for (int i = 0; i < tensors; ++i) {
    v1::PulledTensor* t = request.add_tensors();
    t->set_name(Name(in));
    t->set_min_version(in.ConsumeIntegralInRange<std::uint64_t>(0, 3));
  }
  auto reader = h.stub->Pull(&context, request);
  v1::PullResponse response;
  while (reader->Read(&response)) {
  }
  return reader->Finish();
}

grpc::Status Unary(FuzzedDataProvider& in, Harness& h) {
  grpc::ClientContext context;
  Credentials(in, context);
  SetDeadline(context, 100);
  switch (in.ConsumeIntegralInRange(0, 6)) {
    case 0: {
      v1::LeaveRequest request;
      request.set_lease_id(Lease(in, h));
      v1::LeaveResponse response;
      return h.stub->Leave(&context, request, &response);
    }
    case 1: {
      v1::HeartbeatRequest request;
      request.set_lease_id(Lease(in, h));
      v1::HeartbeatResponse response;
      return h.stub->Heartbeat(&context, request, &response);
    }
    case 2: {
      v1::BarrierRequest request;
      request.set_lease_id(Lease(in, h));
      request.set_name(Name(in));
      request.set_count(in.ConsumeIntegralInRange<std::uint32_t>(0, 3));
      v1::BarrierResponse response;
      return h.stub->Barrier(&context, request, &response);
    }
    case 3: {
      v1::TakeSnapshotResponse response;
      return h.stub->TakeSnapshot(&context, {}, &response);
    }
    case 4: {
      v1::GetHistoryRequest request;
      request.set_tensor(Name(in));
      request.set_from_version(in.ConsumeIntegral<std::uint64_t>());
      request.set_to_version(in.ConsumeIntegral<std::uint64_t>());
      v1::GetHistoryResponse response;
      return h.stub->GetHistory(&context, request, &response);
    }
    case 5: {
      v1::DropTensorRequest request;
      request.set_tensor(Name(in));
      request.set_force(in.ConsumeBool());
      v1::DropTensorResponse response;
      return h.stub->DropTensor(&context, request, &response);
    }
    default: {
      v1::GetStatusRequest request;
      request.set_include_tensors(in.ConsumeBool());
      request.set_include_workers(in.ConsumeBool());
      v1::GetStatusResponse response;
      return h.stub->GetStatus(&context, request, &response);
    }
  }
}

// What a refused call must leave alone: every published value and version,
// each sharing group and how many of it contributed to the open round, and
// the members with their leases and tensors.
struct State {
  std::map<std::string, std::pair<std::uint64_t, std::vector<float>>> values;
  std::vector<std::tuple<std::string, std::uint32_t, std::uint32_t>> groups;
  std::vector<std::tuple<std::string, std::uint64_t, std::vector<std::string>>>
      members;
  bool operator==(const State& o) const {
    return values == o.values && groups == o.groups && members == o.members;
  }
  bool operator!=(const State& o) const { return !(*this == o); }
};

State Observe(Harness& h) {
  State state;
  core::TensorStore& store = h.server->store();
  const core::StoreStatus status = store.Status();
  for (const core::TensorInfo& t : status.tensors) {
    auto read = store.Read({t.name});
    if (!read.ok()) std::abort();
    state.values[t.name] = {(*read)[0].version, *(*read)[0].value};
    state.groups.emplace_back(t.name, t.participants, t.contributed);
  }
  for (const core::WorkerInfo& w : status.workers) {
    state.members.emplace_back(w.worker_id, w.lease_id, w.tensors);
  }
  return state;
}

}  // namespace
}  // namespace weightd

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using namespace weightd;
  Harness& h = Get();
  FuzzedDataProvider in(data, size);
  // A call that ended at its deadline may still be at work in the server:
  // the next call's check could see its effect, so it is skipped.
  static bool inconclusive = false;
  for (int call = 0; call < 8 && in.remaining_bytes() > 0; ++call) {
    const int kind = in.ConsumeIntegralInRange(0, 5);
    const State before = Observe(h);
    grpc::Status status;
    switch (kind) {
      case 0:
        status = Join(in, h);
        break;
      case 1:
      case 2:
        status = Push(in, h);
        break;
      case 3:
        status = PushPull(in, h);
        break;
      case 4:
        status = Pull(in, h);
        break;
      default:
        status = Unary(in, h);
        break;
    }
    ++Tally().by_kind[kKinds[kind]][status.error_code()];
    const bool checkable = !inconclusive;
    inconclusive = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                   status.error_code() == grpc::StatusCode::CANCELLED;
    // A refused call changes nothing. (A PushPull that times out in its
    // wait had its push taken: not a refusal.)
    if (!checkable || status.ok() || inconclusive) continue;
    if (Observe(h) != before) {
      std::fprintf(stderr, "call kind %d failed (%d: %s) but changed state\n",
                   kind, status.error_code(), status.error_message().c_str());
      std::abort();
    }
  }
  // The server still answers.
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer admin");
  SetDeadline(context, 10000);
  v1::GetStatusResponse response;
  if (!h.stub->GetStatus(&context, {}, &response).ok()) {
    std::fprintf(stderr, "server stopped answering\n");
    std::abort();
  }
  return 0;
}
