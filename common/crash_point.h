// Crash points: fault injection for the crash tests (tests/fault).
//
// Setting WEIGHTD_CRASH_AT=<name> in a process's environment makes it kill
// itself with SIGKILL, exactly as `kill -9` would, the first time it reaches
// CrashPoint("<name>"), after printing "crash point <name> reached" to
// stderr. Without the variable a crash point costs one branch.
#ifndef WEIGHTD_COMMON_CRASH_POINT_H_
#define WEIGHTD_COMMON_CRASH_POINT_H_

#include "absl/strings/string_view.h"

namespace weightd {

void CrashPoint(absl::string_view name);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_CRASH_POINT_H_
