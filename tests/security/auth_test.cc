// Principals, roles and leases against the real weightd binary over TLS,
// certificates made by openssl (tests/testing/make_certs.sh), callers told
// apart by bearer tokens:
//  - every RPC tried by no principal, a reader, a worker outside its
//    patterns, a worker inside them and an admin, with the expected code in
//    each cell and the stored weights bit-identical after every refusal;
//  - a second principal using the first one's lease: PERMISSION_DENIED,
//    the first worker unaffected;
//  - the policy read again on SIGHUP and on change: a removed token is
//    refused on its next call, and a policy that cannot be used leaves the
//    old one in force.
//
// Usage: auth_test PATH_TO_WEIGHTD
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/certs.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/eventually.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

using grpc::StatusCode;
using ::testing::ElementsAre;
using ::weightd::testing::Eventually;

std::string g_weightd;  // argv[1]

constexpr std::uint64_t kChunkBytes = 4096;
constexpr int kElements = 4;

// sha256 of "admin-token", "reader-token", "worker-a-token",
// "worker-b-token" (printf %s TOKEN | sha256sum).
std::string Sha256(const std::string& text) {
  const std::string command =
      absl::StrCat("printf %s '", text, "' | sha256sum | cut -c1-64");
  FILE* pipe = ::popen(command.c_str(), "r");
  char hex[65] = {};
  if (pipe == nullptr || std::fread(hex, 1, 64, pipe) != 64) hex[0] = '\0';
  if (pipe != nullptr) ::pclose(pipe);
  return hex;
}

