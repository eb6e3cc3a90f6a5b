#include "client/shard_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/buffer_checks.h"
#include "client/channel.h"
#include "client/segment.h"
#include "client/stream_io.h"
#include "common/chunk_codec.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {

ShardClient::ShardClient(ClientOptions options, std::string address,
                         std::unique_ptr<Channel> channel,
                         std::uint64_t instance)
    : options_(std::move(options)),
      address_(std::move(address)),
      worker_id_(options_.worker_id),
      channel_(std::move(channel)),
      instance_(instance),
      retry_env_(options_.cancellation.get(),
                 [this](absl::string_view message) { Log(message); }) {}

ShardClient::~ShardClient() { StopHeartbeat(); }

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

void ShardClient::ReportRollback(const std::string& name, std::uint64_t before,
                                 std::uint64_t now) const {
  Log(absl::StrCat("server ", address_, " restored version ", now, " < ",
                   before, " of tensor ", name, ": ", before - now,
                   " round(s) lost (it restarted from an older snapshot); "
                   "continuing from the restored value"));
}

bool ShardClient::Sleep(absl::Duration duration) {
  return retry_env_.Sleep(duration);
}

absl::Status ShardClient::CheckRefs(absl::Span<const TensorRef> tensors) const {
  if (tensors.empty()) return absl::InvalidArgumentError("no tensors given");
  for (const TensorRef& t : tensors) {
    auto it = tracked_.find(t.name);
    if (it == tracked_.end()) {
      return absl::NotFoundError(
          absl::StrCat("tensor ", t.name, " was not declared in Join"));
    }
    WEIGHTD_RETURN_IF_ERROR(CheckBufferHolds(t, it->second.elements));
  }
  return absl::OkStatus();
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
  RetryPolicy policy;
  policy.budget = options_.retry_budget;
  policy.initial_backoff = options_.initial_backoff;
  policy.max_backoff = options_.max_backoff;
  policy.progress_interval = options_.progress_interval;
  bool first = true;
  return RetryWithBackoff(policy, retry_env_, what, address_, [&] {
    if (!first) ++stats_.retries;
    first = false;
    // A call made while the channel is not connected waits for it without
    // polling it: gRPC then saw its connection attempts complete only when
    // its backup poller ran (every 5 s), and after a server restart
    // attempts timed out in a loop (two of four workers never came back).
    // Connected or not after the wait (at most a quarter of the retry
    // budget, so that a budget makes attempts), the call is made: it then
    // fails, or not, for its own reason.
    if (!AwaitConnection(
            std::min(kAwaitConnection, options_.retry_budget / 4))) {
      return Cancellation::Status(what);
    }
    return attempt();
  });
}

