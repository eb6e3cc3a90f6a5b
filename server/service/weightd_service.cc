#include "server/service/weightd_service.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/chunk_codec.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "common/wire_format.h"

namespace weightd::service {
namespace {

absl::StatusOr<core::UpdateKind> KindFromProto(v1::UpdateKind kind) {
  switch (kind) {
    case v1::UPDATE_KIND_WEIGHTS:
      return core::UpdateKind::kWeights;
    case v1::UPDATE_KIND_DELTA:
      return core::UpdateKind::kDelta;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("push header has update kind ", static_cast<int>(kind),
                       "; use UPDATE_KIND_WEIGHTS or UPDATE_KIND_DELTA"));
  }
}

absl::StatusOr<WireFormat> FormatFromProto(v1::WireFormat format) {
  switch (format) {
    case v1::WIRE_FORMAT_FLOAT32:
      return WireFormat::kFloat32;
    case v1::WIRE_FORMAT_BFLOAT16:
      return WireFormat::kBfloat16;
    case v1::WIRE_FORMAT_FLOAT16:
      return WireFormat::kFloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "wire format ", static_cast<int>(format),
          " is unknown; use WIRE_FORMAT_FLOAT32, _BFLOAT16 or _FLOAT16"));
  }
}

v1::Mode ModeToProto(core::Mode mode) {
  return mode == core::Mode::kSync ? v1::MODE_SYNC : v1::MODE_ASYNC;
}

void InfoToProto(const core::TensorInfo& info, v1::TensorInfo* out) {
  out->set_name(info.name);
  for (std::int64_t d : info.shape) out->add_shape(d);
  out->set_version(info.version);
  out->set_participants(info.participants);
  out->set_contributed(info.contributed);
}

absl::StatusOr<core::PushHeader> PushHeaderFromProto(const v1::PushHeader& h) {
  core::PushHeader header;
  header.lease_id = h.lease_id();
  header.sequence = h.sequence();
  WEIGHTD_ASSIGN_OR_RETURN(header.kind, KindFromProto(h.kind()));
  header.weight = h.has_weight() ? h.weight() : 1.0;
  WEIGHTD_ASSIGN_OR_RETURN(header.format, FormatFromProto(h.format()));
  header.entries.reserve(h.tensors_size());
  for (const v1::PushedTensor& t : h.tensors()) {
    header.entries.push_back({t.name(), t.round()});
  }
  return header;
}

absl::Status MissingHeader(absl::string_view call) {
  return absl::InvalidArgumentError(absl::StrCat(
      "the first message of a ", call, " call must carry the header"));
}

absl::Status RepeatedHeader(absl::string_view call) {
  return absl::InvalidArgumentError(
      absl::StrCat("a ", call, " call carries exactly one header"));
}

// Parses a whole message that arrived as bytes (every method is raw). The
// error names the call and the message: "a Leave request is not a valid
// weightd.v1.LeaveRequest".
absl::Status ParseMessage(grpc::ByteBuffer* bytes,
                          google::protobuf::MessageLite* message,
                          absl::string_view call,
                          absl::string_view noun = "message") {
  if (!FromBytes(bytes, message)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", call, " ", noun, " is not a valid ", message->GetTypeName()));
  }
  return absl::OkStatus();
}

// Streams published tensors (TensorStore::Read) as one header message, then
// their chunks.
// The messages are those of Pull and PushPull (the same on the wire). Each
// chunk refers to the immutable published value, never a copy of it (or,
// for 16-bit formats, to its encoding, made once per version).
class TensorStreamer {
 public:
  TensorStreamer(std::vector<std::string> names,
                 std::vector<core::PublishedTensor> published,
                 std::uint64_t chunk_bytes, WireFormat format, bool batches)
      : names_(std::move(names)),
        published_(std::move(published)),
        chunk_bytes_(chunk_bytes),
        format_(format),
        batches_(batches) {}

  // True once Next() returned the last message.
  bool finished() { return header_sent_ && !Peek().has_value(); }