std::string Policy(bool with_worker_b) {
  std::string p = absl::StrCat(
      R"({"principals": [)",
      R"({"name": "ops", "role": "ADMIN", "token_sha256": [")",
      Sha256("admin-token"), R"("]},)",
      R"({"name": "eval", "role": "READER", "tensors": ["shared/*"], "token_sha256": [")",
      Sha256("reader-token"), R"("]},)",
      R"({"name": "team-a", "role": "WORKER", "tensors": ["shared/*", "a/*"], "worker_ids": ["a-*"], "token_sha256": [")",
      Sha256("worker-a-token"), R"("]})");
  if (with_worker_b) {
    absl::StrAppend(
        &p,
        R"(, {"name": "team-b", "role": "WORKER", "tensors": ["shared/*", "b/*"], "worker_ids": ["b-*"], "token_sha256": [")",
        Sha256("worker-b-token"), R"("]})");
  }
  return p + "]}";
}

// A caller: its token ("" for none).
struct Caller {
  const char* name;
  const char* token;
};
constexpr Caller kNobody{"no principal", ""};
constexpr Caller kReader{"reader", "reader-token"};
constexpr Caller kWorkerA{"worker team-a", "worker-a-token"};
constexpr Caller kWorkerB{"worker team-b", "worker-b-token"};
constexpr Caller kAdmin{"admin", "admin-token"};

class Connection {
 public:
  Connection(const std::string& address, const std::string& ca_file) {
    std::ifstream in(ca_file);
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs.assign(std::istreambuf_iterator<char>(in), {});
    stub_ = v1::Weightd::NewStub(
        grpc::CreateChannel(address, grpc::SslCredentials(tls)));
  }

  std::unique_ptr<grpc::ClientContext> Context(const Caller& caller) const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(20));
    if (*caller.token != '\0') {
      context->AddMetadata("authorization",
                           absl::StrCat("Bearer ", caller.token));
    }
    return context;
  }

  // Join as `worker_id` declaring `tensors`; those in `initial` carry an
  // initial value of kElements copies of it.
  grpc::Status Join(const Caller& caller, const std::string& worker_id,
                    const std::vector<std::string>& tensors,
                    const std::map<std::string, float>& initial = {},
                    std::uint64_t* lease = nullptr) {
    auto context = Context(caller);
    v1::JoinResponse response;
    auto stream = stub_->Join(context.get(), &response);
    v1::JoinRequest header;
    header.mutable_header()->set_worker_id(worker_id);
    header.mutable_header()->set_instance(::getpid() * 1000 + ++instances_);
    for (const std::string& name : tensors) {
      v1::TensorDeclaration* d = header.mutable_header()->add_tensors();
      d->set_name(name);
      d->add_shape(kElements);
    }
    stream->Write(header);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      auto it = initial.find(tensors[i]);
      if (it == initial.end()) continue;
      const std::vector<float> value(kElements, it->second);
      v1::JoinRequest chunk;
      chunk.mutable_initial_value()->set_tensor_index(i);
      chunk.mutable_initial_value()->set_data(value.data(),
                                              value.size() * sizeof(float));
      stream->Write(chunk);
    }
    stream->WritesDone();
    grpc::Status status = stream->Finish();
    if (lease != nullptr) *lease = response.lease_id();
    return status;
  }

  template <typename Request>
  static void FillPush(Request* header, std::uint64_t lease,
                       std::uint64_t sequence, const std::string& tensor) {
    auto* h = header->mutable_header();
    h->set_lease_id(lease);
    h->set_sequence(sequence);
    h->set_kind(v1::UPDATE_KIND_WEIGHTS);
    h->add_tensors()->set_name(tensor);
  }

  grpc::Status Push(const Caller& caller, std::uint64_t lease,
                    const std::string& tensor, float value) {
    auto context = Context(caller);
    v1::PushResponse response;
    auto stream = stub_->Push(context.get(), &response);
    v1::PushRequest header;
    FillPush(&header, lease, ++sequence_, tensor);
    stream->Write(header);
    const std::vector<float> data(kElements, value);
    v1::PushRequest chunk;
    chunk.mutable_chunk()->set_data(data.data(), data.size() * sizeof(float));
    stream->Write(chunk);
    stream->WritesDone();
    return stream->Finish();
  }

  grpc::Status PushPull(const Caller& caller, std::uint64_t lease,
                        const std::string& tensor, float value) {
    auto context = Context(caller);
    auto stream = stub_->PushPull(context.get());
    v1::PushPullRequest header;
    FillPush(&header, lease, ++sequence_, tensor);
    stream->Write(header);
    const std::vector<float> data(kElements, value);
    v1::PushPullRequest chunk;
    chunk.mutable_chunk()->set_data(data.data(), data.size() * sizeof(float));
    stream->Write(chunk);
    stream->WritesDone();
    v1::PushPullResponse response;
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }

  // The values and versions of `tensors`, as bytes.
  grpc::Status Pull(const Caller& caller,
                    const std::vector<std::string>& tensors,
                    std::uint64_t lease = 0, std::string* bytes = nullptr) {
    auto context = Context(caller);
    v1::PullRequest request;
    request.set_lease_id(lease);
    for (const std::string& name : tensors) {
      request.add_tensors()->set_name(name);
    }
    auto stream = stub_->Pull(context.get(), request);
    v1::PullResponse response;
    while (stream->Read(&response)) {
      if (bytes == nullptr) continue;
      if (response.has_header()) {
        for (const v1::TensorInfo& t : response.header().tensors()) {
          absl::StrAppend(bytes, t.name(), "@", t.version(), ";");
        }
      } else {
        bytes->append(response.chunk().data());
      }
    }
    return stream->Finish();
  }

  grpc::Status Leave(const Caller& caller, std::uint64_t lease) {
    auto context = Context(caller);
    v1::LeaveRequest request;
    request.set_lease_id(lease);
    v1::LeaveResponse response;
    return stub_->Leave(context.get(), request, &response);
  }

  grpc::Status Heartbeat(const Caller& caller, std::uint64_t lease) {
    auto context = Context(caller);
    v1::HeartbeatRequest request;
    request.set_lease_id(lease);
    v1::HeartbeatResponse response;
    return stub_->Heartbeat(context.get(), request, &response);
  }

  grpc::Status Barrier(const Caller& caller, std::uint64_t lease) {
    auto context = Context(caller);
    v1::BarrierRequest request;
    request.set_lease_id(lease);
    request.set_name("alone");
    request.set_count(1);
    v1::BarrierResponse response;
    return stub_->Barrier(context.get(), request, &response);
  }

  grpc::Status GetStatus(const Caller& caller,
                         v1::GetStatusResponse* response) {
    auto context = Context(caller);
    v1::GetStatusRequest request;
    request.set_include_workers(true);
    return stub_->GetStatus(context.get(), request, response);
  }

  grpc::Status TakeSnapshot(const Caller& caller) {
    auto context = Context(caller);
    v1::TakeSnapshotResponse response;
    return stub_->TakeSnapshot(context.get(), {}, &response);
  }

  grpc::Status GetHistory(const Caller& caller, const std::string& tensor,
                          v1::GetHistoryResponse* response = nullptr) {
    auto context = Context(caller);
    v1::GetHistoryRequest request;
    request.set_tensor(tensor);
    v1::GetHistoryResponse ignored;
    return stub_->GetHistory(context.get(), request,
                             response != nullptr ? response : &ignored);
  }

  grpc::Status DropTensor(const Caller& caller, const std::string& tensor) {
    auto context = Context(caller);
    v1::DropTensorRequest request;
    request.set_tensor(tensor);
    v1::DropTensorResponse response;
    return stub_->DropTensor(context.get(), request, &response);
  }

  grpc::Status AttachSegment(const Caller& caller, std::uint64_t lease) {
    auto context = Context(caller);
    v1::AttachSegmentRequest request;
    request.set_lease_id(lease);
    request.set_pid(::getpid());
    request.set_fd(0);  // Standard input: no memfd, refused.
    request.set_size(4096);
    request.set_token(std::string(16, '\0'));
    v1::AttachSegmentResponse response;
    return stub_->AttachSegment(context.get(), request, &response);
  }

  grpc::Status PushSegment(const Caller& caller, std::uint64_t lease,
                           const std::string& tensor) {
    auto context = Context(caller);
    v1::PushSegmentRequest request;
    FillPush(&request, lease, ++sequence_, tensor);
    request.add_places();
    v1::PushSegmentResponse response;
    return stub_->PushSegment(context.get(), request, &response);
  }

  grpc::Status PullSegment(const Caller& caller, std::uint64_t lease,
                           const std::string& tensor) {
    auto context = Context(caller);
    v1::PullSegmentRequest request;
    request.mutable_request()->set_lease_id(lease);
    request.mutable_request()->add_tensors()->set_name(tensor);
    request.add_places();
    v1::PullSegmentResponse response;
    return stub_->PullSegment(context.get(), request, &response);
  }

 private:
  std::unique_ptr<v1::Weightd::Stub> stub_;
  std::uint64_t sequence_ = 0;
  std::uint64_t instances_ = 0;
};

std::string CodeName(StatusCode code) {
  switch (code) {
    case StatusCode::OK:
      return "OK";
    case StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    default:
      return absl::StrCat("code ", static_cast<int>(code));
  }
}

class AuthTest : public ::testing::Test {
 protected:
  // Only SIGHUP reads the policy again, unless a test says otherwise.
  explicit AuthTest(const char* reload_interval = "1h")
      : reload_interval_(reload_interval) {}

  void SetUp() override {
    certs_ = testing::MakeCerts();
    ASSERT_FALSE(certs_.empty());
    policy_ = certs_ + "/policy.json";
    WritePolicy(Policy(true));
    daemon_ = std::make_unique<testing::DaemonProcess>(
        g_weightd, "auth",
        std::vector<std::string>{
            "--tls_cert=" + certs_ + "/server.crt",
            "--tls_key=" + certs_ + "/server.key", "--auth_policy=" + policy_,
            absl::StrCat("--auth_reload_interval=", reload_interval_),
            "--mode=async", absl::StrCat("--chunk_bytes=", kChunkBytes),
            "--log_level=warn", "--snapshot_dir=" + certs_ + "/snapshots"});
    ASSERT_FALSE(daemon_->address().empty()) << "weightd did not start";
    c_ = std::make_unique<Connection>(daemon_->address(), certs_ + "/ca.crt");
    ASSERT_TRUE(c_->Join(kWorkerA, "a-0", {"shared/w", "a/w"},
                         {{"shared/w", 1.0f}, {"a/w", 1.0f}}, &lease_a_)
                    .ok());
    ASSERT_TRUE(c_->Join(kWorkerB, "b-0", {"shared/w", "b/w"}, {{"b/w", 2.0f}},
                         &lease_b_)
                    .ok());
  }
  void TearDown() override {
    c_.reset();  // Else the daemon waits its grace for the connection.
    daemon_.reset();
    if (!certs_.empty()) std::system(("rm -rf '" + certs_ + "'").c_str());
  }

  void WritePolicy(const std::string& text) {
    const std::string tmp = policy_ + ".tmp";
    std::ofstream(tmp) << text;
    std::rename(tmp.c_str(), policy_.c_str());
  }

  // Every tensor's value and version, as the admin pulls them.
  std::string Weights() {
    std::string bytes;
    EXPECT_TRUE(c_->Pull(kAdmin, {"a/w", "b/w", "shared/w"}, 0, &bytes).ok());
    return bytes;
  }

  const char* const reload_interval_;
  std::string certs_;
  std::string policy_;
  std::unique_ptr<testing::DaemonProcess> daemon_;
  std::unique_ptr<Connection> c_;
  std::uint64_t lease_a_ = 0;
  std::uint64_t lease_b_ = 0;
};

TEST_F(AuthTest, EveryCallOfEveryRoleGetsItsCodeAndRefusalsChangeNothing) {
  struct Cell {
    const Caller* caller;
    StatusCode want;
    std::function<grpc::Status()> call;
  };
  struct Row {
    const char* rpc;
    std::vector<Cell> cells;  // None, reader, worker out, worker in, admin.
  };
  Connection& c = *c_;
  const std::uint64_t la = lease_a_, lb = lease_b_;
  // A disposable membership for the Leave row's allowed cells.
  auto joined = [&c](const Caller& caller, const std::string& id) {
    std::uint64_t lease = 0;
    EXPECT_TRUE(c.Join(caller, id, {"a/w"}, {}, &lease).ok());
    return lease;
  };
  const StatusCode kOk = StatusCode::OK, kUnauth = StatusCode::UNAUTHENTICATED,
                   kDenied = StatusCode::PERMISSION_DENIED,
                   kPrecondition = StatusCode::FAILED_PRECONDITION;
  // Pushes and pulls of the worker outside its patterns use its own lease
  // on team-a's tensor; the reader pulls within its patterns.
  std::vector<Row> rows = {
      {"Join",
       {{&kNobody, kUnauth, [&] { return c.Join(kNobody, "a-1", {"a/w"}); }},
        {&kReader, kDenied, [&] { return c.Join(kReader, "a-1", {"a/w"}); }},
        {&kWorkerB, kDenied, [&] { return c.Join(kWorkerB, "a-1", {"a/w"}); }},
        {&kWorkerA, kOk,
         [&] {
           std::uint64_t lease = 0;
           grpc::Status s = c.Join(kWorkerA, "a-1", {"a/w"}, {}, &lease);
           EXPECT_TRUE(c.Leave(kWorkerA, lease).ok());
           return s;
         }},
        {&kAdmin, kOk,
         [&] {
           std::uint64_t lease = 0;
           grpc::Status s = c.Join(kAdmin, "x-1", {"a/w"}, {}, &lease);
           EXPECT_TRUE(c.Leave(kAdmin, lease).ok());
           return s;
         }}}},
      {"Push",
       {{&kNobody, kUnauth, [&] { return c.Push(kNobody, la, "a/w", 9); }},
        {&kReader, kDenied, [&] { return c.Push(kReader, la, "a/w", 9); }},
        {&kWorkerB, kDenied, [&] { return c.Push(kWorkerB, lb, "a/w", 9); }},
        {&kWorkerA, kOk, [&] { return c.Push(kWorkerA, la, "a/w", 3); }},
        {&kAdmin, kOk, [&] { return c.Push(kAdmin, la, "a/w", 5); }}}},
      {"Pull",
       {{&kNobody, kUnauth, [&] { return c.Pull(kNobody, {"shared/w"}); }},
        {&kReader, kOk, [&] { return c.Pull(kReader, {"shared/w"}); }},
        {&kWorkerB, kDenied, [&] { return c.Pull(kWorkerB, {"a/w"}); }},
        {&kWorkerA, kOk, [&] { return c.Pull(kWorkerA, {"a/w"}, la); }},
        {&kAdmin, kOk, [&] { return c.Pull(kAdmin, {"a/w"}); }}}},
      {"PushPull",
       {{&kNobody, kUnauth, [&] { return c.PushPull(kNobody, la, "a/w", 9); }},
        {&kReader, kDenied, [&] { return c.PushPull(kReader, la, "a/w", 9); }},
        {&kWorkerB, kDenied,
         [&] { return c.PushPull(kWorkerB, lb, "a/w", 9); }},
        {&kWorkerA, kOk, [&] { return c.PushPull(kWorkerA, la, "a/w", 4); }},
        {&kAdmin, kOk, [&] { return c.PushPull(kAdmin, la, "a/w", 6); }}}},
      {"Leave",
       {{&kNobody, kUnauth, [&] { return c.Leave(kNobody, la); }},
        {&kReader, kDenied, [&] { return c.Leave(kReader, la); }},
        {&kWorkerB, kDenied, [&] { return c.Leave(kWorkerB, la); }},
        {&kWorkerA, kOk,
         [&] { return c.Leave(kWorkerA, joined(kWorkerA, "a-2")); }},
        {&kAdmin, kOk,
         [&] { return c.Leave(kAdmin, joined(kWorkerA, "a-3")); }}}},
      {"Heartbeat",
       {{&kNobody, kUnauth, [&] { return c.Heartbeat(kNobody, la); }},
        {&kReader, kDenied, [&] { return c.Heartbeat(kReader, la); }},
        {&kWorkerB, kDenied, [&] { return c.Heartbeat(kWorkerB, la); }},
        {&kWorkerA, kOk, [&] { return c.Heartbeat(kWorkerA, la); }},
        {&kAdmin, kOk, [&] { return c.Heartbeat(kAdmin, la); }}}},
      {"Barrier",
       {{&kNobody, kUnauth, [&] { return c.Barrier(kNobody, la); }},
        {&kReader, kDenied, [&] { return c.Barrier(kReader, la); }},
        {&kWorkerB, kDenied, [&] { return c.Barrier(kWorkerB, la); }},
        {&kWorkerA, kOk, [&] { return c.Barrier(kWorkerA, la); }},
        {&kAdmin, kOk, [&] { return c.Barrier(kAdmin, la); }}}},
      {"GetStatus",
       {{&kNobody, kUnauth,
         [&] {
           v1::GetStatusResponse r;
           return c.GetStatus(kNobody, &r);
         }},
        {&kReader, kOk,
         [&] {
           v1::GetStatusResponse r;
           return c.GetStatus(kReader, &r);
         }},
        {&kWorkerB, kOk,
         [&] {
           v1::GetStatusResponse r;
           return c.GetStatus(kWorkerB, &r);
         }},
        {&kWorkerA, kOk,
         [&] {
           v1::GetStatusResponse r;
           return c.GetStatus(kWorkerA, &r);
         }},
        {&kAdmin, kOk,
         [&] {
           v1::GetStatusResponse r;
           return c.GetStatus(kAdmin, &r);
         }}}},
      {"TakeSnapshot",
       {{&kNobody, kUnauth, [&] { return c.TakeSnapshot(kNobody); }},
        {&kReader, kDenied, [&] { return c.TakeSnapshot(kReader); }},
        {&kWorkerB, kDenied, [&] { return c.TakeSnapshot(kWorkerB); }},
        {&kWorkerA, kDenied, [&] { return c.TakeSnapshot(kWorkerA); }},
        {&kAdmin, kOk, [&] { return c.TakeSnapshot(kAdmin); }}}},
      {"GetHistory",
       {{&kNobody, kUnauth, [&] { return c.GetHistory(kNobody, "a/w"); }},
        {&kReader, kDenied, [&] { return c.GetHistory(kReader, "a/w"); }},
        {&kWorkerB, kDenied, [&] { return c.GetHistory(kWorkerB, "a/w"); }},
        {&kWorkerA, kOk, [&] { return c.GetHistory(kWorkerA, "a/w"); }},
        {&kAdmin, kOk, [&] { return c.GetHistory(kAdmin, "a/w"); }}}},
      // Admins only; without force, a tensor workers share stays.
      {"DropTensor",
       {{&kNobody, kUnauth, [&] { return c.DropTensor(kNobody, "a/w"); }},
        {&kReader, kDenied, [&] { return c.DropTensor(kReader, "a/w"); }},
        {&kWorkerB, kDenied, [&] { return c.DropTensor(kWorkerB, "a/w"); }},
        {&kWorkerA, kDenied, [&] { return c.DropTensor(kWorkerA, "a/w"); }},
        {&kAdmin, kPrecondition, [&] { return c.DropTensor(kAdmin, "a/w"); }}}},
      // Past the checks of who may, the shared-memory calls fail on their
      // own terms here (no memfd, no segment): FAILED_PRECONDITION.
      {"AttachSegment",
       {{&kNobody, kUnauth, [&] { return c.AttachSegment(kNobody, la); }},
        {&kReader, kDenied, [&] { return c.AttachSegment(kReader, la); }},
        {&kWorkerB, kDenied, [&] { return c.AttachSegment(kWorkerB, la); }},
        {&kWorkerA, kPrecondition,
         [&] { return c.AttachSegment(kWorkerA, la); }},
        {&kAdmin, kPrecondition, [&] { return c.AttachSegment(kAdmin, la); }}}},
      {"PushSegment",
       {{&kNobody, kUnauth, [&] { return c.PushSegment(kNobody, la, "a/w"); }},
        {&kReader, kDenied, [&] { return c.PushSegment(kReader, la, "a/w"); }},
        {&kWorkerB, kDenied,
         [&] { return c.PushSegment(kWorkerB, lb, "a/w"); }},
        {&kWorkerA, kPrecondition,
         [&] { return c.PushSegment(kWorkerA, la, "a/w"); }},
        {&kAdmin, kPrecondition,
         [&] { return c.PushSegment(kAdmin, la, "a/w"); }}}},
      {"PullSegment",
       {{&kNobody, kUnauth, [&] { return c.PullSegment(kNobody, la, "a/w"); }},
        {&kReader, kDenied, [&] { return c.PullSegment(kReader, la, "a/w"); }},
        {&kWorkerB, kDenied,
         [&] { return c.PullSegment(kWorkerB, lb, "a/w"); }},
        {&kWorkerA, kPrecondition,
         [&] { return c.PullSegment(kWorkerA, la, "a/w"); }},
        {&kAdmin, kPrecondition,
         [&] { return c.PullSegment(kAdmin, la, "a/w"); }}}},
  };
  int refused = 0;
  for (const Row& row : rows) {
    for (const Cell& cell : row.cells) {
      const std::string before = Weights();
      const grpc::Status got = cell.call();
      EXPECT_EQ(CodeName(got.error_code()), CodeName(cell.want))
          << row.rpc << " by " << cell.caller->name << ": "
          << got.error_message();
      if (cell.want != kOk) {
        ++refused;
        EXPECT_EQ(Weights(), before) << row.rpc << " by " << cell.caller->name
                                     << " was refused but changed the weights";
        EXPECT_EQ(got.error_message().find(cell.caller->token[0] == '\0'
                                               ? "\x01"
                                               : cell.caller->token),
                  std::string::npos)
            << "the message echoes the token";
      }
    }
  }
  EXPECT_EQ(refused, 48);
  // Each refusal is counted, by its code (the segment calls' own
  // FAILED_PRECONDITIONs are not refusals of who may).
  v1::GetStatusResponse status;
  ASSERT_TRUE(c.GetStatus(kAdmin, &status).ok());
  EXPECT_EQ(status.refused_unauthenticated(), 14u);
  EXPECT_EQ(status.refused_permission_denied(), 27u);
  // The pushes that were let in moved a/w (async: halfway each time).
  EXPECT_NE(Weights().find("a/w@4;"), std::string::npos) << Weights();
}

TEST_F(AuthTest, WorkerIdsShowOnlyToWhoseWorkerIdPatternsNameThem) {
  // a-0 and b-0 push shared/w (async: a version each). team-a sees its own
  // worker's id in the history and not b-0's; the reader sees none; the
  // admin sees both.
  ASSERT_TRUE(c_->Push(kWorkerA, lease_a_, "shared/w", 3).ok());
  ASSERT_TRUE(c_->Push(kWorkerB, lease_b_, "shared/w", 5).ok());
  auto ids = [this](const Caller& caller) {
    v1::GetHistoryResponse response;
    const grpc::Status status = c_->GetHistory(caller, "shared/w", &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<std::string> ids;
    for (const v1::VersionRecord& r : response.records()) {
      for (const auto& c : r.contributions()) ids.push_back(c.worker_id());
    }
    return ids;
  };
  EXPECT_THAT(ids(kAdmin), ElementsAre("a-0", "b-0"));
  EXPECT_THAT(ids(kWorkerA), ElementsAre("a-0", ""));
  EXPECT_THAT(ids(kReader), ElementsAre("", ""));
}

TEST_F(AuthTest, AWorkerIsHeldToItsOwnTensorsAtJoinAndPull) {
  EXPECT_EQ(c_->Join(kWorkerA, "a-5", {"a/w", "b/w"}).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(c_->Pull(kReader, {"a/w"}).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(c_->Pull(kWorkerA, {"shared/w"}).error_code(), StatusCode::OK);
}

TEST_F(AuthTest, AnotherPrincipalsLeaseIsRefusedAndItsOwnerCarriesOn) {
  const std::string before = Weights();
  // team-b pushes to the shared tensor, which its patterns allow, but with
  // team-a's lease.
  const grpc::Status hijack = c_->Push(kWorkerB, lease_a_, "shared/w", 100);
  EXPECT_EQ(hijack.error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_NE(
      hijack.error_message().find(absl::StrCat("may not use lease ", lease_a_,
                                               " of worker a-0: it belongs "
                                               "to team-a")),
      std::string::npos)
      << hijack.error_message();
  EXPECT_EQ(c_->PushPull(kWorkerB, lease_a_, "shared/w", 100).error_code(),
            StatusCode::PERMISSION_DENIED);
  // Every call that carries a lease holds team-b to its own.
  EXPECT_EQ(c_->Pull(kWorkerB, {"shared/w"}, lease_a_).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(c_->PushSegment(kWorkerB, lease_a_, "shared/w").error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(c_->PullSegment(kWorkerB, lease_a_, "shared/w").error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Weights(), before);
  // team-a's own push goes through and counts.
  EXPECT_TRUE(c_->Push(kWorkerA, lease_a_, "shared/w", 3).ok());
  EXPECT_NE(Weights(), before);
  // Only the admin sees lease ids; a worker sees the workers its patterns
  // name.
  v1::GetStatusResponse worker_view, admin_view;
  ASSERT_TRUE(c_->GetStatus(kWorkerB, &worker_view).ok());
  ASSERT_TRUE(c_->GetStatus(kAdmin, &admin_view).ok());
  ASSERT_EQ(worker_view.workers_size(), 1);
  EXPECT_EQ(worker_view.workers(0).worker_id(), "b-0");
  EXPECT_EQ(worker_view.workers(0).lease_id(), 0u);
  ASSERT_EQ(admin_view.workers_size(), 2);
  EXPECT_EQ(admin_view.workers(0).lease_id(), lease_a_);
  EXPECT_EQ(admin_view.workers(1).lease_id(), lease_b_);
}

TEST_F(AuthTest, SighupRefusesARemovedTokenAndKeepsThePolicyOverABadFile) {
  ASSERT_TRUE(c_->Heartbeat(kWorkerB, lease_b_).ok());
  // The policy without team-b: read on SIGHUP (the timed check is an hour
  // away here).
  WritePolicy(Policy(false));
  ::kill(daemon_->pid(), SIGHUP);
  EXPECT_TRUE(Eventually([&] {
    return c_->Heartbeat(kWorkerB, lease_b_).error_code() ==
           StatusCode::UNAUTHENTICATED;
  })) << "team-b's token still admitted after SIGHUP: "
      << daemon_->log();
  EXPECT_TRUE(c_->Heartbeat(kWorkerA, lease_a_).ok());
  // A file that cannot be used: an error line, and the policy in force
  // stays.
  WritePolicy("{\"principals\": [{\"name\": \"broken\"}]}");
  ::kill(daemon_->pid(), SIGHUP);
  EXPECT_TRUE(Eventually([&] {
    return daemon_->log().find(
               "cannot be used, the one read before stays "
               "in force") != std::string::npos;
  })) << daemon_->log();
  EXPECT_TRUE(c_->Heartbeat(kWorkerA, lease_a_).ok());
  EXPECT_EQ(c_->Heartbeat(kWorkerB, lease_b_).error_code(),
            StatusCode::UNAUTHENTICATED);
}

class AuthReloadTest : public AuthTest {
 protected:
  AuthReloadTest() : AuthTest("1s") {}
};

TEST_F(AuthReloadTest, AChangedFileIsReadWithoutASignal) {
  WritePolicy(Policy(false));
  EXPECT_TRUE(Eventually([&] {
    return c_->Heartbeat(kWorkerB, lease_b_).error_code() ==
           StatusCode::UNAUTHENTICATED;
  })) << "the changed file was not read again";
  WritePolicy(Policy(true));
  EXPECT_TRUE(Eventually([&] {
    return c_->Heartbeat(kWorkerB, lease_b_).ok();
  })) << "team-b not let in again";
}

TEST(AuthStartTest, CertificateNamesWithoutClientCertificatesStopTheDaemon) {
  const std::string certs = testing::MakeCerts();
  ASSERT_FALSE(certs.empty());
  std::ofstream(certs + "/policy.json")
      << R"({"principals": [{"name": "ops", "role": "ADMIN", "certificate_names": ["ops"]}]})";
  testing::DaemonProcess daemon(g_weightd, "auth-start",
                                {"--tls_cert=" + certs + "/server.crt",
                                 "--tls_key=" + certs + "/server.key",
                                 "--auth_policy=" + certs + "/policy.json"});
  EXPECT_TRUE(daemon.address().empty()) << "weightd started";
  EXPECT_NE(daemon.log().find("names principals by certificate_names, but "
                              "this weightd asks clients for no certificate: "
                              "give --tls_client_ca"),
            std::string::npos)
      << daemon.log();
  std::system(("rm -rf '" + certs + "'").c_str());
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: auth_test PATH_TO_WEIGHTD\n");
    return 2;
  }
  weightd::g_weightd = argv[1];
  return RUN_ALL_TESTS();
}
