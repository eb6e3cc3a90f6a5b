// ShardClient's Join: declaring tensors, sending their initial values,
// waiting out a worker id another process still holds, and joining again
// after a lost lease.
#include <grpcpp/grpcpp.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/buffer_checks.h"
#include "client/channel.h"
#include "client/shard_client.h"
#include "client/stream_io.h"
#include "common/policy_proto.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd {
namespace {

// Whether the tensor has sync rounds: its policy says (a server that
// predates policies: its mode).
bool IsSync(const v1::JoinResponse& response, const v1::TensorInfo& info) {
  const v1::Mode mode = info.policy().consistency() != v1::MODE_UNSPECIFIED
                            ? info.policy().consistency()
                            : response.mode();
  return mode != v1::MODE_ASYNC && mode != v1::MODE_BOUNDED;
}

}  // namespace

absl::Status ShardClient::Join(
    absl::Span<const TensorRef> tensors,
    absl::Span<const std::vector<std::int64_t>> whole_shapes) {
  for (const TensorRef& t : tensors) {
    WEIGHTD_RETURN_IF_ERROR(CheckBufferFitsShape(t));
  }
  std::vector<Declared> declared;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    absl::StatusOr<PolicySpec> policy = ParsePolicySpec(t.policy);
    if (!policy.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, ": ", policy.status().message()));
    }
    declared.push_back(
        {t.name, t.shape, t.data,
         whole_shapes.empty() ? std::vector<std::int64_t>{} : whole_shapes[i],
         *std::move(policy)});
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
    t.policy = declared[i].policy;
    t.sync = IsSync(response, joined.info());
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
    if (!d.policy.empty()) PolicySpecToProto(d.policy, out->mutable_policy());
  }
  bool ok = stream->Write(msg);
  msg.Clear();
  if (ok) {
    std::vector<absl::Span<const float>> values;
    for (const Declared& d : declared) values.push_back(d.value);
    ok = WriteInitialValues(*stream, values, chunk_bytes_, msg,
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
  next_sequence_ = response->next_sequence();
  if (options_.heartbeat && response->lease_timeout_ms() > 0) {
    StartHeartbeat(lease_id_,
                   absl::Milliseconds(response->lease_timeout_ms()) / 3);
  }
  std::vector<std::pair<std::string, std::uint64_t>> places;
  for (const Declared& d : declared) {
    places.emplace_back(d.name, ElementsOf(d.shape) * kFloatBytes);
  }
  AttachSegment(places);
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
    declared.push_back({name, t.shape, value, t.whole_shape, t.policy});
  }
  v1::JoinResponse response;
  WEIGHTD_RETURN_IF_ERROR(JoinRetrying(declared, &response));
  std::size_t worst = declared.size();  // The tensor that went back most.
  std::uint64_t lost = 0, before = 0;
  for (std::size_t i = 0; i < declared.size(); ++i) {
    Tracked& t = tracked_.at(declared[i].name);
    const v1::TensorInfo& info = response.tensors(static_cast<int>(i)).info();
    const std::uint64_t now = info.version();
    t.sync = IsSync(response, info);
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

}  // namespace weightd
