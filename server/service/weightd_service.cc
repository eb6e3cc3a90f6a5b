#include "server/service/weightd_service.h"

#include <grpc/grpc.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "common/chunk_codec.h"
#include "common/duration.h"
#include "common/grpc_status.h"
#include "common/policy_proto.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"
#include "common/wire.h"
#include "common/wire_format.h"
#include "server/service/proto_conversions.h"
#include "server/service/reactor_wait.h"
#include "server/service/result_stream.h"
#include "server/service/tensor_streamer.h"

namespace weightd::service {
namespace {

// Whether `permissions` may use lease `lease_id`. A lease no worker holds
// passes: the call then fails as it would without a policy.
absl::Status MayUseLease(const Permissions& permissions,
                         const core::TensorStore& store,
                         std::uint64_t lease_id) {
  if (permissions.admin()) return absl::OkStatus();
  const absl::StatusOr<core::LeaseHolder> holder = store.HolderOf(lease_id);
  if (!holder.ok()) return absl::OkStatus();
  return permissions.MayUseLease(lease_id, holder->principal,
                                 holder->worker_id);
}

// A push's lease and tensors (Push, PushPull, PushSegment).
absl::Status MayPush(const Permissions& permissions,
                     const core::TensorStore& store,
                     const core::PushHeader& header) {
  WEIGHTD_RETURN_IF_ERROR(MayUseLease(permissions, store, header.lease_id));
  for (const core::PushHeader::Entry& e : header.entries) {
    WEIGHTD_RETURN_IF_ERROR(permissions.MayUseTensor(e.name));
  }
  return absl::OkStatus();
}

// A pull's lease (0: none) and tensors (Pull, PullSegment).
absl::Status MayPull(const Permissions& permissions,
                     const core::TensorStore& store,
                     const v1::PullRequest& request) {
  if (request.lease_id() != 0) {
    WEIGHTD_RETURN_IF_ERROR(
        MayUseLease(permissions, store, request.lease_id()));
  }
  for (const v1::PulledTensor& t : request.tensors()) {
    WEIGHTD_RETURN_IF_ERROR(permissions.MayUseTensor(t.name()));
  }
  return absl::OkStatus();
}

// The write half shared by Pull and PushPull: wait for versions, then stream
// the tensors.
template <typename Reactor>
class WaitThenStream {
 public:
  WaitThenStream(Reactor* reactor, core::TensorStore* store,
                 PayloadCounters* payload, CallInfo call)
      : reactor_(reactor),
        wait_(reactor, std::move(call)),
        store_(store),
        payload_(payload) {}

  // Waits until every `(name, version)` is reached, then streams the names
  // in `format`, small chunks in batches if `batches`. The wait keeps the
  // lease `lease_id` alive (if a worker holds it).
  void Start(core::TensorStore::VersionRequest request, WireFormat format,
             bool batches, std::uint64_t lease_id) {
    format_ = format;
    batches_ = batches;
    for (const auto& [name, version] : request) names_.push_back(name);
    wait_.Start(
        [this, &request, lease_id](WaitDone done) {
          return store_->WaitForVersions(request, std::move(done), lease_id);
        },
        [this](absl::Status status) { Stream(status); });
  }

  // Runs another wait first (a push's turn: ReactorWait::Start): `ready`
  // then Start()s the versions' wait or FinishOnce()s.
  void Start(const RegisterWait& start, WaitDone ready) {
    wait_.Start(start, std::move(ready));
  }

  void OnCancel() { wait_.OnCancel(); }
  void FinishOnce(const absl::Status& status) { wait_.FinishOnce(status); }

  // From the reactor's OnWriteDone.
  void OnWriteDone(bool ok) {
    if (!ok) return FinishOnce(absl::CancelledError("the client went away"));
    WriteNext();
  }

 private:
  void Stream(const absl::Status& status) {
    if (!status.ok()) return FinishOnce(status);
    auto published = store_->Read(names_, format_);
    if (!published.ok()) return FinishOnce(published.status());
    streamer_.emplace(names_, std::move(*published),
                      store_->options().chunk_bytes, format_, batches_);
    WriteNext();
  }

  // The last message goes out with the status. (No buffer_hint on the
  // header: its OnWriteDone would wait for a flush that only the next
  // write, started from OnWriteDone, would cause.)
  void WriteNext() {
    std::optional<std::uint64_t> bytes = streamer_->Next(&response_);
    if (!bytes.has_value()) return FinishOnce(absl::OkStatus());
    payload_->Sent(format_, PayloadPath::kStream, *bytes);
    if (streamer_->finished()) {
      wait_.WriteAndFinishOnce(&response_);  // Last touch.
    } else {
      reactor_->StartWrite(&response_);  // Last touch.
    }
  }

  Reactor* const reactor_;
  ReactorWait<Reactor> wait_;
  core::TensorStore* const store_;
  PayloadCounters* const payload_;
  std::vector<std::string> names_;
  WireFormat format_ = WireFormat::kFloat32;
  bool batches_ = false;
  std::optional<TensorStreamer> streamer_;
  grpc::ByteBuffer response_;
};

// A unary call served on the generated messages while they travel as bytes
// (every method is raw): parses the request, refusing bytes that are not a
// `Request` with INVALID_ARGUMENT naming the call, and sends the typed
// response if the call ends OK. Owns both messages until gRPC is done with
// the call, then deletes itself.
template <typename Request, typename Response>
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  // Serves a parsed request: fills `response` and calls Answer(), at once or
  // later from any thread, or runs a wait through Wait(). Runs before
  // Serve() returns. Only a Wait() ends early if the call is cancelled: an
  // answer given later must still come.
  using Handler = absl::FunctionRef<void(
      const Request& request, Response* response, UnaryReactor* call)>;

  static grpc::ServerUnaryReactor* Serve(const grpc::ByteBuffer& request,
                                         grpc::ByteBuffer* response,
                                         CallCounter::Slot slot, CallInfo call,
                                         Handler handler) {
    const char* name = call.name;
    auto* reactor =
        new UnaryReactor(response, std::move(slot), std::move(call));
    grpc::ByteBuffer bytes = request;  // Shares the slices.
    if (absl::Status s =
            ParseMessage(&bytes, &reactor->request_, name, "request");
        !s.ok()) {
      reactor->Answer(s);
    } else {
      handler(reactor->request_, &reactor->response_, reactor);
    }
    return reactor;
  }

  // Ends the call, once: with OK the response goes out; a refusal is
  // logged. The last touch of this object.
  void Answer(const absl::Status& status) {
    wait_.FinishOnce(status, [this, &status] {
      if (status.ok()) *response_bytes_ = ToBytes(response_);
    });
  }

  // Runs one core wait (see ReactorWait::Start), ended with CANCELLED if the
  // call is cancelled first; `ready` must Answer().
  void Wait(const RegisterWait& start, WaitDone ready) {
    wait_.Start(start, std::move(ready));
  }

  void OnCancel() override { wait_.OnCancel(); }
  void OnDone() override { delete this; }

