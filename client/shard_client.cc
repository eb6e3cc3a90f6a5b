#include "client/shard_client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/chunk_codec.h"
#include "common/duration.h"
#include "common/grpc_status.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

// Room for headers listing thousands of tensors next to a chunk.
constexpr int kMaxMessageBytes = 64 << 20;

std::uint64_t ElementsOf(const std::vector<std::int64_t>& shape) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) n *= d < 0 ? 0 : static_cast<std::uint64_t>(d);
  return n;
}

absl::Status Annotate(const grpc::Status& status, absl::string_view call) {
  absl::Status s = FromGrpcStatus(status);
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(call, ": ", s.message()));
}

ShardLayout LayoutOf(const v1::ShardInfo& info) {
  // A count of 0 comes from a server that predates sharding.
  return info.count() == 0 ? ShardLayout{}
                           : ShardLayout{info.index(), info.count()};
}

v1::WireFormat FormatToProto(WireFormat format) {
  switch (format) {
    case WireFormat::kBfloat16:
      return v1::WIRE_FORMAT_BFLOAT16;
    case WireFormat::kFloat16:
      return v1::WIRE_FORMAT_FLOAT16;
    case WireFormat::kFloat32:
      break;
  }
  return v1::WIRE_FORMAT_FLOAT32;
}

// Reads a pull-shaped stream (header, then chunks) into the callers' spans,
// copying each chunk once, from the slices it arrived in. Checks everything
// the server sends: a bad server cannot make the client write outside the
// spans. UNAVAILABLE if the stream ended early (Finish() then says why);
// DATA_LOSS if the server sent something malformed, after cancelling the
// call so that Finish() does not wait for the rest.
template <typename Stream>
absl::Status ReadTensors(Stream& stream, grpc::ClientContext& context,
                         WireFormat format, absl::Span<const TensorRef> tensors,
                         std::vector<std::uint64_t>& versions,
                         std::uint64_t& bytes_read) {
  auto malformed = [&context](absl::string_view what) {
    context.TryCancel();
    return absl::DataLossError(absl::StrCat("server sent ", what));
  };
  grpc::ByteBuffer bytes;
  v1::PullResponse msg;  // Wire-identical to PushPullResponse.
  if (!stream.Read(&bytes)) {
    return absl::UnavailableError("stream ended before the pull header");
  }
  if (!FromBytes(&bytes, &msg) || !msg.has_header() ||
      msg.header().tensors_size() != static_cast<int>(tensors.size())) {
    return malformed("a malformed pull header");
  }
  versions.resize(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const v1::TensorInfo& info = msg.header().tensors(static_cast<int>(i));
    if (info.name() != tensors[i].name ||
        ElementsOf({info.shape().begin(), info.shape().end()}) !=
            tensors[i].data.size()) {
      return malformed(absl::StrCat("tensor ", info.name(), " for ",
                                    tensors[i].name, " or a different size"));
    }
    versions[i] = info.version();
  }
  std::vector<std::uint64_t> next(tensors.size(), 0);
  // Copies one chunk into its tensor; false if it is out of place.
  auto take = [&](const ChunkView& chunk) {
    const std::uint32_t i = chunk.tensor_index;
    // Offsets are float32 bytes in every format.
    const std::uint64_t covers =
        chunk.size / ElementBytes(format) * kFloatBytes;
    if (i >= tensors.size() || chunk.offset != next[i] ||
        chunk.size % ElementBytes(format) != 0 ||
        covers > tensors[i].data.size() * kFloatBytes - chunk.offset) {
      return false;
    }
    DecodePieces(chunk.pieces, format,
                 tensors[i].data.data() + chunk.offset / kFloatBytes);
    next[i] += covers;
    bytes_read += chunk.size;
    return true;
  };
  ChunkReader reader;
  ChunkView single;
  while (stream.Read(&bytes)) {
    if (reader.Parse(bytes)) {
      for (const ChunkView& chunk : reader.chunks()) {
        if (!take(chunk)) return malformed("a chunk out of place");
      }
      continue;
    }
    // Not in the codec's form: encoded otherwise, or not a chunk at all.
    if (!FromBytes(&bytes, &msg) || !(msg.has_chunk() || msg.has_batch())) {
      return malformed("a second pull header or an unreadable message");
    }
    if (msg.has_chunk()) {  // Treated as a batch of one.
      v1::TensorChunk chunk = std::move(*msg.mutable_chunk());
      *msg.mutable_batch()->add_chunks() = std::move(chunk);
    }
    for (const v1::TensorChunk& c : msg.batch().chunks()) {
      single.tensor_index = c.tensor_index();
      single.offset = c.offset();
      single.pieces.assign(1, c.data());
      single.size = c.data().size();
      if (!take(single)) return malformed("a chunk out of place");
    }
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (next[i] != tensors[i].data.size() * kFloatBytes) {
      return absl::DataLossError(absl::StrCat(
          "pull of ", tensors[i].name, " ended after ", next[i], " bytes"));
    }
  }
  return absl::OkStatus();
}