  // Fills `msg` with the next message and returns its payload bytes, or
  // returns nullopt when everything was sent. Small chunks go packed into
  // one ChunkBatch if the caller accepts batches (their few bytes copied
  // into its buffer); the others, one per message, without a copy.
  std::optional<std::uint64_t> Next(grpc::ByteBuffer* msg) {
    if (!header_sent_) {
      header_sent_ = true;
      v1::PullResponse response;
      v1::PullHeader* header = response.mutable_header();
      for (std::size_t i = 0; i < published_.size(); ++i) {
        v1::TensorInfo* info = header->add_tensors();
        info->set_name(names_[i]);
        for (std::int64_t d : published_[i].shape) info->add_shape(d);
        info->set_version(published_[i].version);
      }
      *msg = ToBytes(response);
      return 0;
    }
    std::optional<Chunk> chunk = Peek();
    if (!chunk.has_value()) return std::nullopt;
    if (!batches_ || chunk->covers >= kBatchChunksBelow) {
      offset_ += chunk->covers;
      *msg = EncodeChunk(chunk->index, chunk->offset, chunk->data, chunk->size,
                         std::move(chunk->keep));
      return chunk->size;
    }
    BatchWriter batch;
    while (chunk.has_value() && chunk->covers < kBatchChunksBelow &&
           batch.payload() + chunk->size <= chunk_bytes_ &&
           batch.chunks() < kMaxBatchChunks) {
      std::memcpy(batch.Add(chunk->index, chunk->offset, chunk->size),
                  chunk->data, chunk->size);
      offset_ += chunk->covers;
      chunk = Peek();
    }
    const std::uint64_t payload = batch.payload();
    *msg = batch.Finish();
    return payload;
  }

 private:
  struct Chunk {
    std::uint32_t index;
    std::uint64_t offset;
    std::uint64_t covers;  // Float32 bytes of the tensor.
    const char* data;      // Its payload in format_.
    std::uint64_t size;
    std::shared_ptr<const void> keep;  // Owns `data`.
  };

  // The chunk at (tensor_, offset_), skipping finished tensors.
  std::optional<Chunk> Peek() {
    for (; tensor_ < published_.size(); ++tensor_, offset_ = 0) {
      const core::PublishedTensor& published = published_[tensor_];
      const std::uint64_t bytes = published.value->size() * kFloatBytes;
      if (offset_ >= bytes) continue;
      const std::uint64_t length = ChunkLength(bytes, chunk_bytes_, offset_);
      const auto index = static_cast<std::uint32_t>(tensor_);
      if (format_ == WireFormat::kFloat32) {
        return Chunk{
            index,
            offset_,
            length,
            reinterpret_cast<const char*>(published.value->data()) + offset_,
            length,
            published.value};
      }
      const std::size_t element = ElementBytes(format_);
      return Chunk{index,
                   offset_,
                   length,
                   published.encoded->data() + offset_ / kFloatBytes * element,
                   length / kFloatBytes * element,
                   published.encoded};
    }
    return std::nullopt;
  }

  const std::vector<std::string> names_;
  const std::vector<core::PublishedTensor> published_;
  const std::uint64_t chunk_bytes_;
  const WireFormat format_;
  const bool batches_;
  bool header_sent_ = false;
  std::size_t tensor_ = 0;
  std::uint64_t offset_ = 0;
};

using WaitDone = std::function<void(absl::Status)>;

// Which call a reactor serves, for the log of refused calls.
// The peer is looked up only for a refusal: a string per call is not for
// the push path.
struct CallInfo {
  EventLog* log;
  const char* name;
  const grpc::CallbackServerContext* context;  // Lives until the call's end.

  // The wire status of a call that ends with `status`, logged if refused.
  // Call before finishing the call.
  grpc::Status Answer(const absl::Status& status) const {
    if (!status.ok()) log->Refused(name, context->peer(), status);
    return ToGrpcStatus(status);
  }
};

// Runs one core wait on behalf of a reactor whose Finish must be called
// exactly once, while the call's cancellation may race with the wait firing.
// `Reactor` is any server reactor (unary, write or bidi).
template <typename Reactor>
class ReactorWait {
 public:
  ReactorWait(Reactor* reactor, CallInfo call)
      : reactor_(reactor), call_(std::move(call)) {}

  using Register =
      std::function<absl::StatusOr<std::unique_ptr<core::Wait>>(WaitDone)>;

