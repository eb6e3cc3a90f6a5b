// ShardClient's same-host data path: the segment handed to the daemon at
// Join, and Push, PushPull and Pull through it (docs/protocol.md, "Shared
// memory"). The rest of ShardClient is in client/shard_client.cc.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/buffer_checks.h"
#include "client/channel.h"
#include "client/segment.h"
#include "client/shard_client.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"
#include "common/wire.h"
#include "common/wire_format.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

// Whether `t`'s buffer is its place in the segment (SharedBufferFor):
// then nothing is copied between them.
bool InPlace(const TensorRef& t, const char* place, WireFormat format) {
  return format == WireFormat::kFloat32 &&
         reinterpret_cast<const char*>(t.data.data()) == place;
}

// Checks the server's description of what it wrote into the segment, and
// copies each tensor from there into the caller's buffer.
absl::Status TakeFromSegment(
    const Segment& segment,
    const google::protobuf::RepeatedPtrField<v1::TensorInfo>& infos,
    absl::Span<const TensorRef> tensors, WireFormat format,
    std::vector<std::uint64_t>& versions, std::uint64_t& bytes) {
  if (infos.size() != static_cast<int>(tensors.size())) {
    return absl::DataLossError(
        "server answered for other tensors than were asked");
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const v1::TensorInfo& info = infos[static_cast<int>(i)];
    const TensorRef& t = tensors[i];
    if (info.name() != t.name ||
        ElementsOf({info.shape().begin(), info.shape().end()}) !=
            t.data.size()) {
      return absl::DataLossError(
          absl::StrCat("server wrote tensor ", info.name(), " for ", t.name,
                       " or a different size into the segment"));
    }
    const std::uint64_t length = t.data.size() * ElementBytes(format);
    char* place = segment.At(segment.Place(t.name));
    if (!InPlace(t, place, format)) {
      const absl::string_view piece(place, length);
      DecodePieces(Pieces(&piece, 1), format, t.data.data());
    }
    versions.push_back(info.version());
    bytes += length;
  }
  return absl::OkStatus();
}

}  // namespace

bool ShardClient::UsesSegment(absl::Span<const TensorRef> tensors) const {
  if (segment_ == nullptr || !segment_attached_) return false;
  for (const TensorRef& t : tensors) {
    if (segment_->Place(t.name) < 0) return false;
  }
  return true;
}

void ShardClient::AttachSegment(
    const std::vector<std::pair<std::string, std::uint64_t>>& places) {
  segment_attached_ = false;
  if (!options_.shared_memory || places.empty()) {
    segment_.reset();
    return;
  }
  // A re-join with the same tensors hands the same segment over again (so
  // the buffers lent out of it stay in place).
  if (segment_ == nullptr || !segment_->Fits(places)) {
    segment_.reset();
    absl::StatusOr<std::unique_ptr<Segment>> created = Segment::Create(places);
    if (!created.ok()) return LogPath(created.status());
    segment_ = std::shared_ptr<Segment>(*std::move(created));
  }
  v1::AttachSegmentRequest request;
  request.set_lease_id(lease_id_);
  request.set_pid(static_cast<std::uint32_t>(getpid()));
  request.set_fd(static_cast<std::uint32_t>(segment_->fd()));
  request.set_size(segment_->size());
  request.set_token(std::string(segment_->token()));
  v1::AttachSegmentResponse response;
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  const absl::Status status =
      Annotate(channel_->stub->AttachSegment(&context, request, &response),
               "AttachSegment");
  // Refused, the segment is kept (unused) for the next Join to hand over.
  segment_attached_ = status.ok();
  LogPath(status);
}

absl::Status ShardClient::OnSegment(absl::FunctionRef<absl::Status()> call) {
  absl::Status status = call();
  if (!absl::IsFailedPrecondition(status) || !Reattach()) return status;
  return call();
}

bool ShardClient::Reattach() {
  if (segment_ == nullptr || !segment_attached_) return false;
  std::vector<std::pair<std::string, std::uint64_t>> places;
  for (const auto& [name, t] : tracked_) {
    places.emplace_back(name, t.elements * kFloatBytes);
  }
  AttachSegment(places);
  return segment_attached_;
}

void ShardClient::LogPath(const absl::Status& attached) {
  std::string path =
      attached.ok()
          ? absl::StrFormat(
                "worker %s moves its tensors through shared memory with %s "
                "(a segment of %.1f MiB)",
                worker_id_, address_, segment_->size() / 1048576.0)
          : absl::StrCat("worker ", worker_id_, " uses the stream path to ",
                         address_, ": ", attached.message());
  // Said when it changes: a re-join on the same path says nothing new.
  if (path == logged_path_) return;
  Log(path);
  logged_path_ = std::move(path);
}

