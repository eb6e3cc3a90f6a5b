// Durations in messages a person reads.
#ifndef WEIGHTD_COMMON_DURATION_H_
#define WEIGHTD_COMMON_DURATION_H_

#include <string>

#include "absl/time/time.h"

namespace weightd {

// "0s", "350ms", "12s", "2m5s": whole seconds from one second on,
// milliseconds below (never a bare "0" for a short but real wait).
std::string HumanDuration(absl::Duration d);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_DURATION_H_