// Writes a push header and every tensor's chunks, then half-closes. Each
// chunk's payload is copied (or encoded, for 16-bit formats) into a buffer
// gRPC owns, so the caller's buffers are theirs again when the call
// returns, even if a stalled connection still holds unsent bytes. Chunks
// below kBatchChunksBelow go packed into ChunkBatch messages: their bytes
// are few, their messages many.
template <typename Stream>
void WritePush(Stream& stream, const v1::PushHeader& header,
               absl::Span<const TensorRef> tensors, std::uint64_t chunk_bytes,
               WireFormat format, std::uint64_t& bytes_written) {
  v1::PushRequest msg;  // Wire-identical to PushPullRequest.
  *msg.mutable_header() = header;
  // Each message is written once the next exists, so that the last one
  // carries the half-close. (No buffer_hint on the header: a synchronous
  // write with it does not complete until something flushes it.)
  bool ok = stream.Write(ToBytes(msg));
  std::optional<grpc::ByteBuffer> pending;
  auto send = [&](grpc::ByteBuffer next) {
    if (pending.has_value()) ok = stream.Write(*pending);
    pending = std::move(next);
  };
  BatchWriter batch;
  std::uint64_t total = 0;  // Payload bytes; counted if the push went out.
  auto flush = [&] {
    if (batch.chunks() == 0) return;
    total += batch.payload();
    send(batch.Finish());
  };
  for (std::uint32_t i = 0; ok && i < tensors.size(); ++i) {
    const std::uint64_t bytes = tensors[i].data.size() * kFloatBytes;
    for (std::uint64_t off = 0; ok && off < bytes; off += chunk_bytes) {
      const std::uint64_t len = ChunkLength(bytes, chunk_bytes, off);
      const std::uint64_t count = len / kFloatBytes;
      const std::uint64_t size = count * ElementBytes(format);
      const float* values = tensors[i].data.data() + off / kFloatBytes;
      if (len < kBatchChunksBelow) {
        if (batch.payload() + size > chunk_bytes ||
            batch.chunks() == kMaxBatchChunks) {
          flush();
        }
        EncodeValues(values, count, format, batch.Add(i, off, size));
        continue;
      }
      flush();
      if (!ok) break;
      std::shared_ptr<char[]> payload(new char[size]);  // Not zero-filled.
      EncodeValues(values, count, format, payload.get());
      send(EncodeChunk(i, off, payload.get(), size, payload));
      total += size;
    }
  }
  if (ok) flush();
  // On a failed write the server has ended the call; Finish() says why.
  if (!ok) return;
  if (pending.has_value()) {
    ok = stream.Write(*pending, grpc::WriteOptions().set_last_message());
  } else {
    ok = stream.WritesDone();
  }
  if (ok) bytes_written += total;
}

// Writes the chunks of one Join initial value, reusing one message so the
// chunk buffer is allocated once per call.
template <typename Stream>
bool WriteInitialValue(Stream& stream, std::uint32_t index,
                       absl::Span<const float> data, std::uint64_t chunk_bytes,
                       v1::JoinRequest& msg, std::uint64_t& bytes_written) {
  const std::uint64_t bytes = data.size() * kFloatBytes;
  const char* base = reinterpret_cast<const char*>(data.data());
  for (std::uint64_t off = 0; off < bytes; off += chunk_bytes) {
    const std::uint64_t len = ChunkLength(bytes, chunk_bytes, off);
    v1::TensorChunk* chunk = msg.mutable_initial_value();
    chunk->set_tensor_index(index);
    chunk->set_offset(off);
    chunk->mutable_data()->assign(base + off, len);
    if (!stream.Write(msg)) return false;
    bytes_written += len;
  }
  return true;
}

}  // namespace