 private:
  UnaryReactor(grpc::ByteBuffer* response, CallCounter::Slot slot,
               CallInfo call)
      : slot_(std::move(slot)),
        response_bytes_(response),
        wait_(this, std::move(call)) {}

  const CallCounter::Slot slot_;
  grpc::ByteBuffer* const response_bytes_;
  Request request_;
  Response response_;
  ReactorWait<UnaryReactor> wait_;
};

// ---------------------------------------------------------------------------

class JoinReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  JoinReactor(core::TensorStore* store, PayloadCounters* payload,
              Metrics* metrics, const v1::ShardInfo& shard,
              grpc::CallbackServerContext* context, grpc::ByteBuffer* response,
              EventLog* events, Permissions permissions, CallCounter::Slot slot,
              std::unique_ptr<StallWatch::Reader> stall)
      : slot_(std::move(slot)),
        stall_(std::move(stall)),
        permissions_(std::move(permissions)),
        store_(store),
        payload_(payload),
        metrics_(metrics),
        shard_(shard),
        context_(context),
        response_bytes_(response),
        events_(events),
        call_{events, "Join", context} {
    *response_.mutable_shard() = shard;
    Read();
  }

  void OnReadDone(bool ok) override {
    if (stall_ != nullptr) stall_->Idle();
    if (!ok) {
      if (context_->IsCancelled() || (stall_ != nullptr && stall_->was_cut())) {
        return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      }
      const absl::Status joined = Complete();
      if (joined.ok()) *response_bytes_ = ToBytes(response_);
      return Finish(call_.Answer(joined));
    }
    absl::Status s;
    switch (stream_.Read(&request_bytes_, &request_)) {
      case TensorStreamReader::Kind::kInvalid:
        s = NotAValid(request_, "Join");
        break;
      case TensorStreamReader::Kind::kChunks:  // One: Join has no batches.
        s = Handle(&stream_.chunks().front());
        break;
      case TensorStreamReader::Kind::kMessage:
        s = Handle(nullptr);
        break;
    }
    if (!s.ok()) return Finish(call_.Answer(s));
    Read();
  }

  void OnDone() override { delete this; }

 private:
  void Read() {
    if (stall_ != nullptr) stall_->Reading();
    StartRead(&request_bytes_);
  }

  // Takes the message just read: `chunk`, or request_ if it is null.
  absl::Status Handle(const ChunkView* chunk) {
    if (chunk == nullptr && request_.has_header()) {
      if (have_header_) return RepeatedHeader("Join");
      have_header_ = true;
      if (request_.header().has_expected_shard()) {
        const v1::ShardInfo& want = request_.header().expected_shard();
        if (want.index() != shard_.index() ||
            std::max(want.count(), 1u) != shard_.count()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "this server is shard ", shard_.index(), " of ", shard_.count(),
              "; the worker takes it for shard ", want.index(), " of ",
              std::max(want.count(), 1u),
              ". The deployment's shard layout changed under the job: "
              "restart the workers with the new server list"));
        }
      }
      core::JoinHeader header;
      header.worker_id = request_.header().worker_id();
      WEIGHTD_RETURN_IF_ERROR(permissions_.MayJoinAs(header.worker_id));
      header.claimant =
          core::Claimant{request_.header().instance(), context_->peer(),
                         permissions_.principal_name()};
      for (const v1::TensorDeclaration& d : request_.header().tensors()) {
        WEIGHTD_RETURN_IF_ERROR(permissions_.MayUseTensor(d.name()));
        core::Declaration decl;
        decl.name = d.name();
        decl.shape.assign(d.shape().begin(), d.shape().end());
        decl.whole_shape.assign(d.whole_shape().begin(), d.whole_shape().end());
        absl::StatusOr<PolicySpec> policy = PolicySpecFromProto(d.policy());
        if (!policy.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor ", d.name(), ": ", policy.status().message()));
        }
        decl.policy = *std::move(policy);
        header.declarations.push_back(std::move(decl));
      }
      // Refused before any initial value is buffered.
      WEIGHTD_ASSIGN_OR_RETURN(session_, store_->BeginJoin(std::move(header)));
      return absl::OkStatus();
    }
    if (!have_header_) return MissingHeader("Join");
    if (chunk == nullptr) {
      return absl::InvalidArgumentError("Join message carries nothing");
    }
    WEIGHTD_RETURN_IF_ERROR(
        session_->AddChunk(chunk->tensor_index, chunk->offset, chunk->pieces));
    payload_->Received(WireFormat::kFloat32, PayloadPath::kStream, chunk->size);
    return absl::OkStatus();
  }

  absl::Status Complete() {
    if (!have_header_) return MissingHeader("Join");
    WEIGHTD_ASSIGN_OR_RETURN(core::JoinResult joined, session_->Finish());
    events_->Joined(session_->worker_id(), context_->peer(), joined);
    metrics_->Joined();
    response_.set_lease_id(joined.lease_id);
    response_.set_lease_timeout_ms(
        absl::ToInt64Milliseconds(store_->options().lease_timeout));
    response_.set_chunk_bytes(store_->options().chunk_bytes);
    response_.set_mode(ModeToProto(store_->options().mode));
    response_.set_next_sequence(joined.next_sequence);
    for (const core::JoinedTensor& t : joined.tensors) {
      v1::JoinedTensor* out = response_.add_tensors();
      InfoToProto(t.info, out->mutable_info());
      out->set_created(t.created);
    }
    return absl::OkStatus();
  }

  const CallCounter::Slot slot_;
  const std::unique_ptr<StallWatch::Reader> stall_;  // Null: not watched.
  const Permissions permissions_;
  core::TensorStore* const store_;
  PayloadCounters* const payload_;
  Metrics* const metrics_;
  const v1::ShardInfo shard_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_bytes_;
  EventLog* const events_;
  const CallInfo call_;
  grpc::ByteBuffer request_bytes_;
  v1::JoinRequest request_;  // The last message read, if not a chunk.
  TensorStreamReader stream_;
  v1::JoinResponse response_;
  bool have_header_ = false;
  std::unique_ptr<core::JoinSession> session_;  // Once the header is read.
};

// Counts one admitted push (Push, PushPull, PushSegment) in Metrics when it
// goes out of scope: with the outcome it was last given, CANCELLED if none
// (the client went away, or the call was cut).
class PushTally {
 public:
  explicit PushTally(Metrics* metrics) : metrics_(metrics) {}
  ~PushTally() { metrics_->PushEnded(code_, duplicate_); }
  PushTally(const PushTally&) = delete;
  PushTally& operator=(const PushTally&) = delete;

  void Failed(const absl::Status& status) { code_ = status.code(); }
  void Ended(const absl::StatusOr<std::vector<core::PushResult>>& results) {
    if (!results.ok()) return Failed(results.status());
    code_ = absl::StatusCode::kOk;
    duplicate_ = std::all_of(
        results->begin(), results->end(),
        [](const core::PushResult& r) { return r.outcome.duplicate; });
  }

 private:
  Metrics* const metrics_;
  absl::StatusCode code_ = absl::StatusCode::kCancelled;
  bool duplicate_ = false;
};

