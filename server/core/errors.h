// Errors and message pieces shared by the core's parts. Internal to the core.
#ifndef WEIGHTD_SERVER_CORE_ERRORS_H_
#define WEIGHTD_SERVER_CORE_ERRORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace weightd::core {

// What every call returns once the store is closing.
inline absl::Status ClosedError() {
  return absl::UnavailableError("the server is shutting down");
}

// "[2,3]", for messages.
inline std::string ShapeString(const std::vector<std::int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_ERRORS_H_