// Push, Pull and PushPull are called as raw methods (grpc::ByteBuffer
// messages, common/chunk_codec.h), through the factories generated stubs
// use; the other calls go through the generated stub.
struct ShardClient::Channel {
  explicit Channel(std::shared_ptr<grpc::Channel> c)
      : channel(std::move(c)),
        stub(v1::Weightd::NewStub(channel)),
        push("/weightd.v1.Weightd/Push",
             grpc::internal::RpcMethod::CLIENT_STREAMING, channel),
        pull("/weightd.v1.Weightd/Pull",
             grpc::internal::RpcMethod::SERVER_STREAMING, channel),
        push_pull("/weightd.v1.Weightd/PushPull",
                  grpc::internal::RpcMethod::BIDI_STREAMING, channel) {}

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Weightd::Stub> stub;
  const grpc::internal::RpcMethod push;
  const grpc::internal::RpcMethod pull;
  const grpc::internal::RpcMethod push_pull;
};

ShardClient::ShardClient(ClientOptions options, std::string address,
                         std::unique_ptr<Channel> channel,
                         std::uint64_t instance)
    : options_(std::move(options)),
      address_(std::move(address)),
      worker_id_(options_.worker_id),
      channel_(std::move(channel)),
      instance_(instance) {}

void ShardClient::Log(absl::string_view message) const {
  if (options_.log) return options_.log(message);
  std::fprintf(stderr, "weightd client %s: %s\n", worker_id_.c_str(),
               std::string(message).c_str());
}

// Marks a call as waiting for other workers while it lives, so that the
// heartbeat thread can say what it waits for.
class ShardClient::Watching {
 public:
  Watching(ShardClient* client, Watch watch) : client_(client) {
    watch.active = true;
    watch.since = watch.last_report = absl::Now();
    absl::MutexLock lock(&client_->watch_mu_);
    client_->watch_ = std::move(watch);
  }
  ~Watching() {
    absl::MutexLock lock(&client_->watch_mu_);
    client_->watch_.active = false;
  }
  Watching(const Watching&) = delete;
  Watching& operator=(const Watching&) = delete;

 private:
  ShardClient* const client_;
};

void ShardClient::ReportProgress() {
  Watch watch;
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&watch_mu_);
    if (!watch_.active ||
        now - watch_.last_report < options_.progress_interval) {
      return;
    }
    watch_.last_report = now;
    watch = watch_;
  }
  const std::string waited = HumanDuration(now - watch.since);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  v1::GetStatusRequest request;
  request.set_include_tensors(!watch.rounds.empty());
  v1::GetStatusResponse status;
  const bool known = channel_->stub->GetStatus(&context, request, &status).ok();
  if (!watch.barrier.empty()) {
    std::string entered = "?";
    for (const v1::BarrierInfo& b : status.barriers()) {
      if (b.name() == watch.barrier) entered = absl::StrCat(b.waiting());
    }
    return Log(absl::StrCat("waiting at barrier ", watch.barrier, " on ",
                            address_, ": ", known ? entered : "?", " of ",
                            watch.barrier_count, " workers have entered (",
                            waited, " so far)"));
  }
  for (const auto& [name, round] : watch.rounds) {
    for (const v1::TensorInfo& t : status.tensors()) {
      if (t.name() != name || t.version() > round) continue;
      return Log(absl::StrCat(watch.what, " waiting for round ", round,
                              " of tensor ", name, " on ", address_, ": ",
                              t.contributed(), " of ", t.participants(),
                              " workers have pushed (", waited, " so far)"));
    }
  }
  Log(absl::StrCat(watch.what, " waiting on ", address_, " (", waited,
                   " so far)"));
}

void ShardClient::ReportRollback(const std::string& name, std::uint64_t before,
                                 std::uint64_t now) const {
  Log(absl::StrCat("server ", address_, " restored version ", now, " < ",
                   before, " of tensor ", name, ": ", before - now,
                   " round(s) lost (it restarted from an older snapshot); "
                   "continuing from the restored value"));
}

Cancellation::Registration ShardClient::CancelsOnCancel(
    grpc::ClientContext& context) const {
  return Cancellation::Registration(options_.cancellation.get(),
                                    [&context] { context.TryCancel(); });
}

bool ShardClient::Sleep(absl::Duration duration) const {
  if (options_.cancellation == nullptr) {
    absl::SleepFor(duration);
    return true;
  }
  return options_.cancellation->SleepFor(duration);
}

ShardClient::~ShardClient() { StopHeartbeat(); }