bool ShardClient::AwaitConnection(absl::Duration limit) {
  grpc::Channel& channel = *channel_->channel;
  if (channel.GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY) {
    return true;
  }
  const absl::Time give_up = absl::Now() + limit;
  for (absl::Time now = absl::Now(); now < give_up; now = absl::Now()) {
    if (Cancelled()) return false;
    // Short slices: a cancellation ends the wait within 0.1 s.
    const absl::Time slice = std::min(give_up, now + absl::Milliseconds(100));
    if (channel.WaitForConnected(absl::ToChronoTime(slice))) return true;
  }
  return !Cancelled();
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
  // A PushPull's result is written into the caller's buffers, which its
  // push reads: after a failed attempt they may hold result values where
  // the caller's update was. A resend says so (held_bytes): the server
  // skips those bytes if it holds them from this push, else refuses it
  // (ABORTED, below) rather than take the result as this worker's update.
  // Kept across a re-join: the new sequence resumes the old contribution.
  std::vector<std::uint64_t> held(tensors.size(), 0);
  for (int rejoins = 0;; ++rejoins) {
    absl::Status status = Retrying(pull_result ? "PushPull" : "Push", [&] {
      return PushOnce(tensors, options, pull_result, sequence, held);
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

void ShardClient::FillPushHeader(absl::Span<const TensorRef> tensors,
                                 const PushOptions& options,
                                 std::uint64_t sequence,
                                 absl::Span<const std::uint64_t> held,
                                 v1::PushHeader* header) const {
  header->set_lease_id(lease_id_);
  header->set_sequence(sequence);
  header->set_kind(options.kind == UpdateKind::kWeights
                       ? v1::UPDATE_KIND_WEIGHTS
                       : v1::UPDATE_KIND_DELTA);
  header->set_weight(options.weight);
  header->set_format(WireFormatToProto(options_.wire_format));
  header->set_accept_batches(true);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    v1::PushedTensor* p = header->add_tensors();
    p->set_name(tensors[i].name);
    p->set_round(tracked_.at(tensors[i].name).version);
    p->set_held_bytes(held[i]);
  }
}

absl::Status ShardClient::RecordPushed(const v1::PushResponse& response,
                                       std::size_t count) {
  if (response.tensors_size() != static_cast<int>(count)) {
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
    if (t.sync && r.round() < t.version) {
      ReportRollback(r.name(), t.version, r.round());
    }
    // Sync: the round's result is the next version. Async: the version
    // this push produced.
    t.wait_version = t.sync ? r.round() + 1 : r.round();
  }
  return absl::OkStatus();
}

absl::Status ShardClient::PushOnce(absl::Span<const TensorRef> tensors,
                                   const PushOptions& options, bool pull_result,
                                   std::uint64_t sequence,
                                   std::vector<std::uint64_t>& held) {
  if (UsesSegment(tensors)) {
    return OnSegment([&] {
      return PushOnceSegment(tensors, options, pull_result, sequence, held);
    });
  }
  v1::PushHeader header;
  FillPushHeader(tensors, options, sequence, held, &header);
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
    if (!FromBytes(&response_bytes, &response)) {
      return absl::DataLossError("server's answer to Push does not parse");
    }
    return RecordPushed(response, tensors.size());
  }

  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
      stream(grpc::internal::ClientReaderWriterFactory<
             grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel_->channel
                                                             .get(),
                                                         channel_->push_pull,
                                                         &context));
  // The result is read on a second thread while this one writes the push:
  // the server may stream each chunk of the result as soon as every
  // worker's copy of it has arrived, and a client that read only after its
  // last write would leave those chunks waiting (gRPC's sync stream allows
  // one thread in Read() while another is in Write()). A thread per call,
  // as Client runs one per shard: simpler than an async stream, and cheap
  // beside a call that moves chunks of tensors.
  //
  // The reader writes into the caller's buffers while the writer still
  // reads them. Each push message holds a copy of its values
  // (OutgoingTensor::Copied, in WritePush), and a chunk of the result
  // usually arrives only after this call's own copy of it was sent, so the
  // writer is done with the range the reader fills. Not always: the server
  // may publish a chunk from the copy an earlier attempt delivered (a
  // resent or resumed push), or without this worker's copy (a round that
  // stopped waiting for it). So each chunk of the result waits (`copied`)
  // until the writer has copied that range: the push carries the caller's
  // values, and the two threads never touch a range at once. (No
  // deadlock: the server reads the push whatever happens to its writes.)
  // What the reader wrote is no longer the caller's update: if the call
  // fails, the resend tells the server (`held`, see DoPush).
  //
  // Either side failing ends the other: ReadTensors cancels the call on a
  // malformed result, so the writer's next Write() fails; a failed Write()
  // means the call is over, so the reader's Read() returns false. Each
  // thread counts its bytes into a local, added to stats_ after the join.
  //
  // A push of one chunk or less cannot overlap its result (the result's
  // only chunk needs this call's whole push): it is written, then read, on
  // this thread. A thread per such call cost 0.4 ms of a 1.1 ms round p50
  // (bench scenario 5, W=4, 4 KiB, on 2 busy cores).
  std::uint64_t payload = 0;
  for (const TensorRef& t : tensors) payload += t.data.size() * kFloatBytes;
  CopyProgress copied(tensors.size());
  std::vector<std::uint64_t> versions;
  std::uint64_t pulled = 0;
  std::vector<std::uint64_t> written;
  absl::Status read;
  auto read_result = [&] {
    read = ReadTensors(*stream, context, options_.wire_format, tensors,
                       versions, pulled, &copied, &written);
  };
  std::optional<std::thread> reader;
  if (payload > chunk_bytes_) reader.emplace(read_result);
  std::uint64_t pushed = 0;
  WritePush(*stream, header, tensors, chunk_bytes_, options_.wire_format,
            pushed, &copied);
  copied.Done();
  if (reader.has_value()) {
    reader->join();
  } else {
    read_result();
  }
  stats_.bytes_pushed += pushed;
  stats_.bytes_pulled += pulled;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    held[i] = std::max(held[i], written[i]);
  }
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

absl::Status ShardClient::Pull(absl::Span<const TensorRef> tensors) {
  WEIGHTD_RETURN_IF_ERROR(CheckRefs(tensors));
  return Retrying("Pull", [&] { return PullOnce(tensors); });
}

absl::Status ShardClient::PullOnce(absl::Span<const TensorRef> tensors) {
  if (UsesSegment(tensors)) {
    return OnSegment([&] { return PullOnceSegment(tensors); });
  }
  v1::PullRequest request;
  request.set_lease_id(lease_id_);
  for (const TensorRef& t : tensors) {
    v1::PulledTensor* p = request.add_tensors();
    p->set_name(t.name);
    p->set_min_version(tracked_.at(t.name).wait_version);
  }
  request.set_format(WireFormatToProto(options_.wire_format));
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