  // Registers the wait through `start`; `ready` runs once it fires (also
  // when it fires inside `start`, but only after `start` returned), unless
  // the call was cancelled first.
  void Start(const Register& start, WaitDone ready) {
    ready_ = std::move(ready);
    auto wait = start([this](absl::Status s) { OnFired(std::move(s)); });
    if (!wait.ok()) return FinishOnce(wait.status());
    std::optional<absl::Status> fired;
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      wait_ = std::move(*wait);
      started_ = true;
      fired = std::move(early_);
      cancelled = cancelled_;
    }
    if (fired.has_value()) return ready_(*fired);
    if (cancelled) CancelWait();
  }

  // From the reactor's OnCancel.
  void OnCancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!started_) return;  // Start() will see cancelled_.
    }
    CancelWait();
  }

  // Writes the last message and finishes with OK, unless the call was
  // finished already (a write reactor's). The last touch of this object.
  template <typename Message>
  void WriteAndFinishOnce(const Message* last) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    reactor_->StartWriteAndFinish(last, grpc::WriteOptions(), grpc::Status::OK);
  }

  // Finishes the call unless it already was. The last touch of this object.
  void FinishOnce(const absl::Status& status) {
    FinishOnce(status, [] {});
  }

  // The same, running `respond` first if the call was not finished yet (a
  // unary call's response is written there: never once gRPC may have
  // released it).
  void FinishOnce(const absl::Status& status,
                  absl::FunctionRef<void()> respond) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    respond();
    reactor_->Finish(call_.Answer(status));
  }

 private:
  // wait_ is set once, in Start(), before this can run.
  void CancelWait() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (wait_->Cancel()) {
      FinishOnce(absl::CancelledError("the call was cancelled while waiting"));
    }
  }

  void OnFired(absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (!started_) {  // Fired inside start(): Start() continues.
        early_ = std::move(status);
        return;
      }
    }
    ready_(status);
  }

  Reactor* const reactor_;
  const CallInfo call_;
  WaitDone ready_;
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> early_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<core::Wait> wait_ ABSL_GUARDED_BY(mu_);
};

// The write half shared by Pull and PushPull: wait for versions, then stream
// the tensors.
template <typename Reactor>
class WaitThenStream {
 public:
  WaitThenStream(Reactor* reactor, core::TensorStore* store,
                 TrafficCounters* traffic, CallInfo call)
      : reactor_(reactor),
        wait_(reactor, std::move(call)),
        store_(store),
        traffic_(traffic) {}

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
    traffic_->bytes_sent.fetch_add(*bytes, std::memory_order_relaxed);
    if (streamer_->finished()) {
      wait_.WriteAndFinishOnce(&response_);  // Last touch.
    } else {
      reactor_->StartWrite(&response_);  // Last touch.
    }
  }

  Reactor* const reactor_;
  ReactorWait<Reactor> wait_;
  core::TensorStore* const store_;
  TrafficCounters* const traffic_;
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
                                         CallInfo call, Handler handler) {
    const char* name = call.name;
    auto* reactor = new UnaryReactor(response, std::move(call));
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
  void Wait(const typename ReactorWait<UnaryReactor>::Register& start,
            WaitDone ready) {
    wait_.Start(start, std::move(ready));
  }

  void OnCancel() override { wait_.OnCancel(); }
  void OnDone() override { delete this; }

 private:
  UnaryReactor(grpc::ByteBuffer* response, CallInfo call)
      : response_bytes_(response), wait_(this, std::move(call)) {}

  grpc::ByteBuffer* const response_bytes_;
  Request request_;
  Response response_;
  ReactorWait<UnaryReactor> wait_;
};

// ---------------------------------------------------------------------------

class JoinReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  JoinReactor(core::TensorStore* store, TrafficCounters* traffic,
              const v1::ShardInfo& shard, grpc::CallbackServerContext* context,
              grpc::ByteBuffer* response, EventLog* events)
      : store_(store),
        traffic_(traffic),
        shard_(shard),
        context_(context),
        response_bytes_(response),
        events_(events),
        call_{events, "Join", context} {
    *response_.mutable_shard() = shard;
    StartRead(&request_bytes_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (context_->IsCancelled()) {
        return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      }
      const absl::Status joined = Complete();
      if (joined.ok()) *response_bytes_ = ToBytes(response_);
      return Finish(call_.Answer(joined));
    }
    absl::Status s = ParseMessage(&request_bytes_, &request_, "Join");
    if (s.ok()) s = Handle();
    if (!s.ok()) return Finish(call_.Answer(s));
    StartRead(&request_bytes_);
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Handle() {
    if (request_.has_header()) {
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
      header.claimant =
          core::Claimant{request_.header().instance(), context_->peer()};
      for (const v1::TensorDeclaration& d : request_.header().tensors()) {
        core::Declaration decl;
        decl.name = d.name();
        decl.shape.assign(d.shape().begin(), d.shape().end());
        decl.whole_shape.assign(d.whole_shape().begin(), d.whole_shape().end());
        header.declarations.push_back(std::move(decl));
      }
      // Refused before any initial value is buffered.
      WEIGHTD_ASSIGN_OR_RETURN(session_, store_->BeginJoin(std::move(header)));
      return absl::OkStatus();
    }
    if (!have_header_) return MissingHeader("Join");
    if (!request_.has_initial_value()) {
      return absl::InvalidArgumentError("Join message carries nothing");
    }
    const v1::TensorChunk& chunk = request_.initial_value();
    WEIGHTD_RETURN_IF_ERROR(
        session_->AddChunk(chunk.tensor_index(), chunk.offset(), chunk.data()));
    traffic_->bytes_received.fetch_add(chunk.data().size(),
                                       std::memory_order_relaxed);
    return absl::OkStatus();
  }

  absl::Status Complete() {
    if (!have_header_) return MissingHeader("Join");
    WEIGHTD_ASSIGN_OR_RETURN(core::JoinResult joined, session_->Finish());
    events_->Joined(session_->worker_id(), context_->peer(), joined);
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

  core::TensorStore* const store_;
  TrafficCounters* const traffic_;
  const v1::ShardInfo shard_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_bytes_;
  EventLog* const events_;
  const CallInfo call_;
  grpc::ByteBuffer request_bytes_;
  v1::JoinRequest request_;  // The last message read, parsed.
  v1::JoinResponse response_;
  bool have_header_ = false;
  std::unique_ptr<core::JoinSession> session_;  // Once the header is read.
};

// Reads a push stream (header, then chunks) into a core::PushSession.
// Shared by Push and PushPull, whose request messages are the same on the
// wire. Chunks are summed straight from the slices they arrived in.
class PushReader {
 public:
  PushReader(core::TensorStore* store, TrafficCounters* traffic,
             absl::string_view call)
      : store_(store), traffic_(traffic), call_(call) {}

  absl::Status Handle(grpc::ByteBuffer* message) {
    if (chunks_.Parse(*message)) {
      if (session_ == nullptr) return MissingHeader(call_);
      std::uint64_t payload = 0;
      for (const ChunkView& chunk : chunks_.chunks()) payload += chunk.size;
      WEIGHTD_RETURN_IF_ERROR(CheckBatch(chunks_.chunks().size(), payload));
      for (const ChunkView& chunk : chunks_.chunks()) {
        WEIGHTD_RETURN_IF_ERROR(
            AddChunk(chunk.tensor_index, chunk.offset, chunk.pieces));
      }
      return absl::OkStatus();
    }
    v1::PushRequest request;
    WEIGHTD_RETURN_IF_ERROR(ParseMessage(message, &request, call_));
    if (request.has_header()) {
      if (session_ != nullptr) return RepeatedHeader(call_);
      WEIGHTD_ASSIGN_OR_RETURN(core::PushHeader header,
                               PushHeaderFromProto(request.header()));
      WEIGHTD_ASSIGN_OR_RETURN(session_, store_->BeginPush(std::move(header)));
      accept_batches_ = request.header().accept_batches();
      return absl::OkStatus();
    }
    if (session_ == nullptr) return MissingHeader(call_);
    if (request.has_batch()) {
      std::uint64_t payload = 0;
      for (const v1::TensorChunk& chunk : request.batch().chunks()) {
        payload += chunk.data().size();
      }
      WEIGHTD_RETURN_IF_ERROR(
          CheckBatch(request.batch().chunks_size(), payload));
      for (const v1::TensorChunk& chunk : request.batch().chunks()) {
        const absl::string_view data = chunk.data();
        WEIGHTD_RETURN_IF_ERROR(AddChunk(chunk.tensor_index(), chunk.offset(),
                                         core::Pieces(&data, 1)));
      }
      return absl::OkStatus();
    }
    if (!request.has_chunk()) {
      return absl::InvalidArgumentError(
          absl::StrCat(call_, " message carries nothing"));
    }
    const absl::string_view data = request.chunk().data();
    return AddChunk(request.chunk().tensor_index(), request.chunk().offset(),
                    core::Pieces(&data, 1));
  }

  absl::StatusOr<std::vector<core::PushResult>> Finish() {
    if (session_ == nullptr) return MissingHeader(call_);
    return session_->Finish();
  }

  // The push's wire format, and whether its result may come in batches
  // (after a successful Finish()).
  WireFormat format() const { return session_->header().format; }
  std::uint64_t lease_id() const { return session_->header().lease_id; }
  bool accept_batches() const { return accept_batches_; }

 private:
  // A batch's limits (common/wire.h), checked before any of its chunks is
  // added. A lone chunk longer than chunk_bytes is refused by its length
  // check instead, which says more.
  absl::Status CheckBatch(std::size_t chunks, std::uint64_t payload) const {
    if (chunks > kMaxBatchChunks) {
      return absl::InvalidArgumentError(
          absl::StrCat("a batch of more than ", kMaxBatchChunks, " chunks"));
    }
    const std::uint64_t limit = store_->options().chunk_bytes;
    if (chunks > 1 && payload > limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a batch of ", chunks, " chunks carries ", payload,
          " bytes of payload; a batch carries at most the server's "
          "chunk_bytes (",
          limit, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status AddChunk(std::uint32_t index, std::uint64_t offset,
                        core::Pieces data) {
    WEIGHTD_RETURN_IF_ERROR(session_->AddChunk(index, offset, data));
    traffic_->bytes_received.fetch_add(core::PiecesSize(data),
                                       std::memory_order_relaxed);
    return absl::OkStatus();
  }

  core::TensorStore* const store_;
  TrafficCounters* const traffic_;
  const absl::string_view call_;
  std::unique_ptr<core::PushSession> session_;
  bool accept_batches_ = false;
  ChunkReader chunks_;
};

class PushReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  PushReactor(core::TensorStore* store, TrafficCounters* traffic,
              grpc::CallbackServerContext* context, grpc::ByteBuffer* response,
              EventLog* events)
      : reader_(store, traffic, "Push"),
        context_(context),
        response_(response),
        call_{events, "Push", context} {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (context_->IsCancelled()) {
        return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      }
      absl::StatusOr<std::vector<core::PushResult>> results = reader_.Finish();
      if (!results.ok()) return Finish(call_.Answer(results.status()));
      v1::PushResponse response;
      for (const core::PushResult& r : *results) {
        v1::PushedResult* out = response.add_tensors();
        out->set_name(r.name);
        out->set_round(r.outcome.round);
        out->set_version(r.outcome.version);
        out->set_duplicate(r.outcome.duplicate);
      }
      *response_ = ToBytes(response);
      return Finish(grpc::Status::OK);
    }
    if (absl::Status s = reader_.Handle(&request_); !s.ok()) {
      return Finish(call_.Answer(s));
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  PushReader reader_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
  const CallInfo call_;
  grpc::ByteBuffer request_;
};

class PullReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  PullReactor(core::TensorStore* store, TrafficCounters* traffic,
              grpc::ByteBuffer request_bytes, CallInfo call)
      : stream_(this, store, traffic, std::move(call)) {
    v1::PullRequest request;
    if (absl::Status s = ParseMessage(&request_bytes, &request, "Pull");
        !s.ok()) {
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
    absl::StatusOr<WireFormat> format = FormatFromProto(request.format());
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
  WaitThenStream<PullReactor> stream_;
};

class PushPullReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  PushPullReactor(core::TensorStore* store, TrafficCounters* traffic,
                  grpc::CallbackServerContext* context, EventLog* events)
      : reader_(store, traffic, "PushPull"),
        context_(context),
        stream_(this, store, traffic, CallInfo{events, "PushPull", context}) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (context_->IsCancelled()) {
        return stream_.FinishOnce(absl::CancelledError("cancelled"));
      }
      absl::StatusOr<std::vector<core::PushResult>> results = reader_.Finish();
      if (!results.ok()) return stream_.FinishOnce(results.status());
      core::TensorStore::VersionRequest wanted;
      for (const core::PushResult& r : *results) {
        wanted.emplace_back(r.name, r.outcome.ready_version);
      }
      return stream_.Start(std::move(wanted), reader_.format(),
                           reader_.accept_batches(), reader_.lease_id());
    }
    if (absl::Status s = reader_.Handle(&request_); !s.ok()) {
      return stream_.FinishOnce(s);
    }
    StartRead(&request_);
  }

  void OnCancel() override { stream_.OnCancel(); }
  void OnWriteDone(bool ok) override { stream_.OnWriteDone(ok); }
  void OnDone() override { delete this; }

 private:
  PushReader reader_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer request_;
  WaitThenStream<PushPullReactor> stream_;
};

// The answer to every call that arrives before the store is attached.
grpc::Status NotReady() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "weightd is restoring its state from a snapshot and "
                      "does not serve yet; retry shortly");
}

