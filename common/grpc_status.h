// The one conversion between absl::Status (used inside weightd) and
// grpc::Status (used on the wire).
#ifndef WEIGHTD_COMMON_GRPC_STATUS_H_
#define WEIGHTD_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace weightd {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_GRPC_STATUS_H_