void ShardClient::StartHeartbeat(std::uint64_t lease, absl::Duration interval) {
  StopHeartbeat();
  {
    absl::MutexLock lock(&heartbeat_mu_);
    heartbeat_stop_ = false;
  }
  lease_lost_ = false;
  heartbeat_ = std::thread([this, lease, interval] {
    v1::HeartbeatRequest request;
    request.set_lease_id(lease);
    for (;;) {
      {
        absl::MutexLock lock(&heartbeat_mu_);
        if (heartbeat_mu_.AwaitWithTimeout(absl::Condition(&heartbeat_stop_),
                                           interval)) {
          return;
        }
      }
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() +
                           absl::ToChronoMilliseconds(interval));
      // A cancelled client stops at once, not after a beat to a frozen
      // server.
      const Cancellation::Registration cancel = CancelsOnCancel(context);
      v1::HeartbeatResponse response;
      const grpc::Status status =
          channel_->stub->Heartbeat(&context, request, &response);
      if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        lease_lost_ = true;
        return;
      }
      // Other failures (server restarting, network) are retried next beat.
      ReportProgress();
    }
  });
}

void ShardClient::StopHeartbeat() {
  if (!heartbeat_.joinable()) return;
  {
    absl::MutexLock lock(&heartbeat_mu_);
    heartbeat_stop_ = true;
  }
  heartbeat_.join();
}

absl::StatusOr<std::unique_ptr<ShardClient>> ShardClient::Connect(
    const ClientOptions& options, const std::string& address,
    std::uint64_t instance) {
  WEIGHTD_RETURN_IF_ERROR(ValidateName("worker id", options.worker_id));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly after a server restart; our own retries pace calls.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Notice a server that vanished without closing the connection (a cut
  // link, a frozen host) within 30 s, even while a call waits for a round
  // or a barrier and no data flows; the call then fails and is retried.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  auto channel = std::make_unique<Channel>(grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args));
  std::unique_ptr<ShardClient> client(
      new ShardClient(options, address, std::move(channel), instance));
  // Waits in short slices: a cancellation ends the wait at once, and the
  // wait is reported while it lasts.
  const absl::Time start = absl::Now();
  const absl::Time give_up = start + options.connect_timeout;
  absl::Time reported = absl::InfinitePast();
  for (;;) {
    if (client->Cancelled()) return Cancellation::Status("Connect");
    const absl::Time slice =
        std::min(absl::Now() + absl::Milliseconds(100), give_up);
    if (client->channel_->channel->WaitForConnected(
            absl::ToChronoTime(slice))) {
      break;
    }
    const absl::Time now = absl::Now();
    if (now >= give_up) {
      return absl::UnavailableError(absl::StrCat(
          "cannot reach weightd at ", address, " within ",
          absl::FormatDuration(options.connect_timeout),
          " (--connect_timeout); is it running and is its port open?"));
    }
    if (now - start >= absl::Seconds(1) &&
        now - reported >= options.progress_interval) {
      reported = now;
      client->Log(absl::StrCat("waiting for weightd at ", address, " (",
                               HumanDuration(now - start), " of ",
                               absl::FormatDuration(options.connect_timeout),
                               "): not reachable yet"));
    }
  }
  // The chunk size is the server's: learn it before sending any payload.
  // (Retried: a server restoring a snapshot answers UNAVAILABLE for a while.)
  v1::GetStatusResponse status;
  WEIGHTD_RETURN_IF_ERROR(
      client->UnaryWithRetries("GetStatus", [&](grpc::ClientContext* context) {
        return client->channel_->stub->GetStatus(context, {}, &status);
      }));
  client->chunk_bytes_ = status.chunk_bytes();
  client->layout_ = LayoutOf(status.shard());
  if (client->chunk_bytes_ < kMinChunkBytes ||
      client->chunk_bytes_ % kFloatBytes != 0) {
    return absl::DataLossError("server announced an invalid chunk size");
  }
  return client;
}

absl::Status ShardClient::CheckRefs(absl::Span<const TensorRef> tensors) const {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors given");
  for (const TensorRef& t : tensors) {
    auto it = tracked_.find(t.name);
    if (it == tracked_.end()) {
      return absl::NotFoundError(
          absl::StrCat("tensor ", t.name, " was not declared in Join"));
    }
    if (t.data.size() != it->second.elements) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer of tensor ", t.name, " holds ", t.data.size(),
                       " floats; its shape needs ", it->second.elements));
    }
  }
  return absl::OkStatus();
}