template <typename Reactor>
class NotReadyReactor final : public Reactor {
 public:
  NotReadyReactor() { this->Finish(NotReady()); }
  void OnDone() override { delete this; }
};

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

WeightdService::WeightdService(std::uint32_t shard_index,
                               std::uint32_t shard_count) {
  shard_.set_index(shard_index);
  shard_.set_count(shard_count);
}

void WeightdService::Attach(core::TensorStore* store,
                            storage::Snapshotter* snapshotter) {
  snapshotter_ = snapshotter;
  store_.store(store, std::memory_order_release);
}

core::TensorStore* WeightdService::store() const {
  return store_.load(std::memory_order_acquire);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* WeightdService::Join(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new NotReadyReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>();
  }
  return new JoinReactor(store, &traffic_, shard_, context, response, &events_);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* WeightdService::Push(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new NotReadyReactor<grpc::ServerReadReactor<grpc::ByteBuffer>>();
  }
  return new PushReactor(store, &traffic_, context, response, &events_);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* WeightdService::Pull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new NotReadyReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>>();
  }
  return new PullReactor(store, &traffic_, *request,
                         CallInfo{&events_, "Pull", context});
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*
WeightdService::PushPull(grpc::CallbackServerContext* context) {
  core::TensorStore* store = this->store();
  if (store == nullptr) {
    return new NotReadyReactor<
        grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>();
  }
  return new PushPullReactor(store, &traffic_, context, &events_);
}