// Runs a wait on behalf of a call: its reactor's ReactorWait::Start (or
// what wraps it), given the wait to register and what to run once it fires.
using StartWait = absl::FunctionRef<void(const RegisterWait&, WaitDone)>;

// Applies a push once its turn came (Push, PushPull, PushSegment): runs
// `complete` at once if `session` has no bounded tensor, else once the wait
// for its turn, run through `start`, fires OK. If the turn does not come
// (ABORTED: the worker left; NOT_FOUND: a tensor was dropped; UNAVAILABLE:
// the server closes), `tally` counts that status and `fail` ends the call
// with it; an error registering the wait is counted too (the ReactorWait
// ends the call). A call cancelled meanwhile is ended by its ReactorWait
// (CANCELLED, the tally's default). `session` and `tally` must live until
// `complete` or `fail` has run (`complete` may own them).
void CompleteInTurn(core::PushSession& session, PushTally& tally,
                    StartWait start, std::function<void()> complete,
                    std::function<void(const absl::Status&)> fail) {
  if (!session.waits_for_turn()) return complete();
  start(
      [&session, &tally](WaitDone done) {
        absl::StatusOr<std::unique_ptr<core::Wait>> wait =
            session.AwaitTurn(std::move(done));
        if (!wait.ok()) tally.Failed(wait.status());
        return wait;
      },
      [&tally, complete = std::move(complete),
       fail = std::move(fail)](absl::Status status) {
        if (!status.ok()) {
          tally.Failed(status);
          return fail(status);
        }
        complete();
      });
}

// Reads a push stream (header, then chunks) into a core::PushSession.
// Shared by Push and PushPull, whose request messages are the same on the
// wire. Chunks are summed straight from the slices they arrived in.
class PushReader {
 public:
  PushReader(core::TensorStore* store, PayloadCounters* payload,
             Metrics* metrics, absl::string_view call, Permissions permissions)
      : store_(store),
        payload_(payload),
        tally_(metrics),
        call_(call),
        permissions_(std::move(permissions)) {}

  absl::Status Handle(grpc::ByteBuffer* message) {
    absl::Status status = Read(message);
    if (!status.ok()) tally_.Failed(status);
    return status;
  }

  absl::StatusOr<std::vector<core::PushResult>> Finish() {
    absl::StatusOr<std::vector<core::PushResult>> results =
        session_ == nullptr ? MissingHeader(call_) : session_->Finish();
    tally_.Ended(results);
    return results;
  }

  // Runs `complete` (which calls Finish()) once the push's turn came, the
  // wait run and a failure ended through `call`'s Start and FinishOnce (a
  // ReactorWait, WaitThenStream): see CompleteInTurn. At once without a
  // header (Finish() refuses the push).
  template <typename Call>
  void CompleteInTurn(Call& call, std::function<void()> complete) {
    if (session_ == nullptr) return complete();
    service::CompleteInTurn(
        *session_, tally_,
        [&call](const RegisterWait& turn, WaitDone ready) {
          call.Start(turn, std::move(ready));
        },
        std::move(complete),
        [&call](const absl::Status& status) { call.FinishOnce(status); });
  }

  // Whether the header was read and accepted; then header().
  bool has_header() const { return session_ != nullptr; }
  const core::PushHeader& header() const { return session_->header(); }

  // The push's wire format, and whether its result may come in batches
  // (once the header was accepted).
  WireFormat format() const { return session_->header().format; }
  std::uint64_t lease_id() const { return session_->header().lease_id; }
  bool accept_batches() const { return accept_batches_; }

 private:
  absl::Status Read(grpc::ByteBuffer* message) {
    v1::PushRequest request;  // Wire-identical to PushPullRequest.
    switch (stream_.Read(message, &request)) {
      case TensorStreamReader::Kind::kInvalid:
        return NotAValid(request, call_);
      case TensorStreamReader::Kind::kChunks: {
        if (session_ == nullptr) return MissingHeader(call_);
        std::uint64_t payload = 0;
        for (const ChunkView& chunk : stream_.chunks()) payload += chunk.size;
        WEIGHTD_RETURN_IF_ERROR(CheckBatch(stream_.chunks().size(), payload,
                                           store_->options().chunk_bytes));
        for (const ChunkView& chunk : stream_.chunks()) {
          WEIGHTD_RETURN_IF_ERROR(
              AddChunk(chunk.tensor_index, chunk.offset, chunk.pieces));
        }
        return absl::OkStatus();
      }
      case TensorStreamReader::Kind::kMessage:
        break;
    }
    if (!request.has_header()) {
      if (session_ == nullptr) return MissingHeader(call_);
      return absl::InvalidArgumentError(
          absl::StrCat(call_, " message carries nothing"));
    }
    if (session_ != nullptr) return RepeatedHeader(call_);
    WEIGHTD_ASSIGN_OR_RETURN(core::PushHeader header,
                             PushHeaderFromProto(request.header()));
    WEIGHTD_RETURN_IF_ERROR(MayPush(permissions_, *store_, header));
    WEIGHTD_ASSIGN_OR_RETURN(session_, store_->BeginPush(std::move(header)));
    accept_batches_ = request.header().accept_batches();
    return absl::OkStatus();
  }

  absl::Status AddChunk(std::uint32_t index, std::uint64_t offset,
                        core::Pieces data) {
    WEIGHTD_RETURN_IF_ERROR(session_->AddChunk(index, offset, data));
    payload_->Received(session_->header().format, PayloadPath::kStream,
                       core::PiecesSize(data));
    return absl::OkStatus();
  }

  core::TensorStore* const store_;
  PayloadCounters* const payload_;
  PushTally tally_;
  const absl::string_view call_;
  const Permissions permissions_;
  std::unique_ptr<core::PushSession> session_;
  bool accept_batches_ = false;
  TensorStreamReader stream_;
};

class PushReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  PushReactor(core::TensorStore* store, PayloadCounters* payload,
              Metrics* metrics, grpc::CallbackServerContext* context,
              grpc::ByteBuffer* response, EventLog* events,
              Permissions permissions, CallCounter::Slot slot,
              std::unique_ptr<StallWatch::Reader> stall)
      : slot_(std::move(slot)),
        stall_(std::move(stall)),
        reader_(store, payload, metrics, "Push", std::move(permissions)),
        context_(context),
        response_(response),
        wait_(this, CallInfo{events, "Push", context}) {
    Read();
  }

  void OnReadDone(bool ok) override {
    if (stall_ != nullptr) stall_->Idle();
    if (!ok) {
      if (context_->IsCancelled() || (stall_ != nullptr && stall_->was_cut())) {
        return wait_.FinishOnce(absl::CancelledError("cancelled"));
      }
      return reader_.CompleteInTurn(wait_, [this] { Complete(); });
    }
    if (absl::Status s = reader_.Handle(&request_); !s.ok()) {
      return wait_.FinishOnce(s);
    }
    Read();
  }

  void OnCancel() override { wait_.OnCancel(); }
  void OnDone() override { delete this; }

 private:
  // Applies the push and answers.
  void Complete() {
    absl::StatusOr<std::vector<core::PushResult>> results = reader_.Finish();
    if (!results.ok()) return wait_.FinishOnce(results.status());
    v1::PushResponse response;
    for (const core::PushResult& r : *results) {
      PushResultToProto(r, response.add_tensors());
    }
    wait_.FinishOnce(absl::OkStatus(), [&] { *response_ = ToBytes(response); });
  }

  void Read() {
    if (stall_ != nullptr) stall_->Reading();
    StartRead(&request_);
  }

  const CallCounter::Slot slot_;
  const std::unique_ptr<StallWatch::Reader> stall_;  // Null: not watched.
  PushReader reader_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
  // A bounded push's wait for its turn; every answer goes through it.
  ReactorWait<PushReactor> wait_;
  grpc::ByteBuffer request_;
};

class PullReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  PullReactor(core::TensorStore* store, PayloadCounters* payload,
              grpc::ByteBuffer request_bytes, CallInfo call,
              const Permissions& permissions, CallCounter::Slot slot)
      : slot_(std::move(slot)), stream_(this, store, payload, std::move(call)) {
    v1::PullRequest request;
    if (absl::Status s = ParseMessage(&request_bytes, &request, "Pull");
        !s.ok()) {
      stream_.FinishOnce(s);
      return;
    }
    if (absl::Status s = MayPull(permissions, *store, request); !s.ok()) {
      stream_.FinishOnce(s);
      return;
    }
    core::TensorStore::VersionRequest wanted;
    for (const v1::PulledTensor& t : request.tensors()) {
      wanted.emplace_back(t.name(), t.min_version());
    }
    if (wanted.empty()) {
      stream_.FinishOnce(absl::InvalidArgumentError("Pull names no tensors"));
      return;
    }
    absl::StatusOr<WireFormat> format = WireFormatFromProto(request.format());
    if (!format.ok()) {
      stream_.FinishOnce(format.status());
      return;
    }
    stream_.Start(std::move(wanted), *format, request.accept_batches(),
                  request.lease_id());
  }

  void OnCancel() override { stream_.OnCancel(); }
  void OnWriteDone(bool ok) override { stream_.OnWriteDone(ok); }
  void OnDone() override { delete this; }

 private:
  const CallCounter::Slot slot_;
  WaitThenStream<PullReactor> stream_;
};

// A PushPull: the push is read into a core::PushSession; in sync mode its
// round's result streams back while the round is open (ResultStream), so
// that pulls overlap pushes, and its reads are paced with the round's other
// pushes (PushPacer). Otherwise (async mode, or a push that counts in a
// round other than the one it names) the result streams once the push is
// complete, as a Pull's does.
class PushPullReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  PushPullReactor(core::TensorStore* store, PayloadCounters* payload,
                  Metrics* metrics, grpc::CallbackServerContext* context,
                  EventLog* events, PushPacer* pacer, Permissions permissions,
                  CallCounter::Slot slot,
                  std::unique_ptr<StallWatch::Reader> stall)
      : slot_(std::move(slot)),
        stall_(std::move(stall)),
        store_(store),
        pacer_(pacer),
        reader_(store, payload, metrics, "PushPull", std::move(permissions)),
        context_(context),
        stream_(this, store, payload, CallInfo{events, "PushPull", context}),
        result_(this, store, payload, CallInfo{events, "PushPull", context},
                [this] { BeforeFinish(); }) {
    Read();
  }

  void OnReadDone(bool ok) override {
    if (stall_ != nullptr) stall_->Idle();
    if (!ok) {
      if (context_->IsCancelled() || (stall_ != nullptr && stall_->was_cut())) {
        return End(absl::CancelledError("cancelled"));
      }
      StopPacing();
      if (pipelined_) return result_.PushEnded(reader_.Finish());
      return reader_.CompleteInTurn(stream_, [this] { CompleteThenStream(); });
    }
    const bool had_header = reader_.has_header();
    const std::uint64_t bytes = request_.Length();
    if (absl::Status s = reader_.Handle(&request_); !s.ok()) return End(s);
    if (!had_header && reader_.has_header()) StartResult();
    if (paced_.load(std::memory_order_relaxed)) {
      absl::MutexLock lock(&pace_mu_);
      // Not once the call is ending: BeforeFinish or OnCancel may have
      // looked before paced_ was set, and would not resume it.
      if (finishing_ || context_->IsCancelled()) {
        PushPacer::Resume none = pacer_->Remove(pace_id_);  // Not parked.
      } else if (!pacer_->Received(pace_id_, bytes, [this] { Read(); })) {
        return;  // Parked: the pacer starts the next read.
      }
    }
    Read();
  }

  void OnCancel() override {
    StopPacing();  // A parked read starts, and fails: OnReadDone ends.
    stream_.OnCancel();
    result_.OnCancel();
  }
  void OnWriteDone(bool ok) override {
    if (pipelined_) return result_.OnWriteDone(ok);
    stream_.OnWriteDone(ok);
  }
  void OnDone() override {
    // Never parked here (BeforeFinish resumed it); only forgotten.
    if (paced_.load(std::memory_order_acquire)) {
      PushPacer::Resume none = pacer_->Remove(pace_id_);
    }
    delete this;
  }

 private:
  // Reads the next message. A parked push has no read outstanding: the time
  // the pacer holds it back is not the client's stall.
  void Read() {
    if (stall_ != nullptr) stall_->Reading();
    StartRead(&request_);
  }

  // Not pipelined: applies the push, then streams the value once it
  // includes it.
  void CompleteThenStream() {
    absl::StatusOr<std::vector<core::PushResult>> results = reader_.Finish();
    if (!results.ok()) return stream_.FinishOnce(results.status());
    core::TensorStore::VersionRequest wanted;
    for (const core::PushResult& r : *results) {
      wanted.emplace_back(r.name, r.outcome.ready_version);
    }
    stream_.Start(std::move(wanted), reader_.format(), reader_.accept_batches(),
                  reader_.lease_id());
  }

  // The push header was accepted: stream its result now if it can.
  void StartResult() {
    std::vector<ResultStream::Tensor> tensors;
    for (const core::PushHeader::Entry& e : reader_.header().entries) {
      tensors.push_back(ResultStream::Tensor{e.name, e.round});
    }
    if (!ResultStream::Applies(*store_, tensors)) return;
    pipelined_ = true;  // Before the first write: OnWriteDone sees it.
    if (!tensors.empty()) {
      pace_id_ = pacer_->Add(
          absl::StrCat(tensors.front().round, " ", tensors.front().name));
      paced_.store(true, std::memory_order_release);
    }
    result_.Start(std::move(tensors), reader_.format(),
                  reader_.accept_batches(), reader_.lease_id());
  }

  // Ends the call with an error of the read side.
  void End(const absl::Status& status) {
    StopPacing();
    if (pipelined_) return result_.PushEnded(status);
    stream_.FinishOnce(status);
  }

  // The push holds no other push back any more; a parked read starts.
  // Idempotent.
  void StopPacing() {
    if (!paced_.load(std::memory_order_acquire)) return;
    if (PushPacer::Resume resume = pacer_->Remove(pace_id_)) {
      std::move(resume)();
    }
  }

  // The result side is about to finish the call. A parked push has no read
  // outstanding, and gRPC ends a call with no operation outstanding at
  // once (OnDone deletes this): the read starts first, so that the call
  // ends after its OnReadDone, as it did before pacing.
  void BeforeFinish() {
    {
      absl::MutexLock lock(&pace_mu_);
      finishing_ = true;
    }
    StopPacing();
  }

  const CallCounter::Slot slot_;
  const std::unique_ptr<StallWatch::Reader> stall_;  // Null: not watched.
  core::TensorStore* const store_;
  PushPacer* const pacer_;
  PushReader reader_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer request_;
  bool pipelined_ = false;  // Set on the read side before any write.
  // Whether the reads are paced, as pace_id_ (written before paced_). Set
  // on the read side; OnCancel, on any thread, reads them.
  std::atomic<bool> paced_{false};
  PushPacer::Id pace_id_ = 0;
  // Orders a park (OnReadDone) against BeforeFinish: either the park
  // comes first and BeforeFinish resumes it, or OnReadDone sees finishing_.
  absl::Mutex pace_mu_;
  bool finishing_ ABSL_GUARDED_BY(pace_mu_) = false;
  WaitThenStream<PushPullReactor> stream_;
  ResultStream result_;
};

