// Crash points: fault injection for the crash tests (tests/fault).
//
// A component that was handed the name of an armed crash point (weightd's
// --crash_at flag) calls CrashPoint(armed, "<name>") at each point of
// interest; at the armed one the process prints "crash point <name>
// reached" to stderr and kills itself with SIGKILL, exactly as `kill -9`
// would. Unarmed (empty), a crash point costs one comparison.
#ifndef WEIGHTD_COMMON_CRASH_POINT_H_
#define WEIGHTD_COMMON_CRASH_POINT_H_

#include "absl/strings/string_view.h"

namespace weightd {

void CrashPoint(absl::string_view armed, absl::string_view name);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_CRASH_POINT_H_