absl::Status ShardClient::Join(
    absl::Span<const TensorRef> tensors,
    absl::Span<const std::vector<std::int64_t>> whole_shapes) {
  for (const TensorRef& t : tensors) {
    if (t.data.size() != ElementsOf(t.shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat("buffer of tensor ", t.name, " holds ", t.data.size(),
                       " floats; shape [", absl::StrJoin(t.shape, ","),
                       "] needs ", ElementsOf(t.shape)));
    }
  }
  std::vector<Declared> declared;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    declared.push_back(
        {t.name, t.shape, t.data,
         whole_shapes.empty() ? std::vector<std::int64_t>{} : whole_shapes[i]});
  }
  v1::JoinResponse response;
  WEIGHTD_RETURN_IF_ERROR(JoinRetrying(declared, &response));
  tracked_.clear();
  std::vector<TensorRef> existing;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const v1::JoinedTensor& joined = response.tensors(static_cast<int>(i));
    Tracked& t = tracked_[tensors[i].name];
    t.shape = tensors[i].shape;
    t.whole_shape = declared[i].whole_shape;
    t.elements = tensors[i].data.size();
    t.version = joined.info().version();
    if (!joined.created()) existing.push_back(tensors[i]);
  }
  // Weight transfer: a model joining later starts from the shared value.
  if (!existing.empty()) WEIGHTD_RETURN_IF_ERROR(Pull(existing));
  return absl::OkStatus();
}

absl::Status ShardClient::JoinRetrying(absl::Span<const Declared> declared,
                                       v1::JoinResponse* response) {
  const absl::Time give_up = absl::Now() + options_.held_id_wait;
  for (bool reported = false;; reported = true) {
    absl::Status status =
        Retrying("Join", [&] { return JoinOnce(declared, response); });
    if (!absl::IsAborted(status) || absl::Now() >= give_up) return status;
    // Another process holds the id: a duplicate, or this worker's own
    // previous life whose lease has not lapsed yet.
    if (!reported) {
      Log(absl::StrCat(status.message(), "; retrying for up to ",
                       absl::FormatDuration(options_.held_id_wait)));
    }
    if (!Sleep(absl::Seconds(1))) return Cancellation::Status("Join");
  }
}

absl::Status ShardClient::JoinOnce(absl::Span<const Declared> declared,
                                   v1::JoinResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  response->Clear();
  auto stream = channel_->stub->Join(&context, response);
  v1::JoinRequest msg;
  v1::JoinHeader* header = msg.mutable_header();
  header->set_worker_id(worker_id_);
  header->set_instance(instance_);
  // The server refuses the Join, before anything changes, if it is no
  // longer the shard this client connected to.
  header->mutable_expected_shard()->set_index(layout_.index);
  header->mutable_expected_shard()->set_count(layout_.count);
  for (const Declared& d : declared) {
    v1::TensorDeclaration* out = header->add_tensors();
    out->set_name(d.name);
    for (std::int64_t dim : d.shape) out->add_shape(dim);
    for (std::int64_t dim : d.whole_shape) out->add_whole_shape(dim);
  }
  bool ok = stream->Write(msg);
  msg.Clear();
  for (std::uint32_t i = 0; ok && i < declared.size(); ++i) {
    ok = WriteInitialValue(*stream, i, declared[i].value, chunk_bytes_, msg,
                           stats_.bytes_pushed);
  }
  if (ok) stream->WritesDone();
  WEIGHTD_RETURN_IF_ERROR(Annotate(stream->Finish(), "Join"));
  if (response->tensors_size() != static_cast<int>(declared.size())) {
    return absl::DataLossError("server answered Join for other tensors");
  }
  // (Checked again for servers that predate expected_shard.)
  if (const ShardLayout now = LayoutOf(response->shard()); !(now == layout_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weightd at ", address_, " is now shard ", now.index, " of ", now.count,
        "; it was shard ", layout_.index, " of ", layout_.count,
        " when this worker connected. The deployment's shard layout changed "
        "under the job: restart the workers with the new server list"));
  }
  if (response->chunk_bytes() < kMinChunkBytes ||
      response->chunk_bytes() % kFloatBytes != 0) {
    return absl::DataLossError("server announced an invalid chunk size");
  }
  lease_id_ = response->lease_id();
  chunk_bytes_ = response->chunk_bytes();
  sync_mode_ = response->mode() != v1::MODE_ASYNC;
  next_sequence_ = response->next_sequence();
  if (options_.heartbeat && response->lease_timeout_ms() > 0) {
    StartHeartbeat(lease_id_,
                   absl::Milliseconds(response->lease_timeout_ms()) / 3);
  }
  return absl::OkStatus();
}

