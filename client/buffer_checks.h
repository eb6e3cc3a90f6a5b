// Checks of the caller's tensor buffers against their shapes, for every
// call of the client library (weightd::Client and ShardClient alike).
// Plain functions: thread-safe.
#ifndef WEIGHTD_CLIENT_BUFFER_CHECKS_H_
#define WEIGHTD_CLIENT_BUFFER_CHECKS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "client/types.h"

namespace weightd {

// The number of elements of `shape` (a negative dimension counts as 0).
std::uint64_t ElementsOf(const std::vector<std::int64_t>& shape);

// INVALID_ARGUMENT unless `tensor.data` holds exactly the elements of
// `tensor.shape`: "buffer of tensor X holds N floats; shape [a,b] needs M".
absl::Status CheckBufferFitsShape(const TensorRef& tensor);

// INVALID_ARGUMENT unless `tensor.data` holds `needed` floats (what the
// shape it was declared with in Join needs): "buffer of tensor X holds N
// floats; its shape needs M".
absl::Status CheckBufferHolds(const TensorRef& tensor, std::uint64_t needed);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_BUFFER_CHECKS_H_