// ---------------------------------------------------------------------------
// The same-host data path: values in the worker's segment.

// Where each tensor of a segment call lies in `segment`: `places[i]` for a
// tensor of `bytes[i]` float32 bytes sent in `format`. INVALID_ARGUMENT for
// a count that does not match, an offset not a multiple of 4, or a range
// outside the segment.
absl::StatusOr<std::vector<char*>> SegmentRanges(
    const Segment& segment,
    const google::protobuf::RepeatedPtrField<v1::SegmentPlace>& places,
    const std::vector<std::string>& names,
    const std::vector<std::uint64_t>& bytes, WireFormat format) {
  if (static_cast<std::size_t>(places.size()) != names.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the call names ", names.size(), " tensors but gives ",
                     places.size(), " places in the segment"));
  }
  std::vector<char*> ranges;
  ranges.reserve(names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::uint64_t offset = places[static_cast<int>(i)].offset();
    const std::uint64_t length = bytes[i] / kFloatBytes * ElementBytes(format);
    char* range = segment.Range(offset, length);
    if (offset % kFloatBytes != 0 || range == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", names[i], ": its place in the segment (offset ", offset,
          ", ", length, " bytes) is not a 4-byte aligned range inside the ",
          segment.size(), "-byte segment after its token"));
    }
    ranges.push_back(range);
  }
  return ranges;
}

// Writes each of `published` into `segment` at its place, in `format`, and
// describes it in `out`.
absl::Status WriteToSegment(
    const Segment& segment,
    const google::protobuf::RepeatedPtrField<v1::SegmentPlace>& places,
    const std::vector<std::string>& names,
    const std::vector<core::PublishedTensor>& published, WireFormat format,
    PayloadCounters* payload,
    google::protobuf::RepeatedPtrField<v1::TensorInfo>* out) {
  std::vector<std::uint64_t> bytes;
  for (const core::PublishedTensor& t : published) {
    bytes.push_back(t.value->size() * kFloatBytes);
  }
  WEIGHTD_ASSIGN_OR_RETURN(
      std::vector<char*> ranges,
      SegmentRanges(segment, places, names, bytes, format));
  for (std::size_t i = 0; i < published.size(); ++i) {
    const core::PublishedTensor& t = published[i];
    EncodeValues(t.value->data(), t.value->size(), format, ranges[i]);
    payload->Sent(format, PayloadPath::kSharedMemory,
                  t.value->size() * ElementBytes(format));
    v1::TensorInfo* info = out->Add();
    info->set_name(names[i]);
    for (std::int64_t d : t.shape) info->add_shape(d);
    info->set_version(t.version);
  }
  return absl::OkStatus();
}

// Sums (sync) or stages (async, bounded) a push whose values are in
// `segment` through `session`, chunk by chunk as the stream path does.
absl::Status StageFromSegment(
    core::TensorStore& store, core::PushSession& session,
    const Segment& segment,
    const google::protobuf::RepeatedPtrField<v1::SegmentPlace>& places,
    PayloadCounters* payload) {
  const core::PushHeader& header = session.header();
  std::vector<std::string> names;
  std::vector<std::uint64_t> bytes;
  for (std::uint32_t i = 0; i < header.entries.size(); ++i) {
    names.push_back(header.entries[i].name);
    bytes.push_back(session.tensor_bytes(i));
  }
  WEIGHTD_ASSIGN_OR_RETURN(
      std::vector<char*> ranges,
      SegmentRanges(segment, places, names, bytes, header.format));
  const std::uint64_t chunk_bytes = store.options().chunk_bytes;
  const std::size_t element = ElementBytes(header.format);
  for (std::uint32_t i = 0; i < ranges.size(); ++i) {
    for (std::uint64_t offset = 0; offset < bytes[i];) {
      const std::uint64_t length = ChunkLength(bytes[i], chunk_bytes, offset);
      const absl::string_view data(ranges[i] + offset / kFloatBytes * element,
                                   length / kFloatBytes * element);
      WEIGHTD_RETURN_IF_ERROR(session.AddChunk(i, offset, data));
      payload->Received(header.format, PayloadPath::kSharedMemory, data.size());
      offset += length;
    }
  }
  return absl::OkStatus();
}

// A segment call's answer: waits until every `wanted` version is reached
// (keeping lease `lease_id` alive), then on `writes` (the wait fires on the
// thread that closed the round, once for every waiting call) writes the
// tensors into `segment` at `places` in `format`, describes them in `out`
// and answers `call`. A wait that fired is not ended by a cancellation, so
// the call stays open until it is answered here.
template <typename Call>
void WaitThenWriteToSegment(
    Call* call, core::TensorStore* store, WorkQueue& writes,
    PayloadCounters* payload, const core::TensorStore::VersionRequest& wanted,
    std::uint64_t lease_id, std::shared_ptr<Segment> segment,
    const google::protobuf::RepeatedPtrField<v1::SegmentPlace>& places,
    WireFormat format,
    google::protobuf::RepeatedPtrField<v1::TensorInfo>* out) {
  std::vector<std::string> names;
  for (const auto& [name, version] : wanted) names.push_back(name);
  call->Wait(
      [&](WaitDone done) {
        return store->WaitForVersions(wanted, std::move(done), lease_id);
      },
      [call, store, &writes, payload, segment = std::move(segment), &places,
       format, out, names = std::move(names)](absl::Status status) {
        if (!status.ok()) return call->Answer(status);
        writes.Post(
            [call, store, payload, segment, &places, format, out, names] {
              auto published = store->Read(names);
              if (!published.ok()) return call->Answer(published.status());
              call->Answer(WriteToSegment(*segment, places, names, *published,
                                          format, payload, out));
            });
      });
}