absl::Status ShardClient::PushOnceSegment(absl::Span<const TensorRef> tensors,
                                          const PushOptions& options,
                                          bool pull_result,
                                          std::uint64_t sequence,
                                          std::vector<std::uint64_t>& held) {
  const char* what = pull_result ? "PushPull" : "Push";
  v1::PushSegmentRequest request;
  FillPushHeader(tensors, options, sequence, held, request.mutable_header());
  request.set_pull_result(pull_result);
  const WireFormat format = options_.wire_format;
  std::uint64_t pushed = 0;
  std::vector<bool> in_place;
  for (const TensorRef& t : tensors) {
    const std::int64_t place = segment_->Place(t.name);
    request.add_places()->set_offset(static_cast<std::uint64_t>(place));
    in_place.push_back(InPlace(t, segment_->At(place), format));
    if (!in_place.back()) {
      EncodeValues(t.data.data(), t.data.size(), format, segment_->At(place));
    }
    pushed += t.data.size() * ElementBytes(format);
  }
  v1::PushSegmentResponse response;
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  if (absl::Status status = Annotate(
          channel_->stub->PushSegment(&context, request, &response), what);
      !status.ok()) {
    // A tensor kept in the segment may have had the result written over
    // its values before the call failed: then a resend must not count them
    // as this worker's update unless the daemon still holds the push
    // (v1::PushedTensor.held_bytes). Not when the daemon refused the call:
    // it writes a result only just before it answers OK.
    const bool refused =
        absl::IsFailedPrecondition(status) || absl::IsInvalidArgument(status) ||
        absl::IsAborted(status) || absl::IsAlreadyExists(status) ||
        absl::IsNotFound(status) || absl::IsOutOfRange(status);
    for (std::size_t i = 0; pull_result && !refused && i < tensors.size();
         ++i) {
      if (in_place[i]) held[i] = tensors[i].data.size() * kFloatBytes;
    }
    return status;
  }
  stats_.bytes_pushed += pushed;
  if (!pull_result) {
    v1::PushResponse pushed_results;
    pushed_results.mutable_tensors()->Swap(response.mutable_tensors());
    return RecordPushed(pushed_results, tensors.size());
  }
  // The caller's buffers change only now, once the call succeeded: a
  // failed call leaves them as they were (unless they are the segment's),
  // and a resend pushes them again.
  std::vector<std::uint64_t> versions;
  WEIGHTD_RETURN_IF_ERROR(TakeFromSegment(*segment_, response.results(),
                                          tensors, format, versions,
                                          stats_.bytes_pulled));
  RecordPulled(tensors, /*ahead=*/1, versions);
  return absl::OkStatus();
}

absl::StatusOr<SharedBuffer> ShardClient::SharedBufferFor(
    const std::string& name) {
  auto it = tracked_.find(name);
  if (it == tracked_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor ", name, " was not declared in Join"));
  }
  if (segment_ == nullptr || !segment_attached_ || segment_->Place(name) < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker ", worker_id_, " has no shared-memory segment with ", address_,
        " for tensor ", name, " (it uses the stream path; its log says why)"));
  }
  if (options_.wire_format != WireFormat::kFloat32) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker ", worker_id_, " sends ", WireFormatName(options_.wire_format),
        ": its segment holds encoded values, not a tensor to train in"));
  }
  auto* values = reinterpret_cast<float*>(segment_->At(segment_->Place(name)));
  return SharedBuffer{absl::MakeSpan(values, it->second.elements),
                      it->second.shape, segment_};
}

absl::Status ShardClient::PullOnceSegment(absl::Span<const TensorRef> tensors) {
  v1::PullSegmentRequest request;
  v1::PullRequest* pull = request.mutable_request();
  pull->set_lease_id(lease_id_);
  pull->set_format(WireFormatToProto(options_.wire_format));
  for (const TensorRef& t : tensors) {
    v1::PulledTensor* p = pull->add_tensors();
    p->set_name(t.name);
    p->set_min_version(tracked_.at(t.name).wait_version);
    request.add_places()->set_offset(
        static_cast<std::uint64_t>(segment_->Place(t.name)));
  }
  v1::PullSegmentResponse response;
  grpc::ClientContext context;
  context.set_deadline(CallDeadline());
  const Cancellation::Registration cancel = CancelsOnCancel(context);
  WEIGHTD_RETURN_IF_ERROR(Annotate(
      channel_->stub->PullSegment(&context, request, &response), "Pull"));
  std::vector<std::uint64_t> versions;
  WEIGHTD_RETURN_IF_ERROR(TakeFromSegment(*segment_, response.tensors(),
                                          tensors, options_.wire_format,
                                          versions, stats_.bytes_pulled));
  RecordPulled(tensors, /*ahead=*/0, versions);
  return absl::OkStatus();
}

}  // namespace weightd
