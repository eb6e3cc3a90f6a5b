// Conversions between the wire messages (weightd.v1) and the core's types,
// and the errors the service gives for a message it cannot take. Plain
// functions: thread-safe, no state. The call's wire format converts in
// common/tensor_stream.h, which the client shares.
#ifndef WEIGHTD_SERVER_SERVICE_PROTO_CONVERSIONS_H_
#define WEIGHTD_SERVER_SERVICE_PROTO_CONVERSIONS_H_

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/tensor_store.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd::service {

// INVALID_ARGUMENT for UPDATE_KIND_UNSPECIFIED or an unknown value.
absl::StatusOr<core::UpdateKind> KindFromProto(v1::UpdateKind kind);

v1::Mode ModeToProto(core::Mode mode);

// Fills `out` (owned by the caller) from `info`.
void InfoToProto(const core::TensorInfo& info, v1::TensorInfo* out);
void RecordToProto(const core::VersionRecord& record, v1::VersionRecord* out);

// A push header for the core; weight 1 if it has none. INVALID_ARGUMENT
// for an unknown update kind or wire format.
absl::StatusOr<core::PushHeader> PushHeaderFromProto(const v1::PushHeader& h);

// What a push of one tensor produced, as Push answers it.
void PushResultToProto(const core::PushResult& result, v1::PushedResult* out);

// INVALID_ARGUMENT: "the first message of a <call> call must carry the
// header".
absl::Status MissingHeader(absl::string_view call);
// INVALID_ARGUMENT: "a <call> call carries exactly one header".
absl::Status RepeatedHeader(absl::string_view call);

// Parses a whole message that arrived as bytes (every method is raw),
// consuming `bytes`. INVALID_ARGUMENT naming the call and the message: "a
// Leave request is not a valid weightd.v1.LeaveRequest", or "a Leave call
// ended its side without a request" when no message came.
absl::Status ParseMessage(grpc::ByteBuffer* bytes,
                          google::protobuf::MessageLite* message,
                          absl::string_view call,
                          absl::string_view noun = "message");
// The same error, for bytes that something else failed to parse.
absl::Status NotAValid(const google::protobuf::MessageLite& message,
                       absl::string_view call,
                       absl::string_view noun = "message");

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_PROTO_CONVERSIONS_H_