absl::Status ShardClient::Rejoin(absl::Span<const TensorRef> in_hand) {
  // Every tracked tensor is declared again; the values in hand go along in
  // case the server lost a tensor (restarted without a snapshot).
  std::vector<Declared> declared;
  for (const auto& [name, t] : tracked_) {
    absl::Span<const float> value;
    for (const TensorRef& r : in_hand) {
      if (r.name == name) value = r.data;
    }
    declared.push_back({name, t.shape, value, t.whole_shape});
  }
  v1::JoinResponse response;
  WEIGHTD_RETURN_IF_ERROR(JoinRetrying(declared, &response));
  std::size_t worst = declared.size();  // The tensor that went back most.
  std::uint64_t lost = 0, before = 0;
  for (std::size_t i = 0; i < declared.size(); ++i) {
    Tracked& t = tracked_.at(declared[i].name);
    const std::uint64_t now =
        response.tensors(static_cast<int>(i)).info().version();
    if (now < t.version && t.version - now > lost) {
      worst = i, lost = t.version - now, before = t.version;
    }
    t.version = now;
    t.wait_version = 0;
  }
  if (worst < declared.size()) {
    ReportRollback(declared[worst].name, before, before - lost);
  }
  return absl::OkStatus();
}

bool ShardClient::LeaseLost() {
  if (lease_lost_) return true;
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  v1::HeartbeatRequest request;
  request.set_lease_id(lease_id_);
  v1::HeartbeatResponse response;
  return channel_->stub->Heartbeat(&context, request, &response).error_code() ==
         grpc::StatusCode::FAILED_PRECONDITION;
}

absl::Status ShardClient::UnaryWithRetries(
    absl::string_view name,
    absl::FunctionRef<grpc::Status(grpc::ClientContext*)> call) {
  return Retrying(name, [&] {
    grpc::ClientContext context;
    context.set_deadline(CallDeadline());
    const Cancellation::Registration cancel = CancelsOnCancel(context);
    return Annotate(call(&context), name);
  });
}