grpc::ServerUnaryReactor* WeightdService::Leave(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  return UnaryReactor<v1::LeaveRequest, v1::LeaveResponse>::Serve(
      *request, response, CallInfo{&events_, "Leave", context},
      [&](const v1::LeaveRequest& request, v1::LeaveResponse*, auto* call) {
        absl::StatusOr<std::string> left = store->Leave(request.lease_id());
        if (left.ok()) events_.Left(*left);
        call->Answer(left.status());
      });
}

grpc::ServerUnaryReactor* WeightdService::Heartbeat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  return UnaryReactor<v1::HeartbeatRequest, v1::HeartbeatResponse>::Serve(
      *request, response, CallInfo{&events_, "Heartbeat", context},
      [&](const v1::HeartbeatRequest& request, v1::HeartbeatResponse*,
          auto* call) { call->Answer(store->Heartbeat(request.lease_id())); });
}

grpc::ServerUnaryReactor* WeightdService::Barrier(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  core::TensorStore* store = this->store();
  if (store == nullptr) return FinishUnary(context, NotReady());
  return UnaryReactor<v1::BarrierRequest, v1::BarrierResponse>::Serve(
      *request, response, CallInfo{&events_, "Barrier", context},
      [&](const v1::BarrierRequest& request, v1::BarrierResponse* response,
          auto* call) {
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
  return UnaryReactor<v1::TakeSnapshotRequest, v1::TakeSnapshotResponse>::Serve(
      *request, response, CallInfo{&events_, "TakeSnapshot", context},
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
  return UnaryReactor<v1::GetStatusRequest, v1::GetStatusResponse>::Serve(
      *request, response, CallInfo{&events_, "GetStatus", context},
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
        if (request.include_tensors()) {
          for (const core::TensorInfo& t : status.tensors) {
            InfoToProto(t, response->add_tensors());
          }
        }
        if (request.include_workers()) {
          for (const core::WorkerInfo& w : status.workers) {
            v1::WorkerInfo* out = response->add_workers();
            out->set_worker_id(w.worker_id);
            out->set_lease_id(w.lease_id);
            for (const std::string& t : w.tensors) out->add_tensors(t);
            out->set_peer(w.peer);
          }
        }
        for (const core::BarrierInfo& b : status.barriers) {
          v1::BarrierInfo* out = response->add_barriers();
          out->set_name(b.name);
          out->set_count(b.count);
          out->set_waiting(b.waiting);
          out->set_released(b.released);
        }
        response->set_bytes_received(
            traffic_.bytes_received.load(std::memory_order_relaxed));
        response->set_bytes_sent(
            traffic_.bytes_sent.load(std::memory_order_relaxed));
        response->set_rounds_closed(status.rounds_closed);
        if (snapshotter_ != nullptr) {
          response->set_snapshots_written(snapshotter_->written());
          response->set_snapshot_failures(snapshotter_->failed());
        }
        call->Answer(absl::OkStatus());
      });
}

}  // namespace weightd::service