// The answer to a segment call of a lease that attached no segment.
absl::Status NoSegment(std::uint64_t lease_id) {
  return absl::FailedPreconditionError(absl::StrCat(
      "lease ", lease_id,
      " has no shared-memory segment here (AttachSegment first, or it ended "
      "with the lease or a restart of weightd); use the stream calls"));
}

// The answer to every call that arrives before the store is attached.
grpc::Status NotReady() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "weightd is restoring its state from a snapshot and "
                      "does not serve yet; retry shortly");
}

// Ends a call from any thread with a status its client receives, also
// once its reactor is gone: it holds a reference to the gRPC call. The
// reactor then sees a cancelled call (OnCancel, failed reads) and ends as
// for a client's cancellation.
class CallCutter {
 public:
  explicit CallCutter(grpc::CallbackServerContext* context)
      : call_(context->c_call()) {
    grpc_call_ref(call_);
  }
  CallCutter(const CallCutter&) = delete;
  CallCutter& operator=(const CallCutter&) = delete;
  ~CallCutter() { grpc_call_unref(call_); }

  void Cut(const absl::Status& status) const {
    const std::string message(status.message());
    grpc_call_cancel_with_status(call_,
                                 static_cast<grpc_status_code>(status.code()),
                                 message.c_str(), nullptr);
  }

 private:
  grpc_call* const call_;
};

// A call answered at once: refused, or the server not ready.
template <typename Reactor>
class FinishedReactor final : public Reactor {
 public:
  explicit FinishedReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

WeightdService::WeightdService(const ServiceOptions& options)
    : own_metrics_(options.metrics == nullptr ? std::make_unique<Metrics>()
                                              : nullptr),
      metrics_(options.metrics != nullptr ? options.metrics
                                          : own_metrics_.get()),
      authorizer_(options.authorizer),
      shared_memory_(options.shared_memory),
      pacer_(options.pace_pushes ? kPushLeadBytes : 0, kPushStall),
      calls_(options.max_calls),
      stalls_(options.stall_timeout) {
  shard_.set_index(options.shard_index);
  shard_.set_count(options.shard_count);
}

void WeightdService::Attach(core::TensorStore* store,
                            storage::Snapshotter* snapshotter) {
  snapshotter_ = snapshotter;
  store_.store(store, std::memory_order_release);
}

core::TensorStore* WeightdService::store() const {
  return store_.load(std::memory_order_acquire);
}

absl::StatusOr<WeightdService::Admitted> WeightdService::Admit(
    const grpc::CallbackServerContext* context, Rpc rpc) {
  Admitted admitted{Permissions::Unrestricted(), CallCounter::Slot()};
  if (authorizer_ != nullptr) {
    WEIGHTD_ASSIGN_OR_RETURN(admitted.permissions,
                             authorizer_->Admit(*context, rpc));
  }
  WEIGHTD_ASSIGN_OR_RETURN(admitted.slot, calls_.Acquire());
  return admitted;
}

std::unique_ptr<StallWatch::Reader> WeightdService::WatchReads(
    grpc::CallbackServerContext* context, const char* call) {
  if (stalls_.timeout() == absl::InfiniteDuration()) return nullptr;
  return stalls_.Watch([cutter = std::make_shared<CallCutter>(context), call,
                        peer = context->peer(), events = &events_,
                        timeout = stalls_.timeout()](absl::Duration waited) {
    const absl::Status status = absl::DeadlineExceededError(absl::StrCat(
        call, " sent nothing for ", HumanDuration(waited),
        " in the middle of its stream, more than the server allows (",
        HumanDuration(timeout),
        ", --stall_timeout): the call is cut; send it again to complete "
        "it"));
    events->Refused(call, peer, status);
    cutter->Cut(status);
  });
}

grpc::ServerReadReactor<grpc::ByteBuffer>* WeightdService::Join(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new FinishedReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>(
        NotReady());
  }
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kJoin);
  if (!admitted.ok()) {
    return new FinishedReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>(
        CallInfo{&events_, "Join", context}.Answer(admitted.status()));
  }
  return new JoinReactor(store, &payload_, metrics_, shard_, context, response,
                         &events_, std::move(admitted->permissions),
                         std::move(admitted->slot),
                         WatchReads(context, "Join"));
}

grpc::ServerReadReactor<grpc::ByteBuffer>* WeightdService::Push(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new FinishedReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>(
        NotReady());
  }
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kPush);
  if (!admitted.ok()) {
    return new FinishedReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>(
        CallInfo{&events_, "Push", context}.Answer(admitted.status()));
  }
  return new PushReactor(store, &payload_, metrics_, context, response,
                         &events_, std::move(admitted->permissions),
                         std::move(admitted->slot),
                         WatchReads(context, "Push"));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* WeightdService::Pull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new FinishedReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        NotReady());
  }
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kPull);
  if (!admitted.ok()) {
    return new FinishedReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        CallInfo{&events_, "Pull", context}.Answer(admitted.status()));
  }
  return new PullReactor(
      store, &payload_, *request, CallInfo{&events_, "Pull", context},
      std::move(admitted->permissions), std::move(admitted->slot));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
WeightdService::PushPull(grpc::CallbackServerContext* context) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new FinishedReactor<
        grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(
        NotReady());
  }
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kPushPull);
  if (!admitted.ok()) {
    return new FinishedReactor<
        grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(
        CallInfo{&events_, "PushPull", context}.Answer(admitted.status()));
  }
  return new PushPullReactor(store, &payload_, metrics_, context, &events_,
                             &pacer_, std::move(admitted->permissions),
                             std::move(admitted->slot),
                             WatchReads(context, "PushPull"));
}

grpc::ServerUnaryReactor* WeightdService::Leave(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kLeave);
  if (!admitted.ok()) {
    return FinishUnary(context, CallInfo{&events_, "Leave", context}.Answer(
                                    admitted.status()));
  }
  return UnaryReactor<v1::LeaveRequest, v1::LeaveResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "Leave", context},
      [&](const v1::LeaveRequest& request, v1::LeaveResponse*, auto* call) {
        if (absl::Status s =
                MayUseLease(admitted->permissions, *store, request.lease_id());
            !s.ok()) {
          return call->Answer(s);
        }
        absl::StatusOr<std::string> left = store->Leave(request.lease_id());
        if (left.ok()) {
          events_.Left(*left);
          metrics_->Left();
          SweepSegments();
        }
        call->Answer(left.status());
      });
}

grpc::ServerUnaryReactor* WeightdService::Heartbeat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kHeartbeat);
  if (!admitted.ok()) {
    return FinishUnary(context, CallInfo{&events_, "Heartbeat", context}.Answer(
                                    admitted.status()));
  }
  return UnaryReactor<v1::HeartbeatRequest, v1::HeartbeatResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "Heartbeat", context},
      [&](const v1::HeartbeatRequest& request, v1::HeartbeatResponse*,
          auto* call) {
        absl::Status s =
            MayUseLease(admitted->permissions, *store, request.lease_id());
        call->Answer(s.ok() ? store->Heartbeat(request.lease_id()) : s);
      });
}

