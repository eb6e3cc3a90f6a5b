// PolicySpec (common/policy_spec.h) on the wire: weightd.v1.TensorPolicy.
// Shared by the client (declarations) and the service.
#ifndef WEIGHTD_COMMON_POLICY_PROTO_H_
#define WEIGHTD_COMMON_POLICY_PROTO_H_

#include "absl/status/statusor.h"
#include "common/policy_spec.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd {

// At most this many parameters, each name at most 64 bytes.
inline constexpr int kMaxPolicyParams = 64;

void PolicySpecToProto(const PolicySpec& spec, v1::TensorPolicy* out);
// INVALID_ARGUMENT for an unknown consistency, too many parameters, or a
// name or value ParsePolicySpec would refuse.
absl::StatusOr<PolicySpec> PolicySpecFromProto(const v1::TensorPolicy& policy);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_POLICY_PROTO_H_
