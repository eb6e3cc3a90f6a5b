// Rules for the names a client chooses: tensor names and worker ids.
#ifndef WEIGHTD_COMMON_NAMES_H_
#define WEIGHTD_COMMON_NAMES_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace weightd {

inline constexpr std::size_t kMaxNameBytes = 256;

// OK if `name` is 1..kMaxNameBytes bytes of [A-Za-z0-9_.:/-]; otherwise
// INVALID_ARGUMENT naming `what` ("tensor name", "worker id").
absl::Status ValidateName(absl::string_view what, absl::string_view name);

// `pattern` matches all of `text`; '*' matches any run of characters, '/'
// included. The --auth_policy's tensor and worker id patterns, and
// weightctl export's.
bool PatternMatches(absl::string_view pattern, absl::string_view text);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_NAMES_H_