grpc::ServerUnaryReactor* WeightdService::Barrier(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kBarrier);
  if (!admitted.ok()) {
    return FinishUnary(context, CallInfo{&events_, "Barrier", context}.Answer(
                                    admitted.status()));
  }
  return UnaryReactor<v1::BarrierRequest, v1::BarrierResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "Barrier", context},
      [&](const v1::BarrierRequest& request, v1::BarrierResponse* response,
          auto* call) {
        if (absl::Status s =
                MayUseLease(admitted->permissions, *store, request.lease_id());
            !s.ok()) {
          return call->Answer(s);
        }
        // Written by the store before it releases the call.
        auto pass = std::make_shared<core::BarrierPass>();
        call->Wait(
            [&](WaitDone done) {
              return store->EnterBarrier(request.lease_id(), request.name(),
                                         request.count(), std::move(done),
                                         pass.get());
            },
            [call, response, pass](absl::Status status) {
              if (status.ok()) {
                response->set_arrival(pass->arrival);
                response->set_generation(pass->generation);
              }
              call->Answer(status);
            });
      });
}

grpc::ServerUnaryReactor* WeightdService::TakeSnapshot(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (store() == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kTakeSnapshot);
  if (!admitted.ok()) {
    return FinishUnary(
        context,
        CallInfo{&events_, "TakeSnapshot", context}.Answer(admitted.status()));
  }
  return UnaryReactor<v1::TakeSnapshotRequest, v1::TakeSnapshotResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "TakeSnapshot", context},
      [this](const v1::TakeSnapshotRequest&, v1::TakeSnapshotResponse* response,
             auto* call) {
        if (snapshotter_ == nullptr) {
          return call->Answer(absl::FailedPreconditionError(
              "this server runs without --snapshot_dir; there is nowhere to "
              "write"));
        }
        // Written on the snapshot thread; the call finishes from there.
        snapshotter_->Request(
            [call, response](absl::StatusOr<std::string> written) {
              if (written.ok()) response->set_path(*written);
              call->Answer(written.status());
            });
      });
}

grpc::ServerUnaryReactor* WeightdService::GetStatus(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kGetStatus);
  if (!admitted.ok()) {
    return FinishUnary(context, CallInfo{&events_, "GetStatus", context}.Answer(
                                    admitted.status()));
  }
  return UnaryReactor<v1::GetStatusRequest, v1::GetStatusResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "GetStatus", context},
      [&](const v1::GetStatusRequest& request, v1::GetStatusResponse* response,
          auto* call) {
        const core::StoreStatus status = store->Status();
        const core::StoreOptions& options = store->options();
        response->set_mode(ModeToProto(options.mode));
        response->set_chunk_bytes(options.chunk_bytes);
        response->set_server_lr(options.server_lr);
        *response->mutable_shard() = shard_;
        response->set_tensor_count(status.tensors.size());
        response->set_worker_count(status.workers.size());
        // A non-admin sees the tensors and workers its patterns name.
        if (request.include_tensors()) {
          for (core::TensorInfo t : status.tensors) {
            if (!admitted->permissions.MayUseTensor(t.name).ok()) continue;
            t.waiting_for.erase(
                std::remove_if(
                    t.waiting_for.begin(), t.waiting_for.end(),
                    [&](const std::string& w) {
                      return !admitted->permissions.MayJoinAs(w).ok();
                    }),
                t.waiting_for.end());
            InfoToProto(t, response->add_tensors());
          }
        }
        if (request.include_workers()) {
          for (const core::WorkerInfo& w : status.workers) {
            if (!admitted->permissions.MayJoinAs(w.worker_id).ok()) continue;
            v1::WorkerInfo* out = response->add_workers();
            out->set_worker_id(w.worker_id);
            // A lease id is what a call acts as: admins only.
            if (admitted->permissions.admin()) out->set_lease_id(w.lease_id);
            for (const std::string& t : w.tensors) out->add_tensors(t);
            out->set_peer(w.peer);
            out->set_member_for_ms(absl::ToInt64Milliseconds(w.member_for));
            out->set_idle_ms(absl::ToInt64Milliseconds(w.idle));
          }
        }
        for (const core::BarrierInfo& b : status.barriers) {
          v1::BarrierInfo* out = response->add_barriers();
          out->set_name(b.name);
          out->set_count(b.count);
          out->set_waiting(b.waiting);
          out->set_released(b.released);
          for (const std::string& w : b.waiting_workers) {
            if (admitted->permissions.MayJoinAs(w).ok()) {
              out->add_waiting_workers(w);
            }
          }
        }
        response->set_bytes_received(payload_.total_received());
        response->set_bytes_sent(payload_.total_sent());
        response->set_rounds_closed(status.rounds_closed);
        response->set_refused_unauthenticated(events_.unauthenticated());
        response->set_refused_permission_denied(events_.permission_denied());
        response->set_refused_busy(calls_.refused());
        response->set_stalled_calls_cut(stalls_.cut());
        if (snapshotter_ != nullptr) {
          response->set_snapshots_written(snapshotter_->written());
          response->set_snapshot_failures(snapshotter_->failed());
        }
        call->Answer(absl::OkStatus());
      });
}

grpc::ServerUnaryReactor* WeightdService::GetHistory(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kGetHistory);
  if (!admitted.ok()) {
    return FinishUnary(
        context,
        CallInfo{&events_, "GetHistory", context}.Answer(admitted.status()));
  }
  return UnaryReactor<v1::GetHistoryRequest, v1::GetHistoryResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "GetHistory", context},
      [&](const v1::GetHistoryRequest& request,
          v1::GetHistoryResponse* response, auto* call) {
        if (absl::Status s =
                admitted->permissions.MayUseTensor(request.tensor());
            !s.ok()) {
          return call->Answer(s);
        }
        // Bounded: a response of at most kMaxHistoryRecords records.
        const std::size_t last =
            request.last() == 0
                ? kMaxHistoryRecords
                : std::min<std::size_t>(request.last(), kMaxHistoryRecords);
        absl::StatusOr<core::TensorHistory> history =
            store->History(request.tensor(), request.from_version(),
                           request.to_version(), last);
        if (!history.ok()) return call->Answer(history.status());
        const Permissions& permissions = admitted->permissions;
        for (const core::VersionRecord& r : history->records) {
          v1::VersionRecord* out = response->add_records();
          RecordToProto(r, out);
          // Worker ids the caller's patterns do not show, as GetStatus.
          for (v1::HistoryContribution& c : *out->mutable_contributions()) {
            if (!permissions.MayJoinAs(c.worker_id()).ok()) c.clear_worker_id();
          }
          auto* dropped = out->mutable_dropped();
          dropped->erase(std::remove_if(dropped->begin(), dropped->end(),
                                        [&](const std::string& w) {
                                          return !permissions.MayJoinAs(w).ok();
                                        }),
                         dropped->end());
        }
        response->set_oldest_kept(history->oldest_kept);
        response->set_version(history->version);
        call->Answer(absl::OkStatus());
      });
}