absl::Status ShardClient::Retrying(absl::string_view what,
                                   absl::FunctionRef<absl::Status()> attempt) {
  const absl::Time start = absl::Now();
  const absl::Time give_up = start + options_.retry_budget;
  absl::Time reported = absl::InfinitePast();
  absl::Duration backoff = options_.initial_backoff;
  for (int attempts = 1;; ++attempts) {
    if (Cancelled()) return Cancellation::Status(what);
    absl::Status status = attempt();
    if (Cancelled() && !status.ok()) return Cancellation::Status(what);
    if (status.ok() ||
        !(absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status))) {
      if (attempts > 1) {
        Log(absl::StrCat(what, " to ", address_, " went through again after ",
                         attempts, " attempts in ",
                         HumanDuration(absl::Now() - start)));
      }
      return status;
    }
    const absl::Duration pause =
        backoff * absl::Uniform(bitgen_, 0.5, 1.5);  // Jitter.
    const absl::Time now = absl::Now();
    if (now + pause > give_up) {
      return absl::Status(
          status.code(),
          absl::StrCat("could not reach weightd at ", address_, " for ",
                       HumanDuration(now - start), " (", attempts,
                       " attempts, the client's retry budget); last error: ",
                       status.message()));
    }
    if (now - reported >= options_.progress_interval) {
      reported = now;
      Log(absl::StrCat(status.message(), "; retrying for up to ",
                       HumanDuration(give_up - now), " more"));
    }
    if (!Sleep(pause)) return Cancellation::Status(what);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::Status ShardClient::Push(absl::Span<const TensorRef> tensors,
                               const PushOptions& options) {
  return DoPush(tensors, options, /*pull_result=*/false);
}

absl::Status ShardClient::PushPull(absl::Span<const TensorRef> tensors,
                                   const PushOptions& options) {
  return DoPush(tensors, options, /*pull_result=*/true);
}

absl::Status ShardClient::DoPush(absl::Span<const TensorRef> tensors,
                                 const PushOptions& options, bool pull_result) {
  WEIGHTD_RETURN_IF_ERROR(CheckRefs(tensors));
  // A resend after a transient failure keeps its sequence: the server
  // applies it once.
  std::uint64_t sequence = next_sequence_++;
  Watch watch;
  watch.what = pull_result ? "PushPull" : "Push";
  if (pull_result) {
    for (const TensorRef& t : tensors) {
      watch.rounds.emplace_back(t.name, tracked_.at(t.name).version);
    }
  }
  Watching watching(this, std::move(watch));
  for (int rejoins = 0;; ++rejoins) {
    absl::Status status = Retrying(pull_result ? "PushPull" : "Push", [&] {
      return PushOnce(tensors, options, pull_result, sequence);
    });
    if (status.ok()) return status;
    if (absl::IsFailedPrecondition(status) && rejoins < kMaxRejoins &&
        LeaseLost()) {
      std::vector<std::uint64_t> rounds;
      for (const TensorRef& t : tensors)
        rounds.push_back(tracked_.at(t.name).version);
      WEIGHTD_RETURN_IF_ERROR(Rejoin(tensors));
      bool moved = false;
      for (std::size_t i = 0; i < tensors.size(); ++i) {
        moved |= tracked_.at(tensors[i].name).version != rounds[i];
      }
      if (!moved) {
        sequence = next_sequence_++;  // A new membership: a new push.
        continue;
      }
      // The rounds went on while this worker was away: its update is late
      // and must not be mixed into a later round.
      status = absl::AbortedError(
          "this worker's lease expired and the rounds moved on without it");
    }
    if (absl::IsAborted(status) && pull_result) {
      // The round moved on without this push (it closed without this
      // worker, or the server restarted from an older snapshot): continue
      // from the current shared value.
      ++stats_.rounds_missed;
      for (const TensorRef& t : tensors) tracked_.at(t.name).wait_version = 0;
      return Pull(tensors);
    }
    return status;
  }
}

absl::Status ShardClient::PushOnce(absl::Span<const TensorRef> tensors,
                                   const PushOptions& options, bool pull_result,
                                   std::uint64_t sequence) {
  v1::PushHeader header;
  header.set_lease_id(lease_id_);
  header.set_sequence(sequence);
  header.set_kind(options.kind == UpdateKind::kWeights ? v1::UPDATE_KIND_WEIGHTS
                                                       : v1::UPDATE_KIND_DELTA);
  header.set_weight(options.weight);
  header.set_format(FormatToProto(options_.wire_format));
  header.set_accept_batches(true);
  for (const TensorRef& t : tensors) {
    v1::PushedTensor* p = header.add_tensors();
    p->set_name(t.name);
    p->set_round(tracked_.at(t.name).version);
  }
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  if (!pull_result) {
    grpc::ByteBuffer response_bytes;
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> stream(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(
            channel_->channel.get(), channel_->push, &context,
            &response_bytes));
    WritePush(*stream, header, tensors, chunk_bytes_, options_.wire_format,
              stats_.bytes_pushed);
    WEIGHTD_RETURN_IF_ERROR(Annotate(stream->Finish(), "Push"));
    v1::PushResponse response;
    if (!FromBytes(&response_bytes, &response) ||
        response.tensors_size() != static_cast<int>(tensors.size())) {
      return absl::DataLossError("server answered Push for other tensors");
    }
    for (const v1::PushedResult& r : response.tensors()) {
      auto found = tracked_.find(r.name());
      if (found == tracked_.end()) {
        return absl::DataLossError(absl::StrCat(
            "server answered Push for tensor ", r.name(), ", not pushed"));
      }
      Tracked& t = found->second;
      // Sync: counted in an earlier round than it named, the server's
      // rounds went back.
      if (sync_mode_ && r.round() < t.version) {
        ReportRollback(r.name(), t.version, r.round());
      }
      // Sync: the round's result is the next version. Async: the version
      // this push produced.
      t.wait_version = sync_mode_ ? r.round() + 1 : r.round();
    }
    return absl::OkStatus();
  }

  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
      stream(grpc::internal::ClientReaderWriterFactory<
             grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel_->channel
                                                             .get(),
                                                         channel_->push_pull,
                                                         &context));
  WritePush(*stream, header, tensors, chunk_bytes_, options_.wire_format,
            stats_.bytes_pushed);
  std::vector<std::uint64_t> versions;
  absl::Status read = ReadTensors(*stream, context, options_.wire_format,
                                  tensors, versions, stats_.bytes_pulled);
  WEIGHTD_RETURN_IF_ERROR(Annotate(stream->Finish(), "PushPull"));
  WEIGHTD_RETURN_IF_ERROR(read);
  RecordPulled(tensors, /*ahead=*/1, versions);
  return absl::OkStatus();
}

void ShardClient::RecordPulled(absl::Span<const TensorRef> tensors,
                               std::uint64_t ahead,
                               const std::vector<std::uint64_t>& versions) {
  std::size_t worst = tensors.size();  // The tensor that went back most.
  std::uint64_t lost = 0, before = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    Tracked& t = tracked_.at(tensors[i].name);
    const std::uint64_t expected = t.version + ahead;
    if (versions[i] < expected && expected - versions[i] > lost) {
      worst = i, lost = expected - versions[i], before = expected;
    }
    t.version = versions[i];
    t.wait_version = 0;
  }
  if (worst < tensors.size()) {
    ReportRollback(tensors[worst].name, before, before - lost);
  }
}

std::chrono::system_clock::time_point ShardClient::CallDeadline() const {
  return std::chrono::system_clock::now() +
         absl::ToChronoMilliseconds(options_.call_timeout);
}

