#include "server/service/proto_conversions.h"

#include "absl/strings/str_cat.h"
#include "common/chunk_codec.h"
#include "common/policy_proto.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"

namespace weightd::service {

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

v1::Mode ModeToProto(core::Mode mode) {
  switch (mode) {
    case core::Mode::kSync:
      return v1::MODE_SYNC;
    case core::Mode::kAsync:
      return v1::MODE_ASYNC;
    case core::Mode::kBounded:
      return v1::MODE_BOUNDED;
  }
  return v1::MODE_UNSPECIFIED;
}

void InfoToProto(const core::TensorInfo& info, v1::TensorInfo* out) {
  out->set_name(info.name);
  for (std::int64_t d : info.shape) out->add_shape(d);
  out->set_version(info.version);
  out->set_participants(info.participants);
  out->set_contributed(info.contributed);
  for (std::int64_t d : info.whole_shape) out->add_whole_shape(d);
  for (const std::string& w : info.waiting_for) out->add_waiting_for(w);
  PolicySpecToProto(core::SpecOf(info.policy), out->mutable_policy());
  out->set_policy_bytes(info.policy_bytes);
}

void RecordToProto(const core::VersionRecord& record, v1::VersionRecord* out) {
  out->set_version(record.version);
  switch (record.closed_on) {
    case core::ClosedOn::kAll:
      out->set_closed_on(v1::CLOSED_ON_ALL);
      break;
    case core::ClosedOn::kQuorum:
      out->set_closed_on(v1::CLOSED_ON_QUORUM);
      break;
    case core::ClosedOn::kLeave:
      out->set_closed_on(v1::CLOSED_ON_LEAVE);
      break;
    case core::ClosedOn::kLeaseExpiry:
      out->set_closed_on(v1::CLOSED_ON_LEASE_EXPIRY);
      break;
    case core::ClosedOn::kPush:
      out->set_closed_on(v1::CLOSED_ON_PUSH);
      break;
  }
  for (const core::HistoryContribution& c : record.contributions) {
    v1::HistoryContribution* o = out->add_contributions();
    o->set_worker_id(c.worker);
    o->set_sequence(c.sequence);
    o->set_weight(c.weight);
    o->set_kind(c.kind == core::UpdateKind::kWeights ? v1::UPDATE_KIND_WEIGHTS
                                                     : v1::UPDATE_KIND_DELTA);
    o->set_complete(c.complete);
  }
  for (const std::string& w : record.dropped) out->add_dropped(w);
  out->set_first_contribution_unix_us(
      absl::ToUnixMicros(record.first_contribution));
  out->set_closed_unix_us(absl::ToUnixMicros(record.closed));
}

absl::StatusOr<core::PushHeader> PushHeaderFromProto(const v1::PushHeader& h) {
  core::PushHeader header;
  header.lease_id = h.lease_id();
  header.sequence = h.sequence();
  WEIGHTD_ASSIGN_OR_RETURN(header.kind, KindFromProto(h.kind()));
  header.weight = h.has_weight() ? h.weight() : 1.0;
  WEIGHTD_ASSIGN_OR_RETURN(header.format, WireFormatFromProto(h.format()));
  header.entries.reserve(h.tensors_size());
  for (const v1::PushedTensor& t : h.tensors()) {
    header.entries.push_back({t.name(), t.round(), t.held_bytes()});
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

absl::Status NotAValid(const google::protobuf::MessageLite& message,
                       absl::string_view call, absl::string_view noun) {
  return absl::InvalidArgumentError(absl::StrCat(
      "a ", call, " ", noun, " is not a valid ", message.GetTypeName()));
}

absl::Status ParseMessage(grpc::ByteBuffer* bytes,
                          google::protobuf::MessageLite* message,
                          absl::string_view call, absl::string_view noun) {
  // No bytes at all: the client half-closed (or was cancelled) before
  // sending one, which is not a message that fails to parse.
  if (!bytes->Valid()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", call, " call ended its side without a ", noun));
  }
  if (!FromBytes(bytes, message)) return NotAValid(*message, call, noun);
  return absl::OkStatus();
}

void PushResultToProto(const core::PushResult& result, v1::PushedResult* out) {
  out->set_name(result.name);
  out->set_round(result.outcome.round);
  out->set_version(result.outcome.version);
  out->set_duplicate(result.outcome.duplicate);
}

}  // namespace weightd::service