grpc::ServerUnaryReactor* WeightdService::DropTensor(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kDropTensor);
  if (!admitted.ok()) {
    return FinishUnary(
        context,
        CallInfo{&events_, "DropTensor", context}.Answer(admitted.status()));
  }
  return UnaryReactor<v1::DropTensorRequest, v1::DropTensorResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "DropTensor", context},
      [&](const v1::DropTensorRequest& request,
          v1::DropTensorResponse* response, auto* call) {
        absl::StatusOr<core::DropResult> dropped =
            store->Drop(request.tensor(), request.force());
        if (!dropped.ok()) return call->Answer(dropped.status());
        for (const std::string& w : dropped->removed_workers) {
          response->add_removed_workers(w);
        }
        response->set_freed_bytes(dropped->freed_bytes);
        events_.Dropped(
            request.tensor(),
            admitted->permissions.principal_name().empty()
                ? context->peer()
                : absl::StrCat(admitted->permissions.principal_name(), " (",
                               context->peer(), ")"),
            *dropped);
        call->Answer(absl::OkStatus());
      });
}

grpc::ServerUnaryReactor* WeightdService::AttachSegment(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kAttachSegment);
  if (!admitted.ok()) {
    return FinishUnary(
        context,
        CallInfo{&events_, "AttachSegment", context}.Answer(admitted.status()));
  }
  return UnaryReactor<v1::AttachSegmentRequest, v1::AttachSegmentResponse>::
      Serve(*request, response, std::move(admitted->slot),
            CallInfo{&events_, "AttachSegment", context},
            [&](const v1::AttachSegmentRequest& request,
                v1::AttachSegmentResponse*, auto* call) {
              if (absl::Status s = MayUseLease(admitted->permissions, *store,
                                               request.lease_id());
                  !s.ok()) {
                return call->Answer(s);
              }
              if (absl::Status s = store->Heartbeat(request.lease_id());
                  !s.ok()) {
                return call->Answer(s);
              }
              if (!shared_memory_) {
                return call->Answer(absl::FailedPreconditionError(
                    "this weightd runs with --shared_memory=false: use the "
                    "stream calls"));
              }
              absl::StatusOr<std::shared_ptr<Segment>> segment = Segment::Open(
                  request.pid(), request.fd(), request.size(), request.token());
              if (!segment.ok()) return call->Answer(segment.status());
              segments_.Attach(request.lease_id(), *std::move(segment));
              events_.SegmentAttached(request.lease_id(), context->peer(),
                                      request.pid(), request.size());
              call->Answer(absl::OkStatus());
            });
}

grpc::ServerUnaryReactor* WeightdService::PushSegment(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kPushSegment);
  if (!admitted.ok()) {
    return FinishUnary(
        context,
        CallInfo{&events_, "PushSegment", context}.Answer(admitted.status()));
  }
  return UnaryReactor<v1::PushSegmentRequest, v1::PushSegmentResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "PushSegment", context},
      [&](const v1::PushSegmentRequest& request,
          v1::PushSegmentResponse* response, auto* call) {
        // Counted when the push ends (after its turn, if it waits).
        auto tally = std::make_shared<PushTally>(metrics_);
        auto refuse = [&](const absl::Status& status) {
          tally->Failed(status);
          return call->Answer(status);
        };
        absl::StatusOr<core::PushHeader> header =
            PushHeaderFromProto(request.header());
        if (!header.ok()) return refuse(header.status());
        if (absl::Status s = MayPush(admitted->permissions, *store, *header);
            !s.ok()) {
          return refuse(s);
        }
        std::shared_ptr<Segment> segment = segments_.Find(header->lease_id);
        if (segment == nullptr) return refuse(NoSegment(header->lease_id));
        absl::StatusOr<std::unique_ptr<core::PushSession>> begun =
            store->BeginPush(*std::move(header));
        if (!begun.ok()) return refuse(begun.status());
        std::shared_ptr<core::PushSession> session = *std::move(begun);
        // Sums (sync) or stages the values; then applies them and answers.
        absl::Status staged = StageFromSegment(*store, *session, *segment,
                                               request.places(), &payload_);
        if (!staged.ok()) return refuse(staged);
        auto complete = [this, store, session, segment, call, &request,
                         response, tally]() mutable {
          absl::StatusOr<std::vector<core::PushResult>> results =
              session->Finish();
          tally->Ended(results);
          if (!results.ok()) return call->Answer(results.status());
          for (const core::PushResult& r : *results) {
            PushResultToProto(r, response->add_tensors());
          }
          if (!request.pull_result()) return call->Answer(absl::OkStatus());
          // The round's result, once published, over the pushed values.
          core::TensorStore::VersionRequest wanted;
          for (const core::PushResult& r : *results) {
            wanted.emplace_back(r.name, r.outcome.ready_version);
          }
          const core::PushHeader& pushed = session->header();
          WaitThenWriteToSegment(call, store, segment_writes_, &payload_,
                                 wanted, pushed.lease_id, std::move(segment),
                                 request.places(), pushed.format,
                                 response->mutable_results());
        };
        CompleteInTurn(
            *session, *tally,
            [call](const RegisterWait& turn, WaitDone ready) {
              call->Wait(turn, std::move(ready));
            },
            std::move(complete),
            [call](const absl::Status& status) { call->Answer(status); });
      });
}

grpc::ServerUnaryReactor* WeightdService::PullSegment(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  absl::StatusOr<Admitted> admitted = Admit(context, Rpc::kPullSegment);
  if (!admitted.ok()) {
    return FinishUnary(
        context,
        CallInfo{&events_, "PullSegment", context}.Answer(admitted.status()));
  }
  return UnaryReactor<v1::PullSegmentRequest, v1::PullSegmentResponse>::Serve(
      *request, response, std::move(admitted->slot),
      CallInfo{&events_, "PullSegment", context},
      [&](const v1::PullSegmentRequest& request,
          v1::PullSegmentResponse* response, auto* call) {
        const v1::PullRequest& pull = request.request();
        if (absl::Status s = MayPull(admitted->permissions, *store, pull);
            !s.ok()) {
          return call->Answer(s);
        }
        std::shared_ptr<Segment> segment = segments_.Find(pull.lease_id());
        if (segment == nullptr) {
          return call->Answer(NoSegment(pull.lease_id()));
        }
        absl::StatusOr<WireFormat> format = WireFormatFromProto(pull.format());
        if (!format.ok()) return call->Answer(format.status());
        core::TensorStore::VersionRequest wanted;
        for (const v1::PulledTensor& t : pull.tensors()) {
          wanted.emplace_back(t.name(), t.min_version());
        }
        if (wanted.empty()) {
          return call->Answer(
              absl::InvalidArgumentError("PullSegment names no tensors"));
        }
        WaitThenWriteToSegment(call, store, segment_writes_, &payload_, wanted,
                               pull.lease_id(), std::move(segment),
                               request.places(), *format,
                               response->mutable_tensors());
      });
}

void WeightdService::SweepSegments() {
  core::TensorStore* store = this->store();
  if (store == nullptr) return;
  segments_.Sweep(
      [store](std::uint64_t lease_id) { return store->HoldsLease(lease_id); });
}

}  // namespace weightd::service