absl::Status ShardClient::Pull(absl::Span<const TensorRef> tensors) {
  WEIGHTD_RETURN_IF_ERROR(CheckRefs(tensors));
  return Retrying("Pull", [&] { return PullOnce(tensors); });
}

absl::Status ShardClient::PullOnce(absl::Span<const TensorRef> tensors) {
  v1::PullRequest request;
  request.set_lease_id(lease_id_);
  for (const TensorRef& t : tensors) {
    v1::PulledTensor* p = request.add_tensors();
    p->set_name(t.name);
    p->set_min_version(tracked_.at(t.name).wait_version);
  }
  request.set_format(FormatToProto(options_.wire_format));
  request.set_accept_batches(true);
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
          channel_->channel.get(), channel_->pull, &context, ToBytes(request)));
  std::vector<std::uint64_t> versions;
  absl::Status read = ReadTensors(*stream, context, options_.wire_format,
                                  tensors, versions, stats_.bytes_pulled);
  WEIGHTD_RETURN_IF_ERROR(Annotate(stream->Finish(), "Pull"));
  WEIGHTD_RETURN_IF_ERROR(read);
  RecordPulled(tensors, /*ahead=*/0, versions);
  return absl::OkStatus();
}

absl::Status ShardClient::Barrier(absl::string_view name, int count,
                                  std::uint32_t* arrival,
                                  absl::Duration timeout) {
  if (count < 1)
    return absl::InvalidArgumentError("barrier count must be >= 1");
  v1::BarrierRequest request;
  request.set_name(std::string(name));
  request.set_count(static_cast<std::uint32_t>(count));
  v1::BarrierResponse response;
  Watch watch;
  watch.what = "Barrier";
  watch.barrier = std::string(name);
  watch.barrier_count = count;
  Watching watching(this, std::move(watch));
  const absl::Duration limit = std::min(timeout, options_.call_timeout);
  const absl::Time give_up = absl::Now() + limit;
  bool timed_out = false;
  WEIGHTD_RETURN_IF_ERROR(Retrying("Barrier", [&] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(give_up));
    const Cancellation::Registration cancel = CancelsOnCancel(context);
    request.set_lease_id(lease_id_);  // Current even after a re-join.
    grpc::Status status = channel_->stub->Barrier(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
        absl::Now() >= give_up) {
      timed_out = true;  // Not a transient failure: do not retry.
      return absl::OkStatus();
    }
    return Annotate(status, "Barrier");
  }));
  if (timed_out) {
    std::string entered = "fewer";
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(2));
    v1::GetStatusResponse status;
    if (channel_->stub->GetStatus(&context, {}, &status).ok()) {
      entered = "0";
      for (const v1::BarrierInfo& b : status.barriers()) {
        if (b.name() == name) entered = absl::StrCat(b.waiting());
      }
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "Barrier: only ", entered, " of ", count, " workers entered barrier ",
        name, " on ", address_, " within ", absl::FormatDuration(limit),
        "; are the others running, each with an id of its own?"));
  }
  if (arrival != nullptr) *arrival = response.arrival();
  return absl::OkStatus();
}

absl::Status ShardClient::Leave() {
  v1::LeaveRequest request;
  request.set_lease_id(lease_id_);
  v1::LeaveResponse response;
  StopHeartbeat();
  absl::Status status;
  if (Cancelled()) {
    // One short attempt, so that the server stops waiting for this worker
    // at once instead of at its lease's end.
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(1));
    status =
        Annotate(channel_->stub->Leave(&context, request, &response), "Leave");
  } else {
    status = UnaryWithRetries("Leave", [&](grpc::ClientContext* context) {
      return channel_->stub->Leave(context, request, &response);
    });
  }
  // A lease the server already dropped has nothing left to end.
  if (!status.ok() && !absl::IsFailedPrecondition(status)) return status;
  lease_id_ = 0;
  tracked_.clear();
  return absl::OkStatus();
}

absl::StatusOr<ServerStatus> ShardClient::GetStatus() {
  v1::GetStatusResponse response;
  WEIGHTD_RETURN_IF_ERROR(
      UnaryWithRetries("GetStatus", [&](grpc::ClientContext* context) {
        return channel_->stub->GetStatus(context, {}, &response);
      }));
  return ServerStatus{response.bytes_received(), response.bytes_sent(),
                      response.rounds_closed()};
}

absl::StatusOr<std::uint64_t> ShardClient::Version(
    const std::string& name) const {
  auto it = tracked_.find(name);
  if (it == tracked_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor ", name, " was not declared in Join"));
  }
  return it->second.version;
}

}  // namespace weightd
